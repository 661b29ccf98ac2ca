//! Operations endpoints: `/healthz` (process up) and `/readyz` (database reachable and a
//! generation of rules loaded).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;

pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok", "version": env!("CARGO_PKG_VERSION")}))
}

pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    let generation = state.rulesets.current_generation().map(|g| g.number);
    match state.store.ping().await {
        Ok(()) if generation.is_some() => (
            StatusCode::OK,
            Json(json!({
                "status": "ready", "database": "ok", "generation": generation,
                "node": state.settings.node_name,
            })),
        ),
        Ok(()) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "status": "not_ready", "database": "ok", "generation": null,
                "message": "No generation of rules is loaded yet.", "code": "not_ready",
            })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({
                    "status": "not_ready", "database": "unreachable",
                    "message": "The database is not reachable.", "code": "not_ready"
                })),
            )
        }
    }
}
