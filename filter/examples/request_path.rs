//! Native cost of the filter's pure-Rust work for one Converse request, step by
//! step, in the order `glue` does it for a request admitted from a lease: the
//! benchmark's request (`cargo xtask bench`: 922-byte Converse body, bearer key,
//! keep-alive) and an emulator-shaped response.
//!
//! Host calls (headers, body, metrics, the shared queue) are not here: only what
//! runs inside the Wasm VM between them. Inside Envoy the same code runs as Wasm
//! under V8, slower by a runtime-dependent factor; use this to find and compare
//! the filter's own hot spots (it is also easy to `perf record`).
//!
//! ```sh
//! cargo run --release --example request_path -p tollgate-filter [-- iterations]
//! ```
//!
//! Prints one JSON line: nanoseconds per request, wall clock for each step and
//! in total, and the thread's CPU time per request (Linux `schedstat`), which
//! stays meaningful when other work shares the cores; `cpu_ns_per_step` splits
//! it in the proportions of the wall-clock steps.

use rust_decimal::Decimal;
use std::hint::black_box;
use std::time::Instant;
use tollgate_filter::identity;
use tollgate_filter::lease::{Admit, Ask, LeaseBook, LeaseKey, LeasePolicy};
use tollgate_filter::request::{self, RequestFacts};
use tollgate_filter::route::BedrockRoute;
use tollgate_filter::settle::{settle, Queued, ResponseOutcome, Settlement};
use tollgate_filter::usage;
use tollgate_wire::api::{Credential, LeaseGrant, LeaseTerms, LeasedAdmission, ReserveRequest};
use tollgate_wire::rates::Rates;

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// The bench's body (`xtask/src/bench.rs`, `converse_body`).
fn request_body() -> Vec<u8> {
    let text = "Summarise the following paragraph in two sentences. ".repeat(16);
    serde_json::to_vec(&serde_json::json!({
        "messages": [{"role": "user", "content": [{"text": text}]}],
        "inferenceConfig": {"maxTokens": 128},
    }))
    .expect("static JSON")
}

/// A Converse answer shaped like the emulator's (`tests/bedrock-emulator`).
fn response_body() -> Vec<u8> {
    let text = "the budget gateway meters every token it forwards ".repeat(12);
    serde_json::to_vec(&serde_json::json!({
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "max_tokens",
        "usage": {"inputTokens": 300, "outputTokens": 128, "totalTokens": 428},
        "metrics": {"latencyMs": 740},
    }))
    .expect("static JSON")
}

fn request_headers(path: &str) -> Vec<(String, String)> {
    [
        (":authority", "127.0.0.1:10000"),
        (":path", path),
        (":method", "POST"),
        (":scheme", "http"),
        ("content-length", "922"),
        (
            "authorization",
            "Bearer tg_0123456789abcdef0123456789abcdef01234567",
        ),
        ("user-agent", "hey/0.0.1"),
        ("content-type", "application/json"),
        ("accept-encoding", "gzip"),
        ("x-forwarded-proto", "http"),
        ("x-request-id", "6f1c2a36-6a52-4a0b-9f8e-8c1f1f6f8f3a"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn lease_grant() -> LeaseGrant {
    let d = |s: &str| s.parse::<Decimal>().expect("decimal literal");
    LeaseGrant {
        lease_id: "lease-0123456789abcdef".into(),
        terms: LeaseTerms {
            tenant_id: "bench".into(),
            application_id: None,
            model_id: MODEL.into(),
            target_model: MODEL.into(),
            rates: Rates {
                input: d("0.25"),
                output: d("1.25"),
                cache_read: d("0.03"),
                cache_write: d("0.30"),
            },
            default_max_output_tokens: 4096,
            max_tokens_cap: None,
        },
        // Effectively unlimited: every iteration is admitted locally.
        granted_usd: d("1000000000"),
        ttl_ms: 30_000,
        budget_remaining_usd: d("1000000000"),
    }
}

/// `glue::new_request_id` (getrandom + hex).
fn new_request_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("getrandom");
    format!("tg-{}", identity::hex(&b))
}

/// CPU time this thread has run, from `/proc/thread-self/schedstat` (Linux).
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

const STEPS: &[&str] = &[
    "request_id",
    "headers",
    "body_read",
    "body_checks",
    "reserve_request_and_lease_key",
    "lease_admit",
    "rewrite",
    "response_headers",
    "response_body_usage",
    "settle_and_encode",
    "root_decode_and_batch",
];

fn main() {
    let iterations: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(200_000);
    let path = format!("/model/{MODEL}/converse");
    let headers = request_headers(&path);
    let body = request_body();
    let response = response_body();
    let policy = LeasePolicy {
        renew_interval_ms: 1000,
        target_secs: 2,
        admit_window_ms: u64::MAX / 4,
    };
    let mut book = LeaseBook::default();
    let mut ns = vec![0u128; STEPS.len()];
    let mut batch = Vec::new();
    let mut sink = 0usize;
    let cpu_started = thread_cpu_ns();
    let started = Instant::now();
    for i in 0..iterations {
        let mut t = Instant::now();
        let mut lap = |step: usize, t: &mut Instant| {
            let now = Instant::now();
            ns[step] += (now - *t).as_nanos();
            *t = now;
        };

        // Exchange::new
        let request_id = new_request_id();
        lap(0, &mut t);

        // on_http_request_headers
        let route = BedrockRoute::parse("POST", &path).expect("bench route");
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        };
        let mut attribution = identity::attribution(header).expect("no attribution");
        let received = identity::ReceivedRequest {
            method: "POST",
            path: &path,
            headers: &headers,
        };
        let credential = identity::credential(&received, None, None).expect("bearer");
        let mut bedrock_headers: Vec<(String, String)> = Vec::new();
        for (name, value) in &headers {
            if identity::is_stripped_header(name) {
                sink += name.len();
            }
            let lower = name.to_ascii_lowercase();
            if lower.starts_with("x-amzn-bedrock-") {
                bedrock_headers.push((lower, value.clone()));
            }
        }
        lap(1, &mut t);

        // on_http_request_body → start_reserve
        let mut facts = RequestFacts::read(route.operation, &route.model, &body).expect("body");
        lap(2, &mut t);
        let bh = |name: &str| {
            bedrock_headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        request::billing_options(bh, &facts.billing, &Default::default()).expect("billing");
        facts.metadata =
            request::client_metadata(bh("x-amzn-bedrock-request-metadata"), &facts.metadata)
                .expect("metadata");
        identity::merge_body_attribution(&mut attribution, &facts.metadata);
        request::check_metadata_limits(&facts.metadata, &attribution, &request_id)
            .expect("metadata limits");
        lap(3, &mut t);
        let req = ReserveRequest {
            request_id: request_id.clone(),
            credential: credential.clone(),
            operation: route.operation,
            model: route.model.clone(),
            attribution: attribution.clone(),
            input_tokens_estimate: facts.input_tokens_estimate,
            max_output_tokens: facts.max_output_tokens,
            lease: None,
        };
        let Credential::Bearer { key } = &credential else {
            unreachable!("the bench uses a bearer key")
        };
        let lease_key = LeaseKey {
            credential: format!("bearer:{}", identity::sha256_hex(key.as_bytes())),
            model: route.model.clone(),
            application: attribution.application_id.clone(),
        };
        lap(4, &mut t);
        let ask = Ask {
            request_id: &request_id,
            input_tokens_estimate: facts.input_tokens_estimate,
            requested_max_output: facts.max_output_tokens,
        };
        let (lease_id, r) = match book.admit(&lease_key, ask, i as u64, true) {
            Admit::Local {
                lease_id,
                reservation,
            } => (lease_id, reservation),
            Admit::Remote { .. } => book
                .insert_grant(lease_key.clone(), lease_grant(), &policy, ask, i as u64)
                .expect("grant holds the request"),
            other => panic!("unexpected admission {other:?}"),
        };
        lap(5, &mut t);

        // forward
        let md = request::merge_metadata(
            &facts.metadata,
            &request::gateway_metadata(&attribution, &request_id, Some(&r)),
        )
        .expect("metadata limits");
        let out = facts
            .rewrite(
                &body,
                route.operation,
                &r.model_id,
                r.max_output_tokens,
                Some(&md),
            )
            .expect("rewrite");
        let upstream = BedrockRoute::upstream_path(&r.target_model, route.operation);
        let content_length = out.len().to_string();
        sink += out.len() + upstream.len() + content_length.len();
        lap(6, &mut t);

        // on_http_response_headers
        let remaining = r.budget_remaining_usd.to_string();
        sink += remaining.len();
        lap(7, &mut t);

        // on_http_response_body (one chunk) + settle_once's usage
        let mut copy = Vec::new();
        copy.extend_from_slice(&response);
        let from_body = usage::body_usage(route.operation, &copy);
        // As `settle_once`: the estimate only when Bedrock's usage is missing.
        let estimated_output_tokens = if from_body.is_none() {
            usage::estimate_json_output_tokens(&copy)
        } else {
            0
        };
        lap(8, &mut t);

        let outcome = ResponseOutcome {
            status: Some(200),
            usage: from_body,
            final_usage: from_body.is_some(),
            estimated_output_tokens,
        };
        let mut s = settle(
            &request_id,
            facts.input_tokens_estimate,
            Some(r.max_output_tokens),
            &outcome,
        );
        if let Settlement::Commit(c) = &mut s {
            c.lease = Some(LeasedAdmission {
                lease_id: lease_id.clone(),
                hold_usd: r.hold_usd,
                max_output_tokens: r.max_output_tokens,
                input_tokens_estimate: facts.input_tokens_estimate,
                attribution: attribution.clone(),
            });
        }
        let queued = Queued::new(&s).expect("settlement encodes").to_message();
        lap(9, &mut t);

        // Root: on_queue_ready → drain_queue → flush (batches of 8 here).
        batch.push(Queued::from_message(&queued).expect("settlement decodes"));
        if batch.len() == 8 {
            let wire = Queued::commit_batch(&batch);
            batch.clear();
            sink += wire.len();
        }
        lap(10, &mut t);
        book.give_back(&lease_id, Decimal::ZERO);
        black_box((&req, &out));
    }
    let total = started.elapsed();
    let cpu = match (cpu_started, thread_cpu_ns()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    let per = |n: u128| n as f64 / iterations as f64;
    let steps: serde_json::Map<String, serde_json::Value> = STEPS
        .iter()
        .zip(&ns)
        .map(|(name, n)| ((*name).to_owned(), serde_json::json!(per(*n).round())))
        .collect();
    let cpu_share = cpu.map(|c| c as f64 / total.as_nanos() as f64);
    let cpu_steps: serde_json::Map<String, serde_json::Value> = STEPS
        .iter()
        .zip(&ns)
        .map(|(name, n)| {
            let v = cpu_share.map(|s| (per(*n) * s).round());
            ((*name).to_owned(), serde_json::json!(v))
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "iterations": iterations,
            "request_body_bytes": body.len(),
            "response_body_bytes": response.len(),
            "ns_per_request": (total.as_nanos() as f64 / iterations as f64).round(),
            "ns_per_step": steps,
            "cpu_ns_per_request": cpu.map(|c| (c as f64 / iterations as f64).round()),
            "cpu_ns_per_step": cpu_steps,
            "sink": sink % 7,
        })
    );
}
