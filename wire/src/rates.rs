//! Per-token prices and the two sums every admission needs: the hold a request
//! may cost at most, and the exact cost of what it used. Shared so that the filter
//! (admitting against a lease) and the sidecar (admitting per request, charging
//! commits) compute the same decimals.

use crate::api::Usage;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

/// USD per 1M tokens a hold was priced with; its commits are charged at these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rates {
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub input: Decimal,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub output: Decimal,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub cache_read: Decimal,
    #[cfg_attr(feature = "openapi", schema(value_type = crate::openapi::Money))]
    pub cache_write: Decimal,
}

/// What a commit may charge: Bedrock never generates more than the output limit
/// the gateway set, and an estimate never exceeds the input the hold was priced
/// with. Returns the capped usage and whether anything was cut. The sidecar
/// charges this; the filter reports the same figure in Envoy's access log.
pub fn cap_usage(
    usage: &Usage,
    estimated: bool,
    max_output_tokens: u64,
    input_tokens_estimate: u64,
) -> (Usage, bool) {
    let mut u = *usage;
    u.output_tokens = u.output_tokens.min(max_output_tokens);
    if estimated {
        u.input_tokens = u.input_tokens.min(input_tokens_estimate);
    }
    let capped = u != *usage;
    (u, capped)
}

/// The cost arithmetic overflowed `Decimal` (absurd token counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cost arithmetic overflow")]
pub struct Overflow;

fn tokens_cost(tokens: u64, usd_per_million: Decimal) -> Result<Decimal, Overflow> {
    Decimal::from(tokens)
        .checked_mul(usd_per_million)
        .and_then(|v| v.checked_mul(Decimal::new(1, 6)))
        .ok_or(Overflow)
}

impl Rates {
    /// Exact cost of one invocation's usage.
    pub fn cost(&self, usage: &Usage) -> Result<Decimal, Overflow> {
        let parts = [
            tokens_cost(usage.input_tokens, self.input)?,
            tokens_cost(usage.output_tokens, self.output)?,
            tokens_cost(usage.cache_read_input_tokens, self.cache_read)?,
            tokens_cost(usage.cache_write_input_tokens, self.cache_write)?,
        ];
        parts
            .iter()
            .try_fold(Decimal::ZERO, |acc, p| acc.checked_add(*p))
            .map(|d| d.normalize())
            .ok_or(Overflow)
    }

    /// The hold for a request: input estimate × input price + max output × output price.
    pub fn hold(
        &self,
        input_tokens_estimate: u64,
        max_output_tokens: u64,
    ) -> Result<Decimal, Overflow> {
        tokens_cost(input_tokens_estimate, self.input)?
            .checked_add(tokens_cost(max_output_tokens, self.output)?)
            .map(|d| d.normalize())
            .ok_or(Overflow)
    }
}

/// Output tokens a hold assumes (and the filter enforces upstream): the request's
/// own limit or the default, clamped to the tenant's cap.
pub fn max_output_tokens(requested: Option<u64>, default: u64, cap: Option<u64>) -> u64 {
    let wanted = requested.unwrap_or(default);
    match cap {
        Some(cap) => wanted.min(cap),
        None => wanted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn hold_and_cost_are_exact() {
        let r = Rates {
            input: d("0.25"),
            output: d("1.25"),
            cache_read: d("0.03"),
            cache_write: d("0.3"),
        };
        assert_eq!(r.hold(1000, 100).unwrap(), d("0.000375"));
        let u = Usage {
            input_tokens: 7,
            output_tokens: 3,
            cache_read_input_tokens: 1,
            cache_write_input_tokens: 1,
        };
        assert_eq!(r.cost(&u).unwrap(), d("0.00000583"));
        assert!(r.hold(u64::MAX, u64::MAX).is_ok());
    }

    #[test]
    fn max_output_tokens_clamps_to_cap() {
        assert_eq!(max_output_tokens(Some(10), 4096, None), 10);
        assert_eq!(max_output_tokens(None, 4096, Some(100)), 100);
        assert_eq!(max_output_tokens(Some(50), 4096, Some(100)), 50);
    }
}
