//! Per-model budgets inside the tenant budget, through the HTTP API, the CLI and
//! the seed file.

mod common;

use common::{cli, cli_output, d, dec, Setup, TestSidecar, HAIKU, SONNET};
use reqwest::StatusCode;
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// `spent + reserved + available = budget` on every model entry with a budget,
/// and on the tenant's totals.
fn assert_balanced(v: &Value) {
    let b = &v["balance"];
    assert_eq!(
        dec(&b["spent_usd"]) + dec(&b["reserved_usd"]) + dec(&b["available_usd"]),
        dec(&b["budget_usd"]),
        "{b}"
    );
    for (m, row) in b["by_model"].as_object().unwrap() {
        if row.get("budget_usd").is_some() {
            assert_eq!(
                dec(&row["spent_usd"]) + dec(&row["reserved_usd"]) + dec(&row["available_usd"]),
                dec(&row["budget_usd"]),
                "{m}: {row}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_budget_caps_one_model_while_others_still_admit() {
    let s = TestSidecar::start().await;
    // Tenant $10, sonnet (by alias) $0.05.
    let key = s
        .tenant(
            "acme",
            json!({"budget_usd": "10", "model_budgets": {"claude-3-sonnet": "0.05"}}),
        )
        .await;
    let v = s.balance("acme").await;
    assert_eq!(
        v["config"]["model_budgets"],
        json!({ SONNET: "0.05" }),
        "{v}"
    );
    assert_eq!(
        v["balance"]["by_model"][SONNET]["budget_usd"], "0.05",
        "{v}"
    );
    assert_eq!(
        v["balance"]["by_model"][SONNET]["available_usd"], "0.05",
        "{v}"
    );

    // Sonnet 1000 in + 1000 out = $0.018 a hold: two fit, the third does not.
    for id in ["s1", "s2"] {
        let r = s
            .reserve(id, &key, "claude-3-sonnet", 1000, Some(1000))
            .await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
    let r = s.reserve("s3", &key, SONNET, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "deny", "{r}");
    assert_eq!(r["status"], 402);
    assert_eq!(r["error_type"], "BudgetExceededException");
    assert_eq!(
        r["message"],
        format!(
            "Model budget exhausted for tenant acme, model {SONNET}: available $0.014, this request needs up to $0.018"
        )
    );
    // Haiku has no model budget: the tenant budget alone decides.
    let r = s.reserve("h1", &key, HAIKU, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_balanced(&s.balance("acme").await);

    // Commits debit both the tenant and the model.
    let c = s.commit("s1", 1000, 500).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
    s.commit("h1", 1000, 500).await;
    let v = s.balance("acme").await;
    let b = &v["balance"];
    assert_eq!(dec(&b["spent_usd"]), d("0.0105") + d("0.000875"), "{b}");
    assert_eq!(dec(&b["reserved_usd"]), d("0.018"), "{b}");
    let sonnet = &b["by_model"][SONNET];
    assert_eq!(dec(&sonnet["spent_usd"]), d("0.0105"), "{sonnet}");
    assert_eq!(dec(&sonnet["reserved_usd"]), d("0.018"), "{sonnet}");
    assert_eq!(dec(&sonnet["available_usd"]), d("0.0215"), "{sonnet}");
    assert!(b["by_model"][HAIKU].get("budget_usd").is_none(), "{b}");
    assert_balanced(&v);

    // The freed model budget admits sonnet again, up to the cap.
    let r = s.reserve("s4", &key, SONNET, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let r = s.reserve("s5", &key, SONNET, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "deny", "{r}");
    let r = s.reserve("h2", &key, HAIKU, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    // Release gives the model its hold back.
    let (st, text) = s
        .data_raw("/v1/release", json!({"request_id": "s4", "reason": "test"}))
        .await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let v = s.balance("acme").await;
    assert_eq!(
        dec(&v["balance"]["by_model"][SONNET]["reserved_usd"]),
        d("0.018"),
        "{v}"
    );
    assert_balanced(&v);

    // Removing the model budget lifts the cap (the tenant budget remains).
    s.tenant("acme", json!({"budget_usd": "10"})).await;
    let v = s.balance("acme").await;
    assert!(
        v["balance"]["by_model"][SONNET].get("budget_usd").is_none(),
        "{v}"
    );
    for id in ["s6", "s7", "s8"] {
        let r = s.reserve(id, &key, SONNET, 1000, Some(1000)).await;
        assert_eq!(r["decision"], "allow", "{r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn model_budgets_are_validated_and_set_by_cli_and_seed() {
    let s = TestSidecar::start().await;
    for bad in [
        json!({"budget_usd": "1", "model_budgets": {"claude-3-sonnet": "-1"}}),
        json!({"budget_usd": "1", "model_budgets": {"bad model": "1"}}),
        json!({"budget_usd": "1", "model_budgets": {"claude-3-sonnet": "1", SONNET: "2"}}),
        json!({"budget_usd": "1", "model_budgets": {"claude-3-sonnet": true}}),
    ] {
        let (st, v) = s.admin("PUT", "/v1/tenants/bad", Some(bad.clone())).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{bad}: {v}");
    }
    // Numbers are read exactly from their text.
    let (st, v) = s
        .raw_text(
            "PUT",
            "/v1/tenants/exact",
            r#"{"budget_usd": 1, "model_budgets": {"claude-3-haiku": 0.30000000000000000001}}"#,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let v = s.balance("exact").await;
    assert_eq!(
        dec(&v["config"]["model_budgets"][HAIKU]),
        d("0.30000000000000000001")
    );

    cli(
        &s.url,
        &[
            "tenants",
            "set",
            "clitenant",
            "--budget",
            "2.5",
            "--model-budget",
            "claude-3-sonnet=0.50",
            "--model-budget",
            &format!("{HAIKU}=0.25"),
        ],
    );
    let v = s.balance("clitenant").await;
    assert_eq!(
        v["config"]["model_budgets"],
        json!({ SONNET: "0.50", HAIKU: "0.25" }),
        "{v}"
    );
    let out = cli_output(
        &s.url,
        &[
            "tenants",
            "set",
            "x",
            "--budget",
            "1",
            "--model-budget",
            "nope",
        ],
    );
    assert!(!out.status.success());

    let dir = tempfile::tempdir().unwrap();
    let seed = dir.path().join("seed.json");
    std::fs::write(
        &seed,
        json!({
            "aliases": {"claude-3-sonnet": SONNET},
            "tenants": [{"tenant_id": "seeded", "budget_usd": "1",
                         "model_budgets": {"claude-3-sonnet": "0.1"}}]
        })
        .to_string(),
    )
    .unwrap();
    let s2 = TestSidecar::start_with(Setup {
        seed: Some(seed),
        ..Setup::default()
    })
    .await;
    let v = s2.balance("seeded").await;
    assert_eq!(dec(&v["config"]["model_budgets"][SONNET]), d("0.1"), "{v}");
    assert_eq!(
        dec(&v["balance"]["by_model"][SONNET]["available_usd"]),
        d("0.1")
    );
    assert_eq!(
        Decimal::ZERO,
        dec(&v["balance"]["by_model"][SONNET]["spent_usd"])
    );
}
