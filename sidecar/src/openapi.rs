//! The OpenAPI 3.1 document, generated from the handlers (`#[utoipa::path]` in
//! [`crate::api`]) and the wire and store types, so it cannot drift from them.
//! Served at `GET /openapi.json`; `sidecar/openapi.json` is a checked-in copy
//! for readers, regenerated with `cargo run -q -p tollgate-sidecar -- openapi >
//! sidecar/openapi.json` (a test fails when it is stale).

use crate::dataplane_auth::{is_data_plane_path, FILTER_TOKEN_HEADER};
use std::sync::LazyLock;
use tollgate_wire::api::ApiError;
use tollgate_wire::openapi::DECIMAL_PATTERN;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi as Document, RefOr, ResponseBuilder, Schema, SecurityRequirement,
};
use utoipa::{Modify, OpenApi, PartialSchema, ToSchema};

/// Security scheme names, as `security(...)` in the handlers spells them.
pub const ADMIN_TOKEN: &str = "adminToken";
pub const FILTER_TOKEN: &str = "filterToken";
pub const METRICS_TOKEN: &str = "metricsToken";

/// A decimal in a request body: the admin API parses a JSON string or number
/// from its text (`pricing::de_decimal`), never through a float.
pub struct DecimalInput;

impl PartialSchema for DecimalInput {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .pattern(Some(DECIMAL_PATTERN)),
            )
            .item(ObjectBuilder::new().schema_type(Type::Number))
            .description(Some(
                "Decimal, as a JSON string or number (parsed exactly from its text, never through a float)",
            ))
            .into()
    }
}

impl ToSchema for DecimalInput {}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tollgate budget sidecar API",
        version = "1.0.0",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
        description = "Data plane (reserve/commit/release, lease renewals) called by the Tollgate Envoy filter with `x-tollgate-filter-token` (401 without a valid one, no effect); admin API behind `Authorization: Bearer $TOLLGATE_ADMIN_TOKEN`; `/metrics` behind the metrics token or the admin token; `/healthz` and `/openapi.json` open. Money is always an exact decimal string in responses; admin request bodies accept decimals as strings or JSON numbers (parsed from their text). Errors are `{\"message\": ...}` (`ApiError`); an unknown route is 404. A reserve denial is not an HTTP error: it is a 200 whose body carries the Bedrock-shaped error the filter answers the client with.\n\nGenerated from the code (utoipa); regenerate the checked-in copy with `cargo run -q -p tollgate-sidecar -- openapi > sidecar/openapi.json`."
    ),
    servers((url = "http://127.0.0.1:9190")),
    components(schemas(ApiError, crate::self_service::SelfView)),
    tags(
        (name = "data-plane", description = "Called by the filter; needs `x-tollgate-filter-token`"),
        (name = "admin", description = "Tenants, keys, credentials, profiles, prices, aliases, usage; needs the admin token"),
        (name = "ops", description = "Health, metrics and this document"),
    )
)]
pub struct ApiDoc;

/// Security schemes, and the responses every guarded operation shares: the
/// data-plane middleware guards paths by `is_data_plane_path`, so the filter
/// token requirement is set from that same function. Applied to the whole
/// document (a `modifiers(...)` of [`ApiDoc`] would run before the routes'
/// operations are merged in).
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut Document) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            ADMIN_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("TOLLGATE_ADMIN_TOKEN"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            FILTER_TOKEN,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                FILTER_TOKEN_HEADER,
                "A filter token the sidecar accepts (--filter-token-file, TOLLGATE_FILTER_TOKEN)",
            ))),
        );
        components.add_security_scheme(
            METRICS_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("TOLLGATE_METRICS_TOKEN (the admin token works too)"))
                    .build(),
            ),
        );
        for (path, item) in doc.paths.paths.iter_mut() {
            let data_plane = is_data_plane_path(path);
            for op in operations(item) {
                if data_plane {
                    op.security = Some(vec![SecurityRequirement::new(
                        FILTER_TOKEN,
                        Vec::<String>::new(),
                    )]);
                }
                let guarded = op.security.as_ref().is_some_and(|s| !s.is_empty());
                if guarded {
                    add_error(op, "401", "Missing or invalid token; nothing was done");
                }
                if data_plane
                    || op
                        .tags
                        .as_ref()
                        .is_some_and(|t| t.iter().any(|t| t == "admin"))
                {
                    add_error(op, "500", "Store failure (the message says which)");
                }
            }
        }
    }
}

fn operations(item: &mut utoipa::openapi::PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

fn add_error(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_string())
        .or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(ApiError::schema_ref()))
                        .build(),
                )
                .into()
        });
}

trait SchemaRef {
    fn schema_ref() -> RefOr<Schema>;
}

impl<T: ToSchema> SchemaRef for T {
    fn schema_ref() -> RefOr<Schema> {
        RefOr::Ref(utoipa::openapi::Ref::from_schema_name(T::name()))
    }
}

/// The document: the routes of [`crate::api::routes`] with their schemas.
pub fn document() -> Document {
    let mut doc = crate::api::routes().split_for_parts().1;
    Security.modify(&mut doc);
    doc
}

static JSON: LazyLock<String> = LazyLock::new(|| {
    let mut json = document()
        .to_pretty_json()
        .expect("an OpenAPI document always serializes");
    json.push('\n');
    json
});

/// The document as served and checked in (pretty JSON, trailing newline).
pub fn json() -> &'static str {
    &JSON
}
