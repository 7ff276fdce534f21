//! Browsers on other origins (`--allowed-origins`).
//!
//! The relay authenticates by bearer token, never by a cookie, so a page on another origin gains
//! nothing a token does not already give: by default every origin may use the HTTP API and SSE
//! (CORS answers `*`, preflights included). With a list, only those origins may: the CORS headers
//! name them alone, and any request that carries another `Origin` (a browser's fetch,
//! `EventSource` or WebSocket upgrade) is refused with 403 before it reaches a handler. Requests
//! without `Origin` (devices, backends, curl) are not browsers' and pass.

use crate::AppState;
use crate::error::ApiError;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::time::Duration;
use tower_http::cors::{AllowOrigin, CorsLayer};
use wardline_protocol::ErrorCode;

/// The CORS answers for `allowed` origins (`None`: any).
pub fn cors(allowed: Option<&[HeaderValue]>) -> CorsLayer {
    let origins = match allowed {
        None => AllowOrigin::any(),
        Some(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
        ])
        .expose_headers([header::RETRY_AFTER])
        .max_age(Duration::from_secs(3600))
}

/// Refuses a request whose `Origin` is not on the list (when there is one).
pub async fn refuse_other_origins(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
    if let (Some(allowed), Some(origin)) = (
        state.config.allowed_origins.as_deref(),
        request.headers().get(header::ORIGIN),
    ) && !allowed.contains(origin)
    {
        let origin = origin.to_str().unwrap_or("(not text)");
        return ApiError::new(
            ErrorCode::OriginForbidden,
            format!("pages from {origin} may not use this relay (--allowed-origins)"),
        )
        .into_response();
    }
    next.run(request).await
}

/// Parses `--allowed-origins` entries: `scheme://host[:port]`, as browsers send `Origin`.
pub fn parse_origin(text: &str) -> Result<HeaderValue, String> {
    let text = text.trim().trim_end_matches('/');
    let valid = text.split_once("://").is_some_and(|(scheme, host)| {
        matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
    });
    if !valid {
        return Err(format!(
            "{text:?} is not an origin (https://portal.hospital.example, http://localhost:5173)"
        ));
    }
    HeaderValue::from_str(text).map_err(|e| format!("{text:?}: {e}"))
}
