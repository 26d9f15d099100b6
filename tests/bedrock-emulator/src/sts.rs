//! STS `GetCallerIdentity` (Query protocol, `POST /` with a form body), so
//! `tollgate-sidecar doctor` can check credentials against the emulator as it
//! does against AWS. The request must be SigV4-signed for service `sts` with the
//! emulator's credentials; answers and errors are STS's XML.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use time::OffsetDateTime;
use tollgate_wire::sigv4::{self, Credentials, SigV4Error, SignedRequest};

/// The account and identity the emulator answers with.
pub const ACCOUNT: &str = "123456789012";
pub const ARN: &str = "arn:aws:iam::123456789012:user/tollgate-emulator";

/// Whether a request is an STS call (`Action=…` form body on `/`).
pub fn is_sts(method: &str, raw_path: &str, body: &[u8]) -> bool {
    method == "POST" && raw_path == "/" && body.starts_with(b"Action=")
}

/// Answers an STS call.
pub fn handle(
    creds: &Credentials,
    raw_path: &str,
    raw_query: Option<&str>,
    headers: &[(String, String)],
    body: &[u8],
    request_id: &str,
) -> Response {
    let form = String::from_utf8_lossy(body);
    let action = form
        .split('&')
        .find_map(|kv| kv.strip_prefix("Action="))
        .unwrap_or_default();
    if action != "GetCallerIdentity" {
        return error(
            400,
            "InvalidAction",
            &format!("Could not find operation {action} for version NO_VERSION_SPECIFIED"),
            request_id,
        );
    }
    let sts = Credentials {
        service: "sts".into(),
        ..creds.clone()
    };
    let req = SignedRequest {
        method: "POST",
        raw_path,
        raw_query,
        headers,
        payload_sha256: &sigv4::sha256_hex(body),
    };
    if let Err(e) = sigv4::verify(&req, &sts, OffsetDateTime::now_utc()) {
        let code = match e {
            SigV4Error::Missing => "MissingAuthenticationToken",
            SigV4Error::Malformed(_) => "IncompleteSignature",
            SigV4Error::UnknownAccessKey(_) => "InvalidClientTokenId",
            SigV4Error::Expired { .. } => "SignatureDoesNotMatch",
            SigV4Error::BadScope(_)
            | SigV4Error::PayloadHashMismatch
            | SigV4Error::Mismatch { .. } => "SignatureDoesNotMatch",
        };
        return error(403, code, &e.to_string(), request_id);
    }
    xml(
        200,
        format!(
            "<GetCallerIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n\
             \x20 <GetCallerIdentityResult>\n\
             \x20   <Arn>{ARN}</Arn>\n\
             \x20   <UserId>AIDAEMULATOR0000000000</UserId>\n\
             \x20   <Account>{ACCOUNT}</Account>\n\
             \x20 </GetCallerIdentityResult>\n\
             \x20 <ResponseMetadata>\n\
             \x20   <RequestId>{request_id}</RequestId>\n\
             \x20 </ResponseMetadata>\n\
             </GetCallerIdentityResponse>\n"
        ),
    )
}

fn error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\">\n\
             \x20 <Error>\n\
             \x20   <Type>Sender</Type>\n\
             \x20   <Code>{code}</Code>\n\
             \x20   <Message>{}</Message>\n\
             \x20 </Error>\n\
             \x20 <RequestId>{request_id}</RequestId>\n\
             </ErrorResponse>\n",
            escape(message)
        ),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

fn xml(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml"),
    );
    r
}
