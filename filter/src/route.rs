//! Bedrock Runtime request paths: `/model/{modelId}/{operation}`.
//!
//! Clients encode the model segment differently (boto3 `%3A`/`%2F`,
//! AnthropicBedrock leaves `:` raw), so the segment is percent-decoded before it is
//! matched, and re-encoded the way the AWS SDKs do when the path is rewritten.

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

fn truncate(s: &str) -> String {
    s.chars().take(200).collect()
}

/// RFC 3986 unreserved characters stay; everything else is `%XX`.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
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
