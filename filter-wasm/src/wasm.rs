//! The thin proxy-wasm layer: root and HTTP contexts that hand every callback
//! to [`crate::gateway::Stream`], and the [`StreamHost`] / [`CounterStore`]
//! implementations over hostcalls. Nothing here decides anything.
//!
//! Hostcalls are used directly rather than through the SDK's trait defaults,
//! which unwrap their results. The SDK's hostcalls themselves still panic on
//! a status they do not expect (e.g. a second local reply, or a header map
//! read in a phase where it does not exist); the state machine keeps to the
//! phases and replies at most once, so none of those are reachable from
//! input. Header values are read as bytes (see `header_map`).

use crate::config::Config;
use crate::error::GatewayError;
use crate::gateway::Stream;
use crate::host::{Flow, StreamHost};
use crate::limits::{self, Cas, CounterStore, StoreError};
use crate::metrics::Metric;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType, Status};
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(GatewayRoot::default()) });
}}

/// Per-VM state shared by the root context and its HTTP contexts (one VM
/// runs on one worker thread, so `Rc`/`RefCell` suffice).
#[derive(Default)]
struct VmState {
    config: Option<Rc<Config>>,
    /// Envoy metric ids, defined on first use.
    metric_ids: RefCell<HashMap<Metric, u32>>,
}

#[derive(Default)]
struct GatewayRoot {
    vm: Rc<RefCell<VmState>>,
}

impl Context for GatewayRoot {}

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
        let mut vm = self.vm.borrow_mut();
        vm.config = Some(Rc::new(config));
        vm.metric_ids.borrow_mut().clear();
        true
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // Returning None would abort the VM (the SDK panics on it); a VM
        // without a valid configuration fails closed instead.
        let Some(config) = self.vm.borrow().config.clone() else {
            return Some(Box::new(Unconfigured));
        };
        Some(Box::new(GatewayHttp {
            stream: Stream::new(config),
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

fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue => Action::Continue,
        Flow::Pause | Flow::Buffer => Action::Pause,
    }
}

impl Context for GatewayHttp {}

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
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64)
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

    fn counters(&self) -> &dyn CounterStore {
        &SharedData
    }

    fn add_metric(&self, metric: Metric, value: u64) {
        let vm = self.vm.borrow();
        let Some(config) = vm.config.as_ref() else {
            return;
        };
        let mut ids = vm.metric_ids.borrow_mut();
        let id = match ids.get(&metric) {
            Some(id) => *id,
            None => match hostcalls::define_metric(MetricType::Counter, &metric.name(config)) {
                Ok(id) => {
                    ids.insert(metric, id);
                    id
                }
                Err(_) => return,
            },
        };
        let _ = hostcalls::increment_metric(id, value.min(i64::MAX as u64) as i64);
    }

    fn warn(&self, message: &str) {
        log(LogLevel::Warn, message);
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
