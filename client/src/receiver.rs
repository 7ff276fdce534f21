//! `Receiver`: the receiver as the app and the command line use it, opened by the door
//! ([`crate::Wardline`]) — one inbox, one subscription that starts at sign-in and stops at
//! sign-out, one stream of events that outlives both, one receipt path (acknowledge, decline,
//! read: stored first, then told to the relay) and one status with one liveness rule. No Tauri.

use crate::account::Accounts;
use crate::account::SignedIn;
use crate::alert::{AlertAction, AlertSettings, Alerter, QuietHours, SharedAlertSettings};
use crate::config::Settings;
use crate::desktop_alerter::DesktopAlerter;
use crate::error::ReceiverError;
use crate::events::{ConnectionState, Event, LinkState, SharedLinkState};
use crate::inbox::{Counts, Filter, Gap, Inbox, InboxError, Row};
use crate::inbox_handle::InboxHandle;
use crate::listener_lock::ListenerLock;
use crate::place::Place;
use crate::subscription::{Acknowledger, Options, Subscription, TokenHandle};
use crate::{http, secrets};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use wardline_protocol::{ReceiptKind, Sensitive};

/// Which OS alerts the subscription raises (always under the person's alert settings).
#[derive(Clone)]
pub enum Alerts {
    /// None.
    Off,
    /// The desktop's notification service; clicking an alert emits [`Event::AlertOpened`], its
    /// "Acknowledge" acknowledges.
    Desktop,
    /// The app's own alerter (on mobile, the notification plugin's).
    Custom(Arc<dyn Alerter>),
}

impl std::fmt::Debug for Alerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Alerts::Off => "Off",
            Alerts::Desktop => "Desktop",
            Alerts::Custom(_) => "Custom",
        })
    }
}

/// Where the receiver stands, for a status banner.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Signed in as, at.
    pub user: Option<String>,
    /// The relay.
    pub server: Option<String>,
    /// Where the connection stands.
    pub connection: ConnectionState,
    /// Details (why reconnecting, when next).
    pub detail: String,
    /// When (Unix ms) a listener last stored a change of the connection's state.
    pub changed_at: Option<u64>,
    /// Counts.
    pub counts: Counts,
    /// History gaps reported.
    pub gaps: Vec<Gap>,
    /// Quiet hours, sound, pause.
    pub alerts: AlertSettings,
    /// Since when (Unix ms) this device has not been receiving critical results: set when the
    /// "not receiving" alarm was raised, cleared when connected again.
    pub not_receiving_since: Option<u64>,
    /// Whether a listener keeps the inbox: this process's subscription, or another process's
    /// that was heard from within [`LISTENER_SILENCE`].
    pub listener: Listener,
}

/// Who keeps the inbox filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Listener {
    /// This process's subscription.
    Here,
    /// Another process (the app, `wardline listen`), heard from lately.
    Elsewhere,
    /// None: the state shown is the last one a listener stored, when it last ran.
    NotRunning,
}

/// A listener notes it is alive at every heartbeat (15 s): one silent for this long is not running.
pub const LISTENER_SILENCE: Duration = Duration::from_secs(60);

/// A receipt made here: the notifications it named, and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipted {
    /// The notifications (channel, id).
    pub ids: Vec<crate::subscription::Acknowledgement>,
    /// Whether the relay was told.
    pub told: Told,
}

/// What became of a receipt made here (acknowledge, decline, read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Told {
    /// The running subscription tells the relay (or its next connection does).
    BySubscription,
    /// The relay recorded it.
    Relay,
    /// Stored here only, and why the relay was not told now: an acknowledgement or a decline is
    /// told by the next listener that connects; a read is not told.
    NotYet(String),
}

struct Running {
    server: String,
    user: String,
    token: TokenHandle,
    /// Where its connection stands (set here when the subscription ended unexpectedly).
    state: SharedLinkState,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

/// One user's receiver.
pub struct Receiver {
    place: Place,
    accounts: Accounts,
    inbox: InboxHandle,
    running: Mutex<Option<Running>>,
    events: broadcast::Sender<Event>,
    acknowledger: Acknowledger,
    alert_settings: SharedAlertSettings,
    offline_alarm: Mutex<Duration>,
    /// The inbox's listener lock, once a subscription started: kept for the receiver's life, so
    /// that a restart (a new sign-in) never races the subscription it replaces.
    listener_lock: Mutex<Option<ListenerLock>>,
}

impl Receiver {
    /// Opens the inbox at the door's place (making it, in a directory of the user's alone, if
    /// there is none) and reads the settings. Blocking: [`crate::Wardline::open`] runs it off the async
    /// workers.
    pub(crate) fn open(place: Place, accounts: Accounts) -> Result<Receiver, ReceiverError> {
        place
            .prepare()
            .map_err(|e| ReceiverError::Settings(format!("{}: {e}", place.inbox().display())))?;
        let inbox = InboxHandle::new(Inbox::open(place.inbox())?);
        let settings = Settings::load(place.settings()).map_err(ReceiverError::Settings)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Receiver {
            acknowledger: Acknowledger::new(inbox.clone(), events.clone()),
            inbox,
            running: Mutex::new(None),
            events,
            alert_settings: Arc::new(RwLock::new(settings.alerts)),
            offline_alarm: Mutex::new(crate::subscription::OFFLINE_ALARM),
            listener_lock: Mutex::new(None),
            place,
            accounts,
        })
    }

    /// Every event of every subscription this receiver runs.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Runs `work` on the inbox off the async workers.
    async fn with_inbox<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Inbox) -> Result<T, InboxError> + Send + 'static,
    ) -> Result<T, ReceiverError> {
        Ok(self.inbox.call(work).await?)
    }

    /// Checks the token with the relay, keeps it in the OS keychain, remembers server and user (see
    /// [`Accounts::sign_in`]), and starts the subscription (see [`Receiver::start`]).
    pub async fn sign_in(
        &self,
        server: &str,
        user: &str,
        token: Sensitive<String>,
        alerts: Alerts,
    ) -> Result<SignedIn, ReceiverError> {
        let signed_in = self.accounts.sign_in(server, user, &token).await?;
        self.start(&signed_in.server, user, token, alerts);
        Ok(signed_in)
    }

    /// Starts as the account the door resolves (given, or the last sign-in), if there is one;
    /// returns whether it started.
    pub async fn resume(&self, alerts: Alerts) -> Result<bool, ReceiverError> {
        match self.accounts.account().await {
            Ok(account) => {
                self.start(&account.server, &account.user, account.token, alerts);
                Ok(true)
            }
            Err(ReceiverError::NotSignedIn | ReceiverError::NoToken { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Starts the subscription (stopping any earlier one); when another process listens on this
    /// inbox already, says so ([`Event::Failed`]) and starts nothing. Acknowledgements stored while none ran
    /// are sent when it connects. When it already runs for this user at this relay, it takes the
    /// new token instead: presented on the open connection, which then outlives the old token,
    /// with no reconnect and nothing missed (`alerts` stay as they were).
    pub fn start(&self, server: &str, user: &str, token: Sensitive<String>, alerts: Alerts) {
        {
            let running = self.running.lock().expect("receiver lock");
            if let Some(running) = running
                .as_ref()
                .filter(|r| r.server == server && r.user == user && !r.task.is_finished())
            {
                running.token.replace(token);
                return;
            }
        }
        if let Err(reason) = self.take_listener_lock() {
            tracing::error!(%reason, "not listening");
            let _ = self.events.send(Event::Failed {
                reason,
                retrying: false,
            });
            return;
        }
        self.stop();
        let options = Options {
            server: server.to_owned(),
            user: user.to_owned(),
            token,
            heartbeat: Duration::from_secs(15),
            trust: self.accounts.trust().clone(),
            offline_alarm: *self.offline_alarm.lock().expect("receiver lock"),
        };
        let mut subscription = Subscription::new(options, self.inbox.clone())
            .with_acknowledger(self.acknowledger.clone());
        let token = subscription.token_handle();
        let alerter: Option<Arc<dyn Alerter>> = match alerts {
            Alerts::Off => None,
            Alerts::Custom(alerter) => Some(alerter),
            Alerts::Desktop => {
                let (actions, chosen) = mpsc::unbounded_channel();
                tokio::spawn(follow_alert_actions(
                    chosen,
                    self.acknowledger.clone(),
                    self.events.clone(),
                ));
                Some(Arc::new(DesktopAlerter::new(actions)))
            }
        };
        if let Some(alerter) = alerter.clone() {
            subscription = subscription.with_alerter(alerter, self.alert_settings.clone());
        }
        let state: SharedLinkState = Arc::new(Mutex::new(LinkState {
            connection: ConnectionState::NeverStarted,
            detail: String::new(),
        }));
        subscription = subscription.with_link_state(state.clone());
        let mut events = subscription.events();
        let forward = self.events.clone();
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(event) => {
                        let _ = forward.send(event);
                    }
                    // Whoever fell behind reads the inbox; the forwarder carries on.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        let (stop, stopped) = oneshot::channel();
        let failure = Failure {
            events: self.events.clone(),
            state: state.clone(),
            inbox: self.inbox.clone(),
            alerter,
        };
        let task = tokio::spawn(async move {
            let stop = async {
                let _ = stopped.await;
            };
            // Its own task, so that a panic in it is seen here rather than lost with it.
            let run = tokio::spawn(async move { subscription.run(stop).await });
            let reason = match run.await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("the receiver stopped unexpectedly ({e})"),
            };
            failure.report(reason).await;
        });
        *self.running.lock().expect("receiver lock") = Some(Running {
            server: server.to_owned(),
            user: user.to_owned(),
            token,
            state,
            stop,
            task,
        });
    }

    /// Takes the inbox's listener lock unless this receiver holds it already (another process
    /// listening on this inbox is the error).
    fn take_listener_lock(&self) -> Result<(), String> {
        let mut lock = self.listener_lock.lock().expect("receiver lock");
        if lock.is_none() {
            *lock = Some(ListenerLock::take(self.place.inbox())?);
        }
        Ok(())
    }

    /// Stops the subscription, if one runs (without waiting for it).
    pub fn stop(&self) {
        if let Some(running) = self.running.lock().expect("receiver lock").take() {
            let _ = running.stop.send(());
        }
    }

    /// Stops the subscription, if one runs, and waits until it has (its state recorded as
    /// stopped).
    pub async fn shutdown(&self) {
        let running = self.running.lock().expect("receiver lock").take();
        if let Some(running) = running {
            let _ = running.stop.send(());
            let _ = running.task.await;
        }
    }

    /// How long without a connection raises the "not receiving critical results" alarm, for
    /// subscriptions started from now on (default 2 min).
    pub fn set_offline_alarm(&self, after: Duration) {
        *self.offline_alarm.lock().expect("receiver lock") = after;
    }

    /// Alerts show what notifications say, for this run only (`listen --show-details`), not saved.
    pub fn show_details_for_run(&self) {
        self.alert_settings
            .write()
            .expect("alert settings lock")
            .show_details = true;
    }

    /// Quiet hours for this run only (the command line's `--quiet-hours`), not saved.
    pub fn override_quiet_hours(&self, quiet_hours: QuietHours) {
        self.alert_settings
            .write()
            .expect("alert settings lock")
            .quiet_hours = Some(quiet_hours);
    }

    /// Deletes notifications received longer ago than `keep`; returns how many.
    pub async fn purge_older_than(&self, keep: Duration) -> Result<usize, ReceiverError> {
        self.with_inbox(move |inbox| inbox.purge_older_than(keep))
            .await
    }

    /// Stops the subscription, if one runs, and removes the account's token from the keychain.
    pub async fn sign_out(&self) -> Result<(), ReceiverError> {
        let running = self.running.lock().expect("receiver lock").take();
        let deleted = match running {
            Some(running) => {
                let _ = running.stop.send(());
                secrets::delete_token(&running.server, &running.user)
                    .await
                    .map_err(ReceiverError::from)
            }
            None => self.accounts.sign_out().await.map(|_| ()),
        };
        let _ = self.events.send(Event::SignedOut);
        deleted
    }

    /// Lists the inbox.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Row>, ReceiverError> {
        Ok(self.inbox.read(move |inbox| inbox.list(&filter)).await?)
    }

    /// Acknowledges notifications (ids as `channel/id` or bare ids) ― see [`Receiver::receipt`].
    pub async fn acknowledge(&self, ids: Vec<String>) -> Result<Receipted, ReceiverError> {
        self.receipt(ReceiptKind::Acknowledged, ids).await
    }

    /// Declines notifications ("not me / cannot now"): the relay escalates them to the backup at
    /// once ― see [`Receiver::receipt`].
    pub async fn decline(&self, ids: Vec<String>) -> Result<Receipted, ReceiverError> {
        self.receipt(ReceiptKind::Declined, ids).await
    }

    /// Marks notifications read: the trail shows it, and the user's other devices mark them read
    /// too (best effort) ― see [`Receiver::receipt`].
    pub async fn mark_read(&self, ids: Vec<String>) -> Result<Receipted, ReceiverError> {
        self.receipt(ReceiptKind::Read, ids).await
    }

    /// The one receipt path. Stored in the inbox at once, whatever the connection's state; then,
    /// where a subscription runs in this process, it tells the relay (an acknowledgement or a
    /// decline is kept until the relay confirms it, and sent again by the next connection);
    /// elsewhere (the command line) the relay is told over HTTP now, as the account the door
    /// resolves. `kind` is acknowledged, declined or read.
    async fn receipt(
        &self,
        kind: ReceiptKind,
        ids: Vec<String>,
    ) -> Result<Receipted, ReceiverError> {
        let resolved = self.with_inbox(move |inbox| inbox.resolve(&ids)).await?;
        let told = self.tell(kind, resolved.clone()).await?;
        Ok(Receipted {
            ids: resolved,
            told,
        })
    }

    async fn tell(
        &self,
        kind: ReceiptKind,
        resolved: Vec<crate::subscription::Acknowledgement>,
    ) -> Result<Told, ReceiverError> {
        match kind {
            ReceiptKind::Declined => self.acknowledger.decline(resolved.clone()).await?,
            ReceiptKind::Read => {
                let marked = resolved.clone();
                self.with_inbox(move |inbox| inbox.mark_read(&marked))
                    .await?
            }
            _ => self.acknowledger.acknowledge(resolved.clone()).await?,
        }
        let running = {
            let running = self.running.lock().expect("receiver lock");
            running
                .as_ref()
                .filter(|r| !r.task.is_finished())
                .map(|r| (r.server.clone(), r.token.current()))
        };
        let device = self.with_inbox(|inbox| inbox.device_id()).await?;
        let client = self.accounts.trust().http().clone();
        match (kind, running) {
            // Read receipts are not the subscription's: told here, without holding up the window.
            (ReceiptKind::Read, Some((server, token))) => {
                tokio::spawn(async move {
                    for (channel, ids) in crate::subscription::group(resolved) {
                        let sent = http::send_receipts(
                            &client,
                            &server,
                            &token,
                            kind,
                            &channel,
                            &ids,
                            Some(&device),
                        );
                        if let Err(reason) = sent.await {
                            tracing::warn!(%reason, "the relay was not told of a notification read");
                        }
                    }
                });
                Ok(Told::BySubscription)
            }
            (_, Some(_)) => Ok(Told::BySubscription),
            (_, None) => {
                let account = match self.accounts.account().await {
                    Ok(account) => account,
                    Err(e) => return Ok(Told::NotYet(e.to_string())),
                };
                for (channel, ids) in crate::subscription::group(resolved) {
                    let sent = http::send_receipts(
                        &client,
                        &account.server,
                        &account.token,
                        kind,
                        &channel,
                        &ids,
                        Some(&device),
                    );
                    if let Err(reason) = sent.await {
                        return Ok(Told::NotYet(reason));
                    }
                    if kind != ReceiptKind::Read {
                        self.with_inbox(move |inbox| inbox.mark_synced(kind, &channel, &ids))
                            .await?;
                    }
                }
                Ok(Told::Relay)
            }
        }
    }

    /// A notification's state and trail as the relay keeps them (delivered, alerted, read,
    /// acknowledged, repeated, escalated, emailed), asked with the running subscription's token,
    /// or the account the door resolves.
    pub async fn trail(&self, id: String) -> Result<serde_json::Value, ReceiverError> {
        let running = {
            let running = self.running.lock().expect("receiver lock");
            running
                .as_ref()
                .map(|r| (r.server.clone(), r.token.current()))
        };
        let (server, token) = match running {
            Some(running) => running,
            None => {
                let account = self.accounts.account().await?;
                (account.server, account.token)
            }
        };
        let resolved = self.with_inbox(move |inbox| inbox.resolve(&[id])).await?;
        let (channel, id) = resolved.into_iter().next().ok_or_else(|| {
            ReceiverError::Inbox(InboxError::NotFound("no such notification".into()))
        })?;
        http::status(self.accounts.trust().http(), &server, &token, &channel, id)
            .await
            .map_err(ReceiverError::Relay)
    }

    /// Carries out what the person did with an OS alert: "Acknowledge" acknowledges (as
    /// [`Receiver::acknowledge`] does, also after the subscription stopped), a click asks the app to
    /// show the notification ([`Event::AlertOpened`]).
    pub async fn alert_action(&self, action: AlertAction) -> Result<(), ReceiverError> {
        Ok(carry_out(action, &self.acknowledger, &self.events).await?)
    }

    /// The alert settings in force.
    pub fn alert_settings(&self) -> AlertSettings {
        *self.alert_settings.read().expect("alert settings lock")
    }

    /// Changes the alert settings: kept in the settings file, applied from the next alert on, and
    /// announced as [`Event::AlertSettingsChanged`].
    pub async fn set_alert_settings(&self, alerts: AlertSettings) -> Result<(), ReceiverError> {
        self.accounts
            .with_settings(move |path| Settings::update(path, |settings| settings.alerts = alerts))
            .await?;
        *self.alert_settings.write().expect("alert settings lock") = alerts;
        let _ = self.events.send(Event::AlertSettingsChanged { alerts });
        Ok(())
    }

    /// Pauses non-critical alerts until `until` (Unix ms), or resumes them (`None`).
    pub async fn pause_alerts(&self, until: Option<u64>) -> Result<(), ReceiverError> {
        self.set_alert_settings(AlertSettings {
            paused_until: until,
            ..self.alert_settings()
        })
        .await
    }

    /// Where things stand.
    pub async fn status(&self) -> Result<Status, ReceiverError> {
        let (user, server, link) = {
            let running = self.running.lock().expect("receiver lock");
            (
                running.as_ref().map(|r| r.user.clone()),
                running.as_ref().map(|r| r.server.clone()),
                running
                    .as_ref()
                    .map(|r| r.state.lock().expect("link state lock").clone()),
            )
        };
        let (connection, detail, counts, gaps, not_receiving, updated_at, changed_at) = self
            .inbox
            .read(|inbox| {
                Ok((
                    inbox.state("connection")?,
                    inbox.state("detail")?,
                    inbox.counts()?,
                    inbox.gaps()?,
                    inbox.state(crate::subscription::NOT_RECEIVING_SINCE)?,
                    inbox.state("updated_at")?,
                    inbox.state("changed_at")?,
                ))
            })
            .await?;
        let here = link.is_some();
        // A running subscription's state is the truth; the inbox keeps the last one stored (by
        // this process before, or by another).
        let link = link
            .filter(|link| link.connection != ConnectionState::NeverStarted)
            .unwrap_or_else(|| LinkState {
                connection: connection
                    .as_deref()
                    .and_then(ConnectionState::parse)
                    .unwrap_or(ConnectionState::NeverStarted),
                detail: detail.unwrap_or_default(),
            });
        let ended = matches!(
            link.connection,
            ConnectionState::Stopped | ConnectionState::NeverStarted
        );
        let heard_ms = updated_at
            .and_then(|at| at.parse::<u64>().ok())
            .unwrap_or(0);
        let listener = if here {
            Listener::Here
        } else if !ended
            && crate::inbox::now_ms().saturating_sub(heard_ms)
                <= LISTENER_SILENCE.as_millis() as u64
        {
            Listener::Elsewhere
        } else {
            Listener::NotRunning
        };
        Ok(Status {
            user,
            server,
            connection: link.connection,
            detail: link.detail,
            changed_at: changed_at.and_then(|at| at.parse().ok()),
            counts,
            gaps,
            alerts: self.alert_settings(),
            // An alarm a listener that no longer runs left standing is not news.
            not_receiving_since: not_receiving
                .and_then(|since| since.parse().ok())
                .filter(|_| here || !ended),
            listener,
        })
    }
}

/// Says that a subscription ended on a failure (an invalid relay address, a panic): nothing more is
/// received until the person signs in again or the app restarts.
struct Failure {
    events: broadcast::Sender<Event>,
    state: SharedLinkState,
    inbox: InboxHandle,
    alerter: Option<Arc<dyn Alerter>>,
}

impl Failure {
    async fn report(self, reason: String) {
        tracing::error!(%reason, "the subscription stopped");
        *self.state.lock().expect("link state lock") = LinkState {
            connection: ConnectionState::Failed,
            detail: reason.clone(),
        };
        let stored = reason.clone();
        let _ = self
            .inbox
            .call(move |inbox| {
                inbox.set_state("connection", ConnectionState::Failed.as_str())?;
                inbox.set_state("detail", &stored)
            })
            .await;
        if let Some(alerter) = self.alerter {
            let alert = crate::alert::failed_alert(&reason);
            let _ = tokio::task::spawn_blocking(move || alerter.raise(&alert)).await;
        }
        let _ = self.events.send(Event::Failed {
            reason,
            retrying: false,
        });
    }
}

/// What the person did with an alert, carried out.
async fn carry_out(
    action: AlertAction,
    acknowledger: &Acknowledger,
    events: &broadcast::Sender<Event>,
) -> Result<(), InboxError> {
    match action {
        AlertAction::Acknowledge(notification) => {
            acknowledger.acknowledge(vec![notification]).await
        }
        AlertAction::Decline(notification) => acknowledger.decline(vec![notification]).await,
        AlertAction::Open(notification) => {
            let (channel, id) = notification.unzip();
            let _ = events.send(Event::AlertOpened { channel, id });
            Ok(())
        }
    }
}

/// Carries out what the person does with desktop alerts, for as long as the alerter lives (after
/// its subscription stopped too: an acknowledgement is stored and sent by the next one).
async fn follow_alert_actions(
    mut chosen: mpsc::UnboundedReceiver<AlertAction>,
    acknowledger: Acknowledger,
    events: broadcast::Sender<Event>,
) {
    while let Some(action) = chosen.recv().await {
        if let Err(e) = carry_out(action, &acknowledger, &events).await {
            tracing::error!(error = %e, "an alert's acknowledgement could not be stored");
        }
    }
}
