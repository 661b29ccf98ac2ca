//! Rulesets (API.md 5): the v2 list, content, create or update, delete, enable, disable, and the
//! ext detail and revision endpoints.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::{Fields, PageRequest, RequestUrl};
use super::error::{ApiError, ApiResult, FieldErrors};
use crate::domain::{Revision, Ruleset};
use crate::rules::LoadedGeneration;
use crate::rulesets::{self, RulesetError};

type Stats = std::collections::HashMap<i64, crate::domain::MatchStats>;

impl From<RulesetError> for ApiError {
    fn from(e: RulesetError) -> Self {
        match e {
            RulesetError::NotFound(m) => ApiError::not_found(m),
            RulesetError::Forbidden(m) => ApiError::forbidden(m),
            RulesetError::Invalid {
                code,
                field: Some(field),
                message,
            } => {
                let mut errors = FieldErrors::new();
                errors.insert(field.to_owned(), vec![message.clone()]);
                ApiError {
                    status: StatusCode::BAD_REQUEST,
                    code,
                    message,
                    errors: Some(errors),
                }
            }
            RulesetError::Invalid { code, message, .. } => ApiError::bad_request(code, message),
            e @ RulesetError::SyncDisabled => {
                ApiError::new(StatusCode::FORBIDDEN, "sync_disabled", format!("{e}."))
            }
            RulesetError::Store(e) => e.into(),
            RulesetError::Internal(e) => ApiError::internal(e),
        }
    }
}

fn item(ruleset: &Ruleset, generation: Option<&LoadedGeneration>, stats: &Stats) -> Value {
    let counts = stats.get(&ruleset.id).copied().unwrap_or_default();
    json!({
        "name": ruleset.name,
        "owner": ruleset.owner,
        "status": rulesets::status(ruleset, generation).as_str(),
        "system_ruleset": ruleset.is_system,
        "cloud_synced": false,
        "last_matched": counts.last_matched,
        "malicious_match_count": counts.malicious,
        "suspicious_match_count": counts.suspicious,
        "goodware_match_count": counts.goodware,
        "unknown_match_count": counts.unknown,
        "repository": ruleset.repository_id,
        "source_path": ruleset.source_path,
        "revision": ruleset.latest_revision,
        "published_revision": ruleset.published_revision,
        "rule_count": ruleset.latest_rule_count,
    })
}

fn one_of<'a>(url: &'a RequestUrl, key: &str, allowed: &[&'a str]) -> ApiResult<&'a str> {
    let value = url.get(key).filter(|v| !v.is_empty()).unwrap_or(allowed[0]);
    if allowed.contains(&value) {
        Ok(value)
    } else {
        Err(ApiError::field(
            key,
            format!(
                "`{value}` is not valid; use one of: {}.",
                allowed.join(", ")
            ),
        ))
    }
}

/// `GET /api/yara/v2/rulesets/`: every filter echoed; without `page`, all results at once.
pub async fn list(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let kind = one_of(&url, "type", &["my", "user", "system", "all"])?;
    let status = one_of(
        &url,
        "status",
        &[
            "all", "active", "disabled", "pending", "invalid", "error", "capped",
        ],
    )?;
    let source = one_of(&url, "source", &["all", "local", "cloud"])?;
    let page = PageRequest::parse(&url)?;
    if page.page.is_some() && !page.page_size_given {
        return Err(ApiError::field(
            "page_size",
            "`page` needs `page_size` on this endpoint.",
        ));
    }
    // Every scan answered so far counts, in the counters and in `capped`.
    state.scanning.flush().await;
    let generation = state.rulesets.current_generation();
    let all = state.store.rulesets().await?;
    let stats = state.store.match_stats().await?;
    let selected: Vec<Value> = all
        .iter()
        .filter(|r| match kind {
            "my" => r.owner_id == Some(user.id) && !r.is_system,
            "user" => !r.is_system,
            "system" => r.is_system,
            _ => true,
        })
        // Nothing is synced from ReversingLabs' cloud here: `cloud` selects nothing.
        .filter(|_| source != "cloud")
        .filter(|r| {
            status == "all" || rulesets::status(r, generation.as_deref()).as_str() == status
        })
        .map(|r| item(r, generation.as_deref(), &stats))
        .collect();
    let count = selected.len() as i64;
    let mut body = if page.page.is_none() {
        json!({"count": count, "next": null, "previous": null, "results": selected})
    } else {
        let (offset, limit) = page.window();
        let window: Vec<Value> = selected
            .into_iter()
            .skip(usize::try_from(offset).unwrap_or(usize::MAX))
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .collect();
        page.envelope(&url, count, window)?
    };
    body["type"] = json!(kind);
    body["status"] = json!(status);
    body["source"] = json!(source);
    Ok(Json(body))
}

/// `GET /api/yara/ruleset/content/?name=`: the latest revision's text.
pub async fn content(
    State(state): State<AppState>,
    _user: CurrentUser,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let name = url
        .get("name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::field("name", "This query parameter is required."))?;
    let ruleset = state.rulesets.get(name).await?;
    let revision = latest(&state, &ruleset).await?;
    Ok(Json(json!({
        "code": 200,
        "detail": {"name": ruleset.name, "content": revision.content},
    })))
}

async fn latest(state: &AppState, ruleset: &Ruleset) -> ApiResult<Revision> {
    state
        .store
        .revision(ruleset.id, ruleset.latest_revision)
        .await?
        .ok_or_else(|| ApiError::internal("a ruleset without its latest revision"))
}

fn required_text(fields: &Fields, key: &str) -> ApiResult<String> {
    fields
        .text(key)
        .map_err(|m| ApiError::field(key, m))?
        .ok_or_else(|| ApiError::field(key, "This field is required."))
}

fn flag(fields: &Fields, key: &str) -> ApiResult<bool> {
    fields.boolean(key).map_err(|m| ApiError::field(key, m))
}

/// `POST /api/yara/ruleset/`: a new revision; invalid content is stored, never activated.
pub async fn save(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let name = required_text(&fields, "name")?;
    let content = required_text(&fields, "content")?;
    let publish = flag(&fields, "publish")?;
    let (saved, outcome) = state.rulesets.save(&user, &name, content, publish).await?;
    let (status, message) = if saved.created_ruleset {
        (StatusCode::CREATED, "Ruleset created.".to_owned())
    } else if saved.new_revision {
        (StatusCode::OK, "Ruleset updated.".to_owned())
    } else {
        (
            StatusCode::OK,
            format!(
                "Ruleset unchanged: the content equals revision {}.",
                saved.revision
            ),
        )
    };
    let message = if outcome.valid {
        message
    } else {
        format!("{message} The revision is invalid and will not be activated.")
    };
    Ok((
        status,
        Json(json!({
            "code": status.as_u16(),
            "message": message,
            "detail": {
                "name": saved.ruleset.name,
                "revision": saved.revision,
                "valid": outcome.valid,
                "diagnostics": outcome.diagnostics,
            },
        })),
    ))
}

pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let name = required_text(&fields, "name")?;
    flag(&fields, "publish")?;
    state.rulesets.delete(&user, &name).await?;
    Ok(Json(
        json!({"message": "Ruleset deleted.", "detail": {"name": name}}),
    ))
}

pub async fn enable(
    state: State<AppState>,
    user: CurrentUser,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    set_enabled(state, user, fields, true).await
}

pub async fn disable(
    state: State<AppState>,
    user: CurrentUser,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    set_enabled(state, user, fields, false).await
}

async fn set_enabled(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    fields: Fields,
    enabled: bool,
) -> ApiResult<Json<Value>> {
    let name = required_text(&fields, "name")?;
    flag(&fields, "publish")?;
    state.rulesets.set_enabled(&user, &name, enabled).await?;
    let message = if enabled {
        "Ruleset enabled."
    } else {
        "Ruleset disabled."
    };
    Ok(Json(json!({"message": message, "detail": {"name": name}})))
}

/// ext: `GET /api/yara/ruleset/{name}/`.
pub async fn detail(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    state.scanning.flush().await;
    let ruleset = state.rulesets.get(&name).await?;
    let generation = state.rulesets.current_generation();
    let latest = latest(&state, &ruleset).await?;
    let stats = state.store.match_stats().await?;
    let mut body = item(&ruleset, generation.as_deref(), &stats);
    body["enabled"] = json!(ruleset.enabled);
    body["removed_upstream"] = json!(ruleset.removed_upstream);
    body["created_at"] = json!(ruleset.created_at);
    body["updated_at"] = json!(ruleset.updated_at);
    body["latest"] = revision_json(&latest, &ruleset, false);
    if let Some(reason) = generation.as_ref().and_then(|g| g.failed.get(&ruleset.id)) {
        body["load_error"] = json!(reason);
    }
    Ok(Json(body))
}

fn revision_json(revision: &Revision, ruleset: &Ruleset, with_content: bool) -> Value {
    let author = match (revision.author_user_id, revision.author_repository_id) {
        (Some(user), _) => json!({"type": "user", "user": user}),
        (None, Some(repository)) => json!({
            "type": "repository", "repository": repository, "commit": revision.author_commit,
        }),
        (None, None) => Value::Null,
    };
    let mut body = json!({
        "revision": revision.number,
        "id": revision.id,
        "sha256": revision.sha256,
        "created_at": revision.created_at,
        "author": author,
        "valid": revision.outcome.valid,
        "rule_count": revision.outcome.rule_count,
        "published": ruleset.published_revision == Some(revision.number),
        "diagnostics": revision.outcome.diagnostics,
    });
    if with_content {
        body["content"] = json!(revision.content);
    }
    body
}

/// ext: `GET /api/yara/ruleset/{name}/revisions/`, newest first.
pub async fn revisions(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(name): Path<String>,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let ruleset = state.rulesets.get(&name).await?;
    let page = PageRequest::parse(&url)?;
    let (offset, limit) = page.window();
    let found = state.store.revisions(ruleset.id, offset, limit).await?;
    let results = found
        .items
        .iter()
        .map(|r| revision_json(r, &ruleset, false))
        .collect();
    Ok(Json(page.envelope(&url, found.count, results)?))
}

/// ext: `GET /api/yara/ruleset/{name}/revisions/{n}/`, with its text.
pub async fn revision(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path((name, number)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let ruleset = state.rulesets.get(&name).await?;
    let missing = || ApiError::not_found(format!("`{name}` has no revision `{number}`."));
    let n: i64 = number.parse().map_err(|_| missing())?;
    let revision = state
        .store
        .revision(ruleset.id, n)
        .await?
        .ok_or_else(missing)?;
    Ok(Json(revision_json(&revision, &ruleset, true)))
}

/// The endpoints that need ReversingLabs' cloud.
pub async fn cloud_unavailable(_user: CurrentUser) -> ApiError {
    ApiError::bad_request(
        "cloud_unavailable",
        "This endpoint needs ReversingLabs' cloud (TitaniumCloud), which Ruleyard does not use.",
    )
}
