//! The window's commands: each calls the receiver and maps its errors to `{code, message}`. All are
//! async: they run on the async runtime, never on the main thread, and the receiver does its SQLite,
//! keychain and file work on blocking threads, so the window stays responsive during a catch-up.
//! A command that comes while the receiver is still opening waits for it (`inbox_unavailable` if it
//! could not be opened).

use crate::AppAlerts;
use crate::opening::AppReceiver;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tauri::{AppHandle, Manager, State};
use wardline_client::{AlertSettings, Pause};
use wardline_client::{Filter, Row};
use wardline_client::{Receiver, ReceiverError, Status};
use wardline_protocol::{Priority, Sensitive};

/// An error as the window sees it.
#[derive(Debug, Serialize)]
pub struct CommandError {
    code: &'static str,
    message: String,
}

impl From<ReceiverError> for CommandError {
    fn from(e: ReceiverError) -> CommandError {
        CommandError {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

impl CommandError {
    fn new(code: &'static str, message: impl std::fmt::Display) -> CommandError {
        CommandError {
            code,
            message: message.to_string(),
        }
    }
}

type Result<T> = std::result::Result<T, CommandError>;

/// The receiver, waiting while it opens; why it could not be opened otherwise.
async fn opened(receiver: &AppReceiver) -> Result<Arc<Receiver>> {
    receiver.get().await.map_err(|e| {
        CommandError::new(
            "inbox_unavailable",
            format!("the inbox could not be opened: {e}"),
        )
    })
}

/// What the inbox view asks for.
#[derive(Debug, Default, Deserialize)]
pub struct InboxQuery {
    #[serde(default)]
    unread: bool,
    #[serde(default)]
    critical: bool,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    search: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
}

/// Signs in with a token (checked with the relay, kept in the OS keychain).
#[tauri::command]
pub async fn sign_in(
    receiver: State<'_, AppReceiver>,
    alerts: State<'_, AppAlerts>,
    server: String,
    user: String,
    token: String,
) -> Result<()> {
    opened(&receiver)
        .await?
        .sign_in(&server, &user, Sensitive::new(token), alerts.0.clone())
        .await?;
    Ok(())
}

/// Signs out.
#[tauri::command]
pub async fn sign_out(receiver: State<'_, AppReceiver>) -> Result<()> {
    Ok(opened(&receiver).await?.sign_out().await?)
}

/// The inbox, newest first.
#[tauri::command]
pub async fn inbox(receiver: State<'_, AppReceiver>, query: InboxQuery) -> Result<Vec<Row>> {
    let filter = Filter {
        unread: query.unread,
        priority: query.critical.then_some(Priority::Critical),
        kind: query.kind.filter(|k| !k.is_empty()),
        search: query.search.filter(|s| !s.trim().is_empty()),
        limit: query.limit.unwrap_or(200),
        ..Filter::default()
    };
    Ok(opened(&receiver).await?.list(filter).await?)
}

/// Acknowledges notifications (`channel/id`): stored at once, sent to the relay when it can be.
#[tauri::command]
pub async fn acknowledge(receiver: State<'_, AppReceiver>, ids: Vec<String>) -> Result<()> {
    opened(&receiver).await?.acknowledge(ids).await?;
    Ok(())
}

/// Declines notifications (`channel/id`): "not me / cannot now"; the relay escalates them at once.
#[tauri::command]
pub async fn decline(receiver: State<'_, AppReceiver>, ids: Vec<String>) -> Result<()> {
    opened(&receiver).await?.decline(ids).await?;
    Ok(())
}

/// A notification's state and trail, from the relay.
#[tauri::command]
pub async fn trail(receiver: State<'_, AppReceiver>, id: String) -> Result<serde_json::Value> {
    Ok(opened(&receiver).await?.trail(id).await?)
}

/// Marks notifications read (`channel/id`).
#[tauri::command]
pub async fn mark_read(receiver: State<'_, AppReceiver>, ids: Vec<String>) -> Result<()> {
    opened(&receiver).await?.mark_read(ids).await?;
    Ok(())
}

/// Connection state, counts and gaps.
#[tauri::command]
pub async fn status(receiver: State<'_, AppReceiver>) -> Result<Status> {
    Ok(opened(&receiver).await?.status().await?)
}

/// What the settings screen shows.
#[derive(Debug, Serialize)]
pub struct SettingsView {
    server: Option<String>,
    user: Option<String>,
    alerts: AlertSettings,
    /// `None` where the platform has no start at login (mobile).
    start_at_login: Option<bool>,
}

/// The settings: relay and user signed in, alert settings, start at login.
#[tauri::command]
pub async fn settings(app: AppHandle, receiver: State<'_, AppReceiver>) -> Result<SettingsView> {
    let status = opened(&receiver).await?.status().await?;
    Ok(SettingsView {
        server: status.server,
        user: status.user,
        alerts: status.alerts,
        start_at_login: start_at_login(&app)?,
    })
}

/// Changes quiet hours, sound and pause at once.
#[tauri::command]
pub async fn set_alert_settings(
    receiver: State<'_, AppReceiver>,
    alerts: AlertSettings,
) -> Result<()> {
    Ok(opened(&receiver).await?.set_alert_settings(alerts).await?)
}

/// Pauses non-critical alerts for an hour or until morning, or resumes them.
#[tauri::command]
pub async fn pause_alerts(receiver: State<'_, AppReceiver>, pause: Pause) -> Result<()> {
    Ok(opened(&receiver)
        .await?
        .pause_alerts(pause.until(chrono::Local::now()))
        .await?)
}

/// Starts the app at login (hidden in the tray), or stops doing so.
#[tauri::command(async)]
pub fn set_start_at_login(app: AppHandle, enabled: bool) -> Result<()> {
    #[cfg(desktop)]
    {
        use tauri_plugin_autostart::ManagerExt;
        let autostart = app.autolaunch();
        let changed = if enabled {
            autostart.enable()
        } else {
            autostart.disable()
        };
        changed.map_err(|e| CommandError::new("autostart", e))
    }
    #[cfg(mobile)]
    {
        let _ = (app, enabled);
        Err(CommandError::new(
            "unsupported",
            "start at login is a desktop setting",
        ))
    }
}

fn start_at_login(app: &AppHandle) -> Result<Option<bool>> {
    #[cfg(desktop)]
    {
        use tauri_plugin_autostart::ManagerExt;
        app.autolaunch()
            .is_enabled()
            .map(Some)
            .map_err(|e| CommandError::new("autostart", e))
    }
    #[cfg(mobile)]
    {
        let _ = app;
        Ok(None)
    }
}

/// Shows and focuses the main window.
pub fn show_main_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        if !window.is_visible().unwrap_or(false) {
            let _ = window.show();
        }
        if window.is_minimized().unwrap_or(false) {
            let _ = window.unminimize();
        }
        let _ = window.set_focus();
    }
}
