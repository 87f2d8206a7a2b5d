//! The audit record: one JSON object per request, written by the filter into
//! Envoy filter state (`wasm.maas_audit`) during `on_log`, which Envoy runs
//! before its access loggers; `envoy/gateway.template.yaml` prints it as a
//! JSON line. It says who called which model, what happened and what it cost.
//! It never contains the prompt, the completion or the key itself.

use serde::Serialize;

/// Where the charged token counts came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UsageSource {
    /// The model's own `usage`.
    Reported,
    /// No usage arrived (cut stream, disconnect): the reservation's prompt
    /// bound and the streamed text were charged instead (`estimate`).
    Estimated,
    /// A successful response's body came in an encoding the filter does not
    /// decode: its whole reservation was charged (prompt bound and
    /// completion budget).
    Reserved,
    /// An error status before any output (the request never reached a
    /// model, or the model server refused it): no tokens charged.
    None,
}

#[derive(Debug, Serialize)]
pub struct AuditRecord<'a> {
    /// Request start, milliseconds since the Unix epoch.
    pub start_ms: u64,
    /// When its body had come and its limits were checked (the window it
    /// counts in); absent for a request refused before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admitted_ms: Option<u64>,
    pub request_id: Option<&'a str>,
    pub method: &'a str,
    pub path: &'a str,
    pub key_id: Option<&'a str>,
    pub user: Option<&'a str>,
    pub subscription: Option<&'a str>,
    pub model: Option<&'a str>,
    pub stream: bool,
    pub status: Option<u32>,
    pub outcome: &'a str,
    pub error_code: Option<&'a str>,
    pub reserved_tokens: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    pub usage: Option<UsageSource>,
    pub latency_ms: u64,
    /// The external provider that answered, when one did (a model's own
    /// server leaves it out).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<&'a str>,
    /// Upstream attempts, when Envoy made more than one (a model's
    /// fallbacks): the last is the one that answered and was charged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
}

impl AuditRecord<'_> {
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
