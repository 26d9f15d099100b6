//! Pure ledger rules: periods, hold sizing, admission, alert crossing, rate limits.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;

/// When a tenant's budget starts over (UTC).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ResetCycle {
    #[default]
    Monthly,
    /// ISO weeks (Monday to Sunday, UTC).
    Weekly,
    Daily,
    None,
}

impl ResetCycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Weekly => "weekly",
            Self::Daily => "daily",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "monthly" => Self::Monthly,
            "weekly" => Self::Weekly,
            "daily" => Self::Daily,
            "none" => Self::None,
            _ => return None,
        })
    }
}

/// The ledger period `now` falls in: `2026-11` (monthly), `2026-W48` (weekly:
/// the ISO week and its ISO year, so 2027-01-01 is in `2026-W53`), `2026-11-23`
/// (daily), `all` (never resets). All UTC.
pub fn period_key(cycle: ResetCycle, now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    match cycle {
        ResetCycle::Monthly => format!("{:04}-{:02}", now.year(), u8::from(now.month())),
        ResetCycle::Weekly => {
            let (year, week, _) = now.to_iso_week_date();
            format!("{year:04}-W{week:02}")
        }
        ResetCycle::Daily => format!(
            "{:04}-{:02}-{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
        ResetCycle::None => "all".to_string(),
    }
}

pub use tollgate_wire::rates::max_output_tokens;

/// `budget − spent − reserved` (may be negative after late commits).
pub fn available(budget: Decimal, spent: Decimal, reserved: Decimal) -> Decimal {
    budget - spent - reserved
}

/// The hard-cap admission rule. A zero hold takes nothing and always fits, so a
/// request already served (`failure_mode: open`) is recorded even when the
/// tenant is overdrawn.
pub fn admits(available: Decimal, hold: Decimal) -> bool {
    hold.is_zero() || available >= hold
}

/// How much budget a lease may take (DESIGN §4, leases).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSizing {
    /// What the gateway asked for (a few seconds of its recent spend).
    pub want: Decimal,
    /// The smallest useful grant: one request's hold.
    pub min: Decimal,
    /// The largest share of the available budget one grant may take (0–1).
    pub fraction: Decimal,
}

impl LeaseSizing {
    /// The grant for `available`: `want`, but never more than `fraction` of
    /// what is left, and never less than `min` while `min` fits — so near the
    /// cap a lease is exactly one request's hold and the last dollar is never
    /// promised twice. `None` when not even `min` fits (or nothing is wanted).
    pub fn grant(&self, available: Decimal) -> Option<Decimal> {
        if self.want <= Decimal::ZERO || available < self.min || available <= Decimal::ZERO {
            return None;
        }
        let share = (available * self.fraction).min(self.want);
        Some(share.max(self.min).min(available))
    }
}

pub use tollgate_wire::rates::cap_usage;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// Spent reached `alert_threshold × budget`.
    Threshold,
    /// Spent reached the budget (or a hold was refused for lack of budget).
    Exhausted,
    /// One invocation cost more than the high-cost threshold.
    HighCost,
}

impl AlertKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Threshold => "threshold",
            Self::Exhausted => "exhausted",
            Self::HighCost => "high_cost",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "threshold" => Self::Threshold,
            "exhausted" => Self::Exhausted,
            "high_cost" => Self::HighCost,
            _ => return None,
        })
    }
}

/// The budget alerts whose condition holds for one budget scope (the tenant's
/// budget, a model budget, …) at `spent` of `budget`: a `threshold` alert per
/// crossed threshold, and `exhausted` once spent reaches the budget. Whether
/// they already fired in this period is the store's business (once per tenant,
/// period, scope, kind and threshold).
pub fn budget_alerts(
    spent: Decimal,
    budget: Decimal,
    thresholds: &[Decimal],
) -> Vec<(AlertKind, Option<Decimal>)> {
    let mut out = Vec::new();
    if budget > Decimal::ZERO {
        for t in thresholds {
            if spent >= budget * *t {
                out.push((AlertKind::Threshold, Some(*t)));
            }
        }
    }
    if spent >= budget && (budget > Decimal::ZERO || spent > Decimal::ZERO) {
        out.push((AlertKind::Exhausted, None));
    }
    out
}

/// Alerts whose condition holds after a commit, for the tenant's own budget:
/// [`budget_alerts`] plus `high_cost` when this invocation cost more than
/// `high_cost_threshold`.
pub fn alerts_after_commit(
    spent: Decimal,
    budget: Decimal,
    thresholds: &[Decimal],
    cost: Decimal,
    high_cost_threshold: Decimal,
) -> Vec<(AlertKind, Option<Decimal>)> {
    let mut kinds = budget_alerts(spent, budget, thresholds);
    if cost > high_cost_threshold {
        kinds.push((AlertKind::HighCost, None));
    }
    kinds
}

/// Checks a list of alert thresholds: 1 to 10 fractions in [0, 1]. Returns
/// them ascending, duplicates removed (`0.8` and `0.80` are one).
pub fn normalize_thresholds(list: &[Decimal]) -> Result<Vec<Decimal>, String> {
    if list.is_empty() || list.len() > 10 {
        return Err(format!(
            "alert_thresholds must list 1 to 10 fractions, got {}",
            list.len()
        ));
    }
    let mut out: Vec<Decimal> = Vec::with_capacity(list.len());
    for t in list {
        if *t < Decimal::ZERO || *t > Decimal::ONE {
            return Err(format!("alert threshold {t} must be between 0 and 1"));
        }
        let t = t.normalize();
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out.sort();
    Ok(out)
}

/// Per-tenant requests-per-minute limiter (GCRA, i.e. a token bucket of `rpm`
/// tokens refilled continuously at `rpm` per minute). In memory, per sidecar.
#[derive(Debug, Default)]
pub struct RateLimiter {
    /// Theoretical arrival time per tenant, in nanoseconds since the epoch.
    tat: Mutex<HashMap<String, i128>>,
}

impl RateLimiter {
    /// `Ok(())` admits one request; `Err(secs)` tells when to retry.
    pub fn check(&self, tenant: &str, rpm: u32, now: OffsetDateTime) -> Result<(), u64> {
        if rpm == 0 {
            return Err(60);
        }
        let now = now.unix_timestamp_nanos();
        let interval = 60_000_000_000i128 / i128::from(rpm);
        let tolerance = interval * i128::from(rpm - 1);
        let mut map = self.tat.lock().unwrap_or_else(|e| e.into_inner());
        let stored = map.get(tenant).copied().unwrap_or(now);
        let tat = stored.max(now);
        if tat - now > tolerance {
            let wait = tat - tolerance - now;
            let secs = (wait + 999_999_999) / 1_000_000_000;
            return Err(u64::try_from(secs.max(1)).unwrap_or(60));
        }
        map.insert(tenant.to_string(), tat + interval);
        Ok(())
    }
}

/// Nanoseconds per minute: one token is `NS_PER_MINUTE` bucket units, and a bucket
/// of `tpm` tokens per minute refills `tpm` units per nanosecond.
const NS_PER_MINUTE: i128 = 60_000_000_000;

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    /// Bucket level in units (tokens × `NS_PER_MINUTE`); negative while in debt.
    level: i128,
    /// When `level` was last refilled, ns since the epoch.
    at_ns: i128,
}

#[derive(Debug, Clone)]
struct TokenCharge {
    tenant: String,
    tokens: u64,
    at_ns: i128,
}

#[derive(Debug, Default)]
struct TokenState {
    buckets: HashMap<String, TokenBucket>,
    /// Tokens charged at reserve time per request id, corrected at commit.
    charges: HashMap<String, TokenCharge>,
}

/// Per-tenant tokens-per-minute limiter: a bucket of `tpm` tokens refilled
/// continuously at `tpm` per minute. A reserve takes `input estimate + max output`
/// tokens; the commit corrects the charge to the actual tokens (refunding what was
/// not used, or going into debt for an overrun); a release refunds it. In memory,
/// per sidecar (like [`RateLimiter`]).
#[derive(Debug, Default)]
pub struct TokenRateLimiter {
    state: Mutex<TokenState>,
}

impl TokenRateLimiter {
    fn refill(bucket: &mut TokenBucket, tpm: u64, now_ns: i128) {
        let cap = i128::from(tpm) * NS_PER_MINUTE;
        let elapsed = (now_ns - bucket.at_ns).max(0);
        bucket.level = bucket
            .level
            .saturating_add(elapsed.saturating_mul(i128::from(tpm)))
            .min(cap);
        bucket.at_ns = bucket.at_ns.max(now_ns);
    }

    /// Takes `tokens` from the tenant's bucket for `request_id`. A request larger
    /// than the whole bucket is admitted once the bucket is full (and leaves it in
    /// debt). `Err(secs)` tells when to retry.
    pub fn try_take(
        &self,
        tenant: &str,
        request_id: &str,
        tpm: u64,
        tokens: u64,
        now: OffsetDateTime,
    ) -> Result<(), u64> {
        if tpm == 0 {
            return Err(60);
        }
        let now_ns = now.unix_timestamp_nanos();
        let cap = i128::from(tpm) * NS_PER_MINUTE;
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let bucket = st.buckets.entry(tenant.to_string()).or_insert(TokenBucket {
            level: cap,
            at_ns: now_ns,
        });
        Self::refill(bucket, tpm, now_ns);
        let need = i128::from(tokens.min(tpm)) * NS_PER_MINUTE;
        if bucket.level < need {
            let wait_ns = (need - bucket.level + i128::from(tpm) - 1) / i128::from(tpm);
            let secs = (wait_ns + 999_999_999) / 1_000_000_000;
            return Err(u64::try_from(secs.max(1)).unwrap_or(60));
        }
        bucket.level -= i128::from(tokens) * NS_PER_MINUTE;
        st.charges.insert(
            request_id.to_string(),
            TokenCharge {
                tenant: tenant.to_string(),
                tokens,
                at_ns: now_ns,
            },
        );
        Ok(())
    }

    /// Replaces the reserve-time charge of `request_id` by the `actual` tokens.
    /// Unknown requests (e.g. reserved before a restart) are left alone.
    pub fn settle(&self, request_id: &str, actual: u64) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = st.charges.remove(request_id) {
            if let Some(b) = st.buckets.get_mut(&c.tenant) {
                let diff = i128::from(c.tokens) - i128::from(actual);
                b.level = b.level.saturating_add(diff * NS_PER_MINUTE);
            }
        }
    }

    /// Gives back the whole reserve-time charge (request refused or released).
    pub fn refund(&self, request_id: &str) {
        self.settle(request_id, 0);
    }

    /// Forgets charges older than `max_age` (their commit is not coming).
    pub fn prune(&self, now: OffsetDateTime, max_age: time::Duration) {
        let cutoff = now.unix_timestamp_nanos() - max_age.whole_nanoseconds();
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.charges.retain(|_, c| c.at_ns >= cutoff);
    }

    /// Tokens left in a tenant's bucket (tests and diagnostics); `None` if unseen.
    pub fn level(&self, tenant: &str) -> Option<i128> {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.buckets.get(tenant).map(|b| b.level / NS_PER_MINUTE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn period_keys() {
        let t = datetime!(2026-11-23 23:59:59 UTC);
        assert_eq!(period_key(ResetCycle::Monthly, t), "2026-11");
        assert_eq!(period_key(ResetCycle::Daily, t), "2026-11-23");
        assert_eq!(period_key(ResetCycle::None, t), "all");
        // Periods are UTC even when the input carries an offset.
        let t = datetime!(2026-12-01 00:30 +01:00);
        assert_eq!(period_key(ResetCycle::Monthly, t), "2026-11");
        assert_eq!(period_key(ResetCycle::Daily, t), "2026-11-30");
        // ISO weeks: Monday 00:00 UTC starts one; the ISO year may differ.
        let week = |t| period_key(ResetCycle::Weekly, t);
        assert_eq!(week(datetime!(2026-11-23 00:00 UTC)), "2026-W48"); // a Monday
        assert_eq!(week(datetime!(2026-11-29 23:59:59 UTC)), "2026-W48"); // Sunday
        assert_eq!(week(datetime!(2026-11-30 00:00 UTC)), "2026-W49");
        assert_eq!(week(datetime!(2026-11-30 00:30 +01:00)), "2026-W48");
        assert_eq!(week(datetime!(2027-01-01 12:00 UTC)), "2026-W53");
        assert_eq!(week(datetime!(2027-01-04 00:00 UTC)), "2027-W01");
        assert_eq!(week(datetime!(2025-12-29 00:00 UTC)), "2026-W01");
    }

    #[test]
    fn hold_output_size() {
        assert_eq!(max_output_tokens(None, 4096, None), 4096);
        assert_eq!(max_output_tokens(None, 4096, Some(4000)), 4000);
        assert_eq!(max_output_tokens(Some(100), 4096, Some(4000)), 100);
        assert_eq!(max_output_tokens(Some(9000), 4096, None), 9000);
    }

    #[test]
    fn admission_is_inclusive() {
        let avail = available(d("1.00"), d("0.25"), d("0.5"));
        assert_eq!(avail, d("0.25"));
        assert!(admits(avail, d("0.25")));
        assert!(!admits(avail, d("0.2500001")));
    }

    #[test]
    fn alert_crossing() {
        let one = [d("0.8")];
        let none = alerts_after_commit(d("0.79"), d("1"), &one, d("0.01"), d("10"));
        assert!(none.is_empty());
        let t = alerts_after_commit(d("0.80"), d("1"), &one, d("0.01"), d("10"));
        assert_eq!(t, vec![(AlertKind::Threshold, Some(d("0.8")))]);
        let all = alerts_after_commit(d("12"), d("1"), &one, d("11"), d("10"));
        assert_eq!(
            all,
            vec![
                (AlertKind::Threshold, Some(d("0.8"))),
                (AlertKind::Exhausted, None),
                (AlertKind::HighCost, None)
            ]
        );
        assert!(alerts_after_commit(d("0"), d("0"), &one, d("0"), d("10")).is_empty());
        // Several thresholds: each one crossed is its own alert.
        let three = [d("0.5"), d("0.8"), d("0.95")];
        let kinds = |spent| budget_alerts(d(spent), d("10"), &three);
        assert_eq!(kinds("4.99"), vec![]);
        assert_eq!(kinds("5"), vec![(AlertKind::Threshold, Some(d("0.5")))]);
        assert_eq!(kinds("9.5").len(), 3);
        assert_eq!(kinds("10").len(), 4, "{:?}", kinds("10"));
    }

    #[test]
    fn thresholds_are_checked_and_sorted() {
        assert_eq!(
            normalize_thresholds(&[d("0.95"), d("0.50"), d("0.8"), d("0.5")]),
            Ok(vec![d("0.5"), d("0.8"), d("0.95")])
        );
        assert!(normalize_thresholds(&[]).is_err());
        assert!(normalize_thresholds(&[d("1.01")]).is_err());
        assert!(normalize_thresholds(&[d("-0.1")]).is_err());
        assert!(normalize_thresholds(&[d("0.5"); 11]).is_err());
    }

    #[test]
    fn rate_limiter_allows_rpm_then_throttles() {
        let rl = RateLimiter::default();
        let t0 = datetime!(2026-11-23 12:00 UTC);
        for _ in 0..3 {
            assert_eq!(rl.check("a", 3, t0), Ok(()));
        }
        assert_eq!(rl.check("a", 3, t0), Err(20));
        assert_eq!(rl.check("b", 3, t0), Ok(()), "tenants are independent");
        assert_eq!(rl.check("a", 3, t0 + time::Duration::seconds(20)), Ok(()));
        assert!(rl.check("a", 3, t0 + time::Duration::seconds(20)).is_err());
    }

    #[test]
    fn token_limiter_charges_estimate_and_corrects_at_commit() {
        let tl = TokenRateLimiter::default();
        let t0 = datetime!(2026-11-23 12:00 UTC);
        assert_eq!(tl.try_take("a", "r1", 1000, 600, t0), Ok(()));
        assert_eq!(tl.level("a"), Some(400));
        // 600 more do not fit: 200 tokens short at 1000/min = 12 s.
        assert_eq!(tl.try_take("a", "r2", 1000, 600, t0), Err(12));
        // The commit used only 100 of the 600: 500 come back.
        tl.settle("r1", 100);
        assert_eq!(tl.level("a"), Some(900));
        assert_eq!(tl.try_take("a", "r2", 1000, 600, t0), Ok(()));
        // An overrun puts the bucket in debt.
        tl.settle("r2", 1500);
        assert_eq!(tl.level("a"), Some(-600));
        assert_eq!(tl.try_take("a", "r3", 1000, 1, t0), Err(37));
        // Refill is continuous and capped at tpm.
        let later = t0 + time::Duration::minutes(5);
        assert_eq!(tl.try_take("a", "r3", 1000, 10, later), Ok(()));
        assert_eq!(tl.level("a"), Some(990));
        tl.refund("r3");
        assert_eq!(tl.level("a"), Some(1000));
        tl.settle("r3", 999); // already settled: no effect
        assert_eq!(tl.level("a"), Some(1000));
        // Larger than the bucket: admitted when full, then in debt.
        assert_eq!(tl.try_take("b", "big", 100, 250, t0), Ok(()));
        assert_eq!(tl.level("b"), Some(-150));
        assert!(tl.try_take("b", "big2", 100, 250, t0).is_err());
        tl.prune(t0 + time::Duration::hours(1), time::Duration::minutes(10));
        tl.settle("big", 0);
        assert_eq!(
            tl.level("b"),
            Some(-150),
            "pruned charges are not corrected"
        );
    }
}
