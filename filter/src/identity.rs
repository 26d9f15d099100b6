//! Who is calling (the credential, resolved to a tenant by the sidecar) and the
//! attribution labels they attach. Identity never comes from attribution headers.

use crate::reply::LocalReply;
use crate::request::valid_metadata_value;
use tollgate_wire::api::{Attribution, Credential};

pub const TENANT_HEADER: &str = "x-tenant-id";
pub const ATTRIBUTION_HEADERS: [&str; 4] = [
    "x-application-id",
    "x-cost-center",
    "x-environment",
    "x-user-id",
];

/// Picks the credential in order of preference: bearer key, SigV4, JWT claim,
/// trusted tenant header.
pub fn credential(
    authorization: Option<&str>,
    jwt_tenant: Option<String>,
    trusted_tenant: Option<&str>,
) -> Result<Credential, LocalReply> {
    if let Some(auth) = authorization.map(str::trim) {
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
        if scheme == "AWS4-HMAC-SHA256" && jwt_tenant.is_none() && trusted_tenant.is_none() {
            return Err(LocalReply::new(
                403,
                "UnrecognizedClientException",
                "SigV4 tenant credentials are not enabled on this gateway; send the Tollgate key as Authorization: Bearer <key> (AWS_BEARER_TOKEN_BEDROCK)",
            ));
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
    let n = name.to_ascii_lowercase();
    n == "authorization" || n == TENANT_HEADER || n.starts_with("x-amz-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_wins() {
        assert_eq!(
            credential(Some("Bearer abc"), Some("jwt-t".into()), Some("hdr")).unwrap(),
            Credential::Bearer { key: "abc".into() }
        );
        assert_eq!(
            credential(Some("bearer   abc "), None, None).unwrap(),
            Credential::Bearer { key: "abc".into() }
        );
        assert_eq!(
            credential(Some("Bearer "), None, None).unwrap_err().status,
            401
        );
    }

    #[test]
    fn sigv4_is_refused_clearly_until_enabled() {
        let e = credential(Some("AWS4-HMAC-SHA256 Credential=AKID/..."), None, None).unwrap_err();
        assert_eq!(e.status, 403);
        assert_eq!(e.error_type, "UnrecognizedClientException");
    }

    #[test]
    fn fallbacks() {
        assert_eq!(
            credential(None, Some("t1".into()), None).unwrap(),
            Credential::Jwt {
                tenant_id: "t1".into()
            }
        );
        assert_eq!(
            credential(None, None, Some("t2")).unwrap(),
            Credential::TrustedHeader {
                tenant_id: "t2".into()
            }
        );
        assert_eq!(credential(None, None, None).unwrap(), Credential::None);
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
