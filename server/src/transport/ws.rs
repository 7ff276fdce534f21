//! WebSocket transports over one session:
//! - `/ws/{user_id}` without a subprotocol (or with `wardline.raw`): as HealthHub's clients read it, each text frame is
//!   the published JSON byte for byte, for every channel the user may read, live only;
//! - `/ws/{user_id}` with `wardline.v1`: envelopes, subscribe with resume, acks, ping;
//! - `/v1/ws/notifications?user_id=`: the Diagnoxix notification service's frames and `{"type":"ping"}` → `{"type":"pong"}`.

use crate::AppState;
use crate::auth::Claims;
use crate::client_addr::ClientAddr;
use crate::connection_caps::ConnectionPermit;
use crate::delivery::Delivery;
use crate::error::ApiError;
use crate::metrics::{Metrics, Transport};
use crate::ratelimit::TokenBucket;
use crate::session::{Resumed, Session, SessionError, SessionEvent};
use crate::transport::admit;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use std::borrow::Cow;
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};
use wardline_protocol::limits::MAX_RECEIPT_IDS;
use wardline_protocol::{
    ClientFrame, ErrorCode, MAX_INBOUND_FRAME_BYTES, ReceiptKind, SUBPROTOCOL_RAW, SUBPROTOCOL_V1,
    ServerFrame, close,
};

/// Largest frame tungstenite buffers before failing the connection; frames between the protocol's
/// limit and this one get a clear error and close 1009 instead.
const HARD_FRAME_LIMIT: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Raw,
    V1,
    Diagnoxix,
}

impl Mode {
    fn transport(self) -> Transport {
        match self {
            Mode::Raw => Transport::WsRaw,
            Mode::V1 => Transport::WsV1,
            Mode::Diagnoxix => Transport::Diagnoxix,
        }
    }
}

/// Query of `/ws/{user_id}`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct TokenQuery {
    /// The token, for clients that cannot set `Authorization` (a browser's `WebSocket`).
    token: Option<String>,
    /// The installation's id (stable across runs): receipts sent on this connection name it in the
    /// notification's trail.
    device: Option<String>,
}

/// Query of `/v1/ws/notifications`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct DiagnoxixQuery {
    /// The token's user.
    user_id: String,
    /// The token, for clients that cannot set `Authorization`.
    token: Option<String>,
}

/// Bytes tungstenite reads at a time. A small read buffer is what keeps an idle connection at a
/// few KiB: tungstenite keeps it for the connection's life and zero-fills it before every read, so
/// a large one costs its size per connection and CPU per read.
const READ_BUFFER: usize = 1024;

/// The same over TLS: there the reads come out of the TLS stream's decrypted data rather than
/// from the socket, so a smaller buffer costs no system calls.
const READ_BUFFER_OVER_TLS: usize = 256;

fn configure(ws: WebSocketUpgrade, state: &AppState) -> WebSocketUpgrade {
    let read_buffer = if state.config.tls.is_some() {
        READ_BUFFER_OVER_TLS
    } else {
        READ_BUFFER
    };
    ws.read_buffer_size(read_buffer)
        .write_buffer_size(0)
        .max_message_size(HARD_FRAME_LIMIT)
        .max_frame_size(HARD_FRAME_LIMIT)
}

/// `GET /ws/{user_id}`.
#[utoipa::path(get, path = "/ws/{user_id}", tag = "devices",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "The token's user"), TokenQuery,
        ("Sec-WebSocket-Protocol" = Option<String>, Header, description = "`wardline.v1` for envelopes, resume and acknowledgements; none (or `wardline.raw`) for the published JSON as is")),
    responses(
        (status = 101, description = "A WebSocket: `wardline.v1` frames, or each notification's JSON as published"),
        (status = "4XX", description = "Refused: the token, the user or not an upgrade", body = crate::error::ErrorBody),
    ))]
pub async fn user_socket(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Path(user_id): Path<String>,
    Query(query): Query<TokenQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (claims, permit) =
        admit(&state, client, &user_id, query.token.as_deref(), &headers).await?;
    let ws = configure(ws, &state).protocols([SUBPROTOCOL_V1, SUBPROTOCOL_RAW]);
    let mode = match ws.selected_protocol() {
        Some(p) if p == SUBPROTOCOL_V1 => Mode::V1,
        _ => Mode::Raw,
    };
    let device = query
        .device
        .as_deref()
        .map(crate::http::receipts::checked_device)
        .transpose()?
        .map(str::to_owned);
    let session = open_session(&state, claims, device, mode).await?;
    Ok(ws.on_upgrade(move |socket| run(socket, state, session, mode, permit)))
}

/// `GET /v1/ws/notifications?user_id=…` (the Diagnoxix notification service's WebSocket; a token
/// is required, unlike there).
#[utoipa::path(get, path = "/v1/ws/notifications", tag = "devices",
    security(("bearer" = [])),
    params(DiagnoxixQuery),
    responses(
        (status = 101, description = "A WebSocket with the Diagnoxix service's frames; `{\"type\":\"ping\"}` is answered with a pong"),
        (status = "4XX", description = "Refused: the token, the user or not an upgrade", body = crate::error::ErrorBody),
    ))]
pub async fn diagnoxix_socket(
    State(state): State<AppState>,
    ClientAddr(client): ClientAddr,
    Query(query): Query<DiagnoxixQuery>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let (claims, permit) = admit(
        &state,
        client,
        &query.user_id,
        query.token.as_deref(),
        &headers,
    )
    .await?;
    let session = open_session(&state, claims, None, Mode::Diagnoxix).await?;
    Ok(configure(ws, &state)
        .on_upgrade(move |socket| run(socket, state, session, Mode::Diagnoxix, permit)))
}

/// Why the connection loop ended.
enum Stop {
    /// The peer is gone; nothing to send.
    Gone,
    /// Close with this code and reason.
    Close(u16, String),
}

/// Opens the session before the upgrade completes: clients that never resume (raw, Diagnoxix) are
/// subscribed by the time they see `101 Switching Protocols`, so nothing published after that is lost.
async fn open_session(
    state: &AppState,
    claims: Claims,
    device: Option<String>,
    mode: Mode,
) -> Result<Session, ApiError> {
    let mut session = Session::open_device(&state.hub, claims, device, state.config.queue_capacity);
    if mode != Mode::V1 {
        session.subscribe_all_live().await?;
    }
    Ok(session)
}

/// Serves an upgraded socket; `_permit` holds its slot under the connection caps until it closes.
async fn run(
    mut socket: WebSocket,
    state: AppState,
    mut session: Session,
    mode: Mode,
    _permit: ConnectionPermit,
) {
    let mut open = state
        .metrics()
        .connection_opened(mode.transport(), &session.claims().sub);
    let stop = drive(&mut socket, &mut session, &state, mode).await;
    if let Stop::Close(code, reason) = stop {
        open.closed_with(code);
        tracing::debug!(user = ?session.claims().sub, code, reason = ?reason, "closing WebSocket");
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from(reason),
        };
        // The close waits its turn behind what the peer has not read yet, up to the write
        // deadline: a client that was only slow still learns why it was cut off (4008) and resumes
        // at once instead of backing off.
        if let Ok(Ok(())) = timeout(
            state.config.deadlines.write,
            socket.send(Message::Close(Some(frame))),
        )
        .await
        {
            // Read until the peer's close: dropping a socket with unread input makes the kernel
            // reset the connection, and the peer would lose the close frame and the error before it.
            let drain = async {
                while let Some(Ok(message)) = socket.recv().await {
                    if let Message::Close(_) = message {
                        break;
                    }
                }
            };
            let _ = timeout(Duration::from_secs(2), drain).await;
        }
    }
}

fn encode(mode: Mode, delivery: &Delivery, user: &str) -> Utf8Bytes {
    match mode {
        Mode::Raw => delivery.raw_frame(),
        Mode::V1 => delivery.v1_frame(),
        Mode::Diagnoxix => delivery.diagnoxix_frame(user),
    }
}

/// Sends a frame, giving up if the session overflows meanwhile (a peer that stopped reading).
async fn send(socket: &mut WebSocket, session: &Session, message: Message) -> Result<(), Stop> {
    tokio::select! {
        biased;
        sent = socket.send(message) => sent.map_err(|_| Stop::Gone),
        _ = session.lagging() => Err(slow_consumer()),
    }
}

async fn send_frame(
    socket: &mut WebSocket,
    session: &Session,
    frame: &ServerFrame,
) -> Result<(), Stop> {
    send(
        socket,
        session,
        Message::Text(Utf8Bytes::from(frame.to_json())),
    )
    .await
}

fn slow_consumer() -> Stop {
    Stop::Close(
        close::SLOW_CONSUMER,
        "slow consumer: resume from your last cursor".into(),
    )
}

/// A failed read: a protocol violation closes with its code (RFC 6455 §7.4.1) so that the peer
/// learns why; anything else means the connection is gone.
fn read_failed(error: axum::Error) -> Stop {
    let Ok(error) = error.into_inner().downcast::<tungstenite::Error>() else {
        return Stop::Gone;
    };
    match *error {
        tungstenite::Error::Capacity(_) => Stop::Close(
            close::MESSAGE_TOO_BIG,
            format!("frame over the limit of {HARD_FRAME_LIMIT} bytes"),
        ),
        tungstenite::Error::Utf8(_) => Stop::Close(
            close::INVALID_PAYLOAD,
            "a text frame that is not UTF-8".into(),
        ),
        tungstenite::Error::Protocol(violation) => {
            // A close reason holds at most 123 bytes.
            let mut reason = String::new();
            for c in format!("protocol error: {violation}").chars() {
                if reason.len() + c.len_utf8() > 120 {
                    break;
                }
                reason.push(c);
            }
            Stop::Close(close::PROTOCOL_ERROR, reason)
        }
        _ => Stop::Gone,
    }
}

fn error_frame(
    code: ErrorCode,
    message: impl Into<String>,
    channel: Option<String>,
) -> ServerFrame {
    ServerFrame::Error {
        code,
        message: message.into(),
        channel,
    }
}

async fn drive(
    socket: &mut WebSocket,
    session: &mut Session,
    state: &AppState,
    mode: Mode,
) -> Stop {
    if mode == Mode::V1 {
        let claims = session.claims().clone();
        let welcome = ServerFrame::Welcome {
            user: claims.sub.clone(),
            role: claims.role,
            channels: claims.readable_channels(),
            heartbeat_s: state.config.heartbeat.as_secs(),
            expires_at: claims.exp,
        };
        if let Err(stop) = send_frame(socket, session, &welcome).await {
            return stop;
        }
    }
    let config = &state.config;
    let user = session.claims().sub.clone();
    let mut shutdown = state.shutdown.clone();
    let expiry = sleep(session.claims().time_left());
    tokio::pin!(expiry);
    let mut heartbeat =
        tokio::time::interval_at(Instant::now() + config.heartbeat, config.heartbeat);
    let mut last_heard = Instant::now();
    let mut frames = TokenBucket::new(config.frames_per_s, config.frame_burst);
    loop {
        let step: Result<(), Stop> = tokio::select! {
            _ = crate::stopping(&mut shutdown) => {
                Err(Stop::Close(close::GOING_AWAY, "relay shutting down: reconnect and resume".into()))
            }
            _ = &mut expiry => Err(Stop::Close(close::TOKEN_EXPIRED, "token expired: sign in again".into())),
            event = session.next_event() => match event {
                SessionEvent::Notification(delivery) => {
                    let frame = encode(mode, &delivery, &user);
                    let sent = send(socket, session, Message::Text(frame)).await;
                    state.metrics().delivered(delivery.message.id.ms);
                    sent
                }
                SessionEvent::Receipts(sync) if mode == Mode::V1 => {
                    let frame = ServerFrame::Receipt {
                        kind: sync.kind,
                        channel: sync.channel.clone(),
                        ids: sync.ids.clone(),
                        user: sync.user.clone(),
                        device: sync.device.clone(),
                    };
                    send_frame(socket, session, &frame).await
                }
                // The published JSON as is and the Diagnoxix frames have no receipts.
                SessionEvent::Receipts(_) => Ok(()),
                SessionEvent::SlowConsumer => Err(slow_consumer()),
                SessionEvent::BrokerDown(reason) => {
                    Err(Stop::Close(close::TRY_AGAIN_LATER, format!("broker unavailable: {reason}")))
                }
            },
            inbound = socket.recv() => match inbound {
                None | Some(Ok(Message::Close(_))) => Err(Stop::Gone),
                Some(Err(error)) => Err(read_failed(error)),
                Some(Ok(message)) => {
                    last_heard = Instant::now();
                    // Boxed: inbound frames are rare, and their handling (subscribe, replay, ack)
                    // would otherwise make every idle connection's future as large as its largest step.
                    let expires = session.claims().exp;
                    let handled =
                        Box::pin(handle_inbound(socket, session, state, mode, message, &mut frames)).await;
                    // A refreshed token moves the expiry; nothing else does. A new sleep rather
                    // than `Instant::now() + time_left`: that sum panics past what an Instant
                    // holds, where `sleep` saturates (the token's `exp` is bounded, too).
                    if session.claims().exp != expires {
                        expiry.set(sleep(session.claims().time_left()));
                    }
                    handled
                }
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > config.heartbeat * 2 + Duration::from_secs(5) {
                    Err(Stop::Close(close::HEARTBEAT_TIMEOUT, "no answer to heartbeats".into()))
                } else {
                    send(socket, session, Message::Ping(Default::default())).await
                }
            }
        };
        if let Err(stop) = step {
            match stop {
                Stop::Close(close::SLOW_CONSUMER, _) => {
                    Metrics::inc(&state.metrics().slow_consumer_closes_total)
                }
                Stop::Close(close::FLOOD, _) => Metrics::inc(&state.metrics().flood_closes_total),
                _ => {}
            }
            return stop;
        }
    }
}

async fn handle_inbound(
    socket: &mut WebSocket,
    session: &mut Session,
    state: &AppState,
    mode: Mode,
    message: Message,
    frames: &mut TokenBucket,
) -> Result<(), Stop> {
    if let Message::Close(_) = message {
        return Ok(());
    }
    // Every frame counts against the limit, control frames too: each ping costs a pong.
    if !frames.try_take() {
        if mode == Mode::V1 {
            let error = error_frame(ErrorCode::Flood, "too many frames; slow down", None);
            send_frame(socket, session, &error).await?;
        }
        return Err(Stop::Close(close::FLOOD, "too many frames".into()));
    }
    let text = match message {
        Message::Text(text) => Some(text),
        Message::Binary(_) => None,
        Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return Ok(()),
    };
    let Some(text) = text else {
        if mode == Mode::V1 {
            let error = error_frame(
                ErrorCode::MalformedJson,
                "binary frames are not supported; send JSON text",
                None,
            );
            send_frame(socket, session, &error).await?;
        }
        return Ok(());
    };
    if text.len() > MAX_INBOUND_FRAME_BYTES {
        let message = format!(
            "frame of {} bytes is over the limit of {MAX_INBOUND_FRAME_BYTES}",
            text.len()
        );
        if mode == Mode::V1 {
            send_frame(
                socket,
                session,
                &error_frame(ErrorCode::TooLarge, message.clone(), None),
            )
            .await?;
        }
        return Err(Stop::Close(close::MESSAGE_TOO_BIG, message));
    }
    match mode {
        Mode::V1 => handle_v1(socket, session, state, text.as_str()).await,
        Mode::Diagnoxix => {
            let is_ping = serde_json::from_str::<serde_json::Value>(text.as_str())
                .is_ok_and(|v| v.get("type").and_then(|t| t.as_str()) == Some("ping"));
            if is_ping {
                send(
                    socket,
                    session,
                    Message::Text(Utf8Bytes::from_static(r#"{"type":"pong"}"#)),
                )
                .await?;
            }
            Ok(())
        }
        // HealthHub's and Diagnoxix's clients only listen; what they send is ignored, as their servers did.
        Mode::Raw => Ok(()),
    }
}

/// Sends a channel's replay, reading each page once the one before it is sent.
async fn replay(
    socket: &mut WebSocket,
    session: &mut Session,
    resumed: &mut Resumed,
) -> Result<(), Stop> {
    loop {
        for delivery in std::mem::take(&mut resumed.page) {
            send(socket, session, Message::Text(delivery.v1_frame())).await?;
        }
        match session.next_page(resumed).await {
            Ok(true) => {}
            Ok(false) => return Ok(()),
            Err(e) => {
                let error = error_frame(e.code(), e.to_string(), Some(resumed.channel.to_string()));
                send_frame(socket, session, &error).await?;
                return Err(Stop::Close(close::TRY_AGAIN_LATER, e.to_string()));
            }
        }
    }
}

async fn handle_v1(
    socket: &mut WebSocket,
    session: &mut Session,
    state: &AppState,
    text: &str,
) -> Result<(), Stop> {
    // A receipt frame is charged to its user's receipt limit before its ids (up to a thousand)
    // are read: a flood of them from the user's connections costs the relay a scan of each.
    if let Err(channel) = charge_receipt_frame(state, session.claims(), text) {
        return refuse_receipt(socket, session, state, channel).await;
    }
    let frame = match ClientFrame::parse(text) {
        Ok(frame) => frame,
        Err(e) => {
            return send_frame(socket, session, &error_frame(e.code(), e.to_string(), None)).await;
        }
    };
    match frame {
        ClientFrame::Ping => send_frame(socket, session, &ServerFrame::Pong).await,
        ClientFrame::Subscribe { mut channels } => {
            // A channel named twice in one request is subscribed once, from its first cursor
            // (each name would replay it again).
            let mut seen = std::collections::HashSet::new();
            channels.retain(|request| seen.insert(request.channel.clone()));
            for request in channels {
                match session
                    .subscribe(
                        &request.channel,
                        request.since.as_deref(),
                        request.epoch.as_deref(),
                    )
                    .await
                {
                    Ok(mut resumed) => {
                        replay(socket, session, &mut resumed).await?;
                        let cursor = session.position(&resumed.channel);
                        let frame = ServerFrame::Resumed {
                            replayed: resumed.replayed,
                            gap: resumed.gap,
                            cursor,
                            channel: resumed.channel,
                            epoch: Some(resumed.epoch),
                        };
                        send_frame(socket, session, &frame).await?;
                    }
                    Err(e @ SessionError::Broker(_)) => {
                        let error = error_frame(e.code(), e.to_string(), Some(request.channel));
                        send_frame(socket, session, &error).await?;
                        return Err(Stop::Close(close::TRY_AGAIN_LATER, e.to_string()));
                    }
                    Err(e) => {
                        let error = error_frame(e.code(), e.to_string(), Some(request.channel));
                        send_frame(socket, session, &error).await?;
                    }
                }
            }
            Ok(())
        }
        ClientFrame::Received { channel, ids } => {
            record(socket, session, channel, ids, ReceiptKind::Received).await
        }
        ClientFrame::Ack { channel, ids } => {
            record(socket, session, channel, ids, ReceiptKind::Acknowledged).await
        }
        ClientFrame::Receipt { channel, ids, kind } => {
            record(socket, session, channel, ids, kind).await
        }
        ClientFrame::Refresh { token } => {
            let refreshed = match state.auth.verify(&token).await {
                Ok(claims) => session.refresh(claims).map_err(ApiError::from),
                Err(e) => {
                    Metrics::inc(&state.metrics().auth_failures_total);
                    Err(ApiError::from(e))
                }
            };
            // A refused token leaves the connection as it was: it still closes at the old expiry.
            let frame = match refreshed {
                Ok(()) => ServerFrame::Refreshed {
                    expires_at: session.claims().exp,
                },
                Err(e) => error_frame(e.code, e.message, None),
            };
            send_frame(socket, session, &frame).await
        }
    }
}

/// What a `wardline.v1` frame says besides its ids, and how many ids it has: what a receipt costs
/// is known without parsing them (other fields are skipped, not kept).
#[derive(Deserialize)]
struct FrameHead<'a> {
    #[serde(borrow)]
    op: Cow<'a, str>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(default)]
    ids: IdCount,
}

/// How many elements a JSON array has, counted without keeping them.
#[derive(Default)]
struct IdCount(usize);

impl<'de> Deserialize<'de> for IdCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<IdCount, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = IdCount;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<IdCount, A::Error> {
                let mut n = 0;
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    n += 1;
                }
                Ok(IdCount(n))
            }
        }
        deserializer.deserialize_seq(Counter)
    }
}

/// Takes what a receipt frame costs from its user's receipt limit (shared by their connections
/// and `POST /v1/receipts`), reading only its head; `Err` with the frame's channel when the user
/// is out of receipts. Frames that are not receipts, that cannot be read (the full parse says why)
/// or that carry more ids than allowed (refused as such, 40005, whatever the limit) cost nothing.
fn charge_receipt_frame(
    state: &AppState,
    claims: &Claims,
    text: &str,
) -> Result<(), Option<String>> {
    let Ok(head) = serde_json::from_str::<FrameHead>(text) else {
        return Ok(());
    };
    let is_receipt = matches!(&*head.op, "received" | "ack" | "receipt");
    if !is_receipt || head.ids.0 > MAX_RECEIPT_IDS {
        return Ok(());
    }
    let cost = crate::escalation::receipt_cost(head.ids.0);
    if state.receipt_limiter.allow_n(claims.sub.clone(), cost) {
        Ok(())
    } else {
        Err(head.channel.map(Cow::into_owned))
    }
}

/// Answers a receipt frame from a user out of receipts.
async fn refuse_receipt(
    socket: &mut WebSocket,
    session: &mut Session,
    state: &AppState,
    channel: Option<String>,
) -> Result<(), Stop> {
    Metrics::inc(&state.metrics().rate_limited_total);
    let error = error_frame(
        ErrorCode::RateLimited,
        "too many receipts for this user; send them again in a second",
        channel,
    );
    send_frame(socket, session, &error).await
}

/// Records a receipt frame's receipts (charged to the user's limit by [`charge_receipt_frame`]).
async fn record(
    socket: &mut WebSocket,
    session: &mut Session,
    channel: String,
    ids: Vec<String>,
    kind: ReceiptKind,
) -> Result<(), Stop> {
    match session.record_receipts(&channel, &ids, kind).await {
        Ok((channel, ids, unknown)) => {
            let frame = ServerFrame::Recorded {
                kind,
                channel,
                ids,
                unknown,
            };
            send_frame(socket, session, &frame).await
        }
        Err(e) => {
            let error = error_frame(e.code(), e.to_string(), Some(channel));
            send_frame(socket, session, &error).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frames_head_counts_its_ids_without_keeping_them() {
        let ids: Vec<String> = (0..250).map(|n| format!("17000000000{n:02}-0")).collect();
        let text = serde_json::to_string(&ClientFrame::Receipt {
            channel: "system:alerts".into(),
            ids,
            kind: ReceiptKind::Read,
        })
        .unwrap();
        let head: FrameHead = serde_json::from_str(&text).unwrap();
        assert_eq!(
            (&*head.op, head.channel.as_deref(), head.ids.0),
            ("receipt", Some("system:alerts"), 250)
        );
        assert_eq!(crate::escalation::receipt_cost(head.ids.0), 3);
        let ping: FrameHead = serde_json::from_str(r#"{"op":"ping"}"#).unwrap();
        assert_eq!((&*ping.op, ping.channel, ping.ids.0), ("ping", None, 0));
        assert_eq!(
            crate::escalation::receipt_cost(0),
            1,
            "a receipt costs a token at least"
        );
        assert!(serde_json::from_str::<FrameHead>(r#"{"op":"ack","ids":7}"#).is_err());
    }
}
