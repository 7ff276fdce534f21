//! The receiver on a network that is not loopback's best case: a relay that goes silent without a
//! FIN (frozen behind a proxy), one that accepts TCP and never answers, and one behind a
//! TLS-terminating proxy with a certificate from the hospital's own CA. Real relays, the real
//! `wardline` binary, real SQLite inboxes.

use std::time::Duration;
use tokio::time::Instant;
use wardline_tests::proxy::{FreezableProxy, NoWebSocketProxy, PrivateCa, TlsProxy};
use wardline_tests::receiver::{Listener, inbox_path, run_with};
use wardline_tests::{Relay, WAIT, numbered, numbers, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// What the receiver promises: a silent link is reported within 35 s with the default heartbeat.
const NOTICED_WITHIN: Duration = Duration::from_secs(35);

/// Freezes the path to the relay under a connected listener, publishes meanwhile, and checks that
/// the listener notices within 35 s, reconnects once the path works again and loses nothing.
async fn frozen_link_is_left_and_nothing_lost(
    listener: &mut Listener,
    relay: &Relay,
    proxy: &FreezableProxy,
    silence_report: &str,
) {
    relay.publish(DOCTOR_CHANNEL, &numbered(0)).await;
    assert_eq!(numbers(&listener.notifications(1).await.unwrap()), [0]);
    proxy.freeze();
    let frozen_at = Instant::now();
    for n in 1..=5 {
        assert_eq!(relay.publish(DOCTOR_CHANNEL, &numbered(n)).await.0, 200);
    }
    let said = listener.wait_for_stderr(silence_report).await.unwrap();
    let noticed_after = frozen_at.elapsed();
    assert!(
        noticed_after <= NOTICED_WITHIN,
        "the silent link was noticed only after {noticed_after:?}: {said:?}"
    );
    assert!(
        said.last().unwrap().contains("offline"),
        "reported as reconnecting: {said:?}"
    );
    proxy.thaw();
    let got = listener.notifications(5).await.unwrap();
    assert_eq!(
        numbers(&got),
        [1, 2, 3, 4, 5],
        "nothing published meanwhile is lost"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_gone_silent_is_noticed_over_websocket_and_nothing_is_lost() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let proxy = FreezableProxy::start(&relay.address).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&proxy.base, "d1", &doctor, &inbox_path(&dir))
        .await
        .unwrap();
    frozen_link_is_left_and_nothing_lost(
        &mut listener,
        &relay,
        &proxy,
        "no answer from the relay for",
    )
    .await;
    listener
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_gone_silent_is_noticed_over_server_sent_events_and_nothing_is_lost() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let freezable = FreezableProxy::start(&relay.address).await.unwrap();
    // The hospital proxy refuses WebSockets: the listener falls back to SSE through it.
    let no_websocket = NoWebSocketProxy::start(&freezable.address).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener =
        Listener::spawn(&no_websocket.base, "d1", &doctor, &inbox_path(&dir)).unwrap();
    listener.wait_for_stderr("connected (sse)").await.unwrap();
    frozen_link_is_left_and_nothing_lost(
        &mut listener,
        &relay,
        &freezable,
        "no heartbeat from the relay for",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_accepts_but_never_answers_is_abandoned_within_ten_seconds_and_retried() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let proxy = FreezableProxy::start(&relay.address).await.unwrap();
    proxy.freeze();
    let dir = tempfile::tempdir().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let started = Instant::now();
    let mut listener = Listener::spawn(&proxy.base, "d1", &doctor, &inbox_path(&dir)).unwrap();
    let said = listener
        .wait_for_stderr("did not answer the handshake within 10 s")
        .await
        .unwrap();
    let abandoned_after = started.elapsed();
    assert!(
        abandoned_after < Duration::from_secs(12),
        "abandoned only after {abandoned_after:?}: {said:?}"
    );
    let deadline = Instant::now() + WAIT * 2;
    while proxy.accepted() < 2 {
        assert!(Instant::now() < deadline, "never tried again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.thaw();
    listener
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &numbered(1)).await;
    assert_eq!(numbers(&listener.notifications(1).await.unwrap()), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_behind_tls_with_a_private_ca_is_trusted_only_with_that_ca() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let ca = PrivateCa::new().unwrap();
    let tls = TlsProxy::start(&relay.address, &ca).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path()).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let db = inbox_path(&dir);

    // Without the hospital's CA: a clear certificate error, once, and no retrying.
    let untrusted = Listener::spawn(&tls.base, "d1", &doctor, &db).unwrap();
    let (code, said) = untrusted.exit().await.unwrap();
    assert_eq!(code, 4, "{said}");
    assert!(
        said.contains("certificate for localhost cannot be trusted")
            && said.contains("UnknownIssuer")
            && said.contains("WARDLINE_CA_FILE"),
        "{said}"
    );
    assert_eq!(tls.handshakes(), 1, "one attempt, no spinning");

    // With it: connected over wss://, notifications arrive.
    let mut listener = Listener::spawn_with(
        &tls.base,
        "d1",
        &doctor,
        &db,
        None,
        &[],
        &[("WARDLINE_CA_FILE", ca_file)],
    )
    .unwrap();
    listener
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
    let (_, published) = relay
        .publish(DOCTOR_CHANNEL, &wardline_tests::critical_lab_result(1))
        .await;
    let got = listener.notifications(1).await.unwrap();
    assert_eq!(got[0]["type"], "critical_lab_result");
    let id = published["message_id"].as_str().expect("an id").to_owned();

    // HTTP over the same trust: `wardline ack` tells the relay through https.
    let (code, stdout, stderr) = run_with(
        &tls.base,
        "d1",
        &doctor,
        &db,
        &["ack", &id],
        &[("WARDLINE_CA_FILE", ca_file)],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("acknowledged {id}")),
        "{stdout}{stderr}"
    );
    relay
        .wait_for_receipt(DOCTOR_CHANNEL, &id, ("acknowledged", "d1"), || async {})
        .await
        .unwrap();
}
