//! The dashboard over HTTP (no browser; tests/e2e/test_ui.py drives Chromium):
//! login and sessions, the numbers against the admin API, no secret in any page,
//! the CSV export.

mod common;

use common::{dec, TestSidecar, HAIKU, TOKEN};
use reqwest::StatusCode;
use serde_json::json;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client")
}

/// Logs in and returns the `Cookie` header value to send.
async fn login(sc: &TestSidecar) -> String {
    let r = client()
        .post(format!("{}/ui/login", sc.url))
        .form(&[("token", TOKEN)])
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()["location"], "/ui");
    let set = r.headers()["set-cookie"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the cookie is not the token: {set}");
    set.split(';').next().expect("pair").to_string()
}

async fn get(sc: &TestSidecar, path: &str, cookie: Option<&str>) -> (StatusCode, String) {
    let mut req = client().get(format!("{}{path}", sc.url));
    if let Some(c) = cookie {
        req = req.header("cookie", c);
    }
    let r = req.send().await.expect("get");
    let st = r.status();
    (st, r.text().await.expect("body"))
}

/// The `data-usd` of the first element with `data-field="{field}"` after `from`.
fn field_usd(html: &str, from: &str, field: &str) -> rust_decimal::Decimal {
    let start = html
        .find(from)
        .unwrap_or_else(|| panic!("{from} not in page"));
    let rest = &html[start..];
    let at = rest
        .find(&format!(r#"data-field="{field}""#))
        .unwrap_or_else(|| panic!("{field} not in page"));
    let rest = &rest[at..];
    let v = rest.split(r#"data-usd=""#).nth(1).expect("data-usd");
    common::d(&v[..v.find('"').expect("quote")])
}

#[tokio::test]
async fn pages_need_a_login_and_the_token_never_leaves_the_form() {
    let sc = TestSidecar::start().await;
    // Not logged in: the login form, never the data.
    let (st, page) = get(&sc, "/ui", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains(r#"action="/ui/login""#), "{page}");
    for path in ["/ui/usage", "/ui/usage.csv", "/ui/tenants/acme"] {
        let (st, _) = get(&sc, path, None).await;
        assert_eq!(st, StatusCode::SEE_OTHER, "{path}");
        let (st, _) = get(&sc, path, Some("tollgate_ui_session=forged")).await;
        assert_eq!(st, StatusCode::SEE_OTHER, "{path} with a forged session");
    }
    // A wrong token is refused; a token in the query string is ignored.
    let r = client()
        .post(format!("{}/ui/login", sc.url))
        .form(&[("token", "not-the-token")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers().get("set-cookie").is_none());
    let (st, page) = get(&sc, &format!("/ui?token={TOKEN}"), None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains(r#"action="/ui/login""#));

    let cookie = login(&sc).await;
    let (st, page) = get(&sc, "/ui", Some(&cookie)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(page.contains("<h1>Tenants</h1>"), "{page}");
    assert!(!page.contains(TOKEN));

    // Logout ends the session on the server, not only in the browser.
    let r = client()
        .post(format!("{}/ui/logout", sc.url))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (st, _) = get(&sc, "/ui/usage", Some(&cookie)).await;
    assert_eq!(st, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn pages_are_private_and_scripts_come_only_from_the_sidecar() {
    let sc = TestSidecar::start().await;
    let r = client()
        .post(format!("{}/ui/login", sc.url))
        .header("x-forwarded-proto", "https")
        .form(&[("token", TOKEN)])
        .send()
        .await
        .unwrap();
    assert!(r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .ends_with("; Secure"));
    let r = client().get(format!("{}/ui", sc.url)).send().await.unwrap();
    let h = r.headers();
    assert_eq!(h["cache-control"], "no-store");
    assert_eq!(h["x-frame-options"], "DENY");
    assert!(h["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("script-src 'self'"));
    let (st, js) = get(&sc, "/ui/assets/ui.js", None).await;
    assert_eq!(st, StatusCode::OK);
    assert!(js.contains("DOMParser"));
}

#[tokio::test]
async fn the_dashboard_shows_the_api_numbers_and_no_secret() {
    let sc = TestSidecar::start().await;
    let key = sc
        .tenant(
            "acme",
            json!({"rate_limit_rpm": 60, "model_budgets": {HAIKU: "2.5"},
                   "application_budgets": {"bot": "3"}, "user_budgets": {"alice": "1.25"},
                   "model_rate_limit_tpm": {HAIKU: 5000},
                   "profiles": [{"application_id": "bot", "model": HAIKU,
                   "arn": "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/acmebot"}]}),
        )
        .await;
    // One settled request and one open hold.
    let r = sc.reserve("r1", &key, HAIKU, 1000, Some(200)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    sc.commit("r1", 1000, 150).await;
    let r = sc.reserve("r2", &key, HAIKU, 500, Some(100)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let (_, api) = sc.admin("GET", "/v1/tenants/acme", None).await;
    let b = &api["balance"];
    assert!(dec(&b["spent_usd"]) > rust_decimal::Decimal::ZERO);
    assert!(dec(&b["reserved_usd"]) > rust_decimal::Decimal::ZERO);

    // The keys' last use reaches the ledger at the sweep.
    sc.service.sweep().await.unwrap();

    let cookie = login(&sc).await;
    let (st, overview) = get(&sc, "/ui", Some(&cookie)).await;
    assert_eq!(st, StatusCode::OK);
    let row = r#"data-tenant="acme""#;
    for f in ["spent_usd", "reserved_usd", "available_usd", "budget_usd"] {
        assert_eq!(field_usd(&overview, row, f), dec(&b[f]), "overview {f}");
    }
    let (st, page) = get(&sc, "/ui/tenants/acme", Some(&cookie)).await;
    assert_eq!(st, StatusCode::OK);
    for f in ["spent_usd", "reserved_usd", "available_usd", "budget_usd"] {
        assert_eq!(
            field_usd(&page, r#"id="budget""#, f),
            dec(&b[f]),
            "tenant {f}"
        );
    }
    // The model split is the API's by_model; the day's bar is the spend.
    let spent = b["spent_usd"].as_str().unwrap();
    assert!(
        page.contains(&format!(r#"data-key="{HAIKU}""#)),
        "model split: {page}"
    );
    assert!(
        page.contains(&format!(r#"data-day="2026-11-23" data-usd="{spent}""#)),
        "trend: {page}"
    );
    assert!(page.contains(r#"data-field="rate_limit_rpm">60<"#));
    assert!(
        page.contains(&format!(
            r#"data-field="model_rate_limit_tpm"><code>{HAIKU}</code> 5000<"#
        )),
        "{page}"
    );
    assert!(
        page.contains(r#"<small data-field="last_used_at">last used 2026-11-23T12:00:00Z</small>"#),
        "{page}"
    );
    assert!(page.contains("application-inference-profile/acmebot"));
    let (_, keys) = sc.admin("GET", "/v1/tenants/acme/keys", None).await;
    let key_id = keys["keys"][0]["key_id"].as_str().unwrap();
    assert!(page.contains(key_id), "key ids are shown");
    for secret in [key.as_str(), TOKEN, &common_hash(&key)] {
        assert!(!page.contains(secret) && !overview.contains(secret));
    }
    assert_eq!(
        field_usd(&page, r#"id="model-budgets""#, "budget_usd"),
        common::d("2.5")
    );
    assert_eq!(
        field_usd(&page, r#"id="application-budgets""#, "budget_usd"),
        common::d("3")
    );
    assert_eq!(
        field_usd(&page, r#"data-user="alice""#, "available_usd"),
        common::d("1.25")
    );

    // The usage table and its CSV export match GET /v1/usage.
    let (st, csv) = get(
        &sc,
        "/ui/usage.csv?group_by=tenant,model&from=2026-11-01T00:00:00Z",
        Some(&cookie),
    )
    .await;
    assert_eq!(st, StatusCode::OK);
    let (_, api_csv) = sc
        .raw(
            "GET",
            "/v1/usage?group_by=tenant,model&from=2026-11-01T00:00:00Z&format=csv",
            Some(TOKEN),
            None,
        )
        .await;
    assert_eq!(csv, api_csv);
    assert!(csv.contains(&format!("acme,{HAIKU},1,")), "{csv}");
    let (st, usage) = get(&sc, "/ui/usage", Some(&cookie)).await;
    assert_eq!(st, StatusCode::OK);
    assert!(
        usage
            .contains(r#"href="/ui/usage.csv?group_by=tenant%2Capplication%2Cmodel&amp;from=2026"#),
        "{usage}"
    );
    let (st, bad) = get(&sc, "/ui/usage?group_by=nope", Some(&cookie)).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert!(bad.contains("unknown key"));
    let (st, _) = get(&sc, "/ui/tenants/nobody", Some(&cookie)).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

fn common_hash(key: &str) -> String {
    tollgate_sidecar::keys::hash_key(key)
}
