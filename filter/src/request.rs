//! Reading and rewriting Bedrock request bodies: the output-token limit (for the
//! hold), an upper-bound input-token estimate, client `requestMetadata`, and the
//! rewrite that clamps the limit and injects attribution.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use thiserror::Error;
use tollgate_wire::api::Operation;

/// Bedrock's `requestMetadata` limits.
pub const METADATA_MAX_ENTRIES: usize = 16;
pub const METADATA_MAX_LEN: usize = 256;
/// `X-Amzn-Bedrock-Request-Metadata` maximum length.
pub const METADATA_HEADER_MAX_LEN: usize = 8500;
/// Tokens assumed for an image, document or other binary block (Claude bills about
/// (width × height) / 750 tokens per image and caps images at ~1,600).
const BINARY_BLOCK_TOKENS: u64 = 1_600;
/// Conservative characters-per-token for the estimate: real tokenizers average
/// about 4 for English, so dividing by 3 over-estimates, as a hold must.
const BYTES_PER_TOKEN_UPPER_BOUND: u64 = 3;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BodyError {
    #[error("request body is not valid JSON: {0}")]
    Json(String),
    #[error("request body must be a JSON object")]
    NotAnObject,
    #[error("{field} must be a positive integer")]
    BadMaxTokens { field: &'static str },
    #[error("requestMetadata must be an object of string values")]
    BadMetadata,
    #[error("requestMetadata {0}")]
    MetadataLimit(String),
}

/// What the gateway needs to know from a request body before admitting it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestFacts {
    /// The request's own output limit, when it states one.
    pub max_output_tokens: Option<u64>,
    /// Upper-bound estimate of input tokens.
    pub input_tokens_estimate: u64,
    /// Converse `requestMetadata` as the client sent it.
    pub metadata: BTreeMap<String, String>,
}

/// Where a model family keeps its output limit, as a JSON pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MaxTokensField {
    pointer: &'static str,
    name: &'static str,
}

/// Converse: `inferenceConfig.maxTokens`.
const CONVERSE_MAX: MaxTokensField = MaxTokensField {
    pointer: "/inferenceConfig/maxTokens",
    name: "inferenceConfig.maxTokens",
};

/// InvokeModel bodies, in the order they are recognised. The first field present
/// wins; a body with none gets the tenant's or the default limit filled in only for
/// families whose field is known (Anthropic's is required anyway).
const INVOKE_MAX_FIELDS: &[MaxTokensField] = &[
    // Anthropic Messages, Mistral, Cohere Command R, AI21 Jamba, OpenAI-compatible
    MaxTokensField {
        pointer: "/max_tokens",
        name: "max_tokens",
    },
    // Amazon Nova
    MaxTokensField {
        pointer: "/inferenceConfig/maxTokens",
        name: "inferenceConfig.maxTokens",
    },
    MaxTokensField {
        pointer: "/inferenceConfig/max_new_tokens",
        name: "inferenceConfig.max_new_tokens",
    },
    // Amazon Titan Text
    MaxTokensField {
        pointer: "/textGenerationConfig/maxTokenCount",
        name: "textGenerationConfig.maxTokenCount",
    },
    // Meta Llama
    MaxTokensField {
        pointer: "/max_gen_len",
        name: "max_gen_len",
    },
    // Anthropic Claude 2 text completions
    MaxTokensField {
        pointer: "/max_tokens_to_sample",
        name: "max_tokens_to_sample",
    },
];

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, BodyError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError::NotAnObject),
        Err(e) => Err(BodyError::Json(e.to_string())),
    }
}

fn read_max(root: &Value, field: MaxTokensField) -> Result<Option<u64>, BodyError> {
    match root.pointer(field.pointer) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(BodyError::BadMaxTokens { field: field.name }),
        },
    }
}

fn max_field(op: Operation, root: &Value) -> Option<MaxTokensField> {
    if op.is_converse() {
        return Some(CONVERSE_MAX);
    }
    let present = INVOKE_MAX_FIELDS
        .iter()
        .copied()
        .find(|f| root.pointer(f.pointer).is_some());
    present.or_else(|| {
        // Anthropic Messages requires max_tokens; fill it in when absent so the
        // upstream limit matches the hold.
        root.get("anthropic_version").map(|_| INVOKE_MAX_FIELDS[0])
    })
}

impl RequestFacts {
    pub fn read(op: Operation, body: &[u8]) -> Result<Self, BodyError> {
        let map = parse_object(body)?;
        let root = Value::Object(map);
        let max_output_tokens = match max_field(op, &root) {
            Some(f) => read_max(&root, f)?,
            None => None,
        };
        let metadata = if op.is_converse() {
            read_metadata(root.get("requestMetadata"))?
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            max_output_tokens,
            input_tokens_estimate: estimate_input_tokens(&root),
            metadata,
        })
    }
}

fn read_metadata(v: Option<&Value>) -> Result<BTreeMap<String, String>, BodyError> {
    let Some(v) = v else {
        return Ok(BTreeMap::new());
    };
    let Value::Object(map) = v else {
        return Err(BodyError::BadMetadata);
    };
    map.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            _ => Err(BodyError::BadMetadata),
        })
        .collect()
}

/// Upper-bound input tokens: every string in the body except binary payloads,
/// at 3 bytes per token, plus a flat allowance per binary block. Counting the
/// whole body (tool specs, system prompts, history) keeps it an upper bound for
/// every model family without knowing its schema.
pub fn estimate_input_tokens(root: &Value) -> u64 {
    fn walk(v: &Value, key: Option<&str>, text: &mut u64, blocks: &mut u64) {
        match v {
            Value::String(s) => {
                if matches!(key, Some("bytes" | "data")) && s.len() > 256 {
                    *blocks += 1;
                } else {
                    *text += s.len() as u64;
                }
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, None, text, blocks)),
            Value::Object(m) => {
                for (k, x) in m {
                    // Keys of free-form objects (tool input schemas) are text too.
                    *text += k.len() as u64;
                    walk(x, Some(k), text, blocks);
                }
            }
            _ => *text += 4,
        }
    }
    let (mut text, mut blocks) = (0, 0);
    walk(root, None, &mut text, &mut blocks);
    text.div_ceil(BYTES_PER_TOKEN_UPPER_BOUND) + blocks * BINARY_BLOCK_TOKENS + 1
}

/// Checks a value against Bedrock's `requestMetadata` pattern
/// `[a-zA-Z0-9\s:_@$#=/+,-.]{0,256}`.
pub fn valid_metadata_value(s: &str) -> bool {
    s.len() <= METADATA_MAX_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || ":_@$#=/+,-.".contains(c))
}

/// Merges gateway attribution over the client's metadata. Gateway keys win (a
/// client cannot set its own `tenant_id`); the result must fit Bedrock's limits.
pub fn merge_metadata(
    client: &BTreeMap<String, String>,
    gateway: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BodyError> {
    let mut merged = client.clone();
    for (k, v) in gateway {
        merged.insert(k.clone(), v.clone());
    }
    if merged.len() > METADATA_MAX_ENTRIES {
        return Err(BodyError::MetadataLimit(format!(
            "would have {} entries with the gateway's attribution; Bedrock allows {METADATA_MAX_ENTRIES}",
            merged.len()
        )));
    }
    for (k, v) in &merged {
        if k.is_empty() || !valid_metadata_value(k) || !valid_metadata_value(v) {
            return Err(BodyError::MetadataLimit(format!(
                "entry '{}' is not 1-256 characters of [a-zA-Z0-9 :_@$#=/+,-.]",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(merged)
}

/// The body to forward: the output limit clamped to (or filled with) `max_tokens`,
/// and for Converse the merged `requestMetadata`.
pub fn rewrite(
    op: Operation,
    body: &[u8],
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, BodyError> {
    let mut root = Value::Object(parse_object(body)?);
    if let Some(field) = max_field(op, &root) {
        let current = read_max(&root, field)?;
        if current.is_none_or(|c| c > max_tokens) {
            set_pointer(&mut root, field.pointer, Value::from(max_tokens));
        }
    }
    if let (true, Some(md)) = (op.is_converse(), metadata) {
        let md: Map<String, Value> = md
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Value::Object(m) = &mut root {
            m.insert("requestMetadata".into(), Value::Object(md));
        }
    }
    serde_json::to_vec(&root).map_err(|e| BodyError::Json(e.to_string()))
}

/// The `X-Amzn-Bedrock-Request-Metadata` header value for InvokeModel operations.
pub fn metadata_header(metadata: &BTreeMap<String, String>) -> Result<String, BodyError> {
    let s = serde_json::to_string(metadata).map_err(|e| BodyError::Json(e.to_string()))?;
    if s.len() > METADATA_HEADER_MAX_LEN {
        return Err(BodyError::MetadataLimit(format!(
            "header would be {} characters; Bedrock allows {METADATA_HEADER_MAX_LEN}",
            s.len()
        )));
    }
    Ok(s)
}

/// Sets `pointer` (of plain object keys) in `root`, creating objects on the way.
fn set_pointer(root: &mut Value, pointer: &str, value: Value) {
    let mut cur = root;
    let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
    for (i, part) in parts.iter().enumerate() {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let Value::Object(m) = cur else { return };
        if i + 1 == parts.len() {
            m.insert((*part).to_owned(), value);
            return;
        }
        cur = m
            .entry((*part).to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn facts(op: Operation, v: Value) -> RequestFacts {
        RequestFacts::read(op, &serde_json::to_vec(&v).unwrap()).unwrap()
    }

    #[test]
    fn converse_max_tokens_and_metadata() {
        let f = facts(
            Operation::Converse,
            json!({"messages":[{"role":"user","content":[{"text":"hello there"}]}],
                   "inferenceConfig":{"maxTokens":300},
                   "requestMetadata":{"user_id":"u1"}}),
        );
        assert_eq!(f.max_output_tokens, Some(300));
        assert_eq!(f.metadata.get("user_id").map(String::as_str), Some("u1"));
        assert!(f.input_tokens_estimate >= "hello there".len() as u64 / 4);
    }

    #[test]
    fn invoke_family_fields() {
        for (body, want) in [
            (
                json!({"anthropic_version":"bedrock-2023-05-31","max_tokens":50,"messages":[]}),
                Some(50),
            ),
            (
                json!({"anthropic_version":"bedrock-2023-05-31","messages":[]}),
                None,
            ),
            (
                json!({"messages":[],"inferenceConfig":{"max_new_tokens":70}}),
                Some(70),
            ),
            (
                json!({"inputText":"x","textGenerationConfig":{"maxTokenCount":80}}),
                Some(80),
            ),
            (json!({"prompt":"x","max_gen_len":90}), Some(90)),
            (json!({"prompt":"x","max_tokens":100}), Some(100)),
            (json!({"something":"else"}), None),
        ] {
            assert_eq!(
                facts(Operation::Invoke, body.clone()).max_output_tokens,
                want,
                "{body}"
            );
        }
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(
            RequestFacts::read(Operation::Converse, b"{nope"),
            Err(BodyError::Json(_))
        ));
        assert_eq!(
            RequestFacts::read(Operation::Converse, b"[1]"),
            Err(BodyError::NotAnObject)
        );
        assert!(matches!(
            RequestFacts::read(
                Operation::Converse,
                br#"{"inferenceConfig":{"maxTokens":-1}}"#
            ),
            Err(BodyError::BadMaxTokens { .. })
        ));
        assert!(matches!(
            RequestFacts::read(Operation::Invoke, br#"{"max_tokens":"9"}"#),
            Err(BodyError::BadMaxTokens { .. })
        ));
        assert_eq!(
            RequestFacts::read(Operation::Converse, br#"{"requestMetadata":{"a":1}}"#),
            Err(BodyError::BadMetadata)
        );
    }

    #[test]
    fn estimate_is_an_upper_bound_of_four_bytes_per_token_text() {
        let text = "word ".repeat(1000);
        let f = facts(
            Operation::Converse,
            json!({"messages":[{"role":"user","content":[{"text":text}]}]}),
        );
        assert!(f.input_tokens_estimate >= 5000 / 4);
        assert!(f.input_tokens_estimate <= 5000 / 3 + 20);
    }

    #[test]
    fn binary_blocks_count_flat() {
        let img = "A".repeat(100_000);
        let f = facts(
            Operation::Converse,
            json!({"messages":[{"role":"user","content":[{"image":{"format":"png","source":{"bytes":img}}}]}]}),
        );
        assert!(
            f.input_tokens_estimate >= 1600 && f.input_tokens_estimate < 1700,
            "{}",
            f.input_tokens_estimate
        );
    }

    #[test]
    fn rewrite_clamps_and_fills_max_tokens() {
        let out = rewrite(
            Operation::Converse,
            br#"{"inferenceConfig":{"maxTokens":5000}}"#,
            4000,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 4000);
        let out = rewrite(
            Operation::Converse,
            br#"{"inferenceConfig":{"maxTokens":10}}"#,
            4000,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 10);
        let out = rewrite(Operation::Converse, br#"{"messages":[]}"#, 512, None).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 512);
        let out = rewrite(
            Operation::Invoke,
            br#"{"anthropic_version":"x","messages":[]}"#,
            256,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 256);
        let out = rewrite(Operation::Invoke, br#"{"unknown":"shape"}"#, 256, None).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v, json!({"unknown":"shape"}));
    }

    #[test]
    fn gateway_metadata_wins_and_limits_hold() {
        let client: BTreeMap<_, _> = [
            ("tenant_id".to_string(), "forged".to_string()),
            ("user_id".into(), "u".into()),
        ]
        .into();
        let gw: BTreeMap<_, _> = [("tenant_id".to_string(), "real".to_string())].into();
        let m = merge_metadata(&client, &gw).unwrap();
        assert_eq!(m["tenant_id"], "real");
        assert_eq!(m["user_id"], "u");

        let many: BTreeMap<_, _> = (0..16)
            .map(|i| (format!("k{i}"), "v".to_string()))
            .collect();
        assert!(matches!(
            merge_metadata(&many, &gw),
            Err(BodyError::MetadataLimit(_))
        ));
        let bad: BTreeMap<_, _> = [("k".to_string(), "<script>".to_string())].into();
        assert!(matches!(
            merge_metadata(&bad, &gw),
            Err(BodyError::MetadataLimit(_))
        ));

        let out = rewrite(
            Operation::Converse,
            br#"{"requestMetadata":{"tenant_id":"forged"}}"#,
            10,
            Some(&m),
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["requestMetadata"]["tenant_id"], "real");
    }

    #[test]
    fn metadata_values_follow_bedrock_pattern() {
        assert!(valid_metadata_value("team-a/app_1 v2.0 #x@y=z+w,"));
        assert!(!valid_metadata_value("ünïcode"));
        assert!(!valid_metadata_value(&"a".repeat(257)));
    }
}
