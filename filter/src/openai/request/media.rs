//! The media parts of a chat request's `messages`, counted for the prompt's
//! bound (see [`crate::estimate::prompt_bound`]).
//!
//! A body's bytes bound the tokens of its text, not of its media: an
//! `image_url` part naming `https://…/big.png` is some 60 bytes and costs a
//! provider up to thousands of prompt tokens, and so does a `file` by
//! `file_id` or a `video_url`. Even an inline `data:` image can cost more
//! tokens than its bytes: a 1-bit PNG of 1,248 × 1,248 pixels is a few
//! hundred bytes of base64 and about 2,500 tokens to OpenAI's patch-based
//! models. So every content part counts as a media part, except those whose
//! bytes do bound their tokens: `text`, `refusal` (an assistant's text) and
//! `input_audio` (always inline base64: kilobytes per second of audio
//! against tens of tokens).
//!
//! Invariants:
//! - Counting errs high: a part is text only if it has a `type` and every
//!   `type` it names (a repeated key is read as the upstream may read it)
//!   is one of those spelt plainly; a part without one (vLLM's
//!   `{"image_url": "…"}`), an escaped spelling or a non-object part counts.
//! - A repeated `content` key is counted each time.
//! - A message's `audio` (an assistant's earlier audio answer by `id`,
//!   which the provider reads back as audio tokens) counts as one part
//!   unless null.
//! - The walk allocates nothing: other keys and values are skipped
//!   (serde's `IgnoredAny`), and `type` is compared as raw JSON.

use std::fmt;

use serde::de::{self, Deserializer as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use super::{Key, KeyIndex, Keys, RequestError};

pub(super) const EXPECT_MESSAGES: &str =
    "an array of message objects whose content is a string, null or an array of parts";

/// `type`s whose bytes in the body bound their tokens, as raw JSON.
const TEXT_LIKE_TYPES: [&str; 3] = [r#""text""#, r#""refusal""#, r#""input_audio""#];

/// How many media parts the messages in `raw` (the `messages` value) hold.
pub(super) fn media_parts(raw: &RawValue) -> Result<u64, RequestError> {
    let invalid = || RequestError::InvalidField {
        field: "messages",
        expected: EXPECT_MESSAGES,
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    let count = de.deserialize_any(Messages).map_err(|_| invalid())?;
    de.end().map_err(|_| invalid())?;
    Ok(count)
}

/// `messages`: null, or an array of message objects.
struct Messages;

impl<'de> Visitor<'de> for Messages {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(EXPECT_MESSAGES)
    }

    fn visit_unit<E: de::Error>(self) -> Result<u64, E> {
        Ok(0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<u64, A::Error> {
        let mut count = 0u64;
        while let Some(MessageParts(n)) = seq.next_element()? {
            count = count.saturating_add(n);
        }
        Ok(count)
    }
}

/// One message: the media parts of its `content`.
struct MessageParts(u64);

impl<'de> de::Deserialize<'de> for MessageParts {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(MessageVisitor)
    }
}

struct MessageVisitor;

impl<'de> Visitor<'de> for MessageVisitor {
    type Value = MessageParts;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a message object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<MessageParts, A::Error> {
        let mut count = 0u64;
        while let Some(key) = map.next_key_seed(KeyIndex {
            names: &["content", "audio"],
            keys: Keys::AlsoCaseVariants,
        })? {
            match key {
                Key::Exact(0) | Key::CaseVariant(0) => {
                    let Content(n) = map.next_value()?;
                    count = count.saturating_add(n);
                }
                // An assistant's earlier audio answer, by id: some 40 bytes
                // that bring its audio back as prompt tokens.
                Key::Exact(1) | Key::CaseVariant(1) => {
                    if map.next_value::<Option<IgnoredAny>>()?.is_some() {
                        count = count.saturating_add(1);
                    }
                }
                Key::Exact(_) | Key::CaseVariant(_) | Key::Other => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(MessageParts(count))
    }
}

/// A message's `content`: a string or null (text), or an array of parts.
struct Content(u64);

impl<'de> de::Deserialize<'de> for Content {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ContentVisitor)
    }
}

struct ContentVisitor;

impl<'de> Visitor<'de> for ContentVisitor {
    type Value = Content;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, null or an array of content parts")
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Content, E> {
        Ok(Content(0))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Content, E> {
        Ok(Content(0))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
        let mut count = 0u64;
        while let Some(TextPart(text)) = seq.next_element()? {
            if !text {
                count = count.saturating_add(1);
            }
        }
        Ok(Content(count))
    }
}

/// One content part: whether it is text-like (see the module's
/// invariants). Any JSON value is taken, so that one walk both checks the
/// part and skips it.
struct TextPart(bool);

impl<'de> de::Deserialize<'de> for TextPart {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(PartVisitor).map(TextPart)
    }
}

struct PartVisitor;

impl<'de> Visitor<'de> for PartVisitor {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a content part")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let (mut typed, mut text) = (false, true);
        while let Some(key) = map.next_key_seed(KeyIndex {
            names: &["type"],
            keys: Keys::AlsoCaseVariants,
        })? {
            if key.is_named() {
                let kind = map.next_value::<&'de RawValue>()?;
                typed = true;
                text &= TEXT_LIKE_TYPES.contains(&kind.get());
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(typed && text)
    }

    // Not an object: not a part any server reads as text.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(false)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E: de::Error>(self) -> Result<bool, E> {
        Ok(false)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn count(messages: &str) -> Result<u64, RequestError> {
        let raw: &RawValue = serde_json::from_str(messages).unwrap();
        media_parts(raw)
    }

    #[test]
    fn every_part_but_text_counts() {
        let image =
            r#"{"type":"image_url","image_url":{"url":"https://x/big.png","detail":"high"}}"#;
        let cases: &[(&str, u64)] = &[
            ("null", 0),
            ("[]", 0),
            (r#"[{"role":"user","content":"hi"}]"#, 0),
            (
                r#"[{"role":"assistant","content":null,"tool_calls":[]}]"#,
                0,
            ),
            (
                r#"[{"role":"user","content":[{"type":"text","text":"hi"}]}]"#,
                0,
            ),
            (&format!(r#"[{{"role":"user","content":[{image}]}}]"#), 1),
            (
                &format!(
                    r#"[{{"role":"user","content":[{image},{{"type":"text","text":"and"}},{image}]}},
                        {{"role":"user","content":[{image}]}}]"#
                ),
                3,
            ),
            // Inline images too: a tiny one can cost more than its bytes.
            (
                r#"[{"content":[{"type":"image_url","image_url":{"url":"data:image/png;base64,iVBO"}}]}]"#,
                1,
            ),
            // Inline audio is bounded by its base64.
            (
                r#"[{"content":[{"type":"input_audio","input_audio":{"data":"UklG","format":"wav"}}]}]"#,
                0,
            ),
            (r#"[{"content":[{"type":"refusal","refusal":"no"}]}]"#, 0),
            (
                r#"[{"content":[{"type":"file","file":{"file_id":"file-1"}}]}]"#,
                1,
            ),
            (
                r#"[{"content":[{"type":"video_url","video_url":{"url":"https://x/v.mp4"}}]}]"#,
                1,
            ),
            // vLLM's typeless parts, unknown types, non-object parts.
            (r#"[{"content":[{"image_url":"https://x/a.png"}]}]"#, 1),
            (r#"[{"content":[{"type":"hologram"}]}]"#, 1),
            (r#"[{"content":[{"type":7}]}]"#, 1),
            (r#"[{"content":["text?", 1, null, []]}]"#, 4),
            // An assistant's earlier audio answer, by id, is read back.
            (
                r#"[{"role":"assistant","content":null,"audio":{"id":"audio_1"}},
                    {"role":"assistant","audio":{"id":"audio_2"},"content":"x"}]"#,
                2,
            ),
            (r#"[{"role":"assistant","content":"x","audio":null}]"#, 0),
        ];
        for (messages, expected) in cases {
            assert_eq!(count(messages), Ok(*expected), "{messages}");
        }
    }

    #[test]
    fn spellings_that_may_read_otherwise_upstream_count() {
        let cases = [
            // Escaped key: still `type`, and the last one may win upstream.
            r#"[{"content":[{"type":"text","typ\u0065":"image_url","image_url":{"url":"u"}}]}]"#,
            r#"[{"content":[{"type":"image_url","type":"text","image_url":{"url":"u"}}]}]"#,
            // Escaped value: not compared after unescaping, so counted.
            r#"[{"content":[{"type":"te\u0078t","text":"hi"}]}]"#,
            // A second content key.
            r#"[{"content":"hi","cont\u0065nt":[{"type":"image_url","image_url":{"url":"u"}}]}]"#,
            // Keys in another case, which Go's JSON reads as these.
            r#"[{"content":[{"type":"text","TYPE":"image_url","image_url":{"url":"u"}}]}]"#,
            r#"[{"content":"hi","Content":[{"type":"image_url","image_url":{"url":"u"}}]}]"#,
        ];
        for messages in cases {
            assert_eq!(count(messages), Ok(1), "{messages}");
        }
    }

    #[test]
    fn shapes_no_server_takes_are_refused() {
        for messages in [
            r#""hi""#,
            "{}",
            "7",
            r#"["hi"]"#,
            r#"[{"content":7}]"#,
            r#"[{"content":{"type":"image_url"}}]"#,
        ] {
            assert_eq!(
                count(messages),
                Err(RequestError::InvalidField {
                    field: "messages",
                    expected: EXPECT_MESSAGES
                }),
                "{messages}"
            );
        }
    }
}
