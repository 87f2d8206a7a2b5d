//! SIGINT/SIGTERM as a channel the runner's polling loops wait on.
//!
//! The handlers are installed by [`StopSignals::install`], before anything is
//! started, so a signal during start-up is not lost: it ends the wait for
//! readiness instead of killing the runner half-way.

use std::io;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};

pub struct StopSignals {
    received: Receiver<&'static str>,
}

impl StopSignals {
    pub fn install() -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (mut interrupt, mut terminate) = {
            let _entered = runtime.enter();
            (
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            )
        };
        let (sender, received) = mpsc::channel();
        std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let mut seen = 0u32;
                    loop {
                        let name = tokio::select! {
                            _ = interrupt.recv() => "SIGINT",
                            _ = terminate.recv() => "SIGTERM",
                        };
                        seen += 1;
                        // The first stops the stack in order, which can take
                        // a model's load or a server's grace period; a second
                        // ends the process at once, and with it every child
                        // (each is told to stop when its parent thread ends).
                        if seen > 1 {
                            eprintln!("maas-stack: {name} again: stopping at once");
                            std::process::exit(130);
                        }
                        if sender.send(name).is_err() {
                            return;
                        }
                    }
                });
            })?;
        Ok(Self { received })
    }

    /// Waits up to `timeout`; the signal's name if one arrived.
    pub fn wait(&self, timeout: Duration) -> Option<&'static str> {
        match self.received.recv_timeout(timeout) {
            Ok(name) => Some(name),
            Err(RecvTimeoutError::Timeout) => None,
            // The listening thread is gone: no signal can arrive any more.
            Err(RecvTimeoutError::Disconnected) => {
                std::thread::sleep(timeout);
                None
            }
        }
    }
}
