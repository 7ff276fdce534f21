//! Critical results cannot be missed: an unacknowledged one is sent again, escalated to a backup,
//! emailed, each step once across relay nodes (one killed with SIGKILL between steps), until a
//! person acknowledges it; a decline escalates at once; a publish no device hears says so. Devices
//! stay in step (an acknowledgement on one withdraws the alert on the others), alerts keep patient
//! details off the screen, and a device says when it is not receiving or its clock is off. Real
//! processes throughout: Redis, relays, `wardline listen` devices, an SMTP server (aiosmtpd), a
//! recording notification server on a private D-Bus bus, libfaketime for a relay's clock.

use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wardline_tests::desktop::{NotificationServer, SessionBus};
use wardline_tests::proxy::PrivateCa;
use wardline_tests::receiver::{Listener, inbox_path, list, run};
use wardline_tests::smtp::{SmtpServer, SmtpTls};
use wardline_tests::{
    BrokerKind, RedisServer, Relay, WAIT, critical_lab_result, free_port, on_both_brokers, setup,
    token, trail_events, wrapped_relay_command,
};

const SMITH: &str = "doctor:dr-smith:notifications";
const BACKUP: &str = "doctor:dr-backup:notifications";

fn service() -> String {
    token("backend", "service", &[], 3600)
}

/// `GET /v1/messages/{channel}/{id}` as the publisher reads it.
async fn status(relay: &Relay, channel: &str, id: &str) -> Value {
    let (code, body) = relay
        .get(&format!("/v1/messages/{channel}/{id}"), Some(&service()))
        .await;
    assert_eq!(code, 200, "{body}");
    body
}

/// Seconds from the notification's publishing to a trail event.
fn seconds_after_publish(status: &Value, event: &Value) -> f64 {
    let at = |text: &Value| {
        humantime::parse_rfc3339(text.as_str().expect("a time"))
            .expect("RFC 3339")
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    };
    at(&event["at"]) - at(&trail_events(status, "published")[0]["at"])
}

/// Waits until the notification's status satisfies `done`; answers it.
async fn wait_for_status(
    relay: &Relay,
    channel: &str,
    id: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let status = status(relay, channel, id).await;
        if done(&status) {
            return status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not reached within {within:?}: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Done when 1: two relay nodes on one Redis, two devices of the doctor and one of the backup, an
/// SMTP server. Unacknowledged, the result is repeated on both devices, escalated to the backup
/// once, emailed once, each step within 5 s of its time although one relay is killed with SIGKILL
/// between steps; the trail shows every step with its time; the backup's acknowledgement of the
/// escalation ends the chain (and silences the doctor's devices), and no step happens after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_result_is_repeated_escalated_and_emailed_once_across_relays() {
    let redis = RedisServer::start().await.unwrap();
    let smtp = SmtpServer::start().await.unwrap();
    let smtp_url = smtp.url();
    let policy = [
        "--escalation-repeat-every",
        "2s",
        "--escalation-escalate-after",
        "7s",
        "--escalation-email-after",
        "9s",
        "--smtp-url",
        &smtp_url,
        "--email-allowed-domains",
        "hospital.example",
        "--smtp-from",
        "wardline@hospital.example",
    ];
    // R1 on a port of its own, so that it comes back where its device looks for it.
    let r1_listen = format!("127.0.0.1:{}", free_port());
    let r1_flags: Vec<&str> = ["--listen", r1_listen.as_str()]
        .into_iter()
        .chain(policy)
        .collect();
    let r1 = Relay::on_redis(&redis, &r1_flags).await.unwrap();
    let r2 = Relay::on_redis(&redis, &policy).await.unwrap();
    let smith = token("dr-smith", "doctor", &[], 3600);
    let backup = token("dr-backup", "doctor", &[], 3600);
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = Listener::start(&r1.base, "dr-smith", &smith, &inbox_path(&dir_a))
        .await
        .unwrap();
    let mut b = Listener::start(&r2.base, "dr-smith", &smith, &inbox_path(&dir_b))
        .await
        .unwrap();
    let mut c = Listener::start(&r2.base, "dr-backup", &backup, &inbox_path(&dir_c))
        .await
        .unwrap();

    let (code, reply) = r1
        .publish_as(
            &service(),
            &json!({
                "channel": SMITH,
                "message": critical_lab_result(1),
                "escalation": {"escalate_to": [BACKUP], "email_to": ["oncall@hospital.example"]},
            }),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    assert_eq!(
        reply["recipients_count"], 2,
        "both nodes have a device of dr-smith"
    );
    let id = reply["message_id"].as_str().unwrap().to_owned();
    for device in [&mut a, &mut b] {
        let stored = device.notifications(1).await.unwrap();
        assert_eq!(stored[0]["id"], id.as_str());
        device.wait_for_stderr("REMINDER 1").await.unwrap();
    }
    // Between steps: reminder 1 is done, reminder 2 is 2 s away. R1 dies without a word and
    // comes back; whatever it would have run, R2 runs.
    r1.signal("KILL").unwrap();
    drop(r1);
    let r1 = Relay::on_redis(&redis, &r1_flags).await.unwrap();

    let escalation = c.notifications(1).await.unwrap().remove(0);
    assert_eq!(escalation["type"], "escalation");
    assert_eq!(escalation["channel"], BACKUP);
    assert_eq!(escalation["message"]["original"]["channel"], SMITH);
    assert_eq!(escalation["message"]["original"]["id"], id.as_str());
    assert_eq!(
        escalation["message"]["original"]["message"]["test_type"],
        "BMP"
    );
    let email = smtp.wait_for_messages(1, WAIT).await.unwrap().remove(0);
    assert!(email.contains("oncall@hospital.example"), "{email}");
    assert!(
        email.contains("dr-smith"),
        "the email says for whom: {email}"
    );
    for detail in ["Bob", "Wilson", "BMP", "r1"] {
        assert!(!email.contains(detail), "the email shows {detail}: {email}");
    }
    let (_, open) = r2
        .get(
            "/v1/messages?state=open&priority=critical",
            Some(&service()),
        )
        .await;
    assert!(
        open["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str() && m["state"] == "open"),
        "{open}"
    );

    // The backup acknowledges the escalation on their device: the chain ends everywhere.
    let escalation_id = escalation["id"].as_str().unwrap();
    let (code, out, err) = run(
        &r2.base,
        "dr-backup",
        &backup,
        &inbox_path(&dir_c),
        &["ack", escalation_id],
    )
    .await
    .unwrap();
    assert_eq!(code, 0, "{out}{err}");
    let seen = b.wait_for_stderr("by dr-backup").await.unwrap();
    assert!(
        seen.last().unwrap().contains(&format!("acknowledged {id}")),
        "{seen:?}"
    );
    let settled = wait_for_status(&r1, SMITH, &id, WAIT, |s| s["state"] == "acknowledged").await;
    assert_eq!(settled["acknowledged_by"], "dr-backup");

    // Longer than two reminder periods and a claim's lease running out on a dead node: nothing.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let later = status(&r2, SMITH, &id).await;
    assert_eq!(
        later["trail"], settled["trail"],
        "no step after the acknowledgement"
    );
    assert_eq!(smtp.messages().len(), 1, "emailed once");
    let (_, open) = r2
        .get(
            "/v1/messages?state=open&priority=critical",
            Some(&service()),
        )
        .await;
    assert!(
        !open["messages"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str()),
        "{open}"
    );
    let escalations: Vec<Value> = list(&r2.base, "dr-backup", &backup, &inbox_path(&dir_c))
        .await
        .unwrap()
        .into_iter()
        .filter(|row| row["type"] == "escalation")
        .collect();
    assert_eq!(escalations.len(), 1, "escalated once: {escalations:?}");

    // The trail: every step once, each with its time, within 5 s of when it was due.
    let escalated = trail_events(&later, "escalated");
    assert_eq!(escalated.len(), 1, "{later:#}");
    assert!(
        escalated[0]["detail"].as_str().unwrap().contains(BACKUP),
        "{later:#}"
    );
    let sent = trail_events(&later, "email_sent");
    assert_eq!(sent.len(), 1, "{later:#}");
    let due = [(&escalated[0], 7.0), (&sent[0], 9.0)];
    for (event, at) in due {
        let after = seconds_after_publish(&later, event);
        assert!(
            (at - 0.5..at + 5.0).contains(&after),
            "{} at {after:.1} s, due at {at} s",
            event["event"]
        );
    }
    let reminders: Vec<&str> = trail_events(&later, "repeated")
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(reminders.len() >= 3, "{later:#}");
    let mut distinct = reminders.clone();
    distinct.dedup();
    assert_eq!(distinct, reminders, "each reminder once, in order");
    let delivered = trail_events(&later, "delivered");
    assert!(
        delivered.len() >= 2 && delivered.iter().all(|e| e["user"] == "dr-smith"),
        "both devices' receipts, each naming its device: {later:#}"
    );
    assert_ne!(delivered[0]["device"], delivered[1]["device"]);
    let acknowledged = trail_events(&later, "acknowledged");
    assert_eq!(acknowledged.len(), 1, "{later:#}");
    assert_eq!(acknowledged[0]["user"], "dr-backup");
    for event in later["trail"].as_array().unwrap() {
        assert!(event["at"].as_str().is_some(), "{event}");
    }
    drop((a, c, r1));
}

/// A recipient who cannot take a critical result declines it: recorded as `declined`, it is
/// escalated to the backup at once rather than when its delay runs out.
async fn a_decline_escalates_at_once(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = setup(kind, &["--escalation-escalate-after", "10m"]).await?;
    let smith = token("dr-smith", "doctor", &[], 3600);
    let backup = token("dr-backup", "doctor", &[], 3600);
    let (dir_a, dir_c) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a = Listener::start(&relay.base, "dr-smith", &smith, &inbox_path(&dir_a)).await?;
    let mut c = Listener::start(&relay.base, "dr-backup", &backup, &inbox_path(&dir_c)).await?;
    let (code, reply) = relay
        .publish_as(
            &service(),
            &json!({"channel": SMITH, "message": critical_lab_result(1),
                    "escalation": {"escalate_to": [BACKUP]}}),
        )
        .await;
    anyhow::ensure!(code == 200, "{reply}");
    let id = reply["message_id"].as_str().unwrap().to_owned();
    a.notifications(1).await?;
    let (code, out, err) = run(
        &relay.base,
        "dr-smith",
        &smith,
        &inbox_path(&dir_a),
        &["decline", &id],
    )
    .await?;
    anyhow::ensure!(code == 0 && out.contains("declined"), "{out}{err}");
    let escalation = c.notifications(1).await?.remove(0);
    assert_eq!(escalation["message"]["original"]["id"], id.as_str());
    let status = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
        !trail_events(s, "escalated").is_empty()
    })
    .await;
    let declined = trail_events(&status, "declined");
    assert_eq!(declined.len(), 1, "{status:#}");
    assert_eq!(declined[0]["user"], "dr-smith");
    let waited = seconds_after_publish(&status, trail_events(&status, "escalated")[0])
        - seconds_after_publish(&status, declined[0]);
    assert!(waited < 5.0, "escalated {waited:.1} s after the decline");
    assert_eq!(
        status["state"], "open",
        "declined is not handled: {status:#}"
    );
    // The device shows the same trail (`wardline list --trail`).
    let (code, out, err) = run(
        &relay.base,
        "dr-smith",
        &smith,
        &inbox_path(&dir_a),
        &["list", "--json", "--trail"],
    )
    .await?;
    anyhow::ensure!(code == 0, "{out}{err}");
    let row: Value = serde_json::from_str(out.lines().next().unwrap_or_default())?;
    let shown: Vec<&str> = row["trail"]
        .as_array()
        .map(|t| t.iter().filter_map(|e| e["event"].as_str()).collect())
        .unwrap_or_default();
    for event in ["published", "delivered", "declined", "escalated"] {
        anyhow::ensure!(shown.contains(&event), "{event} missing from {row}");
    }
    assert_eq!(row["state"], "open");
    Ok(())
}
on_both_brokers!(a_decline_escalates_at_once);

/// Done when 3: a critical result for a doctor with no device connected is answered
/// `recipients_count: 0`, the trail says `no_device_online`, and the escalation comes at half its
/// delay.
async fn no_device_online_is_answered_and_escalates_early(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = setup(kind, &[]).await?;
    let backup = token("dr-backup", "doctor", &[], 3600);
    let dir_c = tempfile::tempdir()?;
    let mut c = Listener::start(&relay.base, "dr-backup", &backup, &inbox_path(&dir_c)).await?;
    let (code, reply) = relay
        .publish_as(
            &service(),
            &json!({"channel": SMITH, "message": critical_lab_result(1),
                    "escalation": {"escalate_after_s": 8, "escalate_to": [BACKUP]}}),
        )
        .await;
    anyhow::ensure!(code == 200, "{reply}");
    assert_eq!(reply["recipients_count"], 0, "{reply}");
    let id = reply["message_id"].as_str().unwrap().to_owned();
    let status = status(&relay, SMITH, &id).await;
    let offline = trail_events(&status, "no_device_online");
    assert_eq!(offline.len(), 1, "{status:#}");
    assert!(
        offline[0]["detail"]
            .as_str()
            .unwrap()
            .contains("escalating after 4 s instead of 8 s"),
        "{status:#}"
    );
    c.notifications(1).await?;
    let status = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
        !trail_events(s, "escalated").is_empty()
    })
    .await;
    let after = seconds_after_publish(&status, trail_events(&status, "escalated")[0]);
    assert!((3.5..8.0).contains(&after), "escalated after {after:.1} s");
    Ok(())
}
on_both_brokers!(no_device_online_is_answered_and_escalates_early);

/// A recipient's device with its own bus and recording notification server.
struct Device {
    listener: Listener,
    alerts: NotificationServer,
    _bus: SessionBus,
    dir: tempfile::TempDir,
}

impl Device {
    async fn start(relay: &Relay, user: &str, extra: &[&str]) -> Device {
        let bus = SessionBus::start().await.unwrap();
        let alerts = NotificationServer::start(&bus.address).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let token = token(user, "doctor", &[], 3600);
        let mut listener = Listener::spawn_with(
            &relay.base,
            user,
            &token,
            &inbox_path(&dir),
            Some(&bus.address),
            extra,
            &[],
        )
        .unwrap();
        listener
            .wait_for_stderr("connected (websocket)")
            .await
            .unwrap();
        Device {
            listener,
            alerts,
            _bus: bus,
            dir,
        }
    }
}

/// Done when 2 and the first part of 4: the OS alert of a critical result says what kind of result
/// waits and nothing of it; acknowledged on device A, it is shown acknowledged on device B and B's
/// alert is withdrawn within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_on_one_device_withdraws_the_alert_on_the_other() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let mut a = Device::start(&relay, "dr-smith", &[]).await;
    let mut b = Device::start(&relay, "dr-smith", &[]).await;
    let smith = token("dr-smith", "doctor", &[], 3600);
    // A third device that is off when the result is acknowledged.
    let dir_c = tempfile::tempdir().unwrap();
    let mut c = Listener::start(&relay.base, "dr-smith", &smith, &inbox_path(&dir_c))
        .await
        .unwrap();
    let (_, reply) = relay.publish(SMITH, &critical_lab_result(1)).await;
    let id = reply["message_id"].as_str().unwrap().to_owned();
    a.listener.notifications(1).await.unwrap();
    b.listener.notifications(1).await.unwrap();
    c.notifications(1).await.unwrap();
    c.kill9().await;
    let on_a = a.alerts.wait_for_calls(1).await.unwrap().remove(0);
    let on_b = b.alerts.wait_for_calls(1).await.unwrap().remove(0);
    for call in [&on_a, &on_b] {
        assert_eq!(call.summary, "Critical lab result — open Wardline");
        for detail in ["Bob", "Wilson", "BMP"] {
            assert!(
                !call.summary.contains(detail) && !call.body.contains(detail),
                "{call:?}"
            );
        }
    }
    // The person acknowledges on A (the listener follows actions once `Notify` has returned:
    // invoke again until B hears of it).
    let deadline = Instant::now() + WAIT;
    let took = loop {
        let clicked = Instant::now();
        a.alerts
            .invoke_action(on_a.id, "acknowledge")
            .await
            .unwrap();
        match b
            .alerts
            .wait_for_close(on_b.id, Duration::from_secs(2))
            .await
        {
            Ok(withdrawn) => break withdrawn - clicked,
            Err(e) => assert!(Instant::now() < deadline, "{e}"),
        }
    };
    assert!(took <= Duration::from_secs(2), "withdrawn after {took:?}");
    let seen = b.listener.wait_for_stderr("by dr-smith").await.unwrap();
    assert!(seen.last().unwrap().contains("acknowledged"), "{seen:?}");
    let rows = list(
        &relay.base,
        "dr-smith",
        &token("dr-smith", "doctor", &[], 3600),
        &inbox_path(&b.dir),
    )
    .await
    .unwrap();
    let row = rows.iter().find(|r| r["id"] == id.as_str()).unwrap();
    assert_eq!(row["acked"], true, "B shows it acknowledged: {row}");
    assert!(
        a.alerts.closed().is_empty(),
        "A's own alert went with the click"
    );
    // The device that was off learns it when it connects again.
    let mut c = Listener::start(&relay.base, "dr-smith", &smith, &inbox_path(&dir_c))
        .await
        .unwrap();
    let seen = c.wait_for_stderr("by dr-smith").await.unwrap();
    assert!(
        seen.last().unwrap().contains(&format!("acknowledged {id}")),
        "{seen:?}"
    );
    let rows = list(&relay.base, "dr-smith", &smith, &inbox_path(&dir_c))
        .await
        .unwrap();
    assert_eq!(rows[0]["acked"], true, "{rows:?}");
}

/// The last part of done when 4: a device that cannot reach the relay for 2 minutes raises the
/// local "not receiving critical results" alarm once, and withdraws it when connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_minutes_offline_raise_the_not_receiving_alarm_once_until_connected() {
    let data = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let relay = Relay::start_in(data.path(), None, &["--listen", &listen], None)
        .await
        .unwrap();
    let mut device = Device::start(&relay, "dr-smith", &[]).await;
    relay.signal("KILL").unwrap();
    drop(relay);
    let started = Instant::now();
    device
        .listener
        .wait_for_stderr("NOT RECEIVING")
        .await
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(119),
        "alarmed after {:?}",
        started.elapsed()
    );
    let alarms = |server: &NotificationServer| {
        server
            .calls()
            .into_iter()
            .filter(|c| c.summary == "You are not receiving critical results")
            .collect::<Vec<_>>()
    };
    let raised = alarms(&device.alerts);
    assert_eq!(raised.len(), 1, "{:?}", device.alerts.calls());
    assert_eq!(raised[0].urgency, Some(2));
    let (_, status, _) = run(
        &format!("http://{listen}"),
        "dr-smith",
        "",
        &inbox_path(&device.dir),
        &["status"],
    )
    .await
    .unwrap();
    assert!(
        status.contains("NOT RECEIVING critical results"),
        "{status}"
    );
    // Back: the device reconnects (its backoff is at most 30 s) and withdraws the alarm.
    let relay = Relay::start_in(data.path(), None, &["--listen", &listen], None)
        .await
        .unwrap();
    device
        .listener
        .wait_for_stderr("receiving again")
        .await
        .unwrap();
    device
        .alerts
        .wait_for_close(raised[0].id, WAIT)
        .await
        .unwrap();
    assert_eq!(alarms(&device.alerts).len(), 1, "raised once");
    drop(relay);
}

/// A device compares its clock with the relay's (the `Date` of every answer): a relay 2 minutes
/// behind (libfaketime) makes it say so, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_whose_clock_differs_from_the_relays_says_so() {
    let data = tempfile::tempdir().unwrap();
    let command = wrapped_relay_command(&[
        "env",
        "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "FAKETIME=-120s",
        "FAKETIME_DONT_FAKE_MONOTONIC=1",
    ]);
    // Tokens are issued by this (right) clock: the relay 2 minutes behind would refuse them.
    let relay = Relay::launch_command(
        command,
        data.path(),
        None,
        &["--jwt-leeway", "5m"],
        true,
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut device = Listener::spawn(
        &relay.base,
        "dr-smith",
        &token("dr-smith", "doctor", &[], 3600),
        &inbox_path(&dir),
    )
    .unwrap();
    let seen = device.wait_for_stderr("CLOCK").await.unwrap();
    let said = seen.last().unwrap();
    assert!(
        ["119 s", "120 s", "121 s"].iter().any(|s| said.contains(s))
            && said.contains("ahead of the relay's")
            && said.contains("set the clock"),
        "{said}"
    );
    // Under a minute apart (the relay on the right clock) it says nothing.
    let right = Relay::embedded(&[]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut device = Listener::spawn(
        &right.base,
        "dr-smith",
        &token("dr-smith", "doctor", &[], 3600),
        &inbox_path(&dir),
    )
    .unwrap();
    let seen = device
        .wait_for_stderr("connected (websocket)")
        .await
        .unwrap();
    assert!(!seen.iter().any(|l| l.contains("CLOCK")), "{seen:?}");
}

/// Publishes a critical result to be emailed 1 s later; answers its id.
async fn publish_emailing(relay: &Relay) -> String {
    let (code, reply) = relay
        .publish_as(
            &service(),
            &json!({"channel": SMITH, "message": critical_lab_result(1),
                    "escalation": {"email_after_s": 1, "email_to": ["oncall@hospital.example"]}}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    reply["message_id"].as_str().unwrap().to_owned()
}

/// An email that cannot be sent is retried 3 times, `--escalation-email-retry` apart, each attempt in
/// the trail with why it failed, and the relay's log says so: an SMTP server back in time gets it
/// once; one that never comes back ends the attempts with "giving up".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_email_is_retried_three_times_and_said_in_the_trail() {
    // The SMTP server is down at first, and comes back.
    let port = free_port();
    let smtp_url = format!("smtp://127.0.0.1:{port}");
    let relay = Relay::embedded(&[
        "--email-allowed-domains",
        "hospital.example",
        "--smtp-url",
        &smtp_url,
        "--escalation-email-retry",
        "2s",
    ])
    .await
    .unwrap();
    let id = publish_emailing(&relay).await;
    let failed = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
        !trail_events(s, "email_failed").is_empty()
    })
    .await;
    let detail = trail_events(&failed, "email_failed")[0]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        detail.contains("attempt 1 of 4") && detail.contains("retrying in 2 s"),
        "{detail}"
    );
    let smtp = SmtpServer::start_on(port).await.unwrap();
    let sent = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
        !trail_events(s, "email_sent").is_empty()
    })
    .await;
    assert_eq!(smtp.wait_for_messages(1, WAIT).await.unwrap().len(), 1);
    assert!(trail_events(&sent, "email_failed").len() < 4, "{sent:#}");
    assert!(
        relay.log().contains("escalation email failed"),
        "the relay's log says it"
    );

    // Never back: four attempts, the last one giving up, then nothing more.
    let nowhere = format!("smtp://127.0.0.1:{}", free_port());
    let relay = Relay::embedded(&[
        "--email-allowed-domains",
        "hospital.example",
        "--smtp-url",
        &nowhere,
        "--escalation-email-retry",
        "1s",
    ])
    .await
    .unwrap();
    let id = publish_emailing(&relay).await;
    let gave_up = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
        trail_events(s, "email_failed").len() == 4
    })
    .await;
    let last = trail_events(&gave_up, "email_failed")[3]["detail"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        last.contains("attempt 4 of 4") && last.contains("giving up"),
        "{last}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = status(&relay, SMITH, &id).await;
    assert_eq!(trail_events(&later, "email_failed").len(), 4, "{later:#}");
    assert!(trail_events(&later, "email_sent").is_empty());
}

/// A hospital's SMTP server speaks TLS with a certificate from the hospital's own CA and asks for a
/// login: over STARTTLS and over TLS from the start, the email goes through with `--smtp-ca-file`
/// and the login in `--smtp-url`. Without the CA file the certificate is refused, and a wrong
/// password is refused, each said in the trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_emails_go_through_a_tls_smtp_server_with_a_private_ca_and_a_login() {
    let ca = PrivateCa::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = ca.write_ca(dir.path()).unwrap();
    let ca_file = ca_file.to_str().unwrap();
    for tls in [SmtpTls::StartTls, SmtpTls::Smtps] {
        let certificate = ca.issue("mail.hospital.example").unwrap();
        let smtp = SmtpServer::start_tls(tls, &certificate, "wardline", "s3cret")
            .await
            .unwrap();
        let url = smtp.url();
        let relay = Relay::embedded(&[
            "--email-allowed-domains",
            "hospital.example",
            "--smtp-url",
            &url,
            "--smtp-ca-file",
            ca_file,
        ])
        .await
        .unwrap();
        let id = publish_emailing(&relay).await;
        let sent = wait_for_status(&relay, SMITH, &id, WAIT, |s| {
            !trail_events(s, "email_sent").is_empty() || !trail_events(s, "email_failed").is_empty()
        })
        .await;
        assert!(
            trail_events(&sent, "email_failed").is_empty(),
            "{tls:?}: the email went through at the first attempt: {sent:#}"
        );
        let messages = smtp.wait_for_messages(1, WAIT).await.unwrap();
        assert_eq!(messages.len(), 1, "{tls:?}");
        assert!(
            messages[0].contains("oncall@hospital.example"),
            "{tls:?}: {}",
            messages[0]
        );

        // The OS's certificate authorities do not know the hospital's.
        let untrusting = Relay::embedded(&[
            "--email-allowed-domains",
            "hospital.example",
            "--smtp-url",
            &url,
        ])
        .await
        .unwrap();
        let id = publish_emailing(&untrusting).await;
        let failed = wait_for_status(&untrusting, SMITH, &id, WAIT, |s| {
            !trail_events(s, "email_failed").is_empty()
        })
        .await;
        let detail = trail_events(&failed, "email_failed")[0]["detail"].to_string();
        assert!(
            detail.to_lowercase().contains("certificate"),
            "{tls:?}: {detail}"
        );

        // The right CA, the wrong password.
        let wrong = url.replace("s3cret", "wrong");
        let refused = Relay::embedded(&[
            "--email-allowed-domains",
            "hospital.example",
            "--smtp-url",
            &wrong,
            "--smtp-ca-file",
            ca_file,
        ])
        .await
        .unwrap();
        let id = publish_emailing(&refused).await;
        let failed = wait_for_status(&refused, SMITH, &id, WAIT, |s| {
            !trail_events(s, "email_failed").is_empty()
        })
        .await;
        let detail = trail_events(&failed, "email_failed")[0]["detail"].to_string();
        assert!(detail.contains("535"), "{tls:?}: {detail}");
        assert_eq!(
            smtp.messages().len(),
            1,
            "{tls:?}: nothing more was delivered"
        );
    }
}
