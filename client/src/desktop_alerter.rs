//! The desktop alerter: alerts through the desktop's notification service — on Linux and the BSDs
//! the freedesktop service over one D-Bus connection (`crate::freedesktop`), elsewhere notify-rust.
//! Which alerts to raise, and how they read, is `crate::alert`'s.

use crate::alert::{Alert, AlertAction, Alerter, NotificationRef};
use std::sync::Mutex;
use tokio::sync::mpsc;

/// Alerts through the desktop's notification service: on Linux and the BSDs the freedesktop
/// service over one D-Bus connection ([`crate::freedesktop`]), with "Open" and "Acknowledge";
/// elsewhere notify-rust (macOS, Windows), without actions (the window acknowledges there).
pub struct DesktopAlerter {
    #[cfg_attr(
        not(all(unix, not(target_vendor = "apple"), not(target_os = "android"))),
        allow(dead_code)
    )]
    actions: mpsc::UnboundedSender<AlertAction>,
    failed_once: Mutex<bool>,
    #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
    notifications: tokio::sync::Mutex<Option<crate::freedesktop::Notifications>>,
}

impl DesktopAlerter {
    /// An alerter that sends what the person does with its alerts to `actions`.
    pub fn new(actions: mpsc::UnboundedSender<AlertAction>) -> DesktopAlerter {
        DesktopAlerter {
            actions,
            failed_once: Mutex::new(false),
            #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
            notifications: tokio::sync::Mutex::new(None),
        }
    }

    /// Raises through the freedesktop service, connecting first if need be; a failed call drops
    /// the connection so that the next alert connects again (the bus or the service may be back).
    #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
    fn show(&self, alert: &Alert) -> Result<(), String> {
        // Called on a blocking thread of the runtime (alerts are raised off the async workers).
        tokio::runtime::Handle::current().block_on(async {
            let mut notifications = self.notifications.lock().await;
            if notifications.is_none() {
                let connected = crate::freedesktop::Notifications::connect(self.actions.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                *notifications = Some(connected);
            }
            let raised = match notifications.as_ref() {
                Some(service) => service.raise(alert).await.map(|_| ()),
                None => return Err("not connected".to_owned()),
            };
            if raised.is_err() {
                *notifications = None;
            }
            raised.map_err(|e| e.to_string())
        })
    }

    #[cfg(not(all(unix, not(target_vendor = "apple"), not(target_os = "android"))))]
    fn show(&self, alert: &Alert) -> Result<(), String> {
        let mut notification = notify_rust::Notification::new();
        notification
            .appname("Wardline")
            .summary(&alert.summary)
            .body(&alert.body);
        if alert.persistent {
            notification.timeout(notify_rust::Timeout::Never);
        }
        if let Some(sound) = alert.sound {
            notification.sound_name(sound);
        }
        notification.show().map(|_| ()).map_err(|e| e.to_string())
    }
}

impl Alerter for DesktopAlerter {
    #[cfg(all(unix, not(target_vendor = "apple"), not(target_os = "android")))]
    fn withdraw(&self, notification: Option<&NotificationRef>) -> Result<(), String> {
        tokio::runtime::Handle::current().block_on(async {
            match self.notifications.lock().await.as_ref() {
                Some(service) => service
                    .withdraw(notification)
                    .await
                    .map_err(|e| e.to_string()),
                None => Ok(()),
            }
        })
    }

    #[cfg(not(all(unix, not(target_vendor = "apple"), not(target_os = "android"))))]
    fn withdraw(&self, _notification: Option<&NotificationRef>) -> Result<(), String> {
        Ok(())
    }

    fn raise(&self, alert: &Alert) -> Result<(), String> {
        let shown = self.show(alert);
        if let Err(e) = &shown {
            let mut failed = self.failed_once.lock().expect("alerter lock");
            if !*failed {
                *failed = true;
                tracing::warn!(error = %e, "OS alerts are unavailable; notifications are still stored");
            }
        }
        shown
    }
}
