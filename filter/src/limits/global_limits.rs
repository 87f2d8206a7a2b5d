//! Limits shared by many gateways: counters kept by a rate limiter service
//! (Kuadrant's Limitador, or `maas-limiter`, with Redis behind it) instead of
//! one Envoy's shared data.
//!
//! A limit is `global` by configuration (`{"rate": "20000/min", "mode":
//! "global"}`). For each admitted request that has global limits the filter
//! makes at most two calls through Envoy's gRPC client:
//! - request limits: Envoy's `ShouldRateLimit` with `hits_addend: 1`;
//! - token limits: Kuadrant's `Reserve` of the request's worst case, and
//!   `Commit` of the real usage when the response ends: the same
//!   no-overshoot accounting the local ledger does. With `reservations:
//!   false` (a limiter without them) it is `CheckRateLimit` of the worst case
//!   at admission and `Report` of the real usage at the end, which can
//!   overshoot by the requests in flight.
//!
//! Every call carries one descriptor naming the caller (`subscription`,
//! `key`, `quantity`, `model`); which counters that touches is the limiter's
//! limits file, which [`limitador_limits`] renders from this configuration so
//! the two cannot drift.
//!
//! Everything here is pure: building messages, reading answers, rendering
//! limits. Dispatching the calls is `gateway`'s and the host's job.

use maas_ratelimit_proto::{
    Code, CommitRequest, Duration, Message, RateLimitDescriptor, RateLimitRequest,
    RateLimitResponse, ReserveRequest, ReserveResponse,
};

use crate::subscription::{FailureMode, KeyLimitsPer, Quantity, Subscription};

/// The rate limiter service, as the `limiter` block configures it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limiter {
    /// Envoy cluster (HTTP/2) of the limiter's gRPC port.
    pub cluster: String,
    /// Limitador's namespace for this gateway's limits.
    pub domain: String,
    pub timeout_ms: u64,
    /// For limits that do not set their own.
    pub failure_mode: FailureMode,
    /// `Reserve`/`Commit` (true) or `CheckRateLimit`/`Report` (false).
    pub reservations: bool,
    /// How long a reservation holds if its commit never arrives (a gateway
    /// that died mid-request); longer than the longest generation.
    pub reservation_ttl_ms: u64,
}

/// Who a call is about: one descriptor, the same for every call of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub subscription: String,
    /// The key id, or `user:<name>` for a token holder and for a key whose
    /// subscription counts `key_limits` per owner (the owner's name): see
    /// `Subscription::holder_descriptor`.
    pub key: String,
    pub model: String,
}

/// Descriptor entry names; the limits file's CEL reads them as
/// `descriptors[0].<name>`.
pub const ENTRY_SUBSCRIPTION: &str = "subscription";
pub const ENTRY_KEY: &str = "key";
pub const ENTRY_QUANTITY: &str = "quantity";
pub const ENTRY_MODEL: &str = "model";

pub fn descriptor(caller: &Caller, quantity: Quantity) -> RateLimitDescriptor {
    RateLimitDescriptor::new([
        (ENTRY_SUBSCRIPTION, caller.subscription.as_str()),
        (ENTRY_KEY, caller.key.as_str()),
        (ENTRY_QUANTITY, quantity.as_str()),
        (ENTRY_MODEL, caller.model.as_str()),
    ])
}

/// Which of Limitador's methods a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ShouldRateLimit,
    CheckRateLimit,
    Reserve,
    Commit,
    Report,
}

impl Method {
    pub fn grpc(self) -> maas_ratelimit_proto::GrpcMethod {
        match self {
            Method::ShouldRateLimit => maas_ratelimit_proto::SHOULD_RATE_LIMIT,
            Method::CheckRateLimit => maas_ratelimit_proto::CHECK_RATE_LIMIT,
            Method::Reserve => maas_ratelimit_proto::RESERVE,
            Method::Commit => maas_ratelimit_proto::COMMIT,
            Method::Report => maas_ratelimit_proto::REPORT,
        }
    }
}

/// A call ready to dispatch: method and encoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub method: Method,
    pub message: Vec<u8>,
}

/// RLS counts hits in 32 bits; a larger amount is clamped (and so can only
/// be refused sooner, never counted as less than it is, up to 4 billion).
fn hits(amount: u64) -> u32 {
    u32::try_from(amount).unwrap_or(u32::MAX)
}

/// Reserve and Commit carry 64-bit amounts, which a limiter on Redis counts
/// in signed 64 bits (and refuses above). No real amount comes near; a
/// worst case multiplied past it (no `max_tokens` cap, a huge `n`) or a
/// provider's absurd usage is clamped there: refused sooner, never counted
/// as less.
pub fn wide_amount(amount: u64) -> u64 {
    amount.min(i64::MAX.unsigned_abs())
}

/// The admission call for `quantity` with the request's `amount` of it.
pub fn admission_call(limiter: &Limiter, caller: &Caller, quantity: Quantity, amount: u64) -> Call {
    let descriptors = vec![descriptor(caller, quantity)];
    let domain = limiter.domain.clone();
    match quantity {
        Quantity::Requests => Call {
            method: Method::ShouldRateLimit,
            message: RateLimitRequest::new(domain, descriptors, hits(amount)).encode_to_vec(),
        },
        Quantity::Tokens if limiter.reservations => Call {
            method: Method::Reserve,
            message: ReserveRequest {
                domain,
                descriptors,
                amount: wide_amount(amount),
                ttl: Some(Duration::from(std::time::Duration::from_millis(
                    limiter.reservation_ttl_ms,
                ))),
            }
            .encode_to_vec(),
        },
        Quantity::Tokens => Call {
            method: Method::CheckRateLimit,
            message: RateLimitRequest::new(domain, descriptors, hits(amount)).encode_to_vec(),
        },
    }
}

/// The settlement call for a token admission: commit the reservation (or,
/// without reservations, report) the `actual` tokens.
pub fn settlement_call(
    limiter: &Limiter,
    caller: &Caller,
    reservation: Option<&str>,
    actual: u64,
) -> Call {
    let descriptors = vec![descriptor(caller, Quantity::Tokens)];
    let domain = limiter.domain.clone();
    match reservation {
        Some(id) => Call {
            method: Method::Commit,
            message: CommitRequest {
                domain,
                descriptors,
                reservation_id: id.to_string(),
                actual_amount: wide_amount(actual),
            }
            .encode_to_vec(),
        },
        None => Call {
            method: Method::Report,
            // An addend of 0 counts as 1 in Limitador's Report: nothing to
            // report is no call at all (see `needs_settlement`).
            message: RateLimitRequest::new(domain, descriptors, hits(actual)).encode_to_vec(),
        },
    }
}

/// Whether a token admission must be settled with a call.
pub fn needs_settlement(reservation: Option<&str>, actual: u64) -> bool {
    reservation.is_some() || actual > 0
}

/// What a limiter's answer to an admission call means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted; a reservation to commit when the response ends.
    Allowed { reservation: Option<String> },
    /// Over a limit; what the answer says about it, where it says.
    OverLimit {
        limit: Option<u64>,
        remaining: Option<u64>,
        reset_after_secs: Option<u64>,
    },
    /// No usable answer: the failure mode decides.
    Failed(String),
}

/// Reads the answer to an admission call: `grpc_status` is the call's gRPC
/// status (0 is OK; `None` when Envoy got no answer at all).
pub fn verdict(method: Method, grpc_status: Option<u32>, body: &[u8]) -> Verdict {
    match grpc_status {
        Some(0) => {}
        Some(s) => return Verdict::Failed(format!("gRPC status {s}")),
        None => return Verdict::Failed("no answer (timeout or connection failure)".into()),
    }
    match method {
        Method::Reserve => match ReserveResponse::decode(body) {
            // OK without an id: nothing matched, so nothing is held.
            Ok(r) if r.code == Code::Ok as i32 => Verdict::Allowed {
                reservation: (!r.reservation_id.is_empty()).then_some(r.reservation_id),
            },
            Ok(r) if r.code == Code::OverLimit as i32 => Verdict::OverLimit {
                limit: None,
                remaining: None,
                reset_after_secs: None,
            },
            Ok(r) => Verdict::Failed(format!("reserve answered code {}", r.code)),
            Err(e) => Verdict::Failed(format!("undecodable reserve answer: {e}")),
        },
        _ => match RateLimitResponse::decode(body) {
            Ok(r) if r.overall_code == Code::Ok as i32 => Verdict::Allowed { reservation: None },
            Ok(r) if r.overall_code == Code::OverLimit as i32 => {
                let refusing = r.statuses.iter().find(|s| s.code == Code::OverLimit as i32);
                Verdict::OverLimit {
                    limit: refusing
                        .and_then(|s| s.current_limit.as_ref())
                        .map(|l| u64::from(l.requests_per_unit)),
                    remaining: refusing.map(|s| u64::from(s.limit_remaining)),
                    reset_after_secs: refusing
                        .and_then(|s| s.duration_until_reset.as_ref())
                        .and_then(Duration::to_std)
                        .map(|d| d.as_secs().max(1)),
                }
            }
            Ok(r) => Verdict::Failed(format!("answered code {}", r.overall_code)),
            Err(e) => Verdict::Failed(format!("undecodable answer: {e}")),
        },
    }
}

/// The limiter's limits file (Limitador's YAML format) for every global
/// limit of `subscriptions`: per subscription one limit per rate, and for
/// `key_limits` one counter per descriptor `key` (`variables`), which is per
/// key, or per owner under `key_limits_per: "owner"`.
pub fn limitador_limits<'a>(
    domain: &str,
    subscriptions: impl IntoIterator<Item = &'a Subscription>,
) -> String {
    let mut out = String::new();
    for sub in subscriptions {
        let name = &*sub.name;
        let holder = match sub.key_limits_per {
            KeyLimitsPer::Key => "key",
            KeyLimitsPer::Owner => "owner",
        };
        let scopes = [
            (Some(&sub.limits), "subscription", false),
            (sub.key_limits.as_ref(), holder, true),
        ];
        for (limits, scope, per_key) in scopes {
            let Some(limits) = limits else { continue };
            for g in &limits.global {
                let q = g.quantity.as_str();
                let window = g.rate.window_secs;
                out.push_str(&format!(
                    "- namespace: {domain}\n  name: \"{name} {scope} {q} {}/{window}s\"\n  max_value: {}\n  seconds: {window}\n  conditions:\n    - \"descriptors[0].{ENTRY_SUBSCRIPTION} == '{name}'\"\n    - \"descriptors[0].{ENTRY_QUANTITY} == '{q}'\"\n",
                    g.rate.amount, g.rate.amount,
                ));
                if per_key {
                    out.push_str(&format!(
                        "  variables:\n    - \"descriptors[0].{ENTRY_KEY}\"\n"
                    ));
                } else {
                    out.push_str("  variables: []\n");
                }
            }
        }
    }
    if out.is_empty() {
        out.push_str("[]\n");
    }
    out
}

#[cfg(test)]
mod tests;
