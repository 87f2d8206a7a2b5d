//! A TLS-terminating Envoy in front of a plain-HTTP upstream: a stand-in
//! for an external provider's API (a real certificate chain, SNI, ALPN `h2`
//! and `http/1.1`) on a loopback port, so the gateway's provider clusters are
//! tested against a real TLS server. It only forwards; the upstream behind it
//! (the mock) records what arrived.
//!
//! Invariant: the listener speaks TLS only, so whatever reaches the upstream
//! through it came over TLS; it marks such requests `x-forwarded-proto:
//! https` (it is the edge, `use_remote_address`), which the upstream can see.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::process::{log_tail, EnvoyProcess, Launch, NotReady};
use super::{envoy_binary, ScratchDir};
use crate::client;
use crate::gateway::string_literal;

const LISTENER_NAME: &str = "tls_front";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const LOG_TAIL_LINES: usize = 40;

/// A running TLS front; stopped, and its directory removed, on drop (fields
/// drop in order: the process first).
pub struct TlsFront {
    process: EnvoyProcess,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    _dir: ScratchDir,
}

impl TlsFront {
    /// Serves TLS with `cert_chain`/`key` (PEM files) on a loopback port and
    /// forwards every request to `upstream` over plain HTTP/1.1. Panics with
    /// Envoy's log tail if it does not come up.
    pub fn start(cert_chain: &Path, key: &Path, upstream: SocketAddr) -> TlsFront {
        Self::try_start(&envoy_binary(), cert_chain, key, upstream)
            .unwrap_or_else(|error| panic!("{error}"))
    }

    /// [`Self::start`] with a given Envoy binary, failing with why (and
    /// Envoy's log tail) instead of panicking: for the local stack's demo
    /// provider, which goes on without it.
    pub fn try_start(
        binary: &Path,
        cert_chain: &Path,
        key: &Path,
        upstream: SocketAddr,
    ) -> Result<TlsFront, String> {
        let dir = ScratchDir::create()
            .map_err(|error| format!("cannot make a directory for the TLS front: {error}"))?;
        let config = dir.join("tls-front.yaml");
        std::fs::write(&config, bootstrap(cert_chain, key, upstream))
            .map_err(|error| format!("cannot write {config:?}: {error}"))?;
        let admin_address_file = dir.join("admin.txt");
        let log_files: [PathBuf; 2] = [dir.join("envoy.log"), dir.join("stdio.log")];
        let mut process = EnvoyProcess::spawn(&Launch {
            binary,
            config: &config,
            concurrency: 1,
            log_level: "warning",
            admin_address_file: &admin_address_file,
            log_file: &log_files[0],
            stdio_file: &log_files[1],
            drain_time_s: None,
        })
        .map_err(|error| format!("cannot start {binary:?}: {error}"))?;
        match process.wait_ready(&admin_address_file, LISTENER_NAME, READY_TIMEOUT) {
            Ok(ready) => Ok(TlsFront {
                process,
                addr: ready.listener,
                admin_addr: ready.admin,
                _dir: dir,
            }),
            Err(not_ready) => {
                process.terminate();
                let reason = match not_ready {
                    NotReady::Exited(status) => format!("exited ({status})"),
                    NotReady::TimedOut { last } => format!("not ready: {last}"),
                };
                Err(format!(
                    "TLS front {reason}\n{}",
                    log_tail(&log_files, LOG_TAIL_LINES)
                ))
            }
        }
    }

    /// The TLS listener.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The value of the counter or gauge named exactly `name` in the admin
    /// `/stats` (0 if Envoy has not created it yet).
    pub fn stat(&self, name: &str) -> u64 {
        let text = client::get(&format!("http://{}/stats", self.admin_addr)).text();
        text.lines()
            .filter_map(|line| line.split_once(": "))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.trim().parse().ok())
            .unwrap_or(0)
    }
}

fn bootstrap(cert_chain: &Path, key: &Path, upstream: SocketAddr) -> String {
    format!(
        r#"admin:
  address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
static_resources:
  listeners:
  - name: {LISTENER_NAME}
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          common_tls_context:
            alpn_protocols: [h2, http/1.1]
            tls_certificates:
            - certificate_chain: {{ filename: {chain} }}
              private_key: {{ filename: {key} }}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: {LISTENER_NAME}
          codec_type: AUTO
          use_remote_address: true
          http_filters:
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{ prefix: "/" }}
                route: {{ cluster: upstream, timeout: 60s }}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 2s
    load_assignment:
      cluster_name: upstream
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              socket_address: {{ address: "{ip}", port_value: {port} }}
"#,
        chain = path_literal(cert_chain),
        key = path_literal(key),
        ip = upstream.ip(),
        port = upstream.port(),
    )
}

fn path_literal(path: &Path) -> String {
    string_literal(
        path.to_str()
            .unwrap_or_else(|| panic!("{path:?} is not valid UTF-8")),
    )
}
