//! The tray (desktop): an icon that says connected, reconnecting, offline or critical waiting, a
//! tooltip with the unread count, and a menu: Open, Sign out, Quit.

use crate::commands::show_main_window;
use std::sync::Arc;
use tauri::image::Image;
use tauri::menu::{Menu, MenuItem};
use tauri::tray::TrayIconBuilder;
use tauri::{AppHandle, Manager};
use wardline_client::Event;
use wardline_client::receiver::Receiver;

const TRAY: &str = "wardline";

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
    let open = MenuItem::with_id(app, "open", "Open Wardline", true, None::<&str>)?;
    let sign_out = MenuItem::with_id(app, "sign_out", "Sign out", true, None::<&str>)?;
    let quit = MenuItem::with_id(app, "quit", "Quit", true, None::<&str>)?;
    let menu = Menu::with_items(app, &[&open, &sign_out, &quit])?;
    let mut tray = TrayIconBuilder::with_id(TRAY)
        .menu(&menu)
        .tooltip("Wardline — starting");
    if let Some(image) = icon("offline") {
        tray = tray.icon(image);
    }
    tray.on_menu_event(|app, event| match event.id().as_ref() {
        "open" => show_main_window(app),
        "sign_out" => {
            if let Some(receiver) = app.try_state::<Arc<Receiver>>() {
                let _ = receiver.sign_out();
            }
        }
        "quit" => app.exit(0),
        _ => {}
    })
    .build(app)?;
    Ok(())
}

/// Makes the tray tell the truth after an event.
pub fn reflect(app: &AppHandle, event: &Event) {
    let Some(tray) = app.tray_by_id(TRAY) else {
        return;
    };
    let Some(receiver) = app.try_state::<Arc<Receiver>>() else {
        return;
    };
    let Ok(status) = receiver.status() else {
        return;
    };
    let state = if status.counts.unacked_critical > 0 {
        "critical"
    } else {
        match event {
            Event::Connected { .. }
            | Event::NotificationStored { .. }
            | Event::GapDetected { .. } => "connected",
            Event::Connecting { .. } | Event::Reconnecting { .. } => "reconnecting",
            Event::SignInRequired { .. } => "offline",
        }
    };
    let _ = tray.set_icon(icon(state));
    let tooltip = format!(
        "Wardline — {} — {} unread, {} critical not acknowledged",
        status.connection, status.counts.unread, status.counts.unacked_critical
    );
    let _ = tray.set_tooltip(Some(tooltip));
}
