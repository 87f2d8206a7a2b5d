//! `mock-upstream [--host 127.0.0.1] [--port 8000]`: the test upstream in the
//! foreground, for `make run` and whole-system benchmarks. Stops on SIGINT or
//! SIGTERM. Keeps only the last 1000 requests so a long benchmark does not
//! grow its memory.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use maas_testkit::mock_upstream::{serve, RequestLog};
use tokio::signal::unix::{signal, SignalKind};

const USAGE: &str = "usage: mock-upstream [--host 127.0.0.1] [--port 8000]";
const RECORD_LIMIT: usize = 1000;

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<(String, u16), String> {
    let (mut host, mut port) = ("127.0.0.1".to_owned(), 8000);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--host" => host = value()?,
            "--port" => {
                let text = value()?;
                port = text.parse().map_err(|_| format!("bad --port {text:?}"))?;
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok((host, port))
}

#[tokio::main]
async fn main() -> ExitCode {
    let (host, port) = match parse_args(std::env::args().skip(1)) {
        Ok(parsed) => parsed,
        Err(problem) => {
            if !problem.is_empty() {
                eprintln!("mock-upstream: {problem}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let listener = match tokio::net::TcpListener::bind((host.as_str(), port)).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("mock-upstream: cannot bind {host}:{port}: {error}");
            return ExitCode::FAILURE;
        }
    };
    let addr: SocketAddr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
    let (mut interrupt, mut terminate) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(interrupt), Ok(terminate)) => (interrupt, terminate),
        (Err(error), _) | (_, Err(error)) => {
            eprintln!("mock-upstream: cannot install signal handlers: {error}");
            return ExitCode::FAILURE;
        }
    };
    println!("mock-upstream listening on {addr}");
    let log = Arc::new(RequestLog::new(Some(RECORD_LIMIT)));
    serve(listener, log, async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
    .await;
    ExitCode::SUCCESS
}
