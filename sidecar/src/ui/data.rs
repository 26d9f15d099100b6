//! The dashboard's numbers, from the same calls the admin API makes: balances
//! from `Admin::balance` printed through `api::BalanceView` (so a page shows
//! exactly what `GET /v1/tenants/{tenant}` returns), splits and trends from the
//! usage rows grouped by `api::group_usage` (as `GET /v1/usage`). Nothing here
//! computes money of its own beyond summing usage rows per day.

use crate::api::{group_usage, BalanceView};
use crate::clock::{from_millis, to_millis};
use crate::error::Result;
use crate::service::Service;
use crate::store::{AlertRecord, TenantConfig, UsageRecord};
use rust_decimal::Decimal;
use std::collections::BTreeMap;
use time::{Date, Month, OffsetDateTime, Time};

/// Days the trend of an open-ended period (`reset_cycle: none`) shows.
pub const OPEN_PERIOD_DAYS: i64 = 30;

/// A tenant and its current period's balance.
pub struct TenantSummary {
    pub config: TenantConfig,
    pub balance: BalanceView,
}

/// Every tenant with its current balance, in tenant order.
pub async fn tenant_summaries(service: &Service) -> Result<Vec<TenantSummary>> {
    let admin = service.admin();
    let mut out = Vec::new();
    for config in service.store.list_tenants().await? {
        let period = admin.current_period(&config);
        let balance = BalanceView::from(admin.balance(&config.tenant_id, &period).await?);
        out.push(TenantSummary { config, balance });
    }
    out.sort_by(|a, b| a.config.tenant_id.cmp(&b.config.tenant_id));
    Ok(out)
}

/// The days a period's trend shows, up to `today`: a month's days so far, a
/// daily period's one day, or the last [`OPEN_PERIOD_DAYS`] of an open one.
pub fn period_days(period: &str, today: Date) -> Vec<Date> {
    let (first, last) = match parse_period(period) {
        Some(Period::Month(y, m)) => {
            let first = Date::from_calendar_date(y, m, 1).unwrap_or(today);
            let end =
                Date::from_calendar_date(y, m, time::util::days_in_month(m, y)).unwrap_or(today);
            (first, end.min(today))
        }
        Some(Period::Day(d)) => (d, d),
        None => (today - time::Duration::days(OPEN_PERIOD_DAYS - 1), today),
    };
    let mut days = Vec::new();
    let mut d = first;
    while d <= last {
        days.push(d);
        match d.next_day() {
            Some(n) => d = n,
            None => break,
        }
    }
    days
}

enum Period {
    Month(i32, Month),
    Day(Date),
}

/// `2026-11` or `2026-11-23` (the ledger's period keys); `all` and anything
/// else is open-ended.
fn parse_period(p: &str) -> Option<Period> {
    let mut parts = p.split('-');
    let y: i32 = parts.next()?.parse().ok()?;
    let m: u8 = parts.next()?.parse().ok()?;
    let m = Month::try_from(m).ok()?;
    match parts.next() {
        None => Some(Period::Month(y, m)),
        Some(d) => Date::from_calendar_date(y, m, d.parse().ok()?)
            .ok()
            .map(Period::Day),
    }
}

/// Where a period starts, in the store's milliseconds (`None`: open-ended).
pub fn period_start_ms(period: &str) -> Option<i64> {
    match parse_period(period)? {
        Period::Month(y, m) => Date::from_calendar_date(y, m, 1).ok().map(day_start_ms),
        Period::Day(d) => Some(day_start_ms(d)),
    }
}

/// Start of a day, in the store's milliseconds (periods are UTC).
pub fn day_start_ms(d: Date) -> i64 {
    to_millis(d.with_time(Time::MIDNIGHT).assume_utc())
}

pub fn today(now: OffsetDateTime) -> Date {
    now.to_offset(time::UtcOffset::UTC).date()
}

/// Each day's summed cost (`YYYY-MM-DD`, USD); rows outside `days` are left out.
pub fn daily_spend(rows: &[&UsageRecord], days: &[Date]) -> Vec<(String, Decimal)> {
    let mut sums: BTreeMap<Date, Decimal> = days.iter().map(|d| (*d, Decimal::ZERO)).collect();
    for r in rows {
        let day = from_millis(r.at_ms).date();
        if let Some(s) = sums.get_mut(&day) {
            *s += r.cost_usd;
        }
    }
    sums.into_iter()
        .map(|(d, v)| (d.to_string(), v.normalize()))
        .collect()
}

/// Cost per value of one `GET /v1/usage` group key (`application`, `model`,
/// …); rows without a value are labelled `(none)`.
pub fn split_by(key: &str, rows: &[&UsageRecord]) -> Vec<(String, Decimal)> {
    group_usage(&[key.to_string()], rows.iter().copied())
        .into_iter()
        .map(|(k, t)| {
            let label = k.into_iter().next().flatten();
            (label.unwrap_or_else(|| "(none)".to_string()), t.cost_usd)
        })
        .collect()
}

/// Alerts newest first, at most `limit`.
pub fn recent_alerts(mut alerts: Vec<AlertRecord>, limit: usize) -> Vec<AlertRecord> {
    alerts.sort_by_key(|a| std::cmp::Reverse(a.fired_at_ms));
    alerts.truncate(limit);
    alerts
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    #[test]
    fn a_month_shows_its_days_so_far() {
        let days = period_days("2026-11", date!(2026 - 11 - 23));
        assert_eq!(days.len(), 23);
        assert_eq!(days[0], date!(2026 - 11 - 01));
        // A past month shows all its days.
        assert_eq!(period_days("2026-02", date!(2026 - 11 - 23)).len(), 28);
        assert_eq!(
            period_days("2026-11-05", date!(2026 - 11 - 23)),
            vec![date!(2026 - 11 - 05)]
        );
        let open = period_days("all", date!(2026 - 11 - 23));
        assert_eq!(open.len(), OPEN_PERIOD_DAYS as usize);
        assert_eq!(open.last(), Some(&date!(2026 - 11 - 23)));
        assert_eq!(day_start_ms(date!(1970 - 01 - 02)), 86_400_000);
        assert_eq!(period_start_ms("1970-01"), Some(0));
        assert_eq!(period_start_ms("1970-01-02"), Some(86_400_000));
        assert_eq!(period_start_ms("all"), None);
    }
}
