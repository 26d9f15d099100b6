//! Who is calling (the credential, resolved to a tenant by the sidecar) and the
//! attribution labels they attach. Identity never comes from attribution headers.

use crate::reply::LocalReply;
use crate::request::valid_metadata_value;
use tollgate_wire::api::{Attribution, Credential, SigV4Proof};

pub const TENANT_HEADER: &str = "x-tenant-id";
pub const ATTRIBUTION_HEADERS: [&str; 4] = [
    "x-application-id",
    "x-cost-center",
    "x-environment",
    "x-user-id",
];

pub const SIGV4_ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// The request as received, for SigV4 verification.
pub struct ReceivedRequest<'a> {
    pub method: &'a str,
    /// `:path`, query included.
    pub path: &'a str,
    /// All request headers, pseudo-headers included.
    pub headers: &'a [(String, String)],
}

/// Picks the credential in order of preference: bearer key, SigV4 signature
/// (verified by the sidecar; `payload_sha256` is filled in once the body is
/// read), JWT claim, trusted tenant header.
pub fn credential(
    req: &ReceivedRequest<'_>,
    jwt_tenant: Option<String>,
    trusted_tenant: Option<&str>,
) -> Result<Credential, LocalReply> {
    let authorization = req
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        .map(|(_, v)| v.trim());
    if let Some(auth) = authorization {
        let (scheme, rest) = auth.split_once(' ').unwrap_or((auth, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            let key = rest.trim();
            if key.is_empty() {
                return Err(LocalReply::new(
                    401,
                    "UnrecognizedClientException",
                    "Authorization: Bearer carries no key",
                ));
            }
            return Ok(Credential::Bearer {
                key: key.to_owned(),
            });
        }
        if scheme == SIGV4_ALGORITHM {
            return sigv4_proof(req, rest).map(Credential::Sigv4);
        }
    }
    if let Some(tenant_id) = jwt_tenant.filter(|t| !t.is_empty()) {
        return Ok(Credential::Jwt { tenant_id });
    }
    if let Some(t) = trusted_tenant.map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(Credential::TrustedHeader {
            tenant_id: t.to_owned(),
        });
    }
    Ok(Credential::None)
}

/// Collects what the sidecar needs to check a SigV4 signature: the headers the
/// client signed (`host` is Envoy's `:authority`), as received.
fn sigv4_proof(req: &ReceivedRequest<'_>, auth_params: &str) -> Result<SigV4Proof, LocalReply> {
    let signed = auth_params
        .split(',')
        .filter_map(|p| p.trim().strip_prefix("SignedHeaders="))
        .next()
        .ok_or_else(|| {
            LocalReply::new(
                403,
                "IncompleteSignatureException",
                "Authorization header lacks SignedHeaders",
            )
        })?;
    let mut headers = Vec::new();
    for name in signed.split(';').map(str::trim).filter(|n| !n.is_empty()) {
        let wanted = if name == "host" { ":authority" } else { name };
        for (_, v) in req
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(wanted))
        {
            headers.push((name.to_ascii_lowercase(), v.clone()));
        }
    }
    for always in ["authorization", "x-amz-date", "x-amz-content-sha256"] {
        if !signed.split(';').any(|n| n.trim() == always) {
            if let Some((_, v)) = req
                .headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(always))
            {
                headers.push((always.to_owned(), v.clone()));
            }
        }
    }
    let (raw_path, raw_query) = match req.path.split_once('?') {
        Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
        None => (req.path.to_owned(), None),
    };
    Ok(SigV4Proof {
        method: req.method.to_owned(),
        raw_path,
        raw_query,
        headers,
        payload_sha256: String::new(),
    })
}

/// AWS rejects signatures more than 15 minutes off.
pub const MAX_SIGV4_SKEW_SECS: i64 = 15 * 60;

/// Seconds since the Unix epoch of an `x-amz-date` (`20261123T200000Z`).
pub fn amz_date_epoch(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hh, mm, ss) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3_600 + mm * 60 + ss)
}

/// Whether a SigV4 proof's `x-amz-date` is within AWS's skew of `now_secs`.
pub fn sigv4_fresh(proof: &SigV4Proof, now_secs: i64) -> bool {
    proof
        .headers
        .iter()
        .find(|(k, _)| k == "x-amz-date")
        .and_then(|(_, v)| amz_date_epoch(v.trim()))
        .is_some_and(|t| (t - now_secs).abs() <= MAX_SIGV4_SKEW_SECS)
}

/// Lowercase hex SHA-256, the SigV4 payload hash.
pub fn sha256_hex(body: &[u8]) -> String {
    use sha2::Digest as _;
    hex(&sha2::Sha256::digest(body))
}

/// Lowercase hex of `bytes`, in one allocation (per-byte `format!` cost more
/// than the hash it printed).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// Reads the attribution headers; a value Bedrock could not log is refused.
pub fn attribution<'a>(
    mut header: impl FnMut(&str) -> Option<&'a str>,
) -> Result<Attribution, LocalReply> {
    let mut read = |name: &str| -> Result<Option<String>, LocalReply> {
        match header(name).map(str::trim) {
            None | Some("") => Ok(None),
            Some(v) if valid_metadata_value(v) => Ok(Some(v.to_owned())),
            Some(_) => Err(LocalReply::validation(
                400,
                format!("{name} must be at most 256 characters of [a-zA-Z0-9 :_@$#=/+,-.]"),
            )),
        }
    };
    Ok(Attribution {
        application_id: read(ATTRIBUTION_HEADERS[0])?,
        cost_center: read(ATTRIBUTION_HEADERS[1])?,
        environment: read(ATTRIBUTION_HEADERS[2])?,
        user_id: read(ATTRIBUTION_HEADERS[3])?,
    })
}

/// Fills attribution the headers left empty from Converse `requestMetadata`.
pub fn merge_body_attribution(
    a: &mut Attribution,
    md: &std::collections::BTreeMap<String, String>,
) {
    let pick = |slot: &mut Option<String>, key: &str| {
        if slot.is_none() {
            *slot = md.get(key).cloned();
        }
    };
    pick(&mut a.application_id, "application_id");
    pick(&mut a.cost_center, "cost_center");
    pick(&mut a.environment, "environment");
    pick(&mut a.user_id, "user_id");
}

/// Request headers that must not reach Bedrock: the client's credential and
/// signing headers (the gateway signs with its own) and an untrusted tenant claim.
pub fn is_stripped_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("authorization")
        || name.eq_ignore_ascii_case(TENANT_HEADER)
        || name
            .get(..6)
            .is_some_and(|p| p.eq_ignore_ascii_case("x-amz-"))
}

#[cfg(test)]
mod tests {
    use super::*;
    // The same tests run natively and, under wasm-bindgen-test, on wasm32.
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    fn with_auth(auth: Option<&str>, f: impl FnOnce(&ReceivedRequest<'_>)) {
        let mut headers = vec![
            (":authority".to_string(), "gw.example:10000".to_string()),
            ("x-amz-date".to_string(), "20261123T200000Z".to_string()),
            ("content-type".to_string(), "application/json".to_string()),
            ("x-other".to_string(), "not signed".to_string()),
        ];
        if let Some(a) = auth {
            headers.push(("authorization".to_string(), a.to_string()));
        }
        f(&ReceivedRequest {
            method: "POST",
            path: "/model/m%3A0/converse?x=1",
            headers: &headers,
        });
    }

    #[test]
    fn bearer_wins() {
        with_auth(Some("Bearer abc"), |r| {
            assert_eq!(
                credential(r, Some("jwt-t".into()), Some("hdr")).unwrap(),
                Credential::Bearer { key: "abc".into() }
            );
        });
        with_auth(Some("bearer   abc "), |r| {
            assert_eq!(
                credential(r, None, None).unwrap(),
                Credential::Bearer { key: "abc".into() }
            );
        });
        with_auth(Some("Bearer "), |r| {
            assert_eq!(credential(r, None, None).unwrap_err().status, 401)
        });
    }

    #[test]
    fn sigv4_proof_carries_the_signed_headers_as_received() {
        let auth = "AWS4-HMAC-SHA256 Credential=TGAKX/20261123/us-east-1/bedrock/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=abc";
        with_auth(Some(auth), |r| {
            let Ok(Credential::Sigv4(p)) = credential(r, Some("jwt".into()), None) else {
                panic!("expected a SigV4 proof");
            };
            assert_eq!(p.method, "POST");
            assert_eq!(p.raw_path, "/model/m%3A0/converse");
            assert_eq!(p.raw_query.as_deref(), Some("x=1"));
            let names: Vec<&str> = p.headers.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(
                names,
                ["content-type", "host", "x-amz-date", "authorization"]
            );
            assert_eq!(p.headers[1].1, "gw.example:10000");
        });
        with_auth(Some("AWS4-HMAC-SHA256 Credential=X, Signature=abc"), |r| {
            assert_eq!(
                credential(r, None, None).unwrap_err().error_type,
                "IncompleteSignatureException"
            );
        });
    }

    #[test]
    fn fallbacks() {
        with_auth(None, |r| {
            assert_eq!(
                credential(r, Some("t1".into()), None).unwrap(),
                Credential::Jwt {
                    tenant_id: "t1".into()
                }
            );
            assert_eq!(
                credential(r, None, Some("t2")).unwrap(),
                Credential::TrustedHeader {
                    tenant_id: "t2".into()
                }
            );
            assert_eq!(credential(r, None, None).unwrap(), Credential::None);
        });
    }

    #[test]
    fn amz_dates() {
        assert_eq!(amz_date_epoch("19700101T000000Z"), Some(0));
        assert_eq!(amz_date_epoch("20261123T200000Z"), Some(1_795_464_000));
        assert_eq!(amz_date_epoch("20240229T235959Z"), Some(1_709_251_199));
        assert_eq!(amz_date_epoch("2026-11-23T20:00Z"), None);
        assert_eq!(amz_date_epoch("20261323T200000Z"), None);
    }

    #[test]
    fn hex_is_lowercase_two_digits_a_byte() {
        assert_eq!(hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
        assert_eq!(hex(&[]), "");
    }

    #[test]
    fn payload_hash() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn attribution_is_validated() {
        let a = attribution(|n| match n {
            "x-application-id" => Some("chat-bot"),
            "x-cost-center" => Some(" cc-1 "),
            _ => None,
        })
        .unwrap();
        assert_eq!(a.application_id.as_deref(), Some("chat-bot"));
        assert_eq!(a.cost_center.as_deref(), Some("cc-1"));
        assert!(attribution(|n| (n == "x-user-id").then_some("a\"b")).is_err());
    }

    #[test]
    fn headers_are_stripped() {
        for h in [
            "Authorization",
            "x-amz-date",
            "X-Amz-Security-Token",
            "x-amz-content-sha256",
            "x-tenant-id",
        ] {
            assert!(is_stripped_header(h), "{h}");
        }
        for h in ["x-amzn-bedrock-trace", "content-type", "x-application-id"] {
            assert!(!is_stripped_header(h), "{h}");
        }
    }
}
