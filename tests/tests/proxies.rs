//! The relay behind a hospital's reverse proxy (`--trusted-proxies`): devices behind one proxy
//! address each get their own connection bucket, a device that opens many connections is still
//! limited, and a device that forges forwarding headers gains nothing: neither from outside the
//! proxy nor through it (only the header the proxy sets, `--forwarded-header`, is read). The proxy
//! is played by the test from 127.0.0.2 (a loopback address of its own); devices connect from
//! 127.0.0.1.

use std::net::IpAddr;
use wardline_tests::{Relay, token};

const PROXY: &str = "127.0.0.2";
const DEVICE: &str = "127.0.0.1";

/// Opens an event stream from `from`, with `X-Forwarded-For: forwarded` if given; returns the
/// status and `Retry-After`.
async fn open(
    relay: &Relay,
    from: &str,
    forwarded: Option<&str>,
) -> anyhow::Result<(u16, Option<String>)> {
    let client = reqwest::Client::builder()
        .local_address(from.parse::<IpAddr>()?)
        .build()?;
    let url = format!(
        "{}/sse/d1?token={}",
        relay.base,
        token("d1", "doctor", &[], 600)
    );
    let mut request = client.get(url);
    if let Some(forwarded) = forwarded {
        request = request.header("x-forwarded-for", forwarded);
    }
    let response = request.send().await?;
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    Ok((response.status().as_u16(), retry_after))
}

#[tokio::test]
async fn devices_behind_a_trusted_proxy_get_their_own_buckets_and_forgers_gain_nothing() {
    let relay = Relay::embedded(&[
        "--trusted-proxies",
        PROXY,
        "--connections-per-ip-burst",
        "5",
        "--connections-per-ip-per-s",
        "1",
    ])
    .await
    .unwrap();

    // 40 devices behind the proxy, all at once: each is its own address.
    for n in 0..40 {
        let device = format!("10.20.0.{n}");
        let (status, _) = open(&relay, PROXY, Some(&device)).await.unwrap();
        assert_eq!(status, 200, "device {device} behind the proxy");
    }

    // One device behind the proxy opening 20: its burst of 5, then limited, with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        statuses.push(open(&relay, PROXY, Some("10.30.0.1")).await.unwrap());
    }
    assert!(statuses[..5].iter().all(|(s, _)| *s == 200), "{statuses:?}");
    let limited: Vec<_> = statuses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(limited.len() >= 14, "{statuses:?}");
    assert!(
        limited
            .iter()
            .all(|(_, retry)| retry.as_deref() == Some("1")),
        "{statuses:?}"
    );

    // A device that is not the proxy, forging a new address each time: still one bucket.
    let mut forged = Vec::new();
    for n in 0..20 {
        let claimed = format!("10.40.0.{n}");
        forged.push(open(&relay, DEVICE, Some(&claimed)).await.unwrap().0);
    }
    assert!(forged[..5].iter().all(|s| *s == 200), "{forged:?}");
    assert!(
        forged.iter().filter(|s| **s == 429).count() >= 14,
        "forged headers gained connections: {forged:?}"
    );
}

/// An event stream opened through the proxy with these forwarding headers (what the device sent
/// and what the proxy added): the open response (kept, so the connection stays counted) or the
/// refusal's status and code.
async fn hold_through_proxy(
    relay: &Relay,
    user: &str,
    headers: &[(&str, &str)],
) -> anyhow::Result<Result<reqwest::Response, (u16, u64)>> {
    let client = reqwest::Client::builder()
        .local_address(PROXY.parse::<IpAddr>()?)
        .build()?;
    let url = format!(
        "{}/sse/{user}?token={}",
        relay.base,
        token(user, "doctor", &[], 600)
    );
    let mut request = client.get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await?;
    if response.status() == 200 {
        return Ok(Ok(response));
    }
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    Ok(Err((status, body["code"].as_u64().unwrap_or_default())))
}

/// A random address in 10.0.0.0/8 (the standard library's randomly keyed hasher, so that each run
/// forges other ones).
fn random_address() -> String {
    use std::hash::{BuildHasher, Hasher};
    let bits = std::hash::RandomState::new()
        .build_hasher()
        .finish()
        .to_be_bytes();
    format!("10.{}.{}.{}", bits[0], bits[1], bits[2])
}

/// Opens `n` event streams through the proxy with the headers `headers_for` gives each; returns
/// the streams admitted (held open) and every outcome: `(200, 0)` or the refusal's status and code.
async fn open_many(
    relay: &Relay,
    user: &str,
    n: usize,
    headers_for: impl Fn() -> Vec<(&'static str, String)>,
) -> (Vec<reqwest::Response>, Vec<(u16, u64)>) {
    let (mut held, mut outcomes) = (Vec::new(), Vec::new());
    for _ in 0..n {
        let headers = headers_for();
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        match hold_through_proxy(relay, user, &headers).await.unwrap() {
            Ok(stream) => {
                held.push(stream);
                outcomes.push((200, 0));
            }
            Err(refused) => outcomes.push(refused),
        }
    }
    (held, outcomes)
}

/// A relay behind the proxy at [`PROXY`] allowing 3 connections per client address.
async fn relay_capping_at_3(extra: &[&str]) -> Relay {
    let mut flags = vec!["--trusted-proxies", PROXY, "--max-connections-per-ip", "3"];
    flags.extend(extra);
    Relay::embedded(&flags).await.unwrap()
}

#[tokio::test]
async fn a_devices_own_forwarded_header_does_not_escape_its_cap() {
    let relay = relay_capping_at_3(&[]).await;
    // 12 connections from one device, each with a `Forwarded` header claiming another address;
    // the proxy's X-Forwarded-For names the device: its cap of 3 holds.
    let (_held, outcomes) = open_many(&relay, "d1", 12, || {
        vec![
            ("forwarded", format!("for={}", random_address())),
            ("x-forwarded-for", "198.51.100.7".to_owned()),
        ]
    })
    .await;
    assert!(outcomes[..3].iter().all(|o| *o == (200, 0)), "{outcomes:?}");
    assert!(
        outcomes[3..].iter().all(|o| *o == (429, 42903)),
        "forged Forwarded headers escaped the cap of 3: {outcomes:?}"
    );
}

#[tokio::test]
async fn a_forwarded_header_naming_another_device_does_not_lock_it_out() {
    let relay = relay_capping_at_3(&[]).await;
    let victim = "198.51.100.50";
    // A device fills a cap of 3 naming the victim's address in its own `Forwarded` header...
    let (_held, outcomes) = open_many(&relay, "d2", 3, || {
        vec![
            ("forwarded", format!("for={victim}")),
            ("x-forwarded-for", "198.51.100.8".to_owned()),
        ]
    })
    .await;
    assert!(outcomes.iter().all(|o| *o == (200, 0)), "{outcomes:?}");
    // ...and the victim still connects: those connections were counted against their sender.
    let victims = hold_through_proxy(&relay, "d3", &[("x-forwarded-for", victim)])
        .await
        .unwrap();
    assert!(
        victims.is_ok(),
        "the victim was locked out by headers naming it: {:?}",
        victims.err()
    );
}

#[tokio::test]
async fn behind_a_proxy_that_sets_forwarded_a_forged_x_forwarded_for_is_ignored() {
    let relay = relay_capping_at_3(&["--forwarded-header", "forwarded"]).await;
    // The device forged both headers; the proxy appended its element to `Forwarded`.
    let (_held, outcomes) = open_many(&relay, "d1", 6, || {
        vec![
            (
                "forwarded",
                format!("for={}, for=\"198.51.100.7:4711\"", random_address()),
            ),
            ("x-forwarded-for", random_address()),
        ]
    })
    .await;
    assert!(outcomes[..3].iter().all(|o| *o == (200, 0)), "{outcomes:?}");
    assert!(
        outcomes[3..].iter().all(|o| *o == (429, 42903)),
        "a forged X-Forwarded-For escaped the cap of 3: {outcomes:?}"
    );
}
