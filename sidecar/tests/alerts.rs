//! Alerts end to end inside the process: several thresholds per budget scope,
//! each once per period and again in the next (weekly and monthly boundaries,
//! moved with the injectable clock), on SQLite and on DynamoDB (dynalite);
//! webhook deliveries signed with HMAC-SHA256 and verified by a real loopback
//! receiver; the outbox's retries, failure, requeue and survival of a restart.

mod common;
#[cfg(feature = "dynamodb")]
#[path = "common/dynalite.rs"]
mod dynalite;

use common::*;
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use time::macros::datetime;
use tollgate_sidecar::alerts::{OutboxSettings, WebhookSecret};
use tollgate_sidecar::service::Settings;

const SECRET: &str = "whsec_test_0123456789abcdef";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Got {
    alert_id: String,
    body: Value,
    /// The signature matched the receiver's secret and its timestamp is fresh.
    valid: bool,
}

/// A webhook receiver on 127.0.0.1 that verifies `X-Tollgate-Signature` the way
/// docs/operations.md tells receivers to (its own HMAC, not the sidecar's
/// code), answering 200 when it matches and 401 when not.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Got>>>,
    secret: Arc<Mutex<String>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn verify(secret: &str, header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => v1 = hex::decode(v).ok(),
            _ => {}
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else {
        return false;
    };
    // Replay window: 5 minutes.
    if (time::OffsetDateTime::now_utc().unix_timestamp() - t).abs() > 300 {
        return false;
    }
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return false;
    };
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    mac.verify_slice(&v1).is_ok()
}

impl Receiver {
    async fn start(secret: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        Self::on(listener, secret)
    }

    fn on(listener: tokio::net::TcpListener, secret: &str) -> Self {
        let got = Arc::new(Mutex::new(Vec::new()));
        let secret = Arc::new(Mutex::new(secret.to_string()));
        let (sink, key) = (got.clone(), secret.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(
                move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                    let (sink, key) = (sink.clone(), key.clone());
                    async move {
                        let header = headers
                            .get("x-tollgate-signature")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default();
                        let secret = key.lock().unwrap().clone();
                        let valid = verify(&secret, header, &body);
                        sink.lock().unwrap().push(Got {
                            alert_id: headers
                                .get("x-tollgate-alert-id")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string(),
                            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                            valid,
                        });
                        if valid {
                            StatusCode::OK
                        } else {
                            StatusCode::UNAUTHORIZED
                        }
                    }
                },
            ),
        );
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            url,
            got,
            secret,
            server,
        }
    }

    fn got(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }

    fn valid(&self) -> Vec<Got> {
        self.got().into_iter().filter(|g| g.valid).collect()
    }
}

fn setup(hook: &str, outbox: OutboxSettings) -> Setup {
    Setup {
        settings: Settings {
            webhook_secret: Some(WebhookSecret::new(SECRET)),
            outbox,
            ..Settings::default()
        },
        webhooks: vec![hook.to_string()],
        ..Setup::default()
    }
}

/// (period, scope, threshold) of a tenant's threshold alerts.
async fn thresholds(s: &TestSidecar, tenant: &str) -> BTreeSet<(String, String, String)> {
    s.balance(tenant).await["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["kind"] == "threshold")
        .map(|a| {
            (
                a["period"].as_str().unwrap_or_default().to_string(),
                a["scope"].as_str().unwrap_or_default().to_string(),
                a["threshold"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn set(items: &[(&str, &str, &str)]) -> BTreeSet<(String, String, String)> {
    items
        .iter()
        .map(|(p, s, t)| (p.to_string(), s.to_string(), t.to_string()))
        .collect()
}

/// Reserves and commits `input` tokens (no output) under request `id`.
async fn spend(s: &TestSidecar, key: &str, model: &str, id: &str, input: u64) {
    let r = s.reserve(id, key, model, input, Some(0)).await;
    assert_eq!(r["decision"], "allow", "{id}: {r}");
    let c = s.commit(id, input, 0).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{id}: {c}");
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The thresholds [0.5, 0.8, 0.95] each fire once per ISO week, and again in
/// the next; a model budget's thresholds are their own scope and fire again
/// after the month turns. Every alert reaches the receiver once, signed.
async fn thresholds_fire_once_per_period(s: TestSidecar, hook: Receiver) {
    let acme = s
        .tenant(
            "acme",
            json!({"budget_usd": "1.00", "reset_cycle": "weekly", "alert_threshold": null,
                   "alert_thresholds": ["0.95", 0.5, "0.80"]}),
        )
        .await;
    let cfg = s.balance("acme").await["config"].clone();
    assert_eq!(
        cfg["alert_thresholds"],
        json!(["0.5", "0.8", "0.95"]),
        "{cfg}"
    );
    assert_eq!(cfg["alert_threshold"], "0.5", "{cfg}");
    // Sonnet input is $3 per 1M tokens. Monday 2026-11-23 is in 2026-W48.
    spend(&s, &acme, SONNET, "w48-1", 150_000).await; // 0.45
    assert_eq!(thresholds(&s, "acme").await, set(&[]));
    spend(&s, &acme, SONNET, "w48-2", 50_000).await; // 0.60
    assert_eq!(
        thresholds(&s, "acme").await,
        set(&[("2026-W48", "tenant", "0.5")])
    );
    spend(&s, &acme, SONNET, "w48-3", 70_000).await; // 0.81
    spend(&s, &acme, SONNET, "w48-4", 50_000).await; // 0.96
    spend(&s, &acme, SONNET, "w48-5", 10_000).await; // 0.99: nothing new
    let w48 = set(&[
        ("2026-W48", "tenant", "0.5"),
        ("2026-W48", "tenant", "0.8"),
        ("2026-W48", "tenant", "0.95"),
    ]);
    assert_eq!(thresholds(&s, "acme").await, w48);

    // Sunday's last second is still W48; Monday 00:00 UTC starts W49.
    s.clock.set(datetime!(2026-11-29 23:59:59 UTC));
    assert_eq!(s.balance("acme").await["balance"]["period"], "2026-W48");
    s.clock.set(datetime!(2026-11-30 00:00 UTC));
    assert_eq!(s.balance("acme").await["balance"]["period"], "2026-W49");
    spend(&s, &acme, SONNET, "w49-1", 200_000).await; // 0.60 of the new week
    spend(&s, &acme, SONNET, "w49-2", 70_000).await; // 0.81
    let mut both = w48.clone();
    both.extend(set(&[
        ("2026-W49", "tenant", "0.5"),
        ("2026-W49", "tenant", "0.8"),
    ]));
    assert_eq!(thresholds(&s, "acme").await, both);

    // A model budget: its own scope, against its own budget, monthly.
    let beta = s
        .tenant(
            "beta",
            json!({"budget_usd": "10", "alert_threshold": null, "alert_thresholds": ["0.5", "0.8"],
                   "model_budgets": {"claude-3-haiku": "1.00"}}),
        )
        .await;
    // Haiku input is $0.25 per 1M: 2.4M tokens = 0.60 of the model's $1.
    spend(&s, &beta, HAIKU, "b-nov", 2_400_000).await;
    let model = format!("model:{HAIKU}");
    assert_eq!(
        thresholds(&s, "beta").await,
        set(&[("2026-11", &model, "0.5")]),
        "the tenant's own 0.5 is not reached (0.6 of 10)"
    );
    s.clock.set(datetime!(2026-12-01 00:00 UTC));
    spend(&s, &beta, HAIKU, "b-dec", 2_400_000).await;
    assert_eq!(
        thresholds(&s, "beta").await,
        set(&[("2026-11", &model, "0.5"), ("2026-12", &model, "0.5")])
    );

    // Every alert reached the webhook, signed, once, with its id.
    let mut ids = BTreeSet::new();
    for t in ["acme", "beta"] {
        for a in s.balance(t).await["alerts"].as_array().expect("alerts") {
            ids.insert(a["alert_id"].as_str().expect("alert_id").to_string());
        }
    }
    assert_eq!(ids.len(), 7, "{ids:?}");
    wait_for("7 signed deliveries", || hook.valid().len() >= ids.len()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = hook.got();
    assert!(got.iter().all(|g| g.valid), "{got:?}");
    let delivered: Vec<String> = got.iter().map(|g| g.alert_id.clone()).collect();
    assert_eq!(
        delivered.iter().cloned().collect::<BTreeSet<_>>(),
        ids,
        "{got:?}"
    );
    assert_eq!(delivered.len(), ids.len(), "each once: {got:?}");
    for g in &got {
        assert_eq!(g.body["alertId"], g.alert_id.as_str(), "{g:?}");
        assert_eq!(g.body["level"], "ALERT");
    }
    let w49_08 = got
        .iter()
        .find(|g| g.body["period"] == "2026-W49" && g.body["threshold"] == "0.8")
        .expect("the W49 0.8 alert");
    assert_eq!(w49_08.body["scope"], "tenant");
    assert_eq!(dec(&w49_08.body["spentUsd"]), d("0.81"));
    assert_eq!(dec(&w49_08.body["budgetUsd"]), d("1"));
    // Delivered entries are no longer pending.
    let (st, v) = s
        .admin("GET", "/v1/alerts/outbox?state=pending", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["entries"], json!([]), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thresholds_fire_once_per_period_on_sqlite() {
    let hook = Receiver::start(SECRET).await;
    let s = TestSidecar::start_with(setup(&hook.url, OutboxSettings::default())).await;
    thresholds_fire_once_per_period(s, hook).await;
}

#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thresholds_fire_once_per_period_on_dynamodb() {
    use tollgate_sidecar::store::dynamodb::{DynamoOptions, DynamoStore};
    let dynalite = dynalite::Dynalite::start();
    let conf = dynalite.sdk_config().await;
    let store = DynamoStore::from_sdk_config(
        &conf,
        &DynamoOptions {
            table_prefix: format!("alerts{}-", std::process::id()),
            pricing_region: "global".into(),
        },
    );
    store.init_tables().await.expect("create tables");
    let hook = Receiver::start(SECRET).await;
    let s =
        TestSidecar::on_store(Arc::new(store), setup(&hook.url, OutboxSettings::default())).await;
    thresholds_fire_once_per_period(s, hook).await;
}

fn fast_retries(max_attempts: u32) -> OutboxSettings {
    OutboxSettings {
        max_attempts,
        base_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_millis(100),
        poll: Duration::from_millis(20),
    }
}

/// Moves the sidecar's clock on while waiting, so retries come due.
async fn wait_ticking(s: &TestSidecar, what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..500 {
        if done() {
            return;
        }
        s.clock.advance(time::Duration::milliseconds(200));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn outbox(s: &TestSidecar, state: &str) -> Vec<Value> {
    let (st, v) = s
        .admin("GET", &format!("/v1/alerts/outbox?state={state}"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    v["entries"].as_array().cloned().unwrap_or_default()
}

/// A receiver with another secret refuses every delivery: the outbox retries,
/// then marks the entry failed (metrics say so); once the receiver has the
/// right secret an operator's retry delivers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_secret_is_refused_then_failed_then_requeued() {
    let hook = Receiver::start("whsec_someone_else").await;
    let s = TestSidecar::start_with(setup(&hook.url, fast_retries(3))).await;
    let worker = tollgate_sidecar::server::spawn_outbox_worker(s.service.clone());
    let key = s
        .tenant(
            "acme",
            json!({"budget_usd": "1.00", "alert_threshold": "0.5"}),
        )
        .await;
    spend(&s, &key, SONNET, "r1", 200_000).await; // 0.60
    let got = || hook.got().len();
    wait_ticking(&s, "3 refused attempts", || got() >= 3).await;
    let mut failed = Vec::new();
    for _ in 0..200 {
        failed = outbox(&s, "failed").await;
        if !failed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["attempts"], 3);
    assert_eq!(failed[0]["last_error"], "webhook answered HTTP 401");
    let alert_id = failed[0]["alert_id"].as_str().expect("id").to_string();
    assert_eq!(failed[0]["alert"]["alertId"], alert_id.as_str());
    // Never accepted, and no more attempts once failed.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(got(), 3);
    assert!(hook.valid().is_empty());
    let mut m = String::new();
    for _ in 0..200 {
        m = s.metrics().await;
        if m.contains("tollgate_alert_outbox_failed 1") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(m.contains("tollgate_alert_outbox_failed 1"), "{m}");
    assert!(m.contains("tollgate_alert_outbox_pending 0"), "{m}");
    assert!(
        m.contains(r#"tollgate_alert_deliveries_total{target="webhook",result="failed"} 1"#),
        "{m}"
    );
    assert!(
        m.contains(r#"tollgate_alert_deliveries_total{target="webhook",result="retried"} 2"#),
        "{m}"
    );

    // The receiver gets the right secret; the operator requeues.
    *hook.secret.lock().unwrap() = SECRET.to_string();
    let (st, v) = s
        .admin("POST", &format!("/v1/alerts/outbox/{alert_id}/retry"), None)
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["requeued"], 1);
    wait_ticking(&s, "the delivery", || hook.valid().len() == 1).await;
    assert_eq!(hook.valid()[0].alert_id, alert_id);
    let (st, _) = s
        .admin("POST", &format!("/v1/alerts/outbox/{alert_id}/retry"), None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "nothing failed any more");
    worker.abort();
}

/// The webhook is down when the alert fires and while the sidecar restarts;
/// the entry survives in the ledger and the restarted sidecar's worker
/// delivers it (same alert id) once the webhook is up.
type Open = Box<dyn Fn(Setup) -> std::pin::Pin<Box<dyn std::future::Future<Output = TestSidecar>>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_survives_a_restart_while_the_webhook_is_down_on_sqlite() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let open: Open = Box::new(move |setup| {
        let db = db.clone();
        Box::pin(async move { TestSidecar::open(&db, setup).await })
    });
    outbox_survives_a_restart(open).await;
}

/// Each "process" gets its own store and SDK client on the same tables.
#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn outbox_survives_a_restart_while_the_webhook_is_down_on_dynamodb() {
    use tollgate_sidecar::store::dynamodb::{DynamoOptions, DynamoStore};
    let dynalite = Arc::new(dynalite::Dynalite::start());
    let options = DynamoOptions {
        table_prefix: format!("restart{}-", std::process::id()),
        pricing_region: "global".into(),
    };
    let conf = dynalite.sdk_config().await;
    DynamoStore::from_sdk_config(&conf, &options)
        .init_tables()
        .await
        .expect("create tables");
    let open: Open = Box::new(move |setup| {
        let (dynalite, options) = (dynalite.clone(), options.clone());
        Box::pin(async move {
            let conf = dynalite.sdk_config().await;
            let store = DynamoStore::from_sdk_config(&conf, &options);
            TestSidecar::on_store(Arc::new(store), setup).await
        })
    });
    outbox_survives_a_restart(open).await;
}

async fn outbox_survives_a_restart(open: Open) {
    // A port with nothing listening (yet).
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/hook");
    let alert_id = {
        let s = open(setup(&url, fast_retries(1000))).await;
        let worker = tollgate_sidecar::server::spawn_outbox_worker(s.service.clone());
        let key = s
            .tenant(
                "acme",
                json!({"budget_usd": "1.00", "alert_threshold": "0.5"}),
            )
            .await;
        spend(&s, &key, SONNET, "r1", 200_000).await;
        let mut pending = Vec::new();
        for _ in 0..300 {
            pending = outbox(&s, "pending").await;
            if pending
                .first()
                .is_some_and(|e| e["attempts"].as_u64() >= Some(2))
            {
                break;
            }
            s.clock.advance(time::Duration::milliseconds(200));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert!(
            pending[0]["last_error"]
                .as_str()
                .is_some_and(|e| e.starts_with("webhook request failed")),
            "{pending:?}"
        );
        assert!(!pending[0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .contains("127.0.0.1"));
        worker.abort();
        pending[0]["alert_id"].as_str().expect("id").to_string()
    };
    // The sidecar is gone; the webhook comes up; a new sidecar opens the ledger.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .expect("rebind the webhook port");
    let hook = Receiver::on(listener, SECRET);
    let s = open(setup(&url, fast_retries(1000))).await;
    let worker = tollgate_sidecar::server::spawn_outbox_worker(s.service.clone());
    wait_ticking(&s, "the redelivery", || hook.valid().len() == 1).await;
    let got = hook.valid();
    assert_eq!(got[0].alert_id, alert_id);
    assert_eq!(got[0].body["kind"], "threshold");
    assert_eq!(got[0].body["threshold"], "0.5");
    let mut pending = outbox(&s, "pending").await;
    for _ in 0..100 {
        if pending.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        pending = outbox(&s, "pending").await;
    }
    assert!(pending.is_empty(), "{pending:?}");
    // SQLite keeps delivered entries; DynamoDB deletes them.
    let delivered = outbox(&s, "delivered").await;
    assert!(delivered.len() <= 1, "{delivered:?}");
    if let Some(e) = delivered.first() {
        assert!(e["attempts"].as_u64() >= Some(3), "{delivered:?}");
        assert_eq!(e["alert_id"], alert_id.as_str());
    }
    // Delivered once: nothing more arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hook.got().len(), 1, "{:?}", hook.got());
    worker.abort();
}
