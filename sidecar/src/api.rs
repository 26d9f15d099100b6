//! HTTP routes (axum): the data plane for the filter, the admin API, metrics,
//! health and the OpenAPI document.

use crate::admin::{ProfileInput, TenantDetails, TenantInput};
use crate::clock::rfc3339;
use crate::dataplane_auth::{self, DataPlaneAuth};
use crate::error::Error;
use crate::keys;
use crate::ledger::AlertKind;
use crate::pricing::{self, ModelPrice, PriceInput};
use crate::service::Service;
use crate::store::{
    AlertRecord, ApiKeyRecord, Balance, BudgetLimit, Counters, OutboxEntry, OutboxState, Profile,
    ScopeRow, SigV4CredentialRecord, TenantConfig, UsageRecord,
};
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use rust_decimal::Decimal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tollgate_wire::api::{
    ApiError, CommitBatch, CommitOutcome, CommitResponse, CommitResult, ReleaseRequest,
    ReleaseResponse, RenewBatch, RenewResponse, ReserveRequest, ReserveResponse, SelfRequest,
    SelfResponse, COMMIT_PATH, LEASE_RENEW_PATH, RELEASE_PATH, RESERVE_PATH, SELF_PATH,
};
use tollgate_wire::openapi::Money;
use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, Type};
use utoipa::openapi::{RefOr, Schema};
use utoipa::{IntoParams, PartialSchema, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Upstream(_) => StatusCode::BAD_GATEWAY,
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

/// Every route with its OpenAPI operation: `routes!` takes the path and method
/// from each handler's `#[utoipa::path]`, so a route cannot be served without
/// being documented. Add routes here only through `routes!`.
pub fn routes() -> OpenApiRouter<AppState> {
    use utoipa::OpenApi;
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
        .routes(routes!(reserve))
        .routes(routes!(commit))
        .routes(routes!(release))
        .routes(routes!(renew_leases))
        .routes(routes!(self_view))
        .routes(routes!(list_tenants))
        .routes(routes!(put_tenant, get_tenant, delete_tenant))
        .routes(routes!(issue_key, list_keys))
        .routes(routes!(revoke_key))
        .routes(routes!(issue_sigv4, list_sigv4))
        .routes(routes!(revoke_sigv4))
        .routes(routes!(put_profile, list_profiles))
        .routes(routes!(delete_profile))
        .routes(routes!(crate::aws::routes::create_inference_profile))
        .routes(routes!(crate::aws::routes::delete_inference_profile))
        .routes(routes!(crate::aws::routes::sync_inference_profiles))
        .routes(routes!(list_prices))
        .routes(routes!(put_price, get_price, delete_price))
        .routes(routes!(list_aliases))
        .routes(routes!(put_alias, delete_alias))
        .routes(routes!(usage))
        .routes(routes!(list_outbox))
        .routes(routes!(retry_outbox))
}

pub fn router(state: AppState) -> Router {
    let data_plane = state.data_plane.clone();
    let (router, _) = routes().split_for_parts();
    router
        .fallback(|| async { error_response(StatusCode::NOT_FOUND, "no such route") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            error_response(
                StatusCode::METHOD_NOT_ALLOWED,
                format!("{method} is not allowed on this route (see /openapi.json)"),
            )
        })
        // Over every route (and the fallback), so a data-plane route added later
        // is covered: see `dataplane_auth::is_data_plane_path`.
        .layer(axum::middleware::from_fn_with_state(
            data_plane,
            dataplane_auth::require_filter_token,
        ))
        .with_state(state)
}

// ------------------------------------------------------------------ basics

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[utoipa::path(get, path = "/healthz", tag = "ops", summary = "Liveness",
    responses((status = 200, description = "The sidecar is up", body = Health)))]
async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The store is not usable now.
#[derive(Debug, Serialize, ToSchema)]
pub struct NotReady {
    #[schema(example = "not ready: table fleet-TenantBudgets is UPDATING, not ACTIVE")]
    pub message: String,
}

#[utoipa::path(get, path = "/readyz", tag = "ops", summary = "Readiness",
    description = "Checks the store now (SQLite: a read and a write through the ledger writer; \
        DynamoDB: every table ACTIVE). Use it for readiness probes; `/healthz` is liveness.",
    responses(
        (status = 200, description = "Ready to take traffic", body = Health),
        (status = 503, description = "The store is not usable", body = NotReady)))]
async fn readyz(State(s): State<AppState>) -> Response {
    match s.service.store.check_ready().await {
        Ok(()) => Json(Health { status: "ready" }).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(NotReady {
                    message: format!("not ready: {e}"),
                }),
            )
                .into_response()
        }
    }
}

#[utoipa::path(get, path = "/metrics", tag = "ops",
    summary = "Prometheus/OpenMetrics counters",
    security(("metricsToken" = []), ("adminToken" = [])),
    responses((status = 200, description = "OpenMetrics text",
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String)))]
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

#[utoipa::path(get, path = "/openapi.json", tag = "ops", summary = "This document",
    responses((status = 200, description = "OpenAPI 3.1 document", body = Object)))]
async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        crate::openapi::json(),
    )
        .into_response()
}

// ------------------------------------------------------------------ data plane

// The filter token was checked by `dataplane_auth::require_filter_token`.

#[utoipa::path(post, path = RESERVE_PATH, tag = "data-plane",
    summary = "Admit a request and hold budget for it, or grant a lease",
    request_body = ReserveRequest,
    responses(
        (status = 200, description = "Allow, deny or lease. A denial is still 200: it carries the Bedrock-shaped error (status, x-amzn-ErrorType, message) the filter answers the client with", body = ReserveResponse),
        (status = 400, description = "Malformed call (invalid JSON body)", body = ApiError),
    ))]
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

#[utoipa::path(post, path = SELF_PATH, tag = "data-plane",
    summary = "A tenant's own balance and limits, for the credential the gateway received on GET /tollgate/v1/self",
    request_body = SelfRequest,
    responses(
        (status = 200, description = "The tenant's view (`view` is a SelfView), or the Bedrock-shaped denial its credential earns", body = SelfResponse),
        (status = 400, description = "Malformed call (invalid JSON body)", body = ApiError),
    ))]
async fn self_view(
    State(s): State<AppState>,
    JsonBody(req): JsonBody<SelfRequest>,
) -> ApiResult<Response> {
    if let Some(kind) = s.data_plane.accepted.refused_credential(&req.credential) {
        let deny = SelfResponse::Deny(dataplane_auth::not_enabled(kind));
        return Ok(Json(deny).into_response());
    }
    Ok(Json(s.service.self_view(req).await?).into_response())
}

#[utoipa::path(post, path = COMMIT_PATH, tag = "data-plane",
    summary = "Settle actual usage (batch, idempotent per request id)",
    request_body = CommitBatch,
    responses(
        (status = 200, description = "One result per commit, in the order of the batch", body = CommitResponse),
        (status = 400, description = "Malformed call (invalid JSON body)", body = ApiError),
    ))]
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

#[utoipa::path(post, path = LEASE_RENEW_PATH, tag = "data-plane",
    summary = "Top up, return and re-validate budget leases (batch)",
    request_body = RenewBatch,
    responses(
        (status = 200, description = "One result per lease: renewed (with the budget added) or closed (stop admitting from it)", body = RenewResponse),
        (status = 400, description = "Malformed call (invalid JSON body)", body = ApiError),
    ))]
async fn renew_leases(
    State(s): State<AppState>,
    JsonBody(batch): JsonBody<RenewBatch>,
) -> ApiResult<Response> {
    let svc = s.service.clone();
    Ok(Json(to_completion(async move { svc.renew_leases(batch).await }).await?).into_response())
}

#[utoipa::path(post, path = RELEASE_PATH, tag = "data-plane",
    summary = "Give a hold back (Bedrock charged nothing)",
    request_body = ReleaseRequest,
    responses(
        (status = 200, description = "Released, or already settled or unknown (idempotent)", body = ReleaseResponse),
        (status = 400, description = "Malformed call (invalid JSON body)", body = ApiError),
    ))]
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

/// A tenant's balance for one period.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalanceView {
    /// `2026-11` (monthly), `2026-11-23` (daily) or `all`.
    pub period: String,
    #[schema(value_type = Money)]
    pub budget_usd: Decimal,
    #[schema(value_type = Money)]
    pub spent_usd: Decimal,
    #[schema(value_type = Money)]
    pub reserved_usd: Decimal,
    #[schema(value_type = Money)]
    pub available_usd: Decimal,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    pub requests: u64,
    pub by_model: BTreeMap<String, ScopeView>,
    /// Applications with a budget, by application ID (counted while one is set).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_application: BTreeMap<String, ScopeView>,
    /// Users with a budget (their own or the default), by user ID.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_user: BTreeMap<String, ScopeView>,
}

/// One model's, application's or user's counters, with its budget when it has one.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScopeView {
    #[serde(flatten)]
    pub counters: Counters,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[schema(value_type = Option<Money>)]
    pub budget_usd: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[schema(value_type = Option<Money>)]
    pub reserved_usd: Option<Decimal>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[schema(value_type = Option<Money>)]
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
                .map(|(m, c)| {
                    let view = ScopeView::of(c, b.model_limits.get(&m));
                    (m, view)
                })
                .collect(),
            by_application: scope_views(b.by_application),
            by_user: scope_views(b.by_user),
        }
    }
}

fn scope_views(rows: BTreeMap<String, ScopeRow>) -> BTreeMap<String, ScopeView> {
    rows.into_iter()
        .map(|(id, r)| (id, ScopeView::of(r.counters, Some(&r.limit))))
        .collect()
}

impl ScopeView {
    fn of(mut c: Counters, limit: Option<&BudgetLimit>) -> Self {
        c.spent_usd = c.spent_usd.normalize();
        Self {
            budget_usd: limit.map(|l| l.budget_usd),
            reserved_usd: limit.map(|l| l.reserved_usd.normalize()),
            available_usd: limit.map(|l| l.available(c.spent_usd).normalize()),
            counters: c,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AlertView {
    /// Stable per (tenant, period, scope, kind, threshold); deliveries carry it.
    pub alert_id: String,
    #[schema(value_type = AlertKind)]
    pub kind: &'static str,
    pub period: String,
    /// The budget: `tenant`, `model:<model id>`, `app:<application id>` or
    /// `user:<user id>`.
    pub scope: String,
    /// The fraction crossed (`threshold` alerts).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[schema(value_type = Option<Money>)]
    pub threshold: Option<Decimal>,
    #[schema(format = DateTime)]
    pub fired_at: String,
    #[schema(value_type = Money)]
    pub spent_usd: Decimal,
    #[schema(value_type = Money)]
    pub budget_usd: Decimal,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub request_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    #[schema(value_type = Option<Money>)]
    pub cost_usd: Option<Decimal>,
}

impl From<&AlertRecord> for AlertView {
    fn from(a: &AlertRecord) -> Self {
        Self {
            alert_id: a.alert_id(),
            kind: a.kind.as_str(),
            period: a.period.clone(),
            scope: a.scope.clone(),
            threshold: a.threshold,
            fired_at: rfc3339(a.fired_at_ms),
            spent_usd: a.spent_usd.normalize(),
            budget_usd: a.budget_usd,
            request_id: a.request_id.clone(),
            cost_usd: a.cost_usd,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyView {
    pub key_id: String,
    pub application_id: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    pub revoked: bool,
    /// When the key stops working; absent when it does not expire.
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
    /// Whether the key is past its expiry now.
    pub expired: bool,
    /// When a request last authenticated with it (to within the sweep
    /// interval; a gateway admitting from a lease reports at each renewal).
    #[schema(format = DateTime)]
    pub last_used_at: Option<String>,
}

impl KeyView {
    fn of(k: &ApiKeyRecord, now_ms: i64) -> Self {
        Self {
            key_id: k.key_id.clone(),
            application_id: k.application_id.clone(),
            created_at: rfc3339(k.created_at_ms),
            revoked: k.revoked,
            expires_at: k.expires_at_ms.map(rfc3339),
            expired: k.expired(now_ms),
            last_used_at: k.last_used_at_ms.map(rfc3339),
        }
    }
}

/// `GET /v1/tenants/{tenant}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantView {
    pub tenant_id: String,
    pub config: TenantConfig,
    pub balance: BalanceView,
    pub alerts: Vec<AlertView>,
    pub profiles: Vec<Profile>,
    pub keys: Vec<KeyView>,
}

impl TenantView {
    fn of(d: TenantDetails, now_ms: i64) -> Self {
        Self {
            tenant_id: d.config.tenant_id.clone(),
            config: d.config,
            balance: BalanceView::from(d.balance),
            alerts: d.alerts.iter().map(AlertView::from).collect(),
            profiles: d.profiles,
            keys: d.keys.iter().map(|k| KeyView::of(k, now_ms)).collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantConfig>,
}

/// Path parameters, named as in the routes.
const TENANT: &str = "Tenant id: 1–128 of A-Z a-z 0-9 . _ : @ -";

#[utoipa::path(get, path = "/v1/tenants", tag = "admin", summary = "List tenants",
    security(("adminToken" = [])),
    responses((status = 200, description = "Every tenant's configuration", body = TenantList)))]
async fn list_tenants(_: Admin, State(s): State<AppState>) -> ApiResult<Response> {
    let tenants = s.service.store.list_tenants().await?;
    Ok(Json(TenantList { tenants }).into_response())
}

#[utoipa::path(put, path = "/v1/tenants/{tenant}", tag = "admin",
    summary = "Create or update a tenant (budget, limits, allowed models, profiles, imported keys)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    request_body = TenantInput,
    responses(
        (status = 200, description = "The stored configuration", body = TenantConfig),
        (status = 400, description = "Invalid body or field (the message names it)", body = ApiError),
    ))]
async fn put_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(input): JsonBody<TenantInput>,
) -> ApiResult<Response> {
    let cfg = s.service.admin().put_tenant(&tenant, input).await?;
    Ok(Json(cfg).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct PeriodQuery {
    /// Balance of this period (`2026-11`, `2026-11-23`) instead of the current one.
    period: Option<String>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}", tag = "admin",
    summary = "A tenant's configuration, balance, alerts, profiles and keys",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT), PeriodQuery),
    responses(
        (status = 200, description = "The tenant", body = TenantView),
        (status = 400, description = "Invalid period", body = ApiError),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn get_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    Query(q): Query<PeriodQuery>,
) -> ApiResult<Response> {
    let mut details = s.service.admin().tenant_details(&tenant).await?;
    if let Some(period) = q.period {
        details.balance = s.service.admin().balance(&tenant, &period).await?;
    }
    let now_ms = crate::clock::to_millis(s.service.clock.now());
    Ok(Json(TenantView::of(details, now_ms)).into_response())
}

/// Optional body of the issue routes.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct IssueKeyBody {
    /// Bind the credential to this application (its profiles, its usage label).
    #[serde(default)]
    application_id: Option<String>,
    /// Bearer keys only: refuse the key from this instant (RFC 3339).
    #[serde(default)]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// Bearer keys only: refuse the key this many seconds after issue.
    #[serde(default)]
    expires_in_secs: Option<u64>,
}

impl IssueKeyBody {
    /// The expiry asked for, in ms since the epoch (`now_ms` for `expires_in_secs`).
    fn expiry_ms(&self, now_ms: i64) -> Result<Option<i64>, Error> {
        match (&self.expires_at, self.expires_in_secs) {
            (Some(_), Some(_)) => Err(Error::invalid(
                "give expires_at or expires_in_secs, not both",
            )),
            (Some(at), None) => parse_time("expires_at", at).map(Some),
            (None, Some(secs)) => {
                let ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
                Ok(Some(now_ms.saturating_add(ms)))
            }
            (None, None) => Ok(None),
        }
    }

    /// The body is optional: empty means no application binding.
    fn parse(body: &[u8]) -> Result<Self, Error> {
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        serde_json::from_slice(body).map_err(|e| Error::invalid(format!("invalid JSON body: {e}")))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedKey {
    pub key_id: String,
    /// `tg_<base64url 32 bytes>`; shown once, stored hashed.
    pub key: String,
    pub tenant_id: String,
    pub application_id: Option<String>,
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/keys", tag = "admin",
    summary = "Issue a bearer key",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    request_body(content = Option<IssueKeyBody>, description = "Optional; empty means no application binding"),
    responses(
        (status = 201, description = "The key, shown once", body = IssuedKey),
        (status = 400, description = "Invalid body or application id", body = ApiError),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn issue_key(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = IssueKeyBody::parse(&body)?;
    let now_ms = crate::clock::to_millis(s.service.clock.now());
    let expires_at_ms = body.expiry_ms(now_ms)?;
    let (record, key) = s
        .service
        .admin()
        .issue_key(&tenant, body.application_id, expires_at_ms)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedKey {
            key_id: record.key_id,
            key,
            tenant_id: record.tenant_id,
            application_id: record.application_id,
            expires_at: record.expires_at_ms.map(rfc3339),
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct KeyList {
    pub keys: Vec<KeyView>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "admin",
    summary = "List a tenant's bearer keys: ids, applications, creation dates, revoked or not (never the keys)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    responses(
        (status = 200, description = "The keys", body = KeyList),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn list_keys(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let keys = s.service.admin().list_keys(&tenant).await?;
    let now_ms = crate::clock::to_millis(s.service.clock.now());
    Ok(Json(KeyList {
        keys: keys.iter().map(|k| KeyView::of(k, now_ms)).collect(),
    })
    .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct IssuedSigV4Credential {
    pub access_key_id: String,
    /// Shown once; stored sealed under `TOLLGATE_SECRET_KEY`.
    pub secret_access_key: String,
    pub tenant_id: String,
    pub application_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/tenants/{tenant}/sigv4-credentials", tag = "admin",
    summary = "Issue a SigV4 credential (access key id + secret)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    request_body(content = Option<IssueKeyBody>, description = "Optional; empty means no application binding"),
    responses(
        (status = 201, description = "The credential, secret shown once", body = IssuedSigV4Credential),
        (status = 400, description = "Invalid body or application id", body = ApiError),
        (status = 404, description = "No such tenant", body = ApiError),
        (status = 500, description = "No TOLLGATE_SECRET_KEY to seal the secret with, or a store failure", body = ApiError),
    ))]
async fn issue_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let body = IssueKeyBody::parse(&body)?;
    if body.expires_at.is_some() || body.expires_in_secs.is_some() {
        return Err(Error::invalid(
            "SigV4 credentials have no expiry; revoke them when they are no longer needed",
        ));
    }
    let (record, secret) = s
        .service
        .admin()
        .issue_sigv4(&tenant, body.application_id)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedSigV4Credential {
            access_key_id: record.access_key_id,
            secret_access_key: secret,
            tenant_id: record.tenant_id,
            application_id: record.application_id,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SigV4CredentialList {
    pub credentials: Vec<SigV4CredentialRecord>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/sigv4-credentials", tag = "admin",
    summary = "List a tenant's SigV4 credentials (never their secrets)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    responses(
        (status = 200, description = "The credentials", body = SigV4CredentialList),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn list_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    let credentials = s.service.admin().list_sigv4(&tenant).await?;
    Ok(Json(SigV4CredentialList { credentials }).into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/sigv4-credentials/{access_key_id}", tag = "admin",
    summary = "Revoke a SigV4 credential (leases granted with it close at their next renewal)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT), ("access_key_id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such tenant or credential", body = ApiError),
    ))]
async fn revoke_sigv4(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, access_key_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    s.service
        .admin()
        .revoke_sigv4(&tenant, &access_key_id)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key_id}", tag = "admin",
    summary = "Revoke a bearer key (leases granted with it close at their next renewal)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT), ("key_id" = String, Path)),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, description = "No such tenant or key", body = ApiError),
    ))]
async fn revoke_key(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, key_id)): Path<(String, String)>,
) -> ApiResult<Response> {
    s.service.admin().revoke_key(&tenant, &key_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(put, path = "/v1/tenants/{tenant}/profiles", tag = "admin",
    summary = "Map (tenant, application, model) to an application inference profile ARN",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    request_body = ProfileInput,
    responses(
        (status = 200, description = "The stored mapping (model resolved)", body = Profile),
        (status = 400, description = "Invalid body, model or ARN", body = ApiError),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn put_profile(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(input): JsonBody<ProfileInput>,
) -> ApiResult<Response> {
    let profile = s.service.admin().put_profile(&tenant, input).await?;
    Ok(Json(profile).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ProfileQuery {
    /// The application the mapping is for; absent for the tenant-wide mapping.
    pub application: Option<String>,
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/profiles/{model}", tag = "admin",
    summary = "Remove a profile mapping (requests then use the tenant-wide mapping, or the model)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT),
           ("model" = String, Path, description = "Model ID or alias, as mapped"),
           ProfileQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such tenant or mapping", body = ApiError),
    ))]
async fn delete_profile(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, model)): Path<(String, String)>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q.map_err(|e| Error::invalid(format!("invalid query: {}", e.body_text())))?;
    s.service
        .admin()
        .delete_profile(&tenant, q.application.as_deref(), &model)
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileList {
    pub profiles: Vec<Profile>,
}

#[utoipa::path(get, path = "/v1/tenants/{tenant}/profiles", tag = "admin",
    summary = "List a tenant's profile mappings",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    responses(
        (status = 200, description = "The mappings", body = ProfileList),
        (status = 404, description = "No such tenant", body = ApiError),
    ))]
async fn list_profiles(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    s.service.admin().require_tenant(&tenant).await?;
    let profiles = s.service.store.list_profiles(&tenant).await?;
    Ok(Json(ProfileList { profiles }).into_response())
}

// ------------------------------------------------------------------ pricing

/// `?region=` of the pricing routes; default: the sidecar's `--pricing-region`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RegionQuery {
    /// AWS region of the price table (e.g. `us-east-1`); default: `--pricing-region`.
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

const MODEL_ID: &str = "Base model ID (e.g. `anthropic.claude-sonnet-4-5-20250929-v1:0`)";

#[utoipa::path(put, path = "/v1/pricing/{model_id}", tag = "admin",
    summary = "Set a model's price (USD per 1M tokens)",
    security(("adminToken" = [])),
    params(("model_id" = String, Path, description = MODEL_ID), RegionQuery),
    request_body = PriceInput,
    responses(
        (status = 200, description = "The stored price", body = ModelPrice),
        (status = 400, description = "Invalid model id, region, query or price", body = ApiError),
    ))]
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

#[utoipa::path(delete, path = "/v1/pricing/{model_id}", tag = "admin",
    summary = "Remove a model's price (its requests are then refused)",
    security(("adminToken" = [])),
    params(("model_id" = String, Path, description = MODEL_ID), RegionQuery),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Invalid region or query", body = ApiError),
        (status = 404, description = "No price configured for the model in the region", body = ApiError),
    ))]
async fn delete_price(
    _: Admin,
    State(s): State<AppState>,
    Path(model_id): Path<String>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let region = region_query(q)?.region(&s)?;
    if s.service.store.delete_price_in(&region, &model_id).await? {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    Err(Error::not_found(format!(
        "no price for {model_id} in region {region}"
    )))
}

#[utoipa::path(get, path = "/v1/pricing/{model_id}", tag = "admin",
    summary = "A model's price",
    security(("adminToken" = [])),
    params(("model_id" = String, Path, description = MODEL_ID), RegionQuery),
    responses(
        (status = 200, description = "The price", body = ModelPrice),
        (status = 400, description = "Invalid region or query", body = ApiError),
        (status = 404, description = "No price configured for the model in the region", body = ApiError),
    ))]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct PriceList {
    pub region: String,
    pub pricing: Vec<ModelPrice>,
}

#[utoipa::path(get, path = "/v1/pricing", tag = "admin", summary = "The price table of a region",
    security(("adminToken" = [])),
    params(RegionQuery),
    responses(
        (status = 200, description = "The prices", body = PriceList),
        (status = 400, description = "Invalid region or query", body = ApiError),
    ))]
async fn list_prices(
    _: Admin,
    State(s): State<AppState>,
    q: Result<Query<RegionQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let region = region_query(q)?.region(&s)?;
    let pricing = s.service.store.list_prices_in(&region).await?;
    Ok(Json(PriceList { region, pricing }).into_response())
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    model_id: String,
}

/// An alias and the model ID it names.
#[derive(Debug, Serialize, ToSchema)]
pub struct AliasView {
    pub alias: String,
    pub model_id: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AliasList {
    /// Alias → model ID.
    pub aliases: BTreeMap<String, String>,
}

#[utoipa::path(put, path = "/v1/aliases/{alias}", tag = "admin",
    summary = "Point a friendly model alias at a model ID",
    security(("adminToken" = [])),
    params(("alias" = String, Path)),
    request_body = AliasBody,
    responses(
        (status = 200, description = "The alias", body = AliasView),
        (status = 400, description = "Invalid alias, model id or body", body = ApiError),
    ))]
async fn put_alias(
    _: Admin,
    State(s): State<AppState>,
    Path(alias): Path<String>,
    JsonBody(body): JsonBody<AliasBody>,
) -> ApiResult<Response> {
    s.service.admin().put_alias(&alias, &body.model_id).await?;
    Ok(Json(AliasView {
        alias,
        model_id: body.model_id,
    })
    .into_response())
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "admin",
    summary = "Delete a tenant: its configuration and profiles go, its keys and SigV4 credentials are revoked, its usage history stays (read-only, in usage reports)",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = TENANT)),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such tenant", body = ApiError),
        (status = 409, description = "Budget is still reserved for the tenant (requests in flight, gateway leases); nothing was deleted", body = ApiError),
    ))]
async fn delete_tenant(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
) -> ApiResult<Response> {
    s.service.admin().delete_tenant(&tenant).await?;
    s.service.metrics.forget_remaining(&tenant);
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(delete, path = "/v1/aliases/{alias}", tag = "admin",
    summary = "Remove a model alias",
    security(("adminToken" = [])),
    params(("alias" = String, Path)),
    responses(
        (status = 204, description = "Removed"),
        (status = 404, description = "No such alias", body = ApiError),
    ))]
async fn delete_alias(
    _: Admin,
    State(s): State<AppState>,
    Path(alias): Path<String>,
) -> ApiResult<Response> {
    s.service.admin().delete_alias(&alias).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[utoipa::path(get, path = "/v1/aliases", tag = "admin", summary = "List model aliases",
    security(("adminToken" = [])),
    responses((status = 200, description = "The aliases", body = AliasList)))]
async fn list_aliases(_: Admin, State(s): State<AppState>) -> ApiResult<Response> {
    let aliases = s.service.store.list_aliases().await?;
    Ok(Json(AliasList { aliases }).into_response())
}

// ------------------------------------------------------------------ alert outbox

/// One delivery of one alert to one target.
#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxView {
    pub alert_id: String,
    /// `webhook:<12 hex of the URL's SHA-256>` or `sns:<topic ARN>`.
    pub target: String,
    pub tenant_id: String,
    pub state: OutboxState,
    pub attempts: u32,
    /// When the next attempt is due (pending entries).
    #[schema(format = DateTime)]
    pub next_attempt_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub last_error: Option<String>,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false, format = DateTime)]
    pub delivered_at: Option<String>,
    /// The alert JSON as delivered.
    #[schema(value_type = Object)]
    pub alert: serde_json::Value,
}

impl From<OutboxEntry> for OutboxView {
    fn from(e: OutboxEntry) -> Self {
        Self {
            alert: serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::Null),
            alert_id: e.alert_id,
            target: e.target,
            tenant_id: e.tenant_id,
            state: e.state,
            attempts: e.attempts,
            next_attempt_at: rfc3339(e.next_attempt_ms),
            last_error: e.last_error,
            created_at: rfc3339(e.created_at_ms),
            delivered_at: e.delivered_at_ms.map(rfc3339),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OutboxList {
    pub entries: Vec<OutboxView>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct OutboxQuery {
    /// Only entries in this state (`pending`, `delivered`, `failed`).
    #[param(value_type = Option<OutboxState>)]
    state: Option<String>,
    /// At most this many (default 100, at most 1000).
    limit: Option<usize>,
}

#[utoipa::path(get, path = "/v1/alerts/outbox", tag = "admin",
    summary = "Alert deliveries in the outbox, newest first (DynamoDB keeps pending and failed ones only)",
    security(("adminToken" = [])),
    params(OutboxQuery),
    responses(
        (status = 200, description = "The entries", body = OutboxList),
        (status = 400, description = "Unknown state", body = ApiError),
    ))]
async fn list_outbox(
    _: Admin,
    State(s): State<AppState>,
    Query(q): Query<OutboxQuery>,
) -> ApiResult<Response> {
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(st) => Some(OutboxState::parse(st).ok_or_else(|| {
            Error::invalid(format!(
                "state must be pending, delivered or failed, got {st:?}"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = s.service.store.list_outbox(state, limit).await?;
    Ok(Json(OutboxList {
        entries: entries.into_iter().map(OutboxView::from).collect(),
    })
    .into_response())
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Requeued {
    /// Failed deliveries of the alert made pending again.
    pub requeued: u64,
}

#[utoipa::path(post, path = "/v1/alerts/outbox/{alert_id}/retry", tag = "admin",
    summary = "Requeue an alert's failed deliveries (attempts reset, due now)",
    security(("adminToken" = [])),
    params(("alert_id" = String, Path, description = "The alert id (`al_…`)")),
    responses(
        (status = 200, description = "Requeued", body = Requeued),
        (status = 404, description = "The alert has no failed delivery", body = ApiError),
    ))]
async fn retry_outbox(
    _: Admin,
    State(s): State<AppState>,
    Path(alert_id): Path<String>,
) -> ApiResult<Response> {
    let now = crate::clock::to_millis(s.service.clock.now());
    let requeued = s.service.store.retry_outbox(&alert_id, now).await?;
    if requeued == 0 {
        return Err(Error::not_found(format!(
            "alert {alert_id} has no failed delivery"
        )));
    }
    Ok(Json(Requeued { requeued }).into_response())
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

#[derive(Debug, Default, Clone, Serialize, ToSchema)]
pub struct UsageTotals {
    pub requests: u64,
    pub estimated_requests: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_input_tokens: u64,
    pub cache_write_input_tokens: u64,
    #[schema(value_type = Money)]
    pub cost_usd: Decimal,
}

/// Groups usage rows by `keys` (exact decimal sums).
pub fn group_usage<'a>(
    keys: &[String],
    rows: impl IntoIterator<Item = &'a UsageRecord>,
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

/// `GET /v1/usage` as JSON.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageReport {
    pub group_by: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    #[schema(value_type = Vec<UsageRow>)]
    pub rows: Vec<serde_json::Value>,
}

/// One row of the usage report: the value of each `group_by` key (null when the
/// usage has none, e.g. no application) and the group's totals. Its schema is
/// built from [`GROUP_KEYS`] and [`UsageTotals`], the row's two sources.
pub struct UsageRow;

impl PartialSchema for UsageRow {
    fn schema() -> RefOr<Schema> {
        let keys = GROUP_KEYS.iter().fold(
            ObjectBuilder::new().description(Some("Present for each `group_by` key")),
            |o, k| {
                o.property(
                    *k,
                    ObjectBuilder::new().schema_type(
                        utoipa::openapi::schema::SchemaType::from_iter([Type::String, Type::Null]),
                    ),
                )
            },
        );
        AllOfBuilder::new()
            .item(keys)
            .item(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
                UsageTotals::name(),
            )))
            .into()
    }
}

impl ToSchema for UsageRow {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        schemas.push((UsageTotals::name().into_owned(), UsageTotals::schema()));
        UsageTotals::schemas(schemas);
    }
}

#[utoipa::path(get, path = "/v1/usage", tag = "admin",
    summary = "Usage and cost report, grouped (exact decimal sums)",
    security(("adminToken" = [])),
    params(
        ("group_by" = Option<String>, Query, description = "Comma-separated keys among tenant, application, model, cost_center, environment, user; default tenant"),
        ("from" = Option<String>, Query, format = DateTime, description = "RFC 3339 start (inclusive)"),
        ("to" = Option<String>, Query, format = DateTime, description = "RFC 3339 end (exclusive)"),
        ("format" = Option<String>, Query, description = "json (default) or csv"),
        ("tenant" = Option<String>, Query, description = "Only this tenant's usage"),
    ),
    responses(
        (status = 200, description = "The report", content(
            (UsageReport = "application/json"),
            (String = "text/csv"),
        )),
        (status = 400, description = "Unknown parameter, group_by key or format; a time not in RFC 3339", body = ApiError),
    ))]
async fn usage(
    _: Admin,
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> ApiResult<Response> {
    let q = UsageQuery::parse(&q)?;
    let groups = usage_groups(&s.service, &q).await?;
    match q.format.as_deref().unwrap_or("json") {
        "json" => {
            let rows: Vec<serde_json::Value> = groups
                .into_iter()
                .map(|(k, t)| {
                    let mut obj = serde_json::Map::new();
                    for (name, v) in q.group_by.iter().zip(k) {
                        obj.insert(name.clone(), serde_json::json!(v));
                    }
                    if let Ok(serde_json::Value::Object(m)) = serde_json::to_value(&t) {
                        obj.extend(m);
                    }
                    serde_json::Value::Object(obj)
                })
                .collect();
            Ok(Json(UsageReport {
                group_by: q.group_by,
                from: q.from,
                to: q.to,
                rows,
            })
            .into_response())
        }
        "csv" => Ok((
            [(header::CONTENT_TYPE, "text/csv; charset=utf-8")],
            usage_csv(&q.group_by, &groups),
        )
            .into_response()),
        other => Err(Error::invalid(format!(
            "format must be json or csv, got {other:?}"
        ))),
    }
}

/// The checked parameters of `GET /v1/usage` (the dashboard's usage table and
/// CSV export take the same, so both report the same groups).
#[derive(Debug, Clone, Default)]
pub struct UsageQuery {
    pub group_by: Vec<String>,
    /// As given (RFC 3339), echoed in the report.
    pub from: Option<String>,
    pub to: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub format: Option<String>,
    pub tenant: Option<String>,
}

impl UsageQuery {
    pub fn parse(q: &HashMap<String, String>) -> Result<Self, Error> {
        for k in q.keys() {
            if !matches!(k.as_str(), "group_by" | "from" | "to" | "format" | "tenant") {
                return Err(Error::invalid(format!("unknown query parameter {k:?}")));
            }
        }
        let get = |k: &str| q.get(k).map(String::as_str);
        let group_by: Vec<String> = get("group_by")
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
        Ok(Self {
            from_ms: get("from").map(|v| parse_time("from", v)).transpose()?,
            to_ms: get("to").map(|v| parse_time("to", v)).transpose()?,
            from: get("from").map(String::from),
            to: get("to").map(String::from),
            format: get("format").map(String::from),
            tenant: get("tenant").map(String::from),
            group_by,
        })
    }
}

/// The usage rows `q` selects, grouped by its keys.
pub async fn usage_groups(
    service: &Service,
    q: &UsageQuery,
) -> Result<Vec<(Vec<Option<String>>, UsageTotals)>, Error> {
    let mut rows = service.store.usage(q.from_ms, q.to_ms).await?;
    if let Some(t) = &q.tenant {
        rows.retain(|r| &r.tenant_id == t);
    }
    Ok(group_usage(&q.group_by, &rows))
}

/// The usage report as CSV: a header line, then one line per group.
pub fn usage_csv(group_by: &[String], groups: &[(Vec<Option<String>>, UsageTotals)]) -> String {
    let mut out = String::new();
    let mut header: Vec<String> = group_by.to_vec();
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
    out
}

/// Validates a model id from a path segment (used by the CLI too).
pub fn check_model_id(id: &str) -> Result<(), Error> {
    pricing::validate_model_id(id).map_err(Error::invalid)
}
