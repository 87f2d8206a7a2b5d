//! `maas-stack`, the runner behind `make run`, used the way a developer uses
//! it: start the built binary with the shipped demo configuration, call the
//! gateway with the README's demo keys, read the audit log, stop it with a
//! signal. Ports are free loopback ports and the state directory is a temp
//! dir, so this runs beside a developer's own `make run`.
//!
//! Needs the release filter and Envoy, which `make test` provides; without
//! them these tests fail (they never pass silently).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use maas_stack::DEMO_EXTERNAL_MODEL;
use maas_testkit::envoy::{find_envoy_binary, find_filter_wasm};
use maas_testkit::{eventually, post_json, request, try_request, workspace_root};
use serde_json::{json, Value};

const FREE_KEY: &str = "sk-maas-demo-free-7f3c9a1e5b2d";
const REVOKED_KEY: &str = "sk-maas-demo-revoked-93d1b7c05ae4";
const MODEL: &str = "smollm2-135m-instruct";
/// Envoy with the V8 filter starts in about a second; CI machines are slower.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(10);

fn require_artifacts() {
    assert!(
        find_envoy_binary().is_some() && find_filter_wasm().is_some(),
        "maas-stack tests need Envoy and the release filter module: run `make test` \
         (it fetches Envoy and builds target/wasm32-wasip1/release/maas_filter.wasm)"
    );
}

/// The demo configuration `make run` starts with, but for the limiter's
/// timeout: its 250 ms suits one machine at rest, while here every
/// neighbouring test's stack loads a model and compiles the filter on the
/// same two cores (see `filter/tests/global_limits.rs`).
fn demo_config() -> PathBuf {
    static COPY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    COPY.get_or_init(|| {
        let mut config = read_config(&workspace_root().join("envoy/filter-config.json"));
        config["limiter"]["timeout_ms"] = json!(2_000);
        // Written aside and renamed: another test process may be reading
        // the copy (the same text) meanwhile.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let (aside, copy) = (
            dir.join(format!("demo-filter-config.json.{}", std::process::id())),
            dir.join("demo-filter-config.json"),
        );
        std::fs::write(&aside, config.to_string()).expect("write the demo configuration's copy");
        std::fs::rename(&aside, &copy).expect("rename the demo configuration's copy");
        copy
    })
    .clone()
}

/// A filter configuration file's JSON.
fn read_config(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("read the configuration"))
        .expect("the configuration is JSON")
}

/// `N` distinct loopback ports that were free a moment ago.
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind port 0"))
        .collect();
    std::array::from_fn(|index| held[index].local_addr().expect("addr").port())
}

/// A `maas-stack` process with its own ports and directories; killed on drop
/// (Envoy follows it: it gets SIGTERM when its parent dies).
struct Runner {
    child: Child,
    dir: PathBuf,
    gateway: String,
    admin: String,
}

impl Runner {
    fn spawn(config: &Path, env: &[(&str, &str)]) -> Self {
        Self::spawn_with(config, &[], env)
    }

    fn spawn_with(config: &Path, args: &[String], env: &[(&str, &str)]) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "maas-stack-test-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the test dir");
        let [listen, admin] = free_ports();
        let child = Command::new(env!("CARGO_BIN_EXE_maas-stack"))
            .arg("--config")
            .arg(config)
            .args(["--listen-port", &listen.to_string()])
            .args(["--admin-port", &admin.to_string()])
            .args(["--upstream-port", "0"])
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--control-plane-port", "0"])
            .args(["--limiter-port", "0"])
            .arg("--control-plane-dir")
            .arg(dir.join("control-plane"))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("stdout")).expect("stdout file"))
            .stderr(std::fs::File::create(dir.join("stderr")).expect("stderr file"))
            .spawn()
            .expect("start maas-stack");
        Self {
            child,
            gateway: format!("http://127.0.0.1:{listen}"),
            admin: format!("http://127.0.0.1:{admin}"),
            dir,
        }
    }

    /// Spawns and waits until the gateway answers HTTP and maas-stack has
    /// printed its ready banner.
    fn start(config: &Path) -> Self {
        Self::start_with(config, &[])
    }

    fn start_with(config: &Path, args: &[String]) -> Self {
        // The ports `free_ports` found free are released before maas-stack
        // binds them, and another process may take one meanwhile (tests
        // run in parallel): maas-stack then stops at once, naming the port,
        // and a second pair of ports is tried.
        for _ in 0..2 {
            if let Some(runner) = Self::spawn_with(config, args, &[]).wait_ready() {
                return runner;
            }
        }
        panic!("two pairs of free ports were taken before maas-stack could bind them");
    }

    /// Waits until the gateway answers HTTP and maas-stack has printed its
    /// ready banner; `None` if it stopped because a port was taken.
    fn wait_ready(mut self) -> Option<Self> {
        let url = self.url("/v1/models");
        let port_taken = eventually(START_TIMEOUT, || {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                if self.stderr().contains("is already in use") {
                    return Ok(true);
                }
                panic!(
                    "maas-stack exited ({status}) while starting:\n{}",
                    self.output()
                );
            }
            try_request("GET", &url, &[], None)
                .map(drop)
                .map_err(|error| error.to_string())?;
            // The listener can answer before maas-stack has seen Envoy ready;
            // its banner is the signal that it has, read once its last line
            // is there.
            let banner = self.stdout();
            if banner.contains(&format!("{}/v1", self.gateway)) && banner.contains("Ctrl-C stops") {
                Ok(false)
            } else {
                Err("gateway answers; waiting for the maas-stack banner".to_string())
            }
        });
        (!port_taken).then_some(self)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway)
    }

    fn state(&self, name: &str) -> PathBuf {
        self.dir.join("state").join(name)
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("stdout")).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    fn output(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }

    fn envoy_pid(&self) -> libc::pid_t {
        std::fs::read_to_string(self.state("envoy.pid"))
            .expect("maas-stack writes envoy.pid")
            .trim()
            .parse()
            .expect("a pid")
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid fits");
        // SAFETY: kill(2) on our own unreaped child.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill maas-stack");
    }

    /// The exit status, which must come within `timeout`.
    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "maas-stack still running {timeout:?} later:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("maas-stack output:\n{}", self.output());
            eprintln!("kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the pid exists and may be signalled.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A child's pid from the banner: the number after `marker`.
fn banner_pid(banner: &str, marker: &str) -> libc::pid_t {
    banner
        .split(marker)
        .nth(1)
        .and_then(|rest| rest.split([';', ')']).next())
        .and_then(|pid| pid.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {marker:?} in the banner:\n{banner}"))
}

/// The inference server's pid, from the banner's upstream line.
fn inference_pid(banner: &str) -> libc::pid_t {
    banner_pid(banner, "inference server, pid ")
}

/// The demo key the control plane minted, from the banner.
fn demo_key(banner: &str) -> String {
    banner
        .lines()
        .find_map(|line| line.trim().strip_prefix("KEY="))
        .unwrap_or_else(|| panic!("no KEY= line in the banner:\n{banner}"))
        .to_string()
}

fn bearer(key: &str) -> String {
    format!("Bearer {key}")
}

#[test]
fn make_run_serves_the_demo_configuration_until_sigterm() {
    require_artifacts();
    let mut stack = Runner::start(&demo_config());
    let free = bearer(FREE_KEY);

    let banner = stack.stdout();
    assert!(
        banner.contains(&format!("{}/v1", stack.gateway)),
        "{banner}"
    );
    assert!(banner.contains(&stack.admin), "{banner}");
    assert!(
        banner.contains(&stack.state("audit.log").display().to_string()),
        "{banner}"
    );
    // The control plane minted a demo key, which works at once; the
    // configuration's own keys work beside it.
    let minted = demo_key(&banner);
    assert!(
        minted.starts_with("sk-maas-") && minted != FREE_KEY,
        "{banner}"
    );
    let r = request(
        "GET",
        &stack.url("/v1/models"),
        &[("authorization", &bearer(&minted))],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // The demo key is granted the demo's external model too, served by a
    // stand-in Anthropic provider over TLS and translated both ways.
    let listed: Vec<Value> = r.json()["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .map(|model| model["id"].clone())
        .collect();
    assert!(listed.contains(&json!(MODEL)), "{listed:?}");
    assert!(listed.contains(&json!(DEMO_EXTERNAL_MODEL)), "{listed:?}");
    assert!(banner.contains("stand-in Anthropic provider"), "{banner}");
    let external = post_json(
        &stack.url("/v1/chat/completions"),
        &[("authorization", &bearer(&minted))],
        &json!({ "model": DEMO_EXTERNAL_MODEL, "messages": [{ "role": "user", "content": "Hi" }], "max_tokens": 4 }),
    );
    assert_eq!(external.status, 200, "{}", external.text());
    let answer = external.json();
    assert_eq!(answer["object"], "chat.completion", "{answer}");
    assert_eq!(answer["model"], DEMO_EXTERNAL_MODEL, "{answer}");
    assert!(
        answer["choices"][0]["message"]["content"]
            .as_str()
            .is_some_and(|text| text.starts_with("tok ")),
        "{answer}"
    );
    assert!(
        answer["usage"]["total_tokens"]
            .as_u64()
            .is_some_and(|t| t > 0),
        "{answer}"
    );
    // Its API through the gateway, with the admin token it created.
    let admin_token = std::fs::read_to_string(stack.dir.join("control-plane/admin-token"))
        .expect("the admin token");
    let subs = request(
        "GET",
        &stack.url("/maas-api/v1/subscriptions"),
        &[("authorization", &bearer(admin_token.trim()))],
        None,
    );
    assert_eq!(subs.status, 200, "{}", subs.text());
    assert!(subs.text().contains("\"demo\""), "{}", subs.text());
    // Every demo model is priced, so showback shows money.
    let prices = request(
        "GET",
        &stack.url("/maas-api/v1/prices"),
        &[("authorization", &bearer(admin_token.trim()))],
        None,
    );
    assert_eq!(prices.status, 200, "{}", prices.text());
    let priced: Vec<Value> = prices.json()["data"]
        .as_array()
        .expect("a price list")
        .iter()
        .map(|p| p["model"].clone())
        .collect();
    assert!(
        priced.contains(&json!(MODEL)) && priced.contains(&json!("claude-demo")),
        "{priced:?}"
    );

    let models = request(
        "GET",
        &stack.url("/v1/models"),
        &[("authorization", &free)],
        None,
    );
    assert_eq!(models.status, 200, "{}", models.text());
    let ids: Vec<Value> = models.json()["data"]
        .as_array()
        .expect("a model list")
        .iter()
        .map(|model| model["id"].clone())
        .collect();
    assert!(ids.contains(&json!(MODEL)), "{ids:?}");

    // The real model answers through the gateway.
    let question = "What is the capital of France? Answer in one word.";
    let chat = post_json(
        &stack.url("/v1/chat/completions"),
        &[("authorization", &free)],
        &json!({ "model": MODEL, "messages": [{ "role": "user", "content": question }], "max_tokens": 16, "temperature": 0 }),
    );
    assert_eq!(chat.status, 200, "{}", chat.text());
    let answer = chat.json();
    let content = answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(content.contains("Paris"), "{answer}");
    let usage = answer["usage"].clone();
    assert!(
        usage["total_tokens"].as_u64().is_some_and(|t| t > 0),
        "{usage}"
    );

    let revoked = request(
        "GET",
        &stack.url("/v1/models"),
        &[("authorization", &bearer(REVOKED_KEY))],
        None,
    );
    assert_eq!(revoked.status, 401, "{}", revoked.text());
    assert_eq!(revoked.json()["error"]["code"], "invalid_api_key");

    let audit_log = stack.state("audit.log");
    let record = eventually(Duration::from_secs(10), || {
        let text = std::fs::read_to_string(&audit_log).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|record| {
                record["key_id"] == "demo-free" && record["path"] == "/v1/chat/completions"
            })
            .ok_or_else(|| format!("no demo-free completion in {audit_log:?}:\n{text}"))
    });
    // The gateway charged exactly what the model server reported.
    for field in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(record[field], usage[field], "{field}: {record}");
    }
    assert_eq!(record["usage"], "reported", "{record}");
    // `free`'s daily token limit is global: the stack's limiter admitted
    // that completion (one reservation, committed after it).
    let metrics = request(
        "GET",
        &format!("{}/stats/prometheus", stack.admin),
        &[],
        None,
    )
    .text();
    let reserved =
        maas_testkit::prometheus::metric(&metrics, "maas_limiter_calls_total", &[("result", "ok")]);
    assert!(reserved.is_some_and(|n| n >= 1.0), "{metrics}");
    let limiter = banner_pid(&banner, "global limits, pid ");
    assert!(process_exists(limiter));
    // Redis has a password: a local user without it can neither reset nor
    // read the global counters, and it is on no command line.
    let redis_port = banner_pid(&banner, "Redis on port ") as u16;
    let answer = maas_testkit::redis::redis_call(redis_port, &[b"FLUSHALL\r\n"]).unwrap();
    assert!(answer.starts_with("-NOAUTH"), "{answer}");
    let cmdline = std::fs::read(format!("/proc/{limiter}/cmdline")).unwrap();
    assert!(
        String::from_utf8_lossy(&cmdline).contains("--redis-password-file"),
        "{}",
        String::from_utf8_lossy(&cmdline)
    );
    // The rendered bootstrap holds the control plane's gateway token: only
    // its owner may read it.
    use std::os::unix::fs::PermissionsExt as _;
    let bootstrap = stack.state("envoy.yaml");
    let mode = std::fs::metadata(&bootstrap).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{bootstrap:?}");

    let envoy = stack.envoy_pid();
    assert!(process_exists(envoy));
    let inference = inference_pid(&banner);
    assert!(process_exists(inference));
    let control_plane = banner_pid(&banner, "control plane, pid ");
    assert!(process_exists(control_plane));
    stack.signal(libc::SIGTERM);
    let status = stack.wait_exit(EXIT_TIMEOUT);
    assert!(status.success(), "{status}\n{}", stack.output());
    assert!(
        !process_exists(envoy),
        "Envoy (pid {envoy}) outlived maas-stack"
    );
    assert!(
        !process_exists(inference),
        "the inference server (pid {inference}) outlived maas-stack"
    );
    assert!(
        !process_exists(control_plane),
        "the control plane (pid {control_plane}) outlived maas-stack"
    );
    assert!(
        !process_exists(limiter),
        "the limiter (pid {limiter}) outlived maas-stack"
    );
    assert!(try_request("GET", &stack.url("/v1/models"), &[], None).is_err());
    assert!(
        stack.stderr().contains("SIGTERM received"),
        "{}",
        stack.output()
    );
    assert!(!stack.state("envoy.pid").exists());
}

#[test]
fn envoy_exiting_on_its_own_fails_the_run_with_its_log() {
    require_artifacts();
    let mut stack = Runner::start(&demo_config());
    let envoy = stack.envoy_pid();
    // SAFETY: Envoy is the child of the stack under test, alive (checked by start).
    assert_eq!(unsafe { libc::kill(envoy, libc::SIGKILL) }, 0);
    let status = stack.wait_exit(EXIT_TIMEOUT);
    assert!(!status.success(), "{status}");
    let stderr = stack.stderr();
    assert!(
        stderr.contains("Envoy exited (signal: 9") && stderr.contains("on its own while serving"),
        "{stderr}"
    );
    assert!(
        stderr.contains("envoy.log") || stderr.contains("(Envoy wrote no log)"),
        "{stderr}"
    );
}

/// What a started stack runs, by name and pid, and where the stand-in
/// provider's TLS front (an Envoy of its own) listens.
fn children_of(stack: &Runner) -> ([(&'static str, libc::pid_t); 4], String) {
    let banner = stack.stdout();
    let children = [
        ("Envoy", stack.envoy_pid()),
        ("the inference server", inference_pid(&banner)),
        (
            "the control plane",
            banner_pid(&banner, "control plane, pid "),
        ),
        ("the limiter", banner_pid(&banner, "global limits, pid ")),
    ];
    let provider = banner
        .split("anthropic.demo.internal at ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no demo provider in the banner:\n{banner}"))
        .to_string();
    assert!(
        std::net::TcpStream::connect(&provider).is_ok(),
        "{provider}"
    );
    (children, provider)
}

/// Every child of a stopped stack is gone, and nothing listens for it.
fn assert_all_gone(children: &[(&'static str, libc::pid_t)], provider: &str) {
    eventually(Duration::from_secs(10), || {
        for (name, pid) in children {
            if process_exists(*pid) {
                return Err(format!("{name} (pid {pid}) outlived maas-stack"));
            }
        }
        match std::net::TcpStream::connect(provider) {
            Ok(_) => Err(format!(
                "the demo provider's TLS front still listens on {provider}"
            )),
            Err(_) => Ok(()),
        }
    });
}

#[test]
fn a_killed_stack_leaves_no_process_behind() {
    require_artifacts();
    let mut stack = Runner::start(&demo_config());
    let (children, provider) = children_of(&stack);
    // No cleanup runs: each child must go with its parent on its own.
    stack.signal(libc::SIGKILL);
    let _ = stack.wait_exit(EXIT_TIMEOUT);
    assert_all_gone(&children, &provider);
}

/// The first SIGTERM stops the stack in order (it can take a server's
/// grace period); a second ends it at once, children included.
#[test]
fn a_second_stop_signal_ends_the_stack_at_once() {
    require_artifacts();
    let mut stack = Runner::start(&demo_config());
    let (children, provider) = children_of(&stack);
    stack.signal(libc::SIGTERM);
    // Signals sent together merge into one: the second goes once the first
    // is being handled (stopping takes Envoy's exit and each server's).
    eventually(Duration::from_secs(10), || {
        if stack.stderr().contains("SIGTERM received") {
            Ok(())
        } else {
            Err("the first SIGTERM is not handled yet".to_string())
        }
    });
    stack.signal(libc::SIGTERM);
    let status = stack.wait_exit(EXIT_TIMEOUT);
    assert_eq!(status.code(), Some(130), "{status}\n{}", stack.stderr());
    assert!(stack.stderr().contains("SIGTERM again: stopping at once"));
    assert_all_gone(&children, &provider);
}

#[test]
fn a_bad_filter_configuration_is_explained_from_envoys_log() {
    require_artifacts();
    let mut config = read_config(&demo_config());
    config["subscriptions"]["free"]["limits"]["tokens"][1] = json!("5/fortnight");
    let dir = std::env::temp_dir().join(format!("maas-stack-bad-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("filter-config.json");
    std::fs::write(&path, config.to_string()).expect("write");

    // Without providers the configuration reaches Envoy, whose refusal is
    // read back from its log.
    let mut stack = Runner::spawn_with(&path, &["--no-demo-provider".to_string()], &[]);
    let status = stack.wait_exit(START_TIMEOUT);
    assert!(!status.success(), "{status}");
    let stderr = stack.stderr();
    assert!(
        stderr.contains("Envoy refused the filter configuration")
            && stderr.contains("invalid filter configuration: subscriptions.free.limits.tokens[1]")
            && stderr.contains("fortnight"),
        "{stderr}"
    );

    // With the demo's provider, the bootstrap's renderer reads the
    // configuration for the backend roles first, and says the same sooner.
    let mut stack = Runner::spawn(&path, &[]);
    let status = stack.wait_exit(START_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "{status}");
    let stderr = stack.stderr();
    assert!(
        stderr.contains("cannot render the Envoy bootstrap")
            && stderr.contains("invalid filter configuration: subscriptions.free.limits.tokens[1]")
            && stderr.contains("fortnight"),
        "{stderr}"
    );
}

/// A configuration with providers of its own needs the file that says
/// where they are and which files hold their keys; without it the stack
/// says so before starting anything.
#[test]
fn a_configuration_with_providers_needs_the_providers_file() {
    require_artifacts();
    let mut config = read_config(&demo_config());
    config["providers"] = json!([{"name": "openai", "kind": "openai-compatible"}]);
    config["external_models"] =
        json!([{"id": "gpt-4.1-mini", "provider": "openai", "model": "gpt-4.1-mini"}]);
    let dir = std::env::temp_dir().join(format!("maas-stack-providers-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("filter-config.json");
    std::fs::write(&path, config.to_string()).expect("write");
    let mut stack = Runner::spawn(&path, &[]);
    let status = stack.wait_exit(START_TIMEOUT);
    assert!(!status.success(), "{status}");
    let stderr = stack.stderr();
    assert!(
        stderr.contains("names `providers`: pass --providers FILE"),
        "{stderr}"
    );
    // A file that does not name the configuration's provider is refused by
    // name, as render-gateway refuses it.
    let providers = dir.join("providers.json");
    std::fs::write(
        &providers,
        r#"[{"name": "other", "host": "h", "secret_file": "/k"}]"#,
    )
    .expect("write");
    let mut stack = Runner::spawn_with(
        &path,
        &["--providers".to_string(), providers.display().to_string()],
        &[],
    );
    let status = stack.wait_exit(START_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!status.success(), "{status}");
    let stderr = stack.stderr();
    assert!(
        stderr.contains("providers.json") && stderr.contains(r#"provider "other""#),
        "{stderr}"
    );
}

#[test]
fn a_busy_port_is_named_with_the_flag_that_moves_it() {
    require_artifacts();
    let held = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = held.local_addr().expect("addr").port();
    let dir = std::env::temp_dir().join(format!("maas-stack-busy-{}", std::process::id()));
    let output = Command::new(env!("CARGO_BIN_EXE_maas-stack"))
        .args(["--listen-port", &port.to_string(), "--admin-port", "0"])
        .arg("--state-dir")
        .arg(&dir)
        .output()
        .expect("run maas-stack");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "port {port} (the gateway listener) is already in use"
        )) && stderr.contains("--listen-port"),
        "{stderr}"
    );
}

#[test]
fn missing_artifacts_point_at_make() {
    let output = Command::new(env!("CARGO_BIN_EXE_maas-stack"))
        .env("MAAS_ENVOY", "/nonexistent/envoy")
        .args(["--state-dir", "/nonexistent/state"])
        .output()
        .expect("run maas-stack");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no Envoy binary at /nonexistent/envoy") && stderr.contains("make run"),
        "{stderr}"
    );

    let output = Command::new(env!("CARGO_BIN_EXE_maas-stack"))
        .arg("--bogus")
        .output()
        .expect("run maas-stack");
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("usage: maas-stack"));
}

/// Runs an example script to its end; its stdout, after asserting it
/// succeeded (its output and stderr in the message otherwise).
fn run_example(command: &mut Command) -> String {
    let output = command.output().expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `examples/openai_client.py` against a started stack, with the pinned
/// `openai` environment `make test` builds.
#[test]
fn the_openai_python_example_runs_against_the_stack() {
    let python = maas_testkit::python_with_openai();
    require_artifacts();
    let stack = Runner::start(&demo_config());
    let stdout = run_example(
        Command::new(&python)
            .arg(workspace_root().join("examples/openai_client.py"))
            .env("MAAS_BASE_URL", stack.url("/v1"))
            .env("MAAS_API_KEY", FREE_KEY),
    );
    assert!(stdout.contains(MODEL), "{stdout}");
    assert!(stdout.contains("stream usage:"), "{stdout}");
}

/// `examples/self-service.sh` against a started stack: mint, use at once,
/// spend the quota, revoke, read the usage.
#[test]
fn the_self_service_example_runs_against_the_stack() {
    require_artifacts();
    let stack = Runner::start(&demo_config());
    let stdout = run_example(
        Command::new("bash")
            .arg(workspace_root().join("examples/self-service.sh"))
            .env("GATEWAY", &stack.gateway)
            .env("MAAS_CONTROL_PLANE_DIR", stack.dir.join("control-plane")),
    );
    for expected in [
        "\"key\":\"sk-maas-",
        "HTTP 429",
        "rate_limit_exceeded",
        "HTTP 401 after",
        "quota-demo",
    ] {
        assert!(stdout.contains(expected), "{expected:?} missing:\n{stdout}");
    }
}

#[test]
fn several_models_each_get_their_own_server_and_route() {
    require_artifacts();
    let model = maas_testkit::default_model();
    // The configured model and a second one, each its own server process.
    let args: Vec<String> = [MODEL, "second"]
        .iter()
        .flat_map(|id| ["--model".to_string(), format!("{id}={}", model.display())])
        .collect();
    let stack = Runner::start_with(&demo_config(), &args);
    let banner = stack.stdout();
    let pids: Vec<libc::pid_t> = banner
        .split("inference server, pid ")
        .skip(1)
        .map(|rest| rest.split(';').next().unwrap().trim().parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2, "{banner}");
    assert_ne!(pids[0], pids[1]);
    assert!(pids.iter().all(|pid| process_exists(*pid)));
    for id in [MODEL, "second"] {
        assert!(banner.contains(&format!("model {id};")), "{banner}");
    }

    // The demo subscription grants both; each answer comes from its own server.
    let demo = bearer(&demo_key(&banner));
    let listed = request(
        "GET",
        &stack.url("/v1/models"),
        &[("authorization", &demo)],
        None,
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    let ids: Vec<String> = listed.json()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect();
    assert!(
        ids.contains(&MODEL.to_string()) && ids.contains(&"second".to_string()),
        "{ids:?}"
    );
    for id in [MODEL, "second"] {
        let body =
            json!({"model": id, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
        let r = post_json(
            &stack.url("/v1/chat/completions"),
            &[("authorization", &demo)],
            &body,
        );
        assert_eq!(r.status, 200, "{id}: {}", r.text());
        assert_eq!(r.json()["model"], id, "answered by another server");
    }
    // The configuration's own `free` subscription names only the first: for
    // its keys the second does not exist (OpenAI's answer, which does not
    // reveal models a caller may not use).
    let free = bearer(FREE_KEY);
    let body = json!({"model": "second", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4});
    let refused = post_json(
        &stack.url("/v1/chat/completions"),
        &[("authorization", &free)],
        &body,
    );
    assert_eq!(refused.status, 404, "{}", refused.text());
    assert_eq!(refused.json()["error"]["code"], "model_not_found");
}
