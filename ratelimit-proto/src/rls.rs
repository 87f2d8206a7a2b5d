//! Envoy's rate limit service v3 messages (upstream: envoyproxy/envoy
//! `api/envoy/service/ratelimit/v3/rls.proto`; `HeaderValue` is
//! `api/envoy/config/core/v3/base.proto`). Kuadrant's `CheckRateLimit` and
//! `Report` take and return the same two messages as `ShouldRateLimit`.

use crate::descriptor::{RateLimitDescriptor, RateLimitUnit};
use crate::duration::Duration;

/// `envoy.service.ratelimit.v3.RateLimitRequest`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RateLimitRequest {
    /// `domain` = 1: Limitador's namespace.
    #[prost(string, tag = "1")]
    pub domain: String,
    /// `descriptors` = 2.
    #[prost(message, repeated, tag = "2")]
    pub descriptors: Vec<RateLimitDescriptor>,
    /// `hits_addend` = 3: how much this request counts; 0 (unset) means 1.
    #[prost(uint32, tag = "3")]
    pub hits_addend: u32,
}

impl RateLimitRequest {
    pub fn new(
        domain: impl Into<String>,
        descriptors: Vec<RateLimitDescriptor>,
        hits_addend: u32,
    ) -> Self {
        Self {
            domain: domain.into(),
            descriptors,
            hits_addend,
        }
    }
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.Code`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Code {
    Unknown = 0,
    Ok = 1,
    OverLimit = 2,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse` (fields 1 to 5; 6
/// `dynamic_metadata` and 7 `quota` are skipped when decoding).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RateLimitResponse {
    /// `overall_code` = 1; read it with `overall_code()`.
    #[prost(enumeration = "Code", tag = "1")]
    pub overall_code: i32,
    /// `statuses` = 2.
    #[prost(message, repeated, tag = "2")]
    pub statuses: Vec<DescriptorStatus>,
    /// `response_headers_to_add` = 3.
    #[prost(message, repeated, tag = "3")]
    pub response_headers_to_add: Vec<HeaderValue>,
    /// `request_headers_to_add` = 4.
    #[prost(message, repeated, tag = "4")]
    pub request_headers_to_add: Vec<HeaderValue>,
    /// `raw_body` = 5: a body for the denied response.
    #[prost(bytes = "vec", tag = "5")]
    pub raw_body: Vec<u8>,
}

impl RateLimitResponse {
    /// A response with only its overall code set.
    pub fn with_code(code: Code) -> Self {
        Self {
            overall_code: code as i32,
            ..Self::default()
        }
    }
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.DescriptorStatus` (fields 1
/// to 4; 5 `quota` is skipped).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DescriptorStatus {
    /// `code` = 1; read it with `code()`.
    #[prost(enumeration = "Code", tag = "1")]
    pub code: i32,
    /// `current_limit` = 2.
    #[prost(message, optional, tag = "2")]
    pub current_limit: Option<RateLimit>,
    /// `limit_remaining` = 3.
    #[prost(uint32, tag = "3")]
    pub limit_remaining: u32,
    /// `duration_until_reset` = 4.
    #[prost(message, optional, tag = "4")]
    pub duration_until_reset: Option<Duration>,
}

/// `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RateLimit {
    /// `requests_per_unit` = 1.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `unit` = 2; read it with `unit()`.
    #[prost(enumeration = "RateLimitUnit", tag = "2")]
    pub unit: i32,
    /// `name` = 3.
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `envoy.config.core.v3.HeaderValue`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct HeaderValue {
    /// `key` = 1.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `value` = 2.
    #[prost(string, tag = "2")]
    pub value: String,
    /// `raw_value` = 3: set instead of `value` for a non-UTF-8 value.
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}
