//! Bedrock's control plane for inference profiles (restJson1, signing name
//! `bedrock`): `CreateInferenceProfile` (`POST /inference-profiles`, 201),
//! `GetInferenceProfile` (`GET /inference-profiles/{id or ARN}`),
//! `ListInferenceProfiles` (`GET /inference-profiles?type=&maxResults=&nextToken=`),
//! `DeleteInferenceProfile` (`DELETE /inference-profiles/{id or ARN}`),
//! `TagResource`, `UntagResource` and `ListTagsForResource`
//! (`POST /tagResource`, `/untagResource`, `/listTagsForResource`).
//!
//! System-defined profiles exist for every priced model (`us.<model id>`);
//! application profiles are created by copying a foundation model's ARN or a
//! system profile's ARN, and the runtime operations resolve their ARNs to the
//! copied model.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tollgate_wire::sigv4;

use crate::aws::{lock, AwsError, AwsState, ACCOUNT};
use crate::pricelist::base_model;

/// Bedrock's default quota of application inference profiles per account and Region.
pub const DEFAULT_MAX_APPLICATION_PROFILES: usize = 1000;
/// Tags one resource may carry.
pub const MAX_TAGS: usize = 50;

#[derive(Debug, Clone)]
pub struct AppProfile {
    pub id: String,
    pub arn: String,
    pub name: String,
    pub description: Option<String>,
    /// The ARN it was copied from.
    pub copied_from: String,
    /// The model requests run on.
    pub model_id: String,
    /// The foundation-model ARNs it routes to.
    pub model_arns: Vec<String>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub tags: BTreeMap<String, String>,
    pub client_request_token: Option<String>,
}

pub struct ControlPlane {
    region: String,
    /// By id, in creation order of ids (ids sort by creation: see `new_id`).
    profiles: BTreeMap<String, AppProfile>,
    /// ARNs of deleted application profiles (runtime calls on them fail).
    deleted: std::collections::BTreeSet<String>,
    counter: u64,
    pub max_application_profiles: usize,
}

/// A routed control-plane request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Create,
    List,
    Get(String),
    Delete(String),
    Tag,
    Untag,
    ListTags,
}

impl Route {
    pub fn operation(&self) -> &'static str {
        match self {
            Route::Create => "CreateInferenceProfile",
            Route::List => "ListInferenceProfiles",
            Route::Get(_) => "GetInferenceProfile",
            Route::Delete(_) => "DeleteInferenceProfile",
            Route::Tag => "TagResource",
            Route::Untag => "UntagResource",
            Route::ListTags => "ListTagsForResource",
        }
    }
}

/// Routes on the raw path; the identifier segment is percent-decoded (boto3
/// sends an ARN as `arn%3Aaws%3A…%2Fid`).
pub fn route(method: &str, raw_path: &str) -> Option<Route> {
    let segs: Vec<&str> = raw_path.split('/').collect();
    Some(match (method, segs.as_slice()) {
        ("POST", ["", "inference-profiles"]) => Route::Create,
        ("GET", ["", "inference-profiles"]) => Route::List,
        ("GET", ["", "inference-profiles", id]) if !id.is_empty() => {
            Route::Get(sigv4::percent_decode(id))
        }
        ("DELETE", ["", "inference-profiles", id]) if !id.is_empty() => {
            Route::Delete(sigv4::percent_decode(id))
        }
        ("POST", ["", "tagResource"]) => Route::Tag,
        ("POST", ["", "untagResource"]) => Route::Untag,
        ("POST", ["", "listTagsForResource"]) => Route::ListTags,
        _ => return None,
    })
}

fn ts(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

fn not_found(what: &str) -> AwsError {
    AwsError::new(
        404,
        "ResourceNotFoundException",
        format!("The resource {what} could not be found."),
    )
}

fn valid_tag(key: &str, value: &str) -> Result<(), AwsError> {
    let ok = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c.is_whitespace() || "._:/=+@-".contains(c))
    };
    if key.is_empty() || key.len() > 128 || !ok(key) {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{key}' at 'tags.member.key' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9\\s._:/=+@-]*"
        )));
    }
    if key.to_ascii_lowercase().starts_with("aws:") {
        return Err(AwsError::validation(format!(
            "Tag keys starting with 'aws:' are reserved for system use: {key}"
        )));
    }
    if value.len() > 256 || !ok(value) {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{value}' at 'tags.member.value' failed to satisfy constraint: Member must satisfy regular expression pattern: [a-zA-Z0-9\\s._:/=+@-]*"
        )));
    }
    Ok(())
}

fn tags_of(v: &Value) -> Result<Vec<(String, String)>, AwsError> {
    let Some(list) = v.as_array() else {
        return Ok(Vec::new());
    };
    list.iter()
        .map(|t| {
            let k = t["key"].as_str().unwrap_or_default();
            let val = t["value"].as_str().ok_or_else(|| {
                AwsError::validation(
                    "1 validation error detected: tags.member.value must not be null",
                )
            })?;
            valid_tag(k, val)?;
            Ok((k.to_owned(), val.to_owned()))
        })
        .collect()
}

fn tag_list(tags: &BTreeMap<String, String>) -> Value {
    Value::Array(
        tags.iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect(),
    )
}

impl ControlPlane {
    pub fn new(region: &str) -> Self {
        Self {
            region: region.to_owned(),
            profiles: BTreeMap::new(),
            deleted: std::collections::BTreeSet::new(),
            counter: 0,
            max_application_profiles: DEFAULT_MAX_APPLICATION_PROFILES,
        }
    }

    fn app_arn(&self, id: &str) -> String {
        format!(
            "arn:aws:bedrock:{}:{ACCOUNT}:application-inference-profile/{id}",
            self.region
        )
    }

    fn fm_arn(region: &str, model: &str) -> String {
        format!("arn:aws:bedrock:{region}::foundation-model/{model}")
    }

    /// 12 lowercase alphanumerics, as Bedrock's profile ids; a counter prefix
    /// keeps them in creation order.
    fn new_id(&mut self, name: &str) -> String {
        self.counter += 1;
        let h = Sha256::digest(format!("{name}/{}", self.counter).as_bytes());
        let tail: String = h
            .iter()
            .take(8)
            .map(|b| char::from(b"abcdefghijklmnopqrstuvwxyz0123456789"[usize::from(b % 36)]))
            .collect();
        format!("{:04}{tail}", self.counter % 10_000)
    }

    /// The application profile an id or ARN names.
    fn find(&self, ident: &str) -> Option<&AppProfile> {
        self.profiles
            .get(ident)
            .or_else(|| self.profiles.values().find(|p| p.arn == ident))
    }

    pub fn was_deleted(&self, arn: &str) -> bool {
        self.deleted.contains(arn)
    }

    pub fn profile_by_arn(&self, arn: &str) -> Option<&AppProfile> {
        self.profiles.values().find(|p| p.arn == arn)
    }

    /// The model an application profile's ARN runs on.
    pub fn resolve(&self, model: &str) -> Option<String> {
        self.profile_by_arn(model).map(|p| p.model_id.clone())
    }

    /// A system-defined profile (`us.<model>`), for a priced model.
    fn system_profile(
        &self,
        ident: &str,
        st_prices: &crate::pricelist::PriceTable,
    ) -> Option<Value> {
        let id = ident.rsplit('/').next().unwrap_or(ident);
        let id = id.strip_prefix("inference-profile/").unwrap_or(id);
        let geo = id.split_once('.').map(|(g, _)| g)?;
        if !matches!(geo, "us" | "eu" | "apac" | "global") || st_prices.get(id).is_none() {
            return None;
        }
        let base = base_model(id);
        if base == id {
            return None;
        }
        let regions: &[&str] = match geo {
            "us" => &["us-east-1", "us-east-2", "us-west-2"],
            "eu" => &["eu-central-1", "eu-west-1", "eu-west-3"],
            _ => &["us-east-1"],
        };
        let name = st_prices
            .get(id)
            .map(|p| format!("{} {}", geo.to_uppercase(), p.name))
            .unwrap_or_default();
        Some(json!({
            "inferenceProfileName": name,
            "description": format!("Routes requests to {base} in {}", regions.join(", ")),
            "createdAt": "2024-08-30T00:00:00Z",
            "updatedAt": "2024-08-30T00:00:00Z",
            "inferenceProfileArn": format!("arn:aws:bedrock:{}:{ACCOUNT}:inference-profile/{id}", self.region),
            "models": regions.iter().map(|r| json!({"modelArn": Self::fm_arn(r, base)})).collect::<Vec<_>>(),
            "inferenceProfileId": id,
            "status": "ACTIVE",
            "type": "SYSTEM_DEFINED",
        }))
    }

    fn system_profiles(&self, st_prices: &crate::pricelist::PriceTable) -> Vec<Value> {
        st_prices
            .prices
            .keys()
            .filter_map(|m| self.system_profile(&format!("us.{m}"), st_prices))
            .collect()
    }

    fn describe(p: &AppProfile) -> Value {
        let mut v = json!({
            "inferenceProfileName": p.name,
            "createdAt": ts(p.created_at),
            "updatedAt": ts(p.updated_at),
            "inferenceProfileArn": p.arn,
            "models": p.model_arns.iter().map(|a| json!({"modelArn": a})).collect::<Vec<_>>(),
            "inferenceProfileId": p.id,
            "status": "ACTIVE",
            "type": "APPLICATION",
        });
        if let Some(d) = &p.description {
            v["description"] = json!(d);
        }
        v
    }
}

/// Query parameter `name` (first occurrence, percent-decoded).
fn query_param(raw_query: Option<&str>, name: &str) -> Option<String> {
    raw_query?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| sigv4::percent_decode(&v.replace('+', " ")))
    })
}

fn body_json(body: &[u8]) -> Result<Value, AwsError> {
    if body.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(body)
        .map_err(|e| AwsError::validation(format!("Malformed request body: {e}")))
}

pub fn handle(
    st: &AwsState,
    method: &str,
    raw_path: &str,
    raw_query: Option<&str>,
    body: &[u8],
) -> Result<(u16, Value), AwsError> {
    let Some(route) = route(method, raw_path) else {
        return Err(AwsError::new(
            404,
            "UnknownOperationException",
            format!("No operation matches {method} {raw_path}"),
        ));
    };
    let req = body_json(body)?;
    let prices = lock(&st.prices);
    let mut cp = lock(&st.control);
    match route {
        Route::Create => create(&mut cp, &prices, &req),
        Route::Get(ident) => match cp.find(&ident) {
            Some(p) => Ok((200, ControlPlane::describe(p))),
            None => cp
                .system_profile(&ident, &prices)
                .map(|v| (200, v))
                .ok_or_else(|| not_found(&ident)),
        },
        Route::List => {
            let kind = query_param(raw_query, "type");
            let max = match query_param(raw_query, "maxResults") {
                None => 1000,
                Some(m) => match m.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        return Err(AwsError::validation(format!(
                            "1 validation error detected: Value '{m}' at 'maxResults' failed to satisfy constraint: Member must have value between 1 and 1000"
                        )))
                    }
                },
            };
            let mut all: Vec<Value> = Vec::new();
            match kind.as_deref() {
                None => {
                    all.extend(cp.system_profiles(&prices));
                    all.extend(cp.profiles.values().map(ControlPlane::describe));
                }
                Some("SYSTEM_DEFINED") => all.extend(cp.system_profiles(&prices)),
                Some("APPLICATION") => {
                    all.extend(cp.profiles.values().map(ControlPlane::describe))
                }
                Some(other) => {
                    return Err(AwsError::validation(format!(
                        "1 validation error detected: Value '{other}' at 'typeEquals' failed to satisfy constraint: Member must satisfy enum value set: [SYSTEM_DEFINED, APPLICATION]"
                    )))
                }
            }
            let start = match query_param(raw_query, "nextToken") {
                None => 0,
                Some(t) => t.parse::<usize>().map_err(|_| {
                    AwsError::validation("The provided pagination token is invalid.")
                })?,
            };
            let page: Vec<Value> = all.iter().skip(start).take(max).cloned().collect();
            let mut out = json!({"inferenceProfileSummaries": page});
            if start + max < all.len() {
                out["nextToken"] = json!((start + max).to_string());
            }
            Ok((200, out))
        }
        Route::Delete(ident) => {
            let Some(id) = cp.find(&ident).map(|p| p.id.clone()) else {
                if cp.system_profile(&ident, &prices).is_some() {
                    return Err(AwsError::validation(
                        "System-defined inference profiles cannot be deleted.",
                    ));
                }
                return Err(not_found(&ident));
            };
            if let Some(p) = cp.profiles.remove(&id) {
                cp.deleted.insert(p.arn);
            }
            Ok((200, json!({})))
        }
        Route::Tag => {
            let arn = req["resourceARN"].as_str().unwrap_or_default().to_owned();
            let tags = tags_of(&req["tags"])?;
            let Some(id) = cp.find(&arn).map(|p| p.id.clone()) else {
                return Err(not_found(&arn));
            };
            let p = cp.profiles.get_mut(&id).ok_or_else(|| not_found(&arn))?;
            let mut merged = p.tags.clone();
            merged.extend(tags);
            if merged.len() > MAX_TAGS {
                return Err(AwsError::new(
                    400,
                    "TooManyTagsException",
                    format!("The resource {arn} would have more than {MAX_TAGS} tags."),
                ));
            }
            p.tags = merged;
            p.updated_at = OffsetDateTime::now_utc();
            Ok((200, json!({})))
        }
        Route::Untag => {
            let arn = req["resourceARN"].as_str().unwrap_or_default().to_owned();
            let Some(id) = cp.find(&arn).map(|p| p.id.clone()) else {
                return Err(not_found(&arn));
            };
            let p = cp.profiles.get_mut(&id).ok_or_else(|| not_found(&arn))?;
            for k in req["tagKeys"].as_array().into_iter().flatten() {
                if let Some(k) = k.as_str() {
                    p.tags.remove(k);
                }
            }
            Ok((200, json!({})))
        }
        Route::ListTags => {
            let arn = req["resourceARN"].as_str().unwrap_or_default();
            match cp.find(arn) {
                Some(p) => Ok((200, json!({"tags": tag_list(&p.tags)}))),
                None if cp.system_profile(arn, &prices).is_some() => Ok((200, json!({"tags": []}))),
                None => Err(not_found(arn)),
            }
        }
    }
}

fn create(
    cp: &mut ControlPlane,
    prices: &crate::pricelist::PriceTable,
    req: &Value,
) -> Result<(u16, Value), AwsError> {
    let name = req["inferenceProfileName"].as_str().unwrap_or_default();
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || " _-".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric());
    if !name_ok {
        return Err(AwsError::validation(format!(
            "1 validation error detected: Value '{name}' at 'inferenceProfileName' failed to satisfy constraint: Member must satisfy regular expression pattern: ([0-9a-zA-Z][ _-]?)+"
        )));
    }
    let Some(source) = req["modelSource"]["copyFrom"].as_str() else {
        return Err(AwsError::validation(
            "1 validation error detected: Value null at 'modelSource' failed to satisfy constraint: Member must not be null",
        ));
    };
    let tags = tags_of(&req["tags"])?;
    if tags.len() > MAX_TAGS {
        return Err(AwsError::new(
            400,
            "TooManyTagsException",
            format!("A resource can have at most {MAX_TAGS} tags."),
        ));
    }
    let token = req["clientRequestToken"].as_str().map(str::to_owned);
    if let Some(t) = &token {
        if let Some(p) = cp
            .profiles
            .values()
            .find(|p| p.client_request_token.as_deref() == Some(t.as_str()))
        {
            // Same token: the same profile, as long as the request is the same.
            if p.name == name && p.copied_from == source {
                return Ok((
                    201,
                    json!({"inferenceProfileArn": p.arn, "status": "ACTIVE"}),
                ));
            }
            return Err(AwsError::new(
                400,
                "ConflictException",
                "The request token was already used with different parameters.",
            ));
        }
    }
    if cp.profiles.values().any(|p| p.name == name) {
        return Err(AwsError::new(
            400,
            "ConflictException",
            format!("An inference profile with the name {name} already exists."),
        ));
    }
    // `arn:aws:bedrock:<region>::foundation-model/<id>` or
    // `arn:aws:bedrock:<region>:<account>:inference-profile/<geo>.<id>`.
    let (kind, target) = source
        .strip_prefix("arn:aws:bedrock:")
        .and_then(|rest| rest.split_once('/'))
        .map(|(head, id)| (head.rsplit(':').next().unwrap_or_default(), id))
        .unwrap_or(("", ""));
    let (model_id, model_arns) = match kind {
        "foundation-model" if prices.prices.contains_key(target) => {
            let region = source.split(':').nth(3).unwrap_or_default();
            if region != cp.region {
                return Err(AwsError::validation(format!(
                    "The model {source} is not in this Region ({}).",
                    cp.region
                )));
            }
            (target.to_owned(), vec![source.to_owned()])
        }
        "inference-profile" => match cp.system_profile(target, prices) {
            Some(sys) => (
                base_model(target).to_owned(),
                sys["models"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m["modelArn"].as_str().map(str::to_owned))
                    .collect(),
            ),
            None => {
                return Err(AwsError::validation(format!(
                    "The provided model identifier is invalid: {source}"
                )))
            }
        },
        _ => {
            return Err(AwsError::validation(format!(
                "The provided model identifier is invalid: {source}"
            )))
        }
    };
    if cp.profiles.len() >= cp.max_application_profiles {
        return Err(AwsError::new(
            400,
            "ServiceQuotaExceededException",
            format!(
                "You have reached the maximum number of application inference profiles ({}) for this account in {}.",
                cp.max_application_profiles, cp.region
            ),
        ));
    }
    let id = cp.new_id(name);
    let now = OffsetDateTime::now_utc();
    let p = AppProfile {
        arn: cp.app_arn(&id),
        id: id.clone(),
        name: name.to_owned(),
        description: req["description"].as_str().map(str::to_owned),
        copied_from: source.to_owned(),
        model_id,
        model_arns,
        created_at: now,
        updated_at: now,
        tags: tags.into_iter().collect(),
        client_request_token: token,
    };
    let arn = p.arn.clone();
    cp.profiles.insert(id, p);
    Ok((201, json!({"inferenceProfileArn": arn, "status": "ACTIVE"})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(
        st: &AwsState,
        method: &str,
        path: &str,
        q: Option<&str>,
        body: Value,
    ) -> Result<Value, AwsError> {
        handle(st, method, path, q, body.to_string().as_bytes()).map(|(_, v)| v)
    }

    #[test]
    fn profiles_are_created_found_listed_tagged_and_deleted() {
        let st = AwsState::new("us-east-1");
        let fm = "arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-lite-v1:0";
        let out = call(
            &st,
            "POST",
            "/inference-profiles",
            None,
            json!({
                "inferenceProfileName": "acme-chat",
                "modelSource": {"copyFrom": fm},
                "tags": [{"key": "tollgate:tenant", "value": "acme"}],
            }),
        )
        .unwrap();
        let arn = out["inferenceProfileArn"].as_str().unwrap().to_owned();
        assert!(arn
            .starts_with("arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/"));
        assert_eq!(st.runtime_model(&arn).unwrap(), "amazon.nova-lite-v1:0");
        let encoded = arn.replace(':', "%3A").replace('/', "%2F");
        let got = call(
            &st,
            "GET",
            &format!("/inference-profiles/{encoded}"),
            None,
            json!({}),
        )
        .unwrap();
        assert_eq!(got["models"][0]["modelArn"], fm);
        assert_eq!(got["type"], "APPLICATION");
        // Same name again: conflict.
        let e = call(
            &st,
            "POST",
            "/inference-profiles",
            None,
            json!({
            "inferenceProfileName": "acme-chat", "modelSource": {"copyFrom": fm}}),
        )
        .unwrap_err();
        assert_eq!(e.code, "ConflictException");
        // Unknown model.
        let e = call(&st, "POST", "/inference-profiles", None, json!({
            "inferenceProfileName": "x", "modelSource": {"copyFrom": "arn:aws:bedrock:us-east-1::foundation-model/nope.nope-v1:0"}})).unwrap_err();
        assert_eq!(e.code, "ValidationException");
        call(
            &st,
            "POST",
            "/tagResource",
            None,
            json!({"resourceARN": arn, "tags": [{"key": "env", "value": "prod"}]}),
        )
        .unwrap();
        let tags = call(
            &st,
            "POST",
            "/listTagsForResource",
            None,
            json!({"resourceARN": arn}),
        )
        .unwrap();
        assert_eq!(tags["tags"].as_array().unwrap().len(), 2);
        let listed = call(
            &st,
            "GET",
            "/inference-profiles",
            Some("type=APPLICATION&maxResults=5"),
            json!({}),
        )
        .unwrap();
        assert_eq!(
            listed["inferenceProfileSummaries"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        call(
            &st,
            "DELETE",
            &format!("/inference-profiles/{encoded}"),
            None,
            json!({}),
        )
        .unwrap();
        let e = call(
            &st,
            "GET",
            &format!("/inference-profiles/{encoded}"),
            None,
            json!({}),
        )
        .unwrap_err();
        assert_eq!((e.status, e.code), (404, "ResourceNotFoundException"));
        assert!(st.runtime_model(&arn).is_err());
        // ARNs it never made still pass through (the other suites use made-up ones).
        assert!(st
            .runtime_model(
                "arn:aws:bedrock:us-east-1:123456789012:application-inference-profile/other"
            )
            .is_ok());
    }

    #[test]
    fn system_profiles_can_be_copied_and_the_quota_holds() {
        let st = AwsState::new("us-east-1");
        lock(&st.control).max_application_profiles = 1;
        let sys = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0";
        let out = call(
            &st,
            "POST",
            "/inference-profiles",
            None,
            json!({
            "inferenceProfileName": "a", "modelSource": {"copyFrom": sys}}),
        )
        .unwrap();
        let arn = out["inferenceProfileArn"].as_str().unwrap();
        assert_eq!(
            st.runtime_model(arn).unwrap(),
            "anthropic.claude-3-haiku-20240307-v1:0"
        );
        let e = call(
            &st,
            "POST",
            "/inference-profiles",
            None,
            json!({
            "inferenceProfileName": "b", "modelSource": {"copyFrom": sys}}),
        )
        .unwrap_err();
        assert_eq!(e.code, "ServiceQuotaExceededException");
        let e = call(
            &st,
            "POST",
            "/tagResource",
            None,
            json!({"resourceARN": arn, "tags": [{"key": "aws:x", "value": "y"}]}),
        )
        .unwrap_err();
        assert_eq!(e.code, "ValidationException");
    }
}
