//! The audit log: one `tracing` event (target `tollgate::audit`) per change made
//! through the admin API — method, path, outcome, time taken — whether it
//! succeeded or was refused. Bodies are never logged: they carry keys and
//! secrets. Data-plane calls (thousands a second) and reads are not audited.
//! `tollgate-sidecar rewrap` changes the store without the API and logs its own
//! event ([`log_rewrap`]).

use crate::dataplane_auth::is_data_plane_path;
use axum::extract::Request;
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use std::time::Instant;

/// Whether a request changes the ledger's configuration (an admin write).
pub fn is_admin_change(method: &Method, path: &str) -> bool {
    matches!(
        *method,
        Method::PUT | Method::POST | Method::DELETE | Method::PATCH
    ) && path.starts_with("/v1/")
        && !is_data_plane_path(path)
}

/// Middleware: logs every admin change after it was answered.
pub async fn log_admin_changes(req: Request, next: Next) -> Response {
    if !is_admin_change(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let status = response.status();
    tracing::info!(
        target: "tollgate::audit",
        method = %method,
        path = %path,
        status = status.as_u16(),
        outcome = if status.is_success() { "applied" } else { "refused" },
        elapsed_ms = started.elapsed().as_millis() as u64,
        "admin change"
    );
    response
}

/// Logs a `tollgate-sidecar rewrap` run (not a dry run): the current key id,
/// the counts, and `outcome` `applied` (everything current), `incomplete` (some
/// secrets failed) or `failed` (the run stopped, e.g. the store was unreachable).
pub fn log_rewrap(
    key_id: &str,
    result: &crate::Result<crate::rewrap::Report>,
    elapsed: std::time::Duration,
) {
    let elapsed_ms = elapsed.as_millis() as u64;
    match result {
        Ok(r) => tracing::info!(
            target: "tollgate::audit",
            command = "rewrap",
            key_id,
            rewrapped = r.rewrapped,
            already_current = r.already_current,
            failed = r.failed,
            skipped_revoked = r.skipped_revoked,
            outcome = if r.failed == 0 { "applied" } else { "incomplete" },
            elapsed_ms,
            "SigV4 secrets rewrapped"
        ),
        Err(e) => tracing::info!(
            target: "tollgate::audit",
            command = "rewrap",
            key_id,
            outcome = "failed",
            error = %e,
            elapsed_ms,
            "SigV4 secrets rewrapped"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_writes_are_audited_and_the_data_plane_is_not() {
        assert!(is_admin_change(&Method::PUT, "/v1/tenants/acme"));
        assert!(is_admin_change(&Method::POST, "/v1/tenants/acme/keys"));
        assert!(is_admin_change(&Method::DELETE, "/v1/tenants/acme/keys/k1"));
        assert!(!is_admin_change(&Method::GET, "/v1/tenants/acme"));
        assert!(!is_admin_change(&Method::POST, "/v1/reserve"));
        assert!(!is_admin_change(&Method::POST, "/v1/commit"));
        assert!(!is_admin_change(&Method::POST, "/v1/leases/renew"));
        assert!(!is_admin_change(&Method::POST, "/metrics"));
    }
}
