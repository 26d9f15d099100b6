//! Pure ledger rules: periods, hold sizing, admission, alert crossing, rate limits.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Mutex;
use time::OffsetDateTime;

/// When a tenant's budget starts over (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ResetCycle {
    #[default]
    Monthly,
    Daily,
    None,
}

impl ResetCycle {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Monthly => "monthly",
            Self::Daily => "daily",
            Self::None => "none",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "monthly" => Self::Monthly,
            "daily" => Self::Daily,
            "none" => Self::None,
            _ => return None,
        })
    }
}

/// The ledger period `now` falls in: `2026-11` (monthly), `2026-11-23` (daily),
/// `all` (never resets).
pub fn period_key(cycle: ResetCycle, now: OffsetDateTime) -> String {
    let now = now.to_offset(time::UtcOffset::UTC);
    match cycle {
        ResetCycle::Monthly => format!("{:04}-{:02}", now.year(), u8::from(now.month())),
        ResetCycle::Daily => format!(
            "{:04}-{:02}-{:02}",
            now.year(),
            u8::from(now.month()),
            now.day()
        ),
        ResetCycle::None => "all".to_string(),
    }
}

/// Output tokens a hold assumes (and the filter enforces upstream): the request's
/// own limit or the sidecar default, clamped to the tenant's cap.
pub fn max_output_tokens(requested: Option<u64>, default: u64, cap: Option<u64>) -> u64 {
    let wanted = requested.unwrap_or(default);
    match cap {
        Some(cap) => wanted.min(cap),
        None => wanted,
    }
}

/// `budget − spent − reserved` (may be negative after late commits).
pub fn available(budget: Decimal, spent: Decimal, reserved: Decimal) -> Decimal {
    budget - spent - reserved
}

/// The hard-cap admission rule.
pub fn admits(available: Decimal, hold: Decimal) -> bool {
    available >= hold
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

/// Alert kinds whose condition holds after a commit. Whether they already fired in
/// this period is the store's business (once per tenant, period and kind).
pub fn alerts_after_commit(
    spent: Decimal,
    budget: Decimal,
    alert_threshold: Decimal,
    cost: Decimal,
    high_cost_threshold: Decimal,
) -> Vec<AlertKind> {
    let mut kinds = Vec::new();
    if budget > Decimal::ZERO && spent >= budget * alert_threshold {
        kinds.push(AlertKind::Threshold);
    }
    if spent >= budget && (budget > Decimal::ZERO || spent > Decimal::ZERO) {
        kinds.push(AlertKind::Exhausted);
    }
    if cost > high_cost_threshold {
        kinds.push(AlertKind::HighCost);
    }
    kinds
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
        let none = alerts_after_commit(d("0.79"), d("1"), d("0.8"), d("0.01"), d("10"));
        assert!(none.is_empty());
        let t = alerts_after_commit(d("0.80"), d("1"), d("0.8"), d("0.01"), d("10"));
        assert_eq!(t, vec![AlertKind::Threshold]);
        let all = alerts_after_commit(d("12"), d("1"), d("0.8"), d("11"), d("10"));
        assert_eq!(
            all,
            vec![
                AlertKind::Threshold,
                AlertKind::Exhausted,
                AlertKind::HighCost
            ]
        );
        assert!(alerts_after_commit(d("0"), d("0"), d("0.8"), d("0"), d("10")).is_empty());
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
}
