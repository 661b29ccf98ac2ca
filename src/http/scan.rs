//! Scanning (API.md 6) and the samples that matched rulesets (API.md 5, matches).

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::{Fields, PageRequest, RequestUrl};
use super::error::{ApiError, ApiResult};
use crate::scanning::ScanFailure;
use crate::scanning::retro::HuntError;

/// A scanned file as it arrived: its bytes and the name its form gave.
struct Received {
    data: bytes::Bytes,
    name: Option<String>,
}

/// Collects a file's chunks within `limit`, in one buffer of the size the request declared.
/// (Its SHA-256 is computed while a worker scans it, not here: the scan starts sooner.)
struct Collector {
    data: bytes::BytesMut,
}

impl Collector {
    fn with_capacity(expected: Option<u64>, limit: u64) -> Self {
        let capacity = expected.unwrap_or(0).min(limit);
        Collector {
            data: bytes::BytesMut::with_capacity(usize::try_from(capacity).unwrap_or(0)),
        }
    }

    fn push(&mut self, chunk: &[u8], limit: u64) -> ApiResult<()> {
        if (self.data.len() + chunk.len()) as u64 > limit {
            return Err(ApiError::payload_too_large(limit));
        }
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    fn finish(self, name: Option<String>) -> Received {
        Received {
            data: self.data.freeze(),
            name,
        }
    }
}

fn malformed(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}"))
}

/// The file of a scan: the multipart `file` field (and its file name), or the raw body.
async fn scanned_file(state: &AppState, req: Request) -> ApiResult<Received> {
    let limit = state.settings.max_scan_bytes;
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if !is_multipart {
        if declared.is_some_and(|n| n > limit) {
            return Err(ApiError::payload_too_large(limit));
        }
        let mut body = req.into_body();
        let mut file = Collector::with_capacity(declared, limit);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|_| {
                ApiError::bad_request("bad_body", "The request body could not be read.")
            })?;
            if let Some(chunk) = frame.data_ref() {
                file.push(chunk, limit)?;
            }
        }
        return Ok(file.finish(None));
    }
    // The form's framing adds a little to the file; refuse what cannot fit at all.
    if declared.is_some_and(|n| n > limit.saturating_add(64 * 1024)) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(malformed)?;
    while let Some(mut field) = multipart.next_field().await.map_err(malformed)? {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().map(str::to_owned);
        let mut file = Collector::with_capacity(declared, limit);
        while let Some(chunk) = field.chunk().await.map_err(malformed)? {
            file.push(&chunk, limit)?;
        }
        return Ok(file.finish(name));
    }
    Err(ApiError::field(
        "file",
        "The multipart form has no `file` field.",
    ))
}

/// `POST /api/yara/scan/`: scans with the generation active now, records what matched.
pub async fn scan(
    State(state): State<AppState>,
    _user: CurrentUser,
    url: RequestUrl,
    req: Request<Body>,
) -> ApiResult<Json<Value>> {
    if state.rulesets.current_generation().is_none() {
        return Err(not_ready());
    }
    let file = scanned_file(&state, req).await?;
    let filename = url
        .get("filename")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or(file.name);
    let report = state
        .scanning
        .scan(file.data, None, filename, true)
        .await
        .map_err(|e| match e {
            ScanFailure::NotReady => not_ready(),
            e @ ScanFailure::Engine(_) => ApiError::internal(e),
        })?;
    let mut body = json!({
        "sha256": report.sha256,
        "size": report.size,
        "generation": report.generation.number,
        "duration_ms": (report.outcome.duration.as_secs_f64() * 1_000_000.0).round() / 1000.0,
        "matches": report.outcome.matches,
    });
    if report.outcome.timed_out {
        body["timed_out"] = json!(true);
    }
    Ok(Json(body))
}

fn not_ready() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "No generation of rules is loaded yet; try again shortly.",
    )
}

/// `GET /api/uploads/local-retro-hunt/`: the state and the history of hunts.
pub async fn retro_status(State(state): State<AppState>, _user: CurrentUser) -> Json<Value> {
    Json(state.retro_hunt.status())
}

/// `POST /api/uploads/local-retro-hunt/` with `operation` = `START` or `STOP`.
pub async fn retro_operation(
    State(state): State<AppState>,
    _user: CurrentUser,
    fields: Fields,
) -> ApiResult<Json<Value>> {
    let operation = fields
        .text("operation")
        .map_err(|m| ApiError::field("operation", m))?
        .unwrap_or_default();
    let refused = |status: StatusCode, code: &'static str, e: HuntError| ApiError {
        status,
        code,
        message: format!(
            "{}.",
            e.to_string()[..1].to_uppercase() + &e.to_string()[1..]
        ),
        errors: None,
    };
    if operation == "START" {
        // The samples of every scan answered so far are on disk before the hunt lists them.
        state.scanning.flush().await;
    }
    match operation.as_str() {
        "START" => match state.retro_hunt.start(state.scanning.clone()) {
            Ok(()) => Ok(Json(
                json!({"success": true, "message": "Local retro hunt started."}),
            )),
            Err(e @ HuntError::AlreadyRunning) => {
                Err(refused(StatusCode::CONFLICT, "retro_hunt_running", e))
            }
            Err(e) => Err(refused(StatusCode::BAD_REQUEST, "samples_not_kept", e)),
        },
        "STOP" => match state.retro_hunt.stop() {
            Ok(()) => Ok(Json(
                json!({"success": true, "message": "Local retro hunt stopping."}),
            )),
            Err(e) => Err(refused(
                StatusCode::PRECONDITION_FAILED,
                "retro_hunt_not_running",
                e,
            )),
        },
        other => Err(ApiError::field(
            "operation",
            format!("`{other}` is not an operation; use START or STOP."),
        )),
    }
}

/// `GET /api/yara/v2/ruleset/matches/?name=A[&name=B]`: samples that matched all of them.
pub async fn matches(
    State(state): State<AppState>,
    _user: CurrentUser,
    url: RequestUrl,
) -> ApiResult<Json<Value>> {
    let names: Vec<&str> = url
        .all("name")
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect();
    if names.is_empty() {
        return Err(ApiError::field("name", "Give at least one ruleset `name`."));
    }
    let page = PageRequest::parse(&url)?;
    if page.page.is_some() && !page.page_size_given {
        return Err(ApiError::field(
            "page_size",
            "`page` needs `page_size` on this endpoint.",
        ));
    }
    // Every scan answered so far counts.
    state.scanning.flush().await;
    let mut ids = Vec::with_capacity(names.len());
    for name in &names {
        ids.push(state.rulesets.get(name).await?.id);
    }
    // A name given twice is one condition, not two.
    ids.sort_unstable();
    ids.dedup();
    let found = state
        .store
        .samples_matching_all(&ids, page.page.map(|_| page.window()))
        .await?;
    let results: Vec<Value> = found
        .items
        .iter()
        .map(|s| {
            json!({
                "sha256": s.sha256,
                "size": s.size,
                "filename": s.filename,
                "first_seen": s.first_seen,
                "last_seen": s.last_seen,
            })
        })
        .collect();
    if page.page.is_none() {
        return Ok(Json(
            json!({"count": found.count, "next": null, "previous": null, "results": results}),
        ));
    }
    Ok(Json(page.envelope(&url, found.count, results)?))
}
