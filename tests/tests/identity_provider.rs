//! Tokens from the hospital's identity provider: RS256 and ES256 tokens checked against a JWKS that
//! a local HTTP server in the test publishes, the ways a forged token tries to pass refused with
//! `{code, message}`, a connection that presents a new token before `exp` outliving the first, and
//! the key set kept up to date: a rotated key is taken within 10 s however many made-up key ids
//! arrive, and a withdrawn one is dropped once the provider's `Cache-Control: max-age` has passed.
//! The RSA key is a fixture (`tests/fixtures/identity-provider-rsa.pem` and its public half
//! `….pub.pem`, made with `openssl genpkey` for these tests only: RSA keys take long to make in a
//! debug build); the EC keys are made here.

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use wardline_protocol::{ClientFrame, ErrorCode, ServerFrame, close};
use wardline_tests::client::V1Client;
use wardline_tests::static_server::StaticServer;
use wardline_tests::{Relay, unix_now};

const RSA_PEM: &str = include_str!("../fixtures/identity-provider-rsa.pem");
const RSA_PUBLIC_PEM: &str = include_str!("../fixtures/identity-provider-rsa.pub.pem");

/// Serves one JWKS over plain HTTP (and counts how often it was fetched); returns it and its URL.
async fn serve_jwks(set: &JwkSet) -> (StaticServer, String) {
    let server = StaticServer::start("application/json", serde_json::to_string(set).unwrap())
        .await
        .unwrap();
    let url = format!("{}/.well-known/jwks.json", server.origin);
    (server, url)
}

/// A signing key of the identity provider and its public half as a JWK named `kid`.
fn key(pem: &str, alg: Algorithm, kid: &str) -> (EncodingKey, Jwk) {
    let encoding = match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
        _ => EncodingKey::from_ec_pem(pem.as_bytes()),
    }
    .unwrap();
    let mut jwk = Jwk::from_encoding_key(&encoding, alg).unwrap();
    jwk.common.key_id = Some(kid.to_owned());
    (encoding, jwk)
}

fn ec_pem() -> String {
    rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .unwrap()
        .serialize_pem()
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, sub: &str, ttl_s: u64) -> String {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    let claims = json!({"sub": sub, "role": "doctor", "exp": unix_now() + ttl_s});
    jsonwebtoken::encode(&header, &claims, key).unwrap()
}

fn base64url(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// `GET /v1/me` with the token: the status and body.
async fn me(relay: &Relay, token: &str) -> (u16, Value) {
    relay.get("/v1/me", Some(token)).await
}

#[tokio::test]
async fn identity_provider_tokens_are_checked_against_its_published_keys() {
    let (rsa, rsa_jwk) = key(RSA_PEM, Algorithm::RS256, "rsa-2026");
    let (ec, ec_jwk) = key(&ec_pem(), Algorithm::ES256, "ec-2026");
    let (jwks, jwks_url) = serve_jwks(&JwkSet {
        keys: vec![rsa_jwk, ec_jwk],
    })
    .await;
    let relay = Relay::embedded(&["--jwt-jwks-url", &jwks_url])
        .await
        .unwrap();

    // RS256 and ES256 from the provider are accepted.
    let (status, body) = me(
        &relay,
        &sign(Algorithm::RS256, Some("rsa-2026"), &rsa, "d1", 600),
    )
    .await;
    assert_eq!((status, &body["user"]), (200, &json!("d1")), "{body}");
    let (status, body) = me(
        &relay,
        &sign(Algorithm::ES256, Some("ec-2026"), &ec, "d2", 600),
    )
    .await;
    assert_eq!((status, &body["user"]), (200, &json!("d2")), "{body}");

    let refused = |(status, body): (u16, Value), why: &str| {
        assert_eq!(status, 401, "{why}: {body}");
        assert_eq!(
            body["code"],
            u64::from(ErrorCode::TokenInvalid.code()),
            "{why}: {body}"
        );
        assert!(body["message"].is_string(), "{why}: {body}");
        body["message"].as_str().unwrap().to_owned()
    };
    // Another key under a known kid.
    let (impostor, _) = key(&ec_pem(), Algorithm::ES256, "ec-2026");
    refused(
        me(
            &relay,
            &sign(Algorithm::ES256, Some("ec-2026"), &impostor, "d1", 600),
        )
        .await,
        "another key with the same kid",
    );
    // alg none, naming a real kid.
    let header = base64url(br#"{"alg":"none","kid":"rsa-2026"}"#);
    let claims = base64url(
        json!({"sub": "d1", "role": "doctor", "exp": unix_now() + 600})
            .to_string()
            .as_bytes(),
    );
    refused(me(&relay, &format!("{header}.{claims}.")).await, "alg none");
    // HS256 "signed" with the provider's public key as the secret.
    let hs_with_public = sign(
        Algorithm::HS256,
        Some("rsa-2026"),
        &EncodingKey::from_secret(RSA_PUBLIC_PEM.as_bytes()),
        "d1",
        600,
    );
    refused(
        me(&relay, &hs_with_public).await,
        "HS256 with the public key",
    );
    // A kid the provider never published.
    let message = refused(
        me(
            &relay,
            &sign(Algorithm::RS256, Some("rsa-1999"), &rsa, "d1", 600),
        )
        .await,
        "unknown kid",
    );
    assert!(message.contains("unknown key id"), "{message}");
    // The key set was fetched for the first token, and again for the unknown kid (the provider
    // may have published a new key since).
    assert_eq!(jwks.requests(), 2);
    // The shared secret still signs service tokens.
    assert_eq!(
        relay
            .publish(
                "doctor:d1:notifications",
                &json!({"type": "system_notification", "content": "hello"})
            )
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn a_connection_given_a_new_token_outlives_the_first_tokens_expiry() {
    let (rsa, rsa_jwk) = key(RSA_PEM, Algorithm::RS256, "rsa-2026");
    let (_jwks, jwks_url) = serve_jwks(&JwkSet {
        keys: vec![rsa_jwk],
    })
    .await;
    let relay = Relay::embedded(&["--jwt-jwks-url", &jwks_url])
        .await
        .unwrap();
    let short = sign(Algorithm::RS256, Some("rsa-2026"), &rsa, "d1", 3);
    let mut refreshed = V1Client::connect(&relay.ws_url(""), "d1", &short)
        .await
        .unwrap();
    let mut left_alone = V1Client::connect(&relay.ws_url(""), "d1", &short)
        .await
        .unwrap();

    // A token of another user is refused and changes nothing.
    let other = sign(Algorithm::RS256, Some("rsa-2026"), &rsa, "d2", 600);
    refreshed
        .send(&ClientFrame::Refresh { token: other })
        .await
        .unwrap();
    match refreshed.frame().await.unwrap() {
        ServerFrame::Error { code, .. } => assert_eq!(code, ErrorCode::WrongUser),
        other => panic!("expected an error, got {other:?}"),
    }
    let long = sign(Algorithm::RS256, Some("rsa-2026"), &rsa, "d1", 600);
    refreshed
        .send(&ClientFrame::Refresh { token: long })
        .await
        .unwrap();
    match refreshed.frame().await.unwrap() {
        ServerFrame::Refreshed { expires_at } => assert!(expires_at > unix_now() + 500),
        other => panic!("expected refreshed, got {other:?}"),
    }

    // The first token's exp passes: the connection left alone is closed, the refreshed one is not.
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), left_alone.until_closed())
        .await
        .expect("closed at exp")
        .unwrap();
    assert_eq!(code, Some(close::TOKEN_EXPIRED));
    tokio::time::sleep(Duration::from_secs(1)).await;
    refreshed.send(&ClientFrame::Ping).await.unwrap();
    assert_eq!(refreshed.frame().await.unwrap(), ServerFrame::Pong);
    // The access log has the closed connection's line: user, transport, code; never the token.
    let deadline = tokio::time::Instant::now() + wardline_tests::WAIT;
    while !relay.log().contains("connection closed by the relay")
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = relay.log();
    let line = log
        .lines()
        .find(|l| l.contains("connection closed by the relay"))
        .unwrap_or_else(|| panic!("no access-log line: {log}"));
    assert!(
        line.contains("user=\"d1\"") && line.contains("ws_v1") && line.contains("code=4001"),
        "{line}"
    );
    assert!(!log.contains(&short), "a token in the log");
}

#[tokio::test]
async fn a_public_key_file_checks_tokens_without_a_key_set() {
    let dir = tempfile::tempdir().unwrap();
    let public = dir.path().join("idp.pub.pem");
    std::fs::write(&public, RSA_PUBLIC_PEM).unwrap();
    let relay = Relay::embedded(&["--jwt-public-key", public.to_str().unwrap()])
        .await
        .unwrap();
    let (rsa, _) = key(RSA_PEM, Algorithm::RS256, "unused");
    let (status, body) = me(&relay, &sign(Algorithm::RS256, None, &rsa, "p1", 600)).await;
    assert_eq!((status, &body["user"]), (200, &json!("p1")), "{body}");
    let (ec, _) = key(&ec_pem(), Algorithm::ES256, "unused");
    let (status, body) = me(&relay, &sign(Algorithm::ES256, None, &ec, "p1", 600)).await;
    assert_eq!(status, 401, "an ES256 token against an RSA key: {body}");
}

/// The identity provider's key set over plain HTTP as it changes: [`KeySetServer::publish`]
/// replaces it (a rotation); every answer carries `Cache-Control` when one is given; requests are
/// counted.
struct KeySetServer {
    url: String,
    body: Arc<Mutex<String>>,
    requests: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeySetServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeySetServer {
    async fn start(set: &JwkSet, cache_control: Option<&str>) -> KeySetServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "http://{}/.well-known/jwks.json",
            listener.local_addr().unwrap()
        );
        let body = Arc::new(Mutex::new(serde_json::to_string(set).unwrap()));
        let requests = Arc::new(AtomicUsize::new(0));
        let extra = cache_control
            .map(|value| format!("cache-control: {value}\r\n"))
            .unwrap_or_default();
        let (serving, counter) = (body.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let body = serving.lock().unwrap().clone();
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                tokio::spawn(async move {
                    let mut request = [0u8; 4096];
                    let _ = stream.read(&mut request).await;
                    let _ = stream.write_all(response.as_bytes()).await;
                });
            }
        });
        KeySetServer {
            url,
            body,
            requests,
            task,
        }
    }

    /// Serves `set` from now on.
    fn publish(&self, set: &JwkSet) {
        *self.body.lock().unwrap() = serde_json::to_string(set).unwrap();
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_within_10_s_while_made_up_key_ids_keep_coming() {
    let (old, old_jwk) = key(&ec_pem(), Algorithm::ES256, "2026-04");
    let (new, new_jwk) = key(&ec_pem(), Algorithm::ES256, "2026-05");
    let provider = KeySetServer::start(
        &JwkSet {
            keys: vec![old_jwk],
        },
        None,
    )
    .await;
    let relay = Relay::embedded(&["--jwt-jwks-url", &provider.url])
        .await
        .unwrap();

    // Twenty devices at once on a relay that has not fetched the keys yet: one fetch serves all.
    let first = sign(Algorithm::ES256, Some("2026-04"), &old, "d1", 600);
    let answers = futures_util::future::join_all((0..20).map(|_| me(&relay, &first))).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 200),
        "{answers:?}"
    );
    assert_eq!(provider.requests(), 1, "one fetch for concurrent requests");

    // Thirty made-up key ids at once cost a few refetches, not thirty.
    let (forger, _) = key(&ec_pem(), Algorithm::ES256, "unused");
    let made_up: Vec<String> = (0..30)
        .map(|n| {
            sign(
                Algorithm::ES256,
                Some(&format!("made-up-{n}")),
                &forger,
                "d1",
                600,
            )
        })
        .collect();
    let answers = futures_util::future::join_all(made_up.iter().map(|t| me(&relay, t))).await;
    assert!(
        answers.iter().all(|(status, _)| *status == 401),
        "{answers:?}"
    );
    assert!(
        provider.requests() <= 1 + 3,
        "{} fetches for 30 made-up key ids (a burst of 2, and one refilled meanwhile at most)",
        provider.requests() - 1
    );

    // Then one made-up key id every 2 s, all along, spending the refetches as they come.
    let (attempts, mut attempted) = tokio::sync::watch::channel(Vec::<u16>::new());
    let base = relay.base.clone();
    let attacker = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for n in 0.. {
            let token = sign(
                Algorithm::ES256,
                Some(&format!("made-up-later-{n}")),
                &forger,
                "d1",
                600,
            );
            let status = client
                .get(format!("{base}/v1/me"))
                .bearer_auth(token)
                .send()
                .await
                .map_or(0, |r| r.status().as_u16());
            attempts.send_modify(|statuses| statuses.push(status));
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
    tokio::time::timeout(wardline_tests::WAIT, attempted.wait_for(|s| s.len() >= 3))
        .await
        .expect("three made-up key ids sent")
        .unwrap();

    // The provider rotates: the old key is withdrawn, the new one signs from now on.
    provider.publish(&JwkSet {
        keys: vec![new_jwk],
    });
    let rotated = Instant::now();
    let fresh = sign(Algorithm::ES256, Some("2026-05"), &new, "d1", 600);
    loop {
        let (status, body) = me(&relay, &fresh).await;
        if status == 200 {
            break;
        }
        assert_eq!(status, 401, "{body}");
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "a token of the new key is still refused {:?} after the rotation: {body}",
            rotated.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    attacker.abort();
    let statuses = attempted.borrow().clone();
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_key_is_refused_once_the_providers_max_age_has_passed() {
    let (old, old_jwk) = key(&ec_pem(), Algorithm::ES256, "2026-04");
    let (_, new_jwk) = key(&ec_pem(), Algorithm::ES256, "2026-05");
    let provider = KeySetServer::start(
        &JwkSet {
            keys: vec![old_jwk],
        },
        Some("public, max-age=5"),
    )
    .await;
    let relay = Relay::embedded(&["--jwt-jwks-url", &provider.url])
        .await
        .unwrap();
    let token = sign(Algorithm::ES256, Some("2026-04"), &old, "d1", 600);
    assert_eq!(me(&relay, &token).await.0, 200);

    // The provider withdraws the key (compromised, say): tokens it signed are refused once the
    // relay's copy of the set is older than the 5 s the provider allowed.
    provider.publish(&JwkSet {
        keys: vec![new_jwk],
    });
    let deadline = Instant::now() + wardline_tests::WAIT;
    loop {
        let (status, body) = me(&relay, &token).await;
        if status == 401 {
            assert!(
                body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("unknown key id")),
                "{body}"
            );
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(
            Instant::now() < deadline,
            "the withdrawn key is still accepted {:?} after it was withdrawn (max-age=5)",
            wardline_tests::WAIT
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
