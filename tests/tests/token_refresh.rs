//! A receiver handed a newer token of the same user presents it on its open WebSocket
//! (`refresh`): the connection outlives the first token's expiry with no reconnect and keeps
//! delivering. A real relay and a real SQLite inbox; the app's receiver in-process.

use std::time::Duration;
use tokio::sync::broadcast::error::RecvError;
use wardline_client::Alerts;
use wardline_client::Event;
use wardline_protocol::Sensitive;
use wardline_tests::receiver::{open_receiver, wait_for_event};
use wardline_tests::{Relay, WAIT, critical_lab_result, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_token_keeps_the_open_connection_past_the_old_ones_expiry() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let receiver = open_receiver(&dir).await;
    let mut events = receiver.events();

    let short = Sensitive::new(token("d1", "doctor", &[], 4));
    receiver.start(&relay.base, "d1", short, Alerts::Off);
    wait_for_event(&mut events, |e| matches!(e, Event::Connected { .. })).await;
    // The same doctor signs in again, before the first token expires, with one good for an hour.
    let long = Sensitive::new(token("d1", "doctor", &[], 3600));
    receiver.start(&relay.base, "d1", long, Alerts::Off);

    // Past the first token's expiry, a critical result still arrives on the same connection.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (status, body) = relay
        .publish("doctor:d1:notifications", &critical_lab_result(1))
        .await;
    assert_eq!(status, 200, "{body}");
    let meanwhile = tokio::time::timeout(WAIT, async {
        let mut meanwhile = Vec::new();
        loop {
            match events.recv().await {
                Ok(Event::NotificationStored { .. }) => return meanwhile,
                Ok(event) => meanwhile.push(event),
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => panic!("the receiver's events ended"),
            }
        }
    })
    .await
    .expect("the critical result was stored");
    let interrupted = meanwhile.iter().find(|event| {
        matches!(
            event,
            Event::SignInRequired { .. } | Event::Reconnecting { .. } | Event::Connecting { .. }
        )
    });
    assert!(interrupted.is_none(), "{interrupted:?}");
    assert_eq!(
        relay.metric("wardline_connections_total").await,
        Some(1.0),
        "one connection all along"
    );
    receiver.shutdown().await;
}
