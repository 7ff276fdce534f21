//! The subscription: one connection to the relay at a time, kept alive for as long as the process
//! runs, never silently missing anything.
//!
//! - It connects with `wardline.v1` ([`crate::ws`]); where a WebSocket cannot be opened (a proxy
//!   refusing the upgrade) it falls back to Server-Sent Events ([`crate::sse`]) and tries the
//!   WebSocket again after a while. Both resume every channel from the inbox's cursors.
//! - What arrives is stored (rows and cursors in one transaction) and only then receipted.
//! - A dead connection is noticed by silence (heartbeats), a wake from sleep by the wall clock jumping
//!   against the monotonic one; either way it reconnects at once.
//! - Otherwise it reconnects with full-jitter backoff from 1 s to 30 s, reset after a connection that
//!   stayed up 30 s; a slow-consumer (4008) or shutting-down (1001) close reconnects at once.
//! - A refused or expired token stops it: retrying cannot help, the person must sign in again.
//! - A gap the relay reports is stored and announced, never hidden.

use crate::alert::{Alerter, SharedAlertSettings, alerts_for};
use crate::backoff::Backoff;
use crate::events::Event;
use crate::inbox::{Inbox, InboxError, now_ms};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc};
use wardline_protocol::{Channel, Cursor, Notification, Sensitive, ServerFrame};

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
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Connect again (at once, or after the backoff).
    Retry { reason: String, immediate: bool },
    /// The WebSocket could not be opened though the relay answers: try SSE now.
    WebSocketRefused(String),
    /// The token was refused or expired.
    SignIn(String),
}

/// A notification the person acknowledged (from an alert's action, the app, …).
pub type Acknowledgement = (Channel, Cursor);

/// Ids grouped by channel.
pub(crate) type Grouped = Vec<(Channel, Vec<Cursor>)>;

/// The relay connection of one user.
pub struct Subscription {
    pub(crate) options: Options,
    inbox: Arc<Mutex<Inbox>>,
    events: broadcast::Sender<Event>,
    alerter: Option<(Arc<dyn Alerter>, SharedAlertSettings)>,
    acks: mpsc::UnboundedSender<Acknowledgement>,
    acks_in: tokio::sync::Mutex<mpsc::UnboundedReceiver<Acknowledgement>>,
}

/// A connection that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// How far the wall clock may move against the monotonic clock before it counts as a wake from sleep.
const CLOCK_JUMP: Duration = Duration::from_secs(10);
/// How far back a device that never received a channel starts it: the relay's default history, so a
/// clinician signing in on a new computer sees the last week, unacknowledged critical results included.
const BACKFILL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Where to resume a channel: its stored cursor, or a week ago for a channel never received.
pub(crate) fn resume_point(cursors: &[(Channel, Cursor)], channel: &Channel) -> Cursor {
    cursors
        .iter()
        .find(|(c, _)| c == channel)
        .map(|(_, cursor)| *cursor)
        .unwrap_or_else(|| Cursor::new(now_ms().saturating_sub(BACKFILL.as_millis() as u64), 0))
}

/// How long an SSE fallback runs before the WebSocket is tried again.
pub(crate) const SSE_FALLBACK_FOR: Duration = Duration::from_secs(300);

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

    /// Raises OS alerts for what is stored, under `settings` as they are when it is stored.
    pub fn with_alerter(
        mut self,
        alerter: Arc<dyn Alerter>,
        settings: SharedAlertSettings,
    ) -> Subscription {
        self.alerter = Some((alerter, settings));
        self
    }

    /// Where acknowledgements go: stored at once, told to the relay now or on the next connection.
    pub fn acknowledger(&self) -> mpsc::UnboundedSender<Acknowledgement> {
        self.acks.clone()
    }

    /// Follows what the subscription reports.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }

    pub(crate) async fn with_inbox<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, InboxError> {
        let inbox = self.inbox.clone();
        tokio::task::spawn_blocking(move || work(&mut inbox.lock().expect("inbox lock")))
            .await
            .expect("inbox task")
    }

    /// Records the connection state for `wardline status` in another process (best effort: status
    /// is informative, the notifications are what must not be lost).
    pub(crate) fn set_state(&self, connection: &str, detail: &str) {
        let mut inbox = self.inbox.lock().expect("inbox lock");
        let now = now_ms().to_string();
        let _ = inbox.set_state("connection", connection);
        let _ = inbox.set_state("detail", detail);
        let _ = inbox.set_state("changed_at", &now);
        let _ = inbox.set_state("updated_at", &now);
        let _ = inbox.set_state("pid", &std::process::id().to_string());
    }

    /// Notes that this listener is alive (at each heartbeat).
    pub(crate) fn touch_state(&self) {
        let _ = self
            .inbox
            .lock()
            .expect("inbox lock")
            .set_state("updated_at", &now_ms().to_string());
    }

    /// `http(s)://host` → (`ws(s)://host`, `http(s)://host`) without a trailing slash.
    pub(crate) fn bases(&self) -> Result<(String, String), SubscriptionError> {
        let http = self.options.server.trim_end_matches('/').to_owned();
        let ws = if let Some(rest) = http.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if let Some(rest) = http.strip_prefix("https://") {
            format!("wss://{rest}")
        } else {
            return Err(SubscriptionError::BadServer(self.options.server.clone()));
        };
        Ok((ws, http))
    }

    /// Keeps the subscription alive until the token is refused or `shutdown` completes.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ended, SubscriptionError> {
        self.bases()?;
        let mut backoff = Backoff::new();
        let mut acks = self.acks_in.lock().await;
        tokio::pin!(shutdown);
        loop {
            let started = Instant::now();
            let attempt = async {
                self.emit(Event::Connecting {
                    transport: "websocket",
                });
                match self.websocket(&mut acks).await? {
                    Outcome::WebSocketRefused(reason) => {
                        tracing::warn!(%reason, "the WebSocket was refused; falling back to Server-Sent Events");
                        self.emit(Event::Connecting { transport: "sse" });
                        self.sse(&mut acks).await
                    }
                    other => Ok(other),
                }
            };
            let outcome = tokio::select! {
                outcome = attempt => outcome?,
                _ = &mut shutdown => {
                    self.set_state("stopped", "");
                    return Ok(Ended::Shutdown);
                }
            };
            let (reason, immediate) = match outcome {
                Outcome::SignIn(reason) => {
                    self.set_state("sign_in_required", &reason);
                    self.emit(Event::SignInRequired {
                        reason: reason.clone(),
                    });
                    return Ok(Ended::SignInRequired(reason));
                }
                Outcome::Retry { reason, immediate } => (reason, immediate),
                Outcome::WebSocketRefused(reason) => (reason, false),
            };
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
            let offline_since = self.with_inbox(|inbox| inbox.state("online_until")).await?;
            let offline_since = offline_since
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(now_ms);
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

    /// Marks acknowledgements in the inbox; returns them grouped by channel, to tell the relay.
    pub(crate) async fn take_acks(
        &self,
        first: Acknowledgement,
        more: &mut mpsc::UnboundedReceiver<Acknowledgement>,
    ) -> Result<Grouped, SubscriptionError> {
        let mut acks = vec![first];
        while let Ok(ack) = more.try_recv() {
            acks.push(ack);
        }
        let marked = acks.clone();
        self.with_inbox(move |inbox| inbox.mark_acked(&marked))
            .await?;
        let grouped = group(acks);
        for (channel, ids) in &grouped {
            self.emit(Event::Acknowledged {
                channel: channel.clone(),
                ids: ids.clone(),
            });
        }
        Ok(grouped)
    }

    /// Notes that the connection works (for "offline since").
    pub(crate) fn online(&self) {
        let _ = self
            .inbox
            .lock()
            .expect("inbox lock")
            .set_state("online_until", &now_ms().to_string());
    }

    /// Stores the notifications among `frames` (one transaction per run of them) and applies the
    /// other frames; returns what to confirm as received (only committed notifications).
    pub(crate) async fn handle(
        &self,
        frames: Vec<ServerFrame>,
        since_of: &(impl Fn(&Channel) -> Option<Cursor> + Sync),
    ) -> Result<Grouped, SubscriptionError> {
        let mut received = Vec::new();
        let mut batch: Vec<Notification> = Vec::new();
        for frame in frames {
            match frame {
                ServerFrame::Notification(notification) => batch.push(notification),
                other => {
                    received.extend(self.store(std::mem::take(&mut batch)).await?);
                    self.apply(other, since_of).await?;
                }
            }
        }
        received.extend(self.store(batch).await?);
        self.online();
        Ok(group(received))
    }

    async fn store(
        &self,
        batch: Vec<Notification>,
    ) -> Result<Vec<(Channel, Cursor)>, SubscriptionError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let received: Vec<(Channel, Cursor)> =
            batch.iter().map(|n| (n.channel.clone(), n.id)).collect();
        let stored = self.with_inbox(move |inbox| inbox.store(&batch)).await?;
        if let Some((alerter, settings)) = self.alerter.clone() {
            let settings = *settings.read().expect("alert settings lock");
            let alerts = alerts_for(&stored, &settings, chrono::Local::now());
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
        Ok(received)
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
                let for_inbox = channel.clone();
                self.with_inbox(move |inbox| {
                    if gap {
                        inbox.record_gap(&for_inbox, since)?;
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

/// Notices what makes a connection stale without telling it: a wake from sleep (the wall clock
/// moved much more, or less, than the monotonic one) or a network change (another default route).
pub(crate) struct ChangeDetector {
    last: (Instant, SystemTime),
    route: Option<String>,
}

impl ChangeDetector {
    /// Starts watching now.
    pub(crate) fn new() -> ChangeDetector {
        ChangeDetector {
            last: (Instant::now(), SystemTime::now()),
            route: default_route(),
        }
    }

    /// What changed since the last check, if anything.
    pub(crate) fn changed(&mut self) -> Option<&'static str> {
        let now = (Instant::now(), SystemTime::now());
        let mono = now.0.duration_since(self.last.0);
        let wall = now.1.duration_since(self.last.1).unwrap_or_default();
        self.last = now;
        let route = default_route();
        let network_changed = route != self.route;
        self.route = route;
        if wall.abs_diff(mono) > CLOCK_JUMP {
            Some("woke from sleep")
        } else if network_changed {
            Some("the network changed")
        } else {
            None
        }
    }
}

/// The default routes (interface and gateway), from `/proc/net/route` on Linux; `None` elsewhere.
fn default_route() -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/route").ok()?;
    let routes: Vec<String> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            (fields.get(1) == Some(&"00000000"))
                .then(|| format!("{}/{}", fields[0], fields.get(2).unwrap_or(&"")))
        })
        .collect();
    Some(routes.join(","))
}

/// Ids grouped by channel, in first-seen order.
pub(crate) fn group(items: Vec<(Channel, Cursor)>) -> Grouped {
    let mut grouped: Grouped = Vec::new();
    for (channel, id) in items {
        match grouped.iter_mut().find(|(c, _)| *c == channel) {
            Some((_, ids)) => ids.push(id),
            None => grouped.push((channel, vec![id])),
        }
    }
    grouped
}

/// A connection to retry after the backoff.
pub(crate) fn retry(reason: &str) -> Outcome {
    Outcome::Retry {
        reason: reason.to_owned(),
        immediate: false,
    }
}
