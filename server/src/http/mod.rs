//! Plain HTTP endpoints: publishing, receipts, a notification's trail, stats, health and metrics.

pub mod funnel;
pub mod health;
pub mod me;
pub mod messages;
pub mod publish;
pub mod receipts;
pub mod stats;

use crate::AppState;
use crate::auth::{Claims, token_from_request};
use crate::error::ApiError;
use crate::metrics::Metrics;
use axum::http::HeaderMap;
use wardline_protocol::ErrorCode;

/// Verifies the request's token, counting refusals.
pub async fn authenticate(
    state: &AppState,
    query_token: Option<&str>,
    headers: &HeaderMap,
) -> Result<Claims, ApiError> {
    let result = match token_from_request(query_token, headers) {
        Some(token) => state.auth.verify(&token).await,
        None => Err(crate::auth::AuthError::Missing),
    };
    result.map_err(|e| {
        Metrics::inc(&state.metrics().auth_failures_total);
        ApiError::from(e)
    })
}

/// Parses a JSON request body, refusing a malformed one with 40001.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedJson,
            format!("invalid request body: {e}"),
        )
    })
}

/// Refuses a token whose role may not read stats or receipts.
pub fn require_stats_reader(claims: &Claims) -> Result<(), ApiError> {
    if claims.can_read_stats() {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::RoleForbidden,
            format!("role {} may not read relay statistics", claims.role),
        ))
    }
}

/// Answers unknown paths with the error shape.
pub async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such endpoint")
}
