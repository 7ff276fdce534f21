//! The WebSocket connection (`wardline.v1`): welcome, subscribe with cursors, frames in, receipts
//! and acknowledgements out, pings, dead-connection and wake detection.

use crate::subscription::{
    Acknowledgement, ChangeDetector, Outcome, Subscription, SubscriptionError, resume_point, retry,
};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use wardline_protocol::{
    Channel, ClientFrame, Cursor, ErrorCode, ReceiptKind, SUBPROTOCOL_V1, ServerFrame,
    SubscribeChannel, close,
};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Frames read in one go are stored in one transaction.
const BATCH: usize = 256;

impl Subscription {
    /// One WebSocket connection, from opening to its end.
    pub(crate) async fn websocket(
        &self,
        acks: &mut mpsc::UnboundedReceiver<Acknowledgement>,
    ) -> Result<Outcome, SubscriptionError> {
        let (base, _) = self.bases()?;
        let url = format!("{base}/ws/{}", self.options.user);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|_| SubscriptionError::BadServer(url.clone()))?;
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            SUBPROTOCOL_V1.parse().expect("valid header"),
        );
        let bearer = format!("Bearer {}", self.options.token.expose());
        headers.insert(
            "authorization",
            bearer
                .parse()
                .map_err(|_| SubscriptionError::BadServer(url.clone()))?,
        );
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await;
        let mut socket = match connect {
            Err(_) => return Ok(retry("connecting timed out")),
            Ok(Err(tungstenite::Error::Http(response))) => return Ok(refused(&response)),
            Ok(Err(tungstenite::Error::Io(e))) => {
                return Ok(retry(&format!("cannot reach the relay: {e}")));
            }
            // The server answered, but not as a WebSocket (a proxy in the way).
            Ok(Err(e)) => return Ok(Outcome::WebSocketRefused(e.to_string())),
            Ok(Ok((socket, _))) => socket,
        };
        let dead_after = self.options.heartbeat * 2 + Duration::from_secs(5);
        let channels = match tokio::time::timeout(dead_after, next_frame(&mut socket)).await {
            Ok(Ok(ServerFrame::Welcome { channels, .. })) => channels,
            Ok(Ok(other)) => return Ok(retry(&format!("unexpected first frame {other:?}"))),
            Ok(Err(outcome)) => return Ok(outcome),
            Err(_) => return Ok(retry("no welcome from the relay")),
        };
        let cursors = self.with_inbox(|inbox| inbox.cursors()).await?;
        let since_of = |channel: &Channel| Some(resume_point(&cursors, channel));
        let subscribe = ClientFrame::Subscribe {
            channels: channels
                .iter()
                .map(|c| SubscribeChannel {
                    channel: c.to_string(),
                    since: since_of(c).map(|s| s.to_string()),
                })
                .collect(),
        };
        if send(&mut socket, &subscribe).await.is_err() {
            return Ok(retry("connection lost while subscribing"));
        }
        let pending = self.with_inbox(|inbox| inbox.pending_receipts()).await?;
        for (kind, groups) in [
            (ReceiptKind::Received, pending.received),
            (ReceiptKind::Acknowledged, pending.acknowledged),
        ] {
            for (channel, ids) in groups {
                if send(&mut socket, &receipt(kind, &channel, &ids))
                    .await
                    .is_err()
                {
                    return Ok(retry("connection lost while sending receipts"));
                }
            }
        }
        self.set_state("connected", &self.options.server);
        self.online();
        self.emit(crate::Event::Connected {
            transport: "websocket",
        });
        let heartbeat = self.options.heartbeat;
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
        let mut clock = tokio::time::interval(Duration::from_secs(5));
        let mut changes = ChangeDetector::new();
        loop {
            tokio::select! {
                frame = tokio::time::timeout(dead_after, next_frame(&mut socket)) => {
                    let first = match frame {
                        Err(_) => {
                            let reason = format!("no answer from the relay for {} s", dead_after.as_secs());
                            return Ok(Outcome::Retry { reason, immediate: true });
                        }
                        Ok(Err(outcome)) => return Ok(outcome),
                        Ok(Ok(frame)) => frame,
                    };
                    let mut frames = vec![first];
                    let mut ended = None;
                    while frames.len() < BATCH && ended.is_none() {
                        match next_frame(&mut socket).now_or_never() {
                            Some(Ok(frame)) => frames.push(frame),
                            Some(Err(outcome)) => ended = Some(outcome),
                            None => break,
                        }
                    }
                    let received = self.handle(frames, &since_of).await?;
                    if let Some(outcome) = ended {
                        // Committed either way; unconfirmed receipts go again on the next connection.
                        return Ok(outcome);
                    }
                    for (channel, ids) in received {
                        if send(&mut socket, &receipt(ReceiptKind::Received, &channel, &ids)).await.is_err() {
                            return Ok(retry("connection lost while sending receipts"));
                        }
                    }
                }
                Some(ack) = acks.recv() => {
                    for (channel, ids) in self.take_acks(ack, acks).await? {
                        if send(&mut socket, &receipt(ReceiptKind::Acknowledged, &channel, &ids)).await.is_err() {
                            return Ok(retry("connection lost while sending an acknowledgement"));
                        }
                    }
                }
                _ = ping.tick() => {
                    if send(&mut socket, &ClientFrame::Ping).await.is_err() {
                        return Ok(retry("connection lost"));
                    }
                    self.touch_state();
                }
                _ = clock.tick() => {
                    if let Some(what) = changes.changed() {
                        return Ok(Outcome::Retry { reason: what.into(), immediate: true });
                    }
                }
            }
        }
    }
}

/// The `received` or `ack` frame for ids of one channel.
fn receipt(kind: ReceiptKind, channel: &Channel, ids: &[Cursor]) -> ClientFrame {
    let (channel, ids) = (
        channel.to_string(),
        ids.iter().map(Cursor::to_string).collect(),
    );
    match kind {
        ReceiptKind::Received => ClientFrame::Received { channel, ids },
        ReceiptKind::Acknowledged => ClientFrame::Ack { channel, ids },
    }
}

/// An HTTP refusal of the upgrade: the relay's token refusals stop retrying, its "later" (429, 503)
/// is retried; anything without a Wardline error code means something in between does not pass
/// WebSockets.
fn refused(response: &tungstenite::http::Response<Option<Vec<u8>>>) -> Outcome {
    let body: serde_json::Value = response
        .body()
        .as_deref()
        .and_then(|b| serde_json::from_slice(b).ok())
        .unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("refused").to_owned();
    let code = body["code"]
        .as_u64()
        .and_then(|c| ErrorCode::try_from(c as u32).ok());
    match (response.status().as_u16(), code) {
        (401 | 403, Some(ErrorCode::TokenExpired)) => {
            Outcome::SignIn("the token has expired: sign in again".into())
        }
        // Only the relay's own refusals carry a Wardline code; a bare 403 is a proxy in the way.
        (401 | 403, Some(_)) => Outcome::SignIn(format!("the relay refused the token: {message}")),
        (status @ (429 | 503), Some(_)) => {
            retry(&format!("the relay answered {status}: {message}"))
        }
        (status, _) => {
            Outcome::WebSocketRefused(format!("the WebSocket upgrade was answered with {status}"))
        }
    }
}

async fn send(socket: &mut Socket, frame: &ClientFrame) -> Result<(), tungstenite::Error> {
    socket
        .send(Message::Text(
            serde_json::to_string(frame)
                .expect("client frames serialize")
                .into(),
        ))
        .await
}

/// The next frame from the relay, or how the connection ended.
async fn next_frame(socket: &mut Socket) -> Result<ServerFrame, Outcome> {
    loop {
        match socket.next().await {
            Some(Ok(Message::Text(text))) => match serde_json::from_str(text.as_str()) {
                Ok(frame) => return Ok(frame),
                Err(e) => tracing::warn!(error = %e, "unreadable frame from the relay"),
            },
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = frame
                    .map(|f| (u16::from(f.code), f.reason.to_string()))
                    .unwrap_or((1005, String::new()));
                return Err(closed(code, &reason));
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(retry(&format!("connection lost: {e}"))),
            None => return Err(retry("connection lost")),
        }
    }
}

/// What a close code from the relay means for the next attempt (shared with SSE's error events).
pub(crate) fn closed(code: u16, reason: &str) -> Outcome {
    match code {
        close::TOKEN_EXPIRED => Outcome::SignIn("the token has expired: sign in again".into()),
        close::FORBIDDEN => Outcome::SignIn(format!("the relay refused the token: {reason}")),
        close::SLOW_CONSUMER | close::GOING_AWAY => Outcome::Retry {
            reason: format!("closed by the relay ({code}: {reason})"),
            immediate: true,
        },
        _ => retry(&format!("closed by the relay ({code}: {reason})")),
    }
}
