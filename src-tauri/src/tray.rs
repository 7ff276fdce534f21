//! The tray (desktop): an icon that says connected, reconnecting, offline (or not receiving: a
//! failure of this device, with why) or critical waiting, and a
//! menu that starts with the same in words and the unread count (Linux's AppIndicator shows no
//! tooltips, so the tooltip only repeats it), then Open, Pause non-critical alerts (1 h / until
//! morning) or Resume them, Sign out, Quit.

use crate::commands::show_main_window;
use crate::opening::AppReceiver;
use std::sync::Mutex;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem, PredefinedMenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager};
use wardline_client::ConnectionState;
use wardline_client::Event;
use wardline_client::Status;
use wardline_client::{MORNING_HOUR, Pause};

const TRAY: &str = "wardline";

/// The menu items that follow the receiver's state.
struct TrayItems {
    status: MenuItem<tauri::Wry>,
    pause_hour: MenuItem<tauri::Wry>,
    pause_morning: MenuItem<tauri::Wry>,
    resume: MenuItem<tauri::Wry>,
    /// What the tray shows now: each change is work on the main thread (a new icon is also a file
    /// written for the AppIndicator), so only what differs is set.
    shown: Mutex<Shown>,
}

/// The icon and the words the tray shows.
#[derive(Default, PartialEq)]
struct Shown {
    icon: &'static str,
    tooltip: String,
    status: String,
}

fn icon(state: &str) -> Option<Image<'static>> {
    let bytes: &'static [u8] = match state {
        "connected" => include_bytes!("../icons/tray-connected.png"),
        "reconnecting" => include_bytes!("../icons/tray-reconnecting.png"),
        "critical" => include_bytes!("../icons/tray-critical.png"),
        _ => include_bytes!("../icons/tray-offline.png"),
    };
    Image::from_bytes(bytes).ok()
}

/// Builds the tray icon and its menu.
pub fn build(app: &AppHandle) -> tauri::Result<()> {
    let status = MenuItem::with_id(app, "status", "Starting…", false, None::<&str>)?;
    let open = MenuItem::with_id(app, "open", "Open Wardline", true, None::<&str>)?;
    let pause_hour = MenuItem::with_id(
        app,
        "pause_hour",
        "Pause non-critical alerts for 1 hour",
        true,
        None::<&str>,
    )?;
    let pause_morning = MenuItem::with_id(
        app,
        "pause_morning",
        format!("Pause non-critical alerts until {MORNING_HOUR:02}:00"),
        true,
        None::<&str>,
    )?;
    let resume = MenuItem::with_id(
        app,
        "resume",
        "Resume non-critical alerts",
        false,
        None::<&str>,
    )?;
    let sign_out = MenuItem::with_id(app, "sign_out", "Sign out", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(
        app,
        &[
            &status,
            &PredefinedMenuItem::separator(app)?,
            &open,
            &PredefinedMenuItem::separator(app)?,
            &pause_hour,
            &pause_morning,
            &resume,
            &PredefinedMenuItem::separator(app)?,
            &sign_out,
            &quit,
        ],
    )?;
    app.manage(TrayItems {
        status,
        pause_hour,
        pause_morning,
        resume,
        shown: Mutex::new(Shown {
            icon: "offline",
            tooltip: "Wardline — starting".into(),
            status: "Starting…".into(),
        }),
    });
    let mut tray = TrayIconBuilder::with_id(TRAY)
        .menu(&menu)
        .tooltip("Wardline — starting");
    if let Some(image) = icon("offline") {
        tray = tray.icon(image);
    }
    // Menu events arrive on the main thread: what touches the receiver runs on the async runtime.
    tray.on_menu_event(|app, event| {
        let receiver = app.try_state::<AppReceiver>().and_then(|r| r.now());
        let pause = |pause: Pause| {
            let Some(receiver) = receiver.clone() else {
                return;
            };
            tauri::async_runtime::spawn(async move {
                if let Err(e) = receiver
                    .pause_alerts(pause.until(chrono::Local::now()))
                    .await
                {
                    tracing::error!(error = %e, "could not change the pause of alerts");
                }
            });
        };
        match event.id().as_ref() {
            "open" => show_main_window(app),
            "pause_hour" => pause(Pause::Hour),
            "pause_morning" => pause(Pause::UntilMorning),
            "resume" => pause(Pause::Off),
            "sign_out" => {
                if let Some(receiver) = receiver.clone() {
                    tauri::async_runtime::spawn(async move {
                        let _ = receiver.sign_out().await;
                    });
                }
            }
            "quit" => app.exit(0),
            _ => {}
        }
    })
    .build(app)?;
    // Once the receiver is open, the menu shows whether alerts are paused.
    let app = app.clone();
    tauri::async_runtime::spawn(async move {
        let Some(slot) = app.try_state::<AppReceiver>() else {
            return;
        };
        if let Ok(receiver) = slot.get().await
            && let Ok(status) = receiver.status().await
        {
            show_pause(&app, &status);
        }
    });
    Ok(())
}

/// Makes the tray tell the truth after some events.
pub async fn reflect(app: &AppHandle, events: &[Event]) {
    let Some(tray) = app.tray_by_id(TRAY) else {
        return;
    };
    let Some(receiver) = app.try_state::<AppReceiver>().and_then(|r| r.now()) else {
        return;
    };
    let Ok(status) = receiver.status().await else {
        return;
    };
    let items = app.try_state::<TrayItems>();
    let wanted = if status.user.is_none() {
        Shown {
            icon: "offline",
            tooltip: "Wardline — signed out".into(),
            status: "Signed out".into(),
        }
    } else {
        let icon = if status.counts.unacked_critical > 0 {
            "critical"
        } else if status.not_receiving_since.is_some() {
            "offline"
        } else {
            match status.connection {
                ConnectionState::Connected => "connected",
                ConnectionState::Reconnecting => "reconnecting",
                ConnectionState::NeverStarted
                | ConnectionState::SignInRequired
                | ConnectionState::Untrusted
                | ConnectionState::Stopped
                | ConnectionState::Failed => "offline",
            }
        };
        let state = match status.not_receiving_since {
            _ if status.connection == ConnectionState::Failed => {
                format!("Not receiving: {}", status.detail)
            }
            Some(since) => format!(
                "Not receiving critical results (offline since {})",
                local_time(since)
            ),
            None => capitalised(&status.connection.in_words()),
        };
        let summary = format!(
            "{state} — {} unread, {} critical not acknowledged",
            status.counts.unread, status.counts.unacked_critical
        );
        let mut tooltip = format!("Wardline — {summary}");
        if let Some(until) = paused_until(&status) {
            tooltip.push_str(&format!(" — non-critical alerts paused until {until}"));
        }
        Shown {
            icon,
            tooltip,
            status: summary,
        }
    };
    let Some(items) = items else {
        return;
    };
    {
        let mut shown = items.shown.lock().expect("tray lock");
        if wanted.icon != shown.icon {
            let _ = tray.set_icon(icon(wanted.icon));
        }
        if wanted.tooltip != shown.tooltip {
            let _ = tray.set_tooltip(Some(&wanted.tooltip));
        }
        if wanted.status != shown.status {
            let _ = items.status.set_text(&wanted.status);
        }
        *shown = wanted;
    }
    if status.user.is_none() {
        return;
    }
    if events
        .iter()
        .any(|e| matches!(e, Event::AlertSettingsChanged { .. }))
    {
        show_pause(app, &status);
    }
}

/// Says in the tray that nothing will be received: the inbox could not be opened.
pub fn show_unavailable(app: &AppHandle, reason: &str) {
    let Some(tray) = app.tray_by_id(TRAY) else {
        return;
    };
    let _ = tray.set_icon(icon("offline"));
    let _ = tray.set_tooltip(Some(&format!(
        "Wardline — not receiving: the inbox could not be opened ({reason})"
    )));
    if let Some(items) = app.try_state::<TrayItems>() {
        let _ = items
            .status
            .set_text("Not receiving: the inbox could not be opened");
    }
}

fn capitalised(text: &str) -> String {
    let mut chars = text.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// `HH:MM`, local time, of a Unix time in milliseconds.
fn local_time(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map(|at| at.with_timezone(&chrono::Local).format("%H:%M").to_string())
        .unwrap_or_default()
}

/// `HH:MM` the pause ends, if non-critical alerts are paused.
fn paused_until(status: &Status) -> Option<String> {
    let until = status.alerts.paused_until?;
    let until = chrono::DateTime::from_timestamp_millis(until as i64)?;
    (until > chrono::Utc::now()).then(|| {
        until
            .with_timezone(&chrono::Local)
            .format("%H:%M")
            .to_string()
    })
}

/// Enables "Resume" while paused, the pauses otherwise.
fn show_pause(app: &AppHandle, status: &Status) {
    let Some(items) = app.try_state::<TrayItems>() else {
        return;
    };
    let paused = paused_until(status);
    let _ = items.resume.set_text(match &paused {
        Some(until) => format!("Resume non-critical alerts (paused until {until})"),
        None => "Resume non-critical alerts".into(),
    });
    let _ = items.resume.set_enabled(paused.is_some());
    let _ = items.pause_hour.set_enabled(paused.is_none());
    let _ = items.pause_morning.set_enabled(paused.is_none());
}
