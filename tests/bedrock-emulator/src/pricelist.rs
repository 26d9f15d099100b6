//! The emulator's price table and the Price List API's `GetProducts`
//! (awsJson1_1, `AWSPriceListService.GetProducts`). One table serves both the
//! products and the cost of every runtime request the emulator answers, so
//! Cost Explorer's figures follow from the same prices `GetProducts` lists.
//!
//! Products look like the real Bedrock ones: first-party models (Amazon, Meta)
//! under service code `AmazonBedrock` with a `model` attribute, third-party ones
//! (Anthropic) under `AmazonBedrockFoundationModels` with a `servicename` such
//! as `Claude 3 Haiku (Amazon Bedrock Edition)`; one product per model and kind
//! of token (`inferenceType`), priced per 1K tokens in USD.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Value};

use crate::aws::{lock, AwsError, AwsState};

/// USD per 1M tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Price {
    /// The name the Price List gives the model.
    pub name: String,
    pub provider: String,
    pub input: Decimal,
    pub output: Decimal,
    pub cache_read: Option<Decimal>,
    pub cache_write: Option<Decimal>,
}

pub struct PriceTable {
    pub prices: BTreeMap<String, Price>,
}

/// (model ID, Price List name, provider, input, output, cache read, cache write)
/// in USD per 1M tokens: public on-demand prices in us-east-1.
const DEFAULTS: &[(&str, &str, &str, &str, &str, &str, &str)] = &[
    (
        "anthropic.claude-3-haiku-20240307-v1:0",
        "Claude 3 Haiku",
        "Anthropic",
        "0.25",
        "1.25",
        "0.03",
        "0.30",
    ),
    (
        "anthropic.claude-3-sonnet-20240229-v1:0",
        "Claude 3 Sonnet",
        "Anthropic",
        "3.00",
        "15.00",
        "",
        "",
    ),
    (
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        "Claude 3.5 Haiku",
        "Anthropic",
        "0.80",
        "4.00",
        "0.08",
        "1.00",
    ),
    (
        "anthropic.claude-3-7-sonnet-20250219-v1:0",
        "Claude 3.7 Sonnet",
        "Anthropic",
        "3.00",
        "15.00",
        "0.30",
        "3.75",
    ),
    (
        "anthropic.claude-sonnet-4-20250514-v1:0",
        "Claude Sonnet 4",
        "Anthropic",
        "3.00",
        "15.00",
        "0.30",
        "3.75",
    ),
    (
        "amazon.nova-micro-v1:0",
        "Nova Micro",
        "Amazon",
        "0.035",
        "0.14",
        "0.00875",
        "",
    ),
    (
        "amazon.nova-lite-v1:0",
        "Nova Lite",
        "Amazon",
        "0.06",
        "0.24",
        "0.015",
        "",
    ),
    (
        "amazon.nova-pro-v1:0",
        "Nova Pro",
        "Amazon",
        "0.80",
        "3.20",
        "0.20",
        "",
    ),
    (
        "meta.llama3-1-8b-instruct-v1:0",
        "Llama 3.1 8B Instruct",
        "Meta",
        "0.22",
        "0.22",
        "",
        "",
    ),
    (
        "meta.llama3-1-70b-instruct-v1:0",
        "Llama 3.1 70B Instruct",
        "Meta",
        "0.72",
        "0.72",
        "",
        "",
    ),
];

fn dec(s: &str) -> Option<Decimal> {
    s.parse().ok()
}

impl Default for PriceTable {
    fn default() -> Self {
        let prices = DEFAULTS
            .iter()
            .filter_map(|(id, name, provider, i, o, cr, cw)| {
                Some((
                    (*id).to_owned(),
                    Price {
                        name: (*name).to_owned(),
                        provider: (*provider).to_owned(),
                        input: dec(i)?,
                        output: dec(o)?,
                        cache_read: dec(cr),
                        cache_write: dec(cw),
                    },
                ))
            })
            .collect();
        Self { prices }
    }
}

/// A geo or global cross-Region profile ID (`us.…`) names the model after the prefix.
pub fn base_model(model: &str) -> &str {
    for p in [
        "us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.",
    ] {
        if let Some(rest) = model.strip_prefix(p) {
            return rest;
        }
    }
    model
}

impl PriceTable {
    pub fn get(&self, model: &str) -> Option<&Price> {
        self.prices
            .get(model)
            .or_else(|| self.prices.get(base_model(model)))
    }

    /// USD for one request; `None` for a model without a price. A missing cache
    /// price is charged as the input price (the emulator's own rule).
    pub fn cost(&self, model: &str, input: u64, output: u64, cr: u64, cw: u64) -> Option<Decimal> {
        let p = self.get(model)?;
        let million = Decimal::from(1_000_000u32);
        let total = Decimal::from(input) * p.input
            + Decimal::from(output) * p.output
            + Decimal::from(cr) * p.cache_read.unwrap_or(p.input)
            + Decimal::from(cw) * p.cache_write.unwrap_or(p.input);
        Some(total / million)
    }

    /// `PUT /_emulator/prices/{model}`: replaces (or adds) a model's prices.
    pub fn set(&mut self, model: &str, v: &Value) -> Result<(), String> {
        let field = |k: &str| -> Result<Option<Decimal>, String> {
            match &v[k] {
                Value::Null => Ok(None),
                Value::String(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|e| format!("{k}: not a decimal: {e}")),
                other => Err(format!("{k}: expected a decimal string, got {other}")),
            }
        };
        let input = field("input")?.ok_or("input is required")?;
        let output = field("output")?.ok_or("output is required")?;
        let old = self.prices.get(model).cloned();
        let name = v["name"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| old.as_ref().map(|p| p.name.clone()))
            .unwrap_or_else(|| model.to_owned());
        let provider = old
            .as_ref()
            .map(|p| p.provider.clone())
            .unwrap_or_else(|| "Amazon".to_owned());
        self.prices.insert(
            model.to_owned(),
            Price {
                name,
                provider,
                input,
                output,
                cache_read: field("cache_read")?,
                cache_write: field("cache_write")?,
            },
        );
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .prices
            .iter()
            .map(|(id, p)| {
                json!({
                    "model_id": id,
                    "name": p.name,
                    "input": p.input.to_string(),
                    "output": p.output.to_string(),
                    "cache_read": p.cache_read.map(|d| d.to_string()),
                    "cache_write": p.cache_write.map(|d| d.to_string()),
                })
            })
            .collect();
        Value::Array(rows)
    }
}

const LOCATIONS: &[(&str, &str, &str)] = &[
    ("us-east-1", "US East (N. Virginia)", "USE1"),
    ("us-east-2", "US East (Ohio)", "USE2"),
    ("us-west-2", "US West (Oregon)", "USW2"),
    ("eu-west-1", "EU (Ireland)", "EU"),
    ("eu-central-1", "EU (Frankfurt)", "EUC1"),
];

/// Every product of the table, in `region`: (service code, attributes, USD per 1K tokens).
fn products(table: &PriceTable, region: &str) -> Vec<(String, BTreeMap<String, String>, Decimal)> {
    let (location, prefix) = LOCATIONS
        .iter()
        .find(|(r, _, _)| *r == region)
        .map(|(_, l, p)| (*l, *p))
        .unwrap_or((region, "XX"));
    let mut out = Vec::new();
    for p in table.prices.values() {
        let third_party = p.provider != "Amazon" && p.provider != "Meta";
        let compact: String = p
            .name
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        let kinds = [
            ("Input tokens", "input-tokens", Some(p.input)),
            ("Output tokens", "output-tokens", Some(p.output)),
            (
                "Cache read input tokens",
                "cache-read-input-token-count",
                p.cache_read,
            ),
            (
                "Cache write input tokens",
                "cache-write-input-token-count",
                p.cache_write,
            ),
        ];
        for (kind, usage, price) in kinds {
            let Some(price) = price else { continue };
            let mut a = BTreeMap::new();
            a.insert("regionCode".into(), region.to_owned());
            a.insert("location".into(), location.to_owned());
            a.insert("locationType".into(), "AWS Region".into());
            a.insert("inferenceType".into(), kind.to_owned());
            a.insert("feature".into(), "On-demand Inference".into());
            a.insert("operation".into(), "Usage".into());
            a.insert("provider".into(), p.provider.clone());
            let service = if third_party {
                a.insert(
                    "servicename".into(),
                    format!("{} (Amazon Bedrock Edition)", p.name),
                );
                a.insert(
                    "usagetype".into(),
                    format!("{prefix}-MP:{prefix}_{compact}-{usage}"),
                );
                "AmazonBedrockFoundationModels"
            } else {
                a.insert("servicename".into(), "Amazon Bedrock".into());
                a.insert("model".into(), p.name.clone());
                a.insert("usagetype".into(), format!("{prefix}-{compact}-{usage}"));
                "AmazonBedrock"
            };
            a.insert("servicecode".into(), service.to_owned());
            out.push((service.to_owned(), a, price / Decimal::from(1000u32)));
        }
    }
    out
}

/// A stable, SKU-looking code for a product.
fn sku(attrs: &BTreeMap<String, String>) -> String {
    use sha2::{Digest, Sha256};
    let h = Sha256::digest(format!("{attrs:?}").as_bytes());
    h.iter()
        .take(16)
        .map(|b| char::from(b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789"[usize::from(b % 32)]))
        .collect()
}

/// One `PriceList` entry: the product document, as the JSON string AWS sends.
fn price_list_item(service: &str, attrs: &BTreeMap<String, String>, per_1k: Decimal) -> String {
    let sku = sku(attrs);
    let term = format!("{sku}.JRTCKXETXF");
    let dim = format!("{term}.6YS6EN2CT7");
    let model = attrs
        .get("model")
        .or_else(|| attrs.get("servicename"))
        .cloned()
        .unwrap_or_default();
    let doc = json!({
        "product": {
            "productFamily": "Amazon Bedrock",
            "attributes": attrs,
            "sku": sku,
        },
        "serviceCode": service,
        "terms": {
            "OnDemand": {
                term.clone(): {
                    "priceDimensions": {
                        dim.clone(): {
                            "unit": "1K tokens",
                            "endRange": "Inf",
                            "description": format!("{} {} per 1K {} for {model} in {}", per_1k.normalize(), "USD",
                                attrs.get("inferenceType").map(|s| s.to_lowercase()).unwrap_or_default(),
                                attrs.get("location").cloned().unwrap_or_default()),
                            "appliesTo": [],
                            "rateCode": dim,
                            "beginRange": "0",
                            "pricePerUnit": {"USD": format!("{:.10}", per_1k)},
                        }
                    },
                    "sku": sku,
                    "effectiveDate": "2026-11-01T00:00:00Z",
                    "offerTermCode": "JRTCKXETXF",
                    "termAttributes": {},
                }
            }
        },
        "version": "20261101000000",
        "publicationDate": "2026-11-01T00:00:00Z",
    });
    doc.to_string()
}

fn matches(filter: &Value, attrs: &BTreeMap<String, String>) -> Result<bool, AwsError> {
    let field = filter["Field"].as_str().unwrap_or_default();
    let kind = filter["Type"].as_str().unwrap_or_default();
    let want = filter["Value"].as_str().unwrap_or_default();
    let have = match field {
        "ServiceCode" | "servicecode" => attrs.get("servicecode"),
        f => attrs.get(f),
    };
    let Some(have) = have else {
        return Ok(false);
    };
    Ok(match kind {
        "TERM_MATCH" => have.eq_ignore_ascii_case(want),
        "EQUALS" => have == want,
        "CONTAINS" => have.contains(want),
        "ANY_OF" => want.split(',').any(|w| w.trim() == have),
        "NONE_OF" => !want.split(',').any(|w| w.trim() == have),
        other => {
            return Err(AwsError::new(
                400,
                "InvalidParameterException",
                format!("Input Parameters are invalid. Filter Type {other:?} is not supported"),
            ))
        }
    })
}

/// `GetProducts` (the only Price List operation the emulator has).
pub fn handle(st: &AwsState, op: &str, body: &[u8]) -> Result<(u16, Value), AwsError> {
    let req = crate::aws::json_call(op, "GetProducts", body)?;
    let Some(service) = req["ServiceCode"].as_str() else {
        return Err(AwsError::new(
            400,
            "InvalidParameterException",
            "Input Parameters are invalid. ServiceCode is required",
        ));
    };
    let max = req["MaxResults"].as_u64().unwrap_or(100);
    if !(1..=100).contains(&max) {
        return Err(AwsError::new(
            400,
            "InvalidParameterException",
            "Input Parameters are invalid. MaxResults must be between 1 and 100",
        ));
    }
    let start = match req["NextToken"].as_str() {
        None => 0,
        Some(t) => t.parse::<usize>().map_err(|_| {
            AwsError::new(
                400,
                "InvalidNextTokenException",
                "The pagination token is invalid.",
            )
        })?,
    };
    let filters = req["Filters"].as_array().cloned().unwrap_or_default();
    // The table lists prices per Region; without a regionCode filter, every Region.
    let regions: Vec<&str> = LOCATIONS.iter().map(|(r, _, _)| *r).collect();
    let table = lock(&st.prices);
    let mut items = Vec::new();
    for region in regions {
        for (svc, attrs, per_1k) in products(&table, region) {
            if svc != service {
                continue;
            }
            let mut keep = true;
            for f in &filters {
                keep &= matches(f, &attrs)?;
            }
            if keep {
                items.push(price_list_item(&svc, &attrs, per_1k));
            }
        }
    }
    let page: Vec<Value> = items
        .iter()
        .skip(start)
        .take(max as usize)
        .map(|s| Value::String(s.clone()))
        .collect();
    let mut out = json!({"FormatVersion": "aws_v1", "PriceList": page});
    if start + (max as usize) < items.len() {
        out["NextToken"] = json!((start + max as usize).to_string());
    }
    Ok((200, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_follow_the_table_and_profile_prefixes() {
        let t = PriceTable::default();
        let c = t
            .cost("anthropic.claude-3-haiku-20240307-v1:0", 1000, 2000, 0, 0)
            .unwrap();
        assert_eq!(c, "0.00275".parse::<Decimal>().unwrap());
        let us = t.cost(
            "us.anthropic.claude-3-haiku-20240307-v1:0",
            1000,
            2000,
            0,
            0,
        );
        assert_eq!(us, Some(c));
        assert_eq!(t.cost("nope.model", 1, 1, 0, 0), None);
    }

    #[test]
    fn products_are_per_1k_tokens_and_filterable() {
        let st = AwsState::new("us-east-1");
        let body = json!({"ServiceCode": "AmazonBedrockFoundationModels", "Filters": [
            {"Type": "TERM_MATCH", "Field": "regionCode", "Value": "us-east-1"},
            {"Type": "TERM_MATCH", "Field": "inferenceType", "Value": "Input tokens"}]});
        let (_, out) = handle(&st, "GetProducts", body.to_string().as_bytes()).unwrap();
        let items = out["PriceList"].as_array().unwrap();
        assert!(!items.is_empty());
        let haiku = items
            .iter()
            .map(|s| serde_json::from_str::<Value>(s.as_str().unwrap()).unwrap())
            .find(|d| {
                d["product"]["attributes"]["servicename"]
                    == "Claude 3 Haiku (Amazon Bedrock Edition)"
            })
            .unwrap();
        let terms = haiku["terms"]["OnDemand"].as_object().unwrap();
        let dims = terms.values().next().unwrap()["priceDimensions"]
            .as_object()
            .unwrap();
        let dim = dims.values().next().unwrap();
        assert_eq!(dim["unit"], "1K tokens");
        assert_eq!(
            dim["pricePerUnit"]["USD"]
                .as_str()
                .unwrap()
                .parse::<Decimal>()
                .unwrap(),
            "0.00025".parse::<Decimal>().unwrap()
        );
        let e = handle(&st, "GetProducts", b"{}").unwrap_err();
        assert_eq!(e.code, "InvalidParameterException");
    }
}
