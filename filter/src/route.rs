//! Bedrock Runtime request paths: `/model/{modelId}/{operation}`.
//!
//! Clients encode the model segment differently (boto3 `%3A`/`%2F`,
//! AnthropicBedrock leaves `:` raw), so the segment is percent-decoded before it is
//! matched, and re-encoded the way the AWS SDKs do when the path is rewritten.

use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use thiserror::Error;
use tollgate_wire::api::Operation;

/// Bedrock's `InvokeModelIdentifier` maximum length.
const MAX_MODEL_ID_LEN: usize = 2048;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BedrockRoute {
    /// Percent-decoded model identifier.
    pub model: String,
    pub operation: Operation,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RouteError {
    #[error("Tollgate serves only POST /model/{{modelId}}/{{converse|converse-stream|invoke|invoke-with-response-stream}}; got {0}")]
    UnknownPath(String),
    #[error("unsupported Bedrock operation '{0}': Tollgate meters converse, converse-stream, invoke and invoke-with-response-stream")]
    UnsupportedOperation(String),
    #[error("model identifier is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("model identifier must be 1 to {MAX_MODEL_ID_LEN} characters")]
    BadModelLength,
    #[error("'{0}' is not a Bedrock model identifier: use a model ID such as anthropic.claude-3-haiku-20240307-v1:0 (letters, digits, '.', ':', '_', '-'), an inference profile ID such as us.anthropic.claude-3-7-sonnet-20250219-v1:0, or a bedrock ARN (arn:aws:bedrock:REGION:ACCOUNT:application-inference-profile/ID)")]
    BadModelId(String),
    #[error("method {0} is not allowed; Bedrock Runtime operations use POST")]
    Method(String),
}

impl BedrockRoute {
    pub fn parse(method: &str, path: &str) -> Result<Self, RouteError> {
        let path_only = path.split(['?', '#']).next().unwrap_or_default();
        let mut segments = path_only.split('/');
        let (Some(""), Some("model"), Some(model), Some(op), None) = (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) else {
            return Err(RouteError::UnknownPath(truncate(path_only)));
        };
        let operation = Operation::from_path_segment(op)
            .ok_or_else(|| RouteError::UnsupportedOperation(truncate(op)))?;
        if !method.eq_ignore_ascii_case("POST") {
            return Err(RouteError::Method(truncate(method)));
        }
        let model = percent_decode(model).ok_or(RouteError::BadEncoding)?;
        if model.is_empty() || model.len() > MAX_MODEL_ID_LEN {
            return Err(RouteError::BadModelLength);
        }
        if !valid_model_id(&model) {
            return Err(RouteError::BadModelId(printable(&model)));
        }
        Ok(Self { model, operation })
    }

    /// The upstream path for `target` (an ARN or model ID), encoded as boto3 and
    /// smithy-rs encode labels, so the ARN's `/` stays `%2F`.
    pub fn upstream_path(target: &str, operation: Operation) -> String {
        format!(
            "/model/{}/{}",
            percent_encode(target),
            operation.as_path_segment()
        )
    }
}

/// Whether a request asks for the tenant's own balance (`/tollgate/v1/self`,
/// with or without a query string).
pub fn is_self_path(path: &str) -> bool {
    path.split(['?', '#']).next() == Some(tollgate_wire::api::GATEWAY_SELF_PATH)
}

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// For error messages: at most 200 characters, control characters escaped.
fn printable(s: &str) -> String {
    truncate(s).escape_debug().to_string()
}

/// Characters of a model ID, inference profile ID or friendly alias
/// (Bedrock's non-ARN `InvokeModelIdentifier` alternatives use `[a-zA-Z0-9.:_-]`).
fn id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '_' | '-')
}

/// A model ID, inference-profile ID or alias: starts with a letter or digit, only
/// `[a-zA-Z0-9.:_-]`, no `..` (nothing path-like survives into the upstream path).
fn valid_plain_id(s: &str) -> bool {
    s.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && s.chars().all(id_char)
        && !s.contains("..")
}

/// Bedrock's resource types that `InvokeModelIdentifier` accepts in an ARN.
const ARN_RESOURCE_TYPES: &[&str] = &[
    "foundation-model",
    "custom-model",
    "custom-model-deployment",
    "imported-model",
    "provisioned-model",
    "inference-profile",
    "application-inference-profile",
    "default-prompt-router",
    "prompt-router",
    "prompt",
];

/// `arn:PARTITION:bedrock:REGION:ACCOUNT:TYPE/ID[/ID]`, following Bedrock's
/// `InvokeModelIdentifier` pattern: partition `aws` or `aws-…`, region
/// `[a-z0-9-]{1,20}`, account 12 digits (empty only for `foundation-model`), a
/// known resource type, and one or two `/`-separated IDs of `[a-zA-Z0-9.:_-]`.
fn valid_arn(s: &str) -> bool {
    let mut parts = s.splitn(6, ':');
    let (Some("arn"), Some(partition), Some("bedrock"), Some(region), Some(account), Some(rest)) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return false;
    };
    let partition_ok = partition == "aws"
        || partition.strip_prefix("aws-").is_some_and(|p| {
            !p.is_empty() && p.chars().all(|c| c.is_ascii_lowercase() || c == '-')
        });
    let region_ok = (1..=20).contains(&region.len())
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let Some((kind, ids)) = rest.split_once('/') else {
        return false;
    };
    let account_ok = (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()))
        || (account.is_empty() && kind == "foundation-model");
    let id_parts: Vec<&str> = ids.split('/').collect();
    partition_ok
        && region_ok
        && account_ok
        && ARN_RESOURCE_TYPES.contains(&kind)
        && id_parts.len() <= 2
        && id_parts.iter().all(|p| valid_plain_id(p))
}

/// Whether a percent-decoded `{modelId}` can name a Bedrock model: an ARN or a
/// plain identifier. Refusing anything else early keeps `..`, stray `/`, spaces
/// and control characters out of the sidecar lookup and the upstream path.
pub fn valid_model_id(s: &str) -> bool {
    if s.is_empty() || s.len() > MAX_MODEL_ID_LEN {
        return false;
    }
    if s.starts_with("arn:") {
        valid_arn(s)
    } else {
        valid_plain_id(s)
    }
}

/// RFC 3986 unreserved characters stay; everything else is `%XX` (a path
/// segment as the AWS SDKs encode a model ID).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, SEGMENT).to_string()
}

/// The decoded segment; `None` when it is not UTF-8 or has a malformed escape
/// (the crate would pass `%zz` through as is; a model ID with one is refused).
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let well_formed = b
        .iter()
        .enumerate()
        .filter(|(_, c)| **c == b'%')
        .all(|(i, _)| {
            b.get(i + 1..i + 3)
                .is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit))
        });
    if !well_formed {
        return None;
    }
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    const ARN: &str =
        "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/1arbu5hu2sjr";

    #[test]
    fn the_self_path_is_recognised_with_or_without_a_query() {
        assert!(is_self_path("/tollgate/v1/self"));
        assert!(is_self_path("/tollgate/v1/self?x=1"));
        assert!(!is_self_path("/tollgate/v1/self/other"));
        assert!(!is_self_path("/tollgate/v1/selfish"));
        assert!(!is_self_path("/model/m/converse"));
    }

    #[test]
    fn parses_boto3_encoded_arn() {
        let r = BedrockRoute::parse(
            "POST",
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2F1arbu5hu2sjr/converse",
        )
        .unwrap();
        assert_eq!(r.model, ARN);
        assert_eq!(r.operation, Operation::Converse);
    }

    #[test]
    fn parses_anthropic_sdk_encoding_with_raw_colons() {
        let r = BedrockRoute::parse(
            "POST",
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2F1arbu5hu2sjr/invoke",
        )
        .unwrap();
        assert_eq!(r.model, ARN);
        assert_eq!(r.operation, Operation::Invoke);
    }

    #[test]
    fn parses_every_operation_and_model_ids() {
        for (op, want) in [
            ("converse", Operation::Converse),
            ("converse-stream", Operation::ConverseStream),
            ("invoke", Operation::Invoke),
            (
                "invoke-with-response-stream",
                Operation::InvokeWithResponseStream,
            ),
        ] {
            let r = BedrockRoute::parse(
                "POST",
                &format!("/model/us.anthropic.claude-3-7-sonnet-20250219-v1%3A0/{op}"),
            )
            .unwrap();
            assert_eq!(r.operation, want);
            assert_eq!(r.model, "us.anthropic.claude-3-7-sonnet-20250219-v1:0");
        }
    }

    #[test]
    fn refuses_other_paths() {
        for p in [
            "/",
            "/model",
            "/model/x",
            "/model/x/converse/extra",
            "/guardrail/x/version/1/apply",
            "/model/x/count-tokens",
            "/model//converse",
            "/model/%ZZ/converse",
            "/model/%C3%28/converse",
        ] {
            assert!(BedrockRoute::parse("POST", p).is_err(), "{p}");
        }
        assert!(matches!(
            BedrockRoute::parse("GET", "/model/x/converse"),
            Err(RouteError::Method(_))
        ));
    }

    #[test]
    fn an_unescaped_slash_in_an_arn_is_not_a_route() {
        assert!(BedrockRoute::parse(
            "POST",
            "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc/converse"
        )
        .is_err());
    }

    #[test]
    fn accepts_every_model_id_form() {
        for id in [
            "x",
            "claude-3-haiku",
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-3-7-sonnet-20250219-v1:0",
            "global.anthropic.claude-sonnet-4-5-20250929-v1:0",
            "us-gov.anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.nova-pro-v1:0",
            "meta.llama3-70b-instruct-v1:0",
            "cohere.command-r-plus-v1:0",
            "my_alias",
            ARN,
            "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-haiku-20240307-v1:0",
            "arn:aws:bedrock:us-east-1:123456789012:custom-model/anthropic.claude-v2:1:100k/abcdefghij12",
            "arn:aws:bedrock:us-east-1:123456789012:provisioned-model/abcdefghij12",
            "arn:aws-us-gov:bedrock:us-gov-west-1:123456789012:application-inference-profile/abc",
            "arn:aws-cn:bedrock:cn-north-1:123456789012:imported-model/abcdefghij12",
        ] {
            assert!(valid_model_id(id), "{id}");
            let path = format!("/model/{}/converse", percent_encode(id));
            assert_eq!(BedrockRoute::parse("POST", &path).unwrap().model, id);
        }
    }

    #[test]
    fn refuses_what_cannot_be_a_model_id() {
        let long = "a".repeat(MAX_MODEL_ID_LEN + 1);
        for id in [
            "..",
            "a..b",
            "../../guardrail",
            "a/b",
            "a b",
            "a\tb",
            "a\u{0}b",
            "a\nb",
            ".hidden",
            "-x",
            ":0",
            "model?x",
            "m%41",
            "ünïcode",
            long.as_str(),
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a/b/c",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/../x",
            "arn:aws:s3:us-east-1:123456789012:application-inference-profile/abc",
            "arn:aws:bedrock:us-east-1:12345:application-inference-profile/abc",
            "arn:aws:bedrock:us-east-1::application-inference-profile/abc",
            "arn:aws:bedrock:US-EAST-1:123456789012:inference-profile/abc",
            "arn:aws:bedrock:us-east-1:123456789012:guardrail/abc",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/a b",
        ] {
            assert!(!valid_model_id(id), "{id:?}");
            let path = format!("/model/{}/converse", percent_encode(id));
            assert!(
                matches!(
                    BedrockRoute::parse("POST", &path),
                    Err(RouteError::BadModelId(_) | RouteError::BadModelLength)
                ),
                "{id:?}"
            );
        }
        let e = BedrockRoute::parse("POST", "/model/a%0Ab/converse").unwrap_err();
        assert!(e.to_string().contains("a\\nb"), "{e}");
    }

    #[test]
    fn malformed_escapes_and_non_utf8_are_refused() {
        for bad in ["a%zz", "a%4", "a%", "%E2%82"] {
            assert_eq!(percent_decode(bad), None, "{bad}");
        }
        assert_eq!(percent_decode("a%3Ab%2F").as_deref(), Some("a:b/"));
    }

    #[test]
    fn upstream_path_encodes_like_boto3() {
        assert_eq!(
            BedrockRoute::upstream_path(ARN, Operation::ConverseStream),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2F1arbu5hu2sjr/converse-stream"
        );
        assert_eq!(
            BedrockRoute::upstream_path(
                "anthropic.claude-3-haiku-20240307-v1:0",
                Operation::Invoke
            ),
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke"
        );
    }

    #[test]
    fn decode_encode_round_trip() {
        for s in [ARN, "a b", "ü/x:y", "100%"] {
            assert_eq!(percent_decode(&percent_encode(s)).as_deref(), Some(s));
        }
    }
}
