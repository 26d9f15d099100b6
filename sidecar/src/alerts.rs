//! Alert delivery: one JSON line on stderr (the log) and a POST of the same JSON to
//! every configured webhook, from a detached task (3 retries with backoff), so a
//! slow webhook never delays a request.

use crate::clock::rfc3339;
use crate::store::AlertRecord;
use rust_decimal::Decimal;
use serde::Serialize;
use std::io::Write;
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

#[derive(Debug, Clone, Default)]
pub struct Alerter {
    webhooks: Vec<String>,
    client: reqwest::Client,
}

/// Attempts per webhook: the first try plus 3 retries.
const ATTEMPTS: u32 = 4;

impl Alerter {
    pub fn new(webhooks: Vec<String>) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self { webhooks, client }
    }

    /// Logs the alert and hands it to the webhooks in the background.
    pub fn deliver(&self, alert: &AlertRecord) {
        let event = AlertEvent::from(alert);
        let Ok(line) = serde_json::to_string(&event) else {
            return;
        };
        {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
        for url in &self.webhooks {
            let client = self.client.clone();
            let url = url.clone();
            let body = line.clone();
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
