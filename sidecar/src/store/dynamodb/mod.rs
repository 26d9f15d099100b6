//! Shared store: Amazon DynamoDB, so a fleet of sidecars can share one ledger.
//!
//! # Layout (table names carry an optional prefix, see [`Tables`])
//!
//! | table                       | key                                   | holds |
//! |-----------------------------|---------------------------------------|-------|
//! | `TenantConfigs`             | `tenantId`                            | tenant configuration |
//! | `TenantBudgets`             | `tenantId`, `modelId` = `period#ALL` / `period#<model>` | balances |
//! | `ModelPricing`              | `region`, `modelId`                   | prices (USD per 1M tokens) |
//! | `TollgateAliases`           | `alias`                               | friendly model names |
//! | `TollgateProfiles`          | `tenantId`, `profileKey` = `<app>#<model>` | inference profile ARNs |
//! | `TollgateKeys`              | `keyHash`; GSI `byTenant` (`tenantId`, `keyId`) | bearer keys |
//! | `TollgateSigV4Credentials`  | `accessKeyId`; GSI `byTenant` (`tenantId`, `accessKeyId`) | SigV4 credentials |
//! | `TollgateHolds`             | `requestId`; sparse GSI `bySweep` (`sweepShard`, `sweepAt`) | holds |
//! | `TollgateUsage`             | `requestId`                           | usage log |
//! | `TollgateAlerts`            | `tenantId`, `periodKind` = `period#kind` | fired alerts |
//! | `TollgateLeases`            | `leaseId`; sparse GSI `bySweep` (`sweepShard`, `sweepAt`) | budget leases (see [`leases`]) |
//!
//! Money is a DynamoDB `N` written from `rust_decimal::Decimal::to_string()` and
//! only ever added by DynamoDB's exact decimal arithmetic (`ADD`), never a float.
//!
//! # Ledger protocol (no transactions: dynalite has no `TransactWriteItems`)
//!
//! Every balance change is **one conditional `UpdateItem`** on the period's `ALL`
//! row, which keeps `available = totalBudget − totalCost − reserved` up to date in
//! every update so admission can be a plain condition (`available >= :hold`).
//! Besides the numbers the row carries two small string sets that make every
//! balance change idempotent across retries and crashes:
//!
//! - `openHolds`: request ids whose hold is currently counted in `reserved`.
//!   Adding a hold requires `NOT contains(openHolds, :id)`; giving it back (commit,
//!   release, expiry) requires `contains(openHolds, :id)` and removes it in the
//!   same update. So a hold enters and leaves `reserved` at most once each.
//! - `settling`: request ids whose charge has been applied while the hold item is
//!   still `committing`. A charge requires `NOT contains(settling, :id)`, so a
//!   retried or recovered commit never charges twice. The id is removed once the
//!   hold item says `committed` (from then on the hold state is the guard), so the
//!   set only holds in-flight commits and stays small.
//!
//! Hold items move through `pending → open → committing → committed`, or
//! `open → released | expired` (and `expired | released → committing` for late
//! commits). Every transition is a conditional update on the current state. The
//! order of writes is chosen so that every crash window is recoverable:
//!
//! - **reserve**: (R1) put the hold `pending` with `attribute_not_exists(requestId)`;
//!   (R2) `ALL` row `ADD reserved :h, available -:h, openHolds {id}` if
//!   `available >= :h AND NOT contains(openHolds, :id)`; (R3) hold `pending → open`
//!   with `budgetRemainingUsd`. A denied hold deletes its `pending` item.
//!   *Crash after R1*: the pending hold is invisible to `get_hold`; a retried
//!   reserve finds it and re-runs R2/R3 (idempotent through `openHolds`); else the
//!   sweeper expires it at its TTL, where the give-back is a no-op because the id
//!   is not in `openHolds`. *Crash after R2*: same, and the sweeper's give-back
//!   finds the id and returns the money.
//! - **model budgets**: a hold whose tenant has a budget for its model carries
//!   `modelBudgetUsd`, and the model row (`period#<model>`) keeps `totalBudget`,
//!   `reserved`, `available` and `openHolds` like the `ALL` row. Between R1 and R2:
//!   (M0) set the row's budget (conditional on the budget, or on `totalCost` for
//!   a row only commits touched so far); (M1) count the hold there with the same
//!   update as R2 (`available >= :h AND NOT contains(openHolds, :id)`); a refusal
//!   denies the request naming the model. If R2 then refuses, the model row is
//!   given back (compensating update, idempotent through `openHolds`) *before*
//!   the pending hold is deleted. *Crash after M1, or between R2's refusal and
//!   the compensation*: the hold is still `pending`, i.e. its state says it was
//!   never admitted; a retried reserve finishes it, else the sweeper expires it at
//!   its TTL and the give-back (`ALL` row, then model row, each conditional on
//!   `openHolds`) returns the model row's count. Until then the model row
//!   over-counts `reserved`: it may refuse what the model budget allows, never
//!   admit what it does not. Give-backs (release, expiry, drop of a denied hold)
//!   and commits (C3, open- or late-style) keep the model row in step; rows
//!   without a model budget take only the counters, in one update, as before.
//! - **commit**: (C1) hold `pending|open|expired|released → committing`, storing
//!   usage and cost (the claim: exactly one caller wins it, duplicates see
//!   `committing`/`committed` and answer `Duplicate`); (C2) `ALL` row charge:
//!   open-style `ADD totalCost :c, reserved -:h, available :h-:c, … DELETE
//!   openHolds {id} ADD settling {id}` if `contains(openHolds, :id) AND NOT
//!   contains(settling, :id)`, else late-style (no `reserved` change) if `NOT
//!   contains(openHolds, :id) AND NOT contains(settling, :id)`; (C3) per-model row
//!   upsert with the same `settling` guard; (C4) usage record (`BatchWriteItem`,
//!   the whole record from the claimed hold); (C5) hold `committing →
//!   committed`; (C6) remove the id from both rows' `settling`. The commits of
//!   one lease in a gateway's batch run C2–C6 together, one update per row for
//!   all of them (see `commit`). *Crash anywhere in C2–C5*: the hold stays
//!   `committing` and sits in the sweep index with `sweepAt = claim + grace`; the
//!   sweeper (any sidecar) claims the recovery by bumping `sweepAt` conditionally
//!   and re-runs C2–C6, each of which is a no-op if already applied.
//!   *Crash in C6*: a stale id in `settling` (a few bytes, harmless).
//! - **release / expiry**: give-back first — `ALL` row `ADD reserved -:h,
//!   available :h DELETE openHolds {id}` if `contains(openHolds, :id)` — then the
//!   hold `open|pending → released|expired`. *Crash between*: the hold stays open
//!   and the sweeper repeats both steps; the give-back is then a no-op. A commit
//!   racing a release/expiry is charged exactly once: if the give-back came first
//!   its charge is late-style, otherwise open-style.
//!
//! Residual risk, by design of a transaction-free protocol: a sidecar that stalls
//! (e.g. is paused) for longer than the hold TTL between R1 and R2, or longer than
//! the recovery grace between C1 and C2, can race the sweeper's repair of its own
//! half-done operation. SDK timeouts (10 s per operation) keep ordinary slowness
//! far below both bounds.
//!
//! # Errors
//!
//! Conditional-check failures are outcomes, handled above. Everything else maps to
//! [`Error::Internal`] with the operation, table and a hint; throttling, 5xx,
//! timeouts and connection failures are marked *transient* (the SDK has already
//! retried them with backoff; the caller may retry the request).

use super::*;
use crate::error::Error;
use crate::ledger::AlertKind;
use aws_config::BehaviorVersion;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, GlobalSecondaryIndex, KeySchemaElement,
    KeyType, Projection, ProjectionType, ReturnValue, ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;

mod commit;
mod leases;

type Item = HashMap<String, AttributeValue>;
/// A filter expression with its attribute names and values.
type Filter<'a> = (
    &'a str,
    HashMap<String, String>,
    HashMap<String, AttributeValue>,
);

/// Shards of the holds' sweep index (spreads the sparse GSI's partition key).
const SWEEP_SHARDS: u32 = 8;
/// How long a `committing` hold may sit before the sweeper completes it.
const RECOVERY_GRACE_MS: i64 = 60_000;
/// Bounded retries of optimistic loops (races, not errors).
const MAX_ATTEMPTS: usize = 16;

const ALL: &str = "ALL";

/// Store options (CLI: `--dynamodb-table-prefix`, `--pricing-region`).
#[derive(Debug, Clone)]
pub struct DynamoOptions {
    /// Prepended to every table name (e.g. `prod-`).
    pub table_prefix: String,
    /// `ModelPricing` partition key the price table lives under.
    pub pricing_region: String,
}

impl Default for DynamoOptions {
    fn default() -> Self {
        Self {
            table_prefix: String::new(),
            pricing_region: "global".into(),
        }
    }
}

/// Physical table names.
#[derive(Debug, Clone)]
pub struct Tables {
    pub tenants: String,
    pub budgets: String,
    pub pricing: String,
    pub aliases: String,
    pub profiles: String,
    pub keys: String,
    pub sigv4: String,
    pub holds: String,
    pub usage: String,
    pub alerts: String,
    pub leases: String,
}

impl Tables {
    pub fn new(prefix: &str) -> Self {
        let t = |n: &str| format!("{prefix}{n}");
        Self {
            tenants: t("TenantConfigs"),
            budgets: t("TenantBudgets"),
            pricing: t("ModelPricing"),
            aliases: t("TollgateAliases"),
            profiles: t("TollgateProfiles"),
            keys: t("TollgateKeys"),
            sigv4: t("TollgateSigV4Credentials"),
            holds: t("TollgateHolds"),
            usage: t("TollgateUsage"),
            alerts: t("TollgateAlerts"),
            leases: t("TollgateLeases"),
        }
    }

    /// (name, hash key, range key, GSIs as (index, hash, range)).
    #[allow(clippy::type_complexity)]
    fn definitions(
        &self,
    ) -> Vec<(
        &str,
        &'static str,
        Option<&'static str>,
        Vec<(&'static str, &'static str, &'static str)>,
    )> {
        vec![
            (&self.tenants, "tenantId", None, vec![]),
            (&self.budgets, "tenantId", Some("modelId"), vec![]),
            (&self.pricing, "region", Some("modelId"), vec![]),
            (&self.aliases, "alias", None, vec![]),
            (&self.profiles, "tenantId", Some("profileKey"), vec![]),
            (
                &self.keys,
                "keyHash",
                None,
                vec![("byTenant", "tenantId", "keyId")],
            ),
            (
                &self.sigv4,
                "accessKeyId",
                None,
                vec![("byTenant", "tenantId", "accessKeyId")],
            ),
            (
                &self.holds,
                "requestId",
                None,
                vec![("bySweep", "sweepShard", "sweepAt")],
            ),
            (&self.usage, "requestId", None, vec![]),
            (&self.alerts, "tenantId", Some("periodKind"), vec![]),
            (
                &self.leases,
                "leaseId",
                None,
                vec![("bySweep", "sweepShard", "sweepAt")],
            ),
        ]
    }
}

/// Key attribute types (everything is a string except the sweep index's range).
fn attr_type(name: &str) -> ScalarAttributeType {
    if name == "sweepAt" {
        ScalarAttributeType::N
    } else {
        ScalarAttributeType::S
    }
}

pub struct DynamoStore {
    client: Client,
    t: Tables,
    pricing_region: String,
}

// ---------------------------------------------------------------------------
// errors

/// A failed call: the condition did not hold (an outcome), or a real error.
enum Fail {
    Condition,
    Err(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Err(e)
    }
}

fn ddb_error<E, R>(op: &str, table: &str, err: SdkError<E, R>) -> Fail
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let code = err.code().unwrap_or_default().to_string();
    let message = err.message().unwrap_or_default().to_string();
    if code == "ConditionalCheckFailedException" {
        return Fail::Condition;
    }
    let hint = match &err {
        SdkError::TimeoutError(_) => {
            "timed out (transient; the SDK already retried — retry later)".to_string()
        }
        SdkError::DispatchFailure(d) => {
            let why = if d.is_io() || d.is_timeout() {
                "cannot reach the DynamoDB endpoint"
            } else {
                "request could not be sent"
            };
            format!(
                "{why} (transient): check AWS_ENDPOINT_URL_DYNAMODB / AWS_REGION and the network; {}",
                aws_sdk_dynamodb::error::DisplayErrorContext(&err)
            )
        }
        SdkError::ConstructionFailure(_) => format!(
            "request could not be built: {} (are AWS credentials configured? set \
             AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or an instance role)",
            aws_sdk_dynamodb::error::DisplayErrorContext(&err)
        ),
        _ => match code.as_str() {
            "ResourceNotFoundException" => format!(
                "table {table} does not exist: run `tollgate-sidecar dynamodb init` \
                 with the same --dynamodb-table-prefix ({message})"
            ),
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "RequestLimitExceeded"
            | "InternalServerError"
            | "ServiceUnavailable"
            | "LimitExceededException" => {
                format!("{code} (transient; the SDK already retried — retry later): {message}")
            }
            "AccessDeniedException"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "MissingAuthenticationTokenException"
            | "ExpiredTokenException" => format!(
                "{code}: the AWS credentials are missing, wrong or lack dynamodb:* on {table}: {message}"
            ),
            "ItemCollectionSizeLimitExceededException" | "ValidationException" => {
                format!("{code}: {message}")
            }
            "" => format!("{}", aws_sdk_dynamodb::error::DisplayErrorContext(&err)),
            _ => format!("{code}: {message}"),
        },
    };
    Fail::Err(Error::Internal(format!("DynamoDB {op} on {table}: {hint}")))
}

/// For calls whose conditional failure is not expected.
fn hard(f: Fail, what: &str) -> Error {
    match f {
        Fail::Err(e) => e,
        Fail::Condition => Error::Internal(format!("unexpected conditional failure in {what}")),
    }
}

/// `Ok(true)` applied, `Ok(false)` the condition did not hold.
fn applied<T>(r: std::result::Result<T, Fail>) -> Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(Fail::Condition) => Ok(None),
        Err(Fail::Err(e)) => Err(e),
    }
}

// ---------------------------------------------------------------------------
// attribute values

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(d: Decimal) -> AttributeValue {
    AttributeValue::N(d.to_string())
}

fn nu(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ni(v: i64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn ss(v: &str) -> AttributeValue {
    AttributeValue::Ss(vec![v.to_string()])
}

fn put_opt(item: &mut Item, k: &str, v: Option<AttributeValue>) {
    if let Some(v) = v {
        item.insert(k.to_string(), v);
    }
}

fn names(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
        .collect()
}

fn vals(pairs: Vec<(&str, AttributeValue)>) -> HashMap<String, AttributeValue> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Whether `expr` uses the placeholder `token` (`#name` / `:value`) as a whole word.
fn mentions(expr: &str, token: &str) -> bool {
    expr.match_indices(token).any(|(i, _)| {
        !expr[i + token.len()..]
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// The names and values an update and its condition actually use (DynamoDB
/// refuses unused ones).
fn used<'a, T: Clone>(exprs: &[&str], pairs: &[(&'a str, T)]) -> Vec<(&'a str, T)> {
    pairs
        .iter()
        .filter(|(k, _)| exprs.iter().any(|e| mentions(e, k)))
        .cloned()
        .collect()
}

fn corrupt(table: &str, attr: &str, why: &str) -> Error {
    Error::Corrupt(format!("{table}.{attr}: {why}"))
}

struct Get<'a> {
    item: &'a Item,
    table: &'a str,
}

impl<'a> Get<'a> {
    fn new(item: &'a Item, table: &'a str) -> Self {
        Self { item, table }
    }

    fn opt_s(&self, k: &str) -> Result<Option<String>> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::S(v)) => Ok(Some(v.clone())),
            Some(_) => Err(corrupt(self.table, k, "not a string")),
        }
    }

    fn s(&self, k: &str) -> Result<String> {
        self.opt_s(k)?
            .ok_or_else(|| corrupt(self.table, k, "missing"))
    }

    fn opt_n(&self, k: &str) -> Result<Option<&'a str>> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(None),
            Some(AttributeValue::N(v)) => Ok(Some(v.as_str())),
            Some(_) => Err(corrupt(self.table, k, "not a number")),
        }
    }

    fn opt_dec(&self, k: &str) -> Result<Option<Decimal>> {
        self.opt_n(k)?
            .map(|v| {
                // DynamoDB may answer in exponent form (e.g. `1E+1`).
                v.parse::<Decimal>()
                    .or_else(|_| Decimal::from_scientific(v))
                    .map_err(|e| corrupt(self.table, k, &e.to_string()))
            })
            .transpose()
    }

    fn dec(&self, k: &str) -> Result<Decimal> {
        Ok(self.opt_dec(k)?.unwrap_or_default())
    }

    fn u64(&self, k: &str) -> Result<u64> {
        Ok(self.opt_u64(k)?.unwrap_or(0))
    }

    fn opt_u64(&self, k: &str) -> Result<Option<u64>> {
        self.opt_dec(k)?
            .map(|d| u64::try_from(d).map_err(|e| corrupt(self.table, k, &e.to_string())))
            .transpose()
    }

    fn i64(&self, k: &str) -> Result<i64> {
        Ok(self.opt_i64(k)?.unwrap_or(0))
    }

    fn opt_i64(&self, k: &str) -> Result<Option<i64>> {
        self.opt_dec(k)?
            .map(|d| i64::try_from(d).map_err(|e| corrupt(self.table, k, &e.to_string())))
            .transpose()
    }

    fn bool(&self, k: &str) -> Result<bool> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(false),
            Some(AttributeValue::Bool(b)) => Ok(*b),
            Some(_) => Err(corrupt(self.table, k, "not a boolean")),
        }
    }

    fn strings(&self, k: &str) -> Result<Vec<String>> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| match v {
                    AttributeValue::S(s) => Ok(s.clone()),
                    _ => Err(corrupt(self.table, k, "list of non-strings")),
                })
                .collect(),
            Some(AttributeValue::Ss(v)) => Ok(v.clone()),
            Some(_) => Err(corrupt(self.table, k, "not a list")),
        }
    }

    fn decimals(&self, k: &str) -> Result<Vec<Decimal>> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(Vec::new()),
            Some(AttributeValue::L(l)) => l
                .iter()
                .map(|v| {
                    let one: Item = [(k.to_string(), v.clone())].into_iter().collect();
                    Get::new(&one, self.table)
                        .opt_dec(k)?
                        .ok_or_else(|| corrupt(self.table, k, "null entry"))
                })
                .collect(),
            Some(_) => Err(corrupt(self.table, k, "not a list")),
        }
    }

    fn decimal_map(&self, k: &str) -> Result<BTreeMap<String, Decimal>> {
        match self.item.get(k) {
            None | Some(AttributeValue::Null(_)) => Ok(BTreeMap::new()),
            Some(AttributeValue::M(m)) => m
                .iter()
                .map(|(name, v)| {
                    let one: Item = [(name.clone(), v.clone())].into_iter().collect();
                    let d = Get::new(&one, self.table)
                        .opt_dec(name)?
                        .ok_or_else(|| corrupt(self.table, k, "null entry"))?;
                    Ok((name.clone(), d))
                })
                .collect(),
            Some(_) => Err(corrupt(self.table, k, "not a map")),
        }
    }

    fn set_contains(&self, k: &str, v: &str) -> bool {
        matches!(self.item.get(k), Some(AttributeValue::Ss(set)) if set.iter().any(|x| x == v))
    }
}

// ---------------------------------------------------------------------------
// holds

/// Hold state as stored (the trait's [`HoldState`] plus the two transient states).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DState {
    /// Written by R1, not yet counted in `reserved` (or counting in flight).
    Pending,
    Open,
    /// Claimed by a commit; the charge may or may not be applied yet.
    Committing,
    Committed,
    Released,
    Expired,
}

impl DState {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Open => "open",
            Self::Committing => "committing",
            Self::Committed => "committed",
            Self::Released => "released",
            Self::Expired => "expired",
        }
    }

    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            "pending" => Self::Pending,
            "open" => Self::Open,
            "committing" => Self::Committing,
            "committed" => Self::Committed,
            "released" => Self::Released,
            "expired" => Self::Expired,
            _ => return None,
        })
    }

    /// As the trait reports it (a `committing` hold is as good as committed).
    fn public(self) -> HoldState {
        match self {
            Self::Pending | Self::Open => HoldState::Open,
            Self::Committing | Self::Committed => HoldState::Committed,
            Self::Released => HoldState::Released,
            Self::Expired => HoldState::Expired,
        }
    }
}

/// A hold item as read back.
#[derive(Debug, Clone)]
struct DHold {
    hold: Hold,
    state: DState,
    /// Set on `committing`/`committed`.
    cost: Option<Decimal>,
    usage: Usage,
    estimated: bool,
    /// The usage was cut by `ledger::cap_usage` (set with the claim).
    capped: bool,
    settled_at_ms: i64,
    sweep_at: Option<i64>,
    /// Set on the claim of a commit admitted from a lease (see `leases`).
    lease_id: Option<String>,
}

fn shard(request_id: &str) -> String {
    // FNV-1a: stable across processes and releases (unlike std's hasher).
    let mut h: u32 = 0x811c_9dc5;
    for b in request_id.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("s{}", h % SWEEP_SHARDS)
}

/// Per-request attribution (holds and usage records); unset parts are absent.
fn put_attribution(item: &mut Item, a: &Attribution) {
    put_opt(item, "applicationId", a.application_id.clone().map(s));
    put_opt(item, "costCenter", a.cost_center.clone().map(s));
    put_opt(item, "environment", a.environment.clone().map(s));
    put_opt(item, "userId", a.user_id.clone().map(s));
}

fn attribution_from(g: &Get<'_>) -> Result<Attribution> {
    Ok(Attribution {
        application_id: g.opt_s("applicationId")?,
        cost_center: g.opt_s("costCenter")?,
        environment: g.opt_s("environment")?,
        user_id: g.opt_s("userId")?,
    })
}

/// Token counts (committed holds and usage records).
fn put_usage(item: &mut Item, u: &Usage) {
    item.insert("inputTokens".into(), nu(u.input_tokens));
    item.insert("outputTokens".into(), nu(u.output_tokens));
    item.insert("cacheReadInputTokens".into(), nu(u.cache_read_input_tokens));
    item.insert(
        "cacheWriteInputTokens".into(),
        nu(u.cache_write_input_tokens),
    );
}

fn usage_from(g: &Get<'_>) -> Result<Usage> {
    Ok(Usage {
        input_tokens: g.u64("inputTokens")?,
        output_tokens: g.u64("outputTokens")?,
        cache_read_input_tokens: g.u64("cacheReadInputTokens")?,
        cache_write_input_tokens: g.u64("cacheWriteInputTokens")?,
    })
}

/// The price snapshot (holds and leases).
fn put_rates(item: &mut Item, r: &Rates) {
    item.insert("rateInput".into(), n(r.input));
    item.insert("rateOutput".into(), n(r.output));
    item.insert("rateCacheRead".into(), n(r.cache_read));
    item.insert("rateCacheWrite".into(), n(r.cache_write));
}

fn rates_from(g: &Get<'_>) -> Result<Rates> {
    Ok(Rates {
        input: g.dec("rateInput")?,
        output: g.dec("rateOutput")?,
        cache_read: g.dec("rateCacheRead")?,
        cache_write: g.dec("rateCacheWrite")?,
    })
}

fn hold_item(h: &Hold) -> Item {
    let mut item = Item::new();
    item.insert("requestId".into(), s(&h.request_id));
    item.insert("tenantId".into(), s(&h.tenant_id));
    item.insert("period".into(), s(&h.period));
    item.insert("modelId".into(), s(&h.model_id));
    item.insert("targetModel".into(), s(&h.target_model));
    put_attribution(&mut item, &h.attribution);
    item.insert("maxOutputTokens".into(), nu(h.max_output_tokens));
    item.insert("holdUsd".into(), n(h.hold_usd));
    put_rates(&mut item, &h.rates);
    item.insert("createdAt".into(), ni(h.created_at_ms));
    item.insert("expiresAt".into(), ni(h.expires_at_ms));
    item.insert("state".into(), s(DState::Pending.as_str()));
    item.insert("sweepShard".into(), s(shard(&h.request_id)));
    item.insert("sweepAt".into(), ni(h.expires_at_ms));
    put_opt(&mut item, "modelBudgetUsd", h.model_budget_usd.map(n));
    put_opt(&mut item, "appBudgetUsd", h.app_budget_usd.map(n));
    put_opt(&mut item, "userBudgetUsd", h.user_budget_usd.map(n));
    item.insert("inputTokensEstimate".into(), nu(h.input_tokens_estimate));
    item
}

fn hold_from_item(item: &Item, table: &str) -> Result<DHold> {
    let g = Get::new(item, table);
    let state_s = g.s("state")?;
    let state = DState::parse(&state_s)
        .ok_or_else(|| corrupt(table, "state", &format!("unknown hold state {state_s:?}")))?;
    let hold = Hold {
        request_id: g.s("requestId")?,
        tenant_id: g.s("tenantId")?,
        period: g.s("period")?,
        model_id: g.s("modelId")?,
        target_model: g.s("targetModel")?,
        attribution: attribution_from(&g)?,
        max_output_tokens: g.u64("maxOutputTokens")?,
        hold_usd: g.dec("holdUsd")?,
        budget_remaining_usd: g.dec("budgetRemainingUsd")?,
        rates: rates_from(&g)?,
        created_at_ms: g.i64("createdAt")?,
        expires_at_ms: g.i64("expiresAt")?,
        state: state.public(),
        model_budget_usd: g.opt_dec("modelBudgetUsd")?,
        app_budget_usd: g.opt_dec("appBudgetUsd")?,
        user_budget_usd: g.opt_dec("userBudgetUsd")?,
        // Holds written before the attribute existed: no input cap.
        input_tokens_estimate: g.opt_u64("inputTokensEstimate")?.unwrap_or(u64::MAX),
    };
    Ok(DHold {
        hold,
        state,
        cost: g.opt_dec("costUsd")?,
        usage: usage_from(&g)?,
        estimated: g.bool("estimated")?,
        capped: g.bool("capped")?,
        settled_at_ms: g.i64("settledAt")?,
        sweep_at: g.opt_i64("sweepAt")?,
        lease_id: g.opt_s("leaseId")?,
    })
}

fn budget_sk(period: &str, scope: &str) -> String {
    format!("{period}#{scope}")
}

/// A fresh budget row (`ALL` or a budgeted model row): nothing spent or reserved.
fn budget_row_item(tenant: &str, period: &str, scope: &str, budget: Decimal) -> Item {
    let mut item = Item::new();
    item.insert("tenantId".into(), s(tenant));
    item.insert("modelId".into(), s(budget_sk(period, scope)));
    item.insert("period".into(), s(period));
    item.insert("scope".into(), s(scope));
    item.insert("totalBudget".into(), n(budget));
    item.insert("totalCost".into(), n(Decimal::ZERO));
    item.insert("reserved".into(), n(Decimal::ZERO));
    item.insert("available".into(), n(budget));
    for k in [
        "inputTokens",
        "outputTokens",
        "cacheReadInputTokens",
        "cacheWriteInputTokens",
        "requests",
    ] {
        item.insert(k.into(), nu(0));
    }
    item
}

fn totals_from_item(item: &Item, table: &str, period: &str) -> Result<Totals> {
    let g = Get::new(item, table);
    Ok(Totals {
        period: period.to_string(),
        budget_usd: g.dec("totalBudget")?,
        reserved_usd: g.dec("reserved")?,
        counters: counters_from(&g)?,
    })
}

fn counters_from(g: &Get<'_>) -> Result<Counters> {
    Ok(Counters {
        spent_usd: g.dec("totalCost")?,
        input_tokens: g.u64("inputTokens")?,
        output_tokens: g.u64("outputTokens")?,
        cache_read_input_tokens: g.u64("cacheReadInputTokens")?,
        cache_write_input_tokens: g.u64("cacheWriteInputTokens")?,
        requests: g.u64("requests")?,
    })
}

fn tenant_from_item(item: &Item, table: &str) -> Result<TenantConfig> {
    let g = Get::new(item, table);
    let cycle = g.s("resetCycle")?;
    Ok(TenantConfig {
        tenant_id: g.s("tenantId")?,
        budget_usd: g.dec("budgetUsd")?,
        alert_threshold: g.dec("alertThreshold")?,
        reset_cycle: ResetCycle::parse(&cycle)
            .ok_or_else(|| corrupt(table, "resetCycle", &format!("{cycle:?}")))?,
        active: g.bool("isActive")?,
        allowed_models: g.strings("allowedModels")?,
        default_model: g.opt_s("defaultModelId")?,
        max_tokens_cap: g.opt_u64("maxTokens")?,
        rate_limit_rpm: g
            .opt_u64("rateLimit")?
            .map(|v| u32::try_from(v).unwrap_or(u32::MAX)),
        rate_limit_tpm: g.opt_u64("rateLimitTpm")?,
        model_budgets: g.decimal_map("modelBudgets")?,
        model_rate_limit_tpm: g
            .decimal_map("modelRateLimitTpm")?
            .into_iter()
            .map(|(m, v)| {
                u64::try_from(v)
                    .map(|v| (m, v))
                    .map_err(|_| corrupt(table, "modelRateLimitTpm", "not a whole number"))
            })
            .collect::<Result<_>>()?,
        alert_thresholds: g.decimals("alertThresholds")?,
        application_budgets: g.decimal_map("applicationBudgets")?,
        user_budgets: g.decimal_map("userBudgets")?,
        default_user_budget_usd: g.opt_dec("defaultUserBudgetUsd")?,
    })
}

/// A map of budgets (by model, application or user) as one attribute; `None`
/// (the attribute removed) when empty.
fn budget_map(budgets: &BTreeMap<String, Decimal>) -> Option<AttributeValue> {
    (!budgets.is_empty())
        .then(|| AttributeValue::M(budgets.iter().map(|(k, b)| (k.clone(), n(*b))).collect()))
}

/// The `TenantConfigs` attributes Tollgate owns (besides the key), with their
/// values; `None` for an optional one that is unset (removed from the item).
fn tenant_attributes(cfg: &TenantConfig) -> Vec<(&'static str, Option<AttributeValue>)> {
    vec![
        ("budgetUsd", Some(n(cfg.budget_usd))),
        ("alertThreshold", Some(n(cfg.alert_threshold))),
        ("resetCycle", Some(s(cfg.reset_cycle.as_str()))),
        ("isActive", Some(AttributeValue::Bool(cfg.active))),
        (
            "allowedModels",
            Some(AttributeValue::L(
                cfg.allowed_models.iter().map(s).collect(),
            )),
        ),
        ("defaultModelId", cfg.default_model.clone().map(s)),
        ("maxTokens", cfg.max_tokens_cap.map(nu)),
        ("rateLimit", cfg.rate_limit_rpm.map(|v| nu(u64::from(v)))),
        ("rateLimitTpm", cfg.rate_limit_tpm.map(nu)),
        (
            "alertThresholds",
            (!cfg.alert_thresholds.is_empty())
                .then(|| AttributeValue::L(cfg.alert_thresholds.iter().map(|t| n(*t)).collect())),
        ),
        ("modelBudgets", budget_map(&cfg.model_budgets)),
        ("applicationBudgets", budget_map(&cfg.application_budgets)),
        ("userBudgets", budget_map(&cfg.user_budgets)),
        ("defaultUserBudgetUsd", cfg.default_user_budget_usd.map(n)),
        (
            "modelRateLimitTpm",
            (!cfg.model_rate_limit_tpm.is_empty()).then(|| {
                AttributeValue::M(
                    cfg.model_rate_limit_tpm
                        .iter()
                        .map(|(m, v)| (m.clone(), nu(*v)))
                        .collect(),
                )
            }),
        ),
    ]
}

/// The `TenantBudgets` key of a tenant's rate counters for one minute.
fn rate_key(tenant_id: &str, window: i64) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("tenantId", s(tenant_id)),
        ("modelId", s(format!("rate#{window}"))),
    ]
}

/// When DynamoDB's TTL may delete a minute's counters (epoch seconds): an hour
/// after the minute, long after any correction to it.
fn rate_window_ttl(window: i64) -> i64 {
    window.saturating_add(61).saturating_mul(60)
}

fn price_from_item(item: &Item, table: &str) -> Result<ModelPrice> {
    let g = Get::new(item, table);
    Ok(ModelPrice {
        model_id: g.s("modelId")?,
        input: g.dec("inputCost")?,
        output: g.dec("outputCost")?,
        cache_read: g.opt_dec("cacheReadCost")?,
        cache_write: g.opt_dec("cacheWriteCost")?,
    })
}

fn key_from_item(item: &Item, table: &str) -> Result<ApiKeyRecord> {
    let g = Get::new(item, table);
    Ok(ApiKeyRecord {
        key_id: g.s("keyId")?,
        tenant_id: g.s("tenantId")?,
        application_id: g.opt_s("applicationId")?,
        key_hash: g.s("keyHash")?,
        created_at_ms: g.i64("createdAt")?,
        revoked: g.opt_n("revokedAt")?.is_some(),
        expires_at_ms: g.opt_i64("expiresAt")?,
        last_used_at_ms: g.opt_i64("lastUsedAt")?,
    })
}

fn sigv4_from_item(item: &Item, table: &str) -> Result<SigV4CredentialRecord> {
    let g = Get::new(item, table);
    Ok(SigV4CredentialRecord {
        access_key_id: g.s("accessKeyId")?,
        tenant_id: g.s("tenantId")?,
        application_id: g.opt_s("applicationId")?,
        sealed_secret: g.s("sealedSecret")?,
        created_at_ms: g.i64("createdAt")?,
        revoked: g.opt_n("revokedAt")?.is_some(),
    })
}

/// The `TollgateAlerts` partition of the alert outbox. Tenant ids cannot
/// contain `#`, so it never meets a tenant's partition.
const OUTBOX_PARTITION: &str = "#outbox";

/// An alert's sort key: `<period>#<kind>` for the tenant's own alerts without
/// a threshold (as before scopes existed, so those keep firing once across an
/// upgrade), else `<period>#<scope>#<kind>[#<threshold>]`.
fn alert_sort_key(a: &AlertRecord) -> String {
    if a.scope == SCOPE_TENANT && a.threshold.is_none() {
        format!("{}#{}", a.period, a.kind.as_str())
    } else if a.threshold.is_some() {
        format!(
            "{}#{}#{}#{}",
            a.period,
            a.scope,
            a.kind.as_str(),
            a.threshold_key()
        )
    } else {
        format!("{}#{}#{}", a.period, a.scope, a.kind.as_str())
    }
}

fn outbox_key(alert_id: &str, target: &str) -> Vec<(&'static str, AttributeValue)> {
    vec![
        ("tenantId", s(OUTBOX_PARTITION)),
        ("periodKind", s(format!("{alert_id}#{target}"))),
    ]
}

fn outbox_from_item(item: &Item, table: &str) -> Result<OutboxEntry> {
    let g = Get::new(item, table);
    let state = g.s("state")?;
    Ok(OutboxEntry {
        alert_id: g.s("alertId")?,
        target: g.s("target")?,
        tenant_id: g.s("alertTenant")?,
        payload: g.s("payload")?,
        state: OutboxState::parse(&state)
            .ok_or_else(|| corrupt(table, "state", &format!("{state:?}")))?,
        attempts: u32::try_from(g.u64("attempts")?).unwrap_or(u32::MAX),
        next_attempt_ms: g.i64("nextAttemptAt")?,
        last_error: g.opt_s("lastError")?,
        created_at_ms: g.i64("createdAt")?,
        delivered_at_ms: g.opt_i64("deliveredAt")?,
    })
}

fn alert_from_item(item: &Item, table: &str) -> Result<AlertRecord> {
    let g = Get::new(item, table);
    let kind = g.s("kind")?;
    Ok(AlertRecord {
        tenant_id: g.s("tenantId")?,
        period: g.s("period")?,
        // Alerts written before scopes existed are the tenant's.
        scope: g
            .opt_s("scope")?
            .unwrap_or_else(|| SCOPE_TENANT.to_string()),
        threshold: g.opt_dec("threshold")?,
        kind: AlertKind::parse(&kind)
            .ok_or_else(|| corrupt(table, "kind", &format!("{kind:?}")))?,
        fired_at_ms: g.i64("firedAt")?,
        spent_usd: g.dec("spentUsd")?,
        budget_usd: g.dec("budgetUsd")?,
        request_id: g.opt_s("requestId")?,
        cost_usd: g.opt_dec("costUsd")?,
    })
}

fn usage_from_item(item: &Item, table: &str) -> Result<UsageRecord> {
    let g = Get::new(item, table);
    Ok(UsageRecord {
        capped: g.bool("capped")?,
        request_id: g.s("requestId")?,
        tenant_id: g.s("tenantId")?,
        model_id: g.s("modelId")?,
        attribution: attribution_from(&g)?,
        usage: usage_from(&g)?,
        cost_usd: g.dec("costUsd")?,
        estimated: g.bool("estimated")?,
        at_ms: g.i64("at")?,
    })
}

// ---------------------------------------------------------------------------
// the store

impl DynamoStore {
    /// Connects with the SDK's standard configuration chain (`AWS_REGION`,
    /// `AWS_ENDPOINT_URL_DYNAMODB`, `AWS_ACCESS_KEY_ID`/`AWS_PROFILE`/roles, …).
    pub async fn connect(opts: &DynamoOptions) -> Result<Self> {
        let conf = aws_config::defaults(BehaviorVersion::latest()).load().await;
        if conf.region().is_none() {
            return Err(Error::invalid(
                "the DynamoDB store needs a region: set AWS_REGION (or a profile with a region)",
            ));
        }
        Ok(Self::from_sdk_config(&conf, opts))
    }

    /// A store on an explicit SDK configuration (tests point it at dynalite).
    pub fn from_sdk_config(conf: &aws_config::SdkConfig, opts: &DynamoOptions) -> Self {
        let timeouts = aws_config::timeout::TimeoutConfig::builder()
            .operation_timeout(Duration::from_secs(10))
            .operation_attempt_timeout(Duration::from_secs(3))
            .connect_timeout(Duration::from_secs(3))
            .build();
        let conf = aws_sdk_dynamodb::config::Builder::from(conf)
            .timeout_config(timeouts)
            .build();
        Self {
            client: Client::from_conf(conf),
            t: Tables::new(&opts.table_prefix),
            pricing_region: if opts.pricing_region.is_empty() {
                "global".into()
            } else {
                opts.pricing_region.clone()
            },
        }
    }

    pub fn tables(&self) -> &Tables {
        &self.t
    }

    /// Creates the tables that do not exist (PAY_PER_REQUEST) and waits until all
    /// are ACTIVE. Returns (table, created) per table. Idempotent.
    pub async fn init_tables(&self) -> Result<Vec<(String, bool)>> {
        let mut out = Vec::new();
        for (name, hash, range, gsis) in self.t.definitions() {
            let mut attrs: Vec<&str> = vec![hash];
            attrs.extend(range);
            for (_, h, r) in &gsis {
                attrs.push(*h);
                attrs.push(*r);
            }
            attrs.sort_unstable();
            attrs.dedup();
            let build = |e: aws_sdk_dynamodb::error::BuildError| {
                Error::Internal(format!("table definition {name}: {e}"))
            };
            let key = |h: &str, r: Option<&str>| -> Result<Vec<KeySchemaElement>> {
                let mut v = vec![KeySchemaElement::builder()
                    .attribute_name(h)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?];
                if let Some(r) = r {
                    v.push(
                        KeySchemaElement::builder()
                            .attribute_name(r)
                            .key_type(KeyType::Range)
                            .build()
                            .map_err(build)?,
                    );
                }
                Ok(v)
            };
            let mut req = self
                .client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .set_key_schema(Some(key(hash, range)?));
            for a in attrs {
                req = req.attribute_definitions(
                    AttributeDefinition::builder()
                        .attribute_name(a)
                        .attribute_type(attr_type(a))
                        .build()
                        .map_err(build)?,
                );
            }
            for (index, h, r) in gsis {
                req = req.global_secondary_indexes(
                    GlobalSecondaryIndex::builder()
                        .index_name(index)
                        .set_key_schema(Some(key(h, Some(r))?))
                        .projection(
                            Projection::builder()
                                .projection_type(ProjectionType::All)
                                .build(),
                        )
                        .build()
                        .map_err(build)?,
                );
            }
            let created = match req.send().await {
                Ok(_) => true,
                Err(e) if e.code() == Some("ResourceInUseException") => false,
                Err(e) => return Err(hard(ddb_error("CreateTable", name, e), "CreateTable")),
            };
            out.push((name.to_string(), created));
        }
        for (name, _) in &out {
            self.wait_active(name).await?;
        }
        Ok(out)
    }

    /// `DescribeTable`: the table's status, and whether all its GSIs are active.
    async fn table_status(&self, table: &str) -> Result<(Option<TableStatus>, bool)> {
        let d = self
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await
            .map_err(|e| hard(ddb_error("DescribeTable", table, e), "DescribeTable"))?;
        let status = d.table().and_then(|t| t.table_status().cloned());
        let gsis_active = d
            .table()
            .map(|t| {
                t.global_secondary_indexes().iter().all(|g| {
                    g.index_status()
                        .is_none_or(|s| *s == aws_sdk_dynamodb::types::IndexStatus::Active)
                })
            })
            .unwrap_or(true);
        Ok((status, gsis_active))
    }

    async fn wait_active(&self, table: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let (status, gsis_active) = self.table_status(table).await?;
            if status == Some(TableStatus::Active) && gsis_active {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(Error::Internal(format!(
                    "DynamoDB table {table} is not ACTIVE after 120 s (status {status:?})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // --- small helpers ---------------------------------------------------------

    async fn get(&self, table: &str, key: Vec<(&str, AttributeValue)>) -> Result<Option<Item>> {
        let out = self
            .client
            .get_item()
            .table_name(table)
            .set_key(Some(vals(key)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| hard(ddb_error("GetItem", table, e), "GetItem"))?;
        Ok(out.item)
    }

    /// PutItem; with `unique_attr`, only if no item has that key yet.
    async fn put(
        &self,
        table: &str,
        item: Item,
        unique_attr: Option<&str>,
    ) -> std::result::Result<(), Fail> {
        let mut req = self
            .client
            .put_item()
            .table_name(table)
            .set_item(Some(item));
        if let Some(a) = unique_attr {
            req = req
                .condition_expression("attribute_not_exists(#k)")
                .expression_attribute_names("#k", a);
        }
        req.send()
            .await
            .map(|_| ())
            .map_err(|e| ddb_error("PutItem", table, e))
    }

    /// DeleteItem; whether an item was there.
    async fn remove(&self, table: &str, key: Vec<(&str, AttributeValue)>) -> Result<bool> {
        let out = self
            .client
            .delete_item()
            .table_name(table)
            .set_key(Some(vals(key)))
            .return_values(ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| hard(ddb_error("DeleteItem", table, e), "DeleteItem"))?;
        Ok(out.attributes.is_some_and(|a| !a.is_empty()))
    }

    /// Every entry of the alert outbox (one strongly consistent query of its
    /// partition: it holds only pending and failed entries).
    async fn outbox_items(&self) -> Result<Vec<OutboxEntry>> {
        self.query_all(
            &self.t.alerts,
            None,
            "#t = :t",
            names(&[("#t", "tenantId")]),
            vals(vec![(":t", s(OUTBOX_PARTITION))]),
        )
        .await?
        .iter()
        .map(|i| outbox_from_item(i, &self.t.alerts))
        .collect()
    }

    /// Every item of `table` belonging to a tenant, through its `byTenant` index.
    async fn by_tenant(&self, table: &str, tenant_id: &str) -> Result<Vec<Item>> {
        self.query_all(
            table,
            Some("byTenant"),
            "#t = :t",
            names(&[("#t", "tenantId")]),
            vals(vec![(":t", s(tenant_id))]),
        )
        .await
    }

    async fn query_all(
        &self,
        table: &str,
        index: Option<&str>,
        key_condition: &str,
        names_: HashMap<String, String>,
        values: HashMap<String, AttributeValue>,
    ) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let res = self
                .client
                .query()
                .table_name(table)
                .set_index_name(index.map(String::from))
                .key_condition_expression(key_condition)
                .set_expression_attribute_names(Some(names_.clone()))
                .set_expression_attribute_values(Some(values.clone()))
                .set_consistent_read(index.is_none().then_some(true))
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| hard(ddb_error("Query", table, e), "Query"))?;
            out.extend(res.items.unwrap_or_default());
            match res.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    async fn scan_all(&self, table: &str, filter: Option<Filter<'_>>) -> Result<Vec<Item>> {
        let mut out = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .client
                .scan()
                .table_name(table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some((f, nm, vs)) = &filter {
                req = req
                    .filter_expression(*f)
                    .set_expression_attribute_names(Some(nm.clone()))
                    .set_expression_attribute_values(Some(vs.clone()));
            }
            let res = req
                .send()
                .await
                .map_err(|e| hard(ddb_error("Scan", table, e), "Scan"))?;
            out.extend(res.items.unwrap_or_default());
            match res.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// UpdateItem returning the new item (ALL_NEW).
    async fn update(
        &self,
        table: &str,
        key: Vec<(&str, AttributeValue)>,
        update: &str,
        condition: Option<&str>,
        names_: &[(&str, &str)],
        values: Vec<(&str, AttributeValue)>,
    ) -> std::result::Result<Item, Fail> {
        let mut req = self
            .client
            .update_item()
            .table_name(table)
            .set_key(Some(vals(key)))
            .update_expression(update)
            .set_condition_expression(condition.map(String::from))
            .set_expression_attribute_names((!names_.is_empty()).then(|| names(names_)))
            .return_values(ReturnValue::AllNew);
        if !values.is_empty() {
            req = req.set_expression_attribute_values(Some(vals(values)));
        }
        req.send()
            .await
            .map(|o| o.attributes.unwrap_or_default())
            .map_err(|e| ddb_error("UpdateItem", table, e))
    }

    /// Marks a key or credential of `tenant_id` revoked (first revocation time
    /// kept); false when no such item belongs to the tenant.
    async fn revoke(
        &self,
        table: &str,
        key: (&str, AttributeValue),
        tenant_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let r = self
            .update(
                table,
                vec![key],
                "SET #rev = if_not_exists(#rev, :now)",
                Some("#t = :t"),
                &[("#rev", "revokedAt"), ("#t", "tenantId")],
                vec![(":now", ni(now_ms)), (":t", s(tenant_id))],
            )
            .await;
        Ok(applied(r)?.is_some())
    }

    /// Moves a budget row's `totalBudget` from `old` to `new` (and `available`
    /// by the difference); `false` when another writer changed it first.
    async fn move_budget(
        &self,
        key: Vec<(&str, AttributeValue)>,
        old: Decimal,
        new: Decimal,
    ) -> Result<bool> {
        let r = self
            .update(
                &self.t.budgets,
                key,
                "SET #budget = :new ADD #available :delta",
                Some("#budget = :old"),
                &[("#budget", "totalBudget"), ("#available", "available")],
                vec![(":new", n(new)), (":old", n(old)), (":delta", n(new - old))],
            )
            .await;
        Ok(applied(r)?.is_some())
    }

    /// Keys (`key_attr`) of the items whose `sweepAt` is due, from every shard
    /// of the table's sparse `bySweep` index (eventually consistent: callers
    /// act on a fresh read).
    async fn due(&self, table: &str, key_attr: &str, now_ms: i64) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for i in 0..SWEEP_SHARDS {
            let items = self
                .query_all(
                    table,
                    Some("bySweep"),
                    "#sh = :sh AND #at <= :now",
                    names(&[("#sh", "sweepShard"), ("#at", "sweepAt")]),
                    vals(vec![(":sh", s(format!("s{i}"))), (":now", ni(now_ms))]),
                )
                .await?;
            for item in &items {
                out.push(Get::new(item, table).s(key_attr)?);
            }
        }
        Ok(out)
    }

    fn all_key(&self, tenant: &str, period: &str) -> Vec<(&'static str, AttributeValue)> {
        vec![
            ("tenantId", s(tenant)),
            ("modelId", s(budget_sk(period, ALL))),
        ]
    }

    async fn get_all_row(&self, tenant: &str, period: &str) -> Result<Option<Item>> {
        self.get(&self.t.budgets, self.all_key(tenant, period))
            .await
    }

    /// Creates the period's `ALL` row unless it exists (lazily, on first use).
    async fn ensure_all_row(&self, tenant: &str, period: &str, budget: Decimal) -> Result<()> {
        let item = budget_row_item(tenant, period, ALL, budget);
        applied(self.put(&self.t.budgets, item, Some("tenantId")).await)?;
        Ok(())
    }

    async fn raw_hold(&self, request_id: &str) -> Result<Option<DHold>> {
        self.get(&self.t.holds, vec![("requestId", s(request_id))])
            .await?
            .map(|i| hold_from_item(&i, &self.t.holds))
            .transpose()
    }

    /// Conditional hold-state transition; `None` when the state was not `from`.
    async fn transition(
        &self,
        request_id: &str,
        from: &[DState],
        update: &str,
        mut extra_values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>> {
        let placeholders: Vec<String> = (0..from.len()).map(|i| format!(":from{i}")).collect();
        let cond = format!("#state IN ({})", placeholders.join(", "));
        for (i, st) in from.iter().enumerate() {
            let name: &'static str = match i {
                0 => ":from0",
                1 => ":from1",
                2 => ":from2",
                3 => ":from3",
                _ => return Err(Error::Internal("too many source states".into())),
            };
            extra_values.push((name, s(st.as_str())));
        }
        let mut nm = vec![("#state", "state")];
        for (alias, attr) in [
            ("#sweepShard", "sweepShard"),
            ("#sweepAt", "sweepAt"),
            ("#est", "estimated"),
        ] {
            if update.contains(alias) {
                nm.push((alias, attr));
            }
        }
        applied(
            self.update(
                &self.t.holds,
                vec![("requestId", s(request_id))],
                update,
                Some(&cond),
                &nm,
                extra_values,
            )
            .await,
        )
    }

    /// The key of a hold's budget row within its period: `ALL`, a model ID,
    /// `app:<id>`, `user:<id>` (see [`ScopedBudget::row`]).
    fn row_key(&self, h: &Hold, row: &str) -> Vec<(&'static str, AttributeValue)> {
        vec![
            ("tenantId", s(&h.tenant_id)),
            ("modelId", s(budget_sk(&h.period, row))),
        ]
    }

    fn model_key(&self, h: &Hold) -> Vec<(&'static str, AttributeValue)> {
        self.row_key(h, &h.model_id)
    }

    /// Gives a counted hold back to the period row, then to the row of each
    /// scoped budget it was admitted under. `true` if this call did the former.
    async fn give_back(&self, h: &Hold) -> Result<bool> {
        let done = self
            .give_back_row(h, self.all_key(&h.tenant_id, &h.period))
            .await?;
        self.give_back_scopes(h).await?;
        Ok(done)
    }

    /// The scoped rows' give-backs (each a no-op where the hold is not counted).
    async fn give_back_scopes(&self, h: &Hold) -> Result<()> {
        for scope in h.scoped_budgets() {
            self.give_back_row(h, self.row_key(h, &scope.row())).await?;
        }
        Ok(())
    }

    async fn give_back_row(&self, h: &Hold, key: Vec<(&str, AttributeValue)>) -> Result<bool> {
        Ok(self
            .hold_in_row(
                h,
                key,
                "ADD #reserved :nh, #available :h DELETE #openHolds :idset",
                "contains(#openHolds, :id)",
            )
            .await?
            .is_some())
    }

    /// Counts a hold in a budget row's `reserved` (the `ALL` row or its model
    /// row) if it fits there; `None` when it does not (or is counted already).
    /// Idempotent through the row's `openHolds`.
    async fn count_in_row(
        &self,
        h: &Hold,
        key: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<Item>> {
        self.hold_in_row(
            h,
            key,
            "ADD #reserved :h, #available :nh, #openHolds :idset",
            // A zero hold takes nothing and always fits (ledger::admits).
            if h.hold_usd.is_zero() {
                "attribute_exists(#available) AND NOT contains(#openHolds, :id)"
            } else {
                "#available >= :h AND NOT contains(#openHolds, :id)"
            },
        )
        .await
    }

    /// A hold's conditional move into or out of a row's `reserved`.
    async fn hold_in_row(
        &self,
        h: &Hold,
        key: Vec<(&str, AttributeValue)>,
        update: &str,
        condition: &str,
    ) -> Result<Option<Item>> {
        let r = self
            .update(
                &self.t.budgets,
                key,
                update,
                Some(condition),
                &[
                    ("#reserved", "reserved"),
                    ("#available", "available"),
                    ("#openHolds", "openHolds"),
                ],
                vec![
                    (":nh", n(-h.hold_usd)),
                    (":h", n(h.hold_usd)),
                    (":idset", ss(&h.request_id)),
                    (":id", s(&h.request_id)),
                ],
            )
            .await;
        applied(r)
    }

    /// R2 (+R3): counts a pending hold in `reserved` if it fits. Idempotent.
    async fn count_hold(&self, h: &Hold, period_budget: Decimal) -> Result<ReserveOutcome> {
        // Scoped budgets first (model, application, user), each refusing on
        // its own; a refusal gives back the ones already counted.
        for scope in h.scoped_budgets() {
            if let Some(refused) = self.count_scope_hold(h, &scope).await? {
                return Ok(refused);
            }
        }
        for _ in 0..MAX_ATTEMPTS {
            let r = self
                .count_in_row(h, self.all_key(&h.tenant_id, &h.period))
                .await?;
            let remaining = match r {
                Some(row) => Get::new(&row, &self.t.budgets).dec("available")?,
                None => {
                    let Some(row) = self.get_all_row(&h.tenant_id, &h.period).await? else {
                        self.ensure_all_row(&h.tenant_id, &h.period, period_budget)
                            .await?;
                        continue;
                    };
                    let g = Get::new(&row, &self.t.budgets);
                    if g.set_contains("openHolds", &h.request_id) {
                        // Already counted (a retried or concurrent duplicate reserve).
                        g.dec("available")?
                    } else {
                        let t = totals_from_item(&row, &self.t.budgets, &h.period)?;
                        let available = g.dec("available")?;
                        if crate::ledger::admits(available, h.hold_usd) {
                            continue; // budget was freed since the update: try again
                        }
                        self.drop_pending(h).await?;
                        return Ok(ReserveOutcome::Insufficient {
                            available,
                            spent: t.counters.spent_usd,
                            budget: t.budget_usd,
                        });
                    }
                }
            };
            // R3: pending → open with the remaining budget to replay.
            let done = self
                .transition(
                    &h.request_id,
                    &[DState::Pending],
                    "SET #state = :open, budgetRemainingUsd = :rem",
                    vec![(":open", s(DState::Open.as_str())), (":rem", n(remaining))],
                )
                .await?;
            if done.is_some() {
                return Ok(ReserveOutcome::Admitted);
            }
            return match self.raw_hold(&h.request_id).await? {
                // A concurrent duplicate confirmed it, or it was already settled.
                Some(d) if d.state != DState::Pending => {
                    if d.state != DState::Open {
                        // Released, expired or claimed by a commit while we were
                        // counting it: if our R2 landed after that settlement,
                        // give it back (a no-op when the settlement saw it).
                        self.give_back(&d.hold).await?;
                    }
                    Ok(ReserveOutcome::Existing(Box::new(d.hold)))
                }
                Some(_) => Err(Error::Internal(format!(
                    "hold {} stayed pending; retry the reserve",
                    h.request_id
                ))),
                // Deleted by a concurrent duplicate that was denied: undo ours.
                None => {
                    self.give_back(h).await?;
                    let row = self.get_all_row(&h.tenant_id, &h.period).await?;
                    let t = row
                        .map(|r| totals_from_item(&r, &self.t.budgets, &h.period))
                        .transpose()?
                        .unwrap_or_default();
                    Ok(ReserveOutcome::Insufficient {
                        available: t.available(),
                        spent: t.counters.spent_usd,
                        budget: t.budget_usd,
                    })
                }
            };
        }
        Err(Error::Internal(format!(
            "reserve {}: too much contention on the budget row (transient; retry)",
            h.request_id
        )))
    }

    /// Sets a scoped row's budget to the scope's (creating the row if
    /// missing), keeping `available = budget − totalCost − reserved`.
    async fn ensure_scope_budget(&self, h: &Hold, scope: &ScopedBudget) -> Result<()> {
        let (row_id, budget) = (scope.row(), scope.budget_usd);
        let key = self.row_key(h, &row_id);
        for _ in 0..MAX_ATTEMPTS {
            let Some(row) = self.get(&self.t.budgets, key.clone()).await? else {
                let item = budget_row_item(&h.tenant_id, &h.period, &row_id, budget);
                if applied(self.put(&self.t.budgets, item, Some("tenantId")).await)?.is_some() {
                    return Ok(());
                }
                continue;
            };
            let g = Get::new(&row, &self.t.budgets);
            let done = match g.opt_dec("totalBudget")? {
                Some(old) if old == budget => return Ok(()),
                // The budget changed: `available` moves by the difference.
                Some(old) => self.move_budget(key.clone(), old, budget).await?,
                // A row so far without a budget (only commits touched it,
                // never `reserved`): start `available` from its spend, provided
                // no commit lands in between.
                None => {
                    let spent = g.opt_dec("totalCost")?;
                    let cond = if spent.is_some() {
                        "attribute_not_exists(#budget) AND #cost = :spent"
                    } else {
                        "attribute_not_exists(#budget) AND attribute_not_exists(#cost)"
                    };
                    let spent = spent.unwrap_or_default();
                    let mut values = vec![
                        (":new", n(budget)),
                        (":avail", n(budget - spent)),
                        (":zero", n(Decimal::ZERO)),
                    ];
                    if mentions(cond, ":spent") {
                        values.push((":spent", n(spent)));
                    }
                    let r = self
                        .update(
                            &self.t.budgets,
                            key.clone(),
                            "SET #budget = :new, #available = :avail, #reserved = :zero",
                            Some(cond),
                            &[
                                ("#budget", "totalBudget"),
                                ("#available", "available"),
                                ("#reserved", "reserved"),
                                ("#cost", "totalCost"),
                            ],
                            values,
                        )
                        .await;
                    applied(r)?.is_some()
                }
            };
            if done {
                return Ok(());
            }
        }
        Err(Error::Internal(format!(
            "reserve {}: the {} budget row kept changing (transient; retry)",
            h.request_id,
            scope.level.noun()
        )))
    }

    /// M1: counts a pending hold in a scoped row's `reserved` (model,
    /// application, user) if it fits that budget. `Some(refusal)` when it does
    /// not (the pending hold is then dropped, and what earlier scopes counted
    /// given back). Idempotent through the row's `openHolds`.
    async fn count_scope_hold(
        &self,
        h: &Hold,
        scope: &ScopedBudget,
    ) -> Result<Option<ReserveOutcome>> {
        let key = self.row_key(h, &scope.row());
        self.ensure_scope_budget(h, scope).await?;
        for _ in 0..MAX_ATTEMPTS {
            if self.count_in_row(h, key.clone()).await?.is_some() {
                return Ok(None);
            }
            let Some(row) = self.get(&self.t.budgets, key.clone()).await? else {
                self.ensure_scope_budget(h, scope).await?;
                continue;
            };
            let g = Get::new(&row, &self.t.budgets);
            if g.set_contains("openHolds", &h.request_id) {
                return Ok(None); // already counted (a retried or concurrent reserve)
            }
            let available = g.dec("available")?;
            if g.opt_dec("totalBudget")?.is_none() {
                self.ensure_scope_budget(h, scope).await?;
                continue;
            }
            if crate::ledger::admits(available, h.hold_usd) {
                continue; // freed since the update: try again
            }
            self.drop_pending(h).await?;
            return Ok(Some(ReserveOutcome::ScopeInsufficient {
                scope: scope.clone(),
                available,
                spent: g.dec("totalCost")?,
                budget: g.dec("totalBudget")?,
            }));
        }
        Err(Error::Internal(format!(
            "reserve {}: too much contention on the {} budget row (transient; retry)",
            h.request_id,
            scope.level.noun()
        )))
    }

    /// Deletes a denied `pending` hold, so a later retry is evaluated afresh.
    /// The scoped rows' counts (if any) are given back *before* the item goes: a
    /// crash in between leaves a pending hold the sweeper expires, repeating
    /// the give-back; after the delete nothing would point at the money.
    async fn drop_pending(&self, h: &Hold) -> Result<()> {
        self.give_back_scopes(h).await?;
        let r = self
            .client
            .delete_item()
            .table_name(&self.t.holds)
            .key("requestId", s(&h.request_id))
            .condition_expression("#state = :pending")
            .expression_attribute_names("#state", "state")
            .expression_attribute_values(":pending", s(DState::Pending.as_str()))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| ddb_error("DeleteItem", &self.t.holds, e));
        applied(r)?;
        // A concurrent duplicate may have counted it in the meantime: undo that.
        self.give_back(h).await?;
        Ok(())
    }

    /// Gives an open (or pending) hold back and moves it to `to`.
    async fn settle_unused(&self, d: &DHold, to: DState, now_ms: i64) -> Result<bool> {
        // Give-back first (see the module docs): a crash after it leaves an open
        // hold whose repeat give-back is a no-op.
        self.give_back(&d.hold).await?;
        let done = self
            .transition(
                &d.hold.request_id,
                &[DState::Open, DState::Pending],
                "SET #state = :to, settledAt = :now REMOVE #sweepShard, #sweepAt",
                vec![(":to", s(to.as_str())), (":now", ni(now_ms))],
            )
            .await?;
        Ok(done.is_some())
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn check_ready(&self) -> Result<()> {
        for (name, ..) in self.t.definitions() {
            let (status, _) = self.table_status(name).await?;
            if status != Some(TableStatus::Active) {
                return Err(Error::Internal(format!(
                    "table {name} is {}, not ACTIVE",
                    status.map_or("missing".to_string(), |s| s.as_str().to_string())
                )));
            }
        }
        Ok(())
    }

    async fn put_tenant(&self, cfg: &TenantConfig, current_period: &str) -> Result<()> {
        // One UpdateItem over the attributes Tollgate owns (an upsert), so
        // attributes written by others (e.g. the seed deployment's `createdAt`)
        // survive: SET what has a value, REMOVE what became null.
        let owned = tenant_attributes(cfg);
        let placeholders: Vec<(String, String)> = (0..owned.len())
            .map(|i| (format!("#a{i}"), format!(":v{i}")))
            .collect();
        let mut set = Vec::new();
        let mut remove = Vec::new();
        let mut name_pairs = Vec::with_capacity(owned.len());
        let mut values = Vec::new();
        for ((attr, value), (name, placeholder)) in owned.into_iter().zip(&placeholders) {
            name_pairs.push((name.as_str(), attr));
            match value {
                Some(v) => {
                    set.push(format!("{name} = {placeholder}"));
                    values.push((placeholder.as_str(), v));
                }
                None => remove.push(name.as_str()),
            }
        }
        let mut update = format!("SET {}", set.join(", "));
        if !remove.is_empty() {
            update.push_str(&format!(" REMOVE {}", remove.join(", ")));
        }
        self.update(
            &self.t.tenants,
            vec![("tenantId", s(&cfg.tenant_id))],
            &update,
            None,
            &name_pairs,
            values,
        )
        .await
        .map_err(|f| hard(f, "put_tenant"))?;
        // The current period's budget follows; `available` moves by the difference.
        for _ in 0..MAX_ATTEMPTS {
            let Some(row) = self.get_all_row(&cfg.tenant_id, current_period).await? else {
                return Ok(());
            };
            let old = Get::new(&row, &self.t.budgets).dec("totalBudget")?;
            if old == cfg.budget_usd {
                return Ok(());
            }
            let key = self.all_key(&cfg.tenant_id, current_period);
            if self.move_budget(key, old, cfg.budget_usd).await? {
                return Ok(());
            }
        }
        Err(Error::Internal(format!(
            "put_tenant {}: the budget row kept changing (transient; retry)",
            cfg.tenant_id
        )))
    }

    async fn take_rate(
        &self,
        tenant_id: &str,
        window: i64,
        takes: &[RateTake],
    ) -> Result<RateOutcome> {
        // One conditional update of the tenant's minute item in `TenantBudgets`
        // (sort key `rate#<window>`, never a period's): all counters or none.
        let mut adds = Vec::with_capacity(takes.len());
        let mut conds = Vec::with_capacity(takes.len());
        let mut name_pairs = Vec::with_capacity(takes.len() + 1);
        let mut values = Vec::with_capacity(2 * takes.len() + 1);
        let placeholders: Vec<(String, String, String)> = (0..takes.len())
            .map(|i| (format!("#c{i}"), format!(":a{i}"), format!(":m{i}")))
            .collect();
        for (take, (name, add, max)) in takes.iter().zip(&placeholders) {
            if take.amount > take.limit {
                return Ok(RateOutcome::Refused {
                    counter: take.counter.clone(),
                    used: vec![0; takes.len()],
                });
            }
            adds.push(format!("{name} {add}"));
            conds.push(format!("(attribute_not_exists({name}) OR {name} <= {max})"));
            name_pairs.push((name.as_str(), take.counter.as_str()));
            values.push((add.as_str(), nu(take.amount)));
            values.push((max.as_str(), nu(take.limit - take.amount)));
        }
        name_pairs.push(("#ttl", "rateTtl"));
        values.push((":ttl", ni(rate_window_ttl(window))));
        let r = self
            .update(
                &self.t.budgets,
                rate_key(tenant_id, window),
                &format!("ADD {} SET #ttl = :ttl", adds.join(", ")),
                Some(&conds.join(" AND ")),
                &name_pairs,
                values,
            )
            .await;
        let counts = |row: &Item| -> Result<Vec<u64>> {
            let g = Get::new(row, &self.t.budgets);
            takes
                .iter()
                .map(|t| Ok(g.opt_u64(&t.counter)?.unwrap_or(0)))
                .collect()
        };
        if let Some(row) = applied(r)? {
            return Ok(RateOutcome::Taken {
                used: counts(&row)?,
            });
        }
        // Which one was full, for the message and the headers.
        let row = self
            .get(&self.t.budgets, rate_key(tenant_id, window))
            .await?
            .unwrap_or_default();
        let used = counts(&row)?;
        // None over by now (a refund in between): name the first; the client
        // retries.
        let counter = takes
            .iter()
            .zip(&used)
            .find(|(t, n)| n.saturating_add(t.amount) > t.limit)
            .or(takes.first().zip(used.first()))
            .map(|(t, _)| t.counter.clone())
            .unwrap_or_default();
        Ok(RateOutcome::Refused { counter, used })
    }

    async fn adjust_rate(
        &self,
        tenant_id: &str,
        window: i64,
        counter: &str,
        delta: i64,
    ) -> Result<()> {
        let r = self
            .update(
                &self.t.budgets,
                rate_key(tenant_id, window),
                "ADD #c :d SET #ttl = :ttl",
                None,
                &[("#c", counter), ("#ttl", "rateTtl")],
                vec![
                    (":d", AttributeValue::N(delta.to_string())),
                    (":ttl", ni(rate_window_ttl(window))),
                ],
            )
            .await;
        applied(r).map(|_| ())
    }

    async fn prune_rate_windows(&self, _before_window: i64) -> Result<()> {
        // DynamoDB's TTL on `rateTtl` deletes old windows (docs/dynamodb.md);
        // without it they are a few bytes per tenant and minute, never read.
        Ok(())
    }

    async fn delete_tenant(&self, tenant_id: &str, now_ms: i64) -> Result<TenantDeletion> {
        if self.get_tenant(tenant_id).await?.is_none() {
            return Ok(TenantDeletion::NotFound);
        }
        // Without transactions the check and the delete are two steps: a
        // request admitted between them (another sidecar's cache may still hold
        // the tenant for its TTL) settles or expires as usual on the kept rows.
        let rows = self
            .query_all(
                &self.t.budgets,
                None,
                "#t = :t",
                names(&[("#t", "tenantId")]),
                vals(vec![(":t", s(tenant_id))]),
            )
            .await?;
        let mut reserved = Decimal::ZERO;
        for row in &rows {
            let g = Get::new(row, &self.t.budgets);
            if g.s("modelId")?.ends_with("#ALL") {
                reserved += g.opt_dec("reserved")?.unwrap_or_default();
            }
        }
        if reserved > Decimal::ZERO {
            return Ok(TenantDeletion::Busy {
                reserved_usd: reserved,
            });
        }
        // Credentials first: once the call returns, none of them authenticates,
        // even if a later step fails and the delete is retried.
        for item in self.by_tenant(&self.t.keys, tenant_id).await? {
            let hash = Get::new(&item, &self.t.keys).s("keyHash")?;
            self.revoke(&self.t.keys, ("keyHash", s(hash)), tenant_id, now_ms)
                .await?;
        }
        for item in self.by_tenant(&self.t.sigv4, tenant_id).await? {
            let id = Get::new(&item, &self.t.sigv4).s("accessKeyId")?;
            self.revoke(&self.t.sigv4, ("accessKeyId", s(id)), tenant_id, now_ms)
                .await?;
        }
        for p in self.list_profiles(tenant_id).await? {
            self.delete_profile(tenant_id, p.application_id.as_deref(), &p.model_id)
                .await?;
        }
        self.remove(&self.t.tenants, vec![("tenantId", s(tenant_id))])
            .await?;
        Ok(TenantDeletion::Deleted)
    }

    async fn get_tenant(&self, tenant_id: &str) -> Result<Option<TenantConfig>> {
        self.get(&self.t.tenants, vec![("tenantId", s(tenant_id))])
            .await?
            .map(|i| tenant_from_item(&i, &self.t.tenants))
            .transpose()
    }

    async fn list_tenants(&self) -> Result<Vec<TenantConfig>> {
        let mut out = self
            .scan_all(&self.t.tenants, None)
            .await?
            .iter()
            .map(|i| tenant_from_item(i, &self.t.tenants))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        Ok(out)
    }

    fn pricing_region(&self) -> &str {
        &self.pricing_region
    }

    async fn put_price_in(&self, region: &str, price: &ModelPrice) -> Result<()> {
        let mut item = Item::new();
        item.insert("region".into(), s(region));
        item.insert("modelId".into(), s(&price.model_id));
        item.insert("inputCost".into(), n(price.input));
        item.insert("outputCost".into(), n(price.output));
        put_opt(&mut item, "cacheReadCost", price.cache_read.map(n));
        put_opt(&mut item, "cacheWriteCost", price.cache_write.map(n));
        item.insert("currency".into(), s("USD"));
        self.put(&self.t.pricing, item, None)
            .await
            .map_err(|f| hard(f, "put_price"))
    }

    async fn delete_price_in(&self, region: &str, model_id: &str) -> Result<bool> {
        self.remove(
            &self.t.pricing,
            vec![("region", s(region)), ("modelId", s(model_id))],
        )
        .await
    }

    async fn get_price_in(&self, region: &str, model_id: &str) -> Result<Option<ModelPrice>> {
        self.get(
            &self.t.pricing,
            vec![("region", s(region)), ("modelId", s(model_id))],
        )
        .await?
        .map(|i| price_from_item(&i, &self.t.pricing))
        .transpose()
    }

    async fn list_prices_in(&self, region: &str) -> Result<Vec<ModelPrice>> {
        self.query_all(
            &self.t.pricing,
            None,
            "#r = :r",
            names(&[("#r", "region")]),
            vals(vec![(":r", s(region))]),
        )
        .await?
        .iter()
        .map(|i| price_from_item(i, &self.t.pricing))
        .collect()
    }

    async fn put_alias(&self, alias: &str, model_id: &str) -> Result<()> {
        let item = vals(vec![("alias", s(alias)), ("modelId", s(model_id))]);
        self.put(&self.t.aliases, item, None)
            .await
            .map_err(|f| hard(f, "put_alias"))
    }

    async fn delete_alias(&self, alias: &str) -> Result<bool> {
        self.remove(&self.t.aliases, vec![("alias", s(alias))])
            .await
    }

    async fn get_alias(&self, alias: &str) -> Result<Option<String>> {
        self.get(&self.t.aliases, vec![("alias", s(alias))])
            .await?
            .map(|i| Get::new(&i, &self.t.aliases).s("modelId"))
            .transpose()
    }

    async fn list_aliases(&self) -> Result<BTreeMap<String, String>> {
        self.scan_all(&self.t.aliases, None)
            .await?
            .iter()
            .map(|i| {
                let g = Get::new(i, &self.t.aliases);
                Ok((g.s("alias")?, g.s("modelId")?))
            })
            .collect()
    }

    async fn put_profile(&self, profile: &Profile) -> Result<()> {
        let app = profile.application_id.clone().unwrap_or_default();
        let mut item = Item::new();
        item.insert("tenantId".into(), s(&profile.tenant_id));
        item.insert(
            "profileKey".into(),
            s(format!("{app}#{}", profile.model_id)),
        );
        item.insert("applicationId".into(), s(app));
        item.insert("modelId".into(), s(&profile.model_id));
        item.insert("arn".into(), s(&profile.arn));
        self.put(&self.t.profiles, item, None)
            .await
            .map_err(|f| hard(f, "put_profile"))
    }

    async fn delete_profile(
        &self,
        tenant_id: &str,
        application_id: Option<&str>,
        model_id: &str,
    ) -> Result<bool> {
        let key = format!("{}#{model_id}", application_id.unwrap_or_default());
        self.remove(
            &self.t.profiles,
            vec![("tenantId", s(tenant_id)), ("profileKey", s(key))],
        )
        .await
    }

    async fn list_profiles(&self, tenant_id: &str) -> Result<Vec<Profile>> {
        let mut out = self
            .query_all(
                &self.t.profiles,
                None,
                "#t = :t",
                names(&[("#t", "tenantId")]),
                vals(vec![(":t", s(tenant_id))]),
            )
            .await?
            .iter()
            .map(|i| {
                let g = Get::new(i, &self.t.profiles);
                let app = g.opt_s("applicationId")?.unwrap_or_default();
                Ok(Profile {
                    tenant_id: g.s("tenantId")?,
                    application_id: (!app.is_empty()).then_some(app),
                    model_id: g.s("modelId")?,
                    arn: g.s("arn")?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.application_id.as_deref().unwrap_or(""), &a.model_id)
                .cmp(&(b.application_id.as_deref().unwrap_or(""), &b.model_id))
        });
        Ok(out)
    }

    async fn insert_key(&self, key: &ApiKeyRecord) -> Result<bool> {
        let mut item = Item::new();
        item.insert("keyHash".into(), s(&key.key_hash));
        item.insert("keyId".into(), s(&key.key_id));
        item.insert("tenantId".into(), s(&key.tenant_id));
        put_opt(
            &mut item,
            "applicationId",
            key.application_id.clone().map(s),
        );
        item.insert("createdAt".into(), ni(key.created_at_ms));
        put_opt(&mut item, "expiresAt", key.expires_at_ms.map(ni));
        Ok(applied(self.put(&self.t.keys, item, Some("keyHash")).await)?.is_some())
    }

    async fn find_key(&self, key_hash: &str) -> Result<Option<ApiKeyRecord>> {
        Ok(self
            .get(&self.t.keys, vec![("keyHash", s(key_hash))])
            .await?
            .map(|i| key_from_item(&i, &self.t.keys))
            .transpose()?
            .filter(|k| !k.revoked))
    }

    async fn list_keys(&self, tenant_id: &str) -> Result<Vec<ApiKeyRecord>> {
        let mut out = self
            .by_tenant(&self.t.keys, tenant_id)
            .await?
            .iter()
            .map(|i| key_from_item(i, &self.t.keys))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.created_at_ms, &a.key_id).cmp(&(b.created_at_ms, &b.key_id)));
        Ok(out)
    }

    async fn revoke_key(&self, tenant_id: &str, key_id: &str, now_ms: i64) -> Result<bool> {
        // The GSI is eventually consistent: a key issued a moment ago may not be
        // found yet (the caller gets "not found" and can retry).
        let found = self
            .query_all(
                &self.t.keys,
                Some("byTenant"),
                "#t = :t AND #k = :k",
                names(&[("#t", "tenantId"), ("#k", "keyId")]),
                vals(vec![(":t", s(tenant_id)), (":k", s(key_id))]),
            )
            .await?;
        let mut any = false;
        for item in found {
            let hash = Get::new(&item, &self.t.keys).s("keyHash")?;
            any |= self
                .revoke(&self.t.keys, ("keyHash", s(hash)), tenant_id, now_ms)
                .await?;
        }
        Ok(any)
    }

    async fn touch_keys(&self, used: &[(String, i64)]) -> Result<()> {
        // One small conditional update per key and flush: the condition keeps
        // the time from moving back (two sidecars flushing) and never creates
        // an item for a key deleted meanwhile.
        let updates = used.iter().map(|(hash, at)| async move {
            let r = self
                .update(
                    &self.t.keys,
                    vec![("keyHash", s(hash))],
                    "SET #u = :at",
                    Some("attribute_exists(#h) AND (attribute_not_exists(#u) OR #u < :at)"),
                    &[("#u", "lastUsedAt"), ("#h", "keyHash")],
                    vec![(":at", ni(*at))],
                )
                .await;
            applied(r).map(|_| ())
        });
        futures_util::future::join_all(updates)
            .await
            .into_iter()
            .collect()
    }

    async fn insert_sigv4_credential(&self, cred: &SigV4CredentialRecord) -> Result<bool> {
        let mut item = Item::new();
        item.insert("accessKeyId".into(), s(&cred.access_key_id));
        item.insert("tenantId".into(), s(&cred.tenant_id));
        put_opt(
            &mut item,
            "applicationId",
            cred.application_id.clone().map(s),
        );
        item.insert("sealedSecret".into(), s(&cred.sealed_secret));
        item.insert("createdAt".into(), ni(cred.created_at_ms));
        Ok(applied(self.put(&self.t.sigv4, item, Some("accessKeyId")).await)?.is_some())
    }

    async fn find_sigv4_credential(
        &self,
        access_key_id: &str,
    ) -> Result<Option<SigV4CredentialRecord>> {
        Ok(self
            .get(&self.t.sigv4, vec![("accessKeyId", s(access_key_id))])
            .await?
            .map(|i| sigv4_from_item(&i, &self.t.sigv4))
            .transpose()?
            .filter(|c| !c.revoked))
    }

    async fn list_sigv4_credentials(&self, tenant_id: &str) -> Result<Vec<SigV4CredentialRecord>> {
        let mut out = self
            .by_tenant(&self.t.sigv4, tenant_id)
            .await?
            .iter()
            .map(|i| sigv4_from_item(i, &self.t.sigv4))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.created_at_ms, &a.access_key_id).cmp(&(b.created_at_ms, &b.access_key_id))
        });
        Ok(out)
    }

    async fn revoke_sigv4_credential(
        &self,
        tenant_id: &str,
        access_key_id: &str,
        now_ms: i64,
    ) -> Result<bool> {
        self.revoke(
            &self.t.sigv4,
            ("accessKeyId", s(access_key_id)),
            tenant_id,
            now_ms,
        )
        .await
    }

    async fn list_all_sigv4_credentials(&self) -> Result<Vec<SigV4CredentialRecord>> {
        let mut out = self
            .scan_all(&self.t.sigv4, None)
            .await?
            .iter()
            .map(|i| sigv4_from_item(i, &self.t.sigv4))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| a.access_key_id.cmp(&b.access_key_id));
        Ok(out)
    }

    async fn replace_sigv4_sealed_secret(
        &self,
        access_key_id: &str,
        old: &str,
        new: &str,
    ) -> Result<bool> {
        // SET of the one attribute, conditional on the value read: a revocation
        // in between is kept, and a missing item fails the condition instead of
        // being created.
        let r = self
            .update(
                &self.t.sigv4,
                vec![("accessKeyId", s(access_key_id))],
                "SET #s = :new",
                Some("#s = :old"),
                &[("#s", "sealedSecret")],
                vec![(":new", s(new)), (":old", s(old))],
            )
            .await;
        Ok(applied(r)?.is_some())
    }

    async fn get_hold(&self, request_id: &str) -> Result<Option<Hold>> {
        // A pending hold is not a reservation yet (see the module docs).
        Ok(self
            .raw_hold(request_id)
            .await?
            .filter(|d| d.state != DState::Pending)
            .map(|d| d.hold))
    }

    async fn reserve(&self, hold: &Hold, period_budget: Decimal) -> Result<ReserveOutcome> {
        for _ in 0..MAX_ATTEMPTS {
            // R1: the hold item first, unique per request id.
            match applied(
                self.put(&self.t.holds, hold_item(hold), Some("requestId"))
                    .await,
            )? {
                Some(()) => return self.count_hold(hold, period_budget).await,
                None => match self.raw_hold(&hold.request_id).await? {
                    // Deleted in between by a denied duplicate: start over.
                    None => continue,
                    // A crashed or concurrent reserve: finish it (idempotent),
                    // with the stored hold's numbers, not this request's.
                    Some(d) if d.state == DState::Pending => {
                        return self.count_hold(&d.hold, period_budget).await;
                    }
                    Some(d) => return Ok(ReserveOutcome::Existing(Box::new(d.hold))),
                },
            }
        }
        Err(Error::Internal(format!(
            "reserve {}: the hold kept changing (transient; retry)",
            hold.request_id
        )))
    }

    async fn commit(
        &self,
        request_id: &str,
        usage: &Usage,
        estimated: bool,
        now_ms: i64,
    ) -> Result<CommitApplied> {
        for _ in 0..MAX_ATTEMPTS {
            let Some(d) = self.raw_hold(request_id).await? else {
                return Ok(CommitApplied::Unknown);
            };
            if matches!(d.state, DState::Committed | DState::Committing) {
                // A `committing` hold belongs to the commit that claimed it (or to
                // the sweeper's recovery after the grace period).
                return Ok(CommitApplied::Duplicate { cost: d.cost });
            }
            let (usage, capped) = crate::ledger::cap_usage(
                usage,
                estimated,
                d.hold.max_output_tokens,
                d.hold.input_tokens_estimate,
            );
            let usage = &usage;
            let cost = d.hold.rates.cost(usage).map_err(|_| {
                Error::invalid(format!(
                    "usage of request {request_id} overflows the cost arithmetic"
                ))
            })?;
            // C1: claim, recording what will be charged (recovery replays it).
            let claimed = self
                .transition(
                    request_id,
                    &[d.state],
                    "SET #state = :committing, priorState = :prior, costUsd = :c, \
                     inputTokens = :it, outputTokens = :ot, cacheReadInputTokens = :cr, \
                     cacheWriteInputTokens = :cw, #est = :est, capped = :capped, \
                     settledAt = :now, #sweepShard = :shard, #sweepAt = :grace",
                    vec![
                        (":committing", s(DState::Committing.as_str())),
                        (":prior", s(d.state.as_str())),
                        (":c", n(cost)),
                        (":it", nu(usage.input_tokens)),
                        (":ot", nu(usage.output_tokens)),
                        (":cr", nu(usage.cache_read_input_tokens)),
                        (":cw", nu(usage.cache_write_input_tokens)),
                        (":est", AttributeValue::Bool(estimated)),
                        (":capped", AttributeValue::Bool(capped)),
                        (":now", ni(now_ms)),
                        (":shard", s(shard(request_id))),
                        (":grace", ni(now_ms.saturating_add(RECOVERY_GRACE_MS))),
                    ],
                )
                .await?;
            let Some(item) = claimed else {
                continue; // the state moved (sweeper, release, duplicate): re-read
            };
            let claimed = hold_from_item(&item, &self.t.holds)?;
            let (totals, scopes) = self.finish_commit(&claimed, now_ms).await?;
            let mut hold = d.hold;
            hold.state = d.state.public();
            return Ok(CommitApplied::Committed {
                capped,
                cost,
                usage: *usage,
                hold: Box::new(hold),
                totals,
                scopes,
            });
        }
        Err(Error::Internal(format!(
            "commit {request_id}: the hold kept changing (transient; retry)"
        )))
    }

    async fn release(&self, request_id: &str, now_ms: i64) -> Result<bool> {
        let Some(d) = self.raw_hold(request_id).await? else {
            return Ok(false);
        };
        if !matches!(d.state, DState::Open | DState::Pending) {
            return Ok(false);
        }
        self.settle_unused(&d, DState::Released, now_ms).await
    }

    async fn expire_holds(&self, now_ms: i64) -> Result<u64> {
        let mut expired = self.expire_leases(now_ms).await?;
        for id in self.due(&self.t.holds, "requestId", now_ms).await? {
            // The index is eventually consistent: act on a fresh read, and
            // only through conditional transitions.
            let Some(d) = self.raw_hold(&id).await? else {
                continue;
            };
            match d.state {
                DState::Open | DState::Pending if d.hold.expires_at_ms <= now_ms => {
                    let done = self.settle_unused(&d, DState::Expired, now_ms).await?;
                    expired += u64::from(done);
                }
                DState::Committing if d.sweep_at.is_some_and(|t| t <= now_ms) => {
                    // Recover a commit whose claimant died: claim the recovery
                    // (one sweeper wins), then finish it idempotently.
                    let r = self
                        .update(
                            &self.t.holds,
                            vec![("requestId", s(&id))],
                            "SET #sweepAt = :next",
                            Some("#state = :committing AND #sweepAt = :seen"),
                            &[("#state", "state"), ("#sweepAt", "sweepAt")],
                            vec![
                                (":next", ni(now_ms.saturating_add(RECOVERY_GRACE_MS))),
                                (":committing", s(DState::Committing.as_str())),
                                (":seen", ni(d.sweep_at.unwrap_or_default())),
                            ],
                        )
                        .await;
                    if applied(r)?.is_some() {
                        tracing::warn!(request_id = %id, "completing an interrupted commit");
                        self.finish_commit(&d, now_ms).await?;
                    }
                }
                _ => {}
            }
        }
        Ok(expired)
    }

    fn supports_leases(&self) -> bool {
        true
    }

    async fn grant_lease(
        &self,
        lease: &LeaseRecord,
        sizing: &LeaseSizing,
        period_budget: Decimal,
    ) -> Result<LeaseOutcome> {
        self.grant_lease_impl(lease, sizing, period_budget).await
    }

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
        self.renew_lease_impl(
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
        self.get_lease_impl(lease_id).await
    }

    async fn commit_leased(&self, c: &LeasedCommit, now_ms: i64) -> Result<CommitApplied> {
        self.commit_leased_batch(std::slice::from_ref(c), now_ms)
            .await
            .pop()
            .unwrap_or_else(|| Err(Error::Internal("commit result missing".into())))
    }

    async fn commit_leased_batch(
        &self,
        commits: &[LeasedCommit],
        now_ms: i64,
    ) -> Vec<Result<CommitApplied>> {
        // One settlement group per lease (see `commit`), the leases in parallel.
        let mut by_lease: Vec<(&str, Vec<usize>)> = Vec::new();
        for (i, c) in commits.iter().enumerate() {
            match by_lease.iter_mut().find(|(l, _)| *l == c.lease_id) {
                Some((_, idx)) => idx.push(i),
                None => by_lease.push((&c.lease_id, vec![i])),
            }
        }
        let groups = futures_util::future::join_all(by_lease.iter().map(|(lease, idx)| {
            let group: Vec<&LeasedCommit> = idx.iter().map(|&i| &commits[i]).collect();
            async move { self.commit_lease_group(lease, &group, now_ms).await }
        }))
        .await;
        let mut out: Vec<Option<Result<CommitApplied>>> = commits.iter().map(|_| None).collect();
        for ((_, idx), results) in by_lease.iter().zip(groups) {
            match results {
                Ok(results) => {
                    for (&i, r) in idx.iter().zip(results) {
                        out[i] = Some(r);
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for &i in idx {
                        out[i] = Some(Err(Error::Internal(msg.clone())));
                    }
                }
            }
        }
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| Err(Error::Internal("commit result missing".into()))))
            .collect()
    }

    async fn balance(
        &self,
        tenant_id: &str,
        period: &str,
        default_budget: Decimal,
    ) -> Result<Balance> {
        let rows = self
            .query_all(
                &self.t.budgets,
                None,
                "#t = :t AND begins_with(#sk, :p)",
                names(&[("#t", "tenantId"), ("#sk", "modelId")]),
                vals(vec![(":t", s(tenant_id)), (":p", s(format!("{period}#")))]),
            )
            .await?;
        let mut balance = Balance {
            totals: Totals {
                period: period.to_string(),
                budget_usd: default_budget,
                ..Default::default()
            },
            ..Balance::default()
        };
        let all_sk = budget_sk(period, ALL);
        for row in &rows {
            let g = Get::new(row, &self.t.budgets);
            let sk = g.s("modelId")?;
            if sk == all_sk {
                balance.totals = totals_from_item(row, &self.t.budgets, period)?;
            } else {
                let limit = match g.opt_dec("totalBudget")? {
                    Some(budget_usd) => Some(BudgetLimit {
                        budget_usd,
                        reserved_usd: g.dec("reserved")?,
                    }),
                    None => None,
                };
                balance.add_row(&sk[period.len() + 1..], counters_from(&g)?, limit);
            }
        }
        Ok(balance)
    }

    /// No transaction joins the two writes (dynalite has no
    /// `TransactWriteItems`), so the outbox entries are written *first*, each
    /// a conditional put keyed by the alert's stable id and target, then the
    /// alert itself (conditional: the once-per-period guard). If the alert had
    /// already fired, the entries this call created are deleted again. A
    /// crash between the writes therefore errs towards delivering: the entries
    /// are delivered, and a later firing finds the alert missing and records
    /// it (a redelivery carries the same id, so receivers drop it).
    async fn record_alert(
        &self,
        alert: &AlertRecord,
        payload: &str,
        targets: &[String],
    ) -> Result<bool> {
        let alert_id = alert.alert_id();
        let mut created = Vec::new();
        for target in targets {
            let mut item = Item::new();
            item.insert("tenantId".into(), s(OUTBOX_PARTITION));
            item.insert("periodKind".into(), s(format!("{alert_id}#{target}")));
            item.insert("alertId".into(), s(&alert_id));
            item.insert("target".into(), s(target));
            item.insert("alertTenant".into(), s(&alert.tenant_id));
            item.insert("payload".into(), s(payload));
            item.insert("state".into(), s(OutboxState::Pending.as_str()));
            item.insert("attempts".into(), nu(0));
            item.insert("nextAttemptAt".into(), ni(alert.fired_at_ms));
            item.insert("createdAt".into(), ni(alert.fired_at_ms));
            if applied(self.put(&self.t.alerts, item, Some("tenantId")).await)?.is_some() {
                created.push(format!("{alert_id}#{target}"));
            }
        }
        let mut item = Item::new();
        item.insert("tenantId".into(), s(&alert.tenant_id));
        item.insert("periodKind".into(), s(alert_sort_key(alert)));
        item.insert("period".into(), s(&alert.period));
        item.insert("scope".into(), s(&alert.scope));
        item.insert("kind".into(), s(alert.kind.as_str()));
        put_opt(&mut item, "threshold", alert.threshold.map(n));
        item.insert("alertId".into(), s(&alert_id));
        item.insert("firedAt".into(), ni(alert.fired_at_ms));
        item.insert("spentUsd".into(), n(alert.spent_usd));
        item.insert("budgetUsd".into(), n(alert.budget_usd));
        put_opt(&mut item, "requestId", alert.request_id.clone().map(s));
        put_opt(&mut item, "costUsd", alert.cost_usd.map(n));
        let fired = applied(self.put(&self.t.alerts, item, Some("tenantId")).await)?.is_some();
        if !fired {
            for sk in created {
                self.remove(
                    &self.t.alerts,
                    vec![("tenantId", s(OUTBOX_PARTITION)), ("periodKind", s(sk))],
                )
                .await?;
            }
        }
        Ok(fired)
    }

    async fn claim_outbox(
        &self,
        now_ms: i64,
        claim_until_ms: i64,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let mut due: Vec<OutboxEntry> = self
            .outbox_items()
            .await?
            .into_iter()
            .filter(|e| e.state == OutboxState::Pending && e.next_attempt_ms <= now_ms)
            .collect();
        due.sort_by_key(|e| e.next_attempt_ms);
        let mut out = Vec::new();
        for e in due.into_iter().take(limit) {
            // The claim is conditional on the entry still being due, so of two
            // sidecars polling at once only one takes it.
            let r = self
                .update(
                    &self.t.alerts,
                    outbox_key(&e.alert_id, &e.target),
                    "SET #next = :until",
                    Some("#st = :pending AND #next <= :now"),
                    &[("#next", "nextAttemptAt"), ("#st", "state")],
                    vec![
                        (":until", ni(claim_until_ms)),
                        (":pending", s(OutboxState::Pending.as_str())),
                        (":now", ni(now_ms)),
                    ],
                )
                .await;
            if let Some(item) = applied(r)? {
                out.push(outbox_from_item(&item, &self.t.alerts)?);
            }
        }
        Ok(out)
    }

    /// A delivered entry is deleted (the alert item keeps the history), so the
    /// outbox partition holds only pending and failed entries.
    async fn finish_outbox(
        &self,
        alert_id: &str,
        target: &str,
        result: &OutboxResult,
        _now_ms: i64,
    ) -> Result<()> {
        let key = outbox_key(alert_id, target);
        let pending = s(OutboxState::Pending.as_str());
        let r = match result {
            OutboxResult::Delivered => {
                self.remove(&self.t.alerts, key).await?;
                return Ok(());
            }
            OutboxResult::Retry {
                next_attempt_ms,
                error,
            } => {
                self.update(
                    &self.t.alerts,
                    key,
                    "SET #next = :next, #err = :err ADD #att :one",
                    Some("#st = :pending"),
                    &[
                        ("#next", "nextAttemptAt"),
                        ("#err", "lastError"),
                        ("#att", "attempts"),
                        ("#st", "state"),
                    ],
                    vec![
                        (":next", ni(*next_attempt_ms)),
                        (":err", s(error)),
                        (":one", nu(1)),
                        (":pending", pending),
                    ],
                )
                .await
            }
            OutboxResult::Failed { error } => {
                self.update(
                    &self.t.alerts,
                    key,
                    "SET #st = :failed, #err = :err ADD #att :one",
                    Some("#st = :pending"),
                    &[
                        ("#err", "lastError"),
                        ("#att", "attempts"),
                        ("#st", "state"),
                    ],
                    vec![
                        (":failed", s(OutboxState::Failed.as_str())),
                        (":err", s(error)),
                        (":one", nu(1)),
                        (":pending", pending),
                    ],
                )
                .await
            }
        };
        applied(r)?;
        Ok(())
    }

    async fn list_outbox(
        &self,
        state: Option<OutboxState>,
        limit: usize,
    ) -> Result<Vec<OutboxEntry>> {
        let mut out: Vec<OutboxEntry> = self
            .outbox_items()
            .await?
            .into_iter()
            .filter(|e| state.is_none_or(|st| e.state == st))
            .collect();
        out.sort_by(|a, b| {
            (b.created_at_ms, &a.alert_id, &a.target).cmp(&(
                a.created_at_ms,
                &b.alert_id,
                &b.target,
            ))
        });
        out.truncate(limit);
        Ok(out)
    }

    async fn outbox_counts(&self) -> Result<(u64, u64)> {
        let items = self.outbox_items().await?;
        let count = |st| items.iter().filter(|e| e.state == st).count() as u64;
        Ok((count(OutboxState::Pending), count(OutboxState::Failed)))
    }

    async fn retry_outbox(&self, alert_id: &str, now_ms: i64) -> Result<u64> {
        let mut n = 0;
        for e in self.outbox_items().await? {
            if e.alert_id != alert_id || e.state != OutboxState::Failed {
                continue;
            }
            let r = self
                .update(
                    &self.t.alerts,
                    outbox_key(&e.alert_id, &e.target),
                    "SET #st = :pending, #att = :zero, #next = :now",
                    Some("#st = :failed"),
                    &[
                        ("#st", "state"),
                        ("#att", "attempts"),
                        ("#next", "nextAttemptAt"),
                    ],
                    vec![
                        (":pending", s(OutboxState::Pending.as_str())),
                        (":failed", s(OutboxState::Failed.as_str())),
                        (":zero", nu(0)),
                        (":now", ni(now_ms)),
                    ],
                )
                .await;
            if applied(r)?.is_some() {
                n += 1;
            }
        }
        Ok(n)
    }

    async fn list_alerts(&self, tenant_id: &str) -> Result<Vec<AlertRecord>> {
        let mut out = self
            .query_all(
                &self.t.alerts,
                None,
                "#t = :t",
                names(&[("#t", "tenantId")]),
                vals(vec![(":t", s(tenant_id))]),
            )
            .await?
            .iter()
            .map(|i| alert_from_item(i, &self.t.alerts))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| {
            (a.fired_at_ms, &a.scope, a.kind.as_str(), a.threshold).cmp(&(
                b.fired_at_ms,
                &b.scope,
                b.kind.as_str(),
                b.threshold,
            ))
        });
        Ok(out)
    }

    async fn usage(&self, from_ms: Option<i64>, to_ms: Option<i64>) -> Result<Vec<UsageRecord>> {
        // Reports scan the usage table (see docs/dynamodb.md for a time-bucket GSI
        // when it grows large).
        let filter = (
            "#at >= :from AND #at < :to",
            names(&[("#at", "at")]),
            vals(vec![
                (":from", ni(from_ms.unwrap_or(i64::MIN))),
                (":to", ni(to_ms.unwrap_or(i64::MAX))),
            ]),
        );
        let mut out = self
            .scan_all(&self.t.usage, Some(filter))
            .await?
            .iter()
            .map(|i| usage_from_item(i, &self.t.usage))
            .collect::<Result<Vec<_>>>()?;
        out.sort_by(|a, b| (a.at_ms, &a.request_id).cmp(&(b.at_ms, &b.request_id)));
        Ok(out)
    }
}

/// `tollgate-sidecar dynamodb init`.
pub async fn init_command(opts: &DynamoOptions) -> Result<()> {
    let store = DynamoStore::connect(opts).await?;
    for (table, created) in store.init_tables().await? {
        println!("{table}: {}", if created { "created" } else { "exists" });
    }
    Ok(())
}
