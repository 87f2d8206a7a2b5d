//! `maas-limiter` as gateways use it: the binary cargo just built, on a
//! loopback port, with a real `redis-server` (or its memory), driven over
//! gRPC with the shared messages. Each test has its own Redis and limiter.

// Test helpers, not only #[test] bodies, may fail by panicking.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::Duration;

use maas_ratelimit_proto::{
    Code, CommitRequest, RateLimitDescriptor, RateLimitRequest, RateLimitResponse, RateLimitUnit,
    ReserveRequest,
};
use maas_testkit::{
    GrpcCode, LimiterLaunch, LimiterProcess, RateLimitClient, RedisProcess, Restartable,
};

/// 10 hits a minute per user of model `m`, in namespace `maas`.
const LIMITS: &str = r#"
- namespace: maas
  name: per-user
  max_value: 10
  seconds: 60
  conditions: ["descriptors[0].model == 'm'"]
  variables: ["descriptors[0].user"]
"#;

/// A private folder for one test's files.
fn test_dir(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("limiter")
        .join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn launch(test: &str, limits: &str, redis: Option<&RedisProcess>) -> LimiterLaunch {
    let file = test_dir(test).join("limits.yaml");
    std::fs::write(&file, limits).unwrap();
    let launch = LimiterLaunch {
        binary: Some(env!("CARGO_BIN_EXE_maas-limiter").into()),
        ..LimiterLaunch::new(file)
    };
    match redis {
        Some(redis) => launch.with_redis(redis),
        None => launch,
    }
}

/// Redis and a limiter on it, with [`LIMITS`].
fn with_redis(test: &str) -> (RedisProcess, LimiterProcess, RateLimitClient) {
    let redis = RedisProcess::start().unwrap();
    let limiter = LimiterProcess::launch(&launch(test, LIMITS, Some(&redis))).unwrap();
    let client = limiter.client();
    (redis, limiter, client)
}

fn user(name: &str) -> Vec<RateLimitDescriptor> {
    vec![RateLimitDescriptor::new([("model", "m"), ("user", name)])]
}

fn hits(user_name: &str, hits: u32) -> RateLimitRequest {
    RateLimitRequest::new("maas", user(user_name), hits)
}

fn reserve(user_name: &str, amount: u64, ttl: Option<Duration>) -> ReserveRequest {
    ReserveRequest {
        domain: "maas".into(),
        descriptors: user(user_name),
        amount,
        ttl: ttl.map(Into::into),
    }
}

fn commit(user_name: &str, id: &str, actual: u64) -> CommitRequest {
    CommitRequest {
        domain: "maas".into(),
        descriptors: user(user_name),
        reservation_id: id.into(),
        actual_amount: actual,
    }
}

fn remaining(response: &RateLimitResponse) -> u32 {
    assert_eq!(response.statuses.len(), 1, "{response:?}");
    response.statuses[0].limit_remaining
}

/// Would `n` more hits for `user_name` be allowed? (spends nothing)
fn fits(client: &RateLimitClient, user_name: &str, n: u32) -> bool {
    let code = client
        .check_rate_limit(&hits(user_name, n))
        .unwrap()
        .overall_code();
    assert_ne!(code, Code::Unknown);
    code == Code::Ok
}

/// ShouldRateLimit `n` hits for `user_name`: its overall code.
fn spend(client: &RateLimitClient, user_name: &str, n: u32) -> Code {
    client
        .should_rate_limit(&hits(user_name, n))
        .unwrap()
        .overall_code()
}

/// Reserve `amount` for `user_name` with the limiter's hold: its code.
fn reserve_code(client: &RateLimitClient, user_name: &str, amount: u64) -> Code {
    client
        .reserve(&reserve(user_name, amount, None))
        .unwrap()
        .code()
}

#[test]
fn should_rate_limit_counts_hits_and_answers_over_limit_with_statuses() {
    let (_redis, _limiter, client) = with_redis("should_rate_limit");

    let first = client.should_rate_limit(&hits("alice", 4)).unwrap();
    assert_eq!(first.overall_code(), Code::Ok);
    assert_eq!(remaining(&first), 6);
    assert_eq!(
        remaining(&client.should_rate_limit(&hits("alice", 4)).unwrap()),
        2
    );

    let over = client.should_rate_limit(&hits("alice", 4)).unwrap();
    assert_eq!(over.overall_code(), Code::OverLimit);
    let status = &over.statuses[0];
    assert_eq!(status.code(), Code::OverLimit);
    assert_eq!(status.limit_remaining, 2, "a refused call counts nothing");
    let limit = status.current_limit.as_ref().unwrap();
    assert_eq!(
        (limit.requests_per_unit, limit.unit(), limit.name.as_str()),
        (10, RateLimitUnit::Minute, "per-user")
    );
    let reset = status.duration_until_reset.unwrap().to_std().unwrap();
    assert!(
        reset > Duration::ZERO && reset <= Duration::from_secs(60),
        "{reset:?}"
    );

    // An unset addend counts as one hit, as Envoy sends it.
    assert_eq!(
        remaining(&client.should_rate_limit(&hits("alice", 0)).unwrap()),
        1
    );
    assert_eq!(
        remaining(&client.should_rate_limit(&hits("alice", 1)).unwrap()),
        0
    );
    assert_eq!(spend(&client, "alice", 0), Code::OverLimit);

    // Another user has a counter of their own; another model has no limit.
    assert_eq!(
        remaining(&client.should_rate_limit(&hits("bob", 1)).unwrap()),
        9
    );
    let other_model = RateLimitRequest::new(
        "maas",
        vec![RateLimitDescriptor::new([
            ("model", "x"),
            ("user", "alice"),
        ])],
        100,
    );
    let free = client.should_rate_limit(&other_model).unwrap();
    assert_eq!(free.overall_code(), Code::Ok);
    assert!(free.statuses.is_empty());
}

#[test]
fn check_rate_limit_spends_nothing() {
    let (_redis, _limiter, client) = with_redis("check_spends_nothing");
    for _ in 0..20 {
        let answer = client.check_rate_limit(&hits("alice", 5)).unwrap();
        assert_eq!((answer.overall_code(), remaining(&answer)), (Code::Ok, 10));
    }
    assert!(fits(&client, "alice", 10));
    assert!(!fits(&client, "alice", 11));
    // The whole budget is still there to spend.
    assert_eq!(spend(&client, "alice", 10), Code::Ok);
    assert!(!fits(&client, "alice", 1));
    assert!(!fits(&client, "alice", 0), "an addend of 0 checks one hit");
}

#[test]
fn report_adds_without_checking() {
    let (_redis, _limiter, client) = with_redis("report_adds");
    assert_eq!(
        client.report(&hits("alice", 7)).unwrap().overall_code(),
        Code::Ok
    );
    assert!(fits(&client, "alice", 3));
    assert!(!fits(&client, "alice", 4));
    // An addend of 0 reports one, as Limitador does.
    client.report(&hits("alice", 0)).unwrap();
    assert!(fits(&client, "alice", 2));
    assert!(!fits(&client, "alice", 3));
    // Report is after the fact: it counts past the limit.
    assert_eq!(
        client.report(&hits("alice", 50)).unwrap().overall_code(),
        Code::Ok
    );
    let answer = client.check_rate_limit(&hits("alice", 1)).unwrap();
    assert_eq!(
        (answer.overall_code(), remaining(&answer)),
        (Code::OverLimit, 0)
    );
}

#[test]
fn reserve_never_exceeds_the_limit_counting_live_holds() {
    let (redis, _limiter, client) = with_redis("reserve_holds");
    let first = client.reserve(&reserve("alice", 6, None)).unwrap();
    assert_eq!(first.code(), Code::Ok);
    assert!(!first.reservation_id.is_empty());

    let refused = client.reserve(&reserve("alice", 5, None)).unwrap();
    assert_eq!(refused.code(), Code::OverLimit);
    assert!(refused.reservation_id.is_empty(), "no id without a hold");

    let second = client.reserve(&reserve("alice", 4, None)).unwrap();
    assert_eq!(second.code(), Code::Ok);
    assert_ne!(second.reservation_id, first.reservation_id);
    assert_eq!(reserve_code(&client, "alice", 1), Code::OverLimit);

    // Holds are per counter: another user is untouched.
    assert_eq!(reserve_code(&client, "bob", 10), Code::Ok);

    // The holds live in Redis: a second limiter on it sees them.
    let other =
        LimiterProcess::launch(&launch("reserve_holds_other", LIMITS, Some(&redis))).unwrap();
    assert_eq!(
        other
            .client()
            .reserve(&reserve("alice", 1, None))
            .unwrap()
            .code(),
        Code::OverLimit
    );
}

#[test]
fn commit_applies_the_real_amount_and_releases_the_hold() {
    let (_redis, _limiter, client) = with_redis("commit_releases");
    let held = client.reserve(&reserve("alice", 8, None)).unwrap();
    assert_eq!(held.code(), Code::Ok);
    assert_eq!(reserve_code(&client, "alice", 3), Code::OverLimit);

    let committed = client
        .commit(&commit("alice", &held.reservation_id, 3))
        .unwrap();
    assert!(committed.reservation_released);
    // 3 counted, the other 5 held are free again.
    assert!(fits(&client, "alice", 7));
    assert!(!fits(&client, "alice", 8));
    assert_eq!(reserve_code(&client, "alice", 7), Code::Ok);

    // A second commit of the same id finds no hold, and counts like Report.
    let again = client
        .commit(&commit("alice", &held.reservation_id, 2))
        .unwrap();
    assert!(!again.reservation_released);
    assert!(fits(&client, "alice", 5));
    assert!(!fits(&client, "alice", 6));

    // No id at all: a plain report of the amount.
    let unheld = client.commit(&commit("bob", "", 4)).unwrap();
    assert!(!unheld.reservation_released);
    assert!(fits(&client, "bob", 6) && !fits(&client, "bob", 7));
}

#[test]
fn an_expired_hold_frees_its_capacity_and_its_commit_counts_like_report() {
    let (_redis, _limiter, client) = with_redis("expired_hold");
    let held = client
        .reserve(&reserve("alice", 10, Some(Duration::from_millis(1_500))))
        .unwrap();
    assert_eq!(held.code(), Code::Ok);
    assert_eq!(reserve_code(&client, "alice", 1), Code::OverLimit);

    std::thread::sleep(Duration::from_millis(1_700));
    let later = client.reserve(&reserve("alice", 1, None)).unwrap();
    assert_eq!(later.code(), Code::Ok, "the expired hold no longer counts");

    let late = client
        .commit(&commit("alice", &held.reservation_id, 4))
        .unwrap();
    assert!(!late.reservation_released);
    // The 4 are counted all the same (the live hold of 1 is not a count).
    assert!(fits(&client, "alice", 6));
    assert!(!fits(&client, "alice", 7));
}

/// A hold shorter than a millisecond would be admitted yet hold nothing
/// (Redis keeps holds in whole milliseconds), letting concurrent reserves
/// pass the limit together: refused, and nothing is held.
#[test]
fn a_reserve_whose_ttl_would_hold_nothing_is_refused() {
    let (_redis, _limiter, client) = with_redis("ttl_under_a_millisecond");
    for ttl in [Duration::ZERO, Duration::from_micros(999)] {
        let status = client
            .reserve(&reserve("alice", 10, Some(ttl)))
            .unwrap_err();
        assert_eq!(
            status.code(),
            GrpcCode::InvalidArgument,
            "{ttl:?}: {status:?}"
        );
        assert!(status.message().contains("ttl"), "{status:?}");
    }
    let held = client
        .reserve(&reserve("alice", 10, Some(Duration::from_millis(1))))
        .unwrap();
    assert_eq!(held.code(), Code::Ok, "1 ms is the shortest hold");
    assert!(
        fits(&client, "alice", 10),
        "the refused ones counted nothing"
    );
}

/// A request the limits cannot be evaluated against (no descriptor, so
/// `descriptors[0]` is out of range) matches no limit: OK, not the
/// INTERNAL of a panicked task (and a panic logged per call). An amount
/// past a signed 64-bit counter is refused before anything is held or
/// counted, on Redis, which `INCRBY` would otherwise fail mid-commit.
#[test]
fn malformed_calls_get_an_answer_and_change_nothing() {
    let (_redis, _limiter, client) = with_redis("malformed_calls");
    let bare = RateLimitRequest::new("maas", Vec::new(), 1);
    assert_eq!(
        client.should_rate_limit(&bare).unwrap().overall_code(),
        Code::Ok
    );
    let empty = RateLimitRequest::new("maas", vec![RateLimitDescriptor::new::<&str, &str>([])], 1);
    assert_eq!(
        client.should_rate_limit(&empty).unwrap().overall_code(),
        Code::Ok
    );
    let too_much = i64::MAX.unsigned_abs() + 1;
    let status = client
        .reserve(&reserve("alice", too_much, None))
        .unwrap_err();
    assert_eq!(status.code(), GrpcCode::InvalidArgument, "{status:?}");
    let held = client.reserve(&reserve("alice", 3, None)).unwrap();
    assert_eq!(held.code(), Code::Ok);
    let status = client
        .commit(&commit("alice", &held.reservation_id, u64::MAX))
        .unwrap_err();
    assert_eq!(status.code(), GrpcCode::InvalidArgument, "{status:?}");
    // Only the 3 still held count: 8 more would pass the 10, 7 fit.
    assert_eq!(reserve_code(&client, "alice", 8), Code::OverLimit);
    assert_eq!(reserve_code(&client, "alice", 7), Code::Ok);
}

#[test]
fn a_limit_split_by_a_descriptor_the_call_lacks_does_not_apply() {
    // No condition, so only the variable decides: a call without the
    // descriptor it names has no counter of this limit (it failed INTERNAL,
    // which a gateway's outbox retries for minutes).
    let limits = "- namespace: maas\n  max_value: 1\n  seconds: 60\n  variables: [\"descriptors[0].user\"]\n";
    let limiter = LimiterProcess::launch(&launch("no_descriptor", limits, None)).unwrap();
    let client = limiter.client();
    let bare = RateLimitRequest::new("maas", Vec::new(), 5);
    let answer = client.should_rate_limit(&bare).unwrap();
    assert_eq!(
        (answer.overall_code(), answer.statuses.len()),
        (Code::Ok, 0)
    );
    let held = client
        .reserve(&ReserveRequest {
            descriptors: Vec::new(),
            ..reserve("alice", 5, None)
        })
        .unwrap();
    assert_eq!(held.code(), Code::Ok, "{held:?}");
    // The user who has the descriptor is still limited.
    assert_eq!(spend(&client, "alice", 1), Code::Ok);
    assert_eq!(spend(&client, "alice", 1), Code::OverLimit);
}

#[test]
fn counters_and_holds_survive_a_limiter_restart_with_redis() {
    let (_redis, mut limiter, client) = with_redis("restart_redis");
    assert_eq!(spend(&client, "alice", 10), Code::Ok);
    assert_eq!(reserve_code(&client, "bob", 10), Code::Ok);
    let port = limiter.addr().port();

    limiter.restart().unwrap();
    assert_eq!(limiter.addr().port(), port);
    let client = limiter.client();
    assert_eq!(spend(&client, "alice", 1), Code::OverLimit);
    assert_eq!(reserve_code(&client, "bob", 1), Code::OverLimit);
}

#[test]
fn counters_do_not_survive_a_restart_in_memory() {
    let mut limiter = LimiterProcess::launch(&launch("restart_memory", LIMITS, None)).unwrap();
    let client = limiter.client();
    assert_eq!(spend(&client, "alice", 10), Code::Ok);
    assert_eq!(spend(&client, "alice", 1), Code::OverLimit);

    limiter.restart().unwrap();
    let answer = limiter
        .client()
        .should_rate_limit(&hits("alice", 1))
        .unwrap();
    assert_eq!((answer.overall_code(), remaining(&answer)), (Code::Ok, 9));
}

#[test]
fn limiters_on_one_redis_share_counters() {
    let (redis, _first, first) = with_redis("shared_counters");
    let second =
        LimiterProcess::launch(&launch("shared_counters_other", LIMITS, Some(&redis))).unwrap();
    assert_eq!(spend(&first, "alice", 6), Code::Ok);
    let answer = second
        .client()
        .should_rate_limit(&hits("alice", 5))
        .unwrap();
    assert_eq!(
        (answer.overall_code(), remaining(&answer)),
        (Code::OverLimit, 4)
    );
    assert_eq!(
        second
            .client()
            .should_rate_limit(&hits("alice", 4))
            .unwrap()
            .overall_code(),
        Code::Ok
    );
    assert!(!fits(&first, "alice", 1));
}

/// Redis's answer to `command`, sent with its password.
fn as_admin(redis: &RedisProcess, command: &str) -> String {
    let auth = format!("AUTH {}\r\n", redis.password());
    let command = format!("{command}\r\n");
    let answer = redis
        .call_raw(&[auth.as_bytes(), command.as_bytes()])
        .unwrap();
    answer
        .strip_prefix("+OK\r\n")
        .unwrap_or_else(|| panic!("AUTH answered {answer:?}"))
        .to_string()
}

/// `threads` clients, each on its own connection to one of `limiters` in
/// turn, all released at once, each spending one hit `calls` times for
/// alice: how many of the calls were admitted.
fn admitted_in_a_burst(limiters: &[&LimiterProcess], threads: usize, calls: usize) -> usize {
    let start = std::sync::Arc::new(std::sync::Barrier::new(threads));
    let workers: Vec<_> = (0..threads)
        .map(|i| {
            let client = limiters[i % limiters.len()].client();
            let start = std::sync::Arc::clone(&start);
            std::thread::spawn(move || {
                // Connected before the start, so the calls race, not the handshakes.
                assert!(fits(&client, "alice", 1));
                start.wait();
                (0..calls)
                    .filter(|_| spend(&client, "alice", 1) == Code::Ok)
                    .count()
            })
        })
        .collect();
    workers.into_iter().map(|w| w.join().unwrap()).sum()
}

#[test]
fn racing_should_rate_limit_calls_through_two_limiters_never_pass_the_limit() {
    let (redis, first, _client) = with_redis("racing_redis");
    let second =
        LimiterProcess::launch(&launch("racing_redis_other", LIMITS, Some(&redis))).unwrap();
    // Request limits are ShouldRateLimit calls of one hit each, from every
    // gateway at once: a check and a count in two round trips let a burst
    // at the limit pass it by as many calls as were in flight.
    for round in 0..3 {
        let admitted = admitted_in_a_burst(&[&first, &second], 16, 3);
        assert_eq!(
            admitted, 10,
            "round {round}: 10 a minute, and 48 racing calls"
        );
        as_admin(&redis, "FLUSHALL");
    }
}

#[test]
fn racing_calls_in_memory_never_pass_the_limit() {
    let limiter = LimiterProcess::launch(&launch("racing_memory", LIMITS, None)).unwrap();
    let admitted = admitted_in_a_burst(&[&limiter], 16, 3);
    assert_eq!(admitted, 10, "10 a minute, and 48 racing calls");
}

#[test]
fn redis_keeps_no_key_per_counter_beyond_its_window() {
    let redis = RedisProcess::start().unwrap();
    // Windows short enough to wait out, long enough that all 20 counters
    // are still live when counted on a loaded machine.
    let limits = LIMITS.replace("seconds: 60", "seconds: 5");
    let limiter =
        LimiterProcess::launch(&launch("no_lasting_keys", &limits, Some(&redis))).unwrap();
    let client = limiter.client();
    // One counter per user, as per-key limits have: each touched by a
    // ShouldRateLimit, a Reserve and its Commit.
    for n in 0..20 {
        let name = format!("user-{n}");
        assert_eq!(spend(&client, &name, 1), Code::Ok);
        let held = client.reserve(&reserve(&name, 2, None)).unwrap();
        assert_eq!(held.code(), Code::Ok);
        client
            .commit(&commit(&name, &held.reservation_id, 1))
            .unwrap();
    }
    let keys = || {
        let answer = as_admin(&redis, "DBSIZE");
        answer
            .strip_prefix(':')
            .and_then(|n| n.trim_end().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("DBSIZE answered {answer:?}"))
    };
    assert!(
        keys() >= 20,
        "the counters are in Redis while their window runs"
    );
    // Every counter's window (5 s) and every hold has ended: Limitador's
    // per-limit set of counter names, which nothing pruned, kept a name per
    // user ever seen.
    maas_testkit::eventually(Duration::from_secs(20), || match keys() {
        0 => Ok(()),
        left => Err(format!("{left} keys left after every window ended")),
    });
}

#[test]
fn an_unknown_domain_is_unlimited_and_an_empty_one_unknown() {
    let (_redis, _limiter, client) = with_redis("domains");
    let nobody = RateLimitRequest::new("nobody", user("alice"), 1_000_000);
    let answer = client.should_rate_limit(&nobody).unwrap();
    assert_eq!(answer.overall_code(), Code::Ok);
    assert!(answer.statuses.is_empty());
    assert_eq!(
        client.check_rate_limit(&nobody).unwrap().overall_code(),
        Code::Ok
    );
    let unheld = client
        .reserve(&ReserveRequest {
            domain: "nobody".into(),
            ..reserve("alice", 5, None)
        })
        .unwrap();
    assert_eq!(
        (unheld.code(), unheld.reservation_id.as_str()),
        (Code::Ok, "")
    );

    let empty = RateLimitRequest::new("", user("alice"), 1);
    assert_eq!(
        client.should_rate_limit(&empty).unwrap().overall_code(),
        Code::Unknown
    );
    assert_eq!(client.report(&empty).unwrap().overall_code(), Code::Unknown);
    let status = client
        .commit(&CommitRequest {
            domain: String::new(),
            ..commit("alice", "", 1)
        })
        .unwrap_err();
    assert_eq!(status.code(), GrpcCode::InvalidArgument);
}

#[test]
fn a_bad_configuration_exits_non_zero_naming_the_problem() {
    let cases = [
        ("- namespace: maas\n  max_value: 1\n  seconds: 60\n  condition: []\n", None, "unknown field `condition`"),
        ("- namespace: maas\n  max_value: 1\n  seconds: 0\n", None, "limit #1, `seconds`: must be 1 to 316224000"),
        ("- namespace: maas\n  max_value: 1\n  seconds: 60\n  conditions: [\"descriptors[0].m ==\"]\n", None, "`conditions`"),
        (LIMITS, Some("redis://127.0.0.1:1"), "cannot connect to Redis at redis://127.0.0.1:1"),
        (LIMITS, Some("redis://:hunter2@127.0.0.1:1"), "the URL carries a password"),
    ];
    for (index, (limits, redis, wanted)) in cases.into_iter().enumerate() {
        let mut launch = launch(&format!("bad_config_{index}"), limits, None);
        launch.redis_url = redis.map(str::to_string);
        let output = launch.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "case {index} started: {stderr}");
        assert!(!stderr.contains("hunter2"), "case {index}: {stderr}");
        assert!(
            stderr.contains(wanted),
            "case {index}: {stderr:?} lacks {wanted:?}"
        );
        assert!(
            output.stdout.is_empty(),
            "case {index} announced a listener"
        );
    }
}

/// A server that answers like Redis 6.2 on a loopback port: every command
/// gets `+OK` except `INFO`, which names the version, and `PING`.
fn fake_redis_6() -> std::net::SocketAddr {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut writer = stream.try_clone().unwrap();
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                // RESP: `*N` then N times `$len` and the argument.
                while reader.read_line(&mut line).is_ok_and(|n| n > 0) {
                    let n: usize = line.trim().trim_start_matches('*').parse().unwrap_or(0);
                    let mut args = Vec::new();
                    for _ in 0..n {
                        line.clear();
                        reader.read_line(&mut line).unwrap();
                        let len: usize = line.trim().trim_start_matches('$').parse().unwrap();
                        let mut arg = vec![0; len + 2];
                        reader.read_exact(&mut arg).unwrap();
                        args.push(String::from_utf8_lossy(&arg[..len]).to_uppercase());
                    }
                    line.clear();
                    let answer = match args.first().map(String::as_str) {
                        Some("INFO") => {
                            let info =
                                "# Server\r\nredis_version:6.2.14\r\nredis_mode:standalone\r\n";
                            format!("${}\r\n{info}\r\n", info.len())
                        }
                        Some("PING") => "+PONG\r\n".to_string(),
                        _ => "+OK\r\n".to_string(),
                    };
                    if writer.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

/// Limitador's scripts need Redis 7.0 (`EXPIRE ... NX`): on 6.x a counter
/// would be left without a TTL, so the limiter refuses to start, saying why.
#[test]
fn a_redis_older_than_7_is_refused_at_start() {
    let mut launch = launch("redis_6", LIMITS, None);
    launch.redis_url = Some(format!("redis://{}", fake_redis_6()));
    let output = launch.command().output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "started on Redis 6: {stderr}");
    assert!(
        stderr.contains("it is Redis 6.2.14; maas-limiter needs Redis 7.0 or later"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty(), "announced a listener");
}

/// Redis runs with a password: a local user without it can neither read nor
/// reset the counters, and the limiter needs it, from a file or the
/// environment, without it ever showing on its command line or in its log.
#[test]
fn redis_needs_the_password_and_it_stays_secret() {
    let (redis, limiter, client) = with_redis("redis_password");
    assert_eq!(spend(&client, "alice", 1), Code::Ok);
    for command in [
        &b"FLUSHALL\r\n"[..],
        b"KEYS *\r\n",
        b"CONFIG GET requirepass\r\n",
    ] {
        let answer = redis.call_raw(&[command]).unwrap();
        assert!(answer.starts_with("-NOAUTH"), "{answer}");
    }
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", limiter.pid())).unwrap();
    let cmdline = String::from_utf8_lossy(&cmdline);
    assert!(cmdline.contains("--redis-password-file"), "{cmdline}");
    assert!(!cmdline.contains(redis.password()), "{cmdline}");
    assert!(!limiter.log().contains(redis.password()));
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(redis.password_file())
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Without the password, or with a wrong one, it refuses to start.
    let wrong = test_dir("redis_password_bad_file").join("password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    for (name, file) in [("none", None), ("wrong", Some(wrong))] {
        let mut launch = launch(&format!("redis_password_{name}"), LIMITS, Some(&redis));
        launch.redis_password_file = file;
        let output = launch.command().output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            !output.status.success(),
            "{name}: started without the password"
        );
        assert!(
            stderr.contains("cannot connect to Redis"),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("not-the-password"), "{name}: {stderr}");
    }

    // The environment works as well as the file.
    let mut from_env = launch("redis_password_env", LIMITS, Some(&redis));
    from_env.redis_password_file = None;
    let mut command = from_env.command();
    command.env("MAAS_LIMITER_REDIS_PASSWORD", redis.password());
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    use std::io::BufRead as _;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.starts_with("listening on "), "{line:?}");
}

#[test]
fn sigterm_stops_it_cleanly() {
    let mut limiter = LimiterProcess::launch(&launch("sigterm", LIMITS, None)).unwrap();
    let status = limiter.terminate().unwrap();
    assert!(status.success(), "{status:?}\n{}", limiter.log());
    assert!(
        limiter.log().contains("maas-limiter stopped"),
        "{}",
        limiter.log()
    );
}

#[test]
fn a_lost_redis_answers_unavailable_within_seconds() {
    let (mut redis, limiter, client) = with_redis("redis_lost");
    assert_eq!(spend(&client, "alice", 1), Code::Ok);
    redis.kill();
    type Call<'a> = Box<dyn Fn() -> Result<(), maas_testkit::GrpcStatus> + 'a>;
    let calls: [(&str, Call); 5] = [
        (
            "ShouldRateLimit",
            Box::new(|| client.should_rate_limit(&hits("alice", 1)).map(drop)),
        ),
        (
            "CheckRateLimit",
            Box::new(|| client.check_rate_limit(&hits("alice", 1)).map(drop)),
        ),
        (
            "Report",
            Box::new(|| client.report(&hits("alice", 1)).map(drop)),
        ),
        (
            "Reserve",
            Box::new(|| client.reserve(&reserve("alice", 1, None)).map(drop)),
        ),
        (
            "Commit",
            Box::new(|| client.commit(&commit("alice", "", 1)).map(drop)),
        ),
    ];
    for (method, call) in calls {
        let started = std::time::Instant::now();
        let status = call().unwrap_err();
        assert_eq!(status.code(), GrpcCode::Unavailable, "{method}: {status:?}");
        // Not the client's 5 s deadline: the limiter gives up on Redis itself.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{method} took {:?}",
            started.elapsed()
        );
    }
    assert!(
        limiter.log().contains("limits storage failed"),
        "{}",
        limiter.log()
    );
}
