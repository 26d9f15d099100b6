//! Response builders: JSON bodies for Converse/InvokeModel and event-stream
//! frames for the two streaming operations, with fault variants.

use base64::Engine as _;
use serde_json::{json, Map, Value};
use tollgate_wire::eventstream::Message;

use crate::tokens::{Family, Plan};

/// Words per streamed text delta.
pub const WORDS_PER_DELTA: usize = 8;
/// Deltas sent before a `stream-exception` / `stream-cut` fault fires.
pub const DELTAS_BEFORE_FAULT: usize = 2;
const PAD: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// Deterministic pseudo-latency reported in `metrics`/headers (ms).
pub fn latency_ms(plan: &Plan) -> u64 {
    100 + 5 * plan.output_tokens
}
pub const FIRST_BYTE_LATENCY_MS: u64 = 100;

/// Padding like Bedrock's `"p"` field, varying with the frame index.
pub fn padding(i: usize) -> &'static str {
    &PAD[..1 + (i * 7) % PAD.len()]
}

fn stop_reason_converse(plan: &Plan) -> &'static str {
    if plan.hit_max_tokens {
        "max_tokens"
    } else {
        "end_turn"
    }
}

fn converse_usage(plan: &Plan) -> Value {
    let mut u = json!({
        "inputTokens": plan.input_tokens,
        "outputTokens": plan.output_tokens,
        "totalTokens": plan.total_tokens(),
    });
    if let Some(c) = plan.cache {
        u["cacheReadInputTokens"] = json!(c.read);
        u["cacheWriteInputTokens"] = json!(c.write);
    }
    u
}

fn anthropic_usage(plan: &Plan, output_tokens: u64) -> Value {
    let mut u = json!({
        "input_tokens": plan.input_tokens,
        "output_tokens": output_tokens,
    });
    if let Some(c) = plan.cache {
        u["cache_creation_input_tokens"] = json!(c.write);
        u["cache_read_input_tokens"] = json!(c.read);
    }
    u
}

/// Converse response body.
pub fn converse_body(plan: &Plan) -> Value {
    json!({
        "output": {"message": {"role": "assistant", "content": [{"text": plan.output_text()}]}},
        "stopReason": stop_reason_converse(plan),
        "usage": converse_usage(plan),
        "metrics": {"latencyMs": latency_ms(plan)},
    })
}

pub fn message_id(request_id: &str) -> String {
    format!("msg_bdrk_{}", request_id.replace('-', ""))
}

/// InvokeModel response body for the plan's family.
pub fn invoke_body(plan: &Plan, model: &str, request_id: &str) -> Value {
    let text = plan.output_text();
    match plan.family {
        Family::Anthropic => json!({
            "id": message_id(request_id),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [{"type": "text", "text": text}],
            "stop_reason": if plan.hit_max_tokens { "max_tokens" } else { "end_turn" },
            "stop_sequence": null,
            "usage": anthropic_usage(plan, plan.output_tokens),
        }),
        Family::Titan => json!({
            "inputTextTokenCount": plan.input_tokens,
            "results": [{
                "tokenCount": plan.output_tokens,
                "outputText": text,
                "completionReason": if plan.hit_max_tokens { "LENGTH" } else { "FINISH" },
            }],
        }),
        Family::Llama => json!({
            "generation": text,
            "prompt_token_count": plan.input_tokens,
            "generation_token_count": plan.output_tokens,
            "stop_reason": if plan.hit_max_tokens { "length" } else { "stop" },
        }),
        Family::Mistral => json!({
            "outputs": [{"text": text, "stop_reason": if plan.hit_max_tokens { "length" } else { "stop" }}],
        }),
        Family::Nova | Family::Converse => {
            let mut usage = json!({
                "inputTokens": plan.input_tokens,
                "outputTokens": plan.output_tokens,
                "totalTokens": plan.total_tokens(),
            });
            if let Some(c) = plan.cache {
                usage["cacheReadInputTokenCount"] = json!(c.read);
                usage["cacheWriteInputTokenCount"] = json!(c.write);
            }
            json!({
                "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
                "stopReason": stop_reason_converse(plan),
                "usage": usage,
            })
        }
    }
}

/// Token-count headers InvokeModel adds (non-streaming only).
pub fn invoke_headers(plan: &Plan) -> Vec<(&'static str, String)> {
    let mut h = vec![
        (
            "X-Amzn-Bedrock-Input-Token-Count",
            plan.input_tokens.to_string(),
        ),
        (
            "X-Amzn-Bedrock-Output-Token-Count",
            plan.output_tokens.to_string(),
        ),
        (
            "X-Amzn-Bedrock-Invocation-Latency",
            latency_ms(plan).to_string(),
        ),
    ];
    if let Some(c) = plan.cache {
        h.push((
            "X-Amzn-Bedrock-Cache-Read-Input-Token-Count",
            c.read.to_string(),
        ));
        h.push((
            "X-Amzn-Bedrock-Cache-Write-Input-Token-Count",
            c.write.to_string(),
        ));
    }
    h
}

/// Where an event sits in the stream, for truncating it on faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Head,
    Delta,
    Tail,
}

/// Streaming faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFault {
    /// Head + a few deltas, then a `modelStreamErrorException` frame.
    Exception,
    /// Head + a few deltas, then the connection is aborted mid-body.
    Cut,
    /// Full stream, with one byte flipped in a middle frame's payload.
    Corrupt,
}

/// The frames to send and whether to abort the connection afterwards.
#[derive(Debug, Clone, Default)]
pub struct StreamScript {
    pub frames: Vec<Vec<u8>>,
    pub cut: bool,
    /// The usage the stream reports (`None` if it never gets to the end).
    pub reports_usage: bool,
}

fn deltas(plan: &Plan) -> Vec<String> {
    let words = plan.output_words();
    words
        .chunks(WORDS_PER_DELTA)
        .enumerate()
        .map(|(i, c)| {
            let t = c.join(" ");
            if i == 0 {
                t
            } else {
                format!(" {t}")
            }
        })
        .collect()
}

fn with_padding(mut v: Value, i: usize) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.insert("p".into(), Value::String(padding(i).into()));
    }
    v
}

/// ConverseStream events: `(event type, payload without padding, part)`.
fn converse_stream_events(plan: &Plan) -> Vec<(String, Value, Part)> {
    let mut ev = vec![(
        "messageStart".to_owned(),
        json!({"role": "assistant"}),
        Part::Head,
    )];
    for d in deltas(plan) {
        ev.push((
            "contentBlockDelta".into(),
            json!({"contentBlockIndex": 0, "delta": {"text": d}}),
            Part::Delta,
        ));
    }
    ev.push((
        "contentBlockStop".into(),
        json!({"contentBlockIndex": 0}),
        Part::Tail,
    ));
    ev.push((
        "messageStop".into(),
        json!({"stopReason": stop_reason_converse(plan)}),
        Part::Tail,
    ));
    ev.push((
        "metadata".into(),
        json!({"usage": converse_usage(plan), "metrics": {"latencyMs": latency_ms(plan)}}),
        Part::Tail,
    ));
    ev
}

fn invocation_metrics(plan: &Plan) -> Value {
    let mut m = json!({
        "inputTokenCount": plan.input_tokens,
        "outputTokenCount": plan.output_tokens,
        "invocationLatency": latency_ms(plan),
        "firstByteLatency": FIRST_BYTE_LATENCY_MS,
    });
    if let Some(c) = plan.cache {
        m["cacheReadInputTokenCount"] = json!(c.read);
        m["cacheWriteInputTokenCount"] = json!(c.write);
    }
    m
}

/// Decoded InvokeModelWithResponseStream chunk JSONs for the plan's family.
fn invoke_stream_chunks(plan: &Plan, model: &str, request_id: &str) -> Vec<(Value, Part)> {
    let ds = deltas(plan);
    let metrics = invocation_metrics(plan);
    let mut out = Vec::new();
    match plan.family {
        Family::Anthropic => {
            out.push((
                json!({"type": "message_start", "message": {
                    "id": message_id(request_id),
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": null,
                    "stop_sequence": null,
                    "usage": anthropic_usage(plan, 1),
                }}),
                Part::Head,
            ));
            out.push((
                json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
                Part::Head,
            ));
            for d in ds {
                out.push((
                    json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": d}}),
                    Part::Delta,
                ));
            }
            out.push((
                json!({"type": "content_block_stop", "index": 0}),
                Part::Tail,
            ));
            out.push((
                json!({"type": "message_delta",
                    "delta": {"stop_reason": if plan.hit_max_tokens { "max_tokens" } else { "end_turn" }, "stop_sequence": null},
                    "usage": {"output_tokens": plan.output_tokens}}),
                Part::Tail,
            ));
            out.push((
                json!({"type": "message_stop", "amazon-bedrock-invocationMetrics": metrics}),
                Part::Tail,
            ));
        }
        Family::Nova | Family::Converse => {
            out.push((json!({"messageStart": {"role": "assistant"}}), Part::Head));
            for d in ds {
                out.push((
                    json!({"contentBlockDelta": {"delta": {"text": d}, "contentBlockIndex": 0}}),
                    Part::Delta,
                ));
            }
            out.push((
                json!({"contentBlockStop": {"contentBlockIndex": 0}}),
                Part::Tail,
            ));
            out.push((
                json!({"messageStop": {"stopReason": stop_reason_converse(plan)}}),
                Part::Tail,
            ));
            out.push((
                json!({"metadata": {"usage": {"inputTokens": plan.input_tokens, "outputTokens": plan.output_tokens}},
                       "amazon-bedrock-invocationMetrics": metrics}),
                Part::Tail,
            ));
        }
        Family::Titan | Family::Llama | Family::Mistral => {
            let mut emitted = 0u64;
            let stop = |last: bool| -> Value {
                match (last, plan.family, plan.hit_max_tokens) {
                    (false, _, _) => Value::Null,
                    (true, Family::Titan, true) => json!("LENGTH"),
                    (true, Family::Titan, false) => json!("FINISH"),
                    (true, _, true) => json!("length"),
                    (true, _, false) => json!("stop"),
                }
            };
            // Always at least one chunk, so the final one can carry the metrics.
            let ds = if ds.is_empty() {
                vec![String::new()]
            } else {
                ds
            };
            for (i, d) in ds.iter().enumerate() {
                let last = i + 1 == ds.len();
                emitted += d.split_whitespace().count() as u64;
                let mut v = match plan.family {
                    Family::Titan => json!({
                        "outputText": d,
                        "index": 0,
                        "totalOutputTextTokenCount": emitted,
                        "completionReason": stop(last),
                        "inputTextTokenCount": if i == 0 { json!(plan.input_tokens) } else { Value::Null },
                    }),
                    Family::Llama => json!({
                        "generation": d,
                        "prompt_token_count": if i == 0 { json!(plan.input_tokens) } else { Value::Null },
                        "generation_token_count": emitted,
                        "stop_reason": stop(last),
                    }),
                    _ => json!({"outputs": [{"text": d, "stop_reason": stop(last)}]}),
                };
                if last {
                    v["amazon-bedrock-invocationMetrics"] = metrics.clone();
                }
                let part = if last { Part::Tail } else { Part::Delta };
                out.push((v, part));
            }
        }
    }
    out
}

fn encode_json(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

/// Applies a fault to a list of encoded events tagged with their part.
fn script(events: Vec<(Vec<u8>, Part)>, fault: Option<StreamFault>) -> StreamScript {
    match fault {
        None => StreamScript {
            frames: events.into_iter().map(|(f, _)| f).collect(),
            cut: false,
            reports_usage: true,
        },
        Some(StreamFault::Corrupt) => {
            let mut frames: Vec<Vec<u8>> = events.into_iter().map(|(f, _)| f).collect();
            let mid = frames.len() / 2;
            if let Some(f) = frames.get_mut(mid) {
                corrupt_payload(f);
            }
            StreamScript {
                frames,
                cut: false,
                reports_usage: true,
            }
        }
        Some(f @ (StreamFault::Exception | StreamFault::Cut)) => {
            let mut deltas = 0;
            let mut frames = Vec::new();
            for (frame, part) in events {
                match part {
                    Part::Head => frames.push(frame),
                    Part::Delta if deltas < DELTAS_BEFORE_FAULT => {
                        deltas += 1;
                        frames.push(frame);
                    }
                    _ => {}
                }
            }
            if f == StreamFault::Exception {
                let payload = json!({"message": "The model stream was interrupted by an emulated modelStreamErrorException."});
                frames.push(
                    Message::exception("modelStreamErrorException", encode_json(&payload)).encode(),
                );
            }
            StreamScript {
                frames,
                cut: f == StreamFault::Cut,
                reports_usage: false,
            }
        }
    }
}

/// Flips one byte in the middle of an encoded frame's payload (CRC then fails).
pub fn corrupt_payload(frame: &mut [u8]) {
    if frame.len() < 16 {
        return;
    }
    let headers_len = u32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]) as usize;
    let start = 12 + headers_len;
    let end = frame.len() - 4;
    if start < end {
        frame[start + (end - start) / 2] ^= 0x20;
    }
}

/// ConverseStream frames.
pub fn converse_stream(plan: &Plan, fault: Option<StreamFault>) -> StreamScript {
    let events = converse_stream_events(plan)
        .into_iter()
        .enumerate()
        .map(|(i, (ty, payload, part))| {
            let payload = encode_json(&with_padding(payload, i));
            (Message::event(&ty, payload).encode(), part)
        })
        .collect();
    script(events, fault)
}

/// InvokeModelWithResponseStream frames (`chunk` events with base64 `bytes`).
pub fn invoke_stream(
    plan: &Plan,
    model: &str,
    request_id: &str,
    fault: Option<StreamFault>,
) -> StreamScript {
    let b64 = base64::engine::general_purpose::STANDARD;
    let events = invoke_stream_chunks(plan, model, request_id)
        .into_iter()
        .enumerate()
        .map(|(i, (chunk, part))| {
            let mut outer = Map::new();
            outer.insert(
                "bytes".into(),
                Value::String(b64.encode(encode_json(&chunk))),
            );
            outer.insert("p".into(), Value::String(padding(i).into()));
            let payload = encode_json(&Value::Object(outer));
            (Message::event("chunk", payload).encode(), part)
        })
        .collect();
    script(events, fault)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokens::plan;
    use tollgate_wire::eventstream::Decoder;

    fn decode_all(frames: &[Vec<u8>]) -> Vec<Message> {
        let mut d = Decoder::new();
        let mut out = Vec::new();
        for f in frames {
            d.push(f);
            while let Some(m) = d.next_message() {
                out.push(m.expect("valid frame"));
            }
        }
        assert_eq!(d.pending(), 0);
        out
    }

    fn payload(m: &Message) -> Value {
        serde_json::from_slice(&m.payload).unwrap()
    }

    fn converse_plan(text: &str, max: Option<u64>) -> Plan {
        let mut body = json!({"messages": [{"role": "user", "content": [{"text": text}]}]});
        if let Some(m) = max {
            body["inferenceConfig"] = json!({"maxTokens": m});
        }
        plan(true, "anthropic.claude-3-haiku-20240307-v1:0", &body).unwrap()
    }

    fn anthropic_plan(text: &str) -> Plan {
        let body = json!({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 100,
            "messages": [{"role": "user", "content": text}]});
        plan(false, "anthropic.claude-3-haiku-20240307-v1:0", &body).unwrap()
    }

    #[test]
    fn converse_json_shape() {
        let p = converse_plan(&"x".repeat(400), None); // 100 in, 70 out
        let b = converse_body(&p);
        assert_eq!(b["usage"]["inputTokens"], 100);
        assert_eq!(b["usage"]["outputTokens"], 70);
        assert_eq!(b["usage"]["totalTokens"], 170);
        assert!(b["usage"].get("cacheReadInputTokens").is_none());
        assert_eq!(b["stopReason"], "end_turn");
        let text = b["output"]["message"]["content"][0]["text"]
            .as_str()
            .unwrap();
        assert_eq!(text.split(' ').count(), 70);
        assert!(text.starts_with("tok0 tok1 "));
        assert!(b["metrics"]["latencyMs"].is_u64());

        let p = converse_plan("[[cache:read=50,write=5]]", Some(3));
        let b = converse_body(&p);
        assert_eq!(b["stopReason"], "max_tokens");
        assert_eq!(b["usage"]["cacheReadInputTokens"], 50);
        assert_eq!(b["usage"]["cacheWriteInputTokens"], 5);
        assert_eq!(b["usage"]["totalTokens"], 7 + 3 + 55);
    }

    #[test]
    fn converse_stream_decodes_with_usage() {
        let p = converse_plan(&"y".repeat(80), None); // 20 in, 30 out
        let s = converse_stream(&p, None);
        assert!(s.reports_usage && !s.cut);
        let msgs = decode_all(&s.frames);
        let types: Vec<&str> = msgs.iter().map(|m| m.event_type().unwrap()).collect();
        assert_eq!(types[0], "messageStart");
        assert_eq!(
            &types[types.len() - 3..],
            ["contentBlockStop", "messageStop", "metadata"]
        );
        assert_eq!(
            types.iter().filter(|t| **t == "contentBlockDelta").count(),
            4
        ); // 30/8
        let text: String = msgs
            .iter()
            .filter(|m| m.event_type() == Some("contentBlockDelta"))
            .map(|m| payload(m)["delta"]["text"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, p.output_text());
        let meta = payload(msgs.last().unwrap());
        assert_eq!(meta["usage"]["inputTokens"], 20);
        assert_eq!(meta["usage"]["outputTokens"], 30);
        assert_eq!(meta["usage"]["totalTokens"], 50);
        let pads: std::collections::HashSet<usize> = msgs
            .iter()
            .map(|m| payload(m)["p"].as_str().unwrap().len())
            .collect();
        assert!(pads.len() > 1, "padding should vary");
    }

    #[test]
    fn invoke_anthropic_json_and_headers() {
        let p = anthropic_plan(&"z".repeat(40)); // 10 in, 25 out
        let b = invoke_body(&p, "anthropic.claude", "req-1");
        assert_eq!(b["type"], "message");
        assert_eq!(b["usage"]["input_tokens"], 10);
        assert_eq!(b["usage"]["output_tokens"], 25);
        assert_eq!(b["content"][0]["type"], "text");
        let h = invoke_headers(&p);
        assert!(h.contains(&("X-Amzn-Bedrock-Input-Token-Count", "10".into())));
        assert!(h.contains(&("X-Amzn-Bedrock-Output-Token-Count", "25".into())));
        assert_eq!(h.len(), 3);
        let p = anthropic_plan("[[cache:read=9,write=1]]");
        assert_eq!(invoke_headers(&p).len(), 5);
        assert_eq!(
            invoke_body(&p, "m", "r")["usage"]["cache_read_input_tokens"],
            9
        );
    }

    fn chunk_jsons(s: &StreamScript) -> Vec<Value> {
        let b64 = base64::engine::general_purpose::STANDARD;
        decode_all(&s.frames)
            .iter()
            .filter(|m| m.event_type() == Some("chunk"))
            .map(|m| {
                let outer = payload(m);
                assert!(outer["p"].is_string());
                let raw = b64.decode(outer["bytes"].as_str().unwrap()).unwrap();
                serde_json::from_slice(&raw).unwrap()
            })
            .collect()
    }

    #[test]
    fn invoke_stream_anthropic_sequence() {
        let p = anthropic_plan(&"z".repeat(40)); // 10 in, 25 out
        let chunks = chunk_jsons(&invoke_stream(&p, "m", "r", None));
        let types: Vec<&str> = chunks.iter().map(|c| c["type"].as_str().unwrap()).collect();
        assert_eq!(
            types,
            [
                "message_start",
                "content_block_start",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_delta",
                "content_block_stop",
                "message_delta",
                "message_stop"
            ]
        );
        assert_eq!(chunks[0]["message"]["usage"]["input_tokens"], 10);
        assert_eq!(chunks[0]["message"]["usage"]["output_tokens"], 1);
        assert_eq!(chunks[7]["usage"]["output_tokens"], 25);
        let m = &chunks[8]["amazon-bedrock-invocationMetrics"];
        assert_eq!(
            (
                m["inputTokenCount"].as_u64(),
                m["outputTokenCount"].as_u64()
            ),
            (Some(10), Some(25))
        );
    }

    #[test]
    fn invoke_stream_other_families_end_with_metrics() {
        for body in [
            json!({"inputText": "abcd"}),
            json!({"prompt": "abcd", "max_gen_len": 30}),
            json!({"prompt": "abcd", "max_tokens": 0}),
            json!({"messages": [{"role": "user", "content": [{"text": "abcd"}]}], "inferenceConfig": {}}),
        ] {
            let p = plan(false, "x", &body).unwrap();
            let chunks = chunk_jsons(&invoke_stream(&p, "x", "r", None));
            let m = &chunks.last().unwrap()["amazon-bedrock-invocationMetrics"];
            assert_eq!(
                m["outputTokenCount"].as_u64(),
                Some(p.output_tokens),
                "{body}"
            );
            assert_eq!(m["inputTokenCount"].as_u64(), Some(1));
        }
    }

    #[test]
    fn stream_faults() {
        let p = converse_plan(&"y".repeat(400), None); // 100 in, 70 out: 9 deltas
        let s = converse_stream(&p, Some(StreamFault::Exception));
        assert!(!s.reports_usage && !s.cut);
        let msgs = decode_all(&s.frames);
        assert_eq!(msgs.len(), 1 + DELTAS_BEFORE_FAULT + 1);
        let last = msgs.last().unwrap();
        assert_eq!(last.message_type(), Some("exception"));
        assert_eq!(last.exception_type(), Some("modelStreamErrorException"));
        assert!(payload(last)["message"].is_string());

        let s = converse_stream(&p, Some(StreamFault::Cut));
        assert!(s.cut);
        assert!(decode_all(&s.frames)
            .iter()
            .all(|m| m.event_type() != Some("metadata")));

        let s = invoke_stream(
            &anthropic_plan("hello"),
            "m",
            "r",
            Some(StreamFault::Exception),
        );
        let msgs = decode_all(&s.frames);
        assert_eq!(
            msgs.last().unwrap().exception_type(),
            Some("modelStreamErrorException")
        );

        let s = converse_stream(&p, Some(StreamFault::Corrupt));
        let mid = s.frames.len() / 2;
        let mut d = Decoder::new();
        let mut ok = 0;
        let mut failed = false;
        for f in &s.frames {
            d.push(f);
            while let Some(m) = d.next_message() {
                match m {
                    Ok(_) => ok += 1,
                    Err(_) => failed = true,
                }
            }
        }
        assert!(failed);
        assert_eq!(ok, mid);
        // The frames after the corrupt one are intact on their own.
        assert_eq!(
            decode_all(&s.frames[mid + 1..])
                .last()
                .unwrap()
                .event_type(),
            Some("metadata")
        );
    }
}
