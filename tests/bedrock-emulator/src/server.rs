//! HTTP layer: raw-path routing, authentication, faults, recording.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::ApiError;
use crate::respond::{self, StreamFault, StreamScript};
use crate::tokens::{self, Plan};
use tollgate_wire::sigv4::{self, Credentials, SignedRequest};

/// Most records kept by the inspection API.
pub const MAX_RECORDS: usize = 10_000;
/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;

#[derive(Debug, Clone)]
pub struct Config {
    pub credentials: Credentials,
    pub bearer_token: Option<String>,
    pub stream_delay: Duration,
}

pub struct AppState {
    pub config: Config,
    /// Control plane, Cost Explorer and Price List state (`crate::aws`).
    pub aws: crate::aws::AwsState,
    records: Mutex<VecDeque<Value>>,
    counter: AtomicU64,
}

impl AppState {
    pub fn new(config: Config) -> Arc<Self> {
        Arc::new(Self {
            aws: crate::aws::AwsState::new(&config.credentials.region),
            config,
            records: Mutex::new(VecDeque::new()),
            counter: AtomicU64::new(0),
        })
    }

    fn record(&self, rec: Value) {
        let mut r = crate::aws::lock(&self.records);
        while r.len() >= MAX_RECORDS {
            r.pop_front();
        }
        r.push_back(rec);
    }

    fn request_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = OffsetDateTime::now_utc().unix_timestamp_nanos();
        let h = Sha256::digest(format!("{n}/{nanos}/{}", std::process::id()).as_bytes());
        let x = hex::encode(&h[..16]);
        format!(
            "{}-{}-4{}-a{}-{}",
            &x[0..8],
            &x[8..12],
            &x[13..16],
            &x[17..20],
            &x[20..32]
        )
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new().fallback(handle).with_state(state)
}

/// The four Bedrock Runtime operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Converse,
    ConverseStream,
    InvokeModel,
    InvokeModelWithResponseStream,
}

impl Operation {
    pub fn from_segment(s: &str) -> Option<Self> {
        Some(match s {
            "converse" => Operation::Converse,
            "converse-stream" => Operation::ConverseStream,
            "invoke" => Operation::InvokeModel,
            "invoke-with-response-stream" => Operation::InvokeModelWithResponseStream,
            _ => return None,
        })
    }
    pub fn name(self) -> &'static str {
        match self {
            Operation::Converse => "Converse",
            Operation::ConverseStream => "ConverseStream",
            Operation::InvokeModel => "InvokeModel",
            Operation::InvokeModelWithResponseStream => "InvokeModelWithResponseStream",
        }
    }
    fn is_converse(self) -> bool {
        matches!(self, Operation::Converse | Operation::ConverseStream)
    }
    fn is_stream(self) -> bool {
        matches!(
            self,
            Operation::ConverseStream | Operation::InvokeModelWithResponseStream
        )
    }
}

/// Splits a raw (undecoded) path `/model/{id}/{op}` and percent-decodes the id.
pub fn route(raw_path: &str) -> Option<(Operation, String)> {
    let segs: Vec<&str> = raw_path.split('/').collect();
    match segs.as_slice() {
        ["", "model", model, op] if !model.is_empty() => {
            Some((Operation::from_segment(op)?, sigv4::percent_decode(model)))
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Throttle,
    Validation,
    Internal,
    Unavailable,
    Stream(StreamFault),
}

impl Fault {
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "throttle" => Fault::Throttle,
            "validation" => Fault::Validation,
            "internal" => Fault::Internal,
            "unavailable" => Fault::Unavailable,
            "stream-exception" => Fault::Stream(StreamFault::Exception),
            "stream-cut" => Fault::Stream(StreamFault::Cut),
            "corrupt-frame" => Fault::Stream(StreamFault::Corrupt),
            _ => return None,
        })
    }
}

fn header_pairs(h: &HeaderMap) -> Vec<(String, String)> {
    h.iter()
        .map(|(n, v)| {
            (
                n.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

fn headers_json(pairs: &[(String, String)]) -> Value {
    let mut m = serde_json::Map::new();
    for (n, v) in pairs {
        let n = n.to_ascii_lowercase();
        match m.get_mut(&n) {
            Some(Value::String(existing)) => {
                existing.push_str(", ");
                existing.push_str(v);
            }
            _ => {
                m.insert(n, Value::String(v.clone()));
            }
        }
    }
    Value::Object(m)
}

fn usage_json(plan: &Plan) -> Value {
    json!({
        "input_tokens": plan.input_tokens,
        "output_tokens": plan.output_tokens,
        "cache_read_input_tokens": plan.cache_read(),
        "cache_write_input_tokens": plan.cache_write(),
    })
}

fn json_response(status: u16, request_id: &str, body: Vec<u8>) -> Response {
    Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", "application/json")
        .header("x-amzn-RequestId", request_id)
        .body(Body::from(body))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn error_response(e: &ApiError, request_id: &str) -> Response {
    let mut r = json_response(e.status(), request_id, e.body());
    if let Ok(v) = e.error_type().parse() {
        r.headers_mut().insert("x-amzn-ErrorType", v);
    }
    r
}

async fn handle(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let (parts, body) = req.into_parts();
    let raw_path = parts.uri.path().to_owned();
    if crate::aws::owns_inspection(&raw_path) {
        let body = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .unwrap_or_default();
        return crate::aws::inspection(&st.aws, &parts.method, &raw_path, &body);
    }
    if raw_path.starts_with("/_emulator/") {
        return inspection(&st, &parts.method, &raw_path);
    }
    let request_id = st.request_id();
    let body = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let pairs = header_pairs(&parts.headers);
    let mut rec = json!({
        "operation": null,
        "raw_path": raw_path,
        "model": null,
        "sigv4": {"ok": false, "access_key_id": null, "error": null},
        "headers": headers_json(&pairs),
        "body_json": null,
        "usage": null,
        "fault": null,
        "family": null,
        "status": 0,
        "request_id": request_id,
    });
    let aws_api = crate::aws::classify(parts.method.as_str(), &raw_path, &pairs);
    let (response, usage_note) = match body {
        Err(e) => {
            let e = ApiError::Validation(format!("could not read request body: {e}"));
            (error_response(&e, &request_id), e.error_type().to_owned())
        }
        // The Query protocol (`Action=…` form on `/`): SNS Publish, else STS.
        Ok(body) if crate::sts::is_sts(parts.method.as_str(), &raw_path, &body) => {
            let call = crate::query::QueryCall {
                raw_path: &raw_path,
                raw_query: parts.uri.query(),
                headers: &pairs,
                body: &body,
            };
            let creds = &st.config.credentials;
            let (operation, r, signed) =
                if crate::sns::is_sns(parts.method.as_str(), &raw_path, &body) {
                    let r = crate::sns::handle(creds, &call, &request_id);
                    let signed = r.status() != StatusCode::FORBIDDEN;
                    ("Publish", r, signed)
                } else {
                    let r = crate::sts::handle(creds, &call, &request_id);
                    let signed = r.status() == StatusCode::OK;
                    ("GetCallerIdentity", r, signed)
                };
            rec["operation"] = json!(operation);
            rec["sigv4"]["ok"] = json!(signed);
            (r, String::new())
        }
        Ok(body) if aws_api.is_some() => {
            let (r, op, signed) = crate::aws::handle(
                &st.aws,
                &st.config.credentials,
                aws_api.unwrap_or(crate::aws::Api::Control),
                &parts.method,
                &raw_path,
                parts.uri.query(),
                &pairs,
                &body,
                &request_id,
            );
            rec["operation"] = json!(op);
            rec["sigv4"]["ok"] = json!(signed);
            rec["body_json"] = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (r, String::new())
        }
        Ok(body) => {
            let out = process(
                &st,
                &parts.method,
                &raw_path,
                parts.uri.query(),
                &pairs,
                &body,
                &request_id,
                &mut rec,
            )
            .await;
            match out {
                Ok(r) => (r, String::new()),
                Err(e) => (error_response(&e, &request_id), e.error_type().to_owned()),
            }
        }
    };
    rec["status"] = json!(response.status().as_u16());
    if response.status() == StatusCode::OK && !rec["usage"].is_null() {
        if let Some(model) = rec["model"].as_str() {
            st.aws.bill(model, &rec["usage"]);
        }
    }
    eprintln!(
        "{} {} {} op={} model={} sigv4={} fault={} usage={} {}{}ms",
        OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        parts.method,
        raw_path,
        rec["operation"].as_str().unwrap_or("-"),
        rec["model"].as_str().unwrap_or("-"),
        rec["sigv4"]["ok"],
        rec["fault"].as_str().unwrap_or("-"),
        rec["usage"],
        if usage_note.is_empty() {
            format!("status={} ", response.status().as_u16())
        } else {
            format!("status={} error={usage_note} ", response.status().as_u16())
        },
        started.elapsed().as_millis()
    );
    st.record(rec);
    response
}

#[allow(clippy::too_many_arguments)]
async fn process(
    st: &AppState,
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &[(String, String)],
    body: &Bytes,
    request_id: &str,
    rec: &mut Value,
) -> Result<Response, ApiError> {
    // Authentication result is always recorded, even for unknown paths.
    let auth = authenticate(st, method, raw_path, raw_query, headers, body);
    rec["sigv4"] = match &auth {
        Ok(Some(akid)) => json!({"ok": true, "access_key_id": akid, "error": null}),
        Ok(None) => json!({"ok": true, "access_key_id": null, "error": null, "scheme": "bearer"}),
        Err(e) => {
            let akid = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
                .and_then(|(_, v)| sigv4::AuthHeader::parse(v).ok())
                .map(|a| a.access_key_id);
            json!({"ok": false, "access_key_id": akid, "error": e.to_string()})
        }
    };
    if !body.is_empty() {
        rec["body_json"] = serde_json::from_slice(body).unwrap_or(Value::Null);
    }
    let route = if *method == Method::POST {
        route(raw_path)
    } else {
        None
    };
    let Some((op, model)) = route else {
        return Err(ApiError::UnknownOperation(format!(
            "No operation matches {method} {raw_path}"
        )));
    };
    rec["operation"] = json!(op.name());
    rec["model"] = json!(model);
    auth?;

    let body_json: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::Validation(format!(
            "Malformed input request, please reformat your input and try again: {e}"
        ))
    })?;
    // An application profile's ARN runs (and is read as) its copied model.
    let runs = st.aws.runtime_model(&model).map_err(ApiError::Validation)?;
    let plan = tokens::plan(op.is_converse(), &runs, &body_json)?;
    rec["family"] = json!(plan.family.as_str());

    let fault_name = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("x-emulator-fault"))
        .map(|(_, v)| v.trim().to_owned())
        .or_else(|| plan.fault_marker.clone());
    let fault = match &fault_name {
        None => None,
        Some(name) => {
            rec["fault"] = json!(name);
            Some(Fault::parse(name).ok_or_else(|| {
                ApiError::Validation(format!(
                    "Unknown emulator fault {name:?}; expected throttle, validation, internal, unavailable, stream-exception, stream-cut or corrupt-frame"
                ))
            })?)
        }
    };
    let stream_fault = match fault {
        Some(Fault::Throttle) => return Err(ApiError::Throttling),
        Some(Fault::Validation) => {
            return Err(ApiError::Validation(
                "The provided request is not valid (emulated fault).".into(),
            ))
        }
        Some(Fault::Internal) => return Err(ApiError::Internal),
        Some(Fault::Unavailable) => return Err(ApiError::Unavailable),
        Some(Fault::Stream(f)) if op.is_stream() => Some(f),
        Some(Fault::Stream(_)) | None => None,
    };

    let response = match op {
        Operation::Converse => {
            let body = serde_json::to_vec(&respond::converse_body(&plan)).unwrap_or_default();
            json_response(200, request_id, body)
        }
        Operation::InvokeModel => {
            let body = serde_json::to_vec(&respond::invoke_body(&plan, &model, request_id))
                .unwrap_or_default();
            let mut r = json_response(200, request_id, body);
            for (name, value) in respond::invoke_headers(&plan) {
                if let Ok(v) = value.parse() {
                    r.headers_mut().insert(name, v);
                }
            }
            r
        }
        Operation::ConverseStream => {
            let script = respond::converse_stream(&plan, stream_fault);
            stream_response(st, request_id, script, false, &plan, rec)
        }
        Operation::InvokeModelWithResponseStream => {
            let script = respond::invoke_stream(&plan, &model, request_id, stream_fault);
            stream_response(st, request_id, script, true, &plan, rec)
        }
    };
    if !op.is_stream() {
        rec["usage"] = usage_json(&plan);
    }
    Ok(response)
}

/// `Ok(Some(access_key_id))` for SigV4, `Ok(None)` for an accepted bearer token.
fn authenticate(
    st: &AppState,
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
) -> Result<Option<String>, ApiError> {
    let auth = headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim());
    if let Some(token) = auth.and_then(|a| a.strip_prefix("Bearer ")) {
        return match &st.config.bearer_token {
            Some(expected) if expected == token.trim() => Ok(None),
            _ => Err(ApiError::BadBearer),
        };
    }
    let req = SignedRequest {
        method: method.as_str(),
        raw_path,
        raw_query,
        headers,
        payload_sha256: &sigv4::sha256_hex(body),
    };
    sigv4::verify(&req, &st.config.credentials, OffsetDateTime::now_utc())
        .map(Some)
        .map_err(ApiError::from)
}

fn stream_response(
    st: &AppState,
    request_id: &str,
    script: StreamScript,
    invoke: bool,
    plan: &Plan,
    rec: &mut Value,
) -> Response {
    if script.reports_usage {
        rec["usage"] = usage_json(plan);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    let delay = plan
        .stream_delay_ms
        .map_or(st.config.stream_delay, Duration::from_millis);
    tokio::spawn(async move {
        for (i, frame) in script.frames.into_iter().enumerate() {
            if i > 0 && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                return; // client went away
            }
        }
        if script.cut {
            // Let the frames already queued reach the socket, then abort the
            // chunked body (hyper closes the connection without the last chunk).
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx
                .send(Err(std::io::Error::other("emulated stream-cut")))
                .await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    let mut b = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/vnd.amazon.eventstream")
        .header("x-amzn-RequestId", request_id);
    if invoke {
        b = b.header("X-Amzn-Bedrock-Content-Type", "application/json");
    }
    b.body(Body::from_stream(stream))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

fn inspection(st: &AppState, method: &Method, path: &str) -> Response {
    let plain = |status: StatusCode, body: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    };
    if let Some(r) = crate::sns::inspection(method.as_str(), path) {
        return r;
    }
    match (method.as_str(), path) {
        ("GET", "/_emulator/health") => plain(StatusCode::OK, json!({"status": "ok"})),
        ("GET", "/_emulator/requests") => {
            let r = crate::aws::lock(&st.records);
            plain(StatusCode::OK, Value::Array(r.iter().cloned().collect()))
        }
        ("DELETE", "/_emulator/requests") => {
            let mut r = crate::aws::lock(&st.records);
            let n = r.len();
            r.clear();
            plain(StatusCode::OK, json!({"cleared": n}))
        }
        _ => plain(
            StatusCode::NOT_FOUND,
            json!({"message": format!("no emulator endpoint {method} {path}")}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_on_raw_path() {
        let (op, m) = route("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse").unwrap();
        assert_eq!(op, Operation::Converse);
        assert_eq!(
            m,
            "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc123"
        );
        let (op, m) = route("/model/arn:aws:bedrock:us-east-1:1:application-inference-profile%2Fx/invoke-with-response-stream").unwrap();
        assert_eq!(op, Operation::InvokeModelWithResponseStream);
        assert!(m.ends_with("profile/x"));
        // A decoded `/` adds a segment: not a Bedrock path.
        assert!(
            route("/model/arn:aws:bedrock:us-east-1:1:application-inference-profile/x/invoke")
                .is_none()
        );
        assert!(route("/model//converse").is_none());
        assert!(route("/model/m/count-tokens").is_none());
        assert!(route("/").is_none());
    }

    #[test]
    fn faults_parse() {
        assert_eq!(Fault::parse("throttle"), Some(Fault::Throttle));
        assert_eq!(
            Fault::parse("corrupt-frame"),
            Some(Fault::Stream(StreamFault::Corrupt))
        );
        assert_eq!(Fault::parse("nope"), None);
    }

    #[test]
    fn request_ids_look_like_uuids() {
        let st = AppState::new(Config {
            credentials: Credentials {
                access_key_id: "a".into(),
                secret_access_key: "b".into(),
                region: "us-east-1".into(),
                service: "bedrock".into(),
            },
            bearer_token: None,
            stream_delay: Duration::ZERO,
        });
        let a = st.request_id();
        assert_eq!(a.len(), 36);
        assert_ne!(a, st.request_id());
    }
}
