//! Fleet-wide rate limits: requests and tokens per minute, counted in the
//! store, so that every sidecar sharing a ledger enforces one limit.
//!
//! A limit of N per minute admits at most N in each UTC calendar minute,
//! across all sidecars and gateways (one atomic conditional write per request:
//! SQLite's transaction, DynamoDB's conditional `UpdateItem`). A burst that
//! straddles a minute's end can take N on each side of it.
//!
//! Tokens are charged at reserve as `input estimate + max output` (at most the
//! limit), then corrected at commit to the actual tokens, in the minute they
//! were charged; a refused or released request gets its tokens back. The
//! correction needs the charge, which this sidecar remembers: a commit that
//! reaches another sidecar, or comes after a restart, leaves the estimate
//! counted (never less than what was used, as the estimate holds the maximum).

use crate::error::Result;
use crate::store::{RateOutcome, RateTake, Store, TenantConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::OffsetDateTime;
use tollgate_wire::api::RateLimitStatus;

/// Which limit refused a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exceeded {
    Requests {
        rpm: u32,
    },
    Tokens {
        tpm: u64,
        tokens: u64,
    },
    ModelTokens {
        model_id: String,
        tpm: u64,
        tokens: u64,
    },
}

impl Exceeded {
    /// The refusal's message, as Bedrock words a throttle.
    pub fn message(&self, tenant_id: &str) -> String {
        match self {
            Self::Requests { rpm } => {
                format!("Rate limit exceeded for tenant {tenant_id}: {rpm} requests per minute.")
            }
            Self::Tokens { tpm, tokens } => format!(
                "Rate limit exceeded for tenant {tenant_id}: {tpm} tokens per minute (this request may use up to {tokens})."
            ),
            Self::ModelTokens {
                model_id,
                tpm,
                tokens,
            } => format!(
                "Rate limit exceeded for tenant {tenant_id} on model {model_id}: {tpm} tokens per minute (this request may use up to {tokens})."
            ),
        }
    }
}

/// A refusal and when the next minute starts (`Retry-After`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Throttled {
    pub exceeded: Exceeded,
    pub retry_after_secs: u64,
    /// Every limit's state, for the `RateLimit` headers.
    pub limits: Vec<RateLimitStatus>,
}

/// The limits' states from the counters, in the order of the takes.
fn statuses(takes: &[RateTake], used: &[u64], reset_secs: u64) -> Vec<RateLimitStatus> {
    takes
        .iter()
        .zip(used)
        .map(|(t, n)| RateLimitStatus {
            policy: t.counter.clone(),
            quota: t.limit,
            remaining: t.limit.saturating_sub(*n),
            reset_secs,
        })
        .collect()
}

/// The tokens a request was charged, to correct at commit.
#[derive(Debug, Clone)]
struct Charge {
    tenant_id: String,
    window: i64,
    /// (counter, tokens charged).
    tokens: Vec<(String, u64)>,
    at_ms: i64,
}

/// The minute a time falls in, and the seconds until the next one starts.
pub fn window_of(now: OffsetDateTime) -> (i64, u64) {
    let secs = now.unix_timestamp();
    let window = secs.div_euclid(60);
    let left = 60 - u64::try_from(secs.rem_euclid(60)).unwrap_or(0);
    (window, left.max(1))
}

/// Whether a tenant has any rate limit for this model.
pub fn limited(tenant: &TenantConfig, model_id: &str) -> bool {
    tenant.rate_limit_rpm.is_some()
        || tenant.rate_limit_tpm.is_some()
        || tenant.model_rate_limit_tpm.contains_key(model_id)
}

/// The store-backed limiter, with this sidecar's memory of token charges.
pub struct RateLimits {
    store: Arc<dyn Store>,
    charges: Mutex<HashMap<String, Charge>>,
}

impl RateLimits {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self {
            store,
            charges: Mutex::default(),
        }
    }

    /// Counts one request of `tokens` (estimate + max output) against the
    /// tenant's limits for `model_id`: the limits' states after it, or
    /// `Ok(Err(_))` when a limit is reached.
    pub async fn admit(
        &self,
        tenant: &TenantConfig,
        model_id: &str,
        request_id: &str,
        tokens: u64,
        now: OffsetDateTime,
    ) -> Result<std::result::Result<Vec<RateLimitStatus>, Throttled>> {
        let mut takes = Vec::new();
        if let Some(rpm) = tenant.rate_limit_rpm {
            takes.push(RateTake {
                counter: "rpm".into(),
                amount: 1,
                limit: u64::from(rpm),
            });
        }
        // A request larger than a whole minute's tokens is charged the minute:
        // it passes when the minute is unused, rather than never.
        if let Some(tpm) = tenant.rate_limit_tpm {
            takes.push(RateTake {
                counter: "tpm".into(),
                amount: tokens.min(tpm),
                limit: tpm,
            });
        }
        if let Some(&tpm) = tenant.model_rate_limit_tpm.get(model_id) {
            takes.push(RateTake {
                counter: format!("tpm:{model_id}"),
                amount: tokens.min(tpm),
                limit: tpm,
            });
        }
        if takes.is_empty() {
            return Ok(Ok(Vec::new()));
        }
        let (window, retry_after_secs) = window_of(now);
        match self
            .store
            .take_rate(&tenant.tenant_id, window, &takes)
            .await?
        {
            RateOutcome::Taken { used } => {
                let limits = statuses(&takes, &used, retry_after_secs);
                let tokens: Vec<(String, u64)> = takes
                    .into_iter()
                    .filter(|t| t.counter != "rpm")
                    .map(|t| (t.counter, t.amount))
                    .collect();
                if !tokens.is_empty() {
                    self.lock().insert(
                        request_id.to_string(),
                        Charge {
                            tenant_id: tenant.tenant_id.clone(),
                            window,
                            tokens,
                            at_ms: crate::clock::to_millis(now),
                        },
                    );
                }
                Ok(Ok(limits))
            }
            RateOutcome::Refused { counter, used } => {
                let limits = statuses(&takes, &used, retry_after_secs);
                let exceeded = match counter.strip_prefix("tpm:") {
                    Some(m) => Exceeded::ModelTokens {
                        model_id: m.to_string(),
                        tpm: tenant
                            .model_rate_limit_tpm
                            .get(m)
                            .copied()
                            .unwrap_or_default(),
                        tokens,
                    },
                    None if counter == "tpm" => Exceeded::Tokens {
                        tpm: tenant.rate_limit_tpm.unwrap_or_default(),
                        tokens,
                    },
                    None => Exceeded::Requests {
                        rpm: tenant.rate_limit_rpm.unwrap_or_default(),
                    },
                };
                Ok(Err(Throttled {
                    exceeded,
                    retry_after_secs,
                    limits,
                }))
            }
        }
    }

    /// Corrects a request's token charge to the `actual` tokens it used.
    pub async fn settle(&self, request_id: &str, actual: u64) {
        let Some(c) = self.lock().remove(request_id) else {
            return;
        };
        for (counter, charged) in &c.tokens {
            let delta = i64::try_from(actual)
                .unwrap_or(i64::MAX)
                .saturating_sub(i64::try_from(*charged).unwrap_or(i64::MAX));
            if delta == 0 {
                continue;
            }
            if let Err(e) = self
                .store
                .adjust_rate(&c.tenant_id, c.window, counter, delta)
                .await
            {
                // The estimate stays counted: the limit errs on the strict side.
                tracing::warn!(request_id, tenant = %c.tenant_id, %counter, error = %e,
                    "could not correct the token count");
            }
        }
    }

    /// Gives a refused or released request's tokens back.
    pub async fn refund(&self, request_id: &str) {
        self.settle(request_id, 0).await;
    }

    /// Forgets charges older than `max_age_ms` (their commit is not coming)
    /// and the store's windows older than an hour.
    pub async fn prune(&self, now: OffsetDateTime, max_age_ms: i64) -> Result<()> {
        let cutoff = crate::clock::to_millis(now).saturating_sub(max_age_ms);
        self.lock().retain(|_, c| c.at_ms >= cutoff);
        let (window, _) = window_of(now);
        self.store.prune_rate_windows(window - 60).await
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Charge>> {
        self.charges.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn windows_are_utc_minutes() {
        assert_eq!(window_of(datetime!(2026-11-23 12:00:00 UTC)).1, 60);
        assert_eq!(window_of(datetime!(2026-11-23 12:00:59.5 UTC)).1, 1);
        let (a, left) = window_of(datetime!(2026-11-23 12:00:40 UTC));
        assert_eq!(left, 20);
        assert_eq!(window_of(datetime!(2026-11-23 12:01:00 UTC)).0, a + 1);
    }
}
