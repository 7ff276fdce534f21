//! OS alerts from the real `wardline listen`, on a real D-Bus session bus with a notification server
//! that records what it is asked to show.

use serde_json::json;
use wardline_tests::desktop::{NotificationServer, SessionBus};
use wardline_tests::receiver::{Listener, inbox_path};
use wardline_tests::{Relay, critical_lab_result, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// `wardline listen` for d1 on a relay, on a private bus with a recording notification server.
struct Listening {
    listener: Listener,
    server: NotificationServer,
    relay: Relay,
    _inbox: tempfile::TempDir,
    _bus: SessionBus,
}

impl Listening {
    async fn start() -> Listening {
        let bus = SessionBus::start().await.unwrap();
        let server = NotificationServer::start(&bus.address).await.unwrap();
        let relay = Relay::embedded(&[]).await.unwrap();
        let inbox = tempfile::tempdir().unwrap();
        let doctor = token("d1", "doctor", &[], 3600);
        let listener = Listener::start_with_bus(
            &relay.base,
            "d1",
            &doctor,
            &inbox_path(&inbox),
            &bus.address,
        )
        .await
        .unwrap();
        Listening {
            listener,
            server,
            relay,
            _inbox: inbox,
            _bus: bus,
        }
    }
}

/// A critical lab result is raised with critical urgency, no timeout, a sound and "Acknowledge" and
/// "Decline" actions, saying what kind of result waits and nothing of it (no patient, no test: the
/// screen may be locked); clicking "Acknowledge" acknowledges the result at the relay. An ordinary
/// one is a normal alert, as discreet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_critical_result_alerts_loudly_and_its_action_acknowledges_it() {
    let desktop = Listening::start().await;
    let (server, relay, mut listener) = (&desktop.server, &desktop.relay, desktop.listener);

    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    listener.notifications(1).await.unwrap();
    let call = server.wait_for_calls(1).await.unwrap().remove(0);
    assert_eq!(call.app_name, "Wardline");
    assert_eq!(call.summary, "Critical lab result — open Wardline");
    for detail in ["Bob", "Wilson", "BMP", "r1"] {
        assert!(
            !call.summary.contains(detail) && !call.body.contains(detail),
            "the alert shows {detail}: {call:?}"
        );
    }
    assert_eq!(call.urgency, Some(2), "critical urgency");
    assert_eq!(call.expire_timeout, 0, "never expires");
    assert_eq!(
        call.actions,
        [
            "default",
            "Open",
            "acknowledge",
            "Acknowledge",
            "decline",
            "Decline"
        ]
    );
    assert!(call.sound.is_some());

    // The listener follows the action once `Notify` has returned: invoke until it is heard.
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {
            server.invoke_action(call.id, "acknowledge").await.unwrap();
        })
        .await
        .unwrap();

    relay.publish(DOCTOR_CHANNEL, &json!({"type": "appointment_requested", "patient_name": "Alice Johnson", "reason": "Annual checkup"})).await;
    listener.notifications(1).await.unwrap();
    let call = server.wait_for_calls(2).await.unwrap().remove(1);
    assert_eq!(call.summary, "Appointment update — open Wardline");
    assert!(!call.body.contains("Alice"), "{call:?}");
    assert_eq!(call.urgency, Some(1), "normal urgency");
    assert_eq!(call.expire_timeout, -1, "the server's default timeout");
    assert_eq!(
        call.actions,
        ["default", "Open"],
        "a click opens it; no Acknowledge"
    );
}

/// In quiet hours only critical alerts are raised; everything is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_silence_all_but_critical_alerts() {
    let bus = SessionBus::start().await.unwrap();
    let server = NotificationServer::start(&bus.address).await.unwrap();
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // A window of two hours around now, in UTC (the listener runs with TZ=UTC).
    let minute = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        % 1440) as i64;
    let at = |m: i64| format!("{:02}:{:02}", m.rem_euclid(1440) / 60, m.rem_euclid(60));
    let window = format!("{}-{}", at(minute - 60), at(minute + 60));
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::spawn_with(
        &relay.base,
        "d1",
        &doctor,
        &inbox_path(&dir),
        Some(&bus.address),
        &["--quiet-hours", &window],
        &[("TZ", "UTC")],
    )
    .unwrap();
    listener
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &json!({"type": "appointment_requested", "patient_name": "Alice Johnson", "reason": "Checkup"})).await;
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    assert_eq!(
        listener.notifications(2).await.unwrap().len(),
        2,
        "both stored"
    );
    // Alerts are raised (each Notify answered) before the listener prints what it stored.
    let calls = server.calls();
    assert_eq!(calls.len(), 1, "only the critical one: {calls:?}");
    assert_eq!(calls[0].urgency, Some(2));
}

/// Alerts stay actionable however many are listed (servers like GNOME keep them until dismissed):
/// after a critical result and 65 more alerts, each still offers "Open", and the critical one's
/// "Acknowledge" still acknowledges it at the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_stay_actionable_however_many_are_listed() {
    let desktop = Listening::start().await;
    let (server, relay, mut listener) = (&desktop.server, &desktop.relay, desktop.listener);
    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    listener.notifications(1).await.unwrap();
    // One at a time, so that each is its own alert (bursts are summarised).
    for n in 0..65 {
        relay
            .publish(
                DOCTOR_CHANNEL,
                &json!({"type": "lab_result_available", "test_type": "CBC", "n": n}),
            )
            .await;
        listener.notifications(1).await.unwrap();
    }
    let calls = server.wait_for_calls(66).await.unwrap();
    assert_eq!(
        calls[0].actions,
        [
            "default",
            "Open",
            "acknowledge",
            "Acknowledge",
            "decline",
            "Decline"
        ]
    );
    assert!(
        calls[1..].iter().all(|c| c.actions == ["default", "Open"]),
        "{:?}",
        &calls[1..]
    );
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {
            server
                .invoke_action(calls[0].id, "acknowledge")
                .await
                .unwrap();
        })
        .await
        .unwrap();
}
