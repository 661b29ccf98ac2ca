//! Operations endpoints: `/healthz` (process up), `/readyz` (database reachable and a
//! generation of rules loaded) and `/metrics` (Prometheus text).

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

/// `GET /metrics`: Prometheus text format (404 when configuration turns it off).
pub async fn metrics(State(state): State<AppState>) -> axum::response::Response {
    use axum::response::IntoResponse;
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    if !state.settings.metrics {
        return super::error::ApiError::not_found("Metrics are turned off.").into_response();
    }
    let node = state.settings.node_name.replace(['\\', '"'], "_");
    let generation = state.rulesets.current_generation();
    let c = &state.scanning.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        let _ = writeln!(out, "{name}{{node=\"{node}\"}} {value}");
    };
    metric("ruleyard_up", "gauge", "1 while the process serves.", 1);
    metric(
        "ruleyard_generation",
        "gauge",
        "The generation of rules this node serves (0: none yet).",
        generation.as_ref().map_or(0, |g| g.number.max(0) as u64),
    );
    metric(
        "ruleyard_generation_rulesets",
        "gauge",
        "Rulesets in the generation this node serves.",
        generation.as_ref().map_or(0, |g| g.members.len() as u64),
    );
    metric(
        "ruleyard_generation_rules",
        "gauge",
        "Rules in the generation this node serves.",
        generation
            .as_ref()
            .map_or(0, |g| g.rules.iter().count() as u64),
    );
    metric(
        "ruleyard_scans_total",
        "counter",
        "Scans since start.",
        c.scans.load(Relaxed),
    );
    metric(
        "ruleyard_scanned_bytes_total",
        "counter",
        "Bytes scanned since start.",
        c.bytes.load(Relaxed),
    );
    metric(
        "ruleyard_scan_timeouts_total",
        "counter",
        "Scans that hit the time limit.",
        c.timeouts.load(Relaxed),
    );
    metric(
        "ruleyard_scan_matches_total",
        "counter",
        "Rule matches reported since start.",
        c.matches.load(Relaxed),
    );
    metric(
        "ruleyard_scan_records_lost_total",
        "counter",
        "Scans answered whose matches could not be recorded (the database refused them).",
        state.scanning.lost_records(),
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}
