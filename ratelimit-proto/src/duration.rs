//! `google.protobuf.Duration` (upstream: protocolbuffers/protobuf
//! `src/google/protobuf/duration.proto`): seconds = 1, nanos = 2. Written out
//! here rather than taken from `prost-types`, which this crate does not need
//! for one message.

/// A signed span of time: `seconds` plus `nanos` of the same sign, with
/// `nanos` in `-999_999_999..=999_999_999`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, prost::Message)]
pub struct Duration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Duration {
    /// The standard library's span, or `None` for a negative or malformed one
    /// (nanos out of range, or of the other sign than seconds).
    pub fn to_std(&self) -> Option<std::time::Duration> {
        let seconds = u64::try_from(self.seconds).ok()?;
        let nanos = u32::try_from(self.nanos).ok()?;
        (nanos < 1_000_000_000).then(|| std::time::Duration::new(seconds, nanos))
    }
}

impl From<std::time::Duration> for Duration {
    /// Saturates at `i64::MAX` seconds, far past any TTL or window.
    fn from(value: std::time::Duration) -> Self {
        Self {
            seconds: i64::try_from(value.as_secs()).unwrap_or(i64::MAX),
            // subsec_nanos() < 1e9 always fits an i32.
            nanos: i32::try_from(value.subsec_nanos()).unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Duration;

    #[test]
    fn converts_to_and_from_std() {
        let cases = [
            (std::time::Duration::ZERO, (0, 0)),
            (std::time::Duration::from_millis(1500), (1, 500_000_000)),
            (std::time::Duration::from_secs(60), (60, 0)),
        ];
        for (std, (seconds, nanos)) in cases {
            let proto = Duration::from(std);
            assert_eq!((proto.seconds, proto.nanos), (seconds, nanos));
            assert_eq!(proto.to_std(), Some(std));
        }
    }

    #[test]
    fn refuses_negative_and_malformed_spans() {
        for (seconds, nanos) in [(-1, 0), (0, -1), (1, 1_000_000_000)] {
            assert_eq!(
                Duration { seconds, nanos }.to_std(),
                None,
                "{seconds}s {nanos}ns"
            );
        }
    }
}
