//! Alerts through `tauri-plugin-notification`: how the app alerts on mobile (Android notification
//! channels, iOS notifications). Critical results go to their own high-importance channel with an
//! "Acknowledge" action; tapping an alert opens the app on its notification.
//!
//! The plugin also runs on desktop, so this path is compiled (and can be tried with
//! `WARDLINE_ALERTS=plugin`) where no mobile toolchain exists; desktop normally uses the receiver's
//! own alerter, which can set critical urgency.

use crate::EVENT;
use std::sync::Arc;
use tauri::{AppHandle, Emitter, Manager};
use tauri_plugin_notification::{Action, ActionType, NotificationExt};
use wardline_client::Event;
use wardline_client::alert::{ACKNOWLEDGE_ACTION, Alert, AlertAction, Alerter, Urgency};
use wardline_client::receiver::Receiver;
use wardline_protocol::{Channel, Cursor};

/// The action type of critical alerts (offers "Acknowledge").
const CRITICAL_ACTIONS: &str = "critical";
/// The notification channel of critical results (Android).
const CRITICAL_CHANNEL: &str = "critical-results";
/// The notification channel of everything else (Android).
const UPDATES_CHANNEL: &str = "updates";

/// Raises alerts through the notification plugin.
pub struct PluginAlerter {
    app: AppHandle,
}

impl PluginAlerter {
    /// Registers the channels and the "Acknowledge" action, and follows what the person does with
    /// the alerts: "Acknowledge" acknowledges, a tap shows the notification.
    pub fn install(app: &AppHandle) -> Result<PluginAlerter, String> {
        let notifications = app.notification();
        notifications
            .register_action_types(vec![
                ActionType::builder(CRITICAL_ACTIONS)
                    .actions(vec![
                        Action::builder(ACKNOWLEDGE_ACTION, "Acknowledge").build(),
                    ])
                    .build(),
            ])
            .map_err(|e| e.to_string())?;
        #[cfg(target_os = "android")]
        {
            use tauri_plugin_notification::{Channel as AndroidChannel, Importance};
            for (id, name, importance) in [
                (CRITICAL_CHANNEL, "Critical results", Importance::High),
                (UPDATES_CHANNEL, "Updates", Importance::Default),
            ] {
                let channel = AndroidChannel::builder(id, name)
                    .importance(importance)
                    .vibration(true)
                    .build();
                notifications
                    .create_channel(channel)
                    .map_err(|e| e.to_string())?;
            }
        }
        let handle = app.clone();
        notifications
            .on_action(move |performed| {
                let target = performed.notification().and_then(|n| {
                    let extra = n.extra();
                    let channel = Channel::parse(extra.get("channel")?.as_str()?).ok()?;
                    let id: Cursor = extra.get("id")?.as_str()?.parse().ok()?;
                    Some((channel, id))
                });
                match (performed.action_id(), target) {
                    (ACKNOWLEDGE_ACTION, Some(target)) => {
                        // Stored at once, whatever the subscription's state; sent when it can be.
                        if let Some(receiver) = handle.try_state::<Arc<Receiver>>() {
                            let receiver = receiver.inner().clone();
                            tauri::async_runtime::spawn(async move {
                                let action = AlertAction::Acknowledge(target);
                                if let Err(e) = receiver.alert_action(action).await {
                                    tracing::error!(error = %e, "could not acknowledge from the alert");
                                }
                            });
                        }
                    }
                    ("tap", target) => {
                        crate::commands::show_main_window(&handle);
                        let (channel, id) = target.unzip();
                        let _ = handle.emit(EVENT, Event::AlertOpened { channel, id });
                    }
                    _ => {}
                }
            })
            .map_err(|e| e.to_string())?;
        Ok(PluginAlerter { app: app.clone() })
    }
}

impl Alerter for PluginAlerter {
    fn raise(&self, alert: &Alert) -> Result<(), String> {
        let critical = alert.urgency == Urgency::Critical;
        let mut builder = self
            .app
            .notification()
            .builder()
            .title(&alert.summary)
            .body(&alert.body)
            .channel_id(if critical {
                CRITICAL_CHANNEL
            } else {
                UPDATES_CHANNEL
            })
            .auto_cancel();
        if let Some((channel, id)) = &alert.notification {
            // The id lets a later alert for the same notification replace this one.
            builder = builder
                .id(notification_id(channel, *id))
                .extra("channel", channel.to_string())
                .extra("id", id.to_string());
        }
        if alert.acknowledgeable {
            builder = builder.action_type_id(CRITICAL_ACTIONS);
        }
        if alert.sound.is_none() {
            builder = builder.silent();
        }
        builder.show().map_err(|e| e.to_string())
    }
}

/// A positive 31-bit id per notification (the platforms want an `i32`).
fn notification_id(channel: &Channel, id: Cursor) -> i32 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (channel.as_str(), id.to_string()).hash(&mut hasher);
    (hasher.finish() & 0x7fff_ffff) as i32
}
