//! Tokens-per-minute limits, the /metrics exposition (values, cardinality cap,
//! store errors), CloudWatch EMF output, Slack-format webhooks and SQLite schema
//! migrations.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;
use tollgate_sidecar::emf::EmfTarget;
use tollgate_sidecar::service::Settings;
use tollgate_sidecar::store::sqlite::{apply_migrations, SqliteStore, MIGRATIONS, SCHEMA_VERSION};
use tollgate_sidecar::store::{Store, TenantConfig};

/// Reserve with attribution (what the filter sends from x-cost-center etc.).
async fn reserve_attr(
    s: &TestSidecar,
    id: &str,
    key: &str,
    input: u64,
    max_out: u64,
    attribution: Value,
) -> Value {
    s.data(
        "/v1/reserve",
        json!({
            "request_id": id,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": SONNET,
            "input_tokens_estimate": input,
            "max_output_tokens": max_out,
            "attribution": attribution,
        }),
    )
    .await
}

/// The value of one exposition line, matched exactly up to the value.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        let rest = l.strip_prefix(series)?;
        rest.strip_prefix(' ')?.trim().parse().ok()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tokens_per_minute_limit_charges_estimates_and_corrects_at_commit() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({"rate_limit_tpm": 1000})).await;

    // The limit is part of the config the admin API shows.
    let b = s.balance("acme").await;
    assert_eq!(b["config"]["rate_limit_tpm"], 1000, "{b}");
    let (st, list) = s.admin("GET", "/v1/tenants", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(list["tenants"][0]["rate_limit_tpm"], 1000, "{list}");
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/zero",
            Some(json!({"budget_usd": "1", "rate_limit_tpm": 0})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");

    // 400 input + 200 max output = 600 of 1000.
    let r = s.reserve("t1", &key, SONNET, 400, Some(200)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    // 600 more do not fit this minute; the next starts in 45 s.
    s.clock.advance(time::Duration::seconds(15));
    let r = s.reserve("t2", &key, SONNET, 400, Some(200)).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 429);
    assert_eq!(r["error_type"], "ThrottlingException");
    assert_eq!(r["retry_after_secs"], 45, "{r}");
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("1000 tokens per minute"));

    // The commit used 100 tokens: 500 come back, and t2 now fits.
    assert_eq!(
        s.commit("t1", 50, 50).await["results"][0]["outcome"],
        "committed"
    );
    let r = s.reserve("t2", &key, SONNET, 400, Some(200)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    // A release refunds the whole charge.
    let rel = s
        .data(
            "/v1/release",
            json!({"request_id": "t2", "reason": "upstream_error"}),
        )
        .await;
    assert_eq!(rel["released"], true);
    let r = s.reserve("t3", &key, SONNET, 700, Some(200)).await;
    assert_eq!(r["decision"], "allow", "{r}");

    // The next minute counts from zero.
    s.clock.advance(time::Duration::seconds(45));
    let r = s.reserve("t4", &key, SONNET, 800, Some(200)).await;
    assert_eq!(r["decision"], "allow", "{r}");

    let (_, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(
        sample(
            &m,
            r#"tollgate_requests_total{tenant="acme",outcome="denied_rate"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"tollgate_requests_total{tenant="acme",outcome="approved"}"#
        ),
        Some(4.0),
        "{m}"
    );

    // Clearing the limit (PUT replaces the config) lifts it.
    s.tenant("acme", json!({})).await;
    let b = s.balance("acme").await;
    assert!(b["config"]["rate_limit_tpm"].is_null(), "{b}");
    for i in 0..3 {
        let r = s
            .reserve(&format!("u{i}"), &key, SONNET, 900, Some(100))
            .await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_and_seed_set_the_tokens_per_minute_limit() {
    let s = TestSidecar::start().await;
    cli(
        &s.url,
        &[
            "tenants",
            "set",
            "clitenant",
            "--budget",
            "2.5",
            "--rpm",
            "10",
            "--tpm",
            "5000",
        ],
    );
    let b = s.balance("clitenant").await;
    assert_eq!(b["config"]["rate_limit_tpm"], 5000, "{b}");
    assert_eq!(b["config"]["rate_limit_rpm"], 10, "{b}");

    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        json!({"tenants": [{"tenant_id": "seeded", "budget_usd": "1", "rate_limit_tpm": 1234}]})
            .to_string(),
    )
    .unwrap();
    let s2 = TestSidecar::start_with(Setup {
        seed: Some(seed),
        ..Setup::default()
    })
    .await;
    let b = s2.balance("seeded").await;
    assert_eq!(b["config"]["rate_limit_tpm"], 1234, "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_report_exact_values_after_traffic() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({"budget_usd": "0.05"})).await;
    let other = s
        .tenant(
            "beta",
            json!({"allowed_models": [HAIKU], "rate_limit_rpm": 1}),
        )
        .await;

    let attr = json!({"application_id": "websearch", "cost_center": "cc-7", "environment": "prod"});
    // Two approved and committed for acme, with attribution.
    for (id, input, output) in [("a1", 1000u64, 500u64), ("a2", 2000, 100)] {
        let r = reserve_attr(&s, id, &key, 2000, 500, attr.clone()).await;
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(
            s.commit(id, input, output).await["results"][0]["outcome"],
            "committed"
        );
    }
    // Budget: 0.05 − 0.0105 − 0.0075 = 0.032 left; a 0.0885 hold does not fit.
    let r = s.reserve("a3", &key, SONNET, 4500, Some(5000)).await;
    assert_eq!(r["status"], 402, "{r}");
    // Wrong key, model not allowed, rate limited.
    let r = s
        .reserve("x1", "not-a-key-0000000000", SONNET, 1, Some(1))
        .await;
    assert_eq!(r["status"], 403, "{r}");
    let r = s.reserve("b1", &other, SONNET, 1, Some(1)).await;
    assert_eq!(r["status"], 403, "{r}");
    let r = s.reserve("b2", &other, HAIKU, 1, Some(1)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let r = s.reserve("b3", &other, HAIKU, 1, Some(1)).await;
    assert_eq!(r["status"], 429, "{r}");

    let (st, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(st, StatusCode::OK);
    let expect = [
        (
            r#"tollgate_requests_total{tenant="acme",outcome="approved"}"#,
            2.0,
        ),
        (
            r#"tollgate_requests_total{tenant="acme",outcome="denied_budget"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{tenant="unknown",outcome="denied_auth"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{tenant="beta",outcome="denied_model"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{tenant="beta",outcome="approved"}"#,
            1.0,
        ),
        (
            r#"tollgate_requests_total{tenant="beta",outcome="denied_rate"}"#,
            1.0,
        ),
        (
            &format!(
                r#"tollgate_tokens_total{{tenant="acme",model="{SONNET}",kind="input",application="websearch",cost_center="cc-7",environment="prod"}}"#
            ),
            3000.0,
        ),
        (
            &format!(
                r#"tollgate_tokens_total{{tenant="acme",model="{SONNET}",kind="output",application="websearch",cost_center="cc-7",environment="prod"}}"#
            ),
            600.0,
        ),
        (
            &format!(
                r#"tollgate_cost_usd_total{{tenant="acme",model="{SONNET}",application="websearch",cost_center="cc-7",environment="prod"}}"#
            ),
            0.018,
        ),
        (r#"tollgate_budget_remaining_usd{tenant="acme"}"#, 0.032),
        ("tollgate_reserve_seconds_count", 7.0),
        ("tollgate_commit_seconds_count", 2.0),
    ];
    for (series, want) in expect {
        let got = sample(&m, series).unwrap_or_else(|| panic!("{series} missing in\n{m}"));
        assert!((got - want).abs() < 1e-9, "{series}: {got} != {want}\n{m}");
    }
    for op in ["reserve", "commit", "release", "sweep"] {
        let series = format!(r#"tollgate_store_errors_total{{op="{op}"}}"#);
        assert_eq!(sample(&m, &series), Some(0.0), "{series}\n{m}");
    }

    // A broken store shows up in tollgate_store_errors_total.
    {
        let conn = rusqlite::Connection::open(&s.db).unwrap();
        conn.execute_batch("DROP TABLE holds;").unwrap();
    }
    let (st, _) = s
        .data_raw(
            "/v1/reserve",
            json!({
                "request_id": "boom",
                "credential": {"type": "bearer", "key": key},
                "operation": "converse",
                "model": SONNET,
                "input_tokens_estimate": 1,
            }),
        )
        .await;
    assert_eq!(st, StatusCode::INTERNAL_SERVER_ERROR);
    let (_, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(
        sample(&m, r#"tollgate_store_errors_total{op="reserve"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            r#"tollgate_requests_total{tenant="unknown",outcome="failed"}"#
        ),
        Some(1.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn metrics_label_values_are_capped() {
    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            metrics_max_label_values: 2,
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await;
    for (i, t) in ["t1", "t2", "t3", "t4"].iter().enumerate() {
        let key = s.tenant(t, json!({})).await;
        let r = s
            .reserve(&format!("r{i}"), &key, SONNET, 10, Some(10))
            .await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
    let (_, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    let req = |t: &str| {
        sample(
            &m,
            &format!(r#"tollgate_requests_total{{tenant="{t}",outcome="approved"}}"#),
        )
    };
    assert_eq!(req("t1"), Some(1.0), "{m}");
    assert_eq!(req("t2"), Some(1.0), "{m}");
    assert_eq!(req("other"), Some(2.0), "{m}");
    assert_eq!(req("t3"), None, "{m}");
    assert!(!m.contains(r#"tenant="t4""#), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn commits_write_cloudwatch_emf_lines() {
    let dir = tempfile::tempdir().unwrap();
    let emf = dir.path().join("emf").join("metrics.log");
    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            emf_output: Some(EmfTarget::File(emf.clone())),
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await;
    let key = s.tenant("tenant-demo1", json!({})).await;
    let attr = json!({"application_id": "websearch", "cost_center": "cc-7"});
    let r = reserve_attr(&s, "e1", &key, 1234, 567, attr).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(
        s.commit("e1", 1000, 500).await["results"][0]["outcome"],
        "committed"
    );
    // Duplicates and denials write nothing.
    assert_eq!(
        s.commit("e1", 1000, 500).await["results"][0]["outcome"],
        "duplicate"
    );

    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&emf).unwrap_or_default();
        if text.ends_with('\n') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = lines[0];
    // The cost is the exact decimal, not a float rendering.
    assert!(line.contains(r#""InvocationCost":0.0105"#), "{line}");
    let v: Value = serde_json::from_str(line).expect("EMF line is JSON");
    let cw = &v["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(cw["Namespace"], "BedrockCostManagement");
    assert_eq!(
        cw["Dimensions"],
        json!([
            ["TenantID"],
            ["TenantID", "ModelID"],
            ["TenantID", "ApplicationID", "ModelID"]
        ])
    );
    let names: Vec<&str> = cw["Metrics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "InvocationCost",
            "InputTokens",
            "OutputTokens",
            "InvocationCount"
        ]
    );
    assert_eq!(
        v["_aws"]["Timestamp"],
        json!(1_795_435_200_000i64),
        "the sidecar clock's time (2026-11-23T12:00Z)"
    );
    assert_eq!(v["TenantID"], "tenant-demo1");
    assert_eq!(v["ApplicationID"], "websearch");
    assert_eq!(v["ModelID"], SONNET);
    assert_eq!(v["CostCenter"], "cc-7");
    assert_eq!(v["InputTokens"], 1000);
    assert_eq!(v["OutputTokens"], 500);
    assert_eq!(v["InvocationCount"], 1);
    assert_eq!(v["RequestID"], "e1");
    // Every declared metric and dimension is present on the document.
    for k in [
        "TenantID",
        "ApplicationID",
        "ModelID",
        "InvocationCost",
        "InputTokens",
        "OutputTokens",
    ] {
        assert!(v.get(k).is_some(), "{k} missing: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slack_webhooks_get_a_readable_text_message() {
    use axum::routing::post;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, String)>();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: axum::http::HeaderMap, body: String| {
            let tx = tx.clone();
            async move {
                let ct = headers
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                let _ = tx.send((ct, body));
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let receiver = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            webhook_format: tollgate_sidecar::alerts::WebhookFormat::Slack,
            ..Settings::default()
        },
        webhooks: vec![format!("http://{addr}/hook")],
        ..Setup::default()
    })
    .await;
    let key = s.tenant("acme", json!({"budget_usd": "0.01"})).await;
    let r = s.reserve("s1", &key, SONNET, 1000, Some(400)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    // 0.003 + 0.006 = 0.009 of 0.01: 90 % crosses the 80 % threshold.
    s.commit("s1", 1000, 400).await;

    let (ct, body) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("webhook within 10 s")
        .expect("a body");
    assert!(ct.starts_with("application/json"), "{ct}");
    let v: Value = serde_json::from_str(&body).expect("json body");
    let obj = v.as_object().unwrap();
    assert_eq!(obj.len(), 1, "only `text`: {body}");
    assert_eq!(
        v["text"],
        ":warning: Tollgate: tenant acme has spent $0.009 of its $0.01 budget (90%) for period 2026-11, crossing its 80% alert threshold."
    );
    receiver.abort();
}

#[tokio::test]
async fn sqlite_schema_migrates_from_v1_and_refuses_newer() {
    let dir = tempfile::tempdir().unwrap();

    // A version-1 ledger with data, as the previous binary left it.
    let v1 = dir.path().join("v1.db");
    {
        let mut conn = rusqlite::Connection::open(&v1).unwrap();
        assert_eq!(apply_migrations(&mut conn, &MIGRATIONS[..1]).unwrap(), 0);
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        conn.execute(
            "INSERT INTO tenants VALUES ('old', '5', '0.8', 'monthly', 1, '[]', NULL, NULL, 7)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&v1).expect("migrates");
    let t = store.get_tenant("old").await.unwrap().expect("tenant kept");
    assert_eq!(t.budget_usd, d("5"));
    assert_eq!(t.rate_limit_rpm, Some(7));
    assert_eq!(t.rate_limit_tpm, None);
    let t = TenantConfig {
        rate_limit_tpm: Some(900),
        ..t
    };
    store.put_tenant(&t, "2026-11").await.unwrap();
    assert_eq!(store.get_tenant("old").await.unwrap(), Some(t.clone()));
    drop(store);
    let version: i64 = rusqlite::Connection::open(&v1)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    const { assert!(SCHEMA_VERSION >= 2) };
    // Reopening at the current version is a no-op.
    let store = SqliteStore::open(&v1).expect("reopen");
    assert_eq!(store.get_tenant("old").await.unwrap(), Some(t));
    drop(store);

    // A pre-versioning ledger (user_version 0, tables present) adopts v1 as is.
    let v0 = dir.path().join("v0.db");
    {
        let conn = rusqlite::Connection::open(&v0).unwrap();
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute(
            "INSERT INTO tenants VALUES ('legacy', '1', '0.8', 'daily', 1, '[]', NULL, NULL, NULL)",
            [],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&v0).expect("adopts");
    assert!(store.get_tenant("legacy").await.unwrap().is_some());
    drop(store);

    // All pending migrations apply in one transaction: a failure leaves nothing.
    let broken = dir.path().join("broken.db");
    {
        let mut conn = rusqlite::Connection::open(&broken).unwrap();
        let err = apply_migrations(&mut conn, &[MIGRATIONS[0], "CREATE TABLE x (a); NOT SQL;"])
            .unwrap_err();
        assert!(err.to_string().contains("migration 1 -> 2"), "{err}");
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, 0);
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 0, "v1 was rolled back too");
    }

    // A ledger from a newer binary is refused with a clear error.
    let newer = dir.path().join("newer.db");
    {
        let conn = rusqlite::Connection::open(&newer).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let err = SqliteStore::open(&newer).err().expect("refused");
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("schema version {}", SCHEMA_VERSION + 1))
            && msg.contains("newer than this tollgate-sidecar supports"),
        "{msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn per_model_tokens_per_minute_sit_beside_the_tenant_limit() {
    let s = TestSidecar::start().await;
    let key = s
        .tenant(
            "acme",
            json!({"rate_limit_tpm": 5000, "model_rate_limit_tpm": {"claude-3-sonnet": 1000}}),
        )
        .await;
    // Stored under the resolved model ID.
    let b = s.balance("acme").await;
    assert_eq!(b["config"]["model_rate_limit_tpm"][SONNET], 1000, "{b}");

    let r = s.reserve("s1", &key, SONNET, 400, Some(400)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let r = s.reserve("s2", &key, SONNET, 400, Some(400)).await;
    assert_eq!(r["status"], 429, "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains(&format!("on model {SONNET}: 1000 tokens per minute")),
        "{r}"
    );
    // Another model only counts against the tenant's 5000.
    for i in 0..4 {
        let r = s
            .reserve(&format!("h{i}"), &key, HAIKU, 400, Some(400))
            .await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
    // 800 (sonnet) + 3200 (haiku) counted: 1001 more do not fit the tenant.
    let r = s.reserve("h9", &key, HAIKU, 601, Some(400)).await;
    assert_eq!(r["status"], 429, "{r}");
    assert!(r["message"]
        .as_str()
        .unwrap()
        .contains("acme: 5000 tokens per minute"));
    // A model limit keeps the model out of leases.
    let body = json!({
        "request_id": "l1", "credential": {"type": "bearer", "key": key},
        "operation": "converse", "model": SONNET, "input_tokens_estimate": 1,
        "max_output_tokens": 1, "lease": {"holds": 4},
    });
    s.clock.advance(time::Duration::seconds(60));
    let r = s.data("/v1/reserve", body.clone()).await;
    assert_eq!(r["decision"], "allow", "{r}");

    for bad in [
        json!({"budget_usd": "1", "model_rate_limit_tpm": {"claude-3-sonnet": 0}}),
        json!({"budget_usd": "1", "model_rate_limit_tpm": {"claude-3-sonnet": 5, SONNET: 6}}),
    ] {
        let (st, v) = s.admin("PUT", "/v1/tenants/bad", Some(bad)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }
}
