//! Prometheus metrics (`GET /metrics`, OpenMetrics text).
//!
//! Money in metrics: `tollgate_cost_usd_total` is a float counter of USD and
//! `tollgate_budget_remaining_usd` a float gauge. Prometheus samples are float64,
//! so these are approximate views for dashboards; the ledger itself and
//! `GET /v1/usage` are exact decimals.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::sync::atomic::AtomicU64;
use tollgate_wire::api::Usage;

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
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CostLabels {
    tenant: String,
    model: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantLabels {
    tenant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AlertLabels {
    kind: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    cost: Family<CostLabels, Counter<f64, AtomicU64>>,
    remaining: Family<TenantLabels, Gauge<f64, AtomicU64>>,
    alerts: Family<AlertLabels, Counter>,
    reserve_seconds: Histogram,
    commit_seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let tokens = Family::<TokenLabels, Counter>::default();
        let cost = Family::<CostLabels, Counter<f64, AtomicU64>>::default();
        let remaining = Family::<TenantLabels, Gauge<f64, AtomicU64>>::default();
        let alerts = Family::<AlertLabels, Counter>::default();
        let reserve_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        let commit_seconds = Histogram::new(exponential_buckets(0.0001, 2.0, 16));
        registry.register(
            "tollgate_requests",
            "Reserve decisions by tenant and outcome",
            requests.clone(),
        );
        registry.register(
            "tollgate_tokens",
            "Committed tokens by tenant, model and kind (input, output, cache_read, cache_write)",
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
            requests,
            tokens,
            cost,
            remaining,
            alerts,
            reserve_seconds,
            commit_seconds,
        }
    }

    pub fn request(&self, tenant: &str, outcome: Outcome) {
        self.requests
            .get_or_create(&RequestLabels {
                tenant: tenant.to_string(),
                outcome: outcome.as_str().to_string(),
            })
            .inc();
    }

    pub fn committed(&self, tenant: &str, model: &str, usage: &Usage, cost: Decimal) {
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cache_read", usage.cache_read_input_tokens),
            ("cache_write", usage.cache_write_input_tokens),
        ] {
            if n > 0 {
                self.tokens
                    .get_or_create(&TokenLabels {
                        tenant: tenant.to_string(),
                        model: model.to_string(),
                        kind: kind.to_string(),
                    })
                    .inc_by(n);
            }
        }
        self.cost
            .get_or_create(&CostLabels {
                tenant: tenant.to_string(),
                model: model.to_string(),
            })
            .inc_by(cost.to_f64().unwrap_or(0.0));
    }

    pub fn remaining(&self, tenant: &str, available: Decimal) {
        self.remaining
            .get_or_create(&TenantLabels {
                tenant: tenant.to_string(),
            })
            .set(available.to_f64().unwrap_or(0.0));
    }

    pub fn alert(&self, kind: &str) {
        self.alerts
            .get_or_create(&AlertLabels {
                kind: kind.to_string(),
            })
            .inc();
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
