//! A notification's fate, for the publisher: `GET /v1/messages/{channel}/{id}` answers its state
//! (open until a person acknowledges it) and its trail (published, delivered to which device,
//! displayed, read, acknowledged or declined, repeated, escalated, emailed); `GET /v1/messages`
//! lists the chains still open. Its recipient and the readers of a shared channel see what is
//! theirs of it ([`as_seen_by`]).

use crate::AppState;
use crate::auth::Claims;
use crate::broker::tracking::{ChainState, TrailEvent, TrailKind};
use crate::broker::{Broker, now_ms};
use crate::error::ApiError;
use crate::http::{authenticate, require_stats_reader};
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};
use wardline_protocol::frame::rfc3339_millis;
use wardline_protocol::{Channel, Cursor, CursorError, ErrorCode, Priority, ReceiptKind};

/// The most chains one `GET /v1/messages` lists.
const MAX_LISTED: usize = 1000;

/// One event of a trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TrailEntry {
    /// When, RFC 3339 UTC with milliseconds.
    #[schema(example = "2026-12-01T08:30:00.123Z")]
    pub at: String,
    /// What happened.
    pub event: TrailKind,
    /// Who, for a person's or a device's event.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Which device (its installation id), when it said.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// More: where it escalated to, whom it emailed, why an email failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl From<TrailEvent> for TrailEntry {
    fn from(event: TrailEvent) -> TrailEntry {
        TrailEntry {
            at: rfc3339_millis(event.at_ms),
            event: event.event,
            user: event.user,
            device: event.device,
            detail: event.detail,
        }
    }
}

/// A notification's state and trail.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageStatus {
    /// The channel.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The notification's id.
    #[schema(value_type = String)]
    pub id: Cursor,
    /// Its priority.
    pub priority: Priority,
    /// `open` until a person acknowledges it (or an escalation of it); `expired` when its
    /// `ttl_s` ran out first.
    pub state: ChainState,
    /// Who acknowledged it.
    pub acknowledged_by: Option<String>,
    /// Whether it follows an escalation policy (reminders, escalation, email).
    pub escalating: bool,
    /// The notification it escalates, when it is an escalation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub escalation_of: Option<MessageRef>,
    /// What happened to it, oldest first.
    pub trail: Vec<TrailEntry>,
}

/// A notification named by its channel and id.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct MessageRef {
    /// The channel.
    #[schema(value_type = String)]
    pub channel: Channel,
    /// The id.
    #[schema(value_type = String)]
    pub id: Cursor,
}

/// `GET /v1/messages/{channel}/{id}` (admin, service, or a user who reads the channel: the app's
/// detail view, `wardline list --trail`): a notification's state and trail.
#[utoipa::path(get, path = "/v1/messages/{channel}/{id}", tag = "receipts",
    security(("bearer" = [])),
    params(
        ("channel" = String, Path, description = "The notification's channel"),
        ("id" = String, Path, description = "The notification's id (`message_id` of its publish)"),
    ),
    responses(
        (status = 200, description = "Its state and trail", body = MessageStatus),
        (status = 404, description = "No such notification (never published, or pruned with its history)", body = crate::error::ErrorBody),
        (status = "4XX", description = "Refused: the token, the role, the channel or the id", body = crate::error::ErrorBody),
    ))]
pub async fn message(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((channel, id)): Path<(String, String)>,
) -> Result<Json<MessageStatus>, ApiError> {
    let claims = authenticate(&state, None, &headers).await?;
    let channel = Channel::parse(&channel)
        .map_err(|e| ApiError::new(ErrorCode::UnknownChannel, e.to_string()))?;
    if !claims.can_read_stats() && !claims.can_read(&channel) {
        return Err(ApiError::new(
            ErrorCode::ChannelForbidden,
            format!("the token does not grant channel {channel}"),
        ));
    }
    let id: Cursor = id
        .parse()
        .map_err(|e: CursorError| ApiError::new(ErrorCode::BadCursor, e.to_string()))?;
    status(state.hub.broker().as_ref(), channel, id)
        .await?
        .map(|status| Json(as_seen_by(status, &claims)))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                "no such notification: never published on this channel, or pruned with its history",
            )
        })
}

/// What `viewer` may see of a notification's state and trail. Services and administrators see it
/// all. The recipient of a personal channel sees every event, but other users' devices and where
/// the chain escalated or emailed to only as that it did (a backup's channel, staff addresses).
/// A reader of a shared channel (`system:alerts`) sees that it was published and their own
/// entries: nothing of who else received it, on which device.
fn as_seen_by(mut status: MessageStatus, viewer: &Claims) -> MessageStatus {
    if viewer.can_read_stats() {
        return status;
    }
    let me = viewer.sub.as_str();
    let mine = |entry: &TrailEntry| entry.user.as_deref() == Some(me);
    if viewer.can_settle(&status.channel) {
        for entry in status.trail.iter_mut() {
            let names_others = matches!(
                entry.event,
                TrailKind::Escalated | TrailKind::EmailSent | TrailKind::EmailFailed
            );
            if entry.user.is_some() && !mine(entry) {
                entry.device = None;
                entry.detail = None;
            } else if names_others {
                entry.detail = None;
            }
        }
    } else {
        status
            .trail
            .retain(|entry| entry.event == TrailKind::Published || mine(entry));
        status.acknowledged_by = status.acknowledged_by.filter(|user| user == me);
    }
    status
}

/// A notification's state and trail, if the relay still knows it.
async fn status(
    broker: &dyn Broker,
    channel: Channel,
    id: Cursor,
) -> Result<Option<MessageStatus>, ApiError> {
    let message = broker.message(&channel, id).await?;
    let chain = broker.chain(&channel, id).await?;
    let priority = match (&message, &chain) {
        (Some(message), _) => message.priority,
        (None, Some(chain)) => chain.priority,
        (None, None) => return Ok(None),
    };
    let now = now_ms();
    let receipts = broker.receipts(&channel, id).await?;
    let first_ack = receipts
        .iter()
        .find(|r| r.kind == ReceiptKind::Acknowledged)
        .map(|r| r.user.clone());
    let (state, acknowledged_by) = match &chain {
        Some(chain) => {
            let state = match chain.state {
                ChainState::Open if chain.expires_ms.is_some_and(|e| e <= now) => {
                    ChainState::Expired
                }
                state => state,
            };
            (state, chain.acknowledged_by.clone())
        }
        None if first_ack.is_some() => (ChainState::Acknowledged, first_ack),
        None if message.as_ref().is_some_and(|m| m.expired_at(now)) => (ChainState::Expired, None),
        None => (ChainState::Open, None),
    };
    let mut trail = vec![TrailEntry {
        at: rfc3339_millis(id.ms),
        event: TrailKind::Published,
        user: None,
        device: None,
        detail: None,
    }];
    trail.extend(
        broker
            .trail(&channel, id)
            .await?
            .into_iter()
            .map(TrailEntry::from),
    );
    let escalation_of = broker
        .escalation_origin(&channel, id)
        .await?
        .map(|(channel, id)| MessageRef { channel, id });
    Ok(Some(MessageStatus {
        channel,
        id,
        priority,
        state,
        acknowledged_by,
        escalating: chain.is_some(),
        escalation_of,
        trail,
    }))
}

/// Query of `GET /v1/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct OpenQuery {
    /// Only `open` is listed: notifications with an escalation policy nobody acknowledged yet.
    state: Option<String>,
    /// Only this priority.
    priority: Option<Priority>,
    /// At most this many (default 100, at most 1000), oldest first.
    limit: Option<usize>,
}

/// The open notifications.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenMessages {
    /// Oldest first, each with its state and trail.
    pub messages: Vec<MessageStatus>,
}

/// `GET /v1/messages?state=open&priority=critical` (admin, service): what still waits for a
/// person's acknowledgement, oldest first.
#[utoipa::path(get, path = "/v1/messages", tag = "receipts",
    security(("bearer" = [])),
    params(OpenQuery),
    responses(
        (status = 200, description = "The open notifications", body = OpenMessages),
        (status = "4XX", description = "Refused: the token, the role or the query", body = crate::error::ErrorBody),
    ))]
pub async fn open_messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<OpenQuery>,
) -> Result<Json<OpenMessages>, ApiError> {
    require_stats_reader(&authenticate(&state, None, &headers).await?)?;
    if query.state.as_deref().is_some_and(|s| s != "open") {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            "only state=open is listed; read one notification with GET /v1/messages/{channel}/{id}",
        ));
    }
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LISTED);
    let broker = state.hub.broker().as_ref();
    let mut messages = Vec::new();
    for (channel, id) in broker.open_chains(limit).await? {
        let Some(status) = status(broker, channel, id).await? else {
            continue;
        };
        if status.state == ChainState::Open && query.priority.is_none_or(|p| p == status.priority) {
            messages.push(status);
        }
    }
    Ok(Json(OpenMessages { messages }))
}
