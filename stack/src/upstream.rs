//! The model server the gateway routes to: the workspace's inference server
//! (a child process, the default), testkit's OpenAI-shaped mock served
//! in-process, or an existing server given as `HOST:PORT`.
//!
//! The mock is [`MockUpstream`] bound to the chosen port with a bounded
//! request log, so a long session does not grow its memory.

use std::io;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use maas_testkit::{InferenceServer, MockUpstream};

/// The mock keeps this many requests for `GET /__mock/requests`, no more, so
/// a long session does not grow its memory.
pub const MOCK_RECORD_LIMIT: usize = 1000;
const MOCK_WORKERS: usize = 2;

pub enum Upstream {
    /// One server per model id; never empty.
    Inference(Vec<(String, InferenceServer)>),
    Mock(MockUpstream),
    External(SocketAddr),
}

impl Upstream {
    /// Where the gateway sends `model`: its own inference server, else the
    /// first one (it serves every configured model no other server names).
    pub fn route(&self, model: &str) -> SocketAddr {
        match self {
            Self::Inference(servers) => servers
                .iter()
                .find(|(id, _)| id == model)
                .or(servers.first())
                .map(|(_, server)| server.addr())
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            Self::Mock(mock) => mock.addr(),
            Self::External(addr) => *addr,
        }
    }

    /// For the banner.
    pub fn describe(&self) -> String {
        match self {
            Self::Inference(servers) => servers
                .iter()
                .map(|(id, server)| {
                    format!(
                        "http://{} (inference server, pid {}; model {id}; log {})",
                        server.addr(),
                        server.pid(),
                        server.log_path().display()
                    )
                })
                .collect::<Vec<_>>()
                .join("\n             "),
            Self::Mock(mock) => format!(
                "http://{} (testkit's OpenAI-shaped mock; every completion is \"tok tok …\")",
                mock.addr()
            ),
            Self::External(addr) => format!("http://{addr} (--upstream)"),
        }
    }

    /// Whether something accepts connections there (always true for the mock).
    pub fn reachable(&self) -> bool {
        match self {
            Self::Inference(_) | Self::Mock(_) => true,
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

/// Starts the mock on `127.0.0.1:port` (0: any free port).
pub fn start_mock(port: u16) -> io::Result<MockUpstream> {
    MockUpstream::builder()
        .workers(MOCK_WORKERS)
        .record_limit(Some(MOCK_RECORD_LIMIT))
        .bind(port)
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
        let mock = start_mock(0).expect("starts");
        let addr = mock.addr();
        let upstream = Upstream::Mock(mock);
        let response = maas_testkit::client::get(&format!("http://{addr}/v1/models"));
        assert_eq!(response.status, 200);
        drop(upstream);
        assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
        // Taken: a second one on the same port is refused, not a panic.
        let first = start_mock(0).expect("starts");
        let error = start_mock(first.addr().port()).err().expect("port taken");
        assert_eq!(error.kind(), io::ErrorKind::AddrInUse);
    }
}
