//! HTTP routes (axum): the data plane for the filter, the admin API, metrics,
//! health and the OpenAPI document.

use crate::clock::rfc3339;
use crate::dataplane_auth::{self, DataPlaneAuth};
use crate::error::Error;
use crate::keys;
use crate::pricing::{self, PriceInput};
use crate::service::{ProfileInput, Service, TenantDetails, TenantInput};
use crate::store::{AlertRecord, ApiKeyRecord, Balance, Counters, UsageRecord};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tollgate_wire::api::{
    ApiError, CommitBatch, CommitOutcome, CommitResponse, CommitResult, ReleaseRequest, RenewBatch,
    ReserveRequest, ReserveResponse, COMMIT_PATH, LEASE_RENEW_PATH, RELEASE_PATH, RESERVE_PATH,
};

/// The hand-written OpenAPI 3.1 document served at `GET /openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub admin_token: Arc<str>,
    /// Filter tokens and accepted credential types of the data plane.
    pub data_plane: Arc<DataPlaneAuth>,
    /// Also accepted (besides the admin token) on `GET /metrics`.
    pub metrics_token: Option<Arc<str>>,
}

fn error_response(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            message: message.into(),
        }),
    )
        .into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = match &self {
            Error::Invalid(_) | Error::Json(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        error_response(status, self.to_string())
    }
}

/// A JSON body whose rejections are `{"message"}` JSON like every other error.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state)
            .await
            .map_err(|e| error_response(e.status(), e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| error_response(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer_token(parts: &Parts) -> Option<&str> {
    parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
}

/// Proof that the caller presented the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        match bearer_token(parts) {
            Some(t) if keys::constant_time_eq(t, &state.admin_token) => Ok(Admin),
            Some(_) => Err(error_response(
                StatusCode::UNAUTHORIZED,
                "invalid admin token",
            )),
            None => Err(error_response(
                StatusCode::UNAUTHORIZED,
                "missing admin token: send Authorization: Bearer $TOLLGATE_ADMIN_TOKEN",
            )),
        }
    }
}

/// Proof that the caller may read `/metrics`: the metrics token or the admin token.
pub struct MetricsReader;

impl FromRequestParts<AppState> for MetricsReader {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Response> {
        let Some(t) = bearer_token(parts) else {
            return Err(error_response(
                StatusCode::UNAUTHORIZED,
                "missing token: send Authorization: Bearer $TOLLGATE_METRICS_TOKEN (or the admin token)",
            ));
        };
        // Both comparisons run, so timing does not tell which token was close.
        let admin = keys::constant_time_eq(t, &state.admin_token);
        let metrics = state
            .metrics_token
            .as_deref()
            .is_some_and(|m| keys::constant_time_eq(t, m));
        if admin | metrics {
            Ok(MetricsReader)
        } else {
            Err(error_response(
                StatusCode::UNAUTHORIZED,
                "invalid metrics token",
            ))
        }
    }
}

type ApiResult<T> = Result<T, Error>;

pub fn router(state: AppState) -> Router {
    let data_plane = state.data_plane.clone();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
        .route(RESERVE_PATH, post(reserve))
        .route(COMMIT_PATH, post(commit))
        .route(RELEASE_PATH, post(release))
        .route(LEASE_RENEW_PATH, post(renew_leases))
        .route("/v1/tenants", get(list_tenants))
        .route("/v1/tenants/{tenant}", put(put_tenant).get(get_tenant))
        .route("/v1/tenants/{tenant}/keys", post(issue_key))
        .route("/v1/tenants/{tenant}/keys/{key_id}", delete(revoke_key))
        .route(
            "/v1/tenants/{tenant}/sigv4-credentials",
            post(issue_sigv4).get(list_sigv4),
        )
        .route(
            "/v1/tenants/{tenant}/sigv4-credentials/{access_key_id}",
            delete(revoke_sigv4),
        )
        .route(
            "/v1/tenants/{tenant}/profiles",
            put(put_profile).get(list_profiles),
        )
        .route("/v1/pricing", get(list_prices))
        .route("/v1/pricing/{model_id}", put(put_price).get(get_price))
        .route("/v1/aliases", get(list_aliases))
        .route("/v1/aliases/{alias}", put(put_alias))
        .route("/v1/usage", get(usage))
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route") })
        // Over every route (and the fallback), so a data-plane route added later
        // is covered: see `dataplane_auth::is_data_plane_path`.
        .layer(axum::middleware::from_fn_with_state(
            data_plane,
            dataplane_auth::require_filter_token,
        ))
        .with_state(state)
}

// ------------------------------------------------------------------ basics

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(_: MetricsReader, State(s): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.service.metrics.encode(),
    )
        .into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

// ------------------------------------------------------------------ data plane

// The filter token was checked by `dataplane_auth::require_filter_token`.

async fn reserve(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<ReserveRequest>,
) -> ApiResult<Response> {
    if let Some(kind) = s.data_plane.accepted.refused(&req) {
        tracing::warn!(
            request_id = %req.request_id,
            credential = kind.as_str(),
            accepted = %s.data_plane.accepted.describe(),
            "reserve refused: credential type not enabled (--accept-credentials)"
        );
        s.service
            .metrics
            .request("unknown", crate::metrics::Outcome::DeniedAuth);
        let deny = ReserveResponse::Deny(dataplane_auth::not_enabled(kind));
        return Ok(Json(deny).into_response());
    }
    Ok(Json(s.service.reserve(req).await?).into_response())
}

async fn commit(
    State(s): State<AppState>,
    JsonBody(mut batch): JsonBody<CommitBatch>,
) -> ApiResult<Response> {
    // A commit whose `unreserved` request uses a credential type this sidecar
    // does not honour is not charged: it is answered `unknown_request`, as the
    // ledger answers an unreserved request it cannot attribute.
    let refused: Vec<bool> = batch
        .commits
        .iter()
        .map(|c| {
            let kind = c
                .unreserved
                .as_deref()
                .and_then(|r| s.data_plane.accepted.refused(r));
            if let Some(kind) = kind {
                tracing::warn!(
                    request_id = %c.request_id,
                    credential = kind.as_str(),
                    "unreserved commit not charged: credential type not enabled (--accept-credentials)"
                );
            }
            kind.is_some()
        })
        .collect();
    if !refused.contains(&true) {
        let svc = s.service.clone();
        return Ok(
            Json(to_completion(async move { svc.commit(batch).await }).await?).into_response(),
        );
    }
    let all = std::mem::take(&mut batch.commits);
    let mut refused_ids = Vec::new();
    for (c, refused) in all.into_iter().zip(&refused) {
        if *refused {
            refused_ids.push(c.request_id);
        } else {
            batch.commits.push(c);
        }
    }
    let mut passed = if batch.commits.is_empty() {
        Vec::new()
    } else {
        let svc = s.service.clone();
        to_completion(async move { svc.commit(batch).await })
            .await?
            .results
    }
    .into_iter();
    let mut refused_ids = refused_ids.into_iter();
    // Results in the order of the batch.
    let results = refused
        .iter()
        .filter_map(|r| {
            if *r {
                refused_ids.next().map(|request_id| CommitResult {
                    request_id,
                    outcome: CommitOutcome::UnknownRequest,
                    cost_usd: None,
                })
            } else {
                passed.next()
            }
        })
        .collect();
    Ok(Json(CommitResponse { results }).into_response())
}

async fn renew_leases(
    State(s): State<AppState>,
    JsonBody(batch): JsonBody<RenewBatch>,
) -> ApiResult<Response> {
    let svc = s.service.clone();
    Ok(Json(to_completion(async move { svc.renew_leases(batch).await }).await?).into_response())
}

async fn release(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<ReleaseRequest>,
) -> ApiResult<Response> {
    let svc = s.service.clone();
    Ok(Json(to_completion(async move { svc.release(req).await }).await?).into_response())
}

/// Runs a settlement to its end even if the caller hangs up. The server drops a
/// handler whose connection closed (the filter's call timed out, Envoy
/// restarted), and a DynamoDB commit is several writes: cut between them, the
/// claimed commit would wait for the sweeper's recovery while the retry is
/// answered `duplicate`, and the tenant's balance would lag for a minute.
async fn to_completion<T: Send + 'static>(
    work: impl std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
) -> crate::error::Result<T> {
    tokio::spawn(work)
        .await
        .map_err(|e| Error::Internal(format!("settlement task failed: {e}")))?
}

// ------------------------------------------------------------------ tenants

#[derive(Debug, Serialize)]
pub struct BalanceView {
    pub period: String,
    pub budget_usd: Decimal,
    pub spent_usd: Decimal,
    pub reserved_usd: Decimal,
    pub available_usd: Decimal,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub requests: u64,
    pub by_model: BTreeMap<String, ModelView>,
}

/// One model's counters, with its budget when the tenant has one for it.
#[derive(Debug, Serialize)]
pub struct ModelView {
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reserved_usd: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub available_usd: Option<Decimal>,
}

impl From<Balance> for BalanceView {
    fn from(b: Balance) -> Self {
        let t = &b.totals;
        Self {
            period: t.period.clone(),
            budget_usd: t.budget_usd,
            spent_usd: t.counters.spent_usd.normalize(),
            reserved_usd: t.reserved_usd.normalize(),
            available_usd: t.available().normalize(),
            input_tokens: t.counters.input_tokens,
            output_tokens: t.counters.output_tokens,
            cache_read_input_tokens: t.counters.cache_read_input_tokens,
            cache_write_input_tokens: t.counters.cache_write_input_tokens,
            requests: t.counters.requests,
            by_model: b
                .by_model
                .into_iter()
                .map(|(m, mut c)| {
                    c.spent_usd = c.spent_usd.normalize();
                    let limit = b.model_limits.get(&m);
                    let view = ModelView {
                        budget_usd: limit.map(|l| l.budget_usd),
                        reserved_usd: limit.map(|l| l.reserved_usd.normalize()),
                        available_usd: limit.map(|l| l.available(c.spent_usd).normalize()),
                        counters: c,
                    };
                    (m, view)
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct AlertView {
    pub kind: &'static str,
    pub period: String,
    pub fired_at: String,
    pub spent_usd: Decimal,
    pub budget_usd: Decimal,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<Decimal>,
}

impl From<&AlertRecord> for AlertView {
    fn from(a: &AlertRecord) -> Self {
        Self {
            kind: a.kind.as_str(),
            period: a.period.clone(),
            fired_at: rfc3339(a.fired_at_ms),
            spent_usd: a.spent_usd.normalize(),
            budget_usd: a.budget_usd,
            request_id: a.request_id.clone(),
            cost_usd: a.cost_usd,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct KeyView {
    pub key_id: String,
    pub application_id: Option<String>,
    pub created_at: String,
    pub revoked: bool,
}

impl From<&ApiKeyRecord> for KeyView {
    fn from(k: &ApiKeyRecord) -> Self {
        Self {
            key_id: k.key_id.clone(),
            application_id: k.application_id.clone(),
            created_at: rfc3339(k.created_at_ms),
            revoked: k.revoked,
        }
    }
}

fn tenant_view(d: TenantDetails) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": d.config.tenant_id,
        "config": d.config,
        "balance": BalanceView::from(d.balance),
        "alerts": d.alerts.iter().map(AlertView::from).collect::<Vec<_>>(),
        "profiles": d.profiles,
        "keys": d.keys.iter().map(KeyView::from).collect::<Vec<_>>(),
    })
}

async fn list_tenants(_: Admin, State(s): State<AppState>) -> ApiResult<Response> {
    let tenants = s.service.store.list_tenants().await?;
    Ok(Json(serde_json::json!({ "tenants": tenants })).into_response())
}

async fn put_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(input): JsonBody<TenantInput>,
) -> ApiResult<Response> {
    let cfg = s.service.put_tenant(&tenant, input).await?;
    Ok(Json(cfg).into_response())
}

#[derive(Debug, Deserialize)]
struct PeriodQuery {
    period: Option<String>,
}

async fn get_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult<Response> {
    let mut details = s.service.tenant_details(&tenant).await?;
    if let Some(period) = q.period {
        details.balance = s.service.balance(&tenant, &period).await?;
    }
    Ok(Json(tenant_view(details)).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueKeyBody {
    #[serde(default)]
    application_id: Option<String>,
}

impl IssueKeyBody {
    /// The body is optional: empty means no application binding.
    fn parse(body: &[u8]) -> Result<Self, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(body).map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }
}

async fn issue_key(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = IssueKeyBody::parse(&body)?;
    let (record, key) = s.service.issue_key(&tenant, body.application_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "key_id": record.key_id,
            "key": key,
            "tenant_id": record.tenant_id,
            "application_id": record.application_id,
        })),
    )
        .into_response())
}

async fn issue_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = IssueKeyBody::parse(&body)?;
    let (record, secret) = s.service.issue_sigv4(&tenant, body.application_id).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({
            "access_key_id": record.access_key_id,
            "secret_access_key": secret,
            "tenant_id": record.tenant_id,
            "application_id": record.application_id,
        })),
    )
        .into_response())
}

async fn list_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let creds = s.service.list_sigv4(&tenant).await?;
    Ok(Json(serde_json::json!({ "credentials": creds })).into_response())
}

async fn revoke_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, access_key_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    s.service.revoke_sigv4(&tenant, &access_key_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn revoke_key(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, key_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    s.service.revoke_key(&tenant, &key_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn put_profile(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(input): JsonBody<ProfileInput>,
) -> ApiResult<Response> {
    let profile = s.service.put_profile(&tenant, input).await?;
    Ok(Json(profile).into_response())
}

async fn list_profiles(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    s.service.require_tenant(&tenant).await?;
    let profiles = s.service.store.list_profiles(&tenant).await?;
    Ok(Json(serde_json::json!({ "profiles": profiles })).into_response())
}

// ------------------------------------------------------------------ pricing

/// `?region=` of the pricing routes; default: the sidecar's `--pricing-region`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegionQuery {
    region: Option<String>,
}

impl RegionQuery {
    fn region(self, s: &AppState) -> Result<String, Error> {
        match self.region {
            Some(r) => {
                pricing::validate_region(&r).map_err(Error::invalid)?;
                Ok(r)
            }
            None => Ok(s.service.settings.pricing_region.clone()),
        }
    }
}

fn region_query(q: Result<Query<RegionQuery>, QueryRejection>) -> Result<RegionQuery, Error> {
    q.map(|Query(q)| q)
        .map_err(|e| Error::invalid(format!("invalid query: {}", e.body_text())))
}

async fn put_price(
    _: Admin,
    State(s): State<AppState>,
    Path(model_id): Path<String>,
    q: Result<Query<RegionQuery>, QueryRejection>,
    JsonBody(input): JsonBody<PriceInput>,
) -> ApiResult<Response> {
    let region = region_query(q)?.region(&s)?;
    let price = input.into_price(&model_id).map_err(Error::invalid)?;
    s.service.store.put_price_in(&region, &price).await?;
    Ok(Json(price).into_response())
}

async fn get_price(
    _: Admin,
    State(s): State<AppState>,
    Path(model_id): Path<String>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let region = region_query(q)?.region(&s)?;
    let price = s
        .service
        .store
        .get_price_in(&region, &model_id)
        .await?
        .ok_or_else(|| {
            Error::not_found(format!(
                "no price configured for model {model_id} in region {region}"
            ))
        })?;
    Ok(Json(price).into_response())
}

async fn list_prices(
    _: Admin,
    State(s): State<AppState>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let region = region_query(q)?.region(&s)?;
    let prices = s.service.store.list_prices_in(&region).await?;
    Ok(Json(serde_json::json!({ "region": region, "pricing": prices })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    model_id: String,
}

async fn put_alias(
    _: Admin,
    State(s): State<AppState>,
    Path(alias): Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> ApiResult<Response> {
    s.service.put_alias(&alias, &body.model_id).await?;
    Ok(Json(serde_json::json!({"alias": alias, "model_id": body.model_id})).into_response())
}

async fn list_aliases(_: Admin, State(s): State<AppState>) -> ApiResult<Response> {
    let aliases = s.service.store.list_aliases().await?;
    Ok(Json(serde_json::json!({ "aliases": aliases })).into_response())
}

// ------------------------------------------------------------------ usage report

/// Dimensions `GET /v1/usage` can group by.
pub const GROUP_KEYS: &[&str] = &[
    "tenant",
    "application",
    "model",
    "cost_center",
    "environment",
    "user",
];

fn group_value(key: &str, r: &UsageRecord) -> Option<String> {
    match key {
        "tenant" => Some(r.tenant_id.clone()),
        "application" => r.attribution.application_id.clone(),
        "model" => Some(r.model_id.clone()),
        "cost_center" => r.attribution.cost_center.clone(),
        "environment" => r.attribution.environment.clone(),
        "user" => r.attribution.user_id.clone(),
        _ => None,
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct UsageTotals {
    pub requests: u64,
    pub estimated_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub cost_usd: Decimal,
}

/// Groups usage rows by `keys` (exact decimal sums).
pub fn group_usage(
    keys: &[String],
    rows: &[UsageRecord],
) -> Vec<(Vec<Option<String>>, UsageTotals)> {
    let mut groups: BTreeMap<Vec<Option<String>>, UsageTotals> = BTreeMap::new();
    for r in rows {
        let k = keys.iter().map(|k| group_value(k, r)).collect();
        let t = groups.entry(k).or_default();
        t.requests += 1;
        t.estimated_requests += u64::from(r.estimated);
        t.input_tokens = t.input_tokens.saturating_add(r.usage.input_tokens);
        t.output_tokens = t.output_tokens.saturating_add(r.usage.output_tokens);
        t.cache_read_input_tokens = t
            .cache_read_input_tokens
            .saturating_add(r.usage.cache_read_input_tokens);
        t.cache_write_input_tokens = t
            .cache_write_input_tokens
            .saturating_add(r.usage.cache_write_input_tokens);
        t.cost_usd += r.cost_usd;
    }
    groups
        .into_iter()
        .map(|(k, mut t)| {
            t.cost_usd = t.cost_usd.normalize();
            (k, t)
        })
        .collect()
}

fn parse_time(field: &str, v: &str) -> Result<i64, Error> {
    OffsetDateTime::parse(v, &Rfc3339)
        .map(crate::clock::to_millis)
        .map_err(|e| {
            Error::invalid(format!(
                "{field} must be RFC 3339 (e.g. 2026-11-01T00:00:00Z): {e}"
            ))
        })
}

fn csv_field(v: &str) -> String {
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v.to_string()
    }
}

async fn usage(
    _: Admin,
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    for k in q.keys() {
        if !matches!(k.as_str(), "group_by" | "from" | "to" | "format" | "tenant") {
            return Err(Error::invalid(format!("unknown query parameter {k:?}")));
        }
    }
    let group_by: Vec<String> = q
        .get("group_by")
        .map(|g| {
            g.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_else(|| vec!["tenant".to_string()]);
    for g in &group_by {
        if !GROUP_KEYS.contains(&g.as_str()) {
            return Err(Error::invalid(format!(
                "group_by: unknown key {g:?} (use {})",
                GROUP_KEYS.join(",")
            )));
        }
    }
    let from = q.get("from").map(|v| parse_time("from", v)).transpose()?;
    let to = q.get("to").map(|v| parse_time("to", v)).transpose()?;
    let mut rows = s.service.store.usage(from, to).await?;
    if let Some(t) = q.get("tenant") {
        rows.retain(|r| &r.tenant_id == t);
    }
    let groups = group_usage(&group_by, &rows);
    match q.get("format").map(String::as_str).unwrap_or("json") {
        "json" => {
            let rows: Vec<serde_json::Value> = groups
                .into_iter()
                .map(|(k, t)| {
                    let mut obj = serde_json::Map::new();
                    for (name, v) in group_by.iter().zip(k) {
                        obj.insert(name.clone(), serde_json::json!(v));
                    }
                    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&t) {
                        obj.extend(m);
                    }
                    serde_json::Value::Object(obj)
                })
                .collect();
            Ok(Json(serde_json::json!({
                "group_by": group_by,
                "from": q.get("from"),
                "to": q.get("to"),
                "rows": rows,
            }))
            .into_response())
        }
        "csv" => {
            let mut out = String::new();
            let mut header: Vec<String> = group_by.clone();
            header.extend(
                [
                    "requests",
                    "estimated_requests",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_write_input_tokens",
                    "cost_usd",
                ]
                .map(String::from),
            );
            out.push_str(&header.join(","));
            out.push('\n');
            for (k, t) in groups {
                let mut fields: Vec<String> = k
                    .iter()
                    .map(|v| csv_field(v.as_deref().unwrap_or("")))
                    .collect();
                fields.extend([
                    t.requests.to_string(),
                    t.estimated_requests.to_string(),
                    t.input_tokens.to_string(),
                    t.output_tokens.to_string(),
                    t.cache_read_input_tokens.to_string(),
                    t.cache_write_input_tokens.to_string(),
                    t.cost_usd.to_string(),
                ]);
                out.push_str(&fields.join(","));
                out.push('\n');
            }
            Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], out).into_response())
        }
        other => Err(Error::invalid(format!(
            "format must be json or csv, got {other:?}"
        ))),
    }
}

/// Validates a model id from a path segment (used by the CLI too).
pub fn check_model_id(id: &str) -> Result<(), Error> {
    pricing::validate_model_id(id).map_err(Error::invalid)
}
