//! Fast path of the scans in `scan`: a byte-level reader of the compact JSON
//! Bedrock actually sends (objects, plain keys, strings, small integers,
//! literals). serde_json's per-token calls, UTF-8 checks of every key and key
//! lookups were most of the meter's time; this reads the same fields in one
//! pass over the bytes.
//!
//! It answers only where it is sure: anything outside that subset (escaped
//! keys, `\u` escapes that are not whole characters, fractions and exponents,
//! long integers, deep nesting, a top level that is not an object, invalid
//! UTF-8, any syntax error) gives [`Unsure`] and the serde scan decides. So an
//! answer is only ever given for JSON serde_json accepts, and it is the serde
//! scan's answer (the differential tests in `scan` check this).

/// This input is outside the subset; use the serde scan.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Unsure;

type Sure<T> = Result<T, Unsure>;

/// Nesting the skipper follows into unread values. serde_json stops at 128;
/// staying well below keeps every answer one it would also give.
const MAX_SKIP_DEPTH: u32 = 32;

/// Byte classes inside a JSON string.
const PLAIN: u8 = 0;
const QUOTE: u8 = 1;
const BACKSLASH: u8 = 2;
/// Control characters are errors in JSON strings.
const CONTROL: u8 = 3;
/// Part of a multi-byte UTF-8 sequence: the string needs a UTF-8 check.
const HIGH: u8 = 4;

const STRING_CLASS: [u8; 256] = {
    let mut t = [PLAIN; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = match i as u8 {
            b'"' => QUOTE,
            b'\\' => BACKSLASH,
            0..=0x1f => CONTROL,
            0x80..=0xff => HIGH,
            _ => PLAIN,
        };
        i += 1;
    }
    t
};

/// How many bytes at the start of `s` are [`PLAIN`]. Looks at 8 bytes at a
/// time: text deltas, padding and base64 are long runs of plain bytes, and a
/// byte-by-byte loop was most of the scan's time.
#[inline]
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    /// Bit 7 of each byte of `v` that is zero. A borrow only runs upwards
    /// from a zero byte, so the lowest bit set is exact (higher ones may not be).
    fn zero_bytes(v: u64) -> u64 {
        v.wrapping_sub(ONES) & !v & HIGHS
    }
    let (words, rest) = s.as_chunks::<8>();
    let mut n = 0;
    for &word in words {
        // Little-endian, so the lowest byte is the first in the payload.
        let x = u64::from_le_bytes(word);
        let special = zero_bytes(x ^ (ONES * b'"' as u64))
            | zero_bytes(x ^ (ONES * b'\\' as u64))
            // Below 0x20 (exact for the lowest such byte, as above).
            | (x.wrapping_sub(ONES * 0x20) & !x & HIGHS)
            // 0x80 and above.
            | (x & HIGHS);
        if special != 0 {
            return n + special.trailing_zeros() as usize / 8;
        }
        n += 8;
    }
    n + rest
        .iter()
        .take_while(|&&c| STRING_CLASS[c as usize] == PLAIN)
        .count()
}

/// A JSON string as it sits in the payload.
#[derive(Debug, Clone, Copy)]
struct JsonStr<'a> {
    /// The bytes between the quotes, escapes undecoded; valid UTF-8.
    raw: &'a [u8],
    /// Length of the decoded string in UTF-8 bytes.
    decoded_len: u64,
    escaped: bool,
}

impl<'a> JsonStr<'a> {
    /// The string itself when it needs no decoding (else the serde scan
    /// decodes it).
    fn plain(self) -> Sure<&'a [u8]> {
        if self.escaped {
            Err(Unsure)
        } else {
            Ok(self.raw)
        }
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Cursor<'a> {
    fn new(b: &'a [u8]) -> Self {
        Self { b, i: 0 }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.b.get(self.i) {
            self.i += 1;
        }
    }

    /// The next non-whitespace byte, not consumed.
    #[inline]
    fn peek(&mut self) -> Sure<u8> {
        self.ws();
        self.b.get(self.i).copied().ok_or(Unsure)
    }

    #[inline]
    fn eat(&mut self, c: u8) -> Sure<()> {
        if self.peek()? == c {
            self.i += 1;
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// Only whitespace may follow the top-level value (`Deserializer::end`).
    fn end(mut self) -> Sure<()> {
        self.ws();
        if self.i == self.b.len() {
            Ok(())
        } else {
            Err(Unsure)
        }
    }

    /// Most strings (keys, padding, base64, most text) have no escapes and no
    /// multi-byte characters: they end at the first special byte, and this
    /// small part is inlined where it is used. Per-call overhead was most of
    /// the cost of the many short keys.
    #[inline]
    fn string(&mut self) -> Sure<JsonStr<'a>> {
        self.eat(b'"')?;
        let start = self.i;
        let end = start + plain_run(self.b.get(start..).ok_or(Unsure)?);
        if self.b.get(end) != Some(&b'"') {
            return self.string_rest(start, end);
        }
        self.i = end + 1;
        let raw = &self.b[start..end];
        Ok(JsonStr {
            raw,
            decoded_len: raw.len() as u64,
            escaped: false,
        })
    }

    /// The rest of a string that began at `start` and has a special byte at
    /// `i`: escapes, multi-byte characters, or an error.
    #[inline(never)]
    fn string_rest(&mut self, start: usize, mut i: usize) -> Sure<JsonStr<'a>> {
        // Payload bytes of escapes beyond the bytes they decode to.
        let mut escape_extra = 0;
        let mut high = false;
        loop {
            match STRING_CLASS[*self.b.get(i).ok_or(Unsure)? as usize] {
                QUOTE => break,
                BACKSLASH => {
                    let (len, width) = self.escape(i + 1)?;
                    escape_extra += width as u64 - len;
                    i += width;
                }
                HIGH => {
                    high = true;
                    i += 1;
                }
                _ => return Err(Unsure),
            }
            i += plain_run(self.b.get(i..).ok_or(Unsure)?);
        }
        let raw = &self.b[start..i];
        // Escapes are ASCII, so the raw bytes are UTF-8 exactly when the
        // decoded string is.
        if high && std::str::from_utf8(raw).is_err() {
            return Err(Unsure);
        }
        self.i = i + 1;
        Ok(JsonStr {
            raw,
            decoded_len: raw.len() as u64 - escape_extra,
            escaped: escape_extra > 0,
        })
    }

    /// The escape whose backslash precedes `at`: its decoded UTF-8 length and
    /// its width in the payload from the backslash.
    fn escape(&self, at: usize) -> Sure<(u64, usize)> {
        match self.b.get(at).ok_or(Unsure)? {
            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Ok((1, 2)),
            b'u' => {
                let unit = self.hex4(at + 1)?;
                match unit {
                    0..=0x7f => Ok((1, 6)),
                    0x80..=0x7ff => Ok((2, 6)),
                    // A high surrogate must be followed by an escaped low one
                    // (one 4-byte character); a lone half makes serde_json fail.
                    0xd800..=0xdbff => {
                        if self.b.get(at + 5..at + 7) != Some(b"\\u") {
                            return Err(Unsure);
                        }
                        match self.hex4(at + 7)? {
                            0xdc00..=0xdfff => Ok((4, 12)),
                            _ => Err(Unsure),
                        }
                    }
                    0xdc00..=0xdfff => Err(Unsure),
                    _ => Ok((3, 6)),
                }
            }
            _ => Err(Unsure),
        }
    }

    fn hex4(&self, at: usize) -> Sure<u32> {
        let digits = self.b.get(at..at + 4).ok_or(Unsure)?;
        digits.iter().try_fold(0u32, |acc, &d| {
            let v = (d as char).to_digit(16).ok_or(Unsure)?;
            Ok(acc << 4 | v)
        })
    }

    /// An object key, which must need no decoding to be compared.
    fn key(&mut self) -> Sure<&'a [u8]> {
        self.string()?.plain()
    }

    /// Reads an object, handing each key to `member`, which must consume the
    /// value (with [`Cursor::skip`] if it does not want it).
    fn object(&mut self, mut member: impl FnMut(&'a [u8], &mut Self) -> Sure<()>) -> Sure<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.i += 1;
            return Ok(());
        }
        loop {
            let key = self.key()?;
            self.eat(b':')?;
            member(key, self)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(Unsure),
            }
        }
    }

    /// Skips any value of the subset, checking its syntax.
    fn skip(&mut self) -> Sure<()> {
        self.skip_nested(MAX_SKIP_DEPTH)
    }

    fn skip_nested(&mut self, depth: u32) -> Sure<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                let depth = depth.checked_sub(1).ok_or(Unsure)?;
                self.object(|_, c| c.skip_nested(depth))
            }
            b'[' => {
                let depth = depth.checked_sub(1).ok_or(Unsure)?;
                self.i += 1;
                if self.peek()? == b']' {
                    self.i += 1;
                    return Ok(());
                }
                loop {
                    self.skip_nested(depth)?;
                    match self.peek()? {
                        b',' => self.i += 1,
                        b']' => {
                            self.i += 1;
                            return Ok(());
                        }
                        _ => return Err(Unsure),
                    }
                }
            }
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => self.integer(),
        }
    }

    fn literal(&mut self, lit: &[u8]) -> Sure<()> {
        if self.b.get(self.i..self.i + lit.len()) != Some(lit) {
            return Err(Unsure);
        }
        self.i += lit.len();
        self.delimited()
    }

    /// `-?(0|[1-9][0-9]*)` of at most 18 digits: fits any integer type
    /// serde_json parses into. Fractions and exponents are left to serde.
    fn integer(&mut self) -> Sure<()> {
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let start = self.i;
        while self.b.get(self.i).is_some_and(u8::is_ascii_digit) {
            self.i += 1;
        }
        let digits = &self.b[start..self.i];
        match digits {
            [] => return Err(Unsure),
            [b'0', _, ..] => return Err(Unsure),
            _ if digits.len() > 18 => return Err(Unsure),
            _ => {}
        }
        self.delimited()
    }

    /// A number or literal must be followed by a delimiter (or the end, which
    /// [`Cursor::end`] and the callers check).
    fn delimited(&self) -> Sure<()> {
        match self.b.get(self.i) {
            None | Some(b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r') => Ok(()),
            Some(_) => Err(Unsure),
        }
    }

    /// A string value's decoded length; `None` for any other value (read
    /// and skipped), as `Value::as_str` gives.
    fn str_len(&mut self) -> Sure<Option<u64>> {
        if self.peek()? == b'"' {
            Ok(Some(self.string()?.decoded_len))
        } else {
            self.skip().map(|()| None)
        }
    }

    /// A string value that needs no decoding; `None` for any other value.
    fn plain_str(&mut self) -> Sure<Option<&'a [u8]>> {
        if self.peek()? == b'"' {
            self.string()?.plain().map(Some)
        } else {
            self.skip().map(|()| None)
        }
    }

    /// The `str_len` of `key` in an object value (last duplicate wins); `None`
    /// for any other value.
    fn field_len(&mut self, key: &[u8]) -> Sure<Option<u64>> {
        if self.peek()? != b'{' {
            return self.skip().map(|()| None);
        }
        let mut len = None;
        self.object(|k, c| {
            if k == key {
                len = c.str_len()?;
                Ok(())
            } else {
                c.skip()
            }
        })?;
        Ok(len)
    }

    /// `scan::DeltaLen`: the text lengths of a delta object; 0 for any other
    /// value.
    fn delta_len(&mut self) -> Sure<u64> {
        if self.peek()? != b'{' {
            return self.skip().map(|()| 0);
        }
        // text, partial_json, thinking, input, toolUse.input,
        // reasoningContent.text; each the last of its duplicates.
        let mut lens = [None; 6];
        self.object(|k, c| {
            match k {
                b"text" => lens[0] = c.str_len()?,
                b"partial_json" => lens[1] = c.str_len()?,
                b"thinking" => lens[2] = c.str_len()?,
                b"input" => lens[3] = c.str_len()?,
                b"toolUse" => lens[4] = c.field_len(b"input")?,
                b"reasoningContent" => lens[5] = c.field_len(b"text")?,
                _ => c.skip()?,
            }
            Ok(())
        })?;
        Ok(lens.iter().flatten().sum())
    }
}

/// `scan::converse_delta_text_len` for an object payload.
pub(super) fn converse_delta_text_len(payload: &[u8]) -> Sure<u64> {
    let mut c = Cursor::new(payload);
    let mut len = 0;
    c.object(|k, c| {
        if k == b"delta" {
            len = c.delta_len()?;
            Ok(())
        } else {
            c.skip()
        }
    })?;
    c.end()?;
    Ok(len)
}

/// `scan::chunk_bytes` for an object payload: the last `bytes` member if it is
/// a string that needs no decoding (base64 never does), `None` if it is not a
/// string or absent.
pub(super) fn chunk_bytes(payload: &[u8]) -> Sure<Option<&[u8]>> {
    let mut c = Cursor::new(payload);
    let mut bytes = None;
    c.object(|k, c| {
        if k == b"bytes" {
            bytes = c.plain_str()?;
            Ok(())
        } else {
            c.skip()
        }
    })?;
    c.end()?;
    Ok(bytes)
}

/// `scan::invoke_chunk` for an object payload.
pub(super) fn invoke_chunk(json: &[u8]) -> Sure<super::InvokeChunk> {
    use super::InvokeChunk;
    let mut c = Cursor::new(json);
    let mut ty = None;
    let mut delta = 0;
    let mut family = [None; 3];
    let mut metrics = false;
    c.object(|k, c| {
        match k {
            b"type" => ty = c.plain_str()?,
            b"delta" => delta = c.delta_len()?,
            b"outputText" => family[0] = c.str_len()?,
            b"generation" => family[1] = c.str_len()?,
            b"completion" => family[2] = c.str_len()?,
            b"amazon-bedrock-invocationMetrics" => {
                metrics = true;
                c.skip()?;
            }
            _ => c.skip()?,
        }
        Ok(())
    })?;
    c.end()?;
    Ok(match ty {
        _ if metrics => InvokeChunk::NeedsFullParse,
        Some(b"message_start" | b"message_delta") => InvokeChunk::NeedsFullParse,
        Some(b"content_block_delta") => InvokeChunk::Text(delta),
        _ => InvokeChunk::Text(family.iter().flatten().sum()),
    })
}

/// Differential tests against the serde scans, which define the answers.
#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::super::{serde_chunk_bytes, serde_converse_delta_text_len, serde_invoke_chunk};
    use super::*;
    use proptest::prelude::*;

    /// The quick scans agree with serde wherever they answer.
    fn agree(p: &[u8]) {
        let text = String::from_utf8_lossy(p);
        if let Ok(len) = converse_delta_text_len(p) {
            assert_eq!(Some(len), serde_converse_delta_text_len(p), "{text}");
        }
        if let Ok(bytes) = chunk_bytes(p) {
            let want = serde_chunk_bytes(p);
            assert_eq!(bytes, want.as_deref().map(str::as_bytes), "{text}");
        }
        if let Ok(chunk) = invoke_chunk(p) {
            assert_eq!(Some(chunk), serde_invoke_chunk(p), "{text}");
        }
    }

    /// Keys the scans look for, near misses, and escaped spellings of them.
    const KEYS: &[&str] = &[
        "text",
        "delta",
        "type",
        "bytes",
        "p",
        "input",
        "toolUse",
        "reasoningContent",
        "partial_json",
        "thinking",
        "outputText",
        "generation",
        "completion",
        "amazon-bedrock-invocationMetrics",
        "contentBlockIndex",
        "index",
        "Text",
        "é",
    ];
    /// Escaped keys, which the quick scans leave to serde.
    const ESCAPED_KEYS: &[&str] = &["te\\u0078t", "delt\\u0061", "t\\\"ype", "\\ud83d"];

    fn key() -> impl Strategy<Value = &'static str> {
        prop_oneof![
            20 => prop::sample::select(KEYS),
            1 => prop::sample::select(ESCAPED_KEYS),
        ]
    }

    /// String contents: plain, every escape, raw multi-byte, whole surrogate
    /// pairs; then (rarer) lone surrogates, bad escapes and bytes JSON forbids.
    const STRINGS: &[&str] = &[
        "",
        "Hello world",
        "message_start",
        "message_delta",
        "content_block_delta",
        "text_delta",
        "eyJ0eXBlIjoicGluZyJ9",
        "a\\nb",
        "\\\"\\\\\\/\\b\\f\\n\\r\\t",
        "\\u00e9\\u0800\\uffff\\u0000",
        "\\ud83d\\ude00",
        "héllo 😀 日本",
        "message_st\\u0061rt",
    ];
    const BAD_STRINGS: &[&str] = &[
        "\\ud83d",
        "\\ude00",
        "\\ud83dx",
        "\\ud83d\\u0041",
        "\\u12",
        "\\x",
        "tab\there",
        "new\nline",
    ];

    const SCALARS: &[&str] = &[
        "0",
        "-0",
        "7",
        "-12",
        "123456789012345678",
        "true",
        "false",
        "null",
        "[]",
        "{}",
    ];
    /// Numbers and literals the quick scans leave to serde, valid or not.
    const BAD_SCALARS: &[&str] = &[
        "1234567890123456789",
        "18446744073709551616",
        "01",
        "-",
        "1.5",
        "1e3",
        "1E400",
        "tru",
        "nul",
    ];

    fn ws() -> impl Strategy<Value = &'static str> {
        prop_oneof![8 => Just(""), 1 => Just(" "), 1 => Just("\n\t\r ")]
    }

    fn string() -> impl Strategy<Value = String> {
        prop_oneof![
            12 => prop::sample::select(STRINGS),
            1 => prop::sample::select(BAD_STRINGS),
        ]
        .prop_map(|s| format!("\"{s}\""))
    }

    fn value() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            6 => string(),
            3 => prop::sample::select(SCALARS).prop_map(str::to_owned),
            1 => prop::sample::select(BAD_SCALARS).prop_map(str::to_owned),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec((key(), inner.clone(), ws()), 0..6).prop_map(|members| {
                    let body: Vec<String> = members
                        .into_iter()
                        .map(|(k, v, w)| format!("{w}\"{k}\"{w}:{w}{v}{w}"))
                        .collect();
                    format!("{{{}}}", body.join(","))
                }),
                prop::collection::vec(inner, 0..4).prop_map(|v| format!("[{}]", v.join(","))),
            ]
        })
    }

    /// Objects (what Bedrock sends) most of the time.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        let object = prop::collection::vec((key(), value()), 0..6).prop_map(|members| {
            let body: Vec<String> = members
                .into_iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        });
        (prop_oneof![4 => object, 1 => value()], ws(), ws())
            .prop_map(|(v, a, b)| format!("{a}{v}{b}").into_bytes())
    }

    /// A payload with a few bytes changed, inserted or removed.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        (
            payload(),
            prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..4),
        )
            .prop_map(|(mut p, edits)| {
                for (at, byte, op) in edits {
                    let i = at.index(p.len() + 1);
                    match op {
                        0 if i < p.len() => p[i] = byte,
                        1 => p.insert(i, byte),
                        _ if i < p.len() => {
                            p.remove(i);
                        }
                        _ => {}
                    }
                }
                p
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn quick_scans_agree_with_serde(p in payload()) {
            agree(&p);
        }

        #[test]
        fn quick_scans_agree_with_serde_on_damaged_json(p in mutated()) {
            agree(&p);
        }

        #[test]
        fn quick_scans_agree_with_serde_on_any_bytes(p in prop::collection::vec(any::<u8>(), 0..64)) {
            agree(&p);
        }
    }

    /// The shapes Bedrock sends are answered here, not left to serde.
    #[test]
    fn bedrock_shapes_take_the_quick_path() {
        let delta = br#"{"contentBlockIndex":0,"delta":{"text":"Hi \"you\"\n\u00e9 \ud83d\ude00"},"p":"abcdefghij"}"#;
        assert_eq!(converse_delta_text_len(delta), Ok(16));
        assert_eq!(
            chunk_bytes(br#"{"bytes":"eyJ0eXBlIjoicGluZyJ9","p":"abc"}"#),
            Ok(Some(&b"eyJ0eXBlIjoicGluZyJ9"[..]))
        );
        for (json, want) in [
            (
                &br#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#[..],
                super::super::InvokeChunk::Text(5),
            ),
            (
                br#"{"type":"message_start","message":{"id":"msg","content":[],"stop_reason":null,"usage":{"input_tokens":12,"output_tokens":1}}}"#,
                super::super::InvokeChunk::NeedsFullParse,
            ),
            (
                br#"{"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":1,"outputTokenCount":2}}"#,
                super::super::InvokeChunk::NeedsFullParse,
            ),
            (
                br#"{"generation":"hi","prompt_token_count":null,"stop_reason":null}"#,
                super::super::InvokeChunk::Text(2),
            ),
        ] {
            assert_eq!(invoke_chunk(json), Ok(want));
            agree(json);
        }
        agree(delta);
    }
}
