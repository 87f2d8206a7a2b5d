//! The bounded soak (`benches/soak.sh`, part of `make bench`): the whole
//! gateway on loopback — Envoy with the release filter, the control plane
//! (managed keys minted through its API), `maas-limiter` on Redis for the
//! global limits, the inference server with SmolLM2 — under mixed traffic
//! from several keys (plain completions, complete streams, streams the
//! client drops after a few events) with limits small enough that 429s are
//! common, while the limiter, Redis, the control plane and the inference
//! server are each killed (SIGKILL) and brought back on their ports on a
//! schedule. Then the ledgers are compared (`maas_benches::soak::ledger`)
//! and a table printed; the exit status is 1 when a target is missed (a
//! window charged past its limit, a lost or doubled charge, a request a
//! down limiter let through), with the reasons on stderr.
//!
//! Bounded: traffic stops after `SOAK_SECONDS` (150) or `SOAK_REQUESTS`
//! (5000) requests, whichever comes first; `SOAK_SCALE` stretches the
//! schedule with the traffic. Everything it starts dies with it. Its files
//! (audit log, clients' record, logs, report) go to `SOAK_DIR`
//! (`target/soak`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use maas_benches::soak::client::{drive, unix_ms, Bounds, Sent, Target, Tokens};
use maas_benches::soak::ledger::{self, AuditLine, FaultRecord, RedisSnapshot, Run};
use maas_benches::soak::plan::{Component, FaultPlan, Plan, Source, DOMAIN, MODEL};
use maas_benches::soak::redis_counters::read_counters;
use maas_testkit::{
    eventually, prometheus, try_request, ControlPlaneLaunch, ControlPlaneProcess, Gateway,
    InferenceLaunch, InferenceServer, LimiterLaunch, LimiterProcess, RedisProcess, Restartable,
};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> ExitCode {
    let scale = env_or("SOAK_SCALE", 1.0);
    let mut plan = Plan::standard(scale, env_or("SOAK_REQUESTS", 5000));
    if let Some(secs) = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        plan.traffic.duration = Duration::from_secs(secs);
    }
    let dir = PathBuf::from(env_or("SOAK_DIR", "target/soak".to_string()));
    match soak(&plan, &dir) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(why) => {
            eprintln!("soak: {why}");
            ExitCode::from(2)
        }
    }
}

fn say(started: Instant, what: &str) {
    eprintln!("==> [{:6.1} s] {what}", started.elapsed().as_secs_f64());
}

/// Everything the soak starts; dropped (killed) together, Envoy first.
struct Stack {
    gateway: Gateway,
    limiter: LimiterProcess,
    redis: RedisProcess,
    cp: ControlPlaneProcess,
    server: InferenceServer,
    /// The clients' keys, in the plan's order, and their ids.
    keys: Vec<(String, String)>,
}

fn start_stack(plan: &Plan, dir: &Path) -> Result<Stack, String> {
    let redis = RedisProcess::start()?;
    let limits = dir.join("limits.yaml");
    let parsed = maas_filter::config::Config::from_json(
        plan.filter_config("placeholder").to_string().as_bytes(),
    )
    .map_err(|e| format!("the plan's filter configuration: {e}"))?;
    let text = maas_filter::limits::global_limits::limitador_limits(
        DOMAIN,
        parsed.subscriptions.iter().map(|s| &**s),
    );
    std::fs::write(&limits, text).map_err(|e| format!("cannot write {limits:?}: {e}"))?;
    let limiter = LimiterProcess::launch(&LimiterLaunch {
        log: Some(dir.join("limiter.log")),
        ..LimiterLaunch::new(&limits).with_redis(&redis)
    })?;
    let server = InferenceServer::launch(&InferenceLaunch {
        log: Some(dir.join("inference.log")),
        args: vec!["--max-running".into(), "8".into()],
        ..InferenceLaunch::default_model()
    })?;
    let cp = ControlPlaneProcess::launch(&ControlPlaneLaunch {
        data_dir: dir.join("control-plane"),
        ..ControlPlaneLaunch::default()
    })?;
    let admin = cp.admin_token();
    for sub in plan
        .subscriptions
        .iter()
        .filter(|s| s.source == Source::ControlPlane)
    {
        let path = format!("/maas-api/v1/subscriptions/{}", sub.name);
        let r = cp.call("PUT", &path, &admin, Some(&sub.api_json()));
        if r.status != 200 {
            return Err(format!("PUT {path}: {} {}", r.status, r.text()));
        }
    }
    let mut keys = Vec::new();
    for (i, client) in plan.clients.iter().enumerate() {
        let key = match client.static_key() {
            Some(key) => key,
            None => mint(&cp, &admin, i, client.subscription, client.owner)?,
        };
        let id = match client.static_id {
            Some(id) => id.to_string(),
            None => maas_filter::auth::managed_keys::parse(&key)
                .map(|k| k.id.to_string())
                .ok_or_else(|| format!("the control plane minted an odd key: {key}"))?,
        };
        keys.push((key, id));
    }
    let gateway = Gateway::builder()
        .filter_config(plan.filter_config(&cp.gateway_token()))
        .model(MODEL, server.addr())
        .control_plane(cp.addr())
        .limiter(limiter.addr())
        .concurrency(2)
        .try_start()
        .map_err(|e| e.to_string())?;
    // The control plane's subscriptions arrive with the first syncs.
    let wanted = plan.subscriptions.len() as f64;
    eventually(Duration::from_secs(30), || {
        match prometheus::metric(&gateway.prometheus(), "maas_subscriptions", &[]) {
            Some(n) if n >= wanted => Ok(()),
            other => Err(format!("subscriptions in force: {other:?}, want {wanted}")),
        }
    });
    Ok(Stack {
        gateway,
        limiter,
        redis,
        cp,
        server,
        keys,
    })
}

fn mint(
    cp: &ControlPlaneProcess,
    admin: &str,
    i: usize,
    subscription: &str,
    owner: &str,
) -> Result<String, String> {
    let body = serde_json::json!({
        "name": format!("soak-{i}"), "subscription": subscription, "owner": owner
    });
    let r = cp.call("POST", "/maas-api/v1/api-keys", admin, Some(&body));
    (r.status == 201)
        .then(|| r.json()["key"].as_str().map(str::to_string))
        .flatten()
        .ok_or_else(|| format!("minting a key for {owner}: {} {}", r.status, r.text()))
}

/// The inference server's token counters now.
fn server_tokens(server: &InferenceServer) -> Result<Tokens, String> {
    let r = try_request("GET", &server.url("/metrics"), &[], None).map_err(|e| e.to_string())?;
    let text = r.text();
    let read = |name| prometheus::metric(&text, name, &[]).unwrap_or(0.0) as u64;
    Ok(Tokens {
        prompt: read("inference_prompt_tokens_total"),
        completion: read("inference_generated_tokens_total"),
    })
}

/// The ledgers that live in processes the schedule kills, read before each
/// kill and at the end.
struct Books {
    /// Per inference server lifetime: its counters at its last reading.
    server: Vec<Tokens>,
    redis: Vec<RedisSnapshot>,
    faults: Vec<FaultRecord>,
}

impl Books {
    fn read_server(&mut self, stack: &Stack) -> Result<(), String> {
        let now = server_tokens(&stack.server)?;
        if let Some(last) = self.server.last_mut() {
            *last = now;
        }
        Ok(())
    }

    fn read_redis(&mut self, stack: &Stack) -> Result<(), String> {
        let counters = read_counters(stack.redis.port(), stack.redis.password())?;
        self.redis.push(RedisSnapshot {
            lifetime: self.redis.len(),
            taken_ms: unix_ms(),
            counters,
        });
        Ok(())
    }

    /// Kills `fault.component`, waits, brings it back on its port.
    fn inject(&mut self, stack: &mut Stack, fault: &FaultPlan) -> Result<(), String> {
        // Read right before the kill: what happens between the reading and
        // the kill (a few milliseconds) is the only thing not counted.
        match fault.component {
            Component::InferenceServer => self.read_server(stack)?,
            Component::Redis => self.read_redis(stack)?,
            Component::Limiter | Component::ControlPlane => {}
        }
        let killed_ms = unix_ms();
        match fault.component {
            Component::Limiter => stack.limiter.kill(),
            Component::Redis => stack.redis.kill(),
            Component::ControlPlane => stack.cp.kill(),
            Component::InferenceServer => stack.server.kill(),
        }
        std::thread::sleep(fault.down);
        match fault.component {
            Component::Limiter => stack.limiter.restart()?,
            Component::Redis => stack.redis.restart()?,
            Component::ControlPlane => stack.cp.restart()?,
            Component::InferenceServer => {
                stack.server.restart()?;
                self.server.push(server_tokens(&stack.server)?);
            }
        }
        self.faults.push(FaultRecord {
            component: fault.component,
            killed_ms,
            back_ms: unix_ms(),
        });
        Ok(())
    }
}

/// Runs the soak; `Ok(false)` when a target was missed.
fn soak(plan: &Plan, dir: &Path) -> Result<bool, String> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
    say(
        started,
        "starting Redis, the limiter, the inference server, the control plane, Envoy",
    );
    let mut stack = start_stack(plan, dir)?;
    let mut books = Books {
        server: vec![Tokens::default()],
        redis: Vec::new(),
        faults: Vec::new(),
    };
    // Nothing has reached the server yet, but start from its reading.
    let baseline = server_tokens(&stack.server)?;
    say(
        started,
        &format!(
            "{} clients for {:?} (at most {} requests); faults: {}",
            plan.clients.len(),
            plan.traffic.duration,
            plan.traffic.max_requests,
            plan.faults
                .iter()
                .map(|f| format!("{} at {:?} for {:?}", f.component.name(), f.at, f.down))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );

    let budget = AtomicU64::new(plan.traffic.max_requests);
    let stop = AtomicBool::new(false);
    let traffic_start = Instant::now();
    let bounds = Bounds {
        traffic: &plan.traffic,
        started: traffic_start,
        budget: &budget,
        stop: &stop,
    };
    let gateway_addr = stack.gateway.addr();
    let keys: Vec<String> = stack.keys.iter().map(|(k, _)| k.clone()).collect();
    let mut schedule = plan.faults.clone();
    schedule.sort_by_key(|f| f.at);
    // Faults are injected from this thread, which outlives every process it
    // starts (they die with the thread that spawned them).
    let (sent, fault_error) = std::thread::scope(|scope| {
        let handles: Vec<_> = keys
            .iter()
            .enumerate()
            .map(|(client, key)| {
                let bounds = &bounds;
                scope.spawn(move || {
                    let target = Target {
                        gateway: gateway_addr,
                        key,
                        max_tokens: bounds.traffic.max_tokens,
                    };
                    drive(client, &target, bounds)
                })
            })
            .collect();
        let mut fault_error = None;
        for fault in &schedule {
            if let Some(wait) = fault.at.checked_sub(traffic_start.elapsed()) {
                std::thread::sleep(wait);
            }
            say(started, &format!("killing the {}", fault.component.name()));
            if let Err(why) = books.inject(&mut stack, fault) {
                fault_error = Some(format!("{}: {why}", fault.component.name()));
                stop.store(true, Ordering::Relaxed);
                break;
            }
            say(started, &format!("the {} is back", fault.component.name()));
        }
        let mut sent: Vec<Sent> = Vec::new();
        for handle in handles {
            match handle.join() {
                Ok(record) => sent.extend(record),
                Err(_) => fault_error = Some("a client thread panicked".into()),
            }
        }
        (sent, fault_error)
    });
    if let Some(why) = fault_error {
        return Err(why);
    }
    say(started, &format!("traffic over: {} requests", sent.len()));

    settle(&stack, sent.len());
    books.read_server(&stack)?;
    if let Some(first) = books.server.first_mut() {
        first.prompt -= baseline.prompt.min(first.prompt);
        first.completion -= baseline.completion.min(first.completion);
    }
    books.read_redis(&stack)?;
    let filter_metrics = stack.gateway.prometheus();
    let audit_text = stack.gateway.access_log_text();
    let _ = std::fs::write(dir.join("audit.log"), &audit_text);
    let _ = std::fs::write(dir.join("envoy-stats.txt"), &filter_metrics);
    let audit: Vec<AuditLine> = audit_text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(AuditLine::parse)
        .collect::<Result<_, _>>()?;
    write_sent(&dir.join("sent.tsv"), &sent);
    let timeline: String = books
        .faults
        .iter()
        .map(|x| format!("{}\t{}\t{}\n", x.component.name(), x.killed_ms, x.back_ms))
        .collect();
    let _ = std::fs::write(
        dir.join("faults.tsv"),
        format!("component\tkilled_ms\tback_ms\n{timeline}"),
    );

    let run = Run {
        plan,
        key_ids: stack.keys.iter().map(|(_, id)| id.clone()).collect(),
        sent,
        audit,
        faults: books.faults,
        server: books.server,
        redis: books.redis,
        filter_metrics,
    };
    let findings = ledger::compare(&run);
    let table = ledger::markdown(&run, &findings);
    println!("{table}");
    let _ = std::fs::write(dir.join("report.md"), &table);
    let missed = findings.missed_targets();
    for line in &missed {
        eprintln!("soak: {line}");
    }
    say(started, &format!("done; files in {}", dir.display()));
    Ok(missed.is_empty())
}

/// Waits until every request has its audit line and the inference server
/// has retired every sequence (a cut stream runs until it notices), so
/// the ledgers are read at rest.
fn settle(stack: &Stack, requests: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let logged = stack
            .gateway
            .access_log_text()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        let busy = try_request("GET", &stack.server.url("/metrics"), &[], None)
            .ok()
            .and_then(|r| {
                let text = r.text();
                let running = prometheus::metric(&text, "inference_running_sequences", &[])?;
                let queued = prometheus::metric(&text, "inference_queue_depth", &[])?;
                Some(running + queued > 0.0)
            })
            .unwrap_or(true);
        if logged >= requests && !busy {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The clients' record, one request per line, for a look by hand.
fn write_sent(path: &Path, sent: &[Sent]) {
    let mut text = String::from(
        "client\tkind\tprompt\tsent_ms\telapsed_ms\tstatus\terror\tprompt_tokens\tcompletion_tokens\tcontent_events\tcut\n",
    );
    for s in sent {
        text.push_str(&format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n",
            s.client,
            s.kind.label(),
            s.prompt,
            s.sent_ms,
            s.elapsed_ms,
            s.status.map_or("-".into(), |c| c.to_string()),
            s.error
                .as_deref()
                .or(s.transport_error.as_deref())
                .unwrap_or("-"),
            s.usage.map_or("-".into(), |u| u.prompt.to_string()),
            s.usage.map_or("-".into(), |u| u.completion.to_string()),
            s.content_events,
            s.cut
        ));
    }
    let _ = std::fs::write(path, text);
}
