//! Property tests of the ledger: arbitrary interleavings of reserve (varying
//! estimates and max tokens, replays), commit (duplicates, unknown ids, late
//! commits after expiry or release), release, clock advances (across a period
//! boundary too) and sweeps, driven through the real `Service` on a temp SQLite
//! ledger with a manual clock. After every step the ledger is compared with an
//! independent model of the rules in DESIGN.md §4.

use proptest::prelude::*;
use rust_decimal::Decimal;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use time::macros::datetime;
use time::OffsetDateTime;
use tollgate_sidecar::clock::{Clock, ManualClock};
use tollgate_sidecar::ledger::{period_key, ResetCycle};
use tollgate_sidecar::pricing::ModelPrice;
use tollgate_sidecar::server::{build, Options};
use tollgate_sidecar::service::{Service, Settings};
use tollgate_wire::api::{CommitBatch, CommitOutcome, ReserveRequest, ReserveResponse};

const MODEL: &str = "anthropic.claude-3-sonnet-20240229-v1:0";
const TENANT: &str = "acme";
const TTL_SECS: i64 = 60;
const DEFAULT_MAX_OUT: u64 = 1000;

#[derive(Debug, Clone)]
enum Op {
    Reserve {
        input: u64,
        max_out: Option<u64>,
    },
    /// Reserve again with an id that already has a hold (idempotent replay).
    Replay {
        pick: usize,
    },
    /// Commit `pick` (an issued id, or an unknown one when out of range).
    Commit {
        pick: usize,
        input: u64,
        output: u64,
    },
    Release {
        pick: usize,
    },
    Advance {
        secs: i64,
    },
    /// Jump days ahead (may start a new monthly period).
    Jump {
        days: i64,
    },
    Sweep,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0u64..6000, prop::option::of(1u64..4000))
            .prop_map(|(input, max_out)| Op::Reserve { input, max_out }),
        1 => (0usize..64).prop_map(|pick| Op::Replay { pick }),
        5 => (0usize..64, 0u64..9000, 0u64..6000)
            .prop_map(|(pick, input, output)| Op::Commit { pick, input, output }),
        2 => (0usize..64).prop_map(|pick| Op::Release { pick }),
        2 => (0i64..90).prop_map(|secs| Op::Advance { secs }),
        1 => (1i64..12).prop_map(|days| Op::Jump { days }),
        2 => Just(Op::Sweep),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Open,
    Committed,
    Released,
    Expired,
}

#[derive(Debug, Clone)]
struct ModelHold {
    period: String,
    hold: Decimal,
    /// The output limit the hold was priced with: a commit never charges more.
    max_out: u64,
    expires_at: OffsetDateTime,
    state: State,
    /// Charged cost once committed.
    cost: Option<Decimal>,
    /// Whether the commit came while the hold was still open.
    in_time: bool,
}

#[derive(Debug, Default)]
struct Model {
    /// request id → hold, in issue order.
    holds: BTreeMap<usize, ModelHold>,
}

impl Model {
    fn spent(&self, period: &str) -> Decimal {
        self.holds
            .values()
            .filter(|h| h.period == period)
            .filter_map(|h| h.cost)
            .sum()
    }
    fn reserved(&self, period: &str) -> Decimal {
        self.holds
            .values()
            .filter(|h| h.period == period && h.state == State::Open)
            .map(|h| h.hold)
            .sum()
    }
    /// The most the period may be overspent: estimate error of commits made in
    /// time, plus the whole cost of late commits (their hold was already given
    /// back to the budget when they arrived).
    fn overspend_allowance(&self, period: &str) -> Decimal {
        self.holds
            .values()
            .filter(|h| h.period == period)
            .filter_map(|h| {
                let cost = h.cost?;
                Some(if h.in_time {
                    (cost - h.hold).max(Decimal::ZERO)
                } else {
                    cost
                })
            })
            .sum()
    }
}

fn price() -> ModelPrice {
    ModelPrice {
        model_id: MODEL.into(),
        input: Decimal::new(3, 0),
        output: Decimal::new(15, 0),
        cache_read: None,
        cache_write: None,
    }
}

fn per_million(tokens: u64, rate: Decimal) -> Decimal {
    Decimal::from(tokens) * rate / Decimal::from(1_000_000u64)
}

fn rid(i: usize) -> String {
    format!("req-{i}")
}

async fn run_case(budget: Decimal, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let clock = Arc::new(ManualClock::new(datetime!(2026-11-23 12:00 UTC)));
    let sidecar = build(&Options {
        db: dir.path().join("ledger.db"),
        seed: None,
        settings: Settings {
            hold_ttl_secs: TTL_SECS as u64,
            default_max_output_tokens: DEFAULT_MAX_OUT,
            ..Settings::default()
        },
        webhooks: vec![],
        admin_token: "t".into(),
        data_plane: Arc::new(tollgate_sidecar::dataplane_auth::DataPlaneAuth::open(
            tollgate_sidecar::dataplane_auth::AcceptedCredentials::all(),
        )),
        metrics_token: None,
        clock: clock.clone(),
    })
    .await
    .expect("build");
    let svc: Arc<Service> = sidecar.service;
    svc.store.put_price(&price()).await.expect("price");
    svc.admin()
        .put_tenant(
            TENANT,
            serde_json::from_value(
                json!({"budget_usd": budget.to_string(), "reset_cycle": "monthly"}),
            )
            .expect("tenant input"),
        )
        .await
        .expect("tenant");

    let mut model = Model::default();
    let mut next_id = 0usize;
    let mut periods: Vec<String> = vec![period_key(ResetCycle::Monthly, clock.now())];
    let rates = price();

    for op in ops {
        match op {
            Op::Reserve { input, max_out } => {
                let id = next_id;
                next_id += 1;
                let now = clock.now();
                let period = period_key(ResetCycle::Monthly, now);
                if !periods.contains(&period) {
                    periods.push(period.clone());
                }
                let out = max_out.unwrap_or(DEFAULT_MAX_OUT);
                let expected_hold =
                    per_million(input, rates.input) + per_million(out, rates.output);
                let available = budget - model.spent(&period) - model.reserved(&period);
                let resp = svc
                    .reserve(reserve_req(&rid(id), input, max_out))
                    .await
                    .expect("reserve");
                match resp {
                    ReserveResponse::Allow(r) => {
                        prop_assert!(
                            available >= expected_hold,
                            "admitted a hold of {expected_hold} with only {available} available"
                        );
                        prop_assert_eq!(r.hold_usd, expected_hold);
                        prop_assert_eq!(r.max_output_tokens, out);
                        prop_assert_eq!(r.budget_remaining_usd, available - expected_hold);
                        model.holds.insert(
                            id,
                            ModelHold {
                                period,
                                hold: expected_hold,
                                max_out: out,
                                expires_at: now + time::Duration::seconds(TTL_SECS),
                                state: State::Open,
                                cost: None,
                                in_time: false,
                            },
                        );
                    }
                    ReserveResponse::Lease(l) => {
                        return Err(TestCaseError::fail(format!("lease not asked for: {l:?}")))
                    }
                    ReserveResponse::Deny(d) => {
                        prop_assert_eq!(d.status, 402, "{:?}", d);
                        prop_assert!(
                            available < expected_hold,
                            "refused a hold of {expected_hold} with {available} available"
                        );
                    }
                }
            }
            Op::Replay { pick } => {
                let Some((&id, h)) = model.holds.iter().nth(pick % model.holds.len().max(1)) else {
                    continue;
                };
                let hold = h.hold;
                // Different sizes on the replay must not matter.
                let resp = svc
                    .reserve(reserve_req(&rid(id), 1, Some(1)))
                    .await
                    .expect("replay");
                match resp {
                    ReserveResponse::Allow(r) => prop_assert_eq!(r.hold_usd, hold),
                    ReserveResponse::Lease(l) => {
                        return Err(TestCaseError::fail(format!("lease not asked for: {l:?}")))
                    }
                    ReserveResponse::Deny(d) => {
                        return Err(TestCaseError::fail(format!("replay denied: {d:?}")))
                    }
                }
            }
            Op::Commit {
                pick,
                input,
                output,
            } => {
                // Ids beyond the issued ones are unknown to the ledger.
                let id = if next_id == 0 {
                    pick
                } else {
                    pick % (next_id + 2)
                };
                // Output beyond the hold's limit is not charged (`cap_usage`).
                let cost_at = |max_out: u64| {
                    per_million(input, rates.input) + per_million(output.min(max_out), rates.output)
                };
                let resp = svc
                    .commit(
                        serde_json::from_value::<CommitBatch>(json!({"commits": [{
                            "request_id": rid(id),
                            "usage": {"input_tokens": input, "output_tokens": output}
                        }]}))
                        .expect("batch"),
                    )
                    .await
                    .expect("commit");
                let got = &resp.results[0];
                match model.holds.get_mut(&id) {
                    None => prop_assert_eq!(got.outcome, CommitOutcome::UnknownRequest),
                    Some(h) => match h.cost {
                        Some(first) => {
                            prop_assert_eq!(got.outcome, CommitOutcome::Duplicate);
                            prop_assert_eq!(got.cost_usd, Some(first));
                        }
                        None => {
                            let cost = cost_at(h.max_out);
                            prop_assert_eq!(got.outcome, CommitOutcome::Committed);
                            prop_assert_eq!(got.cost_usd, Some(cost));
                            h.in_time = h.state == State::Open;
                            h.cost = Some(cost);
                            h.state = State::Committed;
                        }
                    },
                }
            }
            Op::Release { pick } => {
                let id = if next_id == 0 {
                    pick
                } else {
                    pick % (next_id + 1)
                };
                let released = svc
                    .release(
                        serde_json::from_value(json!({"request_id": rid(id), "reason": "test"}))
                            .expect("release req"),
                    )
                    .await
                    .expect("release")
                    .released;
                let expected = match model.holds.get_mut(&id) {
                    Some(h) if h.state == State::Open => {
                        h.state = State::Released;
                        true
                    }
                    _ => false,
                };
                prop_assert_eq!(released, expected);
            }
            Op::Advance { secs } => clock.advance(time::Duration::seconds(secs)),
            Op::Jump { days } => clock.advance(time::Duration::days(days)),
            Op::Sweep => {
                let now = clock.now();
                let n = svc.sweep().await.expect("sweep");
                let mut expected = 0;
                for h in model.holds.values_mut() {
                    if h.state == State::Open && h.expires_at <= now {
                        h.state = State::Expired;
                        expected += 1;
                    }
                }
                prop_assert_eq!(n, expected);
            }
        }

        // Invariants, per period.
        for period in &periods {
            let b = svc.admin().balance(TENANT, period).await.expect("balance");
            let t = &b.totals;
            let spent = t.counters.spent_usd;
            let reserved = t.reserved_usd;
            prop_assert_eq!(t.budget_usd, budget);
            prop_assert!(reserved >= Decimal::ZERO, "reserved {reserved} < 0");
            prop_assert_eq!(reserved, model.reserved(period), "reserved in {}", period);
            prop_assert_eq!(spent, model.spent(period), "spent in {}", period);
            prop_assert_eq!(spent + reserved + t.available(), budget);
            let allowance = model.overspend_allowance(period);
            prop_assert!(
                spent <= budget + allowance,
                "spent {spent} exceeds budget {budget} + estimate error {allowance}"
            );
            let committed = model
                .holds
                .values()
                .filter(|h| &h.period == period && h.cost.is_some())
                .count() as u64;
            prop_assert_eq!(t.counters.requests, committed);
            let by_model: Decimal = b.by_model.values().map(|c| c.spent_usd).sum();
            prop_assert_eq!(by_model, spent);
        }
    }
    Ok(())
}

fn reserve_req(id: &str, input: u64, max_out: Option<u64>) -> ReserveRequest {
    let mut body = json!({
        "request_id": id,
        "credential": {"type": "trusted_header", "tenant_id": TENANT},
        "operation": "converse",
        "model": MODEL,
        "input_tokens_estimate": input,
    });
    if let Some(m) = max_out {
        body["max_output_tokens"] = json!(m);
    }
    serde_json::from_value(body).expect("reserve request")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn ledger_invariants_hold_under_any_interleaving(
        budget_cents in prop_oneof![Just(2i64), Just(5), Just(10), Just(100)],
        ops in prop::collection::vec(op(), 1..40),
    ) {
        let budget = Decimal::new(budget_cents, 2);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(run_case(budget, ops))?;
    }
}
