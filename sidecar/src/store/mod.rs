//! The ledger's storage interface and its records.
//!
//! Every method that changes a balance is **one atomic operation** (an SQLite
//! `BEGIN IMMEDIATE` transaction here; one conditional `UpdateItem` in a DynamoDB
//! store), so several sidecars could share one ledger.

pub mod cached;
#[cfg(feature = "dynamodb")]
pub mod dynamodb;
pub mod sqlite;

/// What selecting the DynamoDB store says in a build without it: the flags stay
/// (one CLI for every build), the choice fails with how to get it.
#[cfg(not(feature = "dynamodb"))]
pub const NO_DYNAMODB: &str =
    "this build has no DynamoDB support; rebuild with --features dynamodb";

use crate::error::Result;
use crate::ledger::LeaseSizing;
use crate::ledger::{AlertKind, ResetCycle};
use crate::pricing::{ModelPrice, Rates};
use async_trait::async_trait;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use tollgate_wire::api::{Attribution, LeaseTerms, Reservation, Usage};
use tollgate_wire::openapi::Money;

/// A tenant's configuration (`TenantConfigs` in the DynamoDB layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantConfig {
    pub tenant_id: String,
    #[schema(value_type = Money)]
    pub budget_usd: Decimal,
    /// The lowest of `alert_thresholds`, kept so readers of the older single
    /// threshold (and configurations written before the list) still work.
    #[schema(value_type = Money)]
    pub alert_threshold: Decimal,
    /// Fractions of the budget (0–1, ascending) at which a `threshold` alert
    /// fires, each once per period and budget scope (the tenant budget and each
    /// model budget). Empty in configurations written before the list existed:
    /// then `alert_threshold` alone applies (see [`TenantConfig::thresholds`]).
    #[serde(default)]
    #[schema(value_type = Vec<Money>)]
    pub alert_thresholds: Vec<Decimal>,
    pub reset_cycle: ResetCycle,
    pub active: bool,
    pub allowed_models: Vec<String>,
    pub default_model: Option<String>,
    pub max_tokens_cap: Option<u64>,
    pub rate_limit_rpm: Option<u32>,
    /// Tokens per minute (input estimate + max output at reserve, corrected to the
    /// actual tokens at commit). Absent in configurations written before it existed.
    #[serde(default)]
    pub rate_limit_tpm: Option<u64>,
    /// Optional per-model budgets (USD per period) inside the tenant budget, keyed
    /// by resolved model ID (aliases are resolved when the configuration is
    /// stored). A hold on such a model must fit both the tenant's and the model's
    /// available amount.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Money>)]
    pub model_budgets: BTreeMap<String, Decimal>,
    /// Optional tokens-per-minute limits per model (resolved model ID), beside
    /// the tenant-wide `rate_limit_tpm`.
    #[serde(default)]
    pub model_rate_limit_tpm: BTreeMap<String, u64>,
    /// Optional budgets (USD per period) per application inside the tenant
    /// budget, keyed by application ID: the application a key or SigV4
    /// credential is bound to, else the request's `x-application-id`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Money>)]
    pub application_budgets: BTreeMap<String, Decimal>,
    /// Optional budgets (USD per period) per end user inside the tenant budget,
    /// keyed by the request's user ID (`x-user-id` or `requestMetadata.user_id`).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, Money>)]
    pub user_budgets: BTreeMap<String, Decimal>,
    /// The budget of every user ID not listed in `user_budgets`. Requests
    /// without a user ID are capped by the other levels only.
    #[serde(default)]
    #[schema(value_type = Option<Money>)]
    pub default_user_budget_usd: Option<Decimal>,
}

impl TenantConfig {
    /// The thresholds in force: the list, or the single older threshold.
    pub fn thresholds(&self) -> Vec<Decimal> {
        if self.alert_thresholds.is_empty() {
            vec![self.alert_threshold]
        } else {
            self.alert_thresholds.clone()
        }
    }

    /// The budget of an application, if it has one.
    pub fn application_budget(&self, application_id: Option<&str>) -> Option<Decimal> {
        self.application_budgets.get(application_id?).copied()
    }

    /// The budget of a user: their own, else the default user budget.
    pub fn user_budget(&self, user_id: Option<&str>) -> Option<Decimal> {
        let user = user_id?;
        self.user_budgets
            .get(user)
            .copied()
            .or(self.default_user_budget_usd)
    }

    /// Whether any user has a budget (then the user of each request matters).
    pub fn has_user_budgets(&self) -> bool {
        !self.user_budgets.is_empty() || self.default_user_budget_usd.is_some()
    }
}

/// (tenant, application, model) → application inference profile ARN.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Profile {
    pub tenant_id: String,
    pub application_id: Option<String>,
    /// Resolved model ID (aliases are resolved when the mapping is stored).
    pub model_id: String,
    pub arn: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRecord {
    pub key_id: String,
    pub tenant_id: String,
    pub application_id: Option<String>,
    /// Hex SHA-256 of the key.
    #[serde(skip_serializing)]
    pub key_hash: String,
    pub created_at_ms: i64,
    pub revoked: bool,
    /// The key is refused from this instant on (its leases end by then too).
    pub expires_at_ms: Option<i64>,
    /// When a request last authenticated with the key, to within the
    /// sidecar's flush interval (see `Store::touch_keys`).
    pub last_used_at_ms: Option<i64>,
}

impl ApiKeyRecord {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_at_ms.is_some_and(|e| e <= now_ms)
    }
}

/// A SigV4 credential issued to a tenant. The secret is stored sealed
/// (AES-256-GCM under `TOLLGATE_SECRET_KEY`), never in clear.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SigV4CredentialRecord {
    pub access_key_id: String,
    pub tenant_id: String,
    pub application_id: Option<String>,
    #[serde(skip_serializing)]
    pub sealed_secret: String,
    pub created_at_ms: i64,
    pub revoked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HoldState {
    Open,
    Committed,
    Released,
    Expired,
}

impl HoldState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Open => "open",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "open" => Self::Open,
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => return None,
        })
    }
}

/// A reservation's budget hold (one row per request id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hold {
    pub request_id: String,
    pub tenant_id: String,
    pub period: String,
    pub model_id: String,
    pub target_model: String,
    pub attribution: Attribution,
    pub max_output_tokens: u64,
    pub hold_usd: Decimal,
    /// Available budget right after the hold (replayed on duplicate reserves).
    pub budget_remaining_usd: Decimal,
    /// Price snapshot the commit is charged at.
    pub rates: Rates,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    pub state: HoldState,
    /// The model budget the hold was admitted under, when the tenant has one for
    /// its model: the hold is then also counted in the model row's `reserved`.
    pub model_budget_usd: Option<Decimal>,
    /// The application budget the hold was admitted under (the application is
    /// `attribution.application_id`): counted in the `app:<id>` row too.
    pub app_budget_usd: Option<Decimal>,
    /// The user budget the hold was admitted under (the user is
    /// `attribution.user_id`): counted in the `user:<id>` row too.
    pub user_budget_usd: Option<Decimal>,
    /// The input-token estimate the hold was priced with. An estimated commit
    /// never charges more input than this.
    pub input_tokens_estimate: u64,
}

impl Hold {
    /// The budgets inside the tenant's that this hold is counted in, in the
    /// order they are checked: model, application, user.
    pub fn scoped_budgets(&self) -> Vec<ScopedBudget> {
        let a = &self.attribution;
        [
            (Level::Model, Some(&self.model_id), self.model_budget_usd),
            (
                Level::Application,
                a.application_id.as_ref(),
                self.app_budget_usd,
            ),
            (Level::User, a.user_id.as_ref(), self.user_budget_usd),
        ]
        .into_iter()
        .filter_map(|(level, id, budget)| {
            Some(ScopedBudget {
                level,
                id: id?.clone(),
                budget_usd: budget?,
            })
        })
        .collect()
    }

    pub fn reservation(&self) -> Reservation {
        Reservation {
            request_id: self.request_id.clone(),
            tenant_id: self.tenant_id.clone(),
            application_id: self.attribution.application_id.clone(),
            model_id: self.model_id.clone(),
            target_model: self.target_model.clone(),
            max_output_tokens: self.max_output_tokens,
            hold_usd: self.hold_usd,
            budget_remaining_usd: self.budget_remaining_usd,
            rates: Some(self.rates),
            rate_limits: Vec::new(),
        }
    }
}

/// A budget lease: budget held for one gateway worker, which admits requests of
/// one (credential, model, application) from it locally. The ledger counts
/// `reserved_usd` in the tenant's `reserved`, so the hard cap holds for any
/// number of gateways.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRecord {
    pub lease_id: String,
    pub period: String,
    /// Tenant, application, model, target and rates requests are admitted with.
    pub terms: LeaseTerms,
    /// What the lease was granted for, re-checked at every renewal:
    /// `key:<key_id>` (bearer key), `sigv4:<access key id>`,
    /// `trusted_header:<tenant>` or `jwt:<tenant>` (`tenant:<tenant>` before
    /// the two were told apart).
    pub credential_ref: String,
    /// The model as the client named it (alias, ID, ARN).
    pub requested_model: String,
    /// Budget the lease holds now: unused headroom plus the holds of requests
    /// admitted from it and not yet committed.
    pub reserved_usd: Decimal,
    /// Last renewal applied, and what it granted (replayed on a retry).
    pub seq: u64,
    pub last_granted_usd: Decimal,
    pub created_at_ms: i64,
    pub expires_at_ms: i64,
    /// `Open`, or `Released` (returned or closed) / `Expired` (swept).
    pub state: HoldState,
}

/// One counter of a request's claim on its tenant's rate limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateTake {
    /// `rpm`, `tpm` or `tpm:<model id>`.
    pub counter: String,
    pub amount: u64,
    pub limit: u64,
}

/// Outcome of [`Store::take_rate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateOutcome {
    /// Every counter was below its limit; each was raised by its amount.
    /// `used`: the counters after it, in the order of the takes.
    Taken { used: Vec<u64> },
    /// This counter would pass its limit; nothing was counted. `used`: the
    /// counters as they stand, in the order of the takes.
    Refused { counter: String, used: Vec<u64> },
}

impl RateOutcome {
    pub fn is_taken(&self) -> bool {
        matches!(self, Self::Taken { .. })
    }

    /// The refused counter, if any.
    pub fn refused(&self) -> Option<&str> {
        match self {
            Self::Refused { counter, .. } => Some(counter),
            Self::Taken { .. } => None,
        }
    }
}

/// Outcome of [`Store::delete_tenant`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TenantDeletion {
    Deleted,
    NotFound,
    /// Budget is still held for the tenant (requests in flight, gateway
    /// leases): nothing was deleted.
    Busy {
        reserved_usd: Decimal,
    },
}

/// Outcome of [`Store::grant_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    /// The lease row was written with `reserved_usd = granted`.
    Granted {
        granted: Decimal,
        /// The tenant's available budget after the grant.
        remaining: Decimal,
    },
    /// Not even `sizing.min` fits.
    Insufficient {
        available: Decimal,
        spent: Decimal,
        budget: Decimal,
    },
}

/// Outcome of [`Store::renew_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenewApplied {
    Renewed {
        granted: Decimal,
        remaining: Decimal,
    },
    /// The lease is unknown, expired, released, or of an ended period (then its
    /// whole `reserved_usd` is given back now).
    Closed { reason: String },
}

/// A commit of a request admitted from a lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeasedCommit {
    pub request_id: String,
    pub lease_id: String,
    /// Usage to charge, already capped (see `ledger::cap_usage`).
    pub usage: Usage,
    pub estimated: bool,
    /// Whether `usage` was cut by the cap (recorded on the usage row).
    pub capped: bool,
    /// The hold the gateway admitted the request with: moved out of the lease's
    /// (and the tenant's) `reserved` while the lease is open.
    pub hold_usd: Decimal,
    /// Per-request attribution; tenant and application come from the lease.
    pub attribution: Attribution,
}

/// Outcome of [`Store::reserve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReserveOutcome {
    /// The hold was moved into `reserved`.
    Admitted,
    /// A hold with this request id already exists (idempotent replay).
    Existing(Box<Hold>),
    /// The hold does not fit.
    Insufficient {
        available: Decimal,
        spent: Decimal,
        budget: Decimal,
    },
    /// The hold does not fit one of its scoped budgets
    /// ([`Hold::scoped_budgets`]): the first that refused.
    ScopeInsufficient {
        scope: ScopedBudget,
        available: Decimal,
        spent: Decimal,
        budget: Decimal,
    },
}

/// Outcome of [`Store::commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitApplied {
    Committed {
        cost: Decimal,
        /// Usage was cut to what was possible (`ledger::cap_usage`).
        capped: bool,
        /// The usage charged (after the cap): what metrics, EMF and the token
        /// buckets count, so they agree with the ledger.
        usage: Usage,
        hold: Box<Hold>,
        /// The period's totals after the commit.
        totals: Totals,
        /// Each scoped budget the hold was admitted under, after the commit.
        scopes: Vec<ScopeTotals>,
    },
    Duplicate {
        cost: Option<Decimal>,
    },
    Unknown,
}

/// Token and request counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Counters {
    #[schema(value_type = Money)]
    pub spent_usd: Decimal,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub requests: u64,
}

/// The `ALL` row of a tenant's period.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub period: String,
    pub budget_usd: Decimal,
    pub reserved_usd: Decimal,
    pub counters: Counters,
}

impl Totals {
    pub fn available(&self) -> Decimal {
        crate::ledger::available(self.budget_usd, self.counters.spent_usd, self.reserved_usd)
    }
}

/// The budget state of a model, application or user row (rows that were ever
/// reserved under such a budget).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetLimit {
    /// The budget last applied to the row.
    pub budget_usd: Decimal,
    pub reserved_usd: Decimal,
}

impl BudgetLimit {
    /// `budget − spent − reserved`.
    pub fn available(&self, spent: Decimal) -> Decimal {
        crate::ledger::available(self.budget_usd, spent, self.reserved_usd)
    }
}

/// A scoped budget's row right after a commit charged it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeTotals {
    pub scope: ScopedBudget,
    pub spent_usd: Decimal,
    pub reserved_usd: Decimal,
}

impl ScopeTotals {
    /// The row's own budget (as applied to the row; see [`ScopedBudget`]).
    pub fn available(&self) -> Decimal {
        crate::ledger::available(self.scope.budget_usd, self.spent_usd, self.reserved_usd)
    }
}

/// An application's or a user's row in a period (rows exist for scopes that
/// ever had a budget in the period).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeRow {
    pub limit: BudgetLimit,
    pub counters: Counters,
}

/// A period's balance with its per-model breakdown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Balance {
    pub totals: Totals,
    pub by_model: BTreeMap<String, Counters>,
    /// Budget and reserved of model rows that carry a model budget.
    pub model_limits: BTreeMap<String, BudgetLimit>,
    /// Application rows by application ID (`app:<id>` rows).
    pub by_application: BTreeMap<String, ScopeRow>,
    /// User rows by user ID (`user:<id>` rows).
    pub by_user: BTreeMap<String, ScopeRow>,
}

impl Balance {
    /// In the current period the configured model, application and user
    /// budgets are the ones that apply (a row takes a changed budget at its
    /// next reserve); earlier periods show what their rows recorded.
    pub fn apply_config(&mut self, config: &TenantConfig) {
        self.model_limits
            .retain(|m, _| config.model_budgets.contains_key(m));
        for (m, b) in &config.model_budgets {
            self.by_model.entry(m.clone()).or_default();
            self.model_limits.entry(m.clone()).or_default().budget_usd = *b;
        }
        // Rows of applications and users without a budget now are partial
        // (they count only while one was set): not shown.
        self.by_application
            .retain(|app, _| config.application_budgets.contains_key(app));
        for (app, b) in &config.application_budgets {
            self.by_application
                .entry(app.clone())
                .or_default()
                .limit
                .budget_usd = *b;
        }
        self.by_user
            .retain(|user, _| config.user_budget(Some(user)).is_some());
        for user in config.user_budgets.keys() {
            self.by_user.entry(user.clone()).or_default();
        }
        for (user, row) in self.by_user.iter_mut() {
            row.limit.budget_usd = config.user_budget(Some(user)).unwrap_or_default();
        }
    }

    /// Files a period row that is not `ALL` by its key: an `app:`/`user:` row
    /// goes to its map, any other is a model's.
    pub fn add_row(&mut self, key: &str, counters: Counters, limit: Option<BudgetLimit>) {
        match Level::of_row(key) {
            (Level::Model, model) => {
                if let Some(l) = limit {
                    self.model_limits.insert(model.to_string(), l);
                }
                self.by_model.insert(model.to_string(), counters);
            }
            (level, id) => {
                let row = ScopeRow {
                    limit: limit.unwrap_or_default(),
                    counters,
                };
                let map = if level == Level::Application {
                    &mut self.by_application
                } else {
                    &mut self.by_user
                };
                map.insert(id.to_string(), row);
            }
        }
    }
}

/// A level of budget inside the tenant's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    Model,
    Application,
    User,
}

impl Level {
    /// The prefix of this level's scope (`model:`, `app:`, `user:`).
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Model => "model:",
            Self::Application => "app:",
            Self::User => "user:",
        }
    }

    /// A budget row's level and ID from its key within the period: `app:<id>`,
    /// `user:<id>`, else a model ID (model rows kept their bare key when the
    /// other levels arrived; no model ID starts with either prefix, see
    /// `pricing::validate_model_id`).
    pub fn of_row(key: &str) -> (Self, &str) {
        for level in [Self::Application, Self::User] {
            if let Some(id) = key.strip_prefix(level.prefix()) {
                return (level, id);
            }
        }
        (Self::Model, key)
    }

    /// The word refusals start with.
    pub fn title(self) -> &'static str {
        match self {
            Self::Model => "Model",
            Self::Application => "Application",
            Self::User => "User",
        }
    }

    /// The word refusals use.
    pub fn noun(self) -> &'static str {
        match self {
            Self::Model => "model",
            Self::Application => "application",
            Self::User => "user",
        }
    }
}

/// One budget inside the tenant's that a hold is counted in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopedBudget {
    pub level: Level,
    /// Model ID, application ID or user ID.
    pub id: String,
    pub budget_usd: Decimal,
}

impl ScopedBudget {
    /// The budget row's key within the period: the bare model ID for a model
    /// budget, `app:<id>`, `user:<id>`.
    pub fn row(&self) -> String {
        match self.level {
            Level::Model => self.id.clone(),
            level => format!("{}{}", level.prefix(), self.id),
        }
    }

    /// The scope as alerts name it: `model:<id>`, `app:<id>`, `user:<id>`.
    pub fn scope(&self) -> String {
        format!("{}{}", self.level.prefix(), self.id)
    }
}

/// The budget scope of the tenant's own budget ([`AlertRecord::scope`]).
pub const SCOPE_TENANT: &str = "tenant";

/// A fired alert. It fires once per (tenant, period, scope, kind, threshold):
/// that tuple is its identity, and [`AlertRecord::alert_id`] is derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertRecord {
    pub tenant_id: String,
    pub period: String,
    /// Which budget: [`SCOPE_TENANT`], `model:<id>`,
    /// `app:<id>` or `user:<id>` ([`ScopedBudget::scope`]).
    pub scope: String,
    pub kind: AlertKind,
    /// The fraction that was crossed (`threshold` alerts only).
    pub threshold: Option<Decimal>,
    pub fired_at_ms: i64,
    pub spent_usd: Decimal,
    pub budget_usd: Decimal,
    pub request_id: Option<String>,
    pub cost_usd: Option<Decimal>,
}

impl AlertRecord {
    /// The threshold as the identity uses it (normalized: `0.80` is `0.8`), or
    /// empty for kinds without one.
    pub fn threshold_key(&self) -> String {
        self.threshold
            .map(|t| t.normalize().to_string())
            .unwrap_or_default()
    }

    /// Stable id of this alert: the same (tenant, period, scope, kind,
    /// threshold) always gives the same id, on any sidecar, so a receiver can
    /// drop redeliveries (at-least-once) by it. `al_` + 24 hex of a SHA-256.
    pub fn alert_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for part in [
            self.tenant_id.as_str(),
            self.period.as_str(),
            self.scope.as_str(),
            self.kind.as_str(),
            &self.threshold_key(),
        ] {
            // Length-prefixed, so no two tuples hash the same text.
            h.update((part.len() as u64).to_be_bytes());
            h.update(part.as_bytes());
        }
        format!("al_{}", &hex::encode(h.finalize())[..24])
    }
}

/// Where an outbox entry stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OutboxState {
    /// Waiting for (another) attempt at `next_attempt_at`.
    Pending,
    /// The target accepted it.
    Delivered,
    /// Every attempt failed; kept for inspection and `retry`.
    Failed,
}

impl OutboxState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => Self::Pending,
            "delivered" => Self::Delivered,
            "failed" => Self::Failed,
            _ => return None,
        })
    }
}

/// One delivery of one alert to one target (the alert outbox).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub alert_id: String,
    /// `webhook:<12 hex of SHA-256 of the URL>` (the URL itself may carry a
    /// secret, so it is not stored) or `sns:<topic ARN>`.
    pub target: String,
    pub tenant_id: String,
    /// The alert JSON (`alerts::AlertEvent`), as it is delivered.
    pub payload: String,
    pub state: OutboxState,
    pub attempts: u32,
    pub next_attempt_ms: i64,
    pub last_error: Option<String>,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
}

/// What an attempt at an outbox entry came to ([`Store::finish_outbox`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxResult {
    Delivered,
    /// Failed; try again at `next_attempt_ms`.
    Retry {
        next_attempt_ms: i64,
        error: String,
    },
    /// Failed for the last time.
    Failed {
        error: String,
    },
}

/// One settled invocation (the usage log the reports are built from).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRecord {
    pub request_id: String,
    pub tenant_id: String,
    pub model_id: String,
    pub attribution: Attribution,
    pub usage: Usage,
    pub cost_usd: Decimal,
    pub estimated: bool,
    /// The reported or estimated usage was above what the request could use
    /// (its output limit, or for an estimate its input estimate) and was cut.
    pub capped: bool,
    pub at_ms: i64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Readiness (`GET /readyz`): the store answers reads and takes writes now
    /// (SQLite: a read and an empty write through the writer thread; DynamoDB:
    /// every table described and `ACTIVE`). Never answered from a cache.
    async fn check_ready(&self) -> Result<()>;

    // --- configuration -------------------------------------------------------
    /// Upserts a tenant. The current period's budget (if its row exists) follows
    /// the new configured budget; earlier periods keep theirs.
    async fn put_tenant(&self, cfg: &TenantConfig, current_period: &str) -> Result<()>;
    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantConfig>>;
    async fn list_tenants(&self) -> Result<Vec<TenantConfig>>;
    /// Deletes a tenant's configuration and profiles and revokes its keys and
    /// SigV4 credentials, unless budget is still reserved for it in any period
    /// (`Busy`). Its budget rows, usage and alerts stay, read-only: reports keep
    /// them, and a tenant created again under the id continues its period.
    async fn delete_tenant(&self, tenant_id: &str, now_ms: i64) -> Result<TenantDeletion>;

    /// The price region of the plain price methods below (`--pricing-region`).
    fn pricing_region(&self) -> &str {
        crate::pricing::DEFAULT_REGION
    }
    /// Prices live in one table per region.
    async fn put_price_in(&self, region: &str, price: &ModelPrice) -> Result<()>;
    async fn get_price_in(&self, region: &str, model_id: &str) -> Result<Option<ModelPrice>>;
    async fn list_prices_in(&self, region: &str) -> Result<Vec<ModelPrice>>;

    /// [`Store::put_price_in`] the store's [`Store::pricing_region`].
    async fn put_price(&self, price: &ModelPrice) -> Result<()> {
        self.put_price_in(self.pricing_region(), price).await
    }
    /// [`Store::get_price_in`] the store's [`Store::pricing_region`].
    async fn get_price(&self, model_id: &str) -> Result<Option<ModelPrice>> {
        self.get_price_in(self.pricing_region(), model_id).await
    }
    /// [`Store::list_prices_in`] the store's [`Store::pricing_region`].
    async fn list_prices(&self) -> Result<Vec<ModelPrice>> {
        self.list_prices_in(self.pricing_region()).await
    }

    /// Removes a price; false when there was none. Requests for the model are
    /// refused from then on (leases already granted keep their rates until
    /// their next renewal).
    async fn delete_price_in(&self, region: &str, model_id: &str) -> Result<bool>;

    async fn put_alias(&self, alias: &str, model_id: &str) -> Result<()>;
    /// Removes an alias; false when there was none.
    async fn delete_alias(&self, alias: &str) -> Result<bool>;
    async fn get_alias(&self, alias: &str) -> Result<Option<String>>;
    async fn list_aliases(&self) -> Result<BTreeMap<String, String>>;

    async fn put_profile(&self, profile: &Profile) -> Result<()>;
    /// Removes the mapping of (tenant, application, model); false when there
    /// was none. The tenant's requests then go to the tenant-wide mapping, or
    /// to the model itself.
    async fn delete_profile(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model_id: &str,
    ) -> Result<bool>;
    async fn list_profiles(&self, tenant_id: &str) -> Result<Vec<Profile>>;

    // --- keys ----------------------------------------------------------------
    /// Inserts a key; returns false (and changes nothing) if its hash is known.
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<bool>;
    /// A non-revoked key by hash.
    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>>;
    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>>;
    /// Returns false when no such key belongs to the tenant.
    async fn revoke_key(&self, tenant_id: &str, key_id: &str, now_ms: i64) -> Result<bool>;
    /// Records when keys (by hash) were last used; a time never moves back.
    /// Batched by the sidecar, so a request costs no write of its own.
    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()>;

    // --- SigV4 credentials ----------------------------------------------------
    /// Returns false if the access key id already exists.
    async fn insert_sigv4_credential(&self, cred: &SigV4CredentialRecord) -> Result<bool>;
    /// A non-revoked credential by access key id.
    async fn find_sigv4_credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SigV4CredentialRecord>>;
    async fn list_sigv4_credentials(&self, tenant_id: &str) -> Result<Vec<SigV4CredentialRecord>>;
    /// Returns false when no such credential belongs to the tenant.
    async fn revoke_sigv4_credential(
        &self,
        tenant_id: &str,
        access_key_id: &str,
        now_ms: i64,
    ) -> Result<bool>;
    /// Every SigV4 credential of every tenant, revoked ones included, ordered
    /// by access key id (`tollgate-sidecar rewrap` re-seals them all).
    async fn list_all_sigv4_credentials(&self) -> Result<Vec<SigV4CredentialRecord>>;
    /// Sets the sealed secret of `access_key_id` to `new` only if it is still
    /// `old`, the value the caller read; nothing else changes (a revocation made
    /// in between stays). False when the value changed since it was read (e.g.
    /// by another `rewrap`) or there is no such credential.
    async fn replace_sigv4_sealed_secret(
        &self,
        access_key_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool>;

    // --- ledger --------------------------------------------------------------
    async fn get_hold(&self, request_id: &str) -> Result<Option<Hold>>;
    /// Atomically: create the period row with `period_budget` if missing, check
    /// `budget − spent − reserved ≥ hold`, add the hold to `reserved` and record
    /// it (with `budget_remaining_usd` set to the available amount after it).
    /// Each of [`Hold::scoped_budgets`] (model, application, user) must admit
    /// the hold too in its own row (budget set to the scope's), which counts it
    /// in its `reserved`; commit, release and expiry give it back there as
    /// well, and a commit charges each of those rows.
    async fn reserve(&self, hold: &Hold, period_budget: Decimal) -> Result<ReserveOutcome>;
    /// Atomically settles a hold at its price snapshot: `spent += cost`, and
    /// `reserved −= hold` when it was still open. Idempotent per request id.
    /// The usage is first capped with `ledger::cap_usage` (the hold's max output
    /// tokens and input estimate); `capped` is recorded on the usage row.
    async fn commit(
        &self,
        request_id: &str,
        usage: &Usage,
        estimated: bool,
        now_ms: i64,
    ) -> Result<CommitApplied>;
    /// Gives an open hold back; false when it was not open.
    async fn release(&self, request_id: &str, now_ms: i64) -> Result<bool>;
    /// Expires open holds and open leases whose expiry is ≤ now (giving their
    /// `reserved` back); returns how many.
    async fn expire_holds(&self, now_ms: i64) -> Result<u64>;
    /// A period's balance; a period without a row shows `default_budget` unspent.
    async fn balance(
        &self,
        tenant_id: &str,
        period: &str,
        default_budget: Decimal,
    ) -> Result<Balance>;

    // --- fleet-wide rate limits ---------------------------------------------------
    /// Atomically, for the tenant's counters of one minute (`window`, minutes
    /// since the epoch): when every `counter + amount ≤ limit`, adds the
    /// amounts; otherwise changes nothing and names a counter that was full.
    async fn take_rate(
        &self,
        tenant_id: &str,
        window: i64,
        takes: &[RateTake],
    ) -> Result<RateOutcome>;
    /// Adds `delta` (a refund or a correction, may be negative) to a counter,
    /// unconditionally.
    async fn adjust_rate(
        &self,
        tenant_id: &str,
        window: i64,
        counter: &str,
        delta: i64,
    ) -> Result<()>;
    /// Forgets windows before `before_window` (the store may do it itself).
    async fn prune_rate_windows(&self, before_window: i64) -> Result<()>;

    // --- leases ----------------------------------------------------------------
    /// Whether this store implements the lease methods below. A sidecar on a
    /// store without them answers every reserve with a one-request hold.
    fn supports_leases(&self) -> bool {
        false
    }
    /// Atomically: create the period row with `period_budget` if missing, size
    /// the grant with `sizing.grant(available)` and, when it is at least
    /// `sizing.min`, add it to the tenant's `reserved` and record the lease with
    /// `reserved_usd = granted`, `seq = 0`.
    async fn grant_lease(
        &self,
        _lease: &LeaseRecord,
        _sizing: &LeaseSizing,
        _period_budget: Decimal,
    ) -> Result<LeaseOutcome> {
        Err(crate::error::Error::Internal(
            "this store does not implement leases".into(),
        ))
    }
    /// Atomically, for an open lease of `current_period`: when `seq` is the
    /// last applied, replay its grant; when older, refuse as invalid. Otherwise
    /// move `min(return_usd, reserved)` back to available, then grant
    /// `sizing.grant(available)` (0 when below `sizing.min`), set `seq`,
    /// `last_granted_usd` and `expires_at_ms`. A lease of another period is
    /// closed (its whole `reserved_usd` given back).
    #[allow(clippy::too_many_arguments)]
    async fn renew_lease(
        &self,
        _lease_id: &str,
        _seq: u64,
        _return_usd: Decimal,
        _sizing: &LeaseSizing,
        _current_period: &str,
        _now_ms: i64,
        _expires_at_ms: i64,
    ) -> Result<RenewApplied> {
        Err(crate::error::Error::Internal(
            "this store does not implement leases".into(),
        ))
    }
    async fn get_lease(&self, _lease_id: &str) -> Result<Option<LeaseRecord>> {
        Ok(None)
    }
    /// Atomically charges a leased request at the lease's rates, once per
    /// request id (a second delivery is a `Duplicate` with the first cost):
    /// `spent += cost` on the tenant and model rows, a usage row, and, while the
    /// lease is open, `min(hold_usd, lease.reserved)` out of the lease's and the
    /// tenant's `reserved`. `Unknown` when no such lease exists. The returned
    /// `Hold` describes the request (terms of the lease, its attribution).
    async fn commit_leased(&self, _c: &LeasedCommit, _now_ms: i64) -> Result<CommitApplied> {
        Err(crate::error::Error::Internal(
            "this store does not implement leases".into(),
        ))
    }
    /// [`Store::commit_leased`] for a batch from the gateway, results in its
    /// order. Each commit stands alone (its own outcome or error); a store may
    /// charge the commits of one lease together (DynamoDB: one update of the
    /// tenant's row per lease and batch instead of one per request).
    async fn commit_leased_batch(
        &self,
        commits: &[LeasedCommit],
        now_ms: i64,
    ) -> Vec<Result<CommitApplied>> {
        futures_util::future::join_all(commits.iter().map(|c| self.commit_leased(c, now_ms))).await
    }

    // --- alerts and reports ----------------------------------------------------
    /// Records an alert unless one of the same (tenant, period, scope, kind,
    /// threshold) exists, and with it one pending outbox entry per target
    /// (due at once, `payload` the body to deliver) — in the same transaction
    /// where the store has one. Returns whether it was recorded.
    async fn record_alert(
        &self,
        alert: &AlertRecord,
        payload: &str,
        targets: &[String],
    ) -> Result<bool>;
    /// Claims up to `limit` pending outbox entries due at `now_ms`: each one's
    /// next attempt moves to `claim_until_ms`, so another worker (this or
    /// another sidecar) does not take it meanwhile. A worker that dies holding
    /// a claim leaves the entry to be retried once the claim ends.
    async fn claim_outbox(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>>;
    /// Records the outcome of an attempt (and counts it).
    async fn finish_outbox(
        &self,
        alert_id: &str,
        target: &str,
        result: &OutboxResult,
        now_ms: i64,
    ) -> Result<()>;
    /// Outbox entries, newest first, optionally of one state.
    async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>>;
    /// (pending, failed) entry counts (metrics).
    async fn outbox_counts(&self) -> Result<(u64, u64)>;
    /// Makes an alert's failed entries pending again, due at `now_ms`, with
    /// their attempts reset; returns how many.
    async fn retry_outbox(&self, alert_id: &str, now_ms: i64) -> Result<u64>;
    async fn list_alerts(&self, tenant_id: &str) -> Result<Vec<AlertRecord>>;
    /// Usage rows with `from_ms ≤ at < to_ms`.
    async fn usage(&self, from_ms: Option<i64>, to_ms: Option<i64>) -> Result<Vec<UsageRecord>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_config_json_without_tpm_still_parses() {
        let old = r#"{"tenant_id":"acme","budget_usd":"10","alert_threshold":"0.8",
            "reset_cycle":"monthly","active":true,"allowed_models":[],
            "default_model":null,"max_tokens_cap":null,"rate_limit_rpm":5}"#;
        let cfg: TenantConfig = serde_json::from_str(old).expect("old JSON parses");
        assert_eq!(cfg.rate_limit_rpm, Some(5));
        assert_eq!(cfg.rate_limit_tpm, None);
        let back = serde_json::to_value(&cfg).unwrap();
        assert!(back["rate_limit_tpm"].is_null(), "{back}");

        let with_tpm = TenantConfig {
            rate_limit_tpm: Some(900),
            ..cfg
        };
        let json = serde_json::to_string(&with_tpm).unwrap();
        assert!(json.contains(r#""rate_limit_tpm":900"#), "{json}");
        assert_eq!(
            serde_json::from_str::<TenantConfig>(&json).unwrap(),
            with_tpm
        );
    }
}
