//! `tollgate-sidecar prices import --from-aws [--dry-run]`: on-demand token
//! prices of the Bedrock models in use, read from the AWS Price List API
//! (`pricing:GetProducts`, service codes `AmazonBedrock` for Amazon's and
//! Meta's models and `AmazonBedrockFoundationModels` for third-party models
//! such as Anthropic's), compared with the ledger's table.
//!
//! The Price List names models ("Claude 3.5 Haiku", "Llama 3.1 8B Instruct"),
//! not model IDs: a product matches a model when the words and numbers of its
//! name equal those of the model ID without provider, date and version
//! (`anthropic.claude-3-5-haiku-20241022-v1:0` → claude 3 5 haiku). Prices come
//! per 1K tokens (or per 1M, or per token) and are converted exactly to the
//! ledger's USD per 1M tokens. A model no product matches is reported and left
//! as it is.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;
use serde_json::Value;

use crate::pricing::ModelPrice;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Input,
    Output,
    CacheRead,
    CacheWrite,
}

/// One on-demand token price of the Price List.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedPrice {
    /// The product's model name (`model`, else `servicename` without
    /// " (Amazon Bedrock Edition)").
    pub name: String,
    pub kind: Kind,
    /// USD per 1M tokens.
    pub per_million: Decimal,
}

/// Reads one `PriceList` entry (a JSON document as a string). `None` for
/// products that are not on-demand token prices in USD.
pub fn parse_item(item: &str) -> Option<ListedPrice> {
    let doc: Value = serde_json::from_str(item).ok()?;
    let attrs = &doc["product"]["attributes"];
    let text = |k: &str| attrs[k].as_str().unwrap_or_default();
    let usage = text("usagetype").to_ascii_lowercase();
    // Batch, provisioned throughput, long-context and latency-optimized
    // products have prices of their own; only on-demand is what the ledger charges.
    if let Some(f) = attrs["feature"].as_str() {
        if !f.eq_ignore_ascii_case("On-demand Inference") {
            return None;
        }
    }
    if [
        "batch",
        "provisioned",
        "lctx",
        "long-context",
        "latency",
        "flex",
        "priority",
    ]
    .iter()
    .any(|w| usage.contains(w))
    {
        return None;
    }
    let kind_text = format!("{} {usage}", text("inferenceType").to_ascii_lowercase());
    let kind = if kind_text.contains("cache read") || kind_text.contains("cache-read") {
        Kind::CacheRead
    } else if kind_text.contains("cache write") || kind_text.contains("cache-write") {
        Kind::CacheWrite
    } else if kind_text.contains("input") {
        Kind::Input
    } else if kind_text.contains("output") {
        Kind::Output
    } else {
        return None;
    };
    let name = match attrs["model"].as_str() {
        Some(m) if !m.is_empty() => m.to_owned(),
        _ => text("servicename")
            .trim_end_matches("(Amazon Bedrock Edition)")
            .trim_end_matches("Amazon Bedrock Edition")
            .trim()
            .to_owned(),
    };
    if name.is_empty() || name == "Amazon Bedrock" {
        return None;
    }
    let dim = doc["terms"]["OnDemand"].as_object()?.values().next()?["priceDimensions"]
        .as_object()?
        .values()
        .next()?
        .clone();
    let per_unit: Decimal = dim["pricePerUnit"]["USD"].as_str()?.parse().ok()?;
    let unit = dim["unit"]
        .as_str()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let scale = if unit.contains("1m") || unit.contains("million") {
        Decimal::ONE
    } else if unit.contains("1k") || unit.contains("thousand") {
        Decimal::from(1000u32)
    } else if unit.contains("token") {
        Decimal::from(1_000_000u32)
    } else {
        return None;
    };
    Some(ListedPrice {
        name,
        kind,
        per_million: (per_unit * scale).normalize(),
    })
}

/// Lowercase words and numbers, letters and digits split apart
/// ("Llama 3.1 8B" → llama 3 1 8 b).
fn tokens(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for c in s.chars().map(|c| c.to_ascii_lowercase()) {
        let boundary = match cur.chars().last() {
            Some(l) => !c.is_ascii_alphanumeric() || l.is_ascii_digit() != c.is_ascii_digit(),
            None => false,
        };
        if boundary && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        if c.is_ascii_alphanumeric() {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// The name words of a model ID: without provider, `:N` suffix, `-vN` version
/// and 8-digit dates (`anthropic.claude-3-haiku-20240307-v1:0` → claude 3 haiku).
pub fn model_tokens(model_id: &str) -> Vec<String> {
    let rest = model_id.split_once('.').map_or(model_id, |(_, r)| r);
    let rest = rest.rsplit_once(':').map_or(rest, |(r, _)| r);
    let mut parts: Vec<&str> = rest.split('-').collect();
    if parts.last().is_some_and(|p| {
        p.len() > 1 && p.starts_with('v') && p[1..].chars().all(|c| c.is_ascii_digit())
    }) {
        parts.pop();
    }
    parts.retain(|p| !(p.len() == 8 && p.chars().all(|c| c.is_ascii_digit())));
    tokens(&parts.join(" "))
}

/// AWS's rates for one model, per kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct AwsRates {
    pub name: String,
    pub input: Option<Decimal>,
    pub output: Option<Decimal>,
    pub cache_read: Option<Decimal>,
    pub cache_write: Option<Decimal>,
}

/// The Price List's rates of each model in `models` that a product names.
pub fn match_models(
    models: &BTreeSet<String>,
    listed: &[ListedPrice],
) -> BTreeMap<String, AwsRates> {
    let mut out = BTreeMap::new();
    for model in models {
        // A cross-Region profile's price (e.g. the 10 % geo premium) is not its
        // base model's product: never written from it.
        if crate::pricing::split_geo_prefix(model).0.is_some() {
            continue;
        }
        let want = model_tokens(model);
        if want.is_empty() {
            continue;
        }
        let mut rates = AwsRates::default();
        for p in listed.iter().filter(|p| tokens(&p.name) == want) {
            rates.name = p.name.clone();
            let slot = match p.kind {
                Kind::Input => &mut rates.input,
                Kind::Output => &mut rates.output,
                Kind::CacheRead => &mut rates.cache_read,
                Kind::CacheWrite => &mut rates.cache_write,
            };
            // Several Regions' products may match; the caller filters by Region,
            // so the first is kept.
            slot.get_or_insert(p.per_million);
        }
        if rates.input.is_some() && rates.output.is_some() {
            out.insert(model.clone(), rates);
        }
    }
    out
}

/// What an import does to one model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PriceChange {
    pub model_id: String,
    /// `changed`, `unchanged`, `new` (no price in the table yet),
    /// `not_listed` (no Price List product matched: left as it is) or
    /// `cross_region` (a `us.`/`eu.`/… profile ID: left as it is).
    pub status: String,
    /// Field, current, AWS's (per 1M tokens).
    pub fields: Vec<(String, Option<Decimal>, Option<Decimal>)>,
    /// The price to write, for `changed` and `new`.
    #[serde(skip)]
    pub price: Option<ModelPrice>,
}

/// Compares the table with AWS's rates. Cache prices AWS does not list keep
/// the table's value (the ledger then charges its documented fallback).
pub fn diff(
    models: &BTreeSet<String>,
    current: &[ModelPrice],
    aws: &BTreeMap<String, AwsRates>,
) -> Vec<PriceChange> {
    let mut out = Vec::new();
    for model in models {
        let cur = current.iter().find(|p| &p.model_id == model);
        let Some(rates) = aws.get(model) else {
            let geo = crate::pricing::split_geo_prefix(model).0.is_some();
            out.push(PriceChange {
                model_id: model.clone(),
                status: if geo { "cross_region" } else { "not_listed" }.into(),
                fields: Vec::new(),
                price: None,
            });
            continue;
        };
        let (Some(input), Some(output)) = (rates.input, rates.output) else {
            continue;
        };
        let new = ModelPrice {
            model_id: model.clone(),
            input,
            output,
            cache_read: rates.cache_read.or(cur.and_then(|c| c.cache_read)),
            cache_write: rates.cache_write.or(cur.and_then(|c| c.cache_write)),
        };
        let pair = |name: &str, a: Option<Decimal>, b: Option<Decimal>| {
            (
                name.to_owned(),
                a.map(|d| d.normalize()),
                b.map(|d| d.normalize()),
            )
        };
        let fields = vec![
            pair("input", cur.map(|c| c.input), Some(new.input)),
            pair("output", cur.map(|c| c.output), Some(new.output)),
            pair("cache_read", cur.and_then(|c| c.cache_read), new.cache_read),
            pair(
                "cache_write",
                cur.and_then(|c| c.cache_write),
                new.cache_write,
            ),
        ];
        let changed: Vec<_> = fields.into_iter().filter(|(_, a, b)| a != b).collect();
        let status = match (cur, changed.is_empty()) {
            (None, _) => "new",
            (Some(_), true) => "unchanged",
            (Some(_), false) => "changed",
        };
        out.push(PriceChange {
            model_id: model.clone(),
            status: status.into(),
            fields: changed,
            price: (status != "unchanged").then_some(new),
        });
    }
    out
}

/// The diff as text, one model per line.
pub fn render(changes: &[PriceChange], region: &str) -> String {
    let mut out = format!("AWS Price List, on-demand, {region} (USD per 1M tokens):\n");
    let show = |d: &Option<Decimal>| d.map_or("-".to_owned(), |d| d.to_string());
    for c in changes {
        match c.status.as_str() {
            "not_listed" => out.push_str(&format!(
                "  {}: no Price List product matches; left as it is\n",
                c.model_id
            )),
            "cross_region" => out.push_str(&format!(
                "  {}: a cross-Region profile ID; the Price List prices the model, not the profile: left as it is\n",
                c.model_id
            )),
            "unchanged" => out.push_str(&format!("  {}: unchanged\n", c.model_id)),
            s => {
                let f: Vec<String> = c
                    .fields
                    .iter()
                    .map(|(n, a, b)| format!("{n} {} -> {}", show(a), show(b)))
                    .collect();
                out.push_str(&format!("  {}: {s}: {}\n", c.model_id, f.join(", ")));
            }
        }
    }
    out
}

#[cfg(feature = "aws")]
pub async fn fetch(region: &str, api_region: &str) -> Result<Vec<ListedPrice>, super::AwsError> {
    use aws_sdk_pricing::types::{Filter, FilterType};
    let conf = super::sdk_config().await?;
    // The Price List API answers in us-east-1, eu-central-1 and ap-south-1 only.
    let pricing = aws_sdk_pricing::config::Builder::from(conf)
        .region(aws_sdk_pricing::config::Region::new(api_region.to_owned()))
        .build();
    let client = aws_sdk_pricing::Client::from_conf(pricing);
    let mut out = Vec::new();
    for service in ["AmazonBedrock", "AmazonBedrockFoundationModels"] {
        let mut token: Option<String> = None;
        loop {
            let filter = Filter::builder()
                .r#type(FilterType::TermMatch)
                .field("regionCode")
                .value(region)
                .build()
                .map_err(|e| super::AwsError::Invalid(e.to_string()))?;
            let page = client
                .get_products()
                .service_code(service)
                .filters(filter)
                .format_version("aws_v1")
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| super::classify("pricing:GetProducts", e))?;
            out.extend(page.price_list().iter().filter_map(|i| parse_item(i)));
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
    }
    Ok(out)
}

/// `tollgate-sidecar prices import --from-aws`: the table (and the mapped
/// models) through the admin API, the prices from the Price List API with this
/// process's credentials; writes the changes unless `dry_run`.
pub(crate) async fn command(
    c: &crate::cli::Client,
    table_region: Option<&str>,
    aws_region: Option<String>,
    pricing_api_region: &str,
    dry_run: bool,
) -> crate::error::Result<()> {
    #[cfg(not(feature = "aws"))]
    {
        let _ = (c, table_region, aws_region, pricing_api_region, dry_run);
        Err(super::AwsError::NotBuilt.into())
    }
    #[cfg(feature = "aws")]
    {
        use reqwest::Method;
        let q = table_region
            .map(|r| format!("?region={}", crate::cli::seg(r)))
            .unwrap_or_default();
        let table: Value = serde_json::from_str(
            &c.call(Method::GET, &format!("/v1/pricing{q}"), None)
                .await?,
        )?;
        let current: Vec<ModelPrice> = serde_json::from_value(table["pricing"].clone())?;
        let mut models: BTreeSet<String> = current.iter().map(|p| p.model_id.clone()).collect();
        models.extend(
            super::reconcile::mappings(c)
                .await?
                .into_iter()
                .map(|m| m.model),
        );
        let region = match aws_region {
            Some(r) => r,
            None => super::region().await?,
        };
        let listed = fetch(&region, pricing_api_region).await?;
        let changes = diff(&models, &current, &match_models(&models, &listed));
        print!("{}", render(&changes, &region));
        let to_write: Vec<&ModelPrice> = changes.iter().filter_map(|c| c.price.as_ref()).collect();
        if dry_run {
            println!(
                "dry run: {} price(s) would change; nothing written",
                to_write.len()
            );
            return Ok(());
        }
        for p in &to_write {
            c.put_price(p, &q).await?;
        }
        println!("updated {} price(s)", to_write.len());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(attrs: Value, unit: &str, usd: &str) -> String {
        json!({"product": {"attributes": attrs, "sku": "X"}, "serviceCode": "AmazonBedrock",
            "terms": {"OnDemand": {"X.T": {"priceDimensions": {"X.T.D": {
                "unit": unit, "pricePerUnit": {"USD": usd}}}}}}})
        .to_string()
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn model_ids_and_names_meet_in_their_words() {
        assert_eq!(
            model_tokens("anthropic.claude-3-5-haiku-20241022-v1:0"),
            tokens("Claude 3.5 Haiku")
        );
        assert_eq!(
            model_tokens("meta.llama3-1-8b-instruct-v1:0"),
            tokens("Llama 3.1 8B Instruct")
        );
        assert_eq!(model_tokens("amazon.nova-lite-v1:0"), tokens("Nova Lite"));
        assert_eq!(
            model_tokens("anthropic.claude-sonnet-4-20250514-v1:0"),
            tokens("Claude Sonnet 4")
        );
        assert_ne!(
            model_tokens("anthropic.claude-3-haiku-20240307-v1:0"),
            tokens("Claude 3.5 Haiku")
        );
    }

    #[test]
    fn reads_products_and_converts_units_exactly() {
        let haiku = item(
            json!({"servicename": "Claude 3 Haiku (Amazon Bedrock Edition)", "inferenceType": "Input tokens",
                   "usagetype": "USE1-MP:USE1_Claude3Haiku-input-tokens", "feature": "On-demand Inference"}),
            "1K tokens",
            "0.0002500000",
        );
        let p = parse_item(&haiku).unwrap();
        assert_eq!(
            (p.name.as_str(), p.kind, p.per_million),
            ("Claude 3 Haiku", Kind::Input, d("0.25"))
        );
        let nova = item(
            json!({"model": "Nova Lite", "inferenceType": "Cache read input tokens"}),
            "1M tokens",
            "0.015",
        );
        assert_eq!(parse_item(&nova).unwrap().kind, Kind::CacheRead);
        let batch = item(
            json!({"model": "Nova Lite", "inferenceType": "Input tokens", "usagetype": "USE1-NovaLite-batch-input-tokens"}),
            "1K tokens",
            "0.00003",
        );
        assert_eq!(parse_item(&batch), None);
        let hours = item(
            json!({"model": "Nova Lite", "inferenceType": "Input tokens"}),
            "Hrs",
            "20",
        );
        assert_eq!(parse_item(&hours), None);
    }

    #[test]
    fn diff_names_every_change_and_keeps_unlisted_models() {
        let listed = vec![
            ListedPrice {
                name: "Claude 3 Haiku".into(),
                kind: Kind::Input,
                per_million: d("0.25"),
            },
            ListedPrice {
                name: "Claude 3 Haiku".into(),
                kind: Kind::Output,
                per_million: d("1.25"),
            },
            ListedPrice {
                name: "Nova Lite".into(),
                kind: Kind::Input,
                per_million: d("0.06"),
            },
            ListedPrice {
                name: "Nova Lite".into(),
                kind: Kind::Output,
                per_million: d("0.24"),
            },
        ];
        let models: BTreeSet<String> = [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "amazon.nova-lite-v1:0",
            "x.unknown-v1:0",
            "us.amazon.nova-lite-v1:0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let aws = match_models(&models, &listed);
        let current = vec![ModelPrice {
            model_id: "anthropic.claude-3-haiku-20240307-v1:0".into(),
            input: d("0.30"),
            output: d("1.25"),
            cache_read: Some(d("0.03")),
            cache_write: None,
        }];
        let changes = diff(&models, &current, &aws);
        let by = |m: &str| changes.iter().find(|c| c.model_id == m).unwrap();
        let haiku = by("anthropic.claude-3-haiku-20240307-v1:0");
        assert_eq!(haiku.status, "changed");
        assert_eq!(
            haiku.fields,
            vec![("input".to_owned(), Some(d("0.3")), Some(d("0.25")))]
        );
        assert_eq!(haiku.price.as_ref().unwrap().cache_read, Some(d("0.03")));
        assert_eq!(by("amazon.nova-lite-v1:0").status, "new");
        assert_eq!(by("x.unknown-v1:0").status, "not_listed");
        // Its base model is listed, but a geo profile's price is its own.
        assert_eq!(by("us.amazon.nova-lite-v1:0").status, "cross_region");
        assert!(by("us.amazon.nova-lite-v1:0").price.is_none());
        let text = render(&changes, "us-east-1");
        assert!(text.contains("input 0.3 -> 0.25"), "{text}");
    }
}
