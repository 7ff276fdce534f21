//! `Receiver`: the receiver as an app uses it — one inbox, one subscription that starts at sign-in
//! and stops at sign-out, and one stream of events that outlives both. No Tauri in it.

use crate::alert::{AlertAction, AlertSettings, Alerter, DesktopAlerter, SharedAlertSettings};
use crate::config::{self, Settings};
use crate::events::Event;
use crate::inbox::{Counts, Filter, Gap, Inbox, InboxError, Row};
use crate::subscription::{Acknowledgement, Options, Subscription};
use crate::{http, secrets};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, oneshot};
use wardline_protocol::Sensitive;

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
    /// connected, reconnecting, sign_in_required, stopped, never started.
    pub connection: String,
    /// Details (why reconnecting, when next).
    pub detail: String,
    /// Counts.
    pub counts: Counts,
    /// History gaps reported.
    pub gaps: Vec<Gap>,
    /// Quiet hours, sound, pause.
    pub alerts: AlertSettings,
}

struct Running {
    server: String,
    user: String,
    acks: mpsc::UnboundedSender<Acknowledgement>,
    stop: oneshot::Sender<()>,
}

/// One user's receiver.
pub struct Receiver {
    inbox: Arc<Mutex<Inbox>>,
    running: Mutex<Option<Running>>,
    events: broadcast::Sender<Event>,
    settings_path: PathBuf,
    alert_settings: SharedAlertSettings,
}

impl Receiver {
    /// Opens the inbox at `db`, with the settings file at its default place.
    pub fn open(db: &Path) -> Result<Receiver, ReceiverError> {
        Receiver::open_with_settings(db, config::default_path())
    }

    /// Opens the inbox at `db` and the settings file at `settings_path`.
    pub fn open_with_settings(
        db: &Path,
        settings_path: PathBuf,
    ) -> Result<Receiver, ReceiverError> {
        let inbox = Inbox::open(db)?;
        let settings = Settings::load(&settings_path).map_err(ReceiverError::Settings)?;
        let (events, _) = broadcast::channel(1024);
        Ok(Receiver {
            inbox: Arc::new(Mutex::new(inbox)),
            running: Mutex::new(None),
            events,
            settings_path,
            alert_settings: Arc::new(RwLock::new(settings.alerts)),
        })
    }

    /// Every event of every subscription this receiver runs.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Checks the token with the relay, keeps it in the OS keychain, remembers server and user, and
    /// starts the subscription.
    pub async fn sign_in(
        &self,
        server: &str,
        user: &str,
        token: Sensitive<String>,
        alerts: Alerts,
    ) -> Result<(), ReceiverError> {
        let me = http::whoami(server, &token)
            .await
            .map_err(|e| ReceiverError::SignIn(e.to_string()))?;
        if me["user"].as_str() != Some(user) {
            return Err(ReceiverError::SignIn(format!(
                "the token is for user {}, not {user}",
                me["user"]
            )));
        }
        secrets::store_token(server, user, &token)?;
        Settings::update(&self.settings_path, |settings| {
            settings.server = Some(server.to_owned());
            settings.user = Some(user.to_owned());
        })
        .map_err(ReceiverError::Settings)?;
        self.start(server, user, token, alerts);
        Ok(())
    }

    /// Starts with what `sign_in` remembered, if anything; returns whether it started.
    pub fn resume(&self, alerts: Alerts) -> Result<bool, ReceiverError> {
        let settings = Settings::load(&self.settings_path).map_err(ReceiverError::Settings)?;
        let (Some(server), Some(user)) = (settings.server, settings.user) else {
            return Ok(false);
        };
        let Some(token) = secrets::load_token(&server, &user)? else {
            return Ok(false);
        };
        self.start(&server, &user, token, alerts);
        Ok(true)
    }

    /// Starts the subscription (stopping any earlier one).
    pub fn start(&self, server: &str, user: &str, token: Sensitive<String>, alerts: Alerts) {
        self.stop();
        let options = Options {
            server: server.to_owned(),
            user: user.to_owned(),
            token,
            heartbeat: Duration::from_secs(15),
        };
        let mut subscription = Subscription::new(options, self.inbox.clone());
        let acks = subscription.acknowledger();
        let alerter: Option<Arc<dyn Alerter>> = match alerts {
            Alerts::Off => None,
            Alerts::Custom(alerter) => Some(alerter),
            Alerts::Desktop => {
                let (actions, chosen) = mpsc::unbounded_channel();
                tokio::spawn(follow_alert_actions(
                    chosen,
                    acks.clone(),
                    self.events.clone(),
                ));
                Some(Arc::new(DesktopAlerter::new(actions)))
            }
        };
        if let Some(alerter) = alerter {
            subscription = subscription.with_alerter(alerter, self.alert_settings.clone());
        }
        let mut events = subscription.events();
        let forward = self.events.clone();
        tokio::spawn(async move {
            while let Ok(event) = events.recv().await {
                let _ = forward.send(event);
            }
        });
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(async move {
            if let Err(e) = subscription
                .run(async {
                    let _ = stopped.await;
                })
                .await
            {
                tracing::error!(error = %e, "the subscription stopped");
            }
        });
        *self.running.lock().expect("receiver lock") = Some(Running {
            server: server.to_owned(),
            user: user.to_owned(),
            acks,
            stop,
        });
    }

    /// Stops the subscription, if one runs.
    pub fn stop(&self) {
        if let Some(running) = self.running.lock().expect("receiver lock").take() {
            let _ = running.stop.send(());
        }
    }

    /// Stops the subscription and removes the token from the keychain.
    pub fn sign_out(&self) -> Result<(), ReceiverError> {
        let running = self.running.lock().expect("receiver lock").take();
        let Some(running) = running else {
            return Err(ReceiverError::NotSignedIn);
        };
        let _ = running.stop.send(());
        let deleted = secrets::delete_token(&running.server, &running.user);
        let _ = self.events.send(Event::SignedOut);
        Ok(deleted?)
    }

    /// Lists the inbox.
    pub fn list(&self, filter: &Filter) -> Result<Vec<Row>, ReceiverError> {
        Ok(self.inbox.lock().expect("inbox lock").list(filter)?)
    }

    /// Acknowledges notifications (ids as `channel/id` or bare ids): at once in the inbox, at the
    /// relay through the running subscription (or on its next connection).
    pub fn acknowledge(&self, ids: &[String]) -> Result<(), ReceiverError> {
        let resolved = self.inbox.lock().expect("inbox lock").resolve(ids)?;
        match &*self.running.lock().expect("receiver lock") {
            Some(running) => {
                for ack in resolved {
                    let _ = running.acks.send(ack);
                }
            }
            None => self
                .inbox
                .lock()
                .expect("inbox lock")
                .mark_acked(&resolved)?,
        }
        Ok(())
    }

    /// Marks notifications read.
    pub fn mark_read(&self, ids: &[String]) -> Result<(), ReceiverError> {
        let mut inbox = self.inbox.lock().expect("inbox lock");
        let resolved = inbox.resolve(ids)?;
        Ok(inbox.mark_read(&resolved)?)
    }

    /// The alert settings in force.
    pub fn alert_settings(&self) -> AlertSettings {
        *self.alert_settings.read().expect("alert settings lock")
    }

    /// Changes the alert settings: kept in the settings file, applied from the next alert on, and
    /// announced as [`Event::AlertSettingsChanged`].
    pub fn set_alert_settings(&self, alerts: AlertSettings) -> Result<(), ReceiverError> {
        Settings::update(&self.settings_path, |settings| settings.alerts = alerts)
            .map_err(ReceiverError::Settings)?;
        *self.alert_settings.write().expect("alert settings lock") = alerts;
        let _ = self.events.send(Event::AlertSettingsChanged { alerts });
        Ok(())
    }

    /// Pauses non-critical alerts until `until` (Unix ms), or resumes them (`None`).
    pub fn pause_alerts(&self, until: Option<u64>) -> Result<(), ReceiverError> {
        self.set_alert_settings(AlertSettings {
            paused_until: until,
            ..self.alert_settings()
        })
    }

    /// Where things stand.
    pub fn status(&self) -> Result<Status, ReceiverError> {
        let running = self.running.lock().expect("receiver lock");
        let inbox = self.inbox.lock().expect("inbox lock");
        Ok(Status {
            user: running.as_ref().map(|r| r.user.clone()),
            server: running.as_ref().map(|r| r.server.clone()),
            connection: inbox
                .state("connection")?
                .unwrap_or_else(|| "never started".into()),
            detail: inbox.state("detail")?.unwrap_or_default(),
            counts: inbox.counts()?,
            gaps: inbox.gaps()?,
            alerts: self.alert_settings(),
        })
    }
}

/// Carries out what the person does with desktop alerts: "Acknowledge" through the subscription,
/// a click as [`Event::AlertOpened`] for the app to show the notification.
async fn follow_alert_actions(
    mut chosen: mpsc::UnboundedReceiver<AlertAction>,
    acks: mpsc::UnboundedSender<Acknowledgement>,
    events: broadcast::Sender<Event>,
) {
    while let Some(action) = chosen.recv().await {
        match action {
            AlertAction::Acknowledge(notification) => {
                let _ = acks.send(notification);
            }
            AlertAction::Open(notification) => {
                let (channel, id) = notification.unzip();
                let _ = events.send(Event::AlertOpened { channel, id });
            }
        }
    }
}
