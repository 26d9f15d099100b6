//! `tollgate-sidecar keys …` and `sigv4 …`: the real binary against an in-process
//! sidecar; secrets printed once, revocation visible in the tenant view.

mod common;

use common::{cli, Setup, TestSidecar};
use tollgate_sidecar::seal::SealingKey;
use tollgate_sidecar::service::Settings;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn issue_and_revoke_keys_and_sigv4_credentials() {
    let s = TestSidecar::start_with(Setup {
        settings: Settings {
            sealing: Some(SealingKey::parse(&"ab".repeat(32)).unwrap().into()),
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await;
    s.tenant("acme", serde_json::json!({})).await;

    let (out, err) = cli(&s.url, &["keys", "issue", "acme", "--application", "bot"]);
    let key: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(key["key"].as_str().unwrap().starts_with("tg_"), "{out}");
    assert_eq!(key["application_id"], "bot");
    assert!(err.contains("not shown again"), "{err}");
    let key_id = key["key_id"].as_str().unwrap();

    let (out, _) = cli(&s.url, &["sigv4", "issue", "acme"]);
    let cred: serde_json::Value = serde_json::from_str(&out).unwrap();
    let akid = cred["access_key_id"].as_str().unwrap();
    assert!(akid.starts_with("TGAK") && akid.len() == 20, "{out}");
    assert_eq!(cred["secret_access_key"].as_str().unwrap().len(), 40);

    let (out, _) = cli(&s.url, &["keys", "revoke", "acme", key_id]);
    assert_eq!(out.trim(), format!("revoked {key_id}"));
    let (out, _) = cli(&s.url, &["sigv4", "revoke", "acme", akid]);
    assert_eq!(out.trim(), format!("revoked {akid}"));

    let (_, t) = s.admin("GET", "/v1/tenants/acme", None).await;
    let revoked = t["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key_id"] == key_id)
        .unwrap();
    assert_eq!(revoked["revoked"], true, "{t}");
    // Listed by id, application and date, revoked flagged, never the key.
    let (out, _) = cli(&s.url, &["keys", "list", "acme"]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    let keys = listed["keys"].as_array().unwrap();
    let ours = keys.iter().find(|k| k["key_id"] == key_id).expect("listed");
    assert_eq!(ours["application_id"], "bot");
    assert_eq!(ours["revoked"], true);
    assert!(ours["created_at"].as_str().is_some_and(|d| d.contains('T')));
    assert_eq!(
        Some(keys),
        t["keys"].as_array(),
        "the tenant view lists the same keys"
    );
    assert!(!out.contains("tg_") && !out.contains("hash"), "{out}");
    let (out, _) = cli(&s.url, &["sigv4", "list", "acme"]);
    assert!(out.contains(akid) && !out.contains("sealed"), "{out}");
    let (st, _) = s
        .raw("GET", "/v1/tenants/nobody/keys", Some(common::TOKEN), None)
        .await;
    assert_eq!(st, reqwest::StatusCode::NOT_FOUND);
    let (_, creds) = s
        .admin("GET", "/v1/tenants/acme/sigv4-credentials", None)
        .await;
    assert_eq!(creds["credentials"][0]["revoked"], true, "{creds}");
    assert!(
        creds.to_string().find("sealed").is_none(),
        "secrets must not be listed: {creds}"
    );
}
