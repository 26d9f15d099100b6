//! Price tables per region: the `--pricing-region` of a sidecar, `?region=` on
//! the admin API and the CLI, and the SQLite migration to (region, model_id) keys.

mod common;

use clap::Parser;
use common::{cli, d, dec, Setup, TestSidecar, HAIKU, SONNET};
use reqwest::StatusCode;
use serde_json::json;
use tollgate_sidecar::config::{Cli, Command};
use tollgate_sidecar::service::Settings;
use tollgate_sidecar::store::sqlite::{apply_migrations, SqliteStore, MIGRATIONS, SCHEMA_VERSION};
use tollgate_sidecar::store::Store;

async fn regional_sidecar(region: &str) -> TestSidecar {
    TestSidecar::start_with(Setup {
        settings: Settings {
            pricing_region: region.into(),
            ..Settings::default()
        },
        ..Setup::default()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_api_keeps_one_price_table_per_region() {
    // The harness puts sonnet and haiku without ?region=: into eu-west-1.
    let s = regional_sidecar("eu-west-1").await;
    let (st, v) = s.admin("GET", "/v1/pricing", None).await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["region"], "eu-west-1");
    assert_eq!(v["pricing"].as_array().unwrap().len(), 2, "{v}");
    let (_, v) = s.admin("GET", "/v1/pricing?region=global", None).await;
    assert_eq!(v["region"], "global");
    assert!(v["pricing"].as_array().unwrap().is_empty(), "{v}");

    // Another region's prices are kept apart, exactly.
    let (st, v) = s
        .admin(
            "PUT",
            &format!("/v1/pricing/{SONNET}?region=us-east-1"),
            Some(json!({"input": "3.30", "output": 16.5})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    let (st, v) = s
        .admin(
            "GET",
            &format!("/v1/pricing/{SONNET}?region=us-east-1"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{v}");
    assert_eq!(v["input"], "3.30");
    assert_eq!(dec(&v["output"]), d("16.5"));
    let (_, v) = s.admin("GET", &format!("/v1/pricing/{SONNET}"), None).await;
    assert_eq!(
        v["input"], "3.00",
        "the sidecar's own region is unchanged: {v}"
    );
    let (st, v) = s
        .admin(
            "GET",
            &format!("/v1/pricing/{HAIKU}?region=us-east-1"),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND, "{v}");
    assert!(v["message"].as_str().unwrap().contains("us-east-1"), "{v}");

    // Bad regions and unknown query keys are refused.
    for q in ["?region=US_EAST", "?region=", "?regoin=us-east-1"] {
        let (st, v) = s.admin("GET", &format!("/v1/pricing{q}"), None).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}: {v}");
    }

    // Reserves are priced from the sidecar's region only.
    let key = s.tenant("acme", json!({})).await;
    let (st, _) = s
        .admin(
            "PUT",
            "/v1/pricing/amazon.nova-lite-v1:0?region=us-east-1",
            Some(json!({"input": "0.06", "output": "0.24"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let r = s
        .reserve("r1", &key, "amazon.nova-lite-v1:0", 10, Some(10))
        .await;
    assert_eq!(r["decision"], "deny", "{r}");
    let r = s.reserve("r2", &key, SONNET, 1000, Some(1000)).await;
    assert_eq!(r["decision"], "allow", "{r}");
    assert_eq!(dec(&r["hold_usd"]), d("0.018"), "eu-west-1 price: {r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cli_prices_commands_take_a_region() {
    let s = TestSidecar::start().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prices.json");
    std::fs::write(
        &file,
        json!([{"model_id": "x.model", "input": "1.1", "output": "2.2"}]).to_string(),
    )
    .unwrap();
    let run = |args: &[&str]| cli(&s.url, args).0;
    run(&[
        "prices",
        "import",
        file.to_str().unwrap(),
        "--region",
        "ap-south-1",
    ]);
    run(&[
        "prices",
        "set",
        "y.model",
        "--input",
        "1",
        "--output",
        "2",
        "--region",
        "ap-south-1",
    ]);
    let listed: serde_json::Value =
        serde_json::from_str(&run(&["prices", "list", "--region", "ap-south-1"])).unwrap();
    assert_eq!(listed["region"], "ap-south-1");
    assert_eq!(listed["pricing"].as_array().unwrap().len(), 2, "{listed}");
    let (st, _) = s.admin("GET", "/v1/pricing/x.model", None).await;
    assert_eq!(st, StatusCode::NOT_FOUND, "not in the default region");
}

#[test]
fn serve_takes_pricing_region_and_the_older_flag_name() {
    let region = |args: &[&str]| match Cli::try_parse_from(args).expect("parses").command {
        Command::Serve(a) => a.ledger.dynamodb.pricing_region,
        _ => unreachable!(),
    };
    assert_eq!(
        region(&["tollgate-sidecar", "serve", "--pricing-region", "us-east-1"]).as_deref(),
        Some("us-east-1")
    );
    assert_eq!(
        region(&[
            "tollgate-sidecar",
            "serve",
            "--dynamodb-pricing-region",
            "eu-west-1"
        ])
        .as_deref(),
        Some("eu-west-1")
    );
    assert!(Cli::try_parse_from([
        "tollgate-sidecar",
        "serve",
        "--pricing-region",
        "Bad Region"
    ])
    .is_err());
}

#[tokio::test]
async fn sqlite_prices_migrate_to_the_global_region() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("v3.db");
    {
        let mut conn = rusqlite::Connection::open(&db).unwrap();
        apply_migrations(&mut conn, &MIGRATIONS[..3]).unwrap();
        conn.execute(
            "INSERT INTO pricing VALUES (?1, '3.00', '15.00', NULL, '3.75')",
            [SONNET],
        )
        .unwrap();
    }
    let store = SqliteStore::open(&db).expect("migrates");
    let p = store
        .get_price_in("global", SONNET)
        .await
        .unwrap()
        .expect("kept in global");
    assert_eq!(p.input.to_string(), "3.00");
    assert_eq!(p.cache_write, Some(d("3.75")));
    assert_eq!(store.get_price_in("us-east-1", SONNET).await.unwrap(), None);
    drop(store);
    let version: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, SCHEMA_VERSION);
    const { assert!(SCHEMA_VERSION >= 4) };

    // A store serving another region reads and writes there by default.
    let store = SqliteStore::open(&db)
        .unwrap()
        .with_pricing_region("us-east-1");
    assert_eq!(store.get_price(SONNET).await.unwrap(), None);
    store.put_price(&p).await.unwrap();
    assert_eq!(
        store.get_price_in("us-east-1", SONNET).await.unwrap(),
        Some(p)
    );
}
