//! Bad input, slow consumers, floods, Redis going away, shutdown and restarts: each gets a clear
//! error, nothing is lost, and the relay survives.

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use wardline_protocol::{ErrorCode, ServerFrame, close};
use wardline_tests::client::{V1Client, connect, next_text};
use wardline_tests::{
    BrokerKind, RedisServer, Relay, WAIT, critical_lab_result, on_both_brokers, token,
};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

fn code(body: &Value) -> u64 {
    body["code"].as_u64().unwrap_or_default()
}

/// Malformed JSON, unknown ops, bad cursors and binary frames get error frames and the connection
/// stays; an oversize frame gets an error and close 1009; a flood gets an error and close 4029; the
/// relay and its other clients carry on.
async fn bad_frames_get_clear_errors(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) =
        wardline_tests::setup(kind, &["--frame-burst", "30", "--frames-per-s", "10"]).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    let expect_error = |frame: ServerFrame, expected: ErrorCode| match frame {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, expected, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected error {expected:?}, got {other:?}"),
    };
    client.send_text("{not json").await?;
    expect_error(client.frame().await?, ErrorCode::MalformedJson);
    client.send_text(r#"{"op":"dance"}"#).await?;
    expect_error(client.frame().await?, ErrorCode::UnknownOp);
    client
        .send_text(
            r#"{"op":"subscribe","channels":[{"channel":"system:alerts","since":"last tuesday"}]}"#,
        )
        .await?;
    expect_error(client.frame().await?, ErrorCode::BadCursor);
    client
        .socket
        .send(Message::Binary(vec![1, 2, 3].into()))
        .await?;
    expect_error(client.frame().await?, ErrorCode::MalformedJson);
    client.send_text(r#"{"op":"ping"}"#).await?;
    assert_eq!(
        client.frame().await?,
        ServerFrame::Pong,
        "the connection survived"
    );

    let oversize = format!(r#"{{"op":"ping","pad":"{}"}}"#, "x".repeat(100 * 1024));
    client.send_text(&oversize).await?;
    let (code_closed, frames) = client.until_closed().await?;
    assert_eq!(code_closed, Some(close::MESSAGE_TOO_BIG));
    expect_error(
        frames
            .into_iter()
            .next()
            .expect("an error before the close"),
        ErrorCode::TooLarge,
    );

    let mut bystander = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    bystander.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    let mut flooder = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    for _ in 0..200 {
        if flooder.send_text(r#"{"op":"ping"}"#).await.is_err() {
            break;
        }
    }
    let (flood_close, frames) = flooder.until_closed().await?;
    assert_eq!(flood_close, Some(close::FLOOD));
    assert!(
        frames.iter().any(|f| matches!(
            f,
            ServerFrame::Error {
                code: ErrorCode::Flood,
                ..
            }
        )),
        "{frames:?}"
    );
    assert_eq!(
        relay.metric("wardline_flood_closes_total").await,
        Some(1.0),
        "the flood close is counted"
    );
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(
        bystander.notifications(1).await?[0].message,
        critical_lab_result(1)
    );
    assert_eq!(relay.get("/healthz", None).await.0, 200);
    Ok(())
}
on_both_brokers!(bad_frames_get_clear_errors);

/// Bad publish requests get the HealthHub notification effect's failed shape with a reason and a code.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_publishes_fail_with_reasons() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let cases = [
        ("{oops".to_owned(), 400, ErrorCode::MalformedJson),
        (
            json!({"channel": "nurse:1:notifications", "message": {}}).to_string(),
            400,
            ErrorCode::UnknownChannel,
        ),
        (
            json!({"channel": DOCTOR_CHANNEL, "message": "text"}).to_string(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"channel": DOCTOR_CHANNEL, "message": {}, "recipient_id": "d2"}).to_string(),
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            json!({"channel": DOCTOR_CHANNEL, "message": {"pad": "x".repeat(70_000)}}).to_string(),
            413,
            ErrorCode::TooLarge,
        ),
    ];
    for (body, status, expected) in cases {
        let (got, reply) = relay.publish_text(body.clone()).await;
        assert_eq!(
            (got, code(&reply)),
            (status, u64::from(expected.code())),
            "{reply}"
        );
        assert_eq!(reply["status"], "failed");
        assert!(reply["reason"].as_str().is_some_and(|r| !r.is_empty()));
    }
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &json!({"type": "ok"})).await;
    assert_eq!((status, reply["status"].as_str()), (200, Some("published")));
}

/// A client that stops reading is cut off (4008) without delaying one that reads; after resuming
/// from its cursor it has lost nothing.
async fn a_slow_consumer_is_cut_off_and_loses_nothing(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &["--queue-capacity", "8"]).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut slow = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    slow.subscribe(&[(DOCTOR_CHANNEL, Some("0"))]).await?;
    let mut fast = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    fast.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    const COUNT: usize = 400;
    let fast_reader = tokio::spawn(async move { fast.notifications(COUNT).await });
    let pad = "x".repeat(16 * 1024);
    for n in 0..COUNT {
        let (status, _) = relay
            .publish(DOCTOR_CHANNEL, &json!({"type": "t", "n": n, "pad": pad}))
            .await;
        assert_eq!(status, 200);
    }
    // The fast client got everything while the slow one was not reading at all.
    let fast_got = fast_reader.await??;
    assert_eq!(
        fast_got
            .iter()
            .map(|n| n.message["n"].as_u64().unwrap() as usize)
            .collect::<Vec<_>>(),
        (0..COUNT).collect::<Vec<_>>()
    );

    // The slow one finds what the kernel buffered, then the cut: the 4008 close waited for it to
    // read (the relay dropped it after a second before, and the client learnt nothing).
    let mut slow_got = Vec::new();
    let close_code = loop {
        match next_text(&mut slow.socket).await? {
            Ok(text) => match serde_json::from_str::<ServerFrame>(&text)? {
                ServerFrame::Notification(n) => slow_got.push(n),
                other => panic!("unexpected {other:?}"),
            },
            Err(code) => break code,
        }
    };
    assert_eq!(close_code, Some(close::SLOW_CONSUMER));
    assert!(slow_got.len() < COUNT, "it was cut off before the end");
    let metrics = relay.metrics().await;
    assert!(
        metrics.contains("wardline_slow_consumer_closes_total 1"),
        "{metrics}"
    );

    let mut resumed = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    let since = slow_got
        .last()
        .map(|n| n.id.to_string())
        .unwrap_or_else(|| "0".into());
    let (replayed, _) = resumed.subscribe(&[(DOCTOR_CHANNEL, Some(&since))]).await?;
    slow_got.extend(replayed);
    let numbers: Vec<usize> = slow_got
        .iter()
        .map(|n| n.message["n"].as_u64().unwrap() as usize)
        .collect();
    assert_eq!(numbers, (0..COUNT).collect::<Vec<_>>());
    Ok(())
}
on_both_brokers!(a_slow_consumer_is_cut_off_and_loses_nothing);

/// A device whose socket is full when its queue overflows, and that reads again seconds later
/// (a phone waking up), still gets the 4008 close after what it had not read: the close waits
/// behind the unread frames, up to the write deadline. (It was dropped after one second, and the
/// device learnt only that the connection was gone.)
#[tokio::test]
async fn a_slow_consumer_that_reads_later_still_hears_why_it_was_cut() -> anyhow::Result<()> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let relay = Relay::embedded(&["--queue-capacity", "8"]).await?;
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let tcp = socket.connect(relay.address.parse()?).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let request = format!("{}?token={doctor}", relay.ws_url("/ws/d1")).into_client_request()?;
    let tcp = tokio_tungstenite::MaybeTlsStream::Plain(tcp);
    let (mut device, _) = tokio_tungstenite::client_async(request, tcp).await?;
    let pad = "x".repeat(32 * 1024);
    for n in 0..300 {
        let (status, _) = relay
            .publish(DOCTOR_CHANNEL, &json!({"type": "t", "n": n, "pad": pad}))
            .await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let mut read = 0;
    let close_code = loop {
        match next_text(&mut device).await? {
            Ok(_) => read += 1,
            Err(code) => break code,
        }
    };
    assert!(read < 300, "it was cut off before the end");
    assert_eq!(
        close_code,
        Some(close::SLOW_CONSUMER),
        "after {read} frames"
    );
    Ok(())
}

async fn poll_status(relay: &Relay, path: &str, want: u16) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = relay.get(path, None).await;
        if status == want {
            return body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} still answers {status}: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Redis killed mid-stream: clients are told to come back (1013), readiness and publishes fail with
/// clear reasons, the relay keeps running; Redis back: it recovers and clients resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_is_reported_and_recovered_from() {
    let mut redis = RedisServer::start().await.unwrap();
    let mut relay = Relay::on_redis(&redis, &[]).await.unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    let mut raw = connect(&relay.ws_url(&format!("/ws/d1?token={doctor}")), &[])
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let before = client.notifications(1).await.unwrap()[0].id;
    assert!(next_text(&mut raw).await.unwrap().is_ok());

    redis.kill().await;
    let (code, _) = client.until_closed().await.unwrap();
    assert_eq!(code, Some(close::TRY_AGAIN_LATER));
    assert_eq!(
        next_text(&mut raw).await.unwrap(),
        Err(Some(close::TRY_AGAIN_LATER))
    );
    let body = poll_status(&relay, "/readyz", 503).await;
    assert_eq!(code_of(&body), 50301, "{body}");
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (503, Some("failed")),
        "{reply}"
    );
    assert!(
        reply["reason"].as_str().unwrap().contains("unavailable"),
        "{reply}"
    );
    match connect(&relay.ws_url(&format!("/ws/d1?token={doctor}")), &[]).await {
        Err(wardline_tests::client::Refused::Http(503, body)) => assert_eq!(code_of(&body), 50301),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    assert!(relay.is_running());

    redis.restart().await.unwrap();
    poll_status(&relay, "/readyz", 200).await;
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor)
        .await
        .unwrap();
    let since = before.to_string();
    client
        .subscribe(&[(DOCTOR_CHANNEL, Some(&since))])
        .await
        .unwrap();
    let (status, _) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(3)).await;
    assert_eq!(status, 200);
    assert_eq!(
        client.notifications(1).await.unwrap()[0].message,
        critical_lab_result(3)
    );
    assert!(
        relay.log().contains("Redis pub/sub down"),
        "the outage is logged"
    );
}

fn code_of(body: &Value) -> u64 {
    code(body)
}

/// SIGTERM closes connections with 1001 and the process exits cleanly.
async fn sigterm_drains_connections_with_1001(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    let mut raw = connect(&relay.ws_url(&format!("/ws/d1?token={doctor}")), &[])
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let exited = tokio::spawn(relay.terminate());
    assert_eq!(client.until_closed().await?.0, Some(close::GOING_AWAY));
    assert_eq!(next_text(&mut raw).await?, Err(Some(close::GOING_AWAY)));
    assert!(exited.await??, "clean exit");
    Ok(())
}
on_both_brokers!(sigterm_drains_connections_with_1001);

/// The embedded broker keeps history across a restart of the relay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_history_survives_a_relay_restart() {
    let dir = tempfile::tempdir().unwrap();
    let relay = Relay::start_in(dir.path(), None, &[], None).await.unwrap();
    for n in 0..3 {
        assert_eq!(
            relay
                .publish(DOCTOR_CHANNEL, &critical_lab_result(n))
                .await
                .0,
            200
        );
    }
    assert!(relay.terminate().await.unwrap());
    let relay = Relay::start_in(dir.path(), None, &[], None).await.unwrap();
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    let (replayed, _) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some("0"))])
        .await
        .unwrap();
    assert_eq!(
        replayed
            .iter()
            .map(|n| n.message.clone())
            .collect::<Vec<_>>(),
        (0..3).map(critical_lab_result).collect::<Vec<_>>()
    );
    let _ = client.socket.next().await;
}

/// New connections beyond an address's burst are refused with 429 until its bucket refills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_floods_from_one_address_are_rate_limited() {
    let dir = tempfile::tempdir().unwrap();
    // The harness's generous limits come first on the command line; these later flags win.
    let relay = Relay::start_in(
        dir.path(),
        None,
        &[
            "--connections-per-ip-burst",
            "3",
            "--connections-per-ip-per-s",
            "1",
        ],
        None,
    )
    .await
    .unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let url = relay.ws_url(&format!("/ws/d1?token={doctor}"));
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(connect(&url, &[]).await.unwrap());
    }
    match connect(&url, &[]).await {
        Err(wardline_tests::client::Refused::Http(429, body)) => assert_eq!(code(&body), 42901),
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
    assert_eq!(
        relay.get("/healthz", None).await.0,
        200,
        "plain HTTP is not limited"
    );
}

/// SSE streams carry a heartbeat comment at the configured interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_streams_carry_heartbeats() {
    let relay = Relay::embedded(&["--heartbeat", "300ms"]).await.unwrap();
    let url = format!(
        "{}/sse/d1?token={}",
        relay.base,
        token("d1", "doctor", &[], 600)
    );
    let mut response = reqwest::get(&url).await.unwrap();
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let mut seen = String::new();
    while !seen.contains(": heartbeat") {
        let chunk = tokio::time::timeout(WAIT, response.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// The node recording plain PUBLISHes is killed without releasing its lease: the node that takes
/// the lease over records what was published meanwhile, once, in order, and not what the first
/// node had already recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorder_killed_mid_stream_loses_no_plain_publish() {
    let redis = RedisServer::start().await.unwrap();
    let first = Relay::on_redis(&redis, &[]).await.unwrap();
    wardline_tests::wait_for_recorder(&redis).await.unwrap();
    let second = Relay::on_redis(&redis, &[]).await.unwrap();
    let mut client = V1Client::connect(&second.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    let mut conn = redis.connection().await;
    let publish =
        |n: u64| json!({"type": "lab_result_available", "test_type": "CBC", "n": n}).to_string();
    for n in 0..5 {
        let _: i64 = redis::AsyncCommands::publish(&mut conn, DOCTOR_CHANNEL, publish(n))
            .await
            .unwrap();
    }
    assert_eq!(
        client.notifications(5).await.unwrap().len(),
        5,
        "recorded by the first node"
    );

    drop(first); // SIGKILL: the lease stays until it expires.
    for n in 5..15 {
        let _: i64 = redis::AsyncCommands::publish(&mut conn, DOCTOR_CHANNEL, publish(n))
            .await
            .unwrap();
    }
    let got = client.notifications(10).await.unwrap();
    let numbers: Vec<u64> = got
        .iter()
        .map(|n| n.message["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (5..15).collect::<Vec<u64>>(),
        "all, once, in order"
    );
    let stored: usize =
        redis::AsyncCommands::xlen(&mut conn, format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
            .await
            .unwrap();
    assert_eq!(stored, 15, "nothing recorded twice");
    assert!(
        second.log().contains("took the recorder lease over"),
        "{}",
        second.log()
    );
}
