//! End-to-end ledger behaviour through the HTTP API.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use time::macros::datetime;
use tollgate_sidecar::service::Settings;

const ARN_A: &str =
    "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/tenantasonnet";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserve_then_commit_charges_exactly() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;

    let r = s
        .reserve("req-1", &key, "claude-3-sonnet", 1234, Some(567))
        .await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["tenant_id"], "acme");
    assert_eq!(r["model_id"], SONNET);
    assert_eq!(r["target_model"], SONNET);
    assert_eq!(r["max_output_tokens"], 567);
    assert_eq!(r["hold_usd"], "0.012207");
    assert_eq!(dec(&r["budget_remaining_usd"]), d("9.987793"));

    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0.012207"));

    let c = s.commit("req-1", 1000, 500).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    assert_eq!(c["results"][0]["cost_usd"], "0.0105");

    let b = s.balance("acme").await;
    let bal = &b["balance"];
    assert_eq!(bal["period"], "2026-11");
    assert_eq!(dec(&bal["budget_usd"]), d("10"));
    assert_eq!(dec(&bal["spent_usd"]), d("0.0105"));
    assert_eq!(dec(&bal["reserved_usd"]), d("0"));
    assert_eq!(dec(&bal["available_usd"]), d("9.9895"));
    assert_eq!(bal["input_tokens"], 1000);
    assert_eq!(bal["output_tokens"], 500);
    assert_eq!(bal["requests"], 1);
    assert_eq!(dec(&bal["by_model"][SONNET]["spent_usd"]), d("0.0105"));
    assert_eq!(bal["by_model"][SONNET]["requests"], 1);

    // Usage report, JSON and CSV.
    let (st, u) = s
        .admin("GET", "/v1/usage?group_by=tenant,model", None)
        .await;
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(u["rows"][0]["tenant"], "acme");
    assert_eq!(u["rows"][0]["model"], SONNET);
    assert_eq!(u["rows"][0]["requests"], 1);
    assert_eq!(u["rows"][0]["cost_usd"], "0.0105");
    let (st, csv) = s
        .raw(
            "GET",
            "/v1/usage?group_by=tenant&format=csv",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(csv.starts_with("tenant,requests,"), "{csv}");
    assert!(csv.contains("acme,1,0,1000,500,0,0,0.0105"), "{csv}");
    let (st, u) = s
        .admin("GET", "/v1/usage?from=2026-12-01T00:00:00Z", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(u["rows"].as_array().map(Vec::len), Some(0));
    let (st, _) = s.admin("GET", "/v1/usage?group_by=planet", None).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);

    // Metrics saw it.
    let (st, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        m.contains(r#"tollgate_requests_total{tenant="acme",outcome="approved"} 1"#),
        "{m}"
    );
    assert!(m.contains("tollgate_tokens_total"), "{m}");
    assert!(m.contains("tollgate_cost_usd_total"), "{m}");
    assert!(m.contains("tollgate_budget_remaining_usd"), "{m}");
    assert!(m.contains("tollgate_reserve_seconds"), "{m}");
    assert!(m.contains("tollgate_commit_seconds"), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reserve_is_idempotent_and_commit_duplicates_are_noops() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;
    let first = s.reserve("req-1", &key, SONNET, 100, Some(100)).await;
    let again = s.reserve("req-1", &key, SONNET, 100, Some(100)).await;
    assert_eq!(first, again);
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0.0018"));

    assert_eq!(
        s.commit("req-1", 10, 10).await["results"][0]["outcome"],
        "committed"
    );
    let dup = s.commit("req-1", 999, 999).await;
    assert_eq!(dup["results"][0]["outcome"], "duplicate");
    assert_eq!(dup["results"][0]["cost_usd"], "0.00018");
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0.00018"));
    assert_eq!(b["balance"]["requests"], 1);

    let unknown = s.commit("nope", 1, 1).await;
    assert_eq!(unknown["results"][0]["outcome"], "unknown_request");
    assert!(unknown["results"][0].get("cost_usd").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn release_returns_the_hold() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;
    s.reserve("req-1", &key, SONNET, 1000, Some(1000)).await;
    let rel = s
        .data(
            "/v1/release",
            json!({"request_id": "req-1", "reason": "upstream 500"}),
        )
        .await;
    assert_eq!(rel, json!({"released": true}));
    let again = s
        .data(
            "/v1/release",
            json!({"request_id": "req-1", "reason": "retry"}),
        )
        .await;
    assert_eq!(again, json!({"released": false}));
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0"));
    assert_eq!(dec(&b["balance"]["available_usd"]), d("10"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exhausted_budget_is_402_with_available_amount() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({"budget_usd": "0.01"})).await;
    // 100 in + 500 out of Sonnet = 0.0003 + 0.0075 = 0.0078.
    assert_eq!(
        s.reserve("r1", &key, SONNET, 100, Some(500)).await["decision"],
        "allow"
    );
    let r = s.reserve("r2", &key, SONNET, 100, Some(500)).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 402);
    assert_eq!(r["error_type"], "BudgetExceededException");
    assert_eq!(
        r["message"],
        "Budget exhausted for tenant acme: available $0.0022, this request needs up to $0.0078"
    );
    let b = s.balance("acme").await;
    let alerts = b["alerts"].as_array().expect("alerts");
    assert_eq!(alerts.len(), 1, "{b}");
    assert_eq!(alerts[0]["kind"], "exhausted");
    // Once per period.
    s.reserve("r3", &key, SONNET, 100, Some(500)).await;
    assert_eq!(
        s.balance("acme").await["alerts"].as_array().map(Vec::len),
        Some(1)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_cycles_never_exceed_the_budget() {
    let s = Arc::new(TestSidecar::start().await);
    // Each hold: 100 in (0.0003) + 100 out (0.0015) = 0.0018; 50 fit in 0.09.
    let key = s.tenant("tight", json!({"budget_usd": "0.09"})).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let s = s.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let id = format!("c-{i}");
            let r = s.reserve(&id, &key, SONNET, 100, Some(100)).await;
            if r["decision"] == "allow" {
                let c = s.commit(&id, 100, 100).await;
                assert_eq!(c["results"][0]["outcome"], "committed");
                true
            } else {
                assert_eq!(r["status"], 402, "{r}");
                false
            }
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        if t.await.expect("task") {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 50);
    let b = s.balance("tight").await;
    let bal = &b["balance"];
    let (budget, spent, reserved, available) = (
        dec(&bal["budget_usd"]),
        dec(&bal["spent_usd"]),
        dec(&bal["reserved_usd"]),
        dec(&bal["available_usd"]),
    );
    assert!(spent <= budget);
    assert_eq!(spent, d("0.09"));
    assert_eq!(spent + reserved + available, budget);
    assert_eq!(bal["requests"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn late_commit_after_expiry_debits_once() {
    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            hold_ttl_secs: 60,
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await;
    let key = s.tenant("acme", json!({})).await;
    s.reserve("late", &key, SONNET, 1000, Some(1000)).await;
    assert_eq!(
        s.service.sweep().await.expect("sweep"),
        0,
        "not yet expired"
    );
    s.clock.advance(time::Duration::seconds(61));
    assert_eq!(s.service.sweep().await.expect("sweep"), 1);
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0"));
    // The hold is gone, so release is a no-op, but the commit still debits once.
    let rel = s
        .data("/v1/release", json!({"request_id": "late", "reason": "x"}))
        .await;
    assert_eq!(rel["released"], false);
    assert_eq!(
        s.commit("late", 1000, 1000).await["results"][0]["outcome"],
        "committed"
    );
    assert_eq!(
        s.commit("late", 1000, 1000).await["results"][0]["outcome"],
        "duplicate"
    );
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0.018"));
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0"));
    assert_eq!(dec(&b["balance"]["available_usd"]), d("9.982"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn revoked_keys_stop_working_and_missing_credentials_are_401() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;
    assert!(key.starts_with("tg_"));
    assert_eq!(
        s.reserve("a", &key, SONNET, 1, Some(1)).await["decision"],
        "allow"
    );
    let b = s.balance("acme").await;
    let key_id = b["keys"][0]["key_id"].as_str().expect("key id").to_string();
    assert!(
        b.to_string().find(&key).is_none(),
        "the key itself is never shown again"
    );

    let (st, _) = s
        .admin("DELETE", &format!("/v1/tenants/acme/keys/{key_id}"), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let r = s.reserve("b", &key, SONNET, 1, Some(1)).await;
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["status"], 403);
    assert_eq!(r["error_type"], "UnrecognizedClientException");
    assert_eq!(
        r["message"],
        "The security token included in the request is invalid."
    );
    let (st, _) = s
        .admin("DELETE", "/v1/tenants/acme/keys/key_doesnotexist", None)
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    let r = s
        .data(
            "/v1/reserve",
            json!({"request_id": "c", "credential": {"type": "none"}, "operation": "converse",
                   "model": SONNET, "input_tokens_estimate": 1}),
        )
        .await;
    assert_eq!(r["status"], 401);
    assert_eq!(r["error_type"], "UnrecognizedClientException");
    assert!(r["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("Missing credential")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_keys_and_profiles_route_to_arns() {
    let s = TestSidecar::start().await;
    let key_a = s
        .tenant(
            "tenant-a",
            json!({"profiles": [{"model": "claude-3-sonnet", "arn": ARN_A}]}),
        )
        .await;
    let key_b = s.tenant("tenant-b", json!({})).await;

    // Tenant A by alias: routed to its profile.
    let r = s
        .reserve("a1", &key_a, "claude-3-sonnet", 10, Some(10))
        .await;
    assert_eq!(r["target_model"], ARN_A, "{r}");
    assert_eq!(r["model_id"], SONNET);
    // Tenant A by its own ARN: priced as the mapped base model.
    let r = s.reserve("a2", &key_a, ARN_A, 10, Some(10)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["model_id"], SONNET);
    assert_eq!(r["target_model"], ARN_A);
    // Tenant B may not use tenant A's ARN.
    let r = s.reserve("b1", &key_b, ARN_A, 10, Some(10)).await;
    assert_eq!(r["decision"], "deny");
    assert_eq!(r["status"], 403);
    assert_eq!(r["error_type"], "AccessDeniedException");

    // An application-bound key overrides attribution and picks the app's profile.
    let app_arn = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/appchat";
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/tenant-a/profiles",
            Some(json!({"application_id": "chat", "model": SONNET, "arn": app_arn})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants/tenant-a/keys",
            Some(json!({"application_id": "chat"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(v["application_id"], "chat");
    let app_key = v["key"].as_str().expect("key").to_string();
    let r = s
        .data(
            "/v1/reserve",
            json!({"request_id": "a3", "credential": {"type": "bearer", "key": app_key},
                   "operation": "converse-stream", "model": "claude-3-sonnet",
                   "attribution": {"application_id": "spoofed", "cost_center": "cc-1"},
                   "input_tokens_estimate": 1, "max_output_tokens": 1}),
        )
        .await;
    assert_eq!(r["application_id"], "chat", "{r}");
    assert_eq!(r["target_model"], app_arn);

    // Bad ARN format is refused by the admin API.
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/tenant-a/profiles",
            Some(json!({"model": SONNET, "arn": "arn:aws:bedrock:us-east-1:1:foo/bar"})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("arn")),
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_rules_rate_limits_and_inactive_tenants() {
    let s = TestSidecar::start().await;
    let key = s
        .tenant(
            "acme",
            json!({"allowed_models": ["claude-3-haiku"], "max_tokens_cap": 1000, "rate_limit_rpm": 3}),
        )
        .await;
    // Allowed by alias in the list, requested by full ID; cap clamps max tokens.
    let r = s.reserve("m1", &key, HAIKU, 100, None).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["max_output_tokens"], 1000);
    // Geo-prefixed profile of an allowed model: allowed, priced by the base entry.
    let r = s
        .reserve("m2", &key, &format!("us.{HAIKU}"), 100, Some(10))
        .await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(r["model_id"], format!("us.{HAIKU}"));
    // Not in the allowed list.
    let r = s
        .reserve("m3", &key, "claude-3-sonnet", 100, Some(10))
        .await;
    assert_eq!(r["status"], 403, "{r}");
    assert_eq!(r["error_type"], "AccessDeniedException");
    assert!(r["message"].as_str().is_some_and(|m| m.contains(SONNET)));
    // Third allowed request in the minute, then throttled.
    assert_eq!(
        s.reserve("m4", &key, HAIKU, 1, Some(1)).await["decision"],
        "allow"
    );
    let r = s.reserve("m5", &key, HAIKU, 1, Some(1)).await;
    assert_eq!(r["status"], 429, "{r}");
    assert_eq!(r["error_type"], "ThrottlingException");
    // Counted per UTC minute (the test clock starts on one): the next begins in 60 s.
    assert_eq!(r["retry_after_secs"], 60);
    s.clock.advance(time::Duration::seconds(59));
    assert_eq!(
        s.reserve("m5b", &key, HAIKU, 1, Some(1)).await["status"],
        429
    );
    s.clock.advance(time::Duration::seconds(1));
    assert_eq!(
        s.reserve("m6", &key, HAIKU, 1, Some(1)).await["decision"],
        "allow"
    );

    // No price → 400, never charged as zero.
    let key2 = s.tenant("open", json!({})).await;
    let r = s
        .reserve("p1", &key2, "amazon.nova-lite-v1:0", 1, Some(1))
        .await;
    assert_eq!(r["status"], 400);
    assert_eq!(r["error_type"], "ValidationException");
    assert_eq!(
        r["message"],
        "no price configured for model amazon.nova-lite-v1:0"
    );

    // Inactive tenant.
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/tenants/open",
            Some(json!({"budget_usd": 5, "active": false})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = s.reserve("p2", &key2, SONNET, 1, Some(1)).await;
    assert_eq!(r["status"], 403);
    assert_eq!(r["error_type"], "AccessDeniedException");

    // Trusted header / JWT identities name the tenant directly.
    s.clock.advance(time::Duration::seconds(60));
    let r = s
        .data(
            "/v1/reserve",
            json!({"request_id": "h1", "credential": {"type": "trusted_header", "tenant_id": "ghost"},
                   "operation": "invoke", "model": SONNET, "input_tokens_estimate": 1}),
        )
        .await;
    assert_eq!(r["status"], 403);
    let r = s
        .data(
            "/v1/reserve",
            json!({"request_id": "h2", "credential": {"type": "jwt", "tenant_id": "acme"},
                   "operation": "invoke", "model": HAIKU, "input_tokens_estimate": 1,
                   "max_output_tokens": 1}),
        )
        .await;
    assert_eq!(r["decision"], "allow", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_requires_the_token_and_validates_input() {
    let s = TestSidecar::start().await;
    let (st, body) = s.raw("GET", "/v1/tenants", None, None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let v: Value = serde_json::from_str(&body).expect("json");
    assert!(v["message"].is_string());
    let (st, _) = s.raw("GET", "/v1/tenants", Some("wrong"), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = s
        .raw(
            "PUT",
            "/v1/pricing/x",
            None,
            Some(json!({"input": 1, "output": 1})),
        )
        .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    for (body, field) in [
        (json!({"budget_usd": "-1"}), "budget_usd"),
        (
            json!({"budget_usd": "1", "alert_threshold": "1.5"}),
            "alert_threshold",
        ),
        (
            json!({"budget_usd": "1", "reset_cycle": "hourly"}),
            "reset_cycle",
        ),
        (json!({"budget_usd": "abc"}), "decimal"),
        (
            json!({"budget_usd": "1", "max_tokens_cap": 0}),
            "max_tokens_cap",
        ),
        (json!({"budget": "1"}), "budget"),
    ] {
        let (st, v) = s.admin("PUT", "/v1/tenants/t1", Some(body.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{body}");
        let msg = v["message"].as_str().unwrap_or_default();
        assert!(msg.contains(field), "{body}: {msg}");
    }
    // Numbers are parsed exactly from their JSON text.
    let (st, text) = s
        .raw_text(
            "PUT",
            "/v1/tenants/t1",
            r#"{"budget_usd": 1.10, "alert_threshold": 0.30000000000000000001}"#,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(v["budget_usd"], "1.10");
    assert_eq!(v["alert_threshold"], "0.30000000000000000001");
    let (st, v) = s
        .admin("PUT", "/v1/tenants/t1", Some(json!({"budget_usd": "1.10"})))
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["budget_usd"], "1.10");
    assert_eq!(v["alert_threshold"], "0.8");
    assert_eq!(v["reset_cycle"], "monthly");
    let (st, v) = s.admin("GET", "/v1/tenants", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["tenants"][0]["tenant_id"], "t1");
    let (st, _) = s.admin("GET", "/v1/tenants/nobody", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, v) = s.admin("GET", "/v1/pricing", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(v["pricing"].as_array().map(Vec::len), Some(2));

    let (st, _) = s.raw("GET", "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s
        .raw_with(
            "POST",
            "/v1/reserve",
            None,
            &[(FILTER_TOKEN_HEADER, FILTER_TOKEN)],
            None,
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v["message"].is_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threshold_alert_fires_once_per_period_and_reaches_webhooks() {
    // A loopback webhook receiver.
    let received = Arc::new(tokio::sync::Mutex::new(Vec::<Value>::new()));
    let sink = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
            let sink = sink.clone();
            async move {
                sink.lock().await.push(v);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hook = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });

    let s = TestSidecar::start_with(Setup {
        webhooks: vec![hook],
        ..Setup::default()
    })
    .await;
    let key = s
        .tenant(
            "acme",
            json!({"budget_usd": "1.00", "alert_threshold": "0.5"}),
        )
        .await;
    // 0.3 each: 100000 input tokens of Sonnet.
    for i in 0..3 {
        let id = format!("t{i}");
        assert_eq!(
            s.reserve(&id, &key, SONNET, 100_000, Some(0)).await["decision"],
            "allow"
        );
        s.commit(&id, 100_000, 0).await;
    }
    let b = s.balance("acme").await;
    let alerts: Vec<&Value> = b["alerts"]
        .as_array()
        .expect("alerts")
        .iter()
        .filter(|a| a["kind"] == "threshold")
        .collect();
    assert_eq!(alerts.len(), 1, "{b}");
    assert_eq!(alerts[0]["period"], "2026-11");
    assert_eq!(dec(&alerts[0]["spent_usd"]), d("0.6"));

    for _ in 0..100 {
        if !received.lock().await.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let got = received.lock().await.clone();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["level"], "ALERT");
    assert_eq!(got[0]["kind"], "threshold");
    assert_eq!(got[0]["tenantId"], "acme");
    assert_eq!(got[0]["period"], "2026-11");
    assert_eq!(got[0]["spentUsd"], "0.6");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn high_cost_alert() {
    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            high_cost_threshold_usd: d("0.01"),
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await;
    let key = s.tenant("acme", json!({})).await;
    s.reserve("h", &key, SONNET, 10_000, Some(10)).await;
    s.commit("h", 10_000, 10).await; // 0.03015
    let b = s.balance("acme").await;
    assert_eq!(b["alerts"][0]["kind"], "high_cost", "{b}");
    assert_eq!(b["alerts"][0]["cost_usd"], "0.03015");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn period_rollover_starts_from_the_configured_budget() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({"budget_usd": "1.00"})).await;
    s.reserve("nov", &key, SONNET, 200_000, Some(0)).await;
    s.commit("nov", 200_000, 0).await; // 0.6
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["available_usd"]), d("0.4"));

    s.clock.set(datetime!(2026-12-01 00:00:01 UTC));
    let r = s.reserve("dec", &key, SONNET, 200_000, Some(0)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(dec(&r["budget_remaining_usd"]), d("0.4"));
    let b = s.balance("acme").await;
    assert_eq!(b["balance"]["period"], "2026-12");
    assert_eq!(dec(&b["balance"]["budget_usd"]), d("1.00"));
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0"));
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0.6"));

    let (st, old) = s
        .admin("GET", "/v1/tenants/acme?period=2026-11", None)
        .await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(old["balance"]["period"], "2026-11");
    assert_eq!(dec(&old["balance"]["spent_usd"]), d("0.6"));
    let (_, u) = s
        .admin(
            "GET",
            "/v1/usage?from=2026-11-01T00:00:00Z&to=2026-12-01T00:00:00Z",
            None,
        )
        .await;
    assert_eq!(u["rows"][0]["requests"], 1, "{u}");
}

/// A weekly tenant's budget is per ISO week (Monday 00:00 UTC): spent up to
/// Sunday's last second, whole again on Monday; the threshold alert fires once
/// per week; the old week stays readable.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn weekly_budgets_reset_on_monday_utc() {
    let s = TestSidecar::start().await; // Monday 2026-11-23 12:00 UTC
    let key = s
        .tenant(
            "wk",
            json!({"budget_usd": "1.00", "reset_cycle": "weekly", "alert_threshold": "0.5"}),
        )
        .await;
    s.reserve("w48", &key, SONNET, 200_000, Some(0)).await;
    s.commit("w48", 200_000, 0).await; // 0.6
    let b = s.balance("wk").await;
    assert_eq!(b["balance"]["period"], "2026-W48", "{b}");
    assert_eq!(b["alerts"].as_array().map(Vec::len), Some(1), "{b}");

    s.clock.set(datetime!(2026-11-29 23:59:59 UTC));
    let r = s.reserve("sun", &key, SONNET, 200_000, Some(0)).await;
    assert_eq!(r["decision"], "deny", "still week 48: {r}");

    s.clock.set(datetime!(2026-11-30 00:00:01 UTC));
    let r = s.reserve("mon", &key, SONNET, 200_000, Some(0)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    s.commit("mon", 200_000, 0).await;
    let b = s.balance("wk").await;
    assert_eq!(b["balance"]["period"], "2026-W49");
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0.6"));
    assert_eq!(dec(&b["balance"]["available_usd"]), d("0.4"));
    let kinds: Vec<_> = b["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["period"].clone(), a["kind"].clone()))
        .collect();
    assert_eq!(
        kinds.iter().filter(|(_, k)| k == "threshold").count(),
        2,
        "{b}"
    );

    let (st, old) = s.admin("GET", "/v1/tenants/wk?period=2026-W48", None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(dec(&old["balance"]["spent_usd"]), d("0.6"));
    assert_eq!(dec(&old["balance"]["reserved_usd"]), d("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ledger_survives_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("nested/ledger.db");
    let key;
    {
        let s = TestSidecar::open(&db, Setup::default()).await;
        key = s.tenant("acme", json!({})).await;
        s.reserve("r1", &key, SONNET, 1000, Some(1000)).await;
        s.commit("r1", 1000, 1000).await;
        s.reserve("r2", &key, SONNET, 1000, Some(1000)).await;
    }
    let s = TestSidecar::open(&db, Setup::default()).await;
    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0.018"));
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0.018"));
    // The key and the open hold survived too.
    assert_eq!(
        s.commit("r2", 1, 1).await["results"][0]["outcome"],
        "committed"
    );
    assert_eq!(
        s.commit("r1", 1, 1).await["results"][0]["outcome"],
        "duplicate"
    );
    assert_eq!(
        s.reserve("r3", &key, SONNET, 1, Some(1)).await["decision"],
        "allow"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn example_seed_loads_and_is_idempotent() {
    let seed = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed.json");
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("ledger.db");
    let setup = || Setup {
        seed: Some(seed.clone()),
        ..Setup::default()
    };
    {
        let s = TestSidecar::open(&db, setup()).await;
        let r = s
            .reserve(
                "s1",
                "tg_demo_tenant_demo1_key",
                "claude-3-sonnet",
                100,
                None,
            )
            .await;
        assert_eq!(r["decision"], "allow", "{r}");
        assert_eq!(r["tenant_id"], "tenant-demo1");
        assert_eq!(r["max_output_tokens"], 4000);
        assert_eq!(
            r["target_model"],
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/demo1sonnet"
        );
        let r = s
            .reserve(
                "s2",
                "tg_demo_tenant_demo2_key",
                "us.anthropic.claude-sonnet-4-5-20250929-v1:0",
                1_000_000,
                Some(0),
            )
            .await;
        assert_eq!(r["hold_usd"], "3.3", "{r}");
    }
    let s = TestSidecar::open(&db, setup()).await;
    let b = s.balance("tenant-demo1").await;
    assert_eq!(
        b["keys"].as_array().map(Vec::len),
        Some(1),
        "seed keys are not duplicated"
    );
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0.0603"));
}

/// The served document is the generated one, lists every route, and each
/// documented operation is really routed (the router is built from the same
/// `routes!` list, so a route cannot be served without being documented).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_lists_every_route() {
    let s = TestSidecar::start().await;
    let (st, body) = s.raw("GET", "/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(body, tollgate_sidecar::openapi::json());
    let v: Value = serde_json::from_str(&body).expect("openapi json");
    assert!(v["openapi"].as_str().is_some_and(|o| o.starts_with("3.1")));
    for (path, method) in [
        ("/v1/reserve", "post"),
        ("/v1/commit", "post"),
        ("/v1/release", "post"),
        ("/v1/leases/renew", "post"),
        ("/v1/tenants", "get"),
        ("/v1/tenants/{tenant}", "put"),
        ("/v1/tenants/{tenant}", "get"),
        ("/v1/tenants/{tenant}/keys", "post"),
        ("/v1/tenants/{tenant}/keys", "get"),
        ("/v1/tenants/{tenant}/keys/{key_id}", "delete"),
        ("/v1/tenants/{tenant}/sigv4-credentials", "post"),
        ("/v1/tenants/{tenant}/sigv4-credentials", "get"),
        (
            "/v1/tenants/{tenant}/sigv4-credentials/{access_key_id}",
            "delete",
        ),
        ("/v1/tenants/{tenant}/profiles", "put"),
        ("/v1/tenants/{tenant}/profiles", "get"),
        ("/v1/pricing", "get"),
        ("/v1/pricing/{model_id}", "put"),
        ("/v1/pricing/{model_id}", "get"),
        ("/v1/aliases", "get"),
        ("/v1/aliases/{alias}", "put"),
        ("/v1/usage", "get"),
        ("/healthz", "get"),
        ("/readyz", "get"),
        ("/metrics", "get"),
        ("/openapi.json", "get"),
    ] {
        assert!(
            v["paths"][path][method].is_object(),
            "{method} {path} missing"
        );
    }
    // Every documented operation reaches a handler: not the fallback's 404, not
    // 405. Without a token the guarded ones answer 401 from their handler's
    // extractor, which only runs once routed.
    let paths = v["paths"].as_object().expect("paths");
    for (path, item) in paths {
        let concrete = path
            .split('/')
            .map(|seg| if seg.starts_with('{') { "x" } else { seg })
            .collect::<Vec<_>>()
            .join("/");
        for method in item.as_object().expect("path item").keys() {
            let (st, body) = s
                .raw_with(
                    &method.to_uppercase(),
                    &concrete,
                    None,
                    &[(FILTER_TOKEN_HEADER, FILTER_TOKEN)],
                    None,
                )
                .await;
            assert_ne!(st, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert!(
                !body.contains("no such route"),
                "{method} {path} is documented but not routed"
            );
        }
    }
}

/// Every status the API answers is JSON, including the router's own 404 and
/// 405 (which also names the allowed methods, as HTTP asks).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrouted_requests_get_json_errors() {
    let s = TestSidecar::start().await;
    let resp = s
        .http
        .delete(format!("{}/v1/pricing", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap_or("").to_owned());
    assert!(
        allow.as_deref().is_some_and(|a| a.contains("GET")),
        "{allow:?}"
    );
    let v: Value = resp.json().await.expect("405 is JSON");
    assert!(
        v["message"].as_str().is_some_and(|m| m.contains("DELETE")),
        "{v}"
    );

    let (st, body) = s.raw("GET", "/v1/nowhere", Some(TOKEN), None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let v: Value = serde_json::from_str(&body).expect("404 is JSON");
    assert_eq!(v["message"], "no such route");
}

/// `sidecar/openapi.json` (what readers see) is what the code generates.
#[test]
fn checked_in_openapi_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.json");
    let checked_in = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        checked_in == tollgate_sidecar::openapi::json(),
        "sidecar/openapi.json is stale: regenerate it with\n  \
         cargo run -q -p tollgate-sidecar -- openapi > sidecar/openapi.json"
    );
}

/// Every `$ref` resolves, and money is never a JSON number: each `*_usd` field
/// (and every price) is the `Money` string or a decimal input.
#[test]
fn openapi_refs_resolve_and_money_is_a_string() {
    let v: Value = serde_json::from_str(tollgate_sidecar::openapi::json()).expect("json");
    let schemas = v["components"]["schemas"].as_object().expect("schemas");
    assert_eq!(schemas["Money"]["type"], "string", "{}", schemas["Money"]);
    fn walk(v: &Value, schemas: &serde_json::Map<String, Value>, at: &str) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    let name = r.trim_start_matches("#/components/schemas/");
                    assert!(schemas.contains_key(name), "{at}: dangling {r}");
                }
                if let Some(Value::Object(props)) = m.get("properties") {
                    for (name, p) in props {
                        if name.ends_with("_usd") {
                            let s = p.to_string();
                            assert!(
                                s.contains("Money") || s.contains("DecimalInput"),
                                "{at}.{name} is not a decimal string: {s}"
                            );
                        }
                    }
                }
                for (k, v) in m {
                    walk(v, schemas, &format!("{at}/{k}"));
                }
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, schemas, at)),
            _ => {}
        }
    }
    walk(&v, schemas, "");
    // Every security requirement names a declared scheme.
    let schemes = v["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    for (path, item) in v["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            for req in op["security"].as_array().into_iter().flatten() {
                for name in req.as_object().expect("requirement").keys() {
                    assert!(schemes.contains_key(name), "{method} {path}: {name}");
                }
            }
        }
    }
    let text = v.to_string();
    assert!(
        !text.contains("\"format\":\"double\""),
        "a float in the API"
    );
}

/// `failure_mode: open`: a request served while the sidecar was down arrives as a
/// commit carrying its reserve; it is identified, priced and charged once, even
/// past the budget, and an unidentifiable one is not charged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreserved_commits_are_charged_once() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({"budget_usd": "0.01"})).await;
    let unreserved = |id: &str, key: &str| {
        json!({
            "request_id": id,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": "claude-3-sonnet",
            "input_tokens_estimate": 10,
            // At least the output committed below: a commit never charges
            // more output than the request's limit.
            "max_output_tokens": 1000,
        })
    };
    let commit = |id: &str, key: &str| {
        json!({"commits": [{
            "request_id": id,
            "usage": {"input_tokens": 1000, "output_tokens": 1000},
            "unreserved": unreserved(id, key),
        }]})
    };
    // 1000 × $3 + 1000 × $15 per 1M = $0.018: more than the whole budget.
    let c = s.data("/v1/commit", commit("open-1", &key)).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    assert_eq!(c["results"][0]["cost_usd"], "0.018");
    let c = s.data("/v1/commit", commit("open-1", &key)).await;
    assert_eq!(c["results"][0]["outcome"], "duplicate", "{c}");
    // A second one still lands although the tenant is overdrawn.
    let c = s.data("/v1/commit", commit("open-2", &key)).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    let c = s.data("/v1/commit", commit("open-3", "tg_not_a_key")).await;
    assert_eq!(c["results"][0]["outcome"], "unknown_request", "{c}");

    let b = s.balance("acme").await;
    assert_eq!(dec(&b["balance"]["spent_usd"]), d("0.036"));
    assert_eq!(dec(&b["balance"]["reserved_usd"]), d("0"));
    assert_eq!(b["balance"]["requests"], 2);
    // Normal admission still refuses while overdrawn.
    let r = s
        .reserve("after", &key, "claude-3-sonnet", 1, Some(1))
        .await;
    assert_eq!(r["decision"], "deny", "{r}");
}

/// Usage above what the request could use is capped in the ledger, and the
/// metrics count the charged tokens, not the reported ones: the two agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_the_capped_usage() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;
    let r = s.reserve("req-cap", &key, HAIKU, 100, Some(10)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let c = s.commit("req-cap", 100, 5_000_000).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    let b = s.balance("acme").await;
    assert_eq!(b["balance"]["output_tokens"], 10, "{b}");
    let (_, m) = s.raw("GET", "/metrics", Some(TOKEN), None).await;
    let output = m
        .lines()
        .find(|l| l.starts_with("tollgate_tokens_total{") && l.contains(r#"kind="output""#))
        .unwrap_or_else(|| panic!("no output token counter in {m}"));
    assert!(output.ends_with(" 10"), "{output}");
    assert!(
        m.contains(r#"tollgate_usage_capped_total{tenant="acme"} 1"#),
        "{m}"
    );
}

/// Every answer carries a request id: the caller's when it sent one, else a new
/// one, so a log line and a response can be matched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_carry_a_request_id() {
    let s = TestSidecar::start().await;
    let http = reqwest::Client::new();
    let r = http
        .get(format!("{}/healthz", s.url))
        .header("x-tollgate-request-id", "tg-given-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-tollgate-request-id"], "tg-given-0001");
    let a = http.get(format!("{}/healthz", s.url)).send().await.unwrap();
    let b = http.get(format!("{}/nope", s.url)).send().await.unwrap();
    let (a, b) = (
        a.headers()["x-tollgate-request-id"]
            .to_str()
            .unwrap()
            .to_string(),
        b.headers()["x-tollgate-request-id"]
            .to_str()
            .unwrap()
            .to_string(),
    );
    assert!(
        a.starts_with("sc-") && b.starts_with("sc-") && a != b,
        "{a} {b}"
    );
}

/// `/readyz` checks the store now: ready on an open ledger, 503 with the reason
/// once the database is gone from under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_checks_the_store() {
    let s = TestSidecar::start().await;
    let (st, body) = s.raw("GET", "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert!(body.contains("ready"), "{body}");
    // Make the ledger unwritable: the writer's next transaction fails.
    let conn = rusqlite::Connection::open(&s.db).unwrap();
    conn.execute_batch("PRAGMA busy_timeout = 0; BEGIN EXCLUSIVE;")
        .unwrap();
    let (st, body) = s.raw("GET", "/readyz", None, None).await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("not ready"), "{body}");
    conn.execute_batch("ROLLBACK;").unwrap();
    let (st, _) = s.raw("GET", "/readyz", None, None).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn keys_expire_everywhere_and_record_their_last_use() {
    let s = TestSidecar::start().await;
    s.tenant("acme", json!({})).await;
    let (st, issued) = s
        .admin(
            "POST",
            "/v1/tenants/acme/keys",
            Some(json!({"expires_in_secs": 10})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{issued}");
    assert_eq!(issued["expires_at"], "2026-11-23T12:00:10Z");
    let key = issued["key"].as_str().unwrap().to_string();
    let key_id = issued["key_id"].as_str().unwrap().to_string();

    // Both at once, or an expiry in the past, are refused.
    for bad in [
        json!({"expires_in_secs": 10, "expires_at": "2030-01-01T00:00:00Z"}),
        json!({"expires_at": "2020-01-01T00:00:00Z"}),
        json!({"expires_at": "tomorrow"}),
    ] {
        let (st, v) = s.admin("POST", "/v1/tenants/acme/keys", Some(bad)).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    }

    // A lease granted with the key ends no later than the key.
    let mut body = json!({
        "request_id": "l1", "credential": {"type": "bearer", "key": key},
        "operation": "converse", "model": SONNET, "input_tokens_estimate": 10,
        "max_output_tokens": 10, "lease": {"holds": 4},
    });
    let r = s.data("/v1/reserve", body.clone()).await;
    assert_eq!(r["decision"], "lease", "{r}");
    assert_eq!(r["ttl_ms"], 10_000, "{r}");
    let lease_id = r["lease_id"].as_str().unwrap().to_string();

    s.clock.advance(time::Duration::seconds(4));
    let renew = json!({"leases": [{"lease_id": lease_id, "seq": 1, "return_usd": "0", "want_usd": "0.01"}]});
    let r = s.data("/v1/leases/renew", renew).await;
    assert_eq!(r["results"][0]["status"], "renewed", "{r}");
    assert_eq!(r["results"][0]["ttl_ms"], 6_000, "{r}");

    // Last use reaches the store at the sweep.
    s.service.sweep().await.unwrap();
    let (_, keys) = s.admin("GET", "/v1/tenants/acme/keys", None).await;
    let mine = keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(mine["last_used_at"], "2026-11-23T12:00:04Z", "{keys}");
    assert_eq!(mine["expired"], false);

    // At its expiry the key is refused, Bedrock's way, and its lease closes.
    s.clock.advance(time::Duration::seconds(6));
    body["request_id"] = json!("r2");
    body.as_object_mut().unwrap().remove("lease");
    let r = s.data("/v1/reserve", body).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 403);
    assert_eq!(r["error_type"], "ExpiredTokenException");
    let renew = json!({"leases": [{"lease_id": lease_id, "seq": 2, "return_usd": "0", "want_usd": "0.01"}]});
    let r = s.data("/v1/leases/renew", renew).await;
    assert_eq!(r["results"][0]["status"], "closed", "{r}");
    assert_eq!(r["results"][0]["reason"], "key expired", "{r}");
    let (_, keys) = s.admin("GET", "/v1/tenants/acme/keys", None).await;
    assert!(keys["keys"]
        .as_array()
        .unwrap()
        .iter()
        .any(|k| k["key_id"] == key_id.as_str() && k["expired"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deleting_a_tenant_waits_for_its_holds_and_keeps_its_history() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", json!({})).await;
    assert_eq!(
        s.reserve("done", &key, SONNET, 1000, Some(500)).await["decision"],
        "allow"
    );
    s.commit("done", 1000, 500).await;
    assert_eq!(
        s.reserve("open", &key, SONNET, 10, Some(10)).await["decision"],
        "allow"
    );

    let (st, v) = s.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(st, StatusCode::CONFLICT, "{v}");
    assert!(v["message"].as_str().unwrap().contains("reserved"), "{v}");
    assert_eq!(s.balance("acme").await["tenant_id"], "acme");

    s.data(
        "/v1/release",
        json!({"request_id": "open", "reason": "client gone"}),
    )
    .await;
    let gauge = r#"tollgate_budget_remaining_usd{tenant="acme"}"#;
    assert!(s.metrics().await.contains(gauge));
    let (st, v) = s.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(st, StatusCode::NO_CONTENT, "{v}");
    // Its budget gauge goes; its counters stay (history).
    let m = s.metrics().await;
    assert!(!m.contains(gauge), "{m}");
    assert!(
        m.contains(r#"tollgate_requests_total{tenant="acme""#),
        "{m}"
    );
    let (st, _) = s.admin("GET", "/v1/tenants/acme", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.admin("DELETE", "/v1/tenants/acme", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let r = s.reserve("after", &key, SONNET, 10, Some(10)).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 403);

    // The history stays in the usage report.
    let (st, u) = s.admin("GET", "/v1/usage?group_by=tenant", None).await;
    assert_eq!(st, StatusCode::OK, "{u}");
    assert_eq!(u["rows"][0]["tenant"], "acme", "{u}");
    assert_eq!(u["rows"][0]["cost_usd"], "0.0105");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tenant_reads_its_own_balance_and_nothing_else() {
    let s = TestSidecar::start().await;
    let acme = s.tenant("acme", json!({"rate_limit_rpm": 100})).await;
    let beta = s.tenant("beta", json!({"budget_usd": "3"})).await;
    assert_eq!(
        s.reserve("a1", &acme, SONNET, 1000, Some(500)).await["decision"],
        "allow"
    );
    s.commit("a1", 1000, 500).await;

    let me =
        |key: &str| json!({"request_id": "self-1", "credential": {"type": "bearer", "key": key}});
    let r = s.data("/v1/self", me(&acme)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let v = &r["view"];
    assert_eq!(v["tenant_id"], "acme");
    assert_eq!(v["balance"]["spent_usd"], "0.0105");
    assert_eq!(v["balance"]["available_usd"], "9.9895");
    assert_eq!(v["balance"]["by_model"][SONNET]["requests"], 1);
    assert_eq!(v["limits"]["rate_limit_rpm"], 100);
    assert_eq!(r["budget_remaining_usd"], "9.9895");

    let r = s.data("/v1/self", me(&beta)).await;
    assert_eq!(r["view"]["tenant_id"], "beta", "{r}");
    assert_eq!(r["view"]["balance"]["spent_usd"], "0");
    assert!(!r.to_string().contains("acme"), "{r}");

    let r = s.data("/v1/self", me("tg_not-a-key")).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 403);
    assert_eq!(r["error_type"], "UnrecognizedClientException");

    // The data plane's filter token is required.
    let (st, _) = s.raw("POST", "/v1/self", None, Some(me(&acme))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}
