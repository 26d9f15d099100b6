//! Budget leases and the usage cap on the DynamoDB store, against dynalite
//! (see `common/dynalite.rs`). One dynalite process; each case gets fresh tables
//! (a new prefix), and the concurrent cases run two stores on the same tables —
//! two sidecars sharing one ledger.
#![cfg(feature = "dynamodb")]

#[path = "common/dynalite.rs"]
mod dynalite;

use rust_decimal::Decimal;
use std::collections::HashMap;
use std::sync::Arc;
use tollgate_sidecar::ledger::LeaseSizing;
use tollgate_sidecar::pricing::Rates;
use tollgate_sidecar::store::dynamodb::{DynamoOptions, DynamoStore};
use tollgate_sidecar::store::*;
use tollgate_wire::api::{Attribution, LeaseTerms, Usage};

const SONNET: &str = "anthropic.claude-3-sonnet-20240229-v1:0";
const PERIOD: &str = "2026-11";
const T0: i64 = 1_795_000_000_000;
const TTL: i64 = 30_000;

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

fn rates() -> Rates {
    Rates {
        input: d("3"),
        output: d("15"),
        cache_read: d("0.3"),
        cache_write: d("3.75"),
    }
}

fn lease(id: &str, tenant: &str) -> LeaseRecord {
    LeaseRecord {
        lease_id: id.to_string(),
        period: PERIOD.to_string(),
        terms: LeaseTerms {
            tenant_id: tenant.to_string(),
            application_id: Some("app".into()),
            model_id: SONNET.to_string(),
            target_model: SONNET.to_string(),
            rates: rates(),
            default_max_output_tokens: 1000,
            max_tokens_cap: Some(4000),
        },
        credential_ref: "key:k1".into(),
        requested_model: "claude-3-sonnet".into(),
        reserved_usd: Decimal::ZERO,
        seq: 0,
        last_granted_usd: Decimal::ZERO,
        created_at_ms: T0,
        expires_at_ms: T0 + TTL,
        state: HoldState::Open,
    }
}

fn sizing(want: &str, min: &str, fraction: &str) -> LeaseSizing {
    LeaseSizing {
        want: d(want),
        min: d(min),
        fraction: d(fraction),
    }
}

/// 1000 in + 500 out at 3/15 per 1M = 0.0105.
fn usage() -> Usage {
    Usage {
        input_tokens: 1000,
        output_tokens: 500,
        cache_read_input_tokens: 0,
        cache_write_input_tokens: 0,
    }
}

fn leased(request_id: &str, lease_id: &str, hold: &str) -> LeasedCommit {
    LeasedCommit {
        request_id: request_id.to_string(),
        lease_id: lease_id.to_string(),
        usage: usage(),
        estimated: false,
        capped: false,
        hold_usd: d(hold),
        attribution: Attribution {
            application_id: None,
            cost_center: Some("cc-1".into()),
            environment: None,
            user_id: Some("u-1".into()),
        },
    }
}

async fn totals(s: &DynamoStore, tenant: &str) -> Totals {
    s.balance(tenant, PERIOD, d("999"))
        .await
        .expect("balance")
        .totals
}

fn assert_identity(t: &Totals) {
    assert_eq!(
        t.counters.spent_usd + t.reserved_usd + t.available(),
        t.budget_usd,
        "{t:?}"
    );
    assert!(t.reserved_usd >= Decimal::ZERO, "{t:?}");
    assert!(
        t.counters.spent_usd + t.reserved_usd <= t.budget_usd,
        "over the cap: {t:?}"
    );
}

fn granted(o: LeaseOutcome) -> (Decimal, Decimal) {
    match o {
        LeaseOutcome::Granted { granted, remaining } => (granted, remaining),
        other => panic!("expected a grant, got {other:?}"),
    }
}

fn renewed(o: RenewApplied) -> (Decimal, Decimal) {
    match o {
        RenewApplied::Renewed { granted, remaining } => (granted, remaining),
        other => panic!("expected a renewal, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// cases

async fn lease_lifecycle(s: Arc<DynamoStore>) {
    assert!(s.supports_leases());
    assert_eq!(s.get_lease("nope").await.unwrap(), None);
    // Grant: min(want, fraction × available) = min(0.3, 0.5 × 1) = 0.3.
    let (g, rem) = granted(
        s.grant_lease(&lease("L1", "acme"), &sizing("0.3", "0.01", "0.5"), d("1"))
            .await
            .unwrap(),
    );
    assert_eq!((g, rem), (d("0.3"), d("0.7")));
    let l = s.get_lease("L1").await.unwrap().expect("lease");
    assert_eq!(l.reserved_usd, d("0.3"));
    assert_eq!(l.seq, 0);
    assert_eq!(l.state, HoldState::Open);
    assert_eq!(l.terms, lease("L1", "acme").terms);
    assert_eq!(l.credential_ref, "key:k1");
    let t = totals(&s, "acme").await;
    assert_eq!(t.reserved_usd, d("0.3"));
    assert_identity(&t);

    // A duplicate lease id is refused, and changes nothing.
    assert!(s
        .grant_lease(&lease("L1", "acme"), &sizing("0.3", "0.01", "0.5"), d("1"))
        .await
        .is_err());
    assert_eq!(totals(&s, "acme").await.reserved_usd, d("0.3"));

    // Renewal 1: return 0.1, then grant min(0.2, 0.5 × 0.8) = 0.2.
    let r1 = s
        .renew_lease(
            "L1",
            1,
            d("0.1"),
            &sizing("0.2", "0.01", "0.5"),
            PERIOD,
            T0 + 1_000,
            T0 + 1_000 + TTL,
        )
        .await
        .unwrap();
    assert_eq!(renewed(r1.clone()), (d("0.2"), d("0.6")));
    let l = s.get_lease("L1").await.unwrap().unwrap();
    assert_eq!(
        (l.reserved_usd, l.seq, l.last_granted_usd),
        (d("0.4"), 1, d("0.2"))
    );
    assert_eq!(l.expires_at_ms, T0 + 1_000 + TTL);
    // The same seq again is replayed, not applied twice.
    let again = s
        .renew_lease(
            "L1",
            1,
            d("0.1"),
            &sizing("0.2", "0.01", "0.5"),
            PERIOD,
            T0 + 2_000,
            T0 + 2_000 + TTL,
        )
        .await
        .unwrap();
    assert_eq!(again, r1);
    assert_eq!(totals(&s, "acme").await.reserved_usd, d("0.4"));
    // An older seq is refused.
    assert!(s
        .renew_lease(
            "L1",
            0,
            d("0"),
            &sizing("0.2", "0.01", "0.5"),
            PERIOD,
            T0 + 2_000,
            T0 + 2_000 + TTL
        )
        .await
        .is_err());
    // Return only (want 0): nothing granted.
    let (g, rem) = renewed(
        s.renew_lease(
            "L1",
            2,
            d("0.15"),
            &sizing("0", "0.01", "0.5"),
            PERIOD,
            T0 + 3_000,
            T0 + 3_000 + TTL,
        )
        .await
        .unwrap(),
    );
    assert_eq!((g, rem), (Decimal::ZERO, d("0.75")));
    assert_eq!(
        s.get_lease("L1").await.unwrap().unwrap().reserved_usd,
        d("0.25")
    );

    // Leased commits: charged at the lease's rates, the hold leaves `reserved`.
    let c = leased("q1", "L1", "0.05");
    match s.commit_leased(&c, T0 + 4_000).await.unwrap() {
        CommitApplied::Committed {
            cost,
            capped,
            usage: charged,
            hold,
            totals,
            ..
        } => {
            assert_eq!(cost, d("0.0105"));
            assert!(!capped);
            assert_eq!(charged, c.usage);
            assert_eq!(hold.tenant_id, "acme");
            assert_eq!(hold.attribution.application_id.as_deref(), Some("app"));
            assert_eq!(hold.attribution.cost_center.as_deref(), Some("cc-1"));
            assert_eq!(totals.counters.spent_usd, d("0.0105"));
            assert_eq!(totals.reserved_usd, d("0.20"));
            assert_identity(&totals);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.commit_leased(&c, T0 + 5_000).await.unwrap(),
        CommitApplied::Duplicate {
            cost: Some(d("0.0105"))
        }
    );
    assert_eq!(
        s.commit_leased(&leased("q2", "nope", "0.05"), T0)
            .await
            .unwrap(),
        CommitApplied::Unknown
    );
    // A hold larger than what the lease holds takes only what is there.
    let capped_commit = LeasedCommit {
        capped: true,
        estimated: true,
        ..leased("q3", "L1", "5")
    };
    assert!(matches!(
        s.commit_leased(&capped_commit, T0 + 6_000).await.unwrap(),
        CommitApplied::Committed { capped: true, .. }
    ));
    let t = totals(&s, "acme").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_eq!(t.counters.spent_usd, d("0.021"));
    assert_eq!(t.counters.requests, 2);
    assert_identity(&t);
    let l = s.get_lease("L1").await.unwrap().unwrap();
    assert_eq!(l.reserved_usd, Decimal::ZERO);
    let rows = s.usage(None, None).await.unwrap();
    assert_eq!(rows.len(), 2);
    assert!(
        !rows[0].capped && rows[1].capped && rows[1].estimated,
        "{rows:?}"
    );
    assert_eq!(rows[0].model_id, SONNET);

    // Refill, then a renewal in the next period closes the lease and gives
    // everything back.
    let (g, _) = renewed(
        s.renew_lease(
            "L1",
            3,
            d("0"),
            &sizing("0.1", "0.01", "0.5"),
            PERIOD,
            T0 + 7_000,
            T0 + 7_000 + TTL,
        )
        .await
        .unwrap(),
    );
    assert_eq!(g, d("0.1"));
    assert!(matches!(
        s.renew_lease(
            "L1",
            4,
            d("0"),
            &sizing("0.1", "0.01", "0.5"),
            "2026-12",
            T0 + 8_000,
            T0 + 8_000 + TTL
        )
        .await
        .unwrap(),
        RenewApplied::Closed { .. }
    ));
    let t = totals(&s, "acme").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
    assert_eq!(
        s.get_lease("L1").await.unwrap().unwrap().state,
        HoldState::Released
    );
    // A commit arriving after the close is still charged (late-style), once.
    assert!(matches!(
        s.commit_leased(&leased("q4", "L1", "0.05"), T0 + 9_000)
            .await
            .unwrap(),
        CommitApplied::Committed { .. }
    ));
    let t = totals(&s, "acme").await;
    assert_eq!(t.counters.spent_usd, d("0.0315"));
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
    // Renewing a closed lease answers closed.
    assert!(matches!(
        s.renew_lease(
            "L1",
            5,
            d("0"),
            &sizing("0.1", "0.01", "0.5"),
            PERIOD,
            T0 + 9_000,
            T0 + 9_000 + TTL
        )
        .await
        .unwrap(),
        RenewApplied::Closed { .. }
    ));
}

async fn leases_respect_the_budget_and_expire(s: Arc<DynamoStore>) {
    // Nothing fits: not even min.
    s.grant_lease(&lease("A", "tiny"), &sizing("1", "0.4", "1"), d("0.5"))
        .await
        .unwrap();
    match s
        .grant_lease(&lease("B", "tiny"), &sizing("1", "0.4", "1"), d("0.5"))
        .await
        .unwrap()
    {
        LeaseOutcome::Insufficient {
            available,
            spent,
            budget,
        } => assert_eq!(
            (available, spent, budget),
            (Decimal::ZERO, Decimal::ZERO, d("0.5"))
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        s.get_lease("B").await.unwrap(),
        None,
        "a refused lease is not kept"
    );
    // A renewal that is due extends the lease; the sweeper leaves it alone.
    s.renew_lease(
        "A",
        1,
        d("0"),
        &sizing("0", "0", "1"),
        PERIOD,
        T0 + TTL - 1,
        T0 + 2 * TTL,
    )
    .await
    .unwrap();
    assert_eq!(s.expire_holds(T0 + TTL).await.unwrap(), 0);
    assert_eq!(totals(&s, "tiny").await.reserved_usd, d("0.5"));
    // At its expiry the sweeper gives it back.
    assert_eq!(s.expire_holds(T0 + 2 * TTL).await.unwrap(), 1);
    assert_eq!(s.expire_holds(T0 + 2 * TTL).await.unwrap(), 0);
    let t = totals(&s, "tiny").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
    let l = s.get_lease("A").await.unwrap().unwrap();
    assert_eq!(
        (l.state, l.reserved_usd),
        (HoldState::Expired, Decimal::ZERO)
    );
    // A renewal after the expiry (not yet swept) closes it too.
    granted(
        s.grant_lease(&lease("C", "tiny"), &sizing("0.2", "0.1", "1"), d("0.5"))
            .await
            .unwrap(),
    );
    assert!(matches!(
        s.renew_lease(
            "C",
            1,
            d("0"),
            &sizing("0.2", "0.1", "1"),
            PERIOD,
            T0 + TTL,
            T0 + 2 * TTL
        )
        .await
        .unwrap(),
        RenewApplied::Closed { .. }
    ));
    assert_eq!(totals(&s, "tiny").await.reserved_usd, Decimal::ZERO);
}

/// Two stores (two sidecars) grant leases concurrently against a small budget:
/// the grants never add up to more than it, and the row stays exact.
async fn concurrent_grants_never_exceed_the_budget(a: Arc<DynamoStore>, b: Arc<DynamoStore>) {
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.grant_lease(
                &lease(&format!("c{i}"), "race"),
                &sizing("0.15", "0.05", "0.5"),
                d("1"),
            )
            .await
            .expect("grant")
        }));
    }
    let mut sum = Decimal::ZERO;
    let mut refused = 0;
    let mut first = None;
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap() {
            LeaseOutcome::Granted { granted, remaining } => {
                first.get_or_insert(format!("c{i}"));
                assert!(granted >= d("0.05") && granted <= d("0.15"), "{granted}");
                assert!(remaining >= Decimal::ZERO, "{remaining}");
                sum += granted;
            }
            LeaseOutcome::Insufficient { available, .. } => {
                assert!(available < d("0.05"), "{available}");
                refused += 1;
            }
        }
    }
    assert!(refused > 0, "24 leases of ≥ 0.05 cannot all fit in 1");
    let t = totals(&a, "race").await;
    assert_eq!(t.reserved_usd, sum);
    assert!(sum <= d("1"), "{sum}");
    assert!(t.available() < d("0.05"), "{t:?}");
    assert_identity(&t);

    // Concurrent renewals (same seq from both stores, and commits) on one lease:
    // each seq applies once, every commit once.
    let lid = first.expect("some lease was granted");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        let lid = lid.clone();
        tasks.push(tokio::spawn(async move {
            let r = s
                .renew_lease(
                    &lid,
                    1 + (i / 4),
                    d("0.01"),
                    &sizing("0.02", "0.01", "1"),
                    PERIOD,
                    T0 + 1,
                    T0 + TTL + 1,
                )
                .await;
            let c = s
                .commit_leased(&leased(&format!("rq{}", i % 4), &lid, "0.0105"), T0 + 2)
                .await
                .expect("commit");
            (r, c)
        }));
    }
    let mut committed = 0;
    for t in tasks {
        let (r, c) = t.await.unwrap();
        // A renewal of seq 1 racing one of seq 2 may find itself older: refused.
        if let Ok(r) = r {
            assert!(matches!(r, RenewApplied::Renewed { .. }), "{r:?}");
        }
        committed += usize::from(matches!(c, CommitApplied::Committed { .. }));
    }
    assert_eq!(committed, 4, "each request id is charged once");
    let t = totals(&a, "race").await;
    assert_eq!(t.counters.requests, 4);
    assert_eq!(t.counters.spent_usd, d("0.042"));
    assert_identity(&t);
    // `reserved` is exactly the sum of the leases' entries.
    let mut sum = Decimal::ZERO;
    for i in 0..24 {
        if let Some(l) = a.get_lease(&format!("c{i}")).await.unwrap() {
            sum += l.reserved_usd;
        }
    }
    assert_eq!(t.reserved_usd, sum);
    // Everything expires; nothing stays reserved.
    assert!(b.expire_holds(T0 + 10 * TTL).await.unwrap() > 0);
    let t = totals(&a, "race").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
}

/// Commits of per-request holds are capped at the hold's output limit and (for
/// an estimate) its input estimate, and the cap is recorded.
async fn hold_commits_are_capped(s: Arc<DynamoStore>) {
    let hold = Hold {
        request_id: "h1".into(),
        tenant_id: "acme".into(),
        period: PERIOD.into(),
        model_id: SONNET.into(),
        target_model: SONNET.into(),
        attribution: Attribution::default(),
        max_output_tokens: 100,
        hold_usd: d("0.0045"),
        budget_remaining_usd: Decimal::ZERO,
        rates: rates(),
        created_at_ms: T0,
        expires_at_ms: T0 + TTL,
        state: HoldState::Open,
        model_budget_usd: None,
        app_budget_usd: None,
        user_budget_usd: None,
        input_tokens_estimate: 1000,
    };
    assert_eq!(
        s.reserve(&hold, d("1")).await.unwrap(),
        ReserveOutcome::Admitted
    );
    let got = s.get_hold("h1").await.unwrap().unwrap();
    assert_eq!(got.input_tokens_estimate, 1000);
    // Estimated: 5000 in → 1000, 500 out → 100: 0.003 + 0.0015.
    match s
        .commit(
            "h1",
            &Usage {
                input_tokens: 5000,
                ..usage()
            },
            true,
            T0 + 1,
        )
        .await
        .unwrap()
    {
        CommitApplied::Committed { cost, capped, .. } => {
            assert_eq!(cost, d("0.0045"));
            assert!(capped);
        }
        other => panic!("{other:?}"),
    }
    // Reported (not estimated) input is never cut; within limits nothing is.
    let h2 = Hold {
        request_id: "h2".into(),
        max_output_tokens: 1000,
        hold_usd: d("0.018"),
        ..hold.clone()
    };
    s.reserve(&h2, d("1")).await.unwrap();
    match s
        .commit(
            "h2",
            &Usage {
                input_tokens: 5000,
                ..usage()
            },
            false,
            T0 + 2,
        )
        .await
        .unwrap()
    {
        CommitApplied::Committed { cost, capped, .. } => {
            assert_eq!(cost, d("0.0225"));
            assert!(!capped);
        }
        other => panic!("{other:?}"),
    }
    let rows: HashMap<String, UsageRecord> = s
        .usage(None, None)
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.request_id.clone(), u))
        .collect();
    assert!(rows["h1"].capped);
    assert_eq!(rows["h1"].usage.input_tokens, 1000);
    assert_eq!(rows["h1"].usage.output_tokens, 100);
    assert!(!rows["h2"].capped);
    let t = totals(&s, "acme").await;
    assert_eq!(t.counters.spent_usd, d("0.027"));
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
}

/// The crash windows of the lease protocol, made by hand with raw writes: each
/// is repaired by a later renewal or the sweeper, and nothing stays reserved.
async fn crash_windows_are_repaired(client: aws_sdk_dynamodb::Client, s: Arc<DynamoStore>) {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let leases = s.tables().leases.clone();
    let set_item = |id: &'static str, attr: &'static str, v: Av| {
        let client = client.clone();
        let leases = leases.clone();
        async move {
            client
                .update_item()
                .table_name(leases)
                .key("leaseId", Av::S(id.into()))
                .update_expression("SET #a = :v")
                .expression_attribute_names("#a", attr)
                .expression_attribute_values(":v", v)
                .send()
                .await
                .expect("raw update");
        }
    };

    // A grant that died after counting (G3) but before `pending → open` (G4).
    granted(
        s.grant_lease(&lease("P", "crash"), &sizing("0.3", "0.1", "1"), d("1"))
            .await
            .unwrap(),
    );
    set_item("P", "state", Av::S("pending".into())).await;
    assert_eq!(
        s.get_lease("P").await.unwrap(),
        None,
        "pending is not a lease"
    );
    assert_eq!(
        s.commit_leased(&leased("p1", "P", "0.01"), T0)
            .await
            .unwrap(),
        CommitApplied::Unknown
    );
    assert_eq!(totals(&s, "crash").await.reserved_usd, d("0.3"));
    assert_eq!(s.expire_holds(T0 + TTL - 1).await.unwrap(), 0);
    assert_eq!(s.expire_holds(T0 + TTL).await.unwrap(), 1);
    let t = totals(&s, "crash").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);

    // A renewal that died before its mirror: the sweeper sees the old expiry in
    // the index but the entry's new one, and leaves the lease alone.
    granted(
        s.grant_lease(&lease("M", "crash"), &sizing("0.3", "0.1", "1"), d("1"))
            .await
            .unwrap(),
    );
    renewed(
        s.renew_lease(
            "M",
            1,
            d("0"),
            &sizing("0.1", "0.1", "1"),
            PERIOD,
            T0 + 1,
            T0 + 5 * TTL,
        )
        .await
        .unwrap(),
    );
    set_item("M", "sweepAt", Av::N((T0 + TTL).to_string())).await;
    set_item("M", "expiresAt", Av::N((T0 + TTL).to_string())).await;
    set_item("M", "ver", Av::N("1".into())).await;
    assert_eq!(s.expire_holds(T0 + TTL).await.unwrap(), 0);
    let l = s.get_lease("M").await.unwrap().unwrap();
    assert_eq!((l.state, l.expires_at_ms), (HoldState::Open, T0 + 5 * TTL));
    assert_eq!(totals(&s, "crash").await.reserved_usd, d("0.4"));
    // The mirror was rolled forward: the index now says the new expiry.
    assert_eq!(s.expire_holds(T0 + 2 * TTL).await.unwrap(), 0);
    assert_eq!(s.expire_holds(T0 + 5 * TTL).await.unwrap(), 1);
    let t = totals(&s, "crash").await;
    assert_eq!(t.reserved_usd, Decimal::ZERO);
    assert_identity(&t);
}

/// A gateway's batch of commits on one lease lands whole, even when they all
/// arrive at once from two sidecars: commits of one lease commute (a regression:
/// versioned rewrites of the entry made 27 concurrent commits run out of
/// attempts, fail the batch, and leave claimed commits to the sweeper).
async fn concurrent_commits_on_one_lease_all_land(a: Arc<DynamoStore>, b: Arc<DynamoStore>) {
    let (g, _) = granted(
        a.grant_lease(&lease("busy", "batch"), &sizing("0.5", "0.01", "1"), d("1"))
            .await
            .unwrap(),
    );
    assert_eq!(g, d("0.5"));
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            s.commit_leased(&leased(&format!("b{i}"), "busy", "0.0105"), T0 + 5)
                .await
        }));
    }
    for t in tasks {
        let c = t.await.unwrap().expect("a leased commit under contention");
        assert!(matches!(c, CommitApplied::Committed { .. }), "{c:?}");
    }
    let t = totals(&a, "batch").await;
    assert_eq!(t.counters.requests, 40);
    assert_eq!(t.counters.spent_usd, d("0.42"));
    // The lease gave exactly 40 holds to the charges.
    assert_eq!(t.reserved_usd, d("0.5") - d("0.42"));
    assert_identity(&t);
    let l = a.get_lease("busy").await.unwrap().expect("lease");
    assert_eq!(l.reserved_usd, t.reserved_usd);
    // The mirror catches up with the entry (only forward).
    let renewed_now = a
        .renew_lease(
            "busy",
            1,
            d("0"),
            &sizing("0", "0", "1"),
            PERIOD,
            T0 + 6,
            T0 + 6 + TTL,
        )
        .await
        .unwrap();
    assert!(
        matches!(renewed_now, RenewApplied::Renewed { .. }),
        "{renewed_now:?}"
    );
}

/// The version of lease `lease_id`'s entry on the tenant's `ALL` row: +1 per
/// update of the row that moved the lease's money.
async fn entry_version(
    client: &aws_sdk_dynamodb::Client,
    s: &DynamoStore,
    tenant: &str,
    lease_id: &str,
) -> u64 {
    use aws_sdk_dynamodb::types::AttributeValue as Av;
    let row = client
        .get_item()
        .table_name(&s.tables().budgets)
        .key("tenantId", Av::S(tenant.into()))
        .key("modelId", Av::S(format!("{PERIOD}#ALL")))
        .consistent_read(true)
        .send()
        .await
        .expect("get the ALL row")
        .item
        .expect("the ALL row");
    match row.get(&format!("lease:{lease_id}")) {
        Some(Av::M(m)) => match m.get("v") {
            Some(Av::N(v)) => v.parse().expect("version"),
            other => panic!("entry version: {other:?}"),
        },
        other => panic!("lease entry: {other:?}"),
    }
}

/// A gateway's batch is charged per lease in one update of the tenant's row
/// (the entry's version moves once per lease, not once per request), with
/// usage records for every request, exact sums, per-commit outcomes in the
/// batch's order, and a replay that charges nothing.
async fn a_batch_is_one_charge_per_lease(client: aws_sdk_dynamodb::Client, s: Arc<DynamoStore>) {
    for id in ["L1", "L2"] {
        granted(
            s.grant_lease(&lease(id, "grouped"), &sizing("0.5", "0.01", "1"), d("2"))
                .await
                .unwrap(),
        );
    }
    let v1 = entry_version(&client, &s, "grouped", "L1").await;
    let v2 = entry_version(&client, &s, "grouped", "L2").await;
    // 30 on L1, 3 on L2, one on a lease that does not exist, and a request
    // delivered twice in the same batch.
    let mut batch: Vec<LeasedCommit> = (0..30)
        .map(|i| leased(&format!("g1-{i}"), "L1", "0.0105"))
        .collect();
    batch.insert(7, leased("g2-0", "L2", "0.0105"));
    batch.push(leased("g2-1", "L2", "0.0105"));
    batch.push(leased("nolease", "nope", "0.0105"));
    batch.push(leased("g2-2", "L2", "0.0105"));
    batch.push(leased("g1-3", "L1", "0.0105"));
    let out = s.commit_leased_batch(&batch, T0 + 10).await;
    assert_eq!(out.len(), batch.len());
    let mut committed = 0;
    let mut duplicates = 0;
    for (c, r) in batch.iter().zip(&out) {
        match r.as_ref().expect("a commit of the batch") {
            CommitApplied::Committed { cost, hold, .. } => {
                assert_eq!(*cost, d("0.0105"));
                assert_eq!(
                    hold.request_id, c.request_id,
                    "results keep the batch's order"
                );
                committed += 1;
            }
            CommitApplied::Duplicate { cost } => {
                assert_eq!(c.request_id, "g1-3");
                assert_eq!(*cost, Some(d("0.0105")));
                duplicates += 1;
            }
            CommitApplied::Unknown => assert_eq!(c.lease_id, "nope"),
        }
    }
    assert_eq!((committed, duplicates), (33, 1));
    assert_eq!(entry_version(&client, &s, "grouped", "L1").await, v1 + 1);
    assert_eq!(entry_version(&client, &s, "grouped", "L2").await, v2 + 1);
    let t = totals(&s, "grouped").await;
    assert_eq!(t.counters.requests, 33);
    assert_eq!(t.counters.spent_usd, d("0.3465"));
    assert_eq!(t.counters.input_tokens, 33_000);
    assert_eq!(t.counters.output_tokens, 16_500);
    assert_eq!(t.reserved_usd, d("1") - d("0.3465"));
    assert_identity(&t);
    let rows: Vec<UsageRecord> = s
        .usage(None, None)
        .await
        .unwrap()
        .into_iter()
        .filter(|r| r.tenant_id == "grouped")
        .collect();
    assert_eq!(rows.len(), 33);
    assert_eq!(
        rows.iter().map(|r| r.cost_usd).sum::<Decimal>(),
        d("0.3465")
    );
    assert!(rows
        .iter()
        .all(|r| r.attribution.user_id.as_deref() == Some("u-1")
            && r.attribution.application_id.as_deref() == Some("app")));

    // The gateway retries the whole batch (say its answer was lost).
    let again = s.commit_leased_batch(&batch, T0 + 20).await;
    for (c, r) in batch.iter().zip(again) {
        match r.expect("a replayed commit") {
            CommitApplied::Duplicate { cost } => assert_eq!(cost, Some(d("0.0105"))),
            CommitApplied::Unknown => assert_eq!(c.lease_id, "nope"),
            other => panic!("{}: replay charged again: {other:?}", c.request_id),
        }
    }
    assert_eq!(totals(&s, "grouped").await, t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dynamodb_leases_on_dynalite() {
    let dynalite = dynalite::Dynalite::start();
    let conf = dynalite.sdk_config().await;
    let run = std::process::id();
    let mut next = 0;
    let mut fresh = || {
        next += 1;
        let prefix = format!("l{run}-{next}-");
        DynamoStore::from_sdk_config(
            &conf,
            &DynamoOptions {
                table_prefix: prefix,
                pricing_region: "global".into(),
            },
        )
    };
    let open = |s: DynamoStore| async move {
        s.init_tables().await.expect("create tables");
        Arc::new(s)
    };

    let ready = open(fresh()).await;
    ready.check_ready().await.expect("tables ACTIVE: ready");
    lease_lifecycle(ready).await;
    leases_respect_the_budget_and_expire(open(fresh()).await).await;
    hold_commits_are_capped(open(fresh()).await).await;
    crash_windows_are_repaired(aws_sdk_dynamodb::Client::new(&conf), open(fresh()).await).await;
    a_batch_is_one_charge_per_lease(aws_sdk_dynamodb::Client::new(&conf), open(fresh()).await)
        .await;
    // Two stores on the same tables: two sidecars sharing one ledger.
    let a = open(fresh()).await;
    let b = Arc::new(DynamoStore::from_sdk_config(
        &conf,
        &DynamoOptions {
            table_prefix: a
                .tables()
                .budgets
                .trim_end_matches("TenantBudgets")
                .to_string(),
            pricing_region: "global".into(),
        },
    ));
    concurrent_grants_never_exceed_the_budget(a.clone(), b.clone()).await;
    concurrent_commits_on_one_lease_all_land(a, b).await;
    drop(dynalite);
}
