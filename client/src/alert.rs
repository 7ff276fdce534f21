//! OS alerts: what to raise for newly stored notifications (pure policy over the person's
//! [`AlertSettings`]) and the [`Alerter`] trait that raises them (the desktop alerter implements it).
//!
//! A critical notification (a critical lab result) is raised on its own with critical urgency, no
//! timeout, an alarm sound and an "Acknowledge" action that acknowledges it; others get normal
//! urgency, and a burst of them (catching up after being offline) becomes one summary instead of
//! a flood. In quiet hours, or while non-critical alerts are paused, only critical alerts are
//! raised; everything is still stored. Critical results always sound: the sound setting is for the
//! others. Clicking an alert asks to open the app on its notification ([`AlertAction::Open`]).

use crate::inbox::Row;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, RwLock};
use wardline_protocol::{Channel, Cursor, Priority};

/// More non-critical notifications than this in one batch are summarised in one alert.
const SUMMARY_OVER: usize = 3;

/// The action key of "Acknowledge".
pub const ACKNOWLEDGE_ACTION: &str = "acknowledge";
/// The action key of "Decline" ("not me / cannot now": the relay escalates at once).
pub const DECLINE_ACTION: &str = "decline";
/// The freedesktop action key of clicking the alert itself.
pub const OPEN_ACTION: &str = "default";

/// A notification, by channel and id.
pub type NotificationRef = (Channel, Cursor);

/// What the person did with an alert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AlertAction {
    /// Chose "Acknowledge" on a critical alert.
    Acknowledge(NotificationRef),
    /// Chose "Decline" on a critical alert: someone else must take it.
    Decline(NotificationRef),
    /// Clicked the alert: open the app on its notification (`None`: a summary, open the inbox).
    Open(Option<NotificationRef>),
}

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
    /// The notification the alert is about (`None` for a summary of several).
    pub notification: Option<NotificationRef>,
    /// Whether the alert offers "Acknowledge" (critical results).
    pub acknowledgeable: bool,
}

/// Hours in which only critical alerts are raised, e.g. `22:00-07:00` (local time; may wrap midnight).
/// Written as that text in settings and on the wire to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
}

impl TryFrom<String> for QuietHours {
    type Error = String;
    fn try_from(text: String) -> Result<QuietHours, String> {
        QuietHours::parse(&text)
    }
}

impl From<QuietHours> for String {
    fn from(quiet: QuietHours) -> String {
        quiet.to_string()
    }
}

impl std::fmt::Display for QuietHours {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (s, e) = (self.start_minute, self.end_minute);
        write!(f, "{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60)
    }
}

/// The person's alert preferences: the `[alerts]` table of the settings file, changed from the
/// app's settings screen and tray.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AlertSettings {
    /// Hours in which only critical alerts are raised.
    pub quiet_hours: Option<QuietHours>,
    /// Whether non-critical alerts make a sound (critical results always do).
    pub sound: bool,
    /// Until when (Unix ms) non-critical alerts are paused.
    pub paused_until: Option<u64>,
    /// Whether alerts show what a notification says (a patient's name, a result). Off by default:
    /// an alert on a locked screen says only what kind of notification waits ("Critical lab
    /// result — open Wardline").
    pub show_details: bool,
}

/// Alert settings shared by whoever changes them and the subscription that applies them to the next
/// alert.
pub type SharedAlertSettings = Arc<RwLock<AlertSettings>>;

impl Default for AlertSettings {
    fn default() -> AlertSettings {
        AlertSettings {
            quiet_hours: None,
            sound: true,
            paused_until: None,
            show_details: false,
        }
    }
}

impl AlertSettings {
    /// Whether non-critical alerts are held back at `now` (quiet hours or a pause).
    pub fn holds_non_critical(&self, now: chrono::DateTime<chrono::Local>) -> bool {
        use chrono::Timelike;
        let paused = self
            .paused_until
            .is_some_and(|until| (now.timestamp_millis() as u64) < until);
        let quiet = self
            .quiet_hours
            .is_some_and(|q| q.contains((now.hour() * 60 + now.minute()) as u16));
        paused || quiet
    }
}

/// A pause of non-critical alerts, as the tray and the settings screen offer it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pause {
    /// For one hour.
    Hour,
    /// Until the next 07:00 (the morning handover).
    UntilMorning,
    /// No pause: alert again now.
    Off,
}

/// The hour "until morning" ends at.
pub const MORNING_HOUR: u32 = 7;

impl Pause {
    /// When the pause started at `now` ends (Unix ms), if it is one.
    pub fn until(self, now: chrono::DateTime<chrono::Local>) -> Option<u64> {
        let end = match self {
            Pause::Off => return None,
            Pause::Hour => now + chrono::Duration::hours(1),
            Pause::UntilMorning => {
                let today = now
                    .date_naive()
                    .and_hms_opt(MORNING_HOUR, 0, 0)
                    .expect("a valid time");
                let next = if now.naive_local() < today {
                    today
                } else {
                    today + chrono::Duration::days(1)
                };
                // A morning that falls in a clock change resolves to its earliest instant.
                next.and_local_timezone(chrono::Local)
                    .earliest()
                    .unwrap_or(now + chrono::Duration::hours(12))
            }
        };
        Some(end.timestamp_millis() as u64)
    }
}

/// The alerts for notifications just stored, under the person's settings at `now`.
pub fn alerts_for(
    rows: &[Row],
    settings: &AlertSettings,
    now: chrono::DateTime<chrono::Local>,
) -> Vec<Alert> {
    let (critical, others): (Vec<&Row>, Vec<&Row>) =
        rows.iter().partition(|r| r.priority == Priority::Critical);
    let others = if settings.holds_non_critical(now) {
        Vec::new()
    } else {
        others
    };
    let sound = settings.sound.then_some("message-new-instant");
    let text = |row: &Row| {
        if settings.show_details {
            (row.title.clone(), row.body.clone())
        } else {
            (
                format!("{} — open Wardline", kind_label(row)),
                String::from("Details are hidden on this screen."),
            )
        }
    };
    let mut alerts: Vec<Alert> = critical
        .iter()
        .map(|row| Alert {
            summary: text(row).0,
            body: text(row).1,
            urgency: Urgency::Critical,
            persistent: true,
            sound: Some("alarm-clock-elapsed"),
            notification: Some((row.channel.clone(), row.id)),
            acknowledgeable: true,
        })
        .collect();
    let normal = |row: &Row| Alert {
        summary: text(row).0,
        body: text(row).1,
        urgency: if row.priority == Priority::Low {
            Urgency::Low
        } else {
            Urgency::Normal
        },
        persistent: false,
        sound,
        notification: Some((row.channel.clone(), row.id)),
        acknowledgeable: false,
    };
    if others.len() > SUMMARY_OVER {
        let titles: Vec<String> = others.iter().take(3).map(|r| text(r).0).collect();
        alerts.push(Alert {
            summary: format!("{} new notifications", others.len()),
            body: if settings.show_details {
                format!("{}, …", titles.join(", "))
            } else {
                String::from("Open Wardline to see them.")
            },
            urgency: Urgency::Normal,
            persistent: false,
            sound,
            notification: None,
            acknowledgeable: false,
        });
    } else {
        alerts.extend(others.into_iter().map(normal));
    }
    alerts
}

/// What kind of notification a row is, in words that say nothing of its content.
pub fn kind_label(row: &Row) -> &'static str {
    match row.kind.as_str() {
        "critical_lab_result" => "Critical lab result",
        "lab_result" | "lab_result_ready" => "Lab result",
        "escalation" => "Critical result waiting for a backup",
        kind if kind.starts_with("appointment") => "Appointment update",
        _ if row.channel == Channel::system_alerts() => "System alert",
        _ if row.priority == Priority::Critical => "Critical notification",
        _ => "New notification",
    }
}

/// The local alarm raised when this device has not been connected for a while: it cannot be
/// receiving critical results.
pub fn not_receiving_alert(offline_for: std::time::Duration) -> Alert {
    Alert {
        summary: "You are not receiving critical results".into(),
        body: format!(
            "Wardline has not reached the relay for {} min. Check the network, or use another device.",
            offline_for.as_secs() / 60
        ),
        urgency: Urgency::Critical,
        persistent: true,
        sound: Some("alarm-clock-elapsed"),
        notification: None,
        acknowledgeable: false,
    }
}

/// The alarm raised when this device stopped receiving on a failure of its own (the inbox cannot be
/// written, the receiver stopped): it replaces and is withdrawn like the "not receiving" alarm.
pub fn failed_alert(reason: &str) -> Alert {
    Alert {
        summary: "Wardline stopped receiving".into(),
        body: format!(
            "{reason}. Nothing new reaches this device until it is fixed; use another device meanwhile."
        ),
        urgency: Urgency::Critical,
        persistent: true,
        sound: Some("alarm-clock-elapsed"),
        notification: None,
        acknowledgeable: false,
    }
}

/// Raises OS alerts.
pub trait Alerter: Send + Sync {
    /// Raises one alert; returns when the OS accepted it (not when the person reacts). An alert
    /// about a notification that already has one on screen replaces it.
    fn raise(&self, alert: &Alert) -> Result<(), String>;

    /// Withdraws the alert about a notification (handled on another device), or with `None` the
    /// "not receiving" alarm, if one is on screen.
    fn withdraw(&self, notification: Option<&NotificationRef>) -> Result<(), String>;
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

    /// 2026-11-23 at `hh:mm` local time.
    fn at(hh: u32, mm: u32) -> chrono::DateTime<chrono::Local> {
        use chrono::TimeZone;
        chrono::Local
            .with_ymd_and_hms(2026, 11, 23, hh, mm, 0)
            .single()
            .unwrap()
    }

    #[test]
    fn by_default_alerts_say_what_kind_of_notification_waits_and_nothing_of_it() {
        let mut critical = row(
            1,
            Priority::Critical,
            "Critical lab result — BMP for Bob Wilson",
        );
        critical.kind = "critical_lab_result".into();
        critical.body = "Potassium 6.9 mmol/L".into();
        let mut appointment = row(2, Priority::Normal, "Appointment confirmed with Dr Smith");
        appointment.kind = "appointment_confirmed".into();
        let rows = [critical, appointment];
        let alerts = alerts_for(&rows, &AlertSettings::default(), at(12, 0));
        assert_eq!(alerts[0].summary, "Critical lab result — open Wardline");
        assert_eq!(alerts[1].summary, "Appointment update — open Wardline");
        for alert in &alerts {
            for secret in ["Bob", "Wilson", "BMP", "6.9", "Smith"] {
                assert!(
                    !alert.summary.contains(secret) && !alert.body.contains(secret),
                    "{alert:?} shows {secret}"
                );
            }
        }
        assert!(alerts[0].acknowledgeable, "still Acknowledge and Decline");
        let many: Vec<Row> = (3..9)
            .map(|n| row(n, Priority::Normal, &format!("Bob Wilson note {n}")))
            .collect();
        let summary = &alerts_for(&many, &AlertSettings::default(), at(12, 0))[0];
        assert!(!summary.body.contains("Bob"), "{summary:?}");
    }

    #[test]
    fn critical_results_alert_loudly_each_and_others_are_summarised_in_bursts() {
        let mut rows = vec![row(
            1,
            Priority::Critical,
            "Critical lab result — BMP for Bob Wilson",
        )];
        rows.extend((2..7).map(|n| row(n, Priority::Normal, &format!("note {n}"))));
        let settings = AlertSettings {
            show_details: true,
            ..AlertSettings::default()
        };
        let alerts = alerts_for(&rows, &settings, at(12, 0));
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0].urgency, Urgency::Critical);
        assert!(alerts[0].persistent && alerts[0].acknowledgeable);
        assert_eq!(
            alerts[0].notification,
            Some((rows[0].channel.clone(), Cursor::new(1, 0)))
        );
        assert_eq!(alerts[1].summary, "5 new notifications");
        assert_eq!(alerts[1].urgency, Urgency::Normal);
        assert_eq!(alerts[1].notification, None, "a summary opens the inbox");
        let few = alerts_for(&rows[1..3], &settings, at(12, 0));
        assert_eq!(
            few.iter().map(|a| a.summary.as_str()).collect::<Vec<_>>(),
            ["note 2", "note 3"]
        );
        assert!(few.iter().all(|a| !a.persistent && !a.acknowledgeable));
        assert_eq!(
            few[1].notification,
            Some((rows[2].channel.clone(), rows[2].id))
        );
    }

    #[test]
    fn quiet_hours_pauses_and_silence_hold_back_only_what_is_not_critical() {
        let rows = [
            row(1, Priority::Critical, "critical"),
            row(2, Priority::Normal, "normal"),
        ];
        let night = AlertSettings {
            quiet_hours: Some(QuietHours::parse("22:00-07:00").unwrap()),
            ..AlertSettings::default()
        };
        let quiet = alerts_for(&rows, &night, at(23, 30));
        assert_eq!(quiet.len(), 1, "quiet hours keep only the critical alert");
        assert_eq!(quiet[0].urgency, Urgency::Critical);
        assert_eq!(alerts_for(&rows, &night, at(7, 0)).len(), 2);

        let paused = AlertSettings {
            paused_until: Some(at(13, 0).timestamp_millis() as u64),
            ..AlertSettings::default()
        };
        assert_eq!(alerts_for(&rows, &paused, at(12, 59)).len(), 1);
        assert_eq!(
            alerts_for(&rows, &paused, at(13, 0)).len(),
            2,
            "the pause ends"
        );

        let silent = AlertSettings {
            sound: false,
            ..AlertSettings::default()
        };
        let alerts = alerts_for(&rows, &silent, at(12, 0));
        assert_eq!(
            alerts[0].sound,
            Some("alarm-clock-elapsed"),
            "critical always sounds"
        );
        assert_eq!(alerts[1].sound, None);
    }

    #[test]
    fn pauses_end_in_an_hour_or_at_the_next_morning() {
        let ms = |t: chrono::DateTime<chrono::Local>| Some(t.timestamp_millis() as u64);
        assert_eq!(Pause::Hour.until(at(12, 30)), ms(at(13, 30)));
        assert_eq!(Pause::UntilMorning.until(at(5, 0)), ms(at(7, 0)));
        assert_eq!(
            Pause::UntilMorning.until(at(21, 0)),
            ms(at(7, 0) + chrono::Duration::days(1))
        );
        assert_eq!(Pause::Off.until(at(12, 0)), None);
    }

    #[test]
    fn alert_settings_are_written_as_text_and_default_when_missing() {
        let settings = AlertSettings {
            quiet_hours: Some(QuietHours::parse("22:00-7:05").unwrap()),
            sound: false,
            paused_until: Some(1),
            show_details: true,
        };
        let text = serde_json::to_string(&settings).unwrap();
        assert_eq!(
            text,
            r#"{"quiet_hours":"22:00-07:05","sound":false,"paused_until":1,"show_details":true}"#
        );
        assert_eq!(
            serde_json::from_str::<AlertSettings>(&text).unwrap(),
            settings
        );
        assert_eq!(
            serde_json::from_str::<AlertSettings>("{}").unwrap(),
            AlertSettings::default()
        );
        let bad = serde_json::from_str::<AlertSettings>(r#"{"quiet_hours":"late"}"#);
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("expected HH:MM-HH:MM")
        );
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
