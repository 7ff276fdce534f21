//! The funnel every response passes on its way out: a rejection that is not yet `{code, message}`
//! (axum's own, for a query, a path, a body or an upgrade) becomes one, and every error is counted
//! by code and logged once — with the method and path, never the query (it may hold a token) or a
//! body (it may hold a notification).

use crate::error::ApiError;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use wardline_protocol::ErrorCode;

/// The code for a rejection that came without one, by its HTTP status.
fn code_for_status(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE | StatusCode::UNPROCESSABLE_ENTITY => {
            ErrorCode::MalformedJson
        }
        StatusCode::UNAUTHORIZED => ErrorCode::TokenMissing,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        status if status.is_server_error() => ErrorCode::Internal,
        // 400, 405 (wrong method), 426 (a WebSocket path opened without an upgrade), …
        _ => ErrorCode::InvalidRequest,
    }
}

/// Makes every error response `{code, message}`, counts it by code and logs it once.
pub async fn funnel(
    axum::extract::State(state): axum::extract::State<crate::AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (error, response) = match response.extensions().get::<ApiError>().cloned() {
        Some(error) => (error, response),
        None => {
            // axum's rejections are short texts ("Failed to deserialize query string: missing
            // field `id`"); read at most a few KiB of one.
            let text = axum::body::to_bytes(response.into_body(), 4096)
                .await
                .map(|bytes| String::from_utf8_lossy(&bytes).trim().to_owned())
                .unwrap_or_default();
            let message = if text.is_empty() {
                status.canonical_reason().unwrap_or("error").to_lowercase()
            } else {
                text
            };
            let error = ApiError::new(code_for_status(status), message);
            // Keep the status axum chose where the code's own differs (405, 426).
            let mut response = error.clone().into_response();
            *response.status_mut() = status;
            (error, response)
        }
    };
    state.metrics().count_error(error.code);
    let code = error.code.code();
    // A body the relay could not take may be quoted in its error ("unknown variant `…`"): its
    // message goes to the client only, never into a log.
    let message = match error.code {
        ErrorCode::MalformedJson | ErrorCode::InvalidRequest => "(about the request's body)",
        _ => error.message.as_str(),
    };
    if status.is_server_error() {
        tracing::warn!(code, status = status.as_u16(), %method, %path, ?message, "request failed");
    } else {
        tracing::info!(code, status = status.as_u16(), %method, %path, ?message, "request refused");
    }
    response
}
