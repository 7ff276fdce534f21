//! OS alerts: what to raise for newly stored notifications (pure policy), and the desktop
//! implementation on notify-rust (freedesktop notifications over D-Bus on Linux).
//!
//! A critical notification (a critical lab result) is raised on its own with critical urgency, no
//! timeout, an alarm sound and an "Acknowledge" action that acknowledges it; others get normal
//! urgency, and a burst of them (catching up after being offline) becomes one summary instead of
//! a flood. In quiet hours only critical alerts are raised; everything is still stored.

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

/// Hours in which only critical alerts are raised, e.g. `22:00-07:00` (local time; may wrap midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    start_minute: u16,
    end_minute: u16,
}

impl QuietHours {
    /// Parses `HH:MM-HH:MM`.
    pub fn parse(text: &str) -> Result<QuietHours, String> {
        let minute = |t: &str| -> Option<u16> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        let bad =
            || format!("invalid quiet hours {text:?}: expected HH:MM-HH:MM, e.g. 22:00-07:00");
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        Ok(QuietHours {
            start_minute: minute(start).ok_or_else(bad)?,
            end_minute: minute(end).ok_or_else(bad)?,
        })
    }

    /// Whether a minute of the day (0 to 1439) is quiet.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        if self.start_minute <= self.end_minute {
            (self.start_minute..self.end_minute).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_minute || minute_of_day < self.end_minute
        }
    }

    /// Whether it is quiet now, in local time.
    pub fn now(&self) -> bool {
        use chrono::Timelike;
        let now = chrono::Local::now();
        self.contains((now.hour() * 60 + now.minute()) as u16)
    }
}

/// The alerts for notifications just stored; in quiet hours, only the critical ones.
pub fn alerts_for(rows: &[Row], quiet: bool) -> Vec<Alert> {
    let (critical, others): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| r.priority == Priority::Critical);
    let others = if quiet { Vec::new() } else { others };
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

    /// Whether only critical alerts should be raised now.
    fn quiet(&self) -> bool {
        false
    }
}

/// Alerts through the desktop's notification service (notify-rust).
pub struct DesktopAlerter {
    acknowledged: mpsc::UnboundedSender<(Channel, Cursor)>,
    quiet_hours: Option<QuietHours>,
    failed_once: Mutex<bool>,
}

impl DesktopAlerter {
    /// An alerter whose "Acknowledge" actions are sent to `acknowledged`.
    pub fn new(
        acknowledged: mpsc::UnboundedSender<(Channel, Cursor)>,
        quiet_hours: Option<QuietHours>,
    ) -> DesktopAlerter {
        DesktopAlerter {
            acknowledged,
            quiet_hours,
            failed_once: Mutex::new(false),
        }
    }
}

impl Alerter for DesktopAlerter {
    fn quiet(&self) -> bool {
        self.quiet_hours.is_some_and(|q| q.now())
    }

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
        let alerts = alerts_for(&rows, false);
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].urgency, Urgency::Critical);
        assert!(alerts[0].persistent);
        assert_eq!(
            alerts[0].acknowledges,
            Some((rows[0].channel.clone(), Cursor::new(1, 0)))
        );
        assert_eq!(alerts[1].summary, "5 new notifications");
        assert_eq!(alerts[1].urgency, Urgency::Normal);
        let few = alerts_for(&rows[1..3], false);
        assert_eq!(
            few.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(),
            ["note 2", "note 3"]
        );
        assert!(
            few.iter()
                .all(|a| !a.persistent && a.acknowledges.is_none())
        );
        let quiet = alerts_for(&rows, true);
        assert_eq!(quiet.len(), 1, "quiet hours keep only the critical alert");
        assert_eq!(quiet[0].urgency, Urgency::Critical);
    }

    #[test]
    fn quiet_hours_may_wrap_midnight() {
        let night = QuietHours::parse("22:00-07:00").unwrap();
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(6 * 60 + 59));
        assert!(!night.contains(7 * 60) && !night.contains(12 * 60));
        let lunch = QuietHours::parse("12:00-13:30").unwrap();
        assert!(lunch.contains(12 * 60 + 45) && !lunch.contains(13 * 60 + 30));
        assert!(QuietHours::parse("25:00-07:00").is_err() && QuietHours::parse("22:00").is_err());
    }
}
