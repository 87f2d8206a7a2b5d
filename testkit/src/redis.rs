//! A throwaway Redis server as a child process: Debian's `redis-server`
//! (`scripts/redis.sh`) on a free loopback port, with persistence off
//! (`--save ''`, `--appendonly no`) and its working directory in a private
//! temporary folder, removed with it. Killed on drop.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::artifacts::REDIS_SERVER;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Another process may take the free port between our probe and Redis's
/// bind: try a new one a few times.
const PORT_ATTEMPTS: usize = 3;

pub fn redis_server_binary() -> PathBuf {
    REDIS_SERVER.require()
}

pub struct RedisProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisProcess {
    /// Starts Redis and waits until it answers PING.
    pub fn start() -> Result<Self, String> {
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            match Self::start_once() {
                Ok(redis) => return Ok(redis),
                Err(why) => last = why,
            }
        }
        Err(last)
    }

    fn start_once() -> Result<Self, String> {
        let port = free_port()?;
        let dir = private_dir()?;
        let log = std::fs::File::create(dir.join("redis.log"))
            .map_err(|e| format!("cannot create the Redis log in {dir:?}: {e}"))?;
        let mut command = Command::new(redis_server_binary());
        command
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(["--daemonize", "no", "--logfile", ""])
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = crate::child::supervised(&mut command)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", redis_server_binary()))?;
        let mut redis = Self { child, port, dir };
        redis.wait_ready()?;
        Ok(redis)
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.ping() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!(
                    "redis-server exited with {status}\n--- its log ---\n{}",
                    self.log()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server not ready in {READY_TIMEOUT:?}\n--- its log ---\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// True when it answers PING with PONG.
    pub fn ping(&self) -> bool {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }

    /// `redis://127.0.0.1:PORT`, for the limiter's `--redis`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its working directory (empty but for its log: nothing is persisted).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills it outright; its data is gone.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .map_err(|e| format!("no free loopback port: {e}"))
}

/// A new folder under the system's temporary directory, unique to this
/// process and call.
fn private_dir() -> Result<PathBuf, String> {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "maas-redis-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
    Ok(dir)
}
