//! Escalation emails only where the hospital allows (issue 21, findings 5 and 11): a publish naming
//! `email_to` is refused (40305) until the administrator names the hospital's domains
//! (`--email-allowed-domains`), and outside them after; one publisher may name addresses in at most
//! 20 publishes a minute (429, 42901); a display name is at most 64 characters (400), and an email
//! to many named addresses keeps every header line within RFC 5322's 998 characters. Over the real
//! relay and a real SMTP server (aiosmtpd).

use serde_json::{Value, json};
use wardline_tests::smtp::SmtpServer;
use wardline_tests::{Relay, WAIT, critical_lab_result, token};

const SMITH: &str = "doctor:dr-smith:notifications";

/// Publishes a critical result on `channel` emailing `email_to`, as `token`.
async fn publish_emailing(
    relay: &Relay,
    token: &str,
    channel: &str,
    email_to: &[&str],
) -> (u16, Value) {
    relay
        .publish_as(
            token,
            &json!({"channel": channel, "message": critical_lab_result(1),
                    "escalation": {"email_after_s": 1, "email_to": email_to}}),
        )
        .await
}

/// An SMTP server, and a relay emailing through it to hospital.example.
async fn emailing_relay() -> (SmtpServer, Relay) {
    let smtp = SmtpServer::start().await.unwrap();
    let relay = Relay::embedded(&[
        "--email-allowed-domains",
        "hospital.example",
        "--smtp-url",
        &smtp.url(),
    ])
    .await
    .unwrap();
    (smtp, relay)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_address_is_emailed_until_the_hospitals_domains_are_named() {
    let service = token("backend", "service", &[], 3600);
    let unconfigured = Relay::embedded(&[]).await.unwrap();
    let (code, reply) =
        publish_emailing(&unconfigured, &service, SMITH, &["oncall@hospital.example"]).await;
    assert_eq!(
        (code, reply["code"].as_u64()),
        (403, Some(40305)),
        "{reply}"
    );
    assert!(
        reply["message"]
            .as_str()
            .unwrap()
            .contains("--email-allowed-domains"),
        "{reply}"
    );

    let relay = Relay::embedded(&["--email-allowed-domains", "hospital.example"])
        .await
        .unwrap();
    let (code, reply) =
        publish_emailing(&relay, &service, SMITH, &["someone@elsewhere.example"]).await;
    assert_eq!(
        (code, reply["code"].as_u64()),
        (403, Some(40305)),
        "{reply}"
    );
    let (code, reply) = publish_emailing(
        &relay,
        &service,
        SMITH,
        &["Dr Oncall <oncall@Hospital.example>"],
    )
    .await;
    assert_eq!(code, 200, "{reply}");

    // The relay's own default addresses are held to the same rule, at start.
    let refused = Relay::embedded(&[
        "--email-allowed-domains",
        "hospital.example",
        "--escalation-email-to",
        "someone@elsewhere.example",
    ])
    .await;
    let error = format!("{:#}", refused.err().expect("the relay refused to start"));
    assert!(error.contains("someone@elsewhere.example"), "{error}");
}

/// An administrator publishing 200 alerts that each name addresses gets 20 through; the rest are
/// refused with 429 and the SMTP server sees only the 20 accepted ones' emails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_names_addresses_in_at_most_twenty_publishes_a_minute() {
    let (smtp, relay) = emailing_relay().await;
    let admin = token("ops", "admin", &[], 3600);
    let mut accepted = 0;
    let mut limited = 0;
    for _ in 0..200 {
        match publish_emailing(
            &relay,
            &admin,
            "system:alerts",
            &["oncall@hospital.example"],
        )
        .await
        {
            (200, _) => accepted += 1,
            (429, reply) => {
                assert_eq!(reply["code"], 42901, "{reply}");
                limited += 1;
            }
            (code, reply) => panic!("{code}: {reply}"),
        }
    }
    assert_eq!((accepted, limited), (20, 180));
    // Another publisher is not held back by the first.
    let service = token("backend", "service", &[], 3600);
    let (code, reply) =
        publish_emailing(&relay, &service, SMITH, &["oncall@hospital.example"]).await;
    assert_eq!(code, 200, "{reply}");
    // Publishes without addresses of their own are not limited.
    let (code, reply) = relay
        .publish_as(
            &admin,
            &json!({"channel": "system:alerts", "message": critical_lab_result(2)}),
        )
        .await;
    assert_eq!(code, 200, "{reply}");
    smtp.wait_for_messages(21, WAIT * 2).await.unwrap();
}

/// A 5,000-character display name is refused; ten addresses with 64-character names make an
/// email whose every header line is within 998 characters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn display_names_are_bounded_and_headers_folded() {
    let (smtp, relay) = emailing_relay().await;
    let service = token("backend", "service", &[], 3600);
    let long = format!("{} <oncall@hospital.example>", "A".repeat(5000));
    let (code, reply) = publish_emailing(&relay, &service, SMITH, &[&long]).await;
    assert_eq!(
        (code, reply["code"].as_u64()),
        (400, Some(40005)),
        "{reply}"
    );
    assert!(
        reply["message"].as_str().unwrap().contains("64 characters"),
        "{reply}"
    );

    let named: Vec<String> = (0..10)
        .map(|n| format!("{n} {} <oncall{n}@hospital.example>", "Ä".repeat(60)))
        .collect();
    let named: Vec<&str> = named.iter().map(String::as_str).collect();
    let (code, reply) = publish_emailing(&relay, &service, SMITH, &named).await;
    assert_eq!(code, 200, "{reply}");
    let email = smtp.wait_for_messages(1, WAIT).await.unwrap().remove(0);
    let longest = email.lines().map(str::len).max().unwrap_or(0);
    assert!(longest <= 998, "a {longest}-character line: {email}");
    for n in 0..10 {
        assert!(
            email.contains(&format!("oncall{n}@hospital.example")),
            "{email}"
        );
    }
}
