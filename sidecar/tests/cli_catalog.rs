//! `tollgate-sidecar prices delete`, `aliases delete` and `profiles unmap`: the
//! real binary against an in-process sidecar; each removes exactly its entry,
//! and a second delete is a 404 the CLI reports.

mod common;

use common::{cli, cli_output, TestSidecar};

const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const ARN: &str = "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/cat1";

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prices_aliases_and_profiles_can_be_deleted() {
    let s = TestSidecar::start().await;
    let key = s.tenant("acme", serde_json::json!({})).await;
    cli(
        &s.url,
        &[
            "prices", "set", HAIKU, "--input", "0.25", "--output", "1.25",
        ],
    );
    cli(&s.url, &["aliases", "set", "quick", HAIKU]);
    cli(&s.url, &["profiles", "map", "acme", "quick", ARN]);
    cli(
        &s.url,
        &[
            "profiles",
            "map",
            "acme",
            HAIKU,
            ARN,
            "--application",
            "bot",
        ],
    );

    // The application's mapping goes; the tenant-wide one stays (named by alias).
    let (out, _) = cli(
        &s.url,
        &["profiles", "unmap", "acme", HAIKU, "--application", "bot"],
    );
    assert_eq!(out.trim(), format!("unmapped {HAIKU} for tenant acme"));
    let (_, listed) = s.admin("GET", "/v1/tenants/acme/profiles", None).await;
    let profiles = listed["profiles"].as_array().unwrap();
    assert_eq!(profiles.len(), 1, "{listed}");
    assert!(profiles[0]["application_id"].is_null(), "{listed}");
    let again = cli_output(
        &s.url,
        &["profiles", "unmap", "acme", HAIKU, "--application", "bot"],
    );
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("has no profile"),
        "{again:?}"
    );
    cli(&s.url, &["profiles", "unmap", "acme", "quick"]);
    let (_, listed) = s.admin("GET", "/v1/tenants/acme/profiles", None).await;
    assert_eq!(listed["profiles"], serde_json::json!([]));

    let (out, _) = cli(&s.url, &["aliases", "delete", "quick"]);
    assert_eq!(out.trim(), "deleted alias quick");
    let (_, aliases) = s.admin("GET", "/v1/aliases", None).await;
    assert!(aliases["aliases"].get("quick").is_none(), "{aliases}");
    assert!(!cli_output(&s.url, &["aliases", "delete", "quick"])
        .status
        .success());

    let (out, _) = cli(&s.url, &["prices", "delete", HAIKU]);
    assert_eq!(out.trim(), format!("deleted the price of {HAIKU}"));
    let (status, _) = s
        .raw(
            "GET",
            &format!("/v1/pricing/{HAIKU}"),
            Some(common::TOKEN),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert!(!cli_output(&s.url, &["prices", "delete", HAIKU])
        .status
        .success());
    // A deleted price refuses the model's requests, never charges them as zero.
    let r = s.reserve("r1", &key, HAIKU, 1, Some(1)).await;
    assert_eq!(r["status"], 400, "{r}");
    assert_eq!(
        r["message"],
        format!("no price configured for model {HAIKU}")
    );
}
