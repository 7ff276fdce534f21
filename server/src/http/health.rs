//! `/healthz` (the process answers), `/readyz` (the broker answers) and `/metrics` (Prometheus, on
//! the metrics listener).

use crate::AppState;
use crate::broker::BrokerHealth;
use crate::error::ApiError;
use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde_json::{Value, json};
use wardline_protocol::ErrorCode;

/// Liveness.
pub async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: the broker is connected and answers a ping.
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
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
    Ok(Json(json!({"status": "ready", "broker": broker.kind()})))
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
