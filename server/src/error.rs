//! The HTTP boundary's error: a stable code and a message, as `{"code": 40102, "message": "…"}`
//! with the HTTP status the code belongs with. A leaf: each module turns its own errors into it in
//! its own file, and every response leaves through the funnel in `http`.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use wardline_protocol::ErrorCode;

/// The body of every error answer: `{"code": 40102, "message": "…"}`.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// The stable code (see the protocol's error codes); its first three digits are the HTTP status.
    #[schema(example = 40102)]
    code: u32,
    /// What went wrong, for people.
    #[schema(example = "bad signature")]
    message: String,
}

/// An error answered over HTTP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// The stable code.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

impl ApiError {
    /// An error with a code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        StatusCode::from_u16(self.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code.code(),
            message: self.message.clone(),
        };
        let mut response = (self.status(), Json(body)).into_response();
        // For the funnel: this response is already `{code, message}`, with this code and message.
        response.extensions_mut().insert(self.clone());
        if let Some(seconds) = retry_after(self.code) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static(seconds));
        }
        response
    }
}

/// When to try again after a refusal for `code`, in seconds, where waiting is the cure.
fn retry_after(code: ErrorCode) -> Option<&'static str> {
    match code {
        // Every rate refills at least one token a second.
        ErrorCode::RateLimited | ErrorCode::Flood => Some("1"),
        // A slot frees only when another connection of the node, address or user closes.
        ErrorCode::TooManyConnections => Some("30"),
        ErrorCode::RelayFull => Some("10"),
        _ => None,
    }
}
