//! The web dashboard at `/ui`: read-only, server-rendered HTML with inline SVG
//! charts and one small script (live update), all embedded in the binary, so it
//! needs no CDN, no build step and works offline.
//!
//! Behind the admin token: `GET /ui` shows a login form, `POST /ui/login`
//! checks the token and sets a session cookie (see `session`), `POST
//! /ui/logout` ends it. Pages: the tenants (`/ui`), one tenant
//! (`/ui/tenants/{tenant}`), the usage report (`/ui/usage`, `/ui/usage.csv`).
//! These routes are not part of the JSON API and so not in `/openapi.json`.

mod charts;
mod data;
mod html;
mod pages;
pub mod session;

use crate::api::{usage_csv, usage_groups, BalanceView, UsageQuery};
use crate::error::Error;
use crate::service::Service;
use axum::extract::rejection::FormRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Form, Router};
use serde::Deserialize;
use session::Sessions;
use std::collections::HashMap;
use std::sync::Arc;

/// The stylesheet and the live-update script, served from the binary.
const CSS: &str = include_str!("assets/ui.css");
const JS: &str = include_str!("assets/ui.js");

/// Alerts the overview lists.
const RECENT_ALERTS: usize = 20;

/// Only this server's own stylesheet and script; no inline code, no frames.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
    connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

#[derive(Clone)]
pub struct UiState {
    service: Arc<Service>,
    admin_token: Arc<str>,
    sessions: Arc<Sessions>,
}

impl UiState {
    pub fn new(service: Arc<Service>, admin_token: Arc<str>) -> Self {
        Self {
            service,
            admin_token,
            sessions: Arc::new(Sessions::default()),
        }
    }
}

/// The dashboard's routes, ready to merge into the sidecar's router.
pub fn router(state: UiState) -> Router {
    Router::new()
        .route("/ui", get(home))
        .route("/ui/", get(|| async { Redirect::to("/ui") }))
        .route(
            "/ui/login",
            post(login).get(|| async { Redirect::to("/ui") }),
        )
        .route("/ui/logout", post(logout))
        .route("/ui/tenants/{tenant}", get(tenant_page))
        .route("/ui/usage", get(usage_page))
        .route("/ui/usage.csv", get(usage_export))
        .route("/ui/assets/ui.css", get(css))
        .route("/ui/assets/ui.js", get(js))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers of every dashboard response: pages are private (`no-store`, so a
/// shared cache or the back button after logout shows nothing), and the CSP
/// keeps anything injected from running.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    r
}

/// A failed page, shown as an HTML error page with the error's status.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct UiError(#[from] Error);

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self.0 {
            Error::Invalid(_) | Error::Json(_) => StatusCode::BAD_REQUEST,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = if status.is_server_error() {
            tracing::error!(error = %self.0, "dashboard page failed");
            "The sidecar could not build this page; its log has the cause.".to_string()
        } else {
            self.0.to_string()
        };
        (status, Html(html::error_page(status.as_u16(), &message))).into_response()
    }
}

type UiResult = Result<Response, UiError>;

/// Proof of a live session; without one, the browser is sent to the login form.
pub struct LoggedIn;

impl FromRequestParts<UiState> for LoggedIn {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, s: &UiState) -> Result<Self, Response> {
        match session::session_id(&parts.headers) {
            Some(id) if s.sessions.is_valid(&id) => Ok(LoggedIn),
            _ => Err(Redirect::to("/ui").into_response()),
        }
    }
}

fn logged_in(s: &UiState, headers: &HeaderMap) -> bool {
    session::session_id(headers).is_some_and(|id| s.sessions.is_valid(&id))
}

async fn home(State(s): State<UiState>, headers: HeaderMap) -> UiResult {
    if !logged_in(&s, &headers) {
        return Ok(Html(html::login_page(None)).into_response());
    }
    let svc = &s.service;
    let tenants = data::tenant_summaries(svc).await?;
    let today = data::today(svc.clock.now());
    let month = format!("{:04}-{:02}", today.year(), u8::from(today.month()));
    let days = data::period_days(&month, today);
    let rows = svc
        .store
        .usage(days.first().copied().map(data::day_start_ms), None)
        .await?;
    let rows: Vec<_> = rows.iter().collect();
    let mut alerts = Vec::new();
    for t in &tenants {
        alerts.extend(svc.store.list_alerts(&t.config.tenant_id).await?);
    }
    let body = pages::overview(&pages::Overview {
        tenants: &tenants,
        month: &month,
        trend: &data::daily_spend(&rows, &days),
        by_model: &data::split_by("model", &rows),
        by_application: &data::split_by("application", &rows),
        alerts: &data::recent_alerts(alerts, RECENT_ALERTS),
    });
    Ok(Html(html::page("Tenants", html::Nav::Tenants, true, &body)).into_response())
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login(
    State(s): State<UiState>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return (
            StatusCode::BAD_REQUEST,
            Html(html::login_page(Some("Send the admin token in the form."))),
        )
            .into_response();
    };
    if !session::token_matches(&form.token, &s.admin_token) {
        tracing::warn!(target: "tollgate::audit", outcome = "refused", "dashboard login");
        return (
            StatusCode::UNAUTHORIZED,
            Html(html::login_page(Some(
                "That is not the admin token (TOLLGATE_ADMIN_TOKEN).",
            ))),
        )
            .into_response();
    }
    let id = s.sessions.create();
    tracing::info!(target: "tollgate::audit", outcome = "applied", "dashboard login");
    let cookie = session::set_cookie(&id, s.sessions.ttl(), session::over_tls(&headers));
    see_other("/ui", &cookie)
}

async fn logout(State(s): State<UiState>, headers: HeaderMap) -> Response {
    if let Some(id) = session::session_id(&headers) {
        s.sessions.remove(&id);
    }
    see_other("/ui", &session::clear_cookie(session::over_tls(&headers)))
}

/// 303 to `to`, setting `cookie`.
fn see_other(to: &'static str, cookie: &str) -> Response {
    let mut r = Redirect::to(to).into_response();
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

async fn tenant_page(
    _: LoggedIn,
    State(s): State<UiState>,
    Path(tenant): Path<String>,
) -> UiResult {
    let svc = &s.service;
    let details = svc.admin().tenant_details(&tenant).await?;
    let sigv4 = svc.store.list_sigv4_credentials(&tenant).await?;
    let balance = BalanceView::from(details.balance);
    let days = data::period_days(&balance.period, data::today(svc.clock.now()));
    let rows = svc
        .store
        .usage(data::period_start_ms(&balance.period), None)
        .await?;
    let rows: Vec<_> = rows.iter().filter(|r| r.tenant_id == tenant).collect();
    let body = pages::tenant(&pages::TenantPage {
        config: &details.config,
        balance: &balance,
        trend: &data::daily_spend(&rows, &days),
        by_application: &data::split_by("application", &rows),
        alerts: &data::recent_alerts(details.alerts, RECENT_ALERTS),
        profiles: &details.profiles,
        keys: &details.keys,
        sigv4: &sigv4,
    });
    Ok(Html(html::page(&tenant, html::Nav::Tenants, true, &body)).into_response())
}

/// The usage query of a dashboard URL: blank form fields are left out, and
/// with nothing given, this month by tenant, application and model.
fn usage_query(s: &UiState, raw: HashMap<String, String>) -> Result<UsageQuery, Error> {
    let mut q: HashMap<String, String> = raw
        .into_iter()
        .map(|(k, v)| (k, v.trim().to_string()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if q.is_empty() {
        let today = data::today(s.service.clock.now());
        let first = today.replace_day(1).unwrap_or(today);
        q.insert("group_by".into(), "tenant,application,model".into());
        q.insert(
            "from".into(),
            crate::clock::rfc3339(data::day_start_ms(first)),
        );
    }
    UsageQuery::parse(&q)
}

/// `q` as a query string (for the CSV link).
fn query_string(q: &UsageQuery) -> String {
    let mut parts = vec![format!(
        "group_by={}",
        html::url_part(&q.group_by.join(","))
    )];
    for (k, v) in [("tenant", &q.tenant), ("from", &q.from), ("to", &q.to)] {
        if let Some(v) = v {
            parts.push(format!("{k}={}", html::url_part(v)));
        }
    }
    parts.join("&")
}

async fn usage_page(
    _: LoggedIn,
    State(s): State<UiState>,
    Query(raw): Query<HashMap<String, String>>,
) -> UiResult {
    let q = usage_query(&s, raw)?;
    let groups = usage_groups(&s.service, &q).await?;
    let body = pages::usage(&pages::UsagePage {
        group_by: &q.group_by,
        from: q.from.as_deref().unwrap_or(""),
        to: q.to.as_deref().unwrap_or(""),
        tenant: q.tenant.as_deref().unwrap_or(""),
        groups: &groups,
        query: &query_string(&q),
    });
    Ok(Html(html::page("Usage", html::Nav::Usage, true, &body)).into_response())
}

async fn usage_export(
    _: LoggedIn,
    State(s): State<UiState>,
    Query(raw): Query<HashMap<String, String>>,
) -> UiResult {
    let q = usage_query(&s, raw)?;
    let groups = usage_groups(&s.service, &q).await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"tollgate-usage.csv\"",
            ),
        ],
        usage_csv(&q.group_by, &groups),
    )
        .into_response())
}

async fn css() -> Response {
    asset("text/css; charset=utf-8", CSS)
}

async fn js() -> Response {
    asset("text/javascript; charset=utf-8", JS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        body,
    )
        .into_response()
}
