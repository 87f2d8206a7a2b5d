//! The real gateway: Envoy with the filter, started from the rendered
//! template on loopback ports chosen by the kernel.
//!
//! ```no_run
//! use maas_testkit::{Gateway, MockUpstream};
//! let upstream = MockUpstream::start();
//! let gateway = Gateway::builder()
//!     .filter_config(serde_json::json!({ "keys": [] }))
//!     .model("m1", upstream.addr())
//!     .start();
//! let response = gateway.request("GET", "/v1/models", &[], None);
//! # let _ = response;
//! ```
//!
//! A started [`Gateway`] has answered `/ready` and has its listener bound; it
//! is stopped (SIGTERM, then SIGKILL) and its scratch directory removed on
//! drop. When a test panics the directory is kept and Envoy's log tail printed.

mod listener_file;
mod passthrough;
mod process;
mod scratch_dir;
mod tls_front;

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

pub use crate::artifacts::{
    envoy_binary, filter_wasm, find_envoy_binary, find_filter_wasm, ENVOY_VERSION,
};
use listener_file::ListenerFile;
pub use listener_file::SplitError;
pub use passthrough::{passthrough_wasm_file, PASSTHROUGH_WASM};
pub use scratch_dir::ScratchDir;
pub use tls_front::TlsFront;

use crate::client::{self, Response};
use crate::eventually::eventually;
use crate::gateway::{
    gateway_template, render_gateway, write_credential_sds, GatewaySpec, OidcSpec, ProviderSpec,
    RenderError,
};
use crate::private_file::write_private;
pub use process::probe;
pub use process::Ready;
use process::{log_tail, EnvoyProcess, Launch, NotReady};

/// Envoy with a V8 wasm VM starts in about a second; a loaded CI box needs more.
const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The listener the template declares.
const LISTENER_NAME: &str = "gateway";
const LOG_TAIL_LINES: usize = 40;
/// How long a reloadable gateway drains a replaced filter chain before it
/// ends it (Envoy's default is 600 s).
const RELOAD_DRAIN_TIME_S: u32 = 1;
/// How long a replaced configuration may take to be taken.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a gateway did not start. The Envoy variants carry its log tail, which
/// is where the reason (a bad filter config, a YAML error) actually is.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot render the Envoy bootstrap: {0}")]
    Render(#[from] RenderError),
    #[error(transparent)]
    ListenerFile(#[from] SplitError),
    #[error("cannot prepare {path:?}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("envoy exited ({status}) before becoming ready\n{log_tail}")]
    Exited {
        status: ExitStatus,
        log_tail: String,
    },
    #[error("envoy not ready after {timeout:?}: {last}\n{log_tail}")]
    NotReady {
        timeout: Duration,
        last: String,
        log_tail: String,
    },
}

/// Configures a [`Gateway`]; see the module example.
#[derive(Debug, Clone)]
pub struct GatewayBuilder {
    filter_config: Value,
    models: Vec<(String, SocketAddr)>,
    providers: Vec<ProviderSpec>,
    concurrency: u32,
    listen_port: u16,
    admin_port: u16,
    log_level: String,
    ready_timeout: Duration,
    template: Option<String>,
    wasm_path: Option<PathBuf>,
    envoy_binary: Option<PathBuf>,
    control_plane: Option<SocketAddr>,
    limiter: Option<SocketAddr>,
    oidc: Option<OidcSpec>,
    reloadable: bool,
}

impl Default for GatewayBuilder {
    fn default() -> Self {
        Self {
            filter_config: Value::Object(serde_json::Map::new()),
            models: Vec::new(),
            providers: Vec::new(),
            // One worker keeps tests cheap and their ordering easy to reason about.
            concurrency: 1,
            listen_port: 0,
            admin_port: 0,
            log_level: "warning".into(),
            ready_timeout: DEFAULT_READY_TIMEOUT,
            template: None,
            wasm_path: None,
            envoy_binary: None,
            control_plane: None,
            limiter: None,
            oidc: None,
            reloadable: false,
        }
    }
}

impl GatewayBuilder {
    /// The filter's configuration (default `{}`).
    pub fn filter_config(mut self, config: Value) -> Self {
        self.filter_config = config;
        self
    }

    /// Routes requests the filter tags with `x-maas-model: <name>` to `upstream`.
    pub fn model(mut self, name: impl Into<String>, upstream: SocketAddr) -> Self {
        self.models.push((name.into(), upstream));
        self
    }

    /// Routes the provider's models to it over TLS, with its credential
    /// injected by Envoy (see [`ProviderSpec`]).
    pub fn provider(mut self, provider: ProviderSpec) -> Self {
        self.providers.push(provider);
        self
    }

    /// The control plane: the filter's sync cluster and `/maas-api/*`.
    /// The rate limiter the filter's global limits call (cluster
    /// `limitador`).
    pub fn limiter(mut self, addr: SocketAddr) -> Self {
        self.limiter = Some(addr);
        self
    }

    pub fn control_plane(mut self, addr: SocketAddr) -> Self {
        self.control_plane = Some(addr);
        self
    }

    /// Verify OIDC bearer tokens from `issuer` for `audience` (signed by a
    /// key in `jwks`) with Envoy's `jwt_authn` before the filter.
    pub fn oidc(
        mut self,
        issuer: impl Into<String>,
        audience: impl Into<String>,
        jwks: impl Into<String>,
    ) -> Self {
        self.oidc = Some(OidcSpec {
            issuer: issuer.into(),
            audience: audience.into(),
            jwks: jwks.into(),
        });
        self
    }

    /// Envoy worker threads (default 1).
    pub fn concurrency(mut self, workers: u32) -> Self {
        self.concurrency = workers.max(1);
        self
    }

    /// A fixed listener port instead of an ephemeral one.
    pub fn listen_port(mut self, port: u16) -> Self {
        self.listen_port = port;
        self
    }

    /// A fixed admin port instead of an ephemeral one.
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin_port = port;
        self
    }

    /// Envoy's `-l` (default `warning`); `info` shows the filter's own logs.
    pub fn log_level(mut self, level: impl Into<String>) -> Self {
        self.log_level = level.into();
        self
    }

    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// A bootstrap template other than `envoy/gateway.template.yaml` (same placeholders).
    pub fn template(mut self, template: impl Into<String>) -> Self {
        self.template = Some(template.into());
        self
    }

    /// A wasm module other than the release filter (e.g. a no-op filter for a baseline).
    pub fn wasm_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.wasm_path = Some(path.into());
        self
    }

    /// An Envoy binary other than the one `make test` fetches.
    pub fn envoy_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.envoy_binary = Some(path.into());
        self
    }

    /// The listener from a file Envoy watches, so that
    /// [`Gateway::replace_filter_config`] can replace the filter's
    /// configuration while Envoy runs; a replaced filter chain drains for
    /// one second.
    pub fn reloadable(mut self) -> Self {
        self.reloadable = true;
        self
    }

    /// Starts Envoy and waits until it serves; panics with Envoy's log tail otherwise.
    pub fn start(self) -> Gateway {
        self.try_start()
            .unwrap_or_else(|error| panic!("gateway did not start: {error}"))
    }

    /// [`start`](Self::start), returning the failure: for tests that expect
    /// Envoy to refuse a configuration. Still panics when Envoy or the filter
    /// module is missing, which no test expects.
    pub fn try_start(self) -> Result<Gateway, StartError> {
        let binary = self.envoy_binary.unwrap_or_else(envoy_binary);
        let wasm_path = self.wasm_path.unwrap_or_else(filter_wasm);
        // Envoy resolves a relative path against its own working directory.
        let wasm_path = std::path::absolute(&wasm_path).unwrap_or(wasm_path);
        let template = self.template.unwrap_or_else(gateway_template);

        let dir = ScratchDir::create().map_err(|source| StartError::Io {
            path: std::env::temp_dir(),
            source,
        })?;
        write_credential_sds(dir.path(), &self.providers).map_err(|source| StartError::Io {
            path: dir.path().to_owned(),
            source,
        })?;
        let spec = GatewaySpec {
            providers: self.providers,
            credential_sds_dir: Some(dir.path().to_owned()),
            control_plane: self.control_plane,
            limiter: self.limiter,
            oidc: self.oidc,
            listen_port: self.listen_port,
            admin_port: self.admin_port,
            wasm_path,
            filter_config: self.filter_config,
            access_log_path: dir.join("access.log"),
            models: self.models,
        };
        let config_path = dir.join("gateway.yaml");
        let mut bootstrap = render_gateway(&template, &spec)?;
        let reload = if self.reloadable {
            let listeners = ListenerFile::new(dir.path().to_owned());
            bootstrap = listeners.split(&bootstrap)?;
            Some(Reload {
                listeners,
                template,
                spec: spec.clone(),
            })
        } else {
            None
        };
        // The bootstrap holds the control plane's gateway token.
        write_private(&config_path, bootstrap).map_err(|source| StartError::Io {
            path: config_path.clone(),
            source,
        })?;

        let admin_address_file = dir.join("admin.txt");
        let log_files = [dir.join("envoy.log"), dir.join("stdio.log")];
        let mut process = EnvoyProcess::spawn(&Launch {
            binary: &binary,
            config: &config_path,
            concurrency: self.concurrency,
            log_level: &self.log_level,
            admin_address_file: &admin_address_file,
            log_file: &log_files[0],
            stdio_file: &log_files[1],
            drain_time_s: reload.as_ref().map(|_| RELOAD_DRAIN_TIME_S),
        })
        .map_err(|source| StartError::Io {
            path: binary.clone(),
            source,
        })?;

        match process.wait_ready(&admin_address_file, LISTENER_NAME, self.ready_timeout) {
            Ok(ready) => Ok(Gateway {
                process,
                addr: ready.listener,
                admin_addr: ready.admin,
                config_path,
                access_log_path: spec.access_log_path,
                log_files,
                dir,
                reload,
            }),
            Err(not_ready) => {
                process.terminate();
                let log_tail = log_tail(&log_files, LOG_TAIL_LINES);
                // The error carries the log; the directory has nothing more to tell.
                drop(dir);
                Err(match not_ready {
                    NotReady::Exited(status) => StartError::Exited { status, log_tail },
                    NotReady::TimedOut { last } => StartError::NotReady {
                        timeout: self.ready_timeout,
                        last,
                        log_tail,
                    },
                })
            }
        }
    }
}

/// A running Envoy gateway. Fields drop in order: the process is stopped
/// before its directory is removed.
pub struct Gateway {
    process: EnvoyProcess,
    addr: SocketAddr,
    admin_addr: SocketAddr,
    config_path: PathBuf,
    access_log_path: PathBuf,
    log_files: [PathBuf; 2],
    dir: ScratchDir,
    reload: Option<Reload>,
}

/// What a reloadable gateway re-renders its listener from.
struct Reload {
    listeners: ListenerFile,
    template: String,
    spec: GatewaySpec,
}

impl Gateway {
    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// `http://<listener><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `http://<admin><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin_addr)
    }

    /// The rendered bootstrap Envoy runs.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The scratch directory holding the bootstrap and the logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// False once Envoy has exited (crashed, or was stopped).
    pub fn is_running(&mut self) -> bool {
        self.process.exit_status().is_none()
    }

    /// Sends a request to the gateway listener; see [`client::request`].
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Response {
        client::request(method, &self.url(path), headers, body)
    }

    /// POSTs `body` as JSON to the gateway listener.
    pub fn post_json(&self, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
        client::post_json(&self.url(path), headers, body)
    }

    /// GETs an admin endpoint; panics unless it answers 200.
    pub fn admin_get(&self, path: &str) -> String {
        let response = client::get(&self.admin_url(path));
        assert_eq!(
            response.status,
            200,
            "admin GET {path}: {}",
            response.text()
        );
        response.text()
    }

    /// The admin `/stats/prometheus` text.
    pub fn prometheus(&self) -> String {
        self.admin_get("/stats/prometheus")
    }

    /// The value of the Prometheus series named exactly `name` whose labels
    /// include `labels`; `None` if there is none. If several series match,
    /// their sum (pass more labels to pin one down).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        crate::prometheus::metric(&self.prometheus(), name, labels)
    }

    /// The access log so far, one JSON object per non-blank line (the template
    /// writes a blank line for a request the filter never saw). Envoy flushes
    /// it every 50 ms here, so a line can trail its response: see
    /// [`Self::await_access_log`].
    pub fn access_log(&self) -> Vec<Value> {
        self.access_log_text()
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                serde_json::from_str(line)
                    .unwrap_or_else(|error| panic!("access log line is not JSON ({error}): {line}"))
            })
            .collect()
    }

    /// The access log file as written, blank lines included.
    pub fn access_log_text(&self) -> String {
        std::fs::read_to_string(&self.access_log_path).unwrap_or_default()
    }

    /// The access log once it has at least `count` entries (waits up to 10 s).
    pub fn await_access_log(&self, count: usize) -> Vec<Value> {
        eventually(Duration::from_secs(10), || {
            let entries = self.access_log();
            if entries.len() >= count {
                Ok(entries)
            } else {
                Err(format!(
                    "{} access log entries, want {count}",
                    entries.len()
                ))
            }
        })
    }

    /// Envoy's own log (`--log-path`).
    pub fn envoy_log(&self) -> String {
        std::fs::read_to_string(&self.log_files[0]).unwrap_or_default()
    }

    /// Replaces the filter's configuration in the running Envoy (a gateway
    /// built [`reloadable`](GatewayBuilder::reloadable)) and waits until
    /// Envoy has taken the new listener; panics with Envoy's log if it
    /// refuses it. Requests from then on meet the new configuration; the old
    /// one ends after the drain time, once its requests are done.
    pub fn replace_filter_config(&mut self, config: Value) {
        let reload = self
            .reload
            .as_mut()
            .expect("replace_filter_config needs a gateway built reloadable()");
        reload.spec.filter_config = config;
        let rendered = render_gateway(&reload.template, &reload.spec)
            .unwrap_or_else(|error| panic!("cannot render the new listener: {error}"));
        let taken = |gateway: &Self, outcome: &str| {
            gateway
                .metric(&format!("envoy_listener_manager_lds_update_{outcome}"), &[])
                .unwrap_or(0.0)
        };
        let before = taken(self, "success");
        let reload = self.reload.as_ref().expect("checked above");
        reload
            .listeners
            .replace(&rendered)
            .unwrap_or_else(|error| panic!("{error}"));
        eventually(RELOAD_TIMEOUT, || {
            let refused = taken(self, "rejected");
            assert!(
                refused == 0.0,
                "envoy refused the new listener:\n{}",
                self.envoy_log()
            );
            if taken(self, "success") > before {
                Ok(())
            } else {
                Err("envoy has not taken the new listener yet".to_owned())
            }
        });
    }

    /// Stops Envoy now (what drop does), e.g. to check it exits cleanly.
    pub fn stop(mut self) {
        self.process.terminate();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "envoy log of the failing test:\n{}",
                log_tail(&self.log_files, LOG_TAIL_LINES)
            );
        }
    }
}

/// `envoy --mode validate -c <config_path>`: Ok, or Envoy's output explaining
/// why not. Panics if there is no Envoy binary (see [`envoy_binary`]).
pub fn validate(config_path: &Path) -> Result<(), String> {
    let output = Command::new(envoy_binary())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(config_path)
        .output()
        .map_err(|error| format!("cannot run envoy: {error}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} ({}):\n{}{}",
            config_path.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// [`validate`] for a configuration held in memory.
pub fn validate_yaml(config: &str) -> Result<(), String> {
    let dir =
        ScratchDir::create().map_err(|error| format!("cannot create a scratch dir: {error}"))?;
    let path = dir.join("config.yaml");
    std::fs::write(&path, config).map_err(|error| format!("cannot write {path:?}: {error}"))?;
    validate(&path)
}
