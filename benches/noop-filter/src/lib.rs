//! The cheapest possible HTTP filter: one HTTP context per request and no host
//! calls. The load benchmark runs it to separate the cost of having a wasm
//! filter at all from the cost of what our filter does.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{ContextType, LogLevel};

struct NoopRoot;
struct NoopStream;

impl Context for NoopRoot {}
impl Context for NoopStream {}
impl HttpContext for NoopStream {}

impl RootContext for NoopRoot {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(NoopStream))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(NoopRoot) });
}}
