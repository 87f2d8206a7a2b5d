//! Claims of a token that Envoy's `jwt_authn` filter verified, as the
//! proxy-wasm property API hands them over (Envoy 1.40, measured): a string
//! claim is its UTF-8 bytes; a list or an object is proxy-wasm's pairs
//! encoding (`u32 count`, `count × (u32 key length, u32 value length)`,
//! then each key and value followed by a NUL), a list's elements being the
//! keys with empty values; a number is an 8-byte float.
//!
//! Reading single claims, rather than the whole payload, matters: Envoy
//! cannot serialise a payload that holds a JSON `null` anywhere.

/// A claim that should be one string (`None`: not UTF-8 text).
pub fn as_string(bytes: &[u8]) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

/// A claim that should be a list of strings, or one string. Elements that
/// are not text (numbers arrive as 8 raw bytes) are skipped.
pub fn as_string_list(bytes: &[u8]) -> Vec<String> {
    let text = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .filter(|s| !s.is_empty() && !s.chars().any(char::is_control))
            .map(str::to_string)
    };
    match pairs(bytes) {
        Some(pairs) => pairs.into_iter().filter_map(|(key, _)| text(key)).collect(),
        None => as_string(bytes)
            .filter(|s| !s.is_empty())
            .into_iter()
            .collect(),
    }
}

/// Decodes the pairs encoding; `None` unless it accounts for every byte.
fn pairs(bytes: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at.checked_add(4)?)?;
        Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
    };
    let count = u32_at(0)?;
    // Each pair takes at least 8 header bytes and 2 NULs.
    if count > bytes.len() / 10 + 1 {
        return None;
    }
    let mut lengths = Vec::with_capacity(count);
    for i in 0..count {
        let at = 4 + i * 8;
        lengths.push((u32_at(at)?, u32_at(at + 4)?));
    }
    let mut at = 4 + count * 8;
    let mut out = Vec::with_capacity(count);
    for (key_len, value_len) in lengths {
        let key = bytes.get(at..at.checked_add(key_len)?)?;
        at += key_len;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        let value = bytes.get(at..at.checked_add(value_len)?)?;
        at += value_len;
        if bytes.get(at) != Some(&0) {
            return None;
        }
        at += 1;
        out.push((key, value));
    }
    (at == bytes.len()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn envoys_encodings_as_measured() {
        // `"groups": ["team-a", "ml"]` from Envoy 1.40's get_property.
        let groups =
            hex("02000000 06000000 00000000 02000000 00000000 7465616d2d6100 00 6d6c00 00");
        assert_eq!(as_string_list(&groups), ["team-a", "ml"]);
        // A group claim that is one string.
        assert_eq!(as_string_list(b"team-a"), ["team-a"]);
        assert_eq!(as_string(b"alice").as_deref(), Some("alice"));
        // Numbers in a list are 8-byte floats: skipped, not misread.
        let numbers = hex("02000000 08000000 00000000 08000000 00000000 \
             000000000000f03f 00 00 0000000000000440 00 00");
        assert!(as_string_list(&numbers).is_empty());
        // An empty list.
        assert!(as_string_list(&hex("00000000")).is_empty());
        assert!(as_string_list(b"").is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = as_string_list(&bytes);
        }

        #[test]
        fn printable_strings_are_never_taken_for_lists(s in "[ -~]{1,60}") {
            prop_assert_eq!(as_string_list(s.as_bytes()), vec![s.clone()]);
        }
    }
}
