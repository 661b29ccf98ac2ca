//! Scanning (API.md 6) and the samples that matched rulesets (API.md 5, matches).

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Request, State};
use axum::http::{StatusCode, header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::AppState;
use super::auth::CurrentUser;
use super::compat::{PageRequest, RequestUrl, read_body};
use super::error::{ApiError, ApiResult};
use crate::domain::{MatchRecord, Sample, Timestamp};
use crate::rules::{ScanGlobals, classify};

/// The file of a scan: the multipart `file` field (and its file name), or the raw body.
async fn scanned_file(state: &AppState, req: Request) -> ApiResult<(Vec<u8>, Option<String>)> {
    let limit = state.settings.max_scan_bytes;
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().starts_with("multipart/form-data"));
    if !is_multipart {
        let (parts, body) = req.into_parts();
        return Ok((read_body(&parts.headers, body, limit).await?.to_vec(), None));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    // The form's framing adds a little to the file; refuse what cannot fit at all.
    if declared.is_some_and(|n| n > limit.saturating_add(64 * 1024)) {
        return Err(ApiError::payload_too_large(limit));
    }
    let mut multipart = Multipart::from_request(req, state)
        .await
        .map_err(|e| ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}")))?;
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}")))?
    {
        if field.name() != Some("file") {
            continue;
        }
        let name = field.file_name().map(str::to_owned);
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(|e| {
            ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}"))
        })? {
            if (data.len() + chunk.len()) as u64 > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            data.extend_from_slice(&chunk);
        }
        return Ok((data, name));
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
    let generation = state.rulesets.current_generation().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            "No generation of rules is loaded yet; try again shortly.",
        )
    })?;
    let (data, field_name) = scanned_file(&state, req).await?;
    let filename = url
        .get("filename")
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .or(field_name);
    let sha256 = hex::encode(Sha256::digest(&data));
    let size = data.len() as i64;
    let timeout = Duration::from_secs(state.settings.scan_timeout_seconds);
    let outcome = state
        .scans
        .scan(
            generation.clone(),
            Arc::from(data),
            ScanGlobals::from_name(filename.as_deref()),
            timeout,
        )
        .await;
    if let Some(error) = outcome.error {
        return Err(ApiError::internal(format!("scan failed: {error}")));
    }
    let records: Vec<MatchRecord> = outcome
        .matches
        .iter()
        .filter_map(|m| {
            generation
                .ruleset_ids
                .get(&m.ruleset)
                .map(|id| MatchRecord {
                    ruleset_id: *id,
                    rule: m.rule.clone(),
                    classification: classify(&m.tags).to_owned(),
                })
        })
        .collect();
    let sample = Sample {
        sha256: sha256.clone(),
        size,
        filename: filename.clone(),
        first_seen: Timestamp::now(),
        last_seen: Timestamp::now(),
    };
    state.store.record_scan(&sample, &records).await?;
    let mut body = json!({
        "sha256": sha256,
        "size": size,
        "generation": generation.number,
        "duration_ms": (outcome.duration.as_secs_f64() * 1000.0 * 1000.0).round() / 1000.0,
        "matches": outcome.matches,
    });
    if outcome.timed_out {
        body["timed_out"] = json!(true);
    }
    Ok(Json(body))
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
    let mut ids = Vec::with_capacity(names.len());
    for name in &names {
        ids.push(state.rulesets.get(name).await?.id);
    }
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
