//! Operator endpoints: stats (admin, service) and test notifications (admin).

use crate::AppState;
use crate::broker::{BrokerHealth, Publish};
use crate::error::ApiError;
use crate::http::publish::Published;
use crate::http::{authenticate, json_body, require_stats_reader};
use crate::metrics::Transport;
use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;
use wardline_protocol::{Channel, ErrorCode, Priority, Role};

/// The relay's state, for operators.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Stats {
    /// `ok`, or `degraded` while the broker is unavailable.
    #[schema(example = "ok")]
    pub status: &'static str,
    /// Open connections, every transport.
    pub connected_clients: i64,
    /// Open connections by transport.
    pub connections: ConnectionCounts,
    /// Channels with a live subscriber on this node.
    pub channels: usize,
    /// The broker.
    pub broker: BrokerStatus,
    /// Notifications published through this node.
    pub published_total: u64,
    /// Notifications handed to devices.
    pub deliveries_total: u64,
    /// Notifications replayed to resuming devices.
    pub replayed_total: u64,
    /// Connections closed for not reading.
    pub slow_consumer_closes_total: u64,
    /// Resumes that found history missing.
    pub gaps_total: u64,
}

/// Open connections by transport.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ConnectionCounts {
    /// `/ws/{user}` without a subprotocol: the published JSON as is.
    pub ws_raw: i64,
    /// `/ws/{user}` with `wardline.v1`.
    pub ws_v1: i64,
    /// Server-Sent Events.
    pub sse: i64,
    /// `/v1/ws/notifications`, the Diagnoxix notification service's WebSocket.
    pub diagnoxix: i64,
}

/// The broker's state.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BrokerStatus {
    /// `redis` or `embedded`.
    pub kind: &'static str,
    /// Reachable, subscriptions in place.
    pub up: bool,
    /// Why not, when it is not.
    pub error: Option<String>,
}

/// `GET /v1/stats` (also `/v1/ws/stats`, the Diagnoxix service's path).
#[utoipa::path(get, path = "/v1/stats", tag = "operations",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The relay's state (admin, service)", body = Stats),
        (status = "4XX", description = "Refused: the token or its role", body = crate::error::ErrorBody),
    ))]
pub async fn stats(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Stats>, ApiError> {
    require_stats_reader(&authenticate(&state, None, &headers).await?)?;
    let m = state.metrics();
    let broker = state.hub.broker();
    let health = broker.health().borrow().clone();
    let up = health == BrokerHealth::Up;
    Ok(Json(Stats {
        status: if up { "ok" } else { "degraded" },
        connected_clients: m.connections_open(),
        connections: ConnectionCounts {
            ws_raw: m.connections(Transport::WsRaw),
            ws_v1: m.connections(Transport::WsV1),
            sse: m.connections(Transport::Sse),
            diagnoxix: m.connections(Transport::Diagnoxix),
        },
        channels: state.hub.channel_count(),
        broker: BrokerStatus {
            kind: broker.kind(),
            up,
            error: match health {
                BrokerHealth::Down(reason) => Some(reason),
                BrokerHealth::Up => None,
            },
        },
        published_total: m.published_total.load(Relaxed),
        deliveries_total: m.deliveries_total.load(Relaxed),
        replayed_total: m.replayed_total.load(Relaxed),
        slow_consumer_closes_total: m.slow_consumer_closes_total.load(Relaxed),
        gaps_total: m.gaps_total.load(Relaxed),
    }))
}

/// Body of `POST /v1/ws/test-notification` (the Diagnoxix service's, plus the recipient's role).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct TestNotification {
    /// The user whose own channel gets it.
    user_id: String,
    /// `doctor` (the default) or `patient`.
    #[serde(default)]
    role: Option<Role>,
    /// The title shown.
    title: String,
    /// The text shown.
    message: String,
    /// Anything else, delivered as is.
    #[serde(default)]
    #[schema(value_type = Object)]
    data: Value,
}

/// Sends a low-priority `test_notification`, kept for an hour, to a user's own channel (a doctor's
/// unless `role` is `patient`), so an administrator can check a device end to end without being
/// able to read that channel.
#[utoipa::path(post, path = "/v1/ws/test-notification", tag = "operations",
    security(("bearer" = [])),
    request_body = TestNotification,
    responses(
        (status = 200, description = "Sent (admin)", body = crate::http::publish::Published),
        (status = "4XX", description = "Refused: the token, its role or the body", body = crate::error::ErrorBody),
    ))]
pub async fn test_notification(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Published>, ApiError> {
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
            escalation: None,
        })
        .await?;
    Ok(Json(Published {
        status: "published",
        channel: channel.to_string(),
        message_id: published.id,
        recipients_count: published.live_relays,
        duplicate: published.duplicate,
    }))
}
