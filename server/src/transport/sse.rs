//! `GET /sse/{user_id}`: Server-Sent Events over the same session as the WebSockets.
//!
//! Each notification is an unnamed event (so `EventSource.onmessage` sees it) whose data is the
//! `wardline.v1` envelope. Its `id:` is the stream's position in every channel it carries,
//! `channel=cursor;channel=cursor` sorted by channel, so `Last-Event-ID` (or `?since=`) resumes all of
//! them at once; `?since=` also takes one bare cursor for every channel. Per channel, a `resumed`
//! event tells how many were replayed and whether there was a gap. A comment line every heartbeat
//! keeps proxies from closing the stream; an `error` event precedes every close the relay makes.

use crate::AppState;
use crate::auth::Claims;
use crate::client_addr::ClientAddr;
use crate::connection_caps::ConnectionPermit;
use crate::delivery::sse_data_lines;
use crate::error::ApiError;
use crate::metrics::{ConnectionGuard, Metrics, Transport};
use crate::session::{Resumed, Session, SessionEvent};
use crate::transport::admit;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Deserialize;
use std::collections::{BTreeMap, VecDeque};
use std::pin::Pin;
use tokio::time::{Instant, Interval, Sleep};
use wardline_protocol::{Channel, Cursor, ErrorCode, ServerFrame, close};

/// Query of `/sse/{user_id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct SseQuery {
    /// The token, for clients that cannot set `Authorization` (a browser's `EventSource`).
    token: Option<String>,
    /// Resume position: an SSE id, or one cursor for every channel.
    since: Option<String>,
    /// Comma-separated subset of the readable channels (default: all of them).
    channels: Option<String>,
    /// The installation's id (stable across runs), named in the trail of its receipts.
    device: Option<String>,
}

/// A resume position: a cursor per channel, and the history's epoch they belong to, if known.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Position {
    cursors: BTreeMap<Channel, Cursor>,
    epoch: Option<String>,
}

/// The `epoch=…` part of an SSE id (a channel name always holds a colon, so never this).
const EPOCH_PART: &str = "epoch";

/// Parses an SSE id (`epoch=…;channel=cursor;…`) or a bare cursor (for every channel).
fn parse_position(text: &str, channels: &[Channel]) -> Result<Position, ApiError> {
    let bad = |detail: String| {
        ApiError::new(
            ErrorCode::BadCursor,
            format!("invalid resume position: {detail}"),
        )
    };
    if !text.contains('=') {
        let cursor: Cursor = text
            .parse()
            .map_err(|e: wardline_protocol::CursorError| bad(e.to_string()))?;
        return Ok(Position {
            cursors: channels.iter().map(|c| (c.clone(), cursor)).collect(),
            epoch: None,
        });
    }
    let mut position = Position::default();
    for part in text.split(';').filter(|p| !p.is_empty()) {
        let (name, cursor) = part.split_once('=').ok_or_else(|| bad(part.to_owned()))?;
        if name == EPOCH_PART {
            position.epoch = Some(cursor.to_owned());
            continue;
        }
        let channel = Channel::parse(name).map_err(|e| bad(e.to_string()))?;
        let cursor: Cursor = cursor
            .parse()
            .map_err(|e: wardline_protocol::CursorError| bad(e.to_string()))?;
        position.cursors.insert(channel, cursor);
    }
    Ok(position)
}

/// Formats positions, and the epoch they belong to, as an SSE id.
fn format_position(cursors: &BTreeMap<Channel, Cursor>, epoch: Option<&str>) -> String {
    epoch
        .map(|epoch| format!("{EPOCH_PART}={epoch}"))
        .into_iter()
        .chain(cursors.iter().map(|(c, p)| format!("{c}={p}")))
        .collect::<Vec<_>>()
        .join(";")
}

fn event(name: &str, frame: &ServerFrame) -> Bytes {
    Bytes::from(format!(
        "event: {name}\n{}\n",
        sse_data_lines(&frame.to_json())
    ))
}

fn error_event(code: ErrorCode, message: String, close_code: u16) -> Bytes {
    let body =
        serde_json::json!({"op": "error", "code": code, "message": message, "close": close_code});
    Bytes::from(format!(
        "event: error\n{}\n",
        sse_data_lines(&body.to_string())
    ))
}

/// `GET /sse/{user_id}`.
#[utoipa::path(get, path = "/sse/{user_id}", tag = "devices",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The token's user"), SseQuery,
        ("Last-Event-ID" = Option<String>, Header, description = "Where to resume: the last event's id")),
    responses(
        (status = 200, description = "Server-Sent Events: `notification`, `resumed`, `error` and heartbeat comments", content_type = "text/event-stream", body = String),
        (status = "4XX", description = "Refused: the token, the user or a channel", body = crate::error::ErrorBody),
    ))]
pub async fn user_events(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(user_id): Path<String>,
    Query(query): Query<SseQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (claims, permit) =
        admit(&state, client, &user_id, query.token.as_deref(), &headers).await?;
    let channels = requested_channels(&claims, query.channels.as_deref())?;
    let last_event_id = headers.get("last-event-id").and_then(|v| v.to_str().ok());
    let position = match last_event_id
        .or(query.since.as_deref())
        .filter(|t| !t.is_empty())
    {
        Some(text) => parse_position(text, &channels)?,
        None => Position::default(),
    };
    let guard = state
        .metrics()
        .connection_opened(Transport::Sse, &claims.sub);
    let device = query
        .device
        .as_deref()
        .map(crate::http::receipts::checked_device)
        .transpose()?
        .map(str::to_owned);
    let mut session = Session::open_device(&state.hub, claims, device, state.config.queue_capacity);
    let mut replays = VecDeque::with_capacity(channels.len());
    for channel in &channels {
        let since = position.cursors.get(channel).map(|c| c.to_string());
        replays.push_back(
            session
                .subscribe(
                    channel.as_str(),
                    since.as_deref(),
                    position.epoch.as_deref(),
                )
                .await?,
        );
    }
    // Each replayed event's id says exactly what the stream has sent so far, so a client that drops
    // in the middle of the replay resumes every channel from the right place.
    let sent: BTreeMap<Channel, Cursor> = replays
        .iter()
        .filter_map(|r: &Resumed| Some((r.channel.clone(), r.start?)))
        .collect();
    let stream = SseStream {
        pending: VecDeque::from([Bytes::from_static(b"retry: 2000\n\n")]),
        epoch: replays.front().map(|r: &Resumed| r.epoch.clone()),
        replays,
        sent,
        expiry: Box::pin(tokio::time::sleep(session.claims().time_left())),
        heartbeat: tokio::time::interval_at(
            Instant::now() + state.config.heartbeat,
            state.config.heartbeat,
        ),
        session,
        shutdown: state.shutdown.clone(),
        metrics: state.metrics().clone(),
        finished: false,
        guard,
        _permit: permit,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, SseStream::next_chunk));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

fn requested_channels(claims: &Claims, requested: Option<&str>) -> Result<Vec<Channel>, ApiError> {
    let readable = claims.readable_channels();
    let Some(requested) = requested.filter(|r| !r.is_empty()) else {
        return Ok(readable);
    };
    let mut channels: Vec<Channel> = Vec::new();
    for channel in requested.split(',').map(|name| {
        let channel = Channel::parse(name.trim())
            .map_err(|e| ApiError::new(ErrorCode::UnknownChannel, e.to_string()))?;
        if readable.contains(&channel) {
            Ok(channel)
        } else {
            Err(ApiError::new(
                ErrorCode::ChannelForbidden,
                format!("the token does not grant channel {channel}"),
            ))
        }
    }) {
        // A channel named twice is served once (each name would replay it again).
        let channel = channel?;
        if !channels.contains(&channel) {
            channels.push(channel);
        }
    }
    Ok(channels)
}

struct SseStream {
    session: Session,
    /// Chunks to write before anything else.
    pending: VecDeque<Bytes>,
    /// The channels whose replay is not yet all sent, in order.
    replays: VecDeque<Resumed>,
    /// Each channel's last id sent, for the replay's event ids.
    sent: BTreeMap<Channel, Cursor>,
    /// The history's epoch, for every event id.
    epoch: Option<String>,
    heartbeat: Interval,
    expiry: Pin<Box<Sleep>>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    metrics: std::sync::Arc<Metrics>,
    finished: bool,
    guard: ConnectionGuard,
    /// The stream's slot under the connection caps.
    _permit: ConnectionPermit,
}

impl SseStream {
    /// The next chunk of the replays, reading a channel's next page once its last is sent; `None`
    /// once every replay is sent.
    async fn replay_chunk(&mut self) -> Option<Bytes> {
        loop {
            let resumed = self.replays.front_mut()?;
            if !resumed.page.is_empty() {
                for delivery in std::mem::take(&mut resumed.page) {
                    let message = &delivery.message;
                    self.sent.insert(message.channel.clone(), message.id);
                    let id = format!(
                        "id: {}\n",
                        format_position(&self.sent, self.epoch.as_deref())
                    );
                    self.pending.push_back(Bytes::from(id));
                    self.pending.push_back(delivery.sse_data());
                }
                return self.pending.pop_front();
            }
            match self.session.next_page(resumed).await {
                Ok(true) => {}
                Ok(false) => {
                    let resumed = self.replays.pop_front()?;
                    let frame = ServerFrame::Resumed {
                        replayed: resumed.replayed,
                        gap: resumed.gap,
                        cursor: self.sent.get(&resumed.channel).copied(),
                        channel: resumed.channel,
                        epoch: Some(resumed.epoch),
                    };
                    return Some(event("resumed", &frame));
                }
                Err(e) => {
                    self.finished = true;
                    self.replays.clear();
                    self.guard.closed_with(close::TRY_AGAIN_LATER);
                    return Some(error_event(e.code(), e.to_string(), close::TRY_AGAIN_LATER));
                }
            }
        }
    }

    async fn next_chunk(mut self) -> Option<(Result<Bytes, std::convert::Infallible>, SseStream)> {
        if let Some(chunk) = self.pending.pop_front() {
            return Some((Ok(chunk), self));
        }
        if self.finished {
            return None;
        }
        if let Some(chunk) = self.replay_chunk().await {
            return Some((Ok(chunk), self));
        }
        let chunk = tokio::select! {
            _ = crate::stopping(&mut self.shutdown) => {
                self.finished = true;
                self.guard.closed_with(close::GOING_AWAY);
                error_event(ErrorCode::ShuttingDown, "relay shutting down: reconnect and resume".into(), close::GOING_AWAY)
            }
            _ = &mut self.expiry => {
                self.finished = true;
                self.guard.closed_with(close::TOKEN_EXPIRED);
                error_event(ErrorCode::TokenExpired, "token expired: sign in again".into(), close::TOKEN_EXPIRED)
            }
            _ = self.heartbeat.tick() => Bytes::from_static(b": heartbeat\n\n"),
            next = self.session.next_event() => match next {
                SessionEvent::Notification(delivery) => {
                    let positions: BTreeMap<Channel, Cursor> = self.session.positions().iter().cloned().collect();
                    let id = format!("id: {}\n", format_position(&positions, self.epoch.as_deref()));
                    self.pending.push_back(delivery.sse_data());
                    self.metrics.delivered(delivery.message.id.ms);
                    Bytes::from(id)
                }
                // What the user did on a device: an event without an id (it moves no position).
                SessionEvent::Receipts(sync) => event("receipt", &ServerFrame::Receipt {
                    kind: sync.kind,
                    channel: sync.channel.clone(),
                    ids: sync.ids.clone(),
                    user: sync.user.clone(),
                    device: sync.device.clone(),
                }),
                SessionEvent::SlowConsumer => {
                    self.finished = true;
                    self.guard.closed_with(close::SLOW_CONSUMER);
                    Metrics::inc(&self.metrics.slow_consumer_closes_total);
                    error_event(ErrorCode::SlowConsumer, "slow consumer: resume from your last id".into(), close::SLOW_CONSUMER)
                }
                SessionEvent::BrokerDown(reason) => {
                    self.finished = true;
                    self.guard.closed_with(close::TRY_AGAIN_LATER);
                    error_event(ErrorCode::BrokerUnavailable, format!("broker unavailable: {reason}"), close::TRY_AGAIN_LATER)
                }
            },
        };
        Some((Ok(chunk), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any positions, as an SSE id, parse back to themselves; any text as `Last-Event-ID`
        /// parses or is refused, never panics.
        #[test]
        fn every_sse_id_parses_back(
            ids in proptest::collection::btree_map("[a-z0-9]{1,8}", (0..=Cursor::MAX_PART, 0..=Cursor::MAX_PART), 0..6),
            epoch in proptest::option::of("[0-9a-f-]{1,24}"),
            junk in "\\PC{0,60}",
        ) {
            let cursors: BTreeMap<Channel, Cursor> = ids
                .into_iter()
                .map(|(id, (ms, seq))| (Channel::parse(&format!("doctor:{id}:notifications")).unwrap(), Cursor::new(ms, seq)))
                .collect();
            let channels: Vec<Channel> = cursors.keys().cloned().collect();
            let position = Position { cursors, epoch };
            let id = format_position(&position.cursors, position.epoch.as_deref());
            if !position.cursors.is_empty() {
                proptest::prop_assert_eq!(parse_position(&id, &channels).ok(), Some(position));
            }
            let _ = parse_position(&junk, &channels);
        }
    }

    #[test]
    fn positions_round_trip_through_sse_ids() {
        let channels = [
            Channel::parse("doctor:d1:notifications").unwrap(),
            Channel::system_alerts(),
        ];
        let position =
            parse_position("system:alerts=5-1;doctor:d1:notifications=7-0", &channels).unwrap();
        assert_eq!(
            format_position(&position.cursors, None),
            "doctor:d1:notifications=7-0;system:alerts=5-1"
        );
        let with_epoch = parse_position(
            "epoch=17-42;system:alerts=5-1;doctor:d1:notifications=7-0",
            &channels,
        )
        .unwrap();
        assert_eq!(with_epoch.epoch.as_deref(), Some("17-42"));
        assert_eq!(
            format_position(&with_epoch.cursors, with_epoch.epoch.as_deref()),
            "epoch=17-42;doctor:d1:notifications=7-0;system:alerts=5-1"
        );
        let bare = parse_position("9-0", &channels).unwrap();
        assert_eq!(
            format_position(&bare.cursors, None),
            "doctor:d1:notifications=9-0;system:alerts=9-0"
        );
        assert!(parse_position("doctor:d1:notifications=x", &channels).is_err());
        assert!(parse_position("nope=1-0", &channels).is_err());
    }
}
