//! The model server the gateway routes to: testkit's OpenAI-shaped mock,
//! served in-process on a port of the user's choosing, or an existing server
//! given as `HOST:PORT` (later, the real inference server).
//!
//! [`MockUpstream`](crate::MockUpstream) always binds port 0 and panics on
//! failure, which suits tests; a runner needs a fixed port and a message, so
//! this binds the listener itself and hands it to the same `serve` loop.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::mock_upstream::{serve, RequestLog};

/// The mock keeps this many requests for `GET /__mock/requests`, no more, so
/// a long session does not grow its memory.
pub const MOCK_RECORD_LIMIT: usize = 1000;
const MOCK_WORKERS: usize = 2;

pub enum Upstream {
    Mock(MockServer),
    External(SocketAddr),
}

impl Upstream {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Self::Mock(mock) => mock.addr,
            Self::External(addr) => *addr,
        }
    }

    /// For the banner.
    pub fn describe(&self) -> String {
        match self {
            Self::Mock(mock) => format!(
                "http://{} (testkit's OpenAI-shaped mock; every completion is \"tok tok …\")",
                mock.addr
            ),
            Self::External(addr) => format!("http://{addr} (--upstream)"),
        }
    }

    /// Whether something accepts connections there (always true for the mock).
    pub fn reachable(&self) -> bool {
        match self {
            Self::Mock(_) => true,
            Self::External(addr) => {
                TcpStream::connect_timeout(addr, Duration::from_secs(1)).is_ok()
            }
        }
    }
}

/// `HOST:PORT` to one address, IPv4 preferred. Resolved once: Envoy's
/// clusters here are static.
pub fn resolve(text: &str) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|error| format!("not HOST:PORT ({error})"))?
        .collect();
    addrs
        .iter()
        .find(|addr| addr.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| "resolves to no address".to_owned())
}

/// The mock on its own thread and runtime; stops on drop.
pub struct MockServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MockServer {
    /// Binds `127.0.0.1:port` (0: any free port) and serves.
    pub fn start(port: u16) -> io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port))?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(MOCK_WORKERS)
            .thread_name("mock-upstream")
            .enable_all()
            .build()?;
        // Registered here, not in the thread, so a failure is returned, not a panic.
        let listener = {
            let _entered = runtime.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let log = Arc::new(RequestLog::new(Some(MOCK_RECORD_LIMIT)));
        let (shutdown, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("mock-upstream".into())
            .spawn(move || {
                runtime.block_on(serve(listener, log, async move {
                    // A dropped sender also means stop.
                    let _ = stopped.await;
                }));
            })?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // Gone already if its thread panicked; nothing left to stop then.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // The runtime ends with the thread, closing open connections.
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_prefers_ipv4_and_names_bad_input() {
        assert_eq!(
            resolve("127.0.0.1:8000"),
            Ok("127.0.0.1:8000".parse().expect("addr"))
        );
        assert_eq!(
            resolve("[::1]:8000"),
            Ok("[::1]:8000".parse().expect("addr"))
        );
        assert!(resolve("127.0.0.1").is_err_and(|error| error.starts_with("not HOST:PORT")));
    }

    #[test]
    fn mock_serves_on_the_chosen_port_and_stops_on_drop() {
        let mock = MockServer::start(0).expect("starts");
        let addr = mock.addr;
        let upstream = Upstream::Mock(mock);
        let response = crate::client::get(&format!("http://{addr}/v1/models"));
        assert_eq!(response.status, 200);
        drop(upstream);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
        // Taken: a second one on the same port is refused, not a panic.
        let first = MockServer::start(0).expect("starts");
        let error = MockServer::start(first.addr.port())
            .err()
            .expect("port taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
