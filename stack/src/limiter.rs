//! The rate limiter behind the configuration's `global` limits: Redis and
//! `maas-limiter`, with a limits file rendered from the same filter
//! configuration, so the counters the filter's descriptors name exist.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{ensure_free, StackError};
use maas_testkit::gateway::LIMITER_CLUSTER;
use maas_testkit::limiter::{LimiterLaunch, LimiterProcess};
use maas_testkit::redis::RedisProcess;

/// Runs while the stack does; dropped after Envoy (see `Stack`'s fields).
pub struct LocalLimiter {
    pub process: LimiterProcess,
    pub redis: RedisProcess,
    pub limits: PathBuf,
}

/// Starts the limiter when `config` has a `limiter` block; `None` otherwise.
/// A configuration the filter would refuse starts nothing here: Envoy then
/// names the problem (`StackError::FilterConfigRejected`).
pub fn start(config: &Value, port: u16, dir: &Path) -> Result<Option<LocalLimiter>, StackError> {
    if config.get("limiter").is_none() {
        return Ok(None);
    }
    let Ok(parsed) = maas_filter::config::Config::from_json(config.to_string().as_bytes()) else {
        return Ok(None);
    };
    let Some(limiter) = &parsed.limiter else {
        return Ok(None);
    };
    if limiter.cluster != LIMITER_CLUSTER {
        return Err(StackError::Limiter(format!(
            "the configuration's limiter.cluster is {:?}, but the local bootstrap names the limiter's cluster {LIMITER_CLUSTER:?}",
            limiter.cluster
        )));
    }
    ensure_free(port, "rate limiter", "--limiter-port")?;
    let limits = dir.join("limits.yaml");
    let text = maas_filter::limits::global_limits::limitador_limits(
        &limiter.domain,
        parsed.subscriptions.iter().map(|s| &**s),
    );
    std::fs::write(&limits, text).map_err(|source| StackError::Io {
        action: "write",
        path: limits.clone(),
        source,
    })?;
    let redis = RedisProcess::start().map_err(StackError::Limiter)?;
    let launch = LimiterLaunch {
        port,
        log: Some(dir.join("limiter.log")),
        ..LimiterLaunch::new(&limits).with_redis(&redis)
    };
    let process = LimiterProcess::launch(&launch).map_err(StackError::Limiter)?;
    Ok(Some(LocalLimiter {
        process,
        redis,
        limits,
    }))
}
