//! Alerts on the freedesktop notification service (Linux, the BSDs) over one D-Bus connection kept
//! for the process: every `Notify` goes out on it, and one task follows its `ActionInvoked` and
//! `NotificationClosed` signals for the alerts it raised. (A connection per alert, as notify-rust
//! opens, would have to stay open until the alert is closed, and GNOME reports no close while an
//! alert is listed; GNOME also withdraws an alert whose sender's connection closed.)

use crate::alert::{
    ACKNOWLEDGE_ACTION, Alert, AlertAction, DECLINE_ACTION, NotificationRef, OPEN_ACTION, Urgency,
};
use futures_util::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

const SERVICE: &str = "org.freedesktop.Notifications";
const PATH: &str = "/org/freedesktop/Notifications";
/// Most alerts remembered for their actions (the oldest are forgotten first).
const MOST_REMEMBERED: usize = 10_000;

/// What an alert on screen stands for.
#[derive(Clone)]
struct Raised {
    notification: Option<NotificationRef>,
    acknowledgeable: bool,
    /// The "not receiving" alarm (no notification, critical).
    alarm: bool,
}

#[derive(Default)]
struct Remembered {
    by_id: HashMap<u32, Raised>,
    order: VecDeque<u32>,
}

/// The session bus's notification service, as this process uses it.
pub struct Notifications {
    proxy: zbus::Proxy<'static>,
    remembered: Arc<Mutex<Remembered>>,
}

impl Notifications {
    /// Connects to the session bus and follows the service's signals, sending what the person does
    /// with this process's alerts to `actions`.
    pub async fn connect(
        actions: mpsc::UnboundedSender<AlertAction>,
    ) -> zbus::Result<Notifications> {
        let connection = zbus::Connection::session().await?;
        let proxy = zbus::Proxy::new_owned(connection, SERVICE, PATH, SERVICE).await?;
        let remembered = Arc::new(Mutex::new(Remembered::default()));
        let mut invoked = proxy.receive_signal("ActionInvoked").await?;
        let mut closed = proxy.receive_signal("NotificationClosed").await?;
        let follow = remembered.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    Some(signal) = invoked.next() => {
                        let Ok((id, action)) = signal.body().deserialize::<(u32, String)>() else { continue };
                        let Some(raised) = follow.lock().expect("alerts lock").by_id.get(&id).cloned() else { continue };
                        let _ = match (action.as_str(), raised.notification) {
                            (ACKNOWLEDGE_ACTION, Some(target)) if raised.acknowledgeable => {
                                actions.send(AlertAction::Acknowledge(target))
                            }
                            (DECLINE_ACTION, Some(target)) if raised.acknowledgeable => {
                                actions.send(AlertAction::Decline(target))
                            }
                            (OPEN_ACTION, target) => actions.send(AlertAction::Open(target)),
                            _ => Ok(()),
                        };
                    }
                    Some(signal) = closed.next() => {
                        if let Ok((id, _reason)) = signal.body().deserialize::<(u32, u32)>() {
                            follow.lock().expect("alerts lock").by_id.remove(&id);
                        }
                    }
                    else => return,
                }
            }
        });
        Ok(Notifications { proxy, remembered })
    }

    /// The id of the alert on screen about `notification` (`None`: the "not receiving" alarm).
    fn on_screen(&self, notification: Option<&NotificationRef>) -> Option<u32> {
        let remembered = self.remembered.lock().expect("alerts lock");
        remembered
            .order
            .iter()
            .rev()
            .find(|id| {
                remembered.by_id.get(id).is_some_and(|raised| {
                    raised.notification.as_ref() == notification
                        && (notification.is_some() || raised.alarm)
                })
            })
            .copied()
    }

    /// Closes the alert about `notification` (or the "not receiving" alarm), if one is on screen.
    pub async fn withdraw(&self, notification: Option<&NotificationRef>) -> zbus::Result<()> {
        let Some(id) = self.on_screen(notification) else {
            return Ok(());
        };
        self.remembered
            .lock()
            .expect("alerts lock")
            .by_id
            .remove(&id);
        self.proxy
            .call::<_, _, ()>("CloseNotification", &(id,))
            .await
    }

    /// Raises an alert: critical urgency and no timeout for critical results, "Open" (a click on
    /// the alert) always, "Acknowledge" and "Decline" when it can be acknowledged. An alert about
    /// a notification already on screen (a reminder) replaces that one.
    pub async fn raise(&self, alert: &Alert) -> zbus::Result<u32> {
        let mut actions = vec![OPEN_ACTION, "Open"];
        if alert.acknowledgeable {
            actions.extend([ACKNOWLEDGE_ACTION, "Acknowledge", DECLINE_ACTION, "Decline"]);
        }
        let alarm = alert.notification.is_none() && alert.urgency == Urgency::Critical;
        let replaces = if alert.notification.is_some() || alarm {
            self.on_screen(alert.notification.as_ref()).unwrap_or(0)
        } else {
            0
        };
        let urgency: u8 = match alert.urgency {
            Urgency::Low => 0,
            Urgency::Normal => 1,
            Urgency::Critical => 2,
        };
        let mut hints: HashMap<&str, zbus::Variant<'_>> = HashMap::new();
        hints.insert("urgency", urgency.into());
        if let Some(sound) = alert.sound {
            hints.insert("sound-name", sound.into());
        }
        let timeout: i32 = if alert.persistent { 0 } else { -1 };
        let id: u32 = self
            .proxy
            .call(
                "Notify",
                &(
                    "Wardline",
                    replaces,
                    "",
                    &alert.summary,
                    &alert.body,
                    actions,
                    hints,
                    timeout,
                ),
            )
            .await?;
        let mut remembered = self.remembered.lock().expect("alerts lock");
        remembered.by_id.insert(
            id,
            Raised {
                notification: alert.notification.clone(),
                acknowledgeable: alert.acknowledgeable,
                alarm,
            },
        );
        if !remembered.order.contains(&id) {
            remembered.order.push_back(id);
        }
        while remembered.order.len() > MOST_REMEMBERED {
            if let Some(oldest) = remembered.order.pop_front() {
                remembered.by_id.remove(&oldest);
            }
        }
        Ok(id)
    }
}
