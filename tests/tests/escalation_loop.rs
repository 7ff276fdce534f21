//! The escalation loop cannot be starved or doubled (issue 21, finding 4): steps run side by side,
//! so emails to an SMTP server that takes 10 s over each message hold up no unrelated escalation;
//! and a step's claim is renewed while it runs, so with two relay nodes on one Redis every email
//! goes out once, even when the server takes longer than a claim's lease. Real processes: Redis, relays, aiosmtpd taking its time
//! (`tests/smtp/slow_server.py`).

use serde_json::{Value, json};
use std::time::Duration;
use wardline_tests::smtp::SmtpServer;
use wardline_tests::{RedisServer, Relay, critical_lab_result, token, trail_events};

const SMITH: &str = "doctor:dr-smith:notifications";
const BACKUP: &str = "doctor:dr-backup:notifications";

/// How long the SMTP server takes over each message.
const SMTP_DELAY: Duration = Duration::from_secs(10);

fn service() -> String {
    token("backend", "service", &[], 3600)
}

/// Publishes a critical result on `channel` with `escalation`; answers its id.
async fn publish(relay: &Relay, channel: &str, n: usize, escalation: Value) -> String {
    let (code, reply) = relay
        .publish_as(
            &service(),
            &json!({"channel": channel, "message": critical_lab_result(n), "escalation": escalation}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    reply["message_id"].as_str().unwrap().to_owned()
}

/// The notification's trail events named `event`, as the publisher reads them.
async fn events(relay: &Relay, channel: &str, id: &str, event: &str) -> Vec<Value> {
    let (code, status) = relay
        .get(&format!("/v1/messages/{channel}/{id}"), Some(&service()))
        .await;
    assert_eq!(code, 200, "{status}");
    trail_events(&status, event).into_iter().cloned().collect()
}

/// Waits until every notification of `ids` on `channel` has an `event` in its trail.
async fn wait_for_event(
    relay: &Relay,
    channel: &str,
    ids: &[String],
    event: &str,
    within: Duration,
) {
    let deadline = tokio::time::Instant::now() + within;
    for id in ids {
        while events(relay, channel, id, event).await.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {event} for {channel} {id} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Three emails to an SMTP server taking 10 s over each are due, then, a second later, an
/// escalation of another notification: the escalation happens while every email is still with the
/// SMTP server (it waited for all three attempts, 30 s, when steps ran one after another).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_to_a_slow_smtp_server_do_not_hold_up_an_escalation() {
    let smtp = SmtpServer::start_slow(SMTP_DELAY).await.unwrap();
    let url = smtp.url();
    let relay = Relay::embedded(&[
        "--smtp-url",
        &url,
        "--email-allowed-domains",
        "hospital.example",
    ])
    .await
    .unwrap();
    let mut emailing = Vec::new();
    for n in 0..3 {
        let escalation =
            json!({"email_after_s": 1, "email_to": [format!("oncall{n}@hospital.example")]});
        emailing.push(publish(&relay, SMITH, n, escalation).await);
    }
    // No device of dr-smith is connected: the escalation comes at half its delay, 2 s, a second
    // after the emails are due.
    let escalating = publish(
        &relay,
        SMITH,
        3,
        json!({"escalate_after_s": 4, "escalate_to": [BACKUP]}),
    )
    .await;

    wait_for_event(
        &relay,
        SMITH,
        std::slice::from_ref(&escalating),
        "escalated",
        SMTP_DELAY * 5,
    )
    .await;
    for id in &emailing {
        for outcome in ["email_sent", "email_failed"] {
            assert!(
                events(&relay, SMITH, id, outcome).await.is_empty(),
                "an email attempt ended ({outcome}) before the escalation: the escalation waited for it"
            );
        }
    }
    // And the emails do go out, each once.
    wait_for_event(&relay, SMITH, &emailing, "email_sent", SMTP_DELAY * 5).await;
    assert_eq!(smtp.messages().len(), 3);
}

/// Two relay nodes on one Redis, four emails to an SMTP server taking 20 s over each: longer than
/// a claim's 15 s lease, which the node sending renews while it waits. Each email is sent once,
/// and each trail says so once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_two_nodes_and_a_slow_smtp_server_every_email_goes_out_once() {
    let redis = RedisServer::start().await.unwrap();
    let smtp = SmtpServer::start_slow(SMTP_DELAY * 2).await.unwrap();
    let url = smtp.url();
    let flags = [
        "--smtp-url",
        &url,
        "--email-allowed-domains",
        "hospital.example",
    ];
    let r1 = Relay::on_redis(&redis, &flags).await.unwrap();
    let r2 = Relay::on_redis(&redis, &flags).await.unwrap();
    let mut ids = Vec::new();
    for n in 0..4 {
        let escalation =
            json!({"email_after_s": 1, "email_to": [format!("oncall{n}@hospital.example")]});
        ids.push(publish(&r1, SMITH, n, escalation).await);
    }
    wait_for_event(&r2, SMITH, &ids, "email_sent", SMTP_DELAY * 8).await;
    // A step taken over by the other node would be sent again after its claim ran out (15 s):
    // wait that long, and a little more, before counting.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let messages = smtp.messages();
    assert_eq!(
        messages.len(),
        4,
        "each email once, not {} messages",
        messages.len()
    );
    for (n, id) in ids.iter().enumerate() {
        assert_eq!(events(&r2, SMITH, id, "email_sent").await.len(), 1, "{id}");
        let to = format!("oncall{n}@hospital.example");
        assert_eq!(
            messages.iter().filter(|m| m.contains(&to)).count(),
            1,
            "{to} was emailed once"
        );
    }
    drop((r1, r2));
}
