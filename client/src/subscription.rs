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
//!   stayed up 30 s; a slow-consumer (4008) or shutting-down (1001) close reconnects within 0–5 s
//!   (what each close code and refusal means is decided in `wardline_protocol::Reconnect`).
//! - A refused or expired token stops it: retrying cannot help, the person must sign in again. So
//!   does a relay certificate that cannot be trusted ([`crate::tls`]). A newer token of the same
//!   user ([`TokenHandle`]) is presented on the open WebSocket (`refresh`), which then outlives
//!   the old token's expiry; every later connection uses it.
//! - Acknowledgements are stored in the inbox first ([`Acknowledger`]) and sent from there.
//! - A gap the relay reports is stored and announced, never hidden.
//! - A failure of this device (the inbox cannot be written: a full disk) is never "connected": the
//!   state is `failed` with the reason (held in memory, stored where it can be), announced once
//!   with a critical OS alert, and tried again with backoff; "connected" comes back only once
//!   something is stored again, and what the relay sent meanwhile is resumed from the cursors.

use crate::alert::{Alerter, SharedAlertSettings, alerts_for};
use crate::backoff::Backoff;
use crate::events::{ConnectionState, Event, LinkState, SharedLinkState};
use crate::inbox::{Inbox, InboxError, Row, now_ms};
use crate::inbox_handle::InboxHandle;
use crate::tls::Trust;
use rand::Rng;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{Notify, broadcast, watch};
use wardline_protocol::{
    Channel, Cursor, ErrorCode, Notification, ReceiptKind, Reconnect, Sensitive, ServerFrame,
};

/// Where and as whom to subscribe.
#[derive(Debug, Clone)]
pub struct Options {
    /// The relay's base URL, e.g. `https://relay.hospital.example` or `http://127.0.0.1:8851`.
    pub server: String,
    /// The user (the token's subject).
    pub user: String,
    /// The token to start with ([`Subscription::token_handle`] replaces it).
    pub token: Sensitive<String>,
    /// How often to ping; silence for two of the relay's heartbeats means a dead connection.
    pub heartbeat: Duration,
    /// The certificates trusted for `https://` relays.
    pub trust: Trust,
    /// Not connected for this long raises the local "not receiving critical results" alarm.
    pub offline_alarm: Duration,
}

/// Not connected for this long raises the local alarm, by default.
pub const OFFLINE_ALARM: Duration = Duration::from_secs(120);

/// The inbox state key that says since when (Unix ms) the device has not been receiving: set with
/// the alarm, emptied when connected again (for the tray and `wardline status`).
pub const NOT_RECEIVING_SINCE: &str = "not_receiving_since";

/// Whether the device is connected, and since when it is not.
#[derive(Debug)]
struct Link {
    connected: bool,
    offline_since: Instant,
    offline_since_ms: u64,
    alarmed: bool,
    /// While this device fails to store what arrives: why.
    failure: Option<String>,
    /// Connected while failing (the transport and the detail): announced once something is stored.
    unproven: Option<(&'static str, String)>,
}

/// Why `run` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// The token was refused or expired.
    SignInRequired(String),
    /// The relay's certificate cannot be trusted: retrying cannot help until the person (or the
    /// administrator) gives the right CA.
    Untrusted(String),
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

/// When to connect again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pace {
    /// At once: the cause was on this side (a dead link noticed, a wake from sleep, a new network).
    Now,
    /// After a random wait of up to [`Reconnect::SPREAD`] (the relay asked every device to come back).
    Spread,
    /// After the growing backoff.
    Backoff,
}

impl From<Reconnect> for Pace {
    fn from(advice: Reconnect) -> Pace {
        match advice {
            Reconnect::Spread => Pace::Spread,
            Reconnect::Backoff | Reconnect::SignIn => Pace::Backoff,
        }
    }
}

/// How one connection ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Connect again.
    Retry { reason: String, pace: Pace },
    /// The WebSocket could not be opened though the relay answers: try SSE now.
    WebSocketRefused(String),
    /// The token was refused or expired.
    SignIn(String),
    /// The relay's certificate cannot be trusted.
    Untrusted(String),
    /// This device failed (the inbox cannot be written): try again with backoff.
    Failed(String),
}

/// A notification, by channel and id (as acknowledged from an alert's action, the app, …).
pub type Acknowledgement = (Channel, Cursor);

/// Ids grouped by channel.
pub(crate) type Grouped = Vec<(Channel, Vec<Cursor>)>;

/// Acknowledges notifications: stored in the inbox first, whatever the connection's state (signed
/// out, the relay unreachable, the subscription stopped), then told to the relay by the running
/// subscription at once, or by the next one when it connects. The inbox is the queue: nothing
/// acknowledged can be dropped on the way.
#[derive(Clone)]
pub struct Acknowledger {
    inbox: InboxHandle,
    events: broadcast::Sender<Event>,
    flush: Arc<Notify>,
}

impl Acknowledger {
    /// Acknowledges into `inbox`, announcing it on `events`.
    pub fn new(inbox: InboxHandle, events: broadcast::Sender<Event>) -> Acknowledger {
        Acknowledger {
            inbox,
            events,
            flush: Arc::new(Notify::new()),
        }
    }

    /// Stores that the person declined these ("not me / cannot now"), announces it and asks the
    /// running subscription, if any, to tell the relay now (it escalates them at once).
    pub async fn decline(&self, ids: Vec<Acknowledgement>) -> Result<(), InboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let marked = ids.clone();
        self.inbox
            .call(move |inbox| inbox.mark_declined(&marked))
            .await?;
        for (channel, ids) in group(ids) {
            let _ = self.events.send(Event::Declined { channel, ids });
        }
        self.flush.notify_one();
        Ok(())
    }

    /// Stores the acknowledgements (off the async workers), announces them and asks the running
    /// subscription, if any, to send them now.
    pub async fn acknowledge(&self, ids: Vec<Acknowledgement>) -> Result<(), InboxError> {
        if ids.is_empty() {
            return Ok(());
        }
        let marked = ids.clone();
        self.inbox
            .call(move |inbox| inbox.mark_acked(&marked))
            .await?;
        for (channel, ids) in group(ids) {
            let _ = self.events.send(Event::Acknowledged { channel, ids });
        }
        self.flush.notify_one();
        Ok(())
    }

    /// Asks the running subscription to send what waits again after `pause`.
    pub(crate) fn send_again_after(&self, pause: Duration) {
        let flush = self.flush.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            flush.notify_one();
        });
    }

    /// Completes when acknowledgements are waiting to be sent.
    pub(crate) async fn waiting(&self) {
        self.flush.notified().await
    }
}

/// The relay connection of one user.
pub struct Subscription {
    pub(crate) options: Options,
    /// The token in use: `options.token` until a newer one replaces it.
    token: watch::Sender<Sensitive<String>>,
    inbox: InboxHandle,
    events: broadcast::Sender<Event>,
    alerter: Option<(Arc<dyn Alerter>, SharedAlertSettings)>,
    pub(crate) acknowledger: Acknowledger,
    link: std::sync::Mutex<Link>,
    /// Where the connection stands, for the receiver's status.
    state: SharedLinkState,
    /// This installation's id, read from the inbox when the subscription runs.
    device: std::sync::OnceLock<String>,
    /// Notifications alerted for, not yet receipted as `displayed` (best effort: not kept).
    displayed: std::sync::Mutex<Vec<(Channel, Cursor)>>,
    /// The clock difference with the relay last reported (seconds the relay is ahead).
    clock_skew: std::sync::Mutex<Option<i64>>,
}

/// Gives a running [`Subscription`] a newer token of the same user: an open WebSocket presents it
/// to the relay at once, so the connection lives on past the old token's expiry without
/// reconnecting; every later connection (and Server-Sent Events, which cannot take a new token
/// mid-stream) uses it.
#[derive(Clone)]
pub struct TokenHandle(watch::Sender<Sensitive<String>>);

impl TokenHandle {
    /// The token in use.
    pub fn current(&self) -> Sensitive<String> {
        self.0.borrow().clone()
    }

    /// Replaces the token in use.
    pub fn replace(&self, token: Sensitive<String>) {
        self.0.send_replace(token);
    }
}

/// The inbox state key of the relay's history epoch the stored cursors belong to: sent back when
/// resuming, so that the relay can say when the history that held what this device missed is gone.
pub(crate) const HISTORY_EPOCH: &str = "history_epoch";

/// How long after a refusal for the user's receipt limit receipts are sent again: every limit of
/// the relay refills at least a token a second.
const RATE_LIMIT_PAUSE: Duration = Duration::from_secs(1);

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

/// The wait before the next attempt.
pub(crate) fn delay(pace: Pace, backoff: &mut Backoff, rng: &mut impl Rng) -> Duration {
    match pace {
        Pace::Now => Duration::ZERO,
        Pace::Spread => {
            Duration::from_millis(rng.random_range(0..=Reconnect::SPREAD.as_millis() as u64))
        }
        Pace::Backoff => backoff.next_delay(rng),
    }
}

impl Subscription {
    /// A subscription writing into `inbox`.
    pub fn new(options: Options, inbox: InboxHandle) -> Subscription {
        let (events, _) = broadcast::channel(1024);
        let acknowledger = Acknowledger::new(inbox.clone(), events.clone());
        let (token, _) = watch::channel(options.token.clone());
        Subscription {
            options,
            token,
            inbox,
            events,
            alerter: None,
            acknowledger,
            link: std::sync::Mutex::new(Link {
                connected: false,
                offline_since: Instant::now(),
                offline_since_ms: now_ms(),
                alarmed: false,
                failure: None,
                unproven: None,
            }),
            state: Arc::new(std::sync::Mutex::new(LinkState {
                connection: ConnectionState::NeverStarted,
                detail: String::new(),
            })),
            device: std::sync::OnceLock::new(),
            displayed: std::sync::Mutex::new(Vec::new()),
            clock_skew: std::sync::Mutex::new(None),
        }
    }

    /// Hands this subscription newer tokens while it runs.
    pub fn token_handle(&self) -> TokenHandle {
        TokenHandle(self.token.clone())
    }

    /// The token in use.
    pub(crate) fn token(&self) -> Sensitive<String> {
        self.token.borrow().clone()
    }

    /// Tokens that replace the one in use from now on.
    pub(crate) fn new_tokens(&self) -> watch::Receiver<Sensitive<String>> {
        self.token.subscribe()
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

    /// Keeps where the connection stands in `state` (which its owner reads, and sets when the
    /// subscription ended unexpectedly).
    pub fn with_link_state(mut self, state: SharedLinkState) -> Subscription {
        self.state = state;
        self
    }

    /// Sends what `acknowledger` stores (one that outlives this subscription, as an app's does).
    pub fn with_acknowledger(mut self, acknowledger: Acknowledger) -> Subscription {
        self.acknowledger = acknowledger;
        self
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
        self.inbox.call(work).await
    }

    /// Sets the connection state, and records it for `wardline status` in another process (best
    /// effort: the inbox may be what failed; the notifications are what must not be lost).
    pub(crate) async fn set_state(&self, connection: ConnectionState, detail: &str) {
        let detail = detail.to_owned();
        *self.state.lock().expect("link state lock") = LinkState {
            connection,
            detail: detail.clone(),
        };
        let _ = self
            .with_inbox(move |inbox| {
                let now = now_ms().to_string();
                inbox.set_state("connection", connection.as_str())?;
                inbox.set_state("detail", &detail)?;
                inbox.set_state("changed_at", &now)?;
                inbox.set_state("updated_at", &now)?;
                inbox.set_state("pid", &std::process::id().to_string())
            })
            .await;
    }

    /// Notes that this listener is alive (at each heartbeat).
    pub(crate) async fn touch_state(&self) {
        let _ = self
            .with_inbox(|inbox| inbox.set_state("updated_at", &now_ms().to_string()))
            .await;
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

    /// This installation's id (`?device=` and receipts).
    pub(crate) fn device(&self) -> &str {
        self.device.get().map(String::as_str).unwrap_or_default()
    }

    /// The connection works (`detail`: where to): announces it, and clears the "not receiving"
    /// alarm if it was raised; while this device is failing, only once something is stored.
    pub(crate) async fn connected(&self, transport: &'static str, detail: &str) {
        {
            let mut link = self.link.lock().expect("link lock");
            link.connected = true;
            if link.failure.is_some() {
                link.unproven = Some((transport, detail.to_owned()));
                return;
            }
        }
        self.announce_connected(transport, detail).await;
    }

    /// Something was stored: a connection made while failing is announced now.
    async fn proven(&self) {
        let unproven = {
            let mut link = self.link.lock().expect("link lock");
            let unproven = link.unproven.take();
            if unproven.is_some() {
                link.failure = None;
            }
            unproven
        };
        if let Some((transport, detail)) = unproven {
            tracing::info!("storing again");
            self.announce_connected(transport, &detail).await;
        }
    }

    async fn announce_connected(&self, transport: &'static str, detail: &str) {
        self.set_state(ConnectionState::Connected, detail).await;
        let was_alarmed = std::mem::take(&mut self.link.lock().expect("link lock").alarmed);
        self.emit(Event::Connected { transport });
        self.catch_up_on_other_devices().await;
        if was_alarmed {
            let _ = self
                .with_inbox(|inbox| inbox.set_state(NOT_RECEIVING_SINCE, ""))
                .await;
            if let Some((alerter, _)) = self.alerter.clone() {
                let _ = tokio::task::spawn_blocking(move || alerter.withdraw(None)).await;
            }
            tracing::info!("receiving again");
            self.emit(Event::ReceivingAgain);
        }
    }

    /// Compares this device's clock with the relay's `Date` (of the WebSocket handshake or the
    /// event stream's answer): a difference of more than a minute is reported, once per run and
    /// again when it changes by another minute.
    pub(crate) fn check_clock(&self, date: Option<&str>) {
        let Some(ahead) = date.and_then(|d| crate::clock::relay_ahead_s(d, SystemTime::now()))
        else {
            return;
        };
        let mut reported = self.clock_skew.lock().expect("clock lock");
        let changed = reported.is_none_or(|before: i64| before.abs_diff(ahead) > 60);
        if crate::clock::is_skewed(ahead) && changed {
            *reported = Some(ahead);
            tracing::warn!(
                relay_ahead_s = ahead,
                "this device's clock differs from the relay's"
            );
            self.emit(Event::ClockSkew {
                relay_ahead_s: ahead,
            });
        } else if !crate::clock::is_skewed(ahead) {
            *reported = None;
        }
    }

    /// What was done on other devices while this one was away (live receipts reach connected
    /// devices only): its unacknowledged critical notifications that someone acknowledged
    /// meanwhile are marked here and their alerts withdrawn. At most the 50 newest, asked side by
    /// side for at most 5 s; a relay that cannot say leaves them as they are.
    async fn catch_up_on_other_devices(&self) {
        let waiting = self
            .with_inbox(|inbox| {
                let critical = crate::inbox::Filter {
                    priority: Some(wardline_protocol::Priority::Critical),
                    limit: 50,
                    ..crate::inbox::Filter::default()
                };
                inbox.list(&critical)
            })
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|row| row.acked_at.is_none());
        let token = self.token();
        let asks = waiting.map(|row| {
            let token = token.clone();
            async move {
                let status = crate::http::status(
                    self.options.trust.http(),
                    &self.options.server,
                    &token,
                    &row.channel,
                    row.id,
                )
                .await
                .ok()?;
                (status["state"] == "acknowledged").then(|| {
                    let by = status["acknowledged_by"].as_str().unwrap_or("").to_owned();
                    (row.channel, row.id, by)
                })
            }
        });
        let Ok(answers) =
            tokio::time::timeout(Duration::from_secs(5), futures_util::future::join_all(asks))
                .await
        else {
            return;
        };
        for (channel, id, by) in answers.into_iter().flatten() {
            let frame = ServerFrame::Receipt {
                kind: ReceiptKind::Acknowledged,
                channel,
                ids: vec![id],
                user: by,
                device: None,
            };
            if let Err(e) = self.apply(frame, &|_: &Channel| None).await {
                tracing::warn!(error = %e, "could not mark a notification acknowledged elsewhere");
            }
        }
    }

    /// The connection ended: the offline time counts from now (unless it already counts).
    fn disconnected(&self) {
        let mut link = self.link.lock().expect("link lock");
        if link.connected {
            link.connected = false;
            link.offline_since = Instant::now();
            link.offline_since_ms = now_ms();
        }
    }

    /// Raises the "not receiving critical results" alarm once the device has been offline for
    /// [`Options::offline_alarm`] (once per outage).
    async fn check_offline(&self) {
        let offline_for = {
            let mut link = self.link.lock().expect("link lock");
            let offline_for = link.offline_since.elapsed();
            if link.connected || link.alarmed || offline_for < self.options.offline_alarm {
                return;
            }
            link.alarmed = true;
            (offline_for, link.offline_since_ms)
        };
        let (offline_for, since_ms) = offline_for;
        let _ = self
            .with_inbox(move |inbox| inbox.set_state(NOT_RECEIVING_SINCE, &since_ms.to_string()))
            .await;
        tracing::warn!(
            offline_s = offline_for.as_secs(),
            "not connected to the relay: this device is not receiving critical results"
        );
        if let Some((alerter, _)) = self.alerter.clone() {
            let alert = crate::alert::not_receiving_alert(offline_for);
            let _ = tokio::task::spawn_blocking(move || alerter.raise(&alert)).await;
        }
        self.emit(Event::NotReceiving {
            offline_since: since_ms,
        });
    }

    /// This device failed to store what arrives: says so (once per failure, and again when the
    /// reason changes) with a critical OS alert; the caller tries again.
    async fn failed(&self, reason: &str) {
        let (first, changed) = {
            let mut link = self.link.lock().expect("link lock");
            let first = link.failure.is_none();
            let changed = link.failure.as_deref() != Some(reason);
            link.failure = Some(reason.to_owned());
            link.unproven = None;
            // The failure's alarm stands for the offline one too.
            let raise = !link.alarmed;
            link.alarmed = true;
            (first && raise, changed)
        };
        if !changed {
            return;
        }
        tracing::error!(%reason, "not receiving: this device cannot store what arrives");
        if first && let Some((alerter, _)) = self.alerter.clone() {
            let alert = crate::alert::failed_alert(reason);
            let _ = tokio::task::spawn_blocking(move || alerter.raise(&alert)).await;
        }
        self.emit(Event::Failed {
            reason: reason.to_owned(),
            retrying: true,
        });
    }

    /// Keeps the subscription alive until the token is refused, the relay cannot be trusted or
    /// `shutdown` completes; a failure of this device (the inbox) is tried again.
    pub async fn run(
        &self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<Ended, SubscriptionError> {
        self.bases()?;
        let mut backoff = Backoff::new();
        let mut watchdog = tokio::time::interval(Duration::from_secs(1));
        tokio::pin!(shutdown);
        loop {
            let started = Instant::now();
            let attempt = async {
                if self.device.get().is_none() {
                    let device = self.with_inbox(|inbox| inbox.device_id()).await?;
                    let _ = self.device.set(device);
                }
                self.emit(Event::Connecting {
                    transport: "websocket",
                });
                match self.websocket().await? {
                    Outcome::WebSocketRefused(reason) => {
                        tracing::warn!(%reason, "the WebSocket was refused; falling back to Server-Sent Events");
                        self.emit(Event::Connecting { transport: "sse" });
                        self.sse().await
                    }
                    other => Ok(other),
                }
            };
            tokio::pin!(attempt);
            let outcome = loop {
                tokio::select! {
                    outcome = &mut attempt => {
                        break outcome.unwrap_or_else(|e: SubscriptionError| Outcome::Failed(e.to_string()))
                    }
                    _ = &mut shutdown => {
                        self.set_state(ConnectionState::Stopped, "").await;
                        return Ok(Ended::Shutdown);
                    }
                    _ = watchdog.tick() => self.check_offline().await,
                }
            };
            self.disconnected();
            let (reason, pace) = match outcome {
                Outcome::SignIn(reason) => {
                    self.set_state(ConnectionState::SignInRequired, &reason)
                        .await;
                    self.emit(Event::SignInRequired {
                        reason: reason.clone(),
                    });
                    return Ok(Ended::SignInRequired(reason));
                }
                Outcome::Untrusted(reason) => {
                    tracing::error!(%reason, "stopped: the relay cannot be trusted");
                    self.set_state(ConnectionState::Untrusted, &reason).await;
                    self.emit(Event::Untrusted {
                        reason: reason.clone(),
                    });
                    return Ok(Ended::Untrusted(reason));
                }
                Outcome::Retry { reason, pace } => (reason, pace),
                Outcome::WebSocketRefused(reason) => (reason, Pace::Backoff),
                Outcome::Failed(reason) => {
                    self.failed(&reason).await;
                    (reason, Pace::Backoff)
                }
            };
            if started.elapsed() >= STABLE {
                backoff.reset();
            }
            let delay = delay(pace, &mut backoff, &mut rand::rng());
            let failure = self.link.lock().expect("link lock").failure.clone();
            if let Some(failure) = failure {
                // Until something is stored again, this device is failing, whatever else happens.
                self.set_state(
                    ConnectionState::Failed,
                    &format!("{failure}; retrying in {} s", delay.as_secs()),
                )
                .await;
            } else {
                self.set_state(
                    ConnectionState::Reconnecting,
                    &format!("{reason}; retrying in {} s", delay.as_secs()),
                )
                .await;
                let offline_since = self
                    .with_inbox(|inbox| inbox.state("online_until"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(now_ms);
                self.emit(Event::Reconnecting {
                    in_ms: delay.as_millis() as u64,
                    reason,
                    offline_since,
                });
            }
            // Acknowledgements made meanwhile are in the inbox: the next connection sends them.
            let wait = tokio::time::sleep(delay);
            tokio::pin!(wait);
            loop {
                tokio::select! {
                    _ = &mut wait => break,
                    _ = &mut shutdown => {
                        self.set_state(ConnectionState::Stopped, "").await;
                        return Ok(Ended::Shutdown);
                    }
                    _ = watchdog.tick() => self.check_offline().await,
                }
            }
        }
    }

    /// Acknowledgements and declines stored but not yet confirmed by the relay, grouped by
    /// channel.
    pub(crate) async fn pending_acks(
        &self,
    ) -> Result<Vec<(ReceiptKind, Grouped)>, SubscriptionError> {
        Ok(self
            .with_inbox(|inbox| {
                Ok(vec![
                    (ReceiptKind::Acknowledged, inbox.pending_acknowledgements()?),
                    (ReceiptKind::Declined, inbox.pending_declines()?),
                ])
            })
            .await?)
    }

    /// Notes that the connection works (for "offline since") and so that this listener is alive.
    pub(crate) async fn online(&self) -> Result<(), SubscriptionError> {
        Ok(self
            .with_inbox(|inbox| {
                let now = now_ms().to_string();
                inbox.set_state("online_until", &now)?;
                inbox.set_state("updated_at", &now)
            })
            .await?)
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
        self.online().await?;
        self.proven().await;
        Ok(group(received))
    }

    /// Alerts again for reminders of notifications this device already holds and nobody has
    /// acknowledged here (a reminder of one it did not hold was stored, and alerted, as new).
    async fn remind(
        &self,
        reminders: Vec<(Channel, Cursor, u32)>,
        stored: &[Row],
    ) -> Result<(), SubscriptionError> {
        let reminders: Vec<(Channel, Cursor, u32)> = reminders
            .into_iter()
            .filter(|(c, id, _)| !stored.iter().any(|r| r.channel == *c && r.id == *id))
            .collect();
        if reminders.is_empty() {
            return Ok(());
        }
        let wanted = reminders.clone();
        let rows = self
            .with_inbox(move |inbox| {
                let mut rows = Vec::new();
                for (channel, id, n) in wanted {
                    for row in inbox.unacknowledged(&channel, &[id])? {
                        rows.push((row, n));
                    }
                }
                Ok(rows)
            })
            .await?;
        let just_rows: Vec<Row> = rows.iter().map(|(row, _)| row.clone()).collect();
        self.alert(&just_rows).await;
        for (notification, repeat) in rows {
            self.emit(Event::Reminder {
                notification,
                repeat,
            });
        }
        Ok(())
    }
    /// Raises the OS alerts for `rows` under the person's settings now, off the async workers, and
    /// notes the notifications alerted for (a `displayed` receipt each). The alert is best effort
    /// (the desktop may have no notification service; the alerter reports its failure once), and
    /// the notification is stored either way.
    async fn alert(&self, rows: &[Row]) {
        let Some((alerter, settings)) = self.alerter.clone() else {
            return;
        };
        let settings = *settings.read().expect("alert settings lock");
        let alerts = alerts_for(rows, &settings, chrono::Local::now());
        let shown = tokio::task::spawn_blocking(move || {
            alerts
                .iter()
                .filter(|alert| alerter.raise(alert).is_ok())
                .filter_map(|alert| alert.notification.clone())
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_default();
        self.displayed.lock().expect("displayed lock").extend(shown);
    }

    /// The notifications alerted for since the last call, to receipt as `displayed`.
    pub(crate) fn take_displayed(&self) -> Grouped {
        group(std::mem::take(
            &mut *self.displayed.lock().expect("displayed lock"),
        ))
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
        let reminders: Vec<(Channel, Cursor, u32)> = batch
            .iter()
            .filter_map(|n| Some((n.channel.clone(), n.id, n.repeat?)))
            .collect();
        let stored = self.with_inbox(move |inbox| inbox.store(&batch)).await?;
        self.remind(reminders, &stored).await?;
        self.alert(&stored).await;
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
                epoch,
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
                    if let Some(epoch) = epoch {
                        inbox.set_state(HISTORY_EPOCH, &epoch)?;
                    }
                    Ok(())
                })
                .await?;
                if gap {
                    tracing::warn!(%channel, ?since, "history gap: the relay no longer had everything this device missed");
                    self.emit(Event::GapDetected { channel, since });
                }
            }
            ServerFrame::Recorded {
                kind,
                channel,
                ids,
                unknown,
            } => {
                if !unknown.is_empty() {
                    // Nothing to record for them (trimmed away meanwhile): not sent again.
                    tracing::warn!(%channel, ?unknown, "the relay no longer holds these notifications; their receipts were not recorded");
                }
                self.with_inbox(move |inbox| {
                    inbox.mark_synced(kind, &channel, &ids)?;
                    inbox.mark_synced(kind, &channel, &unknown)
                })
                .await?;
            }
            ServerFrame::Error {
                code,
                message,
                channel,
            } => {
                tracing::warn!(code = code.code(), %message, ?channel, "the relay refused a request");
                // A receipt refused for the user's limit: acknowledgements and declines waiting in
                // the inbox are sent again once the limit has refilled, not only by the next
                // connection (a chain must not escalate an acknowledged result meanwhile).
                if code == ErrorCode::RateLimited {
                    self.acknowledger.send_again_after(RATE_LIMIT_PAUSE);
                }
            }
            ServerFrame::Refreshed { expires_at } => {
                tracing::info!(
                    expires_at,
                    "the relay took the new token for this connection"
                );
            }
            ServerFrame::Receipt {
                kind,
                channel,
                ids,
                user,
                device,
            } => {
                if device.as_deref() == Some(self.device()) && user == self.options.user {
                    // This device's own receipt, already applied here.
                    return Ok(());
                }
                let for_inbox = channel.clone();
                let changed = self
                    .with_inbox(move |inbox| inbox.apply_remote_receipt(kind, &for_inbox, &ids))
                    .await?;
                if changed.is_empty() {
                    return Ok(());
                }
                if matches!(kind, ReceiptKind::Acknowledged | ReceiptKind::Declined)
                    && let Some((alerter, _)) = self.alerter.clone()
                {
                    let withdrawn: Vec<(Channel, Cursor)> =
                        changed.iter().map(|id| (channel.clone(), *id)).collect();
                    let _ = tokio::task::spawn_blocking(move || {
                        for notification in &withdrawn {
                            let _ = alerter.withdraw(Some(notification));
                        }
                    })
                    .await;
                }
                self.emit(Event::HandledElsewhere {
                    kind,
                    channel,
                    ids: changed,
                    user,
                    device,
                });
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
        pace: Pace::Backoff,
    }
}

/// How a relay's refusal of a connection (an HTTP status and error body) ends it, as decided by
/// [`Reconnect::after_refusal`]; `None` when the answer carries no Wardline error code (something
/// in between answered, not the relay).
pub(crate) fn refused(status: u16, body: &[u8]) -> Option<Outcome> {
    let body: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let code = crate::http::relay_error_code(&body)?;
    let message = body["message"].as_str().unwrap_or("refused");
    Some(match Reconnect::after_refusal(code) {
        Reconnect::SignIn => Outcome::SignIn(sign_in_reason(code, message)),
        advice => Outcome::Retry {
            reason: format!("the relay answered {status}: {message}"),
            pace: advice.into(),
        },
    })
}

/// What to tell the person when the relay refuses their token.
pub(crate) fn sign_in_reason(code: wardline_protocol::ErrorCode, message: &str) -> String {
    if code == wardline_protocol::ErrorCode::TokenExpired {
        "the token has expired: sign in again".into()
    } else {
        format!("the relay refused the token: {message}")
    }
}

/// What a close code from the relay means for the next attempt (a WebSocket close, or the close
/// code an event stream's `error` event carries), as decided by [`Reconnect::after_close`].
pub(crate) fn closed(code: u16, reason: &str) -> Outcome {
    match Reconnect::after_close(code) {
        Reconnect::SignIn if code == wardline_protocol::close::TOKEN_EXPIRED => {
            Outcome::SignIn("the token has expired: sign in again".into())
        }
        Reconnect::SignIn => Outcome::SignIn(format!("the relay refused the token: {reason}")),
        advice => Outcome::Retry {
            reason: format!("closed by the relay ({code}: {reason})"),
            pace: advice.into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn the_relay_asking_everyone_back_spreads_them_over_five_seconds() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let mut backoff = Backoff::new();
        let spread: Vec<Duration> = (0..200)
            .map(|_| delay(Pace::Spread, &mut backoff, &mut rng))
            .collect();
        assert!(spread.iter().all(|d| *d <= Duration::from_secs(5)));
        assert!(spread.iter().any(|d| *d < Duration::from_secs(1)));
        assert!(spread.iter().any(|d| *d > Duration::from_secs(4)));
        assert_eq!(
            backoff.ceiling(),
            Duration::from_secs(1),
            "the backoff is untouched"
        );
        assert_eq!(delay(Pace::Now, &mut backoff, &mut rng), Duration::ZERO);
        assert!(delay(Pace::Backoff, &mut backoff, &mut rng) >= Duration::from_secs(1));
    }

    #[test]
    fn close_codes_and_refusals_map_to_what_to_do() {
        assert!(matches!(closed(4001, ""), Outcome::SignIn(r) if r.contains("expired")));
        assert!(matches!(
            closed(1001, ""),
            Outcome::Retry {
                pace: Pace::Spread,
                ..
            }
        ));
        assert!(matches!(
            closed(4008, ""),
            Outcome::Retry {
                pace: Pace::Spread,
                ..
            }
        ));
        assert!(matches!(
            closed(1013, ""),
            Outcome::Retry {
                pace: Pace::Backoff,
                ..
            }
        ));
        let expired = br#"{"code": 40103, "message": "token expired"}"#;
        assert!(matches!(refused(401, expired), Some(Outcome::SignIn(r)) if r.contains("expired")));
        let busy = br#"{"code": 42901, "message": "slow down"}"#;
        assert!(matches!(
            refused(429, busy),
            Some(Outcome::Retry {
                pace: Pace::Backoff,
                ..
            })
        ));
        assert!(
            refused(403, b"<html>proxy</html>").is_none(),
            "not the relay's answer"
        );
    }
}
