//! Differential test: event streams encoded by AWS's own event-stream crate
//! (`aws-smithy-eventstream`, used by aws-sdk-rust) in the shapes Bedrock sends,
//! fed to the filter's `StreamMeter` cut at random points, must be metered
//! exactly. Also checks `tollgate_wire::eventstream` against that crate both
//! ways (the filter encodes the exception frames it injects). Native only: the
//! AWS crates are not built for wasm32.
#![cfg(not(target_arch = "wasm32"))]

use aws_smithy_eventstream::frame::{read_message_from, write_message_to};
use aws_smithy_types::event_stream::{
    Header as AwsHeader, HeaderValue as AwsValue, Message as AwsMessage,
};
use aws_smithy_types::DateTime;
use base64::Engine as _;
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{json, Value};
use tollgate_filter::usage::StreamMeter;
use tollgate_wire::api::{Operation, Usage};
use tollgate_wire::eventstream::{Decoder, Header, HeaderValue, Message};

/// Any event-stream header value, in tollgate's representation.
fn header_value() -> impl Strategy<Value = HeaderValue> {
    prop_oneof![
        any::<bool>().prop_map(HeaderValue::Bool),
        any::<i8>().prop_map(HeaderValue::Byte),
        any::<i16>().prop_map(HeaderValue::Int16),
        any::<i32>().prop_map(HeaderValue::Int32),
        any::<i64>().prop_map(HeaderValue::Int64),
        proptest::collection::vec(any::<u8>(), 0..40).prop_map(HeaderValue::Bytes),
        ".{0,30}".prop_map(HeaderValue::String),
        // smithy's DateTime holds any i64 of milliseconds only within its range.
        (-(1i64 << 50)..(1i64 << 50)).prop_map(HeaderValue::Timestamp),
        any::<[u8; 16]>().prop_map(HeaderValue::Uuid),
    ]
}

/// Extra headers Bedrock does not send but a decoder must skip.
fn extra_headers() -> impl Strategy<Value = Vec<Header>> {
    proptest::collection::vec(
        ("[a-z][a-z0-9-]{0,12}", header_value()).prop_map(|(name, value)| Header { name, value }),
        0..3,
    )
}

fn to_aws(h: &Header) -> AwsHeader {
    let v = match &h.value {
        HeaderValue::Bool(b) => AwsValue::Bool(*b),
        HeaderValue::Byte(b) => AwsValue::Byte(*b),
        HeaderValue::Int16(i) => AwsValue::Int16(*i),
        HeaderValue::Int32(i) => AwsValue::Int32(*i),
        HeaderValue::Int64(i) => AwsValue::Int64(*i),
        HeaderValue::Bytes(b) => AwsValue::ByteArray(b.clone().into()),
        HeaderValue::String(s) => AwsValue::String(s.clone().into()),
        HeaderValue::Timestamp(ms) => AwsValue::Timestamp(DateTime::from_millis(*ms)),
        HeaderValue::Uuid(u) => AwsValue::Uuid(u128::from_be_bytes(*u)),
    };
    AwsHeader::new(h.name.clone(), v)
}

fn from_aws(h: &AwsHeader) -> Header {
    let value = match h.value() {
        AwsValue::Bool(b) => HeaderValue::Bool(*b),
        AwsValue::Byte(b) => HeaderValue::Byte(*b),
        AwsValue::Int16(i) => HeaderValue::Int16(*i),
        AwsValue::Int32(i) => HeaderValue::Int32(*i),
        AwsValue::Int64(i) => HeaderValue::Int64(*i),
        AwsValue::ByteArray(b) => HeaderValue::Bytes(b.to_vec()),
        AwsValue::String(s) => HeaderValue::String(s.as_str().to_owned()),
        AwsValue::Timestamp(t) => HeaderValue::Timestamp(t.to_millis().unwrap()),
        AwsValue::Uuid(u) => HeaderValue::Uuid(u.to_be_bytes()),
        other => panic!("header type this test does not generate: {other:?}"),
    };
    Header {
        name: h.name().as_str().to_owned(),
        value,
    }
}

/// Encodes with AWS's encoder.
fn aws_encode(m: &Message) -> Vec<u8> {
    let msg = AwsMessage::new_from_parts(m.headers.iter().map(to_aws).collect(), m.payload.clone());
    let mut out = Vec::new();
    write_message_to(&msg, &mut out).unwrap();
    out
}

/// A Bedrock event: the three standard headers plus `extra`, shuffled by `order`.
fn event(event_type: &str, payload: &Value, extra: &[Header], order: &[Index]) -> Message {
    let mut headers = vec![
        Header::string(":event-type", event_type),
        Header::string(":content-type", "application/json"),
        Header::string(":message-type", "event"),
    ];
    headers.extend(extra.iter().cloned());
    // Header order is not fixed by the format; decoders must not rely on it.
    for (i, ix) in order.iter().enumerate().take(headers.len()) {
        let j = ix.index(headers.len());
        headers.swap(i, j);
    }
    Message {
        headers,
        payload: serde_json::to_vec(payload).unwrap(),
    }
}

/// Bedrock's random-length padding field `"p"`.
fn pad(n: usize) -> String {
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"[..n % 62].to_owned()
}

/// The parts of one random response stream.
#[derive(Debug, Clone)]
struct Stream {
    texts: Vec<String>,
    usage: Usage,
    /// Which InvokeModel family: 0 is Anthropic Messages, others stream their text
    /// in a family field.
    family: usize,
    extra: Vec<Vec<Header>>,
    order: Vec<Index>,
    pads: Vec<usize>,
    cuts: Vec<Index>,
}

fn stream() -> impl Strategy<Value = Stream> {
    let tokens = 0u64..(1 << 40);
    (
        proptest::collection::vec(any::<String>(), 0..6),
        (
            tokens.clone(),
            tokens.clone(),
            tokens.clone(),
            tokens.clone(),
        ),
        0usize..4,
        proptest::collection::vec(extra_headers(), 12),
        proptest::collection::vec(any::<Index>(), 6),
        proptest::collection::vec(0usize..62, 12),
        proptest::collection::vec(any::<Index>(), 0..12),
    )
        .prop_map(
            |(texts, (i, o, cr, cw), family, extra, order, pads, cuts)| Stream {
                texts,
                usage: Usage {
                    input_tokens: i,
                    output_tokens: o,
                    cache_read_input_tokens: cr,
                    cache_write_input_tokens: cw,
                },
                family,
                extra,
                order,
                pads,
                cuts,
            },
        )
}

impl Stream {
    fn text_bytes(&self) -> u64 {
        self.texts.iter().map(|t| t.len() as u64).sum()
    }

    /// The `k`-th event of this stream, with its share of extra headers.
    fn event(&self, k: usize, event_type: &str, mut payload: Value) -> Message {
        payload["p"] = json!(pad(self.pads[k % self.pads.len()]));
        event(
            event_type,
            &payload,
            &self.extra[k % self.extra.len()],
            &self.order,
        )
    }

    /// ConverseStream: text deltas, then `metadata` with `usage`.
    fn converse(&self) -> Vec<Message> {
        let u = &self.usage;
        let mut payloads = vec![("messageStart", json!({"role": "assistant"}))];
        for t in &self.texts {
            payloads.push((
                "contentBlockDelta",
                json!({"contentBlockIndex": 0, "delta": {"text": t}}),
            ));
        }
        payloads.push(("contentBlockStop", json!({"contentBlockIndex": 0})));
        payloads.push(("messageStop", json!({"stopReason": "end_turn"})));
        payloads.push((
            "metadata",
            json!({
                "usage": {
                    "inputTokens": u.input_tokens,
                    "outputTokens": u.output_tokens,
                    "totalTokens": u.input_tokens + u.output_tokens,
                    "cacheReadInputTokens": u.cache_read_input_tokens,
                    "cacheWriteInputTokens": u.cache_write_input_tokens,
                },
                "metrics": {"latencyMs": 1841},
            }),
        ));
        payloads
            .into_iter()
            .enumerate()
            .map(|(k, (t, p))| self.event(k, t, p))
            .collect()
    }

    /// InvokeModelWithResponseStream: every event a `chunk` of base64 JSON; the
    /// last one carries `amazon-bedrock-invocationMetrics`.
    fn invoke(&self) -> Vec<Message> {
        let u = &self.usage;
        let metrics = json!({
            "inputTokenCount": u.input_tokens,
            "outputTokenCount": u.output_tokens,
            "invocationLatency": 2033,
            "firstByteLatency": 1229,
        });
        let mut inner = Vec::new();
        if self.family == 0 {
            // Cache counts reach the meter only through `message_start`.
            inner.push(json!({"type": "message_start", "message": {
            "id": "msg_bdrk_01", "role": "assistant", "content": [],
            "usage": {
                "input_tokens": u.input_tokens,
                "output_tokens": 1,
                "cache_read_input_tokens": u.cache_read_input_tokens,
                "cache_creation_input_tokens": u.cache_write_input_tokens,
            }}}));
            inner.push(json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}));
            for t in &self.texts {
                inner.push(json!({"type": "content_block_delta", "index": 0,
                    "delta": {"type": "text_delta", "text": t}}));
            }
            inner.push(json!({"type": "content_block_stop", "index": 0}));
            inner.push(json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"},
                "usage": {"output_tokens": u.output_tokens}}));
            inner.push(json!({"type": "message_stop",
                "amazon-bedrock-invocationMetrics": metrics}));
        } else {
            let key = ["outputText", "generation", "completion"][self.family - 1];
            for t in &self.texts {
                inner.push(json!({ key: t, "index": 0 }));
            }
            // These families have no other source of cache counts.
            let mut metrics = metrics;
            metrics["cacheReadInputTokenCount"] = json!(u.cache_read_input_tokens);
            metrics["cacheWriteInputTokenCount"] = json!(u.cache_write_input_tokens);
            inner.push(json!({ key: "", "stop_reason": "stop",
                "amazon-bedrock-invocationMetrics": metrics }));
        }
        inner
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let b = base64::engine::general_purpose::STANDARD
                    .encode(serde_json::to_vec(v).unwrap());
                self.event(k, "chunk", json!({ "bytes": b }))
            })
            .collect()
    }

    /// Meters the AWS-encoded `messages` pushed in pieces cut at `self.cuts`.
    fn meter(&self, op: Operation, messages: &[Message]) -> StreamMeter {
        let bytes: Vec<u8> = messages.iter().flat_map(aws_encode).collect();
        let mut cuts: Vec<usize> = self.cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut m = StreamMeter::new(op);
        let mut at = 0;
        // Repeated cuts push empty chunks, which must be harmless too.
        for c in cuts.into_iter().chain([bytes.len()]) {
            m.push(&bytes[at..c]);
            at = c;
        }
        m
    }
}

proptest! {
    // 64 cases of up to ~12 frames each: well under a second natively.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn converse_stream_is_metered_exactly(s in stream()) {
        let messages = s.converse();
        let m = s.meter(Operation::ConverseStream, &messages);
        let o = m.observation();
        prop_assert_eq!(&o.corrupt, &None);
        prop_assert_eq!(&o.exception, &None);
        prop_assert_eq!(o.frames, messages.len() as u64);
        prop_assert!(o.final_usage);
        prop_assert_eq!(o.usage, Some(s.usage));
        prop_assert_eq!(o.text_bytes, s.text_bytes());
    }

    #[test]
    fn invoke_stream_is_metered_exactly(s in stream()) {
        let messages = s.invoke();
        let m = s.meter(Operation::InvokeWithResponseStream, &messages);
        let o = m.observation();
        prop_assert_eq!(&o.corrupt, &None);
        prop_assert_eq!(&o.exception, &None);
        prop_assert_eq!(o.frames, messages.len() as u64);
        prop_assert!(o.final_usage);
        prop_assert_eq!(o.usage, Some(s.usage));
        prop_assert_eq!(o.text_bytes, s.text_bytes());
    }

    /// AWS-encoded frames decode to the same headers and payload with
    /// tollgate's decoder, pulled or fed, whatever the cuts.
    #[test]
    fn aws_frames_decode_identically(
        extra in proptest::collection::vec(extra_headers(), 1..6),
        payloads in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 1..6),
        cuts in proptest::collection::vec(any::<Index>(), 0..8),
    ) {
        let messages: Vec<Message> = payloads
            .into_iter()
            .zip(extra.iter().cycle())
            .map(|(payload, headers)| Message { headers: headers.clone(), payload })
            .collect();
        let bytes: Vec<u8> = messages.iter().flat_map(aws_encode).collect();
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut d = Decoder::new();
        let mut got = Vec::new();
        // The same cuts through `feed`, which reads frames in place.
        let mut fed = Decoder::new();
        let mut got_fed = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([bytes.len()]) {
            d.push(&bytes[at..c]);
            fed.feed(&bytes[at..c], |f| got_fed.push(f.unwrap().to_message().unwrap()));
            at = c;
            while let Some(m) = d.next_message() {
                got.push(m.unwrap());
            }
        }
        prop_assert_eq!(d.pending(), 0);
        prop_assert_eq!(fed.pending(), 0);
        prop_assert_eq!(&got, &messages);
        prop_assert_eq!(got_fed, messages);
    }

    /// Frames tollgate encodes (the exception frames the filter injects, the
    /// emulator's streams) decode with AWS's decoder to the same message.
    #[test]
    fn tollgate_frames_decode_with_aws(
        headers in extra_headers(),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let m = Message { headers, payload };
        let bytes = m.encode();
        prop_assert_eq!(&bytes, &aws_encode(&m));
        let aws = read_message_from(&bytes[..]).unwrap();
        let back = Message {
            headers: aws.headers().iter().map(from_aws).collect(),
            payload: aws.payload().to_vec(),
        };
        prop_assert_eq!(back, m);
    }
}
