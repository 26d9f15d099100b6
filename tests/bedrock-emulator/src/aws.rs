//! The AWS APIs around Bedrock Runtime that Tollgate's operator commands call:
//! Bedrock's control plane (application inference profiles and their tags,
//! [`crate::control`]), Cost Explorer's `GetCostAndUsage`
//! ([`crate::costexplorer`]) and the Price List API's `GetProducts`
//! ([`crate::pricelist`]). This module dispatches to them, verifies SigV4 for
//! each one's signing name, keeps their shared state (profiles, the price table,
//! the cost of every runtime request served) and serves the inspection
//! endpoints that let tests set prices, quotas and denied actions.

use std::collections::BTreeSet;
use std::sync::Mutex;

use axum::body::{Body, Bytes};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use time::OffsetDateTime;
use tollgate_wire::sigv4::{self, Credentials, SignedRequest};

use crate::control::ControlPlane;
use crate::pricelist::PriceTable;

/// The account every emulated resource belongs to (as STS answers).
pub const ACCOUNT: &str = crate::sts::ACCOUNT;

/// One runtime request's cost, as the bill would record it.
#[derive(Debug, Clone)]
pub struct CostEntry {
    pub at: OffsetDateTime,
    /// The model that ran (an application profile's copied model).
    pub model_id: String,
    /// The application profile's tags when the request ran (none for a model ID).
    pub tags: Vec<(String, String)>,
    pub cost: Decimal,
}

pub struct AwsState {
    pub control: Mutex<ControlPlane>,
    pub prices: Mutex<PriceTable>,
    pub costs: Mutex<Vec<CostEntry>>,
    /// IAM actions (`bedrock:CreateInferenceProfile`, `ce:GetCostAndUsage`, …)
    /// answered with AccessDeniedException, as for a role without them.
    pub denied: Mutex<BTreeSet<String>>,
}

impl AwsState {
    pub fn new(region: &str) -> Self {
        Self {
            control: Mutex::new(ControlPlane::new(region)),
            prices: Mutex::new(PriceTable::default()),
            costs: Mutex::new(Vec::new()),
            denied: Mutex::new(BTreeSet::new()),
        }
    }

    /// The model a runtime request runs: an application profile's copied
    /// model, else the identifier as given. A profile deleted here is refused,
    /// as Bedrock refuses it.
    pub fn runtime_model(&self, model: &str) -> Result<String, String> {
        let c = lock(&self.control);
        if c.was_deleted(model) {
            return Err(format!(
                "The provided model identifier is invalid: {model} was deleted."
            ));
        }
        Ok(c.resolve(model).unwrap_or_else(|| model.to_owned()))
    }

    /// Records what a served runtime request costs at the emulator's prices.
    pub fn bill(&self, model: &str, usage: &Value) {
        let (model_id, tags) = {
            let c = lock(&self.control);
            match c.profile_by_arn(model) {
                Some(p) => (
                    p.model_id.clone(),
                    p.tags.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                ),
                None => (model.to_owned(), Vec::new()),
            }
        };
        let count = |k: &str| usage[k].as_u64().unwrap_or(0);
        let Some(cost) = lock(&self.prices).cost(
            &model_id,
            count("input_tokens"),
            count("output_tokens"),
            count("cache_read_input_tokens"),
            count("cache_write_input_tokens"),
        ) else {
            return; // a model the price table does not know is not billed
        };
        lock(&self.costs).push(CostEntry {
            at: OffsetDateTime::now_utc(),
            model_id,
            tags,
            cost,
        });
    }

    fn is_denied(&self, action: &str) -> bool {
        lock(&self.denied).contains(action)
    }
}

pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Which API a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Bedrock control plane (restJson1, signing name `bedrock`).
    Control,
    /// Cost Explorer (awsJson1_1, `AWSInsightsIndexService.*`, signing name `ce`).
    CostExplorer,
    /// Price List (awsJson1_1, `AWSPriceListService.*`, signing name `pricing`).
    PriceList,
}

impl Api {
    fn service(self) -> &'static str {
        match self {
            Api::Control => "bedrock",
            Api::CostExplorer => "ce",
            Api::PriceList => "pricing",
        }
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The API a request belongs to, if it is not a Bedrock Runtime call.
pub fn classify(method: &str, raw_path: &str, headers: &[(String, String)]) -> Option<Api> {
    if method == "POST" && raw_path == "/" {
        let target = header(headers, "x-amz-target").unwrap_or_default();
        if target.starts_with("AWSInsightsIndexService.") {
            return Some(Api::CostExplorer);
        }
        if target.starts_with("AWSPriceListService.") {
            return Some(Api::PriceList);
        }
        return None;
    }
    crate::control::route(method, raw_path).map(|_| Api::Control)
}

/// An AWS error: status, error code, message, in the API's own protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl AwsError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(400, "ValidationException", message)
    }
}

/// An awsJson1_1 call's body, when `op` is the one operation `supported`.
pub fn json_call(op: &str, supported: &str, body: &[u8]) -> Result<Value, AwsError> {
    if op != supported {
        return Err(AwsError::new(
            400,
            "UnknownOperationException",
            format!("Operation {op} is not supported by this emulator"),
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        AwsError::new(
            400,
            "SerializationException",
            format!("Malformed request body: {e}"),
        )
    })
}

/// A restJson1 (control plane) or awsJson1_1 (CE, Price List) response.
pub fn respond(api: Api, request_id: &str, result: Result<(u16, Value), AwsError>) -> Response {
    let (status, body, error) = match result {
        Ok((status, body)) => (status, body, None),
        Err(e) => {
            let body = match api {
                Api::Control => json!({"message": e.message}),
                // awsJson: `__type` names the error, `Message` capitalised.
                Api::CostExplorer | Api::PriceList => {
                    json!({"__type": e.code, "Message": e.message})
                }
            };
            (e.status, body, Some(e.code))
        }
    };
    let content_type = match api {
        Api::Control => "application/json",
        Api::CostExplorer | Api::PriceList => "application/x-amz-json-1.1",
    };
    let mut b = Response::builder()
        .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header("content-type", content_type)
        .header("x-amzn-RequestId", request_id);
    if let Some(code) = error {
        b = b.header("x-amzn-ErrorType", code);
    }
    b.body(Body::from(serde_json::to_vec(&body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

/// Answers a control-plane, Cost Explorer or Price List call; returns the
/// response and the operation's name (for the request record).
#[allow(clippy::too_many_arguments)]
pub fn handle(
    st: &AwsState,
    creds: &Credentials,
    api: Api,
    method: &Method,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &[(String, String)],
    body: &Bytes,
    request_id: &str,
) -> (Response, String, bool) {
    let op = match api {
        Api::Control => crate::control::route(method.as_str(), raw_path)
            .map(|r| r.operation().to_owned())
            .unwrap_or_default(),
        Api::CostExplorer | Api::PriceList => header(headers, "x-amz-target")
            .and_then(|t| t.split_once('.'))
            .map(|(_, op)| op.to_owned())
            .unwrap_or_default(),
    };
    let signed = Credentials {
        service: api.service().to_owned(),
        ..creds.clone()
    };
    let req = SignedRequest {
        method: method.as_str(),
        raw_path,
        raw_query,
        headers,
        payload_sha256: &sigv4::sha256_hex(body),
    };
    if let Err(e) = sigv4::verify(&req, &signed, OffsetDateTime::now_utc()) {
        let err = AwsError::new(403, e.error_type(), e.to_string());
        return (respond(api, request_id, Err(err)), op, false);
    }
    let action = format!("{}:{op}", api.service());
    if st.is_denied(&action) {
        let err = AwsError::new(
            403,
            "AccessDeniedException",
            format!(
                "User: {} is not authorized to perform: {action} because no identity-based policy allows the {action} action",
                crate::sts::ARN
            ),
        );
        return (respond(api, request_id, Err(err)), op, true);
    }
    let result = match api {
        Api::Control => crate::control::handle(st, method.as_str(), raw_path, raw_query, body),
        Api::CostExplorer => crate::costexplorer::handle(st, &op, body),
        Api::PriceList => crate::pricelist::handle(st, &op, body),
    };
    (respond(api, request_id, result), op, true)
}

/// Whether `/_emulator/…` path is one of this module's inspection endpoints.
pub fn owns_inspection(path: &str) -> bool {
    path == "/_emulator/prices"
        || path.starts_with("/_emulator/prices/")
        || path == "/_emulator/deny"
        || path == "/_emulator/quotas"
        || path == "/_emulator/costs"
}

/// The inspection endpoints (unsigned, for tests):
/// `GET /_emulator/prices`; `PUT /_emulator/prices/{model}` with
/// `{"input","output"[,"cache_read","cache_write"]}` (USD per 1M tokens, decimal
/// strings); `PUT /_emulator/deny` `{"actions": ["bedrock:CreateInferenceProfile"]}`;
/// `PUT /_emulator/quotas` `{"application_inference_profiles": N}`;
/// `GET /_emulator/costs` (the bill); `DELETE /_emulator/costs`.
pub fn inspection(st: &AwsState, method: &Method, path: &str, body: &[u8]) -> Response {
    let reply = |status: StatusCode, v: Value| {
        Response::builder()
            .status(status)
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&v).unwrap_or_default()))
            .unwrap_or_else(|_| Response::new(Body::empty()))
    };
    let bad = |m: String| reply(StatusCode::BAD_REQUEST, json!({"message": m}));
    let parsed: Result<Value, String> = if body.is_empty() {
        Ok(Value::Null)
    } else {
        serde_json::from_slice(body).map_err(|e| format!("invalid JSON: {e}"))
    };
    match (method.as_str(), path) {
        ("GET", "/_emulator/prices") => reply(StatusCode::OK, lock(&st.prices).to_json()),
        ("PUT", p) if p.starts_with("/_emulator/prices/") => {
            let model = sigv4::percent_decode(&p["/_emulator/prices/".len()..]);
            match parsed.and_then(|v| lock(&st.prices).set(&model, &v)) {
                Ok(()) => reply(StatusCode::OK, json!({"model_id": model})),
                Err(e) => bad(e),
            }
        }
        ("PUT", "/_emulator/deny") => {
            let actions: Result<BTreeSet<String>, String> = parsed.and_then(|v| {
                v["actions"]
                    .as_array()
                    .ok_or_else(|| "expected {\"actions\": [...]}".to_owned())
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_str().map(str::to_owned))
                            .collect()
                    })
            });
            match actions {
                Ok(a) => {
                    *lock(&st.denied) = a.clone();
                    reply(StatusCode::OK, json!({"denied": a}))
                }
                Err(e) => bad(e),
            }
        }
        ("PUT", "/_emulator/quotas") => {
            match parsed.map(|v| v["application_inference_profiles"].as_u64()) {
                Ok(Some(n)) => {
                    lock(&st.control).max_application_profiles = n as usize;
                    reply(StatusCode::OK, json!({"application_inference_profiles": n}))
                }
                Ok(None) => bad("expected {\"application_inference_profiles\": N}".into()),
                Err(e) => bad(e),
            }
        }
        ("GET", "/_emulator/costs") => {
            let costs = lock(&st.costs);
            let rows: Vec<Value> = costs
                .iter()
                .map(|c| {
                    json!({
                        "at": c.at.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                        "model_id": c.model_id,
                        "tags": c.tags.iter().map(|(k, v)| json!({"key": k, "value": v})).collect::<Vec<_>>(),
                        "cost_usd": c.cost.normalize().to_string(),
                    })
                })
                .collect();
            reply(StatusCode::OK, Value::Array(rows))
        }
        ("DELETE", "/_emulator/costs") => {
            let mut costs = lock(&st.costs);
            let n = costs.len();
            costs.clear();
            reply(StatusCode::OK, json!({"cleared": n}))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            json!({"message": format!("no emulator endpoint {method} {path}")}),
        ),
    }
}
