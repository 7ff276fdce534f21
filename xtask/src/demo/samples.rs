//! The demo publisher's notifications: the types HealthHub's backends send (the HealthHub
//! notification effect's payloads, field for field), with patients, tests, values, medications and
//! times that vary from one to the next so the inbox looks like a shift, not one card repeated.

use serde_json::{Value, json};
use std::time::{Duration, SystemTime};

const PATIENTS: &[&str] = &[
    "Bob Wilson",
    "Alice Johnson",
    "Maria Garcia",
    "James Okafor",
    "Chen Wei",
    "Fatima Haddad",
    "Liam O'Brien",
    "Priya Raman",
    "Tomasz Nowak",
    "Grace Mensah",
];

/// Critical values as a laboratory phones them through: the test and the result.
const CRITICAL_RESULTS: &[(&str, &str)] = &[
    ("Potassium", "6.8 mmol/L"),
    ("Troponin I", "2.4 ng/mL"),
    ("Lactate", "5.1 mmol/L"),
    ("INR", "6.2"),
    ("Hemoglobin", "5.9 g/dL"),
    ("Glucose", "38 mg/dL"),
    ("Sodium", "118 mmol/L"),
    ("Blood culture", "Gram-positive cocci in clusters"),
];

const ROUTINE_TESTS: &[&str] = &[
    "CBC",
    "Lipid panel",
    "HbA1c",
    "TSH",
    "Vitamin D",
    "Comprehensive metabolic panel",
    "Urinalysis",
];

const MEDICATIONS: &[&str] = &[
    "Amoxicillin 500 mg",
    "Lisinopril 10 mg",
    "Metformin 500 mg",
    "Atorvastatin 20 mg",
    "Salbutamol inhaler",
    "Levothyroxine 50 µg",
];

const REASONS: &[&str] = &[
    "Annual checkup",
    "Follow-up on blood pressure",
    "Persistent cough",
    "Medication review",
    "Knee pain after a fall",
    "Results discussion",
];

const PRESCRIBERS: &[&str] = &["Dr. Smith", "Dr. Patel", "Dr. Nguyen", "Dr. Müller"];

/// Broadcasts on `system:alerts`, which every clinician and patient reads.
const SYSTEM_ALERTS: &[(&str, &str)] = &[
    (
        "Scheduled maintenance",
        "The laboratory system is read-only tonight from 02:00 to 02:30.",
    ),
    (
        "Radiology images available again",
        "PACS is back online; studies from the last hour are being loaded.",
    ),
    (
        "Visiting hours changed",
        "Ward 4 visiting hours are 14:00 to 18:00 until further notice.",
    ),
];

const STATUSES: &[&str] = &["Confirmed", "Rescheduled", "Confirmed", "Cancelled"];

/// The `n`-th item of `list`, stepping by a number prime to every list length here so that
/// neighbouring notifications differ in every field.
fn pick<T: Copy>(list: &[T], n: u64, salt: u64) -> T {
    let index = (n.wrapping_mul(7).wrapping_add(salt) % list.len() as u64) as usize;
    list[index]
}

/// An appointment time in the coming days, on the hour or half hour, in RFC 3339.
fn appointment_time(n: u64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let start_of_day = now - now % 86_400;
    let offset = (1 + n % 6) * 86_400 + (8 + n % 9) * 3_600 + (n % 2) * 1_800;
    humantime::format_rfc3339_seconds(
        SystemTime::UNIX_EPOCH + Duration::from_secs(start_of_day + offset),
    )
    .to_string()
}

/// The `n`-th notification and its channel: the fifth is a critical lab result for the doctor,
/// then every `critical_every`-th (something loud early in the demo); every tenth a system alert to
/// everyone; the rest go round the other types, to the doctor and to the patient.
pub fn notification(n: u64, critical_every: u64, doctor: &str, patient: &str) -> (String, Value) {
    let doctor = format!("doctor:{doctor}:notifications");
    let patient = format!("patient:{patient}:notifications");
    if n % critical_every == 4 {
        let round = n / critical_every;
        let (test, value) = pick(CRITICAL_RESULTS, round, 3);
        return (
            doctor,
            json!({"type": "critical_lab_result", "urgent": true, "result_id": format!("lab-{n}"),
            "patient_name": pick(PATIENTS, round, 0), "test_type": test, "value": value,
            "requires_review": true}),
        );
    }
    if n % 10 == 7 {
        let (title, message) = pick(SYSTEM_ALERTS, n / 10, 0);
        return (
            "system:alerts".to_owned(),
            json!({"type": "system_alert", "title": title, "message": message}),
        );
    }
    match n % 4 {
        0 => (
            doctor,
            json!({"type": "appointment_requested", "appointment_id": format!("apt-{n}"),
            "patient_name": pick(PATIENTS, n, 5), "reason": pick(REASONS, n, 1),
            "requested_time": appointment_time(n)}),
        ),
        1 => (
            patient,
            json!({"type": "appointment_status_changed", "appointment_id": format!("apt-{n}"),
            "new_status": pick(STATUSES, n, 2), "scheduled_time": appointment_time(n)}),
        ),
        2 => (
            patient,
            json!({"type": "new_prescription", "prescription_id": format!("rx-{n}"),
            "medication": pick(MEDICATIONS, n, 4), "doctor_name": pick(PRESCRIBERS, n, 1)}),
        ),
        _ => (
            patient,
            json!({"type": "lab_result_available", "result_id": format!("lab-{n}"),
            "test_type": pick(ROUTINE_TESTS, n, 6), "reviewed": n % 8 == 3}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fifth_is_critical_and_critical_results_vary() {
        let critical: Vec<Value> = (0..200)
            .map(|n| notification(n, 30, "d", "p"))
            .filter(|(_, m)| m["type"] == "critical_lab_result")
            .map(|(channel, m)| {
                assert_eq!(channel, "doctor:d:notifications");
                m
            })
            .collect();
        assert_eq!(critical.len(), 7, "n = 4, 34, 64, … 184");
        assert_eq!(critical[0]["result_id"], "lab-4");
        for pair in critical.windows(2) {
            assert_ne!(pair[0]["patient_name"], pair[1]["patient_name"]);
            assert_ne!(pair[0]["test_type"], pair[1]["test_type"]);
        }
    }

    #[test]
    fn neighbouring_notifications_of_a_type_differ() {
        let medications: Vec<Value> = (0..40)
            .map(|n| notification(n, 30, "d", "p").1)
            .filter(|m| m["type"] == "new_prescription")
            .map(|m| m["medication"].clone())
            .collect();
        assert!(medications.windows(2).all(|pair| pair[0] != pair[1]));
        let (_, appointment) = notification(0, 30, "d", "p");
        let time = appointment["requested_time"].as_str().unwrap();
        assert!(humantime::parse_rfc3339(time).unwrap() > SystemTime::now());
    }
}
