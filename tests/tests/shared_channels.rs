//! Receipts and trails, thought through as a patient with a token (issue 21, findings 2 and 3): on
//! a channel many users read (`system:alerts`) a receipt is the user's own, so a patient's or a
//! doctor's acknowledgement ends no chain and a decline escalates nothing; only the channel's
//! publishers settle it. Escalations go only to clinicians' own channels. A trail shows its reader
//! what is theirs: the recipient sees the chain's steps but not the backup's channel, staff
//! addresses or others' devices; a reader of a shared channel sees only their own entries; and
//! made-up device ids cannot grow a trail without bound. Over the real relay, on both brokers.

use serde_json::{Value, json};
use std::time::Duration;
use wardline_protocol::ServerFrame;
use wardline_tests::client::V1Client;
use wardline_tests::smtp::SmtpServer;
use wardline_tests::{
    BrokerKind, Relay, WAIT, critical_lab_result, on_both_brokers, setup, token, trail_events,
};

const ALERTS: &str = "system:alerts";
const SMITH: &str = "doctor:dr-smith:notifications";
const BACKUP: &str = "doctor:dr-backup:notifications";
const PATIENT: &str = "patient:pt-1:notifications";

fn service() -> String {
    token("backend", "service", &[], 3600)
}

/// `POST /v1/receipts` with `token`; answers the status and body.
async fn receipt(relay: &Relay, token: &str, body: Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/receipts", relay.base))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("the relay answers");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Records `kind` for `id` on `channel` as `token`'s user, from `device`; the relay must accept it.
async fn record(relay: &Relay, token: &str, channel: &str, id: &str, kind: &str, device: &str) {
    let (code, body) = receipt(
        relay,
        token,
        json!({"channel": channel, "ids": [id], "kind": kind, "device": device}),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["ids"], json!([id]), "{body}");
}

/// `GET /v1/messages/{channel}/{id}` as `token`'s user.
async fn status_as(relay: &Relay, token: &str, channel: &str, id: &str) -> Value {
    let (code, status) = relay
        .get(&format!("/v1/messages/{channel}/{id}"), Some(token))
        .await;
    assert_eq!(code, 200, "{status}");
    status
}

/// Publishes a critical result on `channel` with `escalation` as a service; answers its id.
async fn publish(relay: &Relay, channel: &str, escalation: Value) -> String {
    let (code, reply) = relay
        .publish_as(
            &service(),
            &json!({"channel": channel, "message": critical_lab_result(1), "escalation": escalation}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    reply["message_id"].as_str().unwrap().to_owned()
}

/// Reads `client`'s frames until a reminder of `id` arrives (fails after [`WAIT`]).
async fn reminder_of(client: &mut V1Client, id: &str) -> u32 {
    tokio::time::timeout(WAIT, async {
        loop {
            if let ServerFrame::Notification(n) = client.frame().await.expect("a frame")
                && n.id.to_string() == id
                && let Some(repeat) = n.repeat
            {
                return repeat;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no reminder of {id} within {WAIT:?}: its chain was closed"))
}

/// A critical system alert sent again every second: a patient and a doctor (each a reader of the
/// shared channel) acknowledge it; it stays open and the doctor's device is still reminded. The
/// administrator, who publishes to `system:alerts`, ends it.
async fn readers_of_a_shared_channel_do_not_acknowledge_it_for_everyone(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = setup(kind, &[]).await?;
    let doctor = token("dr-smith", "doctor", &[], 3600);
    let patient = token("pt-1", "patient", &[], 3600);
    let admin = token("ops", "admin", &[], 3600);
    let mut device = V1Client::connect(&relay.ws_url(""), "dr-smith", &doctor).await?;
    device.subscribe(&[(ALERTS, None)]).await?;
    let id = publish(&relay, ALERTS, json!({"repeat_every_s": 1})).await;

    record(&relay, &patient, ALERTS, &id, "acknowledged", "pt-phone").await;
    record(&relay, &doctor, ALERTS, &id, "acknowledged", "dr-desk").await;
    let first = reminder_of(&mut device, &id).await;
    let later = reminder_of(&mut device, &id).await;
    assert!(later > first, "reminders go on: {first}, then {later}");
    let status = status_as(&relay, &service(), ALERTS, &id).await;
    assert_eq!(status["state"], "open", "{status:#}");
    assert_eq!(status["acknowledged_by"], Value::Null, "{status:#}");
    // Each acknowledgement is in the trail as that user's own.
    assert_eq!(trail_events(&status, "acknowledged").len(), 2, "{status:#}");

    record(&relay, &admin, ALERTS, &id, "acknowledged", "ops-console").await;
    let status = status_as(&relay, &service(), ALERTS, &id).await;
    assert_eq!(status["state"], "acknowledged", "{status:#}");
    assert_eq!(status["acknowledged_by"], "ops", "{status:#}");
    Ok(())
}
on_both_brokers!(readers_of_a_shared_channel_do_not_acknowledge_it_for_everyone);

/// A patient's decline of a shared notification escalates nothing; the publisher's does, at once.
async fn a_readers_decline_of_a_shared_notification_escalates_nothing(
    kind: BrokerKind,
) -> anyhow::Result<()> {
    let (_redis, relay) = setup(kind, &[]).await?;
    let patient = token("pt-1", "patient", &[], 3600);
    let id = publish(
        &relay,
        ALERTS,
        json!({"escalate_after_s": 3600, "escalate_to": [BACKUP]}),
    )
    .await;
    record(&relay, &patient, ALERTS, &id, "declined", "pt-phone").await;
    // The escalation loop claims due steps every second: a decline that hastened it would show
    // within two.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = status_as(&relay, &service(), ALERTS, &id).await;
    assert!(
        trail_events(&status, "escalated").is_empty(),
        "a patient's decline escalated it: {status:#}"
    );

    record(&relay, &service(), ALERTS, &id, "declined", "backend").await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let status = status_as(&relay, &service(), ALERTS, &id).await;
        if !trail_events(&status, "escalated").is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the publisher's decline did not escalate: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}
on_both_brokers!(a_readers_decline_of_a_shared_notification_escalates_nothing);

/// Escalations copy the notification whole: a publish asking to escalate a doctor's result to
/// `system:alerts`, a patient's channel, an appointment's or the channel itself is refused with
/// 40006, and to a backup doctor accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalations_go_only_to_other_clinicians_own_channels() {
    let relay = Relay::embedded(&[]).await.unwrap();
    for target in [ALERTS, PATIENT, "appointment:a-1:updates", SMITH] {
        let (code, reply) = relay
            .publish_as(
                &service(),
                &json!({"channel": SMITH, "message": critical_lab_result(1),
                        "escalation": {"escalate_to": [target]}}),
            )
            .await;
        assert_eq!(
            (code, reply["code"].as_u64()),
            (400, Some(40006)),
            "{target}: {reply}"
        );
        assert!(
            reply["message"]
                .as_str()
                .unwrap()
                .contains("clinicians' own channels")
                || reply["message"].as_str().unwrap().contains("own channel"),
            "{reply}"
        );
    }
    publish(&relay, SMITH, json!({"escalate_to": [BACKUP]})).await;
    // A relay whose default escalation names a shared channel does not start.
    let refused = Relay::embedded(&["--escalation-escalate-to", ALERTS]).await;
    let error = format!("{:#}", refused.err().expect("the relay refused to start"));
    assert!(error.contains("clinicians' own channels"), "{error}");
}

/// The recipient's trail shows the chain's steps but neither the backup's channel, the staff
/// addresses nor the backup's device; the publisher sees them all.
async fn a_recipients_trail_names_no_one_else(kind: BrokerKind) -> anyhow::Result<()> {
    let smtp = SmtpServer::start().await?;
    let url = smtp.url();
    let (_redis, relay) = setup(
        kind,
        &[
            "--email-allowed-domains",
            "hospital.example",
            "--smtp-url",
            &url,
        ],
    )
    .await?;
    let patient = token("pt-1", "patient", &[], 3600);
    let backup = token("dr-backup", "doctor", &[], 3600);
    let id = publish(
        &relay,
        PATIENT,
        json!({"escalate_after_s": 1, "escalate_to": [BACKUP],
               "email_after_s": 1, "email_to": ["oncall@hospital.example"]}),
    )
    .await;
    record(&relay, &patient, PATIENT, &id, "received", "pt-phone").await;
    // The escalation reaches the backup, who acknowledges it on their pager.
    let deadline = tokio::time::Instant::now() + WAIT;
    let escalation_id = loop {
        let status = status_as(&relay, &service(), PATIENT, &id).await;
        let emailed = !trail_events(&status, "email_sent").is_empty();
        if let Some(escalated) = trail_events(&status, "escalated").first()
            && emailed
        {
            let detail = escalated["detail"].as_str().expect("where it escalated to");
            break detail
                .split(['(', ')'])
                .nth(1)
                .expect("the escalation's id")
                .to_owned();
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "not escalated: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    record(
        &relay,
        &backup,
        BACKUP,
        &escalation_id,
        "acknowledged",
        "backup-pager",
    )
    .await;

    let full = status_as(&relay, &service(), PATIENT, &id)
        .await
        .to_string();
    for detail in [
        BACKUP,
        "oncall@hospital.example",
        "backup-pager",
        "pt-phone",
    ] {
        assert!(full.contains(detail), "the publisher sees {detail}: {full}");
    }
    let mine = status_as(&relay, &patient, PATIENT, &id).await;
    assert_eq!(mine["state"], "acknowledged", "{mine:#}");
    for step in ["escalated", "email_sent", "delivered", "acknowledged"] {
        assert_eq!(
            trail_events(&mine, step).len(),
            1,
            "the recipient sees {step}: {mine:#}"
        );
    }
    let text = mine.to_string();
    for hidden in [BACKUP, "oncall@hospital.example", "backup-pager"] {
        assert!(
            !text.contains(hidden),
            "the patient sees {hidden}: {mine:#}"
        );
    }
    assert!(text.contains("pt-phone"), "their own device: {mine:#}");
    Ok(())
}
on_both_brokers!(a_recipients_trail_names_no_one_else);

/// On `system:alerts` each reader sees that it was published and their own entries, nothing of
/// the others; a user's made-up device ids add at most 8 devices, and one entry without a device.
async fn a_shared_trail_shows_each_reader_their_own(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = setup(kind, &[]).await?;
    let alice = token("pt-alice", "patient", &[], 3600);
    let bob = token("pt-bob", "patient", &[], 3600);
    let doctor = token("dr-smith", "doctor", &[], 3600);
    let id = publish(&relay, ALERTS, Value::Null).await;
    record(&relay, &alice, ALERTS, &id, "displayed", "alice-phone").await;
    record(&relay, &bob, ALERTS, &id, "displayed", "bob-phone").await;
    record(&relay, &doctor, ALERTS, &id, "read", "smith-desk").await;

    for (token, me, others) in [
        (&alice, "alice-phone", ["pt-bob", "bob-phone", "dr-smith"]),
        (&bob, "bob-phone", ["pt-alice", "alice-phone", "dr-smith"]),
        (&doctor, "smith-desk", ["pt-alice", "pt-bob", "bob-phone"]),
    ] {
        let status = status_as(&relay, token, ALERTS, &id).await;
        let text = status.to_string();
        assert!(text.contains(me), "{status:#}");
        assert_eq!(trail_events(&status, "published").len(), 1, "{status:#}");
        for other in others {
            assert!(
                !text.contains(other),
                "{me}'s view shows {other}: {status:#}"
            );
        }
    }

    // Fifty made-up devices: eight named, the rest one entry without a device.
    for n in 0..50 {
        record(&relay, &alice, ALERTS, &id, "read", &format!("made-up-{n}")).await;
    }
    let status = status_as(&relay, &service(), ALERTS, &id).await;
    let alices: Vec<&Value> = status["trail"]
        .as_array()
        .expect("a trail")
        .iter()
        .filter(|e| e["user"] == "pt-alice")
        .collect();
    let devices: std::collections::HashSet<&str> =
        alices.iter().filter_map(|e| e["device"].as_str()).collect();
    assert_eq!(devices.len(), 8, "{status:#}");
    assert_eq!(
        alices.iter().filter(|e| e["device"].is_null()).count(),
        1,
        "{status:#}"
    );
    assert_eq!(alices.len(), 9, "{status:#}");
    Ok(())
}
on_both_brokers!(a_shared_trail_shows_each_reader_their_own);

/// One patient on four connections sending receipt frames (finding 6): the frames draw on one
/// bucket for the user (`--frame-burst 5`, `--frames-per-s 1`), whatever the connection, so past
/// the burst they are refused with 42901 on every connection (each connection alone is within its
/// own frame limit); an id repeated in one frame is recorded once; another user is not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipt_frames_are_limited_per_user_across_connections() -> anyhow::Result<()> {
    let relay = Relay::embedded(&["--frame-burst", "5", "--frames-per-s", "1"]).await?;
    let id = publish(&relay, ALERTS, Value::Null).await;
    let patient = token("pt-1", "patient", &[], 3600);
    let mut connections = Vec::new();
    for _ in 0..4 {
        connections.push(V1Client::connect(&relay.ws_url(""), "pt-1", &patient).await?);
    }
    let repeated = vec![id.clone(); 50];
    let (mut recorded, mut limited) = (0, 0);
    for _ in 0..3 {
        for connection in &mut connections {
            connection
                .send(&wardline_protocol::ClientFrame::Receipt {
                    channel: ALERTS.into(),
                    ids: repeated.clone(),
                    kind: wardline_protocol::ReceiptKind::Displayed,
                })
                .await?;
            match connection.frame().await? {
                ServerFrame::Recorded { ids, .. } => {
                    assert_eq!(ids.len(), 1, "a repeated id is recorded once: {ids:?}");
                    recorded += 1;
                }
                ServerFrame::Error { code, .. } => {
                    assert_eq!(code, wardline_protocol::ErrorCode::RateLimited);
                    limited += 1;
                }
                other => anyhow::bail!("{other:?}"),
            }
        }
    }
    // Twelve frames within a second or two: the burst of five and at most two more refilled.
    assert!(
        (5..=7).contains(&recorded),
        "{recorded} recorded, {limited} refused"
    );
    assert_eq!(recorded + limited, 12);
    let other = token("pt-2", "patient", &[], 3600);
    let mut second = V1Client::connect(&relay.ws_url(""), "pt-2", &other).await?;
    second
        .send(&wardline_protocol::ClientFrame::Receipt {
            channel: ALERTS.into(),
            ids: vec![id.clone()],
            kind: wardline_protocol::ReceiptKind::Displayed,
        })
        .await?;
    assert!(
        matches!(second.frame().await?, ServerFrame::Recorded { .. }),
        "another user is served"
    );
    Ok(())
}
