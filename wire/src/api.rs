//! The sidecar's data-plane API (`/v1/reserve`, `/v1/commit`, `/v1/release`),
//! called by the filter. JSON over HTTP; money is a decimal string.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

pub const RESERVE_PATH: &str = "/v1/reserve";
pub const COMMIT_PATH: &str = "/v1/commit";
pub const RELEASE_PATH: &str = "/v1/release";
pub const LEASE_RENEW_PATH: &str = "/v1/leases/renew";
/// A tenant's own balance, asked through the gateway with its credential.
pub const SELF_PATH: &str = "/v1/self";
/// The gateway path a tenant asks it on (`GET`, with its usual credential).
pub const GATEWAY_SELF_PATH: &str = "/tollgate/v1/self";

/// A Bedrock Runtime operation, named as in its URL path segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    Converse,
    ConverseStream,
    Invoke,
    InvokeWithResponseStream,
}

impl Operation {
    pub fn from_path_segment(segment: &str) -> Option<Self> {
        Some(match segment {
            "converse" => Self::Converse,
            "converse-stream" => Self::ConverseStream,
            "invoke" => Self::Invoke,
            "invoke-with-response-stream" => Self::InvokeWithResponseStream,
            _ => return None,
        })
    }

    pub fn as_path_segment(self) -> &'static str {
        match self {
            Self::Converse => "converse",
            Self::ConverseStream => "converse-stream",
            Self::Invoke => "invoke",
            Self::InvokeWithResponseStream => "invoke-with-response-stream",
        }
    }

    /// Streaming operations answer with `application/vnd.amazon.eventstream`.
    pub fn is_streaming(self) -> bool {
        matches!(self, Self::ConverseStream | Self::InvokeWithResponseStream)
    }

    /// Converse-family operations use Bedrock's model-neutral body shape.
    pub fn is_converse(self) -> bool {
        matches!(self, Self::Converse | Self::ConverseStream)
    }
}

/// How the caller proved who it is. The sidecar resolves it to a tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Credential {
    /// `Authorization: Bearer <key>` (boto3's `AWS_BEARER_TOKEN_BEDROCK`).
    Bearer { key: String },
    /// `x-tenant-id` from a trusted hop; only sent when the deployment enables it.
    TrustedHeader { tenant_id: String },
    /// A claim verified by Envoy's `jwt_authn` filter.
    Jwt { tenant_id: String },
    /// A SigV4 signature made with credentials the sidecar issued. The sidecar
    /// verifies it (the secret never leaves the sidecar) over the request exactly
    /// as the gateway received it.
    Sigv4(SigV4Proof),
    /// No credential was presented.
    None,
}

/// What the sidecar needs to verify a client's SigV4 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SigV4Proof {
    pub method: String,
    /// Path as received, still percent-encoded, without the query.
    pub raw_path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub raw_query: Option<String>,
    /// `authorization`, `x-amz-date` and every header named in SignedHeaders
    /// (`host` taken from `:authority`), lowercase names, values as received.
    pub headers: Vec<(String, String)>,
    /// Lowercase hex SHA-256 of the body as received.
    pub payload_sha256: String,
}

/// Optional cost-attribution labels. Never used for identity.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attribution {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub application_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub cost_center: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub environment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub user_id: Option<String>,
}

/// `POST /v1/reserve`: admit a request and hold budget for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReserveRequest {
    /// Gateway-generated, unique; the idempotency key of the later commit.
    pub request_id: String,
    pub credential: Credential,
    pub operation: Operation,
    /// The model as the client named it, percent-decoded: a friendly alias, a model
    /// ID, a system inference profile ID or an ARN.
    pub model: String,
    #[serde(default)]
    pub attribution: Attribution,
    /// Upper-bound estimate of input tokens.
    pub input_tokens_estimate: u64,
    /// The request's own output limit, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max_output_tokens: Option<u64>,
    /// Set by a gateway that admits requests locally: grant a budget lease for
    /// this (credential, model, application) instead of a one-request hold, when
    /// the tenant allows it. The answer is then [`ReserveResponse::Lease`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease: Option<LeaseWant>,
}

/// What a gateway asks of a new lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseWant {
    /// Budget for about this many requests like the one asking. The sidecar
    /// grants at least this request's hold and at most a fraction of what is
    /// left; later renewals size the lease from the gateway's actual spend.
    pub holds: u32,
}

/// The sidecar's answer to a reserve. Always HTTP 200 when the sidecar worked;
/// a denial carries the Bedrock-shaped error the filter replies with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum ReserveResponse {
    Allow(Reservation),
    Deny(Denial),
    /// A budget lease: the request that asked is admitted from it, and so are
    /// later requests with the same credential, model and application, locally.
    Lease(LeaseGrant),
}

/// `POST /v1/self`: the credential of a tenant asking for its own balance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SelfRequest {
    pub request_id: String,
    pub credential: Credential,
}

/// The answer to [`SelfRequest`]: always HTTP 200 when the sidecar worked. The
/// view is passed to the client as it is, so the filter does not parse it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum SelfResponse {
    Allow {
        /// The tenant's own view (`SelfView` in the sidecar's OpenAPI).
        #[cfg_attr(feature = "openapi", schema(value_type = Object))]
        view: serde_json::Value,
        /// For the `x-tollgate-budget-remaining` header.
        #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
        budget_remaining_usd: Decimal,
    },
    Deny(Denial),
}

/// Everything a gateway needs to admit requests of one (credential, model,
/// application) locally: who they belong to, where they go, what they cost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseTerms {
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub application_id: Option<String>,
    /// The base model requests are priced as.
    pub model_id: String,
    /// Upstream model: the tenant's application inference profile ARN, or the
    /// resolved model ID.
    pub target_model: String,
    pub rates: crate::rates::Rates,
    /// Output tokens assumed when a request states none.
    pub default_max_output_tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub max_tokens_cap: Option<u64>,
}

impl LeaseTerms {
    /// Output limit and hold of one request admitted under these terms.
    pub fn admit(
        &self,
        input_tokens_estimate: u64,
        requested_max_output: Option<u64>,
    ) -> Result<(u64, Decimal), crate::rates::Overflow> {
        let max_out = crate::rates::max_output_tokens(
            requested_max_output,
            self.default_max_output_tokens,
            self.max_tokens_cap,
        );
        Ok((max_out, self.rates.hold(input_tokens_estimate, max_out)?))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseGrant {
    pub lease_id: String,
    pub terms: LeaseTerms,
    /// Budget now held for the gateway (the asking request's hold included).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub granted_usd: Decimal,
    /// The sidecar expires the lease (returning what is unused) this long after
    /// the grant or the last renewal.
    pub ttl_ms: u64,
    /// The tenant's available budget after the grant.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub budget_remaining_usd: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reservation {
    pub request_id: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub application_id: Option<String>,
    /// The base model the request is priced as.
    pub model_id: String,
    /// What to put in the upstream `:path`: the tenant's application inference
    /// profile ARN, or the resolved model ID when the tenant has none.
    pub target_model: String,
    /// Output token limit to enforce upstream (the tenant's cap, or the hold's
    /// assumption when the request stated none).
    pub max_output_tokens: u64,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub hold_usd: Decimal,
    /// Available budget after this hold.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub budget_remaining_usd: Decimal,
    /// The prices the request will be charged at, so the gateway can report
    /// the cost of what it meters (Envoy access logs) without asking again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub rates: Option<crate::rates::Rates>,
    /// The tenant's rate limits after this request, for the `RateLimit`
    /// headers of the response (absent when the tenant has none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitStatus>,
}

/// One rate limit's state, as the IETF `RateLimit`/`RateLimit-Policy` header
/// fields carry it (draft-ietf-httpapi-ratelimit-headers): windows are one
/// UTC minute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RateLimitStatus {
    /// `rpm`, `tpm` or `tpm:<model id>`.
    pub policy: String,
    /// The limit per window.
    pub quota: u64,
    /// What is left of it in the current window.
    pub remaining: u64,
    /// Seconds until the window ends.
    pub reset_secs: u64,
}

impl RateLimitStatus {
    /// Window of every policy, seconds.
    pub const WINDOW_SECS: u64 = 60;

    /// The `RateLimit-Policy` and `RateLimit` field values for `limits`
    /// (Structured Field lists), or `None` when there are none.
    pub fn header_values(limits: &[Self]) -> Option<(String, String)> {
        if limits.is_empty() {
            return None;
        }
        let name = |p: &str| {
            let escaped: String = p
                .chars()
                .filter(|c| c.is_ascii() && !c.is_ascii_control())
                .flat_map(|c| match c {
                    '"' | '\\' => vec!['\\', c],
                    c => vec![c],
                })
                .collect();
            format!("\"{escaped}\"")
        };
        let policy = limits
            .iter()
            .map(|l| {
                let unit = if l.policy == "rpm" {
                    ""
                } else {
                    ";qu=\"tokens\""
                };
                format!(
                    "{};q={};w={}{unit}",
                    name(&l.policy),
                    l.quota,
                    Self::WINDOW_SECS
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let state = limits
            .iter()
            .map(|l| format!("{};r={};t={}", name(&l.policy), l.remaining, l.reset_secs))
            .collect::<Vec<_>>()
            .join(", ");
        Some((policy, state))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Denial {
    /// HTTP status for the client (401, 402, 403, 429, 400…).
    #[cfg_attr(feature = "openapi", schema(minimum = 400, maximum = 499))]
    pub status: u16,
    /// Bedrock error name for `x-amzn-ErrorType`.
    #[cfg_attr(
        feature = "openapi",
        schema(value_type = crate::openapi::DenyErrorType)
    )]
    pub error_type: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub retry_after_secs: Option<u64>,
    /// For a 429: the tenant's rate limits now (`RateLimit` headers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimitStatus>,
}

/// Tokens Bedrock reported (or the gateway estimated) for one invocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Usage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cache_read_input_tokens: u64,
    #[serde(default)]
    pub cache_write_input_tokens: u64,
}

impl Usage {
    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }
}

/// One settled invocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Commit {
    pub request_id: String,
    pub usage: Usage,
    /// True when usage was not reported by Bedrock (stream cut, corrupt frames)
    /// and the gateway estimated it from what it saw.
    #[serde(default)]
    pub estimated: bool,
    /// Set when the request was forwarded without a hold (`failure_mode: open`
    /// while the sidecar was unreachable): what the reserve would have carried,
    /// so the sidecar can identify, price and charge it now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub unreserved: Option<Box<ReserveRequest>>,
    /// Set when the request was admitted locally from a lease.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    pub lease: Option<LeasedAdmission>,
}

/// How a request was admitted from a lease: the commit moves `hold_usd` out of
/// the lease and charges the usage at the lease's rates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeasedAdmission {
    pub lease_id: String,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub hold_usd: Decimal,
    /// The output limit enforced upstream; reported usage above it is capped.
    pub max_output_tokens: u64,
    pub input_tokens_estimate: u64,
    /// The request's own attribution (tenant and application come from the lease).
    #[serde(default)]
    pub attribution: Attribution,
}

/// `POST /v1/leases/renew`: top up, return, and re-validate leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewBatch {
    pub leases: Vec<LeaseRenewal>,
}

/// One lease's renewal. Retried with the same `seq` until answered: the sidecar
/// applies each `seq` once and replays its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LeaseRenewal {
    pub lease_id: String,
    /// 1, 2, 3…: one more than the last renewal the gateway saw answered.
    pub seq: u64,
    /// Unused budget the gateway gives back (it stopped admitting from it when
    /// it sent this).
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub return_usd: Decimal,
    /// Budget the gateway would like added; 0 to only return.
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub want_usd: Decimal,
    /// The smallest useful top-up (one typical request's hold); a smaller grant
    /// is not made.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub min_usd: Decimal,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewResponse {
    pub results: Vec<RenewResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RenewResult {
    pub lease_id: String,
    #[serde(flatten)]
    pub outcome: RenewOutcome,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RenewOutcome {
    /// The lease stays valid for `ttl_ms` more; `granted_usd` was added to it.
    Renewed {
        #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
        granted_usd: Decimal,
        ttl_ms: u64,
        #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
        budget_remaining_usd: Decimal,
    },
    /// Stop admitting from this lease (expired, key revoked, tenant or price
    /// changed, period ended). Requests already admitted still commit against it.
    Closed { reason: String },
}

/// `POST /v1/commit`: settle a batch of invocations. Idempotent per request id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitBatch {
    pub commits: Vec<Commit>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum CommitOutcome {
    /// Charged now.
    Committed,
    /// Already charged by an earlier delivery of the same commit.
    Duplicate,
    /// No reservation with this id exists; nothing was charged.
    UnknownRequest,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResult {
    pub request_id: String,
    pub outcome: CommitOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(nullable = false))]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<crate::openapi::Money>))]
    pub cost_usd: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CommitResponse {
    pub results: Vec<CommitResult>,
}

/// `POST /v1/release`: Bedrock charged nothing; give the hold back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseRequest {
    pub request_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReleaseResponse {
    /// False when the hold was already settled or unknown (idempotent).
    pub released: bool,
}

/// Error body of the sidecar API for malformed calls (HTTP 4xx/5xx).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn reserve_response_is_tagged_by_decision() {
        let deny = ReserveResponse::Deny(Denial {
            status: 402,
            error_type: "BudgetExceededException".into(),
            message: "no".into(),
            retry_after_secs: None,
            rate_limits: Vec::new(),
        });
        let json = serde_json::to_value(&deny).unwrap();
        assert_eq!(json["decision"], "deny");
        assert_eq!(json["status"], 402);
        let back: ReserveResponse = serde_json::from_value(json).unwrap();
        assert_eq!(back, deny);
    }

    #[test]
    fn rate_limit_headers_follow_the_ietf_draft() {
        assert_eq!(RateLimitStatus::header_values(&[]), None);
        let limits = [
            RateLimitStatus {
                policy: "rpm".into(),
                quota: 100,
                remaining: 42,
                reset_secs: 18,
            },
            RateLimitStatus {
                policy: "tpm:anthropic.claude-3-haiku-20240307-v1:0".into(),
                quota: 50_000,
                remaining: 0,
                reset_secs: 18,
            },
        ];
        let (policy, state) = RateLimitStatus::header_values(&limits).unwrap();
        assert_eq!(
            policy,
            r#""rpm";q=100;w=60, "tpm:anthropic.claude-3-haiku-20240307-v1:0";q=50000;w=60;qu="tokens""#
        );
        assert_eq!(
            state,
            r#""rpm";r=42;t=18, "tpm:anthropic.claude-3-haiku-20240307-v1:0";r=0;t=18"#
        );
        // A name is always a valid sf-string.
        let odd = [RateLimitStatus {
            policy: "a\"b\\c\né".into(),
            quota: 1,
            remaining: 1,
            reset_secs: 1,
        }];
        let (policy, _) = RateLimitStatus::header_values(&odd).unwrap();
        assert!(policy.starts_with(r#""a\"b\\c";"#), "{policy}");
    }

    #[test]
    fn money_travels_as_exact_decimal_strings() {
        let r = Reservation {
            request_id: "r".into(),
            tenant_id: "t".into(),
            application_id: None,
            model_id: "m".into(),
            target_model: "m".into(),
            max_output_tokens: 10,
            hold_usd: "0.000000000000000001".parse().unwrap(),
            budget_remaining_usd: "0.1".parse().unwrap(),
            rates: None,
            rate_limits: Vec::new(),
        };
        let json = serde_json::to_string(&ReserveResponse::Allow(r.clone())).unwrap();
        assert!(
            json.contains("\"hold_usd\":\"0.000000000000000001\""),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<ReserveResponse>(&json).unwrap(),
            ReserveResponse::Allow(r)
        );
    }

    #[test]
    fn credential_shapes() {
        let c: Credential = serde_json::from_str(r#"{"type":"bearer","key":"k"}"#).unwrap();
        assert_eq!(c, Credential::Bearer { key: "k".into() });
        let c: Credential = serde_json::from_str(r#"{"type":"none"}"#).unwrap();
        assert_eq!(c, Credential::None);
    }

    #[test]
    fn operations_round_trip_through_path_segments() {
        for op in [
            Operation::Converse,
            Operation::ConverseStream,
            Operation::Invoke,
            Operation::InvokeWithResponseStream,
        ] {
            assert_eq!(Operation::from_path_segment(op.as_path_segment()), Some(op));
        }
        assert_eq!(Operation::from_path_segment("count-tokens"), None);
    }
}
