//! The HTTP API: one router per resource, the error body, and the compatibility layer that the
//! appliance's clients need. Handlers call into `domain`, `store` and `sources`; nothing below
//! this module imports axum.

pub mod auth;
pub mod compat;
pub mod error;
pub mod ops;
pub mod publish;
pub mod repositories;
pub mod rulesets;
pub mod scan;
pub mod update;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::{HeaderName, StatusCode};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

pub use crate::app::AppState;
use error::ApiError;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// All routes, without the path normalisation (see [`compat::NormalizePathLayer`]).
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/yara/repositories",
            get(repositories::list).post(repositories::create),
        )
        .route(
            "/api/yara/repositories/{id}",
            get(repositories::detail)
                .put(repositories::update)
                .delete(repositories::delete),
        )
        .route("/api/yara/v2/rulesets", get(rulesets::list))
        .route(
            "/api/yara/ruleset",
            post(rulesets::save).delete(rulesets::delete),
        )
        .route("/api/yara/ruleset/content", get(rulesets::content))
        .route("/api/yara/ruleset/enable", post(rulesets::enable))
        .route("/api/yara/ruleset/disable", post(rulesets::disable))
        .route("/api/yara/ruleset/{name}", get(rulesets::detail))
        .route(
            "/api/yara/ruleset/{name}/revisions",
            get(rulesets::revisions),
        )
        .route(
            "/api/yara/ruleset/{name}/revisions/{number}",
            get(rulesets::revision),
        )
        .route(
            "/api/yara/ruleset/{name}/cloud-retro-hunt",
            get(rulesets::cloud_unavailable).post(rulesets::cloud_unavailable),
        )
        .route(
            "/api/yara/ticloud/time",
            get(rulesets::cloud_unavailable).post(rulesets::cloud_unavailable),
        )
        .route("/api/yara/publish/all", post(publish::all))
        .route("/api/yara/publish/ruleset/{name}", post(publish::one))
        .route("/api/yara/publish/{name}", post(publish::one))
        .route("/api/yara/sync", get(publish::sync))
        .route("/api/yara/scan", post(scan::scan))
        .route("/api/yara/v2/ruleset/matches", get(scan::matches))
        .route(
            "/api/uploads/local-retro-hunt",
            get(scan::retro_status).post(scan::retro_operation),
        )
        .route("/api/yara/update", get(update::status))
        .route(
            "/api/yara/update/set-interval/{seconds}",
            post(update::set_interval),
        )
        .route(
            "/api/yara/update/reset-interval",
            post(update::reset_interval),
        )
        .route("/api/yara/update/run", post(update::run))
        .route("/api/yara/update/runs", get(update::runs))
        .route("/api/yara/update/runs/{id}", get(update::run_detail))
        .route(
            "/api/yara/repositories/{id}/files",
            get(repositories::files),
        )
        .route(
            "/api/yara/repositories/{id}/import",
            post(repositories::import),
        )
        .route_layer(from_fn_with_state(state.clone(), auth::require_token));

    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/api-token-auth", post(auth::obtain_token))
        .merge(api)
        // Bodies are read with their own limits (API.md 1.2 and 6), not axum's default.
        .layer(DefaultBodyLimit::disable())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a request handler panicked").into_response()
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request| {
                    let id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %id,
                    )
                })
                // Failures are logged where they happen, with their detail (ApiError::internal).
                .on_failure(())
                .on_response(|res: &Response, latency: Duration, _span: &tracing::Span| {
                    tracing::info!(
                        status = res.status().as_u16(),
                        ms = latency.as_millis() as u64,
                        "response"
                    );
                }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found("No such endpoint.")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "This method is not allowed on this endpoint.",
    )
}
