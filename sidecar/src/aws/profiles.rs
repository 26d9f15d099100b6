//! Application inference profiles made and found by Tollgate: `profiles create`
//! copies a foundation model (or a system cross-Region profile) into a tagged
//! application profile and maps it; `profiles sync` maps every tagged
//! application profile it finds; `profiles delete` deletes one and unmaps it.
//!
//! Tollgate's own tags say whom a profile is for, so it can be found again:
//! `tollgate:tenant`, `tollgate:application` (absent for the tenant-wide
//! profile) and `tollgate:model` (the model ID as mapped, which keeps a
//! `us.`/`eu.` prefix the profile's model ARNs do not show). `cost-center`,
//! `environment` and the operator's own tags ride along for Cost Explorer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::AwsError;

pub const TAG_TENANT: &str = "tollgate:tenant";
pub const TAG_APPLICATION: &str = "tollgate:application";
pub const TAG_MODEL: &str = "tollgate:model";
pub const TAG_COST_CENTER: &str = "cost-center";
pub const TAG_ENVIRONMENT: &str = "environment";

/// What `profiles create` asks for (the admin API's body).
#[derive(Debug, Clone, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateProfileInput {
    /// Model ID or alias (resolved before anything is created), or a
    /// geo-prefixed system profile ID (`us.anthropic…`) for cross-Region routing.
    pub model: String,
    #[serde(default)]
    pub application_id: Option<String>,
    /// Sets the `cost-center` tag.
    #[serde(default)]
    pub cost_center: Option<String>,
    /// Sets the `environment` tag.
    #[serde(default)]
    pub environment: Option<String>,
    /// More tags (key → value).
    #[serde(default)]
    pub tags: BTreeMap<String, String>,
}

/// The outcome of a create: the profile, whether it already existed, its tags.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreatedProfile {
    pub tenant_id: String,
    pub application_id: Option<String>,
    /// Resolved model ID, as mapped.
    pub model_id: String,
    pub arn: String,
    /// An existing profile with the same Tollgate tags was reused.
    pub reused: bool,
    pub tags: BTreeMap<String, String>,
}

/// One profile `profiles sync` mapped, or left alone and why.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncedProfile {
    pub arn: String,
    pub tenant_id: Option<String>,
    pub application_id: Option<String>,
    pub model_id: Option<String>,
    /// `mapped`, or `skipped`.
    pub outcome: String,
    /// Why it was skipped.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SyncReport {
    pub profiles: Vec<SyncedProfile>,
}

/// The deleted profile.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeletedProfile {
    pub arn: String,
    /// False when AWS no longer had it (the mapping is removed either way).
    pub deleted_in_aws: bool,
}

/// Bedrock's rule for tag keys and values: `[a-zA-Z0-9\s._:/=+@-]*`, keys
/// 1–128 characters and not `aws:…`, values up to 256.
pub fn check_tag(key: &str, value: &str) -> Result<(), AwsError> {
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == ' ' || "._:/=+@-".contains(c))
    };
    if key.is_empty() || key.len() > 128 || !ok(key) {
        return Err(AwsError::Invalid(format!(
            "tag key {key:?}: 1–128 characters of letters, digits, spaces and . _ : / = + @ -"
        )));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(AwsError::Invalid(format!(
            "tag key {key:?}: keys starting with aws: are reserved by AWS"
        )));
    }
    if value.len() > 256 || !ok(value) {
        return Err(AwsError::Invalid(format!(
            "tag {key}={value:?}: values are up to 256 letters, digits, spaces and . _ : / = + @ -"
        )));
    }
    Ok(())
}

/// The tags a profile for (tenant, application, model) carries.
pub fn desired_tags(
    tenant: &str,
    model_id: &str,
    input: &CreateProfileInput,
) -> Result<BTreeMap<String, String>, AwsError> {
    let mut tags = BTreeMap::new();
    for (k, v) in &input.tags {
        if k.starts_with("tollgate:") {
            return Err(AwsError::Invalid(format!(
                "tag key {k:?}: tollgate: keys are set by Tollgate"
            )));
        }
        tags.insert(k.clone(), v.clone());
    }
    tags.insert(TAG_TENANT.to_owned(), tenant.to_owned());
    tags.insert(TAG_MODEL.to_owned(), model_id.to_owned());
    if let Some(a) = &input.application_id {
        tags.insert(TAG_APPLICATION.to_owned(), a.clone());
    }
    if let Some(c) = &input.cost_center {
        tags.insert(TAG_COST_CENTER.to_owned(), c.clone());
    }
    if let Some(e) = &input.environment {
        tags.insert(TAG_ENVIRONMENT.to_owned(), e.clone());
    }
    for (k, v) in &tags {
        check_tag(k, v)?;
    }
    Ok(tags)
}

/// Whether an existing profile's tags make it the profile of (tenant,
/// application, model): the three Tollgate tags are equal (an absent
/// application tag is the tenant-wide profile).
pub fn is_profile_for(
    tags: &BTreeMap<String, String>,
    tenant: &str,
    application: Option<&str>,
    model_id: &str,
) -> bool {
    tags.get(TAG_TENANT).map(String::as_str) == Some(tenant)
        && tags.get(TAG_APPLICATION).map(String::as_str) == application
        && tags.get(TAG_MODEL).map(String::as_str) == Some(model_id)
}

/// A profile name (Bedrock: 1–64 of `[0-9a-zA-Z][ _-]?`) that says what it is
/// for; long ones end in a hash of the whole, so they stay distinct.
pub fn profile_name(tenant: &str, application: Option<&str>, model_id: &str) -> String {
    let model = model_id
        .rsplit_once('.')
        .filter(|(p, _)| !p.contains(':'))
        .map_or(model_id, |(_, m)| m);
    let raw = match application {
        Some(a) => format!("tollgate {tenant} {a} {model}"),
        None => format!("tollgate {tenant} {model}"),
    };
    // Only letters and digits, single separators between them.
    let mut name = String::new();
    for c in raw.chars() {
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('-') {
            name.push('-');
        }
    }
    let name = name.trim_end_matches('-').to_owned();
    if name.len() <= 64 {
        return name;
    }
    use sha2::{Digest, Sha256};
    let h = hex::encode(&Sha256::digest(raw.as_bytes())[..4]);
    format!("{}-{h}", name[..55].trim_end_matches('-'))
}

/// Where a profile for `model_id` is copied from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// `arn:aws:bedrock:<region>::foundation-model/<model>`.
    FoundationModel(String),
    /// A system cross-Region profile (`us.…`): its ARN names the account, so it
    /// is looked up with `GetInferenceProfile`.
    SystemProfile(String),
}

pub fn copy_source(region: &str, model_id: &str) -> Source {
    let geo = [
        "us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov.", "global.",
    ];
    if geo.iter().any(|p| model_id.starts_with(p)) {
        Source::SystemProfile(model_id.to_owned())
    } else {
        Source::FoundationModel(format!(
            "arn:aws:bedrock:{region}::foundation-model/{model_id}"
        ))
    }
}

/// (tenant, application, model) of a discovered profile, from its tags, else
/// the model from its first model ARN. `None` when it is not Tollgate's.
pub fn mapping_from_tags(
    tags: &BTreeMap<String, String>,
    model_arns: &[String],
) -> Option<(String, Option<String>, String)> {
    let tenant = tags.get(TAG_TENANT)?.clone();
    let model = tags.get(TAG_MODEL).cloned().or_else(|| {
        model_arns
            .first()
            .and_then(|a| a.split_once("foundation-model/"))
            .map(|(_, m)| m.to_owned())
    })?;
    Some((tenant, tags.get(TAG_APPLICATION).cloned(), model))
}

#[cfg(feature = "aws")]
mod sdk {
    use super::*;
    use crate::admin::ProfileInput;
    use crate::aws::{classify, sdk_config};
    use crate::service::Service;
    use aws_sdk_bedrock::types::{InferenceProfileModelSource, InferenceProfileType, Tag};
    use aws_sdk_bedrock::Client;

    /// An application profile as listed.
    struct Listed {
        arn: String,
        model_arns: Vec<String>,
    }

    async fn client() -> Result<Client, AwsError> {
        Ok(Client::new(sdk_config().await?))
    }

    async fn list_application(c: &Client) -> Result<Vec<Listed>, AwsError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = c
                .list_inference_profiles()
                .type_equals(InferenceProfileType::Application)
                .max_results(100)
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify("bedrock:ListInferenceProfiles", e))?;
            for p in page.inference_profile_summaries() {
                out.push(Listed {
                    arn: p.inference_profile_arn().to_owned(),
                    model_arns: p
                        .models()
                        .iter()
                        .filter_map(|m| m.model_arn().map(str::to_owned))
                        .collect(),
                });
            }
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return Ok(out),
            }
        }
    }

    pub(crate) async fn tags_of(
        c: &Client,
        arn: &str,
    ) -> Result<BTreeMap<String, String>, AwsError> {
        let out = c
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .map_err(|e| classify("bedrock:ListTagsForResource", e))?;
        Ok(out
            .tags()
            .iter()
            .map(|t| (t.key().to_owned(), t.value().to_owned()))
            .collect())
    }

    fn sdk_tags(tags: &BTreeMap<String, String>) -> Result<Vec<Tag>, AwsError> {
        tags.iter()
            .map(|(k, v)| {
                Tag::builder()
                    .key(k)
                    .value(v)
                    .build()
                    .map_err(|e| AwsError::Invalid(e.to_string()))
            })
            .collect()
    }

    /// `profiles create`: reuse the profile tagged for (tenant, application,
    /// model) if there is one (bringing its other tags up to date), else copy the
    /// model into a new one; then map it.
    pub async fn create(
        service: &Service,
        tenant: &str,
        input: CreateProfileInput,
    ) -> crate::error::Result<CreatedProfile> {
        let admin = service.admin();
        admin.require_tenant(tenant).await?;
        let model_id = admin.resolve_alias(&input.model).await?;
        crate::pricing::validate_model_id(&model_id).map_err(crate::error::Error::invalid)?;
        let tags = desired_tags(tenant, &model_id, &input)?;
        let app = input.application_id.as_deref();
        let c = client().await?;
        let mut found = None;
        for p in list_application(&c).await? {
            let existing = tags_of(&c, &p.arn).await?;
            if is_profile_for(&existing, tenant, app, &model_id) {
                found = Some((p.arn, existing));
                break;
            }
        }
        let (arn, reused) = match found {
            Some((arn, existing)) => {
                let missing: BTreeMap<String, String> = tags
                    .iter()
                    .filter(|(k, v)| existing.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !missing.is_empty() {
                    c.tag_resource()
                        .resource_arn(&arn)
                        .set_tags(Some(sdk_tags(&missing)?))
                        .send()
                        .await
                        .map_err(|e| classify("bedrock:TagResource", e))?;
                }
                (arn, true)
            }
            None => {
                let region = crate::aws::region().await?;
                let source = match copy_source(&region, &model_id) {
                    Source::FoundationModel(arn) => arn,
                    Source::SystemProfile(id) => c
                        .get_inference_profile()
                        .inference_profile_identifier(&id)
                        .send()
                        .await
                        .map_err(|e| match classify("bedrock:GetInferenceProfile", e) {
                            AwsError::NotFound(message) | AwsError::Other { message, .. } => {
                                AwsError::UnknownModel {
                                    model: id.clone(),
                                    message,
                                }
                            }
                            other => other,
                        })?
                        .inference_profile_arn()
                        .to_owned(),
                };
                let name = profile_name(tenant, app, &model_id);
                let out = c
                    .create_inference_profile()
                    .inference_profile_name(&name)
                    .description(format!("Tollgate profile {name}"))
                    .model_source(InferenceProfileModelSource::CopyFrom(source))
                    .set_tags(Some(sdk_tags(&tags)?))
                    .send()
                    .await
                    .map_err(|e| match classify("bedrock:CreateInferenceProfile", e) {
                        AwsError::Other { code, message, .. }
                            // Bedrock says "The provided model identifier is invalid";
                            // a tag's ValidationException names the tag instead.
                            if code == "ValidationException"
                                && message.contains("model")
                                && !message.contains("tag") =>
                        {
                            AwsError::UnknownModel { model: model_id.clone(), message }
                        }
                        AwsError::NotFound(message) => AwsError::UnknownModel { model: model_id.clone(), message },
                        AwsError::Conflict(message) => AwsError::Conflict(format!(
                            "a profile named {name} already exists without the Tollgate tags of tenant {tenant}{} and model {model_id}: rename or retag it (AWS said: {message})",
                            app.map(|a| format!(", application {a}")).unwrap_or_default()
                        )),
                        other => other,
                    })?;
                (out.inference_profile_arn().to_owned(), false)
            }
        };
        admin
            .put_profile(
                tenant,
                ProfileInput {
                    application_id: input.application_id.clone(),
                    model: model_id.clone(),
                    arn: arn.clone(),
                },
            )
            .await?;
        tracing::info!(target: "tollgate::audit", tenant, application = ?app, model = %model_id, %arn, reused, "application inference profile mapped");
        Ok(CreatedProfile {
            tenant_id: tenant.to_owned(),
            application_id: input.application_id,
            model_id,
            arn,
            reused,
            tags,
        })
    }

    /// `profiles sync`: maps every application profile tagged for a tenant of
    /// this ledger (only `only_tenant`'s when given).
    pub async fn sync(
        service: &Service,
        only_tenant: Option<&str>,
    ) -> crate::error::Result<SyncReport> {
        let c = client().await?;
        let admin = service.admin();
        let mut report = Vec::new();
        for p in list_application(&c).await? {
            let tags = tags_of(&c, &p.arn).await?;
            let skipped =
                |reason: String, t: Option<&(String, Option<String>, String)>| SyncedProfile {
                    arn: p.arn.clone(),
                    tenant_id: t.map(|t| t.0.clone()),
                    application_id: t.and_then(|t| t.1.clone()),
                    model_id: t.map(|t| t.2.clone()),
                    outcome: "skipped".into(),
                    reason: Some(reason),
                };
            let Some(found) = mapping_from_tags(&tags, &p.model_arns) else {
                report.push(skipped(
                    format!("no {TAG_TENANT} tag: not a Tollgate profile"),
                    None,
                ));
                continue;
            };
            if only_tenant.is_some_and(|t| t != found.0) {
                continue;
            }
            let (tenant, application, model) = found.clone();
            if service.store.get_tenant(&tenant).await?.is_none() {
                report.push(skipped(
                    format!("tenant {tenant} is not in this ledger (create it first)"),
                    Some(&found),
                ));
                continue;
            }
            match admin
                .put_profile(
                    &tenant,
                    ProfileInput {
                        application_id: application.clone(),
                        model: model.clone(),
                        arn: p.arn.clone(),
                    },
                )
                .await
            {
                Ok(_) => report.push(SyncedProfile {
                    arn: p.arn.clone(),
                    tenant_id: Some(tenant),
                    application_id: application,
                    model_id: Some(model),
                    outcome: "mapped".into(),
                    reason: None,
                }),
                Err(e) => report.push(skipped(e.to_string(), Some(&found))),
            }
        }
        Ok(SyncReport { profiles: report })
    }

    /// `profiles delete`: deletes the mapped profile in AWS, then the mapping.
    /// Refuses a profile whose tags say it belongs to someone else.
    pub async fn delete(
        service: &Service,
        tenant: &str,
        application: Option<&str>,
        model: &str,
    ) -> crate::error::Result<DeletedProfile> {
        let admin = service.admin();
        admin.require_tenant(tenant).await?;
        let model_id = admin.resolve_alias(model).await?;
        let mapping = service
            .store
            .list_profiles(tenant)
            .await?
            .into_iter()
            .find(|p| p.model_id == model_id && p.application_id.as_deref() == application)
            .ok_or_else(|| {
                crate::error::Error::not_found(format!(
                    "tenant {tenant} has no profile for {model_id}{}",
                    application
                        .map(|a| format!(" and application {a}"))
                        .unwrap_or_default()
                ))
            })?;
        if !mapping.arn.contains(":application-inference-profile/") {
            return Err(crate::error::Error::invalid(format!(
                "{} is not an application inference profile; use `profiles unmap` to remove the mapping",
                mapping.arn
            )));
        }
        let c = client().await?;
        let deleted_in_aws = match tags_of(&c, &mapping.arn).await {
            Ok(tags) => {
                if tags.get(TAG_TENANT).is_some_and(|t| t != tenant) {
                    return Err(crate::error::Error::invalid(format!(
                        "{} is tagged {TAG_TENANT}={}, not {tenant}: not deleted",
                        mapping.arn, tags[TAG_TENANT]
                    )));
                }
                match c
                    .delete_inference_profile()
                    .inference_profile_identifier(&mapping.arn)
                    .send()
                    .await
                {
                    Ok(_) => true,
                    Err(e) => match classify("bedrock:DeleteInferenceProfile", e) {
                        AwsError::NotFound(_) => false,
                        other => return Err(other.into()),
                    },
                }
            }
            Err(AwsError::NotFound(_)) => false,
            Err(other) => return Err(other.into()),
        };
        admin.delete_profile(tenant, application, &model_id).await?;
        tracing::info!(target: "tollgate::audit", tenant, application, model = %model_id, arn = %mapping.arn, deleted_in_aws, "application inference profile deleted");
        Ok(DeletedProfile {
            arn: mapping.arn,
            deleted_in_aws,
        })
    }
}

#[cfg(feature = "aws")]
pub use sdk::{create, delete, sync};

#[cfg(feature = "aws")]
pub(crate) use sdk::tags_of;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_say_whose_profile_it_is() {
        let input = CreateProfileInput {
            model: "claude-3-haiku".into(),
            application_id: Some("chat".into()),
            cost_center: Some("cc-42".into()),
            environment: None,
            tags: [("team".to_owned(), "search".to_owned())].into(),
        };
        let tags = desired_tags("acme", "anthropic.claude-3-haiku-20240307-v1:0", &input).unwrap();
        assert_eq!(tags[TAG_TENANT], "acme");
        assert_eq!(tags[TAG_APPLICATION], "chat");
        assert_eq!(tags[TAG_COST_CENTER], "cc-42");
        assert_eq!(tags["team"], "search");
        assert!(!tags.contains_key(TAG_ENVIRONMENT));
        let model = "anthropic.claude-3-haiku-20240307-v1:0";
        assert!(is_profile_for(&tags, "acme", Some("chat"), model));
        assert!(!is_profile_for(&tags, "acme", None, model));
        assert!(!is_profile_for(
            &tags,
            "acme",
            Some("chat"),
            "amazon.nova-lite-v1:0"
        ));
        assert!(!is_profile_for(&tags, "beta", Some("chat"), model));
        // Tollgate's keys are its own; AWS's are reserved.
        let mut bad = input.clone();
        bad.tags.insert("tollgate:tenant".into(), "other".into());
        assert!(desired_tags("acme", model, &bad).is_err());
        let mut bad = input;
        bad.tags.insert("aws:x".into(), "y".into());
        assert!(desired_tags("acme", model, &bad).is_err());
        assert!(check_tag("k", "bad\u{e9}").is_err());
    }

    #[test]
    fn names_fit_bedrock_and_stay_distinct() {
        let n = profile_name(
            "acme",
            Some("chat"),
            "anthropic.claude-3-haiku-20240307-v1:0",
        );
        assert_eq!(n, "tollgate-acme-chat-claude-3-haiku-20240307-v1-0");
        let long_a = profile_name(&"t".repeat(60), Some("a"), "amazon.nova-lite-v1:0");
        let long_b = profile_name(&"t".repeat(60), Some("b"), "amazon.nova-lite-v1:0");
        assert!(long_a.len() <= 64 && long_b.len() <= 64);
        assert_ne!(long_a, long_b);
        for n in [n, long_a] {
            assert!(
                n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{n}"
            );
            assert!(!n.contains("--"));
        }
        // A geo-prefixed profile keeps its model part.
        assert_eq!(
            profile_name("acme", None, "us.anthropic.claude-3-haiku-20240307-v1:0"),
            "tollgate-acme-claude-3-haiku-20240307-v1-0"
        );
    }

    #[test]
    fn sources_and_discovery() {
        assert_eq!(
            copy_source("eu-west-1", "amazon.nova-lite-v1:0"),
            Source::FoundationModel(
                "arn:aws:bedrock:eu-west-1::foundation-model/amazon.nova-lite-v1:0".into()
            )
        );
        assert_eq!(
            copy_source("us-east-1", "us.amazon.nova-lite-v1:0"),
            Source::SystemProfile("us.amazon.nova-lite-v1:0".into())
        );
        let arns =
            vec!["arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0".to_owned()];
        let mut tags = BTreeMap::from([(TAG_TENANT.to_owned(), "acme".to_owned())]);
        assert_eq!(
            mapping_from_tags(&tags, &arns),
            Some(("acme".into(), None, "amazon.nova-lite-v1:0".into()))
        );
        tags.insert(TAG_MODEL.into(), "us.amazon.nova-lite-v1:0".into());
        tags.insert(TAG_APPLICATION.into(), "chat".into());
        assert_eq!(
            mapping_from_tags(&tags, &arns),
            Some((
                "acme".into(),
                Some("chat".into()),
                "us.amazon.nova-lite-v1:0".into()
            ))
        );
        assert_eq!(mapping_from_tags(&BTreeMap::new(), &arns), None);
    }
}
