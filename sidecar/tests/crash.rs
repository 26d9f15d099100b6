//! Crash durability: the real `tollgate-sidecar serve` binary is SIGKILLed in the
//! middle of reserve/commit traffic and restarted on the same SQLite file. Every
//! commit that was answered `committed` must be in the ledger, the ledger must
//! balance, and holds left open by the crash must be released by the sweeper.

use rust_decimal::Decimal;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const TOKEN: &str = "crash-test-admin-token";
const FILTER_TOKEN: &str = "crash-test-filter-token-0123456789";
const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";

/// Kills the child (SIGKILL) when dropped, so a failing test leaves no process.
struct Sidecar {
    child: Child,
    url: String,
}

impl Sidecar {
    fn start(db: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate-sidecar"))
            .args(["serve", "--listen", "127.0.0.1:0", "--db"])
            .arg(db)
            .args(["--hold-ttl-secs", "2", "--sweep-interval-secs", "1"])
            .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
            .env("TOLLGATE_FILTER_TOKEN", FILTER_TOKEN)
            .env_remove("TOLLGATE_FILTER_TOKEN_FILE")
            .env("RUST_LOG", "info")
            .env_remove("TOLLGATE_WEBHOOKS")
            .env_remove("TOLLGATE_EMF_OUTPUT")
            .env_remove("TOLLGATE_STORE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tollgate-sidecar");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        // Reads the ready line, then keeps draining so the sidecar never blocks on
        // a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on ").nth(1) {
                    let _ = tx.send(addr.trim().to_string());
                }
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                panic!("sidecar did not report its address: {e}");
            }
        };
        Self {
            child,
            url: format!("http://{addr}"),
        }
    }

    /// SIGKILL: no graceful shutdown, no flush.
    fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("reap");
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .expect("client")
}

async fn admin(
    http: &reqwest::Client,
    url: &str,
    method: reqwest::Method,
    path: &str,
    body: Value,
) -> Value {
    let resp = http
        .request(method, format!("{url}{path}"))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .expect("admin request");
    let st = resp.status();
    let v: Value = resp.json().await.unwrap_or(Value::Null);
    assert!(st.is_success(), "{path}: {st} {v}");
    v
}

async fn post(http: &reqwest::Client, url: &str, path: &str, body: Value) -> Option<Value> {
    let resp = http
        .post(format!("{url}{path}"))
        .header("x-tollgate-filter-token", FILTER_TOKEN)
        .json(&body)
        .send()
        .await
        .ok()?;
    if resp.status() != reqwest::StatusCode::OK {
        return None;
    }
    resp.json().await.ok()
}

fn cost(input: u64, output: u64) -> Decimal {
    // Haiku: $0.25 / $1.25 per 1M tokens.
    (Decimal::from(input) * Decimal::new(25, 2) + Decimal::from(output) * Decimal::new(125, 2))
        / Decimal::from(1_000_000u64)
}

fn dec(v: &Value) -> Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal: {v}"))
        .parse()
        .expect("decimal")
}

#[derive(Default)]
struct Log {
    /// Commits answered `committed`, with their cost.
    acked: Vec<(String, u64, u64, Decimal)>,
    /// Commits sent without a `committed` answer (the crash cut them off).
    unacked: Vec<(String, u64, u64)>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_mid_load_loses_no_acknowledged_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let http = client();

    let mut first = Sidecar::start(&db);
    let url = first.url.clone();
    use reqwest::Method;
    admin(
        &http,
        &url,
        Method::PUT,
        &format!("/v1/pricing/{MODEL}"),
        json!({"input": "0.25", "output": "1.25"}),
    )
    .await;
    admin(
        &http,
        &url,
        Method::PUT,
        "/v1/tenants/acme",
        json!({"budget_usd": "100", "reset_cycle": "none"}),
    )
    .await;
    let key = admin(
        &http,
        &url,
        Method::POST,
        "/v1/tenants/acme/keys",
        json!({}),
    )
    .await["key"]
        .as_str()
        .expect("key")
        .to_string();

    let reserve = move |id: String| {
        json!({
            "request_id": id,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": MODEL,
            "input_tokens_estimate": 2000,
            "max_output_tokens": 1000,
        })
    };

    // Holds that are never committed: only the sweeper can give them back.
    for i in 0..5 {
        let r = post(&http, &url, "/v1/reserve", reserve(format!("orphan-{i}")))
            .await
            .expect("reserve");
        assert_eq!(r["decision"], "allow", "{r}");
    }

    let log = Arc::new(Mutex::new(Log::default()));
    let mut workers = Vec::new();
    for w in 0..4u64 {
        let (http, url, log) = (http.clone(), url.clone(), log.clone());
        let reserve = reserve.clone();
        workers.push(tokio::spawn(async move {
            for i in 0..2000u64 {
                let id = format!("w{w}-{i}");
                let Some(r) = post(&http, &url, "/v1/reserve", reserve(id.clone())).await else {
                    return; // the sidecar is gone
                };
                assert_eq!(r["decision"], "allow", "{r}");
                let (input, output) = (1000 + w * 7 + i % 13, 200 + i % 31);
                let body = json!({"commits": [{"request_id": id,
                    "usage": {"input_tokens": input, "output_tokens": output}}]});
                match post(&http, &url, "/v1/commit", body).await {
                    Some(c) if c["results"][0]["outcome"] == "committed" => {
                        assert_eq!(dec(&c["results"][0]["cost_usd"]), cost(input, output));
                        log.lock()
                            .unwrap()
                            .acked
                            .push((id, input, output, cost(input, output)));
                    }
                    _ => {
                        log.lock().unwrap().unacked.push((id, input, output));
                        return;
                    }
                }
            }
        }));
    }

    // Let traffic flow, then pull the plug.
    let started = Instant::now();
    while log.lock().unwrap().acked.len() < 40 && started.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill9();
    for w in workers {
        w.await.expect("worker");
    }
    let (acked, unacked) = {
        let l = log.lock().unwrap();
        (l.acked.clone(), l.unacked.clone())
    };
    assert!(
        acked.len() >= 40,
        "only {} commits before the crash",
        acked.len()
    );

    // Restart on the same file.
    let second = Sidecar::start(&db);
    let url = second.url.clone();
    let snapshot = admin(&http, &url, Method::GET, "/v1/tenants/acme", Value::Null).await;
    let bal = &snapshot["balance"];
    let (budget, spent, reserved, available) = (
        dec(&bal["budget_usd"]),
        dec(&bal["spent_usd"]),
        dec(&bal["reserved_usd"]),
        dec(&bal["available_usd"]),
    );
    assert_eq!(budget, Decimal::from(100));
    assert_eq!(spent + reserved + available, budget, "{bal}");
    assert!(reserved >= Decimal::ZERO);

    // Every acknowledged commit is in the ledger, at its cost.
    for (id, input, output, c) in &acked {
        let body = json!({"commits": [{"request_id": id,
            "usage": {"input_tokens": input, "output_tokens": output}}]});
        let r = post(&http, &url, "/v1/commit", body).await.expect("probe");
        assert_eq!(r["results"][0]["outcome"], "duplicate", "{id} lost: {r}");
        assert_eq!(dec(&r["results"][0]["cost_usd"]), *c);
    }
    // Commits cut off by the crash were applied entirely or not at all.
    let mut charged_unacked = Decimal::ZERO;
    let mut charged_count = 0u64;
    for (id, input, output) in &unacked {
        let body = json!({"commits": [{"request_id": id,
            "usage": {"input_tokens": input, "output_tokens": output}}]});
        let r = post(&http, &url, "/v1/commit", body).await.expect("probe");
        match r["results"][0]["outcome"].as_str() {
            Some("duplicate") => {
                assert_eq!(dec(&r["results"][0]["cost_usd"]), cost(*input, *output));
                charged_unacked += cost(*input, *output);
                charged_count += 1;
            }
            // Not charged before the crash; charged now (a late commit).
            Some("committed") => {}
            // The reserve itself never made it to disk.
            Some("unknown_request") => {}
            other => panic!("unexpected probe outcome {other:?}: {r}"),
        }
    }
    let acked_sum: Decimal = acked.iter().map(|a| a.3).sum();
    assert_eq!(
        spent,
        acked_sum + charged_unacked,
        "spent must be exactly the acknowledged commits plus the cut-off ones that landed"
    );
    assert_eq!(
        bal["requests"].as_u64(),
        Some(acked.len() as u64 + charged_count),
        "{bal}"
    );

    eprintln!(
        "crash: {} acknowledged, {} cut off ({} of them charged), spent {spent}, reserved after restart {reserved}",
        acked.len(),
        unacked.len(),
        charged_count
    );

    // Holds orphaned by the crash (and the 5 never-committed ones) expire: TTL 2 s,
    // sweep every 1 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = admin(&http, &url, Method::GET, "/v1/tenants/acme", Value::Null).await;
        let b = &v["balance"];
        let (sp, re, av) = (
            dec(&b["spent_usd"]),
            dec(&b["reserved_usd"]),
            dec(&b["available_usd"]),
        );
        assert_eq!(sp + re + av, budget, "{b}");
        if re == Decimal::ZERO {
            assert_eq!(av, budget - sp);
            break;
        }
        assert!(Instant::now() < deadline, "holds never released: {b}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..5 {
        let r = post(
            &http,
            &url,
            "/v1/release",
            json!({"request_id": format!("orphan-{i}"), "reason": "test"}),
        )
        .await
        .expect("release");
        assert_eq!(r["released"], false, "orphan-{i} should already be expired");
    }
    drop(second);
}
