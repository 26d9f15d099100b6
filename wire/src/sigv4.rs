//! AWS Signature Version 4 verification (and signing, for tests), as Bedrock
//! Runtime checks it. Used by the Bedrock emulator and by the sidecar to verify
//! tenants' SigV4 credentials (feature `sigv4`).
//!
//! The canonical URI is the raw request path (as received, still percent-encoded)
//! after dot-segment removal, percent-encoded once more with botocore's
//! `quote(path, safe='/~')`: every byte outside `A-Z a-z 0-9 - _ . ~ /` becomes
//! `%XX`, so `%3A` in the raw path is signed as `%253A`. This is what botocore,
//! aws-sdk-rust and Envoy's `aws_request_signing` filter all produce for non-S3
//! services.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use thiserror::Error;
use time::{macros::format_description, OffsetDateTime, PrimitiveDateTime};

type HmacSha256 = Hmac<Sha256>;

pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";
/// AWS rejects requests whose `x-amz-date` is more than 15 minutes off.
pub const MAX_SKEW_SECS: i64 = 15 * 60;

/// The credentials and scope the emulator accepts.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub region: String,
    pub service: String,
}

/// What is needed from one HTTP request to check its signature.
#[derive(Debug, Clone)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// Path exactly as received (before any percent-decoding).
    pub raw_path: &'a str,
    pub raw_query: Option<&'a str>,
    /// All request headers; names in any case. Repeated names are allowed.
    pub headers: &'a [(String, String)],
    /// Lowercase hex SHA-256 of the body as received. A gateway hashes the body
    /// where it buffers it and sends only the hash to the verifier.
    pub payload_sha256: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SigV4Error {
    #[error("Missing Authentication Token")]
    Missing,
    #[error("Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters with algorithm AWS4-HMAC-SHA256: {0}")]
    Malformed(String),
    #[error("The security token included in the request is invalid.")]
    UnknownAccessKey(String),
    #[error("Credential should be scoped to a valid region, service and date: {0}")]
    BadScope(String),
    #[error("Signature expired: {request} is now earlier than {earliest} ({now} - 15 min.) or later than {latest}")]
    Expired {
        request: String,
        now: String,
        earliest: String,
        latest: String,
    },
    #[error("The provided x-amz-content-sha256 header does not match what was computed.")]
    PayloadHashMismatch,
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details. The Canonical String for this request should have been '{canonical_request}' (SHA-256 {canonical_request_hash}); the String-to-Sign should have been '{string_to_sign}'")]
    Mismatch {
        canonical_request: String,
        canonical_request_hash: String,
        string_to_sign: String,
    },
}

impl SigV4Error {
    /// The `x-amzn-ErrorType` AWS uses for this failure.
    pub fn error_type(&self) -> &'static str {
        match self {
            SigV4Error::Missing => "MissingAuthenticationTokenException",
            SigV4Error::Malformed(_) => "IncompleteSignatureException",
            SigV4Error::UnknownAccessKey(_) => "UnrecognizedClientException",
            SigV4Error::BadScope(_)
            | SigV4Error::Expired { .. }
            | SigV4Error::PayloadHashMismatch
            | SigV4Error::Mismatch { .. } => "InvalidSignatureException",
        }
    }
}

/// Parsed `Authorization: AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthHeader {
    pub access_key_id: String,
    pub date: String,
    pub region: String,
    pub service: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl AuthHeader {
    pub fn parse(value: &str) -> Result<Self, SigV4Error> {
        let malformed = || SigV4Error::Malformed(value.to_owned());
        let rest = value
            .trim()
            .strip_prefix(ALGORITHM)
            .ok_or_else(malformed)?
            .trim_start();
        let (mut credential, mut signed, mut signature) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("Credential=") {
                credential = Some(v);
            } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
                signed = Some(v);
            } else if let Some(v) = part.strip_prefix("Signature=") {
                signature = Some(v);
            }
        }
        let (credential, signed, signature) = match (credential, signed, signature) {
            (Some(c), Some(h), Some(s)) => (c, h, s),
            _ => return Err(malformed()),
        };
        let scope: Vec<&str> = credential.split('/').collect();
        if scope.len() != 5 || scope[4] != "aws4_request" || scope[0].is_empty() {
            return Err(malformed());
        }
        Ok(Self {
            access_key_id: scope[0].to_owned(),
            date: scope[1].to_owned(),
            region: scope[2].to_owned(),
            service: scope[3].to_owned(),
            signed_headers: signed.split(';').map(|h| h.to_ascii_lowercase()).collect(),
            signature: signature.to_ascii_lowercase(),
        })
    }

    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }
}

/// botocore `remove_dot_segments`: drops `.`/`..` and empty segments.
pub fn normalize_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    let first = if path.starts_with('/') { "/" } else { "" };
    let last = if path.ends_with('/') && !out.is_empty() {
        "/"
    } else {
        ""
    };
    format!("{first}{}{last}", out.join("/"))
}

/// Percent-encodes every byte except unreserved characters and those in `safe`.
pub fn uri_encode(s: &str, safe: &[u8]) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || safe.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The canonical URI: `quote(normalize_url_path(raw_path), safe='/~')`.
pub fn canonical_uri(raw_path: &str) -> String {
    uri_encode(&normalize_path(raw_path), b"/")
}

/// Sorted `key=value` pairs, each re-encoded as AWS requires.
pub fn canonical_query(raw_query: Option<&str>) -> String {
    let Some(q) = raw_query.filter(|q| !q.is_empty()) else {
        return String::new();
    };
    let mut pairs: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(k), b""),
                uri_encode(&percent_decode(v), b""),
            )
        })
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Lossy percent-decoding (invalid escapes are kept verbatim).
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            if let Some(v) = hex {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn collapse_ws(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `name:value\n` for each signed header; repeated headers joined by `,`.
pub fn canonical_headers(headers: &[(String, String)], signed: &[String]) -> String {
    let mut out = String::new();
    for name in signed {
        let values: Vec<String> = headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| collapse_ws(v))
            .collect();
        out.push_str(name);
        out.push(':');
        out.push_str(&values.join(","));
        out.push('\n');
    }
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

pub fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The canonical request for `req`, given the signed header list.
pub fn canonical_request(req: &SignedRequest<'_>, signed_headers: &[String]) -> String {
    let payload_hash = match header(req.headers, "x-amz-content-sha256") {
        Some(UNSIGNED_PAYLOAD) => UNSIGNED_PAYLOAD.to_owned(),
        _ => req.payload_sha256.to_owned(),
    };
    format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method,
        canonical_uri(req.raw_path),
        canonical_query(req.raw_query),
        canonical_headers(req.headers, signed_headers),
        signed_headers.join(";"),
        payload_hash
    )
}

pub fn string_to_sign(amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

pub fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    PrimitiveDateTime::parse(s, fmt)
        .ok()
        .map(PrimitiveDateTime::assume_utc)
}

pub fn format_amz_date(t: OffsetDateTime) -> String {
    let fmt = format_description!("[year][month][day]T[hour][minute][second]Z");
    t.format(fmt).unwrap_or_default()
}

/// Verifies `req` against `creds` at time `now`. Returns the access key id.
pub fn verify(
    req: &SignedRequest<'_>,
    creds: &Credentials,
    now: OffsetDateTime,
) -> Result<String, SigV4Error> {
    let auth = header(req.headers, "authorization").ok_or(SigV4Error::Missing)?;
    let auth = AuthHeader::parse(auth)?;
    if auth.access_key_id != creds.access_key_id {
        return Err(SigV4Error::UnknownAccessKey(auth.access_key_id));
    }
    let amz_date = header(req.headers, "x-amz-date")
        .ok_or_else(|| SigV4Error::Malformed("missing X-Amz-Date header".to_owned()))?
        .trim();
    let when = parse_amz_date(amz_date)
        .ok_or_else(|| SigV4Error::Malformed(format!("bad X-Amz-Date {amz_date:?}")))?;
    if !amz_date.starts_with(&auth.date)
        || auth.region != creds.region
        || auth.service != creds.service
    {
        return Err(SigV4Error::BadScope(format!(
            "got {}, expected {}/{}/{}",
            auth.scope(),
            &amz_date[..8.min(amz_date.len())],
            creds.region,
            creds.service
        )));
    }
    if (when - now).whole_seconds().abs() > MAX_SKEW_SECS {
        let skew = time::Duration::seconds(MAX_SKEW_SECS);
        return Err(SigV4Error::Expired {
            request: amz_date.to_owned(),
            now: format_amz_date(now),
            earliest: format_amz_date(now - skew),
            latest: format_amz_date(now + skew),
        });
    }
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::Malformed(
            "SignedHeaders must include host".to_owned(),
        ));
    }
    if let Some(claimed) = header(req.headers, "x-amz-content-sha256") {
        if claimed != UNSIGNED_PAYLOAD && !claimed.eq_ignore_ascii_case(req.payload_sha256) {
            return Err(SigV4Error::PayloadHashMismatch);
        }
    }
    let canonical = canonical_request(req, &auth.signed_headers);
    let sts = string_to_sign(amz_date, &auth.scope(), &canonical);
    let key = signing_key(
        &creds.secret_access_key,
        &auth.date,
        &auth.region,
        &auth.service,
    );
    let mut mac = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(sts.as_bytes());
    let provided = hex::decode(&auth.signature).unwrap_or_default();
    if mac.verify_slice(&provided).is_err() {
        return Err(SigV4Error::Mismatch {
            canonical_request_hash: sha256_hex(canonical.as_bytes()),
            canonical_request: canonical,
            string_to_sign: sts,
        });
    }
    Ok(auth.access_key_id)
}

/// Signs a request the way botocore does (all given headers plus `host` and
/// `x-amz-date` are signed). Returns the `Authorization` header value.
/// `headers` must already contain `host` and `x-amz-date`.
pub fn sign(req: &SignedRequest<'_>, creds: &Credentials, amz_date: &str) -> String {
    let mut signed: Vec<String> = req
        .headers
        .iter()
        .map(|(n, _)| n.to_ascii_lowercase())
        .filter(|n| n != "authorization")
        .collect();
    signed.sort();
    signed.dedup();
    let date = &amz_date[..8.min(amz_date.len())];
    let scope = format!("{date}/{}/{}/aws4_request", creds.region, creds.service);
    let canonical = canonical_request(req, &signed);
    let sts = string_to_sign(amz_date, &scope, &canonical);
    let key = signing_key(
        &creds.secret_access_key,
        date,
        &creds.region,
        &creds.service,
    );
    let sig = hex::encode(hmac(&key, sts.as_bytes()));
    format!(
        "{ALGORITHM} Credential={}/{scope}, SignedHeaders={}, Signature={sig}",
        creds.access_key_id,
        signed.join(";")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    fn aws_example_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            region: "us-east-1".into(),
            service: "service".into(),
        }
    }

    /// AWS SigV4 test suite, `get-vanilla`.
    #[test]
    fn aws_get_vanilla_vector() {
        let auth = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31";
        let headers = h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
            ("Authorization", auth),
        ]);
        let req = SignedRequest {
            method: "GET",
            raw_path: "/",
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b""),
        };
        let signed = vec!["host".to_owned(), "x-amz-date".to_owned()];
        assert_eq!(
            canonical_request(&req, &signed),
            "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        let now = parse_amz_date("20150830T123600Z").unwrap();
        assert_eq!(
            verify(&req, &aws_example_creds(), now),
            Ok("AKIDEXAMPLE".to_owned())
        );
        // Our signer reproduces the same header.
        let no_auth = h(&[
            ("Host", "example.amazonaws.com"),
            ("X-Amz-Date", "20150830T123600Z"),
        ]);
        let req2 = SignedRequest {
            headers: &no_auth,
            ..req.clone()
        };
        assert_eq!(sign(&req2, &aws_example_creds(), "20150830T123600Z"), auth);
    }

    fn emulator_creds() -> Credentials {
        Credentials {
            access_key_id: "AKIATOLLGATEEMULATOR".into(),
            secret_access_key: "tollgate-emulator-secret".into(),
            region: "us-east-1".into(),
            service: "bedrock".into(),
        }
    }

    const ARN_PATH: &str = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%2Fabc123/converse";
    const ARN_BODY: &[u8] = br#"{"messages":[{"role":"user","content":[{"text":"hi"}]}]}"#;

    /// Produced by botocore 1.44.5 `SigV4Auth(creds, "bedrock", "us-east-1")`
    /// for a boto3-style request (`:` → `%3A`, `/` → `%2F` in the model label).
    #[test]
    fn botocore_double_encoded_arn_vector() {
        let headers = h(&[
            ("Content-Type", "application/json"),
            ("Host", "bedrock-runtime.us-east-1.amazonaws.com"),
            ("X-Amz-Date", "20261123T203404Z"),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIATOLLGATEEMULATOR/20261123/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=cf2b3fa498a271aa45651c4888dfe01546c7b7246f6b97b4bd2338f515c9d794"),
        ]);
        let req = SignedRequest {
            method: "POST",
            raw_path: ARN_PATH,
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(ARN_BODY),
        };
        assert_eq!(
            canonical_uri(ARN_PATH),
            "/model/arn%253Aaws%253Abedrock%253Aus-east-1%253A123456789012%253Aapplication-inference-profile%252Fabc123/converse"
        );
        let now = parse_amz_date("20261123T203904Z").unwrap();
        assert_eq!(
            verify(&req, &emulator_creds(), now),
            Ok("AKIATOLLGATEEMULATOR".to_owned())
        );
    }

    fn signed_request_headers(path: &str, body: &[u8], date: &str) -> Vec<(String, String)> {
        let mut headers = h(&[
            ("host", "127.0.0.1:9180"),
            ("x-amz-date", date),
            ("content-type", "application/json"),
        ]);
        let req = SignedRequest {
            method: "POST",
            raw_path: path,
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(body),
        };
        let auth = sign(&req, &emulator_creds(), date);
        headers.push(("authorization".into(), auth));
        headers
    }

    #[test]
    fn anthropic_style_literal_colon_path_round_trips() {
        let path = "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile%2Fabc/invoke";
        assert_eq!(
            canonical_uri(path),
            "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Aapplication-inference-profile%252Fabc/invoke"
        );
        let date = "20260101T000000Z";
        let headers = signed_request_headers(path, b"{}", date);
        let req = SignedRequest {
            method: "POST",
            raw_path: path,
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b"{}"),
        };
        let now = parse_amz_date(date).unwrap();
        assert!(verify(&req, &emulator_creds(), now).is_ok());
        // Same request, path decoded by a proxy in between: signature breaks.
        let decoded = "/model/arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/abc/invoke";
        let req = SignedRequest {
            raw_path: decoded,
            ..req
        };
        match verify(&req, &emulator_creds(), now) {
            Err(SigV4Error::Mismatch {
                canonical_request_hash,
                ..
            }) => assert_eq!(canonical_request_hash.len(), 64),
            other => panic!("expected mismatch, got {other:?}"),
        }
    }

    #[test]
    fn failures_are_classified() {
        let date = "20260101T000000Z";
        let now = parse_amz_date(date).unwrap();
        let headers = signed_request_headers("/model/m/converse", b"{}", date);
        let req = SignedRequest {
            method: "POST",
            raw_path: "/model/m/converse",
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b"{}"),
        };
        assert!(verify(&req, &emulator_creds(), now).is_ok());

        // Body tampered.
        let bad_body = SignedRequest {
            payload_sha256: &sha256_hex(b"{ }"),
            ..req.clone()
        };
        let e = verify(&bad_body, &emulator_creds(), now).unwrap_err();
        assert_eq!(e.error_type(), "InvalidSignatureException");

        // Wrong secret.
        let mut other = emulator_creds();
        other.secret_access_key = "nope".into();
        let e = verify(&req, &other, now).unwrap_err();
        assert!(matches!(e, SigV4Error::Mismatch { .. }));

        // Unknown key.
        other = emulator_creds();
        other.access_key_id = "AKIAOTHER".into();
        let e = verify(&req, &other, now).unwrap_err();
        assert_eq!(e.error_type(), "UnrecognizedClientException");

        // Clock skew.
        let late = now + time::Duration::minutes(16);
        let e = verify(&req, &emulator_creds(), late).unwrap_err();
        assert!(e.to_string().starts_with("Signature expired"), "{e}");
        assert!(verify(&req, &emulator_creds(), now + time::Duration::minutes(14)).is_ok());

        // Wrong region in scope.
        other = emulator_creds();
        other.region = "eu-west-1".into();
        let e = verify(&req, &other, now).unwrap_err();
        assert_eq!(e.error_type(), "InvalidSignatureException");

        // Missing.
        let none: Vec<(String, String)> = Vec::new();
        let e = verify(
            &SignedRequest {
                headers: &none,
                ..req.clone()
            },
            &emulator_creds(),
            now,
        )
        .unwrap_err();
        assert_eq!(e.error_type(), "MissingAuthenticationTokenException");
    }

    #[test]
    fn payload_hash_header_must_match() {
        let date = "20260101T000000Z";
        let now = parse_amz_date(date).unwrap();
        let mut headers = signed_request_headers("/model/m/invoke", b"{}", date);
        headers.push(("x-amz-content-sha256".into(), sha256_hex(b"other")));
        let req = SignedRequest {
            method: "POST",
            raw_path: "/model/m/invoke",
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b"{}"),
        };
        assert_eq!(
            verify(&req, &emulator_creds(), now),
            Err(SigV4Error::PayloadHashMismatch)
        );
    }

    #[test]
    fn unsigned_payload_is_accepted_when_signed_as_such() {
        let date = "20260101T000000Z";
        let now = parse_amz_date(date).unwrap();
        let mut headers = h(&[
            ("host", "localhost"),
            ("x-amz-date", date),
            ("x-amz-content-sha256", UNSIGNED_PAYLOAD),
        ]);
        let req = SignedRequest {
            method: "POST",
            raw_path: "/model/m/invoke",
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b"anything"),
        };
        let auth = sign(&req, &emulator_creds(), date);
        headers.push(("authorization".into(), auth));
        let req = SignedRequest {
            method: "POST",
            raw_path: "/model/m/invoke",
            raw_query: None,
            headers: &headers,
            payload_sha256: &sha256_hex(b"anything"),
        };
        assert!(verify(&req, &emulator_creds(), now).is_ok());
    }

    #[test]
    fn path_and_query_canonicalisation() {
        assert_eq!(normalize_path("/a/./b/../c//d/"), "/a/c/d/");
        assert_eq!(normalize_path(""), "/");
        assert_eq!(canonical_uri("/a b/~x"), "/a%20b/~x");
        assert_eq!(canonical_query(Some("b=2&a=1&a=0")), "a=0&a=1&b=2");
        assert_eq!(canonical_query(Some("k=a%20b")), "k=a%20b");
        assert_eq!(percent_decode("arn%3Aaws%2Fx%zz%4"), "arn:aws/x%zz%4");
        assert_eq!(
            canonical_headers(
                &h(&[("X-A", "  a   b  "), ("x-a", "c")]),
                &["x-a".to_owned()]
            ),
            "x-a:a b,c\n"
        );
    }
}
