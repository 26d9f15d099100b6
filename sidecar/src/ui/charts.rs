//! Charts as inline SVG, drawn on the server: no chart library, no script, and
//! nothing fetched from elsewhere, so the page works offline. Geometry is f64
//! (pixels only); every number printed is the exact decimal, in a `<title>`
//! tooltip and a `data-usd` attribute.

use super::html::esc;
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::fmt::Write as _;

/// `part / whole` clamped to 0–1, for drawing.
fn frac(part: Decimal, whole: Decimal) -> f64 {
    if whole <= Decimal::ZERO || part <= Decimal::ZERO {
        return 0.0;
    }
    (part / whole).to_f64().unwrap_or(0.0).clamp(0.0, 1.0)
}

const BAR_W: f64 = 1000.0;

/// The budget bar: spent, then reserved, then available, with the alert
/// threshold marked. Spent beyond the budget (input-estimate error) fills the bar.
pub fn budget_bar(
    budget: Decimal,
    spent: Decimal,
    reserved: Decimal,
    threshold: Decimal,
) -> String {
    let s = frac(spent, budget) * BAR_W;
    let r = (frac(reserved, budget) * BAR_W).min(BAR_W - s);
    let t = frac(threshold * budget, budget) * BAR_W;
    format!(
        r#"<svg class="budget-bar" viewBox="0 0 1000 28" preserveAspectRatio="none" role="img" aria-label="budget: {spent} spent, {reserved} reserved of {budget}">
<rect class="avail" x="0" y="4" width="1000" height="20"><title>available</title></rect>
<rect class="spent" x="0" y="4" width="{s:.1}" height="20"><title>spent ${spent}</title></rect>
<rect class="reserved" x="{s:.1}" y="4" width="{r:.1}" height="20"><title>reserved ${reserved}</title></rect>
<line class="threshold" x1="{t:.1}" x2="{t:.1}" y1="0" y2="28"><title>alert threshold {threshold}</title></line>
</svg>"#
    )
}

/// Vertical bars, one per day (`YYYY-MM-DD`, amount), on a fixed-width canvas
/// so labels keep their size whatever the number of days; the tallest bar's
/// amount is written on top. Days are labelled by their day of month, every
/// few days when there are many.
pub fn day_bars(days: &[(String, Decimal)]) -> String {
    const W: f64 = 320.0;
    const TOP: f64 = 14.0;
    const H: f64 = 96.0;
    let max = days.iter().map(|(_, v)| *v).max().unwrap_or(Decimal::ZERO);
    let col = W / days.len().max(1) as f64;
    let bw = (col * 0.7).min(40.0);
    let label_every = if days.len() > 16 { 5 } else { 1 };
    let mut out = format!(
        r#"<svg class="trend" viewBox="0 0 {W} {}" role="img" aria-label="spend per day"><text x="0" y="10" class="axis max">max ${max}</text><line class="base" x1="0" x2="{W}" y1="{y0}" y2="{y0}"></line>"#,
        TOP + H + 16.0,
        y0 = TOP + H,
    );
    for (i, (day, v)) in days.iter().enumerate() {
        let h = frac(*v, max) * H;
        let x = i as f64 * col + (col - bw) / 2.0;
        let _ = write!(
            out,
            r#"<rect class="day" data-day="{day}" data-usd="{v}" x="{x:.1}" y="{y:.1}" width="{bw:.1}" height="{h:.1}"><title>{day}: ${v}</title></rect>"#,
            day = esc(day),
            y = TOP + H - h,
        );
        let dom = day.rsplit('-').next().unwrap_or("");
        if i % label_every == 0 || i + 1 == days.len() {
            let _ = write!(
                out,
                r#"<text x="{:.1}" y="{}" class="axis day">{}</text>"#,
                x + bw / 2.0,
                TOP + H + 12.0,
                esc(dom.trim_start_matches('0'))
            );
        }
    }
    out.push_str("</svg>");
    out
}

/// Horizontal bars, one per (label, amount), largest first, as a table whose
/// rows carry `data-key` (the label) and the amount.
pub fn split(kind: &str, items: &[(String, Decimal)]) -> String {
    if items.is_empty() {
        return r#"<p class="empty">No usage yet.</p>"#.to_string();
    }
    let mut items = items.to_vec();
    items.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let max = items[0].1;
    let mut out = format!(r#"<table class="split" data-split="{}"><tbody>"#, esc(kind));
    for (label, v) in &items {
        let w = frac(*v, max) * BAR_W;
        let _ = write!(
            out,
            r#"<tr data-key="{label}"><th scope="row">{label}</th><td class="bar"><svg viewBox="0 0 1000 14" preserveAspectRatio="none" aria-hidden="true"><rect x="0" y="1" width="{w:.1}" height="12"></rect></svg></td><td class="num">{money}</td></tr>"#,
            label = esc(label),
            money = super::html::usd(*v),
        );
    }
    out.push_str("</tbody></table>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn the_budget_bar_is_proportional_and_marks_the_threshold() {
        let svg = budget_bar(d("10"), d("2.5"), d("1"), d("0.8"));
        assert!(
            svg.contains(r#"class="spent" x="0" y="4" width="250.0""#),
            "{svg}"
        );
        assert!(
            svg.contains(r#"class="reserved" x="250.0" y="4" width="100.0""#),
            "{svg}"
        );
        assert!(svg.contains(r#"x1="800.0""#), "{svg}");
        // Overspent: spent fills the bar, nothing left for reserved.
        let over = budget_bar(d("1"), d("1.2"), d("0.5"), d("0.8"));
        assert!(over.contains(r#"width="1000.0""#) && over.contains(r#"width="0.0""#));
        // No budget: nothing drawn, no division by zero.
        assert!(budget_bar(Decimal::ZERO, d("1"), d("1"), d("0.8")).contains(r#"width="0.0""#));
    }

    #[test]
    fn day_bars_carry_the_exact_amounts() {
        let svg = day_bars(&[
            ("2026-11-01".into(), d("0.5")),
            ("2026-11-02".into(), d("0")),
            ("2026-11-03".into(), d("1.000123")),
        ]);
        assert!(
            svg.contains(r#"data-day="2026-11-03" data-usd="1.000123""#),
            "{svg}"
        );
        assert!(svg.contains(r#">2026-11-03: $1.000123</title>"#));
        assert!(svg.contains(r#"class="axis day">3</text>"#), "{svg}");
        assert!(svg.contains("max $1.000123"), "{svg}");
    }

    #[test]
    fn splits_are_sorted_and_escaped() {
        let html = split("model", &[("a<b".into(), d("1")), ("z".into(), d("3"))]);
        let z = html.find(r#"data-key="z""#).unwrap();
        let a = html.find(r#"data-key="a&lt;b""#).unwrap();
        assert!(z < a, "largest first");
        assert!(split("model", &[]).contains("No usage yet"));
    }
}
