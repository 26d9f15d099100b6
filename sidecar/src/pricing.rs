//! Price table entries, model-name resolution rules and exact cost arithmetic.
//!
//! Prices are USD per 1M tokens, held as exact [`Decimal`]s. A missing cache price
//! falls back to Anthropic's published ratios applied to the input price:
//! cache **writes** cost 1.25 × input and cache **reads** 0.1 × input.

use crate::openapi::DecimalInput;
use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize};
use std::str::FromStr;
use tollgate_wire::openapi::Money;

/// One row of the price table (USD per 1M tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModelPrice {
    pub model_id: String,
    #[schema(value_type = Money)]
    pub input: Decimal,
    #[schema(value_type = Money)]
    pub output: Decimal,
    /// Absent: 0.1 × input.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub cache_read: Option<Decimal>,
    /// Absent: 1.25 × input.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub cache_write: Option<Decimal>,
}

/// Body of `PUT /v1/pricing/{modelId}`; decimals as JSON strings or numbers.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PriceInput {
    #[serde(deserialize_with = "de_decimal")]
    #[schema(value_type = DecimalInput)]
    pub input: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    #[schema(value_type = DecimalInput)]
    pub output: Decimal,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[schema(value_type = Option<DecimalInput>)]
    pub cache_read: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[schema(value_type = Option<DecimalInput>)]
    pub cache_write: Option<Decimal>,
}

impl PriceInput {
    pub fn into_price(self, model_id: &str) -> Result<ModelPrice, String> {
        validate_model_id(model_id)?;
        for (name, v) in [
            ("input", Some(self.input)),
            ("output", Some(self.output)),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ] {
            if let Some(v) = v {
                if v.is_sign_negative() && !v.is_zero() {
                    return Err(format!("{name} must not be negative"));
                }
                if v > Decimal::from(MAX_PRICE_PER_MILLION) {
                    return Err(format!(
                        "{name} must be at most {MAX_PRICE_PER_MILLION} USD per 1M tokens"
                    ));
                }
            }
        }
        Ok(ModelPrice {
            model_id: model_id.to_string(),
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
        })
    }
}

/// Sanity ceiling for a price (USD per 1M tokens).
pub const MAX_PRICE_PER_MILLION: u64 = 1_000_000;

pub use tollgate_wire::rates::{Overflow, Rates};

impl ModelPrice {
    /// Cache-read price, or 0.1 × input when none is configured.
    pub fn effective_cache_read(&self) -> Decimal {
        self.cache_read.unwrap_or_else(|| {
            self.input
                .checked_mul(Decimal::new(1, 1))
                .unwrap_or(Decimal::MAX)
        })
    }

    /// Cache-write price, or 1.25 × input when none is configured.
    pub fn effective_cache_write(&self) -> Decimal {
        self.cache_write.unwrap_or_else(|| {
            self.input
                .checked_mul(Decimal::new(125, 2))
                .unwrap_or(Decimal::MAX)
        })
    }

    pub fn rates(&self) -> Rates {
        Rates {
            input: self.input,
            output: self.output,
            cache_read: self.effective_cache_read(),
            cache_write: self.effective_cache_write(),
        }
    }
}

/// Prefixes of Bedrock's system (cross-Region) inference profile IDs.
pub const GEO_PREFIXES: &[&str] = &["us", "us-gov", "eu", "apac", "jp", "au", "ca", "global"];

/// Splits `us.anthropic.claude-…` into (`Some("us")`, `anthropic.claude-…`).
pub fn split_geo_prefix(model_id: &str) -> (Option<&str>, &str) {
    if let Some((prefix, rest)) = model_id.split_once('.') {
        if GEO_PREFIXES.contains(&prefix) && !rest.is_empty() {
            return (Some(prefix), rest);
        }
    }
    (None, model_id)
}

/// Price-table keys to try for a resolved model ID, best first: the exact ID (a
/// geo-prefixed profile keeps its prefix, e.g. `us.` costs ~10% more), then the ID
/// without the prefix.
pub fn price_lookup_keys(model_id: &str) -> Vec<&str> {
    match split_geo_prefix(model_id) {
        (Some(_), base) => vec![model_id, base],
        (None, _) => vec![model_id],
    }
}

pub fn is_arn(model: &str) -> bool {
    model.starts_with("arn:")
}

/// Accepts `arn:aws[-cn|-us-gov]:bedrock:<region>:<12-digit account>:application-inference-profile/<id>`
/// (and `inference-profile/<id>`).
pub fn validate_profile_arn(arn: &str) -> Result<(), String> {
    let err = || {
        format!(
            "arn must look like arn:aws:bedrock:<region>:<account-id>:application-inference-profile/<id>, got {arn:?}"
        )
    };
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    if parts.len() != 6 || parts[0] != "arn" || parts[2] != "bedrock" {
        return Err(err());
    }
    if !matches!(parts[1], "aws" | "aws-cn" | "aws-us-gov") {
        return Err(err());
    }
    let region_ok = !parts[3].is_empty()
        && parts[3]
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let account_ok = parts[4].len() == 12 && parts[4].chars().all(|c| c.is_ascii_digit());
    if !region_ok || !account_ok {
        return Err(err());
    }
    let Some((kind, id)) = parts[5].split_once('/') else {
        return Err(err());
    };
    let id_ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !matches!(kind, "application-inference-profile" | "inference-profile") || !id_ok {
        return Err(err());
    }
    Ok(())
}

/// The price region used when none is configured.
pub const DEFAULT_REGION: &str = "global";

/// Price regions: 1–64 of `[a-z0-9-_]` (e.g. `global`, `us-east-1`).
pub fn validate_region(region: &str) -> Result<(), String> {
    let ok = !region.is_empty()
        && region.len() <= 64
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "pricing region must be 1 to 64 characters of a-z 0-9 - _, got {region:?}"
        ))
    }
}

/// Model IDs and aliases: printable, no whitespace or `/`, at most 256 bytes.
pub fn validate_model_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 256 {
        return Err("model id must be 1 to 256 characters".into());
    }
    if id
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!(
            "model id {id:?} contains whitespace, '/' or control characters"
        ));
    }
    // A model's budget row is keyed by its bare ID, beside `app:` and `user:` rows.
    if id.starts_with("app:") || id.starts_with("user:") {
        return Err(format!(
            "model id {id:?} starts with app: or user:, which name application and user budgets"
        ));
    }
    Ok(())
}

/// Parses decimal text exactly (`"0.8"`, `"1.00"`, `"1e-3"`); refuses anything that
/// would need rounding.
pub fn parse_decimal_text(text: &str) -> Result<Decimal, String> {
    let t = text.trim();
    let parsed = if t.contains(['e', 'E']) {
        Decimal::from_scientific(t).map_err(|e| e.to_string())
    } else {
        Decimal::from_str_exact(t).map_err(|e| e.to_string())
    };
    parsed.map_err(|e| format!("invalid decimal {t:?}: {e}"))
}

fn parse_raw_decimal(raw: &str) -> Result<Decimal, String> {
    let raw = raw.trim();
    if raw.starts_with('"') {
        let s: String = serde_json::from_str(raw).map_err(|e| e.to_string())?;
        parse_decimal_text(&s)
    } else {
        parse_decimal_text(raw)
    }
}

/// Deserializes a decimal given as a JSON string or a JSON number, exactly from
/// its text (never through a float). Works with serde_json deserializers only.
pub fn de_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
    parse_raw_decimal(raw.get()).map_err(serde::de::Error::custom)
}

/// Like [`de_decimal`], `null` or absent meaning `None`.
pub fn de_opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    let raw: Option<Box<serde_json::value::RawValue>> = Deserialize::deserialize(d)?;
    match raw {
        None => Ok(None),
        Some(r) if r.get().trim() == "null" => Ok(None),
        Some(r) => parse_raw_decimal(r.get())
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Decimal from a clap argument.
pub fn parse_decimal_arg(s: &str) -> Result<Decimal, String> {
    parse_decimal_text(s).or_else(|_| Decimal::from_str(s).map_err(|e| e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_wire::api::Usage;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn sonnet() -> ModelPrice {
        ModelPrice {
            model_id: "anthropic.claude-3-sonnet-20240229-v1:0".into(),
            input: d("3.00"),
            output: d("15.00"),
            cache_read: None,
            cache_write: None,
        }
    }

    #[test]
    fn sonnet_cost_is_exact() {
        let usage = Usage {
            input_tokens: 1234,
            output_tokens: 567,
            ..Default::default()
        };
        let cost = sonnet().rates().cost(&usage).unwrap();
        assert_eq!(cost, d("0.012207"));
        assert_eq!(cost.to_string(), "0.012207");
    }

    #[test]
    fn cache_fallbacks_are_ratios_of_input() {
        let p = sonnet();
        assert_eq!(p.effective_cache_read(), d("0.3"));
        assert_eq!(p.effective_cache_write(), d("3.75"));
        let usage = Usage {
            cache_read_input_tokens: 1_000_000,
            cache_write_input_tokens: 1_000_000,
            ..Default::default()
        };
        assert_eq!(p.rates().cost(&usage).unwrap(), d("4.05"));
        let explicit = ModelPrice {
            cache_read: Some(d("0.03")),
            cache_write: Some(d("0.30")),
            ..sonnet()
        };
        assert_eq!(explicit.rates().cost(&usage).unwrap(), d("0.33"));
    }

    #[test]
    fn tiny_prices_stay_exact() {
        let nova_micro = ModelPrice {
            model_id: "amazon.nova-micro-v1:0".into(),
            input: d("0.035"),
            output: d("0.14"),
            cache_read: Some(d("0.00875")),
            cache_write: None,
        };
        let usage = Usage {
            input_tokens: 1,
            output_tokens: 1,
            cache_read_input_tokens: 1,
            cache_write_input_tokens: 0,
        };
        assert_eq!(nova_micro.rates().cost(&usage).unwrap(), d("0.00000018375"));
    }

    #[test]
    fn hold_uses_input_estimate_and_max_output() {
        assert_eq!(sonnet().rates().hold(1000, 4096).unwrap(), d("0.06444"));
        assert_eq!(sonnet().rates().hold(0, 0).unwrap(), Decimal::ZERO);
    }

    #[test]
    fn huge_token_counts_do_not_panic() {
        let usage = Usage {
            input_tokens: u64::MAX,
            output_tokens: u64::MAX,
            cache_read_input_tokens: u64::MAX,
            cache_write_input_tokens: u64::MAX,
        };
        let p = ModelPrice {
            input: d("79228162514264337593543950335"),
            ..sonnet()
        };
        assert_eq!(p.rates().cost(&usage), Err(Overflow));
    }

    #[test]
    fn geo_prefix_lookup_order() {
        assert_eq!(
            price_lookup_keys("us.anthropic.claude-sonnet-4-5-20250929-v1:0"),
            vec![
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                "anthropic.claude-sonnet-4-5-20250929-v1:0"
            ]
        );
        assert_eq!(
            price_lookup_keys("anthropic.claude-3-haiku-20240307-v1:0"),
            vec!["anthropic.claude-3-haiku-20240307-v1:0"]
        );
        assert_eq!(split_geo_prefix("global.x"), (Some("global"), "x"));
        assert_eq!(
            split_geo_prefix("amazon.nova-lite-v1:0"),
            (None, "amazon.nova-lite-v1:0")
        );
    }

    #[test]
    fn arn_validation() {
        assert!(validate_profile_arn(
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/demo1sonnet"
        )
        .is_ok());
        for bad in [
            "arn:aws:bedrock:us-east-1:1234:application-inference-profile/x",
            "arn:aws:s3:us-east-1:123456789012:application-inference-profile/x",
            "arn:aws:bedrock:us-east-1:123456789012:foundation-model/x",
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/",
            "not-an-arn",
        ] {
            assert!(validate_profile_arn(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_parse_exactly_from_strings_and_numbers() {
        let p: PriceInput =
            serde_json::from_str(r#"{"input": 0.1, "output": "15.00", "cache_read": null}"#)
                .unwrap();
        assert_eq!(p.input, d("0.1"));
        assert_eq!(p.output.to_string(), "15.00");
        assert_eq!(p.cache_read, None);
        let p: PriceInput = serde_json::from_str(
            r#"{"input": 0.30000000000000000001, "output": 1e-3, "cache_write": "4.125"}"#,
        )
        .unwrap();
        assert_eq!(p.input, d("0.30000000000000000001"));
        assert_eq!(p.output, d("0.001"));
        assert_eq!(p.cache_write, Some(d("4.125")));
        assert!(serde_json::from_str::<PriceInput>(r#"{"input": "abc", "output": 1}"#).is_err());
        assert!(serde_json::from_str::<PriceInput>(r#"{"input": true, "output": 1}"#).is_err());
    }
}
