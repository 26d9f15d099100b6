//! Pure ledger rules: periods, hold sizing, admission, alert crossing.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
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
}
