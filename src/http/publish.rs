//! Publishing (API.md 4) and the sync state (API.md 7).

use axum::Json;
use axum::extract::{Path, State};
use serde_json::{Value, json};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::RequestUrl;
use super::error::{ApiError, ApiResult};

/// `POST /api/yara/publish/all`.
pub async fn all(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Value>> {
    let report = state.rulesets.publish_all(&user).await?;
    tracing::info!(
        published = report.successful_publish_count,
        total = report.total_count,
        "publish all"
    );
    Ok(Json(json!(report)))
}

/// `POST /api/yara/publish/ruleset/{name}` and `POST /api/yara/publish/{name}`;
/// `?revision=N` publishes that revision (rollback).
pub async fn one(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(name): Path<String>,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let revision = match url.get("revision") {
        None => None,
        Some(raw) => Some(
            raw.trim()
                .parse::<i64>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| {
                    ApiError::field("revision", "A revision number is a positive integer.")
                })?,
        ),
    };
    let number = state.rulesets.publish_one(&user, &name, revision).await?;
    tracing::info!(ruleset = %name, revision = number, "published");
    Ok(Json(
        json!({"message": format!("Publishing {name} ruleset!")}),
    ))
}

/// `GET /api/yara/sync/`: this node and the generation it serves.
pub async fn sync(State(state): State<AppState>, _user: CurrentUser) -> ApiResult<Json<Value>> {
    let generation = state.rulesets.current_generation();
    let latest = state.store.latest_generation().await?;
    let number = latest.as_ref().map(|g| g.number);
    let serving = generation.as_ref().map(|g| g.number);
    let node_state = match (serving, number) {
        (Some(a), Some(b)) if a >= b => "InSync",
        _ => "OutOfSync",
    };
    Ok(Json(json!({
        "enabled": state.rulesets.yara_sync(),
        "generation": number,
        "published_at": latest.as_ref().map(|g| g.created_at),
        "nodes": [{
            "name": state.settings.node_name,
            "generation": serving,
            "state": node_state,
            "last_seen": crate::domain::Timestamp::now(),
        }],
    })))
}
