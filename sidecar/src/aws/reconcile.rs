//! `tollgate-sidecar reconcile --month 2026-10`: the ledger's spend per tag
//! value (by default `tollgate:tenant`) against Cost Explorer's
//! `GetCostAndUsage` for the same month, grouped by that cost-allocation tag.
//!
//! Each ledger usage group (tenant, application, model) is attributed the way
//! AWS attributes it: to the application profile it was sent to (the
//! application's mapping, else the tenant-wide one), and through that
//! profile's tags (`ListTagsForResource`) to a tag value. Spend on a model
//! without a mapped profile reaches AWS untagged. The arithmetic is pure and
//! exact ([`reconcile`]); [`command`] fetches and prints.

use std::collections::{BTreeMap, BTreeSet};

use rust_decimal::Decimal;
use serde::Serialize;

use super::AwsError;

/// One group of `GET /v1/usage?group_by=tenant,application,model`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerGroup {
    pub tenant: String,
    pub application: Option<String>,
    pub model: String,
    pub requests: u64,
    pub estimated_requests: u64,
    pub cost: Decimal,
}

/// A mapping (tenant, application, model) → profile ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub tenant: String,
    pub application: Option<String>,
    pub model: String,
    pub arn: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// The tag's value (e.g. the tenant).
    pub value: String,
    /// The profile ARNs of this value the ledger charged through.
    pub profiles: Vec<String>,
    pub ledger_usd: Decimal,
    /// Cost Explorer's amount; zero when it has no group for the value.
    pub aws_usd: Decimal,
    /// AWS − ledger.
    pub difference_usd: Decimal,
    pub requests: u64,
    pub estimated_requests: u64,
    /// `estimated_requests / requests` (0 without requests).
    pub estimated_share: Decimal,
}

impl Row {
    /// Share of the ledger's requests that were charged from an estimate.
    pub fn estimated_share(&self) -> Decimal {
        if self.requests == 0 {
            Decimal::ZERO
        } else {
            Decimal::from(self.estimated_requests) / Decimal::from(self.requests)
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    pub month: String,
    pub tag_key: String,
    pub rows: Vec<Row>,
    /// Ledger spend on models without a profile carrying the tag: AWS bills it
    /// untagged, so it cannot appear in any row.
    pub untagged_ledger_usd: Decimal,
    pub untagged_ledger_requests: u64,
    /// Cost Explorer's untagged group: every untagged cost of the account in
    /// the month, not only Bedrock's.
    pub untagged_aws_usd: Decimal,
    /// Mapped ARNs AWS does not have (deleted, or made up).
    pub missing_profiles: Vec<String>,
    /// Cost Explorer marked the month as estimated (not final).
    pub aws_estimated: bool,
    pub causes: Vec<String>,
}

impl Reconciliation {
    pub fn total_difference(&self) -> Decimal {
        self.rows.iter().map(|r| r.difference_usd).sum()
    }
}

/// `2026-10` → (`2026-10-01`, `2026-11-01`): Cost Explorer's end is exclusive.
pub fn month_range(month: &str) -> Result<(String, String), AwsError> {
    let bad = || AwsError::Invalid(format!("--month {month:?}: expected YYYY-MM, e.g. 2026-10"));
    let (y, m) = month.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let y: i32 = y.parse().map_err(|_| bad())?;
    let m: u32 = m.parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) {
        return Err(bad());
    }
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    Ok((format!("{y:04}-{m:02}-01"), format!("{ny:04}-{nm:02}-01")))
}

/// The tag value of a Cost Explorer group key (`tollgate:tenant$acme` → `acme`;
/// `tollgate:tenant$` → empty, the untagged group).
pub fn ce_value<'a>(key: &'a str, tag_key: &str) -> &'a str {
    key.strip_prefix(tag_key)
        .and_then(|k| k.strip_prefix('$'))
        .unwrap_or_else(|| key.split_once('$').map_or(key, |(_, v)| v))
}

/// The profile a ledger group's requests were sent to: the application's
/// mapping, else the tenant-wide one.
fn profile_of<'a>(g: &LedgerGroup, mappings: &'a [Mapping]) -> Option<&'a Mapping> {
    let find = |app: Option<&str>| {
        mappings
            .iter()
            .find(|m| m.tenant == g.tenant && m.model == g.model && m.application.as_deref() == app)
    };
    g.application
        .as_deref()
        .and_then(|a| find(Some(a)))
        .or_else(|| find(None))
}

/// Compares the ledger with Cost Explorer's groups (tag value → USD).
pub fn reconcile(
    month: &str,
    tag_key: &str,
    ledger: &[LedgerGroup],
    mappings: &[Mapping],
    profile_tags: &BTreeMap<String, Option<BTreeMap<String, String>>>,
    aws: &BTreeMap<String, Decimal>,
    aws_estimated: bool,
) -> Reconciliation {
    let mut rows: BTreeMap<String, Row> = BTreeMap::new();
    let mut r = Reconciliation {
        month: month.to_owned(),
        tag_key: tag_key.to_owned(),
        aws_estimated,
        ..Default::default()
    };
    let mut missing = BTreeSet::new();
    for g in ledger {
        let value = profile_of(g, mappings).and_then(|m| match profile_tags.get(&m.arn) {
            Some(Some(tags)) => tags
                .get(tag_key)
                .filter(|v| !v.is_empty())
                .map(|v| (v.clone(), m.arn.clone())),
            Some(None) => {
                missing.insert(m.arn.clone());
                None
            }
            None => None,
        });
        match value {
            Some((v, arn)) => {
                let row = rows.entry(v.clone()).or_insert_with(|| Row {
                    value: v,
                    ..Default::default()
                });
                if !row.profiles.contains(&arn) {
                    row.profiles.push(arn);
                }
                row.ledger_usd += g.cost;
                row.requests += g.requests;
                row.estimated_requests += g.estimated_requests;
            }
            None => {
                r.untagged_ledger_usd += g.cost;
                r.untagged_ledger_requests += g.requests;
            }
        }
    }
    for (value, usd) in aws {
        if value.is_empty() {
            r.untagged_aws_usd += *usd;
            continue;
        }
        rows.entry(value.clone())
            .or_insert_with(|| Row {
                value: value.clone(),
                ..Default::default()
            })
            .aws_usd += *usd;
    }
    r.rows = rows
        .into_values()
        .map(|mut row| {
            row.ledger_usd = row.ledger_usd.normalize();
            row.aws_usd = row.aws_usd.normalize();
            row.difference_usd = (row.aws_usd - row.ledger_usd).normalize();
            row.estimated_share = row.estimated_share().round_dp(4).normalize();
            row
        })
        .collect();
    r.untagged_ledger_usd = r.untagged_ledger_usd.normalize();
    r.untagged_aws_usd = r.untagged_aws_usd.normalize();
    r.missing_profiles = missing.into_iter().collect();
    r.causes = causes(&r);
    r
}

/// The usual reasons for a gap, the ones the figures point at first.
pub fn causes(r: &Reconciliation) -> Vec<String> {
    let mut out = Vec::new();
    let key = &r.tag_key;
    let aws_tagged: Decimal = r.rows.iter().map(|x| x.aws_usd).sum();
    let ledger_tagged: Decimal = r.rows.iter().map(|x| x.ledger_usd).sum();
    if aws_tagged.is_zero() && !ledger_tagged.is_zero() {
        out.push(format!(
            "Cost Explorer has no cost under the tag {key}: activate it as a cost-allocation tag \
             (Billing and Cost Management → Cost allocation tags; it applies from activation on, \
             not to earlier usage, and takes up to 24 hours), and allow about 24 hours for usage \
             to reach Cost Explorer."
        ));
    }
    if r.aws_estimated {
        out.push(
            "Cost Explorer marks this month as estimated: it is still open or not final; usage \
             reaches Cost Explorer up to about 24 hours late, so the last day is usually short."
                .to_owned(),
        );
    }
    if r.rows.iter().any(|x| x.difference_usd < Decimal::ZERO) {
        out.push(
            "AWS below the ledger: Cost Explorer's lag, a ledger price above AWS's (compare with \
             `tollgate-sidecar prices import --from-aws --dry-run`), or estimated charges (a \
             stream cut before its usage was charged at what was seen)."
                .to_owned(),
        );
    }
    if r.rows.iter().any(|x| x.difference_usd > Decimal::ZERO) {
        out.push(
            "AWS above the ledger: spend outside the gateway (someone invoking the profile ARN \
             directly with AWS credentials), or a ledger price below AWS's (`tollgate-sidecar \
             prices import --from-aws --dry-run` shows the difference)."
                .to_owned(),
        );
    }
    if r.rows.iter().any(|x| x.estimated_requests > 0) {
        out.push(
            "Some requests were charged from an estimate (streams cut before their usage event): \
             their ledger cost may be off, in either direction."
                .to_owned(),
        );
    }
    if !r.untagged_ledger_usd.is_zero() {
        out.push(format!(
            "${} of ledger spend went to models without a profile tagged {key}: AWS bills it \
             untagged. Map those models (`tollgate-sidecar profiles create …`).",
            r.untagged_ledger_usd
        ));
    }
    for arn in &r.missing_profiles {
        out.push(format!(
            "{arn} is mapped but does not exist in AWS (deleted?): `profiles sync` or `profiles unmap`."
        ));
    }
    out
}

/// The report as text: a table, then the causes.
pub fn render(r: &Reconciliation) -> String {
    let mut lines = vec![format!(
        "reconcile {}: ledger vs Cost Explorer (UnblendedCost), grouped by tag {}",
        r.month, r.tag_key
    )];
    let header = [
        r.tag_key.as_str(),
        "profiles",
        "ledger USD",
        "AWS USD",
        "difference",
        "estimated",
    ];
    let mut table: Vec<Vec<String>> = vec![header.iter().map(|s| (*s).to_owned()).collect()];
    for row in &r.rows {
        let profiles = row
            .profiles
            .iter()
            .map(|a| a.rsplit('/').next().unwrap_or(a).to_owned())
            .collect::<Vec<_>>()
            .join(",");
        table.push(vec![
            row.value.clone(),
            if profiles.is_empty() {
                "-".into()
            } else {
                profiles
            },
            row.ledger_usd.to_string(),
            row.aws_usd.to_string(),
            signed(row.difference_usd),
            format!(
                "{}%",
                (row.estimated_share() * Decimal::from(100)).round_dp(1)
            ),
        ]);
    }
    table.push(vec![
        "(untagged)".into(),
        "-".into(),
        r.untagged_ledger_usd.to_string(),
        r.untagged_aws_usd.to_string(),
        "n/a".into(),
        String::new(),
    ]);
    let widths: Vec<usize> = (0..header.len())
        .map(|i| table.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    for row in table {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i >= 2 {
                    format!("{c:>w$}")
                } else {
                    format!("{c:<w$}")
                }
            })
            .collect();
        lines.push(cells.join("  ").trim_end().to_owned());
    }
    lines.push(format!(
        "total difference (tagged rows): {}",
        signed(r.total_difference())
    ));
    lines.push(
        "(untagged) AWS is every untagged cost of the account in the month, not only Bedrock's."
            .to_owned(),
    );
    if !r.causes.is_empty() {
        lines.push(String::new());
        lines.push("Usual causes of a gap:".to_owned());
        for c in &r.causes {
            lines.push(format!("- {c}"));
        }
    }
    lines.join("\n") + "\n"
}

fn signed(d: Decimal) -> String {
    if d > Decimal::ZERO {
        format!("+{d}")
    } else {
        d.to_string()
    }
}

/// A Cost Explorer amount (`"0.0000123"`, occasionally in exponent form).
pub fn parse_amount(s: &str) -> Option<Decimal> {
    s.parse::<Decimal>()
        .ok()
        .or_else(|| Decimal::from_scientific(s).ok())
}

#[cfg(feature = "aws")]
mod sdk {
    use super::*;
    use crate::aws::{classify, sdk_config};
    use aws_sdk_costexplorer::types::{
        DateInterval, Granularity, GroupDefinition, GroupDefinitionType,
    };

    /// Cost Explorer's groups for the month (tag value → USD), and whether the
    /// month is estimated.
    pub async fn fetch_costs(
        month: &str,
        tag_key: &str,
    ) -> Result<(BTreeMap<String, Decimal>, bool), AwsError> {
        let (start, end) = month_range(month)?;
        let client = aws_sdk_costexplorer::Client::new(sdk_config().await?);
        let period = DateInterval::builder()
            .start(start)
            .end(end)
            .build()
            .map_err(|e| AwsError::Invalid(e.to_string()))?;
        let mut out = BTreeMap::new();
        let mut estimated = false;
        let mut token: Option<String> = None;
        loop {
            let page = client
                .get_cost_and_usage()
                .time_period(period.clone())
                .granularity(Granularity::Monthly)
                .metrics("UnblendedCost")
                .group_by(
                    GroupDefinition::builder()
                        .r#type(GroupDefinitionType::Tag)
                        .key(tag_key)
                        .build(),
                )
                .set_next_page_token(token.take())
                .send()
                .await
                .map_err(|e| classify("ce:GetCostAndUsage", e))?;
            for result in page.results_by_time() {
                estimated |= result.estimated();
                for g in result.groups() {
                    let Some(key) = g.keys().first() else {
                        continue;
                    };
                    let amount = g
                        .metrics()
                        .and_then(|m| m.get("UnblendedCost"))
                        .and_then(|m| m.amount())
                        .and_then(parse_amount)
                        .unwrap_or_default();
                    *out.entry(ce_value(key, tag_key).to_owned()).or_default() += amount;
                }
            }
            match page.next_page_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok((out, estimated)),
            }
        }
    }

    /// Each mapped ARN's tags (`None`: AWS does not have the profile).
    pub async fn profile_tags(
        arns: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Option<BTreeMap<String, String>>>, AwsError> {
        let client = aws_sdk_bedrock::Client::new(sdk_config().await?);
        let mut out = BTreeMap::new();
        for arn in arns {
            let tags = match crate::aws::profiles::tags_of(&client, arn).await {
                Ok(t) => Some(t),
                Err(AwsError::NotFound(_)) => None,
                Err(e) => return Err(e),
            };
            out.insert(arn.clone(), tags);
        }
        Ok(out)
    }
}

#[cfg(feature = "aws")]
pub use sdk::{fetch_costs, profile_tags};

/// Every tenant's profile mappings, from the admin API.
#[cfg(feature = "aws")]
pub(crate) async fn mappings(c: &crate::cli::Client) -> crate::error::Result<Vec<Mapping>> {
    use reqwest::Method;
    use serde_json::Value;
    let tenants: Value = serde_json::from_str(&c.call(Method::GET, "/v1/tenants", None).await?)?;
    let mut out = Vec::new();
    for t in tenants["tenants"].as_array().into_iter().flatten() {
        let Some(id) = t["tenant_id"].as_str() else {
            continue;
        };
        let path = format!("/v1/tenants/{}/profiles", crate::cli::seg(id));
        let list: Value = serde_json::from_str(&c.call(Method::GET, &path, None).await?)?;
        for p in list["profiles"].as_array().into_iter().flatten() {
            out.push(Mapping {
                tenant: id.to_owned(),
                application: p["application_id"].as_str().map(str::to_owned),
                model: p["model_id"].as_str().unwrap_or_default().to_owned(),
                arn: p["arn"].as_str().unwrap_or_default().to_owned(),
            });
        }
    }
    Ok(out)
}

/// The ledger's usage groups of the month, from the admin API.
#[cfg(feature = "aws")]
pub(crate) async fn ledger_groups(
    c: &crate::cli::Client,
    month: &str,
) -> crate::error::Result<Vec<LedgerGroup>> {
    use serde_json::Value;
    let (start, end) = month_range(month)?;
    let path = format!(
        "/v1/usage?group_by=tenant,application,model&from={start}T00:00:00Z&to={end}T00:00:00Z"
    );
    let usage: Value = serde_json::from_str(&c.call(reqwest::Method::GET, &path, None).await?)?;
    let mut out = Vec::new();
    for r in usage["rows"].as_array().into_iter().flatten() {
        let cost = r["cost_usd"]
            .as_str()
            .and_then(parse_amount)
            .ok_or_else(|| {
                crate::error::Error::Internal(format!("usage row without cost_usd: {r}"))
            })?;
        out.push(LedgerGroup {
            tenant: r["tenant"].as_str().unwrap_or_default().to_owned(),
            application: r["application"].as_str().map(str::to_owned),
            model: r["model"].as_str().unwrap_or_default().to_owned(),
            requests: r["requests"].as_u64().unwrap_or(0),
            estimated_requests: r["estimated_requests"].as_u64().unwrap_or(0),
            cost,
        });
    }
    Ok(out)
}

/// `tollgate-sidecar reconcile`: the ledger through the admin API, the tags
/// and costs from AWS with this process's credentials.
pub(crate) async fn command(
    c: &crate::cli::Client,
    a: &crate::config::ReconcileArgs,
) -> crate::error::Result<()> {
    month_range(&a.month)?;
    #[cfg(not(feature = "aws"))]
    {
        let _ = c;
        Err(AwsError::NotBuilt.into())
    }
    #[cfg(feature = "aws")]
    {
        let ledger = ledger_groups(c, &a.month).await?;
        let maps = mappings(c).await?;
        let arns: BTreeSet<String> = maps.iter().map(|m| m.arn.clone()).collect();
        let tags = profile_tags(&arns).await?;
        let (aws, estimated) = fetch_costs(&a.month, &a.tag_key).await?;
        let r = reconcile(&a.month, &a.tag_key, &ledger, &maps, &tags, &aws, estimated);
        match a.format {
            crate::config::ReportFormat::Json => println!("{}", serde_json::to_string_pretty(&r)?),
            crate::config::ReportFormat::Table => print!("{}", render(&r)),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn group(tenant: &str, app: Option<&str>, model: &str, cost: &str, est: u64) -> LedgerGroup {
        LedgerGroup {
            tenant: tenant.into(),
            application: app.map(Into::into),
            model: model.into(),
            requests: 4,
            estimated_requests: est,
            cost: d(cost),
        }
    }

    fn map(tenant: &str, app: Option<&str>, model: &str, arn: &str) -> Mapping {
        Mapping {
            tenant: tenant.into(),
            application: app.map(Into::into),
            model: model.into(),
            arn: arn.into(),
        }
    }

    fn tagged(tenant: &str) -> Option<BTreeMap<String, String>> {
        Some(BTreeMap::from([(
            "tollgate:tenant".to_owned(),
            tenant.to_owned(),
        )]))
    }

    #[test]
    fn months_end_exclusive() {
        assert_eq!(
            month_range("2026-10").unwrap(),
            ("2026-10-01".into(), "2026-11-01".into())
        );
        assert_eq!(
            month_range("2026-12").unwrap(),
            ("2026-12-01".into(), "2027-01-01".into())
        );
        for bad in ["2026-13", "2026-1", "26-10", "october"] {
            assert!(month_range(bad).is_err(), "{bad}");
        }
        assert_eq!(ce_value("tollgate:tenant$acme", "tollgate:tenant"), "acme");
        assert_eq!(ce_value("tollgate:tenant$", "tollgate:tenant"), "");
        assert_eq!(parse_amount("1.5E-7"), Some(d("0.00000015")));
    }

    #[test]
    fn attributes_through_profiles_and_measures_the_gap_exactly() {
        let ledger = vec![
            // acme's chat app has its own profile; its other traffic the tenant-wide one.
            group("acme", Some("chat"), "m1", "0.10", 0),
            group("acme", None, "m1", "0.05", 1),
            group("acme", Some("batch"), "m1", "0.01", 0), // falls back to tenant-wide
            group("beta", None, "m1", "0.30", 0),
            group("gamma", None, "m2", "0.07", 0), // no profile: untagged
        ];
        let mappings = vec![
            map("acme", Some("chat"), "m1", "arn:p/chat"),
            map("acme", None, "m1", "arn:p/acme"),
            map("beta", None, "m1", "arn:p/beta"),
        ];
        let tags = BTreeMap::from([
            ("arn:p/chat".to_owned(), tagged("acme")),
            ("arn:p/acme".to_owned(), tagged("acme")),
            ("arn:p/beta".to_owned(), tagged("beta")),
        ]);
        let aws = BTreeMap::from([
            ("acme".to_owned(), d("0.16")),
            ("beta".to_owned(), d("0.3003")),
            ("delta".to_owned(), d("2")),
            (String::new(), d("9.5")),
        ]);
        let r = reconcile(
            "2026-10",
            "tollgate:tenant",
            &ledger,
            &mappings,
            &tags,
            &aws,
            false,
        );
        let row = |v: &str| r.rows.iter().find(|x| x.value == v).unwrap();
        assert_eq!(row("acme").ledger_usd, d("0.16"));
        assert_eq!(row("acme").difference_usd, Decimal::ZERO);
        assert_eq!(row("acme").profiles.len(), 2);
        assert_eq!(row("acme").estimated_share(), d("1") / d("12"));
        assert_eq!(row("beta").difference_usd, d("0.0003"));
        // Spend AWS saw under a value the ledger never charged: outside the gateway.
        assert_eq!(row("delta").ledger_usd, Decimal::ZERO);
        assert_eq!(row("delta").difference_usd, d("2"));
        assert_eq!(r.untagged_ledger_usd, d("0.07"));
        assert_eq!(r.untagged_aws_usd, d("9.5"));
        assert_eq!(r.total_difference(), d("2.0003"));
        assert!(r.causes.iter().any(|c| c.contains("outside the gateway")));
        assert!(r.causes.iter().any(|c| c.contains("without a profile")));
        let text = render(&r);
        assert!(text.contains("+0.0003"), "{text}");
        assert!(text.contains("Usual causes of a gap:"), "{text}");
    }

    #[test]
    fn an_inactive_tag_and_a_missing_profile_are_named() {
        let ledger = vec![
            group("acme", None, "m1", "1", 0),
            group("beta", None, "m1", "1", 0),
        ];
        let mappings = vec![
            map("acme", None, "m1", "arn:a"),
            map("beta", None, "m1", "arn:gone"),
        ];
        let tags = BTreeMap::from([
            ("arn:a".to_owned(), tagged("acme")),
            ("arn:gone".to_owned(), None),
        ]);
        let aws = BTreeMap::from([(String::new(), d("5"))]);
        let r = reconcile(
            "2026-10",
            "tollgate:tenant",
            &ledger,
            &mappings,
            &tags,
            &aws,
            true,
        );
        assert_eq!(r.rows.len(), 1);
        assert_eq!(r.rows[0].difference_usd, d("-1"));
        assert_eq!(r.missing_profiles, vec!["arn:gone".to_owned()]);
        assert!(r
            .causes
            .iter()
            .any(|c| c.contains("activate it as a cost-allocation tag")));
        assert!(r.causes.iter().any(|c| c.contains("estimated")));
        assert!(r.causes.iter().any(|c| c.contains("arn:gone")));
    }
}
