//! `maas-stack [--config FILE] [--listen-port 10000] [--admin-port 9901]
//! [--upstream-port 0 | --upstream HOST:PORT] [--state-dir .cache/run]`: what
//! `make run` runs. Starts the OpenAI-shaped upstream and Envoy with the
//! release filter in front of it, prints where they are, and stays in the
//! foreground until SIGINT or SIGTERM, then stops Envoy and the upstream.
//! Exits non-zero, with Envoy's log, if Envoy fails to start or exits on its
//! own. The work is in [`maas_testkit::stack`].

use std::process::ExitCode;
use std::time::Duration;

use maas_testkit::stack::{
    parse_args, Stack, StackError, StopSignals, UsageError, READY_TIMEOUT, USAGE,
};

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
    println!("{}", stack.banner(ready));

    loop {
        if let Some(signal) = signals.wait(WATCH_INTERVAL) {
            eprintln!("maas-stack: {signal} received; stopping Envoy and the upstream");
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
