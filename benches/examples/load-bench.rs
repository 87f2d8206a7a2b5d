//! The typed half of `benches/load.sh`
//! (`cargo build --release -p maas-benches --example load-bench`):
//!
//! `load-bench render --out-dir DIR --upstream HOST:PORT --key KEY [--limiter HOST:PORT] --variant NAME=none|NAME=MODULE.wasm|NAME=global:MODULE.wasm…`
//!   writes our filter's benchmark configuration (one key: KEY) as
//!   `DIR/filter-config.json`, and `DIR/filter-config.global.json` when a
//!   variant's limits are global, and one Envoy bootstrap per variant,
//!   `DIR/NAME.yaml`, rendered from `envoy/gateway.template.yaml` (access log
//!   `DIR/NAME.access.log`, listener and admin on ephemeral ports; global
//!   variants reach the limiter at `--limiter`).
//!
//!   Variants `NAME=provider:KIND:PATH` route the model to the stand-in
//!   provider at `--provider HOST:PORT` (its CA `DIR/provider-ca.pem`, its
//!   key `DIR/provider.key`, as `load-bench provider` leaves them; the
//!   credential's SDS file is written into DIR).
//!
//! `load-bench provider --out-dir DIR --upstream HOST:PORT`
//!   makes a throwaway CA (the `openssl` command) and a certificate for the
//!   bench provider's host, starts a TLS-terminating Envoy in front of the
//!   upstream (`MAAS_ENVOY` or testkit's Envoy), writes `DIR/provider-ca.pem`
//!   and `DIR/provider.key`, prints `provider listening on HOST:PORT` and
//!   keeps it until SIGTERM, SIGINT or SIGHUP; `taskset` pins it.
//!
//! `load-bench limiter --out-dir DIR --key KEY`
//!   writes `DIR/limits.yaml` (the global configuration's limits), starts a
//!   `redis-server` and a `maas-limiter` on it (testkit's harness: loopback,
//!   ephemeral ports), prints `limiter listening on HOST:PORT` and keeps
//!   both until it gets SIGTERM, SIGINT or SIGHUP. Both inherit its CPU
//!   affinity, so `taskset` on this command pins them.
//!
//! `load-bench report --results FILE --baseline NAME --empty NAME --filter NAME… [--label NAME=TEXT…] [--saturation TEXT] [--paced TEXT]`
//!   prints the Markdown table of medians, costs against the baselines and
//!   the issue's targets.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use maas_benches::load::report::{self, Roles, RunShape};
use maas_benches::load::variants::{
    bench_filter_config, bench_limits_file, bench_provider_spec, render_variant, BenchProvider,
    LimitMode, Route, Variant, BENCH_PROVIDER_HOST,
};
use maas_testkit::envoy::{envoy_binary, TlsFront};
use maas_testkit::gateway::{gateway_template_path, write_credential_sds};
use maas_testkit::{LimiterLaunch, LimiterProcess, RedisProcess, TestCa};

const USAGE: &str = "usage:\n  load-bench render --out-dir DIR --upstream HOST:PORT --key KEY [--limiter HOST:PORT] [--provider HOST:PORT] --variant NAME=none|NAME=PATH|NAME=global:PATH|NAME=provider:KIND:PATH [--variant ...]\n  load-bench provider --out-dir DIR --upstream HOST:PORT\n  load-bench limiter --out-dir DIR --key KEY\n  load-bench report --results FILE --baseline NAME --empty NAME --filter NAME [--filter ...] [--label NAME=TEXT ...] [--saturation TEXT] [--paced TEXT]";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let outcome = match args.next().as_deref() {
        Some("render") => render(args),
        Some("limiter") => limiter(args),
        Some("provider") => provider(args),
        Some("report") => report(args),
        _ => Err(String::new()),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("load-bench: {problem}");
            }
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// `--flag value` pairs, in order; a flag without a value is an error.
fn pairs(mut args: impl Iterator<Item = String>) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        pairs.push((flag, value));
    }
    Ok(pairs)
}

fn socket_addr(flag: &str, value: &str) -> Result<SocketAddr, String> {
    value
        .parse()
        .map_err(|_| format!("{flag} {value:?} is not IP:PORT"))
}

/// An absolute path: Envoy resolves relative ones against its own working
/// directory.
fn absolute(dir: &Path) -> Result<PathBuf, String> {
    std::path::absolute(dir).map_err(|e| format!("{dir:?}: {e}"))
}

fn write(path: PathBuf, text: String) -> Result<(), String> {
    std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn render(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut out_dir, mut upstream, mut key, mut variants) = (None, None, None, Vec::new());
    let (mut limiter, mut provider_addr) = (None, None);
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--out-dir" => out_dir = Some(PathBuf::from(value)),
            "--upstream" => upstream = Some(socket_addr(&flag, &value)?),
            "--limiter" => limiter = Some(socket_addr(&flag, &value)?),
            "--provider" => provider_addr = Some(socket_addr(&flag, &value)?),
            "--key" => key = Some(value),
            "--variant" => variants.push(value.parse::<Variant>().map_err(|e| e.to_string())?),
            other => return Err(format!("render: unknown argument {other:?}")),
        }
    }
    let (Some(out_dir), Some(upstream), Some(key)) = (out_dir, upstream, key) else {
        return Err("render needs --out-dir, --upstream and --key".into());
    };
    if variants.is_empty() {
        return Err("render needs at least one --variant".into());
    }
    let out_dir = absolute(&out_dir)?;
    let template_path = gateway_template_path();
    let template = std::fs::read_to_string(&template_path)
        .map_err(|e| format!("cannot read {}: {e}", template_path.display()))?;
    for (limits, name) in [
        (LimitMode::Local, "filter-config.json"),
        (LimitMode::Global, "filter-config.global.json"),
    ] {
        if limits == LimitMode::Local || variants.iter().any(|v| v.limits() == limits) {
            let config = bench_filter_config(&key, limits, Route::Local);
            write(out_dir.join(name), format!("{config:#}\n"))?;
        }
    }
    let provider = provider_addr.map(|addr| BenchProvider {
        addr,
        ca_file: out_dir.join(PROVIDER_CA),
        secret_file: out_dir.join(PROVIDER_KEY),
    });
    for variant in &variants {
        let access_log = out_dir.join(format!("{}.access.log", variant.name));
        if let (Route::Provider(kind), Some(provider)) = (variant.route(), &provider) {
            // One SDS file per provider name, shared by the variants.
            write_credential_sds(&out_dir, &[bench_provider_spec(provider, kind)])
                .map_err(|e| format!("variant {}: {e}", variant.name))?;
        }
        let bootstrap = render_variant(
            &template,
            variant,
            &key,
            upstream,
            limiter,
            provider.as_ref(),
            &out_dir,
            &access_log,
        )
        .map_err(|e| format!("variant {}: {e}", variant.name))?;
        write(out_dir.join(format!("{}.yaml", variant.name)), bootstrap)?;
    }
    Ok(())
}

/// Set by the signal handler; the main thread polls it.
static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn request_stop(_signal: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn limiter(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut out_dir, mut key) = (None, None);
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--out-dir" => out_dir = Some(PathBuf::from(value)),
            "--key" => key = Some(value),
            other => return Err(format!("limiter: unknown argument {other:?}")),
        }
    }
    let (Some(out_dir), Some(key)) = (out_dir, key) else {
        return Err("limiter needs --out-dir and --key".into());
    };
    let out_dir = absolute(&out_dir)?;
    let limits = out_dir.join("limits.yaml");
    write(
        limits.clone(),
        bench_limits_file(&key).map_err(|e| e.to_string())?,
    )?;
    stop_on_signals();
    let redis = RedisProcess::start()?;
    let launch = LimiterLaunch {
        log: Some(out_dir.join("limiter.log")),
        ..LimiterLaunch::new(&limits).with_redis(&redis)
    };
    let limiter = LimiterProcess::launch(&launch)?;
    println!("limiter listening on {}", limiter.addr());
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // The limiter before its storage, so it never sees Redis vanish.
    drop(limiter);
    drop(redis);
    Ok(())
}

/// Where `load-bench provider` leaves the CA and the credential for `render`.
const PROVIDER_CA: &str = "provider-ca.pem";
const PROVIDER_KEY: &str = "provider.key";

fn provider(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut out_dir, mut upstream) = (None, None);
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--out-dir" => out_dir = Some(PathBuf::from(value)),
            "--upstream" => upstream = Some(socket_addr(&flag, &value)?),
            other => return Err(format!("provider: unknown argument {other:?}")),
        }
    }
    let (Some(out_dir), Some(upstream)) = (out_dir, upstream) else {
        return Err("provider needs --out-dir and --upstream".into());
    };
    let out_dir = absolute(&out_dir)?;
    stop_on_signals();
    let ca = TestCa::try_create("maas load-bench provider CA")?;
    let cert = ca.try_issue(BENCH_PROVIDER_HOST)?;
    std::fs::copy(ca.cert(), out_dir.join(PROVIDER_CA))
        .map_err(|e| format!("cannot copy the CA certificate: {e}"))?;
    write(out_dir.join(PROVIDER_KEY), "sk-bench-provider\n".into())?;
    let envoy = std::env::var_os("MAAS_ENVOY").map_or_else(envoy_binary, PathBuf::from);
    let front = TlsFront::try_start(&envoy, &cert.cert, &cert.key, upstream)?;
    println!("provider listening on {}", front.addr());
    while !STOP.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(front);
    Ok(())
}

/// Installs the handlers `STOP` is set by, before anything is spawned: the
/// default action would end this process without dropping its children
/// (they would still get SIGTERM from PR_SET_PDEATHSIG, but their scratch
/// folders would stay). Children start with default handlers.
fn stop_on_signals() {
    for signal in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        unsafe {
            libc::signal(signal, request_stop as *const () as libc::sighandler_t);
        }
    }
}

fn report(args: impl Iterator<Item = String>) -> Result<(), String> {
    let (mut results, mut baseline, mut empty, mut filters) = (None, None, None, Vec::new());
    let mut labels = BTreeMap::new();
    let mut shape = RunShape {
        saturation: "wrk at full speed".into(),
        paced: "wrk with a pause between requests".into(),
    };
    for (flag, value) in pairs(args)? {
        match flag.as_str() {
            "--results" => results = Some(PathBuf::from(value)),
            "--baseline" => baseline = Some(value),
            "--empty" => empty = Some(value),
            "--filter" => filters.push(value),
            "--label" => {
                let (name, text) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--label {value:?}: expected NAME=TEXT"))?;
                labels.insert(name.to_owned(), text.to_owned());
            }
            "--saturation" => shape.saturation = value,
            "--paced" => shape.paced = value,
            other => return Err(format!("report: unknown argument {other:?}")),
        }
    }
    let (Some(results), Some(baseline), Some(empty)) = (results, baseline, empty) else {
        return Err("report needs --results, --baseline and --empty".into());
    };
    if filters.is_empty() {
        return Err("report needs at least one --filter".into());
    }
    let text = std::fs::read_to_string(&results)
        .map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let samples = report::parse_results(&text).map_err(|e| e.to_string())?;
    let roles = Roles {
        baseline,
        empty,
        filters,
        labels,
    };
    let markdown = report::render(&samples, &roles, &shape).map_err(|e| e.to_string())?;
    print!("{markdown}");
    Ok(())
}
