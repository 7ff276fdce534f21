//! OS alerts: what to raise for newly stored notifications (pure policy), and the desktop
//! implementation on notify-rust (freedesktop notifications over D-Bus on Linux).
//!
//! A critical notification (a critical lab result) is raised on its own with critical urgency, no
//! timeout, an alarm sound and an "Acknowledge" action that acknowledges it; others get normal
//! urgency, and a burst of them (catching up after being offline) becomes one summary instead of
//! a flood.

use crate::inbox::Row;
use std::sync::Mutex;
use tokio::sync::mpsc;
use wardline_protocol::{Channel, Cursor, Priority};

/// More non-critical notifications than this in one batch are summarised in one alert.
const SUMMARY_OVER: usize = 3;

/// The action key of "Acknowledge".
pub const ACKNOWLEDGE_ACTION: &str = "acknowledge";

/// How insistent an alert is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Urgency {
    /// Informational.
    Low,
    /// The default.
    Normal,
    /// Stays until dealt with.
    Critical,
}

/// One OS alert to raise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The headline.
    pub summary: String,
    /// The detail.
    pub body: String,
    /// How insistent.
    pub urgency: Urgency,
    /// Never times out.
    pub persistent: bool,
    /// A freedesktop sound name.
    pub sound: Option<&'static str>,
    /// The notification an "Acknowledge" action acknowledges.
    pub acknowledges: Option<(Channel, Cursor)>,
}

/// The alerts for notifications just stored.
pub fn alerts_for(rows: &[Row]) -> Vec<Alert> {
    let (critical, others): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| r.priority == Priority::Critical);
    let mut alerts: Vec<Alert> = critical
        .iter()
        .map(|row| Alert {
            summary: row.title.clone(),
            body: row.body.clone(),
            urgency: Urgency::Critical,
            persistent: true,
            sound: Some("alarm-clock-elapsed"),
            acknowledges: Some((row.channel.clone(), row.id)),
        })
        .collect();
    let normal = |row: &Row| Alert {
        summary: row.title.clone(),
        body: row.body.clone(),
        urgency: if row.priority == Priority::Low {
            Urgency::Low
        } else {
            Urgency::Normal
        },
        persistent: false,
        sound: Some("message-new-instant"),
        acknowledges: None,
    };
    if others.len() > SUMMARY_OVER {
        let titles: Vec<&str> = others.iter().take(3).map(|r| r.title.as_str()).collect();
        alerts.push(Alert {
            summary: format!("{} new notifications", others.len()),
            body: format!("{}, …", titles.join(", ")),
            urgency: Urgency::Normal,
            persistent: false,
            sound: Some("message-new-instant"),
            acknowledges: None,
        });
    } else {
        alerts.extend(others.into_iter().map(normal));
    }
    alerts
}

/// Raises OS alerts.
pub trait Alerter: Send + Sync {
    /// Raises one alert; returns when the OS accepted it (not when the person reacts).
    fn raise(&self, alert: &Alert) -> Result<(), String>;
}

/// Alerts through the desktop's notification service (notify-rust).
pub struct DesktopAlerter {
    acknowledged: mpsc::UnboundedSender<(Channel, Cursor)>,
    failed_once: Mutex<bool>,
}

impl DesktopAlerter {
    /// An alerter whose "Acknowledge" actions are sent to `acknowledged`.
    pub fn new(acknowledged: mpsc::UnboundedSender<(Channel, Cursor)>) -> DesktopAlerter {
        DesktopAlerter {
            acknowledged,
            failed_once: Mutex::new(false),
        }
    }
}

impl Alerter for DesktopAlerter {
    fn raise(&self, alert: &Alert) -> Result<(), String> {
        let mut notification = notify_rust::Notification::new();
        notification
            .appname("Wardline")
            .summary(&alert.summary)
            .body(&alert.body);
        notification.urgency(match alert.urgency {
            Urgency::Low => notify_rust::Urgency::Low,
            Urgency::Normal => notify_rust::Urgency::Normal,
            Urgency::Critical => notify_rust::Urgency::Critical,
        });
        if alert.persistent {
            notification.timeout(notify_rust::Timeout::Never);
        }
        if let Some(sound) = alert.sound {
            notification.sound_name(sound);
        }
        if alert.acknowledges.is_some() {
            notification.action(ACKNOWLEDGE_ACTION, "Acknowledge");
        }
        let handle = match notification.show() {
            Ok(handle) => handle,
            Err(e) => {
                let mut failed = self.failed_once.lock().expect("alerter lock");
                if !*failed {
                    *failed = true;
                    tracing::error!(error = %e, "OS alerts are unavailable; notifications are still stored");
                }
                return Err(e.to_string());
            }
        };
        if let Some(target) = alert.acknowledges.clone() {
            let acknowledged = self.acknowledged.clone();
            // Waiting for the person blocks: one thread per outstanding critical alert.
            std::thread::spawn(move || {
                handle.wait_for_action(|action| {
                    if action == ACKNOWLEDGE_ACTION {
                        let _ = acknowledged.send(target);
                    }
                });
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(n: u64, priority: Priority, title: &str) -> Row {
        Row {
            id: Cursor::new(n, 0),
            channel: Channel::parse("doctor:d1:notifications").unwrap(),
            kind: "t".into(),
            priority,
            title: title.into(),
            body: "b".into(),
            message: json!({}),
            sent_at: String::new(),
            received_at: 0,
            read_at: None,
            acked_at: None,
        }
    }

    #[test]
    fn critical_results_alert_loudly_each_and_others_are_summarised_in_bursts() {
        let mut rows = vec![row(
            1,
            Priority::Critical,
            "Critical lab result — BMP for Bob Wilson",
        )];
        rows.extend((2..7).map(|n| row(n, Priority::Normal, &format!("note {n}"))));
        let alerts = alerts_for(&rows);
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].urgency, Urgency::Critical);
        assert!(alerts[0].persistent);
        assert_eq!(
            alerts[0].acknowledges,
            Some((rows[0].channel.clone(), Cursor::new(1, 0)))
        );
        assert_eq!(alerts[1].summary, "5 new notifications");
        assert_eq!(alerts[1].urgency, Urgency::Normal);
        let few = alerts_for(&rows[1..3]);
        assert_eq!(
            few.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(),
            ["note 2", "note 3"]
        );
        assert!(
            few.iter()
                .all(|a| !a.persistent && a.acknowledges.is_none())
        );
    }
}
