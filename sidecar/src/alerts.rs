//! Alert delivery: a `tracing` event (target `tollgate::alert`, so the log's
//! format, level filter and destination apply to it) and a POST of the alert JSON
//! to every configured webhook, from a detached task (3 retries with backoff), so
//! a slow webhook never delays a request.

use crate::clock::rfc3339;
use crate::store::AlertRecord;
use rust_decimal::Decimal;
use serde::Serialize;
use std::time::Duration;

/// The alert as logged and POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertEvent {
    pub level: &'static str,
    pub kind: &'static str,
    pub tenant_id: String,
    pub period: String,
    pub spent_usd: Decimal,
    pub budget_usd: Decimal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<Decimal>,
    pub fired_at: String,
}

impl From<&AlertRecord> for AlertEvent {
    fn from(a: &AlertRecord) -> Self {
        Self {
            level: "ALERT",
            kind: a.kind.as_str(),
            tenant_id: a.tenant_id.clone(),
            period: a.period.clone(),
            spent_usd: a.spent_usd,
            budget_usd: a.budget_usd,
            request_id: a.request_id.clone(),
            cost_usd: a.cost_usd,
            fired_at: rfc3339(a.fired_at_ms),
        }
    }
}

/// Body of webhook POSTs: the alert JSON itself, or a Slack-compatible
/// `{"text": "…"}` message (Slack, Mattermost, Teams' Slack-compatible hooks…).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    #[default]
    Json,
    Slack,
}

impl WebhookFormat {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "json" => Some(Self::Json),
            "slack" => Some(Self::Slack),
            _ => None,
        }
    }
}

/// A readable one-sentence description of an alert (the Slack message text).
pub fn sentence(e: &AlertEvent) -> String {
    let spent = e.spent_usd.round_dp(4).normalize();
    let budget = e.budget_usd.round_dp(4).normalize();
    let pct = if e.budget_usd > Decimal::ZERO {
        format!(
            " ({}%)",
            (e.spent_usd * Decimal::ONE_HUNDRED / e.budget_usd)
                .round_dp(1)
                .normalize()
        )
    } else {
        String::new()
    };
    match e.kind {
        "threshold" => format!(
            ":warning: Tollgate: tenant {} has spent ${spent} of its ${budget} budget{pct} for period {}, crossing its alert threshold.",
            e.tenant_id, e.period
        ),
        "exhausted" => format!(
            ":no_entry: Tollgate: tenant {} has exhausted its ${budget} budget for period {} (spent ${spent}); further requests are refused with 402.",
            e.tenant_id, e.period
        ),
        "high_cost" => format!(
            ":moneybag: Tollgate: a single request{} of tenant {} cost ${}, above the high-cost threshold (period {}: ${spent} of ${budget} spent).",
            e.request_id.as_deref().map(|r| format!(" ({r})")).unwrap_or_default(),
            e.tenant_id,
            e.cost_usd.unwrap_or_default().round_dp(4).normalize(),
            e.period
        ),
        other => format!(
            "Tollgate: {other} alert for tenant {} in period {}: ${spent} of ${budget} spent.",
            e.tenant_id, e.period
        ),
    }
}

#[derive(Debug, Clone, Default)]
pub struct Alerter {
    webhooks: Vec<String>,
    client: reqwest::Client,
    format: WebhookFormat,
}

/// Attempts per webhook: the first try plus 3 retries.
const ATTEMPTS: u32 = 4;

impl Alerter {
    pub fn new(webhooks: Vec<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            webhooks,
            client,
            format: WebhookFormat::Json,
        }
    }

    /// Sets the webhook body format.
    pub fn with_format(mut self, format: WebhookFormat) -> Self {
        self.format = format;
        self
    }

    /// Logs the alert and hands it to the webhooks in the background.
    pub fn deliver(&self, alert: &AlertRecord) {
        let event = AlertEvent::from(alert);
        let Ok(line) = serde_json::to_string(&event) else {
            return;
        };
        tracing::warn!(
            target: "tollgate::alert",
            kind = event.kind,
            tenant = %event.tenant_id,
            period = %event.period,
            spent_usd = %event.spent_usd,
            budget_usd = %event.budget_usd,
            request_id = event.request_id.as_deref().unwrap_or_default(),
            cost_usd = %event.cost_usd.map(|c| c.to_string()).unwrap_or_default(),
            "{}",
            sentence(&event)
        );
        let payload = match self.format {
            WebhookFormat::Json => line,
            WebhookFormat::Slack => serde_json::json!({ "text": sentence(&event) }).to_string(),
        };
        for url in &self.webhooks {
            let client = self.client.clone();
            let url = url.clone();
            let body = payload.clone();
            tokio::spawn(async move {
                let mut backoff = Duration::from_millis(250);
                for attempt in 1..=ATTEMPTS {
                    let sent = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status().is_success() => return,
                        Ok(r) => {
                            tracing::warn!(%url, status = %r.status(), attempt, "alert webhook refused")
                        }
                        Err(e) => tracing::warn!(%url, error = %e, attempt, "alert webhook failed"),
                    }
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(backoff).await;
                        backoff *= 2;
                    }
                }
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slack_sentences_read_well() {
        let mut e = AlertEvent {
            level: "ALERT",
            kind: "threshold",
            tenant_id: "acme".into(),
            period: "2026-11".into(),
            spent_usd: "8.00".parse().unwrap(),
            budget_usd: "10".parse().unwrap(),
            request_id: Some("r1".into()),
            cost_usd: Some("0.5".parse().unwrap()),
            fired_at: String::new(),
        };
        assert_eq!(
            sentence(&e),
            ":warning: Tollgate: tenant acme has spent $8 of its $10 budget (80%) for period 2026-11, crossing its alert threshold."
        );
        e.kind = "high_cost";
        e.cost_usd = Some("12.345678".parse().unwrap());
        assert!(
            sentence(&e).contains("(r1) of tenant acme cost $12.3457"),
            "{}",
            sentence(&e)
        );
        assert_eq!(WebhookFormat::parse("slack"), Some(WebhookFormat::Slack));
        assert_eq!(WebhookFormat::parse("xml"), None);
    }
}
