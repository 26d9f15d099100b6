//! The ledger service, the data plane: reserve / commit / release / sweep (and,
//! in `leases`, budget leases) on top of a [`Store`]. The admin operations are
//! [`crate::admin::Admin`], reached through [`Service::admin`]. Shared by the
//! HTTP API, the seed loader and tests.

use crate::admin::Admin;
use crate::alerts::Alerter;
use crate::clock::{to_millis, Clock};
use crate::emf::{EmfRecord, EmfWriter};
use crate::error::{Error, Result};
use crate::keys;
use crate::ledger::{self, AlertKind};
use crate::metrics::{Metrics, Outcome};
use crate::pricing::{self, ModelPrice};
use crate::rate_limits::RateLimits;
use crate::store::SigV4CredentialRecord;
use crate::store::{
    AlertRecord, CommitApplied, Hold, HoldState, ReserveOutcome, Store, TenantConfig,
};
use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::Instant;
use tollgate_wire::api::{
    Commit, CommitBatch, CommitOutcome, CommitResponse, CommitResult, Credential, Denial,
    ReleaseRequest, ReleaseResponse, ReserveRequest, ReserveResponse, SigV4Proof,
};
use tollgate_wire::sigv4;

/// Tunables of the ledger (from the command line).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a hold lives without a commit before the sweeper expires it.
    pub hold_ttl_secs: u64,
    /// Output tokens assumed when a request states no limit.
    pub default_max_output_tokens: u64,
    /// One invocation costing more than this fires a `high_cost` alert.
    pub high_cost_threshold_usd: Decimal,
    /// Seals SigV4 secrets at rest (current key) and opens them (current and
    /// previous keys); without it SigV4 credentials cannot be issued or verified.
    pub sealing: Option<crate::seal::Keyring>,
    /// Distinct values kept per metrics label before folding into `other`.
    pub metrics_max_label_values: usize,
    /// Body format of alert webhooks.
    pub webhook_format: crate::alerts::WebhookFormat,
    /// Signs webhook deliveries (`X-Tollgate-Signature`) when set.
    pub webhook_secret: Option<crate::alerts::WebhookSecret>,
    /// SNS topic ARNs alerts are published to.
    pub sns_topics: Vec<String>,
    /// Retry policy of the alert outbox.
    pub outbox: crate::alerts::OutboxSettings,
    /// Where to write CloudWatch EMF lines (one per committed invocation).
    pub emf_output: Option<crate::emf::EmfTarget>,
    /// EMF namespace.
    pub emf_namespace: String,
    /// Price table region reserves are priced from (`--pricing-region`).
    pub pricing_region: String,
    /// Budget leases for gateways that admit locally.
    pub leases: crate::leases::LeaseSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            hold_ttl_secs: 600,
            default_max_output_tokens: 4096,
            high_cost_threshold_usd: Decimal::TEN,
            sealing: None,
            metrics_max_label_values: crate::metrics::DEFAULT_MAX_LABEL_VALUES,
            webhook_format: crate::alerts::WebhookFormat::Json,
            webhook_secret: None,
            sns_topics: Vec::new(),
            outbox: crate::alerts::OutboxSettings::default(),
            emf_output: None,
            emf_namespace: crate::emf::DEFAULT_NAMESPACE.to_string(),
            pricing_region: pricing::DEFAULT_REGION.to_string(),
            leases: crate::leases::LeaseSettings::default(),
        }
    }
}

/// How a reserve is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// The normal path: budget and rate limits apply.
    Checked,
    /// A request already served without a hold (`failure_mode: open`).
    Unreserved,
}

/// Largest commit batch accepted in one call.
pub const MAX_COMMIT_BATCH: usize = 1000;

pub const MISSING_CREDENTIAL: &str = "Missing credential: send Authorization: Bearer <key> (AWS_BEARER_TOKEN_BEDROCK) with a key issued by your Tollgate administrator.";
pub const INVALID_TOKEN: &str = "The security token included in the request is invalid.";
/// Bedrock's words for an expired credential (`ExpiredTokenException`, 403).
pub const EXPIRED_TOKEN: &str = "The security token included in the request is expired";

pub(crate) fn deny(status: u16, error_type: &str, message: impl Into<String>) -> Denial {
    Denial {
        status,
        error_type: error_type.to_string(),
        message: message.into(),
        retry_after_secs: None,
        rate_limits: Vec::new(),
    }
}

/// Tenant and application ids: 1–128 of `[A-Za-z0-9._:@-]`.
pub fn validate_id(field: &str, id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '@' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "{field} must be 1 to 128 characters of A-Z a-z 0-9 . _ : @ -, got {id:?}"
        )))
    }
}

/// An authenticated caller of the data plane.
pub(crate) struct Caller {
    pub tenant: TenantConfig,
    /// The application its key or SigV4 credential is bound to.
    pub key_application: Option<String>,
    /// What a lease granted to it is re-checked against (see `LeaseRecord`).
    pub credential_ref: String,
    /// When the credential stops working (bearer keys with an expiry).
    pub credential_expires_ms: Option<i64>,
}

pub struct Service {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub metrics: Arc<Metrics>,
    rate_limits: RateLimits,
    alerter: Alerter,
    emf: Option<EmfWriter>,
    /// (tenant, period, scope, kind, threshold) of alerts known to be recorded, so a commit past
    /// a threshold does not write to the store again for an alert that fired.
    #[allow(clippy::type_complexity)]
    fired: std::sync::Mutex<std::collections::HashSet<(String, String, String, AlertKind, String)>>,
    admin: Admin,
    /// Keys' last use, written to the store at each sweep.
    pub(crate) key_use: keys::LastUsed,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        settings: Settings,
        metrics: Arc<Metrics>,
        alerter: Alerter,
    ) -> Self {
        let admin = Admin::new(store.clone(), clock.clone(), settings.sealing.clone());
        let rate_limits = RateLimits::new(store.clone());
        Self {
            admin,
            store,
            clock,
            settings,
            metrics,
            rate_limits,
            alerter,
            emf: None,
            fired: Default::default(),
            key_use: keys::LastUsed::default(),
        }
    }

    /// The EMF writer, if `--emf-output` is set (flushed at shutdown).
    pub fn emf(&self) -> Option<&EmfWriter> {
        self.emf.as_ref()
    }

    /// Writes one EMF line per committed invocation through `emf`.
    pub fn with_emf(mut self, emf: Option<EmfWriter>) -> Self {
        self.emf = emf;
        self
    }

    /// Alias → model ID (single level); anything else is returned unchanged.
    pub async fn resolve_alias(&self, name: &str) -> Result<String> {
        self.admin.resolve_alias(name).await
    }

    /// Alert targets and the outbox's delivery logic.
    pub fn alerter(&self) -> &Alerter {
        &self.alerter
    }

    /// Tenants, keys, credentials, profiles and aliases (the admin API).
    pub fn admin(&self) -> &Admin {
        &self.admin
    }

    /// The price for a resolved model ID: the exact entry, else the entry without
    /// its geo prefix.
    pub async fn price_for(&self, model_id: &str) -> Result<Option<ModelPrice>> {
        for key in pricing::price_lookup_keys(model_id) {
            if let Some(p) = self
                .store
                .get_price_in(&self.settings.pricing_region, key)
                .await?
            {
                return Ok(Some(p));
            }
        }
        Ok(None)
    }

    // ---------------------------------------------------------------- data plane

    pub async fn reserve(&self, req: ReserveRequest) -> Result<ReserveResponse> {
        let started = Instant::now();
        let result = self.reserve_inner(req, Admission::Checked).await;
        self.metrics
            .observe_reserve(started.elapsed().as_secs_f64());
        match result {
            Ok((tenant, outcome, response)) => {
                self.metrics.request(&tenant, outcome);
                Ok(response)
            }
            Err(e) => {
                self.metrics.request("unknown", Outcome::Failed);
                self.count_store_error("reserve", &e);
                Err(e)
            }
        }
    }

    /// Who a credential is: an active tenant, or the denial (with the tenant
    /// to count it under).
    pub(crate) async fn authenticate(
        &self,
        credential: &Credential,
        now: time::OffsetDateTime,
        admission: Admission,
    ) -> Result<std::result::Result<Caller, (String, Denial)>> {
        let unknown = || "unknown".to_string();
        let mut credential_expires_ms = None;
        let (tenant_id, key_application, credential_ref) = match credential {
            Credential::None => {
                return Ok(Err((
                    unknown(),
                    deny(401, "UnrecognizedClientException", MISSING_CREDENTIAL),
                )))
            }
            Credential::Bearer { key } => match self.store.find_key(&keys::hash_key(key)).await? {
                Some(k) if k.expired(to_millis(now)) => {
                    return Ok(Err((
                        k.tenant_id,
                        deny(403, "ExpiredTokenException", EXPIRED_TOKEN),
                    )))
                }
                Some(k) => {
                    self.key_use.note(&k.key_hash, to_millis(now));
                    credential_expires_ms = k.expires_at_ms;
                    (k.tenant_id, k.application_id, format!("key:{}", k.key_id))
                }
                None => {
                    return Ok(Err((
                        unknown(),
                        deny(403, "UnrecognizedClientException", INVALID_TOKEN),
                    )))
                }
            },
            Credential::TrustedHeader { tenant_id } => (
                tenant_id.clone(),
                None,
                format!("trusted_header:{tenant_id}"),
            ),
            Credential::Jwt { tenant_id } => (tenant_id.clone(), None, format!("jwt:{tenant_id}")),
            Credential::Sigv4(proof) => match self.verify_sigv4(proof, now, admission).await? {
                Ok(cred) => (
                    cred.tenant_id,
                    cred.application_id,
                    format!("sigv4:{}", cred.access_key_id),
                ),
                Err(d) => return Ok(Err((unknown(), d))),
            },
        };
        let Some(tenant) = self.store.get_tenant(&tenant_id).await? else {
            let d = match credential {
                Credential::Bearer { .. } | Credential::Sigv4(_) => {
                    deny(403, "UnrecognizedClientException", INVALID_TOKEN)
                }
                _ => deny(
                    403,
                    "AccessDeniedException",
                    format!("Tenant {tenant_id} is not registered with this gateway."),
                ),
            };
            return Ok(Err((unknown(), d)));
        };
        if !tenant.active {
            let tid = tenant.tenant_id.clone();
            let d = deny(
                403,
                "AccessDeniedException",
                format!("Tenant {tid} is inactive."),
            );
            return Ok(Err((tid, d)));
        }
        Ok(Ok(Caller {
            tenant,
            key_application,
            credential_ref,
            credential_expires_ms,
        }))
    }

    async fn reserve_inner(
        &self,
        req: ReserveRequest,
        admission: Admission,
    ) -> Result<(String, Outcome, ReserveResponse)> {
        if req.request_id.is_empty() || req.request_id.len() > 256 {
            return Err(Error::invalid("request_id must be 1 to 256 characters"));
        }
        let now = self.clock.now();
        let denied =
            |tenant: String, outcome, d: Denial| Ok((tenant, outcome, ReserveResponse::Deny(d)));

        // 1. Credential → tenant.
        let Caller {
            tenant,
            key_application,
            credential_ref,
            credential_expires_ms,
        } = match self.authenticate(&req.credential, now, admission).await? {
            Ok(c) => c,
            Err((tenant, d)) => return denied(tenant, Outcome::DeniedAuth, d),
        };
        let tid = tenant.tenant_id.clone();

        // Idempotent replay of a reserve already answered.
        if let Some(existing) = self.store.get_hold(&req.request_id).await? {
            return Ok(self.replay(&tid, &existing));
        }

        let mut attribution = req.attribution.clone();
        if key_application.is_some() {
            attribution.application_id = key_application;
        }

        // 2. Model: alias / model ID / system profile ID / this tenant's ARN.
        let (model_id, profile_arn, price) = match self.resolve_model(&tenant, &req.model).await? {
            Ok(m) => m,
            Err(d) => return denied(tid, Outcome::DeniedModel, d),
        };

        // 3. Rate limit (not for requests already served while we were down).
        let max_out = ledger::max_output_tokens(
            req.max_output_tokens,
            self.settings.default_max_output_tokens,
            tenant.max_tokens_cap,
        );
        let mut rate_limits = Vec::new();
        if admission == Admission::Checked {
            if let Some(want) = req.lease {
                if self.lease_eligible(
                    &tenant,
                    &model_id,
                    attribution.application_id.as_deref(),
                    &req.credential,
                ) {
                    let grant = crate::leases::LeaseAsk {
                        req: &req,
                        want,
                        tenant: &tenant,
                        credential_ref: credential_ref.clone(),
                        credential_expires_ms,
                        model_id: model_id.clone(),
                        profile_arn: profile_arn.clone(),
                        price: &price,
                        max_out,
                        attribution: attribution.clone(),
                    };
                    match self.grant_lease(grant, now).await {
                        // A grant that failed on the store (contention, a grant
                        // slower than the lease TTL, a transient error): this
                        // request still gets its own hold below, as a cold one
                        // would, rather than a 503; its worker asks again later.
                        Err(Error::Internal(e)) => {
                            self.metrics.lease("grant_failed");
                            tracing::warn!(tenant = %tid, request_id = %req.request_id, error = %e,
                                "lease grant failed; reserving this request alone");
                        }
                        other => return other,
                    }
                }
            }
            // Requests and tokens per minute, counted fleet-wide in the store.
            let tokens = req.input_tokens_estimate.saturating_add(max_out);
            match self
                .rate_limits
                .admit(&tenant, &model_id, &req.request_id, tokens, now)
                .await?
            {
                Ok(limits) => rate_limits = limits,
                Err(t) => {
                    let mut d = deny(429, "ThrottlingException", t.exceeded.message(&tid));
                    d.retry_after_secs = Some(t.retry_after_secs);
                    d.rate_limits = t.limits;
                    return denied(tid, Outcome::DeniedRate, d);
                }
            }
        }

        // 4. Hold.
        let placed = self
            .place_hold(
                admission,
                &req,
                &tenant,
                max_out,
                &price,
                profile_arn,
                model_id,
                attribution,
                now,
            )
            .await;
        match placed {
            Ok((mut outcome, true)) => {
                if let ReserveResponse::Allow(r) = &mut outcome.2 {
                    r.rate_limits = rate_limits;
                }
                Ok(outcome)
            }
            Ok((outcome, false)) => {
                // Refused or replayed: give the token charge back.
                self.rate_limits.refund(&req.request_id).await;
                Ok(outcome)
            }
            Err(e) => {
                self.rate_limits.refund(&req.request_id).await;
                Err(e)
            }
        }
    }

    /// Sizes and places the hold; the flag tells whether a new hold was admitted.
    #[allow(clippy::too_many_arguments)]
    async fn place_hold(
        &self,
        admission: Admission,
        req: &ReserveRequest,
        tenant: &TenantConfig,
        max_out: u64,
        price: &ModelPrice,
        profile_arn: Option<String>,
        model_id: String,
        attribution: tollgate_wire::api::Attribution,
        now: time::OffsetDateTime,
    ) -> Result<((String, Outcome, ReserveResponse), bool)> {
        let tid = tenant.tenant_id.clone();
        let rates = price.rates();
        let hold_usd = match admission {
            Admission::Checked => rates
                .hold(req.input_tokens_estimate, max_out)
                .map_err(|_| Error::invalid("input_tokens_estimate is too large"))?,
            // Already served: nothing to hold, the commit follows at once.
            Admission::Unreserved => Decimal::ZERO,
        };
        let target_model = match profile_arn {
            Some(arn) => arn,
            None => self
                .profile_for(&tid, attribution.application_id.as_deref(), &model_id)
                .await?
                .unwrap_or_else(|| model_id.clone()),
        };
        let period = ledger::period_key(tenant.reset_cycle, now);
        let now_ms = to_millis(now);
        let ttl_ms =
            i64::try_from(self.settings.hold_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        let model_budget_usd = tenant.model_budgets.get(&model_id).copied();
        let app_budget_usd = tenant.application_budget(attribution.application_id.as_deref());
        let user_budget_usd = tenant.user_budget(attribution.user_id.as_deref());
        let hold = Hold {
            request_id: req.request_id.clone(),
            tenant_id: tid.clone(),
            period: period.clone(),
            model_id,
            target_model,
            attribution,
            max_output_tokens: max_out,
            hold_usd,
            budget_remaining_usd: Decimal::ZERO,
            rates,
            created_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(ttl_ms),
            state: HoldState::Open,
            model_budget_usd,
            app_budget_usd,
            user_budget_usd,
            input_tokens_estimate: req.input_tokens_estimate,
        };
        match self.store.reserve(&hold, tenant.budget_usd).await? {
            ReserveOutcome::Admitted => {
                let stored = self
                    .store
                    .get_hold(&hold.request_id)
                    .await?
                    .ok_or_else(|| Error::Internal("hold vanished after reserve".into()))?;
                self.metrics.remaining(&tid, stored.budget_remaining_usd);
                Ok((
                    (
                        tid,
                        Outcome::Approved,
                        ReserveResponse::Allow(stored.reservation()),
                    ),
                    true,
                ))
            }
            ReserveOutcome::Existing(existing) => Ok((self.replay(&tid, &existing), false)),
            ReserveOutcome::ScopeInsufficient {
                scope,
                available,
                spent,
                budget,
            } => {
                self.metrics.scope_remaining(&tid, &scope, available);
                // The scoped budget's own `exhausted` alert (once per period).
                self.fire(AlertRecord {
                    tenant_id: tid.clone(),
                    period,
                    scope: scope.scope(),
                    kind: AlertKind::Exhausted,
                    threshold: None,
                    fired_at_ms: now_ms,
                    spent_usd: spent,
                    budget_usd: budget,
                    request_id: Some(req.request_id.clone()),
                    cost_usd: None,
                })
                .await;
                let d = deny(
                    402,
                    "BudgetExceededException",
                    format!(
                        "{} budget exhausted for tenant {tid}, {} {}: available ${}, this request needs up to ${}",
                        scope.level.title(),
                        scope.level.noun(),
                        scope.id,
                        available.max(Decimal::ZERO).normalize(),
                        hold_usd.normalize()
                    ),
                );
                Ok((
                    (tid, Outcome::DeniedBudget, ReserveResponse::Deny(d)),
                    false,
                ))
            }
            ReserveOutcome::Insufficient {
                available,
                spent,
                budget,
            } => {
                let d = self
                    .budget_exhausted(
                        &tid,
                        period,
                        &req.request_id,
                        (available, spent, budget),
                        hold_usd,
                        now_ms,
                    )
                    .await;
                Ok((
                    (tid, Outcome::DeniedBudget, ReserveResponse::Deny(d)),
                    false,
                ))
            }
        }
    }

    /// The hold does not fit the tenant's budget: fire the `exhausted` alert
    /// (once per period) and say so Bedrock-style.
    pub(crate) async fn budget_exhausted(
        &self,
        tid: &str,
        period: String,
        request_id: &str,
        (available, spent, budget): (Decimal, Decimal, Decimal),
        hold_usd: Decimal,
        now_ms: i64,
    ) -> Denial {
        self.metrics.remaining(tid, available);
        self.fire(AlertRecord {
            tenant_id: tid.to_string(),
            period,
            scope: crate::store::SCOPE_TENANT.to_string(),
            kind: AlertKind::Exhausted,
            threshold: None,
            fired_at_ms: now_ms,
            spent_usd: spent,
            budget_usd: budget,
            request_id: Some(request_id.to_string()),
            cost_usd: None,
        })
        .await;
        deny(
            402,
            "BudgetExceededException",
            format!(
                "Budget exhausted for tenant {tid}: available ${}, this request needs up to ${}",
                available.normalize(),
                hold_usd.normalize()
            ),
        )
    }

    /// Records a zero hold for a request the gateway forwarded without one
    /// (`failure_mode: open`), so the commit that follows charges it like any
    /// other. Identity, model and price are checked as at reserve; budget and rate
    /// limits are not: the request was already served. False when it cannot be
    /// attributed (the commit is then reported as unknown).
    async fn admit_unreserved(&self, request_id: &str, req: &ReserveRequest) -> Result<bool> {
        if req.request_id != request_id {
            return Err(Error::invalid(
                "unreserved.request_id must match the commit's request_id",
            ));
        }
        if self.store.get_hold(request_id).await?.is_some() {
            return Ok(true);
        }
        let (tenant, _, response) = self
            .reserve_inner(req.clone(), Admission::Unreserved)
            .await?;
        match response {
            ReserveResponse::Allow(_) | ReserveResponse::Lease(_) => {
                tracing::warn!(request_id, tenant = %tenant, "charging a request forwarded without a hold (failure_mode open)");
                Ok(true)
            }
            ReserveResponse::Deny(d) => {
                tracing::warn!(request_id, status = d.status, error = %d.error_type, message = %d.message,
                    "cannot attribute a request forwarded without a hold; not charged");
                Ok(false)
            }
        }
    }

    fn replay(&self, tenant_id: &str, existing: &Hold) -> (String, Outcome, ReserveResponse) {
        if existing.tenant_id == tenant_id {
            (
                tenant_id.to_string(),
                Outcome::Approved,
                ReserveResponse::Allow(existing.reservation()),
            )
        } else {
            (
                tenant_id.to_string(),
                Outcome::DeniedAuth,
                ReserveResponse::Deny(deny(
                    400,
                    "ValidationException",
                    format!("request id {} is already in use", existing.request_id),
                )),
            )
        }
    }

    /// The tenant's profile ARN for (application, model), else for (no application, model).
    pub(crate) async fn profile_for(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model_id: &str,
    ) -> Result<Option<String>> {
        let profiles = self.store.list_profiles(tenant_id).await?;
        let find = |app: Option<&str>| {
            profiles
                .iter()
                .find(|p| p.model_id == model_id && p.application_id.as_deref() == app)
                .map(|p| p.arn.clone())
        };
        Ok(application_id
            .and_then(|a| find(Some(a)))
            .or_else(|| find(None)))
    }

    pub async fn commit(&self, batch: CommitBatch) -> Result<CommitResponse> {
        if batch.commits.len() > MAX_COMMIT_BATCH {
            return Err(Error::invalid(format!(
                "commits: at most {MAX_COMMIT_BATCH} per batch"
            )));
        }
        let started = Instant::now();
        let now_ms = to_millis(self.clock.now());
        // Requests forwarded without a hold get their zero hold first (rare:
        // `failure_mode: open`); the rest are written together, so the store's
        // group commit makes the whole batch one transaction and one fsync.
        let mut attributable = Vec::with_capacity(batch.commits.len());
        for c in &batch.commits {
            attributable.push(match &c.unreserved {
                Some(req) => self.admit_unreserved(&c.request_id, req).await?,
                None => true,
            });
        }
        let stored = self
            .store_commits(
                batch
                    .commits
                    .iter()
                    .zip(&attributable)
                    .filter(|(_, ok)| **ok)
                    .map(|(c, _)| c),
                now_ms,
            )
            .await;
        let mut stored = stored.into_iter();
        let mut results = Vec::with_capacity(batch.commits.len());
        // A failed write fails the batch (the gateway retries it whole, and the
        // written ones answer `duplicate`), but only after the written ones had
        // their metrics and alerts: a retry would not give them a second chance.
        let mut failed = None;
        for (c, ok) in batch.commits.into_iter().zip(attributable) {
            let (outcome, cost_usd) = if !ok {
                (CommitOutcome::UnknownRequest, None)
            } else {
                match stored.next() {
                    Some(Ok(applied)) => self.after_commit(&c, applied, now_ms).await?,
                    Some(Err(e)) => {
                        self.count_store_error("commit", &e);
                        failed.get_or_insert(e);
                        continue;
                    }
                    None => return Err(Error::Internal("commit result missing".into())),
                }
            };
            results.push(CommitResult {
                request_id: c.request_id,
                outcome,
                cost_usd,
            });
        }
        self.metrics.observe_commit(started.elapsed().as_secs_f64());
        match failed {
            Some(e) => Err(e),
            None => Ok(CommitResponse { results }),
        }
    }

    /// The writes of a batch's commits, results in their order. Leased requests
    /// (capped here, with the limits the gateway admitted them with) go to the
    /// store together, so it can charge one lease's commits at once; held ones
    /// (the store caps them with their hold's) alongside.
    async fn store_commits<'a>(
        &self,
        commits: impl Iterator<Item = &'a Commit>,
        now_ms: i64,
    ) -> Vec<Result<CommitApplied>> {
        let commits: Vec<&Commit> = commits.collect();
        // Positions in `commits` of the leased ones and of the held ones.
        let mut leased_at = Vec::new();
        let mut leased = Vec::new();
        let mut held = Vec::new();
        for (i, c) in commits.iter().enumerate() {
            match &c.lease {
                Some(la) => {
                    let (usage, capped) = ledger::cap_usage(
                        &c.usage,
                        c.estimated,
                        la.max_output_tokens,
                        la.input_tokens_estimate,
                    );
                    leased_at.push(i);
                    leased.push(crate::store::LeasedCommit {
                        request_id: c.request_id.clone(),
                        lease_id: la.lease_id.clone(),
                        usage,
                        estimated: c.estimated,
                        capped,
                        hold_usd: la.hold_usd,
                        attribution: la.attribution.clone(),
                    });
                }
                None => held.push(i),
            }
        }
        let (leased_results, held_results) = tokio::join!(
            self.store.commit_leased_batch(&leased, now_ms),
            futures_util::future::join_all(held.iter().map(|&i| {
                let c = commits[i];
                self.store
                    .commit(&c.request_id, &c.usage, c.estimated, now_ms)
            }))
        );
        let mut out: Vec<Option<Result<CommitApplied>>> = commits.iter().map(|_| None).collect();
        for (i, r) in leased_at.into_iter().zip(leased_results) {
            out[i] = Some(r);
        }
        for (i, r) in held.into_iter().zip(held_results) {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("commit result missing".into()))))
            .collect()
    }

    /// Metrics, EMF, rate buckets and alerts after a commit was written.
    async fn after_commit(
        &self,
        c: &Commit,
        applied: CommitApplied,
        now_ms: i64,
    ) -> Result<(CommitOutcome, Option<Decimal>)> {
        Ok(match applied {
            CommitApplied::Unknown => (CommitOutcome::UnknownRequest, None),
            CommitApplied::Duplicate { cost } => (CommitOutcome::Duplicate, cost),
            CommitApplied::Committed {
                cost,
                hold,
                totals,
                capped,
                usage,
                scopes,
            } => {
                if capped {
                    self.metrics.capped(&hold.tenant_id);
                    tracing::warn!(request_id = %c.request_id, tenant = %hold.tenant_id,
                        reported = ?c.usage, "usage above what the request could use was capped");
                }
                self.metrics.committed(
                    &hold.tenant_id,
                    &hold.model_id,
                    &hold.attribution,
                    &usage,
                    cost,
                );
                let u = &usage;
                self.rate_limits
                    .settle(
                        &c.request_id,
                        u.input_tokens
                            .saturating_add(u.output_tokens)
                            .saturating_add(u.cache_read_input_tokens)
                            .saturating_add(u.cache_write_input_tokens),
                    )
                    .await;
                if let Some(emf) = &self.emf {
                    let a = &hold.attribution;
                    emf.record(&EmfRecord {
                        timestamp_ms: now_ms,
                        request_id: &c.request_id,
                        tenant_id: &hold.tenant_id,
                        application_id: a.application_id.as_deref(),
                        model_id: &hold.model_id,
                        cost_center: a.cost_center.as_deref(),
                        environment: a.environment.as_deref(),
                        cost_usd: cost,
                        input_tokens: u.input_tokens,
                        output_tokens: u.output_tokens,
                    });
                }
                self.metrics.remaining(&hold.tenant_id, totals.available());
                let cfg = self.store.get_tenant(&hold.tenant_id).await?;
                let thresholds = cfg
                    .as_ref()
                    .map(TenantConfig::thresholds)
                    .unwrap_or_else(|| vec![Decimal::ONE]);
                let alert = |scope: String,
                             (kind, threshold): (AlertKind, Option<Decimal>),
                             spent: Decimal,
                             budget: Decimal| AlertRecord {
                    tenant_id: hold.tenant_id.clone(),
                    period: hold.period.clone(),
                    scope,
                    kind,
                    threshold,
                    fired_at_ms: now_ms,
                    spent_usd: spent,
                    budget_usd: budget,
                    request_id: Some(c.request_id.clone()),
                    cost_usd: Some(cost),
                };
                let mut fired = Vec::new();
                for k in ledger::alerts_after_commit(
                    totals.counters.spent_usd,
                    totals.budget_usd,
                    &thresholds,
                    cost,
                    self.settings.high_cost_threshold_usd,
                ) {
                    fired.push(alert(
                        crate::store::SCOPE_TENANT.to_string(),
                        k,
                        totals.counters.spent_usd,
                        totals.budget_usd,
                    ));
                }
                // Each scoped budget the hold was admitted under, as its row
                // stands after the commit.
                for st in &scopes {
                    self.metrics
                        .scope_remaining(&hold.tenant_id, &st.scope, st.available());
                    for k in ledger::budget_alerts(st.spent_usd, st.scope.budget_usd, &thresholds) {
                        fired.push(alert(
                            st.scope.scope(),
                            k,
                            st.spent_usd,
                            st.scope.budget_usd,
                        ));
                    }
                }
                for a in fired {
                    self.fire(a).await;
                }
                (CommitOutcome::Committed, Some(cost))
            }
        })
    }

    pub async fn release(&self, req: ReleaseRequest) -> Result<ReleaseResponse> {
        let now_ms = to_millis(self.clock.now());
        let released = match self.store.release(&req.request_id, now_ms).await {
            Ok(r) => r,
            Err(e) => {
                self.count_store_error("release", &e);
                return Err(e);
            }
        };
        if released {
            self.rate_limits.refund(&req.request_id).await;
            tracing::debug!(request_id = %req.request_id, reason = %req.reason, "hold released");
        }
        Ok(ReleaseResponse { released })
    }

    /// Expires holds past their TTL; returns how many.
    pub async fn sweep(&self) -> Result<u64> {
        let now = self.clock.now();
        let ttl = time::Duration::seconds(
            i64::try_from(self.settings.hold_ttl_secs).unwrap_or(i64::MAX / 2_000_000_000),
        );
        let max_age = ttl + time::Duration::minutes(1);
        if let Err(e) = self
            .rate_limits
            .prune(
                now,
                i64::try_from(max_age.whole_milliseconds()).unwrap_or(i64::MAX),
            )
            .await
        {
            self.count_store_error("sweep", &e);
            tracing::warn!(error = %e, "could not prune old rate-limit windows");
        }
        self.flush_key_use().await;
        let n = match self.store.expire_holds(to_millis(now)).await {
            Ok(n) => n,
            Err(e) => {
                self.count_store_error("sweep", &e);
                return Err(e);
            }
        };
        if n > 0 {
            tracing::info!(expired = n, "expired stale holds");
        }
        Ok(n)
    }

    /// Writes the keys' last use gathered since the previous flush (at each
    /// sweep and at shutdown); a failed write is kept for the next one.
    pub async fn flush_key_use(&self) {
        let used = self.key_use.take();
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.store.touch_keys(&used).await {
            self.count_store_error("touch_keys", &e);
            tracing::warn!(error = %e, keys = used.len(), "could not record keys' last use; will retry");
            self.key_use.restore(used);
        }
    }

    /// Counts failures of the ledger store (not the caller's mistakes).
    fn count_store_error(&self, op: &'static str, e: &Error) {
        if !matches!(
            e,
            Error::Invalid(_) | Error::NotFound(_) | Error::Conflict(_) | Error::Unauthorized(_)
        ) {
            self.metrics.store_error(op);
        }
    }

    /// Records an alert once per (tenant, period, scope, kind, threshold) with
    /// its outbox entries, logs it, and starts a delivery pass.
    async fn fire(&self, alert: AlertRecord) {
        let key = (
            alert.tenant_id.clone(),
            alert.period.clone(),
            alert.scope.clone(),
            alert.kind,
            alert.threshold_key(),
        );
        let known = |fired: &std::collections::HashSet<_>| fired.contains(&key);
        if known(&self.fired.lock().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let (event, payload) = crate::alerts::payload(&alert);
        let targets = self.alerter.targets();
        match self.store.record_alert(&alert, &payload, &targets).await {
            Ok(true) => {
                self.metrics.alert(alert.kind.as_str());
                self.alerter.log(&event);
                if !targets.is_empty() {
                    // Deliver now rather than at the worker's next poll; the
                    // entries are in the store already, so a failure here is
                    // the worker's to retry.
                    let (alerter, store, clock, metrics) = (
                        self.alerter.clone(),
                        self.store.clone(),
                        self.clock.clone(),
                        self.metrics.clone(),
                    );
                    tokio::spawn(async move {
                        if let Err(e) = alerter.deliver_due(&store, &clock, &metrics).await {
                            tracing::warn!(error = %e, "alert delivery pass failed");
                        }
                    });
                }
            }
            Ok(false) => {}
            Err(e) => {
                tracing::error!(error = %e, "could not record alert");
                return;
            }
        }
        let mut fired = self.fired.lock().unwrap_or_else(|e| e.into_inner());
        // Bounded: forgetting only costs one more (idempotent) store write.
        if fired.len() >= 100_000 {
            fired.clear();
        }
        fired.insert(key);
    }

    /// Verifies a client's SigV4 signature with the secret this sidecar issued.
    /// The outer error is a failure of the sidecar; the inner one a denial.
    async fn verify_sigv4(
        &self,
        proof: &SigV4Proof,
        now: time::OffsetDateTime,
        admission: Admission,
    ) -> Result<std::result::Result<SigV4CredentialRecord, Denial>> {
        // An unreserved commit arrives after the response, possibly long after the
        // signature was made; the gateway checked its age when it forwarded it.
        let now = match admission {
            Admission::Checked => now,
            Admission::Unreserved => proof
                .headers
                .iter()
                .find(|(k, _)| k == "x-amz-date")
                .and_then(|(_, v)| sigv4::parse_amz_date(v.trim()))
                .unwrap_or(now),
        };
        let auth_value = proof
            .headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
            .map(|(_, v)| v.as_str())
            .unwrap_or_default();
        let auth = match sigv4::AuthHeader::parse(auth_value) {
            Ok(a) => a,
            Err(e) => {
                return Ok(Err(deny(
                    403,
                    "IncompleteSignatureException",
                    e.to_string(),
                )))
            }
        };
        let Some(record) = self
            .store
            .find_sigv4_credential(&auth.access_key_id)
            .await?
        else {
            return Ok(Err(deny(403, "UnrecognizedClientException", INVALID_TOKEN)));
        };
        let Some(sealing) = &self.settings.sealing else {
            return Err(Error::Internal(format!(
                "SigV4 credential {} presented but {} is not set on the sidecar",
                record.access_key_id,
                crate::seal::SECRET_KEY_ENV
            )));
        };
        let creds = sigv4::Credentials {
            access_key_id: record.access_key_id.clone(),
            secret_access_key: sealing.open(&record.access_key_id, &record.sealed_secret)?,
            // Clients sign for the region they think Bedrock is in; the gateway
            // re-signs for its own, so any region is accepted here.
            region: auth.region.clone(),
            service: "bedrock".into(),
        };
        let req = sigv4::SignedRequest {
            method: &proof.method,
            raw_path: &proof.raw_path,
            raw_query: proof.raw_query.as_deref(),
            headers: &proof.headers,
            payload_sha256: &proof.payload_sha256,
        };
        Ok(match sigv4::verify(&req, &creds, now) {
            Ok(_) => Ok(record),
            Err(e) => Err(deny(403, e.error_type(), e.to_string())),
        })
    }
}
