//! Local replies shaped like Bedrock errors (`{"message": …}` plus
//! `x-amzn-ErrorType`), so SDKs raise their usual exceptions.

use serde_json::json;
use tollgate_wire::api::RateLimitStatus;

pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";
pub const BUDGET_REMAINING_HEADER: &str = "x-tollgate-budget-remaining";
/// IETF draft-ietf-httpapi-ratelimit-headers field names.
pub const RATELIMIT_POLICY_HEADER: &str = "ratelimit-policy";
pub const RATELIMIT_HEADER: &str = "ratelimit";

/// The `RateLimit-Policy` and `RateLimit` headers for `limits` (none when empty).
pub fn rate_limit_headers(limits: &[RateLimitStatus]) -> Vec<(&'static str, String)> {
    match RateLimitStatus::header_values(limits) {
        Some((policy, state)) => vec![(RATELIMIT_POLICY_HEADER, policy), (RATELIMIT_HEADER, state)],
        None => Vec::new(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u32,
    pub error_type: String,
    pub message: String,
    pub retry_after_secs: Option<u64>,
    /// The tenant's rate limits, on a throttle.
    pub rate_limits: Vec<RateLimitStatus>,
}

impl LocalReply {
    pub fn new(status: u32, error_type: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            error_type: error_type.to_owned(),
            message: message.into(),
            retry_after_secs: None,
            rate_limits: Vec::new(),
        }
    }

    pub fn validation(status: u32, message: impl Into<String>) -> Self {
        Self::new(status, "ValidationException", message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "ServiceUnavailableException", message)
    }

    pub fn body(&self) -> Vec<u8> {
        json!({ "message": self.message }).to_string().into_bytes()
    }

    /// Response headers, the request id included.
    pub fn headers(&self, request_id: &str) -> Vec<(String, String)> {
        let mut h = vec![
            ("content-type".to_owned(), "application/json".to_owned()),
            ("x-amzn-errortype".to_owned(), self.error_type.clone()),
            (REQUEST_ID_HEADER.to_owned(), request_id.to_owned()),
        ];
        if let Some(secs) = self.retry_after_secs {
            h.push(("retry-after".to_owned(), secs.to_string()));
        }
        for (name, value) in rate_limit_headers(&self.rate_limits) {
            h.push((name.to_owned(), value));
        }
        // Spending more cannot succeed until an operator acts; tell SDKs that
        // honour it (the Anthropic SDK) not to retry.
        if self.status == 402 || self.status == 401 || self.status == 403 {
            h.push(("x-should-retry".to_owned(), "false".to_owned()));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn budget_reply_is_bedrock_shaped_and_not_retryable() {
        let r = LocalReply::new(402, "BudgetExceededException", "Budget \"exhausted\"");
        let body: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
        assert_eq!(body["message"], "Budget \"exhausted\"");
        let h = r.headers("tg-1");
        assert!(h.contains(&("x-amzn-errortype".into(), "BudgetExceededException".into())));
        assert!(h.contains(&("x-should-retry".into(), "false".into())));
        assert!(h.contains(&(REQUEST_ID_HEADER.into(), "tg-1".into())));
    }

    #[test]
    fn throttling_carries_retry_after() {
        let mut r = LocalReply::new(429, "ThrottlingException", "slow down");
        r.retry_after_secs = Some(7);
        let h = r.headers("x");
        assert!(h.contains(&("retry-after".into(), "7".into())));
        assert!(!h.iter().any(|(k, _)| k == "x-should-retry"));
        assert!(!h.iter().any(|(k, _)| k == RATELIMIT_HEADER));
        r.rate_limits = vec![RateLimitStatus {
            policy: "rpm".into(),
            quota: 3,
            remaining: 0,
            reset_secs: 7,
        }];
        let h = r.headers("x");
        assert!(h.contains(&(RATELIMIT_POLICY_HEADER.into(), r#""rpm";q=3;w=60"#.into())));
        assert!(h.contains(&(RATELIMIT_HEADER.into(), r#""rpm";r=0;t=7"#.into())));
    }
}
