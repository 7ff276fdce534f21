//! `/healthz` (the process answers), `/readyz` (the broker answers) and `/metrics` (Prometheus, on
//! the metrics listener).

use crate::AppState;
use crate::broker::BrokerHealth;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use wardline_protocol::ErrorCode;

/// The relay is ready.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ready {
    /// Always `ready`.
    #[schema(example = "ready")]
    pub status: &'static str,
    /// `redis` or `embedded`.
    #[schema(example = "redis")]
    pub broker: &'static str,
}

/// Liveness.
#[utoipa::path(get, path = "/healthz", tag = "operations",
    responses((status = 200, description = "The process answers", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the broker is connected and answers a ping; the embedded broker writes its probe
/// row, so a full disk or a read-only data dir is "not ready".
#[utoipa::path(get, path = "/readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready for devices and publishers", body = Ready),
        (status = 503, description = "The broker is unavailable (the embedded history cannot be written), or the relay is shutting down", body = crate::error::ErrorBody),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Ready>, ApiError> {
    let broker = state.hub.broker();
    if let BrokerHealth::Down(reason) = &*broker.health().borrow() {
        return Err(ApiError::new(
            ErrorCode::BrokerUnavailable,
            format!("broker unavailable: {reason}"),
        ));
    }
    if *state.shutdown.borrow() {
        return Err(ApiError::new(
            ErrorCode::ShuttingDown,
            "the relay is shutting down",
        ));
    }
    broker.ping().await?;
    Ok(Json(Ready {
        status: "ready",
        broker: broker.kind(),
    }))
}

/// Prometheus metrics.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let broker = state.hub.broker();
    let up = *broker.health().borrow() == BrokerHealth::Up;
    let text = state
        .metrics()
        .render(broker.kind(), up, state.hub.channel_count());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
