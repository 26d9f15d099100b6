//! Budget leases, the sidecar's side (DESIGN §4): grant a gateway worker budget
//! it admits requests from locally, renew it on the worker's schedule, and
//! re-check at every renewal that what it was granted for still holds.
//!
//! A lease is only granted where local admission is exactly as strict as a
//! per-request reserve: bearer, JWT and trusted-header credentials (a SigV4
//! signature covers each request), tenants without RPM/TPM limits (those
//! buckets live in the sidecar) and models without a model budget. Everything
//! else keeps one hold per request.

use crate::clock::to_millis;
use crate::dataplane_auth::{AcceptedCredentials, CredentialKind};
use crate::error::{Error, Result};
use crate::ledger::{self, LeaseSizing};
use crate::metrics::Outcome;
use crate::pricing::{self, ModelPrice};
use crate::service::{deny, Service};
use crate::store::{HoldState, LeaseOutcome, LeaseRecord, RenewApplied, TenantConfig};
use rust_decimal::Decimal;
use tollgate_wire::api::{
    Attribution, Credential, Denial, LeaseGrant, LeaseRenewal, LeaseTerms, LeaseWant, RenewBatch,
    RenewOutcome, RenewResponse, RenewResult, ReserveRequest, ReserveResponse,
};

/// Tunables (from the command line).
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Grant leases at all (`--no-leases` turns every reserve into a hold).
    pub enabled: bool,
    /// The sidecar expires a lease this long after its grant or last renewal.
    pub ttl_secs: u64,
    /// The largest share of a tenant's available budget one grant may take.
    pub max_share: Decimal,
    /// The credential types a lease may still be renewed under: the sidecar's
    /// `--accept-credentials`, so narrowing it closes the leases of the types
    /// it drops at their next renewal (filled in from the data plane's).
    pub accepted: AcceptedCredentials,
}

impl Default for LeaseSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_secs: 30,
            max_share: Decimal::new(25, 2),
            accepted: AcceptedCredentials::all(),
        }
    }
}

/// Largest renewal batch accepted in one call.
pub const MAX_RENEW_BATCH: usize = 1000;

/// A reserve that asked for a lease, resolved.
pub(crate) struct LeaseAsk<'a> {
    pub req: &'a ReserveRequest,
    pub want: LeaseWant,
    pub tenant: &'a TenantConfig,
    pub credential_ref: String,
    /// The credential's own expiry: the lease ends by then.
    pub credential_expires_ms: Option<i64>,
    pub model_id: String,
    pub profile_arn: Option<String>,
    pub price: &'a ModelPrice,
    pub max_out: u64,
    pub attribution: Attribution,
}

/// Rate limits and budgets inside the tenant's (model, application, user) are
/// checked per request by the sidecar, so requests under one are never leased.
/// A lease serves one application, so only its budget matters; it serves any
/// user, so a tenant with user budgets is never leased.
fn limits_allow_leases(
    tenant: &TenantConfig,
    model_id: &str,
    application_id: Option<&str>,
) -> bool {
    !crate::rate_limits::limited(tenant, model_id)
        && !tenant.model_budgets.contains_key(model_id)
        && tenant.application_budget(application_id).is_none()
        && !tenant.has_user_budgets()
}

fn new_lease_id() -> String {
    format!("lease-{}", crate::keys::generate_key_id())
}

impl Service {
    /// Whether local admission would be as strict as a per-request reserve.
    pub(crate) fn lease_eligible(
        &self,
        tenant: &TenantConfig,
        model_id: &str,
        application_id: Option<&str>,
        credential: &Credential,
    ) -> bool {
        self.settings.leases.enabled
            && self.store.supports_leases()
            && matches!(
                credential,
                Credential::Bearer { .. }
                    | Credential::Jwt { .. }
                    | Credential::TrustedHeader { .. }
            )
            && limits_allow_leases(tenant, model_id, application_id)
    }

    fn terms(
        &self,
        tenant: &TenantConfig,
        application_id: Option<String>,
        model_id: String,
        target_model: String,
        price: &ModelPrice,
    ) -> LeaseTerms {
        LeaseTerms {
            tenant_id: tenant.tenant_id.clone(),
            application_id,
            model_id,
            target_model,
            rates: price.rates(),
            default_max_output_tokens: self.settings.default_max_output_tokens,
            max_tokens_cap: tenant.max_tokens_cap,
        }
    }

    fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.leases.ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// A lease's expiry from `now_ms`: the configured TTL, cut short by the
    /// credential's expiry so that no gateway admits with an expired key.
    fn lease_expiry(&self, now_ms: i64, credential_expires_ms: Option<i64>) -> i64 {
        let ttl_end = now_ms.saturating_add(self.lease_ttl_ms());
        credential_expires_ms.map_or(ttl_end, |e| e.clamp(now_ms, ttl_end))
    }

    /// Grants a lease that holds at least the asking request's hold.
    pub(crate) async fn grant_lease(
        &self,
        ask: LeaseAsk<'_>,
        now: time::OffsetDateTime,
    ) -> Result<(String, Outcome, ReserveResponse)> {
        let tid = ask.tenant.tenant_id.clone();
        let first_hold = ask
            .price
            .rates()
            .hold(ask.req.input_tokens_estimate, ask.max_out)
            .map_err(|_| Error::invalid("input_tokens_estimate is too large"))?;
        let target_model = match ask.profile_arn {
            Some(arn) => arn,
            None => self
                .profile_for(
                    &tid,
                    ask.attribution.application_id.as_deref(),
                    &ask.model_id,
                )
                .await?
                .unwrap_or_else(|| ask.model_id.clone()),
        };
        let period = ledger::period_key(ask.tenant.reset_cycle, now);
        let now_ms = to_millis(now);
        let terms = self.terms(
            ask.tenant,
            ask.attribution.application_id.clone(),
            ask.model_id,
            target_model,
            ask.price,
        );
        let record = LeaseRecord {
            lease_id: new_lease_id(),
            period: period.clone(),
            terms,
            credential_ref: ask.credential_ref,
            requested_model: ask.req.model.clone(),
            reserved_usd: Decimal::ZERO,
            seq: 0,
            last_granted_usd: Decimal::ZERO,
            created_at_ms: now_ms,
            expires_at_ms: self.lease_expiry(now_ms, ask.credential_expires_ms),
            state: HoldState::Open,
        };
        let ttl_ms = u64::try_from(record.expires_at_ms - now_ms).unwrap_or(0);
        let sizing = LeaseSizing {
            want: first_hold * Decimal::from(ask.want.holds.max(1)),
            min: first_hold,
            fraction: self.settings.leases.max_share,
        };
        match self
            .store
            .grant_lease(&record, &sizing, ask.tenant.budget_usd)
            .await?
        {
            LeaseOutcome::Granted { granted, remaining } => {
                self.metrics.lease("granted");
                self.metrics.remaining(&tid, remaining);
                tracing::debug!(lease = %record.lease_id, tenant = %tid, %granted, "lease granted");
                Ok((
                    tid,
                    Outcome::Approved,
                    ReserveResponse::Lease(LeaseGrant {
                        lease_id: record.lease_id,
                        terms: record.terms,
                        granted_usd: granted,
                        ttl_ms,
                        budget_remaining_usd: remaining,
                    }),
                ))
            }
            LeaseOutcome::Insufficient {
                available,
                spent,
                budget,
            } => {
                let d = self
                    .budget_exhausted(
                        &tid,
                        period,
                        &ask.req.request_id,
                        (available, spent, budget),
                        first_hold,
                        now_ms,
                    )
                    .await;
                Ok((tid, Outcome::DeniedBudget, ReserveResponse::Deny(d)))
            }
        }
    }

    /// `POST /v1/leases/renew`.
    pub async fn renew_leases(&self, batch: RenewBatch) -> Result<RenewResponse> {
        if batch.leases.len() > MAX_RENEW_BATCH {
            return Err(Error::invalid(format!(
                "leases: at most {MAX_RENEW_BATCH} per batch"
            )));
        }
        let mut results = Vec::with_capacity(batch.leases.len());
        for r in batch.leases {
            let outcome = self.renew_one(&r).await.inspect_err(|e| {
                if !matches!(e, Error::Invalid(_)) {
                    self.metrics.store_error("reserve");
                }
            })?;
            self.metrics.lease(match outcome {
                RenewOutcome::Renewed { .. } => "renewed",
                RenewOutcome::Closed { .. } => "closed",
            });
            results.push(RenewResult {
                lease_id: r.lease_id,
                outcome,
            });
        }
        Ok(RenewResponse { results })
    }

    async fn renew_one(&self, r: &LeaseRenewal) -> Result<RenewOutcome> {
        if r.return_usd.is_sign_negative() || r.want_usd.is_sign_negative() {
            return Err(Error::invalid(
                "return_usd and want_usd must not be negative",
            ));
        }
        let Some(lease) = self.store.get_lease(&r.lease_id).await? else {
            return Ok(RenewOutcome::Closed {
                reason: "unknown lease".into(),
            });
        };
        let tenant = self.store.get_tenant(&lease.terms.tenant_id).await?;
        let now = self.clock.now();
        let now_ms = to_millis(now);
        let period = match &tenant {
            Some(t) => ledger::period_key(t.reset_cycle, now),
            None => lease.period.clone(),
        };
        // Re-validate: a revoked key or a changed configuration closes the
        // lease; requests it already admitted still commit against it.
        let (invalid, credential_expires_ms) = match &tenant {
            None => (Some("tenant deleted".to_string()), None),
            Some(t) => match self.lease_validity(&lease, t, now_ms).await? {
                Ok(expires) => (None, expires),
                Err(reason) => (Some(reason), None),
            },
        };
        let expires_at_ms = self.lease_expiry(now_ms, credential_expires_ms);
        let sizing = LeaseSizing {
            want: if invalid.is_some() {
                Decimal::ZERO
            } else {
                r.want_usd
            },
            min: r.min_usd,
            fraction: self.settings.leases.max_share,
        };
        let applied = self
            .store
            .renew_lease(
                &r.lease_id,
                r.seq,
                r.return_usd,
                &sizing,
                &period,
                now_ms,
                expires_at_ms,
            )
            .await?;
        Ok(match (applied, invalid) {
            (RenewApplied::Closed { reason }, _) | (RenewApplied::Renewed { .. }, Some(reason)) => {
                tracing::info!(lease = %r.lease_id, tenant = %lease.terms.tenant_id, %reason, "lease closed");
                RenewOutcome::Closed { reason }
            }
            (RenewApplied::Renewed { granted, remaining }, None) => {
                self.metrics.remaining(&lease.terms.tenant_id, remaining);
                if granted.is_zero() && r.min_usd > Decimal::ZERO {
                    // Not even one more request fits: the tenant is exhausted.
                    if let Some(t) = &tenant {
                        let b = self
                            .store
                            .balance(&t.tenant_id, &period, t.budget_usd)
                            .await?;
                        let totals = &b.totals;
                        self.budget_exhausted(
                            &t.tenant_id,
                            period.clone(),
                            &r.lease_id,
                            (
                                totals.available(),
                                totals.counters.spent_usd,
                                totals.budget_usd,
                            ),
                            r.min_usd,
                            now_ms,
                        )
                        .await;
                    }
                }
                RenewOutcome::Renewed {
                    granted_usd: granted,
                    ttl_ms: u64::try_from(expires_at_ms - now_ms).unwrap_or(0),
                    budget_remaining_usd: remaining,
                }
            }
        })
    }

    /// Whether a lease may still admit, and until when its credential is
    /// valid; or why not: its key was revoked or expired, or its terms are not
    /// what a reserve would resolve now (tenant, model, price, profile).
    async fn lease_validity(
        &self,
        lease: &LeaseRecord,
        tenant: &TenantConfig,
        now_ms: i64,
    ) -> Result<std::result::Result<Option<i64>, String>> {
        if !tenant.active {
            return Ok(Err(format!("tenant {} is inactive", tenant.tenant_id)));
        }
        if let Some(kind) = self.credential_refused(&lease.credential_ref) {
            return Ok(Err(format!(
                "credential type {} is not enabled on this sidecar",
                kind.as_str()
            )));
        }
        let mut credential_expires_ms = None;
        let key_application = match lease.credential_ref.split_once(':') {
            Some(("key", key_id)) => {
                let keys = self.store.list_keys(&tenant.tenant_id).await?;
                match keys.into_iter().find(|k| k.key_id == key_id && !k.revoked) {
                    Some(k) if k.expired(now_ms) => return Ok(Err("key expired".into())),
                    Some(k) => {
                        // A renewal means the key is in use on some gateway.
                        self.key_use.note(&k.key_hash, now_ms);
                        credential_expires_ms = k.expires_at_ms;
                        k.application_id
                    }
                    None => return Ok(Err("key revoked".into())),
                }
            }
            _ => None,
        };
        let (model_id, profile_arn, price) =
            match self.resolve_model(tenant, &lease.requested_model).await? {
                Ok(m) => m,
                Err(d) => return Ok(Err(d.message)),
            };
        let application_id = key_application.or_else(|| lease.terms.application_id.clone());
        if !limits_allow_leases(tenant, &model_id, application_id.as_deref()) {
            return Ok(Err(
                "tenant now has rate limits or a model, application or user budget".into(),
            ));
        }
        let target_model = match profile_arn {
            Some(arn) => arn,
            None => self
                .profile_for(&tenant.tenant_id, application_id.as_deref(), &model_id)
                .await?
                .unwrap_or_else(|| model_id.clone()),
        };
        let now_terms = self.terms(tenant, application_id, model_id, target_model, &price);
        Ok(if now_terms == lease.terms {
            Ok(credential_expires_ms)
        } else {
            Err("tenant configuration or prices changed".into())
        })
    }

    /// The credential type of a lease's `credential_ref` when this sidecar no
    /// longer honours it. `tenant:` is how leases granted before the JWT and
    /// trusted-header refs were told apart named either.
    fn credential_refused(&self, credential_ref: &str) -> Option<CredentialKind> {
        let accepted = &self.settings.leases.accepted;
        let kind = match credential_ref.split_once(':').map(|(k, _)| k) {
            Some("key") => CredentialKind::Bearer,
            Some("sigv4") => CredentialKind::Sigv4,
            Some("jwt") => CredentialKind::Jwt,
            Some("trusted_header") => CredentialKind::TrustedHeader,
            Some("tenant") if accepted.allows(CredentialKind::Jwt) => return None,
            Some("tenant") => CredentialKind::TrustedHeader,
            _ => return None,
        };
        (!accepted.allows(kind)).then_some(kind)
    }

    /// Resolves the model a client named — alias, model ID, system profile ID or
    /// one of the tenant's profile ARNs — checks the tenant may use it and finds
    /// its price: `(model_id, profile_arn, price)`, or the denial.
    pub(crate) async fn resolve_model(
        &self,
        tenant: &TenantConfig,
        named: &str,
    ) -> Result<std::result::Result<(String, Option<String>, ModelPrice), Denial>> {
        let tid = &tenant.tenant_id;
        let requested = match named.trim() {
            "" => match &tenant.default_model {
                Some(m) => m.clone(),
                None => {
                    return Ok(Err(deny(
                        400,
                        "ValidationException",
                        "The request names no model.",
                    )))
                }
            },
            m => m.to_string(),
        };
        let (model_id, profile_arn) = if pricing::is_arn(&requested) {
            let profiles = self.store.list_profiles(tid).await?;
            match profiles.into_iter().find(|p| p.arn == requested) {
                Some(p) => (p.model_id, Some(p.arn)),
                None => {
                    return Ok(Err(deny(
                        403,
                        "AccessDeniedException",
                        format!("The inference profile {requested} is not mapped to tenant {tid}."),
                    )))
                }
            }
        } else {
            (self.resolve_alias(&requested).await?, None)
        };
        if !tenant.allowed_models.is_empty() {
            let (_, base) = pricing::split_geo_prefix(&model_id);
            let mut allowed = false;
            for entry in &tenant.allowed_models {
                let resolved = self.resolve_alias(entry).await?;
                if resolved == model_id || resolved == base {
                    allowed = true;
                    break;
                }
            }
            if !allowed {
                return Ok(Err(deny(
                    403,
                    "AccessDeniedException",
                    format!("Tenant {tid} is not allowed to use model {model_id}."),
                )));
            }
        }
        let Some(price) = self.price_for(&model_id).await? else {
            return Ok(Err(deny(
                400,
                "ValidationException",
                format!("no price configured for model {model_id}"),
            )));
        };
        Ok(Ok((model_id, profile_arn, price)))
    }
}
