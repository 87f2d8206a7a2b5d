//! The Envoy child process: spawned directly (never through a shell, so the
//! harness owns the real process and can signal it), polled until it serves,
//! and stopped on drop: SIGTERM, a short grace period, then SIGKILL.

use std::fmt::Write as _;
use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::child::supervised;
use crate::client::try_request;

/// Envoy drains nothing on SIGTERM in these tests; it exits in milliseconds.
const TERMINATE_GRACE: Duration = Duration::from_secs(2);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Flush file logs (access log, `--log-path`) every 50 ms instead of Envoy's
/// 10 s default, so tests see a request's log line soon after its response.
const FILE_FLUSH_INTERVAL_MSEC: &str = "50";

/// How Envoy is launched: all files live in one scratch directory.
pub struct Launch<'a> {
    pub binary: &'a Path,
    pub config: &'a Path,
    pub concurrency: u32,
    pub log_level: &'a str,
    pub admin_address_file: &'a Path,
    pub log_file: &'a Path,
    /// Envoy's own stdout/stderr: early failures land here, before `--log-path` applies.
    pub stdio_file: &'a Path,
    /// How long a replaced listener or filter chain drains (`--drain-time-s`);
    /// `None`: Envoy's default.
    pub drain_time_s: Option<u32>,
}

/// What the readiness wait found: where Envoy listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    pub admin: SocketAddr,
    pub listener: SocketAddr,
}

/// Why Envoy did not come up.
#[derive(Debug)]
pub enum NotReady {
    Exited(ExitStatus),
    TimedOut { last: String },
}

pub struct EnvoyProcess {
    child: Child,
}

impl EnvoyProcess {
    pub fn spawn(launch: &Launch<'_>) -> io::Result<Self> {
        let stdio = File::create(launch.stdio_file)?;
        // Supervised as every other child: an Envoy whose harness died
        // without dropping it (a killed `maas-stack`, an aborted test run)
        // was left running, holding its ports.
        let mut command = Command::new(launch.binary);
        command
            .arg("-c")
            .arg(launch.config)
            .arg("--disable-hot-restart")
            .args(["--concurrency", &launch.concurrency.to_string()])
            .args(["-l", launch.log_level])
            .arg("--admin-address-path")
            .arg(launch.admin_address_file)
            .arg("--log-path")
            .arg(launch.log_file)
            .args(["--file-flush-interval-msec", FILE_FLUSH_INTERVAL_MSEC])
            .args(
                launch
                    .drain_time_s
                    .iter()
                    .flat_map(|s| ["--drain-time-s".to_owned(), s.to_string()]),
            )
            .stdin(Stdio::null())
            .stdout(stdio.try_clone()?)
            .stderr(stdio);
        let child = supervised(&mut command).spawn()?;
        Ok(Self { child })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `None` while running.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Polls until the admin address is written, `/ready` answers 200 and the
    /// listener named `listener_name` (or else the first one) has a bound port.
    pub fn wait_ready(
        &mut self,
        admin_address_file: &Path,
        listener_name: &str,
        timeout: Duration,
    ) -> Result<Ready, NotReady> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(NotReady::Exited(status));
            }
            let last = match probe(admin_address_file, listener_name) {
                Ok(ready) => return Ok(ready),
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                return Err(NotReady::TimedOut { last });
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    /// Stops Envoy now; what `Drop` does.
    pub fn terminate(&mut self) {
        crate::child::terminate(&mut self.child, TERMINATE_GRACE);
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.terminate();
    }
}

/// One readiness check: the admin address is written, `/ready` answers 200
/// and the listener has a bound port. `Err` says what is still missing.
pub fn probe(admin_address_file: &Path, listener_name: &str) -> Result<Ready, String> {
    let text = std::fs::read_to_string(admin_address_file)
        .map_err(|_| "admin address file not written yet".to_owned())?;
    let admin: SocketAddr = text
        .trim()
        .parse()
        .map_err(|_| format!("admin address file holds {text:?}"))?;
    let ready = try_request("GET", &format!("http://{admin}/ready"), &[], None)
        .map_err(|error| error.to_string())?;
    if ready.status != 200 {
        return Err(format!(
            "/ready answered {}: {}",
            ready.status,
            ready.text().trim()
        ));
    }
    let listeners = try_request(
        "GET",
        &format!("http://{admin}/listeners?format=json"),
        &[],
        None,
    )
    .map_err(|error| error.to_string())?;
    let listeners: Value = serde_json::from_slice(&listeners.body)
        .map_err(|error| format!("/listeners is not JSON: {error}"))?;
    let port = listener_port(&listeners, listener_name)
        .ok_or_else(|| format!("no bound listener in {listeners}"))?;
    Ok(Ready {
        admin,
        listener: SocketAddr::new(admin.ip(), port),
    })
}

/// The bound port of the listener named `name`, else of the first listener.
fn listener_port(listeners: &Value, name: &str) -> Option<u16> {
    let statuses = listeners.get("listener_statuses")?.as_array()?;
    let port = |status: &Value| {
        status
            .pointer("/local_address/socket_address/port_value")
            .and_then(Value::as_u64)
            .and_then(|port| u16::try_from(port).ok())
            .filter(|port| *port != 0)
    };
    statuses
        .iter()
        .find(|status| status.get("name").and_then(Value::as_str) == Some(name))
        .or_else(|| statuses.first())
        .and_then(port)
}

/// The last `lines` lines of each file that exists, headed by its name.
pub fn log_tail(files: &[PathBuf], lines: usize) -> String {
    let mut tail = String::new();
    for file in files {
        let Ok(text) = std::fs::read_to_string(file) else {
            continue;
        };
        if text.trim().is_empty() {
            continue;
        }
        let all: Vec<&str> = text.lines().collect();
        let _ = writeln!(tail, "--- {} (last {lines} lines)", file.display());
        for line in &all[all.len().saturating_sub(lines)..] {
            tail.push_str(line);
            tail.push('\n');
        }
    }
    if tail.is_empty() {
        tail.push_str("(Envoy wrote no log)\n");
    }
    tail
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn listener_port_prefers_the_named_listener() {
        let listeners = json!({ "listener_statuses": [
            { "name": "other", "local_address": { "socket_address": { "address": "127.0.0.1", "port_value": 1111 } } },
            { "name": "gateway", "local_address": { "socket_address": { "address": "127.0.0.1", "port_value": 2222 } } },
        ] });
        assert_eq!(listener_port(&listeners, "gateway"), Some(2222));
        assert_eq!(listener_port(&listeners, "missing"), Some(1111));
        assert_eq!(
            listener_port(&json!({ "listener_statuses": [] }), "gateway"),
            None
        );
        let unbound = json!({ "listener_statuses": [
            { "name": "gateway", "local_address": { "socket_address": { "port_value": 0 } } },
        ] });
        assert_eq!(listener_port(&unbound, "gateway"), None);
    }
}
