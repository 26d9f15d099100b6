//! Reserve+commit load against a running sidecar: N concurrent tasks, each
//! reserving budget for a unique request id and committing its usage, for T
//! seconds (and at most `MAX_PAIRS_PER_TASK` pairs per task). Prints the
//! completed pairs per second and per-pair latency as one JSON line.
//!
//! ```sh
//! cargo run --release --example reserve_commit_load -p tollgate-sidecar -- \
//!     http://127.0.0.1:9190 <bearer key> <model> [concurrency=16] [seconds=10]
//! ```
//!
//! The tenant behind the key needs a budget large enough for the whole run and
//! a price for the model; any denial or error is counted and reported. The
//! filter token the sidecar accepts comes from `TOLLGATE_FILTER_TOKEN` and is
//! sent as `x-tollgate-filter-token`, as the Envoy filter does.

use std::time::{Duration, Instant};
use tollgate_wire::api::{
    Attribution, Commit, CommitBatch, CommitOutcome, CommitResponse, Credential, Operation,
    ReserveRequest, ReserveResponse, Usage, COMMIT_PATH, RESERVE_PATH,
};

const MAX_PAIRS_PER_TASK: u64 = 1_000_000;
const FILTER_TOKEN_HEADER: &str = "x-tollgate-filter-token";

#[derive(Default)]
struct TaskResult {
    pairs: u64,
    denied: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u64>,
}

async fn pair(
    client: &reqwest::Client,
    base: &str,
    filter_token: &str,
    key: &str,
    model: &str,
    request_id: String,
) -> Result<bool, String> {
    let reserve = ReserveRequest {
        request_id: request_id.clone(),
        credential: Credential::Bearer {
            key: key.to_owned(),
        },
        operation: Operation::Converse,
        model: model.to_owned(),
        attribution: Attribution::default(),
        input_tokens_estimate: 1200,
        max_output_tokens: Some(256),
        lease: None,
    };
    let r = client
        .post(format!("{base}{RESERVE_PATH}"))
        .header(FILTER_TOKEN_HEADER, filter_token)
        .json(&reserve)
        .send()
        .await
        .map_err(|e| format!("reserve: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("reserve: HTTP {}", r.status()));
    }
    match r
        .json::<ReserveResponse>()
        .await
        .map_err(|e| format!("reserve body: {e}"))?
    {
        ReserveResponse::Allow(_) => {}
        ReserveResponse::Deny(_) => return Ok(false),
        ReserveResponse::Lease(_) => return Err("unexpected lease".into()),
    }
    let batch = CommitBatch {
        commits: vec![Commit {
            request_id,
            usage: Usage {
                input_tokens: 1100,
                output_tokens: 180,
                ..Usage::default()
            },
            estimated: false,
            unreserved: None,
            lease: None,
        }],
    };
    let r = client
        .post(format!("{base}{COMMIT_PATH}"))
        .header(FILTER_TOKEN_HEADER, filter_token)
        .json(&batch)
        .send()
        .await
        .map_err(|e| format!("commit: {e}"))?;
    if !r.status().is_success() {
        return Err(format!("commit: HTTP {}", r.status()));
    }
    let body = r
        .json::<CommitResponse>()
        .await
        .map_err(|e| format!("commit body: {e}"))?;
    match body.results.first().map(|c| c.outcome) {
        Some(CommitOutcome::Committed) => Ok(true),
        other => Err(format!("commit outcome {other:?}")),
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!(
            "usage: {} <sidecar-url> <bearer-key> <model> [concurrency=16] [seconds=10]",
            args[0]
        );
        return std::process::ExitCode::from(2);
    }
    let base = args[1].trim_end_matches('/').to_owned();
    let key = args[2].clone();
    let model = args[3].clone();
    let concurrency: usize = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(16);
    let seconds: f64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(10.0);
    let filter_token = std::env::var("TOLLGATE_FILTER_TOKEN").unwrap_or_default();
    if filter_token.is_empty() {
        eprintln!("note: TOLLGATE_FILTER_TOKEN is unset; only a sidecar with --insecure-open-data-plane will answer");
    }

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("HTTP client");
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let run = format!("{}-{nanos}", std::process::id());
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(seconds);
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (client, base, key, model, run, filter_token) = (
                client.clone(),
                base.clone(),
                key.clone(),
                model.clone(),
                run.clone(),
                filter_token.clone(),
            );
            tokio::spawn(async move {
                let mut res = TaskResult::default();
                let mut n = 0u64;
                while Instant::now() < deadline && n < MAX_PAIRS_PER_TASK {
                    let id = format!("bench-{run}-{t}-{n}");
                    n += 1;
                    let began = Instant::now();
                    match pair(&client, &base, &filter_token, &key, &model, id).await {
                        Ok(true) => {
                            res.pairs += 1;
                            res.latencies_us.push(began.elapsed().as_micros() as u64);
                        }
                        Ok(false) => res.denied += 1,
                        Err(e) => {
                            res.errors += 1;
                            res.first_error.get_or_insert(e);
                            // Do not spin on a dead sidecar.
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                res
            })
        })
        .collect();
    let mut total = TaskResult::default();
    for t in tasks {
        let Ok(r) = t.await else {
            total.errors += 1;
            continue;
        };
        total.pairs += r.pairs;
        total.denied += r.denied;
        total.errors += r.errors;
        if total.first_error.is_none() {
            total.first_error = r.first_error;
        }
        total.latencies_us.extend(r.latencies_us);
    }
    let secs = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    let out = serde_json::json!({
        "bench": "reserve_commit",
        "concurrency": concurrency,
        "secs": secs,
        "pairs": total.pairs,
        "denied": total.denied,
        "errors": total.errors,
        "first_error": total.first_error,
        "ops_per_s": total.pairs as f64 / secs,
        "pair_p50_ms": percentile(&total.latencies_us, 0.50),
        "pair_p99_ms": percentile(&total.latencies_us, 0.99),
    });
    println!("{out}");
    if total.pairs == 0 {
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
