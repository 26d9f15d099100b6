//! OpenAPI schemas (feature `openapi`, enabled by the sidecar only) for values
//! whose JSON form the Rust type does not show: exact decimals travel as strings,
//! and a denial's `error_type` is a string from a known set.

use utoipa::openapi::schema::{ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Schema};

/// What every money string matches: `rust_decimal`'s plain notation, never an
/// exponent.
pub const DECIMAL_PATTERN: &str = r"^-?[0-9]+(\.[0-9]+)?$";

/// An exact decimal USD amount. `rust_decimal` with `serde-str` writes it as a
/// JSON string so no float ever rounds it.
pub struct Money;

impl utoipa::PartialSchema for Money {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::Custom("decimal".into())))
            .pattern(Some(DECIMAL_PATTERN))
            .description(Some(
                "Exact decimal USD amount, as a JSON string (never a number, so no float rounds it)",
            ))
            .examples(["0.012207"])
            .into()
    }
}

impl utoipa::ToSchema for Money {}

/// Every `x-amzn-ErrorType` a reserve denial carries, with the status it comes
/// with. `error_type` stays a `String` on the wire (the filter passes it through).
pub const DENY_ERROR_TYPES: &[(&str, &str)] = &[
    (
        "UnrecognizedClientException",
        "401 no credential; 403 unknown or revoked key, unknown access key id",
    ),
    (
        "MissingAuthenticationTokenException",
        "403 SigV4: no Authorization header or x-amz-date",
    ),
    (
        "IncompleteSignatureException",
        "403 SigV4: malformed Authorization header",
    ),
    (
        "InvalidSignatureException",
        "403 SigV4: wrong signature, scope, payload hash or expired date",
    ),
    (
        "AccessDeniedException",
        "403 tenant inactive, model or profile not allowed, credential type not accepted",
    ),
    (
        "BudgetExceededException",
        "402 the hold does not fit the tenant's (or the model's) budget",
    ),
    (
        "ThrottlingException",
        "429 requests- or tokens-per-minute limit; retry_after_secs set",
    ),
    (
        "ValidationException",
        "400 no model named, no price for the model",
    ),
];

/// The `error_type` of a [`crate::api::Denial`].
pub struct DenyErrorType;

impl utoipa::PartialSchema for DenyErrorType {
    fn schema() -> RefOr<Schema> {
        let description = DENY_ERROR_TYPES.iter().fold(
            String::from("Bedrock error name for `x-amzn-ErrorType`:"),
            |mut d, (name, when)| {
                d.push_str(&format!("\n- `{name}`: {when}"));
                d
            },
        );
        ObjectBuilder::new()
            .schema_type(Type::String)
            .enum_values(Some(DENY_ERROR_TYPES.iter().map(|(name, _)| *name)))
            .description(Some(description))
            .into()
    }
}

impl utoipa::ToSchema for DenyErrorType {}
