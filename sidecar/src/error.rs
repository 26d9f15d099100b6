//! Error type of the sidecar library.

/// Everything that can go wrong inside the sidecar. The HTTP layer maps each
/// variant to a status code and an `ApiError` body (`{"message": ...}`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller sent something invalid (HTTP 400). The message names the field.
    #[error("{0}")]
    Invalid(String),
    /// The addressed resource does not exist (HTTP 404).
    #[error("{0}")]
    NotFound(String),
    /// The resource is in a state that forbids the change now (HTTP 409); the
    /// message says what to wait for.
    #[error("{0}")]
    Conflict(String),
    /// Missing or wrong admin token (HTTP 401).
    #[error("{0}")]
    Unauthorized(String),
    /// The ledger database failed (HTTP 500).
    #[error("database error: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored value could not be read back (HTTP 500).
    #[error("corrupt stored value: {0}")]
    Corrupt(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("json error: {0}")]
    Json(#[from] serde_json::Error),
    #[error("http client error: {0}")]
    Http(#[from] reqwest::Error),
    /// A SigV4 secret could not be sealed or opened, or a sealing key is
    /// malformed (HTTP 500: the sidecar's keys need fixing, not the request).
    #[error(transparent)]
    Seal(#[from] crate::seal::SealError),
    /// `rewrap` finished with secrets it could not re-seal (exit status 1).
    #[error(transparent)]
    RewrapIncomplete(#[from] crate::rewrap::Incomplete),
    #[error("internal error: {0}")]
    Internal(String),
    /// An AWS service the sidecar called refused or failed (HTTP 502); the
    /// message says what to do (`aws::AwsError`).
    #[error("{0}")]
    Upstream(String),
}

impl Error {
    pub fn invalid(msg: impl Into<String>) -> Self {
        Self::Invalid(msg.into())
    }

    pub fn not_found(msg: impl Into<String>) -> Self {
        Self::NotFound(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
