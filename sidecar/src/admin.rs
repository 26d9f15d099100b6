//! The admin operations: tenants, bearer keys, SigV4 credentials, profiles and
//! aliases, validated before anything is written. The data plane (reserve,
//! commit, leases) is [`crate::service::Service`]; both share the store.

use crate::clock::{to_millis, Clock};
use crate::error::{Error, Result};
use crate::keys;
use crate::ledger::{self, ResetCycle};
use crate::openapi::DecimalInput;
use crate::pricing::{self, de_decimal, de_opt_decimal};
use crate::service::validate_id;
use crate::store::{
    AlertRecord, ApiKeyRecord, Balance, Profile, SigV4CredentialRecord, Store, TenantConfig,
    TenantDeletion,
};
use rust_decimal::Decimal;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// `PUT /v1/tenants/{tenant}` body (and a seed file's tenant entry).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantInput {
    /// Optional; must equal the tenant in the path when given.
    #[serde(default)]
    pub tenant_id: Option<String>,
    #[serde(deserialize_with = "de_decimal")]
    #[schema(value_type = DecimalInput)]
    pub budget_usd: Decimal,
    /// One fraction of the budget (0–1) at which a `threshold` alert fires:
    /// the same as `alert_thresholds` with one entry (kept for older clients;
    /// give one of the two). Default `[0.8]`.
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[schema(value_type = Option<DecimalInput>)]
    pub alert_threshold: Option<Decimal>,
    /// Fractions of the budget (1 to 10, each 0–1), e.g. `[0.5, 0.8, 0.95]`:
    /// each fires a `threshold` alert once per period, for the tenant budget
    /// and for each model budget (against that model's budget).
    #[serde(default, deserialize_with = "de_opt_decimal_list")]
    #[schema(value_type = Option<Vec<DecimalInput>>)]
    pub alert_thresholds: Option<Vec<Decimal>>,
    /// `monthly` (default), `weekly` (ISO weeks), `daily` or `none`.
    #[serde(default)]
    #[schema(value_type = Option<crate::ledger::ResetCycle>)]
    pub reset_cycle: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub default_model: Option<String>,
    #[serde(default)]
    pub max_tokens_cap: Option<u64>,
    #[serde(default)]
    pub rate_limit_rpm: Option<u32>,
    /// Tokens per minute (input estimate + max output at reserve, corrected to
    /// the actual tokens at commit).
    #[serde(default)]
    pub rate_limit_tpm: Option<u64>,
    /// Per-model budgets (USD per period) inside the tenant budget, keyed by
    /// alias or model ID (stored resolved); decimals as strings or numbers.
    #[serde(default, deserialize_with = "de_decimal_map")]
    #[schema(value_type = BTreeMap<String, DecimalInput>)]
    pub model_budgets: BTreeMap<String, Decimal>,
    /// Per-model tokens per minute, keyed by alias or model ID (stored
    /// resolved), beside the tenant-wide `rate_limit_tpm`.
    #[serde(default)]
    pub model_rate_limit_tpm: BTreeMap<String, u64>,
    /// Per-application budgets (USD per period) inside the tenant budget, keyed
    /// by application ID (a key's or credential's bound application, else the
    /// request's `x-application-id`). At most 500.
    #[serde(default, deserialize_with = "de_decimal_map")]
    #[schema(value_type = BTreeMap<String, DecimalInput>)]
    pub application_budgets: BTreeMap<String, Decimal>,
    /// Per-user budgets (USD per period) inside the tenant budget, keyed by the
    /// request's user ID (`x-user-id`, `requestMetadata.user_id`). At most 500;
    /// for more users, use `default_user_budget_usd`.
    #[serde(default, deserialize_with = "de_decimal_map")]
    #[schema(value_type = BTreeMap<String, DecimalInput>)]
    pub user_budgets: BTreeMap<String, Decimal>,
    /// The budget of every user not in `user_budgets` (requests that name a user).
    #[serde(default, deserialize_with = "de_opt_decimal")]
    #[schema(value_type = Option<DecimalInput>)]
    pub default_user_budget_usd: Option<Decimal>,
    /// Profile ARNs to map (upserted; existing mappings not listed stay).
    #[serde(default)]
    pub profiles: Vec<ProfileInput>,
    /// Existing plaintext keys to import (stored hashed; already known keys are
    /// left alone, so revoked ones stay revoked).
    #[serde(default)]
    pub keys: Vec<KeyImport>,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileInput {
    #[serde(default)]
    pub application_id: Option<String>,
    pub model: String,
    pub arn: String,
}

#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KeyImport {
    pub key: String,
    #[serde(default)]
    pub application_id: Option<String>,
}

/// A JSON list of exact decimals (strings or numbers, never through a float).
fn de_opt_decimal_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Option<Vec<Decimal>>, D::Error> {
    #[derive(Deserialize)]
    struct Exact(#[serde(deserialize_with = "de_decimal")] Decimal);
    let raw: Option<Vec<Exact>> = Deserialize::deserialize(d)?;
    Ok(raw.map(|v| v.into_iter().map(|e| e.0).collect()))
}

/// A JSON object of exact decimals (strings or numbers, never through a float).
fn de_decimal_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, Decimal>, D::Error> {
    #[derive(Deserialize)]
    struct Exact(#[serde(deserialize_with = "de_decimal")] Decimal);
    let raw: Option<BTreeMap<String, Exact>> = Deserialize::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// Everything `GET /v1/tenants/{tenant}` shows.
#[derive(Debug, Clone)]
pub struct TenantDetails {
    pub config: TenantConfig,
    pub balance: Balance,
    pub alerts: Vec<AlertRecord>,
    pub profiles: Vec<Profile>,
    pub keys: Vec<ApiKeyRecord>,
}

pub struct Admin {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Seals issued SigV4 secrets; without it SigV4 credentials cannot be issued.
    sealing: Option<crate::seal::Keyring>,
}

impl Admin {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        sealing: Option<crate::seal::Keyring>,
    ) -> Self {
        Self {
            store,
            clock,
            sealing,
        }
    }

    /// Alias → model ID (single level); anything else is returned unchanged.
    pub async fn resolve_alias(&self, name: &str) -> Result<String> {
        Ok(self
            .store
            .get_alias(name)
            .await?
            .unwrap_or_else(|| name.to_string()))
    }

    pub fn current_period(&self, cfg: &TenantConfig) -> String {
        ledger::period_key(cfg.reset_cycle, self.clock.now())
    }

    pub async fn put_tenant(&self, tenant_id: &str, input: TenantInput) -> Result<TenantConfig> {
        validate_id("tenant_id", tenant_id)?;
        if let Some(body_id) = &input.tenant_id {
            if body_id != tenant_id {
                return Err(Error::invalid(format!(
                    "tenant_id {body_id:?} in the body does not match {tenant_id:?} in the path"
                )));
            }
        }
        if input.budget_usd < Decimal::ZERO {
            return Err(Error::invalid("budget_usd must not be negative"));
        }
        let alert_thresholds = match (input.alert_threshold, &input.alert_thresholds) {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "give alert_threshold or alert_thresholds, not both",
                ))
            }
            (Some(one), None) => {
                if one < Decimal::ZERO || one > Decimal::ONE {
                    return Err(Error::invalid("alert_threshold must be between 0 and 1"));
                }
                vec![one]
            }
            (None, Some(list)) => ledger::normalize_thresholds(list).map_err(Error::invalid)?,
            (None, None) => vec![Decimal::new(8, 1)],
        };
        // The lowest threshold, for readers of the single-threshold field.
        let alert_threshold = alert_thresholds
            .iter()
            .copied()
            .min()
            .unwrap_or(Decimal::new(8, 1));
        let reset_cycle = match input.reset_cycle.as_deref() {
            None => ResetCycle::Monthly,
            Some(s) => ResetCycle::parse(s).ok_or_else(|| {
                Error::invalid(format!(
                    "reset_cycle must be monthly, weekly, daily or none, got {s:?}"
                ))
            })?,
        };
        for m in input
            .allowed_models
            .iter()
            .chain(input.default_model.iter())
        {
            pricing::validate_model_id(m)
                .map_err(|e| Error::invalid(format!("allowed_models/default_model: {e}")))?;
        }
        if input.max_tokens_cap == Some(0) {
            return Err(Error::invalid("max_tokens_cap must be at least 1"));
        }
        if input.rate_limit_rpm == Some(0) {
            return Err(Error::invalid("rate_limit_rpm must be at least 1"));
        }
        if input.rate_limit_tpm == Some(0) {
            return Err(Error::invalid("rate_limit_tpm must be at least 1"));
        }
        let default_model = match &input.default_model {
            Some(m) => Some(self.resolve_alias(m).await?),
            None => None,
        };
        let model_budgets = self
            .by_model_id("model_budgets", &input.model_budgets, |b| {
                (!b.is_sign_negative() || b.is_zero())
                    .then_some(())
                    .ok_or("must not be negative")
            })
            .await?;
        let model_rate_limit_tpm = self
            .by_model_id("model_rate_limit_tpm", &input.model_rate_limit_tpm, |n| {
                (*n > 0).then_some(()).ok_or("must be at least 1")
            })
            .await?;
        for (field, budgets) in [
            ("application_budgets", &input.application_budgets),
            ("user_budgets", &input.user_budgets),
        ] {
            check_scope_budgets(field, budgets)?;
        }
        if input
            .default_user_budget_usd
            .is_some_and(|b| b.is_sign_negative() && !b.is_zero())
        {
            return Err(Error::invalid(
                "default_user_budget_usd must not be negative",
            ));
        }
        let cfg = TenantConfig {
            tenant_id: tenant_id.to_string(),
            budget_usd: input.budget_usd,
            alert_threshold,
            alert_thresholds,
            reset_cycle,
            active: input.active.unwrap_or(true),
            allowed_models: input.allowed_models,
            default_model,
            max_tokens_cap: input.max_tokens_cap,
            rate_limit_rpm: input.rate_limit_rpm,
            rate_limit_tpm: input.rate_limit_tpm,
            model_budgets,
            model_rate_limit_tpm,
            application_budgets: input.application_budgets,
            user_budgets: input.user_budgets,
            default_user_budget_usd: input.default_user_budget_usd,
        };
        // Validate everything before writing anything.
        for p in &input.profiles {
            Self::check_profile(p)?;
        }
        for k in &input.keys {
            if k.key.len() < 16 {
                return Err(Error::invalid("keys[].key must be at least 16 characters"));
            }
            if let Some(a) = &k.application_id {
                validate_id("keys[].application_id", a)?;
            }
        }
        self.store
            .put_tenant(&cfg, &self.current_period(&cfg))
            .await?;
        for p in input.profiles {
            self.put_profile(tenant_id, p).await?;
        }
        for k in input.keys {
            self.store
                .insert_key(&ApiKeyRecord {
                    key_id: keys::generate_key_id(),
                    tenant_id: tenant_id.to_string(),
                    application_id: k.application_id,
                    key_hash: keys::hash_key(&k.key),
                    created_at_ms: to_millis(self.clock.now()),
                    revoked: false,
                    expires_at_ms: None,
                    last_used_at_ms: None,
                })
                .await?;
        }
        Ok(cfg)
    }

    fn check_profile(p: &ProfileInput) -> Result<()> {
        if let Some(a) = &p.application_id {
            validate_id("application_id", a)?;
        }
        pricing::validate_model_id(&p.model).map_err(|e| Error::invalid(format!("model: {e}")))?;
        pricing::validate_profile_arn(&p.arn).map_err(Error::invalid)?;
        Ok(())
    }

    pub async fn require_tenant(&self, tenant_id: &str) -> Result<TenantConfig> {
        self.store
            .get_tenant(tenant_id)
            .await?
            .ok_or_else(|| Error::not_found(format!("tenant {tenant_id} not found")))
    }

    pub async fn tenant_details(&self, tenant_id: &str) -> Result<TenantDetails> {
        let config = self.require_tenant(tenant_id).await?;
        let period = self.current_period(&config);
        let mut balance = self
            .store
            .balance(tenant_id, &period, config.budget_usd)
            .await?;
        balance.apply_config(&config);
        Ok(TenantDetails {
            balance,
            alerts: self.store.list_alerts(tenant_id).await?,
            profiles: self.store.list_profiles(tenant_id).await?,
            keys: self.store.list_keys(tenant_id).await?,
            config,
        })
    }

    /// A period's balance (any period, for history).
    pub async fn balance(&self, tenant_id: &str, period: &str) -> Result<Balance> {
        let config = self.require_tenant(tenant_id).await?;
        let mut balance = self
            .store
            .balance(tenant_id, period, config.budget_usd)
            .await?;
        if period == self.current_period(&config) {
            balance.apply_config(&config);
        }
        Ok(balance)
    }

    /// Issues a SigV4 credential; the secret is returned once and stored sealed.
    pub async fn issue_sigv4(
        &self,
        tenant_id: &str,
        application_id: Option<String>,
    ) -> Result<(SigV4CredentialRecord, String)> {
        self.require_tenant(tenant_id).await?;
        if let Some(a) = &application_id {
            validate_id("application_id", a)?;
        }
        let Some(sealing) = &self.sealing else {
            return Err(Error::invalid(format!(
                "SigV4 credentials need {} on the sidecar (32 bytes, e.g. `openssl rand -hex 32`) to seal secrets at rest",
                crate::seal::SECRET_KEY_ENV
            )));
        };
        let secret = keys::generate_secret_access_key();
        let access_key_id = keys::generate_access_key_id();
        let record = SigV4CredentialRecord {
            sealed_secret: sealing.seal(&access_key_id, &secret)?,
            access_key_id,
            tenant_id: tenant_id.to_string(),
            application_id,
            created_at_ms: to_millis(self.clock.now()),
            revoked: false,
        };
        if !self.store.insert_sigv4_credential(&record).await? {
            return Err(Error::Internal("access key id collision, try again".into()));
        }
        Ok((record, secret))
    }

    pub async fn revoke_sigv4(&self, tenant_id: &str, access_key_id: &str) -> Result<()> {
        let now_ms = to_millis(self.clock.now());
        if self
            .store
            .revoke_sigv4_credential(tenant_id, access_key_id, now_ms)
            .await?
        {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "SigV4 credential {access_key_id} of tenant {tenant_id} not found"
            )))
        }
    }

    pub async fn list_sigv4(&self, tenant_id: &str) -> Result<Vec<SigV4CredentialRecord>> {
        self.require_tenant(tenant_id).await?;
        self.store.list_sigv4_credentials(tenant_id).await
    }

    /// A tenant's bearer keys, revoked ones included (hashes never leave the store).
    pub async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>> {
        self.require_tenant(tenant_id).await?;
        self.store.list_keys(tenant_id).await
    }

    /// Issues a key; returns the record and the plaintext (shown once).
    pub async fn issue_key(
        &self,
        tenant_id: &str,
        application_id: Option<String>,
        expires_at_ms: Option<i64>,
    ) -> Result<(ApiKeyRecord, String)> {
        self.require_tenant(tenant_id).await?;
        if let Some(a) = &application_id {
            validate_id("application_id", a)?;
        }
        let now_ms = to_millis(self.clock.now());
        if expires_at_ms.is_some_and(|e| e <= now_ms) {
            return Err(Error::invalid("the key's expiry must be in the future"));
        }
        let key = keys::generate_key();
        let record = ApiKeyRecord {
            key_id: keys::generate_key_id(),
            tenant_id: tenant_id.to_string(),
            application_id,
            key_hash: keys::hash_key(&key),
            created_at_ms: now_ms,
            revoked: false,
            expires_at_ms,
            last_used_at_ms: None,
        };
        if !self.store.insert_key(&record).await? {
            return Err(Error::Internal("key collision, try again".into()));
        }
        Ok((record, key))
    }

    pub async fn revoke_key(&self, tenant_id: &str, key_id: &str) -> Result<()> {
        let now_ms = to_millis(self.clock.now());
        if self.store.revoke_key(tenant_id, key_id, now_ms).await? {
            Ok(())
        } else {
            Err(Error::not_found(format!(
                "key {key_id} of tenant {tenant_id} not found"
            )))
        }
    }

    pub async fn put_profile(&self, tenant_id: &str, input: ProfileInput) -> Result<Profile> {
        self.require_tenant(tenant_id).await?;
        Self::check_profile(&input)?;
        let profile = Profile {
            tenant_id: tenant_id.to_string(),
            application_id: input.application_id,
            model_id: self.resolve_alias(&input.model).await?,
            arn: input.arn,
        };
        self.store.put_profile(&profile).await?;
        Ok(profile)
    }

    /// Removes the mapping of (tenant, application, model); the model may be
    /// named by an alias, as when it was mapped.
    pub async fn delete_profile(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model: &str,
    ) -> Result<()> {
        self.require_tenant(tenant_id).await?;
        let model_id = self.resolve_alias(model).await?;
        if self
            .store
            .delete_profile(tenant_id, application_id, &model_id)
            .await?
        {
            return Ok(());
        }
        Err(Error::not_found(format!(
            "tenant {tenant_id} has no profile for {model_id}{}",
            application_id
                .map(|a| format!(" and application {a}"))
                .unwrap_or_default()
        )))
    }

    /// A per-model setting keyed as the user wrote it (alias or ID), checked
    /// with `check` and keyed by resolved model ID.
    async fn by_model_id<V: Copy>(
        &self,
        field: &str,
        input: &BTreeMap<String, V>,
        check: impl Fn(&V) -> std::result::Result<(), &'static str>,
    ) -> Result<BTreeMap<String, V>> {
        let mut out = BTreeMap::new();
        for (m, v) in input {
            pricing::validate_model_id(m).map_err(|e| Error::invalid(format!("{field}: {e}")))?;
            check(v).map_err(|why| Error::invalid(format!("{field}[{m}] {why}")))?;
            let id = self.resolve_alias(m).await?;
            if out.insert(id.clone(), *v).is_some() {
                return Err(Error::invalid(format!(
                    "{field} names model {id} twice (alias and ID?)"
                )));
            }
        }
        Ok(out)
    }

    /// See [`Store::delete_tenant`]: refused while budget is reserved for it.
    pub async fn delete_tenant(&self, tenant_id: &str) -> Result<()> {
        let now_ms = to_millis(self.clock.now());
        match self.store.delete_tenant(tenant_id, now_ms).await? {
            TenantDeletion::Deleted => {
                tracing::info!(tenant = %tenant_id, "tenant deleted; its usage history is kept");
                Ok(())
            }
            TenantDeletion::NotFound => {
                Err(Error::not_found(format!("tenant {tenant_id} not found")))
            }
            TenantDeletion::Busy { reserved_usd } => Err(Error::Conflict(format!(
                "tenant {tenant_id} still has {} USD reserved by requests in flight or gateway leases; \
                 deactivate it (active: false) so nothing new is admitted, then retry once they settle \
                 (at most the hold TTL; a lease is closed at its next renewal)",
                reserved_usd.normalize()
            ))),
        }
    }

    pub async fn delete_alias(&self, alias: &str) -> Result<()> {
        if self.store.delete_alias(alias).await? {
            return Ok(());
        }
        Err(Error::not_found(format!("no alias {alias}")))
    }

    pub async fn put_alias(&self, alias: &str, model_id: &str) -> Result<()> {
        pricing::validate_model_id(alias).map_err(|e| Error::invalid(format!("alias: {e}")))?;
        pricing::validate_model_id(model_id)
            .map_err(|e| Error::invalid(format!("model_id: {e}")))?;
        if pricing::is_arn(alias) {
            return Err(Error::invalid("alias must not be an ARN"));
        }
        self.store.put_alias(alias, model_id).await
    }
}

/// Most application or user budgets one tenant holds: the configuration is one
/// row (one DynamoDB item, at most 400 KB). Many users share
/// `default_user_budget_usd` instead.
const MAX_SCOPE_BUDGETS: usize = 500;

/// Application and user budgets: keys as the gateway passes attribution (at
/// most 256 characters of `[a-zA-Z0-9 :_@$#=/+,-.]`), amounts not negative.
fn check_scope_budgets(field: &str, budgets: &BTreeMap<String, Decimal>) -> Result<()> {
    if budgets.len() > MAX_SCOPE_BUDGETS {
        return Err(Error::invalid(format!(
            "{field} has {} entries; at most {MAX_SCOPE_BUDGETS} (use default_user_budget_usd for many users)",
            budgets.len()
        )));
    }
    for (id, budget) in budgets {
        let ok = !id.trim().is_empty()
            && id.len() <= 256
            && id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || " :_@$#=/+,-.".contains(c));
        if !ok {
            return Err(Error::invalid(format!(
                "{field}: {id:?} must be 1 to 256 characters of [a-zA-Z0-9 :_@$#=/+,-.]"
            )));
        }
        if budget.is_sign_negative() && !budget.is_zero() {
            return Err(Error::invalid(format!("{field}.{id} must not be negative")));
        }
    }
    Ok(())
}
