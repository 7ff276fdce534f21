//! Alerts through `tauri-plugin-notification`: how the app alerts on mobile (Android notification
//! channels, iOS notifications). Critical results go to their own high-importance channel with
//! "Acknowledge" and "Decline" actions; tapping an alert opens the app on its notification. Both
//! channels are private on the lock screen (Android shows that an alert came, not what it says).
//!
//! The plugin also runs on desktop, so this path is compiled (and can be tried with
//! `WARDLINE_ALERTS=plugin`) where no mobile toolchain exists; desktop normally uses the receiver's
//! own alerter, which can set critical urgency.

use crate::EVENT;
use crate::opening::AppReceiver;
use tauri::{AppHandle, Emitter, Manager};
use tauri_plugin_notification::{Action, ActionType, NotificationExt};
use wardline_client::{
    ACKNOWLEDGE_ACTION, Alert, AlertAction, Alerter, DECLINE_ACTION, Event, NotificationRef,
    Urgency,
};
use wardline_protocol::{Channel, Cursor};

/// The action type of critical alerts (offers "Acknowledge").
const CRITICAL_ACTIONS: &str = "critical";
/// The notification channel of critical results (Android).
const CRITICAL_CHANNEL: &str = "critical-results";
/// The notification channel of everything else (Android).
const UPDATES_CHANNEL: &str = "updates";
/// The alert id of the "not receiving critical results" alarm.
const NOT_RECEIVING_ID: i32 = 1;

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
                        Action::builder(DECLINE_ACTION, "Decline").build(),
                    ])
                    .build(),
            ])
            .map_err(|e| e.to_string())?;
        #[cfg(target_os = "android")]
        {
            use tauri_plugin_notification::{Channel as AndroidChannel, Importance, Visibility};
            for (id, name, importance) in [
                (CRITICAL_CHANNEL, "Critical results", Importance::High),
                (UPDATES_CHANNEL, "Updates", Importance::Default),
            ] {
                let channel = AndroidChannel::builder(id, name)
                    .importance(importance)
                    .visibility(Visibility::Private)
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
                let action_id = performed.action_id();
                match (action_id, target) {
                    (ACKNOWLEDGE_ACTION | DECLINE_ACTION, Some(target)) => {
                        // Stored at once, whatever the subscription's state; sent when it can be.
                        if let Some(receiver) =
                            handle.try_state::<AppReceiver>().and_then(|r| r.now())
                        {
                            let action = if action_id == DECLINE_ACTION {
                                AlertAction::Decline(target)
                            } else {
                                AlertAction::Acknowledge(target)
                            };
                            tauri::async_runtime::spawn(async move {
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
    fn withdraw(&self, notification: Option<&NotificationRef>) -> Result<(), String> {
        let id = match notification {
            Some((channel, id)) => notification_id(channel, *id),
            None => NOT_RECEIVING_ID,
        };
        self.app
            .notification()
            .remove_active(vec![id])
            .map_err(|e| e.to_string())
    }

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
        if alert.notification.is_none() && critical {
            // The "not receiving" alarm: one at a time, withdrawn when connected again.
            builder = builder.id(NOT_RECEIVING_ID);
        }
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
