//! Priorities and HealthHub's notification types, with titles and bodies a person can read.
//!
//! Payloads stay the publisher's JSON, untouched; these functions only look into them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How urgently a notification must reach a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Informational.
    Low,
    /// The default.
    Normal,
    /// Needs attention soon.
    High,
    /// Needs a person now (a critical lab result): loud, persistent, acknowledged.
    Critical,
}

impl Priority {
    /// The priority's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
            Priority::Critical => "critical",
        }
    }

    /// Parses a priority name.
    pub fn parse(name: &str) -> Option<Priority> {
        match name {
            "low" => Some(Priority::Low),
            "normal" => Some(Priority::Normal),
            "high" => Some(Priority::High),
            "critical" => Some(Priority::Critical),
            _ => None,
        }
    }

    /// The priority a message gets when its publisher names none: `critical_lab_result` is critical,
    /// any other message marked `"urgent": true` is high, the rest normal.
    pub fn default_for(message: &Value) -> Priority {
        if message_type(message) == Some("critical_lab_result") {
            Priority::Critical
        } else if message.get("urgent").and_then(Value::as_bool) == Some(true) {
            Priority::High
        } else {
            Priority::Normal
        }
    }
}

/// The message's `type` field, if it has one.
pub fn message_type(message: &Value) -> Option<&str> {
    message.get("type").and_then(Value::as_str)
}

fn field<'a>(message: &'a Value, name: &str) -> Option<&'a str> {
    message
        .get(name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// A readable title and body for a notification, for OS alerts, inbox rows and Diagnoxix frames.
pub fn describe(message: &Value) -> (String, String) {
    let get = |name: &str| field(message, name).unwrap_or("?");
    match message_type(message) {
        Some("critical_lab_result") => (
            format!(
                "Critical lab result — {} for {}",
                get("test_type"),
                get("patient_name")
            ),
            // The value, where the laboratory's backend sends one (a field beyond HealthHub's).
            match field(message, "value") {
                Some(value) => format!("{} {value} — requires review now.", get("test_type")),
                None => "Requires review now.".to_owned(),
            },
        ),
        Some("lab_result_available") => {
            let reviewed = message.get("reviewed").and_then(Value::as_bool) == Some(true);
            (
                format!("Lab result available — {}", get("test_type")),
                if reviewed {
                    "Your result is ready and has been reviewed by your doctor.".to_owned()
                } else {
                    "Your result is ready; your doctor has not reviewed it yet.".to_owned()
                },
            )
        }
        Some("appointment_requested") => {
            let mut body = format!("{}: {}", get("patient_name"), get("reason"));
            if let Some(time) = field(message, "requested_time") {
                body.push_str(&format!(" — requested for {time}"));
            }
            (
                format!("Appointment requested by {}", get("patient_name")),
                body,
            )
        }
        Some("appointment_status_changed") => {
            let mut body = format!("Your appointment is now {}", get("new_status"));
            if let Some(time) = field(message, "scheduled_time") {
                body.push_str(&format!(", scheduled for {time}"));
            }
            (format!("Appointment {}", get("new_status")), body + ".")
        }
        Some("new_prescription") => (
            format!("New prescription — {}", get("medication")),
            format!("Prescribed by {}.", get("doctor_name")),
        ),
        other => {
            let title = field(message, "title")
                .map(str::to_owned)
                .or_else(|| other.map(humanize))
                .unwrap_or_else(|| "Notification".to_owned());
            let body = ["message", "content", "text", "body"]
                .into_iter()
                .find_map(|name| field(message, name))
                .unwrap_or_default()
                .to_owned();
            (title, body)
        }
    }
}

/// `system_notification` → `System notification`.
fn humanize(kind: &str) -> String {
    let spaced = kind.replace('_', " ");
    let mut chars = spaced.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => spaced,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn critical_lab_results_are_critical_and_urgent_ones_high() {
        assert_eq!(
            Priority::default_for(&json!({"type": "critical_lab_result"})),
            Priority::Critical
        );
        assert_eq!(
            Priority::default_for(&json!({"type": "x", "urgent": true})),
            Priority::High
        );
        assert_eq!(
            Priority::default_for(&json!({"type": "new_prescription"})),
            Priority::Normal
        );
        assert_eq!(
            Priority::default_for(&json!("not an object")),
            Priority::Normal
        );
    }

    #[test]
    fn healthhub_types_read_as_sentences() {
        let critical = json!({"type": "critical_lab_result", "urgent": true, "result_id": "r1",
            "patient_name": "Bob Wilson", "test_type": "BMP", "requires_review": true});
        assert_eq!(
            describe(&critical),
            (
                "Critical lab result — BMP for Bob Wilson".into(),
                "Requires review now.".into()
            )
        );
        let with_value = json!({"type": "critical_lab_result", "patient_name": "Bob Wilson",
            "test_type": "Potassium", "value": "6.8 mmol/L"});
        assert_eq!(
            describe(&with_value).1,
            "Potassium 6.8 mmol/L — requires review now."
        );
        let rx = json!({"type": "new_prescription", "medication": "Amoxicillin", "doctor_name": "Dr. Smith"});
        assert_eq!(
            describe(&rx),
            (
                "New prescription — Amoxicillin".into(),
                "Prescribed by Dr. Smith.".into()
            )
        );
        let status = json!({"type": "appointment_status_changed", "new_status": "Confirmed",
            "scheduled_time": "2025-02-01T10:00:00Z"});
        assert_eq!(
            describe(&status),
            (
                "Appointment Confirmed".into(),
                "Your appointment is now Confirmed, scheduled for 2025-02-01T10:00:00Z.".into()
            )
        );
        let other = json!({"type": "system_notification", "content": "Maintenance at 22:00"});
        assert_eq!(
            describe(&other),
            ("System notification".into(), "Maintenance at 22:00".into())
        );
    }
}
