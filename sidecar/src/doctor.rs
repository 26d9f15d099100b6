//! `tollgate-sidecar doctor`: the seed deployment's troubleshooting scripts as
//! one command. It reads the sidecar (health, store, prices, aliases, profiles,
//! its clock), with `--envoy-admin` Envoy's live configuration and the
//! filter's counters, and the AWS credentials of its environment (STS
//! `GetCallerIdentity`), and says for each finding what to do. Every check is a
//! plain function over what was fetched, so each broken setup is a unit test;
//! [`command`] only fetches, prints and sets the exit status.

use crate::config::DoctorArgs;
use crate::error::{Error, Result};
use serde_json::Value;
use std::fmt;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One result: what was checked, what was found, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub check: &'static str,
    pub detail: String,
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, detail: impl Into<String>) -> Self {
        Self {
            level: Level::Ok,
            check,
            detail: detail.into(),
            fix: None,
        }
    }

    fn bad(level: Level, check: &'static str, detail: impl Into<String>, fix: &str) -> Self {
        Self {
            level,
            check,
            detail: detail.into(),
            fix: Some(fix.to_owned()),
        }
    }
}

// --- Envoy's live configuration -------------------------------------------

const WASM_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm";
const SIGNING: &str = "envoy.filters.http.aws_request_signing";
const ROUTER: &str = "envoy.filters.http.router";
const JWT: &str = "envoy.filters.http.jwt_authn";

/// Every HTTP filter chain in a `/config_dump`: static and dynamic listeners.
/// Filters configured through ECDS are looked up in the dump's ECDS section.
fn http_filter_chains(dump: &Value) -> Vec<Vec<(String, Value)>> {
    let configs = dump["configs"].as_array().cloned().unwrap_or_default();
    let ecds: Vec<&Value> = configs
        .iter()
        .filter_map(|c| c["ecds_filters"].as_array())
        .flatten()
        .map(|f| &f["ecds_filter"])
        .collect();
    let mut listeners = Vec::new();
    for c in &configs {
        for l in c["static_listeners"].as_array().into_iter().flatten() {
            listeners.push(&l["listener"]);
        }
        for l in c["dynamic_listeners"].as_array().into_iter().flatten() {
            listeners.push(&l["active_state"]["listener"]);
        }
    }
    let mut chains = Vec::new();
    for l in listeners {
        for fc in l["filter_chains"].as_array().into_iter().flatten() {
            for nf in fc["filters"].as_array().into_iter().flatten() {
                let Some(http) = nf["typed_config"]["http_filters"].as_array() else {
                    continue;
                };
                let chain = http
                    .iter()
                    .map(|f| {
                        let name = f["name"].as_str().unwrap_or_default().to_owned();
                        let typed = if f["typed_config"].is_null() {
                            ecds.iter()
                                .find(|e| e["name"].as_str() == Some(name.as_str()))
                                .map(|e| e["typed_config"].clone())
                                .unwrap_or(Value::Null)
                        } else {
                            f["typed_config"].clone()
                        };
                        (name, typed)
                    })
                    .collect();
                chains.push(chain);
            }
        }
    }
    chains
}

fn is_tollgate(name: &str, typed: &Value) -> bool {
    typed["@type"].as_str() == Some(WASM_TYPE)
        && (name.contains("tollgate")
            || typed["config"]["root_id"].as_str() == Some("tollgate")
            || typed["config"]["name"].as_str() == Some("tollgate"))
}

/// The Region the gateway signs for: the first `aws_request_signing` filter's
/// `region` in a chain that has the Tollgate filter.
pub fn signing_region(dump: &Value) -> Option<String> {
    http_filter_chains(dump)
        .into_iter()
        .filter(|c| c.iter().any(|(n, t)| is_tollgate(n, t)))
        .flatten()
        .find(|(n, _)| n == SIGNING)
        .and_then(|(_, t)| t["region"].as_str().map(str::to_owned))
}

/// The Tollgate filter is loaded, can hold headers while it reserves, fails
/// closed, and sits after authentication and before signing and routing.
pub fn check_envoy_config(dump: &Value) -> Vec<Finding> {
    let mut out = Vec::new();
    let chains: Vec<_> = http_filter_chains(dump)
        .into_iter()
        .filter(|c| c.iter().any(|(n, t)| is_tollgate(n, t)))
        .collect();
    if chains.is_empty() {
        out.push(Finding::bad(
            Level::Fail,
            "envoy.filter_loaded",
            "no HTTP filter chain in Envoy's live configuration has the Tollgate Wasm filter",
            "add the `tollgate` Wasm filter to the gateway listener's http_filters (see envoy/aws.yaml, or envoy/istio for Istio)",
        ));
        return out;
    }
    out.push(Finding::ok(
        "envoy.filter_loaded",
        format!("Tollgate filter in {} HTTP filter chain(s)", chains.len()),
    ));
    for chain in &chains {
        let pos = |name: &str| chain.iter().position(|(n, _)| n == name);
        let Some(at) = chain.iter().position(|(n, t)| is_tollgate(n, t)) else {
            continue;
        };
        let config = &chain[at].1["config"];
        if config["allow_on_headers_stop_iteration"].as_bool() == Some(true) {
            out.push(Finding::ok(
                "envoy.allow_on_headers_stop_iteration",
                "true: the filter can hold the headers while it reserves",
            ));
        } else {
            out.push(Finding::bad(
                Level::Fail,
                "envoy.allow_on_headers_stop_iteration",
                "not set: Envoy forwards the headers before the filter has read the body, so requests reach Bedrock unreserved and without the profile rewrite",
                "set `allow_on_headers_stop_iteration: true` in the Wasm filter's `config` (PluginConfig)",
            ));
        }
        if config["failure_policy"].as_str() == Some("FAIL_OPEN") {
            out.push(Finding::bad(
                Level::Warn,
                "envoy.failure_policy",
                "FAIL_OPEN: if the Wasm VM fails, requests pass unmetered",
                "use `failure_policy: FAIL_CLOSED` unless passing requests unmetered is intended",
            ));
        }
        match (pos(SIGNING), pos(ROUTER)) {
            (Some(s), _) if s < at => out.push(Finding::bad(
                Level::Fail,
                "envoy.filter_order",
                "aws_request_signing runs before Tollgate: it signs the path and body Tollgate then rewrites, and Bedrock refuses the signature",
                "move the tollgate filter before envoy.filters.http.aws_request_signing",
            )),
            (None, _) => out.push(Finding::bad(
                Level::Warn,
                "envoy.filter_order",
                "no aws_request_signing filter after Tollgate: requests reach Bedrock unsigned unless something else signs them",
                "add envoy.filters.http.aws_request_signing after the tollgate filter (see envoy/aws.yaml)",
            )),
            (_, Some(r)) if r < at => out.push(Finding::bad(
                Level::Fail,
                "envoy.filter_order",
                "the router runs before Tollgate",
                "the router must be the last HTTP filter",
            )),
            _ => out.push(Finding::ok(
                "envoy.filter_order",
                "tollgate → aws_request_signing → router",
            )),
        }
        if let Some(j) = pos(JWT) {
            if j > at {
                out.push(Finding::bad(
                    Level::Fail,
                    "envoy.jwt_order",
                    "jwt_authn runs after Tollgate: the filter cannot see the verified claims",
                    "move envoy.filters.http.jwt_authn before the tollgate filter",
                ));
            }
        }
    }
    out
}

/// The filter's counters from Envoy's `/stats` (text): settlements dropped,
/// a backlog, and sidecar errors.
pub fn check_filter_stats(stats: &str) -> Vec<Finding> {
    let stat = |name: &str| -> Option<u64> {
        stats.lines().find_map(|l| {
            let (k, v) = l.split_once(": ")?;
            (k.trim() == format!("wasmcustom.tollgate.{name}"))
                .then(|| v.trim().parse().ok())
                .flatten()
        })
    };
    let mut out = Vec::new();
    let Some(pending) = stat("settlements.pending") else {
        out.push(Finding::bad(
            Level::Warn,
            "filter.stats",
            "Envoy has no wasmcustom.tollgate.* stats: the filter is not loaded, or has not started",
            "check Envoy's log for `tollgate` (a bad plugin configuration names the key)",
        ));
        return out;
    };
    match stat("settlements.dropped").unwrap_or(0) {
        0 => out.push(Finding::ok("filter.settlements_dropped", "none dropped")),
        n => out.push(Finding::bad(
            Level::Fail,
            "filter.settlements_dropped",
            format!("{n} settlement(s) dropped: requests Bedrock served were not charged"),
            "make the sidecar reachable from Envoy, raise `max_pending_settlements` if outages are long, and compare the ledger with the bill",
        )),
    }
    if pending > 1_000 {
        out.push(Finding::bad(
            Level::Warn,
            "filter.settlement_backlog",
            format!("{pending} settlement(s) waiting for the sidecar"),
            "check the sidecar's health and Envoy's `tollgate_sidecar` cluster; the backlog drains when it answers",
        ));
    } else {
        out.push(Finding::ok(
            "filter.settlement_backlog",
            format!("{pending} pending"),
        ));
    }
    if let Some(n) = stat("requests.sidecar_error").filter(|n| *n > 0) {
        out.push(Finding::bad(
            Level::Warn,
            "filter.sidecar_errors",
            format!("{n} request(s) met an unreachable or failing sidecar since Envoy started"),
            "check the sidecar's log and Envoy's `tollgate_sidecar` cluster (`/clusters` on the admin port)",
        ));
    }
    out
}

// --- the catalog: prices, aliases, profiles ---------------------------------

/// `arn:<partition>:bedrock:<region>:<account>:application-inference-profile/<id>`
/// → the region, or why it is not one.
fn profile_arn_region(arn: &str) -> std::result::Result<&str, &'static str> {
    let parts: Vec<&str> = arn.splitn(6, ':').collect();
    let [arn_, partition, service, region, account, resource] = parts[..] else {
        return Err("not an ARN");
    };
    if arn_ != "arn" || !partition.starts_with("aws") || service != "bedrock" {
        return Err("not a Bedrock ARN");
    }
    if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
        return Err("the account is not 12 digits");
    }
    match resource.split_once('/') {
        Some(("application-inference-profile", id)) if !id.is_empty() => Ok(region),
        _ => Err("not an application-inference-profile"),
    }
}

/// Every mapped model has a price, every alias names a priced model, and every
/// profile ARN is well formed and in the gateway's region (when it is known).
pub fn check_catalog(
    region: Option<&str>,
    priced: &[String],
    aliases: &[(String, String)],
    profiles: &[(String, String, String)],
) -> Vec<Finding> {
    let mut out = Vec::new();
    let has_price = |m: &str| priced.iter().any(|p| p == m);
    for (alias, model) in aliases {
        if !has_price(model) {
            out.push(Finding::bad(
                Level::Fail,
                "catalog.alias_priced",
                format!(
                    "alias {alias} names {model}, which has no price: its requests are refused"
                ),
                "set its price: tollgate-sidecar prices set <model> --input … --output …",
            ));
        }
    }
    for (tenant, model, arn) in profiles {
        if !has_price(model) {
            out.push(Finding::bad(
                Level::Fail,
                "catalog.profile_priced",
                format!("tenant {tenant} maps {model} to a profile, but {model} has no price"),
                "set its price: tollgate-sidecar prices set <model> --input … --output …",
            ));
        }
        match profile_arn_region(arn) {
            Err(why) => out.push(Finding::bad(
                Level::Fail,
                "catalog.profile_arn",
                format!("tenant {tenant}, {model}: {arn} is {why}"),
                "map the ARN of an application inference profile (aws bedrock list-inference-profiles --type-equals APPLICATION)",
            )),
            Ok(r) if region.is_some_and(|g| g != r) => out.push(Finding::bad(
                Level::Fail,
                "catalog.profile_region",
                format!(
                    "tenant {tenant}, {model}: {arn} is in {r}, the gateway calls {}",
                    region.unwrap_or_default()
                ),
                "create the profile in the gateway's region, or run the gateway in the profile's",
            )),
            Ok(_) => {}
        }
    }
    if out.is_empty() {
        out.push(Finding::ok(
            "catalog",
            format!(
                "{} price(s); {} alias(es) and {} profile(s), all priced{}",
                priced.len(),
                aliases.len(),
                profiles.len(),
                region.map(|r| format!(" and in {r}")).unwrap_or_default()
            ),
        ));
    }
    if region.is_none() && !profiles.is_empty() {
        out.push(Finding::bad(
            Level::Warn,
            "catalog.profile_region",
            "the gateway's Region is unknown: profile Regions not checked",
            "pass --region, or --envoy-admin so it is read from the signing filter",
        ));
    }
    out
}

/// The sidecar's clock (its `Date` header) against this machine's: SigV4
/// verification and monthly resets depend on it.
pub fn check_clock(server_date: Option<&str>, now: SystemTime) -> Finding {
    let parsed = server_date.and_then(|d| {
        time::OffsetDateTime::parse(d, &time::format_description::well_known::Rfc2822).ok()
    });
    let Some(server) = parsed else {
        return Finding::bad(
            Level::Warn,
            "clock",
            "the sidecar sent no readable Date header",
            "run doctor against the sidecar directly, not through a proxy that drops Date",
        );
    };
    let here = time::OffsetDateTime::from(now);
    let skew = (here - server).unsigned_abs();
    let secs = skew.as_secs();
    let fix = "synchronise the clocks (chrony or systemd-timesyncd); SigV4 allows 15 minutes";
    if skew > Duration::from_secs(300) {
        Finding::bad(
            Level::Fail,
            "clock",
            format!("{secs} s between this machine and the sidecar"),
            fix,
        )
    } else if skew > Duration::from_secs(5) {
        Finding::bad(
            Level::Warn,
            "clock",
            format!("{secs} s between this machine and the sidecar"),
            fix,
        )
    } else {
        Finding::ok("clock", format!("within {secs} s of the sidecar"))
    }
}

// --- running it --------------------------------------------------------------

struct Fetch {
    http: reqwest::Client,
}

impl Fetch {
    async fn get(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> std::result::Result<(u16, Option<String>, String), String> {
        let mut req = self.http.get(url);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        let date = resp
            .headers()
            .get("date")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = resp.text().await.map_err(|e| e.to_string())?;
        Ok((status, date, body))
    }

    async fn json(&self, url: &str, token: &str) -> std::result::Result<Value, String> {
        match self.get(url, Some(token)).await? {
            (200, _, body) => serde_json::from_str(&body).map_err(|e| e.to_string()),
            (status, _, body) => Err(format!("HTTP {status}: {body}")),
        }
    }
}

async fn sidecar_findings(f: &Fetch, args: &DoctorArgs, region: Option<&str>) -> Vec<Finding> {
    let base = args.client.url.trim_end_matches('/');
    let mut out = Vec::new();
    let mut date = None;
    for (check, path, fix) in [
        ("sidecar.health", "/healthz", "start the sidecar, or point --url at it"),
        (
            "sidecar.store",
            "/readyz",
            "the store is not usable: see the sidecar's log (SQLite path and permissions, or the DynamoDB tables: tollgate-sidecar dynamodb init)",
        ),
    ] {
        match f.get(&format!("{base}{path}"), None).await {
            Ok((200, d, _)) => {
                date = date.or(d);
                out.push(Finding::ok(check, format!("{base}{path} answers 200")));
            }
            Ok((status, _, body)) => out.push(Finding::bad(
                Level::Fail,
                check,
                format!("{base}{path} answers {status}: {}", body.trim()),
                fix,
            )),
            Err(e) => {
                out.push(Finding::bad(
                    Level::Fail,
                    check,
                    format!("{base}{path}: {e}"),
                    fix,
                ));
                return out; // nothing else can be read
            }
        }
    }
    out.push(check_clock(date.as_deref(), SystemTime::now()));
    let Some(token) = args.client.admin_token.as_deref().filter(|t| !t.is_empty()) else {
        out.push(Finding::bad(
            Level::Warn,
            "catalog",
            "no admin token: prices, aliases and profiles not checked",
            "set TOLLGATE_ADMIN_TOKEN (or --admin-token)",
        ));
        return out;
    };
    match catalog(f, base, token, region).await {
        Ok(found) => out.extend(found),
        Err(e) => out.push(Finding::bad(
            Level::Fail,
            "catalog",
            format!("cannot read the catalog: {e}"),
            "check the admin token and the sidecar's log",
        )),
    }
    out
}

async fn catalog(
    f: &Fetch,
    base: &str,
    token: &str,
    region: Option<&str>,
) -> std::result::Result<Vec<Finding>, String> {
    let prices = f.json(&format!("{base}/v1/pricing"), token).await?;
    let pricing_region = prices["region"].as_str().filter(|r| *r != "global");
    let region = region.or(pricing_region).map(str::to_owned);
    let priced: Vec<String> = prices["pricing"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["model_id"].as_str().map(str::to_owned))
        .collect();
    let aliases: Vec<(String, String)> = f.json(&format!("{base}/v1/aliases"), token).await?
        ["aliases"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(a, m)| (a.clone(), m.as_str().unwrap_or_default().to_owned()))
        .collect();
    let tenants = f.json(&format!("{base}/v1/tenants"), token).await?;
    let mut profiles = Vec::new();
    for t in tenants["tenants"].as_array().into_iter().flatten() {
        let Some(id) = t["tenant_id"].as_str() else {
            continue;
        };
        let segment = percent_encoding::utf8_percent_encode(id, percent_encoding::NON_ALPHANUMERIC);
        let list = f
            .json(&format!("{base}/v1/tenants/{segment}/profiles"), token)
            .await?;
        for p in list["profiles"].as_array().into_iter().flatten() {
            profiles.push((
                id.to_owned(),
                p["model_id"].as_str().unwrap_or_default().to_owned(),
                p["arn"].as_str().unwrap_or_default().to_owned(),
            ));
        }
    }
    Ok(check_catalog(
        region.as_deref(),
        &priced,
        &aliases,
        &profiles,
    ))
}

/// The findings, and the Region the gateway signs for when Envoy says.
async fn envoy_findings(f: &Fetch, admin: &str) -> (Vec<Finding>, Option<String>) {
    let admin = admin.trim_end_matches('/');
    let fix = "start Envoy, or point --envoy-admin at its admin address";
    let dump = match f.get(&format!("{admin}/config_dump"), None).await {
        Ok((200, _, body)) => body,
        Ok((status, _, _)) => {
            let f = Finding::bad(
                Level::Fail,
                "envoy.admin",
                format!("{admin}/config_dump answers {status}"),
                fix,
            );
            return (vec![f], None);
        }
        Err(e) => {
            let f = Finding::bad(Level::Fail, "envoy.admin", format!("{admin}: {e}"), fix);
            return (vec![f], None);
        }
    };
    let mut out = vec![Finding::ok("envoy.admin", format!("{admin} reachable"))];
    let mut region = None;
    match serde_json::from_str::<Value>(&dump) {
        Ok(v) => {
            region = signing_region(&v);
            out.extend(check_envoy_config(&v));
        }
        Err(e) => out.push(Finding::bad(
            Level::Fail,
            "envoy.admin",
            format!("/config_dump is not JSON: {e}"),
            fix,
        )),
    }
    match f
        .get(&format!("{admin}/stats?filter=wasmcustom.tollgate"), None)
        .await
    {
        Ok((200, _, stats)) => out.extend(check_filter_stats(&stats)),
        Ok((status, _, _)) => out.push(Finding::bad(
            Level::Warn,
            "filter.stats",
            format!("{admin}/stats answers {status}"),
            fix,
        )),
        Err(e) => out.push(Finding::bad(Level::Warn, "filter.stats", e, fix)),
    }
    (out, region)
}

// --- AWS credentials -----------------------------------------------------

/// The credentials Envoy's signer and the DynamoDB store would use (the same
/// default chain, from the sidecar's environment), and whom STS says they are.
async fn aws_findings(f: &Fetch, region: &str) -> Vec<Finding> {
    use crate::sts::{self, StsError};
    let creds = match sts::resolve_credentials().await {
        Ok(c) => c,
        Err(e) => {
            return vec![Finding::bad(
                Level::Warn,
                "aws.credentials",
                e.to_string(),
                "Envoy's aws_request_signing filter and the DynamoDB store need them: set AWS_PROFILE or \
                 AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or give the pod a role (IRSA) or the host an \
                 instance profile. Not needed when clients send Bedrock API keys and the store is SQLite.",
            )]
        }
    };
    let id = &creds.access_key_id;
    let chars: Vec<char> = id.chars().collect();
    let shown: String = if chars.len() > 8 {
        format!(
            "{}…{}",
            chars[..4].iter().collect::<String>(),
            chars[chars.len() - 4..].iter().collect::<String>()
        )
    } else {
        "(short)".to_owned()
    };
    let mut out = vec![Finding::ok(
        "aws.credentials",
        format!("access key {shown}, from {}", creds.source),
    )];
    let endpoint = sts::endpoint(region);
    out.push(match sts::caller_arn(&f.http, &endpoint, region, &creds).await {
        Ok(arn) => Finding::ok("aws.identity", format!("{arn} (STS GetCallerIdentity at {endpoint})")),
        Err(e @ StsError::Rejected { .. }) => {
            let fix = match &e {
                StsError::Rejected { code, .. } if code == "InvalidClientTokenId" => {
                    "AWS does not know this access key (deleted, deactivated, or of another partition): issue new credentials"
                }
                StsError::Rejected { code, .. } if code == "SignatureDoesNotMatch" => {
                    "the secret does not belong to this access key, or this host's clock is off: fix the secret (AWS_SECRET_ACCESS_KEY or the profile) and check NTP"
                }
                StsError::Rejected { code, .. } if code == "ExpiredToken" => {
                    "the session token has expired: refresh the credentials (aws sso login, or assume the role again)"
                }
                _ => "fix the credentials the default chain finds (environment, profile, role)",
            };
            Finding::bad(Level::Fail, "aws.identity", e.to_string(), fix)
        }
        Err(e) => Finding::bad(
            Level::Warn,
            "aws.identity",
            format!("not verified: {e}"),
            "STS is not reachable from here (no egress, or a VPC without an STS endpoint): check the network, or set AWS_ENDPOINT_URL_STS",
        ),
    });
    out
}

/// Runs every check, prints the findings, and fails when any check failed.
pub async fn command(args: DoctorArgs) -> Result<()> {
    let f = Fetch {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| Error::Internal(e.to_string()))?,
    };
    let (envoy, signing) = match &args.envoy_admin {
        Some(admin) => envoy_findings(&f, admin).await,
        None => (
            vec![Finding::bad(
                Level::Warn,
                "envoy",
                "not checked",
                "pass --envoy-admin http://<envoy admin address> to check the filter's configuration and counters",
            )],
            None,
        ),
    };
    let region = args.region.clone().or(signing);
    let mut findings = sidecar_findings(&f, &args, region.as_deref()).await;
    findings.extend(envoy);
    let aws_region = region
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".to_owned());
    findings.extend(aws_findings(&f, &aws_region).await);
    for x in &findings {
        println!("{}  {:<38} {}", x.level, x.check, x.detail);
        if let (Some(fix), true) = (&x.fix, x.level != Level::Ok) {
            println!("      → {fix}");
        }
    }
    let failed = findings.iter().filter(|x| x.level == Level::Fail).count();
    let warned = findings.iter().filter(|x| x.level == Level::Warn).count();
    println!(
        "\n{} check(s): {failed} failed, {warned} warning(s)",
        findings.len()
    );
    if failed > 0 {
        return Err(Error::invalid(format!("doctor: {failed} check(s) failed")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn filter(name: &str, typed: Value) -> Value {
        json!({"name": name, "typed_config": typed})
    }

    fn tollgate(allow: bool) -> Value {
        filter(
            "tollgate",
            json!({"@type": WASM_TYPE, "config": {"name": "tollgate", "root_id": "tollgate",
                   "allow_on_headers_stop_iteration": allow, "failure_policy": "FAIL_CLOSED"}}),
        )
    }

    fn dump(http_filters: Vec<Value>) -> Value {
        json!({"configs": [{
            "@type": "type.googleapis.com/envoy.admin.v3.ListenersConfigDump",
            "static_listeners": [{"listener": {"filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {"http_filters": http_filters}
            }]}]}}]
        }]})
    }

    fn levels(f: &[Finding], check: &str) -> Vec<Level> {
        f.iter()
            .filter(|x| x.check == check)
            .map(|x| x.level)
            .collect()
    }

    #[test]
    fn a_correct_gateway_passes() {
        let d = dump(vec![
            tollgate(true),
            filter(SIGNING, json!({"region": "eu-west-1"})),
            filter(ROUTER, json!({})),
        ]);
        let f = check_envoy_config(&d);
        assert!(f.iter().all(|x| x.level == Level::Ok), "{f:#?}");
        assert_eq!(signing_region(&d).as_deref(), Some("eu-west-1"));
    }

    #[test]
    fn catches_each_broken_envoy_setup() {
        let f = check_envoy_config(&dump(vec![filter(ROUTER, json!({}))]));
        assert_eq!(levels(&f, "envoy.filter_loaded"), [Level::Fail]);

        let f = check_envoy_config(&dump(vec![
            tollgate(false),
            filter(SIGNING, json!({})),
            filter(ROUTER, json!({})),
        ]));
        assert_eq!(
            levels(&f, "envoy.allow_on_headers_stop_iteration"),
            [Level::Fail]
        );

        let f = check_envoy_config(&dump(vec![
            filter(SIGNING, json!({})),
            tollgate(true),
            filter(ROUTER, json!({})),
        ]));
        assert_eq!(levels(&f, "envoy.filter_order"), [Level::Fail]);

        let f = check_envoy_config(&dump(vec![tollgate(true), filter(ROUTER, json!({}))]));
        assert_eq!(levels(&f, "envoy.filter_order"), [Level::Warn]);

        let f = check_envoy_config(&dump(vec![
            tollgate(true),
            filter(JWT, json!({})),
            filter(SIGNING, json!({})),
            filter(ROUTER, json!({})),
        ]));
        assert_eq!(levels(&f, "envoy.jwt_order"), [Level::Fail]);
    }

    #[test]
    fn an_ecds_filter_is_found_in_the_ecds_section() {
        let mut d = dump(vec![
            json!({"name": "tollgate-ecds", "config_discovery": {}}),
            filter(SIGNING, json!({})),
            filter(ROUTER, json!({})),
        ]);
        d["configs"].as_array_mut().unwrap().push(json!({
            "ecds_filters": [{"ecds_filter": {"name": "tollgate-ecds", "typed_config": tollgate(false)["typed_config"]}}]
        }));
        let f = check_envoy_config(&d);
        assert_eq!(levels(&f, "envoy.filter_loaded"), [Level::Ok]);
        assert_eq!(
            levels(&f, "envoy.allow_on_headers_stop_iteration"),
            [Level::Fail]
        );
    }

    #[test]
    fn filter_counters() {
        let healthy = "wasmcustom.tollgate.settlements.pending: 3\n\
                       wasmcustom.tollgate.settlements.dropped: 0\n\
                       wasmcustom.tollgate.requests.sidecar_error: 0\n";
        assert!(check_filter_stats(healthy)
            .iter()
            .all(|x| x.level == Level::Ok));
        let bad = "wasmcustom.tollgate.settlements.pending: 5000\n\
                   wasmcustom.tollgate.settlements.dropped: 7\n\
                   wasmcustom.tollgate.requests.sidecar_error: 2\n";
        let f = check_filter_stats(bad);
        assert_eq!(levels(&f, "filter.settlements_dropped"), [Level::Fail]);
        assert_eq!(levels(&f, "filter.settlement_backlog"), [Level::Warn]);
        assert_eq!(levels(&f, "filter.sidecar_errors"), [Level::Warn]);
        assert_eq!(
            levels(&check_filter_stats(""), "filter.stats"),
            [Level::Warn]
        );
    }

    #[test]
    fn catalog_problems() {
        let priced = vec!["m1".to_owned()];
        let good = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc";
        let ok = check_catalog(
            Some("us-east-1"),
            &priced,
            &[("fast".into(), "m1".into())],
            &[("t".into(), "m1".into(), good.into())],
        );
        assert!(ok.iter().all(|x| x.level == Level::Ok), "{ok:#?}");
        let f = check_catalog(
            Some("us-east-1"),
            &priced,
            &[("cheap".into(), "m2".into())],
            &[
                ("t".into(), "m2".into(), good.into()),
                (
                    "t".into(),
                    "m1".into(),
                    "arn:aws:bedrock:eu-west-1:123456789012:application-inference-profile/x".into(),
                ),
                (
                    "t".into(),
                    "m1".into(),
                    "arn:aws:bedrock:us-east-1:1234:application-inference-profile/x".into(),
                ),
                (
                    "t".into(),
                    "m1".into(),
                    "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.x".into(),
                ),
            ],
        );
        assert_eq!(levels(&f, "catalog.alias_priced"), [Level::Fail]);
        let unknown = check_catalog(
            None,
            &priced,
            &[],
            &[("t".into(), "m1".into(), good.into())],
        );
        assert_eq!(levels(&unknown, "catalog.profile_region"), [Level::Warn]);
        assert_eq!(levels(&f, "catalog.profile_priced"), [Level::Fail]);
        assert_eq!(levels(&f, "catalog.profile_region"), [Level::Fail]);
        assert_eq!(
            levels(&f, "catalog.profile_arn"),
            [Level::Fail, Level::Fail]
        );
    }

    #[test]
    fn clock_skew() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_780_000_000);
        let at = |secs: i64| {
            (time::OffsetDateTime::from(now) + time::Duration::seconds(secs))
                .format(&time::format_description::well_known::Rfc2822)
                .unwrap()
                .replace("+0000", "GMT")
        };
        assert_eq!(check_clock(Some(&at(1)), now).level, Level::Ok);
        assert_eq!(check_clock(Some(&at(-60)), now).level, Level::Warn);
        assert_eq!(check_clock(Some(&at(900)), now).level, Level::Fail);
        assert_eq!(check_clock(None, now).level, Level::Warn);
        // The form servers send (IMF-fixdate).
        assert_eq!(
            check_clock(Some("Sun, 29 Nov 2026 13:00:00 GMT"), now).level,
            Level::Fail
        );
    }
}
