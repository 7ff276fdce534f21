//! Sockets are bounded, over the real relay: a connection must send its request head in time, a
//! client that stops reading is cut off, devices connected at once are capped per user, per address
//! and per node, and at its open-file limit the relay keeps running and answers `/healthz` as soon as
//! descriptors free. Before, 150 half-sent requests stayed open for as long as their senders
//! liked, an event stream nobody read stayed open with its queue full, and at the file limit
//! `/healthz` stopped answering.

use std::net::IpAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{Instant, timeout};
use wardline_tests::client::{Refused, connect};
use wardline_tests::{Relay, critical_lab_result, token};

/// Waits until `metric` reaches at least `least`, at most `within`; answers its last value.
async fn metric_reaches(relay: &Relay, metric: &str, least: f64, within: Duration) -> f64 {
    let deadline = Instant::now() + within;
    loop {
        let value = relay.metric(metric).await.unwrap_or(0.0);
        if value >= least || Instant::now() >= deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Reads until the relay closes the connection (end of stream or reset), at most `within`.
async fn closed_by_relay(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = vec![0; 64 * 1024];
    timeout(within, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

/// 200 half-sent requests against a relay that may hold 128 files: it accepts until it has no
/// descriptor left, closes each at the header deadline, takes the next ones meanwhile, and
/// `/healthz` answers within a few deadlines. Every half-sent request ends closed by the relay.
#[tokio::test]
async fn half_sent_requests_are_closed_at_the_header_deadline_even_at_the_file_limit() {
    let relay = Relay::embedded_with_open_files(128, &["--header-timeout", "2s"])
        .await
        .unwrap();
    let mut slow = Vec::new();
    for _ in 0..200 {
        let mut stream = TcpStream::connect(&relay.address).await.unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: relay\r\nX-Slow: ")
            .await
            .unwrap();
        slow.push(stream);
    }

    let started = Instant::now();
    let healthz = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(format!("{}/healthz", relay.base))
        .send()
        .await
        .expect("/healthz answers while half-sent requests hold every descriptor");
    assert_eq!(healthz.status(), 200);
    eprintln!("/healthz answered after {:?}", started.elapsed());

    for (n, stream) in slow.iter_mut().enumerate() {
        assert!(
            closed_by_relay(stream, Duration::from_secs(20)).await,
            "half-sent request {n} still open"
        );
    }
    assert!(
        metric_reaches(
            &relay,
            "wardline_header_timeouts_total",
            200.0,
            Duration::from_secs(5)
        )
        .await
            >= 200.0
    );
    assert!(
        relay
            .metric("wardline_accept_errors_total")
            .await
            .unwrap_or(0.0)
            > 0.0,
        "the test must take the relay to its file limit"
    );
}

/// An event stream whose client stops reading is closed once its writes have made no progress for
/// `--write-timeout`, as a WebSocket's is (4008); its slot and queue are freed.
#[tokio::test]
async fn an_event_stream_nobody_reads_is_closed_at_the_write_deadline() {
    let relay = Relay::embedded(&["--write-timeout", "2s"]).await.unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket
        .connect(relay.address.parse().unwrap())
        .await
        .unwrap();
    let request = format!(
        "GET /sse/d1?token={} HTTP/1.1\r\nHost: relay\r\n\r\n",
        token("d1", "doctor", &[], 600)
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = [0; 512];
    let n = stream.read(&mut head).await.unwrap();
    assert!(
        head[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&head[..n])
    );

    // The client reads nothing more; 8 MB of critical results are published to it.
    let mut big = critical_lab_result(0);
    big["data"]["note"] = serde_json::Value::String("x".repeat(32 * 1024));
    for n in 0..250 {
        big["data"]["n"] = n.into();
        let (status, body) = relay.publish("doctor:d1:notifications", &big).await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        metric_reaches(
            &relay,
            "wardline_write_timeouts_total",
            1.0,
            Duration::from_secs(10)
        )
        .await
            >= 1.0,
        "the stream's writes stalled past the deadline and it was closed"
    );
    assert!(
        closed_by_relay(&mut stream, Duration::from_secs(10)).await,
        "the connection ends"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while relay
        .metrics()
        .await
        .contains("wardline_connections{transport=\"sse\"} 1")
    {
        assert!(Instant::now() < deadline, "the stream's session is gone");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

const PROXY: &str = "127.0.0.2";

/// What opening an event stream got: the status, `Retry-After`, the error body, and the open
/// stream (dropping it closes the connection).
type Opened = (
    u16,
    Option<String>,
    serde_json::Value,
    Option<reqwest::Response>,
);

/// Opens an event stream for `user` as the device at `device` behind the trusted proxy.
async fn open_stream(relay: &Relay, user: &str, device: &str) -> Opened {
    let client = reqwest::Client::builder()
        .local_address(PROXY.parse::<IpAddr>().unwrap())
        .build()
        .unwrap();
    let response = client
        .get(format!(
            "{}/sse/{user}?token={}",
            relay.base,
            token(user, "patient", &[], 600)
        ))
        .header("x-forwarded-for", device)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    if status == 200 {
        return (status, retry_after, serde_json::Value::Null, Some(response));
    }
    (status, retry_after, response.json().await.unwrap(), None)
}

/// Past each cap a device hears which and when to retry: 429 with 42903 for a user's or an
/// address's, 503 with 50303 for the node's, each with `Retry-After`; a WebSocket is counted like
/// an event stream; a closed stream frees its slot.
#[tokio::test]
async fn devices_past_a_connection_cap_are_told_which_and_when_to_retry() {
    let relay = Relay::embedded(&[
        "--trusted-proxies",
        PROXY,
        "--heartbeat",
        "1s",
        "--max-connections",
        "6",
        "--max-connections-per-ip",
        "3",
        "--max-connections-per-user",
        "2",
    ])
    .await
    .unwrap();
    let mut open = Vec::new();
    for device in ["10.1.0.1", "10.1.0.2"] {
        let opened = open_stream(&relay, "p1", device).await;
        assert_eq!(opened.0, 200, "{}", opened.2);
        open.push(opened);
    }
    let (status, retry_after, body, _) = open_stream(&relay, "p1", "10.1.0.3").await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (429, Some("30")),
        "{body}"
    );
    assert_eq!(body["code"], 42903);
    assert!(
        body["message"].as_str().unwrap().contains("user p1"),
        "{body}"
    );

    for user in ["p2", "p3", "p4"] {
        let opened = open_stream(&relay, user, "10.2.0.1").await;
        assert_eq!(opened.0, 200, "{}", opened.2);
        open.push(opened);
    }
    let (status, retry_after, body, _) = open_stream(&relay, "p5", "10.2.0.1").await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (429, Some("30")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("from this address"),
        "{body}"
    );

    let opened = open_stream(&relay, "p5", "10.3.0.1").await;
    assert_eq!(opened.0, 200, "the sixth: {}", opened.2);
    open.push(opened);
    let (status, retry_after, body, _) = open_stream(&relay, "p6", "10.4.0.1").await;
    assert_eq!(
        (status, retry_after.as_deref()),
        (503, Some("10")),
        "{body}"
    );
    assert_eq!(body["code"], 50303);
    let ws = format!(
        "{}?token={}",
        relay.ws_url("/ws/p7"),
        token("p7", "patient", &[], 600)
    );
    match connect(&ws, &[]).await {
        Err(Refused::Http(503, body)) => assert_eq!(body["code"], 50303),
        Err(other) => panic!("{other:?}"),
        Ok(_) => panic!("a WebSocket past the node's cap was accepted"),
    }
    assert_eq!(
        relay.metric("wardline_connections_capped_total").await,
        Some(4.0)
    );

    // One stream closes; the relay notices at its next heartbeat and a device takes the slot.
    open.pop();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if open_stream(&relay, "p6", "10.4.0.1").await.0 == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed stream's slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
