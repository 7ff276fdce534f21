//! `Receiver`: the receiver as an app uses it — one inbox, one subscription that starts at sign-in
//! and stops at sign-out, and one stream of events that outlives both. No Tauri in it.

use crate::alert::{
    AlertAction, AlertSettings, Alerter, DesktopAlerter, QuietHours, SharedAlertSettings,
};
use crate::config::{self, Settings};
use crate::events::{ConnectionState, Event, LinkState, SharedLinkState};
use crate::inbox::{Counts, Filter, Gap, Inbox, InboxError, Row};
use crate::inbox_handle::InboxHandle;
use crate::subscription::{Acknowledger, Options, Subscription, TokenHandle};
use crate::tls::Trust;
use crate::{http, secrets};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use wardline_protocol::{ReceiptKind, Sensitive};

/// Why a receiver operation failed, with a stable code for the UI.
#[derive(Debug, thiserror::Error)]
pub enum ReceiverError {
    /// The inbox failed.
    #[error(transparent)]
    Inbox(#[from] InboxError),
    /// The relay refused the token or could not be reached at sign-in.
    #[error("{0}")]
    SignIn(String),
    /// The OS keychain failed.
    #[error(transparent)]
    Keychain(#[from] secrets::SecretError),
    /// Not signed in.
    #[error("not signed in")]
    NotSignedIn,
    /// The settings file could not be read or written.
    #[error("settings: {0}")]
    Settings(String),
    /// The relay could not answer (unreachable, or it refused the request).
    #[error("{0}")]
    Relay(String),
}

impl ReceiverError {
    /// A stable code for the UI.
    pub fn code(&self) -> &'static str {
        match self {
            ReceiverError::Inbox(_) => "inbox",
            ReceiverError::SignIn(_) => "sign_in",
            ReceiverError::Keychain(_) => "keychain",
            ReceiverError::NotSignedIn => "not_signed_in",
            ReceiverError::Settings(_) => "settings",
            ReceiverError::Relay(_) => "relay",
        }
    }
}

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
    /// Counts.
    pub counts: Counts,
    /// History gaps reported.
    pub gaps: Vec<Gap>,
    /// Quiet hours, sound, pause.
    pub alerts: AlertSettings,
    /// Since when (Unix ms) this device has not been receiving critical results: set when the
    /// "not receiving" alarm was raised, cleared when connected again.
    pub not_receiving_since: Option<u64>,
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
    inbox: InboxHandle,
    running: Mutex<Option<Running>>,
    events: broadcast::Sender<Event>,
    acknowledger: Acknowledger,
    trust: Trust,
    settings_path: PathBuf,
    alert_settings: SharedAlertSettings,
    offline_alarm: Mutex<Duration>,
}

impl Receiver {
    /// Opens the inbox at `db`, with the settings file at its default place and the OS trust store
    /// (plus `WARDLINE_CA_FILE`, if set).
    pub fn open(db: &Path) -> Result<Receiver, ReceiverError> {
        let trust = Trust::from_env().map_err(|e| ReceiverError::Settings(e.to_string()))?;
        Receiver::open_with(db, config::default_path(), trust)
    }

    /// Opens the inbox at `db` and the settings file at `settings_path`, trusting `trust`.
    pub fn open_with(
        db: &Path,
        settings_path: PathBuf,
        trust: Trust,
    ) -> Result<Receiver, ReceiverError> {
        let inbox = InboxHandle::new(Inbox::open(db)?);
        let settings = Settings::load(&settings_path).map_err(ReceiverError::Settings)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Receiver {
            acknowledger: Acknowledger::new(inbox.clone(), events.clone()),
            inbox,
            running: Mutex::new(None),
            events,
            trust,
            settings_path,
            alert_settings: Arc::new(RwLock::new(settings.alerts)),
            offline_alarm: Mutex::new(crate::subscription::OFFLINE_ALARM),
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

    /// Runs `work` on the settings file off the async workers.
    async fn with_settings<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Path) -> Result<T, String> + Send + 'static,
    ) -> Result<T, ReceiverError> {
        let path = self.settings_path.clone();
        tokio::task::spawn_blocking(move || work(&path))
            .await
            .expect("settings task")
            .map_err(ReceiverError::Settings)
    }

    /// Checks the token with the relay, keeps it in the OS keychain, remembers server and user, and
    /// starts the subscription (see [`Receiver::start`]).
    pub async fn sign_in(
        &self,
        server: &str,
        user: &str,
        token: Sensitive<String>,
        alerts: Alerts,
    ) -> Result<(), ReceiverError> {
        let me = http::whoami(self.trust.http(), server, &token)
            .await
            .map_err(|e| ReceiverError::SignIn(e.to_string()))?;
        if me["user"].as_str() != Some(user) {
            return Err(ReceiverError::SignIn(format!(
                "the token is for user {}, not {user}",
                me["user"]
            )));
        }
        secrets::store_token(server, user, &token).await?;
        let (remembered_server, remembered_user) = (server.to_owned(), user.to_owned());
        self.with_settings(move |path| {
            Settings::update(path, |settings| {
                settings.server = Some(remembered_server);
                settings.user = Some(remembered_user);
            })
        })
        .await?;
        self.start(server, user, token, alerts);
        Ok(())
    }

    /// Starts with what `sign_in` remembered, if anything; returns whether it started.
    pub async fn resume(&self, alerts: Alerts) -> Result<bool, ReceiverError> {
        let settings = self.with_settings(Settings::load).await?;
        let (Some(server), Some(user)) = (settings.server, settings.user) else {
            return Ok(false);
        };
        let Some(token) = secrets::load_token(&server, &user).await? else {
            return Ok(false);
        };
        self.start(&server, &user, token, alerts);
        Ok(true)
    }

    /// Starts the subscription (stopping any earlier one). Acknowledgements stored while none ran
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
        self.stop();
        let options = Options {
            server: server.to_owned(),
            user: user.to_owned(),
            token,
            heartbeat: Duration::from_secs(15),
            trust: self.trust.clone(),
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

    /// Stops the subscription and removes the token from the keychain.
    pub async fn sign_out(&self) -> Result<(), ReceiverError> {
        let running = self.running.lock().expect("receiver lock").take();
        let Some(running) = running else {
            return Err(ReceiverError::NotSignedIn);
        };
        let _ = running.stop.send(());
        let deleted = secrets::delete_token(&running.server, &running.user).await;
        let _ = self.events.send(Event::SignedOut);
        Ok(deleted?)
    }

    /// Lists the inbox.
    pub async fn list(&self, filter: Filter) -> Result<Vec<Row>, ReceiverError> {
        Ok(self.inbox.read(move |inbox| inbox.list(&filter)).await?)
    }

    /// Acknowledges notifications (ids as `channel/id` or bare ids): stored in the inbox at once,
    /// whatever the subscription's state, and sent to the relay by the running subscription, or by
    /// the next one when it connects.
    pub async fn acknowledge(&self, ids: Vec<String>) -> Result<(), ReceiverError> {
        let resolved = self.with_inbox(move |inbox| inbox.resolve(&ids)).await?;
        Ok(self.acknowledger.acknowledge(resolved).await?)
    }

    /// Declines notifications ("not me / cannot now"; ids as `channel/id` or bare ids): stored in
    /// the inbox at once and sent to the relay, which escalates them to the backup at once.
    pub async fn decline(&self, ids: Vec<String>) -> Result<(), ReceiverError> {
        let resolved = self.with_inbox(move |inbox| inbox.resolve(&ids)).await?;
        Ok(self.acknowledger.decline(resolved).await?)
    }

    /// A notification's state and trail as the relay keeps them (delivered, alerted, read,
    /// acknowledged, repeated, escalated, emailed), asked with the running subscription's token.
    pub async fn trail(&self, id: String) -> Result<serde_json::Value, ReceiverError> {
        let (server, token) = {
            let running = self.running.lock().expect("receiver lock");
            let running = running.as_ref().ok_or(ReceiverError::NotSignedIn)?;
            (running.server.clone(), running.token.current())
        };
        let resolved = self.with_inbox(move |inbox| inbox.resolve(&[id])).await?;
        let (channel, id) = resolved.into_iter().next().ok_or_else(|| {
            ReceiverError::Inbox(InboxError::NotFound("no such notification".into()))
        })?;
        http::status(self.trust.http(), &server, &token, &channel, id)
            .await
            .map_err(ReceiverError::Relay)
    }

    /// Carries out what the person did with an OS alert: "Acknowledge" acknowledges (as
    /// [`Receiver::acknowledge`] does, also after the subscription stopped), a click asks the app to
    /// show the notification ([`Event::AlertOpened`]).
    pub async fn alert_action(&self, action: AlertAction) -> Result<(), ReceiverError> {
        Ok(carry_out(action, &self.acknowledger, &self.events).await?)
    }

    /// Marks notifications read, and tells the relay when signed in (best effort: the trail
    /// shows it, and the user's other devices mark them read too).
    pub async fn mark_read(&self, ids: Vec<String>) -> Result<(), ReceiverError> {
        let (resolved, device) = self
            .with_inbox(move |inbox| {
                let resolved = inbox.resolve(&ids)?;
                inbox.mark_read(&resolved)?;
                Ok((resolved, inbox.device_id()?))
            })
            .await?;
        let signed_in = {
            let running = self.running.lock().expect("receiver lock");
            running
                .as_ref()
                .map(|r| (r.server.clone(), r.token.current()))
        };
        if let Some((server, token)) = signed_in {
            let client = self.trust.http().clone();
            tokio::spawn(async move {
                for (channel, ids) in crate::subscription::group(resolved) {
                    let sent = http::send_receipts(
                        &client,
                        &server,
                        &token,
                        ReceiptKind::Read,
                        &channel,
                        &ids,
                        Some(&device),
                    );
                    if let Err(reason) = sent.await {
                        tracing::warn!(%reason, "the relay was not told of a notification read");
                    }
                }
            });
        }
        Ok(())
    }

    /// The alert settings in force.
    pub fn alert_settings(&self) -> AlertSettings {
        *self.alert_settings.read().expect("alert settings lock")
    }

    /// Changes the alert settings: kept in the settings file, applied from the next alert on, and
    /// announced as [`Event::AlertSettingsChanged`].
    pub async fn set_alert_settings(&self, alerts: AlertSettings) -> Result<(), ReceiverError> {
        self.with_settings(move |path| Settings::update(path, |settings| settings.alerts = alerts))
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
        let (connection, detail, counts, gaps, not_receiving) = self
            .inbox
            .read(|inbox| {
                Ok((
                    inbox.state("connection")?,
                    inbox.state("detail")?,
                    inbox.counts()?,
                    inbox.gaps()?,
                    inbox.state(crate::subscription::NOT_RECEIVING_SINCE)?,
                ))
            })
            .await?;
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
        Ok(Status {
            user,
            server,
            connection: link.connection,
            detail: link.detail,
            counts,
            gaps,
            alerts: self.alert_settings(),
            not_receiving_since: not_receiving.and_then(|since| since.parse().ok()),
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
