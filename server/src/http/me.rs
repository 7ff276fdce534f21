//! `GET /v1/me`: what the relay makes of a token — so a client can check a token when the person
//! signs in, before it trusts it with a keychain entry.

use crate::AppState;
use crate::error::ApiError;
use crate::http::authenticate;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

/// The token's user, role, readable channels and expiry.
pub async fn me(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    Ok(Json(json!({
        "user": claims.sub,
        "role": claims.role,
        "channels": claims.readable_channels(),
        "expires_at": claims.exp,
    })))
}
