//! Acknowledgements are never dropped: made while signed out, while the relay is down, or from an
//! alert's action after the subscription stopped, each is stored in the inbox at once and recorded
//! by the relay once it can be. Real relays, real SQLite inboxes; the app's receiver in-process and
//! the real `wardline` binary.

use std::time::Duration;
use wardline_client::AlertAction;
use wardline_client::{Alerts, Receiver};
use wardline_client::{Event, Filter};
use wardline_protocol::{Channel, Cursor, Sensitive};
use wardline_tests::receiver::{Listener, inbox_path, open_receiver, run, wait_for_event};
use wardline_tests::{Relay, critical_lab_result, free_port, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

async fn publish_critical(relay: &Relay, n: usize) -> String {
    let (status, body) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(n)).await;
    assert_eq!(status, 200, "{body}");
    body["message_id"].as_str().expect("an id").to_owned()
}

async fn acked_in_inbox(receiver: &Receiver, id: &str) -> bool {
    let rows = receiver
        .list(Filter {
            limit: 100,
            ..Filter::default()
        })
        .await
        .unwrap();
    rows.iter()
        .any(|row| row.id.to_string() == id && row.acked_at.is_some())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledgements_after_the_subscription_stopped_and_while_the_relay_is_down_reach_it_later()
 {
    let relay_dir = tempfile::tempdir().unwrap();
    let address = format!("127.0.0.1:{}", free_port());
    let relay = Relay::start_in(relay_dir.path(), None, &["--listen", &address], None)
        .await
        .unwrap();
    let base = relay.base.clone();
    let dir = tempfile::tempdir().unwrap();
    let receiver = open_receiver(&dir).await;
    let mut events = receiver.events();

    // A token that expires in a few seconds: the relay closes with 4001 and the subscription
    // stops, "sign in again".
    let short = Sensitive::new(token("d1", "doctor", &[], 4));
    receiver.start(&base, "d1", short, Alerts::Off);
    wait_for_event(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    let first = publish_critical(&relay, 1).await;
    let second = publish_critical(&relay, 2).await;
    for _ in 0..2 {
        wait_for_event(&mut events, |e| {
            matches!(e, Event::NotificationStored { .. })
        })
        .await;
    }
    wait_for_event(&mut events, |e| matches!(e, Event::SignInRequired { .. })).await;

    // The alert's "Acknowledge" after the subscription stopped: stored at once.
    let channel = Channel::parse(DOCTOR_CHANNEL).unwrap();
    let first_id: Cursor = first.parse().unwrap();
    receiver
        .alert_action(AlertAction::Acknowledge((channel, first_id)))
        .await
        .unwrap();
    assert!(acked_in_inbox(&receiver, &first).await, "stored at once");

    // Signed in again while the relay is down: acknowledged in the window, stored at once.
    drop(relay);
    let long = Sensitive::new(token("d1", "doctor", &[], 3600));
    receiver.start(&base, "d1", long, Alerts::Off);
    wait_for_event(&mut events, |e| matches!(e, Event::Reconnecting { .. })).await;
    receiver
        .acknowledge(vec![format!("{DOCTOR_CHANNEL}/{second}")])
        .await
        .unwrap();
    assert!(acked_in_inbox(&receiver, &second).await, "stored at once");

    // The relay is back: both are recorded.
    let relay = Relay::start_in(relay_dir.path(), None, &["--listen", &address], None)
        .await
        .unwrap();
    for id in [&first, &second] {
        relay
            .wait_for_receipt(DOCTOR_CHANNEL, id, ("acknowledged", "d1"), || async {})
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_made_while_signed_out_is_sent_at_the_next_sign_in() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    let id = publish_critical(&relay, 1).await;
    listener.notifications(1).await.unwrap();
    assert_eq!(listener.stop().await.unwrap(), 0);

    // No token anywhere (no WARDLINE_TOKEN, no keychain): stored here, said so.
    let (code, _, stderr) = run(&relay.base, "d1", "", &db, &["ack", &id])
        .await
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("acknowledged here"), "{stderr}");
    let service = token("backend", "service", &[], 600);
    let (_, receipts) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={id}"),
            Some(&service),
        )
        .await;
    assert!(
        !receipts.to_string().contains("acknowledged"),
        "not at the relay yet: {receipts}"
    );

    // Signed in again: the listener sends it on connecting.
    let _listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {
            tokio::time::sleep(Duration::from_millis(10)).await
        })
        .await
        .unwrap();
}

/// An acknowledgement the relay refuses for the user's receipt limit (42901: the user's other
/// device spent it) is sent again once the limit refills, on the same connection: before, it
/// waited in the inbox until the next connection, and the chain went on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_refused_for_the_receipt_limit_is_sent_again_within_seconds() {
    let relay = Relay::embedded(&["--frame-burst", "4", "--frames-per-s", "1"])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = open_receiver(&dir).await;
    let mut events = receiver.events();
    let doctor = token("d1", "doctor", &[], 3600);
    receiver.start(
        &relay.base,
        "d1",
        Sensitive::new(doctor.clone()),
        Alerts::Off,
    );
    wait_for_event(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    let id = publish_critical(&relay, 1).await;
    wait_for_event(&mut events, |e| {
        matches!(e, Event::NotificationStored { .. })
    })
    .await;

    // The doctor's other device spends the user's receipts.
    let mut other = wardline_tests::client::V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..10 {
        other
            .send(&wardline_protocol::ClientFrame::Receipt {
                channel: DOCTOR_CHANNEL.into(),
                ids: vec![id.clone()],
                kind: wardline_protocol::ReceiptKind::Displayed,
            })
            .await
            .unwrap();
        if let wardline_protocol::ServerFrame::Error { code, .. } = other.frame().await.unwrap() {
            assert_eq!(code, wardline_protocol::ErrorCode::RateLimited);
            refused = true;
            break;
        }
    }
    assert!(refused, "the user's receipt limit was never reached");

    receiver.acknowledge(vec![id.clone()]).await.unwrap();
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {})
        .await
        .unwrap();
}
