//! Operator endpoints: stats (admin, service) and test notifications (admin).

use crate::AppState;
use crate::broker::{BrokerHealth, Publish};
use crate::error::ApiError;
use crate::http::{authenticate, json_body, require_stats_reader};
use crate::metrics::Transport;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use wardline_protocol::{Channel, ErrorCode, Priority, Role};

/// `GET /v1/stats` (also `/v1/ws/stats`, seed 004's path).
pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    require_stats_reader(&authenticate(&state, None, &headers).await?)?;
    let m = state.metrics();
    let broker = state.hub.broker();
    let health = broker.health().borrow().clone();
    Ok(Json(json!({
        "status": if health == BrokerHealth::Up { "ok" } else { "degraded" },
        "connected_clients": m.connections_open(),
        "connections": {
            "ws_raw": m.connections(Transport::WsRaw),
            "ws_v1": m.connections(Transport::WsV1),
            "sse": m.connections(Transport::Sse),
            "seed004": m.connections(Transport::Seed004),
        },
        "channels": state.hub.channel_count(),
        "broker": {
            "kind": broker.kind(),
            "up": health == BrokerHealth::Up,
            "error": match health { BrokerHealth::Down(reason) => Some(reason), BrokerHealth::Up => None },
        },
        "published_total": m.published_total.load(Relaxed),
        "deliveries_total": m.deliveries_total.load(Relaxed),
        "replayed_total": m.replayed_total.load(Relaxed),
        "slow_consumer_closes_total": m.slow_consumer_closes_total.load(Relaxed),
        "gaps_total": m.gaps_total.load(Relaxed),
    })))
}

/// Body of `POST /v1/ws/test-notification` (seed 004's, plus the recipient's role).
#[derive(Debug, Deserialize)]
pub struct TestNotification {
    user_id: String,
    #[serde(default)]
    role: Option<Role>,
    title: String,
    message: String,
    #[serde(default)]
    data: Value,
}

/// Sends a low-priority `test_notification`, kept for an hour, to a user's own channel (a doctor's
/// unless `role` is `patient`), so an administrator can check a device end to end without being
/// able to read that channel.
pub async fn test_notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    if claims.role != Role::Admin {
        return Err(ApiError::new(
            ErrorCode::RoleForbidden,
            "only an admin may send test notifications",
        ));
    }
    let request: TestNotification = json_body(&body)?;
    let prefix = match request.role {
        Some(Role::Patient) => "patient",
        Some(Role::Doctor) | None => "doctor",
        Some(other) => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("role {other} has no own channel"),
            ));
        }
    };
    let channel = Channel::parse(&format!("{prefix}:{}:notifications", request.user_id))
        .map_err(|e| ApiError::new(ErrorCode::UnknownChannel, e.to_string()))?;
    let message = json!({
        "type": "test_notification",
        "user_id": request.user_id,
        "title": request.title,
        "message": request.message,
        "data": request.data,
    });
    let published = state
        .hub
        .broker()
        .publish(Publish {
            channel: channel.clone(),
            payload: Bytes::from(message.to_string()),
            priority: Priority::Low,
            ttl: Some(Duration::from_secs(3600)),
            idempotency_key: None,
        })
        .await?;
    Ok(Json(json!({
        "status": "published",
        "channel": channel,
        "message_id": published.id,
        "recipients_count": published.live_relays,
    })))
}
