//! The dashboard's page bodies, from numbers gathered in `data`. Cells that
//! tests and scripts read carry `data-field` (and money `data-usd`).

use super::charts;
use super::data::TenantSummary;
use super::html::{esc, opt, percent, url_part, usd};
use crate::api::{BalanceView, ScopeView, UsageTotals};
use crate::clock::rfc3339;
use crate::store::{AlertRecord, ApiKeyRecord, Profile, SigV4CredentialRecord, TenantConfig};
use rust_decimal::Decimal;
use std::fmt::Write as _;

fn inactive_badge(cfg: &TenantConfig) -> &'static str {
    if cfg.active {
        ""
    } else {
        r#" <span class="badge off">inactive</span>"#
    }
}

/// `/ui`: every tenant's budget bar, then the fleet's month.
pub struct Overview<'a> {
    pub tenants: &'a [TenantSummary],
    pub month: &'a str,
    pub trend: &'a [(String, Decimal)],
    pub by_model: &'a [(String, Decimal)],
    pub by_application: &'a [(String, Decimal)],
    pub alerts: &'a [AlertRecord],
}

pub fn overview(o: &Overview<'_>) -> String {
    let mut out = String::from(
        r#"<h1>Tenants</h1>
<p class="legend"><span class="key spent"></span>spent <span class="key reserved"></span>reserved <span class="key avail"></span>available <span class="key threshold"></span>alert threshold</p>
"#,
    );
    if o.tenants.is_empty() {
        out.push_str(r#"<p class="empty">No tenants yet: create one with <code>PUT /v1/tenants/{tenant}</code> or <code>tollgate-sidecar tenants set</code>.</p>"#);
    } else {
        out.push_str(
            r#"<table class="tenants"><thead><tr><th>Tenant</th><th>Period</th><th class="bar-col">Budget use</th><th class="num">Spent</th><th class="num">Reserved</th><th class="num">Available</th><th class="num">Budget</th><th class="num">Alert at</th><th class="num">Requests</th></tr></thead><tbody>"#,
        );
        for t in o.tenants {
            let b = &t.balance;
            let id = &t.config.tenant_id;
            let _ = write!(
                out,
                r#"<tr data-tenant="{ide}"><td><a href="/ui/tenants/{idu}">{ide}</a>{badge}</td><td data-field="period">{period}</td><td class="bar-col">{bar}</td><td class="num" data-field="spent_usd">{spent}</td><td class="num" data-field="reserved_usd">{reserved}</td><td class="num" data-field="available_usd">{available}</td><td class="num" data-field="budget_usd">{budget}</td><td class="num" data-field="alert_threshold">{threshold}</td><td class="num" data-field="requests">{requests}</td></tr>"#,
                ide = esc(id),
                idu = url_part(id),
                badge = inactive_badge(&t.config),
                period = esc(&b.period),
                bar = charts::budget_bar(
                    b.budget_usd,
                    b.spent_usd,
                    b.reserved_usd,
                    t.config.alert_threshold
                ),
                spent = usd(b.spent_usd),
                reserved = usd(b.reserved_usd),
                available = usd(b.available_usd),
                budget = usd(b.budget_usd),
                threshold = percent(t.config.alert_threshold),
                requests = b.requests,
            );
        }
        out.push_str("</tbody></table>\n");
    }
    let _ = write!(
        out,
        r#"<section class="grid">
<div class="card" id="trend"><h2>Spend per day, {month} (all tenants, UTC)</h2>{trend}</div>
<div class="card" id="by-model"><h2>By model, {month}</h2>{models}</div>
<div class="card" id="by-application"><h2>By application, {month}</h2>{apps}</div>
</section>
<section class="card" id="alerts"><h2>Recent alerts</h2>{alerts}</section>
"#,
        month = esc(o.month),
        trend = charts::day_bars(o.trend),
        models = charts::split("model", o.by_model),
        apps = charts::split("application", o.by_application),
        alerts = alerts_table(o.alerts, true),
    );
    out
}

/// `/ui/tenants/{tenant}`.
pub struct TenantPage<'a> {
    pub config: &'a TenantConfig,
    pub balance: &'a BalanceView,
    pub trend: &'a [(String, Decimal)],
    pub by_application: &'a [(String, Decimal)],
    pub alerts: &'a [AlertRecord],
    pub profiles: &'a [Profile],
    pub keys: &'a [ApiKeyRecord],
    pub sigv4: &'a [SigV4CredentialRecord],
}

pub fn tenant(p: &TenantPage<'_>) -> String {
    let cfg = p.config;
    let b = p.balance;
    let id = esc(&cfg.tenant_id);
    let threshold_usd = (cfg.alert_threshold * b.budget_usd).normalize();
    let by_model: Vec<(String, Decimal)> = b
        .by_model
        .iter()
        .map(|(m, v)| (m.clone(), v.counters.spent_usd))
        .collect();
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<p class="crumbs"><a href="/ui">Tenants</a> › {id}</p>
<h1 data-tenant="{id}">{id}{badge}</h1>
<section class="card" id="budget">
<h2>Budget, period <span data-field="period">{period}</span> ({cycle})</h2>
{bar}
<p class="legend"><span class="key spent"></span>spent <span class="key reserved"></span>reserved <span class="key avail"></span>available <span class="key threshold"></span>alert threshold</p>
<dl class="figures">
<div><dt>Spent</dt><dd data-field="spent_usd">{spent}</dd></div>
<div><dt>Reserved</dt><dd data-field="reserved_usd">{reserved}</dd></div>
<div><dt>Available</dt><dd data-field="available_usd">{available}</dd></div>
<div><dt>Budget</dt><dd data-field="budget_usd">{budget}</dd></div>
<div><dt>Alert at</dt><dd data-field="alert_threshold">{threshold} ({threshold_usd})</dd></div>
<div><dt>Requests</dt><dd data-field="requests">{requests}</dd></div>
<div><dt>Input tokens</dt><dd data-field="input_tokens">{input}</dd></div>
<div><dt>Output tokens</dt><dd data-field="output_tokens">{output}</dd></div>
</dl>
</section>
<section class="grid">
<div class="card" id="trend"><h2>Spend per day (UTC)</h2>{trend}</div>
<div class="card" id="by-model"><h2>By model</h2>{models}</div>
<div class="card" id="by-application"><h2>By application</h2>{apps}</div>
</section>
"#,
        badge = inactive_badge(cfg),
        period = esc(&b.period),
        cycle = cfg.reset_cycle.as_str(),
        bar = charts::budget_bar(
            b.budget_usd,
            b.spent_usd,
            b.reserved_usd,
            cfg.alert_threshold
        ),
        spent = usd(b.spent_usd),
        reserved = usd(b.reserved_usd),
        available = usd(b.available_usd),
        budget = usd(b.budget_usd),
        threshold = percent(cfg.alert_threshold),
        threshold_usd = usd(threshold_usd),
        requests = b.requests,
        input = b.input_tokens,
        output = b.output_tokens,
        trend = charts::day_bars(p.trend),
        models = charts::split("model", &by_model),
        apps = charts::split("application", p.by_application),
    );
    out.push_str(&limits(cfg));
    out.push_str(&model_budgets(b));
    out.push_str(&nested_budgets(b));
    let _ = writeln!(
        out,
        r#"<section class="card" id="alerts"><h2>Recent alerts</h2>{}</section>"#,
        alerts_table(p.alerts, false)
    );
    out.push_str(&profiles(p.profiles));
    out.push_str(&credentials(p.keys, p.sigv4));
    out
}

fn limits(cfg: &TenantConfig) -> String {
    let allowed = if cfg.allowed_models.is_empty() {
        "any priced model".to_string()
    } else {
        cfg.allowed_models
            .iter()
            .map(|m| format!("<code>{}</code>", esc(m)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        r#"<section class="card" id="limits"><h2>Limits</h2><dl class="figures">
<div><dt>Reset cycle</dt><dd data-field="reset_cycle">{cycle}</dd></div>
<div><dt>Rate limit (requests/min)</dt><dd data-field="rate_limit_rpm">{rpm}</dd></div>
<div><dt>Rate limit (tokens/min)</dt><dd data-field="rate_limit_tpm">{tpm}</dd></div>
<div><dt>Per-model tokens/min</dt><dd data-field="model_rate_limit_tpm">{model_tpm}</dd></div>
<div><dt>Max tokens cap</dt><dd data-field="max_tokens_cap">{cap}</dd></div>
<div><dt>Default model</dt><dd data-field="default_model">{default}</dd></div>
<div class="wide"><dt>Allowed models</dt><dd data-field="allowed_models">{allowed}</dd></div>
</dl></section>
"#,
        cycle = cfg.reset_cycle.as_str(),
        rpm = opt(cfg.rate_limit_rpm),
        tpm = opt(cfg.rate_limit_tpm),
        model_tpm = if cfg.model_rate_limit_tpm.is_empty() {
            "—".to_string()
        } else {
            cfg.model_rate_limit_tpm
                .iter()
                .map(|(m, n)| format!("<code>{}</code> {n}", esc(m)))
                .collect::<Vec<_>>()
                .join(", ")
        },
        cap = opt(cfg.max_tokens_cap),
        default = opt(cfg.default_model.as_deref()),
    )
}

fn model_budgets(b: &BalanceView) -> String {
    let rows = scope_rows(
        "model",
        b.by_model.iter().filter(|(_, v)| v.budget_usd.is_some()),
    );
    let body = if rows.is_empty() {
        r#"<p class="empty">No model budgets: every model draws on the tenant budget.</p>"#
            .to_string()
    } else {
        scope_table("Model", &rows)
    };
    format!(
        r#"<section class="card" id="model-budgets"><h2>Model budgets</h2>{body}</section>
"#
    )
}

/// The application and user budgets inside the tenant's (shown when set).
fn nested_budgets(b: &BalanceView) -> String {
    let mut out = String::new();
    for (id, title, column, attr, rows) in [
        (
            "application-budgets",
            "Application budgets",
            "Application",
            "application",
            &b.by_application,
        ),
        ("user-budgets", "User budgets", "User", "user", &b.by_user),
    ] {
        let rows = scope_rows(attr, rows.iter());
        if !rows.is_empty() {
            let table = scope_table(column, &rows);
            out.push_str(&format!(
                r#"<section class="card" id="{id}"><h2>{title}</h2>{table}</section>
"#
            ));
        }
    }
    out
}

/// One table row per budgeted model, application or user.
fn scope_rows<'a>(attr: &str, rows: impl Iterator<Item = (&'a String, &'a ScopeView)>) -> String {
    rows.map(|(id, v)| {
        format!(
            r#"<tr data-{attr}="{me}"><td><code>{me}</code></td><td class="num" data-field="budget_usd">{}</td><td class="num" data-field="spent_usd">{}</td><td class="num" data-field="reserved_usd">{}</td><td class="num" data-field="available_usd">{}</td></tr>"#,
            usd(v.budget_usd.unwrap_or_default()),
            usd(v.counters.spent_usd),
            usd(v.reserved_usd.unwrap_or_default()),
            usd(v.available_usd.unwrap_or_default()),
            me = esc(id),
        )
    })
    .collect()
}

fn scope_table(column: &str, rows: &str) -> String {
    format!(
        r#"<table><thead><tr><th>{column}</th><th class="num">Budget</th><th class="num">Spent</th><th class="num">Reserved</th><th class="num">Available</th></tr></thead><tbody>{rows}</tbody></table>"#
    )
}

fn profiles(profiles: &[Profile]) -> String {
    let body = if profiles.is_empty() {
        r#"<p class="empty">No application inference profiles mapped.</p>"#.to_string()
    } else {
        let rows: String = profiles
            .iter()
            .map(|p| {
                format!(
                    r#"<tr><td>{}</td><td><code>{}</code></td><td><code>{}</code></td></tr>"#,
                    opt(p.application_id.as_deref()),
                    esc(&p.model_id),
                    esc(&p.arn)
                )
            })
            .collect();
        format!(
            r#"<table><thead><tr><th>Application</th><th>Model</th><th>Profile ARN</th></tr></thead><tbody>{rows}</tbody></table>"#
        )
    };
    format!(
        r#"<section class="card" id="profiles"><h2>Profiles</h2>{body}</section>
"#
    )
}

/// Key ids and access key ids with their dates: never a key, hash or secret
/// (the records' hash and sealed secret are not read here).
fn credentials(keys: &[ApiKeyRecord], sigv4: &[SigV4CredentialRecord]) -> String {
    fn status(revoked: bool) -> &'static str {
        if revoked {
            r#"<span class="badge off">revoked</span>"#
        } else {
            r#"<span class="badge on">active</span>"#
        }
    }
    let key_rows: String = keys
        .iter()
        .map(|k| {
            let expires = k
                .expires_at_ms
                .map(|e| {
                    format!(
                        r#" <small data-field="expires_at">expires {}</small>"#,
                        esc(&rfc3339(e))
                    )
                })
                .unwrap_or_default();
            let used = k
                .last_used_at_ms
                .map(|u| {
                    format!(
                        r#" <small data-field="last_used_at">last used {}</small>"#,
                        esc(&rfc3339(u))
                    )
                })
                .unwrap_or_default();
            format!(
                r#"<tr data-key-id="{id}"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}{expires}{used}</td></tr>"#,
                opt(k.application_id.as_deref()),
                esc(&rfc3339(k.created_at_ms)),
                status(k.revoked),
                id = esc(&k.key_id),
            )
        })
        .collect();
    let sig_rows: String = sigv4
        .iter()
        .map(|c| {
            format!(
                r#"<tr data-access-key-id="{id}"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td></tr>"#,
                opt(c.application_id.as_deref()),
                esc(&rfc3339(c.created_at_ms)),
                status(c.revoked),
                id = esc(&c.access_key_id),
            )
        })
        .collect();
    let table = |head: &str, rows: String, none: &str| {
        if rows.is_empty() {
            format!(r#"<p class="empty">{none}</p>"#)
        } else {
            format!(
                r#"<table><thead><tr><th>{head}</th><th>Application</th><th>Created</th><th>Status</th></tr></thead><tbody>{rows}</tbody></table>"#
            )
        }
    };
    format!(
        r#"<section class="card" id="keys"><h2>Bearer keys</h2>{}</section>
<section class="card" id="sigv4"><h2>SigV4 credentials</h2>{}</section>
"#,
        table("Key id", key_rows, "No bearer keys."),
        table("Access key id", sig_rows, "No SigV4 credentials."),
    )
}

fn alerts_table(alerts: &[AlertRecord], with_tenant: bool) -> String {
    if alerts.is_empty() {
        return r#"<p class="empty">No alerts.</p>"#.to_string();
    }
    let mut out = String::from("<table><thead><tr>");
    if with_tenant {
        out.push_str("<th>Tenant</th>");
    }
    out.push_str(r#"<th>Alert</th><th>Period</th><th>Fired at</th><th class="num">Spent</th><th class="num">Budget</th><th>Request</th><th class="num">Cost</th></tr></thead><tbody>"#);
    for a in alerts {
        out.push_str(r#"<tr class="alert">"#);
        if with_tenant {
            let _ = write!(
                out,
                r#"<td><a href="/ui/tenants/{}">{}</a></td>"#,
                url_part(&a.tenant_id),
                esc(&a.tenant_id)
            );
        }
        let _ = write!(
            out,
            r#"<td><span class="badge {kind}">{kind}</span></td><td>{}</td><td>{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td><td class="num">{}</td></tr>"#,
            esc(&a.period),
            esc(&rfc3339(a.fired_at_ms)),
            usd(a.spent_usd.normalize()),
            usd(a.budget_usd),
            opt(a.request_id.as_deref()),
            a.cost_usd.map(usd).unwrap_or_else(|| "—".into()),
            kind = a.kind.as_str(),
        );
    }
    out.push_str("</tbody></table>");
    out
}

/// `/ui/usage`: the `GET /v1/usage` report as a table, with its CSV link.
pub struct UsagePage<'a> {
    pub group_by: &'a [String],
    pub from: &'a str,
    pub to: &'a str,
    pub tenant: &'a str,
    pub groups: &'a [(Vec<Option<String>>, UsageTotals)],
    /// The query string of this report (for the CSV link).
    pub query: &'a str,
}

pub fn usage(u: &UsagePage<'_>) -> String {
    let mut out = format!(
        r#"<h1>Usage</h1>
<form method="get" action="/ui/usage" class="filters">
<label>Group by <input name="group_by" value="{g}" size="32" title="comma-separated: {keys}"></label>
<label>Tenant <input name="tenant" value="{t}" size="16"></label>
<label>From <input name="from" value="{f}" size="22" placeholder="2026-11-01T00:00:00Z"></label>
<label>To <input name="to" value="{to}" size="22" placeholder="(now)"></label>
<button type="submit">Show</button>
<a class="button" id="csv" href="/ui/usage.csv?{q}" download>Download CSV</a>
</form>
"#,
        g = esc(&u.group_by.join(",")),
        keys = crate::api::GROUP_KEYS.join(","),
        t = esc(u.tenant),
        f = esc(u.from),
        to = esc(u.to),
        q = esc(u.query),
    );
    if u.groups.is_empty() {
        out.push_str(r#"<p class="empty">No usage in this range.</p>"#);
        return out;
    }
    out.push_str(r#"<table class="usage"><thead><tr>"#);
    for g in u.group_by {
        let _ = write!(out, "<th>{}</th>", esc(g));
    }
    out.push_str(r#"<th class="num">Requests</th><th class="num">Estimated</th><th class="num">Input tokens</th><th class="num">Output tokens</th><th class="num">Cache read</th><th class="num">Cache write</th><th class="num">Cost</th></tr></thead><tbody>"#);
    let mut total = UsageTotals::default();
    for (k, t) in u.groups {
        out.push_str(r#"<tr class="row">"#);
        for (name, v) in u.group_by.iter().zip(k) {
            let _ = write!(
                out,
                r#"<td data-field="{}">{}</td>"#,
                esc(name),
                opt(v.as_deref())
            );
        }
        let _ = write!(
            out,
            r#"<td class="num" data-field="requests">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num" data-field="cost_usd">{}</td></tr>"#,
            t.requests,
            t.estimated_requests,
            t.input_tokens,
            t.output_tokens,
            t.cache_read_input_tokens,
            t.cache_write_input_tokens,
            usd(t.cost_usd),
        );
        total.requests += t.requests;
        total.estimated_requests += t.estimated_requests;
        total.input_tokens += t.input_tokens;
        total.output_tokens += t.output_tokens;
        total.cache_read_input_tokens += t.cache_read_input_tokens;
        total.cache_write_input_tokens += t.cache_write_input_tokens;
        total.cost_usd += t.cost_usd;
    }
    let _ = write!(
        out,
        r#"</tbody><tfoot><tr class="total"><th colspan="{}">Total</th><td class="num" data-field="requests">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num" data-field="cost_usd">{}</td></tr></tfoot></table>"#,
        u.group_by.len().max(1),
        total.requests,
        total.estimated_requests,
        total.input_tokens,
        total.output_tokens,
        total.cache_read_input_tokens,
        total.cache_write_input_tokens,
        usd(total.cost_usd.normalize()),
    );
    out
}
