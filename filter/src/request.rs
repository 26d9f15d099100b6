//! Reading and rewriting Bedrock request bodies: the output-token limit (for the
//! hold), an upper-bound input-token estimate, client `requestMetadata`, and the
//! rewrite that clamps the limit and injects attribution.
//!
//! InvokeModel bodies are model-specific: the model family (from the model ID,
//! geo prefix stripped) decides which output-limit field the model obeys, and
//! that field is the one held and clamped. Bodies whose limits conflict, or that
//! set a limit in a field the family ignores, are refused. Billing-changing
//! options (service tier, latency-optimized inference, guardrails) are refused by
//! [`billing_options`] unless a policy allows them.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use thiserror::Error;
use tollgate_wire::api::{Attribution, Operation, Reservation};

mod survey;

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
    #[error("X-Amzn-Bedrock-Request-Metadata must be a JSON object of string values")]
    BadMetadataHeader,
    #[error("requestMetadata {0}")]
    MetadataLimit(String),
    #[error("the body sets {first} = {first_value} and {second} = {second_value}; send a single output-token limit")]
    ConflictingMaxTokens {
        first: &'static str,
        first_value: u64,
        second: &'static str,
        second_value: u64,
    },
    #[error(
        "{field} is not read by {family} models; set the output-token limit in {expected} only"
    )]
    ForeignMaxTokens {
        field: &'static str,
        family: &'static str,
        expected: &'static str,
    },
    #[error("additionalModelRequestFields.{key} = {value} is not allowed: set the output-token limit in inferenceConfig.maxTokens (an additional {key} must equal it)")]
    AdditionalMaxTokens { key: &'static str, value: String },
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
    /// Billing-changing options in the body (Converse), for [`billing_options`].
    pub billing: BodyBillingOptions,
    /// The parsed body (or what the rules need of it), kept so
    /// [`RequestFacts::rewrite`] need not parse it again.
    parsed: Parsed,
}

/// What [`RequestFacts::read`] keeps of a body for the rewrite.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// The body's top-level [`MEMBERS`] (as `Value`s) and [`PRESENCE`] members
    /// (as `null` placeholders), in body order: everything the rules read and
    /// the rewrite may change. The rewrite splices the members it changed (or
    /// adds) into the body's own bytes, so the rest of the body, typically the
    /// conversation, is never built as a `Value` nor serialised again.
    Members(Value),
    /// The whole body, for bodies with a key twice in some object: the rewrite
    /// serialises it again with each key once (its last value, the one read), so
    /// the limit Bedrock obeys is the limit held whatever the client repeated.
    Whole(Value),
}

/// Top-level members the rules read or the rewrite changes: the output limits of
/// every family (and their parent objects), Converse metadata, billing options.
const MEMBERS: &[&str] = &[
    "inferenceConfig",
    "textGenerationConfig",
    "additionalModelRequestFields",
    "requestMetadata",
    "serviceTier",
    "performanceConfig",
    "guardrailConfig",
    "max_tokens",
    "max_tokens_to_sample",
    "max_gen_len",
    "maxTokens",
    "max_completion_tokens",
];

/// Top-level members whose presence alone the rules test ([`ModelFamily::fields`],
/// [`max_plan`]).
const PRESENCE: &[&str] = &["prompt", "messages", "anthropic_version"];

/// Where a model family keeps its output limit, as a JSON pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MaxTokensField {
    pointer: &'static str,
    name: &'static str,
}

const fn field(pointer: &'static str, name: &'static str) -> MaxTokensField {
    MaxTokensField { pointer, name }
}

/// Converse: `inferenceConfig.maxTokens`.
const CONVERSE_MAX: MaxTokensField =
    field("/inferenceConfig/maxTokens", "inferenceConfig.maxTokens");

const MAX_TOKENS: MaxTokensField = field("/max_tokens", "max_tokens");
const MAX_TOKENS_TO_SAMPLE: MaxTokensField = field("/max_tokens_to_sample", "max_tokens_to_sample");
const NOVA_MAX_NEW_TOKENS: MaxTokensField = field(
    "/inferenceConfig/max_new_tokens",
    "inferenceConfig.max_new_tokens",
);
const NOVA_MAX_TOKENS: MaxTokensField =
    field("/inferenceConfig/maxTokens", "inferenceConfig.maxTokens");
const TITAN_MAX: MaxTokensField = field(
    "/textGenerationConfig/maxTokenCount",
    "textGenerationConfig.maxTokenCount",
);
const LLAMA_MAX: MaxTokensField = field("/max_gen_len", "max_gen_len");
const AI21_MAX: MaxTokensField = field("/maxTokens", "maxTokens");
const OPENAI_MAX: MaxTokensField = field("/max_completion_tokens", "max_completion_tokens");

/// Every InvokeModel output-limit field Tollgate knows, in the order an unknown
/// family's body is searched (the pre-family behaviour).
const INVOKE_MAX_FIELDS: &[MaxTokensField] = &[
    MAX_TOKENS,
    NOVA_MAX_TOKENS,
    NOVA_MAX_NEW_TOKENS,
    TITAN_MAX,
    LLAMA_MAX,
    MAX_TOKENS_TO_SAMPLE,
    AI21_MAX,
    OPENAI_MAX,
];

/// The model family of an InvokeModel request, which decides the body schema and
/// so which output-limit field the model obeys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFamily {
    Anthropic,
    /// Nova 1 (micro, lite, pro, premier): `inferenceConfig.max_new_tokens`.
    Nova,
    /// Nova 2 documents `inferenceConfig.maxTokens`.
    Nova2,
    Titan,
    Llama,
    Mistral,
    Cohere,
    Ai21,
    DeepSeek,
    OpenAi,
    /// Aliases, application-inference-profile / provisioned / custom ARNs, and
    /// providers Tollgate has no schema for.
    Unknown,
}

/// Cross-Region inference profile prefixes (`us.anthropic.…`).
const GEO_PREFIXES: &[&str] = &[
    "us", "us-gov", "eu", "apac", "global", "jp", "au", "ca", "sa", "me", "af", "il", "mx",
];

/// Models that do not generate text (embeddings, images, video, speech, rerank):
/// no output-limit field is inserted into their bodies.
const NON_TEXT_MARKERS: &[&str] = &["embed", "image", "canvas", "reel", "sonic", "rerank"];

impl ModelFamily {
    /// The family of a model identifier: a model ID, a cross-Region profile ID
    /// (geo prefix stripped), or a `foundation-model/` / `inference-profile/` ARN.
    /// Everything else (aliases, application-inference-profile ARNs) is `Unknown`.
    pub fn from_model_id(model: &str) -> Self {
        let id = if model.starts_with("arn:") {
            match model.split_once('/') {
                Some((head, id))
                    if head.ends_with(":foundation-model")
                        || head.ends_with(":inference-profile") =>
                {
                    id
                }
                _ => return Self::Unknown,
            }
        } else {
            model
        };
        let id = id.to_ascii_lowercase();
        let id = match id.split_once('.') {
            Some((geo, rest)) if GEO_PREFIXES.contains(&geo) => rest,
            _ => id.as_str(),
        };
        let (provider, name) = id.split_once('.').unwrap_or(("", id));
        match provider {
            "anthropic" => Self::Anthropic,
            "amazon" if name.starts_with("nova-2") => Self::Nova2,
            "amazon" if name.starts_with("nova") => Self::Nova,
            "amazon" if name.starts_with("titan") => Self::Titan,
            "meta" => Self::Llama,
            "mistral" => Self::Mistral,
            "cohere" => Self::Cohere,
            "ai21" => Self::Ai21,
            "deepseek" => Self::DeepSeek,
            "openai" => Self::OpenAi,
            _ => Self::Unknown,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Anthropic => "Anthropic",
            Self::Nova => "Amazon Nova",
            Self::Nova2 => "Amazon Nova 2",
            Self::Titan => "Amazon Titan",
            Self::Llama => "Meta Llama",
            Self::Mistral => "Mistral",
            Self::Cohere => "Cohere",
            Self::Ai21 => "AI21",
            Self::DeepSeek => "DeepSeek",
            Self::OpenAi => "OpenAI",
            Self::Unknown => "unknown",
        }
    }

    /// The fields this family reads, preferred (inserted when absent) first.
    /// Several fields are aliases the model accepts; a body must give them one value.
    fn fields(self, root: &Value) -> &'static [MaxTokensField] {
        match self {
            // Claude 2 text completions (`prompt`) read max_tokens_to_sample.
            Self::Anthropic if root.get("prompt").is_some() && root.get("messages").is_none() => {
                &[MAX_TOKENS_TO_SAMPLE, MAX_TOKENS]
            }
            Self::Anthropic => &[MAX_TOKENS, MAX_TOKENS_TO_SAMPLE],
            // Nova accepts either spelling; both present must agree and are
            // clamped together; the documented one is inserted when absent.
            Self::Nova => &[NOVA_MAX_NEW_TOKENS, NOVA_MAX_TOKENS],
            Self::Nova2 => &[NOVA_MAX_TOKENS, NOVA_MAX_NEW_TOKENS],
            Self::Titan => &[TITAN_MAX],
            Self::Llama => &[LLAMA_MAX],
            Self::Mistral | Self::Cohere | Self::DeepSeek => &[MAX_TOKENS],
            Self::Ai21 => &[MAX_TOKENS, AI21_MAX],
            Self::OpenAi => &[OPENAI_MAX, MAX_TOKENS],
            Self::Unknown => INVOKE_MAX_FIELDS,
        }
    }
}

/// How a request body states its output limit, decided once for reading and for
/// the rewrite so that the field held is the field clamped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct MaxTokensPlan {
    /// The fields present (all with the same value) that the model obeys.
    present: Vec<MaxTokensField>,
    /// Their common value.
    value: Option<u64>,
    /// Inserted with the enforced limit when none is present.
    insert: Option<MaxTokensField>,
}

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

/// The fields among `fields` present in `root`, which must agree.
fn agreeing(
    root: &Value,
    fields: &[MaxTokensField],
) -> Result<(Vec<MaxTokensField>, Option<u64>), BodyError> {
    let mut present = Vec::new();
    let mut value: Option<(MaxTokensField, u64)> = None;
    for &f in fields {
        let Some(v) = read_max(root, f)? else {
            continue;
        };
        match value {
            Some((first, w)) if w != v => {
                return Err(BodyError::ConflictingMaxTokens {
                    first: first.name,
                    first_value: w,
                    second: f.name,
                    second_value: v,
                })
            }
            Some(_) => {}
            None => value = Some((f, v)),
        }
        present.push(f);
    }
    Ok((present, value.map(|(_, v)| v)))
}

fn max_plan(op: Operation, model: &str, root: &Value) -> Result<MaxTokensPlan, BodyError> {
    if op.is_converse() {
        let value = read_max(root, CONVERSE_MAX)?;
        check_additional_fields(root, value)?;
        return Ok(MaxTokensPlan {
            present: value.map(|_| vec![CONVERSE_MAX]).unwrap_or_default(),
            value,
            insert: Some(CONVERSE_MAX),
        });
    }
    let family = ModelFamily::from_model_id(model);
    let fields = family.fields(root);
    // A field the model ignores would leave the hold on a number the model never
    // sees: refuse it, whether or not the family's own field is present.
    if family != ModelFamily::Unknown {
        if let Some(foreign) = INVOKE_MAX_FIELDS
            .iter()
            .find(|f| !fields.contains(f) && root.pointer(f.pointer).is_some_and(|v| !v.is_null()))
        {
            return Err(BodyError::ForeignMaxTokens {
                field: foreign.name,
                family: family.name(),
                expected: fields[0].name,
            });
        }
    }
    let (present, value) = agreeing(root, fields)?;
    let lower = model.to_ascii_lowercase();
    let insert = match family {
        // Unknown schema: only Anthropic Messages (recognised by its required
        // `anthropic_version`) gets a limit filled in, as before.
        ModelFamily::Unknown => root.get("anthropic_version").map(|_| MAX_TOKENS),
        _ if NON_TEXT_MARKERS.iter().any(|m| lower.contains(m)) => None,
        _ => Some(fields[0]),
    };
    Ok(MaxTokensPlan {
        present,
        value,
        insert,
    })
}

/// Output-limit keys a model could read from Converse `additionalModelRequestFields`.
const ADDITIONAL_LIMIT_KEYS: &[&str] = &[
    "max_tokens",
    "maxTokens",
    "max_new_tokens",
    "maxNewTokens",
    "maxTokenCount",
    "max_gen_len",
    "max_tokens_to_sample",
    "max_completion_tokens",
    "max_output_tokens",
    "maxOutputTokens",
];

/// Converse passes `additionalModelRequestFields` to the model as is, so a token
/// limit there could override `inferenceConfig.maxTokens`. Choice: such a limit is
/// accepted only when it equals `inferenceConfig.maxTokens` (which must then be
/// present); anything else is refused. The rewrite then sets every such key to
/// the clamped limit, so the model sees one limit and it is the one held.
fn check_additional_fields(root: &Value, max: Option<u64>) -> Result<(), BodyError> {
    fn walk(v: &Value, max: Option<u64>) -> Result<(), BodyError> {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    if let Some(key) = ADDITIONAL_LIMIT_KEYS.iter().find(|key| **key == k) {
                        if max.is_none() || x.as_u64() != max {
                            return Err(BodyError::AdditionalMaxTokens {
                                key,
                                value: x.to_string().chars().take(40).collect(),
                            });
                        }
                    } else {
                        walk(x, max)?;
                    }
                }
                Ok(())
            }
            Value::Array(a) => a.iter().try_for_each(|x| walk(x, max)),
            _ => Ok(()),
        }
    }
    match root.get("additionalModelRequestFields") {
        Some(v) => walk(v, max),
        None => Ok(()),
    }
}

/// Sets every output-limit key in Converse `additionalModelRequestFields` to `n`.
fn clamp_additional_fields(root: &mut Value, n: u64) {
    fn walk(v: &mut Value, n: u64) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    if ADDITIONAL_LIMIT_KEYS.contains(&k.as_str()) {
                        *x = Value::from(n);
                    } else {
                        walk(x, n);
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| walk(x, n)),
            _ => {}
        }
    }
    if let Some(v) = root.get_mut("additionalModelRequestFields") {
        walk(v, n);
    }
}

impl RequestFacts {
    /// Reads a request body for `op` on `model` (the percent-decoded `{modelId}`
    /// of the path). For InvokeModel the model family decides which output-limit
    /// field counts; bodies stating conflicting limits, or a limit in a field the
    /// family ignores, are refused.
    pub fn read(op: Operation, model: &str, body: &[u8]) -> Result<Self, BodyError> {
        match survey::survey(body) {
            Some(s) => Self::from_parsed(op, model, Parsed::Members(s.members), s.estimate),
            // Not JSON, not an object, or a key twice: the whole-`Value` path
            // decides (and words the error) exactly as it always did.
            None => Self::read_whole(op, model, body),
        }
    }

    /// [`RequestFacts::read`] through a whole `Value` of the body.
    fn read_whole(op: Operation, model: &str, body: &[u8]) -> Result<Self, BodyError> {
        let root = Value::Object(parse_object(body)?);
        let estimate = estimate_input_tokens(&root);
        Self::from_parsed(op, model, Parsed::Whole(root), estimate)
    }

    fn from_parsed(
        op: Operation,
        model: &str,
        parsed: Parsed,
        input_tokens_estimate: u64,
    ) -> Result<Self, BodyError> {
        let root = match &parsed {
            Parsed::Members(v) | Parsed::Whole(v) => v,
        };
        let max_output_tokens = max_plan(op, model, root)?.value;
        let metadata = if op.is_converse() {
            read_metadata(root.get("requestMetadata"))?
        } else {
            BTreeMap::new()
        };
        Ok(Self {
            max_output_tokens,
            input_tokens_estimate,
            metadata,
            billing: BodyBillingOptions::read(op, root),
            parsed,
        })
    }

    /// [`rewrite`] of `body`, the body these facts were read from, without
    /// parsing it again (the body is parsed once per request).
    pub fn rewrite(
        &self,
        body: &[u8],
        op: Operation,
        model: &str,
        max_tokens: u64,
        metadata: Option<&BTreeMap<String, String>>,
    ) -> Result<Vec<u8>, BodyError> {
        match &self.parsed {
            Parsed::Whole(root) => rewrite_value(op, model, root.clone(), max_tokens, metadata),
            Parsed::Members(members) => {
                rewrite_members(op, model, body, members, max_tokens, metadata)
            }
        }
    }
}

/// The rewrite of a body read as [`Parsed::Members`]: the rules run on the
/// members, and the members they changed or added are spliced into `body`.
fn rewrite_members(
    op: Operation,
    model: &str,
    body: &[u8],
    members: &Value,
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, BodyError> {
    let mut changed = members.clone();
    apply_rewrite(op, model, &mut changed, max_tokens, metadata)?;
    match survey::splice(body, members, &changed) {
        Some(out) => Ok(out),
        // `members` was read from `body`, so this does not happen; if it did,
        // the whole-`Value` rewrite is still right, only slower.
        None => rewrite_parsed(op, model, body, max_tokens, metadata),
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
    let mut count = InputCount::default();
    count.value(root, None);
    count.estimate()
}

/// The running sums of [`estimate_input_tokens`], shared with the survey,
/// which counts a body without building it as a `Value`.
#[derive(Debug, Default, Clone, Copy)]
struct InputCount {
    text: u64,
    blocks: u64,
}

impl InputCount {
    /// A string, the value of `key` (`None` in arrays).
    fn string(&mut self, key: Option<&str>, s: &str) {
        if matches!(key, Some("bytes" | "data")) && s.len() > 256 {
            self.blocks += 1;
        } else {
            self.text += s.len() as u64;
        }
    }

    /// A number, `true`/`false` or `null`.
    fn scalar(&mut self) {
        self.text += 4;
    }

    /// An object key: keys of free-form objects (tool input schemas) are text too.
    fn key(&mut self, k: &str) {
        self.text += k.len() as u64;
    }

    fn value(&mut self, v: &Value, key: Option<&str>) {
        match v {
            Value::String(s) => self.string(key, s),
            Value::Array(a) => a.iter().for_each(|x| self.value(x, None)),
            Value::Object(m) => {
                for (k, x) in m {
                    self.key(k);
                    self.value(x, Some(k));
                }
            }
            _ => self.scalar(),
        }
    }

    fn estimate(self) -> u64 {
        self.text.div_ceil(BYTES_PER_TOKEN_UPPER_BOUND) + self.blocks * BINARY_BLOCK_TOKENS + 1
    }
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

/// The body to forward: the output limit clamped to (or filled with) `max_tokens`
/// in the field `model` obeys (every agreeing alias present is clamped; Converse
/// `additionalModelRequestFields` limits are set to the same value), and for
/// Converse the merged `requestMetadata`. The body is checked as by
/// [`RequestFacts::read`], so a rewrite under a different (resolved) model ID
/// refuses a body whose limit that model would ignore.
pub fn rewrite(
    op: Operation,
    model: &str,
    body: &[u8],
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, BodyError> {
    match survey::survey(body) {
        Some(s) => rewrite_members(op, model, body, &s.members, max_tokens, metadata),
        None => rewrite_parsed(op, model, body, max_tokens, metadata),
    }
}

/// The rewrite through a full parse of `body`: for bodies the survey cannot read.
fn rewrite_parsed(
    op: Operation,
    model: &str,
    body: &[u8],
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, BodyError> {
    rewrite_value(
        op,
        model,
        Value::Object(parse_object(body)?),
        max_tokens,
        metadata,
    )
}

/// The rewrite of a whole parsed body, serialised again.
fn rewrite_value(
    op: Operation,
    model: &str,
    mut root: Value,
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<Vec<u8>, BodyError> {
    apply_rewrite(op, model, &mut root, max_tokens, metadata)?;
    serde_json::to_vec(&root).map_err(|e| BodyError::Json(e.to_string()))
}

/// The rules of [`rewrite`], applied to `root`: the whole body, or its
/// [`MEMBERS`] and [`PRESENCE`] members (all they read or change).
fn apply_rewrite(
    op: Operation,
    model: &str,
    root: &mut Value,
    max_tokens: u64,
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(), BodyError> {
    let plan = max_plan(op, model, root)?;
    let limit = plan.value.map_or(max_tokens, |v| v.min(max_tokens));
    if plan.present.is_empty() {
        if let Some(f) = plan.insert {
            set_pointer(root, f.pointer, Value::from(max_tokens));
        }
    } else if plan.value.is_some_and(|v| v > max_tokens) {
        for f in &plan.present {
            set_pointer(root, f.pointer, Value::from(max_tokens));
        }
    }
    if op.is_converse() {
        clamp_additional_fields(root, limit);
    }
    if let (true, Some(md)) = (op.is_converse(), metadata) {
        let md: Map<String, Value> = md
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        if let Value::Object(m) = root {
            m.insert("requestMetadata".into(), Value::Object(md));
        }
    }
    Ok(())
}

/// The `X-Amzn-Bedrock-Request-Metadata` header value for InvokeModel operations.
/// Gateway attribution for Bedrock's invocation logs: the tenant and
/// application of the reservation (the client's application when it names
/// none), the request id and the client's attribution.
pub fn gateway_metadata(
    a: &Attribution,
    request_id: &str,
    r: Option<&Reservation>,
) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let tenant = r.map_or("-", |r| r.tenant_id.as_str());
    m.insert("tenant_id".to_owned(), tenant.to_owned());
    m.insert("request_id".to_owned(), request_id.to_owned());
    let app = r
        .and_then(|r| r.application_id.clone())
        .or_else(|| a.application_id.clone());
    for (k, v) in [
        ("application_id", app),
        ("cost_center", a.cost_center.clone()),
        ("environment", a.environment.clone()),
        ("user_id", a.user_id.clone()),
    ] {
        if let Some(v) = v {
            m.insert(k.to_owned(), v);
        }
    }
    m
}

/// Checks, before any hold, that the client's metadata merged with the gateway's
/// stays within Bedrock's limits, so nothing fails after the hold. The tenant
/// and application are not known yet; one-character stand-ins take their place.
pub fn check_metadata_limits(
    client: &BTreeMap<String, String>,
    a: &Attribution,
    request_id: &str,
) -> Result<(), BodyError> {
    let placeholder = Reservation {
        request_id: String::new(),
        tenant_id: "-".into(),
        application_id: Some("-".into()),
        model_id: String::new(),
        target_model: String::new(),
        max_output_tokens: 0,
        hold_usd: Default::default(),
        budget_remaining_usd: Default::default(),
        rates: None,
        rate_limits: Vec::new(),
    };
    merge_metadata(client, &gateway_metadata(a, request_id, Some(&placeholder))).map(|_| ())
}

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

/// Parses a client's `X-Amzn-Bedrock-Request-Metadata` header (a JSON object of
/// strings, at most 8500 characters) so glue can treat it exactly like Converse
/// body `requestMetadata`: attribution input that is merged under the gateway's
/// keys, never passed on as sent.
///
/// Choice: the header is accepted (not refused) on every operation, since
/// InvokeModel clients use it legitimately; on Converse, where Bedrock reads
/// metadata from the body, glue removes the header and the entries go into the
/// body's `requestMetadata` via [`client_metadata`] + [`rewrite`].
pub fn parse_metadata_header(value: &str) -> Result<BTreeMap<String, String>, BodyError> {
    if value.len() > METADATA_HEADER_MAX_LEN {
        return Err(BodyError::MetadataLimit(format!(
            "header X-Amzn-Bedrock-Request-Metadata is {} characters; Bedrock allows {METADATA_HEADER_MAX_LEN}",
            value.len()
        )));
    }
    let v: Value = serde_json::from_str(value).map_err(|_| BodyError::BadMetadataHeader)?;
    let md = read_metadata(Some(&v)).map_err(|_| BodyError::BadMetadataHeader)?;
    for (k, v) in &md {
        if k.is_empty() || !valid_metadata_value(k) || !valid_metadata_value(v) {
            return Err(BodyError::MetadataLimit(format!(
                "header entry '{}' is not 1-256 characters of [a-zA-Z0-9 :_@$#=/+,-.]",
                k.chars().take(64).collect::<String>()
            )));
        }
    }
    Ok(md)
}

/// The client's metadata for a request: the header's entries (see
/// [`parse_metadata_header`]) together with the body's `requestMetadata`
/// ([`RequestFacts::metadata`]). A key given different values in both is refused
/// rather than silently picking one. The result feeds
/// `identity::merge_body_attribution` and [`merge_metadata`] just as the body's
/// metadata does today.
pub fn client_metadata(
    header: Option<&str>,
    body: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, BodyError> {
    let Some(header) = header else {
        return Ok(body.clone());
    };
    let mut merged = parse_metadata_header(header)?;
    for (k, v) in body {
        match merged.get(k) {
            Some(h) if h != v => {
                return Err(BodyError::MetadataLimit(format!(
                    "key '{}' has one value in the X-Amzn-Bedrock-Request-Metadata header and another in the body; send it once",
                    k.chars().take(64).collect::<String>()
                )))
            }
            _ => {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    Ok(merged)
}

/// Billing-changing options found in a Converse body.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BodyBillingOptions {
    /// `serviceTier.type` (or `serviceTier` as a string), when present.
    pub service_tier: Option<String>,
    /// `performanceConfig.latency`, when present.
    pub performance_latency: Option<String>,
    /// `guardrailConfig` is present.
    pub guardrail: bool,
}

impl BodyBillingOptions {
    fn read(op: Operation, root: &Value) -> Self {
        if !op.is_converse() {
            return Self::default();
        }
        let text = |v: &Value| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        Self {
            service_tier: root.get("serviceTier").map(|t| match t.get("type") {
                Some(ty) => text(ty),
                None => text(t),
            }),
            performance_latency: root.pointer("/performanceConfig/latency").map(text),
            guardrail: root.get("guardrailConfig").is_some_and(|g| !g.is_null()),
        }
    }
}

/// Which billing-changing options a deployment lets through. Everything is denied
/// by default: the hold is priced at the standard on-demand rate, without
/// guardrail charges.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BillingOptionsPolicy {
    /// Service tiers other than `default` (`priority`, `flex`, …).
    pub service_tier: bool,
    /// `performanceConfig.latency` / `X-Amzn-Bedrock-PerformanceConfig-Latency`
    /// other than `standard` (latency-optimized inference is priced differently).
    pub performance_latency: bool,
    /// Guardrails (`guardrailConfig`, `X-Amzn-Bedrock-GuardrailIdentifier`,
    /// `-GuardrailVersion`, `X-Amzn-Bedrock-Trace`), billed per text unit.
    pub guardrails: bool,
}

pub const SERVICE_TIER_HEADER: &str = "x-amzn-bedrock-service-tier";
pub const PERFORMANCE_LATENCY_HEADER: &str = "x-amzn-bedrock-performanceconfig-latency";
pub const GUARDRAIL_ID_HEADER: &str = "x-amzn-bedrock-guardrailidentifier";
pub const GUARDRAIL_VERSION_HEADER: &str = "x-amzn-bedrock-guardrailversion";
pub const TRACE_HEADER: &str = "x-amzn-bedrock-trace";

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BillingOptionError {
    #[error("{option} = '{value}' changes what Bedrock bills and is not enabled on this gateway; remove it (or ask the gateway operator to allow {option})")]
    Refused { option: &'static str, value: String },
}

/// Refuses billing-changing options the policy does not allow. `header` looks up
/// a request header by lower-case name (case-insensitively); `body` is
/// [`RequestFacts::billing`]. Headers are checked on every operation (Bedrock
/// reads them on InvokeModel; on Converse they have no business being sent).
pub fn billing_options<'a>(
    header: impl Fn(&str) -> Option<&'a str>,
    body: &BodyBillingOptions,
    allow: &BillingOptionsPolicy,
) -> Result<(), BillingOptionError> {
    let refuse = |option: &'static str, value: &str| {
        Err(BillingOptionError::Refused {
            option,
            value: value
                .chars()
                .take(64)
                .collect::<String>()
                .escape_debug()
                .to_string(),
        })
    };
    let is = |v: &str, want: &str| v.trim().eq_ignore_ascii_case(want);
    if !allow.service_tier {
        if let Some(v) = header(SERVICE_TIER_HEADER).filter(|v| !is(v, "default")) {
            return refuse("X-Amzn-Bedrock-Service-Tier", v);
        }
        if let Some(v) = body.service_tier.as_deref().filter(|v| !is(v, "default")) {
            return refuse("serviceTier", v);
        }
    }
    if !allow.performance_latency {
        if let Some(v) = header(PERFORMANCE_LATENCY_HEADER).filter(|v| !is(v, "standard")) {
            return refuse("X-Amzn-Bedrock-PerformanceConfig-Latency", v);
        }
        if let Some(v) = body
            .performance_latency
            .as_deref()
            .filter(|v| !is(v, "standard"))
        {
            return refuse("performanceConfig.latency", v);
        }
    }
    if !allow.guardrails {
        if let Some(v) = header(GUARDRAIL_ID_HEADER) {
            return refuse("X-Amzn-Bedrock-GuardrailIdentifier", v);
        }
        if let Some(v) = header(GUARDRAIL_VERSION_HEADER) {
            return refuse("X-Amzn-Bedrock-GuardrailVersion", v);
        }
        if let Some(v) = header(TRACE_HEADER).filter(|v| !is(v, "DISABLED")) {
            return refuse("X-Amzn-Bedrock-Trace", v);
        }
        if body.guardrail {
            return refuse("guardrailConfig", "{…}");
        }
    }
    Ok(())
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
        RequestFacts::read(op, "x", &serde_json::to_vec(&v).unwrap()).unwrap()
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
            RequestFacts::read(Operation::Converse, "x", b"{nope"),
            Err(BodyError::Json(_))
        ));
        assert_eq!(
            RequestFacts::read(Operation::Converse, "x", b"[1]"),
            Err(BodyError::NotAnObject)
        );
        assert!(matches!(
            RequestFacts::read(
                Operation::Converse,
                "x",
                br#"{"inferenceConfig":{"maxTokens":-1}}"#
            ),
            Err(BodyError::BadMaxTokens { .. })
        ));
        assert!(matches!(
            RequestFacts::read(Operation::Invoke, "x", br#"{"max_tokens":"9"}"#),
            Err(BodyError::BadMaxTokens { .. })
        ));
        assert_eq!(
            RequestFacts::read(Operation::Converse, "x", br#"{"requestMetadata":{"a":1}}"#),
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

    /// A key twice in one object is read once (the last, as Bedrock's parser
    /// reads it), and the forwarded body is re-serialized with that key once: the
    /// limit Bedrock obeys is the limit held, whatever order an attacker picks.
    #[test]
    fn a_key_twice_is_read_and_forwarded_once() {
        for (body, read) in [
            (
                &br#"{"inferenceConfig":{"maxTokens":4000,"maxTokens":3}}"#[..],
                3,
            ),
            (
                &br#"{"inferenceConfig":{"maxTokens":3,"maxTokens":4000}}"#[..],
                4000,
            ),
        ] {
            let f = RequestFacts::read(Operation::Converse, "x", body).unwrap();
            assert_eq!(f.max_output_tokens, Some(read));
            let out = f
                .rewrite(body, Operation::Converse, "x", 4096, None)
                .unwrap();
            let text = String::from_utf8(out).unwrap();
            assert_eq!(text.matches("maxTokens").count(), 1, "{text}");
            assert!(text.contains(&format!(r#""maxTokens":{read}"#)), "{text}");
        }
    }

    #[test]
    fn rewrite_clamps_and_fills_max_tokens() {
        let out = rewrite(
            Operation::Converse,
            "x",
            br#"{"inferenceConfig":{"maxTokens":5000}}"#,
            4000,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 4000);
        let out = rewrite(
            Operation::Converse,
            "x",
            br#"{"inferenceConfig":{"maxTokens":10}}"#,
            4000,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 10);
        let out = rewrite(Operation::Converse, "x", br#"{"messages":[]}"#, 512, None).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 512);
        let out = rewrite(
            Operation::Invoke,
            "x",
            br#"{"anthropic_version":"x","messages":[]}"#,
            256,
            None,
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["max_tokens"], 256);
        let out = rewrite(Operation::Invoke, "x", br#"{"unknown":"shape"}"#, 256, None).unwrap();
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
            "x",
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

    const NOVA: &str = "us.amazon.nova-pro-v1:0";

    fn read(model: &str, v: Value) -> Result<RequestFacts, BodyError> {
        RequestFacts::read(Operation::Invoke, model, &serde_json::to_vec(&v).unwrap())
    }

    fn rewritten(op: Operation, model: &str, v: Value, max: u64) -> Result<Value, BodyError> {
        let out = rewrite(op, model, &serde_json::to_vec(&v).unwrap(), max, None)?;
        Ok(serde_json::from_slice(&out).unwrap())
    }

    #[test]
    fn families_from_model_ids() {
        for (id, want) in [
            ("anthropic.claude-3-haiku-20240307-v1:0", ModelFamily::Anthropic),
            ("us.anthropic.claude-3-7-sonnet-20250219-v1:0", ModelFamily::Anthropic),
            ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", ModelFamily::Anthropic),
            ("apac.amazon.nova-lite-v1:0", ModelFamily::Nova),
            ("amazon.nova-micro-v1:0", ModelFamily::Nova),
            ("global.amazon.nova-2-lite-v1:0", ModelFamily::Nova2),
            ("amazon.titan-text-express-v1", ModelFamily::Titan),
            ("eu.meta.llama3-2-3b-instruct-v1:0", ModelFamily::Llama),
            ("mistral.mistral-large-2402-v1:0", ModelFamily::Mistral),
            ("cohere.command-r-plus-v1:0", ModelFamily::Cohere),
            ("ai21.jamba-1-5-large-v1:0", ModelFamily::Ai21),
            ("us.deepseek.r1-v1:0", ModelFamily::DeepSeek),
            ("openai.gpt-oss-120b-1:0", ModelFamily::OpenAi),
            (
                "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0",
                ModelFamily::Nova,
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.meta.llama3-1-8b-instruct-v1:0",
                ModelFamily::Llama,
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
                ModelFamily::Unknown,
            ),
            ("claude-3-haiku", ModelFamily::Unknown),
            ("amazon.other-v1", ModelFamily::Unknown),
        ] {
            assert_eq!(ModelFamily::from_model_id(id), want, "{id}");
        }
    }

    #[test]
    fn nova_holds_the_field_it_obeys() {
        // The security review's case: a 1-token hold for a 3000-token generation.
        let e = read(
            NOVA,
            json!({"messages":[],"max_tokens":1,"inferenceConfig":{"max_new_tokens":3000}}),
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                BodyError::ForeignMaxTokens {
                    field: "max_tokens",
                    ..
                }
            ),
            "{e}"
        );
        assert!(
            e.to_string().contains("inferenceConfig.max_new_tokens"),
            "{e}"
        );
        // A foreign field alone is refused too: Nova would ignore it.
        assert!(read(NOVA, json!({"messages":[],"max_tokens":1})).is_err());
        let f = read(
            NOVA,
            json!({"messages":[],"inferenceConfig":{"max_new_tokens":3000}}),
        )
        .unwrap();
        assert_eq!(f.max_output_tokens, Some(3000));
        let v = rewritten(
            Operation::Invoke,
            NOVA,
            json!({"messages":[],"inferenceConfig":{"max_new_tokens":3000}}),
            100,
        )
        .unwrap();
        assert_eq!(v["inferenceConfig"]["max_new_tokens"], 100);
        // Absent: inserted where Nova reads it.
        let v = rewritten(Operation::Invoke, NOVA, json!({"messages":[]}), 64).unwrap();
        assert_eq!(v["inferenceConfig"]["max_new_tokens"], 64);
        assert!(v.get("max_tokens").is_none());
        // Aliases must agree, and are clamped together.
        assert!(matches!(
            read(
                NOVA,
                json!({"inferenceConfig":{"max_new_tokens":10,"maxTokens":20}})
            ),
            Err(BodyError::ConflictingMaxTokens { .. })
        ));
        let v = rewritten(
            Operation::Invoke,
            NOVA,
            json!({"inferenceConfig":{"max_new_tokens":500,"maxTokens":500}}),
            100,
        )
        .unwrap();
        assert_eq!(
            v["inferenceConfig"],
            json!({"max_new_tokens":100,"maxTokens":100})
        );
    }

    #[test]
    fn each_family_reads_and_clamps_its_own_field() {
        for (model, body, pointer) in [
            (
                "anthropic.claude-3-haiku-20240307-v1:0",
                json!({"anthropic_version":"bedrock-2023-05-31","messages":[],"max_tokens":900}),
                "/max_tokens",
            ),
            (
                "anthropic.claude-v2:1",
                json!({"prompt":"\n\nHuman: hi\n\nAssistant:","max_tokens_to_sample":900}),
                "/max_tokens_to_sample",
            ),
            (
                "amazon.titan-text-express-v1",
                json!({"inputText":"x","textGenerationConfig":{"maxTokenCount":900}}),
                "/textGenerationConfig/maxTokenCount",
            ),
            (
                "meta.llama3-70b-instruct-v1:0",
                json!({"prompt":"x","max_gen_len":900}),
                "/max_gen_len",
            ),
            (
                "mistral.mistral-7b-instruct-v0:2",
                json!({"prompt":"x","max_tokens":900}),
                "/max_tokens",
            ),
            (
                "cohere.command-r-v1:0",
                json!({"message":"x","max_tokens":900}),
                "/max_tokens",
            ),
            (
                "ai21.j2-ultra-v1",
                json!({"prompt":"x","maxTokens":900}),
                "/maxTokens",
            ),
            (
                "ai21.jamba-instruct-v1:0",
                json!({"messages":[],"max_tokens":900}),
                "/max_tokens",
            ),
            (
                "us.deepseek.r1-v1:0",
                json!({"prompt":"x","max_tokens":900}),
                "/max_tokens",
            ),
            (
                "openai.gpt-oss-20b-1:0",
                json!({"messages":[],"max_completion_tokens":900}),
                "/max_completion_tokens",
            ),
        ] {
            assert_eq!(
                read(model, body.clone()).unwrap().max_output_tokens,
                Some(900),
                "{model}"
            );
            let v = rewritten(Operation::Invoke, model, body.clone(), 50).unwrap();
            assert_eq!(v.pointer(pointer), Some(&json!(50)), "{model}");
            let v = rewritten(Operation::Invoke, model, body, 5000).unwrap();
            assert_eq!(v.pointer(pointer), Some(&json!(900)), "{model}");
        }
        // Llama ignores max_tokens.
        assert!(matches!(
            read(
                "meta.llama3-70b-instruct-v1:0",
                json!({"prompt":"x","max_tokens":1,"max_gen_len":2048})
            ),
            Err(BodyError::ForeignMaxTokens { .. })
        ));
        // Titan with Nova's field.
        assert!(read(
            "amazon.titan-text-lite-v1",
            json!({"inferenceConfig":{"max_new_tokens":5}})
        )
        .is_err());
        // Insertion per family, but never into embedding or image models.
        let v = rewritten(
            Operation::Invoke,
            "meta.llama3-8b-instruct-v1:0",
            json!({"prompt":"x"}),
            77,
        )
        .unwrap();
        assert_eq!(v["max_gen_len"], 77);
        let v = rewritten(
            Operation::Invoke,
            "amazon.titan-embed-text-v2:0",
            json!({"inputText":"x"}),
            77,
        )
        .unwrap();
        assert_eq!(v, json!({"inputText":"x"}));
        let v = rewritten(
            Operation::Invoke,
            "cohere.embed-english-v3",
            json!({"texts":["x"]}),
            77,
        )
        .unwrap();
        assert_eq!(v, json!({"texts":["x"]}));
    }

    #[test]
    fn unknown_family_refuses_conflicting_limits() {
        let arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        assert!(matches!(
            read(
                arn,
                json!({"max_tokens":1,"inferenceConfig":{"max_new_tokens":3000}})
            ),
            Err(BodyError::ConflictingMaxTokens {
                first: "max_tokens",
                second: "inferenceConfig.max_new_tokens",
                ..
            })
        ));
        let f = read(
            arn,
            json!({"max_tokens":30,"inferenceConfig":{"max_new_tokens":30}}),
        )
        .unwrap();
        assert_eq!(f.max_output_tokens, Some(30));
        // Every agreeing field is clamped.
        let v = rewritten(
            Operation::Invoke,
            arn,
            json!({"max_tokens":30,"inferenceConfig":{"max_new_tokens":30}}),
            10,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"max_tokens":10,"inferenceConfig":{"max_new_tokens":10}})
        );
        // The rewrite checks the body against the resolved model: an alias whose
        // body used a field the real model ignores is refused there.
        assert!(rewritten(Operation::Invoke, NOVA, json!({"max_tokens":1}), 10).is_err());
    }

    #[test]
    fn converse_additional_model_request_fields_cannot_override_the_limit() {
        let conv = |v: Value| {
            RequestFacts::read(Operation::Converse, NOVA, &serde_json::to_vec(&v).unwrap())
        };
        for extra in [
            json!({"max_tokens":4000}),
            json!({"inferenceConfig":{"max_new_tokens":4000}}),
            json!({"maxTokens":"100"}),
        ] {
            let e = conv(
                json!({"inferenceConfig":{"maxTokens":100},"additionalModelRequestFields":extra}),
            )
            .unwrap_err();
            assert!(
                matches!(e, BodyError::AdditionalMaxTokens { .. }),
                "{extra}"
            );
            assert!(e.to_string().contains("inferenceConfig.maxTokens"), "{e}");
        }
        // Without inferenceConfig.maxTokens an additional limit is refused too.
        assert!(conv(json!({"additionalModelRequestFields":{"max_tokens":5}})).is_err());
        // Equal values pass, and the rewrite clamps both to the enforced limit.
        let body = json!({"inferenceConfig":{"maxTokens":100},
                          "additionalModelRequestFields":{"max_tokens":100,"top_k":5,"inferenceConfig":{"max_new_tokens":100}}});
        assert_eq!(conv(body.clone()).unwrap().max_output_tokens, Some(100));
        let v = rewritten(Operation::Converse, NOVA, body.clone(), 40).unwrap();
        assert_eq!(v["inferenceConfig"]["maxTokens"], 40);
        assert_eq!(v["additionalModelRequestFields"]["max_tokens"], 40);
        assert_eq!(
            v["additionalModelRequestFields"]["inferenceConfig"]["max_new_tokens"],
            40
        );
        assert_eq!(v["additionalModelRequestFields"]["top_k"], 5);
        let v = rewritten(Operation::Converse, NOVA, body, 4000).unwrap();
        assert_eq!(v["additionalModelRequestFields"]["max_tokens"], 100);
        // Unrelated additional fields are untouched.
        assert!(conv(
            json!({"additionalModelRequestFields":{"top_k":5,"thinking":{"budget_tokens":1024}}})
        )
        .is_ok());
    }

    fn headers<'a>(h: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> + 'a {
        move |name: &str| {
            h.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn billing_options_are_refused_unless_allowed() {
        let deny = BillingOptionsPolicy::default();
        let none = BodyBillingOptions::default();
        assert_eq!(billing_options(headers(&[]), &none, &deny), Ok(()));
        // Standard values are not billing changes.
        assert_eq!(
            billing_options(
                headers(&[
                    ("X-Amzn-Bedrock-Service-Tier", "default"),
                    ("X-Amzn-Bedrock-PerformanceConfig-Latency", "standard"),
                    ("X-Amzn-Bedrock-Trace", "DISABLED"),
                ]),
                &none,
                &deny
            ),
            Ok(())
        );
        for (name, value) in [
            ("X-Amzn-Bedrock-Service-Tier", "priority"),
            ("X-Amzn-Bedrock-Service-Tier", "flex"),
            ("X-Amzn-Bedrock-PerformanceConfig-Latency", "optimized"),
            ("X-Amzn-Bedrock-GuardrailIdentifier", "gr-1"),
            ("X-Amzn-Bedrock-GuardrailVersion", "1"),
            ("X-Amzn-Bedrock-Trace", "ENABLED"),
        ] {
            let h = [(name, value)];
            let e = billing_options(headers(&h), &none, &deny).unwrap_err();
            assert!(e.to_string().contains(name), "{e}");
            let all = BillingOptionsPolicy {
                service_tier: true,
                performance_latency: true,
                guardrails: true,
            };
            assert_eq!(billing_options(headers(&h), &none, &all), Ok(()));
        }
        for body in [
            json!({"serviceTier":{"type":"priority"}}),
            json!({"performanceConfig":{"latency":"optimized"}}),
            json!({"guardrailConfig":{"guardrailIdentifier":"g","guardrailVersion":"1"}}),
        ] {
            let f = RequestFacts::read(
                Operation::Converse,
                NOVA,
                &serde_json::to_vec(&body).unwrap(),
            )
            .unwrap();
            assert!(
                billing_options(headers(&[]), &f.billing, &deny).is_err(),
                "{body}"
            );
        }
        let f = RequestFacts::read(
            Operation::Converse,
            NOVA,
            br#"{"serviceTier":{"type":"default"},"performanceConfig":{"latency":"standard"}}"#,
        )
        .unwrap();
        assert_eq!(billing_options(headers(&[]), &f.billing, &deny), Ok(()));
        let only_tier = BillingOptionsPolicy {
            service_tier: true,
            ..Default::default()
        };
        let f = RequestFacts::read(
            Operation::Converse,
            NOVA,
            br#"{"serviceTier":{"type":"flex"},"guardrailConfig":{}}"#,
        )
        .unwrap();
        assert!(matches!(
            billing_options(headers(&[]), &f.billing, &only_tier),
            Err(BillingOptionError::Refused {
                option: "guardrailConfig",
                ..
            })
        ));
    }

    #[test]
    fn client_metadata_header_is_attribution_input() {
        let md = parse_metadata_header(r#"{"user_id":"u1","cost_center":"cc-9"}"#).unwrap();
        assert_eq!(md["user_id"], "u1");
        for bad in [r#"[1]"#, r#"{"a":1}"#, "not json", r#"{"a":"<x>"}"#] {
            assert!(parse_metadata_header(bad).is_err(), "{bad}");
        }
        assert!(parse_metadata_header(&format!(r#"{{"a":"{}"}}"#, "b".repeat(9000))).is_err());
        let body: BTreeMap<_, _> = [("application_id".to_string(), "app".to_string())].into();
        let merged = client_metadata(Some(r#"{"user_id":"u1"}"#), &body).unwrap();
        assert_eq!(merged.len(), 2);
        assert_eq!(client_metadata(None, &body).unwrap(), body);
        assert!(matches!(
            client_metadata(Some(r#"{"application_id":"other"}"#), &body),
            Err(BodyError::MetadataLimit(_))
        ));
        // Gateway keys still win over whatever the header claimed.
        let gw: BTreeMap<_, _> = [("tenant_id".to_string(), "real".to_string())].into();
        let forged = client_metadata(Some(r#"{"tenant_id":"forged"}"#), &BTreeMap::new()).unwrap();
        assert_eq!(merge_metadata(&forged, &gw).unwrap()["tenant_id"], "real");
    }

    /// The survey + splice path against the whole-`Value` path it replaces:
    /// the same facts, the same errors, and a forwarded body that is the same
    /// JSON document (key order included) as the re-serialised one.
    #[test]
    fn splice_matches_the_whole_value_rewrite() {
        let bodies: &[&str] = &[
            // The bench's shape, with whitespace the splice must keep.
            r#"{"messages":[{"role":"user","content":[{"text":"hi"}]}],"inferenceConfig":{"maxTokens":128}}"#,
            "{ \"messages\" : [ ] ,\n \"inferenceConfig\" :\t{ \"maxTokens\" : 9000 , \"temperature\" : 0.5 } }\n",
            r#"{"messages":[]}"#,
            r#"{}"#,
            " { } ",
            r#"{"inferenceConfig":{}}"#,
            r#"{"inferenceConfig":{"temperature":1}, "messages":[]}"#,
            r#"{"inferenceConfig":null}"#,
            r#"{"inferenceConfig":"x"}"#,
            r#"{"inferenceConfig":{"maxTokens":null}}"#,
            // Escapes and unicode in keys and strings, skipped and kept as sent.
            r#"{"messages":[{"content":[{"text":"a \"quoted\" }{ ][ \\ \u00e9 é 😀 \ud83d\ude00"}]}],"inferenceConfig":{"maxTokens":5000}}"#,
            r#"{"inference\u0043onfig":{"maxTokens":5000},"messages":[]}"#,
            r#"{"m\u00e9ssages":"x","inferenceConfig":{"maxTokens":50}}"#,
            r#"{"requestMetadata":{"user_id":"u1","tenant_id":"forged"},"messages":[]}"#,
            r#"{"messages":[],"requestMetadata":{}}"#,
            r#"{"requestMetadata":{"a":"b"},"inferenceConfig":{"maxTokens":10}}"#,
            r#"{"inferenceConfig":{"maxTokens":100},"additionalModelRequestFields":{"max_tokens":100,"top_k":5,"inferenceConfig":{"max_new_tokens":100}}}"#,
            r#"{"additionalModelRequestFields":{"top_k":5},"messages":[]}"#,
            r#"{"serviceTier":{"type":"default"},"performanceConfig":{"latency":"standard"}}"#,
            // Nested objects and arrays, numbers of every kind, binary blocks.
            r#"{"toolConfig":{"tools":[{"toolSpec":{"name":"t","inputSchema":{"json":{"type":"object","properties":{"a":{"type":"number","minimum":-1.5e3}}}}}}]},"messages":[{"content":[{"image":{"format":"png","source":{"bytes":"QUFB"}}}]}],"x":[1,-2,3.25,true,false,null,[],{}]}"#,
            // InvokeModel families.
            r#"{"anthropic_version":"bedrock-2023-05-31","messages":[],"max_tokens":9000}"#,
            r#"{"anthropic_version":"bedrock-2023-05-31","messages":[]}"#,
            r#"{"prompt":"\n\nHuman: hi\n\nAssistant:","max_tokens_to_sample":900}"#,
            r#"{"messages":[],"inferenceConfig":{"max_new_tokens":3000,"maxTokens":3000}}"#,
            r#"{"inputText":"x","textGenerationConfig":{"maxTokenCount":9000}}"#,
            r#"{"inputText":"x"}"#,
            r#"{"prompt":"x","max_gen_len":9000}"#,
            r#"{"messages":[],"max_completion_tokens":9000,"max_tokens":9000}"#,
            r#"{"prompt":"x","maxTokens":9000}"#,
            r#"{"max_tokens":"9"}"#,
            r#"{"max_tokens":-1}"#,
            r#"{"max_tokens":1.0}"#,
            r#"{"max_tokens":1,"inferenceConfig":{"max_new_tokens":3000}}"#,
            // Keys twice (anywhere): the whole-`Value` path.
            r#"{"inferenceConfig":{"maxTokens":4000,"maxTokens":3}}"#,
            r#"{"inferenceConfig":{"maxTokens":4000},"inferenceConfig":{"maxTokens":3}}"#,
            r#"{"messages":[{"role":"user","role":"assistant"}],"inferenceConfig":{"maxTokens":3}}"#,
            r#"{"a":1,"a":2}"#,
            // Refused bodies.
            "",
            "{",
            "{nope",
            "[1]",
            "\"s\"",
            "null",
            r#"{"x":1e400}"#,
            r#"{"x":"\ud800"}"#,
            r#"{"x":1} x"#,
            r#"{"x":1,}"#,
            r#"{"requestMetadata":{"a":1}}"#,
            r#"{"requestMetadata":[]}"#,
        ];
        let models = [
            "x",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "anthropic.claude-v2:1",
            NOVA,
            "us.amazon.nova-2-lite-v1:0",
            "amazon.titan-text-express-v1",
            "amazon.titan-embed-text-v2:0",
            "meta.llama3-70b-instruct-v1:0",
            "openai.gpt-oss-20b-1:0",
            "ai21.j2-ultra-v1",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
        ];
        let md: BTreeMap<String, String> = [
            ("tenant_id".to_string(), "t1".to_string()),
            ("request_id".to_string(), "tg-1".to_string()),
        ]
        .into();
        let reparse =
            |b: &[u8]| serde_json::to_string(&serde_json::from_slice::<Value>(b).unwrap()).unwrap();
        for body in bodies {
            let body = body.as_bytes();
            for op in [Operation::Converse, Operation::Invoke] {
                for model in models {
                    let ctx = format!("{op:?} {model} {}", String::from_utf8_lossy(body));
                    let fast = RequestFacts::read(op, model, body);
                    let whole = RequestFacts::read_whole(op, model, body);
                    let (fast, whole) = match (fast, whole) {
                        (Err(a), Err(b)) => {
                            assert_eq!(a, b, "{ctx}");
                            continue;
                        }
                        (Ok(a), Ok(b)) => (a, b),
                        (a, b) => panic!("{ctx}: {a:?} vs {b:?}"),
                    };
                    assert_eq!(fast.max_output_tokens, whole.max_output_tokens, "{ctx}");
                    assert_eq!(
                        fast.input_tokens_estimate, whole.input_tokens_estimate,
                        "{ctx}"
                    );
                    assert_eq!(fast.metadata, whole.metadata, "{ctx}");
                    assert_eq!(fast.billing, whole.billing, "{ctx}");
                    for cap in [1, 64, 128, 100_000] {
                        for m in [None, Some(&md)] {
                            let a = fast.rewrite(body, op, model, cap, m);
                            let b = whole.rewrite(body, op, model, cap, m);
                            let c = rewrite(op, model, body, cap, m);
                            match (a, b, c) {
                                (Ok(a), Ok(b), Ok(c)) => {
                                    assert_eq!(reparse(&a), reparse(&b), "{ctx} {cap}");
                                    assert_eq!(a, c, "{ctx} {cap}");
                                }
                                (Err(a), Err(b), Err(c)) => {
                                    assert_eq!(a, b, "{ctx}");
                                    assert_eq!(a, c, "{ctx}");
                                }
                                (a, b, c) => panic!("{ctx}: {a:?} / {b:?} / {c:?}"),
                            }
                        }
                    }
                }
            }
        }
    }

    /// The splice keeps the client's bytes outside the members it changes.
    #[test]
    fn splice_keeps_the_rest_of_the_body_as_sent() {
        let body = "{ \"messages\" : [{\"content\":[{\"text\":\"caf\\u00e9 \\\"}\"}]}] ,\n \"inferenceConfig\" : { \"maxTokens\" : 9000 } }\n";
        let out = rewrite(Operation::Converse, "x", body.as_bytes(), 100, None).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "{ \"messages\" : [{\"content\":[{\"text\":\"caf\\u00e9 \\\"}\"}]}] ,\n \"inferenceConfig\" : {\"maxTokens\":100} }\n"
        );
        // Under the limit and no metadata: nothing to change, the body as sent.
        let body = b"{\"inferenceConfig\": {\"maxTokens\": 10}, \"messages\": []}";
        assert_eq!(
            rewrite(Operation::Converse, "x", body, 100, None).unwrap(),
            body.to_vec()
        );
        // Added members go last, after the client's, in the rules' order.
        let md: BTreeMap<_, _> = [("tenant_id".to_string(), "t".to_string())].into();
        let out = rewrite(
            Operation::Converse,
            "x",
            b"{\"messages\":[] }",
            7,
            Some(&md),
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"messages":[] ,"inferenceConfig":{"maxTokens":7},"requestMetadata":{"tenant_id":"t"}}"#
        );
        let out = rewrite(Operation::Converse, "x", b"{}", 7, None).unwrap();
        assert_eq!(out, br#"{"inferenceConfig":{"maxTokens":7}}"#.to_vec());
    }

    /// The fuzz target's invariant, over family bodies: a rewritten body reads
    /// back under the same model, with a limit no higher than the cap (or the
    /// request's own, lower, limit).
    #[test]
    fn rewrite_reads_back_within_the_cap() {
        let bodies = [
            json!({"messages":[]}),
            json!({"max_tokens":9000,"anthropic_version":"x","messages":[]}),
            json!({"inferenceConfig":{"max_new_tokens":9000,"maxTokens":9000}}),
            json!({"inferenceConfig":{"maxTokens":10},"additionalModelRequestFields":{"max_tokens":10}}),
            json!({"textGenerationConfig":{"maxTokenCount":9000}}),
            json!({"max_gen_len":3}),
            json!({"max_completion_tokens":9000,"max_tokens":9000}),
            json!({"maxTokens":9000}),
        ];
        let models = [
            "x",
            "anthropic.claude-3-haiku-20240307-v1:0",
            NOVA,
            "us.amazon.nova-2-lite-v1:0",
            "amazon.titan-text-express-v1",
            "meta.llama3-70b-instruct-v1:0",
            "openai.gpt-oss-20b-1:0",
            "ai21.j2-ultra-v1",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc",
        ];
        let cap = 256;
        for op in [Operation::Converse, Operation::Invoke] {
            for model in models {
                for body in &bodies {
                    let raw = serde_json::to_vec(body).unwrap();
                    let Ok(facts) = RequestFacts::read(op, model, &raw) else {
                        continue;
                    };
                    let out = rewrite(op, model, &raw, cap, Some(&facts.metadata))
                        .unwrap_or_else(|e| panic!("{op:?} {model} {body}: {e}"));
                    let again = RequestFacts::read(op, model, &out)
                        .unwrap_or_else(|e| panic!("{op:?} {model} {body}: {e}"));
                    if let Some(max) = again.max_output_tokens {
                        assert!(max <= cap, "{op:?} {model} {body}");
                    }
                }
            }
        }
    }
}

/// The differential test of `splice_matches_the_whole_value_rewrite`, over
/// generated bodies (native only: proptest is not built for wasm32).
#[cfg(all(test, not(target_arch = "wasm32")))]
mod splice_proptest {
    use super::*;
    use proptest::prelude::*;

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(MEMBERS.to_vec()).prop_map(str::to_owned),
            prop::sample::select(PRESENCE.to_vec()).prop_map(str::to_owned),
            prop::sample::select(vec![
                "maxTokens",
                "max_new_tokens",
                "maxTokenCount",
                "type",
                "latency",
                "text",
                "bytes",
                "data",
                "é\"}\\",
            ])
            .prop_map(str::to_owned),
        ]
    }

    fn value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (0u64..20_000).prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            Just(serde_json::json!(0.5)),
            "[a-z \"\\\\}{é😀]{0,8}".prop_map(Value::String),
            Just(Value::String("A".repeat(300))),
        ];
        leaf.prop_recursive(4, 40, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..5)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    fn body() -> impl Strategy<Value = (Vec<u8>, bool)> {
        (prop::collection::vec((key(), value()), 0..6), any::<bool>()).prop_map(|(kv, pretty)| {
            let v = Value::Object(kv.into_iter().collect());
            let b = if pretty {
                serde_json::to_vec_pretty(&v).unwrap()
            } else {
                serde_json::to_vec(&v).unwrap()
            };
            (b, pretty)
        })
    }

    proptest! {
        #[test]
        fn survey_and_splice_match_the_whole_value((body, _pretty) in body(), cap in 1u64..10_000) {
            let reparse = |b: &[u8]| {
                serde_json::to_string(&serde_json::from_slice::<Value>(b).unwrap()).unwrap()
            };
            let md: BTreeMap<String, String> =
                [("tenant_id".to_string(), "t".to_string())].into();
            for op in [Operation::Converse, Operation::Invoke] {
                for model in ["x", "anthropic.claude-3-haiku-20240307-v1:0", "us.amazon.nova-pro-v1:0", "meta.llama3-8b-instruct-v1:0"] {
                    let fast = RequestFacts::read(op, model, &body);
                    let whole = RequestFacts::read_whole(op, model, &body);
                    match (fast, whole) {
                        (Err(a), Err(b)) => prop_assert_eq!(a, b),
                        (Ok(f), Ok(w)) => {
                            prop_assert_eq!(f.max_output_tokens, w.max_output_tokens);
                            prop_assert_eq!(f.input_tokens_estimate, w.input_tokens_estimate);
                            prop_assert_eq!(&f.metadata, &w.metadata);
                            prop_assert_eq!(&f.billing, &w.billing);
                            for m in [None, Some(&md)] {
                                match (f.rewrite(&body, op, model, cap, m), w.rewrite(&body, op, model, cap, m)) {
                                    (Ok(a), Ok(b)) => prop_assert_eq!(reparse(&a), reparse(&b)),
                                    (Err(a), Err(b)) => prop_assert_eq!(a, b),
                                    (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
                                }
                            }
                        }
                        (a, b) => prop_assert!(false, "{:?} vs {:?}", a, b),
                    }
                }
            }
        }
    }
}
