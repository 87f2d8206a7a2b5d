//! The thin proxy-wasm layer: root and HTTP contexts that hand every callback
//! to [`crate::gateway::Stream`] (a request) or [`KeySync`] (the key sync),
//! and the [`StreamHost`] / [`SyncHost`] / [`CounterStore`] implementations
//! over hostcalls. Nothing here decides anything.
//!
//! Hostcalls are used directly rather than through the SDK's trait defaults,
//! which unwrap their results. The SDK's hostcalls themselves still panic on
//! a status they do not expect (e.g. a second local reply, or a header map
//! read in a phase where it does not exist); the state machine keeps to the
//! phases and replies at most once, so none of those are reachable from
//! input. Header values are read as bytes (see `header_map`).

use crate::auth::control_plane::ControlPlane;
use crate::auth::key_sync::driver::{KeySync, SyncAnswer};
use crate::backend::{BackendConfig, BackendStream};
use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::Stream;
use crate::host::{Flow, StreamHost, SyncHost};
use crate::limits::global_limits::{Call, Method};
use crate::limits::settlement_outbox::{Attempt, Outbox};
use crate::limits::{self, Cas, CounterStore, StoreError};
use crate::metrics::Metric;
use crate::policy::Policy;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(GatewayRoot::default())
    });
}}

/// Per-VM state shared by the root context and its HTTP contexts (one VM
/// runs on one worker thread, so `Rc`/`RefCell` suffice).
#[derive(Default)]
struct VmState {
    config: Option<Rc<Config>>,
    /// Set instead of `config` when this VM is a provider cluster's
    /// upstream filter ([`crate::backend`]).
    backend: Option<Rc<BackendConfig>>,
    /// The subscriptions in force; rebuilt when the sync state moves.
    policy: Rc<Policy>,
    /// Envoy metric ids, defined on first use.
    metric_ids: RefCell<HashMap<Metric, u32>>,
    /// Settlements the root context delivers to the rate limiter.
    outbox: Outbox,
    /// The root's tick period (0: none), restored after a settlement
    /// shortened it.
    tick_ms: u64,
    /// A settlement shortened the tick period to deliver it at once.
    nudged: bool,
    /// When each throttled warning topic last logged.
    warned_ms: RefCell<HashMap<&'static str, u64>>,
}

/// How often a throttled warning topic may log, per worker.
const WARN_INTERVAL_MS: u64 = 10_000;

impl VmState {
    /// Rebuilds the policy if another VM (or this one) applied a sync since.
    /// One small shared-data read when nothing changed.
    fn refresh_policy(&mut self) {
        let Some(config) = self.config.clone() else {
            return;
        };
        let mut warn = |w: String| log(LogLevel::Warn, &format!("maas-gateway: {w}"));
        if let Some(policy) = self.policy.refreshed(&config, &SharedData, &mut warn) {
            self.policy = Rc::new(policy);
        }
    }
}

#[derive(Default)]
struct GatewayRoot {
    vm: Rc<RefCell<VmState>>,
    configured_ms: u64,
    sync: KeySync,
    /// Envoy replaced this context's configuration (a reload, a new
    /// WasmPlugin) and asked it to end (`on_done`) while settlements were
    /// still waiting: it lives on, delivering only them, and tells Envoy it
    /// is done once the outbox is empty. The new configuration's context
    /// takes over everything else.
    ending: bool,
    /// It told Envoy so (`proxy_done`, at most once).
    told_done: bool,
}

impl GatewayRoot {
    /// The configuration (a reference count, not a copy), which holds the
    /// control plane's settings.
    fn config(&self) -> Option<Rc<Config>> {
        self.vm.borrow().config.clone()
    }

    fn host(&self) -> EnvoyHost {
        EnvoyHost {
            vm: Rc::clone(&self.vm),
        }
    }

    /// Sends the settlements that are due. Made from the root context, so
    /// the calls outlive the streams that settled and their answers come
    /// back here (`on_grpc_call_response`).
    fn flush_settlements(&self, now_ms: u64) {
        let due = self.vm.borrow_mut().outbox.take_due(now_ms);
        for settlement in due {
            let grpc = settlement.call.method.grpc();
            let sent = hostcalls::dispatch_grpc_call(
                &settlement.cluster,
                grpc.service,
                grpc.method,
                Vec::new(),
                Some(&settlement.call.message),
                Duration::from_millis(settlement.timeout_ms),
            );
            match sent {
                Ok(token) => self.vm.borrow_mut().outbox.sent(token, settlement),
                Err(_) => {
                    let attempt = self.vm.borrow_mut().outbox.not_sent(settlement, now_ms);
                    self.report_settlement(attempt);
                }
            }
        }
    }

    /// An ending context whose last settlement left tells Envoy it may go
    /// (once: it stays ending, doing nothing, until Envoy deletes it).
    fn end_if_delivered(&mut self) {
        if !self.ending || self.told_done || !self.vm.borrow().outbox.is_empty() {
            return;
        }
        self.told_done = true;
        log(
            LogLevel::Info,
            "maas-gateway: the replaced configuration's settlements are delivered; it ends",
        );
        // Only after `on_done` returned false is this context pending, so
        // the host cannot answer NotFound here (which the SDK would panic on).
        let _ = hostcalls::done();
    }

    fn report_settlement(&self, attempt: Attempt) {
        let host = self.host();
        let (result, problem) = match attempt {
            Attempt::Unknown => return,
            Attempt::Settled => ("settled", None),
            Attempt::Retrying { attempts } => (
                "settle_retry",
                Some(format!("a settlement failed ({attempts} attempts), retrying")),
            ),
            Attempt::GaveUp { attempts } => (
                "settle_dropped",
                Some(format!(
                    "a settlement was given up after {attempts} attempts: its usage is not counted globally"
                )),
            ),
        };
        host.add_metric(Metric::LimiterCalls { result }, 1);
        if let Some(problem) = problem {
            host.warn_throttled(
                "limiter-settlement",
                &format!("maas-gateway: rate limiter: {problem}"),
            );
        }
    }

    /// The key sync's gauges.
    fn record_gauges(&self, now_ms: u64) {
        let host = self.host();
        self.sync.record_age(&host, self.configured_ms, now_ms);
        let subscriptions = self.vm.borrow().policy.len() as u64;
        host.set_gauge(Metric::Subscriptions, subscriptions);
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

/// A GET to the control plane with the gateway's token.
fn control_plane_call(cp: &ControlPlane, path: &str) -> Result<u32, Status> {
    hostcalls::dispatch_http_call(
        &cp.cluster,
        vec![
            (":method", "GET"),
            (":path", path),
            (":authority", &cp.authority),
            ("authorization", cp.token.header_value()),
        ],
        None,
        Vec::new(),
        Duration::from_millis(cp.timeout_ms),
    )
}

/// The `:status` and body of the HTTP call response being delivered;
/// `None` when the call failed without a response (timeout, reset, a body
/// over Envoy's buffer limit). Envoy then reports no headers, and reading
/// the absent map would make the SDK abort the VM, so it is not read.
fn call_response(num_headers: usize, body_size: usize) -> Option<(u32, Vec<u8>)> {
    if num_headers == 0 {
        return None;
    }
    let status = call_header(":status")?.parse().ok()?;
    let body = if body_size == 0 {
        Vec::new()
    } else {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
            .ok()
            .flatten()
            .unwrap_or_default()
    };
    Some((status, body))
}

/// A header of the HTTP call response being delivered (call only when the
/// response has headers; see `call_response`).
fn call_header(name: &str) -> Option<String> {
    let value = hostcalls::get_map_value_bytes(MapType::HttpCallResponseHeaders, name)
        .ok()
        .flatten()?;
    String::from_utf8(value).ok()
}

impl Context for GatewayRoot {
    /// Envoy ends this context when its configuration is replaced or
    /// removed. Settlements still waiting (the limiter was down as their
    /// requests ended) are usage that no other context will count: they are
    /// delivered first, for as long as the outbox tries them.
    fn on_done(&mut self) -> bool {
        let waiting = self.vm.borrow().outbox.len();
        if waiting == 0 {
            return true;
        }
        self.ending = true;
        log(
            LogLevel::Info,
            &format!(
                "maas-gateway: configuration replaced; delivering its {waiting} waiting settlements before it ends"
            ),
        );
        false
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, _response_size: usize) {
        let attempt = self
            .vm
            .borrow_mut()
            .outbox
            .answered(token_id, status_code, now_ms());
        self.report_settlement(attempt);
        self.end_if_delivered();
    }

    fn on_http_call_response(
        &mut self,
        token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        if !self.sync.expects(token_id) {
            return;
        }
        let config = self.config();
        let Some(cp) = config.as_ref().and_then(|c| c.control_plane.as_ref()) else {
            self.sync.abandon();
            return;
        };
        let answer = call_response(num_headers, body_size).map(|(status, body)| SyncAnswer {
            status,
            body,
            store_id: call_header("x-maas-store"),
        });
        let host = self.host();
        self.sync.on_response(&host, cp, answer, now_ms());
    }
}

impl RootContext for GatewayRoot {
    fn on_configure(&mut self, _plugin_configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(Some(b)) => b,
            Ok(None) => {
                log(
                    LogLevel::Critical,
                    "maas-gateway: no plugin configuration given",
                );
                return false;
            }
            Err(e) => {
                log(
                    LogLevel::Critical,
                    &format!("maas-gateway: cannot read configuration: {e:?}"),
                );
                return false;
            }
        };
        if BackendConfig::is_backend_document(&bytes) {
            return match BackendConfig::from_json(&bytes) {
                Ok(backend) => {
                    let mut vm = self.vm.borrow_mut();
                    vm.backend = Some(Rc::new(backend));
                    vm.metric_ids.borrow_mut().clear();
                    true
                }
                Err(e) => {
                    log(LogLevel::Critical, &format!("maas-gateway (backend): {e}"));
                    false
                }
            };
        }
        let config = match Config::from_json(&bytes) {
            Ok(c) => c,
            Err(e) => {
                log(LogLevel::Critical, &format!("maas-gateway: {e}"));
                return false;
            }
        };
        // Create every counter before traffic arrives; see limits::ensure_counter.
        for scope in config.all_limits() {
            if let Err(e) = limits::ensure_counter(&SharedData, &scope.group) {
                log(
                    LogLevel::Warn,
                    &format!(
                        "maas-gateway: cannot create counter {}: {e}",
                        scope.group.counter_key
                    ),
                );
            }
        }
        let policy = Policy::from_config(&config);
        // Every VM ticks; the sync lease lets one of them call per interval.
        // A sync starts at the first tick after it is due, so ticks a fifth
        // of the interval apart keep it at most that late. Settlements go
        // out at the next tick too, their holds kept meanwhile.
        let sync_period = config
            .control_plane
            .as_ref()
            .map(|cp| (cp.sync_interval_ms / 5).max(20));
        let settle_period = config
            .limiter
            .as_ref()
            .map(|_| limits::settlement_outbox::SETTLEMENT_TICK_MS);
        let period = match (sync_period, settle_period) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.vm.borrow_mut().tick_ms = period.unwrap_or(0);
        if let Some(period) = period {
            if let Err(e) = hostcalls::set_tick_period(Duration::from_millis(period)) {
                log(
                    LogLevel::Critical,
                    &format!("maas-gateway: cannot start the timer: {e:?}"),
                );
                return false;
            }
        }
        self.configured_ms = now_ms();
        let mut vm = self.vm.borrow_mut();
        vm.config = Some(Rc::new(config));
        vm.policy = Rc::new(policy);
        vm.metric_ids.borrow_mut().clear();
        vm.refresh_policy();
        true
    }

    fn on_tick(&mut self) {
        let Some(config) = self.config() else {
            return;
        };
        let now = now_ms();
        self.flush_settlements(now);
        let restore = {
            let mut vm = self.vm.borrow_mut();
            std::mem::take(&mut vm.nudged).then_some(vm.tick_ms)
        };
        if let Some(period) = restore {
            let _ = hostcalls::set_tick_period(Duration::from_millis(period));
        }
        if self.ending {
            // A settlement given up (too old) leaves without an answer.
            self.end_if_delivered();
            return;
        }
        if config.limiter.is_some() {
            let waiting = self.vm.borrow().outbox.len() as u64;
            self.host().set_gauge(Metric::SettlementsWaiting, waiting);
        }
        let Some(cp) = &config.control_plane else {
            return;
        };
        let host = self.host();
        self.sync.on_tick(&host, cp, now);
        self.vm.borrow_mut().refresh_policy();
        self.record_gauges(now);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let backend = self.vm.borrow().backend.clone();
        if let Some(backend) = backend {
            return Some(Box::new(BackendHttp {
                stream: BackendStream::new(backend),
                host: self.host(),
            }));
        }
        // Returning None would abort the VM (the SDK panics on it); a VM
        // without a valid configuration fails closed instead.
        self.vm.borrow_mut().refresh_policy();
        let (config, policy) = {
            let vm = self.vm.borrow();
            let Some(config) = vm.config.clone() else {
                return Some(Box::new(Unconfigured));
            };
            (config, Rc::clone(&vm.policy))
        };
        Some(Box::new(GatewayHttp {
            stream: Stream::new(config, policy),
            host: EnvoyHost {
                vm: Rc::clone(&self.vm),
            },
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// The HTTP context of a VM whose configuration was refused: every request
/// gets 503, none reaches a model unchecked.
struct Unconfigured;

impl Context for Unconfigured {}

impl HttpContext for Unconfigured {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let err = GatewayError::Unconfigured;
        let _ = hostcalls::send_http_response(
            err.status(),
            vec![("content-type", "application/json")],
            Some(&err.body()),
        );
        Action::Pause
    }
}

struct GatewayHttp {
    stream: Stream,
    host: EnvoyHost,
}

/// An attempt through a provider's cluster (the backend role).
struct BackendHttp {
    stream: BackendStream,
    host: EnvoyHost,
}

impl Context for BackendHttp {}

impl HttpContext for BackendHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_request_headers(&self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_request_body(&self.host, body_size, end_of_stream),
        )
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_response_headers(&self.host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_response_body(&self.host, body_size, end_of_stream),
        )
    }
}

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause | Flow::Buffer => Action::Pause,
    }
}

impl Context for GatewayHttp {
    fn on_http_call_response(
        &mut self,
        _token_id: u32,
        num_headers: usize,
        body_size: usize,
        _num_trailers: usize,
    ) {
        let response = call_response(num_headers, body_size);
        let (status, body) = match &response {
            Some((status, body)) => (Some(*status), body.as_slice()),
            None => (None, &[][..]),
        };
        self.stream.on_key_lookup(&self.host, status, body);
    }

    fn on_grpc_call_response(&mut self, token_id: u32, status_code: u32, response_size: usize) {
        let body = if status_code == 0 && response_size > 0 {
            hostcalls::get_buffer(BufferType::GrpcReceiveBuffer, 0, response_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        self.stream
            .on_limiter_response(&self.host, token_id, Some(status_code), &body);
    }
}

impl HttpContext for GatewayHttp {
    fn on_http_request_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_request_headers(&self.host, end_of_stream))
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_request_body(&self.host, body_size, end_of_stream),
        )
    }

    fn on_http_request_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.stream.on_request_trailers(&self.host))
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        action(self.stream.on_response_trailers(&self.host))
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, end_of_stream: bool) -> Action {
        action(self.stream.on_response_headers(&self.host, end_of_stream))
    }

    fn on_http_response_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        action(
            self.stream
                .on_response_body(&self.host, body_size, end_of_stream),
        )
    }

    fn on_log(&mut self) {
        self.stream.on_log(&self.host);
    }
}

struct EnvoyHost {
    vm: Rc<RefCell<VmState>>,
}

impl EnvoyHost {
    /// The Envoy id of `metric`, defined on first use.
    fn metric_id(&self, metric: Metric) -> Option<u32> {
        let vm = self.vm.borrow();
        // The backend role has no gateway configuration and no model labels.
        let models = vm.config.as_ref().map_or(&[][..], |c| c.models.as_slice());
        let mut ids = vm.metric_ids.borrow_mut();
        if let Some(id) = ids.get(&metric) {
            return Some(*id);
        }
        let kind = if metric.is_gauge() {
            MetricType::Gauge
        } else {
            MetricType::Counter
        };
        let id = hostcalls::define_metric(kind, &metric.name(models)).ok()?;
        ids.insert(metric, id);
        Some(id)
    }

    /// Both hosts count metrics this way (inherent, so calls on an
    /// `EnvoyHost` need not name a trait).
    fn add_metric(&self, metric: Metric, value: u64) {
        if let Some(id) = self.metric_id(metric) {
            let _ = hostcalls::increment_metric(id, value.min(i64::MAX as u64) as i64);
        }
    }

    fn warn(&self, message: &str) {
        log(LogLevel::Warn, message);
    }

    /// A GET to the control plane, when one is configured.
    fn control_plane_get(&self, path: &str) -> Result<u32, String> {
        let config = self.vm.borrow().config.clone();
        let Some(cp) = config.as_ref().and_then(|c| c.control_plane.as_ref()) else {
            return Err("no control plane configured".to_string());
        };
        control_plane_call(cp, path).map_err(|e| format!("{e:?}"))
    }
}

/// The root context's side: the key sync's calls and reports.
impl SyncHost for EnvoyHost {
    fn store(&self) -> &dyn CounterStore {
        &SharedData
    }

    fn call_control_plane(&self, path: &str) -> Result<u32, String> {
        self.control_plane_get(path)
    }

    fn sync_applied(&self) {
        self.vm.borrow_mut().refresh_policy();
    }

    fn add_metric(&self, metric: Metric, value: u64) {
        EnvoyHost::add_metric(self, metric, value);
    }

    fn set_gauge(&self, metric: Metric, value: u64) {
        if let Some(id) = self.metric_id(metric) {
            let _ = hostcalls::record_metric(id, value);
        }
    }

    fn warn(&self, message: &str) {
        EnvoyHost::warn(self, message);
    }
}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// Header maps as bytes: the SDK's `get_map` unwraps UTF-8 decoding of every
/// value and would abort the VM on one non-UTF-8 byte from a client. Names
/// are HTTP tokens (Envoy enforces that), so only values need care; an
/// undecodable value can never match a key or a model anyway.
fn header_map(map: MapType) -> Vec<(String, String)> {
    hostcalls::get_map_bytes(map)
        .unwrap_or_default()
        .into_iter()
        .map(|(name, value)| (name, String::from_utf8_lossy(&value).into_owned()))
        .collect()
}

impl StreamHost for EnvoyHost {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn request_headers(&self) -> Vec<(String, String)> {
        header_map(MapType::HttpRequestHeaders)
    }

    fn set_request_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpRequestHeaders, name, value);
    }

    fn request_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpRequestBody, 0, size)
            .ok()
            .flatten()
    }

    fn replace_request_body(&self, size: usize, body: &[u8]) {
        let _ = hostcalls::set_buffer(BufferType::HttpRequestBody, 0, size, body);
    }

    fn response_headers(&self) -> Vec<(String, String)> {
        header_map(MapType::HttpResponseHeaders)
    }

    fn set_response_header(&self, name: &str, value: Option<&str>) {
        let _ = hostcalls::set_map_value(MapType::HttpResponseHeaders, name, value);
    }

    fn response_body(&self, size: usize) -> Option<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpResponseBody, 0, size)
            .ok()
            .flatten()
    }

    fn replace_response_body(&self, size: usize, body: &[u8]) {
        let _ = hostcalls::set_buffer(BufferType::HttpResponseBody, 0, size, body);
    }

    fn append_response_body(&self, body: &[u8]) -> bool {
        // A start past the end appends (Envoy's `Buffer::copyFrom`); without
        // a buffered body Envoy refuses the call.
        hostcalls::set_buffer(BufferType::HttpResponseBody, usize::MAX, 0, body).is_ok()
    }

    fn send_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) {
        if let Err(e) = hostcalls::send_http_response(status, headers.to_vec(), Some(body)) {
            log(
                LogLevel::Error,
                &format!("maas-gateway: local reply failed: {e:?}"),
            );
        }
    }

    fn set_audit_record(&self, record: &[u8]) {
        let _ = hostcalls::set_property(vec!["maas_audit"], Some(record));
    }

    fn publish_identity(&self, name: &str, value: &str) {
        let key = format!("maas_{name}");
        let _ = hostcalls::set_property(vec![key.as_str()], Some(value.as_bytes()));
    }

    fn request_state(&self, name: &str) -> Option<String> {
        let bytes = hostcalls::get_property(vec![name]).ok().flatten()?;
        String::from_utf8(bytes).ok()
    }

    fn set_request_state(&self, name: &str, value: &str) {
        if let Err(e) = hostcalls::set_property(vec![name], Some(value.as_bytes())) {
            log(
                LogLevel::Warn,
                &format!("maas-gateway: filter state {name} not set: {e:?}"),
            );
        }
    }

    fn counters(&self) -> &dyn CounterStore {
        &SharedData
    }

    fn add_metric(&self, metric: Metric, value: u64) {
        EnvoyHost::add_metric(self, metric, value);
    }

    fn dispatch_key_lookup(&self, id: &str) -> bool {
        // Without a control plane there is nothing to ask, and nothing to
        // warn about: the key is simply unknown.
        let configured = self
            .vm
            .borrow()
            .config
            .as_ref()
            .is_some_and(|c| c.control_plane.is_some());
        if !configured {
            return false;
        }
        match self.control_plane_get(&format!("/maas-api/v1/sync/keys/{id}")) {
            Ok(_) => true,
            Err(e) => {
                log(
                    LogLevel::Warn,
                    &format!("maas-gateway: key lookup not sent: {e}"),
                );
                false
            }
        }
    }

    fn resume_request(&self) {
        let _ = hostcalls::resume_http_request();
    }

    fn token_claim(&self, claim: &str) -> Option<Vec<u8>> {
        let oidc = self.vm.borrow().config.as_ref()?.oidc.clone()?;
        let path = vec![
            "metadata",
            "filter_metadata",
            oidc.metadata_namespace.as_str(),
            oidc.payload_key.as_str(),
            claim,
        ];
        hostcalls::get_property(path).ok().flatten()
    }

    fn response_code_details(&self) -> Option<String> {
        let bytes = hostcalls::get_property(vec!["response", "code_details"])
            .ok()
            .flatten()?;
        String::from_utf8(bytes).ok()
    }

    fn upstream_attempts(&self) -> Option<u32> {
        let bytes = hostcalls::get_property(vec!["upstream", "request_attempt_count"])
            .ok()
            .flatten()?;
        // Envoy hands integers over as 8 little-endian bytes.
        let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        u32::try_from(u64::from_le_bytes(raw)).ok()
    }

    fn dispatch_limiter(
        &self,
        cluster: &str,
        method: Method,
        message: &[u8],
        timeout_ms: u64,
    ) -> Option<u32> {
        let grpc = method.grpc();
        let sent = hostcalls::dispatch_grpc_call(
            cluster,
            grpc.service,
            grpc.method,
            Vec::new(),
            Some(message),
            Duration::from_millis(timeout_ms),
        );
        match sent {
            Ok(token) => Some(token),
            Err(e) => {
                self.warn_throttled(
                    "limiter-dispatch",
                    &format!("maas-gateway: call to the rate limiter not sent: {e:?}"),
                );
                None
            }
        }
    }

    /// Envoy cancels a context's calls when the context goes away, and the
    /// SDK routes a call's answer to the context that made it: a settlement,
    /// made as the stream ends, goes to the root context's outbox, which
    /// sends it and retries it until the limiter counts it.
    fn queue_settlement(&self, cluster: &str, call: Call, timeout_ms: u64) -> bool {
        let kept = {
            let mut vm = self.vm.borrow_mut();
            let kept = vm.outbox.push(cluster, call, timeout_ms, now_ms());
            // While the limiter is failing, settlements go at the normal
            // tick instead: no 1 ms ticks through an outage.
            let nudge = kept.is_ok() && !vm.nudged && !vm.outbox.retrying();
            vm.nudged |= nudge;
            kept.map(|()| nudge)
        };
        match kept {
            Ok(nudge) => {
                // Called from a stream, this sets the root's period (Envoy
                // keeps one timer per root context): the root sends the
                // settlement about a millisecond from now, then restores
                // its period, so a hold outlives its request by no more
                // than that.
                if nudge {
                    let _ = hostcalls::set_tick_period(Duration::from_millis(1));
                }
                true
            }
            Err(full) => {
                self.add_metric(
                    Metric::LimiterCalls {
                        result: "settle_dropped",
                    },
                    1,
                );
                self.warn_throttled("limiter-outbox", &format!("maas-gateway: {full}"));
                false
            }
        }
    }

    fn warn(&self, message: &str) {
        EnvoyHost::warn(self, message);
    }

    fn warn_throttled(&self, topic: &'static str, message: &str) {
        let now = now_ms();
        let vm = self.vm.borrow();
        let mut warned = vm.warned_ms.borrow_mut();
        let last = warned.entry(topic).or_insert(0);
        if now.saturating_sub(*last) >= WARN_INTERVAL_MS {
            *last = now;
            log(LogLevel::Warn, message);
        }
    }
}

/// Envoy's shared data: one key/value map for all VMs of this plugin's vm_id
/// across worker threads, with compare-and-swap.
struct SharedData;

impl CounterStore for SharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, Cas)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            Ok((Some(bytes), Some(cas))) => Ok(Some((bytes, cas))),
            Ok(_) | Err(Status::NotFound) => Ok(None),
            Err(e) => Err(StoreError::Unavailable(format!("{e:?}"))),
        }
    }

    fn set(&self, key: &str, value: &[u8], cas: Option<Cas>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), cas) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(e) => Err(StoreError::Unavailable(format!("{e:?}"))),
        }
    }
}
