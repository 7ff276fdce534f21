//! `GET /v1/me`: what the relay makes of a token — so a client can check a token when the person
//! signs in, before it trusts it with a keychain entry.

use crate::AppState;
use crate::error::ApiError;
use crate::http::authenticate;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde::Serialize;
use wardline_protocol::{Channel, Role};

/// What the relay makes of a token.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Me {
    /// The token's subject.
    #[schema(example = "dr-smith")]
    pub user: String,
    /// The role it grants.
    pub role: Role,
    /// Every channel it may read.
    #[schema(value_type = Vec<String>, example = json!(["doctor:dr-smith:notifications", "system:alerts"]))]
    pub channels: Vec<Channel>,
    /// When it expires (Unix seconds).
    pub expires_at: u64,
}

/// The token's user, role, readable channels and expiry.
#[utoipa::path(get, path = "/v1/me", tag = "tokens",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token is valid", body = Me),
        (status = 401, description = "No token, or an invalid or expired one", body = crate::error::ErrorBody),
    ))]
pub async fn me(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<Me>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    Ok(Json(Me {
        user: claims.sub.clone(),
        role: claims.role,
        channels: claims.readable_channels(),
        expires_at: claims.exp,
    }))
}
