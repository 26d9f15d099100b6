//! Reserve+commit load on the embedded SQLite store itself (no HTTP): N
//! concurrent tokio tasks, each reserving a hold for a unique request id and
//! committing it, for T seconds. Prints pairs/s and pair latency as one JSON
//! line. Measures the ledger's write path (group commit, `synchronous`), apart
//! from the HTTP server that `reserve_commit_load` also exercises.
//!
//! ```sh
//! cargo run --release --example sqlite_store_load -p tollgate-sidecar -- \
//!     [concurrency=256] [seconds=10] [full|normal] [db path, default a temp file]
//! ```

use rust_decimal::Decimal;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate_sidecar::pricing::Rates;
use tollgate_sidecar::store::sqlite::{SqliteStore, Synchronous};
use tollgate_sidecar::store::*;
use tollgate_wire::api::{Attribution, Usage};

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let concurrency: usize = args
        .first()
        .map_or(256, |a| a.parse().expect("concurrency"));
    let seconds: u64 = args.get(1).map_or(10, |a| a.parse().expect("seconds"));
    let sync = match args.get(2).map(String::as_str) {
        None | Some("full") => Synchronous::Full,
        Some("normal") => Synchronous::Normal,
        Some(other) => panic!("synchronous: full or normal, not {other}"),
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let path = args
        .get(3)
        .map_or_else(|| dir.path().join("ledger.db"), std::path::PathBuf::from);
    let store = Arc::new(
        SqliteStore::open(&path)
            .expect("open")
            .with_synchronous(sync)
            .expect("synchronous"),
    );
    let rates = Rates {
        input: "0.25".parse().unwrap(),
        output: "1.25".parse().unwrap(),
        cache_read: Decimal::ZERO,
        cache_write: Decimal::ZERO,
    };
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for t in 0..concurrency {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let id = format!("t{t}-{n}");
                n += 1;
                let hold = Hold {
                    request_id: id.clone(),
                    tenant_id: "bench".into(),
                    period: "all".into(),
                    model_id: MODEL.into(),
                    target_model: MODEL.into(),
                    attribution: Attribution::default(),
                    max_output_tokens: 256,
                    hold_usd: "0.001".parse().unwrap(),
                    budget_remaining_usd: Decimal::ZERO,
                    rates,
                    created_at_ms: 0,
                    expires_at_ms: i64::MAX,
                    state: HoldState::Open,
                    model_budget_usd: None,
                    app_budget_usd: None,
                    user_budget_usd: None,
                    input_tokens_estimate: 1200,
                };
                let t0 = Instant::now();
                let budget = Decimal::from(1_000_000_000u64);
                match store.reserve(&hold, budget).await.expect("reserve") {
                    ReserveOutcome::Admitted => {}
                    other => panic!("{other:?}"),
                }
                let usage = Usage {
                    input_tokens: 1100,
                    output_tokens: 180,
                    ..Usage::default()
                };
                match store.commit(&id, &usage, false, 1).await.expect("commit") {
                    CommitApplied::Committed { .. } => {}
                    other => panic!("{other:?}"),
                }
                lat.push(t0.elapsed().as_micros() as u64);
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort_unstable();
    let pct = |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)));
    let b = store
        .balance("bench", "all", Decimal::ZERO)
        .await
        .expect("balance");
    assert_eq!(b.totals.counters.requests, lat.len() as u64);
    assert!(b.totals.reserved_usd.is_zero());
    println!(
        "{{\"pairs\":{},\"seconds\":{:.2},\"pairs_per_sec\":{:.0},\"concurrency\":{},\"synchronous\":\"{:?}\",\"p50_us\":{},\"p99_us\":{}}}",
        lat.len(),
        secs,
        lat.len() as f64 / secs,
        concurrency,
        sync,
        pct(0.5).copied().unwrap_or(0),
        pct(0.99).copied().unwrap_or(0)
    );
}
