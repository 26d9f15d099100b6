//! Request body readers and the deterministic token formula (see the crate docs
//! in `main.rs` and `README.md`).

use serde_json::Value;
use thiserror::Error;

/// `max_tokens` when the request does not set one.
pub const DEFAULT_MAX_TOKENS: u64 = 512;

/// Which body/response dialect a request uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Converse / ConverseStream API.
    Converse,
    /// InvokeModel with an Anthropic Messages body.
    Anthropic,
    /// Amazon Titan Text (`inputText`).
    Titan,
    /// Meta Llama (`prompt`, `max_gen_len`).
    Llama,
    /// Mistral (`prompt`, `max_tokens`).
    Mistral,
    /// Amazon Nova (`messages` with `content[].text`, `inferenceConfig`).
    Nova,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Converse => "converse",
            Family::Anthropic => "anthropic",
            Family::Titan => "titan",
            Family::Llama => "llama",
            Family::Mistral => "mistral",
            Family::Nova => "nova",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("Malformed input request: {0}")]
    Malformed(String),
}

/// Everything the emulator decides about one request before answering it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub family: Family,
    /// UTF-8 bytes of all text the model reads (pieces are not separated).
    pub input_bytes: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub max_tokens: u64,
    /// `output_tokens` was capped by `max_tokens`.
    pub hit_max_tokens: bool,
    /// `[[cache:read=N,write=M]]`, summed over all markers; `None` if absent.
    pub cache: Option<CacheTokens>,
    /// `[[fault:NAME]]` found in the text (first one wins).
    pub fault_marker: Option<String>,
    /// `[[delay:MS]]`: pause between stream frames for this request (first wins).
    pub stream_delay_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheTokens {
    pub read: u64,
    pub write: u64,
}

impl Plan {
    pub fn cache_read(&self) -> u64 {
        self.cache.map_or(0, |c| c.read)
    }
    pub fn cache_write(&self) -> u64 {
        self.cache.map_or(0, |c| c.write)
    }
    /// Bedrock's `totalTokens`: input + output + cache read + cache write.
    pub fn total_tokens(&self) -> u64 {
        self.input_tokens + self.output_tokens + self.cache_read() + self.cache_write()
    }
    /// The generated text: `tok0 tok1 …`, one word per output token.
    pub fn output_words(&self) -> Vec<String> {
        output_words(self.output_tokens)
    }
    pub fn output_text(&self) -> String {
        self.output_words().join(" ")
    }
}

pub fn output_words(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("tok{i}")).collect()
}

/// `max(1, ceil(bytes / 4))`.
pub fn input_tokens_for_bytes(bytes: u64) -> u64 {
    bytes.div_ceil(4).max(1)
}

/// `min(max_tokens, 20 + input_tokens / 2)` (integer division).
pub fn output_tokens_for(input_tokens: u64, max_tokens: u64) -> u64 {
    (20 + input_tokens / 2).min(max_tokens)
}

/// Reads `body` for operation family and computes the plan.
/// `converse` selects the Converse reader; otherwise the InvokeModel family is
/// detected from the body (and `model` id as a tie-breaker).
pub fn plan(converse: bool, model: &str, body: &Value) -> Result<Plan, BodyError> {
    let obj = body
        .as_object()
        .ok_or_else(|| BodyError::Malformed("request body must be a JSON object".into()))?;
    let family = if converse {
        Family::Converse
    } else {
        detect_family(model, body)?
    };
    let mut texts: Vec<&str> = Vec::new();
    let max = match family {
        Family::Converse | Family::Nova => {
            if !obj.contains_key("messages") {
                return Err(BodyError::Malformed(
                    "#: required key [messages] not found".into(),
                ));
            }
            collect_block_texts(body.get("system"), &mut texts);
            for m in array(body.get("messages"), "messages")? {
                collect_block_texts(m.get("content"), &mut texts);
            }
            let key = if family == Family::Converse {
                "maxTokens"
            } else {
                "max_new_tokens"
            };
            max_tokens(body.get("inferenceConfig").and_then(|c| c.get(key)), key)?
        }
        Family::Anthropic => {
            collect_anthropic_content(body.get("system"), &mut texts);
            for m in array(body.get("messages"), "messages")? {
                collect_anthropic_content(m.get("content"), &mut texts);
            }
            max_tokens(body.get("max_tokens"), "max_tokens")?
        }
        Family::Titan => {
            if let Some(t) = body.get("inputText").and_then(Value::as_str) {
                texts.push(t);
            }
            max_tokens(
                body.get("textGenerationConfig")
                    .and_then(|c| c.get("maxTokenCount")),
                "maxTokenCount",
            )?
        }
        Family::Llama | Family::Mistral => {
            if let Some(t) = body.get("prompt").and_then(Value::as_str) {
                texts.push(t);
            }
            if family == Family::Llama {
                max_tokens(body.get("max_gen_len"), "max_gen_len")?
            } else {
                max_tokens(body.get("max_tokens"), "max_tokens")?
            }
        }
    };
    let input_bytes: u64 = texts.iter().map(|t| t.len() as u64).sum();
    let input_tokens = input_tokens_for_bytes(input_bytes);
    let output_tokens = output_tokens_for(input_tokens, max);
    let mut cache: Option<CacheTokens> = None;
    let mut fault_marker = None;
    let mut stream_delay_ms = None;
    for t in &texts {
        if stream_delay_ms.is_none() {
            stream_delay_ms = markers(t, "[[delay:")
                .into_iter()
                .find_map(|m| m.trim().parse::<u64>().ok())
                .map(|ms| ms.min(10_000));
        }
        for c in cache_markers(t) {
            let acc = cache.get_or_insert_with(CacheTokens::default);
            acc.read += c.read;
            acc.write += c.write;
        }
        if fault_marker.is_none() {
            fault_marker = fault_markers(t).into_iter().next();
        }
    }
    Ok(Plan {
        family,
        input_bytes,
        input_tokens,
        output_tokens,
        max_tokens: max,
        hit_max_tokens: output_tokens < 20 + input_tokens / 2,
        cache,
        fault_marker,
        stream_delay_ms,
    })
}

fn detect_family(model: &str, body: &Value) -> Result<Family, BodyError> {
    let model = model.to_ascii_lowercase();
    if body.get("anthropic_version").is_some() {
        return Ok(Family::Anthropic);
    }
    if let Some(messages) = body.get("messages") {
        let nova_shaped = body.get("inferenceConfig").is_some()
            || body.get("schemaVersion").is_some()
            || model.contains("nova");
        // Anthropic content blocks carry `type`; Nova/Converse blocks do not.
        let has_typed_blocks = messages.as_array().is_some_and(|ms| {
            ms.iter().any(|m| match m.get("content") {
                Some(Value::String(_)) => true,
                Some(Value::Array(bs)) => bs.iter().any(|b| b.get("type").is_some()),
                _ => false,
            })
        });
        return Ok(if nova_shaped && !has_typed_blocks {
            Family::Nova
        } else {
            Family::Anthropic
        });
    }
    if body.get("inputText").is_some() {
        return Ok(Family::Titan);
    }
    if body.get("prompt").is_some() {
        let mistral = model.contains("mistral")
            || (body.get("max_tokens").is_some() && body.get("max_gen_len").is_none());
        return Ok(if mistral {
            Family::Mistral
        } else {
            Family::Llama
        });
    }
    Err(BodyError::Malformed(
        "unrecognised model body: expected one of anthropic_version/messages, inputText, prompt"
            .into(),
    ))
}

fn array<'a>(v: Option<&'a Value>, name: &str) -> Result<&'a [Value], BodyError> {
    match v {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(BodyError::Malformed(format!(
            "#/{name}: expected type: JSONArray"
        ))),
    }
}

fn max_tokens(v: Option<&Value>, name: &str) -> Result<u64, BodyError> {
    match v {
        None | Some(Value::Null) => Ok(DEFAULT_MAX_TOKENS),
        Some(v) => v.as_u64().ok_or_else(|| {
            BodyError::Malformed(format!("{name} must be a non-negative integer, got {v}"))
        }),
    }
}

/// Converse/Nova blocks: `[{"text": "..."}, ...]`.
fn collect_block_texts<'a>(v: Option<&'a Value>, out: &mut Vec<&'a str>) {
    if let Some(Value::Array(blocks)) = v {
        for b in blocks {
            if let Some(t) = b.get("text").and_then(Value::as_str) {
                out.push(t);
            }
        }
    }
}

/// Anthropic content: a string or `[{"type":"text","text":"..."}, ...]`.
fn collect_anthropic_content<'a>(v: Option<&'a Value>, out: &mut Vec<&'a str>) {
    match v {
        Some(Value::String(s)) => out.push(s),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                let is_text = b
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "text");
                if is_text {
                    if let Some(t) = b.get("text").and_then(Value::as_str) {
                        out.push(t);
                    }
                }
            }
        }
        _ => {}
    }
}

/// All `[[cache:read=N,write=M]]` markers in `text` (either key may be absent).
pub fn cache_markers(text: &str) -> Vec<CacheTokens> {
    markers(text, "[[cache:")
        .into_iter()
        .map(|inner| {
            let mut c = CacheTokens::default();
            for kv in inner.split(',') {
                let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                let n: u64 = v.trim().parse().unwrap_or(0);
                match k.trim() {
                    "read" => c.read += n,
                    "write" => c.write += n,
                    _ => {}
                }
            }
            c
        })
        .collect()
}

/// All `[[fault:NAME]]` names in `text`.
pub fn fault_markers(text: &str) -> Vec<String> {
    markers(text, "[[fault:")
        .into_iter()
        .map(|s| s.trim().to_owned())
        .collect()
}

fn markers<'a>(text: &'a str, open: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(open) {
        let after = &rest[i + open.len()..];
        match after.find("]]") {
            Some(j) => {
                out.push(&after[..j]);
                rest = &after[j + 2..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn formula() {
        assert_eq!(input_tokens_for_bytes(0), 1);
        assert_eq!(input_tokens_for_bytes(1), 1);
        assert_eq!(input_tokens_for_bytes(4), 1);
        assert_eq!(input_tokens_for_bytes(5), 2);
        assert_eq!(input_tokens_for_bytes(400), 100);
        assert_eq!(output_tokens_for(1, 512), 20);
        assert_eq!(output_tokens_for(100, 512), 70);
        assert_eq!(output_tokens_for(101, 512), 70);
        assert_eq!(output_tokens_for(100, 10), 10);
        assert_eq!(output_tokens_for(100, 0), 0);
    }

    #[test]
    fn converse_reader() {
        let body = json!({
            "system": [{"text": "be brief"}],
            "messages": [
                {"role": "user", "content": [{"text": "hello there"}, {"image": {}}]},
                {"role": "assistant", "content": [{"text": "hi"}]}
            ],
            "inferenceConfig": {"maxTokens": 21}
        });
        let p = plan(true, "anthropic.claude-3-haiku-20240307-v1:0", &body).unwrap();
        assert_eq!(p.family, Family::Converse);
        assert_eq!(p.input_bytes, 8 + 11 + 2);
        assert_eq!(p.input_tokens, 6);
        assert_eq!(p.output_tokens, 21); // min(21, 20 + 3)
        assert!(p.hit_max_tokens);
        assert_eq!(p.output_text().split(' ').count(), 21);
        assert_eq!(p.cache, None);
        assert!(plan(true, "m", &json!({"x": 1})).is_err());
        assert!(plan(true, "m", &json!([1])).is_err());
    }

    #[test]
    fn anthropic_reader_string_and_blocks() {
        let body = json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": 1000,
            "system": [{"type": "text", "text": "abcd"}],
            "messages": [
                {"role": "user", "content": "abcdefgh"},
                {"role": "user", "content": [{"type": "text", "text": "abcd"}, {"type": "image", "source": {}}]}
            ]
        });
        let p = plan(false, "anthropic.claude", &body).unwrap();
        assert_eq!(p.family, Family::Anthropic);
        assert_eq!(p.input_bytes, 16);
        assert_eq!(p.input_tokens, 4);
        assert_eq!(p.output_tokens, 22);
        assert!(!p.hit_max_tokens);
        let body = json!({"anthropic_version": "x", "system": "abcdefgh", "messages": []});
        assert_eq!(plan(false, "m", &body).unwrap().input_tokens, 2);
        assert_eq!(plan(false, "m", &body).unwrap().max_tokens, 512);
    }

    #[test]
    fn other_families() {
        let titan = json!({"inputText": "abcdefgh", "textGenerationConfig": {"maxTokenCount": 5}});
        let p = plan(false, "amazon.titan-text-express-v1", &titan).unwrap();
        assert_eq!(
            (p.family, p.input_tokens, p.output_tokens),
            (Family::Titan, 2, 5)
        );

        let llama = json!({"prompt": "abcd", "max_gen_len": 100});
        let p = plan(false, "meta.llama3-8b-instruct-v1:0", &llama).unwrap();
        assert_eq!(
            (p.family, p.input_tokens, p.output_tokens),
            (Family::Llama, 1, 20)
        );

        let mistral = json!({"prompt": "abcd", "max_tokens": 3});
        let p = plan(false, "mistral.mistral-7b-instruct-v0:2", &mistral).unwrap();
        assert_eq!((p.family, p.output_tokens), (Family::Mistral, 3));

        let nova = json!({
            "schemaVersion": "messages-v1",
            "system": [{"text": "abcd"}],
            "messages": [{"role": "user", "content": [{"text": "abcd"}]}],
            "inferenceConfig": {"max_new_tokens": 7}
        });
        let p = plan(false, "amazon.nova-lite-v1:0", &nova).unwrap();
        assert_eq!(
            (p.family, p.input_tokens, p.output_tokens),
            (Family::Nova, 2, 7)
        );

        assert!(plan(false, "m", &json!({"foo": 1})).is_err());
        assert!(plan(false, "m", &json!({"prompt": "x", "max_gen_len": "ten"})).is_err());
    }

    #[test]
    fn markers_are_found() {
        let body = json!({
            "messages": [{"role": "user", "content": [
                {"text": "x [[cache:read=100,write=7]] y [[fault:throttle]]"},
                {"text": "[[cache:write=3]] [[fault:internal]]"}
            ]}]
        });
        let p = plan(true, "m", &body).unwrap();
        assert_eq!(
            p.cache,
            Some(CacheTokens {
                read: 100,
                write: 10
            })
        );
        assert_eq!(p.fault_marker.as_deref(), Some("throttle"));
        assert_eq!(p.stream_delay_ms, None);
        assert_eq!(p.total_tokens(), p.input_tokens + p.output_tokens + 110);
        assert!(cache_markers("[[cache:read=1").is_empty());
    }
}
