//! A throwaway Redis server as a child process: Debian's `redis-server`
//! (`scripts/redis.sh`) on a free loopback port, with persistence off
//! (`--save ''`, `--appendonly no`) and its working directory in a private
//! temporary folder, removed with it. Killed on drop.
//!
//! Every server gets a random `requirepass`, as a deployment should: without
//! one any local user can `FLUSHALL` the global counters. The password is in
//! the config file Redis reads and in a file for the limiter
//! (`--redis-password-file`), both mode 0600; never on a command line.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::artifacts::REDIS_SERVER;
use crate::private_file::write_private;

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
    password: String,
}

/// The file in a server's folder that holds its password.
const PASSWORD_FILE: &str = "redis.password";
/// Its config file (holds `requirepass`, so the password stays off the
/// command line).
const CONFIG_FILE: &str = "redis.conf";

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
        let password = random_password()?;
        let private = |name: &str, text: String| {
            let path = dir.join(name);
            write_private(&path, text).map_err(|e| format!("cannot write {path:?}: {e}"))
        };
        private(CONFIG_FILE, format!("requirepass \"{password}\"\n"))?;
        private(PASSWORD_FILE, format!("{password}\n"))?;
        let child = spawn(port, &dir)?;
        let mut redis = Self {
            child,
            port,
            dir,
            password,
        };
        redis.wait_ready()?;
        Ok(redis)
    }

    /// Kills it and starts it again on the same port with the same
    /// password, as a crash and a restart would: the data is gone (no
    /// persistence), clients reconnect.
    pub fn restart(&mut self) -> Result<(), String> {
        self.kill();
        self.child = spawn(self.port, &self.dir)?;
        self.wait_ready()
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

    /// True when it answers an authenticated PING with PONG.
    pub fn ping(&self) -> bool {
        let auth = format!("AUTH {}\r\n", self.password);
        self.call_raw(&[auth.as_bytes(), b"PING\r\n"])
            .is_ok_and(|answer| answer == "+OK\r\n+PONG\r\n")
    }

    /// Sends `commands` (inline protocol, each ending in CRLF) on one
    /// connection, unauthenticated unless they authenticate, and returns
    /// what Redis answered to them (as any local user would see it).
    pub fn call_raw(&self, commands: &[&[u8]]) -> Result<String, String> {
        redis_call(self.port, commands)
    }

    /// `redis://127.0.0.1:PORT`, for the limiter's `--redis` (the password
    /// is in [`RedisProcess::password_file`]).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The file holding its password (mode 0600), for the limiter's
    /// `--redis-password-file`.
    pub fn password_file(&self) -> PathBuf {
        self.dir.join(PASSWORD_FILE)
    }

    /// Its password, for tests that check where it must not appear.
    pub fn password(&self) -> &str {
        &self.password
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

/// Starts `redis-server` on `port` with the config file in `dir`, logging
/// there (appending, so a restart keeps the earlier log).
fn spawn(port: u16, dir: &Path) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("redis.log"))
        .map_err(|e| format!("cannot create the Redis log in {dir:?}: {e}"))?;
    let mut command = Command::new(redis_server_binary());
    command
        .arg(dir.join(CONFIG_FILE))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .args(["--daemonize", "no", "--logfile", ""])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log);
    crate::child::supervised(&mut command)
        .spawn()
        .map_err(|e| format!("cannot start {:?}: {e}", redis_server_binary()))
}

/// Answers to `commands` sent on one connection to Redis on `port`: reads
/// until each command got a line (enough for the simple replies used here).
pub fn redis_call(port: u16, commands: &[&[u8]]) -> Result<String, String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(200))
        .map_err(|e| format!("cannot connect to Redis on {addr}: {e}"))?;
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = Vec::new();
    for command in commands {
        stream
            .write_all(command)
            .map_err(|e| format!("cannot write to Redis: {e}"))?;
        let lines = answer.iter().filter(|&&b| b == b'\n').count();
        let mut byte = [0u8; 1];
        while answer.iter().filter(|&&b| b == b'\n').count() == lines {
            stream
                .read_exact(&mut byte)
                .map_err(|e| format!("no answer from Redis: {e}"))?;
            answer.push(byte[0]);
        }
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// 32 hex digits from the kernel's random source.
fn random_password() -> Result<String, String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("cannot read /dev/urandom: {e}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
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
