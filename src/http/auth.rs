//! Token authentication for `/api/` and `POST /api-token-auth/`.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use serde_json::{Value, json};

use super::AppState;
use super::compat::Fields;
use super::error::{ApiError, ApiResult};
use crate::auth;
use crate::domain::User;

/// How long a token looked up in the database is trusted without asking again. A deleted token
/// or a deactivated user is refused on every node at most this long after the change.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Tokens remembered at most; past it the cache starts over.
const TOKEN_CACHE_ENTRIES: usize = 4096;

/// Recently seen valid tokens (by their hash) and their users, so that a client sending many
/// requests (scans, above all) does not cost a database query each. Only valid tokens of active
/// users are remembered; an unknown token always goes to the database.
pub struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (User, Instant)>>,
}

impl Default for TokenCache {
    fn default() -> Self {
        TokenCache::with_ttl(TOKEN_CACHE_TTL)
    }
}

impl TokenCache {
    pub fn with_ttl(ttl: Duration) -> Self {
        TokenCache {
            ttl,
            entries: Mutex::default(),
        }
    }

    fn get(&self, hash: &str) -> Option<User> {
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(hash)
            .filter(|(_, at)| at.elapsed() < self.ttl)
            .map(|(user, _)| user.clone())
    }

    fn insert(&self, hash: String, user: User) {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= TOKEN_CACHE_ENTRIES {
            entries.retain(|_, (_, at)| at.elapsed() < self.ttl);
            if entries.len() >= TOKEN_CACHE_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(hash, (user, Instant::now()));
    }
}

/// The authenticated user of a request, put there by [`require_token`].
#[derive(Debug, Clone)]
pub struct CurrentUser(pub User);

impl FromRequestParts<AppState> for CurrentUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> ApiResult<Self> {
        parts
            .extensions
            .get::<CurrentUser>()
            .cloned()
            .ok_or_else(|| ApiError::internal("route without the token middleware"))
    }
}

/// Middleware: `Authorization: Token <key>` (also `Bearer`), else 401 with
/// `WWW-Authenticate: Token`.
pub async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> ApiResult<Response> {
    let header = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| {
            ApiError::unauthorized(
                "not_authenticated",
                "Authentication credentials were not provided.",
            )
        })?;
    let key = header
        .to_str()
        .ok()
        .and_then(|h| h.trim().split_once(' '))
        .filter(|(scheme, _)| {
            scheme.eq_ignore_ascii_case("token") || scheme.eq_ignore_ascii_case("bearer")
        })
        .map(|(_, key)| key.trim())
        .filter(|key| !key.is_empty() && !key.contains(' '))
        .ok_or_else(|| {
            ApiError::unauthorized(
                "authentication_failed",
                "Invalid token header. Use `Authorization: Token <key>`.",
            )
        })?;
    let hash = auth::token_hash(key);
    let user = match state.tokens.get(&hash) {
        Some(user) => user,
        None => {
            let user = state
                .store
                .user_by_token_hash(&hash)
                .await?
                .ok_or_else(|| ApiError::unauthorized("authentication_failed", "Invalid token."))?;
            if !user.is_active {
                return Err(ApiError::unauthorized(
                    "authentication_failed",
                    "User inactive or deleted.",
                ));
            }
            state.tokens.insert(hash, user.clone());
            user
        }
    };
    req.extensions_mut().insert(CurrentUser(user));
    Ok(next.run(req).await)
}

/// `POST /api-token-auth/`: `username` and `password` give a new token; anything wrong is 400.
pub async fn obtain_token(State(state): State<AppState>, fields: Fields) -> ApiResult<Json<Value>> {
    let refused = || {
        ApiError::bad_request(
            "authorization",
            "Unable to log in with provided credentials.",
        )
    };
    let username = fields.text("username").ok().flatten().unwrap_or_default();
    let password = fields.text("password").ok().flatten().unwrap_or_default();
    if username.is_empty() || password.is_empty() {
        let mut errors = super::error::FieldErrors::new();
        for (field, value) in [("username", &username), ("password", &password)] {
            if value.is_empty() {
                errors.insert(field.into(), vec!["This field is required.".into()]);
            }
        }
        return Err(ApiError::validation(errors));
    }
    let found = state.store.user_with_password(&username).await?;
    let user = tokio::task::spawn_blocking(move || match found {
        Some((user, hash)) if auth::verify_password(&password, &hash) => Some(user),
        Some(_) => None,
        None => {
            auth::dummy_verify(&password);
            None
        }
    })
    .await
    .map_err(ApiError::internal)?
    .filter(|u| u.is_active)
    .ok_or_else(refused)?;
    let token = auth::new_token();
    state
        .store
        .create_token(user.id, &auth::token_hash(&token), "api-token-auth")
        .await?;
    tracing::info!(user = %user.username, "token issued");
    Ok(Json(json!({ "token": token })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: i64) -> User {
        User {
            id,
            username: "alice".into(),
            is_superuser: false,
            is_active: true,
        }
    }

    #[test]
    fn cached_tokens_expire() {
        let cache = TokenCache::with_ttl(Duration::from_millis(50));
        cache.insert("h1".into(), user(1));
        assert_eq!(cache.get("h1").map(|u| u.id), Some(1));
        assert!(
            cache.get("other").is_none(),
            "unknown tokens are never cached"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(
            cache.get("h1").is_none(),
            "past its time the database is asked again"
        );
    }

    #[test]
    fn a_full_cache_starts_over() {
        let cache = TokenCache::default();
        for i in 0..TOKEN_CACHE_ENTRIES + 1 {
            cache.insert(format!("h{i}"), user(i as i64));
        }
        let entries = cache.entries.lock().unwrap().len();
        assert!(entries <= TOKEN_CACHE_ENTRIES, "bounded: {entries}");
        assert!(cache.get(&format!("h{TOKEN_CACHE_ENTRIES}")).is_some());
    }
}
