//! Rotating `TOLLGATE_SECRET_KEY`: SigV4 credentials keep verifying while the
//! old key is a previous key, `tollgate-sidecar rewrap` (the real binary, on the
//! SQLite ledger of a running sidecar) re-seals them under the new key, and
//! after that the old key can go; a sidecar without the right key names it.

mod common;
#[cfg(feature = "dynamodb")]
#[path = "common/dynalite.rs"]
mod dynalite;

use common::{Setup, TestSidecar, HAIKU};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use tollgate_sidecar::seal::{Keyring, SealingKey, PREVIOUS_KEYS_ENV, SECRET_KEY_ENV};
use tollgate_sidecar::service::Settings;
use tollgate_wire::sigv4::{self, Credentials, SignedRequest};

/// `TestSidecar`'s clock.
const AMZ_DATE: &str = "20261123T120000Z";

fn key_a() -> String {
    "a1".repeat(32)
}
fn key_b() -> String {
    "b2".repeat(32)
}

fn id_of(key: &str) -> String {
    SealingKey::parse(key).unwrap().id().to_string()
}

fn setup(current: &str, previous: &str) -> Setup {
    Setup {
        settings: Settings {
            sealing: Keyring::from_values(Some(current), Some(previous)).unwrap(),
            ..Settings::default()
        },
        ..Setup::default()
    }
}

/// A reserve signed with the credential, as the filter forwards it.
fn signed_reserve(request_id: &str, akid: &str, secret: &str) -> Value {
    let body = br#"{"messages":[]}"#;
    let payload = hex::encode(Sha256::digest(body));
    let raw_path = format!("/model/{HAIKU}/converse");
    let mut headers = vec![
        ("host".to_string(), "gateway.example".to_string()),
        ("x-amz-date".to_string(), AMZ_DATE.to_string()),
    ];
    let auth = sigv4::sign(
        &SignedRequest {
            method: "POST",
            raw_path: &raw_path,
            raw_query: None,
            headers: &headers,
            payload_sha256: &payload,
        },
        &Credentials {
            access_key_id: akid.into(),
            secret_access_key: secret.into(),
            region: "us-east-1".into(),
            service: "bedrock".into(),
        },
        AMZ_DATE,
    );
    headers.push(("authorization".into(), auth));
    json!({"request_id": request_id, "operation": "converse", "model": HAIKU,
           "input_tokens_estimate": 10, "max_output_tokens": 10,
           "credential": {"type": "sigv4", "method": "POST", "raw_path": raw_path,
                          "headers": headers, "payload_sha256": payload}})
}

/// The reserve's answer: `Ok(decision)` or `Err((status, message))`.
async fn reserve(s: &TestSidecar, id: &str, akid: &str, secret: &str) -> Result<String, String> {
    let (st, text) = s
        .raw_with(
            "POST",
            "/v1/reserve",
            None,
            &[(common::FILTER_TOKEN_HEADER, common::FILTER_TOKEN)],
            Some(signed_reserve(id, akid, secret)),
        )
        .await;
    let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
    if st == StatusCode::OK && v["decision"] != "deny" {
        Ok(v["decision"].as_str().unwrap_or_default().to_string())
    } else {
        Err(format!("{st} {v}"))
    }
}

async fn issue(s: &TestSidecar) -> (String, String) {
    let (st, c) = s
        .admin(
            "POST",
            "/v1/tenants/acme/sigv4-credentials",
            Some(json!({"application_id": null})),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{c}");
    (
        c["access_key_id"].as_str().unwrap().to_string(),
        c["secret_access_key"].as_str().unwrap().to_string(),
    )
}

async fn sealed(s: &TestSidecar, akid: &str) -> String {
    s.service
        .store
        .list_all_sigv4_credentials()
        .await
        .unwrap()
        .into_iter()
        .find(|c| c.access_key_id == akid)
        .unwrap()
        .sealed_secret
}

/// `tollgate-sidecar rewrap --db DB [extra]` with the given keys.
fn rewrap(
    db: &Path,
    current: Option<&str>,
    previous: &str,
    extra: &[&str],
) -> (bool, String, String) {
    let mut args = vec!["--db", db.to_str().expect("utf-8 path")];
    args.extend_from_slice(extra);
    rewrap_with(&args, &[], current, previous)
}

/// `tollgate-sidecar rewrap ARGS` with the given keys and extra environment.
fn rewrap_with(
    args: &[&str],
    env: &[(&str, &str)],
    current: Option<&str>,
    previous: &str,
) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-sidecar"));
    cmd.arg("rewrap")
        .args(args)
        .env_remove("TOLLGATE_STORE")
        .env_remove(SECRET_KEY_ENV)
        .env(PREVIOUS_KEYS_ENV, previous)
        .env("RUST_LOG", "info")
        .envs(env.iter().copied());
    if let Some(c) = current {
        cmd.env(SECRET_KEY_ENV, c);
    }
    let out = cmd.output().expect("run tollgate-sidecar rewrap");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotate_the_secret_key_rewrap_and_drop_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ledger.db");
    let (a, b) = (key_a(), key_b());

    // Key A: a credential, and one stored in the format before key ids (a
    // ledger written by an older sidecar).
    let s = TestSidecar::open(&db, setup(&a, "")).await;
    s.tenant("acme", json!({})).await;
    let (akid1, secret1) = issue(&s).await;
    assert!(sealed(&s, &akid1)
        .await
        .starts_with(&format!("v1:{}:", id_of(&a))));
    let legacy_akid = "TGAKLEGACYLEGACY0001";
    let legacy_secret = "legacy/secret/of/forty/characters/000000";
    {
        use aes_gcm::aead::{Aead, KeyInit};
        use base64::Engine;
        let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(&a).unwrap()).unwrap();
        let nonce = [5u8; 12];
        let ct = cipher
            .encrypt(aes_gcm::Nonce::from_slice(&nonce), legacy_secret.as_bytes())
            .unwrap();
        let record = tollgate_sidecar::store::SigV4CredentialRecord {
            access_key_id: legacy_akid.into(),
            tenant_id: "acme".into(),
            application_id: None,
            sealed_secret: base64::engine::general_purpose::STANDARD
                .encode([nonce.to_vec(), ct].concat()),
            created_at_ms: 1,
            revoked: false,
        };
        assert!(s
            .service
            .store
            .insert_sigv4_credential(&record)
            .await
            .unwrap());
    }
    assert_eq!(
        reserve(&s, "r1", &akid1, &secret1).await.as_deref(),
        Ok("allow")
    );
    assert_eq!(
        reserve(&s, "r2", legacy_akid, legacy_secret)
            .await
            .as_deref(),
        Ok("allow")
    );
    drop(s);

    // Rotation, step 1: B current, A previous. Old credentials still verify;
    // new ones are sealed with B.
    let s = TestSidecar::open(&db, setup(&b, &a)).await;
    assert_eq!(
        reserve(&s, "r3", &akid1, &secret1).await.as_deref(),
        Ok("allow")
    );
    assert_eq!(
        reserve(&s, "r4", legacy_akid, legacy_secret)
            .await
            .as_deref(),
        Ok("allow")
    );
    let (akid2, secret2) = issue(&s).await;
    assert!(sealed(&s, &akid2)
        .await
        .starts_with(&format!("v1:{}:", id_of(&b))));

    // Without the previous key, rewrap re-seals nothing and says why.
    let (ok, out, err) = rewrap(&db, Some(&b), "", &[]);
    assert!(!ok, "{out}\n{err}");
    assert!(
        out.contains("rewrapped 0, already current 1, failed 2"),
        "{out}"
    );
    assert!(
        err.contains(&id_of(&a)) && err.contains(PREVIOUS_KEYS_ENV),
        "{err}"
    );
    // No key at all: told which variables to set.
    let (ok, _, err) = rewrap(&db, None, "", &[]);
    assert!(!ok && err.contains(SECRET_KEY_ENV), "{err}");
    // A mistyped ledger path is not an empty ledger.
    let missing = dir.path().join("no-such.db");
    let (ok, _, err) = rewrap(&missing, Some(&b), &a, &[]);
    assert!(
        !ok && err.contains("no ledger at") && !missing.exists(),
        "{err}"
    );

    // A dry run changes nothing; the real run (next to the running sidecar)
    // re-seals both, logs an audit event, and a second run is a no-op.
    let (ok, out, err) = rewrap(&db, Some(&b), &a, &["--dry-run"]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("would have rewrapped 2, already current 1, failed 0"),
        "{out}"
    );
    assert!(!sealed(&s, &akid1).await.contains(&id_of(&b)));
    let (ok, out, err) = rewrap(&db, Some(&b), &a, &[]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("rewrapped 2, already current 1, failed 0, skipped 0")
            && out.contains(&id_of(&b)),
        "{out}"
    );
    assert!(
        err.contains("tollgate::audit") && err.contains("rewrap") && err.contains("applied"),
        "{err}"
    );
    let (ok, out, _) = rewrap(&db, Some(&b), &a, &[]);
    assert!(
        ok && out.contains("rewrapped 0, already current 3, failed 0"),
        "{out}"
    );
    for akid in [akid1.as_str(), legacy_akid, akid2.as_str()] {
        assert!(sealed(&s, akid)
            .await
            .starts_with(&format!("v1:{}:", id_of(&b))));
    }
    drop(s);

    // Step 3: only B. Everything verifies.
    let s = TestSidecar::open(&db, setup(&b, "")).await;
    assert_eq!(
        reserve(&s, "r5", &akid1, &secret1).await.as_deref(),
        Ok("allow")
    );
    assert_eq!(
        reserve(&s, "r6", legacy_akid, legacy_secret)
            .await
            .as_deref(),
        Ok("allow")
    );
    assert_eq!(
        reserve(&s, "r7", &akid2, &secret2).await.as_deref(),
        Ok("allow")
    );
    drop(s);

    // Only the old key A: a clear error naming B's key id and the variables;
    // nothing is admitted.
    let s = TestSidecar::open(&db, setup(&a, "")).await;
    let e = reserve(&s, "r8", &akid1, &secret1).await.unwrap_err();
    assert!(e.starts_with("500"), "{e}");
    for part in [
        id_of(&b),
        id_of(&a),
        PREVIOUS_KEYS_ENV.to_string(),
        akid1.clone(),
    ] {
        assert!(e.contains(&part), "{part} missing from {e}");
    }
}

/// The same command on the DynamoDB store, with `serve`'s flags and the SDK's
/// standard endpoint variable.
#[cfg(feature = "dynamodb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_on_dynamodb() {
    use tollgate_sidecar::store::dynamodb::{DynamoOptions, DynamoStore};
    use tollgate_sidecar::store::{SigV4CredentialRecord, Store};
    let dynalite = dynalite::Dynalite::start();
    let store = DynamoStore::from_sdk_config(
        &dynalite.sdk_config().await,
        &DynamoOptions {
            table_prefix: "rw-".into(),
            pricing_region: "global".into(),
        },
    );
    store.init_tables().await.expect("create tables");
    let (a, b) = (key_a(), key_b());
    let old = Keyring::from_values(Some(&a), None).unwrap().unwrap();
    for (i, akid) in ["TGAKDYNAMO0000000001", "TGAKDYNAMO0000000002"]
        .iter()
        .enumerate()
    {
        let record = SigV4CredentialRecord {
            access_key_id: akid.to_string(),
            tenant_id: "acme".into(),
            application_id: None,
            sealed_secret: old.seal(akid, &format!("secret-{i}")).unwrap(),
            created_at_ms: 1,
            revoked: false,
        };
        assert!(store.insert_sigv4_credential(&record).await.unwrap());
    }
    let env = [
        ("AWS_ENDPOINT_URL_DYNAMODB", dynalite.endpoint.as_str()),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ACCESS_KEY_ID", "dummy"),
        ("AWS_SECRET_ACCESS_KEY", "dummy"),
        ("AWS_CONFIG_FILE", "/dev/null"),
        ("AWS_SHARED_CREDENTIALS_FILE", "/dev/null"),
    ];
    let args = ["--store", "dynamodb", "--dynamodb-table-prefix", "rw-"];
    let (ok, out, err) = rewrap_with(&args, &env, Some(&b), &a);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("rewrapped 2, already current 0, failed 0"),
        "{out}"
    );
    let only_b = Keyring::from_values(Some(&b), None).unwrap().unwrap();
    for (i, c) in store
        .list_all_sigv4_credentials()
        .await
        .unwrap()
        .iter()
        .enumerate()
    {
        assert!(only_b.is_current(&c.sealed_secret), "{c:?}");
        assert_eq!(
            only_b.open(&c.access_key_id, &c.sealed_secret).unwrap(),
            format!("secret-{i}")
        );
    }
    let (ok, out, _) = rewrap_with(&args, &env, Some(&b), &a);
    assert!(
        ok && out.contains("rewrapped 0, already current 2"),
        "{out}"
    );
}
