//! Closing the loop with AWS: application inference profiles created and
//! discovered through Bedrock's control plane ([`profiles`]), the ledger
//! compared with Cost Explorer ([`reconcile`]), and prices read from the AWS
//! Price List API ([`price_import`]).
//!
//! The AWS SDK parts need the cargo feature `aws` (on by default); the pure
//! parts (tag rules, the reconciliation's arithmetic, reading Price List
//! products) build without it, so they are unit-tested in every build. The
//! clients come from the SDK's standard configuration: the default credential
//! chain, `AWS_REGION`, and the service endpoint variables
//! `AWS_ENDPOINT_URL_BEDROCK`, `AWS_ENDPOINT_URL_COST_EXPLORER`,
//! `AWS_ENDPOINT_URL_PRICING` (or `AWS_ENDPOINT_URL`).

pub mod price_import;
pub mod profiles;
pub mod reconcile;
pub mod routes;

use thiserror::Error;

/// What selecting an AWS command says in a build without the SDK.
pub const NO_AWS: &str = "this build has no AWS support; rebuild with --features aws";

/// An AWS call that failed, in words an operator can act on.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AwsError {
    #[error("{NO_AWS}")]
    NotBuilt,
    #[error("no AWS Region configured: set AWS_REGION (or a region in ~/.aws/config)")]
    NoRegion,
    #[error(
        "AWS refused {action}: the credentials in use ({who}) lack the IAM permission `{action}`. \
         Add it to their policy (docs/deploy.md lists the least-privilege policy of each command). AWS said: {message}"
    )]
    AccessDenied {
        action: String,
        who: String,
        message: String,
    },
    #[error(
        "the account has reached its Bedrock quota of application inference profiles in this Region. \
         Delete unused ones (tollgate-sidecar profiles delete …) or request an increase in Service Quotas \
         (Amazon Bedrock → \"Application inference profiles per account\"). AWS said: {0}"
    )]
    Quota(String),
    #[error(
        "Bedrock does not know the model {model} here: check the model ID (an alias resolves first), \
         that the model is offered in this Region, and that model access is enabled. AWS said: {message}"
    )]
    UnknownModel { model: String, message: String },
    #[error("{0}")]
    Conflict(String),
    #[error("AWS has no {0}")]
    NotFound(String),
    #[error("AWS could not be reached for {action}: {message}")]
    Unreachable { action: String, message: String },
    #[error("{action} failed ({code}): {message}")]
    Other {
        action: String,
        code: String,
        message: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl From<AwsError> for crate::error::Error {
    fn from(e: AwsError) -> Self {
        match e {
            AwsError::NotFound(_) => Self::NotFound(e.to_string()),
            AwsError::Invalid(_) | AwsError::UnknownModel { .. } | AwsError::NotBuilt => {
                Self::Invalid(e.to_string())
            }
            other => Self::Upstream(other.to_string()),
        }
    }
}

/// Turns an SDK error into an [`AwsError`] for `action` (`bedrock:CreateInferenceProfile`, …).
#[cfg(feature = "aws")]
pub fn classify<E, R>(action: &str, err: aws_sdk_bedrock::error::SdkError<E, R>) -> AwsError
where
    E: aws_sdk_bedrock::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_bedrock::error::DisplayErrorContext;
    let Some(service) = err.as_service_error() else {
        return AwsError::Unreachable {
            action: action.to_owned(),
            message: DisplayErrorContext(&err).to_string(),
        };
    };
    let code = service.code().unwrap_or("Unknown").to_owned();
    let message = service.message().unwrap_or_default().to_owned();
    match code.as_str() {
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => {
            AwsError::AccessDenied {
                action: action.to_owned(),
                who: who_from_message(&message),
                message,
            }
        }
        "ServiceQuotaExceededException" | "LimitExceededException" => AwsError::Quota(message),
        "ConflictException" => AwsError::Conflict(message),
        "ResourceNotFoundException" => AwsError::NotFound(message),
        // Cost Explorer before its data exists: say why, not only that.
        "DataUnavailableException" => AwsError::Other {
            action: action.to_owned(),
            code,
            message: format!(
                "Cost Explorer has no data for this period yet: it starts about 24 hours after \
                 Cost Explorer is first enabled, and usage arrives up to about 24 hours late ({message})"
            ),
        },
        _ => AwsError::Other {
            action: action.to_owned(),
            code,
            message,
        },
    }
}

/// The principal an AccessDenied message names (`User: arn:… is not authorized…`).
pub fn who_from_message(message: &str) -> String {
    message
        .strip_prefix("User: ")
        .and_then(|m| m.split_whitespace().next())
        .unwrap_or("the sidecar's AWS credentials")
        .to_owned()
}

/// The SDK configuration of this process (credential chain, Region, endpoint
/// variables), loaded once.
#[cfg(feature = "aws")]
pub async fn sdk_config() -> Result<&'static aws_config::SdkConfig, AwsError> {
    static CONFIG: tokio::sync::OnceCell<aws_config::SdkConfig> =
        tokio::sync::OnceCell::const_new();
    let conf = CONFIG
        .get_or_init(|| aws_config::defaults(aws_config::BehaviorVersion::latest()).load())
        .await;
    if conf.region().is_none() {
        return Err(AwsError::NoRegion);
    }
    Ok(conf)
}

/// The Region of the SDK configuration.
#[cfg(feature = "aws")]
pub async fn region() -> Result<String, AwsError> {
    Ok(sdk_config()
        .await?
        .region()
        .map(|r| r.to_string())
        .unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_denied_names_the_action_and_the_principal() {
        let e = AwsError::AccessDenied {
            action: "bedrock:CreateInferenceProfile".into(),
            who: who_from_message("User: arn:aws:iam::1:user/x is not authorized to perform: bedrock:CreateInferenceProfile"),
            message: "no".into(),
        };
        let s = e.to_string();
        assert!(
            s.contains("lack the IAM permission `bedrock:CreateInferenceProfile`"),
            "{s}"
        );
        assert!(s.contains("arn:aws:iam::1:user/x"), "{s}");
        assert_eq!(
            who_from_message("something else"),
            "the sidecar's AWS credentials"
        );
    }
}
