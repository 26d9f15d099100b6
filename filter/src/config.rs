//! The plugin configuration (`PluginConfig.configuration`, JSON), validated once
//! in `on_configure`. Unknown keys are errors, so a typo fails loudly.

use serde::Deserialize;
use thiserror::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Refuse with 503 `ServiceUnavailableException` when the sidecar cannot answer.
    #[default]
    Closed,
    /// Forward without a hold (no budget or rate check, no path rewrite); the
    /// commit carries the request so the sidecar identifies and charges it once it
    /// is back. Counted in `tollgate.requests.failed_open`.
    Open,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Envoy cluster of the budget sidecar.
    pub sidecar_cluster: String,
    /// `:authority` sent to the sidecar.
    pub sidecar_authority: String,
    pub reserve_timeout_ms: u64,
    pub commit_timeout_ms: u64,
    pub failure_mode: FailureMode,
    /// Largest request body accepted (Bedrock's own limit is 25,000,000 bytes).
    pub max_request_body_bytes: usize,
    /// Largest non-streaming response body copied for usage parsing; larger
    /// bodies are passed on and settled from token headers or as estimated.
    pub max_response_copy_bytes: usize,
    /// Trust `x-tenant-id` from the client. Only for deployments where a trusted
    /// hop in front already authenticated the caller; otherwise the header is removed.
    pub trusted_tenant_header: bool,
    /// Take the tenant from a `jwt_authn` claim.
    pub jwt: Option<JwtConfig>,
    /// Settlements sent per `/v1/commit` call.
    pub commit_batch_size: usize,
    /// Settlements kept for retry while the sidecar is unreachable; beyond this
    /// they are logged and counted as dropped.
    pub max_pending_settlements: usize,
    /// Admit requests locally from budget leases (bearer, JWT and trusted-header
    /// credentials; SigV4 requests are always checked by the sidecar).
    pub leases: bool,
    /// How often each lease is renewed: topped up, trimmed, re-validated. Key
    /// revocation and configuration changes reach the gateway within about this.
    pub lease_renew_interval_ms: u64,
    /// A lease aims to hold this many seconds of the worker's recent spend.
    pub lease_target_secs: u64,
    /// A lease admits nothing this long after its last answered renewal (when
    /// the sidecar cannot be reached). Kept below the sidecar's lease TTL.
    pub lease_admit_window_ms: u64,
    /// A new lease asks for budget for about this many requests.
    pub lease_initial_holds: u32,
    /// Bedrock options that change the price (service tier, latency-optimized
    /// inference, guardrails). Refused unless allowed here: holds and commits
    /// are priced at the standard on-demand rates.
    pub billing_options: crate::request::BillingOptionsPolicy,
    /// Publish each request's tenant, application, request id, model, tokens
    /// and cost as Envoy filter state `wasm.tollgate.*` (for access logs and
    /// later filters). Eight host calls per request (about 0.12 ms of Envoy
    /// CPU, measured); off saves them.
    pub filter_state: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// `payload_in_metadata` of the `jwt_authn` provider.
    pub payload_in_metadata: String,
    /// Claim holding the tenant id.
    #[serde(default = "default_claim")]
    pub tenant_claim: String,
    /// Claim holding the end user's id. When set, a JWT-authenticated
    /// request's user (what user budgets and attribution use) is this claim,
    /// never the caller's `x-user-id` or `requestMetadata.user_id`.
    #[serde(default)]
    pub user_claim: Option<String>,
}

fn default_claim() -> String {
    "sub".to_owned()
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            sidecar_cluster: "tollgate_sidecar".to_owned(),
            sidecar_authority: "tollgate-sidecar".to_owned(),
            reserve_timeout_ms: 2_000,
            commit_timeout_ms: 5_000,
            failure_mode: FailureMode::Closed,
            max_request_body_bytes: 25_000_000,
            max_response_copy_bytes: 8 * 1024 * 1024,
            trusted_tenant_header: false,
            jwt: None,
            commit_batch_size: 64,
            max_pending_settlements: 100_000,
            leases: true,
            lease_renew_interval_ms: 1_000,
            lease_target_secs: 2,
            lease_admit_window_ms: 10_000,
            lease_initial_holds: 8,
            billing_options: Default::default(),
            filter_state: true,
        }
    }
}

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("invalid tollgate filter configuration: {0}")]
    Json(#[from] serde_json::Error),
    #[error("invalid tollgate filter configuration: {0}")]
    Value(String),
}

impl FilterConfig {
    /// Parses the plugin configuration; empty means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        let cfg: Self = serde_json::from_slice(bytes)?;
        if cfg.sidecar_cluster.is_empty() {
            return Err(ConfigError::Value(
                "sidecar_cluster must not be empty".into(),
            ));
        }
        for (name, v) in [
            ("reserve_timeout_ms", cfg.reserve_timeout_ms),
            ("commit_timeout_ms", cfg.commit_timeout_ms),
            ("commit_batch_size", cfg.commit_batch_size as u64),
            (
                "max_pending_settlements",
                cfg.max_pending_settlements as u64,
            ),
            ("max_request_body_bytes", cfg.max_request_body_bytes as u64),
            ("lease_renew_interval_ms", cfg.lease_renew_interval_ms),
            ("lease_admit_window_ms", cfg.lease_admit_window_ms),
            ("lease_initial_holds", u64::from(cfg.lease_initial_holds)),
        ] {
            if v == 0 {
                return Err(ConfigError::Value(format!("{name} must be greater than 0")));
            }
        }
        Ok(cfg)
    }

    pub fn lease_policy(&self) -> crate::lease::LeasePolicy {
        crate::lease::LeasePolicy {
            renew_interval_ms: self.lease_renew_interval_ms,
            target_secs: self.lease_target_secs,
            admit_window_ms: self.lease_admit_window_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn empty_is_default() {
        assert_eq!(FilterConfig::parse(b"").unwrap(), FilterConfig::default());
        assert_eq!(FilterConfig::parse(b"{}").unwrap(), FilterConfig::default());
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = FilterConfig::parse(br#"{"sidecar_clustr":"x"}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("sidecar_clustr"), "{e}");
    }

    #[test]
    fn values_are_checked() {
        let c =
            FilterConfig::parse(br#"{"failure_mode":"closed","jwt":{"payload_in_metadata":"p"}}"#)
                .unwrap();
        assert_eq!(c.failure_mode, FailureMode::Closed);
        assert_eq!(
            FilterConfig::parse(br#"{"failure_mode":"open"}"#)
                .unwrap()
                .failure_mode,
            FailureMode::Open
        );
        let jwt = c.jwt.unwrap();
        assert_eq!(jwt.tenant_claim, "sub");
        assert_eq!(
            jwt.user_claim, None,
            "users come from the request by default"
        );
        let c = FilterConfig::parse(
            br#"{"jwt":{"payload_in_metadata":"p","tenant_claim":"org","user_claim":"email"}}"#,
        )
        .unwrap();
        assert_eq!(c.jwt.unwrap().user_claim.as_deref(), Some("email"));
        assert!(FilterConfig::parse(br#"{"failure_mode":"maybe"}"#).is_err());
        assert!(FilterConfig::parse(br#"{"reserve_timeout_ms":0}"#).is_err());
    }
}
