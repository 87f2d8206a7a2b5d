//! The local stack behind `make run` (the `maas-stack` binary): an
//! inference server per model (or another upstream), the control plane,
//! Redis and the limiter when the configuration has global limits, and Envoy
//! with the release filter in front of them, configured from the same
//! template and renderer the tests use. A product, not test harness: it
//! reuses the harness's process supervision (`maas_testkit`) because tests
//! start the same processes the same way.
//!
//! ```text
//! Stack::launch(&options)   upstream up, control plane up with the demo
//!                           subscription and key, <state-dir>/envoy.yaml
//!                           written, Envoy spawned
//!   .wait_ready(..)         admin /ready is 200 and the gateway listener is bound
//!   .banner(ready)          URLs, files, curl commands
//!   .exited()               polled while serving: Envoy died on its own?
//!   .shutdown()             Envoy stopped first, then the control plane, the limiter, the upstream
//! ```
//!
//! Every failure is a [`StackError`] that says what to do next: which `make`
//! target builds a missing artifact, which flag moves a busy port, and, when
//! Envoy refuses to start, the lines of its log that say why (for a bad filter
//! configuration, the filter's `invalid filter configuration: <field>: <reason>`).
//! The state directory keeps `envoy.yaml`, `envoy.log`, `envoy.stdio.log`,
//! `envoy.pid` and `audit.log` (appended to across runs, like any audit trail).

mod demo;
mod demo_provider;
mod envoy_child;
mod envoy_log;
mod limiter;
mod options;
pub mod providers_file;
mod signals;
mod upstream;

use std::fmt;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub use demo::{DEMO_OWNER, DEMO_SUBSCRIPTION};
pub use demo_provider::DEMO_EXTERNAL_MODEL;
pub use envoy_child::Ready;
pub use options::{
    parse_args, ControlPlaneOptions, ModelArg, StackOptions, UpstreamChoice, UsageError, USAGE,
};
pub use signals::StopSignals;

use demo_provider::DemoProvider;
use envoy_child::{EnvoyChild, EnvoyFiles};
use maas_testkit::artifacts::{CONTROL_PLANE, ENVOY, ENVOY_VERSION, FILTER_WASM, INFERENCE_SERVER};
use maas_testkit::child::Restartable;
use maas_testkit::control_plane::{ControlPlaneLaunch, ControlPlaneProcess};
use maas_testkit::gateway::{
    gateway_template_path, render_gateway, write_credential_sds, GatewaySpec, RenderError,
};
use maas_testkit::inference::{default_model_path, InferenceLaunch, InferenceServer};
use maas_testkit::private_file::write_private;
use upstream::{start_mock, Upstream};

/// The first demo key of the README (subscription `free`, in
/// `envoy/filter-config.json`). The banner prints it when there is no control
/// plane to mint one; whether it works depends on the configuration in use.
pub const DEMO_KEY: &str = "sk-maas-demo-free-7f3c9a1e5b2d";

/// Envoy with the V8 filter starts in about a second; a loaded machine needs more.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_INTERVAL: Duration = Duration::from_millis(50);
const LOG_TAIL_LINES: usize = 30;

/// Why the stack did not start, or stopped on its own. The `Display` text is
/// the message for the user.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("no Envoy binary at {}: run `make run`, which fetches Envoy {ENVOY_VERSION} first (`make setup` only fetches it), or set MAAS_ENVOY", path.display())]
    MissingEnvoy { path: PathBuf },
    #[error("no filter module at {}: run `make run`, which builds it first (`make wasm` only builds it), or set MAAS_FILTER_WASM", path.display())]
    MissingWasm { path: PathBuf },
    #[error("cannot read the filter configuration {}: {source}", path.display())]
    ReadConfig { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Providers(String),
    #[error("the filter configuration {} is not JSON: {source}", path.display())]
    ConfigNotJson {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("port {port} (the {role}) is already in use on 127.0.0.1: stop what holds it, or choose another port with {flag} (0 = any free port)")]
    PortBusy {
        port: u16,
        role: &'static str,
        flag: &'static str,
    },
    #[error("cannot use port {port} (the {role}): {source}; choose another port with {flag}")]
    PortUnusable {
        port: u16,
        role: &'static str,
        flag: &'static str,
        source: io::Error,
    },
    #[error("no inference server at {}: run `make run`, which builds it first (`make server` only builds it), or set MAAS_INFERENCE_SERVER", path.display())]
    MissingInferenceServer { path: PathBuf },
    #[error("no model at {}: run `make model` (scripts/fetch-model.sh) for the embedded default, or pass --model FILE.gguf", path.display())]
    MissingModel { path: PathBuf },
    #[error("--model: no such file {} for the model served as {id:?} (--model FILE.gguf, or --model ID=FILE.gguf where an id starts with a letter or digit and holds letters, digits, '.', '_', ':', '/' and '-')", path.display())]
    MissingModelArg { id: String, path: PathBuf },
    #[error("the inference server did not start: {0}")]
    Inference(String),
    #[error("two --model files are both served as {id:?}: give one of them another id (--model ID=FILE.gguf)")]
    DuplicateModel { id: String },
    #[error("no control plane at {}: run `make run`, which builds it first (`make server` only builds it), set MAAS_CONTROL_PLANE, or pass --no-control-plane", path.display())]
    MissingControlPlane { path: PathBuf },
    #[error("the control plane did not start: {0}")]
    ControlPlane(String),
    #[error("the rate limiter for the configuration's global limits did not start: {0} (`make run` builds maas-limiter and installs Redis; `make server` and `make setup` do each)")]
    Limiter(String),
    #[error("--upstream {given:?}: {reason}")]
    Upstream { given: String, reason: String },
    #[error("cannot render the Envoy bootstrap: {0}")]
    Render(#[from] RenderError),
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("Envoy refused the filter configuration {}:\n{lines}(Envoy's full log: {})", config.display(), log.display())]
    FilterConfigRejected {
        config: PathBuf,
        lines: String,
        log: PathBuf,
    },
    #[error("Envoy exited ({status}) {phase}\n{log_tail}")]
    EnvoyExited {
        status: ExitStatus,
        phase: Phase,
        log_tail: String,
    },
    #[error("Envoy not ready after {timeout:?} ({last})\n{log_tail}")]
    NotReady {
        timeout: Duration,
        last: String,
        log_tail: String,
    },
    #[error("{0} received while starting; stopped")]
    Interrupted(&'static str),
}

/// When Envoy exited, for [`StackError::EnvoyExited`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Serving,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Starting => "before becoming ready:",
            Self::Serving => "on its own while serving:",
        })
    }
}

/// A started stack. Fields drop in order: Envoy before the upstream it routes to.
pub struct Stack {
    envoy: EnvoyChild,
    control_plane: Option<ControlPlaneProcess>,
    limiter: Option<limiter::LocalLimiter>,
    demo_key: Option<String>,
    upstream: Upstream,
    files: EnvoyFiles,
    audit_log: PathBuf,
    pid_file: PathBuf,
    config_path: PathBuf,
    /// Every routed model id, local and external.
    models: Vec<String>,
    /// The configuration's model ids that no `--model` serves: not routed.
    unserved: Vec<String>,
    /// The demo's external model's stand-in, or why it did not start.
    demo_provider: Option<Result<DemoProvider, String>>,
    ports: [(u16, &'static str, &'static str); 2],
}

impl Stack {
    /// Starts the upstream, renders `<state-dir>/envoy.yaml` and spawns Envoy.
    /// Call from the thread that outlives the stack: Envoy is told to stop
    /// when the thread that spawned it exits (see the `envoy_child` module).
    pub fn launch(options: &StackOptions) -> Result<Self, StackError> {
        let envoy_binary = ENVOY
            .find()
            .ok_or_else(|| StackError::MissingEnvoy { path: ENVOY.path() })?;
        let wasm_path = FILTER_WASM.find().ok_or_else(|| StackError::MissingWasm {
            path: FILTER_WASM.path(),
        })?;
        let wasm_path = std::path::absolute(&wasm_path).unwrap_or(wasm_path);
        let mut filter_config = read_filter_config(&options.config)?;
        let mut models = configured_models(&filter_config);
        // The configuration's own providers: where each is and its key file.
        let own_providers = demo_provider::has_providers(&filter_config);
        let mut providers = match (&options.providers, own_providers) {
            (Some(file), _) => providers_file::read(file, &filter_config)
                .map_err(|e| StackError::Providers(e.to_string()))?,
            (None, true) => {
                return Err(StackError::Providers(format!(
                    "{} names `providers`: pass --providers FILE saying where each is and which file holds its key (docs/providers.md)",
                    options.config.display()
                )))
            }
            (None, false) => Vec::new(),
        };

        let ports = [
            (options.listen_port, "gateway listener", "--listen-port"),
            (options.admin_port, "Envoy admin", "--admin-port"),
        ];
        for (port, role, flag) in ports {
            ensure_free(port, role, flag)?;
        }
        let dir = &options.state_dir;
        std::fs::create_dir_all(dir).map_err(|source| StackError::Io {
            action: "create the state directory",
            path: dir.clone(),
            source,
        })?;
        // Configured model ids no server serves (see below).
        let mut unserved = Vec::new();
        let upstream = match &options.upstream {
            UpstreamChoice::External(given) => {
                Upstream::External(upstream::resolve(given).map_err(|reason| {
                    StackError::Upstream {
                        given: given.clone(),
                        reason,
                    }
                })?)
            }
            UpstreamChoice::Mock => {
                Upstream::Mock(start_mock(options.upstream_port).map_err(|source| {
                    port_error(
                        options.upstream_port,
                        "mock upstream",
                        "--upstream-port",
                        source,
                    )
                })?)
            }
            UpstreamChoice::Inference { models: given } => {
                ensure_free(options.upstream_port, "inference server", "--upstream-port")?;
                let served = served_models(given, &models)?;
                // Exactly the served models are routed: the gateway learns
                // the ids the configuration did not list (the demo
                // subscription grants them all), and a configured id no
                // server serves is dropped, from the subscriptions too,
                // rather than listed and answered 404 by the server that
                // would get it. Served ones first: the banner's examples
                // use the first.
                let routed: Vec<String> = served.iter().map(|(id, _)| id.clone()).collect();
                unserved = drop_unserved(&mut filter_config, &models, &routed);
                models = routed;
                filter_config["models"] = json!(models);
                Upstream::Inference(start_inference(options, &served, dir)?)
            }
        };
        // The demo's external model, unless the configuration has providers.
        let demo_provider = if options.demo_provider && !own_providers {
            let started = DemoProvider::start(&envoy_binary, dir);
            if started.is_ok() {
                demo_provider::add_to_filter_config(&mut filter_config);
            }
            Some(started)
        } else {
            None
        };
        // Granted by the demo subscription beside the local models.
        let mut granted = models.clone();
        if let Some(Ok(_)) = &demo_provider {
            granted.push(DEMO_EXTERNAL_MODEL.to_owned());
        }
        let (control_plane, demo_key) = match &options.control_plane {
            Some(cp_options) => {
                let cp = start_control_plane(cp_options, options.admin_port)?;
                let key = demo::ensure_demo(&cp, &granted).map_err(StackError::ControlPlane)?;
                // The filter syncs keys from it with the token it created.
                filter_config["control_plane"] = json!({
                    "cluster": "maas-control-plane",
                    "token": cp.gateway_token(),
                });
                (Some(cp), Some(key))
            }
            None => (None, None),
        };
        let limiter = limiter::start(&filter_config, options.limiter_port, dir)?;
        let files = EnvoyFiles::in_dir(dir);
        let audit_log = dir.join("audit.log");
        let template_path = gateway_template_path();
        let template =
            std::fs::read_to_string(&template_path).map_err(|source| StackError::Io {
                action: "read the Envoy template",
                path: template_path,
                source,
            })?;
        if let Some(Ok(provider)) = &demo_provider {
            providers.push(provider.spec());
        }
        let spec = GatewaySpec {
            control_plane: control_plane.as_ref().map(ControlPlaneProcess::addr),
            limiter: limiter.as_ref().map(|l| l.process.addr()),
            oidc: None,
            providers,
            credential_sds_dir: Some(dir.clone()),
            listen_port: options.listen_port,
            admin_port: options.admin_port,
            wasm_path,
            filter_config,
            access_log_path: audit_log.clone(),
            models: models
                .iter()
                .map(|model| (model.clone(), upstream.route(model)))
                .collect(),
        };
        // Each provider's SDS file names its secret file; Envoy wants them
        // before it starts.
        write_credential_sds(dir, &spec.providers).map_err(|source| StackError::Io {
            action: "write the providers' SDS files into",
            path: dir.clone(),
            source,
        })?;
        // The bootstrap holds the control plane's gateway token.
        write_private(&files.bootstrap, render_gateway(&template, &spec)?).map_err(|source| {
            StackError::Io {
                action: "write",
                path: files.bootstrap.clone(),
                source,
            }
        })?;

        let envoy = EnvoyChild::spawn(&envoy_binary, &files).map_err(|source| StackError::Io {
            action: "start",
            path: envoy_binary,
            source,
        })?;
        let pid_file = dir.join("envoy.pid");
        // Only informative (for `kill`, or a test checking Envoy is gone).
        let _ = std::fs::write(&pid_file, format!("{}\n", envoy.pid()));
        Ok(Self {
            envoy,
            control_plane,
            limiter,
            demo_key,
            upstream,
            files,
            audit_log,
            pid_file,
            config_path: options.config.clone(),
            models: granted,
            unserved,
            demo_provider,
            ports,
        })
    }

    /// Polls until Envoy serves, it exits, `timeout` passes, or `stop` (which
    /// waits up to the interval it is given) reports a signal's name.
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        mut stop: impl FnMut(Duration) -> Option<&'static str>,
    ) -> Result<Ready, StackError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.envoy.exit_status() {
                return Err(self.explain_exit(status, Phase::Starting));
            }
            let last = match self.envoy.probe(&self.files) {
                Ok(ready) => return Ok(ready),
                Err(last) => last,
            };
            if Instant::now() >= deadline {
                return Err(StackError::NotReady {
                    timeout,
                    last,
                    log_tail: envoy_log::tail(&self.files.logs(), LOG_TAIL_LINES),
                });
            }
            if let Some(signal) = stop(POLL_INTERVAL) {
                return Err(StackError::Interrupted(signal));
            }
        }
    }

    /// `Some` once Envoy has exited on its own, with what its log says.
    pub fn exited(&mut self) -> Option<StackError> {
        let status = self.envoy.exit_status()?;
        Some(self.explain_exit(status, Phase::Serving))
    }

    /// What to print once [`Self::wait_ready`] succeeded.
    pub fn banner(&self, ready: Ready) -> Banner<'_> {
        Banner {
            ready,
            stack: self,
            upstream_reachable: self.upstream.reachable(),
        }
    }

    /// Stops Envoy (SIGTERM, then SIGKILL after a grace period), then the
    /// control plane, then the upstream.
    pub fn shutdown(mut self) -> Option<ExitStatus> {
        let status = self.envoy.terminate();
        if let Some(cp) = &mut self.control_plane {
            cp.terminate();
        }
        if let Some(limiter) = &mut self.limiter {
            limiter.process.terminate();
        }
        // With Envoy gone no request can reach it; SIGTERM lets it log its
        // own orderly stop.
        if let Upstream::Inference(servers) = &mut self.upstream {
            for (_, server) in servers {
                server.terminate();
            }
        }
        let _ = std::fs::remove_file(&self.pid_file);
        let _ = std::fs::remove_file(&self.files.admin_address);
        status
    }

    fn explain_exit(&self, status: ExitStatus, phase: Phase) -> StackError {
        let _ = std::fs::remove_file(&self.pid_file);
        // Parsed file by file: a stderr line must not read as the
        // continuation of the log's last entry.
        let entries: Vec<_> = self
            .files
            .logs()
            .iter()
            .filter_map(|file| std::fs::read_to_string(file).ok())
            .flat_map(|log| envoy_log::entries(&log))
            .collect();
        if let Some(errors) = envoy_log::filter_config_errors(&entries) {
            return StackError::FilterConfigRejected {
                config: self.config_path.clone(),
                lines: envoy_log::indented(&errors),
                log: self.files.log.clone(),
            };
        }
        // Taken between our check and Envoy's bind.
        if let Some(busy) = envoy_log::busy_address(&entries) {
            if let Some((port, role, flag)) =
                self.ports.iter().find(|(port, ..)| *port == busy.port())
            {
                return StackError::PortBusy {
                    port: *port,
                    role,
                    flag,
                };
            }
        }
        StackError::EnvoyExited {
            status,
            phase,
            log_tail: envoy_log::tail(&self.files.logs(), LOG_TAIL_LINES),
        }
    }
}

/// The banner: where things are, and commands to paste.
pub struct Banner<'a> {
    ready: Ready,
    stack: &'a Stack,
    upstream_reachable: bool,
}

impl fmt::Display for Banner<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stack = self.stack;
        let gateway = format!("http://{}", self.ready.listener);
        let admin = format!("http://{}", self.ready.admin);
        writeln!(
            f,
            "MaaS gateway ready: Envoy {ENVOY_VERSION} (pid {}) with the filter configuration {}",
            stack.envoy.pid(),
            stack.config_path.display()
        )?;
        writeln!(f, "  gateway    {gateway}/v1")?;
        writeln!(
            f,
            "  admin      {admin}  (metrics: {admin}/stats/prometheus)"
        )?;
        writeln!(f, "  upstream   {}", stack.upstream.describe())?;
        if !self.upstream_reachable {
            writeln!(
                f,
                "             (nothing accepts connections there yet: model requests get 503 until it does)"
            )?;
        }
        let models = if stack.models.is_empty() {
            "(none configured)".to_owned()
        } else {
            stack.models.join(", ")
        };
        writeln!(f, "  models     {models}")?;
        if !stack.unserved.is_empty() {
            writeln!(
                f,
                "             (not routed: {} from the configuration, which no --model serves; --model ID=FILE serves one)",
                stack.unserved.join(", ")
            )?;
        }
        match &stack.demo_provider {
            Some(Ok(provider)) => writeln!(f, "  provider   {}", provider.describe())?,
            Some(Err(why)) => writeln!(
                f,
                "  provider   (the demo's external model is not served: {why})"
            )?,
            None => {}
        }
        writeln!(f, "  audit log  {}", stack.audit_log.display())?;
        writeln!(f, "  envoy log  {}", stack.files.log.display())?;
        if let Some(cp) = &stack.control_plane {
            writeln!(
                f,
                "  control    {gateway}/maas-api/v1  (control plane, pid {}; showback page: {gateway}/maas-api/ui)",
                cp.pid()
            )?;
            writeln!(
                f,
                "             admin token in {}",
                cp.data_dir().join("admin-token").display()
            )?;
        }
        if let Some(limiter) = &stack.limiter {
            writeln!(
                f,
                "  limiter    {}  (maas-limiter for the global limits, pid {}; Redis on port {}; limits {})",
                limiter.process.addr(),
                limiter.process.pid(),
                limiter.redis.port(),
                limiter.limits.display()
            )?;
        }
        writeln!(f)?;
        match &stack.demo_key {
            Some(key) => {
                writeln!(
                    f,
                    "Try it with the demo key (subscription `{DEMO_SUBSCRIPTION}`, minted by the control plane):"
                )?;
                writeln!(f, "  KEY={key}")?;
            }
            None => {
                writeln!(f, "Try it with the README's demo key:")?;
                writeln!(f, "  KEY={DEMO_KEY}")?;
            }
        }
        for command in curl_commands(&gateway, stack.models.first().map(String::as_str)) {
            writeln!(f, "  {command}")?;
        }
        // Only the demo subscription is granted it: the README's static key
        // (without the control plane) would get a 404.
        if let (Some(Ok(_)), Some(_)) = (&stack.demo_provider, &stack.demo_key) {
            writeln!(f, "The external model, through the same key (translated to and from Anthropic's API):")?;
            if let Some(command) = curl_commands(&gateway, Some(DEMO_EXTERNAL_MODEL)).get(1) {
                writeln!(f, "  {command}")?;
            }
        }
        writeln!(f)?;
        write!(
            f,
            "Ctrl-C stops Envoy, the control plane, the rate limiter and the upstream."
        )
    }
}

/// Ready-to-paste commands against `gateway`; the chat and Responses ones
/// only with a model.
fn curl_commands(gateway: &str, model: Option<&str>) -> Vec<String> {
    let auth = r#"-H "Authorization: Bearer $KEY""#;
    let mut commands = vec![format!("curl -s {gateway}/v1/models {auth}")];
    if let Some(model) = model {
        let messages = json!([{ "role": "user", "content": "Hi" }]);
        let chat = json!({ "model": model, "messages": messages, "max_tokens": 32 });
        let stream = json!({ "model": model, "messages": messages, "stream": true });
        let json_header = "-H 'content-type: application/json'";
        commands.push(format!(
            "curl -si {gateway}/v1/chat/completions {auth} {json_header} -d {}",
            shell_quote(&chat.to_string())
        ));
        commands.push(format!(
            "curl -sN {gateway}/v1/chat/completions {auth} {json_header} -d {}",
            shell_quote(&stream.to_string())
        ));
        // What agents send (the OpenAI Agents SDK's and Codex's default).
        let responses = json!({ "model": model, "input": "Hi", "max_output_tokens": 32 });
        commands.push(format!(
            "curl -s {gateway}/v1/responses {auth} {json_header} -d {}",
            shell_quote(&responses.to_string())
        ));
    }
    commands
}

/// One POSIX shell word: single quotes, with `'` written as `'\''`.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

fn read_filter_config(path: &Path) -> Result<Value, StackError> {
    let text = std::fs::read_to_string(path).map_err(|source| StackError::ReadConfig {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StackError::ConfigNotJson {
        path: path.to_owned(),
        source,
    })
}

/// The configuration's `models`, each routed to the upstream. Anything
/// malformed is left for the filter to reject: its message names the field,
/// and there is then one judge of what a valid configuration is.
fn configured_models(config: &Value) -> Vec<String> {
    config
        .get("models")
        .and_then(Value::as_array)
        .map(|models| {
            models
                .iter()
                .filter_map(Value::as_str)
                .filter(|model| !model.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Takes the configured model ids that are not `served` out of the filter
/// configuration's `models`, every subscription's `models`, its `fallbacks`
/// and `route_timeouts_ms`, and returns them (the filter refuses an entry
/// for a model it does not route).
fn drop_unserved(
    filter_config: &mut Value,
    configured: &[String],
    served: &[String],
) -> Vec<String> {
    let dropped: Vec<String> = configured
        .iter()
        .filter(|id| !served.contains(id))
        .cloned()
        .collect();
    let is_dropped = |v: &Value| v.as_str().is_some_and(|id| dropped.iter().any(|d| d == id));
    // `get_mut`, not indexing: an index inserts `null` where a key is absent.
    if let Some(subscriptions) = filter_config
        .get_mut("subscriptions")
        .and_then(Value::as_object_mut)
    {
        for subscription in subscriptions.values_mut() {
            if let Some(models) = subscription.get_mut("models").and_then(Value::as_array_mut) {
                models.retain(|m| !is_dropped(m));
            }
        }
    }
    for keyed_by_model in ["fallbacks", "route_timeouts_ms"] {
        if let Some(entries) = filter_config
            .get_mut(keyed_by_model)
            .and_then(Value::as_object_mut)
        {
            entries.retain(|id, _| !dropped.contains(id));
        }
    }
    dropped
}

/// The model ids and files to serve. None given: the embedded model, as the
/// configuration's first model. One without an id: the configuration's first
/// model too (so `--model FILE` swaps the model behind the demo setup).
/// Several: each under its id, or its file name (lowercase, without
/// `.gguf`); two under one id are refused.
fn served_models(
    given: &[ModelArg],
    configured: &[String],
) -> Result<Vec<(String, PathBuf)>, StackError> {
    let first = || {
        configured
            .first()
            .cloned()
            .unwrap_or_else(|| "smollm2-135m-instruct".into())
    };
    let served: Vec<(String, PathBuf)> = match given {
        [] => vec![(first(), default_model_path())],
        [ModelArg { path, id: None }] => vec![(first(), path.clone())],
        _ => given
            .iter()
            .map(|model| {
                let id = model.id.clone().unwrap_or_else(|| {
                    model
                        .path
                        .file_stem()
                        .map(|stem| stem.to_string_lossy().to_lowercase())
                        .unwrap_or_default()
                });
                (id, model.path.clone())
            })
            .collect(),
    };
    for (index, (id, _)) in served.iter().enumerate() {
        if served[..index].iter().any(|(other, _)| other == id) {
            return Err(StackError::DuplicateModel { id: id.clone() });
        }
    }
    Ok(served)
}

/// One inference server per model, the first on `--upstream-port`, the others
/// on free ports; logs in the state directory. Waits until each has loaded
/// its model.
fn start_inference(
    options: &StackOptions,
    served: &[(String, PathBuf)],
    dir: &Path,
) -> Result<Vec<(String, InferenceServer)>, StackError> {
    if INFERENCE_SERVER.find().is_none() {
        return Err(StackError::MissingInferenceServer {
            path: INFERENCE_SERVER.path(),
        });
    }
    if let Some((id, missing)) = served.iter().find(|(_, path)| !path.is_file()) {
        let path = missing.clone();
        let given =
            matches!(&options.upstream, UpstreamChoice::Inference { models } if !models.is_empty());
        return Err(if given {
            StackError::MissingModelArg {
                id: id.clone(),
                path,
            }
        } else {
            StackError::MissingModel { path }
        });
    }
    let mut servers = Vec::with_capacity(served.len());
    for (index, (id, model)) in served.iter().enumerate() {
        let log = if served.len() == 1 {
            dir.join("inference.log")
        } else {
            // An id may hold `/` (`org/model`): one file name.
            dir.join(format!("inference-{}.log", id.replace('/', "_")))
        };
        let launch = InferenceLaunch {
            port: if index == 0 { options.upstream_port } else { 0 },
            model: model.clone(),
            model_id: id.clone(),
            log: Some(log),
            args: Vec::new(),
        };
        // Servers already started stop when `servers` drops.
        let server = InferenceServer::launch(&launch).map_err(StackError::Inference)?;
        servers.push((id.clone(), server));
    }
    Ok(servers)
}

/// The control plane on its port, sampling this gateway's usage counters
/// when the admin port is known in advance.
fn start_control_plane(
    options: &ControlPlaneOptions,
    admin_port: u16,
) -> Result<ControlPlaneProcess, StackError> {
    if CONTROL_PLANE.find().is_none() {
        return Err(StackError::MissingControlPlane {
            path: CONTROL_PLANE.path(),
        });
    }
    ensure_free(options.port, "control plane", "--control-plane-port")?;
    let launch = ControlPlaneLaunch {
        port: options.port,
        data_dir: options.data_dir.clone(),
        envoy_admin: (admin_port != 0)
            .then(|| format!("http://127.0.0.1:{admin_port}"))
            .into_iter()
            .collect(),
        ..ControlPlaneLaunch::default()
    };
    ControlPlaneProcess::launch(&launch).map_err(StackError::ControlPlane)
}

/// Fails when `127.0.0.1:port` cannot be bound now, naming the flag that
/// moves it. Envoy binds with `SO_REUSEADDR` as `std` does, so this sees what
/// Envoy would; a port taken in between is caught from Envoy's log instead.
fn ensure_free(port: u16, role: &'static str, flag: &'static str) -> Result<(), StackError> {
    if port == 0 {
        return Ok(());
    }
    TcpListener::bind(("127.0.0.1", port))
        .map(drop)
        .map_err(|source| port_error(port, role, flag, source))
}

fn port_error(port: u16, role: &'static str, flag: &'static str, source: io::Error) -> StackError {
    if source.kind() == io::ErrorKind::AddrInUse {
        StackError::PortBusy { port, role, flag }
    } else {
        StackError::PortUnusable {
            port,
            role,
            flag,
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curl_commands_quote_the_body_for_the_shell() {
        let commands = curl_commands("http://127.0.0.1:8080", Some("it's"));
        assert_eq!(
            commands[0],
            r#"curl -s http://127.0.0.1:8080/v1/models -H "Authorization: Bearer $KEY""#
        );
        assert!(commands[1].starts_with("curl -si http://127.0.0.1:8080/v1/chat/completions "));
        assert!(commands[3].starts_with("curl -s http://127.0.0.1:8080/v1/responses "));
        // The body as the shell will pass it (key order is serde_json's,
        // which a build's other crates can change: compare values).
        let quoted = commands[1]
            .split_once(" -d '")
            .and_then(|(_, rest)| rest.strip_suffix('\''))
            .unwrap_or_else(|| panic!("no body: {}", commands[1]));
        let body: serde_json::Value = serde_json::from_str(&quoted.replace(r"'\''", "'")).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"model": "it's", "max_tokens": 32,
                               "messages": [{"role": "user", "content": "Hi"}]})
        );
        assert!(commands[2].contains(r#""stream":true"#));
        assert_eq!(curl_commands("http://x", None).len(), 1);
    }

    #[test]
    fn each_model_file_is_served_under_one_id() {
        let arg = |path: &str, id: Option<&str>| ModelArg {
            path: PathBuf::from(path),
            id: id.map(str::to_string),
        };
        let configured = vec!["smollm2-135m-instruct".to_string()];
        let ids = |given: &[ModelArg]| -> Vec<String> {
            served_models(given, &configured)
                .expect("served")
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        };
        assert_eq!(ids(&[]), ["smollm2-135m-instruct"]);
        assert_eq!(
            ids(&[arg("/m/Other.gguf", None)]),
            ["smollm2-135m-instruct"]
        );
        assert_eq!(
            ids(&[
                arg("/m/Gemma-3-270M.Q4_K_M.gguf", None),
                arg("/m/s.gguf", Some("small"))
            ]),
            ["gemma-3-270m.q4_k_m", "small"]
        );
        let twice = served_models(
            &[arg("/a/m.gguf", None), arg("/b/m.gguf", None)],
            &configured,
        );
        assert!(matches!(twice, Err(StackError::DuplicateModel { id }) if id == "m"));
    }

    /// A configured id no `--model` serves is not routed: it would be listed
    /// and then answered 404 by the server that got it.
    #[test]
    fn configured_models_no_server_serves_are_dropped() {
        let mut config = json!({
            "models": ["smollm2-135m-instruct", "other"],
            "subscriptions": {
                "free": {"models": ["smollm2-135m-instruct", "other"]},
                "none": {}
            },
            "fallbacks": {"smollm2-135m-instruct": [], "other": []},
            "route_timeouts_ms": {"smollm2-135m-instruct": 1000}
        });
        let configured = ["smollm2-135m-instruct".to_string(), "other".to_string()];
        let dropped = drop_unserved(&mut config, &configured, &["other".to_string()]);
        assert_eq!(dropped, ["smollm2-135m-instruct"]);
        assert_eq!(config["subscriptions"]["free"]["models"], json!(["other"]));
        assert_eq!(config["fallbacks"], json!({"other": []}));
        assert_eq!(config["route_timeouts_ms"], json!({}));
        assert!(drop_unserved(&mut config, &configured, &configured).is_empty());
        // Nothing is added where the configuration has no such key.
        let mut bare = json!({"models": ["a"], "subscriptions": {"s": {}}});
        drop_unserved(&mut bare, &["a".to_string()], &[]);
        assert_eq!(bare, json!({"models": ["a"], "subscriptions": {"s": {}}}));
    }

    #[test]
    fn models_come_from_the_configuration() {
        assert_eq!(
            configured_models(&json!({ "models": ["a", "", 3, "b"] })),
            ["a", "b"]
        );
        assert!(configured_models(&json!({ "models": "a" })).is_empty());
        assert!(configured_models(&json!({})).is_empty());
    }

    #[test]
    fn a_busy_port_names_its_flag() {
        let held = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = held.local_addr().expect("addr").port();
        let error = ensure_free(port, "gateway listener", "--listen-port").expect_err("busy");
        assert_eq!(
            error.to_string(),
            format!("port {port} (the gateway listener) is already in use on 127.0.0.1: stop what holds it, or choose another port with --listen-port (0 = any free port)")
        );
        drop(held);
        assert!(ensure_free(0, "gateway listener", "--listen-port").is_ok());
    }

    #[test]
    fn unreadable_configurations_are_named() {
        let error = read_filter_config(Path::new("/nonexistent/filter.json")).expect_err("absent");
        assert!(error
            .to_string()
            .starts_with("cannot read the filter configuration /nonexistent/filter.json: "));
    }
}
