//! What the appliance's clients expect of every endpoint (API.md 1): path normalisation, body
//! decoding by `Content-Type`, the boolean spellings, and DRF pagination with absolute links.

use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, FromRequestParts, Multipart, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri, header};
use serde_json::{Map, Value};
use tower::{Layer, Service};

use super::AppState;
use super::error::{ApiError, ApiResult, FieldErrors};

// ---------------------------------------------------------------------------------------------
// Paths

/// Collapses repeated slashes, drops a trailing slash and decodes percent-encoded unreserved
/// characters, before routing. Never redirects (API.md 1.1).
#[derive(Clone, Copy, Default)]
pub struct NormalizePathLayer;

impl<S> Layer<S> for NormalizePathLayer {
    type Service = NormalizePath<S>;
    fn layer(&self, inner: S) -> Self::Service {
        NormalizePath { inner }
    }
}

#[derive(Clone)]
pub struct NormalizePath<S> {
    inner: S,
}

impl<S, B> Service<axum::http::Request<B>> for NormalizePath<S>
where
    S: Service<axum::http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: axum::http::Request<B>) -> Self::Future {
        let path = req.uri().path();
        let normalized = normalize_path(path);
        if normalized != path {
            let mut target = normalized;
            if let Some(q) = req.uri().query() {
                target.push('?');
                target.push_str(q);
            }
            if let Ok(pq) = target.parse::<axum::http::uri::PathAndQuery>() {
                let mut parts = req.uri().clone().into_parts();
                parts.path_and_query = Some(pq);
                if let Ok(uri) = Uri::from_parts(parts) {
                    *req.uri_mut() = uri;
                }
            }
        }
        self.inner.call(req)
    }
}

pub fn normalize_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let bytes = path.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' && i + 2 < bytes.len() {
            let decoded = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .filter(|c| c.is_ascii_alphanumeric() || b"-._~".contains(c));
            if let Some(c) = decoded {
                out.push(c as char);
                i += 3;
                continue;
            }
        }
        if b == b'/' && out.ends_with('/') {
            i += 1;
            continue;
        }
        out.push(b as char);
        i += 1;
    }
    if out.len() > 1 && out.ends_with('/') {
        out.pop();
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bodies

/// The fields of a request body, decoded from JSON, a URL-encoded form or a multipart form.
/// Form values arrive as strings (a repeated key as a list); accessors convert them.
#[derive(Debug, Default)]
pub struct Fields {
    map: Map<String, Value>,
}

impl Fields {
    pub fn from_map(map: Map<String, Value>) -> Self {
        Fields { map }
    }

    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    /// A text field; numbers are accepted as their text.
    pub fn text(&self, key: &str) -> Result<Option<String>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(Value::Array(items)) if items.len() == 1 => match &items[0] {
                Value::String(s) => Ok(Some(s.clone())),
                _ => Err("Not a valid string.".into()),
            },
            Some(_) => Err("Not a valid string.".into()),
        }
    }

    /// An integer field: a JSON integer or its decimal text.
    pub fn integer(&self, key: &str) -> Result<Option<i64>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .map(Some)
                .ok_or_else(|| "A valid integer is required.".into()),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| "A valid integer is required.".into()),
            Some(_) => Err("A valid integer is required.".into()),
        }
    }

    /// A boolean field: JSON `true/false` or the text spellings of API.md 1.2; absent is false.
    pub fn boolean(&self, key: &str) -> Result<bool, String> {
        match self.get(key) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_i64() == Some(0) || n.as_i64() == Some(1) => {
                Ok(n.as_i64() == Some(1))
            }
            Some(Value::String(s)) => parse_bool(s),
            Some(_) => Err("Must be a valid boolean.".into()),
        }
    }

    /// A list of strings: a JSON array, a repeated form key, or one value.
    pub fn list(&self, key: &str) -> Result<Option<Vec<String>>, String> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    Value::String(s) => Ok(s.clone()),
                    _ => Err("Expected a list of strings.".into()),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(Value::String(s)) => Ok(Some(vec![s.clone()])),
            Some(_) => Err("Expected a list of strings.".into()),
        }
    }
}

pub fn parse_bool(raw: &str) -> Result<bool, String> {
    crate::config::parse_bool(raw).map_err(|_| "Must be a valid boolean.".to_owned())
}

/// Collects per-field errors while a handler reads its fields.
#[derive(Default)]
pub struct Validation {
    errors: FieldErrors,
}

impl Validation {
    pub fn check<T>(&mut self, field: &str, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.add(field, message);
                None
            }
        }
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.errors
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    pub fn finish(self) -> ApiResult<()> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation(self.errors))
        }
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// Reads the whole body, refusing more than `limit` bytes with 413.
pub async fn read_body(headers: &HeaderMap, body: Body, limit: u64) -> ApiResult<Bytes> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::payload_too_large(limit));
    }
    let cap = usize::try_from(limit).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, cap).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::payload_too_large(limit)
        } else {
            ApiError::bad_request("bad_body", "The request body could not be read.")
        }
    })
}

impl FromRequest<AppState> for Fields {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let limit = state.settings.max_body_bytes;
        let (parts, body) = req.into_parts();
        let kind = content_type(&parts.headers);
        let bytes = read_body(&parts.headers, body, limit).await?;
        if kind.starts_with("multipart/form-data") {
            let req = Request::from_parts(parts, Body::from(bytes));
            let mut multipart = Multipart::from_request(req, state).await.map_err(|e| {
                ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}"))
            })?;
            let mut pairs = Vec::new();
            while let Some(field) = multipart.next_field().await.map_err(|e| {
                ApiError::bad_request("bad_body", format!("Malformed multipart body: {e}"))
            })? {
                let name = field.name().unwrap_or_default().to_owned();
                let text = field.text().await.map_err(|_| {
                    ApiError::bad_request(
                        "bad_body",
                        format!("The multipart field `{name}` is not UTF-8 text."),
                    )
                })?;
                pairs.push((name, text));
            }
            return Ok(Fields::from_map(pairs_to_map(pairs)));
        }
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Fields::default());
        }
        if kind.starts_with("application/x-www-form-urlencoded") {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(&bytes)
                .map_err(|_| ApiError::bad_request("bad_body", "Malformed form body."))?;
            return Ok(Fields::from_map(pairs_to_map(pairs)));
        }
        if kind.is_empty() || kind.starts_with("application/json") || kind.ends_with("+json") {
            return match serde_json::from_slice::<Value>(&bytes) {
                Ok(Value::Object(map)) => Ok(Fields::from_map(map)),
                Ok(_) => Err(ApiError::bad_request(
                    "bad_body",
                    "The JSON body must be an object.",
                )),
                Err(e) => Err(ApiError::bad_request(
                    "malformed_json",
                    format!(
                        "JSON parse error at line {} column {}: {}.",
                        e.line(),
                        e.column(),
                        json_error_kind(&e)
                    ),
                )),
            };
        }
        Err(ApiError::new(
            axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "Unsupported Content-Type `{kind}`; send application/json, \
                 application/x-www-form-urlencoded or multipart/form-data."
            ),
        ))
    }
}

fn json_error_kind(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "invalid data",
        serde_json::error::Category::Io => "read error",
    }
}

fn pairs_to_map(pairs: Vec<(String, String)>) -> Map<String, Value> {
    let mut map = Map::new();
    for (key, value) in pairs {
        match map.get_mut(&key) {
            None => {
                map.insert(key, Value::String(value));
            }
            Some(Value::Array(items)) => items.push(Value::String(value)),
            Some(existing) => {
                let first = existing.take();
                *existing = Value::Array(vec![first, Value::String(value)]);
            }
        }
    }
    map
}

// ---------------------------------------------------------------------------------------------
// Query strings and pagination

/// The query string as pairs, and the absolute URL of the request, for links.
#[derive(Debug, Clone)]
pub struct RequestUrl {
    pub origin: String,
    pub path: String,
    pub query: Vec<(String, String)>,
}

impl RequestUrl {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, key: &str) -> Vec<&str> {
        self.query
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// A boolean query parameter (absent: false).
    pub fn boolean(&self, key: &str) -> ApiResult<bool> {
        match self.get(key) {
            None => Ok(false),
            Some(v) => parse_bool(v).map_err(|m| ApiError::field(key, m)),
        }
    }

    /// This URL with `page` set to `page`, other parameters kept.
    pub fn with_page(&self, page: u64) -> String {
        let mut pairs: Vec<(String, String)> = self
            .query
            .iter()
            .filter(|(k, _)| k != "page")
            .cloned()
            .collect();
        pairs.push(("page".into(), page.to_string()));
        let query = serde_urlencoded::to_string(&pairs).unwrap_or_default();
        format!("{}{}?{}", self.origin, self.path, query)
    }
}

impl FromRequestParts<AppState> for RequestUrl {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> ApiResult<Self> {
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|v| v.split(',').next().unwrap_or("").trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let trusted = state.settings.trusted_proxy;
        let scheme = trusted
            .then(|| header("x-forwarded-proto"))
            .flatten()
            .filter(|p| p == "http" || p == "https")
            .unwrap_or_else(|| "http".into());
        let host = trusted
            .then(|| header("x-forwarded-host"))
            .flatten()
            .or_else(|| header("host"))
            .or_else(|| parts.uri.authority().map(|a| a.to_string()))
            .unwrap_or_else(|| state.settings.listen.to_string());
        let query = match parts.uri.query() {
            None => Vec::new(),
            Some(q) => serde_urlencoded::from_str(q).map_err(|_| {
                ApiError::bad_request("bad_query", "The query string is malformed.")
            })?,
        };
        Ok(RequestUrl {
            origin: format!("{scheme}://{host}"),
            path: parts.uri.path().to_owned(),
            query,
        })
    }
}

pub const DEFAULT_PAGE_SIZE: u64 = 100;
pub const MAX_PAGE_SIZE: u64 = 1000;

/// `page` and `page_size` (API.md 1.4). `page` is `None` when the client sent none.
#[derive(Debug, Clone, Copy)]
pub struct PageRequest {
    pub page: Option<u64>,
    pub page_size: u64,
    pub page_size_given: bool,
}

impl PageRequest {
    pub fn parse(url: &RequestUrl) -> ApiResult<Self> {
        let positive = |key: &str| -> ApiResult<Option<u64>> {
            match url.get(key) {
                None => Ok(None),
                Some(raw) => match raw.trim().parse::<u64>() {
                    Ok(n) if n >= 1 => Ok(Some(n)),
                    _ => Err(ApiError::new(
                        axum::http::StatusCode::BAD_REQUEST,
                        "invalid_page",
                        format!("`{key}` must be a positive integer."),
                    )),
                },
            }
        };
        let page = positive("page")?;
        let size = positive("page_size")?;
        Ok(PageRequest {
            page,
            page_size: size.unwrap_or(DEFAULT_PAGE_SIZE).min(MAX_PAGE_SIZE),
            page_size_given: size.is_some(),
        })
    }

    /// Offset and limit of the page in SQL terms (page 1 when none was given).
    pub fn window(&self) -> (i64, i64) {
        let page = self.page.unwrap_or(1);
        let offset = (page - 1).saturating_mul(self.page_size);
        (
            i64::try_from(offset).unwrap_or(i64::MAX),
            i64::try_from(self.page_size).unwrap_or(i64::MAX),
        )
    }

    /// The DRF envelope; a page past the end is 404 (page 1 always exists).
    pub fn envelope(&self, url: &RequestUrl, count: i64, results: Vec<Value>) -> ApiResult<Value> {
        let page = self.page.unwrap_or(1);
        let count_u = u64::try_from(count).unwrap_or(0);
        let last = count_u.div_ceil(self.page_size).max(1);
        if page > last {
            return Err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "invalid_page",
                "Invalid page.",
            ));
        }
        let next = (page < last).then(|| url.with_page(page + 1));
        let previous = (page > 1).then(|| url.with_page(page - 1));
        Ok(serde_json::json!({
            "count": count,
            "next": next,
            "previous": previous,
            "results": results,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_normalise_without_changing_meaning() {
        assert_eq!(
            normalize_path("/api/yara/repositories//7/"),
            "/api/yara/repositories/7"
        );
        assert_eq!(
            normalize_path("/api/yara/update/run/"),
            "/api/yara/update/run"
        );
        assert_eq!(normalize_path("/"), "/");
        assert_eq!(normalize_path("//"), "/");
        assert_eq!(normalize_path("/api/%72ules"), "/api/rules");
        assert_eq!(
            normalize_path("/a%2Fb"),
            "/a%2Fb",
            "an encoded slash stays encoded"
        );
        assert_eq!(normalize_path("/x%4"), "/x%4");
    }

    #[test]
    fn repeated_form_keys_become_lists() {
        let map = pairs_to_map(vec![
            ("name".into(), "a".into()),
            ("name".into(), "b".into()),
            ("x".into(), "1".into()),
        ]);
        let fields = Fields::from_map(map);
        assert_eq!(fields.list("name").unwrap().unwrap(), vec!["a", "b"]);
        assert_eq!(fields.integer("x").unwrap(), Some(1));
        assert!(!fields.boolean("absent").unwrap());
    }
}
