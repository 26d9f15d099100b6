//! Event-stream decode throughput of the filter's usage meter.
//!
//! Builds ~64 MiB of realistic streamed responses (half ConverseStream, half
//! InvokeModelWithResponseStream with Anthropic chunks), each a complete
//! response as Bedrock frames it: `:event-type` headers, JSON payloads with the
//! `p` padding field, many small text deltas, usage at the end. Every response
//! is pushed through a fresh [`StreamMeter`] in 16 KiB chunks, as Envoy hands the
//! filter body chunks; the best of a few passes is reported as JSON on stdout.
//!
//! ```sh
//! cargo run --release --example decode_throughput -p tollgate-filter [-- MiB]
//! ```
//!
//! This runs natively; inside Envoy the same code runs as Wasm under V8, which
//! is slower by a factor that depends on the runtime.

use base64::Engine as _;
use serde_json::json;
use std::hint::black_box;
use std::time::{Duration, Instant};
use tollgate_filter::usage::StreamMeter;
use tollgate_wire::api::Operation;
use tollgate_wire::eventstream::Message;

const CHUNK: usize = 16 * 1024;
const PASSES: usize = 3;
const WORDS: &[&str] = &[
    "the",
    "budget",
    "gateway",
    " tenant",
    " model",
    " tokens",
    " cost",
    " stream",
    " Envoy",
    " of",
    " and",
    " a",
    " to",
    " is",
    " in",
    " that",
    " it",
    " for",
    " response",
    " with",
    "\n",
    ".",
    ",",
    " Bedrock",
    " request",
    " usage",
    " alert",
    " price",
    " ledger",
    " 42",
];

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Bedrock pads event payloads with a `p` field of variable length.
    fn padding(&mut self) -> String {
        let len = 1 + self.below(40);
        (0..len)
            .map(|_| (b'a' + self.below(26) as u8) as char)
            .collect()
    }

    /// A delta of 1–6 words, like a model's token stream.
    fn text(&mut self) -> String {
        (0..1 + self.below(6))
            .map(|_| WORDS[self.below(WORDS.len())])
            .collect()
    }
}

fn frame(kind: &str, v: serde_json::Value) -> Vec<u8> {
    Message::event(kind, serde_json::to_vec(&v).expect("json")).encode()
}

fn converse_stream_response(rng: &mut Rng) -> Vec<u8> {
    let deltas = 50 + rng.below(400);
    let mut out = frame(
        "messageStart",
        json!({"role": "assistant", "p": rng.padding()}),
    );
    for _ in 0..deltas {
        out.extend(frame(
            "contentBlockDelta",
            json!({"contentBlockIndex": 0, "delta": {"text": rng.text()}, "p": rng.padding()}),
        ));
    }
    out.extend(frame(
        "contentBlockStop",
        json!({"contentBlockIndex": 0, "p": rng.padding()}),
    ));
    out.extend(frame(
        "messageStop",
        json!({"stopReason": "end_turn", "p": rng.padding()}),
    ));
    out.extend(frame(
        "metadata",
        json!({"usage": {"inputTokens": 1200, "outputTokens": deltas * 2, "totalTokens": 1200 + deltas * 2},
               "metrics": {"latencyMs": 900}, "p": rng.padding()}),
    ));
    out
}

fn invoke_stream_response(rng: &mut Rng) -> Vec<u8> {
    let b64 = |v: serde_json::Value| {
        base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(&v).expect("json"))
    };
    let chunk = |rng: &mut Rng, v: serde_json::Value| {
        frame("chunk", json!({"bytes": b64(v), "p": rng.padding()}))
    };
    let deltas = 50 + rng.below(400);
    let mut out = chunk(
        rng,
        json!({"type": "message_start", "message": {
            "id": "msg_bdrk_01XyZ", "type": "message", "role": "assistant",
            "model": "claude-3-haiku-20240307", "content": [], "stop_reason": null,
            "stop_sequence": null, "usage": {"input_tokens": 1200, "output_tokens": 1}}}),
    );
    out.extend(chunk(
        rng,
        json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
    ));
    for _ in 0..deltas {
        let text = rng.text();
        out.extend(chunk(
            rng,
            json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}),
        ));
    }
    out.extend(chunk(
        rng,
        json!({"type": "content_block_stop", "index": 0}),
    ));
    out.extend(chunk(
        rng,
        json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null},
               "usage": {"output_tokens": deltas * 2}}),
    ));
    out.extend(chunk(
        rng,
        json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": 1200, "outputTokenCount": deltas * 2,
            "invocationLatency": 900, "firstByteLatency": 100}}),
    ));
    out
}

struct Corpus {
    op: Operation,
    responses: Vec<Vec<u8>>,
    bytes: usize,
}

fn corpus(op: Operation, target_bytes: usize, seed: u64) -> Corpus {
    let mut rng = Rng(seed);
    let mut responses = Vec::new();
    let mut bytes = 0;
    while bytes < target_bytes {
        let r = match op {
            Operation::ConverseStream => converse_stream_response(&mut rng),
            _ => invoke_stream_response(&mut rng),
        };
        bytes += r.len();
        responses.push(r);
    }
    Corpus {
        op,
        responses,
        bytes,
    }
}

/// One pass over the corpus; returns the elapsed time and frames decoded.
fn pass(c: &Corpus) -> (Duration, u64) {
    let start = Instant::now();
    let mut frames = 0;
    for r in &c.responses {
        let mut meter = StreamMeter::new(c.op);
        for chunk in r.chunks(CHUNK) {
            meter.push(black_box(chunk));
        }
        let seen = meter.observation();
        assert!(
            seen.final_usage && seen.corrupt.is_none() && seen.exception.is_none(),
            "the meter did not read a well-formed response: {seen:?}"
        );
        frames += seen.frames;
        black_box(seen);
    }
    (start.elapsed(), frames)
}

fn measure(c: &Corpus) -> serde_json::Value {
    pass(c); // warm-up
    let (best, frames) = (0..PASSES)
        .map(|_| pass(c))
        .min_by_key(|(d, _)| *d)
        .expect("at least one pass");
    let secs = best.as_secs_f64();
    json!({
        "bytes": c.bytes,
        "responses": c.responses.len(),
        "frames": frames,
        "secs": secs,
        "mb_per_s": c.bytes as f64 / 1e6 / secs,
        "frames_per_s": frames as f64 / secs,
    })
}

fn main() {
    let mib: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("argument: total MiB (default 64)"))
        .unwrap_or(64);
    let half = mib * 1024 * 1024 / 2;
    let converse = corpus(Operation::ConverseStream, half, 0x9e37_79b9_7f4a_7c15);
    let invoke = corpus(
        Operation::InvokeWithResponseStream,
        half,
        0xd1b5_4a32_d192_ed03,
    );
    let c = measure(&converse);
    let i = measure(&invoke);
    let bytes = converse.bytes + invoke.bytes;
    let secs = c["secs"].as_f64().unwrap_or(0.0) + i["secs"].as_f64().unwrap_or(0.0);
    let out = json!({
        "bench": "eventstream_decode",
        "chunk_bytes": CHUNK,
        "passes": PASSES,
        "converse_stream": c,
        "invoke_with_response_stream": i,
        "total": {"bytes": bytes, "secs": secs, "mb_per_s": bytes as f64 / 1e6 / secs},
    });
    println!("{out}");
}
