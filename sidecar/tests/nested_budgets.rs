//! Application and user budgets inside the tenant budget, through the HTTP
//! API, the CLI, the alerts and the metrics.

mod common;

use common::{cli, cli_output, d, dec, TestSidecar, SONNET};
use reqwest::StatusCode;
use serde_json::{json, Value};

/// `spent + reserved + available = budget` on every application and user row.
fn assert_balanced(v: &Value) {
    for map in ["by_application", "by_user"] {
        let Some(rows) = v["balance"][map].as_object() else {
            continue;
        };
        for (id, row) in rows {
            assert_eq!(
                dec(&row["spent_usd"]) + dec(&row["reserved_usd"]) + dec(&row["available_usd"]),
                dec(&row["budget_usd"]),
                "{map} {id}: {row}"
            );
        }
    }
}

/// A reserve of 1000 tokens in and at most 1000 out on sonnet ($0.018 held),
/// with attribution as the filter sends it.
async fn reserve(s: &TestSidecar, id: &str, key: &str, attribution: Value) -> Value {
    s.data(
        "/v1/reserve",
        json!({
            "request_id": id,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": SONNET,
            "attribution": attribution,
            "input_tokens_estimate": 1000,
            "max_output_tokens": 1000,
            "lease": {"holds": 4},
        }),
    )
    .await
}

fn assert_denied(r: &Value, message: &str) {
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 402, "{r}");
    assert_eq!(r["error_type"], "BudgetExceededException", "{r}");
    assert_eq!(r["message"], message, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn application_and_user_budgets_cap_inside_the_tenant_budget() {
    let s = TestSidecar::start().await;
    let key = s
        .tenant(
            "acme",
            json!({
                "budget_usd": "10",
                "alert_threshold": "0.5",
                "application_budgets": {"app-a": "0.05"},
                "user_budgets": {"alice@example.com": "0.04"},
                "default_user_budget_usd": "0.02",
            }),
        )
        .await;
    let (st, v) = s
        .admin(
            "POST",
            "/v1/tenants/acme/keys",
            Some(json!({"application_id": "app-a"})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let app_key = v["key"].as_str().unwrap().to_string();

    // The key's application: two holds of $0.018 fit $0.05, a third does not.
    for id in ["a1", "a2"] {
        let r = reserve(&s, id, &app_key, json!({})).await;
        assert_eq!(r["decision"], "allow", "never leased: {r}");
    }
    let refusal = "Application budget exhausted for tenant acme, application app-a: available $0.014, this request needs up to $0.018";
    assert_denied(&reserve(&s, "a3", &app_key, json!({})).await, refusal);
    // The key's binding wins over a claimed application.
    let r = reserve(&s, "a4", &app_key, json!({"application_id": "other"})).await;
    assert_denied(&r, refusal);
    // An application named by the request counts against that application too.
    let r = reserve(&s, "a5", &key, json!({"application_id": "app-a"})).await;
    assert_denied(&r, refusal);

    // A listed user ($0.04), and one under the default ($0.02).
    for id in ["u1", "u2"] {
        let r = reserve(&s, id, &key, json!({"user_id": "alice@example.com"})).await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
    assert_denied(
        &reserve(&s, "u3", &key, json!({"user_id": "alice@example.com"})).await,
        "User budget exhausted for tenant acme, user alice@example.com: available $0.004, this request needs up to $0.018",
    );
    let r = reserve(&s, "b1", &key, json!({"user_id": "bob"})).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_denied(
        &reserve(&s, "b2", &key, json!({"user_id": "bob"})).await,
        "User budget exhausted for tenant acme, user bob: available $0.002, this request needs up to $0.018",
    );
    // No user and no budgeted application: the tenant budget alone decides.
    let r = reserve(&s, "n1", &key, json!({"application_id": "app-b"})).await;
    assert_eq!(r["decision"], "allow", "user budgets: no lease: {r}");

    let v = s.balance("acme").await;
    let b = &v["balance"];
    assert_eq!(dec(&b["reserved_usd"]), d("0.018") * d("6"), "{b}");
    let app = &b["by_application"]["app-a"];
    assert_eq!(
        (dec(&app["budget_usd"]), dec(&app["reserved_usd"])),
        (d("0.05"), d("0.036")),
        "{app}"
    );
    assert!(b["by_application"].get("app-b").is_none(), "{b}");
    let users = &b["by_user"];
    assert_eq!(dec(&users["alice@example.com"]["reserved_usd"]), d("0.036"));
    assert_eq!(dec(&users["bob"]["budget_usd"]), d("0.02"), "{users}");
    assert_eq!(dec(&users["bob"]["reserved_usd"]), d("0.018"), "{users}");
    assert_balanced(&v);

    // Commits charge each level; a release gives each its hold back.
    for id in ["a1", "u1", "u2"] {
        let c = s.commit(id, 1000, 500).await;
        assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    }
    let (st, text) = s
        .data_raw("/v1/release", json!({"request_id": "a2", "reason": "test"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let v = s.balance("acme").await;
    let b = &v["balance"];
    let app = &b["by_application"]["app-a"];
    assert_eq!(dec(&app["spent_usd"]), d("0.0105"), "{app}");
    assert_eq!(dec(&app["reserved_usd"]), d("0"), "{app}");
    assert_eq!(app["requests"], 1, "{app}");
    let alice = &b["by_user"]["alice@example.com"];
    assert_eq!(dec(&alice["spent_usd"]), d("0.021"), "{alice}");
    assert_eq!(dec(&alice["available_usd"]), d("0.019"), "{alice}");
    assert_eq!(dec(&b["spent_usd"]), d("0.0315"), "{b}");
    assert_balanced(&v);

    // Alerts by scope: the application's exhaustion, alice past half.
    let alerts = v["alerts"].as_array().expect("alerts");
    let fired: Vec<(String, String)> = alerts
        .iter()
        .map(|a| {
            (
                a["scope"].as_str().unwrap().to_string(),
                a["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for want in [
        ("app:app-a", "exhausted"),
        ("user:alice@example.com", "exhausted"),
        ("user:bob", "exhausted"),
        ("user:alice@example.com", "threshold"),
    ] {
        assert!(
            fired.contains(&(want.0.to_string(), want.1.to_string())),
            "{want:?} in {fired:?}"
        );
    }
    assert!(
        !fired.iter().any(|(scope, _)| scope == "tenant"),
        "{fired:?}"
    );
    let m = s.metrics().await;
    assert!(
        m.contains(
            r#"tollgate_scope_budget_remaining_usd{tenant="acme",scope="user:alice@example.com"} 0.019"#
        ),
        "{m}"
    );

    // Self-service: a key bound to an application sees its own application's
    // budget and not its siblings'; an unbound key sees every level.
    let me =
        |key: &str| json!({"request_id": "self", "credential": {"type": "bearer", "key": key}});
    s.tenant(
        "acme",
        json!({"budget_usd": "10", "alert_threshold": "0.5",
               "application_budgets": {"app-a": "0.05", "app-c": "1"},
               "user_budgets": {"alice@example.com": "0.04"}, "default_user_budget_usd": "0.02"}),
    )
    .await;
    let view = &s.data("/v1/self", me(&app_key)).await["view"];
    let apps = view["balance"]["by_application"].as_object().unwrap();
    assert_eq!(apps.keys().collect::<Vec<_>>(), ["app-a"], "{view}");
    assert_eq!(dec(&apps["app-a"]["spent_usd"]), d("0.0105"), "{view}");
    let view = &s.data("/v1/self", me(&key)).await["view"];
    assert_eq!(
        view["balance"]["by_application"].as_object().unwrap().len(),
        2,
        "{view}"
    );
    assert_eq!(
        dec(&view["balance"]["by_user"]["alice@example.com"]["spent_usd"]),
        d("0.021")
    );

    // Lifting the application budget admits the application again.
    s.tenant("acme", json!({"budget_usd": "10"})).await;
    let r = reserve(&s, "a6", &app_key, json!({})).await;
    assert_eq!(r["decision"], "lease", "no budget inside left: leased: {r}");
    let v = s.balance("acme").await;
    assert!(v["balance"].get("by_application").is_none(), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nested_budgets_are_validated_and_set_by_cli() {
    let s = TestSidecar::start().await;
    let many: serde_json::Map<String, Value> =
        (0..501).map(|i| (format!("u{i}"), json!("1"))).collect();
    for bad in [
        json!({"budget_usd": "1", "application_budgets": {"a": "-1"}}),
        json!({"budget_usd": "1", "user_budgets": {"bad\nid": "1"}}),
        json!({"budget_usd": "1", "user_budgets": {"": "1"}}),
        json!({"budget_usd": "1", "user_budgets": many}),
        json!({"budget_usd": "1", "default_user_budget_usd": "-0.5"}),
        json!({"budget_usd": "1", "application_budgets": {"a": true}}),
    ] {
        let (st, v) = s.admin("PUT", "/v1/tenants/bad", Some(bad.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    let (st, v) = s
        .admin(
            "PUT",
            "/v1/tenants/bad",
            Some(json!({"budget_usd": "1", "user_budgets": many})),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(
        v.to_string().contains("default_user_budget_usd"),
        "says what to do instead: {v}"
    );

    cli(
        &s.url,
        &[
            "tenants",
            "set",
            "clitenant",
            "--budget",
            "2.5",
            "--app-budget",
            "chatbot=1.50",
            "--user-budget",
            "alice@example.com=0.5",
            "--user-budget",
            "team=ops=0.25",
            "--default-user-budget",
            "0.1",
        ],
    );
    let v = s.balance("clitenant").await;
    let c = &v["config"];
    assert_eq!(c["application_budgets"], json!({"chatbot": "1.50"}), "{c}");
    assert_eq!(
        c["user_budgets"],
        json!({"alice@example.com": "0.5", "team=ops": "0.25"}),
        "{c}"
    );
    assert_eq!(c["default_user_budget_usd"], "0.1", "{c}");
    // Listed users and applications show before any use.
    assert_eq!(
        dec(&v["balance"]["by_user"]["team=ops"]["available_usd"]),
        d("0.25")
    );
    assert_eq!(
        dec(&v["balance"]["by_application"]["chatbot"]["available_usd"]),
        d("1.5")
    );
    let out = cli_output(
        &s.url,
        &[
            "tenants",
            "set",
            "x",
            "--budget",
            "1",
            "--app-budget",
            "nope",
        ],
    );
    assert!(!out.status.success());
}
