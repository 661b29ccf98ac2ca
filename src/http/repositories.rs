//! Repositories (API.md 2): list, create, update, delete, detail.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use secrecy::SecretString;
use serde_json::{Value, json};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::{Fields, PageRequest, RequestUrl, Validation};
use super::error::{ApiError, ApiResult};
use crate::domain::{
    Branch, ImportPreference, NewRepository, RepoUrl, Repository, RepositoryFilter, RepositoryName,
    User,
};
use crate::jobs::ImportFailure;
use crate::sources::{ConnectionFailure, ConnectionTest, RemoteAuth, probe_remote};

/// What `api_token` shows: never the token.
const MASK: &str = "********";

fn item(repo: &Repository) -> Value {
    json!({
        "id": repo.id,
        "url": repo.url,
        "name": repo.name,
        "source_branch": repo.source_branch,
        "source_type": repo.source_type.code(),
        "api_token": if repo.token_ciphertext.is_some() { MASK } else { "" },
        "import_update_preferences": repo.import_update_preferences.code(),
        "is_custom": repo.is_custom,
        "last_modified": repo.last_modified,
        "user": repo.user_id,
    })
}

pub async fn list(
    State(state): State<AppState>,
    _user: CurrentUser,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let filter = RepositoryFilter::parse(url.get("active_filter").unwrap_or("all"))
        .map_err(|m| ApiError::field("active_filter", m))?;
    let page = PageRequest::parse(&url)?;
    let (offset, limit) = page.window();
    let found = state.store.list_repositories(filter, offset, limit).await?;
    let results = found.items.iter().map(item).collect();
    Ok(Json(page.envelope(&url, found.count, results)?))
}

pub async fn detail(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let repo = load(&state, &id).await?;
    let mut body = item(&repo);
    body["sync"] = json!(repo.sync);
    Ok(Json(body))
}

pub async fn create(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    fields: Fields,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let input = RepositoryInput::read(&fields, state.settings.allow_local_sources)?;
    let token = match input.token {
        TokenInput::New(token) => Some(token),
        TokenInput::Keep | TokenInput::Clear => None,
    };
    let new = prepare(&state, input.fields, token, true, Some(user.id), None).await?;
    let id = state
        .store
        .insert_repository(&new)
        .await
        .map_err(clash_error)?;
    tracing::info!(repository = id, name = %new.name.as_str(), "repository created");
    Ok((
        StatusCode::CREATED,
        Json(json!({"message": "Repository created.", "id": id})),
    ))
}

pub async fn update(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let repo = load(&state, &id).await?;
    require_change(&user, &repo, "update")?;
    let input = RepositoryInput::read(&fields, state.settings.allow_local_sources)?;
    let token = match input.token {
        TokenInput::New(token) => Some(token),
        TokenInput::Clear => None,
        TokenInput::Keep => match &repo.token_ciphertext {
            Some(sealed) => Some(state.secrets.open(sealed).map_err(ApiError::internal)?),
            None => None,
        },
    };
    let new = prepare(
        &state,
        input.fields,
        token,
        repo.is_custom,
        repo.user_id,
        Some(repo.id),
    )
    .await?;
    state
        .store
        .update_repository(repo.id, &new)
        .await
        .map_err(clash_error)?;
    tracing::info!(repository = repo.id, "repository updated");
    Ok(Json(json!({"message": "Repository updated."})))
}

pub async fn delete(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let repo = load(&state, &id).await?;
    let remove_rulesets = url.boolean("shouldRemoveRulesets")?;
    if !repo.is_custom {
        return Err(ApiError::bad_request(
            "system_repository",
            "A system repository cannot be deleted.",
        ));
    }
    if !may_change(&user, &repo) {
        return Err(ApiError::bad_request(
            "not_owner",
            "You may delete only your own repositories.",
        ));
    }
    let touched = state
        .store
        .delete_repository(repo.id, remove_rulesets, repo.user_id)
        .await?;
    state.update_job.importer().forget(repo.id);
    if remove_rulesets && touched > 0 {
        state.rulesets.activator().request();
    }
    tracing::info!(
        repository = repo.id,
        rulesets = touched,
        remove_rulesets,
        "repository deleted"
    );
    Ok(Json(json!({"message": "Repository deleted."})))
}

/// ext: `GET /api/yara/repositories/{id}/files/`: the rule files seen at the last fetch.
pub async fn files(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(id): Path<String>,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let repo = load(&state, &id).await?;
    let page = PageRequest::parse(&url)?;
    let found = state
        .store
        .repository_files(repo.id, Some(page.window()))
        .await?;
    let results = found
        .items
        .iter()
        .map(|f| {
            json!({
                "path": f.path,
                "blob_sha": f.blob_sha,
                "ruleset": f.ruleset,
                "state": f.state.as_str(),
                "reason": f.reason,
            })
        })
        .collect();
    Ok(Json(page.envelope(&url, found.count, results)?))
}

/// ext: `POST /api/yara/repositories/{id}/import/` with optional `paths`: fetch now and import.
pub async fn import(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(id): Path<String>,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let repo = load(&state, &id).await?;
    require_change(&user, &repo, "import")?;
    let paths = fields
        .list("paths")
        .map_err(|m| ApiError::field("paths", m))?;
    match state.update_job.import_now(&repo, paths).await? {
        Ok(outcome) => Ok(Json(super::update::outcome_json(&outcome))),
        Err((outcome, failure)) => {
            let message = outcome.error.clone().unwrap_or_default();
            let error = match failure {
                ImportFailure::UnknownPaths(_) => {
                    ApiError::field("paths", format!("Import refused: {message}"))
                }
                ImportFailure::Upstream => ApiError::new(
                    StatusCode::BAD_GATEWAY,
                    "import_failed",
                    format!("Import failed: {message}"),
                ),
                ImportFailure::Internal => return Err(ApiError::internal(message)),
            };
            Err(error)
        }
    }
}

/// 403 unless `user` may change `repo` (`verb` names the action in the message).
fn require_change(user: &User, repo: &Repository, verb: &str) -> ApiResult<()> {
    if may_change(user, repo) {
        return Ok(());
    }
    Err(ApiError::forbidden(if repo.is_custom {
        format!("You may {verb} only your own repositories.")
    } else {
        format!("Only a superuser may {verb} a system repository.")
    }))
}

fn may_change(user: &User, repo: &Repository) -> bool {
    user.is_superuser || (repo.is_custom && repo.user_id == Some(user.id))
}

async fn load(state: &AppState, raw_id: &str) -> ApiResult<Repository> {
    let not_found = || ApiError::not_found(format!("No repository with id `{raw_id}`."));
    let id: i64 = raw_id.parse().map_err(|_| not_found())?;
    state.store.repository(id).await?.ok_or_else(not_found)
}

fn clash_error(e: crate::store::StoreError) -> ApiError {
    match e {
        crate::store::StoreError::Conflict(_) => ApiError::field(
            "name",
            "A repository with this name, or with this URL and branch, already exists.",
        ),
        other => other.into(),
    }
}

enum TokenInput {
    New(SecretString),
    Keep,
    Clear,
}

struct ValidFields {
    url: RepoUrl,
    name: RepositoryName,
    branch: Option<Branch>,
    preference: ImportPreference,
}

struct RepositoryInput {
    fields: ValidFields,
    token: TokenInput,
}

impl RepositoryInput {
    /// Reads the five fields of API.md 2; an empty `source_branch` or `api_token` is "not given".
    fn read(fields: &Fields, allow_local: bool) -> ApiResult<Self> {
        let mut v = Validation::default();
        let url = match v.check("url", fields.text("url")).flatten() {
            Some(raw) => v.check("url", RepoUrl::parse(&raw, allow_local)),
            None => {
                v.add("url", "This field is required.");
                None
            }
        };
        let name = match v.check("name", fields.text("name")).flatten() {
            Some(raw) => v.check("name", RepositoryName::parse(&raw)),
            None => {
                v.add("name", "This field is required.");
                None
            }
        };
        let branch = match v
            .check("source_branch", fields.text("source_branch"))
            .flatten()
        {
            Some(raw) if !raw.trim().is_empty() => v.check("source_branch", Branch::parse(&raw)),
            _ => None,
        };
        let preference = v
            .check(
                "import_update_preferences",
                fields.integer("import_update_preferences"),
            )
            .map(|code| code.unwrap_or(0))
            .and_then(|code| {
                v.check(
                    "import_update_preferences",
                    ImportPreference::from_code(code),
                )
            });
        let token = match v.check("api_token", fields.text("api_token")).flatten() {
            Some(t) if t == MASK => TokenInput::Keep,
            Some(t) if t.trim().is_empty() => TokenInput::Clear,
            Some(t) if t.chars().any(char::is_control) => {
                v.add("api_token", "The token may not contain control characters.");
                TokenInput::Clear
            }
            Some(t) => TokenInput::New(SecretString::from(t.trim().to_owned())),
            None => TokenInput::Clear,
        };
        v.finish()?;
        match (url, name, preference) {
            (Some(url), Some(name), Some(preference)) => Ok(RepositoryInput {
                fields: ValidFields {
                    url,
                    name,
                    branch,
                    preference,
                },
                token,
            }),
            _ => Err(ApiError::internal("validation passed without values")),
        }
    }
}

/// Checks the name, runs the connection test, checks URL and branch, seals the token.
async fn prepare(
    state: &AppState,
    input: ValidFields,
    token: Option<SecretString>,
    is_custom: bool,
    user_id: Option<i64>,
    except_id: Option<i64>,
) -> ApiResult<NewRepository> {
    let mut new = NewRepository {
        url: input.url,
        name: input.name,
        source_branch: input
            .branch
            .clone()
            .unwrap_or_else(|| Branch::parse("main").expect("valid")),
        token_ciphertext: None,
        import_update_preferences: input.preference,
        is_custom,
        user_id,
    };
    if state
        .store
        .repository_clash(&new, except_id)
        .await?
        .name_taken
    {
        return Err(ApiError::field(
            "name",
            "A repository with this name already exists.",
        ));
    }
    let tested = connection_test(state, &new.url, token.clone(), input.branch).await?;
    new.source_branch = Branch::parse(&tested.branch).map_err(ApiError::internal)?;
    let clash = state.store.repository_clash(&new, except_id).await?;
    if clash.url_and_branch_taken {
        return Err(ApiError::field(
            "url",
            format!(
                "This URL is already registered with the branch `{}`.",
                tested.branch
            ),
        ));
    }
    new.token_ciphertext =
        token.map(|t| state.secrets.seal(secrecy::ExposeSecret::expose_secret(&t)));
    Ok(new)
}

/// The connection test of API.md 2, off the async workers, bounded by the configured timeout.
async fn connection_test(
    state: &AppState,
    url: &RepoUrl,
    token: Option<SecretString>,
    branch: Option<Branch>,
) -> ApiResult<ConnectionTest> {
    let timeout = Duration::from_secs(state.settings.connect_timeout_seconds);
    let auth = RemoteAuth {
        username: url.source_type().token_username(),
        token,
    };
    let target = url.as_str().to_owned();
    let task = tokio::task::spawn_blocking(move || {
        probe_remote(&target, &auth, branch.as_ref().map(Branch::as_str), timeout)
    });
    let outcome = match tokio::time::timeout(timeout, task).await {
        Ok(joined) => joined.map_err(ApiError::internal)?,
        Err(_) => Err(ConnectionFailure::Timeout(timeout.as_secs())),
    };
    outcome.map_err(|failure| {
        tracing::info!(url = %url.as_str(), reason = %failure, "connection test failed");
        ApiError::new(
            StatusCode::NOT_FOUND,
            "connection_test_failed",
            format!("Connection test failed: {failure}."),
        )
    })
}
