//! Who may connect and read what: refusals carry their HTTP status and stable code.

use serde_json::json;
use wardline_protocol::{ClientFrame, ErrorCode, ServerFrame, close};
use wardline_tests::client::{Refused, V1Client, connect, next_text};
use wardline_tests::{BrokerKind, Relay, forged_token, on_both_brokers, token};

fn code(body: &serde_json::Value) -> u64 {
    body["code"].as_u64().unwrap_or_default()
}

async fn refusals_carry_their_codes(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let cases = [
        (
            "wrong user",
            format!("/ws/d2?token={}", token("d1", "doctor", &[], 600)),
            403,
            ErrorCode::WrongUser,
        ),
        (
            "bad signature",
            format!("/ws/d1?token={}", forged_token("d1", "doctor")),
            401,
            ErrorCode::TokenInvalid,
        ),
        (
            "expired",
            format!("/ws/d1?token={}", token("d1", "doctor", &[], -5)),
            401,
            ErrorCode::TokenExpired,
        ),
        ("missing", "/ws/d1".to_owned(), 401, ErrorCode::TokenMissing),
        (
            "garbage",
            "/ws/d1?token=not.a.jwt".to_owned(),
            401,
            ErrorCode::TokenInvalid,
        ),
    ];
    for (what, path, status, expected) in cases {
        match connect(&relay.ws_url(&path), &[]).await {
            Err(Refused::Http(got, body)) => {
                assert_eq!(
                    (got, code(&body)),
                    (status, u64::from(expected.code())),
                    "{what}: {body}"
                );
                assert!(
                    body["message"].as_str().is_some_and(|m| !m.is_empty()),
                    "{what}: {body}"
                );
            }
            other => panic!("{what}: expected a refusal, got {:?}", other.map(|_| ())),
        }
    }
    // The same checks guard SSE.
    let (status, body) = relay
        .get(
            &format!("/sse/d2?token={}", token("d1", "doctor", &[], 600)),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (403, 40301));
    Ok(())
}
on_both_brokers!(refusals_carry_their_codes);

async fn a_patient_cannot_read_a_doctor_channel(kind: BrokerKind) -> anyhow::Result<()> {
    let (_redis, relay) = wardline_tests::setup(kind, &[]).await?;
    let patient = token("p1", "patient", &[], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "p1", &patient).await?;
    let (_, outcomes) = client
        .subscribe(&[
            ("doctor:d1:notifications", None),
            ("nurse:x:notifications", None),
            ("patient:p1:notifications", None),
        ])
        .await?;
    match &outcomes[..] {
        [
            ServerFrame::Error {
                code: ErrorCode::ChannelForbidden,
                channel: Some(forbidden),
                ..
            },
            ServerFrame::Error {
                code: ErrorCode::UnknownChannel,
                ..
            },
            ServerFrame::Resumed {
                channel,
                gap: false,
                ..
            },
        ] => {
            assert_eq!(forbidden, "doctor:d1:notifications");
            assert_eq!(channel.as_str(), "patient:p1:notifications");
        }
        other => panic!("unexpected outcomes {other:?}"),
    }
    // A granted channel is readable; the refusal did not end the connection.
    client.send_text(r#"{"op":"ping"}"#).await?;
    assert_eq!(client.frame().await?, ServerFrame::Pong);
    let (status, body) = relay
        .get(
            &format!("/sse/p1?token={patient}&channels=doctor:d1:notifications"),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (403, 40302));
    let granted = token("p1", "patient", &["appointment:a1:updates"], 600);
    let mut client = V1Client::connect(&relay.ws_url(""), "p1", &granted).await?;
    let (_, outcomes) = client
        .subscribe(&[("appointment:a1:updates", None)])
        .await?;
    assert!(
        matches!(outcomes[0], ServerFrame::Resumed { .. }),
        "{outcomes:?}"
    );
    Ok(())
}
on_both_brokers!(a_patient_cannot_read_a_doctor_channel);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_with_4001_when_its_token_expires() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let short = token("d1", "doctor", &[], 2);
    let url = relay.ws_url(&format!("/ws/d1?token={short}"));
    let mut raw = connect(&url, &[]).await.unwrap();
    assert_eq!(
        next_text(&mut raw).await.unwrap(),
        Err(Some(close::TOKEN_EXPIRED))
    );
    let mut v1 = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 2))
        .await
        .unwrap();
    let (code, _) = v1.until_closed().await.unwrap();
    assert_eq!(code, Some(close::TOKEN_EXPIRED));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_needs_a_service_or_an_admin_for_system_alerts() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let message = json!({"type": "new_prescription", "medication": "Amoxicillin"});
    let body = |channel: &str| json!({"channel": channel, "message": message});
    let admin = token("ops", "admin", &[], 600);
    let doctor = token("d1", "doctor", &[], 600);
    let (status, reply) = relay
        .publish_as(&admin, &body("patient:p1:notifications"))
        .await;
    assert_eq!(
        (status, reply["status"].as_str(), code(&reply)),
        (403, Some("failed"), 40303)
    );
    assert_eq!(
        relay
            .publish_as(&doctor, &body("doctor:d1:notifications"))
            .await
            .0,
        403
    );
    let (status, reply) = relay.publish_as(&admin, &body("system:alerts")).await;
    assert_eq!(
        (status, reply["status"].as_str()),
        (200, Some("published")),
        "{reply}"
    );
    let (status, reply) = relay
        .publish_as(&forged_token("svc", "service"), &body("system:alerts"))
        .await;
    assert_eq!((status, code(&reply)), (401, 40102));
    // Stats: admin and service yes, others no.
    assert_eq!(relay.get("/v1/stats", Some(&admin)).await.0, 200);
    assert_eq!(
        relay
            .get("/v1/ws/stats", Some(&token("svc", "service", &[], 60)))
            .await
            .0,
        200
    );
    let (status, reply) = relay.get("/v1/stats", Some(&doctor)).await;
    assert_eq!((status, code(&reply)), (403, 40303));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_command_signs_with_the_secret_serve_generated() {
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(wardline_tests::binary("wardline-relay"))
        .args([
            "token",
            "--sub",
            "d9",
            "--role",
            "doctor",
            "--ttl",
            "10m",
            "--data-dir",
        ])
        .arg(dir.path())
        .env_remove("WARDLINE_JWT_SECRET")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let minted = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    // A relay on the same data dir, without --jwt-secret, uses the generated secret.
    let relay = Relay::launch(dir.path(), None, &[], false, None)
        .await
        .unwrap();
    V1Client::connect(&relay.ws_url(""), "d9", &minted)
        .await
        .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    // A secret too short to be safe is refused at start, with the reason.
    let output = std::process::Command::new(wardline_tests::binary("wardline-relay"))
        .args(["serve", "--listen", "127.0.0.1:0", "--jwt-secret", "short"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("at least 16 bytes"));
}

/// A token signed with the relay's secret with these claims as they are.
fn token_with(claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(wardline_tests::SECRET.as_bytes()),
    )
    .unwrap()
}

/// `claims` (without `sub` and `role`) as a doctor's token signed with the relay's secret.
fn doctor_token_with_times(times: &serde_json::Value) -> String {
    let mut claims = json!({"sub": "d1", "role": "doctor"});
    claims
        .as_object_mut()
        .unwrap()
        .extend(times.as_object().unwrap().clone());
    token_with(claims)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_claims_past_the_horizon_are_refused_with_the_reason() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let now = wardline_tests::unix_now();
    let eleven_years = 11 * 366 * 24 * 3600;
    let cases = [
        (json!({"exp": u64::MAX - 5}), "`exp`"),
        (json!({"exp": now + eleven_years}), "`exp`"),
        (json!({"exp": now + 600, "iat": u64::MAX - 5}), "`iat`"),
        (
            json!({"exp": now + 600, "iat": now + eleven_years}),
            "`iat`",
        ),
        // `nbf` that far ahead was refused before too ("not valid yet"); still so.
        (json!({"exp": now + 600, "nbf": now + eleven_years}), "nbf"),
    ];
    for (times, names) in &cases {
        let (status, body) = relay
            .get("/v1/me", Some(&doctor_token_with_times(times)))
            .await;
        assert_eq!((status, code(&body)), (401, 40102), "{times}: {body}");
        let message = body["message"].as_str().unwrap_or_default();
        assert!(message.contains(names), "{times}: {message}");
        if names.starts_with('`') {
            assert!(message.contains("10 years"), "{times}: {message}");
        }
    }
    // Nine years ahead is still a token (long-lived service tokens exist).
    let nine_years = json!({"exp": now + 9 * 365 * 24 * 3600});
    assert_eq!(
        relay
            .get("/v1/me", Some(&doctor_token_with_times(&nine_years)))
            .await
            .0,
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_with_an_exp_near_2_64_is_refused_and_the_connection_carries_on() {
    let relay = Relay::embedded(&[]).await.unwrap();
    let mut client = V1Client::connect(&relay.ws_url(""), "d1", &token("d1", "doctor", &[], 600))
        .await
        .unwrap();
    let absurd = doctor_token_with_times(&json!({"exp": u64::MAX - 5}));
    client
        .send(&ClientFrame::Refresh { token: absurd })
        .await
        .unwrap();
    let answer = client.frame().await;
    // A refused refresh leaves the connection as it was: it answers a ping.
    client.send(&ClientFrame::Ping).await.ok();
    let pong = client.frame().await;
    let log = relay.log();
    assert!(
        !log.contains("panicked"),
        "the relay panicked: {answer:?} {pong:?}\n{log}"
    );
    match answer.unwrap() {
        ServerFrame::Error { code, message, .. } => {
            assert_eq!(code, ErrorCode::TokenInvalid, "{message}");
            assert!(message.contains("10 years"), "{message}");
        }
        other => panic!("expected the refresh refused, got {other:?}"),
    }
    assert_eq!(pong.unwrap(), ServerFrame::Pong);
}
