//! Seed file: aliases, prices and tenants (with profiles and plaintext keys, which
//! are stored hashed), applied idempotently at startup. See `examples/seed.json`.

use crate::admin::TenantInput;
use crate::error::{Error, Result};
use crate::pricing::{de_decimal, de_opt_decimal, PriceInput};
use crate::service::Service;
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedFile {
    /// Free-form provenance note (where the prices come from, and when).
    #[serde(default)]
    pub source: Option<serde_json::Value>,
    #[serde(default)]
    pub aliases: BTreeMap<String, String>,
    #[serde(default)]
    pub pricing: Vec<SeedPrice>,
    #[serde(default)]
    pub tenants: Vec<TenantInput>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedPrice {
    pub model_id: String,
    #[serde(deserialize_with = "de_decimal")]
    pub input: Decimal,
    #[serde(deserialize_with = "de_decimal")]
    pub output: Decimal,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub cache_read: Option<Decimal>,
    #[serde(default, deserialize_with = "de_opt_decimal")]
    pub cache_write: Option<Decimal>,
    #[serde(default)]
    pub note: Option<String>,
}

/// What a seed run changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SeedSummary {
    pub aliases: usize,
    pub prices: usize,
    pub tenants: usize,
}

/// A price file for `prices import`: the seed format (only its `pricing` list is
/// read) or a bare array of seed price entries.
pub fn parse_price_file(text: &str) -> Result<Vec<SeedPrice>> {
    #[derive(Deserialize)]
    struct PricingOnly {
        pricing: Vec<SeedPrice>,
    }
    let err = |e: serde_json::Error| Error::invalid(format!("price file: {e}"));
    let prices = if text.trim_start().starts_with('[') {
        serde_json::from_str::<Vec<SeedPrice>>(text).map_err(err)?
    } else {
        serde_json::from_str::<PricingOnly>(text)
            .map_err(err)?
            .pricing
    };
    for p in &prices {
        p.to_price()?;
    }
    Ok(prices)
}

impl SeedPrice {
    /// Validated price row.
    pub fn to_price(&self) -> Result<crate::pricing::ModelPrice> {
        PriceInput {
            input: self.input,
            output: self.output,
            cache_read: self.cache_read,
            cache_write: self.cache_write,
        }
        .into_price(&self.model_id)
        .map_err(|e| Error::invalid(format!("pricing {}: {e}", self.model_id)))
    }
}

pub fn parse(text: &str) -> Result<SeedFile> {
    serde_json::from_str(text).map_err(|e| Error::invalid(format!("seed file: {e}")))
}

pub async fn apply_file(service: &Service, path: &Path) -> Result<SeedSummary> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::invalid(format!("cannot read seed file {}: {e}", path.display())))?;
    apply(service, parse(&text)?).await
}

pub async fn apply(service: &Service, seed: SeedFile) -> Result<SeedSummary> {
    let mut summary = SeedSummary::default();
    for (alias, model_id) in &seed.aliases {
        service.admin().put_alias(alias, model_id).await?;
        summary.aliases += 1;
    }
    for p in seed.pricing {
        let price = PriceInput {
            input: p.input,
            output: p.output,
            cache_read: p.cache_read,
            cache_write: p.cache_write,
        }
        .into_price(&p.model_id)
        .map_err(|e| Error::invalid(format!("seed pricing {}: {e}", p.model_id)))?;
        service
            .store
            .put_price_in(&service.settings.pricing_region, &price)
            .await?;
        summary.prices += 1;
    }
    for t in seed.tenants {
        let Some(id) = t.tenant_id.clone() else {
            return Err(Error::invalid("seed tenants[].tenant_id is required"));
        };
        service
            .admin()
            .put_tenant(&id, t)
            .await
            .map_err(|e| Error::invalid(format!("seed tenant {id}: {e}")))?;
        summary.tenants += 1;
    }
    Ok(summary)
}
