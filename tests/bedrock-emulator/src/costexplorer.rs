//! Cost Explorer's `GetCostAndUsage` (awsJson1_1,
//! `AWSInsightsIndexService.GetCostAndUsage`, signing name `ce`), answered from
//! the runtime requests the emulator actually served: each one's cost at the
//! emulator's prices, attributed to the tags its application profile had when
//! it ran. Supported: `Granularity` `MONTHLY` or `DAILY`; metrics
//! `UnblendedCost`, `BlendedCost`, `AmortizedCost`, `NetUnblendedCost`; up to
//! two `GroupBy` of type `TAG` (or `DIMENSION` `SERVICE`); a `Filter` on
//! `Tags` (`Key`, `Values`). Group keys are `key$value` (`key$` for untagged
//! cost), as Cost Explorer writes them; the current month is `Estimated`.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{json, Value};
use time::{Date, Month, OffsetDateTime};

use crate::aws::{lock, AwsError, AwsState, CostEntry};

const COST_METRICS: &[&str] = &[
    "UnblendedCost",
    "BlendedCost",
    "AmortizedCost",
    "NetUnblendedCost",
];

fn ce_validation(message: impl Into<String>) -> AwsError {
    AwsError::new(400, "ValidationException", message)
}

fn parse_day(s: &str, field: &str) -> Result<Date, AwsError> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s.get(..10).unwrap_or(s), &fmt)
        .map_err(|_| ce_validation(format!("{field}: {s:?} is not a date (YYYY-MM-DD)")))
}

fn day(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

fn next_month(d: Date) -> Date {
    let (y, m) = if d.month() == Month::December {
        (d.year() + 1, Month::January)
    } else {
        (d.year(), d.month().next())
    };
    Date::from_calendar_date(y, m, 1).unwrap_or(d)
}

/// The result periods of [start, end) for a granularity.
fn periods(start: Date, end: Date, monthly: bool) -> Vec<(Date, Date)> {
    let mut out = Vec::new();
    let mut at = start;
    while at < end {
        let next = if monthly {
            next_month(at.replace_day(1).unwrap_or(at))
        } else {
            at.next_day().unwrap_or(end)
        };
        let stop = next.min(end);
        out.push((at, stop));
        at = stop;
    }
    out
}

#[derive(Debug, Clone)]
enum GroupBy {
    Tag(String),
    Service,
}

fn group_key(g: &GroupBy, c: &CostEntry) -> String {
    match g {
        GroupBy::Tag(k) => {
            let v = c
                .tags
                .iter()
                .find(|(tk, _)| tk == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            format!("{k}${v}")
        }
        GroupBy::Service => "Amazon Bedrock".to_owned(),
    }
}

fn passes(filter: &Value, c: &CostEntry) -> Result<bool, AwsError> {
    if filter.is_null() {
        return Ok(true);
    }
    if let Some(t) = filter.get("Tags") {
        let key = t["Key"].as_str().unwrap_or_default();
        let have = c
            .tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str());
        let values: Vec<&str> = t["Values"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        return Ok(match have {
            Some(v) => values.is_empty() || values.contains(&v),
            None => values.contains(&""),
        });
    }
    Err(ce_validation(
        "This emulator supports only a Tags filter in GetCostAndUsage",
    ))
}

pub fn handle(st: &AwsState, op: &str, body: &[u8]) -> Result<(u16, Value), AwsError> {
    let req = crate::aws::json_call(op, "GetCostAndUsage", body)?;
    let start = parse_day(
        req["TimePeriod"]["Start"].as_str().unwrap_or_default(),
        "Start",
    )?;
    let end = parse_day(req["TimePeriod"]["End"].as_str().unwrap_or_default(), "End")?;
    if start >= end {
        return Err(ce_validation("Start date must be before end date"));
    }
    let monthly = match req["Granularity"].as_str() {
        Some("MONTHLY") => true,
        Some("DAILY") => false,
        other => {
            return Err(ce_validation(format!(
                "Granularity {} is not supported by this emulator; use MONTHLY or DAILY",
                other.unwrap_or("(missing)")
            )))
        }
    };
    let metrics: Vec<String> = req["Metrics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_str().map(str::to_owned))
        .collect();
    if metrics.is_empty() {
        return Err(ce_validation("Metrics must not be empty"));
    }
    for m in &metrics {
        if !COST_METRICS.contains(&m.as_str()) {
            return Err(ce_validation(format!(
                "Metric {m} is not supported by this emulator; use {}",
                COST_METRICS.join(", ")
            )));
        }
    }
    let mut groups = Vec::new();
    for g in req["GroupBy"].as_array().into_iter().flatten() {
        match (g["Type"].as_str(), g["Key"].as_str()) {
            (Some("TAG"), Some(k)) if !k.is_empty() => groups.push(GroupBy::Tag(k.to_owned())),
            (Some("DIMENSION"), Some("SERVICE")) => groups.push(GroupBy::Service),
            _ => {
                return Err(ce_validation(format!(
                    "Group Definition {g} is not supported by this emulator (TAG, or DIMENSION SERVICE)"
                )))
            }
        }
    }
    if groups.len() > 2 {
        return Err(ce_validation("You can group by at most two dimensions"));
    }
    let today = OffsetDateTime::now_utc().date();
    let costs = lock(&st.costs);
    let mut results = Vec::new();
    for (from, to) in periods(start, end, monthly) {
        let mut total = Decimal::ZERO;
        let mut by: BTreeMap<Vec<String>, Decimal> = BTreeMap::new();
        for c in costs.iter() {
            let d = c.at.date();
            if d < from || d >= to || !passes(&req["Filter"], c)? {
                continue;
            }
            total += c.cost;
            if !groups.is_empty() {
                *by.entry(groups.iter().map(|g| group_key(g, c)).collect())
                    .or_default() += c.cost;
            }
        }
        let amount = |d: Decimal| {
            let mut m = serde_json::Map::new();
            for name in &metrics {
                m.insert(
                    name.clone(),
                    json!({"Amount": d.normalize().to_string(), "Unit": "USD"}),
                );
            }
            Value::Object(m)
        };
        let mut r = json!({
            "TimePeriod": {"Start": day(from), "End": day(to)},
            "Estimated": to > today,
        });
        if groups.is_empty() {
            r["Total"] = amount(total);
            r["Groups"] = json!([]);
        } else {
            // Grouped results carry an empty Total, as Cost Explorer's do.
            r["Total"] = json!({});
            r["Groups"] = Value::Array(
                by.into_iter()
                    .map(|(keys, d)| json!({"Keys": keys, "Metrics": amount(d)}))
                    .collect(),
            );
        }
        results.push(r);
    }
    let defs: Vec<Value> = groups
        .iter()
        .map(|g| match g {
            GroupBy::Tag(k) => json!({"Type": "TAG", "Key": k}),
            GroupBy::Service => json!({"Type": "DIMENSION", "Key": "SERVICE"}),
        })
        .collect();
    let mut out = json!({"ResultsByTime": results, "DimensionValueAttributes": []});
    if !defs.is_empty() {
        out["GroupDefinitions"] = Value::Array(defs);
    }
    Ok((200, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(at: OffsetDateTime, tenant: Option<&str>, cost: &str) -> CostEntry {
        CostEntry {
            at,
            model_id: "m".into(),
            tags: tenant
                .map(|t| vec![("tollgate:tenant".to_owned(), t.to_owned())])
                .unwrap_or_default(),
            cost: cost.parse().unwrap(),
        }
    }

    #[test]
    fn groups_by_tag_per_month() {
        let st = AwsState::new("us-east-1");
        let oct = time::macros::datetime!(2026-10-15 12:00 UTC);
        let nov = time::macros::datetime!(2026-11-02 00:00 UTC);
        lock(&st.costs).extend([
            entry(oct, Some("acme"), "0.10"),
            entry(oct, Some("acme"), "0.05"),
            entry(oct, Some("beta"), "1"),
            entry(oct, None, "2"),
            entry(nov, Some("acme"), "7"),
        ]);
        let req = json!({"TimePeriod": {"Start": "2026-10-01", "End": "2026-11-01"},
            "Granularity": "MONTHLY", "Metrics": ["UnblendedCost"],
            "GroupBy": [{"Type": "TAG", "Key": "tollgate:tenant"}]});
        let (_, out) = handle(&st, "GetCostAndUsage", req.to_string().as_bytes()).unwrap();
        let r = &out["ResultsByTime"].as_array().unwrap()[0];
        assert_eq!(r["TimePeriod"]["End"], "2026-11-01");
        let g: Vec<(String, String)> = r["Groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                (
                    g["Keys"][0].as_str().unwrap().to_owned(),
                    g["Metrics"]["UnblendedCost"]["Amount"]
                        .as_str()
                        .unwrap()
                        .to_owned(),
                )
            })
            .collect();
        assert_eq!(
            g,
            vec![
                ("tollgate:tenant$".into(), "2".into()),
                ("tollgate:tenant$acme".into(), "0.15".into()),
                ("tollgate:tenant$beta".into(), "1".into()),
            ]
        );
        let bad = json!({"TimePeriod": {"Start": "2026-11-01", "End": "2026-10-01"},
            "Granularity": "MONTHLY", "Metrics": ["UnblendedCost"]});
        assert_eq!(
            handle(&st, "GetCostAndUsage", bad.to_string().as_bytes())
                .unwrap_err()
                .code,
            "ValidationException"
        );
    }
}
