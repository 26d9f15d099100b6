//! What the AWS Query-protocol services the emulator answers (STS, SNS) share:
//! `POST /` with a form body, SigV4 signed for the service, XML answers and
//! `ErrorResponse` errors.

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::Response;
use std::collections::BTreeMap;
use time::OffsetDateTime;
use tollgate_wire::sigv4::{self, Credentials, SigV4Error, SignedRequest};

/// One Query call as received.
pub struct QueryCall<'a> {
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

/// `application/x-www-form-urlencoded` decoding (`+` is a space).
fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            // Digits read as bytes: slicing the str could split a character.
            b'%' if i + 2 < bytes.len() => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn form(body: &[u8]) -> BTreeMap<String, String> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (form_decode(k), form_decode(v))
        })
        .collect()
}

/// Checks the call's signature for `service` with the emulator's credentials:
/// the AWS error code and message when it fails.
pub fn verify(
    creds: &Credentials,
    service: &str,
    call: &QueryCall<'_>,
) -> Result<(), (&'static str, String)> {
    let creds = Credentials {
        service: service.into(),
        ..creds.clone()
    };
    let req = SignedRequest {
        method: "POST",
        raw_path: call.raw_path,
        raw_query: call.raw_query,
        headers: call.headers,
        payload_sha256: &sigv4::sha256_hex(call.body),
    };
    sigv4::verify(&req, &creds, OffsetDateTime::now_utc())
        .map(|_| ())
        .map_err(|e| {
            let code = match e {
                SigV4Error::Missing => "MissingAuthenticationToken",
                SigV4Error::Malformed(_) => "IncompleteSignature",
                SigV4Error::UnknownAccessKey(_) => "InvalidClientTokenId",
                SigV4Error::Expired { .. }
                | SigV4Error::BadScope(_)
                | SigV4Error::PayloadHashMismatch
                | SigV4Error::Mismatch { .. } => "SignatureDoesNotMatch",
            };
            (code, e.to_string())
        })
}

/// A service's `ErrorResponse` (`Sender` below 500, `Receiver` from 500).
pub fn error(
    namespace: &str,
    status: u16,
    code: &str,
    message: &str,
    request_id: &str,
) -> Response {
    let kind = if status >= 500 { "Receiver" } else { "Sender" };
    xml(
        status,
        format!(
            "<ErrorResponse xmlns=\"{namespace}\">\n\
             \x20 <Error>\n\
             \x20   <Type>{kind}</Type>\n\
             \x20   <Code>{code}</Code>\n\
             \x20   <Message>{}</Message>\n\
             \x20 </Error>\n\
             \x20 <RequestId>{request_id}</RequestId>\n\
             </ErrorResponse>\n",
            escape(message)
        ),
    )
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\'', "&apos;")
        .replace('"', "&quot;")
}

pub fn xml(status: u16, body: String) -> Response {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/xml"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_bodies_decode() {
        let f = form(b"Action=Publish&Message=%7B%22a%22%3A1%7D+x&Subject=a%20b&Bad=%zz&End=%4");
        assert_eq!(f["Action"], "Publish");
        assert_eq!(f["Message"], r#"{"a":1} x"#);
        assert_eq!(f["Subject"], "a b");
        assert_eq!(f["Bad"], "%zz");
        assert_eq!(f["End"], "%4");
    }
}
