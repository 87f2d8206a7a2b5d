//! `maas-stack [options]` (see `--help`): what `make run` runs. Starts the
//! inference server for each model (or the mock, or names an existing
//! upstream), the control plane the gateway syncs keys from, Redis and the
//! limiter when the configuration has global limits, and Envoy with the
//! release filter in front of them; prints where they are and a working key,
//! and stays in the foreground until SIGINT or SIGTERM, then stops Envoy
//! first and the rest after it. Exits non-zero, with Envoy's log, if Envoy
//! fails to start or exits on its own. The work is in the [`maas_stack`]
//! library.
use std::process::ExitCode;
use std::time::Duration;

use maas_stack::{parse_args, Stack, StackError, StopSignals, UsageError, READY_TIMEOUT, USAGE};

/// How often Envoy is checked for having exited on its own.
const WATCH_INTERVAL: Duration = Duration::from_millis(200);

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(UsageError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(UsageError::Invalid(problem)) => {
            eprintln!("maas-stack: {problem}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    // Before anything starts, so a Ctrl-C during start-up stops it cleanly.
    let signals = match StopSignals::install() {
        Ok(signals) => signals,
        Err(error) => {
            eprintln!("maas-stack: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    // Launched on the main thread, which lives as long as Envoy (see the stack docs).
    let mut stack = match Stack::launch(&options) {
        Ok(stack) => stack,
        Err(error) => return failed(&error),
    };
    let ready = match stack.wait_ready(READY_TIMEOUT, |interval| signals.wait(interval)) {
        Ok(ready) => ready,
        Err(StackError::Interrupted(signal)) => {
            stack.shutdown();
            eprintln!("maas-stack: {signal} received while starting; stopped");
            return ExitCode::SUCCESS;
        }
        Err(error) => {
            stack.shutdown();
            return failed(&error);
        }
    };
    // Rendered first and written at once: formatted straight into stdout,
    // its line buffer would let a reader see the banner line by line.
    let banner = stack.banner(ready).to_string();
    println!("{banner}");

    loop {
        if let Some(signal) = signals.wait(WATCH_INTERVAL) {
            eprintln!("maas-stack: {signal} received; stopping Envoy, then the control plane, the limiter and the upstream");
            stack.shutdown();
            eprintln!("maas-stack: stopped");
            return ExitCode::SUCCESS;
        }
        if let Some(error) = stack.exited() {
            stack.shutdown();
            return failed(&error);
        }
    }
}

fn failed(error: &StackError) -> ExitCode {
    eprintln!("maas-stack: {error}");
    ExitCode::FAILURE
}
