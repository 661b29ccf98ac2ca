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

/// `GET /api/yara/sync/`: the newest generation, and every node with the one it serves.
pub async fn sync(State(state): State<AppState>, _user: CurrentUser) -> ApiResult<Json<Value>> {
    let head = state.store.latest_generation_head().await?;
    let latest = head.map(|(number, _)| number);
    let published_at = head.map(|(_, at)| at);
    // This node's own entry is live, whatever its last heartbeat said.
    let serving = state.rulesets.current_generation().map(|g| g.number);
    state
        .store
        .heartbeat(&state.settings.node_name, serving)
        .await?;
    let now = crate::domain::Timestamp::now().millis();
    let timeout = i64::try_from(crate::app::NODE_TIMEOUT.as_millis()).unwrap_or(i64::MAX);
    let nodes: Vec<Value> = state
        .store
        .nodes()
        .await?
        .into_iter()
        .map(|n| {
            let node_state = if now - n.last_seen.millis() > timeout {
                "Unavailable"
            } else if n.generation.is_some() && n.generation >= latest {
                "InSync"
            } else {
                "OutOfSync"
            };
            json!({
                "name": n.name,
                "generation": n.generation,
                "state": node_state,
                "last_seen": n.last_seen,
            })
        })
        .collect();
    Ok(Json(json!({
        "enabled": state.rulesets.yara_sync(),
        "generation": latest,
        "published_at": published_at,
        "nodes": nodes,
    })))
}
