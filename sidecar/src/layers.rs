//! The HTTP layers around every route of the sidecar: a request id
//! (`x-tollgate-request-id`, kept when the caller sent one, echoed in the
//! response), a tracing span carrying it so every log line of a request can be
//! found by it, the audit log of admin changes, a time limit, and panics answered
//! as a JSON 500 instead of a dropped connection.

use axum::http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use axum::Router;
use std::time::Duration;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// The header request ids travel in (the filter's responses carry the same).
pub const REQUEST_ID_HEADER: &str = "x-tollgate-request-id";

/// A handler that takes longer is answered 408. Settlements keep running to
/// their end (see `api::to_completion`); the caller retries them.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, Default)]
struct RandomId;

impl MakeRequestId for RandomId {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let id = format!("sc-{:016x}", rand::random::<u64>());
        HeaderValue::from_str(&id).ok().map(RequestId::new)
    }
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response<axum::body::Body> {
    tracing::error!("a request handler panicked; answered 500");
    let mut r = Response::new(axum::body::Body::from(
        r#"{"message":"internal error in the sidecar (see its log)"}"#,
    ));
    *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    r.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// Wraps `router` in the layers (outermost first: request id, trace, audit,
/// timeout, panic catcher).
pub fn wrap(router: Router) -> Router {
    let header = HeaderName::from_static(REQUEST_ID_HEADER);
    router
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            REQUEST_TIMEOUT,
        ))
        .layer(axum::middleware::from_fn(crate::audit::log_admin_changes))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<axum::body::Body>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID_HEADER)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!(
                    "request",
                    method = %req.method(),
                    path = %req.uri().path(),
                    request_id = %id,
                )
            }),
        )
        .layer(PropagateRequestIdLayer::new(header.clone()))
        .layer(SetRequestIdLayer::new(header, RandomId))
}
