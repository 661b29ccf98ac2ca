//! Token authentication for `/api/` and `POST /api-token-auth/`.

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
    let user = state
        .store
        .user_by_token_hash(&auth::token_hash(key))
        .await?
        .ok_or_else(|| ApiError::unauthorized("authentication_failed", "Invalid token."))?;
    if !user.is_active {
        return Err(ApiError::unauthorized(
            "authentication_failed",
            "User inactive or deleted.",
        ));
    }
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
