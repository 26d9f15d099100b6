//! AWS event-stream framing (`application/vnd.amazon.eventstream`), as Bedrock's
//! streaming operations send it:
//!
//! ```text
//! [u32 total_len][u32 headers_len][u32 prelude_crc]
//! [headers][payload][u32 message_crc]
//! ```
//! All integers big-endian; both CRCs are IEEE CRC32; the message CRC covers every
//! byte before it. The [`Decoder`] is incremental: feed it body chunks split at any
//! byte and it yields whole messages, keeping only the unfinished frame.

use thiserror::Error;

/// Prelude (12 bytes) + message CRC (4 bytes).
pub const FRAME_OVERHEAD: usize = 16;
const PRELUDE_LEN: usize = 12;
/// botocore's limits: 128 KiB of headers, 24 MiB of payload.
pub const MAX_HEADERS_LEN: usize = 128 * 1024;
pub const MAX_PAYLOAD_LEN: usize = 24 * 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeaderValue {
    Bool(bool),
    Byte(i8),
    Int16(i16),
    Int32(i32),
    Int64(i64),
    Bytes(Vec<u8>),
    String(String),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: HeaderValue,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Message {
    pub headers: Vec<Header>,
    pub payload: Vec<u8>,
}

impl Message {
    /// An `:message-type: event` message with a JSON payload, as Bedrock sends.
    pub fn event(event_type: &str, json_payload: Vec<u8>) -> Self {
        Self {
            headers: vec![
                Header::string(":event-type", event_type),
                Header::string(":content-type", "application/json"),
                Header::string(":message-type", "event"),
            ],
            payload: json_payload,
        }
    }

    /// An `:message-type: exception` message (a modeled mid-stream error).
    pub fn exception(exception_type: &str, json_payload: Vec<u8>) -> Self {
        Self {
            headers: vec![
                Header::string(":exception-type", exception_type),
                Header::string(":content-type", "application/json"),
                Header::string(":message-type", "exception"),
            ],
            payload: json_payload,
        }
    }

    pub fn header_str(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find_map(|h| match (&h.value, h.name == name) {
                (HeaderValue::String(s), true) => Some(s.as_str()),
                _ => None,
            })
    }

    pub fn message_type(&self) -> Option<&str> {
        self.header_str(":message-type")
    }

    pub fn event_type(&self) -> Option<&str> {
        self.header_str(":event-type")
    }

    pub fn exception_type(&self) -> Option<&str> {
        self.header_str(":exception-type")
    }

    /// The frame bytes, both CRCs included.
    pub fn encode(&self) -> Vec<u8> {
        let mut headers = Vec::new();
        for h in &self.headers {
            h.encode_into(&mut headers);
        }
        let total = FRAME_OVERHEAD + headers.len() + self.payload.len();
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&(total as u32).to_be_bytes());
        out.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        let prelude_crc = crc32fast::hash(&out);
        out.extend_from_slice(&prelude_crc.to_be_bytes());
        out.extend_from_slice(&headers);
        out.extend_from_slice(&self.payload);
        let message_crc = crc32fast::hash(&out);
        out.extend_from_slice(&message_crc.to_be_bytes());
        out
    }
}

impl Header {
    pub fn string(name: &str, value: &str) -> Self {
        Self {
            name: name.to_owned(),
            value: HeaderValue::String(value.to_owned()),
        }
    }

    fn encode_into(&self, out: &mut Vec<u8>) {
        out.push(self.name.len() as u8);
        out.extend_from_slice(self.name.as_bytes());
        match &self.value {
            HeaderValue::Bool(true) => out.push(0),
            HeaderValue::Bool(false) => out.push(1),
            HeaderValue::Byte(v) => {
                out.push(2);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int16(v) => {
                out.push(3);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int32(v) => {
                out.push(4);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Int64(v) => {
                out.push(5);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Bytes(v) => {
                out.push(6);
                out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                out.extend_from_slice(v);
            }
            HeaderValue::String(v) => {
                out.push(7);
                out.extend_from_slice(&(v.len() as u16).to_be_bytes());
                out.extend_from_slice(v.as_bytes());
            }
            HeaderValue::Timestamp(v) => {
                out.push(8);
                out.extend_from_slice(&v.to_be_bytes());
            }
            HeaderValue::Uuid(v) => {
                out.push(9);
                out.extend_from_slice(v);
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("event-stream prelude CRC mismatch (expected {expected:#010x}, got {actual:#010x})")]
    PreludeCrc { expected: u32, actual: u32 },
    #[error("event-stream message CRC mismatch (expected {expected:#010x}, got {actual:#010x})")]
    MessageCrc { expected: u32, actual: u32 },
    #[error("event-stream frame length {total} is invalid (headers {headers} bytes)")]
    Length { total: u32, headers: u32 },
    #[error("event-stream header block is malformed: {0}")]
    Header(&'static str),
}

/// Incremental frame decoder. After the first error it stays failed: a corrupt
/// length field gives no reliable way back to a frame boundary.
///
/// Two ways to use it: [`Decoder::push`] then [`Decoder::next_message`] /
/// [`Decoder::next_frame`] until `None` (every byte is copied into the
/// decoder), or [`Decoder::feed`], which reads the frames of a chunk where they
/// lie and copies only a frame that the chunk leaves unfinished.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Bytes of `buf` already consumed (compacted lazily to avoid quadratic copies).
    start: usize,
    failed: Option<DecodeError>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a body chunk. Call [`Decoder::next_message`] until it returns `None`.
    pub fn push(&mut self, chunk: &[u8]) {
        if self.failed.is_some() {
            self.release();
            return;
        }
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 4096 && self.start * 2 > self.buf.len() {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Bytes received that do not yet form a whole frame.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    pub fn error(&self) -> Option<&DecodeError> {
        self.failed.as_ref()
    }

    /// The next complete message, an error (once; the decoder then stops), or
    /// `None` when more bytes are needed.
    pub fn next_message(&mut self) -> Option<Result<Message, DecodeError>> {
        self.next_frame().map(|r| r.and_then(|f| f.to_message()))
    }

    /// Like [`Decoder::next_message`], but borrows the frame from the decoder's
    /// buffer instead of copying it. The headers are validated before the frame
    /// is returned.
    pub fn next_frame(&mut self) -> Option<Result<Frame<'_>, DecodeError>> {
        if self.failed.is_some() {
            self.release();
            return None;
        }
        match check_frame(&self.buf[self.start..]) {
            Ok(Some((frame, len))) => {
                self.start += len;
                Some(Ok(frame))
            }
            Ok(None) => None,
            Err(e) => {
                // The buffer is still borrowed on the other path, so it is
                // released on the next call; nothing is pending from here on.
                self.failed = Some(e.clone());
                self.start = self.buf.len();
                Some(Err(e))
            }
        }
    }

    /// Decodes `chunk`, calling `f` with each whole frame (then with an error,
    /// once, if the stream is corrupt; the decoder then stops, as with
    /// [`Decoder::next_frame`]). Frames that lie wholly inside `chunk` are read
    /// there; only a frame the chunk leaves unfinished is copied, so a meter
    /// that only looks at frames does not copy the stream.
    pub fn feed(&mut self, chunk: &[u8], mut f: impl FnMut(Result<Frame<'_>, DecodeError>)) {
        if self.failed.is_some() {
            self.release();
            return;
        }
        let mut rest = chunk;
        // First the frame an earlier chunk began: move over just the bytes it
        // lacks (its prelude first, which says how many that is).
        while self.pending() > 0 {
            let have = self.pending();
            let want = if have < PRELUDE_LEN {
                PRELUDE_LEN
            } else {
                match frame_len(&self.buf[self.start..]) {
                    Ok(len) => len,
                    Err(e) => return f(Err(self.fail(e))),
                }
            };
            if have < want {
                let take = (want - have).min(rest.len());
                let (head, tail) = rest.split_at(take);
                self.buf.extend_from_slice(head);
                rest = tail;
                if take < want - have {
                    return;
                }
                continue;
            }
            match self.next_frame() {
                Some(Ok(frame)) => f(Ok(frame)),
                Some(Err(e)) => {
                    f(Err(e));
                    return self.release();
                }
                // A whole frame is buffered, so this does not happen; waiting
                // for more bytes would be the safe answer if it did.
                None => return,
            }
        }
        self.buf.clear();
        self.start = 0;
        loop {
            match check_frame(rest) {
                Ok(Some((frame, len))) => {
                    f(Ok(frame));
                    rest = &rest[len..];
                }
                Ok(None) => break,
                Err(e) => return f(Err(self.fail(e))),
            }
        }
        self.buf.extend_from_slice(rest);
    }

    /// Stops the decoder for good and drops what it holds.
    fn fail(&mut self, e: DecodeError) -> DecodeError {
        self.failed = Some(e.clone());
        self.release();
        e
    }

    fn release(&mut self) {
        self.buf = Vec::new();
        self.start = 0;
    }
}

/// The total length of the frame at the start of `data` (at least [`PRELUDE_LEN`]
/// bytes), once its prelude CRC and lengths check out.
fn frame_len(data: &[u8]) -> Result<usize, DecodeError> {
    prelude(data).map(|(len, _, _)| len)
}

/// Checks the prelude at the start of `data` (at least [`PRELUDE_LEN`] bytes):
/// returns the frame's total and headers lengths and the CRC hasher that has
/// read the first 8 bytes, which the message CRC goes on from.
fn prelude(data: &[u8]) -> Result<(usize, usize, crc32fast::Hasher), DecodeError> {
    let total = be_u32(&data[0..4]);
    let headers_len = be_u32(&data[4..8]);
    let prelude_crc = be_u32(&data[8..12]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&data[0..8]);
    let actual = crc.clone().finalize();
    if actual != prelude_crc {
        return Err(DecodeError::PreludeCrc {
            expected: prelude_crc,
            actual,
        });
    }
    let (total_us, headers_us) = (total as usize, headers_len as usize);
    if total_us < FRAME_OVERHEAD + headers_us
        || headers_us > MAX_HEADERS_LEN
        || total_us - FRAME_OVERHEAD - headers_us > MAX_PAYLOAD_LEN
    {
        return Err(DecodeError::Length {
            total,
            headers: headers_len,
        });
    }
    Ok((total_us, headers_us, crc))
}

/// Checks the frame at the start of `data` and returns it with its length, or
/// `None` if `data` ends first. The prelude is checked as soon as it is there,
/// the message CRC and then the headers once the frame is whole.
fn check_frame(data: &[u8]) -> Result<Option<(Frame<'_>, usize)>, DecodeError> {
    if data.len() < PRELUDE_LEN {
        return Ok(None);
    }
    let (total, headers_len, mut crc) = prelude(data)?;
    let Some(frame) = data.get(..total) else {
        return Ok(None);
    };
    let message_crc = be_u32(&frame[total - 4..]);
    // The message CRC covers the prelude too: continue from its first 8 bytes.
    crc.update(&frame[8..total - 4]);
    let actual = crc.finalize();
    if actual != message_crc {
        return Err(DecodeError::MessageCrc {
            expected: message_crc,
            actual,
        });
    }
    let headers = &frame[PRELUDE_LEN..PRELUDE_LEN + headers_len];
    let mut types = TypeHeaders::default();
    walk_headers(headers, true, |name, value| {
        if let RawValue::String(v) = value {
            let slot = match name {
                b":message-type" => &mut types.message_type,
                b":event-type" => &mut types.event_type,
                b":exception-type" => &mut types.exception_type,
                _ => return,
            };
            // The first string header of a name is the one lookups find.
            slot.get_or_insert(v);
        }
    })?;
    let frame = Frame {
        headers,
        payload: &frame[PRELUDE_LEN + headers_len..total - 4],
        types,
    };
    Ok(Some((frame, total)))
}

/// The string headers that say what a message is, as their raw bytes (checked
/// to be UTF-8 with the frame). Found while the frame is validated, so a
/// reader that dispatches on them neither walks the headers again nor converts
/// them to `str`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TypeHeaders<'a> {
    pub message_type: Option<&'a [u8]>,
    pub event_type: Option<&'a [u8]>,
    pub exception_type: Option<&'a [u8]>,
}

/// A decoded frame borrowed from the [`Decoder`]'s buffer or the chunk being
/// fed. Its header block has been validated, so lookups cannot fail.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    headers: &'a [u8],
    pub payload: &'a [u8],
    types: TypeHeaders<'a>,
}

impl<'a> Frame<'a> {
    /// A string header's value, found by comparing raw name bytes (no allocation).
    pub fn header_str(&self, name: &str) -> Option<&'a str> {
        let mut found = None;
        // Validated in `check_frame`, so the walk cannot fail here and only the
        // wanted value needs its (already checked) UTF-8 view.
        let _ = walk_headers(self.headers, false, |n, v| {
            if found.is_none() && n == name.as_bytes() {
                if let RawValue::String(s) = v {
                    found = Some(std::str::from_utf8(s).ok());
                }
            }
        });
        found.flatten()
    }

    /// `:message-type`, `:event-type` and `:exception-type` as bytes.
    pub fn types(&self) -> TypeHeaders<'a> {
        self.types
    }

    pub fn message_type(&self) -> Option<&'a str> {
        self.types
            .message_type
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn event_type(&self) -> Option<&'a str> {
        self.types
            .event_type
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    pub fn exception_type(&self) -> Option<&'a str> {
        self.types
            .exception_type
            .and_then(|v| std::str::from_utf8(v).ok())
    }

    /// An owned copy.
    pub fn to_message(&self) -> Result<Message, DecodeError> {
        Ok(Message {
            headers: decode_headers(self.headers)?,
            payload: self.payload.to_vec(),
        })
    }
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// A header value as it sits in the frame.
enum RawValue<'a> {
    Other(HeaderValue),
    Bytes(&'a [u8]),
    /// UTF-8 when the walk validates.
    String(&'a [u8]),
}

/// Walks a header block, calling `f` with each name's bytes and value; with
/// `validate`, also checks that names and string values are UTF-8.
fn walk_headers<'a>(
    mut b: &'a [u8],
    validate: bool,
    mut f: impl FnMut(&'a [u8], RawValue<'a>),
) -> Result<(), DecodeError> {
    fn take<'a>(b: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
        if b.len() < n {
            return Err(DecodeError::Header("truncated header"));
        }
        let (head, rest) = b.split_at(n);
        *b = rest;
        Ok(head)
    }
    // In an all-ASCII block (Bedrock's always are) every name and string is
    // UTF-8: one pass over the block instead of a check per name and value.
    let validate = validate && !b.is_ascii();
    while !b.is_empty() {
        let name_len = take(&mut b, 1)?[0] as usize;
        let name = take(&mut b, name_len)?;
        if validate && !is_utf8(name) {
            return Err(DecodeError::Header("header name is not UTF-8"));
        }
        let value = match take(&mut b, 1)?[0] {
            0 => RawValue::Other(HeaderValue::Bool(true)),
            1 => RawValue::Other(HeaderValue::Bool(false)),
            2 => RawValue::Other(HeaderValue::Byte(take(&mut b, 1)?[0] as i8)),
            3 => {
                let v = take(&mut b, 2)?;
                RawValue::Other(HeaderValue::Int16(i16::from_be_bytes([v[0], v[1]])))
            }
            4 => {
                let v = take(&mut b, 4)?;
                RawValue::Other(HeaderValue::Int32(i32::from_be_bytes([
                    v[0], v[1], v[2], v[3],
                ])))
            }
            t @ (5 | 8) => {
                let v = take(&mut b, 8)?;
                let mut a = [0u8; 8];
                a.copy_from_slice(v);
                let n = i64::from_be_bytes(a);
                RawValue::Other(if t == 5 {
                    HeaderValue::Int64(n)
                } else {
                    HeaderValue::Timestamp(n)
                })
            }
            t @ (6 | 7) => {
                let l = take(&mut b, 2)?;
                let len = u16::from_be_bytes([l[0], l[1]]) as usize;
                let v = take(&mut b, len)?;
                if t == 6 {
                    RawValue::Bytes(v)
                } else {
                    if validate && !is_utf8(v) {
                        return Err(DecodeError::Header("string header is not UTF-8"));
                    }
                    RawValue::String(v)
                }
            }
            9 => {
                let mut a = [0u8; 16];
                a.copy_from_slice(take(&mut b, 16)?);
                RawValue::Other(HeaderValue::Uuid(a))
            }
            _ => return Err(DecodeError::Header("unknown header value type")),
        };
        f(name, value);
    }
    Ok(())
}

/// Header names and values are short and nearly always ASCII, which is much
/// cheaper to check than to run the general UTF-8 validation on.
fn is_utf8(b: &[u8]) -> bool {
    b.is_ascii() || std::str::from_utf8(b).is_ok()
}

fn decode_headers(b: &[u8]) -> Result<Vec<Header>, DecodeError> {
    let mut headers = Vec::new();
    walk_headers(b, true, |name, value| {
        headers.push(Header {
            // Checked to be UTF-8 by the walk.
            name: String::from_utf8_lossy(name).into_owned(),
            value: match value {
                RawValue::Other(v) => v,
                RawValue::Bytes(v) => HeaderValue::Bytes(v.to_vec()),
                RawValue::String(s) => HeaderValue::String(String::from_utf8_lossy(s).into_owned()),
            },
        })
    })?;
    Ok(headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    /// botocore `tests/unit/test_eventstream.py` PAYLOAD_ONE_STR_HEADER.
    fn botocore_vector() -> Vec<u8> {
        let mut v = vec![
            0x00, 0x00, 0x00, 0x3d, 0x00, 0x00, 0x00, 0x20, 0x07, 0xfd, 0x83, 0x96,
        ];
        v.push(12);
        v.extend_from_slice(b"content-type");
        v.extend_from_slice(&[7, 0, 16]);
        v.extend_from_slice(b"application/json");
        v.extend_from_slice(b"{'foo':'bar'}");
        v.extend_from_slice(&[0x8d, 0x9c, 0x08, 0xb1]);
        v
    }

    #[test]
    fn decodes_botocore_test_vector() {
        let mut d = Decoder::new();
        d.push(&botocore_vector());
        let m = d.next_message().unwrap().unwrap();
        assert_eq!(m.header_str("content-type"), Some("application/json"));
        assert_eq!(m.payload, b"{'foo':'bar'}");
        assert!(d.next_message().is_none());
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn encodes_botocore_test_vector_byte_for_byte() {
        let m = Message {
            headers: vec![Header::string("content-type", "application/json")],
            payload: b"{'foo':'bar'}".to_vec(),
        };
        assert_eq!(m.encode(), botocore_vector());
    }

    fn sample_stream() -> (Vec<Message>, Vec<u8>) {
        let msgs = vec![
            Message::event(
                "messageStart",
                br#"{"role":"assistant","p":"abc"}"#.to_vec(),
            ),
            Message::event(
                "contentBlockDelta",
                br#"{"contentBlockIndex":0,"delta":{"text":"hi"}}"#.to_vec(),
            ),
            Message {
                headers: vec![
                    Header {
                        name: "b".into(),
                        value: HeaderValue::Bool(true),
                    },
                    Header {
                        name: "f".into(),
                        value: HeaderValue::Bool(false),
                    },
                    Header {
                        name: "i8".into(),
                        value: HeaderValue::Byte(-3),
                    },
                    Header {
                        name: "i16".into(),
                        value: HeaderValue::Int16(-300),
                    },
                    Header {
                        name: "i32".into(),
                        value: HeaderValue::Int32(70000),
                    },
                    Header {
                        name: "i64".into(),
                        value: HeaderValue::Int64(-1),
                    },
                    Header {
                        name: "by".into(),
                        value: HeaderValue::Bytes(vec![1, 2, 3]),
                    },
                    Header {
                        name: "ts".into(),
                        value: HeaderValue::Timestamp(1_700_000_000_000),
                    },
                    Header {
                        name: "u".into(),
                        value: HeaderValue::Uuid([7; 16]),
                    },
                ],
                payload: vec![],
            },
            Message::exception(
                "throttlingException",
                br#"{"message":"slow down"}"#.to_vec(),
            ),
        ];
        let bytes = msgs.iter().flat_map(|m| m.encode()).collect();
        (msgs, bytes)
    }

    #[test]
    fn decodes_frames_split_at_every_byte_boundary() {
        let (msgs, bytes) = sample_stream();
        for split in 0..bytes.len() {
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for part in [&bytes[..split], &bytes[split..]] {
                d.push(part);
                while let Some(m) = d.next_message() {
                    got.push(m.unwrap());
                }
            }
            assert_eq!(got, msgs, "split at {split}");
        }
    }

    #[test]
    fn decodes_one_byte_at_a_time() {
        let (msgs, bytes) = sample_stream();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for b in &bytes {
            d.push(std::slice::from_ref(b));
            while let Some(m) = d.next_message() {
                got.push(m.unwrap());
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(got[3].message_type(), Some("exception"));
        assert_eq!(got[3].exception_type(), Some("throttlingException"));
    }

    #[test]
    fn detects_corrupt_payload_and_stops() {
        let (_, mut bytes) = sample_stream();
        bytes[20] ^= 0xff; // inside the first frame's headers
        let mut d = Decoder::new();
        d.push(&bytes);
        assert!(matches!(
            d.next_message(),
            Some(Err(DecodeError::MessageCrc { .. }))
        ));
        assert!(d.next_message().is_none());
        assert!(d.error().is_some());
    }

    #[test]
    fn detects_corrupt_prelude() {
        let mut bytes = botocore_vector();
        bytes[3] ^= 1;
        let mut d = Decoder::new();
        d.push(&bytes);
        assert!(matches!(
            d.next_message(),
            Some(Err(DecodeError::PreludeCrc { .. }))
        ));
    }

    #[test]
    fn rejects_impossible_lengths_with_valid_prelude_crc() {
        let mut p = Vec::new();
        p.extend_from_slice(&10u32.to_be_bytes());
        p.extend_from_slice(&0u32.to_be_bytes());
        let crc = crc32fast::hash(&p);
        p.extend_from_slice(&crc.to_be_bytes());
        let mut d = Decoder::new();
        d.push(&p);
        assert!(matches!(
            d.next_message(),
            Some(Err(DecodeError::Length { .. }))
        ));
    }

    /// Everything `feed` hands out for `chunks`, as owned messages.
    fn feed_all(chunks: &[&[u8]]) -> (Vec<Result<Message, DecodeError>>, Decoder) {
        let mut d = Decoder::new();
        let mut got = Vec::new();
        for c in chunks {
            d.feed(c, |f| got.push(f.and_then(|f| f.to_message())));
        }
        (got, d)
    }

    #[test]
    fn feed_reads_frames_split_at_every_byte_boundary() {
        let (msgs, bytes) = sample_stream();
        let want: Vec<_> = msgs.into_iter().map(Ok).collect();
        for split in 0..=bytes.len() {
            let (got, d) = feed_all(&[&bytes[..split], &bytes[split..]]);
            assert_eq!(got, want, "split at {split}");
            assert_eq!(d.pending(), 0);
        }
        for (a, b) in [(3, 40), (11, 12), (12, 13), (20, 90), (0, bytes.len())] {
            let (got, _) = feed_all(&[&bytes[..a], &bytes[a..b], &[], &bytes[b..]]);
            assert_eq!(got, want, "splits at {a} and {b}");
        }
    }

    #[test]
    fn feed_one_byte_at_a_time_keeps_only_the_unfinished_frame() {
        let (msgs, bytes) = sample_stream();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        let first = msgs[0].encode().len();
        for (i, b) in bytes.iter().enumerate() {
            d.feed(std::slice::from_ref(b), |f| {
                got.push(f.unwrap().to_message().unwrap())
            });
            if i + 1 < first {
                assert_eq!(d.pending(), i + 1);
            }
        }
        assert_eq!(got, msgs);
        assert_eq!(d.pending(), 0);
    }

    #[test]
    fn feed_keeps_the_tail_of_a_chunk() {
        let (msgs, bytes) = sample_stream();
        let cut = bytes.len() - 5;
        let (got, d) = feed_all(&[&bytes[..cut]]);
        assert_eq!(got.len(), msgs.len() - 1);
        assert_eq!(d.pending(), msgs[msgs.len() - 1].encode().len() - 5);
    }

    #[test]
    fn feed_reports_corruption_once_then_stops() {
        let (_, mut bytes) = sample_stream();
        bytes[20] ^= 0xff; // inside the first frame's headers
        for split in [0, 5, 12, 19, 21, bytes.len()] {
            let (got, mut d) = feed_all(&[&bytes[..split], &bytes[split..]]);
            assert!(
                matches!(got[..], [Err(DecodeError::MessageCrc { .. })]),
                "split at {split}: {got:?}"
            );
            assert!(d.error().is_some());
            let mut more = 0;
            d.feed(&bytes, |_| more += 1);
            assert_eq!(more, 0);
            assert_eq!(d.pending(), 0);
        }
        let mut prelude = botocore_vector();
        prelude[3] ^= 1;
        for split in [4, 11, 12] {
            let (got, _) = feed_all(&[&prelude[..split], &prelude[split..]]);
            assert!(
                matches!(got[..], [Err(DecodeError::PreludeCrc { .. })]),
                "split at {split}: {got:?}"
            );
        }
    }

    #[test]
    fn type_headers_are_the_first_string_of_each_name() {
        let m = Message {
            headers: vec![
                Header {
                    name: ":message-type".into(),
                    value: HeaderValue::Int32(1),
                },
                Header::string(":event-type", "chunk"),
                Header::string(":message-type", "event"),
                Header::string(":message-type", "exception"),
                Header::string(":event-type", "metadata"),
            ],
            payload: b"{}".to_vec(),
        };
        let bytes = m.encode();
        let mut d = Decoder::new();
        d.feed(&bytes, |f| {
            let f = f.unwrap();
            let types = f.types();
            assert_eq!(types.message_type, Some(&b"event"[..]));
            assert_eq!(types.event_type, Some(&b"chunk"[..]));
            assert_eq!(types.exception_type, None);
            assert_eq!(f.message_type(), f.header_str(":message-type"));
            assert_eq!(f.event_type(), f.header_str(":event-type"));
            assert_eq!(f.exception_type(), None);
        });
        assert_eq!(m.message_type(), Some("event"));
    }

    #[test]
    fn non_ascii_headers_are_still_checked_for_utf8() {
        let m = Message {
            headers: vec![Header::string("é", "日本")],
            payload: vec![],
        };
        let (got, _) = feed_all(&[&m.encode()]);
        assert_eq!(got, [Ok(m.clone())]);
        // Replace the value's UTF-8 with a lone continuation byte.
        let mut bytes = m.encode();
        let at = bytes.windows(3).position(|w| w == "日".as_bytes()).unwrap();
        bytes[at] = 0x80;
        let n = bytes.len();
        let crc = crc32fast::hash(&bytes[..n - 4]);
        bytes[n - 4..].copy_from_slice(&crc.to_be_bytes());
        let (got, _) = feed_all(&[&bytes]);
        assert_eq!(
            got,
            [Err(DecodeError::Header("string header is not UTF-8"))]
        );
    }

    #[test]
    fn truncated_frame_waits_for_more() {
        let bytes = botocore_vector();
        let mut d = Decoder::new();
        d.push(&bytes[..bytes.len() - 1]);
        assert!(d.next_message().is_none());
        assert_eq!(d.pending(), bytes.len() - 1);
    }
}
