//! What reaches whom: HealthHub's clients byte for byte, resume without gaps or duplicates, several relay
//! nodes on one Redis, acknowledgements, Diagnoxix's frames.

use anyhow::Context;
use futures_util::StreamExt;
use redis::AsyncCommands;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use wardline_protocol::{ClientFrame, ErrorCode, ReceiptKind, ServerFrame};
use wardline_tests::client::{SseClient, V1Client, connect, next_text};
use wardline_tests::{
    BrokerKind, RedisServer, Relay, WAIT, critical_lab_result, on_both_brokers, token,
    wait_for_recorder,
};

const DOCTOR_CHANNEL: &str = "doctor:d1:notifications";

/// The HealthHub client tutorial's Python client, unchanged but for the harness arguments, receives byte-identical JSON:
/// published with a plain Redis `PUBLISH` (Redis) or `POST /v1/publish` (embedded).
async fn the_healthhub_python_client_receives_the_published_bytes(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (redis, relay) = wardline_tests::setup(kind, &[]).await?;
    if let Some(redis) = &redis {
        wait_for_recorder(redis).await?;
    }
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/clients/healthhub_tutorial_client.py"
    );
    let mut python = tokio::process::Command::new("python3")
        .args([
            script,
            "d1",
            &token("d1", "doctor", &[], 600),
            &relay.ws_url(""),
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("python3 with websockets is needed (cargo xtask test installs it)")?;
    wardline_tests::show_stderr_on_failure(python.stderr.take().unwrap(), "python client");
    let mut lines = BufReader::new(python.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line()).await??;
    assert_eq!(first.as_deref(), Some("Connected to notifications"));
    // The tutorial client's own spacing and key order (Python's json.dumps), which must survive untouched.
    let payloads = [
        (
            DOCTOR_CHANNEL,
            r#"{"type": "critical_lab_result", "urgent": true, "result_id": "r1", "patient_name": "Bob Wilson", "test_type": "BMP", "requires_review": true}"#,
        ),
        (
            "system:alerts",
            r#"{"type": "system_notification", "content": "Maintenance at 22:00 — «ward 3»"}"#,
        ),
        (
            DOCTOR_CHANNEL,
            r#"{"type":"appointment_requested","appointment_id":"a1","patient_name":"Alice Johnson","reason":"Annual checkup","requested_time":"2025-02-01T10:00:00Z"}"#,
        ),
    ];
    for (channel, payload) in payloads {
        match &redis {
            Some(redis) => {
                let receivers: i64 = redis.connection().await.publish(channel, payload).await?;
                assert_eq!(
                    receivers, 1,
                    "the recorder is the one subscriber of the plain channel"
                );
            }
            None => {
                let (status, reply) = relay
                    .publish_text(format!(r#"{{"channel":"{channel}","message":{payload}}}"#))
                    .await;
                assert_eq!(status, 200, "{reply}");
            }
        }
    }
    for (_, payload) in payloads {
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await??
            .context("python client ended early")?;
        let raw: String =
            serde_json::from_str(line.strip_prefix("RAW ").context("unexpected line")?)?;
        assert_eq!(raw, payload);
    }
    assert!(tokio::time::timeout(WAIT, python.wait()).await??.success());
    if let Some(redis) = &redis {
        // Recorded into history exactly once each.
        let mut conn = redis.connection().await;
        let doctor: usize = conn
            .xlen(format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
            .await?;
        let alerts: usize = conn.xlen("wardline:{system:alerts}:stream").await?;
        assert_eq!((doctor, alerts), (2, 1));
    }
    Ok(())
}
on_both_brokers!(the_healthhub_python_client_receives_the_published_bytes);

async fn publish_numbered(
    relay: &Relay,
    redis: Option<&RedisServer>,
    from: usize,
    to: usize,
) -> anyhow::Result<()> {
    let mut conn = match redis {
        Some(redis) => Some(redis.connection().await),
        None => None,
    };
    for n in from..to {
        let message = json!({"type": "lab_result_available", "result_id": format!("r{n}"), "test_type": "CBC", "n": n});
        match &mut conn {
            // On Redis, the plain PUBLISH of existing backends.
            Some(conn) => {
                let _: i64 = conn.publish(DOCTOR_CHANNEL, message.to_string()).await?;
            }
            None => assert_eq!(relay.publish(DOCTOR_CHANNEL, &message).await.0, 200),
        }
    }
    Ok(())
}

/// A client that disconnects, misses 100 notifications and resumes gets exactly those 100, in order,
/// then live ones, with no duplicate at the seam.
async fn a_resumed_client_gets_exactly_what_it_missed(kind: BrokerKind) -> anyhow::Result<()> {
    let (redis, relay) = wardline_tests::setup(kind, &[]).await?;
    if let Some(redis) = &redis {
        wait_for_recorder(redis).await?;
    }
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    publish_numbered(&relay, redis.as_ref(), 0, 1).await?;
    let cursor = client.notifications(1).await?[0].id;
    drop(client);

    publish_numbered(&relay, redis.as_ref(), 1, 101).await?;
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    let since = cursor.to_string();
    let (mut got, outcomes) = client.subscribe(&[(DOCTOR_CHANNEL, Some(&since))]).await?;
    let ServerFrame::Resumed { gap, replayed, .. } = &outcomes[0] else {
        panic!("{outcomes:?}")
    };
    assert!(!gap);
    assert_eq!(*replayed as usize, got.len());
    // Plain PUBLISHes are recorded asynchronously: what was not in history yet arrives live.
    got.extend(client.notifications(100 - got.len()).await?);
    publish_numbered(&relay, redis.as_ref(), 101, 102).await?;
    got.extend(client.notifications(1).await?);
    let numbers: Vec<u64> = got
        .iter()
        .map(|n| n.message["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (1..102).collect::<Vec<u64>>());
    assert!(got.windows(2).all(|w| w[0].id < w[1].id), "ids grow");
    Ok(())
}
on_both_brokers!(a_resumed_client_gets_exactly_what_it_missed);

/// SSE: one `Last-Event-ID` resumes every channel of the stream.
async fn sse_resumes_every_channel_from_one_event_id(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let url = format!(
        "{}/sse/d1?token={}",
        relay.base,
        token("d1", "doctor", &[], 600)
    );
    let mut sse = SseClient::open(&url, None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for _ in 0..2 {
        assert_eq!(sse.next().await?.context("stream ended")?.event, "resumed");
    }
    let alert = |n: u64| json!({"type": "system_notification", "content": format!("alert {n}")});
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    relay.publish("system:alerts", &alert(1)).await;
    let mut last_id = String::new();
    for _ in 0..2 {
        let event = sse.next().await?.context("stream ended")?;
        assert_eq!(event.event, "message");
        last_id = event.id.context("notifications carry an id")?;
    }
    drop(sse);
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(2)).await;
    relay.publish("system:alerts", &alert(2)).await;
    let mut sse = SseClient::open(&url, Some(&last_id))
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut replayed = Vec::new();
    let mut resumed = 0;
    while resumed < 2 {
        let event = sse.next().await?.context("stream ended")?;
        let data: Value = serde_json::from_str(&event.data)?;
        match event.event.as_str() {
            "message" => replayed.push(data["message"].clone()),
            "resumed" => {
                resumed += 1;
                assert_eq!(data["gap"], false);
            }
            other => panic!("unexpected event {other}: {data}"),
        }
    }
    assert_eq!(replayed, vec![critical_lab_result(2), alert(2)]);
    Ok(())
}
on_both_brokers!(sse_resumes_every_channel_from_one_event_id);

/// Two relay nodes on one Redis: a publish on A reaches a subscriber on B, and plain PUBLISHes are
/// recorded once although both nodes see them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_on_one_redis_deliver_across_and_record_once() {
    let redis = RedisServer::start().await.unwrap();
    let a = Relay::on_redis(&redis, &[]).await.unwrap();
    let b = Relay::on_redis(&redis, &[]).await.unwrap();
    wait_for_recorder(&redis).await.unwrap();
    let mut on_b = V1Client::connect(&b.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    on_b.subscribe(&[(DOCTOR_CHANNEL, None)]).await.unwrap();
    let (status, reply) = a.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(
        reply["recipients_count"], 1,
        "node B holds the live subscription"
    );
    let got = on_b.notifications(1).await.unwrap();
    assert_eq!(got[0].message, critical_lab_result(1));
    assert_eq!(got[0].id.to_string(), reply["message_id"].as_str().unwrap());

    let mut conn = redis.connection().await;
    for n in 0..20 {
        let _: i64 = conn
            .publish(DOCTOR_CHANNEL, json!({"type": "t", "n": n}).to_string())
            .await
            .unwrap();
    }
    let got = on_b.notifications(20).await.unwrap();
    let numbers: Vec<u64> = got
        .iter()
        .map(|n| n.message["n"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..20).collect::<Vec<u64>>());
    let stored: usize = conn
        .xlen(format!("wardline:{{{DOCTOR_CHANNEL}}}:stream"))
        .await
        .unwrap();
    assert_eq!(stored, 21, "each plain PUBLISH stored exactly once");
    // A's own subscriber sees the same ids as B's.
    let mut on_a = V1Client::connect(&a.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    let (replayed, _) = on_a
        .subscribe(&[(DOCTOR_CHANNEL, Some("0"))])
        .await
        .unwrap();
    assert_eq!(replayed.len(), 21);
    assert_eq!(
        replayed[1..].iter().map(|n| n.id).collect::<Vec<_>>(),
        got.iter().map(|n| n.id).collect::<Vec<_>>()
    );
}

/// After a relay restart every device subscribes again at once, faster than Redis answers (here
/// Redis is paused for 1.2 s while they arrive). That stampede costs a few batched SUBSCRIBEs and
/// one read per channel (no replay read for subscriptions without a cursor), so the one command
/// connection's queue stays short enough that no subscription times out; each subscription still
/// starts at the channel's end and receives what is published next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_stampede_costs_redis_few_round_trips() {
    const DEVICES: usize = 1000;
    let redis = RedisServer::start().await.unwrap();
    let relay = Relay::on_redis(&redis, &[]).await.unwrap();
    let base = relay.ws_url("");
    let mut clients = futures_util::future::try_join_all((0..DEVICES).map(|n| {
        let base = base.clone();
        async move {
            let user = format!("d{n}");
            V1Client::connect(&base, &user, &token(&user, "doctor", &[], 600)).await
        }
    }))
    .await
    .unwrap();
    let mut conn = redis.connection().await;
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(1200)
        .arg("ALL")
        .query_async(&mut conn)
        .await
        .unwrap();

    let outcomes = futures_util::future::try_join_all(clients.iter_mut().enumerate().map(
        |(n, client)| async move {
            let channel = format!("doctor:d{n}:notifications");
            client.subscribe(&[(channel.as_str(), None)]).await
        },
    ))
    .await
    .unwrap();
    for (_, frames) in &outcomes {
        assert!(
            matches!(frames[..], [ServerFrame::Resumed { gap: false, .. }]),
            "every device subscribed: {frames:?}"
        );
    }
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut conn)
        .await
        .unwrap();
    let calls = |command: &str| -> u64 {
        stats
            .lines()
            .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
            .and_then(|rest| rest.split(',').next())
            .map_or(0, |calls| calls.parse().unwrap())
    };
    let subscribes = calls("subscribe");
    assert!(
        (1..=DEVICES as u64 / 10).contains(&subscribes),
        "{DEVICES} channels joined with {subscribes} SUBSCRIBEs"
    );
    assert_eq!(calls("xrange"), 0, "no replay read without a cursor");
    assert_eq!(
        calls("xrevrange"),
        DEVICES as u64,
        "one read of each channel's end"
    );

    let last = DEVICES - 1;
    let (status, reply) = relay
        .publish(
            &format!("doctor:d{last}:notifications"),
            &critical_lab_result(1),
        )
        .await;
    assert_eq!(
        (status, &reply["recipients_count"]),
        (200, &json!(1)),
        "{reply}"
    );
    let got = clients[last].notifications(1).await.unwrap();
    assert_eq!(got[0].message, critical_lab_result(1));
}

/// Receipts (stored on the device, acknowledged by a person) are recorded per recipient, over the
/// WebSocket or over HTTP, and the publisher can read them.
async fn acks_become_receipts(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    let (_, reply) = relay.publish(DOCTOR_CHANNEL, &critical_lab_result(7)).await;
    let id = client.notifications(1).await?[0].id;
    assert_eq!(reply["message_id"].as_str(), Some(id.to_string().as_str()));
    let ids = vec![id.to_string()];
    client
        .send(&ClientFrame::Received {
            channel: DOCTOR_CHANNEL.into(),
            ids: ids.clone(),
        })
        .await?;
    assert_eq!(
        client.frame().await?,
        ServerFrame::Recorded {
            kind: ReceiptKind::Received,
            channel: wardline_protocol::Channel::parse(DOCTOR_CHANNEL)?,
            ids: vec![id],
            unknown: Vec::new(),
        }
    );
    client
        .send(&ClientFrame::Ack {
            channel: "doctor:d2:notifications".into(),
            ids: ids.clone(),
        })
        .await?;
    assert!(matches!(
        client.frame().await?,
        ServerFrame::Error {
            code: ErrorCode::ChannelForbidden,
            ..
        }
    ));
    client
        .send(&ClientFrame::Ack {
            channel: DOCTOR_CHANNEL.into(),
            ids: vec!["yesterday".into()],
        })
        .await?;
    assert!(matches!(
        client.frame().await?,
        ServerFrame::Error {
            code: ErrorCode::BadCursor,
            ..
        }
    ));

    // The person acknowledges from somewhere without a connection: HTTP with their own token.
    let ack = json!({"channel": DOCTOR_CHANNEL, "ids": ids, "kind": "acknowledged"});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/receipts", relay.base))
        .bearer_auth(&doctor)
        .json(&ack)
        .send()
        .await?;
    assert_eq!(response.status(), 200);
    let other = token("p1", "patient", &[], 600);
    let response = reqwest::Client::new()
        .post(format!("{}/v1/receipts", relay.base))
        .bearer_auth(&other)
        .json(&ack)
        .send()
        .await?;
    assert_eq!(response.status(), 403);

    let service = token("backend", "service", &[], 600);
    let (status, body) = relay
        .get(
            &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={id}"),
            Some(&service),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let receipts: Vec<(String, String)> = body["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["user"].as_str().unwrap().to_owned(),
                r["kind"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        receipts,
        [
            ("d1".to_owned(), "received".to_owned()),
            ("d1".to_owned(), "acknowledged".to_owned())
        ]
    );
    assert_eq!(
        relay
            .get(
                &format!("/v1/receipts?channel={DOCTOR_CHANNEL}&id={id}"),
                Some(&doctor)
            )
            .await
            .0,
        403
    );
    Ok(())
}
on_both_brokers!(acks_become_receipts);

/// Retries with one idempotency key store and deliver the notification once.
async fn idempotent_publishes_store_once(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    let body = json!({"channel": DOCTOR_CHANNEL, "message": critical_lab_result(1), "idempotency_key": "lab-r1"});
    let service = token("backend", "service", &[], 600);
    let (_, first) = relay.publish_as(&service, &body).await;
    let (status, second) = relay.publish_as(&service, &body).await;
    assert_eq!(status, 200);
    assert_eq!(first["message_id"], second["message_id"]);
    assert_eq!(
        (first["duplicate"].as_bool(), second["duplicate"].as_bool()),
        (Some(false), Some(true))
    );
    relay
        .publish(DOCTOR_CHANNEL, &json!({"type": "marker"}))
        .await;
    let got = client.notifications(2).await?;
    assert_eq!(got[0].message, critical_lab_result(1));
    assert_eq!(got[1].kind, "marker", "the retry was not delivered again");
    assert_eq!(got[0].priority, wardline_protocol::Priority::Critical);
    Ok(())
}
on_both_brokers!(idempotent_publishes_store_once);

/// The Diagnoxix notification service's endpoint: its frame shape and its JSON ping.
async fn diagnoxix_clients_get_their_frames(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let url = relay.ws_url(&format!(
        "/v1/ws/notifications?user_id=d1&token={}",
        token("d1", "doctor", &[], 600)
    ));
    let mut socket = connect(&url, &[])
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    use futures_util::SinkExt;
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            r#"{"type":"ping"}"#.into(),
        ))
        .await?;
    assert_eq!(
        next_text(&mut socket).await?,
        Ok(r#"{"type":"pong"}"#.to_owned())
    );
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(3)).await;
    let frame: Value = serde_json::from_str(
        &next_text(&mut socket)
            .await?
            .map_err(|c| anyhow::anyhow!("closed {c:?}"))?,
    )?;
    assert_eq!(frame["type"], "critical_lab_result");
    assert_eq!(frame["user_id"], "d1");
    assert_eq!(frame["title"], "Critical lab result — BMP for Bob Wilson");
    assert_eq!(frame["data"], critical_lab_result(3));
    assert!(frame["timestamp"].as_str().unwrap().ends_with('Z'));
    // Without a token, unlike Diagnoxix's own server, it is refused.
    let anonymous = relay.ws_url("/v1/ws/notifications?user_id=d1");
    assert!(matches!(
        connect(&anonymous, &[]).await,
        Err(wardline_tests::client::Refused::Http(401, _))
    ));
    let _ = socket.next().await;
    Ok(())
}
on_both_brokers!(diagnoxix_clients_get_their_frames);

/// A cursor older than the history kept is reported as a gap, and what is kept is replayed.
async fn a_cursor_older_than_history_reports_a_gap(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &["--history-max-len", "50"]).await?;
    let mut first = None;
    for n in 0..250 {
        let (status, reply) = relay
            .publish(
                "system:alerts",
                &json!({"type": "system_notification", "n": n}),
            )
            .await;
        assert_eq!(status, 200);
        first.get_or_insert_with(|| reply["message_id"].as_str().unwrap().to_owned());
    }
    let mut client =
        V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600)).await?;
    let (replayed, outcomes) = client
        .subscribe(&[("system:alerts", first.as_deref())])
        .await?;
    let ServerFrame::Resumed {
        gap,
        replayed: count,
        ..
    } = &outcomes[0]
    else {
        panic!("{outcomes:?}")
    };
    assert!(gap, "the first id was trimmed away");
    assert_eq!(*count as usize, replayed.len());
    // Redis trims approximately (whole stream nodes), the embedded broker exactly; both keep the newest.
    assert!(
        replayed.len() >= 50 && replayed.len() < 249,
        "{}",
        replayed.len()
    );
    assert_eq!(replayed.last().unwrap().message["n"], 249);
    let (_, stats) = relay
        .get("/v1/stats", Some(&token("ops", "admin", &[], 60)))
        .await;
    assert_eq!(stats["gaps_total"], 1, "{stats}");
    Ok(())
}
on_both_brokers!(a_cursor_older_than_history_reports_a_gap);

/// History older than the age limit is trimmed exactly: a cursor at the newest trimmed notification
/// missed nothing (no gap), one before it did (a gap).
async fn history_past_its_age_is_trimmed_exactly(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(
        kind,
        &["--history-max-age", "1s", "--history-max-len", "100"],
    )
    .await?;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (status, reply) = relay
            .publish(
                "system:alerts",
                &json!({"type": "system_notification", "n": n}),
            )
            .await;
        assert_eq!(status, 200);
        ids.push(reply["message_id"].as_str().unwrap().to_owned());
    }
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    // This publish trims the three older ones.
    relay
        .publish(
            "system:alerts",
            &json!({"type": "system_notification", "n": 3}),
        )
        .await;
    let doctor = token("d1", "doctor", &[], 600);
    for (from, want_gap) in [(&ids[2], false), (&ids[1], true)] {
        let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
        let (replayed, outcomes) = client.subscribe(&[("system:alerts", Some(from))]).await?;
        let ServerFrame::Resumed { gap, .. } = &outcomes[0] else {
            panic!("{outcomes:?}")
        };
        assert_eq!(*gap, want_gap, "resuming from {from}");
        assert_eq!(replayed.len(), 1, "only the one kept is replayed");
        assert_eq!(replayed[0].message["n"], 3);
    }
    Ok(())
}
on_both_brokers!(history_past_its_age_is_trimmed_exactly);

/// A browser passes its token as a `bearer.<jwt>` subprotocol next to `wardline.v1` or `wardline.raw`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_pass_the_token_as_a_subprotocol() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let bearer = format!("bearer.{}", token("d1", "doctor", &[], 600));
    let mut v1 = connect(&relay.ws_url("/ws/d1"), &["wardline.v1", &bearer])
        .await
        .unwrap();
    let welcome: Value = serde_json::from_str(&next_text(&mut v1).await.unwrap().unwrap()).unwrap();
    assert_eq!(welcome["op"], "welcome");
    let mut raw = connect(&relay.ws_url("/ws/d1"), &["wardline.raw", &bearer])
        .await
        .unwrap();
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    let text = next_text(&mut raw).await.unwrap().unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&text).unwrap(),
        critical_lab_result(1)
    );
}

/// An admin's test notification reaches the user's own channel, at low priority.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admins_send_test_notifications_to_a_users_channel() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let mut client = V1Client::connect(&relay.ws_url(""), "p1", &token("p1", "patient", &[], 600))
        .await
        .unwrap();
    client
        .subscribe(&[("patient:p1:notifications", None)])
        .await
        .unwrap();
    let body = json!({"user_id": "p1", "role": "patient", "title": "Test", "message": "Can you see this?"});
    let response = reqwest::Client::new()
        .post(format!("{}/v1/ws/test-notification", relay.base))
        .bearer_auth(token("ops", "admin", &[], 600))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let got = client.notifications(1).await.unwrap();
    assert_eq!(
        (got[0].kind.as_str(), got[0].priority),
        ("test_notification", wardline_protocol::Priority::Low)
    );
    assert_eq!(got[0].message["message"], "Can you see this?");
    let refused = reqwest::Client::new()
        .post(format!("{}/v1/ws/test-notification", relay.base))
        .bearer_auth(token("backend", "service", &[], 600))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
}

/// A backend's pretty-printed JSON with non-ASCII text, sent with plain `PUBLISH` (CRLF and LF line
/// ends): SSE clients parse it as the EventSource standard says, and raw WebSocket
/// clients get the published bytes unchanged.
#[tokio::test]
async fn a_multi_line_payload_from_plain_publish_reaches_sse_and_websocket_intact()
-> anyhow::Result<()> {
    let (redis, relay) = wardline_tests::setup(BrokerKind::Redis, &[]).await?;
    let redis = redis.context("a Redis relay")?;
    wait_for_recorder(&redis).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut sse = SseClient::open(&format!("{}/sse/d1?token={doctor}", relay.base), None)
        .await?
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    for _ in 0..2 {
        assert_eq!(sse.next().await?.context("stream ended")?.event, "resumed");
    }
    let mut raw = connect(&relay.ws_url(&format!("/ws/d1?token={doctor}")), &[])
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // The raw socket is subscribed once its first frame could arrive: prove it with one publish.
    let _: i64 = redis
        .connection()
        .await
        .publish(DOCTOR_CHANNEL, r#"{"type":"ping_check"}"#)
        .await?;
    assert_eq!(
        next_text(&mut raw).await?,
        Ok(r#"{"type":"ping_check"}"#.to_owned())
    );
    assert_eq!(sse.next().await?.context("stream ended")?.event, "message");

    let payload = "{\r\n  \"type\": \"critical_lab_result\",\r\n  \"patient_name\": \"Zoë Ørsted-Nakamura 山田\",\n  \"test_type\": \"K+ → 6.9 mmol/L\",\n  \"urgent\": true\n}";
    let _: i64 = redis
        .connection()
        .await
        .publish(DOCTOR_CHANNEL, payload)
        .await?;
    assert_eq!(next_text(&mut raw).await?, Ok(payload.to_owned()));
    let event = sse.next().await?.context("stream ended")?;
    assert_eq!(event.event, "message");
    let ServerFrame::Notification(notification) = serde_json::from_str(&event.data)? else {
        panic!("not a notification: {}", event.data)
    };
    assert_eq!(
        notification.message,
        serde_json::from_str::<Value>(payload)?,
        "the payload as published"
    );
    assert_eq!(notification.kind, "critical_lab_result");
    // The next event is framed on its own: nothing of the payload leaked into it.
    let _: i64 = redis
        .connection()
        .await
        .publish(DOCTOR_CHANNEL, r#"{"type":"after"}"#)
        .await?;
    let event = sse.next().await?.context("stream ended")?;
    let ServerFrame::Notification(after) = serde_json::from_str(&event.data)? else {
        panic!("not a notification: {}", event.data)
    };
    assert_eq!(after.message, json!({"type": "after"}));
    Ok(())
}

/// The metrics listener (not the public port) shows what operators watch: publish → socket
/// latency, replay sizes and Redis round trips as histograms, each metric with its HELP line.
#[tokio::test]
async fn operators_see_latency_replay_and_redis_histograms_on_the_metrics_listener()
-> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(BrokerKind::Redis, &[]).await?;
    let doctor = token("d1", "doctor", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &doctor).await?;
    client.subscribe(&[(DOCTOR_CHANNEL, None)]).await?;
    relay.publish(DOCTOR_CHANNEL, &critical_lab_result(1)).await;
    client.notifications(1).await?;
    let (status, _) = relay.get("/metrics", None).await;
    assert_eq!(status, 404, "not on the public port");
    for name in [
        "wardline_delivery_latency_seconds_count",
        "wardline_delivery_latency_seconds_bucket{le=\"+Inf\"}",
        "wardline_replay_size_count",
        "wardline_redis_round_trip_seconds_count",
    ] {
        let value = relay.metric(name).await;
        assert!(value.is_some_and(|v| v >= 1.0), "{name}: {value:?}");
    }
    let metrics = relay.metrics().await;
    for line in metrics.lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split_whitespace().nth(2).unwrap();
        assert!(
            metrics.contains(&format!("# HELP {name} ")),
            "{name} has no HELP line"
        );
    }
    Ok(())
}
