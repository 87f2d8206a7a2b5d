//! The real rate limiter (`maas-limiter`) as a child process: the binary
//! `make test` builds, on a loopback port it picks itself (or a given one),
//! with a limits file and, optionally, a Redis. It can be killed and brought
//! back on the same port, as a crash and a redeploy would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::artifacts::LIMITER;
use crate::child::Restartable;
use crate::ratelimit_client::RateLimitClient;
use crate::redis::RedisProcess;

const LISTEN_TIMEOUT: Duration = Duration::from_secs(30);

/// `MAAS_LIMITER`, or the `serve`-profile build `make test` makes.
pub fn limiter_binary() -> PathBuf {
    LIMITER.require()
}

/// How to start a limiter.
#[derive(Debug, Clone, Default)]
pub struct LimiterLaunch {
    /// 0: any free port.
    pub port: u16,
    /// Limitador's limits file.
    pub limits: PathBuf,
    /// Counters and holds in this Redis; in the limiter's memory when `None`.
    pub redis_url: Option<String>,
    /// The file holding that Redis's password (`--redis-password-file`).
    pub redis_password_file: Option<PathBuf>,
    /// `--max-hold-secs`; the limiter's default (600) when `None`.
    pub max_hold_secs: Option<u64>,
    /// Where its log (stderr) goes; default: the limits file's path plus `.log`.
    pub log: Option<PathBuf>,
    /// The binary; [`limiter_binary`] when `None` (the limiter's own tests
    /// pass the one cargo just built).
    pub binary: Option<PathBuf>,
}

impl LimiterLaunch {
    /// A launch of `limits`, in memory, on any free port.
    pub fn new(limits: impl Into<PathBuf>) -> Self {
        Self {
            limits: limits.into(),
            ..Self::default()
        }
    }

    /// The same launch, with counters in `redis` (its URL and password file).
    pub fn with_redis(mut self, redis: &RedisProcess) -> Self {
        self.redis_url = Some(redis.url());
        self.redis_password_file = Some(redis.password_file());
        self
    }

    fn log_path(&self) -> PathBuf {
        self.log.clone().unwrap_or_else(|| {
            let mut path = self.limits.clone().into_os_string();
            path.push(".log");
            path.into()
        })
    }

    /// The command line, without spawning it (also for tests that expect
    /// it to refuse a configuration).
    pub fn command(&self) -> Command {
        let binary = self.binary.clone().unwrap_or_else(limiter_binary);
        let mut command = Command::new(binary);
        command
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--limits")
            .arg(&self.limits)
            .stdin(Stdio::null());
        if let Some(url) = &self.redis_url {
            command.args(["--redis", url]);
        }
        if let Some(file) = &self.redis_password_file {
            command.arg("--redis-password-file").arg(file);
        }
        if let Some(secs) = self.max_hold_secs {
            command.args(["--max-hold-secs", &secs.to_string()]);
        }
        command
    }
}

pub struct LimiterProcess {
    child: Child,
    addr: SocketAddr,
    launch: LimiterLaunch,
}

impl LimiterProcess {
    /// Starts the limiter and waits until it listens (its limits loaded and
    /// its storage reached).
    pub fn launch(launch: &LimiterLaunch) -> Result<Self, String> {
        let log = launch.log_path();
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("cannot open {log:?}: {e}"))?;
        let mut command = launch.command();
        command.stderr(stderr);
        let (child, addr) =
            crate::child::spawn_server(&mut command, LISTEN_TIMEOUT, "limiter", &log)?;
        Ok(Self {
            child,
            addr,
            launch: launch.clone(),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client of it (connects at the first call).
    pub fn client(&self) -> RateLimitClient {
        RateLimitClient::new(self.addr).unwrap_or_else(|why| panic!("{why}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.launch.log_path()).unwrap_or_default()
    }
}

impl Restartable for LimiterProcess {
    type Launch = LimiterLaunch;

    fn start(launch: &LimiterLaunch) -> Result<Self, String> {
        Self::launch(launch)
    }

    fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    fn relaunch(&self) -> LimiterLaunch {
        let mut launch = self.launch.clone();
        launch.port = self.addr.port();
        launch
    }
}

impl Drop for LimiterProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
