//! The window's commands: each calls the receiver and maps its errors to `{code, message}`.

use crate::alerts;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use tauri::{AppHandle, Manager, State};
use wardline_client::inbox::{Filter, Row};
use wardline_client::receiver::{Receiver, ReceiverError, Status};
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

type Result<T> = std::result::Result<T, CommandError>;

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
    receiver: State<'_, Arc<Receiver>>,
    server: String,
    user: String,
    token: String,
) -> Result<()> {
    Ok(receiver
        .sign_in(&server, &user, Sensitive::new(token), alerts())
        .await?)
}

/// Signs out.
#[tauri::command]
pub fn sign_out(receiver: State<'_, Arc<Receiver>>) -> Result<()> {
    Ok(receiver.sign_out()?)
}

/// The inbox, newest first.
#[tauri::command]
pub fn inbox(receiver: State<'_, Arc<Receiver>>, query: InboxQuery) -> Result<Vec<Row>> {
    let filter = Filter {
        unread: query.unread,
        priority: query.critical.then_some(Priority::Critical),
        kind: query.kind.filter(|k| !k.is_empty()),
        search: query.search.filter(|s| !s.trim().is_empty()),
        limit: query.limit.unwrap_or(200),
        ..Filter::default()
    };
    Ok(receiver.list(&filter)?)
}

/// Acknowledges notifications (`channel/id`).
#[tauri::command]
pub fn acknowledge(receiver: State<'_, Arc<Receiver>>, ids: Vec<String>) -> Result<()> {
    Ok(receiver.acknowledge(&ids)?)
}

/// Marks notifications read (`channel/id`).
#[tauri::command]
pub fn mark_read(receiver: State<'_, Arc<Receiver>>, ids: Vec<String>) -> Result<()> {
    Ok(receiver.mark_read(&ids)?)
}

/// Connection state, counts and gaps.
#[tauri::command]
pub fn status(receiver: State<'_, Arc<Receiver>>) -> Result<Status> {
    Ok(receiver.status()?)
}

/// Shows and focuses the main window.
pub fn show_main_window(app: &AppHandle) {
    if let Some(window) = app.get_webview_window("main") {
        let _ = window.show();
        let _ = window.unminimize();
        let _ = window.set_focus();
    }
}
