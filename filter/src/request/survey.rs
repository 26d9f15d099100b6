//! One pass over a request body that keeps only what the rules need (the
//! top-level [`MEMBERS`] as `Value`s, placeholders for [`PRESENCE`]) and counts
//! the input estimate of everything else as it goes; and the splice that puts
//! rewritten members back into the body's own bytes.
//!
//! The pass runs on `serde_json`'s parser with `deserialize_any` for every value
//! (see `crate::json`), so it accepts exactly the bodies `parse_object` accepts;
//! anything it does not handle itself (not an object, a key twice, a parse
//! error) makes it answer `None`, and the caller takes the whole-`Value` path,
//! which decides as it always did.

use super::{InputCount, MEMBERS, PRESENCE};
use crate::json::{Key, SeenKeys};
use serde::de::{DeserializeSeed, Deserializer, Error as _, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::ops::Range;

pub(super) struct Survey {
    /// `Value::Object` of the members, in body order.
    pub members: Value,
    /// [`super::estimate_input_tokens`] of the whole body.
    pub estimate: u64,
}

/// `None`: not a JSON object, or a key twice somewhere (see [`super::Parsed`]).
pub(super) fn survey(body: &[u8]) -> Option<Survey> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let mut count = InputCount::default();
    let members = Top { count: &mut count }.deserialize(&mut de).ok()?;
    de.end().ok()?;
    Some(Survey {
        members: Value::Object(members),
        estimate: count.estimate(),
    })
}

const DUPLICATE: &str = "a key twice in one object";

/// The top-level object.
struct Top<'c> {
    count: &'c mut InputCount,
}

impl<'de> DeserializeSeed<'de> for Top<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Top<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Map::new();
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(DUPLICATE));
            }
            self.count.key(&key);
            if MEMBERS.contains(&key.as_ref()) {
                let v: Value = map.next_value_seed(Member)?;
                self.count.value(&v, Some(&key));
                members.insert(key.into_owned(), v);
            } else {
                map.next_value_seed(Count {
                    key: Some(&key),
                    count: self.count,
                })?;
                if PRESENCE.contains(&key.as_ref()) {
                    members.insert(key.into_owned(), Value::Null);
                }
            }
        }
        Ok(members)
    }
}

/// A member kept as a `Value`, refused (so the whole body is read as a
/// `Value`) when one of its objects repeats a key: `Value` would keep only the
/// last, and [`super::Parsed::Whole`] is what handles that.
struct Member;

impl<'de> DeserializeSeed<'de> for Member {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        // As `Value`'s own visitor: a finite f64 (serde_json never yields others).
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(v) = seq.next_element_seed(Member)? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key_seed(Key)? {
            let v = map.next_value_seed(Member)?;
            if out.insert(key.into_owned(), v).is_some() {
                return Err(A::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

/// Any other value: counted for the estimate, then dropped.
struct Count<'k, 'c> {
    /// The key this value belongs to (`None` for array elements).
    key: Option<&'k str>,
    count: &'c mut InputCount,
}

impl<'de> DeserializeSeed<'de> for Count<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Count<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        self.count.scalar();
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        self.count.scalar();
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        self.count.scalar();
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        self.count.scalar();
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        self.count.scalar();
        Ok(())
    }
    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        self.count.string(self.key, v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq
            .next_element_seed(Count {
                key: None,
                count: &mut *self.count,
            })?
            .is_some()
        {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = SeenKeys::default();
        while let Some(key) = map.next_key_seed(Key)? {
            if !seen.insert(key.clone()) {
                return Err(A::Error::custom(DUPLICATE));
            }
            self.count.key(&key);
            map.next_value_seed(Count {
                key: Some(&key),
                count: &mut *self.count,
            })?;
        }
        Ok(())
    }
}

/// `body` (the JSON object `before` was surveyed from) with the members of
/// `after` that differ from `before` written in place of theirs, and those
/// `before` lacks added at the end, in `after`'s order: the same document, key
/// order included, as serialising `after` merged into the whole body would give,
/// with every other byte as the client sent it. `None` if `body` is not the
/// object it should be (the caller then re-serialises the whole body).
pub(super) fn splice(body: &[u8], before: &Value, after: &Value) -> Option<Vec<u8>> {
    let (Value::Object(before), Value::Object(after)) = (before, after) else {
        return None;
    };
    let changed: Vec<(&str, &Value)> = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.as_str(), v))
        .collect();
    if changed.is_empty() {
        return Some(body.to_vec());
    }
    let (members, close) = top_level_members(body)?;
    let mut out = Vec::with_capacity(body.len() + 256);
    let mut at = 0;
    for (key, span) in &members {
        if let Some((_, v)) = changed.iter().find(|(k, _)| *k == key.as_ref()) {
            out.extend_from_slice(&body[at..span.start]);
            serde_json::to_writer(&mut out, v).ok()?;
            at = span.end;
        }
    }
    out.extend_from_slice(&body[at..close]);
    let mut first = members.is_empty();
    for (key, v) in &changed {
        if before.contains_key(*key) {
            continue;
        }
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, key).ok()?;
        out.push(b':');
        serde_json::to_writer(&mut out, v).ok()?;
    }
    out.extend_from_slice(&body[close..]);
    Some(out)
}

type Members<'b> = Vec<(Cow<'b, str>, Range<usize>)>;

/// The members of a JSON object (keys unescaped, value spans) and the index of
/// its closing brace. `body` has been parsed already, so this only has to find
/// boundaries: strings (with their escapes) and nesting. `None` for anything
/// that is not such an object.
fn top_level_members(body: &[u8]) -> Option<(Members<'_>, usize)> {
    let mut i = skip_ws(body, 0);
    if body.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut members = Vec::new();
    loop {
        i = skip_ws(body, i);
        match body.get(i)? {
            b'}' => return Some((members, i)),
            b',' if !members.is_empty() => i += 1,
            b'"' => {
                let end = string_end(body, i)?;
                let raw = &body[i..end];
                let key = if raw.contains(&b'\\') {
                    Cow::Owned(serde_json::from_slice::<String>(raw).ok()?)
                } else {
                    Cow::Borrowed(std::str::from_utf8(&raw[1..raw.len() - 1]).ok()?)
                };
                i = skip_ws(body, end);
                if body.get(i) != Some(&b':') {
                    return None;
                }
                let start = skip_ws(body, i + 1);
                i = value_end(body, start)?;
                members.push((key, start..i));
            }
            _ => return None,
        }
    }
}

/// JSON's four whitespace bytes.
fn skip_ws(body: &[u8], mut i: usize) -> usize {
    while matches!(body.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The index after the string starting (with its quote) at `i`.
fn string_end(body: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        match body.get(j)? {
            b'\\' => j += 2,
            b'"' => return Some(j + 1),
            _ => j += 1,
        }
    }
}

/// The index after the value starting at `i`.
fn value_end(body: &[u8], i: usize) -> Option<usize> {
    match body.get(i)? {
        b'"' => string_end(body, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match body.get(j)? {
                    b'"' => {
                        j = string_end(body, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        // A number, true, false or null: up to the next delimiter.
        _ => {
            let mut j = i;
            while !matches!(
                body.get(j),
                None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
            ) {
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}
