//! Hostile or broken input at the edge, over the real relay: cursors, repeated channels, `ttl_s`
//! and token times are checked once where they come in, so that no client can make the relay skip
//! notifications silently, build a replay many times over, store what it cannot deliver, or let a
//! token in before its time.

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use wardline_protocol::{ClientFrame, ErrorCode, ServerFrame, SubscribeChannel};
use wardline_tests::client::{SseClient, V1Client};
use wardline_tests::small_disk::SmallDisk;
use wardline_tests::{
    BrokerKind, RedisServer, Relay, SECRET, critical_lab_result, on_both_brokers, token, unix_now,
};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// A resume cursor in the future, beyond anything the channel held (made up, or a store's clock
/// went back), starts from the channel's end and says `gap: true`; the next notification arrives.
/// Taken as it was, every notification up to the cursor was skipped, silently. A cursor past the
/// end but not in the future ("from a week ago" on a quiet channel, as the receiver asks) is taken
/// as it is, without a gap.
async fn a_cursor_from_the_future_starts_at_the_end_and_reports_a_gap(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let (status, first) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200, "{first}");
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let far_future = "99999999999999-0";
    let (replayed, outcomes) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some(far_future))])
        .await?;
    assert!(replayed.is_empty());
    let ServerFrame::Resumed {
        gap,
        replayed,
        cursor,
        ..
    } = &outcomes[0]
    else {
        panic!("{outcomes:?}")
    };
    assert!(*gap, "the client must hear it may have missed something");
    assert_eq!(*replayed, 0);
    assert_eq!(
        cursor.map(|c| c.to_string()).as_deref(),
        first["message_id"].as_str(),
        "the position is the channel's end"
    );
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    let got = client.notifications(1).await?;
    assert_eq!(got[0].message, critical_lab_result(2));
    assert_eq!(
        relay.metric("wardline_future_cursors_total").await,
        Some(1.0)
    );

    let a_minute_ago = format!("{}-0", (unix_now() - 60) * 1000);
    let (_, outcomes) = client
        .subscribe(&[("system:alerts", Some(&a_minute_ago))])
        .await?;
    assert!(
        matches!(outcomes[..], [ServerFrame::Resumed { gap: false, .. }]),
        "{outcomes:?}"
    );
    Ok(())
}
on_both_brokers!(a_cursor_from_the_future_starts_at_the_end_and_reports_a_gap);

/// A cursor larger than any broker holds is a bad cursor and the connection stays; on the embedded
/// broker it was a "broker unavailable" and a close with 1013, which clients retry forever.
async fn an_oversized_cursor_is_a_bad_cursor_not_an_outage(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let (_, outcomes) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some("18446744073709551615-0"))])
        .await?;
    let ServerFrame::Error { code, message, .. } = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert_eq!(*code, ErrorCode::BadCursor, "{message}");
    assert!(message.contains("9223372036854775807"), "{message}");
    let (_, outcomes) = client.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    assert!(
        matches!(outcomes[..], [ServerFrame::Resumed { gap: false, .. }]),
        "still connected: {outcomes:?}"
    );
    Ok(())
}
on_both_brokers!(an_oversized_cursor_is_a_bad_cursor_not_an_outage);

/// A channel named many times in one request is served once, over `wardline.v1` and SSE: its
/// replay was built once per name (one patient's SSE request took a relay to 2.3 GB).
async fn a_channel_named_many_times_is_replayed_once(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let patient_channel = "patient:p1:notifications";
    for n in 1..=3 {
        let (status, reply) = relay
            .publish(patient_channel, &critical_lab_result(n))
            .await;
        assert_eq!(status, 200, "{reply}");
    }
    let patient = token("p1", "patient", &[], 600);

    let mut client = V1Client::connect(&relay.ws_url(""), "p1", &patient).await?;
    let request = |since: &str| SubscribeChannel {
        channel: patient_channel.into(),
        since: Some(since.into()),
        epoch: None,
    };
    client
        .send(&ClientFrame::Subscribe {
            channels: vec![request("0"), request("0"), request("0"), request("0")],
        })
        .await?;
    let mut frames = Vec::new();
    loop {
        let frame = client.frame().await?;
        let resumed = matches!(frame, ServerFrame::Resumed { .. });
        frames.push(frame);
        if resumed {
            break;
        }
    }
    relay
        .publish(patient_channel, &critical_lab_result(4))
        .await;
    let next = client.frame().await?;
    let ServerFrame::Notification(live) = &next else {
        panic!("after one replay comes the live notification, not another replay: {next:?}")
    };
    assert_eq!(live.message, critical_lab_result(4));
    assert_eq!(frames.len(), 4, "three replayed, one resumed: {frames:?}");

    let url = format!(
        "{}/sse/p1?token={patient}&since=0&channels={}",
        relay.base,
        [patient_channel; 4].join(",")
    );
    let mut sse = SseClient::open(&url, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut events = Vec::new();
    loop {
        let event = sse.next().await?.context("stream ended")?;
        let data: Value = serde_json::from_str(&event.data)?;
        let is_live = data["message"] == critical_lab_result(5);
        events.push((event.event, data));
        if events.len() == 4 {
            relay
                .publish(patient_channel, &critical_lab_result(5))
                .await;
        }
        if is_live {
            break;
        }
        assert!(events.len() < 20, "{events:?}");
    }
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(
        names,
        [
            "message", "message", "message", "message", "resumed", "message"
        ],
        "four stored, one resumed, then the live one: {events:?}"
    );
    Ok(())
}
on_both_brokers!(a_channel_named_many_times_is_replayed_once);

/// A resume from the start of a long history holds a page of it at a time, not the history: a
/// device resuming over 1,500 notifications of 48 KB (72 MB) that does not read at first grows the
/// relay by much less than that (the whole replay was built before the first byte: 227 MB for
/// 2,000 of 60 KB); then every notification arrives once, in order, over `wardline.v1` and SSE.
#[tokio::test]
async fn a_resume_over_a_long_history_holds_a_page_not_the_history() -> anyhow::Result<()> {
    const STORED: usize = 1_500;
    let relay = Relay::embedded(&[]).await?;
    let mut message = critical_lab_result(0);
    message["data"]["report"] = Value::String("r".repeat(48 * 1024));
    for n in 0..STORED {
        message["data"]["n"] = n.into();
        let (status, reply) = relay.publish(DOCTOR_CHANNEL, &message).await;
        assert_eq!(status, 200, "{reply}");
    }
    let before = relay.resident_bytes()?;

    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    client
        .send(&ClientFrame::Subscribe {
            channels: vec![SubscribeChannel {
                channel: DOCTOR_CHANNEL.into(),
                since: Some("0".into()),
                epoch: None,
            }],
        })
        .await?;
    let mut peak = before;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        peak = peak.max(relay.resident_bytes()?);
    }
    let grown_mb = (peak.saturating_sub(before)) as f64 / 1e6;
    eprintln!("the relay grew by {grown_mb:.1} MB while a 72 MB replay waited on its reader");
    assert!(grown_mb < 30.0, "grew by {grown_mb:.1} MB");
    let replayed = client.notifications(STORED).await?;
    let order: Vec<u64> = replayed
        .iter()
        .map(|n| n.message["data"]["n"].as_u64().unwrap())
        .collect();
    assert_eq!(order, (0..STORED as u64).collect::<Vec<_>>());
    let ServerFrame::Resumed { replayed, gap, .. } = client.frame().await? else {
        panic!("the replay ends with resumed")
    };
    assert_eq!((replayed, gap), (STORED as u64, false));

    let url = format!("{}/sse/d1?token={doctor}&since=0", relay.base);
    let mut sse = SseClient::open(&url, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut order = Vec::new();
    let resumed = loop {
        let event = sse.next().await?.context("stream ended")?;
        let data: Value = serde_json::from_str(&event.data)?;
        if event.event == "resumed" && data["channel"] == DOCTOR_CHANNEL {
            break data;
        }
        if event.event == "message" {
            order.push(data["message"]["data"]["n"].as_u64().context("n")?);
        }
    };
    assert_eq!(order, (0..STORED as u64).collect::<Vec<_>>());
    assert_eq!(resumed["replayed"], STORED as u64, "{resumed}");
    Ok(())
}

/// `ttl_s` must be from 1 s to 366 days: 0 and huge values were "published" and then never
/// delivered live (Redis) or failed with a 500 (embedded broker).
async fn a_ttl_out_of_range_is_refused(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let service = token("backend", "service", &[], 600);
    for ttl_s in [json!(0), json!(31_622_401u64), json!(u64::MAX)] {
        let body =
            json!({"channel": DOCTOR_CHANNEL, "message": critical_lab_result(1), "ttl_s": ttl_s});
        let (status, reply) = relay.publish_as(&service, &body).await;
        assert_eq!(status, 400, "ttl_s {ttl_s}: {reply}");
        assert_eq!(reply["code"], 40005, "{reply}");
        assert!(
            reply["message"]
                .as_str()
                .unwrap_or_default()
                .contains("ttl_s"),
            "{reply}"
        );
    }
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let (replayed, _) = client.subscribe(&[(DOCTOR_CHANNEL, Some("0"))]).await?;
    assert!(
        replayed.is_empty(),
        "nothing refused was stored: {replayed:?}"
    );
    let body =
        json!({"channel": DOCTOR_CHANNEL, "message": critical_lab_result(2), "ttl_s": 31_622_400});
    let (status, reply) = relay.publish_as(&service, &body).await;
    assert_eq!(status, 200, "{reply}");
    let got = client.notifications(1).await?;
    assert_eq!(got[0].message, critical_lab_result(2));
    Ok(())
}
on_both_brokers!(a_ttl_out_of_range_is_refused);

fn signed(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// `nbf` and `iat` in the future are refused (`nbf` was not checked at all), a fractional `exp`
/// is read as its whole seconds (it was read as 0), and `--jwt-leeway` allows for an identity
/// provider's clock that runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_time_claim_is_checked() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let now = unix_now();
    let doctor = |extra: Value| {
        let mut claims = json!({"sub": "d1", "role": "doctor", "exp": now + 600});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        signed(claims)
    };
    let me = |token: String| {
        let relay = &relay;
        async move { relay.get("/v1/me", Some(&token)).await }
    };

    let (status, body) = me(doctor(json!({"nbf": now + 120}))).await;
    assert_eq!((status, &body["code"]), (401, &json!(40102)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("nbf"), "{body}");
    let (status, body) = me(doctor(json!({"iat": now + 120}))).await;
    assert_eq!((status, &body["code"]), (401, &json!(40102)), "{body}");
    assert!(body["message"].as_str().unwrap().contains("iat"), "{body}");
    let (status, body) = me(doctor(json!({"nbf": now - 5, "iat": now - 5}))).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = me(doctor(json!({"exp": "soon"}))).await;
    assert_eq!(status, 401, "{body}");

    // A fractional exp is a valid NumericDate, read as its whole seconds (it was read as 0).
    let fractional = doctor(json!({"exp": (now + 600) as f64 + 0.5}));
    let (status, body) = me(fractional.clone()).await;
    assert_eq!(
        (status, &body["expires_at"]),
        (200, &json!(now + 600)),
        "{body}"
    );
    V1Client::connect(&relay.ws_url(""), "d1", &fractional)
        .await
        .unwrap();

    let lenient = Relay::embedded(&["--jwt-leeway", "3m"]).await.unwrap();
    let (status, body) = lenient
        .get("/v1/me", Some(&doctor(json!({"nbf": now + 120}))))
        .await;
    assert_eq!(status, 200, "within the leeway: {body}");
    let expired = signed(json!({"sub": "d1", "role": "doctor", "exp": now - 60}));
    let (status, body) = lenient.get("/v1/me", Some(&expired)).await;
    assert_eq!(status, 200, "expired within the leeway: {body}");
    let (status, body) = relay.get("/v1/me", Some(&expired)).await;
    assert_eq!((status, &body["code"]), (401, &json!(40103)), "{body}");
}

/// Every file in `dir` and `dir` itself, with their modes.
fn modes(dir: &std::path::Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    let mut found = vec![(".".to_owned(), mode(dir))];
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        found.push((
            entry.file_name().to_string_lossy().into_owned(),
            mode(&entry.path()),
        ));
    }
    found.sort();
    found
}

/// The data dir holds the embedded broker's history, patient details included: it is 0700 and its
/// files 0600 (`history.sqlite3` was created 0644 in a 0755 directory), and a relay started on a
/// wider one narrows it and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_dir_is_the_relays_alone() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let private = |when: &str| {
        let found = modes(&data);
        let names: Vec<&str> = found.iter().map(|(name, _)| name.as_str()).collect();
        assert!(names.contains(&"history.sqlite3"), "{when}: {found:?}");
        for (name, mode) in &found {
            let expected = if name == "." { 0o700 } else { 0o600 };
            assert_eq!(*mode, expected, "{when}: {name} is {mode:o}: {found:?}");
        }
    };
    // Made as an administrator would, with the usual umask (the harness writes relay.log there).
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let relay = Relay::start_in(&data, None, &[], None).await.unwrap();
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(
        data.join("history.sqlite3-wal").exists(),
        "the write-ahead log is checked too"
    );
    private("created by the relay");
    assert!(relay.terminate().await.unwrap());

    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    for entry in std::fs::read_dir(&data).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
    }
    let relay = Relay::start_in(&data, None, &[], None).await.unwrap();
    private("after a start on wider modes");
    assert!(
        relay.log().contains("made private"),
        "the relay says what it changed: {}",
        relay.log()
    );
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    let (replayed, _) = client
        .subscribe(&[(DOCTOR_CHANNEL, Some("0"))])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 1, "the history is still there");
}

/// Control frames count against the frame limit: a ping flood is closed with 4029 like any other
/// flood and counted (ten million pings in 20 s were answered with 1.35 GB of pongs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ping_flood_is_a_flood() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    let relay = Relay::embedded(&[]).await.unwrap();
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    for _ in 0..1000 {
        if client
            .socket
            .send(Message::Ping(Vec::new().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let (code, frames) = client.until_closed().await.unwrap();
    assert_eq!(code, Some(wardline_protocol::close::FLOOD), "{frames:?}");
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
    assert_eq!(relay.metric("wardline_flood_closes_total").await, Some(1.0));
}

/// Text from a request is escaped in the log: a resume position holding a line break is refused
/// and logged with the refusal, and cannot forge a line of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_text_cannot_forge_a_log_line() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let forged = "2026-01-01T00:00:00.000000Z  INFO wardline_relay: forged";
    let url = format!(
        "{}/sse/d1?token={}&since=doctor%3Ad1%3Anotifications%3D0-0%3Bx%0A{}",
        relay.base,
        token("d1", "doctor", &[], 600),
        forged.replace(' ', "%20").replace(':', "%3A")
    );
    let refused = SseClient::open(&url, None).await.unwrap();
    let Err((status, body)) = refused else {
        panic!("a bad position is refused")
    };
    assert_eq!((status, &body["code"]), (400, &json!(40004)), "{body}");
    let deadline = tokio::time::Instant::now() + wardline_tests::WAIT;
    while !relay.log().contains("request refused") {
        assert!(tokio::time::Instant::now() < deadline, "{}", relay.log());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let log = relay.log();
    assert!(
        !log.lines().any(|line| line.starts_with(forged)),
        "a forged line: {log}"
    );
}

/// An `idempotency_key` used again for a different notification is refused with 409 (the first
/// one's id was answered, silently dropping the second); the same notification again is still
/// answered as a duplicate.
async fn an_idempotency_key_reused_for_another_notification_is_a_conflict(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let service = token("backend", "service", &[], 600);
    let body = |n: usize| json!({"channel": DOCTOR_CHANNEL, "message": critical_lab_result(n), "idempotency_key": "lab-1"});
    let (status, first) = relay.publish_as(&service, &body(1)).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = relay.publish_as(&service, &body(1)).await;
    assert_eq!(
        (status, &again["duplicate"]),
        (200, &json!(true)),
        "{again}"
    );
    assert_eq!(again["message_id"], first["message_id"]);
    let (status, other) = relay.publish_as(&service, &body(2)).await;
    assert_eq!((status, &other["code"]), (409, &json!(40901)), "{other}");
    assert!(
        other["message"]
            .as_str()
            .unwrap_or_default()
            .contains("idempotency_key"),
        "{other}"
    );
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let (stored, _) = client.subscribe(&[(DOCTOR_CHANNEL, Some("0"))]).await?;
    assert_eq!(stored.len(), 1, "one notification stored: {stored:?}");
    assert_eq!(stored[0].message, critical_lab_result(1));
    Ok(())
}
on_both_brokers!(an_idempotency_key_reused_for_another_notification_is_a_conflict);

/// A resume over more expired notifications than one replay page holds finishes: expired ones are
/// left out of a page but still move the replay on (it read the same page again forever).
async fn a_resume_over_pages_of_expired_notifications_finishes(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let service = token("backend", "service", &[], 600);
    for n in 0..520 {
        let body = json!({"channel": DOCTOR_CHANNEL, "message": {"type": "t", "n": n}, "ttl_s": 1});
        let (status, reply) = relay.publish_as(&service, &body).await;
        assert_eq!(status, 200, "{reply}");
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200, "{reply}");
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let (replayed, outcomes) = client.subscribe(&[(DOCTOR_CHANNEL, Some("0"))]).await?;
    let messages: Vec<&Value> = replayed.iter().map(|n| &n.message).collect();
    assert_eq!(messages, [&critical_lab_result(1)], "{outcomes:?}");
    Ok(())
}
on_both_brokers!(a_resume_over_pages_of_expired_notifications_finishes);

/// A plain Redis `PUBLISH` is held to what `POST /v1/publish` accepts: one larger than 64 KiB or
/// nested deeper than 64 levels is not recorded (not even in part), and is counted and logged;
/// the next ordinary one is recorded and delivered. (A 200-deep payload was stored and relayed,
/// and the receiver then dropped it without a gap.) `POST /v1/publish` refuses the same depth.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_publishes_are_held_to_the_publish_limits() {
    use redis::AsyncCommands;
    let redis = wardline_tests::RedisServer::start().await.unwrap();
    let relay = Relay::on_redis(&redis, &[]).await.unwrap();
    wardline_tests::wait_for_recorder(&redis).await.unwrap();
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let large = json!({"type": "t", "pad": "x".repeat(70 * 1024)}).to_string();
    let mut conn = redis.connection().await;
    for payload in [&deep, &large] {
        let _: i64 = conn.publish(DOCTOR_CHANNEL, payload).await.unwrap();
    }
    let _: i64 = conn
        .publish(DOCTOR_CHANNEL, critical_lab_result(1).to_string())
        .await
        .unwrap();
    let got = client.notifications(1).await.unwrap();
    assert_eq!(
        got[0].message,
        critical_lab_result(1),
        "the refused ones never arrive"
    );
    let stored: usize = conn
        .xlen(format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
        .await
        .unwrap();
    assert_eq!(stored, 1, "only the ordinary one is stored");
    assert_eq!(
        relay.metric("wardline_plain_publishes_refused_total").await,
        Some(2.0)
    );
    assert!(
        relay
            .log()
            .contains("plain PUBLISH not recorded: nested deeper than 64")
    );
    assert!(!relay.log().contains("xxxxxxxx"), "no content in the log");

    let deep_object = json!({"channel": DOCTOR_CHANNEL, "message": {"type": "t", "deep": serde_json::from_str::<Value>(&format!("{}1{}", "[".repeat(70), "]".repeat(70))).unwrap()}});
    let (status, reply) = relay
        .publish_as(&token("backend", "service", &[], 600), &deep_object)
        .await;
    assert_eq!((status, &reply["code"]), (400, &json!(40005)), "{reply}");
}

/// Protocol violations close with their codes, so that the device learns why (the connection was
/// dropped without a close frame): 1007 for a text frame that is not UTF-8, 1002 for a reserved
/// bit set, 1009 for a frame over the hard limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_close_with_their_codes() {
    use futures_util::SinkExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use wardline_protocol::close;
    let relay = Relay::embedded(&[]).await.unwrap();
    let doctor = token("d1", "doctor", &[], 600);
    let text = |bytes: &[u8]| Frame::message(bytes.to_vec(), OpCode::Data(Data::Text), true);
    let mut reserved_bit = text(b"{\"op\":\"ping\"}");
    reserved_bit.header_mut().rsv1 = true;
    let cases = [
        (
            Message::Frame(text(&[0x7b, 0xff, 0xfe, 0x7d])),
            close::INVALID_PAYLOAD,
        ),
        (Message::Frame(reserved_bit), close::PROTOCOL_ERROR),
        (
            Message::Binary(vec![0u8; 2 << 20].into()),
            close::MESSAGE_TOO_BIG,
        ),
    ];
    for (violation, expected) in cases {
        let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor)
            .await
            .unwrap();
        let _ = client.socket.send(violation).await;
        let (code, frames) = client.until_closed().await.unwrap();
        assert_eq!(code, Some(expected), "{frames:?}");
    }
    assert_eq!(relay.get("/healthz", None).await.0, 200);
}

/// Receipts are recorded only for notifications the channel holds: made-up ids come back as
/// `unknown`, over the WebSocket and over HTTP, and nothing is stored for them (a patient grew the
/// history file by 32 MB in 2 s with receipts for ids never published).
async fn receipts_are_recorded_only_for_stored_notifications(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let (status, published) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200, "{published}");
    let real = published["message_id"].as_str().unwrap().to_owned();
    let made_up: Vec<String> = (1..=200).map(|n| format!("{n}-0")).collect();

    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    let mut ids = made_up.clone();
    ids.push(real.clone());
    client
        .send(&ClientFrame::Ack {
            channel: DOCTOR_CHANNEL.into(),
            ids: ids.clone(),
        })
        .await?;
    let ServerFrame::Recorded {
        ids: recorded,
        unknown,
        ..
    } = client.frame().await?
    else {
        panic!("expected recorded")
    };
    assert_eq!(
        recorded.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        std::slice::from_ref(&real)
    );
    assert_eq!(
        unknown.iter().map(|c| c.to_string()).collect::<Vec<_>>(),
        made_up
    );

    let response = reqwest::Client::new()
        .post(format!("{}/v1/receipts", relay.base))
        .bearer_auth(&doctor)
        .json(&json!({"channel": DOCTOR_CHANNEL, "ids": ["7-0"], "kind": "received"}))
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await?;
    assert_eq!(
        (&body["ids"], &body["unknown"]),
        (&json!([]), &json!(["7-0"])),
        "{body}"
    );

    let service = token("backend", "service", &[], 600);
    let (_, receipts) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id=7-0"),
            Some(&service),
        )
        .await;
    assert_eq!(receipts["receipts"], json!([]), "{receipts}");
    let (_, receipts) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={real}"),
            Some(&service),
        )
        .await;
    assert_eq!(
        receipts["receipts"][0]["kind"], "acknowledged",
        "{receipts}"
    );
    Ok(())
}
on_both_brokers!(receipts_are_recorded_only_for_stored_notifications);

/// The relay says at start when Redis would lose what it stores: no persistence, or an eviction
/// policy; and says nothing when Redis keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_warns_of_redis_settings_that_lose_history() {
    let redis = wardline_tests::RedisServer::start().await.unwrap();
    let conn = redis.connection().await;
    let set = |name: &'static str, value: &'static str| {
        let mut conn = conn.clone();
        async move {
            let _: () = redis::cmd("CONFIG")
                .arg("SET")
                .arg(name)
                .arg(value)
                .query_async(&mut conn)
                .await
                .unwrap();
        }
    };
    set("maxmemory-policy", "allkeys-lru").await;
    let lossy = Relay::on_redis(&redis, &[]).await.unwrap();
    let log = lossy.log();
    assert!(
        log.contains("Redis keeps nothing across its own restart"),
        "{log}"
    );
    assert!(
        log.contains("Redis may evict keys") && log.contains("allkeys-lru"),
        "{log}"
    );

    set("appendonly", "yes").await;
    set("maxmemory-policy", "noeviction").await;
    let kept = Relay::on_redis(&redis, &[]).await.unwrap();
    let log = kept.log();
    assert!(
        !log.contains("Redis keeps nothing") && !log.contains("may evict"),
        "{log}"
    );
}

/// `/readyz` says whether a publish can be stored: with the data dir's disk full it answers 503
/// saying the history cannot be written (and a publish is a 503 to retry, not a 500), and 200 once
/// space is free again; a read-only data dir is refused at start with what to do. Before, the
/// relay said ready on a full disk and started on a read-only dir, then failed every publish.
#[tokio::test]
async fn readiness_is_whether_a_publish_can_be_stored() -> anyhow::Result<()> {
    let disk = SmallDisk::mount("768k")?;
    let data_dir = disk.path().join("relay");
    std::fs::create_dir(&data_dir)?;
    let relay = Relay::start_in(&data_dir, None, &[], None).await?;
    assert_eq!(relay.get("/readyz", None).await.0, 200);
    let filler = disk.fill()?;
    let (status, body) = relay.get("/readyz", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 50301, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("cannot be written")),
        "{body}"
    );
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(
        (status, reply["code"].as_u64()),
        (503, Some(50301)),
        "{reply}"
    );
    std::fs::remove_file(filler)?;
    assert_eq!(relay.get("/readyz", None).await.0, 200);
    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    assert_eq!(status, 200, "{reply}");
    assert!(relay.terminate().await?);

    disk.remount("ro")?;
    let refused = tokio::process::Command::new(wardline_tests::binary("wardline-relay"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .args(["--jwt-secret", SECRET, "--data-dir"])
        .arg(&data_dir)
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success(),
        "a read-only data dir was accepted: {stderr}"
    );
    assert!(stderr.contains("writable data dir"), "{stderr}");
    Ok(())
}

/// A publish Redis does not answer in time says that its outcome is unknown (504, 50401, "retry
/// with the same idempotency_key"), not that the broker is unavailable: Redis, stalled, stored it
/// afterwards, and the retry with the same key finds it stored once. (It answered 503 "broker
/// unavailable" for a notification that was in fact stored and delivered.)
#[tokio::test]
async fn a_publish_redis_answers_too_late_says_its_outcome_is_unknown() -> anyhow::Result<()> {
    let redis = RedisServer::start().await?;
    let relay = Relay::on_redis(&redis, &[]).await?;
    let backend = token("backend", "service", &[], 600);
    let body = json!({
        "channel": DOCTOR_CHANNEL,
        "message": critical_lab_result(1),
        "idempotency_key": "lab-result-1",
    });
    let mut admin = redis.connection().await;
    redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(3000)
        .arg("ALL")
        .query_async::<()>(&mut admin)
        .await?;
    let (status, reply) = relay.publish_as(&backend, &body).await;
    assert_eq!(
        (status, reply["code"].as_u64()),
        (504, Some(50401)),
        "{reply}"
    );
    assert_eq!(reply["status"], "failed", "{reply}");
    assert!(
        reply["reason"]
            .as_str()
            .is_some_and(|r| r.contains("retry with the same idempotency_key")),
        "{reply}"
    );

    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let retried = loop {
        let (status, reply) = relay.publish_as(&backend, &body).await;
        if status == 200 {
            break reply;
        }
        assert!(tokio::time::Instant::now() < deadline, "{reply}");
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    assert_eq!(
        retried["duplicate"], true,
        "Redis had stored the first: {retried}"
    );
    let stored: u64 = redis::cmd("XLEN")
        .arg(format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
        .query_async(&mut admin)
        .await?;
    assert_eq!(stored, 1, "stored once");
    Ok(())
}

/// Subscribes to the doctor's channel from `since` with `epoch`; answers the `resumed` frame's
/// gap, cursor and epoch, and the notifications replayed.
async fn resume_with_epoch(
    relay: &Relay,
    since: &str,
    epoch: Option<&str>,
) -> anyhow::Result<(bool, Option<String>, String, usize)> {
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    client
        .send(&ClientFrame::Subscribe {
            channels: vec![SubscribeChannel {
                channel: DOCTOR_CHANNEL.into(),
                since: Some(since.into()),
                epoch: epoch.map(str::to_owned),
            }],
        })
        .await?;
    let mut replayed = 0;
    loop {
        match client.frame().await? {
            ServerFrame::Notification(_) => replayed += 1,
            ServerFrame::Resumed {
                gap, cursor, epoch, ..
            } => {
                return Ok((
                    gap,
                    cursor.map(|c| c.to_string()),
                    epoch.context("resumed names the epoch")?,
                    replayed,
                ));
            }
            other => anyhow::bail!("unexpected {other:?}"),
        }
    }
}

/// A Redis that lost its data (restarted without persistence) starts a new epoch: a device
/// resuming with the old one hears `gap: true` (what it missed may be gone), over `wardline.v1`
/// and SSE; one resuming with the new epoch does not. Before, such a resume said `gap: false`.
#[tokio::test]
async fn a_redis_that_lost_its_data_is_a_gap_for_devices_that_resume() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let relay = Relay::on_redis(&redis, &[]).await?;
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let (gap, cursor, old_epoch, replayed) = resume_with_epoch(&relay, "0", None).await?;
    assert_eq!((gap, replayed), (false, 1));
    let cursor = cursor.context("a cursor")?;
    let (gap, ..) = resume_with_epoch(&relay, &cursor, Some(&old_epoch)).await?;
    assert!(!gap, "the same history");

    redis.restart().await?;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    while relay
        .publish(DOCTOR_CHANNEL, &critical_lab_result(2))
        .await
        .0
        != 200
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Redis did not come back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (gap, new_cursor, new_epoch, replayed) =
        resume_with_epoch(&relay, &cursor, Some(&old_epoch)).await?;
    assert!(gap, "the history that held what the device missed is gone");
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(replayed, 1, "what the new history holds is replayed");
    let new_cursor = new_cursor.context("a cursor")?;
    let (gap, ..) = resume_with_epoch(&relay, &new_cursor, Some(&new_epoch)).await?;
    assert!(!gap, "a device that resumed once is in step again");

    let doctor = token("d1", "doctor", &[], 600);
    let url = format!("{}/sse/d1?token={doctor}", relay.base);
    let last_event_id = format!("epoch={old_epoch};{DOCTOR_CHANNEL}={cursor}");
    let mut sse = SseClient::open(&url, Some(&last_event_id))
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let resumed = loop {
        let event = sse.next().await?.context("stream ended")?;
        if event.event == "resumed" {
            let data: Value = serde_json::from_str(&event.data)?;
            if data["channel"] == DOCTOR_CHANNEL {
                break data;
            }
        }
    };
    assert_eq!(resumed["gap"], true, "{resumed}");
    assert_eq!(resumed["epoch"], new_epoch.as_str(), "{resumed}");
    Ok(())
}

/// The embedded broker's history file replaced by a new one (restored from nothing, deleted by
/// hand) is a new epoch too.
#[tokio::test]
async fn a_replaced_embedded_history_is_a_gap_for_devices_that_resume() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let relay = Relay::start_in(dir.path(), None, &[], None).await?;
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let (_, cursor, old_epoch, _) = resume_with_epoch(&relay, "0", None).await?;
    assert!(relay.terminate().await?);
    for file in [
        "history.sqlite3",
        "history.sqlite3-wal",
        "history.sqlite3-shm",
    ] {
        let _ = std::fs::remove_file(dir.path().join(file));
    }
    let relay = Relay::start_in(dir.path(), None, &[], None).await?;
    let cursor = cursor.context("a cursor")?;
    let (gap, _, new_epoch, _) = resume_with_epoch(&relay, &cursor, Some(&old_epoch)).await?;
    assert!(gap);
    assert_ne!(new_epoch, old_epoch);
    Ok(())
}

/// No log level shows a notification: a relay logging everything (`WARDLINE_LOG=trace`) carries a
/// critical result over `wardline.v1`, a raw WebSocket, SSE and a plain Redis PUBLISH, refuses a
/// body and a frame that quote a patient, and its log names the patient nowhere. (Trace logs
/// printed every WebSocket frame, and refusals quoted the body.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_log_level_shows_a_notification() -> anyhow::Result<()> {
    use redis::AsyncCommands;
    const PATIENT: &str = "Zebediah Quartermain";
    let redis = RedisServer::start().await?;
    let relay = Relay::on_redis_logging(&redis, "trace", &[]).await?;
    wardline_tests::wait_for_recorder(&redis).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut v1 = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    v1.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    let mut raw =
        wardline_tests::client::connect(&relay.ws_url(&format!("/ws/d1?token={doctor}")), &[])
            .await
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let url = format!("{}/sse/d1?token={doctor}", relay.base);
    let mut sse = SseClient::open(&url, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut message = critical_lab_result(1);
    message["patient_name"] = PATIENT.into();

    let (status, reply) = relay.publish(DOCTOR_CHANNEL, &message).await;
    assert_eq!(status, 200, "{reply}");
    let mut conn = redis.connection().await;
    let _: i64 = conn.publish(DOCTOR_CHANNEL, message.to_string()).await?;
    for _ in 0..2 {
        let got = v1.notifications(1).await?;
        assert_eq!(got[0].message["patient_name"], PATIENT);
        let text = wardline_tests::client::next_text(&mut raw)
            .await?
            .map_err(|code| anyhow::anyhow!("closed {code:?}"))?;
        assert!(text.contains(PATIENT));
        loop {
            let event = sse.next().await?.context("stream ended")?;
            if event.event == "message" {
                assert!(event.data.contains(PATIENT));
                break;
            }
        }
    }
    let backend = token("backend", "service", &[], 600);
    let quoting = json!({"channel": DOCTOR_CHANNEL, "message": message, "priority": PATIENT});
    assert_eq!(relay.publish_as(&backend, &quoting).await.0, 400);
    v1.send_text(&format!(r#"{{"op":"subscribe","channels":"{PATIENT}"}}"#))
        .await?;
    assert!(matches!(v1.frame().await?, ServerFrame::Error { .. }));

    let log = relay.log();
    assert!(
        log.contains("request refused"),
        "the refusal is logged, its body not:\n{log}"
    );
    assert!(!log.contains("Zebediah"), "a patient in the log:\n{log}");
    Ok(())
}

/// `POST /v1/receipts` is rate limited per user like a connection's frames (`--frames-per-s`,
/// `--frame-burst`): past the burst a user gets 429 with `Retry-After` while another user is
/// served; and a receipt carries at most 1,000 ids (over HTTP and `wardline.v1`). Before, one
/// patient could post receipts as fast as the relay answered, each with as many ids as 2 MB held.
#[tokio::test]
async fn receipts_are_rate_limited_per_user_and_bounded() -> anyhow::Result<()> {
    let relay = Relay::embedded(&["--frame-burst", "5", "--frames-per-s", "1"]).await?;
    let channel = "patient:p1:notifications";
    let (_, published) = relay.publish(channel, &critical_lab_result(1)).await;
    let id = published["message_id"].as_str().context("id")?.to_owned();
    let http = reqwest::Client::new();
    let post = |user: &'static str, ids: Vec<String>| {
        let request = http
            .post(format!("{}/v1/receipts", relay.base))
            .bearer_auth(token(user, "patient", &[], 600))
            .json(&json!({"channel": format!("patient:{user}:notifications"), "ids": ids, "kind": "received"}));
        async move {
            let response = request.send().await?;
            let status = response.status().as_u16();
            let retry_after = response
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or_default().to_owned());
            let body: Value = response.json().await?;
            anyhow::Ok((status, retry_after, body))
        }
    };
    let mut statuses = Vec::new();
    for _ in 0..10 {
        statuses.push(post("p1", vec![id.clone()]).await?);
    }
    let limited: Vec<_> = statuses.iter().filter(|(s, ..)| *s == 429).collect();
    assert!(limited.len() >= 4, "{statuses:?}");
    assert!(
        limited
            .iter()
            .all(|(_, retry, body)| retry.as_deref() == Some("1") && body["code"] == 42901),
        "{limited:?}"
    );
    assert_eq!(post("p2", vec![]).await?.0, 200, "another user is served");
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    assert_eq!(
        post("p1", vec![id.clone()]).await?.0,
        200,
        "the bucket refills"
    );

    let too_many: Vec<String> = (0..1001).map(|n| format!("{n}-0")).collect();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, _, body) = post("p1", too_many.clone()).await?;
    assert_eq!(
        (status, body["code"].as_u64()),
        (400, Some(40005)),
        "{body}"
    );
    let mut client =
        V1Client::connect(&relay.ws_url(""), "p1", &token("p1", "patient", &[], 600)).await?;
    // Receipt frames draw on the same bucket as the user's HTTP receipts: let it refill.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    client
        .send(&ClientFrame::Received {
            channel: channel.into(),
            ids: too_many,
        })
        .await?;
    match client.frame().await? {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::InvalidRequest),
        other => panic!("{other:?}"),
    }
    Ok(())
}
