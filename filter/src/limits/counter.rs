//! The bytes of one group counter in shared data: for each rate of the group, in order,
//! `window_start` then `used`, each a little-endian u64 (16 bytes per rate). A value of
//! any other length than 16 × the group's rate count is unreadable and the ledger treats
//! every window as empty; its next CAS write replaces the bytes.

const ENCODED_LEN: usize = 16;

/// The value of a group counter: one [`WindowCount`] per rate, in the group's order.
pub(super) fn encode_group(counts: &[WindowCount]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(counts.len() * ENCODED_LEN);
    for count in counts {
        bytes.extend_from_slice(&count.encode());
    }
    bytes
}

/// `None` unless `bytes` is exactly `rates` encoded counts.
pub(super) fn decode_group(bytes: &[u8], rates: usize) -> Option<Vec<WindowCount>> {
    if bytes.len() != rates.checked_mul(ENCODED_LEN)? {
        return None;
    }
    bytes
        .chunks_exact(ENCODED_LEN)
        .map(WindowCount::decode)
        .collect()
}

/// How much of one fixed window has been used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct WindowCount {
    /// Unix seconds at which the window began (a multiple of the window length).
    pub window_start: u64,
    pub used: u64,
}

impl WindowCount {
    pub fn empty(window_start: u64) -> Self {
        Self {
            window_start,
            used: 0,
        }
    }

    pub fn encode(self) -> [u8; ENCODED_LEN] {
        let mut bytes = [0; ENCODED_LEN];
        let (start, used) = bytes.split_at_mut(8);
        start.copy_from_slice(&self.window_start.to_le_bytes());
        used.copy_from_slice(&self.used.to_le_bytes());
        bytes
    }

    /// `None` unless `bytes` is exactly one encoded counter.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let bytes: &[u8; ENCODED_LEN] = bytes.try_into().ok()?;
        let (start, used) = bytes.split_at(8);
        Some(Self {
            window_start: u64::from_le_bytes(start.try_into().ok()?),
            used: u64::from_le_bytes(used.try_into().ok()?),
        })
    }

    /// The count that applies to the window beginning at `now_window`: the stored one if
    /// it is for that window (or a later one, when another worker's clock is a little
    /// ahead), otherwise an empty count for `now_window` — the stored window is over.
    pub fn current(stored: Option<Self>, now_window: u64) -> Self {
        stored
            .filter(|count| count.window_start >= now_window)
            .unwrap_or(Self::empty(now_window))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn encodes_window_start_then_used_little_endian() {
        let count = WindowCount {
            window_start: 0x0102,
            used: u64::MAX,
        };
        let bytes = count.encode();
        assert_eq!(&bytes[..8], &[2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&bytes[8..], &[0xff; 8]);
        assert_eq!(WindowCount::decode(&bytes), Some(count));
    }

    #[test]
    fn a_group_is_its_counts_back_to_back_and_needs_the_exact_length() {
        let counts = [
            WindowCount {
                window_start: 60,
                used: 3,
            },
            WindowCount::empty(0),
        ];
        let bytes = encode_group(&counts);
        assert_eq!(bytes.len(), 32);
        assert_eq!(&bytes[..16], &counts[0].encode());
        assert_eq!(decode_group(&bytes, 2), Some(counts.to_vec()));
        for rates in [0, 1, 3, usize::MAX] {
            assert_eq!(decode_group(&bytes, rates), None, "{rates} rates");
        }
        assert_eq!(decode_group(&[], 0), Some(vec![]));
    }

    #[test]
    fn any_other_length_is_unreadable() {
        for len in [0, 1, 8, 15, 17, 32] {
            assert_eq!(WindowCount::decode(&vec![7; len]), None, "{len} bytes");
        }
    }

    #[test]
    fn current_count_resets_when_the_stored_window_is_over() {
        let stored = WindowCount {
            window_start: 60,
            used: 5,
        };
        let cases = [
            (None, 60, WindowCount::empty(60)),
            (Some(stored), 60, stored),
            (Some(stored), 120, WindowCount::empty(120)),
            // Another worker already rolled over to the next window: keep its count.
            (Some(stored), 0, stored),
        ];
        for (stored, now_window, want) in cases {
            assert_eq!(WindowCount::current(stored, now_window), want);
        }
    }
}
