//! Envoy's rate limit descriptor (upstream: envoyproxy/envoy
//! `api/envoy/extensions/common/ratelimit/v3/ratelimit.proto`, message
//! `RateLimitDescriptor`; the unit enum is `api/envoy/type/v3/ratelimit_unit.proto`).
//! A descriptor is an ordered list of key/value entries; Limitador binds the
//! request's descriptors as the CEL list `descriptors`, so the limit
//! `descriptors[0].user == 'alice'` sees the first descriptor's `user` entry.

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct RateLimitDescriptor {
    /// `entries` = 1.
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<DescriptorEntry>,
    /// `limit` = 2: an override of the configured limit (Envoy's reference
    /// service honours it; Limitador and this project's limiter ignore it).
    #[prost(message, optional, tag = "2")]
    pub limit: Option<RateLimitOverride>,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.Entry`.
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct DescriptorEntry {
    /// `key` = 1.
    #[prost(string, tag = "1")]
    pub key: String,
    /// `value` = 2.
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `envoy.extensions.common.ratelimit.v3.RateLimitDescriptor.RateLimitOverride`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct RateLimitOverride {
    /// `requests_per_unit` = 1.
    #[prost(uint32, tag = "1")]
    pub requests_per_unit: u32,
    /// `unit` = 2.
    #[prost(enumeration = "RateLimitUnit", tag = "2")]
    pub unit: i32,
}

/// `envoy.type.v3.RateLimitUnit`; `envoy.service.ratelimit.v3.RateLimitResponse.RateLimit.Unit`
/// has the same names and numbers, so both fields use this enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum RateLimitUnit {
    Unknown = 0,
    Second = 1,
    Minute = 2,
    Hour = 3,
    Day = 4,
    Month = 5,
    Year = 6,
}

impl RateLimitUnit {
    /// The unit a window of `seconds` is exactly one of; `Unknown` for a
    /// window that is none (90 s), since RLS can only name whole units.
    pub fn for_window(seconds: u64) -> Self {
        match seconds {
            1 => Self::Second,
            60 => Self::Minute,
            3_600 => Self::Hour,
            86_400 => Self::Day,
            _ => Self::Unknown,
        }
    }
}

impl RateLimitDescriptor {
    /// A descriptor of these entries, in order, without a limit override.
    pub fn new<K, V>(entries: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            entries: entries
                .into_iter()
                .map(|(key, value)| DescriptorEntry {
                    key: key.into(),
                    value: value.into(),
                })
                .collect(),
            limit: None,
        }
    }

    /// The value of the first entry named `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|entry| entry.key == key)
            .map(|entry| entry.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::{RateLimitDescriptor, RateLimitUnit};

    #[test]
    fn builds_entries_in_order() {
        let descriptor = RateLimitDescriptor::new([("user", "alice"), ("model", "m")]);
        let keys: Vec<_> = descriptor.entries.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["user", "model"]);
        assert_eq!(descriptor.get("model"), Some("m"));
        assert_eq!(descriptor.get("tier"), None);
    }

    #[test]
    fn names_whole_unit_windows_only() {
        let cases = [
            (1, RateLimitUnit::Second),
            (60, RateLimitUnit::Minute),
            (3_600, RateLimitUnit::Hour),
            (86_400, RateLimitUnit::Day),
            (90, RateLimitUnit::Unknown),
            (0, RateLimitUnit::Unknown),
        ];
        for (seconds, unit) in cases {
            assert_eq!(RateLimitUnit::for_window(seconds), unit, "{seconds}s");
        }
    }
}
