//! Envoy as `maas-stack`'s own child process.
//!
//! Invariants: Envoy runs in its own process group, so a Ctrl-C in the
//! terminal reaches only `maas-stack`, which then stops Envoy in order (Envoy
//! first, then the upstream). On Linux it also gets SIGTERM if `maas-stack`
//! dies without cleaning up (`PR_SET_PDEATHSIG`), so no orphan keeps the ports.
//! That signal fires when the *thread* that spawned Envoy exits: spawn from the
//! thread that lives as long as the stack (`main`).

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use maas_testkit::child::supervised;

/// Envoy stops in milliseconds on SIGTERM; this is for a wedged one.
const TERMINATE_GRACE: Duration = Duration::from_secs(5);
/// The listener the template declares.
const LISTENER_NAME: &str = "gateway";

/// The files Envoy reads and writes, all in the state directory.
#[derive(Debug, Clone)]
pub struct EnvoyFiles {
    pub bootstrap: PathBuf,
    /// `--log-path`: Envoy's own log.
    pub log: PathBuf,
    /// Envoy's stdout and stderr: what it prints before `--log-path` applies.
    pub stdio: PathBuf,
    /// `--admin-address-path`: how the admin address is learned when its port is 0.
    pub admin_address: PathBuf,
}

impl EnvoyFiles {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            bootstrap: dir.join("envoy.yaml"),
            log: dir.join("envoy.log"),
            stdio: dir.join("envoy.stdio.log"),
            admin_address: dir.join("admin-address.txt"),
        }
    }

    /// The two log files, for diagnostics.
    pub fn logs(&self) -> [&Path; 2] {
        [&self.log, &self.stdio]
    }
}

pub use maas_testkit::envoy::Ready;

pub struct EnvoyChild {
    child: Child,
}

impl EnvoyChild {
    /// Starts `binary` on `files.bootstrap`; earlier logs and a stale admin
    /// address are removed first, so everything read back is from this run.
    pub fn spawn(binary: &Path, files: &EnvoyFiles) -> io::Result<Self> {
        for stale in [&files.log, &files.stdio, &files.admin_address] {
            match std::fs::remove_file(stale) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
        }
        let stdio = File::create(&files.stdio)?;
        let mut command = Command::new(binary);
        command
            .arg("-c")
            .arg(&files.bootstrap)
            .arg("--disable-hot-restart")
            .args(["--concurrency", "2"])
            .args(["-l", "warning"])
            .arg("--log-path")
            .arg(&files.log)
            .arg("--admin-address-path")
            .arg(&files.admin_address)
            // Audit lines reach the file within a second, without a write per request.
            .args(["--file-flush-interval-msec", "1000"])
            .stdin(Stdio::null())
            .stdout(stdio.try_clone()?)
            .stderr(stdio);
        Ok(Self {
            child: supervised(&mut command).spawn()?,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `None` while Envoy runs.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// One readiness check (the same one the test harness makes).
    pub fn probe(&self, files: &EnvoyFiles) -> Result<Ready, String> {
        maas_testkit::envoy::probe(&files.admin_address, LISTENER_NAME)
    }

    /// SIGTERM, up to [`TERMINATE_GRACE`] to exit, then SIGKILL. Returns how it ended.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        maas_testkit::child::terminate(&mut self.child, TERMINATE_GRACE)
    }
}

impl Drop for EnvoyChild {
    fn drop(&mut self) {
        self.terminate();
    }
}
