//! The data plane needs the filter token; credential types are honoured only
//! when enabled; `/metrics` needs the metrics or admin token. Every refusal
//! leaves the ledger exactly as it was.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;
use tollgate_sidecar::dataplane_auth::{AcceptedCredentials, DataPlaneAuth, FilterTokens};

const NEW_TOKEN: &str = "rotated-filter-token-abcdef0123";
const METRICS_TOKEN: &str = "test-metrics-token-0123456789";

fn reserve_body(id: &str, credential: Value) -> Value {
    json!({"request_id": id, "credential": credential, "operation": "converse",
           "model": HAIKU, "input_tokens_estimate": 1000, "max_output_tokens": 1000})
}

/// $1.25 for the victim: 1M Haiku output tokens, as an unreserved commit.
fn unreserved_commit(id: &str, credential: Value) -> Value {
    json!({"commits": [{"request_id": id, "usage": {"input_tokens": 0, "output_tokens": 1_000_000},
                        "unreserved": reserve_body(id, credential)}]})
}

async fn post(
    s: &TestSidecar,
    path: &str,
    headers: &[(&str, &str)],
    body: Value,
) -> (StatusCode, Value) {
    let (st, text) = s.raw_with("POST", path, None, headers, Some(body)).await;
    (
        st,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn assert_refused(st: StatusCode, v: &Value) {
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
}

/// The victim's whole tenant view (config, balance, alerts, keys).
async fn ledger(s: &TestSidecar, tenant: &str) -> Value {
    s.balance(tenant).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_plane_without_a_valid_token_is_refused_and_changes_nothing() {
    let s = TestSidecar::start().await;
    let key = s.tenant("victim", json!({})).await;
    // A hold of the victim's that an attacker would like to free.
    let r = s.reserve("victim-req", &key, HAIKU, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let before = ledger(&s, "victim").await;

    let trusted = json!({"type": "trusted_header", "tenant_id": "victim"});
    let attacks = [
        ("/v1/reserve", reserve_body("atk-1", trusted.clone())),
        ("/v1/commit", unreserved_commit("atk-2", trusted.clone())),
        (
            "/v1/commit",
            json!({"commits": [{"request_id": "victim-req", "usage": {"input_tokens": 1, "output_tokens": 1_000_000}}]}),
        ),
        (
            "/v1/release",
            json!({"request_id": "victim-req", "reason": "attack"}),
        ),
        (
            "/v1/leases/renew",
            json!({"leases": [{"lease_id": "l", "seq": 1, "return_usd": "0", "want_usd": "1"}]}),
        ),
        ("/v1/leases/added-later", json!({})),
    ];
    let bad_headers: [&[(&str, &str)]; 5] = [
        &[],
        &[(FILTER_TOKEN_HEADER, "wrong-filter-token-0123456789")],
        &[(FILTER_TOKEN_HEADER, "")],
        // The admin token opens the admin API, never the data plane.
        &[(FILTER_TOKEN_HEADER, TOKEN)],
        &[("authorization", "Bearer test-admin-token")],
    ];
    for (path, body) in &attacks {
        for headers in bad_headers {
            let (st, v) = post(&s, path, headers, body.clone()).await;
            assert_refused(st, &v);
        }
    }
    assert_eq!(ledger(&s, "victim").await, before);
    assert!(s
        .service
        .store
        .get_hold("victim-req")
        .await
        .unwrap()
        .is_some());

    // With the token the hold settles normally.
    let c = s.commit("victim-req", 10, 10).await;
    assert_eq!(c["results"][0]["outcome"], "committed", "{c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_filter_token_does_not_open_the_admin_api() {
    let s = TestSidecar::start().await;
    for (method, path) in [
        ("GET", "/v1/tenants"),
        ("GET", "/v1/pricing"),
        ("GET", "/metrics"),
    ] {
        let (st, _) = s
            .raw_with(
                method,
                path,
                Some(FILTER_TOKEN),
                &[(FILTER_TOKEN_HEADER, FILTER_TOKEN)],
                None,
            )
            .await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (st, _) = s.raw("GET", "/healthz", None, None).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.raw("GET", "/openapi.json", None, None).await;
    assert_eq!(st, StatusCode::OK);
}

fn write_tokens(path: &Path, tokens: &[&str]) {
    // Replace atomically, as an editor or a Secret mount does.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, format!("# filter tokens\n{}\n", tokens.join("\n"))).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_token_file_needs_no_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("filter-tokens");
    write_tokens(&file, &[FILTER_TOKEN]);
    let s = TestSidecar::start_with(Setup {
        data_plane: Some(DataPlaneAuth::new(
            FilterTokens::new(Some(&file), None, Some(TOKEN)).unwrap(),
            AcceptedCredentials::default(),
        )),
        ..Setup::default()
    })
    .await;
    let release = json!({"request_id": "none", "reason": "probe"});
    let probe = |token: &'static str| {
        let s = &s;
        let release = release.clone();
        async move {
            post(s, "/v1/release", &[(FILTER_TOKEN_HEADER, token)], release)
                .await
                .0
        }
    };
    assert_eq!(probe(FILTER_TOKEN).await, StatusCode::OK);
    assert_eq!(probe(NEW_TOKEN).await, StatusCode::UNAUTHORIZED);

    // 1. Add the new token: accepted at once (a miss re-checks the file).
    tokio::time::sleep(Duration::from_millis(150)).await;
    write_tokens(&file, &[FILTER_TOKEN, NEW_TOKEN]);
    assert_eq!(probe(NEW_TOKEN).await, StatusCode::OK);
    assert_eq!(probe(FILTER_TOKEN).await, StatusCode::OK);

    // 2. Remove the old one: refused once the file is re-read (about a second).
    write_tokens(&file, &[NEW_TOKEN]);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while probe(FILTER_TOKEN).await != StatusCode::UNAUTHORIZED {
        assert!(
            std::time::Instant::now() < deadline,
            "old token still accepted"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(probe(NEW_TOKEN).await, StatusCode::OK);

    // A broken file keeps the last good tokens; the admin token is never taken.
    write_tokens(&file, &["short"]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(probe(NEW_TOKEN).await, StatusCode::OK);
    write_tokens(&file, &[NEW_TOKEN, TOKEN]);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(probe(NEW_TOKEN).await, StatusCode::OK);
    assert_eq!(probe(TOKEN).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_types_are_honoured_only_when_enabled() {
    let s = TestSidecar::start_with(Setup {
        data_plane: Some(DataPlaneAuth::new(
            FilterTokens::new(None, Some(FILTER_TOKEN), Some(TOKEN)).unwrap(),
            AcceptedCredentials::default(),
        )),
        ..Setup::default()
    })
    .await;
    let key = s.tenant("victim", json!({})).await;
    let before = ledger(&s, "victim").await;
    for kind in ["trusted_header", "jwt"] {
        let r = s
            .data(
                "/v1/reserve",
                reserve_body(
                    &format!("r-{kind}"),
                    json!({"type": kind, "tenant_id": "victim"}),
                ),
            )
            .await;
        assert_eq!(r["decision"], "deny", "{r}");
        assert_eq!(r["status"], 403);
        assert_eq!(r["error_type"], "AccessDeniedException");
        assert_eq!(
            r["message"],
            format!("credential type {kind} is not enabled on this sidecar")
        );
        // Nor can a lease be had with it.
        let mut body = reserve_body(
            &format!("l-{kind}"),
            json!({"type": kind, "tenant_id": "victim"}),
        );
        body["lease"] = json!({"holds": 8});
        let r = s.data("/v1/reserve", body).await;
        assert_eq!(r["decision"], "deny", "{r}");
    }
    assert_eq!(ledger(&s, "victim").await, before);

    // A batch mixing a refused unreserved commit with legitimate ones: the
    // refused one is not charged, the others are, results keep the batch order.
    let r = s.reserve("ok-1", &key, HAIKU, 100, Some(100)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    let trusted = json!({"type": "trusted_header", "tenant_id": "victim"});
    let batch = json!({"commits": [
        {"request_id": "atk", "usage": {"output_tokens": 1_000_000},
         "unreserved": reserve_body("atk", trusted)},
        {"request_id": "ok-1", "usage": {"input_tokens": 100, "output_tokens": 100}},
        {"request_id": "ok-2", "usage": {"input_tokens": 100, "output_tokens": 100},
         "unreserved": reserve_body("ok-2", json!({"type": "bearer", "key": key}))},
    ]});
    let c = s.data("/v1/commit", batch).await;
    let outcomes: Vec<(&str, &str)> = c["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["request_id"].as_str().unwrap(),
                r["outcome"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        vec![
            ("atk", "unknown_request"),
            ("ok-1", "committed"),
            ("ok-2", "committed")
        ]
    );
    let after = ledger(&s, "victim").await;
    // Two requests of 100 + 100 Haiku tokens: 2 × (0.000025 + 0.000125).
    assert_eq!(dec(&after["balance"]["spent_usd"]), d("0.0003"));
    assert_eq!(after["balance"]["requests"], 2);
    assert!(s.service.store.get_hold("atk").await.unwrap().is_none());

    // Bearer and SigV4 still work (bearer shown above); None is the ledger's 401.
    let r = s
        .data("/v1/reserve", reserve_body("none", json!({"type": "none"})))
        .await;
    assert_eq!(
        (r["status"].as_u64(), r["error_type"].as_str()),
        (Some(401), Some("UnrecognizedClientException"))
    );
}

/// Narrowing `--accept-credentials` closes the leases of the dropped types at
/// their next renewal: a JWT lease granted before the restart admits nothing
/// after it, while a bearer key's lease renews as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn narrowing_accepted_credentials_closes_their_leases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let s = TestSidecar::open(&db, Setup::default()).await;
    let key = s.tenant("acme", json!({})).await;
    let mut grants = Vec::new();
    for (id, credential) in [
        ("via-jwt", json!({"type": "jwt", "tenant_id": "acme"})),
        ("via-key", json!({"type": "bearer", "key": key})),
    ] {
        let mut body = reserve_body(id, credential);
        body["lease"] = json!({"holds": 4});
        let r = s.data("/v1/reserve", body).await;
        assert_eq!(r["decision"], "lease", "{r}");
        grants.push(r["lease_id"].as_str().unwrap().to_string());
    }
    drop(s);

    let s = TestSidecar::open(
        &db,
        Setup {
            data_plane: Some(DataPlaneAuth::new(
                FilterTokens::new(None, Some(FILTER_TOKEN), Some(TOKEN)).unwrap(),
                AcceptedCredentials::default(),
            )),
            ..Setup::default()
        },
    )
    .await;
    let leases: Vec<Value> = grants
        .iter()
        .map(|id| json!({"lease_id": id, "seq": 1, "return_usd": "0", "want_usd": "0.01"}))
        .collect();
    let r = s.data("/v1/leases/renew", json!({"leases": leases})).await;
    let results = r["results"].as_array().expect("results");
    assert_eq!(results[0]["lease_id"], grants[0].as_str());
    assert_eq!(results[0]["status"], "closed", "{r}");
    assert_eq!(
        results[0]["reason"],
        "credential type jwt is not enabled on this sidecar"
    );
    assert_eq!(results[1]["status"], "renewed", "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_or_admin_token() {
    let s = TestSidecar::start_with(Setup {
        metrics_token: Some(METRICS_TOKEN.into()),
        ..Setup::default()
    })
    .await;
    let key = s.tenant("secret-tenant", json!({})).await;
    s.reserve("m1", &key, HAIKU, 10, Some(10)).await;
    for token in [None, Some("wrong-metrics-token-0000"), Some(FILTER_TOKEN)] {
        let (st, body) = s.raw("GET", "/metrics", token, None).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED, "{token:?}");
        assert!(!body.contains("secret-tenant"));
        assert!(serde_json::from_str::<Value>(&body).is_ok_and(|v| v["message"].is_string()));
    }
    for token in [METRICS_TOKEN, TOKEN] {
        let (st, body) = s.raw("GET", "/metrics", Some(token), None).await;
        assert_eq!(st, StatusCode::OK);
        assert!(body.contains("tenant=\"secret-tenant\""), "{body}");
    }
    // The metrics token is not an admin token.
    let (st, _) = s.raw("GET", "/v1/tenants", Some(METRICS_TOKEN), None).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

fn serve_cmd(db: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate-sidecar"));
    cmd.args(["serve", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, _) in std::env::vars() {
        if k.starts_with("TOLLGATE_") && k != "TOLLGATE_ADMIN_TOKEN" {
            cmd.env_remove(k);
        }
    }
    cmd
}

#[test]
fn serve_refuses_to_start_without_a_filter_token() {
    let dir = tempfile::tempdir().unwrap();
    let out = serve_cmd(&dir.path().join("ledger.db")).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no filter token configured"), "{err}");
    assert!(err.contains("--insecure-open-data-plane"), "{err}");

    // A filter token equal to the admin token is refused too.
    let out = serve_cmd(&dir.path().join("ledger.db"))
        .env("TOLLGATE_FILTER_TOKEN", TOKEN)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must differ"));

    // An empty token file is refused.
    let file = dir.path().join("tokens");
    std::fs::write(&file, "# none yet\n").unwrap();
    let out = serve_cmd(&dir.path().join("ledger.db"))
        .arg("--filter-token-file")
        .arg(&file)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no token"));
}

#[test]
fn insecure_open_data_plane_starts_with_a_loud_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_cmd(&dir.path().join("ledger.db"))
        .arg("--insecure-open-data-plane")
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut warned = false;
    let mut listening = false;
    for line in BufReader::new(stderr).lines() {
        let line = line.unwrap();
        warned |= line.contains("INSECURE") && line.contains("--insecure-open-data-plane");
        if line.contains("listening on") {
            listening = true;
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(listening, "the sidecar did not start");
    assert!(warned, "no INSECURE warning in the log");
}
