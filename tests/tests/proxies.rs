//! The relay behind a hospital's reverse proxy (`--trusted-proxies`): devices behind one proxy
//! address each get their own connection bucket, a device that opens many connections is still
//! limited, and a device that forges forwarding headers gains nothing. The proxy is played by the
//! test from 127.0.0.2 (a loopback address of its own); devices connect from 127.0.0.1.

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
