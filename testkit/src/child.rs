//! What every child process the harness spawns shares: on Linux it gets
//! SIGTERM if its parent dies without cleaning up (`PR_SET_PDEATHSIG`), so no
//! orphan keeps ports or memory (the signal fires when the *thread* that
//! spawned the child exits: spawn from a thread that outlives the child);
//! and it is stopped the same way: SIGTERM, a grace period, then SIGKILL.

#[cfg(target_os = "linux")]
use std::io;
#[cfg(target_os = "linux")]
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// How every child the harness spawns is started: in its own process group
/// (a terminal's Ctrl-C reaches only the supervisor, which stops children in
/// order) and dying with the harness.
pub fn supervised(command: &mut Command) -> &mut Command {
    std::os::unix::process::CommandExt::process_group(command, 0);
    die_with_parent(command);
    command
}

#[cfg(target_os = "linux")]
fn die_with_parent(command: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (prctl, getppid); it does not allocate.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent died before prctl took effect: do not start at all.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_command: &mut Command) {}

/// Sends SIGTERM to a child that has not been reaped.
pub(crate) fn signal_term(child: &Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) on our own child; it is reaped only by `wait`
        // (here or in the caller), after which no signal is sent.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
}

/// Waits up to `grace` for the child to exit, then kills it; how it ended
/// (`None` only if it cannot be waited for at all).
pub(crate) fn wait_or_kill(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // An error means it already exited; wait reaps it either way.
    let _ = child.kill();
    child.wait().ok()
}

/// SIGTERM unless it already exited, up to `grace` to stop, then SIGKILL.
pub fn terminate(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    signal_term(child);
    wait_or_kill(child, grace)
}

/// Why server `what` did not come up, with its log (`log`'s contents).
pub(crate) fn not_up(what: &str, why: &str, log: &str) -> String {
    format!("{what} did not come up: {why}\n--- its log ---\n{log}")
}

/// Spawns one of the project's servers ([`supervised`]) and waits up to
/// `timeout` for the `listening on http://ADDR` line it prints once bound. On
/// failure the child is killed and reaped, and the error shows `what` and
/// its `log` file.
pub(crate) fn spawn_server(
    command: &mut Command,
    timeout: Duration,
    what: &str,
    log: &std::path::Path,
) -> Result<(Child, std::net::SocketAddr), String> {
    spawn_announcing(supervised(command), timeout).map_err(|why| {
        not_up(
            what,
            &why,
            &std::fs::read_to_string(log).unwrap_or_default(),
        )
    })
}

/// Spawns `command` (stdout piped) and waits up to `timeout` for its
/// `listening on http://ADDR` line. On failure the child is killed and reaped.
fn spawn_announcing(
    command: &mut Command,
    timeout: Duration,
) -> Result<(Child, std::net::SocketAddr), String> {
    use std::io::{BufRead, BufReader};
    command.stdout(std::process::Stdio::piped());
    let mut child = command.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let Some(stdout) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err("no stdout pipe".into());
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Read to the end, so the child never blocks on a full pipe.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on http://") {
                let _ = tx.send(addr.trim().to_string());
            }
        }
    });
    let fail = |child: &mut Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(why)
    };
    match rx.recv_timeout(timeout).map(|a| a.parse()) {
        Ok(Ok(addr)) => Ok((child, addr)),
        Ok(Err(e)) => fail(&mut child, format!("unreadable address: {e}")),
        Err(_) => fail(&mut child, "no `listening on` line".into()),
    }
}

/// Polls `url` until it answers 200. `Err` names why not: the child exited
/// first, or `timeout` passed (`what` says what was awaited).
pub(crate) fn wait_healthy(
    child: &mut Child,
    url: &str,
    timeout: Duration,
    what: &str,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if crate::client::try_request("GET", url, &[], None).is_ok_and(|r| r.status == 200) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready in {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A server the tests start from a launch description and can crash and
/// bring back on the same port, its state (a database, Redis) kept.
pub trait Restartable: Sized {
    type Launch: Clone;
    /// How long `terminate` waits after SIGTERM before SIGKILL.
    const GRACE: Duration = Duration::from_secs(10);

    fn start(launch: &Self::Launch) -> Result<Self, String>;
    fn child_mut(&mut self) -> &mut Child;
    /// The launch that started it, pinned to the port it got.
    fn relaunch(&self) -> Self::Launch;

    /// Kills it outright (no graceful shutdown), as a crash would.
    fn kill(&mut self) {
        let child = self.child_mut();
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The same launch again, on the same port.
    fn restart(&mut self) -> Result<(), String> {
        self.kill();
        *self = Self::start(&self.relaunch())?;
        Ok(())
    }

    /// SIGTERM, then SIGKILL after [`Self::GRACE`].
    fn terminate(&mut self) -> Option<ExitStatus> {
        terminate(self.child_mut(), Self::GRACE)
    }
}
