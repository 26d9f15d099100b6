//! Admin API of the AWS commands: create (or reuse) a tenant's application
//! inference profile, sync the mapping from AWS, delete a profile. The sidecar
//! calls Bedrock's control plane with its own AWS credentials; a build without
//! the `aws` feature answers 400 with how to get it.

use crate::api::{Admin, AppState, JsonBody, ProfileQuery};
use crate::error::Error;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use serde::Deserialize;
use tollgate_wire::api::ApiError;
use utoipa::ToSchema;

use super::profiles::{CreateProfileInput, CreatedProfile, DeletedProfile, SyncReport};

#[utoipa::path(post, path = "/v1/tenants/{tenant}/inference-profiles", tag = "admin",
    summary = "Create (or reuse) the tenant's tagged application inference profile in AWS and map it",
    description = "Copies the model (or the geo-prefixed system profile) into an application inference profile tagged tollgate:tenant, tollgate:application, tollgate:model, cost-center, environment and the given tags, with the sidecar's AWS credentials (bedrock:ListInferenceProfiles, bedrock:ListTagsForResource, bedrock:CreateInferenceProfile, bedrock:TagResource, bedrock:GetInferenceProfile for a geo profile). An existing profile with the same Tollgate tags is reused (201 either way; `reused` tells).",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = "Tenant id")),
    request_body = CreateProfileInput,
    responses(
        (status = 201, description = "The profile, mapped", body = CreatedProfile),
        (status = 400, description = "Invalid body or tag, unknown model, or a build without AWS support", body = ApiError),
        (status = 404, description = "No such tenant", body = ApiError),
        (status = 502, description = "AWS refused (missing IAM permission, quota, name conflict) or could not be reached; the message says which", body = ApiError),
    ))]
pub async fn create_inference_profile(
    _: Admin,
    State(s): State<AppState>,
    Path(tenant): Path<String>,
    JsonBody(input): JsonBody<CreateProfileInput>,
) -> Result<Response, Error> {
    #[cfg(feature = "aws")]
    {
        use axum::response::IntoResponse;
        let created = super::profiles::create(&s.service, &tenant, input).await?;
        Ok((axum::http::StatusCode::CREATED, axum::Json(created)).into_response())
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (s, tenant, input);
        Err(Error::invalid(super::NO_AWS))
    }
}

/// Body of `POST /v1/inference-profiles/sync`.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncInput {
    /// Only this tenant's profiles.
    #[serde(default)]
    pub tenant_id: Option<String>,
}

#[utoipa::path(post, path = "/v1/inference-profiles/sync", tag = "admin",
    summary = "Map every application inference profile tagged tollgate:tenant (ListInferenceProfiles, ListTagsForResource)",
    security(("adminToken" = [])),
    request_body = SyncInput,
    responses(
        (status = 200, description = "Each profile found: mapped, or skipped and why", body = SyncReport),
        (status = 400, description = "Invalid body, or a build without AWS support", body = ApiError),
        (status = 502, description = "AWS refused or could not be reached", body = ApiError),
    ))]
pub async fn sync_inference_profiles(
    _: Admin,
    State(s): State<AppState>,
    JsonBody(input): JsonBody<SyncInput>,
) -> Result<Response, Error> {
    #[cfg(feature = "aws")]
    {
        use axum::response::IntoResponse;
        let report = super::profiles::sync(&s.service, input.tenant_id.as_deref()).await?;
        Ok(axum::Json(report).into_response())
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (s, input);
        Err(Error::invalid(super::NO_AWS))
    }
}

#[utoipa::path(delete, path = "/v1/tenants/{tenant}/inference-profiles/{model}", tag = "admin",
    summary = "Delete the mapped application inference profile in AWS and remove the mapping",
    description = "Refuses a profile whose tollgate:tenant tag names another tenant, and an ARN that is not an application inference profile. A profile AWS no longer has is unmapped all the same (`deleted_in_aws: false`).",
    security(("adminToken" = [])),
    params(("tenant" = String, Path, description = "Tenant id"),
           ("model" = String, Path, description = "Model ID or alias, as mapped"),
           ProfileQuery),
    responses(
        (status = 200, description = "Deleted and unmapped", body = DeletedProfile),
        (status = 400, description = "Not Tollgate's profile for this tenant, or a build without AWS support", body = ApiError),
        (status = 404, description = "No such tenant or mapping", body = ApiError),
        (status = 502, description = "AWS refused or could not be reached", body = ApiError),
    ))]
pub async fn delete_inference_profile(
    _: Admin,
    State(s): State<AppState>,
    Path((tenant, model)): Path<(String, String)>,
    q: Result<Query<ProfileQuery>, QueryRejection>,
) -> Result<Response, Error> {
    let Query(q) = q.map_err(|e| Error::invalid(format!("invalid query: {}", e.body_text())))?;
    #[cfg(feature = "aws")]
    {
        use axum::response::IntoResponse;
        let deleted =
            super::profiles::delete(&s.service, &tenant, q.application.as_deref(), &model).await?;
        Ok(axum::Json(deleted).into_response())
    }
    #[cfg(not(feature = "aws"))]
    {
        let _ = (s, tenant, model, q);
        Err(Error::invalid(super::NO_AWS))
    }
}
