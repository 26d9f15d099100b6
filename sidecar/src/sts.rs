//! Who the gateway's AWS credentials are: the default credential chain, then
//! STS `GetCallerIdentity` (a SigV4-signed Query call, which needs no IAM
//! permission), for `tollgate-sidecar doctor`.

use std::time::Duration;
use thiserror::Error;
use time::OffsetDateTime;
use tollgate_wire::sigv4::{self, Credentials, SignedRequest};

/// Credentials as resolved, with where they came from.
#[derive(Clone)]
pub struct AwsCredentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// Where they were looked up.
    pub source: &'static str,
}

impl std::fmt::Debug for AwsCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the token.
        f.debug_struct("AwsCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StsError {
    #[error("no AWS credentials resolve: {0}")]
    NoCredentials(String),
    #[error("STS at {endpoint} is unreachable: {reason}")]
    Unreachable { endpoint: String, reason: String },
    #[error("STS refused the credentials ({status} {code}): {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    #[error("STS answered {status} without an identity: {body}")]
    Unreadable { status: u16, body: String },
}

/// The AWS SDK's default chain (environment, profile, SSO, web identity,
/// container and instance roles) when the sidecar is built with AWS support;
/// the environment's `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` otherwise.
pub async fn resolve_credentials() -> Result<AwsCredentials, StsError> {
    #[cfg(feature = "dynamodb")]
    {
        use aws_sdk_dynamodb::config::ProvideCredentials;
        let conf = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .load()
            .await;
        let provider = conf.credentials_provider().ok_or_else(|| {
            StsError::NoCredentials("the AWS SDK has no credential provider".into())
        })?;
        let c = provider
            .provide_credentials()
            .await
            .map_err(|e| StsError::NoCredentials(format!("{e}")))?;
        Ok(AwsCredentials {
            access_key_id: c.access_key_id().to_owned(),
            secret_access_key: c.secret_access_key().to_owned(),
            session_token: c.session_token().map(str::to_owned),
            source: "the AWS SDK's default chain",
        })
    }
    #[cfg(not(feature = "dynamodb"))]
    {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(access_key_id), Some(secret_access_key)) => Ok(AwsCredentials {
                access_key_id,
                secret_access_key,
                session_token: var("AWS_SESSION_TOKEN"),
                source: "the environment",
            }),
            _ => Err(StsError::NoCredentials(
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set (this build reads only the environment)"
                    .into(),
            )),
        }
    }
}

/// STS's endpoint for `region`: `AWS_ENDPOINT_URL_STS`, else `AWS_ENDPOINT_URL`,
/// else the regional endpoint.
pub fn endpoint(region: &str) -> String {
    ["AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
}

const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// The caller's ARN, from `GetCallerIdentity` at `endpoint`.
pub async fn caller_arn(
    http: &reqwest::Client,
    endpoint: &str,
    region: &str,
    creds: &AwsCredentials,
) -> Result<String, StsError> {
    let url = reqwest::Url::parse(endpoint).map_err(|e| StsError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason: format!("not a URL: {e}"),
    })?;
    let host = match (url.host_str(), url.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_owned(),
        (None, _) => {
            return Err(StsError::Unreachable {
                endpoint: endpoint.to_owned(),
                reason: "no host".into(),
            })
        }
    };
    let amz_date = sigv4::format_amz_date(OffsetDateTime::now_utc());
    let mut headers = vec![
        (
            "content-type".to_owned(),
            "application/x-www-form-urlencoded; charset=utf-8".to_owned(),
        ),
        ("host".to_owned(), host),
        ("x-amz-date".to_owned(), amz_date.clone()),
    ];
    if let Some(t) = &creds.session_token {
        headers.push(("x-amz-security-token".to_owned(), t.clone()));
    }
    let payload = sigv4::sha256_hex(BODY.as_bytes());
    let path = match url.path() {
        "" => "/",
        p => p,
    };
    let auth = sigv4::sign(
        &SignedRequest {
            method: "POST",
            raw_path: path,
            raw_query: None,
            headers: &headers,
            payload_sha256: &payload,
        },
        &Credentials {
            access_key_id: creds.access_key_id.clone(),
            secret_access_key: creds.secret_access_key.clone(),
            region: region.to_owned(),
            service: "sts".to_owned(),
        },
        &amz_date,
    );
    let mut req = http
        .post(url.clone())
        .timeout(Duration::from_secs(5))
        .header("authorization", auth)
        .body(BODY);
    for (k, v) in headers.iter().filter(|(k, _)| k != "host") {
        req = req.header(k.as_str(), v.as_str());
    }
    let resp = req.send().await.map_err(|e| StsError::Unreachable {
        endpoint: endpoint.to_owned(),
        reason: e.to_string(),
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    parse(status, &body)
}

/// `GetCallerIdentity`'s answer: the ARN, or STS's error code and message.
fn parse(status: u16, body: &str) -> Result<String, StsError> {
    if status == 200 {
        if let Some(arn) = tag(body, "Arn") {
            return Ok(arn.to_owned());
        }
    } else if let Some(code) = tag(body, "Code") {
        return Err(StsError::Rejected {
            status,
            code: code.to_owned(),
            message: tag(body, "Message").unwrap_or_default().to_owned(),
        });
    }
    Err(StsError::Unreadable {
        status,
        body: body.chars().take(200).collect(),
    })
}

/// The text of the first `<name>…</name>` (STS's answers are small and flat).
fn tag<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let start = xml.find(&open)? + open.len();
    let len = xml[start..].find(&format!("</{name}>"))?;
    Some(xml[start..start + len].trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_identity_and_the_errors() {
        let ok = "<GetCallerIdentityResponse><GetCallerIdentityResult>\
                  <Arn>arn:aws:iam::1:user/x</Arn><Account>1</Account>\
                  </GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(parse(200, ok).unwrap(), "arn:aws:iam::1:user/x");
        let denied = "<ErrorResponse><Error><Type>Sender</Type>\
                      <Code>InvalidClientTokenId</Code>\
                      <Message>The security token included in the request is invalid.</Message>\
                      </Error></ErrorResponse>";
        assert_eq!(
            parse(403, denied),
            Err(StsError::Rejected {
                status: 403,
                code: "InvalidClientTokenId".into(),
                message: "The security token included in the request is invalid.".into()
            })
        );
        assert!(matches!(
            parse(502, "<html>bad gateway</html>"),
            Err(StsError::Unreadable { status: 502, .. })
        ));
        assert!(matches!(parse(200, "{}"), Err(StsError::Unreadable { .. })));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let c = AwsCredentials {
            access_key_id: "AKIAEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI".into(),
            session_token: Some("tok-secret".into()),
            source: "the environment",
        };
        let d = format!("{c:?}");
        assert!(d.contains("AKIAEXAMPLE"));
        assert!(!d.contains("wJalrXUtnFEMI") && !d.contains("tok-secret"));
    }
}
