//! Reading a few fields of a JSON document without building a
//! `serde_json::Value` for all of it.
//!
//! The visitors here run on `serde_json`'s own parser and ask it for every value
//! with `deserialize_any`, as `Value` does, so a document is accepted or refused
//! exactly as parsing it into a `Value` would: numbers are parsed (and
//! range-checked), strings unescaped and checked, nesting limited to the same
//! depth, trailing characters refused. (`serde::de::IgnoredAny` would not do:
//! serde_json skips it without those checks.) Only the values a caller asks for
//! are materialised.

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;

/// Parses one value and discards it.
pub struct Skip;

impl<'de> DeserializeSeed<'de> for Skip {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(SkipVisitor)
    }
}

struct SkipVisitor;

impl<'de> Visitor<'de> for SkipVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Skip)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(Key)?.is_some() {
            map.next_value_seed(Skip)?;
        }
        Ok(())
    }
}

/// An object key, borrowed from the document unless it had escapes.
pub struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

/// The keys of one object, to notice a key given twice (`Value` would keep the
/// last; callers that must see what `Value` sees fall back to it then).
#[derive(Default)]
pub struct SeenKeys<'de> {
    keys: Vec<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Records `key`; false when it was already there.
    pub fn insert(&mut self, key: Cow<'de, str>) -> bool {
        // Objects in Bedrock bodies have a handful of keys; a linear scan beats
        // hashing them.
        if self.keys.contains(&key) {
            return false;
        }
        self.keys.push(key);
        true
    }
}

/// A top-level JSON object's members named in `names` (each as a `Value`, the
/// last one when a name repeats, as `Value` keeps it); every other member is
/// parsed and discarded. `Ok(None)` when the document is valid JSON but not an
/// object.
pub fn pick_fields(
    body: &[u8],
    names: &[&str],
) -> Result<Option<Vec<Option<Value>>>, serde_json::Error> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let picked = Pick { names }.deserialize(&mut de)?;
    de.end()?;
    Ok(picked)
}

struct Pick<'n> {
    names: &'n [&'n str],
}

impl<'de> DeserializeSeed<'de> for Pick<'_> {
    type Value = Option<Vec<Option<Value>>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick<'_> {
    type Value = Option<Vec<Option<Value>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        SkipVisitor.visit_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = vec![None; self.names.len()];
        while let Some(key) = map.next_key_seed(Key)? {
            match self.names.iter().position(|n| *n == key) {
                Some(i) => out[i] = Some(map.next_value::<Value>()?),
                None => map.next_value_seed(Skip)?,
            }
        }
        Ok(Some(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// The same documents accepted and refused as by parsing into a `Value`.
    #[test]
    fn accepts_and_refuses_like_value() {
        let cases: &[&[u8]] = &[
            br#"{"usage":{"a":1}}"#,
            br#"{"usage":1e400}"#,
            br#"{"x":1e400}"#,
            br#"{"x":[1,2,{"y":"\ud800"}]}"#,
            br#"{"x":"\ud83d\ude00"}"#,
            br#"{"x":"bad \u00zz"}"#,
            b"{\"x\":\"\xff\"}",
            b"{\"x\":\"a\x01b\"}",
            br#"{"x":1} x"#,
            br#"{"x":1}  "#,
            br#"{"x":01}"#,
            br#"{"x":-}"#,
            br#"{"x":tru}"#,
            br#"{"x":1,}"#,
            br#"{1:2}"#,
            br#"[1,2]"#,
            br#"[1e400]"#,
            br#""s""#,
            br#"null"#,
            br#""#,
            br#"{"usage":{"a":1},"usage":{"b":2}}"#,
            br#"{"u\u0073age":{"b":2}}"#,
        ];
        for c in cases {
            let value = serde_json::from_slice::<Value>(c);
            let picked = pick_fields(c, &["usage"]);
            assert_eq!(
                value.is_ok(),
                picked.is_ok(),
                "{}",
                String::from_utf8_lossy(c)
            );
            if let (Ok(v), Ok(p)) = (value, picked) {
                match p {
                    None => assert!(!v.is_object()),
                    Some(p) => assert_eq!(p[0].as_ref(), v.get("usage")),
                }
            }
        }
        let deep = format!("{{\"x\":{}1{}}}", "[".repeat(200), "]".repeat(200));
        assert!(serde_json::from_str::<Value>(&deep).is_err());
        assert!(pick_fields(deep.as_bytes(), &["usage"]).is_err());
        let ok = format!("{{\"x\":{}1{}}}", "[".repeat(100), "]".repeat(100));
        assert!(pick_fields(ok.as_bytes(), &["usage"]).is_ok());
    }

    #[test]
    fn seen_keys() {
        let mut s = SeenKeys::default();
        assert!(s.insert("a".into()));
        assert!(s.insert("b".into()));
        assert!(!s.insert(Cow::Owned("a".to_owned())));
    }
}
