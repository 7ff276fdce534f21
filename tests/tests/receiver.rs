//! The `wardline` receiver end to end: real relays, Redis, SQLite files and the real binary.

use serde_json::{Value, json};
use std::time::Duration;
use wardline_tests::receiver::{Listener, inbox_path, list, run};
use wardline_tests::{RedisServer, Relay, free_port, numbered, numbers, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// The listener's relay is killed for 20 s while 200 notifications are published (through another
/// relay node on the same Redis); the listener reconnects and stores all 200 once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_rides_out_a_relay_outage_and_stores_everything_once() {
    let redis = RedisServer::start().await.unwrap();
    let port = free_port().to_string();
    let address = format!("127.0.0.1:{port}");
    let dir_a = tempfile::tempdir().unwrap();
    let relay_a = Relay::start_in(
        dir_a.path(),
        Some(&redis.url()),
        &["--listen", &address],
        None,
    )
    .await
    .unwrap();
    let relay_b = Relay::on_redis(&redis, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay_a.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay_b.publish(DOCTOR_CHANNEL, &numbered(0)).await;
    assert_eq!(numbers(&listener.notifications(1).await.unwrap()), [0]);

    drop(relay_a);
    let outage = tokio::time::Instant::now();
    listener.wait_for_stderr("offline").await.unwrap();
    for n in 1..=200 {
        assert_eq!(relay_b.publish(DOCTOR_CHANNEL, &numbered(n)).await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep_until(outage + Duration::from_secs(20)).await;
    let _relay_a = Relay::start_in(
        dir_a.path(),
        Some(&redis.url()),
        &["--listen", &address],
        None,
    )
    .await
    .unwrap();
    let got = listener.notifications(200).await.unwrap();
    assert_eq!(numbers(&got), (1..=200).collect::<Vec<u64>>());
    let stored = list(&relay_b.base, "d1", &doctor, &db).await.unwrap();
    let mut stored_numbers = numbers(&stored);
    stored_numbers.reverse();
    assert_eq!(
        stored_numbers,
        (0..=200).collect::<Vec<u64>>(),
        "each stored once, newest listed first"
    );
}

/// A listener killed with SIGKILL mid-stream and started again loses nothing and stores nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_listener_killed_mid_stream_loses_and_duplicates_nothing() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    let publisher = {
        let base = relay.base.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let service = token("backend", "service", &[], 3600);
            for n in 0..300 {
                let body = json!({"channel": DOCTOR_CHANNEL, "message": numbered(n)});
                let response = client
                    .post(format!("{base}/v1/publish"))
                    .bearer_auth(&service)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        })
    };
    listener.notifications(100).await.unwrap();
    listener.kill9().await;
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    publisher.await.unwrap();
    // Whatever the first listener had not committed, the second replays; wait for the last one.
    loop {
        let got = listener.notifications(1).await.unwrap();
        if got[0]["message"]["n"] == 299 {
            break;
        }
    }
    let stored = list(&relay.base, "d1", &doctor, &db).await.unwrap();
    let mut stored_numbers = numbers(&stored);
    stored_numbers.reverse();
    assert_eq!(stored_numbers, (0..300).collect::<Vec<u64>>());
}

/// A cursor older than the relay's history: the gap is stored and `status` reports it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_gap_is_stored_and_reported() {
    let relay = Relay::embedded(&["--history-max-len", "20"]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &numbered(0)).await;
    listener.notifications(1).await.unwrap();
    assert_eq!(listener.stop().await.unwrap(), 0);
    for n in 1..=100 {
        relay.publish(DOCTOR_CHANNEL, &numbered(n)).await;
    }
    let mut listener = Listener::spawn(&relay.base, "d1", &doctor, &db).unwrap();
    let said = listener.wait_for_stderr("HISTORY GAP").await.unwrap();
    assert!(said.iter().any(|l| l.contains(DOCTOR_CHANNEL)), "{said:?}");
    let got = listener.notifications(20).await.unwrap();
    assert_eq!(
        numbers(&got),
        (81..=100).collect::<Vec<u64>>(),
        "what the relay kept"
    );
    let (code, stdout, _) = run(&relay.base, "d1", &doctor, &db, &["status", "--json"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["gaps"][0]["channel"], DOCTOR_CHANNEL, "{status}");
    assert_eq!(status["connection"], "connected", "{status}");
    assert_eq!(status["total"], 21);
    let (_, human, _) = run(&relay.base, "d1", &doctor, &db, &["status"])
        .await
        .unwrap();
    assert!(
        human.contains("HISTORY GAP on doctor:d1:notifications"),
        "{human}"
    );
}

/// Redis restarted without persistence while the listener ran: what it stored before is gone from
/// history, and the listener, resuming with the history's old epoch, stores and reports a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_a_gap_the_listener_reports() {
    let mut redis = RedisServer::start().await.unwrap();
    let relay = Relay::on_redis(&redis, &[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &numbered(0)).await;
    listener.notifications(1).await.unwrap();

    redis.restart().await.unwrap();
    let said = listener.wait_for_stderr("HISTORY GAP").await.unwrap();
    assert!(said.iter().any(|l| l.contains(DOCTOR_CHANNEL)), "{said:?}");
    let (code, stdout, _) = run(&relay.base, "d1", &doctor, &db, &["status", "--json"])
        .await
        .unwrap();
    assert_eq!(code, 0);
    let status: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(status["gaps"][0]["channel"], DOCTOR_CHANNEL, "{status}");
    // In step again: the next notification arrives, and no new gap with it.
    relay.publish(DOCTOR_CHANNEL, &numbered(1)).await;
    assert_eq!(numbers(&listener.notifications(1).await.unwrap()), [1]);
}

/// An expired token: a clear message and an exit, not a retry loop — at connect and mid-connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_token_stops_the_listener_with_a_clear_message() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let listener =
        Listener::spawn(&relay.base, "d1", &token("d1", "doctor", &[], -10), &db).unwrap();
    let (code, said) = listener.exit().await.unwrap();
    assert_eq!(code, 3, "{said}");
    assert!(said.contains("token has expired"), "{said}");
    assert_eq!(said.matches("connecting").count(), 1, "tried once: {said}");

    let mut listener = Listener::start(&relay.base, "d1", &token("d1", "doctor", &[], 3), &db)
        .await
        .unwrap();
    listener.wait_for_stderr("sign-in required").await.unwrap();
    let (code, said) = listener.exit().await.unwrap();
    assert_eq!(code, 3, "{said}");
    let (_, status, _) = run(&relay.base, "d1", "", &db, &["status"]).await.unwrap();
    assert!(status.contains("sign_in_required"), "{status}");
}

/// The command line and the app share an inbox; one listener at a time keeps it: a second
/// `wardline listen` on it stops at once and names the process that listens, and the first one
/// goes on receiving; once it ends, another may listen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_listener_on_one_inbox_says_which_process_listens_already() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut first = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    let second = Listener::spawn(&relay.base, "d1", &doctor, &db).unwrap();
    let (code, said) = second.exit().await.unwrap();
    assert_eq!(code, 2, "{said}");
    assert!(said.contains("already listens on this inbox"), "{said}");
    relay
        .publish("doctor:d1:notifications", &json!({"type": "note", "n": 1}))
        .await;
    first.notifications(1).await.unwrap();
    assert_eq!(first.stop().await.unwrap(), 0);
    let third = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    assert_eq!(third.stop().await.unwrap(), 0);
}

/// A file that is not an inbox, and an inbox another process holds locked: clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_or_locked_inbox_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    std::fs::write(&db, vec![0x5au8; 16384]).unwrap();
    let (code, _, stderr) = run("http://127.0.0.1:9", "d1", "t", &db, &["list"])
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(
        stderr.contains("cannot be read here") && stderr.contains("Move it away"),
        "{stderr}"
    );

    let db = dir.path().join("locked.sqlite3");
    let relay = Relay::embedded(&[]).await.unwrap();
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &numbered(1)).await;
    let id = listener.notifications(1).await.unwrap()[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    drop(listener);
    // Another process's exclusive transaction: this test's own connection, with the inbox's key
    // (beside it: no keychain here), held by a thread until the command has tried.
    let key = std::fs::read_to_string(wardline_client::key_file(&db)).unwrap();
    let (locked, is_locked) = std::sync::mpsc::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let holder = {
        let db = db.clone();
        std::thread::spawn(move || {
            let conn = rusqlite::Connection::open(&db).unwrap();
            conn.execute_batch(&format!(
                "PRAGMA key = \"x'{}'\"; BEGIN EXCLUSIVE;",
                key.trim()
            ))
            .unwrap();
            locked.send(()).unwrap();
            let _ = released.recv();
        })
    };
    is_locked.recv().unwrap();
    let (code, _, stderr) = run(&relay.base, "d1", &doctor, &db, &["ack", &id])
        .await
        .unwrap();
    release.send(()).unwrap();
    holder.join().unwrap();
    assert_eq!(code, 2);
    assert!(stderr.contains("locked by another process"), "{stderr}");
}

/// Behind a proxy that refuses WebSocket upgrades, the listener falls back to SSE: it receives the
/// same notifications, catches up after a restart with one Last-Event-ID, and its receipts reach
/// the relay over HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_proxy_that_blocks_websockets_the_listener_falls_back_to_sse() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let proxy = wardline_tests::proxy::NoWebSocketProxy::start(&relay.address)
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::spawn(&proxy.base, "d1", &doctor, &db).unwrap();
    let said = listener.wait_for_stderr("connected (sse)").await.unwrap();
    assert!(
        said.iter().any(|l| l.contains("connecting (websocket)")),
        "tried the WebSocket first: {said:?}"
    );
    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &numbered(0)).await;
    relay
        .publish(
            "system:alerts",
            &json!({"type": "system_notification", "content": "drill", "n": 1}),
        )
        .await;
    assert_eq!(numbers(&listener.notifications(2).await.unwrap()), [0, 1]);
    let (_, status, _) = run(&proxy.base, "d1", &doctor, &db, &["status"])
        .await
        .unwrap();
    assert!(status.contains("Server-Sent Events"), "{status}");

    assert_eq!(listener.stop().await.unwrap(), 0);
    for n in 2..7 {
        relay.publish(DOCTOR_CHANNEL, &numbered(n)).await;
    }
    let mut listener = Listener::spawn(&proxy.base, "d1", &doctor, &db).unwrap();
    assert_eq!(
        numbers(&listener.notifications(5).await.unwrap()),
        (2..7).collect::<Vec<u64>>()
    );

    let id = reply["message_id"].as_str().unwrap();
    let service = token("backend", "service", &[], 3600);
    let (_, receipts) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={id}"),
            Some(&service),
        )
        .await;
    assert_eq!(receipts["receipts"][0]["kind"], "received", "{receipts}");
}

/// `wardline ack` acknowledges at the relay at once; `read` and `list --unread` work on the inbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ack_read_and_list_from_the_command_line() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(&relay.base, "d1", &doctor, &db)
        .await
        .unwrap();
    relay
        .publish(DOCTOR_CHANNEL, &wardline_tests::critical_lab_result(1))
        .await;
    relay.publish(DOCTOR_CHANNEL, &numbered(2)).await;
    let got = listener.notifications(2).await.unwrap();
    let (critical, other) = (
        got[0]["id"].as_str().unwrap(),
        got[1]["id"].as_str().unwrap(),
    );
    let (code, out, err) = run(&relay.base, "d1", &doctor, &db, &["ack", critical])
        .await
        .unwrap();
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("acknowledged {critical}")), "{out}");
    let service = token("backend", "service", &[], 3600);
    let (_, receipts) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={critical}"),
            Some(&service),
        )
        .await;
    assert!(
        receipts["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["kind"] == "acknowledged"),
        "{receipts}"
    );
    assert_eq!(
        run(&relay.base, "d1", &doctor, &db, &["read", other])
            .await
            .unwrap()
            .0,
        0
    );
    let (_, unread, _) = run(
        &relay.base,
        "d1",
        &doctor,
        &db,
        &["list", "--unread", "--json"],
    )
    .await
    .unwrap();
    assert!(
        unread.trim().is_empty(),
        "both read (an ack reads too): {unread}"
    );
    let (_, status, _) = run(&relay.base, "d1", &doctor, &db, &["status", "--json"])
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(
        (
            status["unread"].as_u64(),
            status["unacked_critical"].as_u64()
        ),
        (Some(0), Some(0)),
        "{status}"
    );
    let (code, _, err) = run(&relay.base, "d1", &doctor, &db, &["ack", "1-0"])
        .await
        .unwrap();
    assert_eq!(code, 2);
    assert!(err.contains("no notification 1-0"), "{err}");
}

/// A device signing in for the first time sees the last week, not an empty inbox: a critical result
/// published before it ever connected is stored and counted as waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_device_starts_with_the_last_week() {
    let relay = Relay::embedded(&[]).await.unwrap();
    relay
        .publish(DOCTOR_CHANNEL, &wardline_tests::critical_lab_result(1))
        .await;
    relay
        .publish(
            "system:alerts",
            &json!({"type": "system_notification", "content": "drill", "n": 2}),
        )
        .await;
    let dir = tempfile::tempdir().unwrap();
    let db = inbox_path(&dir);
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::spawn(&relay.base, "d1", &doctor, &db).unwrap();
    let got = listener.notifications(2).await.unwrap();
    assert_eq!(got[0]["type"], "critical_lab_result");
    let (_, status, _) = run(&relay.base, "d1", &doctor, &db, &["status", "--json"])
        .await
        .unwrap();
    let status: Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["unacked_critical"], 1, "{status}");
    assert!(
        status["gaps"].as_array().unwrap().is_empty(),
        "no gap for a fresh device: {status}"
    );
}
