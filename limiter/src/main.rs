//! `maas-limiter`: one rate limiter that many gateways share. It serves
//! Envoy's rate limit service v3 and Kuadrant's check/report/reserve/commit
//! extension over gRPC (h2c) on one port, with Limitador's engine: limits
//! from a Limitador limits file, counters and reserve holds in Redis (shared
//! by every limiter on that Redis, kept across restarts) or in memory.
//!
//! It prints `listening on http://ADDR` on stdout once bound, logs to
//! stderr (`RUST_LOG`), stops on SIGTERM or SIGINT after the calls in
//! flight, and exits non-zero with one line naming the problem when the
//! limits file, Redis or the address is unusable.

mod engine;
mod limits_file;
mod redis_password;
mod redis_version;
mod request;
mod service;
mod statuses;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::engine::{Engine, EngineError, Storage};
use crate::limits_file::LimitsFileError;
use crate::service::RateLimitService;

#[derive(Debug, Parser)]
#[command(name = "maas-limiter", version, about)]
struct Args {
    /// Address to serve gRPC (h2c) on; port 0 takes a free one.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8081")]
    listen: SocketAddr,
    /// The limits, in Limitador's limits-file format (YAML).
    #[arg(long, value_name = "FILE")]
    limits: PathBuf,
    /// Keep counters and holds in this Redis (`redis://host:port[/db]`);
    /// without it they live in this process's memory.
    #[arg(long, value_name = "URL")]
    redis: Option<String>,
    /// A file holding the Redis password (one line), e.g. a mounted Secret;
    /// or set MAAS_LIMITER_REDIS_PASSWORD. Never in the URL: a command line
    /// is readable by every local user.
    #[arg(long, value_name = "FILE")]
    redis_password_file: Option<PathBuf>,
    /// The longest a Reserve holds capacity uncommitted (seconds); also the
    /// hold of a Reserve that sets no `ttl`. The default is the gateway
    /// filter's `reservation_ttl_ms` (600 s), which sets each Reserve's own
    /// `ttl` and ends the request with its hold: below it, holds would end
    /// while their requests still run.
    #[arg(long, value_name = "SECS", default_value_t = 600,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    max_hold_secs: u64,
}

#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error(transparent)]
    Limits(#[from] LimitsFileError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Password(#[from] redis_password::PasswordError),
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot handle SIGTERM/SIGINT: {0}")]
    Signals(std::io::Error),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let started = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(StartError::Runtime)
        .and_then(|runtime| runtime.block_on(serve(args)));
    match started {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("maas-limiter: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(args: Args) -> Result<(), StartError> {
    let limits = limits_file::load(&args.limits)?;
    let namespaces: std::collections::BTreeSet<_> = limits
        .iter()
        .map(|l| l.namespace().as_ref().to_string())
        .collect();
    let password = redis_password::resolve(
        args.redis.as_deref(),
        args.redis_password_file.as_deref(),
        std::env::var(redis_password::PASSWORD_ENV).ok(),
    )?;
    let storage = match args.redis {
        Some(url) => Storage::Redis { url, password },
        None => Storage::Memory,
    };
    let count = limits.len();
    let engine = Engine::start(&storage, limits, Duration::from_secs(args.max_hold_secs)).await?;
    let storage_name = engine.storage_name();
    let service = RateLimitService::new(Arc::new(engine));

    let shutdown = shutdown_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| StartError::Bind(args.listen, e))?;
    let bound = listener
        .local_addr()
        .map_err(|e| StartError::Bind(args.listen, e))?;
    println!("listening on http://{bound}");
    tracing::info!(
        addr = %bound,
        storage = storage_name,
        limits = count,
        ?namespaces,
        max_hold_secs = args.max_hold_secs,
        "maas-limiter serving"
    );
    tonic::transport::Server::builder()
        .add_service(service.envoy_rls())
        .add_service(service.kuadrant())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await?;
    tracing::info!("maas-limiter stopped");
    Ok(())
}

/// Resolves at SIGINT or SIGTERM. The handlers are installed here, before
/// the listener is announced, so a signal sent as soon as a supervisor sees
/// it listening is never taken for the default (death).
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>, StartError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).map_err(StartError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(StartError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down: finishing the calls in flight");
    })
}
