//! Bedrock-shaped errors: JSON `{"message": …}`, `x-amzn-ErrorType: <Name>`.

use thiserror::Error;

use crate::tokens::BodyError;
use tollgate_wire::sigv4::SigV4Error;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] SigV4Error),
    #[error("The security token included in the request is invalid.")]
    BadBearer,
    #[error(transparent)]
    Body(#[from] BodyError),
    #[error("{0}")]
    Validation(String),
    #[error("{0}")]
    UnknownOperation(String),
    #[error("Too many requests, please wait before trying again.")]
    Throttling,
    #[error(
        "The server encountered an internal error while processing the request (emulated fault)."
    )]
    Internal,
    #[error("The service is temporarily unable to handle the request (emulated fault).")]
    Unavailable,
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Auth(_) | ApiError::BadBearer => 403,
            ApiError::Body(_) | ApiError::Validation(_) => 400,
            ApiError::UnknownOperation(_) => 404,
            ApiError::Throttling => 429,
            ApiError::Internal => 500,
            ApiError::Unavailable => 503,
        }
    }

    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::Auth(e) => e.error_type(),
            ApiError::BadBearer => "UnrecognizedClientException",
            ApiError::Body(_) | ApiError::Validation(_) => "ValidationException",
            ApiError::UnknownOperation(_) => "UnknownOperationException",
            ApiError::Throttling => "ThrottlingException",
            ApiError::Internal => "InternalServerException",
            ApiError::Unavailable => "ServiceUnavailableException",
        }
    }

    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({"message": self.to_string()})).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_match_bedrock_table() {
        assert_eq!(ApiError::Throttling.status(), 429);
        assert_eq!(ApiError::Throttling.error_type(), "ThrottlingException");
        assert_eq!(ApiError::Auth(SigV4Error::Missing).status(), 403);
        assert_eq!(
            ApiError::Auth(SigV4Error::Missing).error_type(),
            "MissingAuthenticationTokenException"
        );
        assert_eq!(ApiError::Validation("x".into()).status(), 400);
        assert_eq!(ApiError::Internal.status(), 500);
        assert_eq!(ApiError::Unavailable.status(), 503);
        let body: serde_json::Value = serde_json::from_slice(&ApiError::Throttling.body()).unwrap();
        assert_eq!(
            body["message"],
            "Too many requests, please wait before trying again."
        );
    }
}
