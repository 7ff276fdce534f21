//! The subscription: one connection to the relay at a time, kept alive for as long as the process
//! runs, never silently missing anything.
//!
//! - It connects with `wardline.v1`, subscribes every channel the relay grants, each resumed from the
//!   inbox's cursor, stores what arrives (rows and cursor in one transaction) and only then sends the
//!   `received` receipts.
//! - It notices a dead connection by silence (the relay answers a ping every heartbeat), and a wake
//!   from sleep by the wall clock jumping against the monotonic one; either way it reconnects at once.
//! - Otherwise it reconnects with full-jitter backoff from 1 s to 30 s, reset after a connection
//!   that stayed up 30 s; a slow-consumer (4008) or shutting-down (1001) close reconnects at once.
//! - A refused or expired token (401/403, close 4001) stops it: retrying cannot help, the person
//!   must sign in again, and it says so.
//! - A gap the relay reports is stored and announced, never hidden.

use crate::alert::{Alerter, alerts_for};
use crate::backoff::Backoff;
use crate::events::Event;
use crate::inbox::{Inbox, InboxError, now_ms};
use futures_util::{FutureExt, SinkExt, StreamExt};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use wardline_protocol::{
    Channel, ClientFrame, Cursor, ErrorCode, Notification, ReceiptKind, SUBPROTOCOL_V1, Sensitive,
    ServerFrame, SubscribeChannel, close,
};

/// Where and as whom to subscribe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The relay's base URL, e.g. `http://127.0.0.1:8851`.
    pub server: String,
    /// The user (the token's subject).
    pub user: String,
    /// The token.
    pub token: Sensitive<String>,
    /// How often to ping; silence for two heartbeats means a dead connection.
    pub heartbeat: Duration,
}

/// Why `run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The token was refused or expired.
    SignInRequired(String),
    /// The shutdown future completed.
    Shutdown,
}

/// A failure that ends the subscription: the inbox cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum SubscriptionError {
    /// The inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// The server URL is not http(s)://.
    #[error("invalid server URL {0:?}: expected http://host:port or https://host:port")]
    BadServer(String),
}

/// How one connection ended.
enum Outcome {
    Retry { reason: String, immediate: bool },
    SignIn(String),
    Shutdown,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A notification the person acknowledged (from an alert's action, the app, …).
pub type Acknowledgement = (Channel, Cursor);

/// The relay connection of one user.
pub struct Subscription {
    options: Options,
    inbox: Arc<Mutex<Inbox>>,
    events: broadcast::Sender<Event>,
    alerter: Option<Arc<dyn Alerter>>,
    acks: mpsc::UnboundedSender<Acknowledgement>,
    acks_in: tokio::sync::Mutex<mpsc::UnboundedReceiver<Acknowledgement>>,
}

/// Frames read in one go are stored in one transaction.
const BATCH: usize = 256;
/// A connection that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// How far the wall clock may move against the monotonic clock before it counts as a wake from sleep.
const CLOCK_JUMP: Duration = Duration::from_secs(10);

impl Subscription {
    /// A subscription writing into `inbox`.
    pub fn new(options: Options, inbox: Arc<Mutex<Inbox>>) -> Subscription {
        let (events, _) = broadcast::channel(1024);
        let (acks, acks_in) = mpsc::unbounded_channel();
        Subscription {
            options,
            inbox,
            events,
            alerter: None,
            acks,
            acks_in: tokio::sync::Mutex::new(acks_in),
        }
    }

    /// Raises OS alerts for what is stored.
    pub fn with_alerter(mut self, alerter: Arc<dyn Alerter>) -> Subscription {
        self.alerter = Some(alerter);
        self
    }

    /// Where acknowledgements go: stored at once, told to the relay now or on the next connection.
    pub fn acknowledger(&self) -> mpsc::UnboundedSender<Acknowledgement> {
        self.acks.clone()
    }

    /// Marks acknowledgements in the inbox; returns them grouped by channel.
    async fn take_acks(
        &self,
        first: Acknowledgement,
        more: &mut mpsc::UnboundedReceiver<Acknowledgement>,
    ) -> Result<Vec<(Channel, Vec<Cursor>)>, SubscriptionError> {
        let mut acks = vec![first];
        while let Ok(ack) = more.try_recv() {
            acks.push(ack);
        }
        let marked = acks.clone();
        self.with_inbox(move |inbox| inbox.mark_acked(&marked))
            .await?;
        Ok(group(acks))
    }

    /// Follows what the subscription reports.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    async fn with_inbox<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || work(&mut inbox.lock().expect("inbox lock")))
            .await
            .expect("inbox task")
    }

    fn set_state(&self, connection: &str, detail: &str) {
        let (connection, detail) = (connection.to_owned(), detail.to_owned());
        let inbox = self.inbox.clone();
        // Best effort: status is informative, the notifications are what must not be lost.
        let mut inbox = inbox.lock().expect("inbox lock");
        let now = now_ms().to_string();
        let _ = inbox.set_state("connection", &connection);
        let _ = inbox.set_state("detail", &detail);
        let _ = inbox.set_state("changed_at", &now);
        let _ = inbox.set_state("updated_at", &now);
        let _ = inbox.set_state("pid", &std::process::id().to_string());
    }

    fn ws_url(&self) -> Result<String, SubscriptionError> {
        let server = self.options.server.trim_end_matches('/');
        let base = if let Some(rest) = server.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = server.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            return Err(SubscriptionError::BadServer(self.options.server.clone()));
        };
        Ok(format!("{base}/ws/{}", self.options.user))
    }

    /// Keeps the subscription alive until the token is refused or `shutdown` completes.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ended, SubscriptionError> {
        let url = self.ws_url()?;
        let mut backoff = Backoff::new();
        let mut offline_since = now_ms();
        let mut acks = self.acks_in.lock().await;
        tokio::pin!(shutdown);
        loop {
            self.emit(Event::Connecting {
                transport: "websocket",
            });
            let started = Instant::now();
            let outcome = tokio::select! {
                outcome = self.connection(&url, &mut offline_since, &mut acks) => outcome?,
                _ = &mut shutdown => Outcome::Shutdown,
            };
            match outcome {
                Outcome::Shutdown => {
                    self.set_state("stopped", "");
                    return Ok(Ended::Shutdown);
                }
                Outcome::SignIn(reason) => {
                    self.set_state("sign_in_required", &reason);
                    self.emit(Event::SignInRequired {
                        reason: reason.clone(),
                    });
                    return Ok(Ended::SignInRequired(reason));
                }
                Outcome::Retry { reason, immediate } => {
                    if started.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    let delay = if immediate {
                        Duration::ZERO
                    } else {
                        backoff.next_delay(&mut rand::rng())
                    };
                    self.set_state(
                        "reconnecting",
                        &format!("{reason}; retrying in {} s", delay.as_secs()),
                    );
                    self.emit(Event::Reconnecting {
                        in_ms: delay.as_millis() as u64,
                        reason,
                        offline_since,
                    });
                    let wait = tokio::time::sleep(delay);
                    tokio::pin!(wait);
                    loop {
                        tokio::select! {
                            _ = &mut wait => break,
                            Some(ack) = acks.recv() => {
                                // Stored now; the relay hears of it on the next connection.
                                self.take_acks(ack, &mut acks).await?;
                            }
                            _ = &mut shutdown => {
                                self.set_state("stopped", "");
                                return Ok(Ended::Shutdown);
                            }
                        }
                    }
                }
            }
        }
    }

    /// One connection, from opening to its end.
    async fn connection(
        &self,
        url: &str,
        offline_since: &mut u64,
        acks: &mut mpsc::UnboundedReceiver<Acknowledgement>,
    ) -> Result<Outcome, SubscriptionError> {
        let mut request = url
            .into_client_request()
            .map_err(|_| SubscriptionError::BadServer(url.to_owned()))?;
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
                .map_err(|_| SubscriptionError::BadServer(url.to_owned()))?,
        );
        let connect = tokio::time::timeout(
            Duration::from_secs(10),
            tokio_tungstenite::connect_async(request),
        )
        .await;
        let mut socket = match connect {
            Err(_) => return Ok(retry("connecting timed out")),
            Ok(Err(tungstenite::Error::Http(response))) => return Ok(refused(&response)),
            Ok(Err(e)) => return Ok(retry(&format!("cannot reach the relay: {e}"))),
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
        let since_of = |channel: &Channel| {
            cursors
                .iter()
                .find(|(c, _)| c == channel)
                .map(|(_, cursor)| *cursor)
        };
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
        self.emit(Event::Connected {
            transport: "websocket",
        });
        let mut ping = tokio::time::interval_at(
            tokio::time::Instant::now() + self.options.heartbeat,
            self.options.heartbeat,
        );
        let mut clock = tokio::time::interval(Duration::from_secs(5));
        let mut last_check = (Instant::now(), SystemTime::now());
        loop {
            tokio::select! {
                frame = tokio::time::timeout(dead_after, next_frame(&mut socket)) => {
                    let first = match frame {
                        Err(_) => return Ok(Outcome::Retry { reason: format!("no answer from the relay for {} s", dead_after.as_secs()), immediate: true }),
                        Ok(Err(outcome)) => return Ok(outcome),
                        Ok(Ok(frame)) => frame,
                    };
                    let mut frames = vec![first];
                    while frames.len() < BATCH {
                        match next_frame(&mut socket).now_or_never() {
                            Some(Ok(frame)) => frames.push(frame),
                            Some(Err(outcome)) => {
                                // The connection is over either way; what was stored is committed and
                                // unconfirmed receipts are sent again on the next connection.
                                let _ = self.handle(&mut socket, frames, &since_of).await?;
                                return Ok(outcome);
                            }
                            None => break,
                        }
                    }
                    if self.handle(&mut socket, frames, &since_of).await?.is_err() {
                        return Ok(retry("connection lost while sending receipts"));
                    }
                    *offline_since = now_ms();
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
                    let mut inbox = self.inbox.lock().expect("inbox lock");
                    let _ = inbox.set_state("updated_at", &now_ms().to_string());
                }
                _ = clock.tick() => {
                    let (mono, wall) = (Instant::now(), SystemTime::now());
                    let mono_delta = mono.duration_since(last_check.0);
                    let wall_delta = wall.duration_since(last_check.1).unwrap_or_default();
                    last_check = (mono, wall);
                    if wall_delta.abs_diff(mono_delta) > CLOCK_JUMP {
                        return Ok(Outcome::Retry { reason: "woke from sleep".into(), immediate: true });
                    }
                }
            }
        }
    }

    /// Stores the notifications among `frames` (one transaction per run of them), then receipts them,
    /// and applies the other frames; `Err` when the socket failed.
    async fn handle(
        &self,
        socket: &mut Socket,
        frames: Vec<ServerFrame>,
        since_of: &(impl Fn(&Channel) -> Option<Cursor> + Sync),
    ) -> Result<Result<(), ()>, SubscriptionError> {
        let mut batch: Vec<Notification> = Vec::new();
        for frame in frames {
            match frame {
                ServerFrame::Notification(notification) => batch.push(notification),
                other => {
                    if self
                        .store(socket, std::mem::take(&mut batch))
                        .await?
                        .is_err()
                    {
                        return Ok(Err(()));
                    }
                    self.apply(other, since_of).await?;
                }
            }
        }
        self.store(socket, batch).await
    }

    async fn store(
        &self,
        socket: &mut Socket,
        batch: Vec<Notification>,
    ) -> Result<Result<(), ()>, SubscriptionError> {
        if batch.is_empty() {
            return Ok(Ok(()));
        }
        let received: Vec<(Channel, Cursor)> =
            batch.iter().map(|n| (n.channel.clone(), n.id)).collect();
        let stored = self.with_inbox(move |inbox| inbox.store(&batch)).await?;
        if let Some(alerter) = self.alerter.clone() {
            let alerts = alerts_for(&stored);
            // The OS alert is best effort (the desktop may have no notification service); the
            // alerter reports its failure once, and the notification is stored either way.
            let _ = tokio::task::spawn_blocking(move || {
                for alert in &alerts {
                    let _ = alerter.raise(alert);
                }
            })
            .await;
        }
        for row in stored {
            self.emit(Event::NotificationStored { notification: row });
        }
        // Receipts only after the commit: the relay never hears "received" for what a crash could lose.
        for (channel, ids) in group(received) {
            if send(socket, &receipt(ReceiptKind::Received, &channel, &ids))
                .await
                .is_err()
            {
                return Ok(Err(()));
            }
        }
        Ok(Ok(()))
    }

    async fn apply(
        &self,
        frame: ServerFrame,
        since_of: &(impl Fn(&Channel) -> Option<Cursor> + Sync),
    ) -> Result<(), SubscriptionError> {
        match frame {
            ServerFrame::Resumed {
                channel,
                gap,
                cursor,
                ..
            } => {
                let since = since_of(&channel);
                let (for_inbox, gap_channel) = (channel.clone(), channel.clone());
                self.with_inbox(move |inbox| {
                    if gap {
                        inbox.record_gap(&gap_channel, since)?;
                    }
                    if let Some(cursor) = cursor {
                        inbox.advance_cursor(&for_inbox, cursor)?;
                    }
                    Ok(())
                })
                .await?;
                if gap {
                    tracing::warn!(%channel, ?since, "history gap: the relay no longer had everything this device missed");
                    self.emit(Event::GapDetected { channel, since });
                }
            }
            ServerFrame::Recorded { kind, channel, ids } => {
                self.with_inbox(move |inbox| inbox.mark_synced(kind, &channel, &ids))
                    .await?;
            }
            ServerFrame::Error {
                code,
                message,
                channel,
            } => {
                tracing::warn!(code = code.code(), %message, ?channel, "the relay refused a request");
            }
            ServerFrame::Pong | ServerFrame::Welcome { .. } | ServerFrame::Notification(_) => {}
        }
        Ok(())
    }
}

/// Ids grouped by channel, in first-seen order.
fn group(items: Vec<(Channel, Cursor)>) -> Vec<(Channel, Vec<Cursor>)> {
    let mut grouped: Vec<(Channel, Vec<Cursor>)> = Vec::new();
    for (channel, id) in items {
        match grouped.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, ids)) => ids.push(id),
            None => grouped.push((channel, vec![id])),
        }
    }
    grouped
}

fn retry(reason: &str) -> Outcome {
    Outcome::Retry {
        reason: reason.to_owned(),
        immediate: false,
    }
}

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

/// An HTTP refusal of the upgrade: a token problem stops retrying, anything else is retried.
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
        (401 | 403, _) => Outcome::SignIn(format!("the relay refused the token: {message}")),
        (status, _) => retry(&format!("the relay answered {status}: {message}")),
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
                return Err(match code {
                    close::TOKEN_EXPIRED => {
                        Outcome::SignIn("the token has expired: sign in again".into())
                    }
                    close::FORBIDDEN => {
                        Outcome::SignIn(format!("the relay refused the token: {reason}"))
                    }
                    close::SLOW_CONSUMER | close::GOING_AWAY => Outcome::Retry {
                        reason: format!("closed by the relay ({code}: {reason})"),
                        immediate: true,
                    },
                    _ => retry(&format!("closed by the relay ({code}: {reason})")),
                });
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(retry(&format!("connection lost: {e}"))),
            None => return Err(retry("connection lost")),
        }
    }
}
