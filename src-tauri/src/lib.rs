//! Wardline app: the tray app over the receiver (`wardline-client`). Everything the app does is the
//! receiver's; this crate only wires it to Tauri:
//! - `commands`: the few-line commands the window calls, errors mapped to `{code, message}`;
//! - `tray` (desktop): the tray icon and menu, which always show the connection's truth;
//! - `plugin_alerts`: alerts through the notification plugin (mobile);
//! - `opening`: the receiver, opened off the main thread, which commands wait for;
//! - `forward`: the receiver's events to the window and the tray, paced during a catch-up;
//! - `run`: the builder — single instance, start at login, close-to-tray, events forwarded to the
//!   window, a clicked alert opening the window on its notification.

mod commands;
mod forward;
mod opening;
mod plugin_alerts;
#[cfg(desktop)]
mod tray;

use opening::AppReceiver;
use std::sync::Arc;
use tauri::Manager;
use wardline_client::{Alerts, Place, Receiver, Trust, Wardline};

/// The event every receiver event is forwarded on, to the window.
pub const EVENT: &str = "wardline://event";

/// The receiver's door: on a desktop the place the command line uses too (one inbox: `wardline
/// ack` acts on what the window shows), on a phone the app's own data directory.
fn door(app: &tauri::AppHandle) -> Result<Wardline, String> {
    let trust = Trust::from_env().map_err(|e| e.to_string())?;
    let place = if cfg!(mobile) {
        Place::in_dir(&app.path().app_data_dir().unwrap_or_else(|_| ".".into()))
    } else {
        Place::desktop()
    };
    Ok(Wardline::new(place, trust))
}

/// The command-line flag autostart passes: start hidden in the tray.
const HIDDEN_FLAG: &str = "--hidden";

/// How the app raises OS alerts, chosen once at start.
pub(crate) struct AppAlerts(Alerts);

/// On desktop, the receiver's alerter (critical urgency, alarm sound, "Acknowledge"); on mobile,
/// or with `WARDLINE_ALERTS=plugin`, the notification plugin.
fn choose_alerts(app: &tauri::AppHandle) -> Alerts {
    let plugin = cfg!(mobile) || std::env::var("WARDLINE_ALERTS").as_deref() == Ok("plugin");
    if !plugin {
        return Alerts::Desktop;
    }
    match plugin_alerts::PluginAlerter::install(app) {
        Ok(alerter) => Alerts::Custom(Arc::new(alerter)),
        Err(e) => {
            tracing::error!(error = %e, "OS alerts are unavailable; notifications are still stored");
            Alerts::Off
        }
    }
}

/// Without a GPU (virtual desktops, thin clients, Xvfb) WebKitGTK's accelerated compositing renders
/// in software and repaints constantly: measured idle with 100,000 stored, the web process used
/// 10 % of a core with it and under 1 % without (bench/results/app.md). WebKit reads
/// `WEBKIT_DISABLE_COMPOSITING_MODE` only at start, and setting a variable in a running process is
/// `unsafe` (forbidden here), so where there is no render node the app starts itself again with the
/// variable set, in place (same process id), before anything else runs.
#[cfg(target_os = "linux")]
fn without_gpu_disable_compositing() {
    const VARIABLE: &str = "WEBKIT_DISABLE_COMPOSITING_MODE";
    let has_gpu = std::fs::read_dir("/dev/dri").is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
    });
    if has_gpu || std::env::var_os(VARIABLE).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let error = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VARIABLE, "1")
        .exec();
    // Only reached if the exec failed: carry on with compositing.
    eprintln!("wardline-app: could not restart without compositing: {error}");
}

/// Once the receiver is open: its events to the window and the tray, and the subscription, as the
/// account the door resolves (WARDLINE_SERVER, _USER and _TOKEN for kiosks, the demo and tests, as
/// for the command line; otherwise the last sign-in).
async fn start(handle: tauri::AppHandle, receiver: Arc<Receiver>, alerts: Alerts) {
    forward::spawn(handle, receiver.events());
    if let Err(e) = receiver.resume(alerts).await {
        tracing::warn!(error = %e, "could not resume the last sign-in");
    }
}

/// Runs the app.
#[cfg_attr(mobile, tauri::mobile_entry_point)]
pub fn run() {
    #[cfg(target_os = "linux")]
    without_gpu_disable_compositing();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDLINE_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        // Colour for a person at a terminal, never escape codes in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let mut builder = tauri::Builder::default().plugin(tauri_plugin_notification::init());
    #[cfg(desktop)]
    {
        builder = builder
            .plugin(tauri_plugin_single_instance::init(|app, _args, _cwd| {
                commands::show_main_window(app);
            }))
            .plugin(tauri_plugin_autostart::init(
                tauri_plugin_autostart::MacosLauncher::LaunchAgent,
                Some(vec![HIDDEN_FLAG]),
            ));
    }
    builder
        .invoke_handler(tauri::generate_handler![
            commands::sign_in,
            commands::sign_out,
            commands::inbox,
            commands::acknowledge,
            commands::decline,
            commands::trail,
            commands::mark_read,
            commands::status,
            commands::settings,
            commands::set_alert_settings,
            commands::pause_alerts,
            commands::set_start_at_login,
        ])
        .setup(|app| {
            let alerts = choose_alerts(app.handle());
            app.manage(AppAlerts(alerts.clone()));
            // Opening reads the inbox's key from the keychain and opens SQLite: not on this, the
            // main thread. Commands wait for it; what follows runs once it is open.
            let (receiver, opening) = AppReceiver::open(door(app.handle()));
            app.manage(receiver);
            #[cfg(desktop)]
            tray::build(app.handle())?;
            // After the tray, so that a failure to open shows in it.
            let handle = app.handle().clone();
            tauri::async_runtime::spawn(async move {
                match opening.await {
                    Ok(receiver) => start(handle, receiver, alerts).await,
                    Err(e) => {
                        tracing::error!(error = %e, "the inbox could not be opened: nothing is received");
                        #[cfg(desktop)]
                        tray::show_unavailable(&handle, &e);
                    }
                }
            });
            // The window starts hidden (tauri.conf.json) so that a start at login stays in the tray.
            let hidden = cfg!(desktop) && std::env::args().any(|arg| arg == HIDDEN_FLAG);
            if !hidden {
                commands::show_main_window(app.handle());
            }
            Ok(())
        })
        .on_window_event(|window, event| {
            // Closing hides the window: the app keeps receiving in the tray until Quit.
            #[cfg(desktop)]
            if let tauri::WindowEvent::CloseRequested { api, .. } = event {
                api.prevent_close();
                let _ = window.hide();
            }
            #[cfg(mobile)]
            let _ = (window, event);
        })
        .run(tauri::generate_context!("../tauri.conf.json"))
        .expect("running the Wardline app");
}
