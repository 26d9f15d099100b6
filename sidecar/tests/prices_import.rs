//! `tollgate-sidecar prices import FILE`: the real binary against an in-process
//! sidecar.

mod common;

use common::{cli_output, d, dec, TestSidecar};
use reqwest::StatusCode;
use std::path::Path;

fn import(url: &str, file: &Path) -> std::process::Output {
    cli_output(
        url,
        &["prices", "import", file.to_str().expect("utf-8 path")],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imports_the_seed_file_prices_exactly() {
    let s = TestSidecar::start().await;
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/seed.json");
    let out = import(&s.url, &seed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&seed).unwrap()).unwrap();
    let n = text["pricing"].as_array().unwrap().len();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("imported {n} prices")
    );
    let (st, v) = s
        .admin(
            "GET",
            "/v1/pricing/us.anthropic.claude-sonnet-4-5-20250929-v1:0",
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["input"], "3.30");
    assert_eq!(v["cache_write"], "4.125");
    let (_, v) = s
        .admin("GET", "/v1/pricing/amazon.nova-micro-v1:0", None)
        .await;
    assert_eq!(dec(&v["cache_read"]), d("0.00875"));
    assert!(v["cache_write"].is_null(), "{v}");
    let (_, v) = s.admin("GET", "/v1/pricing", None).await;
    assert!(v["pricing"].as_array().unwrap().len() >= n, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn imports_a_bare_array_with_numbers_exactly_and_refuses_bad_files() {
    let s = TestSidecar::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.json");
    std::fs::write(
        &file,
        r#"[
          {"model_id": "x.model-a", "input": 0.30000000000000000001, "output": 1e-3},
          {"model_id": "x.model-b", "input": "1.10", "output": 5.5, "cache_read": 0.11, "cache_write": null}
        ]"#,
    )
    .unwrap();
    let out = import(&s.url, &file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "imported 2 prices"
    );
    let (_, a) = s.admin("GET", "/v1/pricing/x.model-a", None).await;
    assert_eq!(dec(&a["input"]), d("0.30000000000000000001"));
    assert_eq!(dec(&a["output"]), d("0.001"));
    let (_, b) = s.admin("GET", "/v1/pricing/x.model-b", None).await;
    assert_eq!(b["input"], "1.10");
    assert_eq!(dec(&b["output"]), d("5.5"));
    assert_eq!(dec(&b["cache_read"]), d("0.11"));
    assert!(b["cache_write"].is_null(), "{b}");

    // A bad entry anywhere refuses the whole file before anything is sent.
    std::fs::write(
        &file,
        r#"{"pricing": [
          {"model_id": "x.model-c", "input": "1", "output": "2"},
          {"model_id": "x.model-d", "input": "-1", "output": "2"}
        ]}"#,
    )
    .unwrap();
    let out = import(&s.url, &file);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("x.model-d"), "{err}");
    let (st, _) = s.admin("GET", "/v1/pricing/x.model-c", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND);

    // An object without a pricing list is refused, not read as zero prices.
    std::fs::write(&file, r#"{"pricng": []}"#).unwrap();
    let out = import(&s.url, &file);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pricing"));
}
