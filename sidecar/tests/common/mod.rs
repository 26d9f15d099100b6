//! In-process sidecar on an ephemeral loopback port with a temp SQLite file.
#![allow(dead_code)]

use reqwest::StatusCode;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use time::macros::datetime;
use tollgate_sidecar::clock::ManualClock;
use tollgate_sidecar::dataplane_auth::{AcceptedCredentials, DataPlaneAuth, FilterTokens};
use tollgate_sidecar::server::{build, Options};
use tollgate_sidecar::service::{Service, Settings};

pub const TOKEN: &str = "test-admin-token";
/// The filter token every test sidecar accepts (sent by [`TestSidecar::data`]).
pub const FILTER_TOKEN: &str = "test-filter-token-0123456789";
pub const FILTER_TOKEN_HEADER: &str = "x-tollgate-filter-token";
pub const SONNET: &str = "anthropic.claude-3-sonnet-20240229-v1:0";
pub const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

pub struct TestSidecar {
    pub url: String,
    pub http: reqwest::Client,
    pub service: Arc<Service>,
    pub clock: Arc<ManualClock>,
    pub db: PathBuf,
    server: tokio::task::JoinHandle<()>,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for TestSidecar {
    fn drop(&mut self) {
        self.server.abort();
    }
}

#[derive(Default)]
pub struct Setup {
    pub settings: Settings,
    pub webhooks: Vec<String>,
    pub seed: Option<PathBuf>,
    /// Default: [`FILTER_TOKEN`] required, every credential type accepted (the
    /// ledger tests use trusted-header and JWT identities).
    pub data_plane: Option<DataPlaneAuth>,
    pub metrics_token: Option<String>,
}

/// [`FILTER_TOKEN`] required; every credential type accepted.
pub fn default_data_plane() -> DataPlaneAuth {
    DataPlaneAuth::new(
        FilterTokens::new(None, Some(FILTER_TOKEN), Some(TOKEN)).expect("filter token"),
        AcceptedCredentials::all(),
    )
}

impl TestSidecar {
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    pub async fn start_with(setup: Setup) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("ledger.db");
        let mut s = Self::open(&db, setup).await;
        s._dir = Some(dir);
        s
    }

    /// Opens (or reopens) a sidecar on an existing database path.
    pub async fn open(db: &Path, setup: Setup) -> Self {
        Self::open_on(db, setup, None).await
    }

    /// A sidecar on a given store (e.g. DynamoDB on dynalite), behind the
    /// configuration cache as `serve` puts it.
    pub async fn on_store(store: Arc<dyn tollgate_sidecar::store::Store>, setup: Setup) -> Self {
        Self::open_on(Path::new("unused.db"), setup, Some(store)).await
    }

    async fn open_on(
        db: &Path,
        setup: Setup,
        store: Option<Arc<dyn tollgate_sidecar::store::Store>>,
    ) -> Self {
        let clock = Arc::new(ManualClock::new(datetime!(2026-11-23 12:00 UTC)));
        let opts = Options {
            db: db.to_path_buf(),
            seed: setup.seed,
            settings: setup.settings,
            webhooks: setup.webhooks,
            admin_token: TOKEN.to_string(),
            data_plane: Arc::new(setup.data_plane.unwrap_or_else(default_data_plane)),
            metrics_token: setup.metrics_token,
            clock: clock.clone(),
        };
        let sidecar = match store {
            None => build(&opts).await.expect("build sidecar"),
            Some(store) => tollgate_sidecar::server::build_with_store(
                &opts,
                tollgate_sidecar::store::cached::CachedStore::wrap(
                    store,
                    tollgate_sidecar::store::cached::DEFAULT_TTL,
                ),
            )
            .await
            .expect("build sidecar"),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = sidecar.router;
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        let me = Self {
            url: format!("http://{addr}"),
            http: reqwest::Client::new(),
            service: sidecar.service,
            clock,
            db: db.to_path_buf(),
            server,
            _dir: None,
        };
        me.base_config().await;
        me
    }

    async fn base_config(&self) {
        for (alias, id) in [("claude-3-sonnet", SONNET), ("claude-3-haiku", HAIKU)] {
            let (st, _) = self
                .admin(
                    "PUT",
                    &format!("/v1/aliases/{alias}"),
                    Some(json!({"model_id": id})),
                )
                .await;
            assert_eq!(st, StatusCode::OK);
        }
        let (st, _) = self
            .admin(
                "PUT",
                &format!("/v1/pricing/{SONNET}"),
                Some(json!({"input": "3.00", "output": "15.00"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
        let (st, _) = self
            .admin(
                "PUT",
                &format!("/v1/pricing/{HAIKU}"),
                Some(json!({"input": 0.25, "output": 1.25, "cache_read": "0.03", "cache_write": "0.30"})),
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }

    pub async fn raw(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, String) {
        self.raw_with(method, path, token, &[], body).await
    }

    /// [`Self::raw`] with extra headers.
    pub async fn raw_with(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> (StatusCode, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut req = self.http.request(method, format!("{}{}", self.url, path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("send");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    /// A data-plane call with the filter token.
    pub async fn data_raw(&self, path: &str, body: Value) -> (StatusCode, String) {
        self.raw_with(
            "POST",
            path,
            None,
            &[(FILTER_TOKEN_HEADER, FILTER_TOKEN)],
            Some(body),
        )
        .await
    }

    /// `GET /metrics` with the admin token.
    pub async fn metrics(&self) -> String {
        let (st, m) = self.raw("GET", "/metrics", Some(TOKEN), None).await;
        assert_eq!(st, StatusCode::OK, "{m}");
        m
    }

    /// Sends a literal JSON text with the admin token.
    pub async fn raw_text(&self, method: &str, path: &str, body: &str) -> (StatusCode, String) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let resp = self
            .http
            .request(method, format!("{}{}", self.url, path))
            .bearer_auth(TOKEN)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("send");
        let status = resp.status();
        (status, resp.text().await.expect("body"))
    }

    pub async fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let (st, text) = self.raw(method, path, Some(TOKEN), body).await;
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (st, v)
    }

    pub async fn data(&self, path: &str, body: Value) -> Value {
        let (st, text) = self.data_raw(path, body).await;
        assert_eq!(st, StatusCode::OK, "{path}: {text}");
        serde_json::from_str(&text).expect("json")
    }

    /// Creates a tenant; returns a fresh bearer key for it.
    pub async fn tenant(&self, id: &str, extra: Value) -> String {
        let mut body =
            json!({"budget_usd": "10.00", "alert_threshold": "0.8", "reset_cycle": "monthly"});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        let (st, v) = self
            .admin("PUT", &format!("/v1/tenants/{id}"), Some(body))
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        let (st, v) = self
            .admin(
                "POST",
                &format!("/v1/tenants/{id}/keys"),
                Some(json!({"application_id": null})),
            )
            .await;
        assert_eq!(st, StatusCode::CREATED, "{v}");
        v["key"].as_str().expect("key").to_string()
    }

    pub async fn reserve(
        &self,
        request_id: &str,
        key: &str,
        model: &str,
        input: u64,
        max_out: Option<u64>,
    ) -> Value {
        let mut body = json!({
            "request_id": request_id,
            "credential": {"type": "bearer", "key": key},
            "operation": "converse",
            "model": model,
            "input_tokens_estimate": input,
        });
        if let Some(m) = max_out {
            body["max_output_tokens"] = json!(m);
        }
        self.data("/v1/reserve", body).await
    }

    pub async fn commit(&self, request_id: &str, input: u64, output: u64) -> Value {
        self.data(
            "/v1/commit",
            json!({"commits": [{"request_id": request_id, "usage": {"input_tokens": input, "output_tokens": output}}]}),
        )
        .await
    }

    pub async fn balance(&self, tenant: &str) -> Value {
        let (st, v) = self
            .admin("GET", &format!("/v1/tenants/{tenant}"), None)
            .await;
        assert_eq!(st, StatusCode::OK, "{v}");
        v
    }
}

pub fn dec(v: &Value) -> rust_decimal::Decimal {
    v.as_str()
        .unwrap_or_else(|| panic!("not a decimal string: {v}"))
        .parse()
        .expect("decimal")
}

pub fn d(s: &str) -> rust_decimal::Decimal {
    s.parse().expect("decimal")
}

/// Runs the real `tollgate-sidecar` binary as an admin client of `url`.
pub fn cli_output(url: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_tollgate-sidecar"))
        .args(args)
        .env("TOLLGATE_URL", url)
        .env("TOLLGATE_ADMIN_TOKEN", TOKEN)
        .env_remove("TOLLGATE_FILTER_TOKEN")
        .output()
        .expect("run tollgate-sidecar")
}

/// [`cli_output`] that must succeed; returns its stdout and stderr.
pub fn cli(url: &str, args: &[&str]) -> (String, String) {
    let out = cli_output(url, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{args:?}: {stderr}");
    (String::from_utf8_lossy(&out.stdout).into_owned(), stderr)
}
