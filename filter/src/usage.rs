//! Token usage from Bedrock responses: Converse JSON `usage`, InvokeModel
//! `x-amzn-bedrock-*-token-count` headers, Anthropic Messages `usage`, and the
//! event-stream frames of the two streaming operations ([`StreamMeter`]).

use base64::Engine as _;
use serde_json::Value;
use tollgate_wire::api::{Operation, Usage};
use tollgate_wire::eventstream::{DecodeError, Decoder, Frame};

mod scan;

pub const INPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-input-token-count";
pub const OUTPUT_TOKENS_HEADER: &str = "x-amzn-bedrock-output-token-count";
pub const CACHE_READ_TOKENS_HEADER: &str = "x-amzn-bedrock-cache-read-input-token-count";
pub const CACHE_WRITE_TOKENS_HEADER: &str = "x-amzn-bedrock-cache-write-input-token-count";

/// Bytes of generated text per estimated output token when Bedrock's own count
/// never arrived. Deliberately low (English averages ~4) so estimates do not
/// under-charge.
const TEXT_BYTES_PER_TOKEN: u64 = 3;

fn u(v: &Value, key: &str) -> Option<u64> {
    v.get(key).and_then(Value::as_u64)
}

/// Converse `usage`: `inputTokens` excludes cached tokens, which come separately.
pub fn converse_usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        input_tokens: u(usage, "inputTokens")?,
        output_tokens: u(usage, "outputTokens")?,
        cache_read_input_tokens: u(usage, "cacheReadInputTokens")
            .or_else(|| u(usage, "cacheReadInputTokenCount"))
            .unwrap_or(0),
        cache_write_input_tokens: u(usage, "cacheWriteInputTokens")
            .or_else(|| u(usage, "cacheWriteInputTokenCount"))
            .unwrap_or(0),
    })
}

/// Anthropic Messages `usage` (`input_tokens` excludes cache reads and writes).
pub fn anthropic_usage(usage: &Value) -> Option<Usage> {
    Some(Usage {
        input_tokens: u(usage, "input_tokens")?,
        output_tokens: u(usage, "output_tokens")?,
        cache_read_input_tokens: u(usage, "cache_read_input_tokens").unwrap_or(0),
        cache_write_input_tokens: u(usage, "cache_creation_input_tokens").unwrap_or(0),
    })
}

/// InvokeModel token-count headers (absent on streams and errors).
pub fn header_usage(header: impl Fn(&str) -> Option<String>) -> Option<Usage> {
    let num = |name: &str| header(name).and_then(|v| v.trim().parse::<u64>().ok());
    Some(Usage {
        input_tokens: num(INPUT_TOKENS_HEADER)?,
        output_tokens: num(OUTPUT_TOKENS_HEADER)?,
        cache_read_input_tokens: num(CACHE_READ_TOKENS_HEADER).unwrap_or(0),
        cache_write_input_tokens: num(CACHE_WRITE_TOKENS_HEADER).unwrap_or(0),
    })
}

/// Usage from a complete non-streaming JSON body. Only `usage` is built as a
/// `Value`; the rest (the generated text) is parsed and discarded, so the body
/// is accepted or refused exactly as parsing it all into a `Value` would.
pub fn body_usage(op: Operation, body: &[u8]) -> Option<Usage> {
    let mut picked = crate::json::pick_fields(body, &["usage"]).ok()??;
    let usage = picked.pop().flatten()?;
    match op {
        Operation::Converse => converse_usage(&usage),
        // Anthropic Messages; other families report usage only in headers.
        _ => anthropic_usage(&usage),
    }
}

/// What a response stream has shown so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamObservation {
    /// Usage reported by Bedrock, merged from the events that carry it.
    pub usage: Option<Usage>,
    /// True once the event that closes the accounting arrived (ConverseStream
    /// `metadata`, InvokeModel stream `amazon-bedrock-invocationMetrics`).
    pub final_usage: bool,
    /// Bytes of generated text seen, for an estimate when usage never arrives.
    pub text_bytes: u64,
    /// `:message-type: exception` frames, by exception type.
    pub exception: Option<String>,
    pub corrupt: Option<DecodeError>,
    pub frames: u64,
}

impl StreamObservation {
    /// Output tokens estimated from the text seen.
    pub fn estimated_output_tokens(&self) -> u64 {
        self.text_bytes.div_ceil(TEXT_BYTES_PER_TOKEN)
    }
}

/// Incremental usage meter for an event-stream response. Each body chunk is
/// inspected and passed on untouched; only an unfinished frame is kept.
#[derive(Debug)]
pub struct StreamMeter {
    decoder: Decoder,
    state: MeterState,
}

/// Everything but the decoder, so frames borrowed from it can be observed.
#[derive(Debug)]
struct MeterState {
    op: Operation,
    seen: StreamObservation,
    /// Reused for base64-decoded InvokeModel chunks.
    scratch: Vec<u8>,
}

impl StreamMeter {
    pub fn new(op: Operation) -> Self {
        Self {
            decoder: Decoder::new(),
            state: MeterState {
                op,
                seen: StreamObservation::default(),
                scratch: Vec::new(),
            },
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.state.seen.corrupt.is_some() {
            return;
        }
        // Frames are read where they lie in the chunk: only one a chunk leaves
        // unfinished is copied.
        let state = &mut self.state;
        self.decoder.feed(chunk, |next| match next {
            Ok(f) => {
                state.seen.frames += 1;
                state.observe(&f);
            }
            Err(e) => state.seen.corrupt = Some(e),
        });
    }

    pub fn observation(&self) -> &StreamObservation {
        &self.state.seen
    }
}

impl MeterState {
    /// Only frames that can carry usage are parsed in full; text deltas are
    /// measured by a borrowing scan that reads the same fields (see `scan`).
    fn observe(&mut self, m: &Frame<'_>) {
        // Dispatch on the raw header bytes the decoder found while checking
        // the frame: no second walk of the headers, no UTF-8 conversion.
        let types = m.types();
        match types.message_type {
            Some(b"exception" | b"error") => {
                let kind = m
                    .exception_type()
                    .or_else(|| m.header_str(":error-code"))
                    .unwrap_or("unknown");
                self.seen.exception = Some(kind.to_owned());
                return;
            }
            Some(b"event") | None => {}
            Some(_) => return,
        }
        match (self.op, types.event_type) {
            (Operation::ConverseStream, Some(b"contentBlockDelta")) => {
                if let Some(n) = scan::converse_delta_text_len(m.payload) {
                    self.seen.text_bytes += n;
                }
            }
            (Operation::ConverseStream, Some(b"metadata")) => {
                let Ok(payload) = serde_json::from_slice::<Value>(m.payload) else {
                    return;
                };
                if let Some(usage) = payload.get("usage").and_then(converse_usage) {
                    self.seen.usage = Some(usage);
                    self.seen.final_usage = true;
                }
            }
            (Operation::InvokeWithResponseStream, Some(b"chunk")) => {
                let Some(bytes) = scan::chunk_bytes(m.payload) else {
                    return;
                };
                self.scratch.clear();
                if base64::engine::general_purpose::STANDARD
                    .decode_vec(&bytes, &mut self.scratch)
                    .is_err()
                {
                    return;
                }
                match scan::invoke_chunk(&self.scratch) {
                    Some(scan::InvokeChunk::Text(n)) => self.seen.text_bytes += n,
                    Some(scan::InvokeChunk::NeedsFullParse) => {
                        if let Ok(inner) = serde_json::from_slice::<Value>(&self.scratch) {
                            self.observe_invoke_chunk(&inner);
                        }
                    }
                    None => {}
                }
            }
            // Other events carry neither text nor usage.
            _ => {}
        }
    }

    /// Anthropic Messages stream events inside InvokeModel `chunk`s, plus the
    /// `amazon-bedrock-invocationMetrics` Bedrock appends to the last chunk of
    /// every model family.
    fn observe_invoke_chunk(&mut self, v: &Value) {
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                if let Some(usage) = v.pointer("/message/usage").and_then(anthropic_usage) {
                    self.seen.usage = Some(usage);
                }
            }
            Some("message_delta") => {
                // `output_tokens` here is cumulative.
                if let Some(out) = v.pointer("/usage/output_tokens").and_then(Value::as_u64) {
                    let usage = self.seen.usage.get_or_insert_with(Usage::default);
                    usage.output_tokens = out;
                }
            }
            Some("content_block_delta") => {
                if let Some(delta) = v.get("delta") {
                    self.seen.text_bytes += delta_text_len(delta);
                }
            }
            _ => {
                // Non-Anthropic families stream their text in family fields.
                for key in ["outputText", "generation", "completion"] {
                    if let Some(s) = v.get(key).and_then(Value::as_str) {
                        self.seen.text_bytes += s.len() as u64;
                    }
                }
            }
        }
        if let Some(metrics) = v.get("amazon-bedrock-invocationMetrics") {
            if let (Some(input), Some(output)) = (
                u(metrics, "inputTokenCount"),
                u(metrics, "outputTokenCount"),
            ) {
                let prior = self.seen.usage.unwrap_or_default();
                self.seen.usage = Some(Usage {
                    input_tokens: input,
                    output_tokens: output,
                    cache_read_input_tokens: u(metrics, "cacheReadInputTokenCount")
                        .unwrap_or(prior.cache_read_input_tokens),
                    cache_write_input_tokens: u(metrics, "cacheWriteInputTokenCount")
                        .unwrap_or(prior.cache_write_input_tokens),
                });
                self.seen.final_usage = true;
            }
        }
    }
}

/// Keys whose string values are generated text in non-streaming responses:
/// Converse `output.message.content[].text` (and `reasoningText.text`),
/// Anthropic `content[].text`/`thinking`, Claude 2 `completion`, Llama
/// `generation`, Titan `results[].outputText`, Mistral `outputs[].text`, Cohere
/// `text`, OpenAI-compatible/Jamba/DeepSeek `choices[].message.content` and
/// `reasoning_content`.
const GENERATED_TEXT_KEYS: &[&str] = &[
    "text",
    "completion",
    "generation",
    "outputText",
    "content",
    "thinking",
    "reasoning_content",
    "reasoning",
];

/// Bytes of generated text in a (possibly truncated) non-streaming JSON response
/// body: the decoded string values of [`GENERATED_TEXT_KEYS`], plus the keys and
/// string values of tool inputs (`input` objects, which the model also
/// generates). JSON syntax, other keys and metadata (`role`, `stopReason`,
/// `usage`, …) are not counted. A cut body does not parse as JSON, so this is a
/// tolerant single-pass scanner: it stops where the bytes stop, counting a string
/// cut mid-way up to the cut.
pub fn json_generated_text_bytes(body: &[u8]) -> u64 {
    struct Frame {
        object: bool,
        /// The key this object or array is the value of.
        key: Option<String>,
        /// Inside a tool `input`: every key and string counts.
        tool_input: bool,
    }
    let mut stack: Vec<Frame> = Vec::new();
    let mut expect_key = false;
    let mut pending_key: Option<String> = None;
    let mut total = 0u64;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            open @ (b'{' | b'[') => {
                let key = pending_key.take().or_else(|| {
                    // Array elements inherit the array's key.
                    stack
                        .last()
                        .filter(|f| !f.object)
                        .and_then(|f| f.key.clone())
                });
                let tool_input =
                    stack.last().is_some_and(|f| f.tool_input) || key.as_deref() == Some("input");
                stack.push(Frame {
                    object: open == b'{',
                    key,
                    tool_input,
                });
                expect_key = open == b'{';
                i += 1;
            }
            b'}' | b']' => {
                stack.pop();
                expect_key = false;
                pending_key = None;
                i += 1;
            }
            b',' => {
                expect_key = stack.last().is_some_and(|f| f.object);
                pending_key = None;
                i += 1;
            }
            b':' => {
                expect_key = false;
                i += 1;
            }
            b'"' => {
                let (len, raw, next) = scan_string(body, i + 1);
                let top = stack.last();
                let tool_input = top.is_some_and(|f| f.tool_input);
                if expect_key && top.is_some_and(|f| f.object) {
                    if tool_input {
                        total += len;
                    }
                    pending_key = Some(String::from_utf8_lossy(raw).into_owned());
                } else {
                    let key = pending_key
                        .take()
                        .or_else(|| top.filter(|f| !f.object).and_then(|f| f.key.clone()));
                    if tool_input || key.is_some_and(|k| GENERATED_TEXT_KEYS.contains(&k.as_str()))
                    {
                        total += len;
                    }
                }
                i = next;
            }
            _ => i += 1,
        }
    }
    total
}

/// Scans a JSON string whose opening quote precedes `start`. Returns the decoded
/// UTF-8 length, the raw bytes (for keys; at most 64), and the index after the
/// closing quote (or the end of a truncated body).
fn scan_string(body: &[u8], start: usize) -> (u64, &[u8], usize) {
    let mut len = 0u64;
    let mut i = start;
    while i < body.len() {
        match body[i] {
            b'"' => {
                let raw = &body[start..i.min(start + 64)];
                return (len, raw, i + 1);
            }
            b'\\' => {
                match body.get(i + 1) {
                    Some(b'u') => {
                        let Some(hex) = body
                            .get(i + 2..i + 6)
                            .and_then(|h| std::str::from_utf8(h).ok())
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                        else {
                            break;
                        };
                        // A surrogate pair is two escapes of 2 bytes: 4 in UTF-8.
                        len += match hex {
                            0..=0x7f => 1,
                            0x80..=0x7ff | 0xd800..=0xdfff => 2,
                            _ => 3,
                        };
                        i += 6;
                    }
                    Some(_) => {
                        len += 1;
                        i += 2;
                    }
                    None => break,
                }
            }
            _ => {
                len += 1;
                i += 1;
            }
        }
    }
    let end = body.len();
    (len, &body[start..end.min(start + 64)], end)
}

/// Output tokens estimated for a non-streaming JSON response that ended without
/// usage (cut, overflowed the copy, or unparseable): generated text only, at the
/// same deliberately low bytes-per-token as streams. Use instead of the raw body
/// length, which charged JSON keys and punctuation as output.
pub fn estimate_json_output_tokens(body: &[u8]) -> u64 {
    json_generated_text_bytes(body).div_ceil(TEXT_BYTES_PER_TOKEN)
}

/// What [`scan::delta_text_len`] computes without building a `Value`.
fn delta_text_len(delta: &Value) -> u64 {
    ["text", "partial_json", "thinking", "input"]
        .iter()
        .filter_map(|k| delta.get(*k).and_then(Value::as_str))
        .chain(delta.pointer("/toolUse/input").and_then(Value::as_str))
        .chain(
            delta
                .pointer("/reasoningContent/text")
                .and_then(Value::as_str),
        )
        .map(|s| s.len() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use tollgate_wire::eventstream::Message;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn ev(kind: &str, v: Value) -> Vec<u8> {
        Message::event(kind, serde_json::to_vec(&v).unwrap()).encode()
    }

    fn chunk(v: Value) -> Vec<u8> {
        let b = base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&v).unwrap());
        ev("chunk", json!({"bytes": b, "p": "abcdef"}))
    }

    #[test]
    fn converse_body_usage_with_cache() {
        let body = br#"{"output":{},"usage":{"inputTokens":11,"outputTokens":264,"cacheWriteInputTokens":1028,"totalTokens":1303}}"#;
        assert_eq!(
            body_usage(Operation::Converse, body),
            Some(Usage {
                input_tokens: 11,
                output_tokens: 264,
                cache_read_input_tokens: 0,
                cache_write_input_tokens: 1028
            })
        );
    }

    #[test]
    fn anthropic_body_usage() {
        let body = br#"{"type":"message","usage":{"input_tokens":21,"output_tokens":22,"cache_read_input_tokens":5,"cache_creation_input_tokens":7}}"#;
        assert_eq!(
            body_usage(Operation::Invoke, body),
            Some(Usage {
                input_tokens: 21,
                output_tokens: 22,
                cache_read_input_tokens: 5,
                cache_write_input_tokens: 7
            })
        );
        assert_eq!(body_usage(Operation::Invoke, b"{not json"), None);
    }

    #[test]
    fn invoke_headers() {
        let h = |name: &str| match name {
            INPUT_TOKENS_HEADER => Some("21".to_string()),
            OUTPUT_TOKENS_HEADER => Some(" 22 ".to_string()),
            _ => None,
        };
        assert_eq!(
            header_usage(h),
            Some(Usage {
                input_tokens: 21,
                output_tokens: 22,
                ..Usage::default()
            })
        );
        assert_eq!(header_usage(|_| None), None);
    }

    fn converse_stream() -> Vec<u8> {
        [
            ev("messageStart", json!({"role":"assistant","p":"abc"})),
            ev("contentBlockDelta", json!({"contentBlockIndex":0,"delta":{"text":"Hello world"},"p":"ab"})),
            ev("contentBlockStop", json!({"contentBlockIndex":0})),
            ev("messageStop", json!({"stopReason":"end_turn"})),
            ev("metadata", json!({"metrics":{"latencyMs":1841},"p":"abcdefghijklmnopqrst","usage":{"inputTokens":259,"outputTokens":64,"totalTokens":323}})),
        ]
        .concat()
    }

    #[test]
    fn converse_stream_usage_at_any_split() {
        let bytes = converse_stream();
        for split in (0..bytes.len()).step_by(7) {
            let mut m = StreamMeter::new(Operation::ConverseStream);
            m.push(&bytes[..split]);
            m.push(&bytes[split..]);
            let o = m.observation();
            assert!(o.final_usage);
            assert_eq!(
                o.usage,
                Some(Usage {
                    input_tokens: 259,
                    output_tokens: 64,
                    ..Usage::default()
                })
            );
            assert_eq!(o.text_bytes, 11);
            assert_eq!(o.frames, 5);
        }
    }

    #[test]
    fn invoke_stream_anthropic_usage() {
        let bytes = [
            chunk(json!({"type":"message_start","message":{"usage":{"input_tokens":21,"output_tokens":2,"cache_read_input_tokens":3}}})),
            chunk(json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi!"}})),
            chunk(json!({"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":22}})),
        ]
        .concat();
        let mut m = StreamMeter::new(Operation::InvokeWithResponseStream);
        m.push(&bytes);
        assert!(!m.observation().final_usage);
        assert_eq!(
            m.observation().usage,
            Some(Usage {
                input_tokens: 21,
                output_tokens: 22,
                cache_read_input_tokens: 3,
                cache_write_input_tokens: 0
            })
        );
        m.push(&chunk(json!({"type":"message_stop","amazon-bedrock-invocationMetrics":{"inputTokenCount":21,"outputTokenCount":22,"invocationLatency":2033,"firstByteLatency":1229}})));
        assert!(m.observation().final_usage);
        assert_eq!(
            m.observation().usage,
            Some(Usage {
                input_tokens: 21,
                output_tokens: 22,
                cache_read_input_tokens: 3,
                cache_write_input_tokens: 0
            })
        );
    }

    #[test]
    fn exception_frames_and_corruption_are_recorded() {
        let mut m = StreamMeter::new(Operation::ConverseStream);
        m.push(&ev("contentBlockDelta", json!({"delta":{"text":"abcdef"}})));
        m.push(
            &Message::exception(
                "modelStreamErrorException",
                br#"{"message":"boom"}"#.to_vec(),
            )
            .encode(),
        );
        assert_eq!(
            m.observation().exception.as_deref(),
            Some("modelStreamErrorException")
        );
        assert_eq!(m.observation().estimated_output_tokens(), 2);

        let mut bytes = converse_stream();
        let n = bytes.len();
        bytes[n - 30] ^= 0x55; // inside the metadata frame
        let mut m = StreamMeter::new(Operation::ConverseStream);
        m.push(&bytes);
        assert!(m.observation().corrupt.is_some());
        assert!(!m.observation().final_usage);
        assert_eq!(m.observation().frames, 4);
    }

    #[test]
    fn cut_converse_body_is_estimated_from_its_text() {
        let text = "The quick brown fox jumps over the lazy dog. ".repeat(20);
        let body = serde_json::to_vec(&json!({
            "output":{"message":{"role":"assistant","content":[{"text": text}]}},
            "stopReason":"end_turn",
            "usage":{"inputTokens":12,"outputTokens":200,"totalTokens":212},
            "metrics":{"latencyMs":1234}
        }))
        .unwrap();
        assert_eq!(json_generated_text_bytes(&body), text.len() as u64);
        let half = &body[..body.len() / 2];
        assert!(serde_json::from_slice::<Value>(half).is_err());
        let prefix = half.len() - body.windows(9).position(|w| w == br#"[{"text":"#).unwrap() - 10;
        assert_eq!(json_generated_text_bytes(half), prefix as u64);
        assert_eq!(
            estimate_json_output_tokens(half),
            (prefix as u64).div_ceil(TEXT_BYTES_PER_TOKEN)
        );
        assert!(estimate_json_output_tokens(half) < (half.len() as u64).div_ceil(3));
        // A body cut before any text: nothing generated is seen.
        assert_eq!(estimate_json_output_tokens(&body[..30]), 0);
    }

    #[test]
    fn json_text_counts_decoded_values_only() {
        // a, newline, b, é (2 bytes), 😀 (4 bytes) = 9 bytes.
        assert_eq!(
            json_generated_text_bytes(
                br#"{"content":[{"type":"text","text":"a\nb\u00e9\ud83d\ude00"}]}"#
            ),
            9
        );
        // Family fields, tool input keys and strings; not ids, roles or reasons.
        let body = br#"{"id":"msg_1","role":"assistant","content":[{"type":"tool_use","id":"tu","name":"get","input":{"city":"Paris","n":2}}],"stop_reason":"tool_use"}"#;
        assert_eq!(
            json_generated_text_bytes(body),
            ("city".len() + "Paris".len() + "n".len()) as u64
        );
        for (body, n) in [
            (&br#"{"generation":"hello","prompt_token_count":3}"#[..], 5),
            (br#"{"results":[{"outputText":"hey","tokenCount":1}]}"#, 3),
            (br#"{"completion":"abc","stop_reason":"stop_sequence"}"#, 3),
            (br#"{"outputs":[{"text":"four","stop_reason":"stop"}]}"#, 4),
            (
                br#"{"choices":[{"message":{"role":"assistant","content":"xy"}}]}"#,
                2,
            ),
            // Truncated inside an escape and inside a string.
            (br#"{"generation":"ab\u00"#, 2),
            (br#"{"generation":"abc"#, 3),
            (b"", 0),
            (b"not json at all", 0),
        ] {
            assert_eq!(
                json_generated_text_bytes(body),
                n,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// The borrowing scans must read exactly what the `Value` code reads.
    #[test]
    fn scans_match_value_parsing() {
        let payloads: &[&[u8]] = &[
            br#"{"contentBlockIndex":0,"delta":{"text":"Hello"},"p":"ab"}"#,
            br#"{"delta":{"text":"a\nb\u00e9","thinking":"xy","input":{"k":1}}}"#,
            br#"{"delta":{"toolUse":{"input":"{\"a\":1}"},"reasoningContent":{"text":"hm"}}}"#,
            br#"{"delta":{"text":"first","text":"second!"},"delta":{"text":"last"}}"#,
            br#"{"delta":{"text":5,"partial_json":"[1]","toolUse":"x"}}"#,
            br#"{"delta":"text"}"#,
            br#"[{"delta":{"text":"no"}}]"#,
            br#""str""#,
            br#"{"delta":{"text":"cut"#,
            br#"{"delta":{"text":"ok"}} trailing"#,
            b"",
        ];
        for p in payloads {
            let want = serde_json::from_slice::<Value>(p)
                .ok()
                .map(|v| v.get("delta").map_or(0, delta_text_len));
            assert_eq!(
                scan::converse_delta_text_len(p),
                want,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        let chunks: &[(&[u8], Option<scan::InvokeChunk>)] = &[
            (
                br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"Hi!"}}"#,
                Some(scan::InvokeChunk::Text(3)),
            ),
            (
                br#"{"generation":"hello","outputText":"x","completion":7}"#,
                Some(scan::InvokeChunk::Text(6)),
            ),
            (
                br#"{"type":"content_block_delta","generation":"not counted","delta":{"text":"ab"}}"#,
                Some(scan::InvokeChunk::Text(2)),
            ),
            (
                br#"{"type":"message_delta","usage":{"output_tokens":3}}"#,
                Some(scan::InvokeChunk::NeedsFullParse),
            ),
            (
                br#"{"type":"x","amazon-bedrock-invocationMetrics":null}"#,
                Some(scan::InvokeChunk::NeedsFullParse),
            ),
            (
                br#"{"type":"message_start","type":"ping"}"#,
                Some(scan::InvokeChunk::Text(0)),
            ),
            (br#"[1,2]"#, Some(scan::InvokeChunk::Text(0))),
            (br#"{"type":"#, None),
        ];
        for (p, want) in chunks {
            assert_eq!(
                &scan::invoke_chunk(p),
                want,
                "{}",
                String::from_utf8_lossy(p)
            );
        }
        assert_eq!(
            scan::chunk_bytes(br#"{"bytes":"eyJ9","p":"x","bytes":"YWJj"}"#).as_deref(),
            Some(&b"YWJj"[..])
        );
        assert_eq!(
            scan::chunk_bytes(br#"{"bytes":"a\/b"}"#).as_deref(),
            Some(&b"a/b"[..])
        );
        assert_eq!(scan::chunk_bytes(br#"{"bytes":1}"#), None);
        assert_eq!(scan::chunk_bytes(br#"{"bytes":"YWJj""#), None);
    }
}
