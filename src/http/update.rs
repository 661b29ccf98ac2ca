//! The update job (API.md 3): cadence, run, status and the record of runs.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde_json::{Value, json};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::{PageRequest, RequestUrl};
use super::error::{ApiError, ApiResult};
use crate::domain::{RepoOutcome, UpdateRun, User};
use crate::jobs::JobError;
use crate::jobs::update::{DEFAULT_INTERVAL, MAX_INTERVAL};

fn superuser(user: &User) -> ApiResult<()> {
    if user.is_superuser {
        Ok(())
    } else {
        Err(ApiError::forbidden(
            "Only a superuser may configure or run the update job.",
        ))
    }
}

impl From<JobError> for ApiError {
    fn from(e: JobError) -> Self {
        match e {
            JobError::AlreadyRunning => ApiError::new(
                StatusCode::CONFLICT,
                "job_running",
                "Job is already running",
            ),
            JobError::RepositoryBusy => ApiError::new(
                StatusCode::CONFLICT,
                "repository_busy",
                "The update job is working on this repository; try again when it finishes.",
            ),
            JobError::Store(e) => e.into(),
        }
    }
}

pub async fn set_interval(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    superuser(&user)?;
    let seconds: u64 = Some(raw.as_str())
        .filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|r| r.parse().ok())
        .filter(|s| *s <= MAX_INTERVAL)
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_interval",
                format!(
                    "The interval must be a whole number of seconds from 0 to {MAX_INTERVAL} (30 days)."
                ),
            )
        })?;
    state.update_job.set_interval(seconds).await?;
    tracing::info!(seconds, "update cadence changed");
    Ok(Json(
        json!({"message": format!("Job cadence configured to {seconds}!")}),
    ))
}

pub async fn reset_interval(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Value>> {
    superuser(&user)?;
    state.update_job.set_interval(DEFAULT_INTERVAL).await?;
    Ok(Json(
        json!({"message": format!("Job cadence configured to {DEFAULT_INTERVAL}!")}),
    ))
}

pub async fn run(
    State(state): State<AppState>,
    CurrentUser(user): CurrentUser,
) -> ApiResult<Json<Value>> {
    superuser(&user)?;
    let run_id = state.update_job.start("manual").await?;
    Ok(Json(json!({"message": "Job running!", "run_id": run_id})))
}

fn run_json(run: &UpdateRun) -> Value {
    json!({
        "id": run.id,
        "node": run.node,
        "trigger": run.trigger,
        "state": run.state,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
        "progress": {"done": run.repositories_done, "total": run.repositories_total},
    })
}

pub async fn status(State(state): State<AppState>, _user: CurrentUser) -> ApiResult<Json<Value>> {
    let status = state.update_job.status().await?;
    Ok(Json(json!({
        "interval_seconds": status.interval_seconds,
        "enabled": status.interval_seconds > 0,
        "next_run_at": status.next_run_at,
        "running": status.running.as_ref().map(run_json),
    })))
}

pub async fn runs(
    State(state): State<AppState>,
    _user: CurrentUser,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let page = PageRequest::parse(&url)?;
    let (offset, limit) = page.window();
    let found = state.store.runs(offset, limit).await?;
    let results = found.items.iter().map(run_json).collect();
    Ok(Json(page.envelope(&url, found.count, results)?))
}

pub async fn run_detail(
    State(state): State<AppState>,
    _user: CurrentUser,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let missing = || ApiError::not_found(format!("No update run with id `{raw}`."));
    let id: i64 = raw.parse().map_err(|_| missing())?;
    let (run, outcomes) = state.store.run(id).await?.ok_or_else(missing)?;
    let mut body = run_json(&run);
    body["repositories"] = json!(outcomes);
    Ok(Json(body))
}

/// The outcome of one repository, as runs and imports report it.
pub fn outcome_json(outcome: &RepoOutcome) -> Value {
    json!(outcome)
}
