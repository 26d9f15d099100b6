//! A read-through, in-memory cache of the store's configuration reads.
//!
//! Every reserve looks up the key (or SigV4 credential), the tenant, aliases,
//! the price and the tenant's profiles. [`CachedStore`] wraps any [`Store`] and
//! serves those reads from memory:
//!
//! | cached read               | key                   | invalidated by (through this wrapper)      |
//! |---------------------------|-----------------------|--------------------------------------------|
//! | `get_tenant`              | tenant id             | `put_tenant` of that tenant                |
//! | `find_key`                | key hash              | `insert_key` of that hash; `revoke_key` (all keys) |
//! | `find_sigv4_credential`   | access key id         | `insert_/revoke_sigv4_credential`, `replace_sigv4_sealed_secret` of that id |
//! | `get_price_in`            | (region, model)       | `put_price_in` of that (region, model)     |
//! | `get_alias`               | alias                 | `put_alias` (all aliases)                  |
//! | `list_profiles`           | tenant id             | `put_profile` of that tenant               |
//!
//! Negative results ("not found") are cached too; errors never are.
//!
//! **Staleness bound.** A write made through this wrapper is visible to the
//! next read at once (the entry is dropped after the inner write returns, and a
//! read that raced with the write does not put its older answer back). A write
//! made elsewhere — through another sidecar sharing a DynamoDB ledger, or by
//! writing the store directly — is seen at most `ttl` after it happened (default 1 s, `--config-cache-ms`,
//! `TOLLGATE_CONFIG_CACHE_MS`; 0 disables the cache). That includes a revoked
//! key or a deactivated tenant: another sidecar may admit it for up to `ttl`.
//!
//! The ledger itself (reserve, commit, release, leases, balances, alerts,
//! usage, listings) is never cached: those methods are delegated unchanged.
//!
//! Each map holds at most [`MAX_ENTRIES`] entries and is cleared when full, so
//! made-up keys cannot grow memory without bound.

use super::{
    AlertRecord, ApiKeyRecord, Balance, CommitApplied, Hold, LeaseOutcome, LeaseRecord,
    LeasedCommit, OutboxEntry, OutboxResult, OutboxState, Profile, RateOutcome, RateTake,
    RenewApplied, ReserveOutcome, SigV4CredentialRecord, Store, TenantConfig, TenantDeletion,
    UsageRecord,
};
use crate::error::Result;
use crate::ledger::LeaseSizing;
use crate::pricing::ModelPrice;
use async_trait::async_trait;
use rust_decimal::Decimal;
use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tollgate_wire::api::Usage;

/// Default time an entry lives (`--config-cache-ms`).
pub const DEFAULT_TTL: Duration = Duration::from_secs(1);

/// Entries per map before the map is cleared.
pub const MAX_ENTRIES: usize = 100_000;

type Now = Arc<dyn Fn() -> Instant + Send + Sync>;

struct Entry<V> {
    value: V,
    expires: Instant,
}

/// One cached read: a map of entries and a generation counter that every
/// invalidation bumps, so a read that started before an invalidation does not
/// store its (possibly older) answer after it.
struct Map<K, V> {
    entries: RwLock<HashMap<K, Entry<V>>>,
    generation: AtomicU64,
    max_entries: usize,
}

impl<K: Eq + Hash, V: Clone> Map<K, V> {
    fn new(max_entries: usize) -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
            max_entries,
        }
    }

    fn get<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        entries
            .get(key)
            .filter(|e| e.expires > now)
            .map(|e| e.value.clone())
    }

    /// The generation to pass to [`Map::insert`]; read it before asking the
    /// inner store.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn insert(&self, key: K, value: V, expires: Instant, seen: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != seen {
            return;
        }
        if entries.len() >= self.max_entries {
            entries.clear();
        }
        entries.insert(key, Entry { value, expires });
    }

    fn invalidate<Q>(&self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.remove(key);
    }

    fn clear(&self) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        self.generation.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries.read().unwrap_or_else(|e| e.into_inner()).len()
    }
}

/// A [`Store`] that serves configuration reads from memory (see the module
/// documentation for what is cached and how stale it may be).
pub struct CachedStore {
    inner: Arc<dyn Store>,
    ttl: Duration,
    now: Now,
    tenants: Map<String, Option<TenantConfig>>,
    keys: Map<String, Option<ApiKeyRecord>>,
    sigv4: Map<String, Option<SigV4CredentialRecord>>,
    prices: Map<(String, String), Option<ModelPrice>>,
    aliases: Map<String, Option<String>>,
    profiles: Map<String, Vec<Profile>>,
}

impl CachedStore {
    pub fn new(inner: Arc<dyn Store>, ttl: Duration) -> Self {
        Self::with_limits(inner, ttl, MAX_ENTRIES, Arc::new(Instant::now))
    }

    fn with_limits(inner: Arc<dyn Store>, ttl: Duration, max_entries: usize, now: Now) -> Self {
        Self {
            inner,
            ttl,
            now,
            tenants: Map::new(max_entries),
            keys: Map::new(max_entries),
            sigv4: Map::new(max_entries),
            prices: Map::new(max_entries),
            aliases: Map::new(max_entries),
            profiles: Map::new(max_entries),
        }
    }

    /// `inner` behind a cache of `ttl`, or `inner` itself when `ttl` is zero.
    pub fn wrap(inner: Arc<dyn Store>, ttl: Duration) -> Arc<dyn Store> {
        if ttl.is_zero() {
            inner
        } else {
            Arc::new(Self::new(inner, ttl))
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn expiry(&self) -> Instant {
        (self.now)() + self.ttl
    }
}

/// Serves `$key` from `$map`, else asks `$fetch` and caches an `Ok` answer.
macro_rules! cached {
    ($self:ident, $map:ident, $lookup:expr, $owned:expr, $fetch:expr) => {{
        if let Some(v) = $self.$map.get($lookup, ($self.now)()) {
            return Ok(v);
        }
        let seen = $self.$map.generation();
        let v = $fetch.await?;
        $self.$map.insert($owned, v.clone(), $self.expiry(), seen);
        Ok(v)
    }};
}

#[async_trait]
impl Store for CachedStore {
    // --- configuration (cached) ------------------------------------------------
    async fn put_tenant(&self, cfg: &TenantConfig, current_period: &str) -> Result<()> {
        let r = self.inner.put_tenant(cfg, current_period).await;
        self.tenants.invalidate(cfg.tenant_id.as_str());
        r
    }

    async fn delete_tenant(&self, tenant_id: &str, now_ms: i64) -> Result<TenantDeletion> {
        let r = self.inner.delete_tenant(tenant_id, now_ms).await;
        self.tenants.invalidate(tenant_id);
        self.profiles.invalidate(tenant_id);
        // Its credentials were revoked; the caches are by hash and access key
        // id: drop them all (deletions are rare).
        self.keys.clear();
        self.sigv4.clear();
        r
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantConfig>> {
        cached!(
            self,
            tenants,
            tenant_id,
            tenant_id.to_string(),
            self.inner.get_tenant(tenant_id)
        )
    }

    async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
        self.inner.list_tenants().await
    }

    async fn check_ready(&self) -> Result<()> {
        self.inner.check_ready().await
    }

    fn pricing_region(&self) -> &str {
        self.inner.pricing_region()
    }

    async fn put_price_in(&self, region: &str, price: &ModelPrice) -> Result<()> {
        let r = self.inner.put_price_in(region, price).await;
        self.prices
            .invalidate(&(region.to_string(), price.model_id.clone()));
        r
    }

    async fn delete_price_in(&self, region: &str, model_id: &str) -> Result<bool> {
        let r = self.inner.delete_price_in(region, model_id).await;
        self.prices
            .invalidate(&(region.to_string(), model_id.to_string()));
        r
    }

    async fn get_price_in(&self, region: &str, model_id: &str) -> Result<Option<ModelPrice>> {
        let key = (region.to_string(), model_id.to_string());
        cached!(
            self,
            prices,
            &key,
            key.clone(),
            self.inner.get_price_in(region, model_id)
        )
    }

    async fn list_prices_in(&self, region: &str) -> Result<Vec<ModelPrice>> {
        self.inner.list_prices_in(region).await
    }

    async fn put_price(&self, price: &ModelPrice) -> Result<()> {
        self.put_price_in(self.pricing_region(), price).await
    }

    async fn get_price(&self, model_id: &str) -> Result<Option<ModelPrice>> {
        self.get_price_in(self.pricing_region(), model_id).await
    }

    async fn list_prices(&self) -> Result<Vec<ModelPrice>> {
        self.inner.list_prices_in(self.pricing_region()).await
    }

    async fn put_alias(&self, alias: &str, model_id: &str) -> Result<()> {
        let r = self.inner.put_alias(alias, model_id).await;
        self.aliases.clear();
        r
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool> {
        let r = self.inner.delete_alias(alias).await;
        self.aliases.clear();
        r
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<String>> {
        cached!(
            self,
            aliases,
            alias,
            alias.to_string(),
            self.inner.get_alias(alias)
        )
    }

    async fn list_aliases(&self) -> Result<BTreeMap<String, String>> {
        self.inner.list_aliases().await
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        let r = self.inner.put_profile(profile).await;
        self.profiles.invalidate(profile.tenant_id.as_str());
        r
    }

    async fn delete_profile(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model_id: &str,
    ) -> Result<bool> {
        let r = self
            .inner
            .delete_profile(tenant_id, application_id, model_id)
            .await;
        self.profiles.invalidate(tenant_id);
        r
    }

    async fn list_profiles(&self, tenant_id: &str) -> Result<Vec<Profile>> {
        cached!(
            self,
            profiles,
            tenant_id,
            tenant_id.to_string(),
            self.inner.list_profiles(tenant_id)
        )
    }

    // --- keys (cached) -----------------------------------------------------------
    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<bool> {
        let r = self.inner.insert_key(key).await;
        self.keys.invalidate(key.key_hash.as_str());
        r
    }

    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        cached!(
            self,
            keys,
            key_hash,
            key_hash.to_string(),
            self.inner.find_key(key_hash)
        )
    }

    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>> {
        self.inner.list_keys(tenant_id).await
    }

    async fn revoke_key(&self, tenant_id: &str, key_id: &str, now_ms: i64) -> Result<bool> {
        let r = self.inner.revoke_key(tenant_id, key_id, now_ms).await;
        // Only the key id is known here, the cache is by hash: drop every key
        // (revocations are rare).
        self.keys.clear();
        r
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
        // Admission never reads the last-used time: the cache stays valid.
        self.inner.touch_keys(used).await
    }

    // --- SigV4 credentials (cached) -----------------------------------------------
    async fn insert_sigv4_credential(&self, cred: &SigV4CredentialRecord) -> Result<bool> {
        let r = self.inner.insert_sigv4_credential(cred).await;
        self.sigv4.invalidate(cred.access_key_id.as_str());
        r
    }

    async fn find_sigv4_credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SigV4CredentialRecord>> {
        cached!(
            self,
            sigv4,
            access_key_id,
            access_key_id.to_string(),
            self.inner.find_sigv4_credential(access_key_id)
        )
    }

    async fn list_sigv4_credentials(&self, tenant_id: &str) -> Result<Vec<SigV4CredentialRecord>> {
        self.inner.list_sigv4_credentials(tenant_id).await
    }

    async fn list_all_sigv4_credentials(&self) -> Result<Vec<SigV4CredentialRecord>> {
        self.inner.list_all_sigv4_credentials().await
    }

    async fn replace_sigv4_sealed_secret(
        &self,
        access_key_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool> {
        let r = self
            .inner
            .replace_sigv4_sealed_secret(access_key_id, old, new)
            .await;
        self.sigv4.invalidate(access_key_id);
        r
    }

    async fn revoke_sigv4_credential(
        &self,
        tenant_id: &str,
        access_key_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let r = self
            .inner
            .revoke_sigv4_credential(tenant_id, access_key_id, now_ms)
            .await;
        self.sigv4.invalidate(access_key_id);
        r
    }

    // --- ledger (delegated) --------------------------------------------------------
    async fn take_rate(
        &self,
        tenant_id: &str,
        window: i64,
        takes: &[RateTake],
    ) -> Result<RateOutcome> {
        self.inner.take_rate(tenant_id, window, takes).await
    }

    async fn adjust_rate(
        &self,
        tenant_id: &str,
        window: i64,
        counter: &str,
        delta: i64,
    ) -> Result<()> {
        self.inner
            .adjust_rate(tenant_id, window, counter, delta)
            .await
    }

    async fn prune_rate_windows(&self, before_window: i64) -> Result<()> {
        self.inner.prune_rate_windows(before_window).await
    }

    async fn get_hold(&self, request_id: &str) -> Result<Option<Hold>> {
        self.inner.get_hold(request_id).await
    }

    async fn reserve(&self, hold: &Hold, period_budget: Decimal) -> Result<ReserveOutcome> {
        self.inner.reserve(hold, period_budget).await
    }

    async fn commit(
        &self,
        request_id: &str,
        usage: &Usage,
        estimated: bool,
        now_ms: i64,
    ) -> Result<CommitApplied> {
        self.inner
            .commit(request_id, usage, estimated, now_ms)
            .await
    }

    async fn release(&self, request_id: &str, now_ms: i64) -> Result<bool> {
        self.inner.release(request_id, now_ms).await
    }

    async fn expire_holds(&self, now_ms: i64) -> Result<u64> {
        self.inner.expire_holds(now_ms).await
    }

    async fn balance(
        &self,
        tenant_id: &str,
        period: &str,
        default_budget: Decimal,
    ) -> Result<Balance> {
        self.inner.balance(tenant_id, period, default_budget).await
    }

    // --- leases (delegated: the trait's defaults would hide the inner's) -----------
    fn supports_leases(&self) -> bool {
        self.inner.supports_leases()
    }

    async fn grant_lease(
        &self,
        lease: &LeaseRecord,
        sizing: &LeaseSizing,
        period_budget: Decimal,
    ) -> Result<LeaseOutcome> {
        self.inner.grant_lease(lease, sizing, period_budget).await
    }

    #[allow(clippy::too_many_arguments)]
    async fn renew_lease(
        &self,
        lease_id: &str,
        seq: u64,
        return_usd: Decimal,
        sizing: &LeaseSizing,
        current_period: &str,
        now_ms: i64,
        expires_at_ms: i64,
    ) -> Result<RenewApplied> {
        self.inner
            .renew_lease(
                lease_id,
                seq,
                return_usd,
                sizing,
                current_period,
                now_ms,
                expires_at_ms,
            )
            .await
    }

    async fn get_lease(&self, lease_id: &str) -> Result<Option<LeaseRecord>> {
        self.inner.get_lease(lease_id).await
    }

    async fn commit_leased(&self, c: &LeasedCommit, now_ms: i64) -> Result<CommitApplied> {
        self.inner.commit_leased(c, now_ms).await
    }

    async fn commit_leased_batch(
        &self,
        commits: &[LeasedCommit],
        now_ms: i64,
    ) -> Vec<Result<CommitApplied>> {
        self.inner.commit_leased_batch(commits, now_ms).await
    }

    // --- alerts and reports (delegated) --------------------------------------------
    async fn record_alert(
        &self,
        alert: &AlertRecord,
        payload: &str,
        targets: &[String],
    ) -> Result<bool> {
        self.inner.record_alert(alert, payload, targets).await
    }

    async fn claim_outbox(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.inner.claim_outbox(now_ms, claim_until_ms, limit).await
    }

    async fn finish_outbox(
        &self,
        alert_id: &str,
        target: &str,
        result: &OutboxResult,
        now_ms: i64,
    ) -> Result<()> {
        self.inner
            .finish_outbox(alert_id, target, result, now_ms)
            .await
    }

    async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        self.inner.list_outbox(state, limit).await
    }

    async fn outbox_counts(&self) -> Result<(u64, u64)> {
        self.inner.outbox_counts().await
    }

    async fn retry_outbox(&self, alert_id: &str, now_ms: i64) -> Result<u64> {
        self.inner.retry_outbox(alert_id, now_ms).await
    }

    async fn list_alerts(&self, tenant_id: &str) -> Result<Vec<AlertRecord>> {
        self.inner.list_alerts(tenant_id).await
    }

    async fn usage(&self, from_ms: Option<i64>, to_ms: Option<i64>) -> Result<Vec<UsageRecord>> {
        self.inner.usage(from_ms, to_ms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ResetCycle;
    use crate::store::sqlite::SqliteStore;
    use std::sync::Mutex;

    /// A real SQLite store underneath that counts the calls it gets, and claims
    /// leases (unlike SQLite) so delegation of the lease methods shows.
    struct Counting {
        inner: SqliteStore,
        calls: Mutex<HashMap<&'static str, usize>>,
    }

    impl Counting {
        fn new(dir: &tempfile::TempDir) -> Self {
            Self {
                inner: SqliteStore::open(&dir.path().join("ledger.db")).expect("open"),
                calls: Mutex::new(HashMap::new()),
            }
        }
        fn hit(&self, name: &'static str) {
            *self.calls.lock().unwrap().entry(name).or_default() += 1;
        }
        fn calls(&self, name: &str) -> usize {
            self.calls.lock().unwrap().get(name).copied().unwrap_or(0)
        }
    }

    #[async_trait]
    impl Store for Counting {
        async fn put_tenant(&self, cfg: &TenantConfig, p: &str) -> Result<()> {
            self.hit("put_tenant");
            self.inner.put_tenant(cfg, p).await
        }
        async fn get_tenant(&self, id: &str) -> Result<Option<TenantConfig>> {
            self.hit("get_tenant");
            self.inner.get_tenant(id).await
        }
        async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
            self.inner.list_tenants().await
        }
        async fn delete_tenant(&self, id: &str, now: i64) -> Result<TenantDeletion> {
            self.inner.delete_tenant(id, now).await
        }
        async fn check_ready(&self) -> Result<()> {
            self.inner.check_ready().await
        }
        fn pricing_region(&self) -> &str {
            "eu-west-1"
        }
        async fn put_price_in(&self, region: &str, price: &ModelPrice) -> Result<()> {
            self.inner.put_price_in(region, price).await
        }
        async fn get_price_in(&self, region: &str, model: &str) -> Result<Option<ModelPrice>> {
            self.hit("get_price_in");
            self.inner.get_price_in(region, model).await
        }
        async fn list_prices_in(&self, region: &str) -> Result<Vec<ModelPrice>> {
            self.inner.list_prices_in(region).await
        }
        async fn delete_price_in(&self, region: &str, model: &str) -> Result<bool> {
            self.inner.delete_price_in(region, model).await
        }
        async fn put_alias(&self, alias: &str, model: &str) -> Result<()> {
            self.inner.put_alias(alias, model).await
        }
        async fn delete_alias(&self, alias: &str) -> Result<bool> {
            self.inner.delete_alias(alias).await
        }
        async fn get_alias(&self, alias: &str) -> Result<Option<String>> {
            self.hit("get_alias");
            self.inner.get_alias(alias).await
        }
        async fn list_aliases(&self) -> Result<BTreeMap<String, String>> {
            self.inner.list_aliases().await
        }
        async fn put_profile(&self, p: &Profile) -> Result<()> {
            self.inner.put_profile(p).await
        }
        async fn delete_profile(&self, t: &str, a: Option<&str>, m: &str) -> Result<bool> {
            self.inner.delete_profile(t, a, m).await
        }
        async fn list_profiles(&self, id: &str) -> Result<Vec<Profile>> {
            self.hit("list_profiles");
            self.inner.list_profiles(id).await
        }
        async fn insert_key(&self, key: &ApiKeyRecord) -> Result<bool> {
            self.inner.insert_key(key).await
        }
        async fn find_key(&self, hash: &str) -> Result<Option<ApiKeyRecord>> {
            self.hit("find_key");
            self.inner.find_key(hash).await
        }
        async fn list_keys(&self, id: &str) -> Result<Vec<ApiKeyRecord>> {
            self.inner.list_keys(id).await
        }
        async fn revoke_key(&self, t: &str, k: &str, now: i64) -> Result<bool> {
            self.inner.revoke_key(t, k, now).await
        }
        async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
            self.inner.touch_keys(used).await
        }
        async fn insert_sigv4_credential(&self, c: &SigV4CredentialRecord) -> Result<bool> {
            self.inner.insert_sigv4_credential(c).await
        }
        async fn find_sigv4_credential(&self, id: &str) -> Result<Option<SigV4CredentialRecord>> {
            self.hit("find_sigv4_credential");
            self.inner.find_sigv4_credential(id).await
        }
        async fn list_sigv4_credentials(&self, t: &str) -> Result<Vec<SigV4CredentialRecord>> {
            self.inner.list_sigv4_credentials(t).await
        }
        async fn revoke_sigv4_credential(&self, t: &str, id: &str, now: i64) -> Result<bool> {
            self.inner.revoke_sigv4_credential(t, id, now).await
        }
        async fn list_all_sigv4_credentials(&self) -> Result<Vec<SigV4CredentialRecord>> {
            self.inner.list_all_sigv4_credentials().await
        }
        async fn replace_sigv4_sealed_secret(&self, id: &str, o: &str, n: &str) -> Result<bool> {
            self.inner.replace_sigv4_sealed_secret(id, o, n).await
        }
        async fn take_rate(&self, t: &str, w: i64, takes: &[RateTake]) -> Result<RateOutcome> {
            self.inner.take_rate(t, w, takes).await
        }
        async fn adjust_rate(&self, t: &str, w: i64, c: &str, d: i64) -> Result<()> {
            self.inner.adjust_rate(t, w, c, d).await
        }
        async fn prune_rate_windows(&self, w: i64) -> Result<()> {
            self.inner.prune_rate_windows(w).await
        }
        async fn get_hold(&self, id: &str) -> Result<Option<Hold>> {
            self.hit("get_hold");
            self.inner.get_hold(id).await
        }
        async fn reserve(&self, hold: &Hold, budget: Decimal) -> Result<ReserveOutcome> {
            self.inner.reserve(hold, budget).await
        }
        async fn commit(&self, id: &str, u: &Usage, e: bool, now: i64) -> Result<CommitApplied> {
            self.inner.commit(id, u, e, now).await
        }
        async fn release(&self, id: &str, now: i64) -> Result<bool> {
            self.inner.release(id, now).await
        }
        async fn expire_holds(&self, now: i64) -> Result<u64> {
            self.hit("expire_holds");
            self.inner.expire_holds(now).await
        }
        async fn balance(&self, t: &str, p: &str, b: Decimal) -> Result<Balance> {
            self.hit("balance");
            self.inner.balance(t, p, b).await
        }
        fn supports_leases(&self) -> bool {
            true
        }
        async fn get_lease(&self, _id: &str) -> Result<Option<LeaseRecord>> {
            self.hit("get_lease");
            Err(crate::error::Error::Internal("fake get_lease".into()))
        }
        async fn record_alert(&self, a: &AlertRecord, p: &str, t: &[String]) -> Result<bool> {
            self.inner.record_alert(a, p, t).await
        }
        async fn claim_outbox(&self, n: i64, c: i64, l: usize) -> Result<Vec<OutboxEntry>> {
            self.inner.claim_outbox(n, c, l).await
        }
        async fn finish_outbox(&self, a: &str, t: &str, r: &OutboxResult, n: i64) -> Result<()> {
            self.inner.finish_outbox(a, t, r, n).await
        }
        async fn list_outbox(&self, s: Option<OutboxState>, l: usize) -> Result<Vec<OutboxEntry>> {
            self.inner.list_outbox(s, l).await
        }
        async fn outbox_counts(&self) -> Result<(u64, u64)> {
            self.inner.outbox_counts().await
        }
        async fn retry_outbox(&self, a: &str, n: i64) -> Result<u64> {
            self.inner.retry_outbox(a, n).await
        }
        async fn list_alerts(&self, t: &str) -> Result<Vec<AlertRecord>> {
            self.inner.list_alerts(t).await
        }
        async fn usage(&self, from: Option<i64>, to: Option<i64>) -> Result<Vec<UsageRecord>> {
            self.inner.usage(from, to).await
        }
    }

    /// A monotonic clock the test moves by hand.
    #[derive(Clone)]
    struct TestTime {
        base: Instant,
        offset_ms: Arc<AtomicU64>,
    }

    impl TestTime {
        fn new() -> Self {
            Self {
                base: Instant::now(),
                offset_ms: Arc::new(AtomicU64::new(0)),
            }
        }
        fn advance(&self, ms: u64) {
            self.offset_ms.fetch_add(ms, Ordering::SeqCst);
        }
        fn source(&self) -> Now {
            let t = self.clone();
            Arc::new(move || t.base + Duration::from_millis(t.offset_ms.load(Ordering::SeqCst)))
        }
    }

    struct Fixture {
        counting: Arc<Counting>,
        cached: CachedStore,
        time: TestTime,
        _dir: tempfile::TempDir,
    }

    fn fixture(ttl_ms: u64, max_entries: usize) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let counting = Arc::new(Counting::new(&dir));
        let time = TestTime::new();
        let cached = CachedStore::with_limits(
            counting.clone(),
            Duration::from_millis(ttl_ms),
            max_entries,
            time.source(),
        );
        Fixture {
            counting,
            cached,
            time,
            _dir: dir,
        }
    }

    fn tenant(id: &str, active: bool) -> TenantConfig {
        TenantConfig {
            tenant_id: id.into(),
            budget_usd: Decimal::from(10),
            alert_threshold: Decimal::new(8, 1),
            alert_thresholds: vec![],
            reset_cycle: ResetCycle::Monthly,
            active,
            allowed_models: vec![],
            default_model: None,
            max_tokens_cap: None,
            rate_limit_rpm: None,
            rate_limit_tpm: None,
            model_budgets: BTreeMap::new(),
            model_rate_limit_tpm: BTreeMap::new(),
            application_budgets: Default::default(),
            user_budgets: Default::default(),
            default_user_budget_usd: None,
        }
    }

    fn key(id: &str, hash: &str) -> ApiKeyRecord {
        ApiKeyRecord {
            key_id: id.into(),
            tenant_id: "acme".into(),
            application_id: None,
            key_hash: hash.into(),
            created_at_ms: 1,
            revoked: false,
            expires_at_ms: None,
            last_used_at_ms: None,
        }
    }

    fn price(model: &str, input: i64) -> ModelPrice {
        ModelPrice {
            model_id: model.into(),
            input: Decimal::from(input),
            output: Decimal::from(15),
            cache_read: None,
            cache_write: None,
        }
    }

    #[tokio::test]
    async fn repeated_reads_hit_the_inner_store_once_within_the_ttl() {
        let f = fixture(1000, MAX_ENTRIES);
        f.cached
            .put_tenant(&tenant("acme", true), "2026-11")
            .await
            .unwrap();
        f.cached.insert_key(&key("k1", "h1")).await.unwrap();
        f.cached
            .put_price_in("global", &price("m", 3))
            .await
            .unwrap();
        f.cached.put_alias("sonnet", "m").await.unwrap();
        for _ in 0..5 {
            assert!(f.cached.get_tenant("acme").await.unwrap().unwrap().active);
            assert_eq!(f.cached.find_key("h1").await.unwrap().unwrap().key_id, "k1");
            assert!(f.cached.find_key("nope").await.unwrap().is_none());
            assert!(f
                .cached
                .find_sigv4_credential("AKIA")
                .await
                .unwrap()
                .is_none());
            assert_eq!(
                f.cached
                    .get_price_in("global", "m")
                    .await
                    .unwrap()
                    .unwrap()
                    .input,
                Decimal::from(3)
            );
            assert_eq!(
                f.cached.get_alias("sonnet").await.unwrap().as_deref(),
                Some("m")
            );
            assert!(f.cached.list_profiles("acme").await.unwrap().is_empty());
            f.time.advance(100);
        }
        for name in [
            "get_tenant",
            "get_price_in",
            "get_alias",
            "list_profiles",
            "find_sigv4_credential",
        ] {
            assert_eq!(f.counting.calls(name), 1, "{name}");
        }
        // "h1" and the negative "nope".
        assert_eq!(f.counting.calls("find_key"), 2);
    }

    #[tokio::test]
    async fn entries_expire_after_the_ttl() {
        let f = fixture(1000, MAX_ENTRIES);
        f.cached
            .put_tenant(&tenant("acme", true), "2026-11")
            .await
            .unwrap();
        assert!(f.cached.get_tenant("acme").await.unwrap().unwrap().active);
        assert!(f.cached.find_key("h1").await.unwrap().is_none());
        // Changed behind the cache's back (another sidecar on the same ledger).
        f.counting
            .put_tenant(&tenant("acme", false), "2026-11")
            .await
            .unwrap();
        f.counting.insert_key(&key("k1", "h1")).await.unwrap();
        f.time.advance(999);
        assert!(f.cached.get_tenant("acme").await.unwrap().unwrap().active);
        assert!(f.cached.find_key("h1").await.unwrap().is_none());
        f.time.advance(1);
        assert!(!f.cached.get_tenant("acme").await.unwrap().unwrap().active);
        assert!(f.cached.find_key("h1").await.unwrap().is_some());
        assert_eq!(f.counting.calls("get_tenant"), 2);
        assert_eq!(f.counting.calls("find_key"), 2);
    }

    #[tokio::test]
    async fn entries_expire_on_the_real_clock() {
        let dir = tempfile::tempdir().unwrap();
        let counting = Arc::new(Counting::new(&dir));
        let cached = CachedStore::new(counting.clone(), Duration::from_millis(50));
        assert!(cached.get_alias("a").await.unwrap().is_none());
        counting.put_alias("a", "m").await.unwrap();
        assert!(cached.get_alias("a").await.unwrap().is_none());
        tokio::time::sleep(Duration::from_millis(80)).await;
        assert_eq!(cached.get_alias("a").await.unwrap().as_deref(), Some("m"));
        assert_eq!(counting.calls("get_alias"), 2);
    }

    #[tokio::test]
    async fn writes_through_the_wrapper_are_visible_at_once() {
        let f = fixture(60_000, MAX_ENTRIES);
        // Keys: insert after a cached "not found", then revoke.
        assert!(f.cached.find_key("h1").await.unwrap().is_none());
        assert!(f.cached.insert_key(&key("k1", "h1")).await.unwrap());
        assert!(f.cached.insert_key(&key("k2", "h2")).await.unwrap());
        assert!(f.cached.find_key("h1").await.unwrap().is_some());
        assert!(f.cached.find_key("h2").await.unwrap().is_some());
        assert!(f.cached.revoke_key("acme", "k1", 2).await.unwrap());
        assert!(f.cached.find_key("h1").await.unwrap().is_none());
        assert!(f.cached.find_key("h2").await.unwrap().is_some());

        // Prices: only the (region, model) written changes.
        f.cached
            .put_price_in("global", &price("m", 3))
            .await
            .unwrap();
        f.cached
            .put_price_in("us-east-1", &price("m", 4))
            .await
            .unwrap();
        assert_eq!(
            f.cached
                .get_price_in("global", "m")
                .await
                .unwrap()
                .unwrap()
                .input,
            Decimal::from(3)
        );
        assert_eq!(
            f.cached
                .get_price_in("us-east-1", "m")
                .await
                .unwrap()
                .unwrap()
                .input,
            Decimal::from(4)
        );
        f.cached
            .put_price_in("global", &price("m", 5))
            .await
            .unwrap();
        assert_eq!(
            f.cached
                .get_price_in("global", "m")
                .await
                .unwrap()
                .unwrap()
                .input,
            Decimal::from(5)
        );
        // put_price / get_price go to the inner store's pricing region.
        assert_eq!(f.cached.pricing_region(), "eu-west-1");
        f.cached.put_price(&price("m", 6)).await.unwrap();
        assert_eq!(
            f.cached.get_price("m").await.unwrap().unwrap().input,
            Decimal::from(6)
        );
        assert_eq!(
            f.cached
                .get_price_in("eu-west-1", "m")
                .await
                .unwrap()
                .unwrap()
                .input,
            Decimal::from(6)
        );

        // Tenants.
        f.cached
            .put_tenant(&tenant("acme", true), "2026-11")
            .await
            .unwrap();
        assert!(f.cached.get_tenant("acme").await.unwrap().unwrap().active);
        f.cached
            .put_tenant(&tenant("acme", false), "2026-11")
            .await
            .unwrap();
        assert!(!f.cached.get_tenant("acme").await.unwrap().unwrap().active);

        // Aliases.
        assert!(f.cached.get_alias("sonnet").await.unwrap().is_none());
        f.cached.put_alias("sonnet", "m").await.unwrap();
        assert_eq!(
            f.cached.get_alias("sonnet").await.unwrap().as_deref(),
            Some("m")
        );
        f.cached.put_alias("sonnet", "m2").await.unwrap();
        assert_eq!(
            f.cached.get_alias("sonnet").await.unwrap().as_deref(),
            Some("m2")
        );

        // Profiles.
        assert!(f.cached.list_profiles("acme").await.unwrap().is_empty());
        let profile = Profile {
            tenant_id: "acme".into(),
            application_id: None,
            model_id: "m".into(),
            arn: "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/x".into(),
        };
        f.cached.put_profile(&profile).await.unwrap();
        assert_eq!(f.cached.list_profiles("acme").await.unwrap(), vec![profile]);

        // SigV4 credentials.
        assert!(f
            .cached
            .find_sigv4_credential("AKIA1")
            .await
            .unwrap()
            .is_none());
        let cred = SigV4CredentialRecord {
            access_key_id: "AKIA1".into(),
            tenant_id: "acme".into(),
            application_id: None,
            sealed_secret: "sealed".into(),
            created_at_ms: 1,
            revoked: false,
        };
        assert!(f.cached.insert_sigv4_credential(&cred).await.unwrap());
        assert!(f
            .cached
            .find_sigv4_credential("AKIA1")
            .await
            .unwrap()
            .is_some());
        // A rewrap's new sealed value is seen at once.
        assert!(f
            .cached
            .replace_sigv4_sealed_secret("AKIA1", "sealed", "resealed")
            .await
            .unwrap());
        assert_eq!(
            f.cached
                .find_sigv4_credential("AKIA1")
                .await
                .unwrap()
                .map(|c| c.sealed_secret)
                .as_deref(),
            Some("resealed")
        );
        assert!(f
            .cached
            .revoke_sigv4_credential("acme", "AKIA1", 2)
            .await
            .unwrap());
        assert!(f
            .cached
            .find_sigv4_credential("AKIA1")
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn a_read_racing_a_write_does_not_cache_the_older_answer() {
        let f = fixture(60_000, MAX_ENTRIES);
        // A read that looked at the generation, then a write invalidated it
        // before the read stored its answer: the answer is dropped.
        let seen = f.cached.tenants.generation();
        let old = f.counting.get_tenant("acme").await.unwrap();
        f.cached
            .put_tenant(&tenant("acme", true), "2026-11")
            .await
            .unwrap();
        f.cached
            .tenants
            .insert("acme".into(), old, f.cached.expiry(), seen);
        assert!(f.cached.get_tenant("acme").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn ledger_and_lease_methods_are_delegated_uncached() {
        let f = fixture(60_000, MAX_ENTRIES);
        assert_eq!(f.cached.supports_leases(), f.counting.supports_leases());
        assert!(f.cached.supports_leases());
        // The fake's get_lease fails; the trait's default would answer Ok(None).
        assert!(f.cached.get_lease("l1").await.is_err());
        for _ in 0..3 {
            assert!(f.cached.get_hold("r1").await.unwrap().is_none());
            f.cached
                .balance("acme", "2026-11", Decimal::from(10))
                .await
                .unwrap();
            f.cached.expire_holds(0).await.unwrap();
        }
        assert_eq!(f.counting.calls("get_lease"), 1);
        assert_eq!(f.counting.calls("get_hold"), 3);
        assert_eq!(f.counting.calls("balance"), 3);
        assert_eq!(f.counting.calls("expire_holds"), 3);
    }

    #[tokio::test]
    async fn maps_are_bounded() {
        let f = fixture(60_000, 10);
        for i in 0..25 {
            assert!(f
                .cached
                .find_key(&format!("made-up-{i}"))
                .await
                .unwrap()
                .is_none());
            assert!(f.cached.keys.len() <= 10);
        }
        assert_eq!(f.counting.calls("find_key"), 25);
    }

    #[test]
    fn zero_ttl_is_the_inner_store_itself() {
        let dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Store> = Arc::new(Counting::new(&dir));
        let wrapped = CachedStore::wrap(inner.clone(), Duration::ZERO);
        assert!(Arc::ptr_eq(&inner, &wrapped));
        let wrapped = CachedStore::wrap(inner.clone(), DEFAULT_TTL);
        assert!(!Arc::ptr_eq(&inner, &wrapped));
    }
}
