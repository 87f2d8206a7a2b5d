//! `GET /health`: whether the server serves, and what. `status` is what
//! probes and the test harness read (200 `ok` once the model is loaded, 503
//! `loading` or `shutting_down`); once loaded, the answer also describes the
//! model file (read once at load, see [`ModelFile`]), where the chat template
//! came from, and the memory the process holds now.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::AppState;
use crate::model::ModelFile;
use crate::text::TemplateOrigin;

#[derive(Debug, Serialize)]
struct Health<'a> {
    status: &'static str,
    model: &'a str,
    /// `architecture`, `format`, `tensor_types`, `file_bytes`; absent while
    /// loading.
    #[serde(flatten)]
    file: Option<&'a ModelFile>,
    /// Absent while loading; `null` when chats are refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    chat_template: Option<Option<TemplateOrigin>>,
    memory: Memory,
}

#[derive(Debug, Serialize)]
struct Memory {
    /// The process's resident set; `null` where the OS does not say.
    resident_bytes: Option<u64>,
    /// Held by running sequences' KV caches, as of the engine's last step.
    kv_cache_bytes: u64,
    /// The KV cache's layout and use; absent while loading.
    #[serde(skip_serializing_if = "Option::is_none")]
    kv_cache: Option<KvCache>,
}

#[derive(Debug, Serialize)]
struct KvCache {
    blocks: usize,
    block_size: usize,
    /// Blocks held by sequences, 0 to 1 (`vllm:kv_cache_usage_perc`).
    usage: f64,
    prefix_caching: bool,
}

pub(super) async fn health(State(app): State<Arc<AppState>>) -> Response {
    let ready = app.ready.get();
    let (code, status) = match ready {
        Some(r) if r.engine.is_shutting_down() => {
            (StatusCode::SERVICE_UNAVAILABLE, "shutting_down")
        }
        Some(_) => (StatusCode::OK, "ok"),
        None => (StatusCode::SERVICE_UNAVAILABLE, "loading"),
    };
    let body = Health {
        status,
        model: &app.model_id,
        file: ready.map(|r| &r.loaded.file),
        chat_template: ready.map(|r| r.chat_template.as_ref().map(|(_, origin)| *origin)),
        memory: Memory {
            resident_bytes: resident_bytes(),
            kv_cache_bytes: app.metrics.kv_cache_bytes.get(),
            kv_cache: app.metrics.cache_config.get().map(|c| KvCache {
                blocks: c.blocks,
                block_size: c.block_tokens,
                usage: app.metrics.kv_cache_usage.get(),
                prefix_caching: c.prefix_caching,
            }),
        },
    };
    (code, axum::Json(body)).into_response()
}

/// The process's resident set size. Read from `/proc/self/status` (`VmRSS`,
/// in kB) rather than `/proc/self/statm`, which counts pages and so needs
/// the page size, which std cannot tell without libc. A read of procfs
/// takes microseconds: fine on the async thread.
#[cfg(target_os = "linux")]
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    vm_rss_bytes(&status)
}

#[cfg(not(target_os = "linux"))]
fn resident_bytes() -> Option<u64> {
    None
}

/// `VmRSS:    123456 kB` in bytes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn vm_rss_bytes(status: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let kb = line.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    kb.checked_mul(1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_bytes() {
        let status =
            "Name:\tinference-server\nVmPeak:\t  900 kB\nVmRSS:\t  123456 kB\nRssAnon:\t 1 kB\n";
        assert_eq!(vm_rss_bytes(status), Some(123_456 * 1024));
        assert_eq!(vm_rss_bytes("Name:\tx\n"), None);
        assert_eq!(vm_rss_bytes("VmRSS:\t12 MB\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_a_resident_set() {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}
