//! llama.cpp's `llama-server` as the inference benches' peer: a child on a
//! free loopback port, on the same model file and thread count as ours,
//! (re)started with `-np` slots of 2,048 tokens of context each (as ours
//! admits), waited on until `/health` answers, stopped on drop. A peer that
//! dies before it is ready (a SIGILL in a kernel the CPU lacks, a bad flag)
//! is reported at once with the end of its log.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::client::healthy;

/// How long the model may take to load.
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// Context tokens per slot.
pub const SLOT_CONTEXT: usize = 2048;

pub struct LlamaServer {
    binary: PathBuf,
    model: PathBuf,
    /// Flags beyond the model, the address, the threads, `-np` and `-c`.
    args: Vec<String>,
    /// Where its log (stderr) goes.
    log: PathBuf,
    running: Option<(Child, usize, SocketAddr)>,
}

impl LlamaServer {
    pub fn new(binary: PathBuf, model: PathBuf, args: Vec<String>, log: PathBuf) -> Self {
        Self {
            binary,
            model,
            args,
            log,
            running: None,
        }
    }

    /// The flags it is started with for `slots` slots, beyond the model
    /// and the address: the threads, `-np`, `-c` and the extra ones.
    pub fn flags(&self, slots: usize) -> Vec<String> {
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut flags: Vec<String> = [
            "-t".into(),
            threads.to_string(),
            "-tb".into(),
            threads.to_string(),
            "-np".into(),
            slots.to_string(),
            "-c".into(),
            (slots * SLOT_CONTEXT).to_string(),
        ]
        .into();
        flags.extend(self.args.iter().cloned());
        flags
    }

    /// The address of a server with `slots` slots, started (or restarted
    /// with another count) if need be.
    pub fn serve(&mut self, slots: usize) -> Result<SocketAddr, String> {
        if let Some((_, n, addr)) = &self.running {
            if *n == slots {
                return Ok(*addr);
            }
        }
        self.stop();
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        if let Some(dir) = self.log.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let log = std::fs::File::create(&self.log)
            .map_err(|e| format!("cannot create {:?}: {e}", self.log))?;
        let mut command = Command::new(&self.binary);
        command
            .arg("-m")
            .arg(&self.model)
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(self.flags(slots))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        // Its own process group, and SIGTERM if the bench dies first.
        let mut child = maas_testkit::child::supervised(&mut command)
            .spawn()
            .map_err(|e| format!("cannot start {:?}: {e}", self.binary))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + READY_TIMEOUT;
        while !healthy(addr) {
            let why = match child.try_wait() {
                Ok(Some(status)) => format!("llama-server exited ({status}) before it was ready"),
                _ if Instant::now() >= deadline => {
                    format!("llama-server was not ready within {READY_TIMEOUT:?}")
                }
                _ => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "{why}; the end of {}:\n{}",
                self.log.display(),
                self.log_tail(20)
            ));
        }
        self.running = Some((child, slots, addr));
        Ok(addr)
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn stop(&mut self) {
        if let Some((mut child, ..)) = self.running.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        self.stop();
    }
}
