//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Money in metrics: `tollgate_cost_usd_total` is a float counter of USD and
//! `tollgate_budget_remaining_usd` a float gauge. Prometheus samples are float64,
//! so these are approximate views for dashboards; the ledger itself and
//! `GET /v1/usage` are exact decimals.
//!
//! Cardinality guard: every label that carries a caller-influenced value (tenant,
//! model, application, cost_center, environment) keeps at most
//! `max_label_values` distinct values per label name (`--metrics-max-label-values`,
//! default 1000); later new values are reported as `other`, so a flood of
//! made-up ids cannot grow the exposition without bound. An absent attribution is
//! the empty string (which Prometheus treats as an absent label).

use crate::store::ScopedBudget;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicU64;
use std::sync::Mutex;
use tollgate_wire::api::{Attribution, Usage};

/// Default cap on distinct values per label.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 1000;

/// Store operations counted by `tollgate_store_errors_total{op}`.
pub const STORE_OPS: [&str; 4] = ["reserve", "commit", "release", "sweep"];

/// The value reported once a label's cap is reached.
pub const OVERFLOW_LABEL: &str = "other";

/// Remembers which values each label has shown and folds new ones into
/// [`OVERFLOW_LABEL`] past the cap.
#[derive(Debug)]
struct LabelGuard {
    max: usize,
    seen: Mutex<HashMap<&'static str, HashSet<String>>>,
}

impl LabelGuard {
    fn value(&self, label: &'static str, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let set = seen.entry(label).or_default();
        if set.contains(value) {
            return value.to_string();
        }
        if set.len() < self.max {
            set.insert(value.to_string());
            return value.to_string();
        }
        OVERFLOW_LABEL.to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Approved,
    DeniedBudget,
    DeniedRate,
    DeniedAuth,
    DeniedModel,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Approved => "approved",
            Self::DeniedBudget => "denied_budget",
            Self::DeniedRate => "denied_rate",
            Self::DeniedAuth => "denied_auth",
            Self::DeniedModel => "denied_model",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    tenant: String,
    model: String,
    kind: String,
    application: String,
    cost_center: String,
    environment: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    tenant: String,
    model: String,
    application: String,
    cost_center: String,
    environment: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StoreErrorLabels {
    op: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScopeLabels {
    tenant: String,
    /// `model:<id>`, `app:<id>`, `user:<id>`.
    scope: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabels {
    /// `granted`, `renewed`, `closed`.
    event: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    /// `webhook`, `sns`.
    target: String,
    /// `delivered`, `retried`, `failed`.
    result: String,
}

pub struct Metrics {
    registry: Registry,
    deliveries: Family<DeliveryLabels, Counter>,
    outbox_pending: Gauge,
    outbox_failed: Gauge,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    remaining: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    scope_remaining: Family<ScopeLabels, Gauge<f64, AtomicU64>>,
    alerts: Family<AlertLabels, Counter>,
    store_errors: Family<StoreErrorLabels, Counter>,
    capped: Family<TenantLabels, Counter>,
    leases: Family<LeaseLabels, Counter>,
    reserve_seconds: Histogram,
    commit_seconds: Histogram,
    guard: LabelGuard,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Self::with_max_label_values(DEFAULT_MAX_LABEL_VALUES)
    }

    /// Metrics whose tenant/model/attribution labels keep at most `max` distinct
    /// values each (at least 1).
    pub fn with_max_label_values(max: usize) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        let remaining = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        let scope_remaining = Family::<ScopeLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "tollgate_scope_budget_remaining_usd",
            "Available USD of a budget inside a tenant's (model, application, user) after its last commit or refusal (float view)",
            scope_remaining.clone(),
        );
        let alerts = Family::<AlertLabels, Counter>::default();
        let store_errors = Family::<StoreErrorLabels, Counter>::default();
        let capped = Family::<TenantLabels, Counter>::default();
        let leases = Family::<LeaseLabels, Counter>::default();
        registry.register(
            "tollgate_usage_capped",
            "Commits whose reported or estimated usage exceeded what the request could use (output limit, input estimate) and was capped",
            capped.clone(),
        );
        registry.register(
            "tollgate_lease_events",
            "Budget lease grants, renewals and closures",
            leases.clone(),
        );
        let reserve_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "tollgate_requests",
            "Reserve decisions by tenant and outcome",
            requests.clone(),
        );
        registry.register(
            "tollgate_tokens",
            "Committed tokens by tenant, model, kind (input, output, cache_read, cache_write) and attribution",
            tokens.clone(),
        );
        registry.register(
            "tollgate_cost_usd",
            "Committed cost in USD (float view of the exact ledger)",
            cost.clone(),
        );
        registry.register(
            "tollgate_budget_remaining_usd",
            "Available budget in USD after the last reserve/commit/release (float view)",
            remaining.clone(),
        );
        registry.register("tollgate_alerts", "Alerts fired, by kind", alerts.clone());
        let deliveries = Family::<DeliveryLabels, Counter>::default();
        registry.register(
            "tollgate_alert_deliveries",
            "Alert delivery attempts by target type (webhook, sns) and result (delivered, retried, failed)",
            deliveries.clone(),
        );
        let outbox_pending = Gauge::default();
        registry.register(
            "tollgate_alert_outbox_pending",
            "Alert deliveries waiting in the outbox (the whole ledger's, as of this sidecar's last look)",
            outbox_pending.clone(),
        );
        let outbox_failed = Gauge::default();
        registry.register(
            "tollgate_alert_outbox_failed",
            "Alert deliveries that failed every attempt and wait for an operator (alerts outbox retry)",
            outbox_failed.clone(),
        );
        // Present from the start (at 0), so alerting on it needs no absent() dance.
        for op in STORE_OPS {
            let _ = store_errors.get_or_create(&StoreErrorLabels { op: op.to_string() });
        }
        registry.register(
            "tollgate_store_errors",
            "Ledger store failures by operation (reserve, commit, release, sweep)",
            store_errors.clone(),
        );
        registry.register(
            "tollgate_reserve_seconds",
            "Time to answer a reserve",
            reserve_seconds.clone(),
        );
        registry.register(
            "tollgate_commit_seconds",
            "Time to settle a commit batch",
            commit_seconds.clone(),
        );
        Self {
            registry,
            deliveries,
            outbox_pending,
            outbox_failed,
            requests,
            tokens,
            cost,
            remaining,
            scope_remaining,
            alerts,
            store_errors,
            capped,
            leases,
            reserve_seconds,
            commit_seconds,
            guard: LabelGuard {
                max: max.max(1),
                seen: Mutex::new(HashMap::new()),
            },
        }
    }

    pub fn request(&self, tenant: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: self.guard.value("tenant", tenant),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    pub fn committed(
        &self,
        tenant: &str,
        model: &str,
        attribution: &Attribution,
        usage: &Usage,
        cost: Decimal,
    ) {
        let tenant = self.guard.value("tenant", tenant);
        let model = self.guard.value("model", model);
        let attr = |label: &'static str, v: &Option<String>| {
            self.guard.value(label, v.as_deref().unwrap_or_default())
        };
        let application = attr("application", &attribution.application_id);
        let cost_center = attr("cost_center", &attribution.cost_center);
        let environment = attr("environment", &attribution.environment);
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_write_input_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        tenant: tenant.clone(),
                        model: model.clone(),
                        kind: kind.to_string(),
                        application: application.clone(),
                        cost_center: cost_center.clone(),
                        environment: environment.clone(),
                    })
                    .inc_by(n);
            }
        }
        self.cost
            .get_or_create(&CostLabels {
                tenant,
                model,
                application,
                cost_center,
                environment,
            })
            .inc_by(cost.to_f64().unwrap_or(0.0));
    }

    pub fn remaining(&self, tenant: &str, available: Decimal) {
        self.remaining
            .get_or_create(&TenantLabels {
                tenant: self.guard.value("tenant", tenant),
            })
            .set(available.to_f64().unwrap_or(0.0));
    }

    /// A scoped budget's available amount (`scope`: `model:<id>`, `app:<id>`,
    /// `user:<id>`; its values are capped like every label's).
    pub fn scope_remaining(&self, tenant: &str, scope: &ScopedBudget, available: Decimal) {
        self.scope_remaining
            .get_or_create(&ScopeLabels {
                tenant: self.guard.value("tenant", tenant),
                scope: self.guard.value("scope", &scope.scope()),
            })
            .set(available.to_f64().unwrap_or(0.0));
    }

    /// Drops a deleted tenant's budget gauge (its counters stay: they are history).
    pub fn forget_remaining(&self, tenant: &str) {
        self.remaining.remove(&TenantLabels {
            tenant: self.guard.value("tenant", tenant),
        });
    }

    /// A store operation failed.
    pub fn store_error(&self, op: &'static str) {
        self.store_errors
            .get_or_create(&StoreErrorLabels { op: op.to_string() })
            .inc();
    }

    /// A commit's usage was capped.
    pub fn capped(&self, tenant: &str) {
        let tenant = self.guard.value("tenant", tenant);
        self.capped.get_or_create(&TenantLabels { tenant }).inc();
    }

    /// `granted`, `renewed` or `closed`.
    pub fn lease(&self, event: &'static str) {
        self.leases
            .get_or_create(&LeaseLabels {
                event: event.to_string(),
            })
            .inc();
    }

    pub fn alert(&self, kind: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                kind: kind.to_string(),
            })
            .inc();
    }

    /// One delivery attempt of an alert outbox entry.
    pub fn delivery(&self, target: &str, result: &str) {
        self.deliveries
            .get_or_create(&DeliveryLabels {
                target: target.to_string(),
                result: result.to_string(),
            })
            .inc();
    }

    /// The outbox's pending and failed entry counts.
    pub fn outbox(&self, pending: u64, failed: u64) {
        self.outbox_pending
            .set(i64::try_from(pending).unwrap_or(i64::MAX));
        self.outbox_failed
            .set(i64::try_from(failed).unwrap_or(i64::MAX));
    }

    pub fn observe_reserve(&self, secs: f64) {
        self.reserve_seconds.observe(secs);
    }

    pub fn observe_commit(&self, secs: f64) {
        self.commit_seconds.observe(secs);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_capped_per_label() {
        let m = Metrics::with_max_label_values(2);
        for t in ["a", "b", "c", "d", "a"] {
            m.request(t, Outcome::Approved);
        }
        m.remaining("zzz", Decimal::ONE);
        let text = m.encode();
        assert!(
            text.contains(r#"tollgate_requests_total{tenant="a",outcome="approved"} 2"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_requests_total{tenant="b",outcome="approved"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"tollgate_requests_total{tenant="other",outcome="approved"} 2"#),
            "{text}"
        );
        assert!(!text.contains(r#"tenant="c""#), "{text}");
        assert!(
            text.contains(r#"tollgate_budget_remaining_usd{tenant="other"} 1"#),
            "{text}"
        );
        // Other labels have their own budget of values.
        let attr = Attribution {
            application_id: Some("app1".into()),
            ..Default::default()
        };
        let usage = Usage {
            input_tokens: 5,
            ..Default::default()
        };
        for model in ["m1", "m2", "m3"] {
            m.committed("a", model, &attr, &usage, Decimal::ONE);
        }
        let text = m.encode();
        assert!(text.contains(r#"tollgate_tokens_total{tenant="a",model="m2",kind="input",application="app1",cost_center="",environment=""} 5"#), "{text}");
        assert!(text.contains(r#"tollgate_cost_usd_total{tenant="a",model="other",application="app1",cost_center="",environment=""} 1"#), "{text}");
    }
}
