//! Redis Sentinel: a relay given `redis+sentinel://…` follows the master through a failover. Real
//! processes: a master, its replica and a sentinel (`redis-server --sentinel`), and the relay.

use std::time::Duration;
use wardline_protocol::close;
use wardline_tests::client::V1Client;
use wardline_tests::{RedisServer, Relay, WAIT, critical_lab_result, token};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// Waits until the sentinel has seen the replica in sync, so that it can fail over to it.
async fn wait_for_replica_known(sentinel: &RedisServer) {
    let mut conn = sentinel.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let replicas: Vec<std::collections::HashMap<String, String>> = redis::cmd("SENTINEL")
            .arg("REPLICAS")
            .arg("wardline")
            .query_async(&mut conn)
            .await
            .unwrap_or_default();
        if replicas
            .iter()
            .any(|r| r.get("master-link-status").map(String::as_str) == Some("ok"))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the sentinel never saw the replica: {replicas:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The master dies: the sentinel promotes the replica, the relay moves to it (clients are told to
/// come back with 1013 and resume), and publishing and delivery work again on the new master, with
/// the history written before the failover still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_follows_the_master_through_a_failover() {
    let mut master = RedisServer::start().await.unwrap();
    let replica = RedisServer::start_replica_of(&master).await.unwrap();
    let sentinel = RedisServer::start_sentinel_of(&master).await.unwrap();
    wait_for_replica_known(&sentinel).await;
    let url = format!("redis+sentinel://127.0.0.1:{}/wardline", sentinel.port);
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_in(dir.path(), Some(&url), &[], None)
        .await
        .unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    let (status, _) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200);
    let first = client.notifications(1).await.unwrap()[0].id;
    // Replication is asynchronous: the first result reaches the replica before the master dies.
    let mut on_replica = replica.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while redis::cmd("DBSIZE")
        .query_async::<u64>(&mut on_replica)
        .await
        .unwrap()
        == 0
    {
        assert!(tokio::time::Instant::now() < deadline, "nothing replicated");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    master.kill().await;
    let (code, _) = client.until_closed().await.unwrap();
    assert_eq!(code, Some(close::TRY_AGAIN_LATER));
    // Publishing fails until the replica is promoted and the relay has moved to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503, "{reply}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay never published on the new master: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The sentinel closed the promoted replica's client connections: a new one.
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(&mut replica.connection().await)
        .await
        .unwrap();
    assert_eq!(
        role.first(),
        Some(&redis::Value::BulkString(b"master".to_vec())),
        "the replica was promoted"
    );

    // Ready again once the pub/sub connection is on the new master too (devices retry until then).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while relay.get("/readyz", None).await.0 != 200 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not ready on the new master"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A device resuming from the first result gets the second, from the new master, with no gap.
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    let since = first.to_string();
    let (replayed, outcomes) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some(&since))])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1, "{outcomes:?}");
    assert_eq!(replayed[0].message, critical_lab_result(2));
    assert!(
        format!("{outcomes:?}").contains("gap: false"),
        "{outcomes:?}"
    );
    let (status, _) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(3)).await;
    assert_eq!(status, 200);
    assert_eq!(
        client.notifications(1).await.unwrap()[0].message,
        critical_lab_result(3),
        "live delivery works on the new master"
    );
    assert!(
        relay.log().contains("the Redis master moved"),
        "the move is logged"
    );
}
