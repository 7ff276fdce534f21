//! The relay serving TLS itself (`--tls-cert`, `--tls-key`): https:// and wss:// with a
//! certificate from the hospital's own CA made by the test, a device without that CA refused, and a
//! renewed certificate taken on SIGHUP while connections stay open; and the relay's own link to
//! Redis over TLS (`rediss://`). Real relay, real `wardline`, real `redis-server`.

use std::time::Duration;
use tokio::net::TcpStream;
use wardline_tests::proxy::{PrivateCa, client_config_trusting};
use wardline_tests::receiver::{Listener, inbox_path};
use wardline_tests::{Relay, WAIT, critical_lab_result, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// The certificate the relay presents to a new handshake (as a client trusting `ca` sees it).
async fn presented(relay: &Relay, ca: &PrivateCa) -> anyhow::Result<Vec<u8>> {
    let config = client_config_trusting(ca.ca_pem().as_bytes())?;
    let tcp = TcpStream::connect(&relay.address).await?;
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect("localhost".try_into()?, tcp)
        .await?;
    let (_, connection) = tls.get_ref();
    let leaf = connection
        .peer_certificates()
        .and_then(|chain| chain.first())
        .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
    Ok(leaf.to_vec())
}

/// A value of the relay's metrics (it must be there).
async fn metric(relay: &Relay, name: &str) -> u64 {
    relay
        .metric(name)
        .await
        .unwrap_or_else(|| panic!("no {name} in the relay's metrics")) as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_serves_https_and_wss_and_takes_a_renewed_certificate_on_sighup() {
    let ca = PrivateCa::new().unwrap();
    let first = ca.issue("Wardline relay (first)").unwrap();
    let relay = Relay::embedded_tls(&ca, &first, &[]).await.unwrap();
    assert!(relay.base.starts_with("https://"), "{}", relay.base);
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path()).unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let db = inbox_path(&dir);

    // A device without the hospital's CA is refused, and the relay counts the failed handshake.
    let untrusted = Listener::spawn(&relay.base, "d1", &doctor, &db).unwrap();
    let (code, said) = untrusted.exit().await.unwrap();
    assert_eq!(code, 4, "{said}");
    assert!(said.contains("cannot be trusted"), "{said}");
    assert!(metric(&relay, "wardline_tls_handshake_failures_total").await >= 1);

    // With it: wss:// to the relay itself, notifications arrive.
    let mut listener = Listener::spawn_with(
        &relay.base,
        "d1",
        &doctor,
        &db,
        None,
        &[],
        &[("WARDLINE_CA_FILE", ca_file.to_str().unwrap())],
    )
    .unwrap();
    listener
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
    assert_eq!(
        relay
            .publish(DOCTOR_CHANNEL, &critical_lab_result(1))
            .await
            .0,
        200,
        "https:// publish"
    );
    assert_eq!(
        listener.notifications(1).await.unwrap()[0]["message"]["result_id"],
        "r1"
    );
    assert_eq!(presented(&relay, &ca).await.unwrap(), first.der.to_vec());
    let sessions_before = metric(&relay, "wardline_connections_total").await;

    // Renewed: new files, SIGHUP. New handshakes get the new certificate...
    let renewed = ca.issue("Wardline relay (renewed)").unwrap();
    std::fs::write(relay.data_dir.join("tls-cert.pem"), &renewed.cert_pem).unwrap();
    std::fs::write(relay.data_dir.join("tls-key.pem"), &renewed.key_pem).unwrap();
    relay.signal("HUP").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while presented(&relay, &ca).await.unwrap() != renewed.der.to_vec() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was never presented"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ...and the open connection carries on: the next notification arrives on it, no new session.
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    assert_eq!(
        listener.notifications(1).await.unwrap()[0]["message"]["result_id"],
        "r2"
    );
    assert_eq!(
        metric(&relay, "wardline_connections_total").await,
        sessions_before,
        "the listener did not reconnect"
    );

    // A broken renewal keeps the certificate in use and says why.
    std::fs::write(relay.data_dir.join("tls-cert.pem"), "not a certificate").unwrap();
    relay.signal("HUP").unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !relay.log().contains("TLS certificate not re-read") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error logged: {}",
            relay.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(presented(&relay, &ca).await.unwrap(), renewed.der.to_vec());
}

#[tokio::test]
async fn the_relay_reaches_redis_over_tls_with_a_private_ca() {
    use redis::AsyncCommands;
    let ca = PrivateCa::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path()).unwrap();
    let issued = ca.issue("redis").unwrap();
    let (cert, key) = (
        dir.path().join("redis.pem"),
        dir.path().join("redis-key.pem"),
    );
    std::fs::write(&cert, &issued.cert_pem).unwrap();
    std::fs::write(&key, &issued.key_pem).unwrap();
    let (redis, tls_port) = wardline_tests::RedisServer::start_tls(&cert, &key, &ca_file)
        .await
        .unwrap();
    let url = format!("rediss://localhost:{tls_port}/0");

    // Without the CA, the relay refuses to start and says why.
    let refused = Relay::launch(dir.path(), Some(&url), &[], true, None).await;
    let why = format!(
        "{:#}",
        refused.err().expect("started without trusting Redis")
    );
    assert!(why.to_lowercase().contains("certificate"), "{why}");

    // With it: history goes to that Redis, over TLS, and notifications arrive.
    let relay = Relay::launch(
        dir.path(),
        Some(&url),
        &["--redis-ca-file", ca_file.to_str().unwrap()],
        true,
        None,
    )
    .await
    .unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = wardline_tests::client::V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    assert_eq!(
        relay
            .publish(DOCTOR_CHANNEL, &critical_lab_result(1))
            .await
            .0,
        200
    );
    let got = client.notifications(1).await.unwrap();
    assert_eq!(got[0].message["result_id"], "r1");
    let stored: usize = redis
        .connection()
        .await
        .xlen(format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
        .await
        .unwrap();
    assert_eq!(stored, 1, "stored in the Redis reached over TLS");
}
