//! Borrowing JSON scans for the stream meter's hot path. Each reads exactly the
//! fields the `serde_json::Value` code in `usage` reads (last duplicate key wins,
//! non-strings count as absent, any other JSON is accepted and skipped) without
//! building a tree: text deltas are most frames and carry no usage.
//!
//! Each scan first tries [`quick`], a byte-level reader of the JSON Bedrock
//! sends, and runs its serde_json visitor only where that one is unsure.

mod quick;

use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// Accepts and skips the JSON values a scan does not look into.
macro_rules! skip_other_values {
    () => {
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("any JSON value")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// Skips a string where a scan wants an object.
macro_rules! skip_str {
    () => {
        fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
            Ok(Default::default())
        }
    };
}

/// Skips an object where a scan wants a string.
macro_rules! skip_map {
    () => {
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(Default::default())
        }
    };
}

/// Parses a whole payload (trailing garbage is an error, as for `from_slice`).
fn scan<'de, S: DeserializeSeed<'de>>(payload: &'de [u8], seed: S) -> Option<S::Value> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let v = seed.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(v)
}

/// An object key, as its index in a list of wanted keys (escapes decoded).
struct Key<'k>(&'k [&'k str]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = Option<usize>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key<'_> {
    type Value = Option<usize>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(self.0.iter().position(|k| *k == v))
    }
}

/// A string's decoded UTF-8 length (`Value::as_str(..).len()`), else `None`.
struct StrLen;

impl<'de> DeserializeSeed<'de> for StrLen {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrLen {
    type Value = Option<u64>;
    skip_other_values!();
    skip_map!();
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.len() as u64))
    }
}

/// A string, borrowed from the payload unless it had escapes.
struct Str;

impl<'de> DeserializeSeed<'de> for Str {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Str {
    type Value = Option<Cow<'de, str>>;
    skip_other_values!();
    skip_map!();
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_owned())))
    }
}

/// The length of the string at `key` of an object (`v.get(key)?.as_str()?.len()`).
struct FieldLen(&'static str);

impl<'de> DeserializeSeed<'de> for FieldLen {
    type Value = Option<u64>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for FieldLen {
    type Value = Option<u64>;
    skip_other_values!();
    skip_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let keys = [self.0];
        let mut len = None;
        while let Some(k) = map.next_key_seed(Key(&keys))? {
            match k {
                Some(_) => len = map.next_value_seed(StrLen)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(len)
    }
}

/// `usage::delta_text_len` of a delta object: `text`, `partial_json`,
/// `thinking`, `input`, `toolUse.input` and `reasoningContent.text`.
struct DeltaLen;

const DELTA_KEYS: &[&str] = &[
    "text",
    "partial_json",
    "thinking",
    "input",
    "toolUse",
    "reasoningContent",
];

impl<'de> DeserializeSeed<'de> for DeltaLen {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeltaLen {
    type Value = u64;
    skip_other_values!();
    skip_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut lens = [None; 6];
        while let Some(k) = map.next_key_seed(Key(DELTA_KEYS))? {
            match k {
                Some(i @ 0..=3) => lens[i] = map.next_value_seed(StrLen)?,
                Some(4) => lens[4] = map.next_value_seed(FieldLen("input"))?,
                Some(_) => lens[5] = map.next_value_seed(FieldLen("text"))?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(lens.iter().flatten().sum())
    }
}

/// The delta length of an object's `delta` field.
struct DeltaField;

impl<'de> DeserializeSeed<'de> for DeltaField {
    type Value = u64;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DeltaField {
    type Value = u64;
    skip_other_values!();
    skip_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut len = 0;
        while let Some(k) = map.next_key_seed(Key(&["delta"]))? {
            match k {
                Some(_) => len = map.next_value_seed(DeltaLen)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(len)
    }
}

/// Text bytes of a ConverseStream `contentBlockDelta` payload; `None` if it is
/// not JSON.
pub(super) fn converse_delta_text_len(payload: &[u8]) -> Option<u64> {
    match quick::converse_delta_text_len(payload) {
        Ok(len) => Some(len),
        Err(quick::Unsure) => serde_converse_delta_text_len(payload),
    }
}

fn serde_converse_delta_text_len(payload: &[u8]) -> Option<u64> {
    scan(payload, DeltaField)
}

/// The `bytes` string of an InvokeModel stream `chunk` payload.
struct ChunkBytes;

impl<'de> DeserializeSeed<'de> for ChunkBytes {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ChunkBytes {
    type Value = Option<Cow<'de, str>>;
    skip_other_values!();
    skip_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut bytes = None;
        while let Some(k) = map.next_key_seed(Key(&["bytes"]))? {
            match k {
                Some(_) => bytes = map.next_value_seed(Str)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(bytes)
    }
}

/// The base64 `bytes` of an InvokeModel stream `chunk` payload; `None` if the
/// payload is not JSON or has no such string.
pub(super) fn chunk_bytes(payload: &[u8]) -> Option<Cow<'_, [u8]>> {
    match quick::chunk_bytes(payload) {
        Ok(bytes) => bytes.map(Cow::Borrowed),
        Err(quick::Unsure) => serde_chunk_bytes(payload).map(|s| match s {
            Cow::Borrowed(s) => Cow::Borrowed(s.as_bytes()),
            Cow::Owned(s) => Cow::Owned(s.into_bytes()),
        }),
    }
}

fn serde_chunk_bytes(payload: &[u8]) -> Option<Cow<'_, str>> {
    scan(payload, ChunkBytes).flatten()
}

/// What a decoded InvokeModel chunk needs.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum InvokeChunk {
    /// No usage: only these bytes of generated text.
    Text(u64),
    /// Usage may be inside (`message_start`, `message_delta`, or invocation
    /// metrics): parse it in full.
    NeedsFullParse,
}

impl Default for InvokeChunk {
    fn default() -> Self {
        Self::Text(0)
    }
}

const CHUNK_KEYS: &[&str] = &[
    "type",
    "delta",
    "outputText",
    "generation",
    "completion",
    "amazon-bedrock-invocationMetrics",
];

struct InvokeChunkScan;

impl<'de> DeserializeSeed<'de> for InvokeChunkScan {
    type Value = InvokeChunk;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for InvokeChunkScan {
    type Value = InvokeChunk;
    skip_other_values!();
    skip_str!();
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut ty = None;
        let mut delta = 0;
        let mut family = [None; 3];
        let mut metrics = false;
        while let Some(k) = map.next_key_seed(Key(CHUNK_KEYS))? {
            match k {
                Some(0) => ty = map.next_value_seed(Str)?,
                Some(1) => delta = map.next_value_seed(DeltaLen)?,
                Some(i @ 2..=4) => family[i - 2] = map.next_value_seed(StrLen)?,
                Some(_) => {
                    metrics = true;
                    map.next_value::<IgnoredAny>()?;
                }
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(match ty.as_deref() {
            _ if metrics => InvokeChunk::NeedsFullParse,
            Some("message_start" | "message_delta") => InvokeChunk::NeedsFullParse,
            Some("content_block_delta") => InvokeChunk::Text(delta),
            _ => InvokeChunk::Text(family.iter().flatten().sum()),
        })
    }
}

/// Classifies a base64-decoded InvokeModel chunk; `None` if it is not JSON.
pub(super) fn invoke_chunk(json: &[u8]) -> Option<InvokeChunk> {
    match quick::invoke_chunk(json) {
        Ok(chunk) => Some(chunk),
        Err(quick::Unsure) => serde_invoke_chunk(json),
    }
}

fn serde_invoke_chunk(json: &[u8]) -> Option<InvokeChunk> {
    scan(json, InvokeChunkScan)
}
