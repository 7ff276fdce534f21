//! `wardline-soak`: a relay under steady load for a long time, to show that its memory and file
//! descriptors stay flat. Run by `cargo xtask soak --minutes N`, which builds it and the relay in
//! release mode; the table goes to `bench/results/soak.md`.
//!
//! One relay on a real `redis-server`; 5,000 `wardline.v1` devices (one user and channel each, from
//! source addresses spread over 127.0.0.0/8), every one reading everything; 100 notifications/s
//! published with `POST /v1/publish` to random devices' channels and one `system:alerts` broadcast
//! every 10 s; churn: every second 10 devices leave and come back, resuming from their cursor. Every
//! 10 s the relay's resident memory (`VmRSS`), its open file descriptors (`/proc/<pid>/fd`) and its
//! connection gauge are sampled. The memory's slope is a least-squares fit over each half of the
//! run: the first half is the allocator settling (under this churn the relay's RSS rose from 43 to
//! 54.5 MB over its first 20 minutes in the first 30-minute run, then stayed flat), the verdict is on
//! the second: a leak keeps growing there. The descriptors' range over the second half is reported.

mod common;

use anyhow::{Context, bail};
use common::{option, utc_now_text};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use wardline_protocol::{ClientFrame, ServerFrame, SubscribeChannel};
use wardline_tests::{RedisServer, Relay, token};

const DEVICES: usize = 5_000;
const PUBLISH_PER_S: u64 = 100;
/// Devices leaving and coming back each second, unless `--churn` says otherwise.
const CHURN_PER_S: usize = 10;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);

struct Counters {
    delivered: AtomicU64,
    reconnects: AtomicU64,
    failed_connects: AtomicU64,
}

/// One device: connects from `source`, subscribes from its cursor, reads until told to leave
/// (`leave` changes) or cut off, then comes back.
async fn device(
    relay: SocketAddr,
    source: IpAddr,
    n: usize,
    mut leave: watch::Receiver<u64>,
    counters: Arc<Counters>,
) {
    let user = format!("s{n}");
    let doctor = token(&user, "doctor", &[], 24 * 3600);
    let mut cursor: Option<String> = None;
    loop {
        match session(
            relay,
            source,
            &user,
            &doctor,
            &mut cursor,
            &mut leave,
            &counters,
        )
        .await
        {
            Ok(true) => return,
            Ok(false) => {}
            Err(_) => {
                counters.failed_connects.fetch_add(1, Relaxed);
            }
        }
        counters.reconnects.fetch_add(1, Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One connection; `Ok(true)` when the soak is over.
async fn session(
    relay: SocketAddr,
    source: IpAddr,
    user: &str,
    token: &str,
    cursor: &mut Option<String>,
    leave: &mut watch::Receiver<u64>,
    counters: &Counters,
) -> anyhow::Result<bool> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(relay).await?;
    let url = format!("ws://{relay}/ws/{user}?token={token}");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "wardline.v1".parse()?);
    let (mut socket, _) = tokio_tungstenite::client_async(request, tcp).await?;
    let subscribe = ClientFrame::Subscribe {
        channels: vec![
            SubscribeChannel {
                channel: format!("doctor:{user}:notifications"),
                since: cursor.clone(),
                epoch: None,
            },
            SubscribeChannel {
                channel: "system:alerts".into(),
                since: None,
                epoch: None,
            },
        ],
    };
    socket
        .send(Message::Text(serde_json::to_string(&subscribe)?.into()))
        .await?;
    leave.borrow_and_update();
    loop {
        tokio::select! {
            changed = leave.changed() => {
                let over = changed.is_err() || *leave.borrow() == u64::MAX;
                let _ = socket.close(None).await;
                return Ok(over);
            }
            message = socket.next() => {
                let Some(message) = message else { return Ok(false) };
                let Message::Text(text) = message? else { continue };
                if let Ok(ServerFrame::Notification(notification)) = serde_json::from_str::<ServerFrame>(&text) {
                    counters.delivered.fetch_add(1, Relaxed);
                    if notification.channel.as_str() != "system:alerts" {
                        *cursor = Some(notification.id.to_string());
                    }
                }
            }
        }
    }
}

fn open_fds(pid: u32) -> anyhow::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// Least-squares slope of `points` (x, y).
fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(sx, sy), (x, y)| (sx + x, sy + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(num, den), (x, y)| {
        (num + (x - mx) * (y - my), den + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

struct Sample {
    minute: f64,
    rss_kib: u64,
    fds: usize,
    connections: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let minutes: f64 = option("--minutes")
        .map(|m| m.parse())
        .transpose()?
        .unwrap_or(30.0);
    let out = option("--out").context("--out FILE")?;
    // 5,000 sockets: more than the usual soft limit of 1,024.
    rlimit::increase_nofile_limit(u64::MAX)?;
    let redis = RedisServer::start_with(&["--appendonly", "yes"]).await?;
    // `--churn N` and `--relay-wrapper "heaptrack -o FILE"` are for finding where memory goes.
    let churn: usize = option("--churn")
        .map(|c| c.parse())
        .transpose()?
        .unwrap_or(CHURN_PER_S);
    let wrapper = option("--relay-wrapper").unwrap_or_else(|| "env".into());
    let wrapper: Vec<&str> = wrapper.split_whitespace().collect();
    let data_dir = tempfile::tempdir()?;
    let relay = Relay::launch_command(
        wardline_tests::wrapped_relay_command(&wrapper),
        data_dir.path(),
        Some(&redis.url()),
        &["--heartbeat", "15s"],
        true,
        None,
    )
    .await?;
    let pid = relay.pid().context("the relay's pid")?;
    let address: SocketAddr = relay.address.parse()?;
    let counters = Arc::new(Counters {
        delivered: AtomicU64::new(0),
        reconnects: AtomicU64::new(0),
        failed_connects: AtomicU64::new(0),
    });
    let mut leaves = Vec::with_capacity(DEVICES);
    let mut tasks = Vec::with_capacity(DEVICES);
    for n in 0..DEVICES {
        let (leave_tx, leave_rx) = watch::channel(0u64);
        let source = IpAddr::from([127, 0, 1 + (n / 250) as u8, 1 + (n % 250) as u8]);
        tasks.push(tokio::spawn(device(
            address,
            source,
            n,
            leave_rx,
            counters.clone(),
        )));
        leaves.push(leave_tx);
        if n % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    eprintln!("soak: {DEVICES} devices connecting; running {minutes} min");

    let started = Instant::now();
    let end = started + Duration::from_secs_f64(minutes * 60.0);
    let http = reqwest::Client::new();
    let service = token("soak", "service", &[], 24 * 3600);
    let published = Arc::new(AtomicU64::new(0));
    let publisher = {
        let (http, service, base, published) = (
            http.clone(),
            service.clone(),
            relay.base.clone(),
            published.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / PUBLISH_PER_S));
            let mut n = 0u64;
            while Instant::now() < end {
                tick.tick().await;
                n += 1;
                let channel = if n.is_multiple_of(PUBLISH_PER_S * 10) {
                    "system:alerts".to_owned()
                } else {
                    format!(
                        "doctor:s{}:notifications",
                        rand::rng().random_range(0..DEVICES)
                    )
                };
                let body = json!({"channel": channel, "message": {"type": "soak", "n": n}});
                if let Ok(response) = http
                    .post(format!("{base}/v1/publish"))
                    .bearer_auth(&service)
                    .json(&body)
                    .send()
                    .await
                    && response.status() == 200
                {
                    published.fetch_add(1, Relaxed);
                }
            }
        })
    };
    let mut samples = Vec::new();
    let mut next_sample = started;
    let mut churned = 0u64;
    while Instant::now() < end {
        for _ in 0..churn {
            let n = rand::rng().random_range(0..DEVICES);
            churned += 1;
            leaves[n].send_modify(|v| *v += 1);
        }
        if Instant::now() >= next_sample {
            next_sample += SAMPLE_EVERY;
            let sample = Sample {
                minute: started.elapsed().as_secs_f64() / 60.0,
                rss_kib: relay.resident_bytes()? / 1024,
                fds: open_fds(pid)?,
                connections: relay
                    .metrics()
                    .await
                    .lines()
                    .filter(|l| l.starts_with("wardline_connections{"))
                    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                    .sum(),
            };
            eprintln!(
                "soak: {:.1} min: RSS {} KiB, {} fds, {} connections",
                sample.minute, sample.rss_kib, sample.fds, sample.connections
            );
            samples.push(sample);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    publisher.await?;
    for leave in &leaves {
        leave.send_replace(u64::MAX);
    }
    for task in tasks {
        let _ = task.await;
    }

    let half = samples.len() / 2;
    let (settling, measured) = samples.split_at(half);
    if settling.len() < 3 || measured.len() < 3 {
        bail!("too few samples: run longer");
    }
    let rss_slope = |samples: &[Sample]| {
        let points: Vec<(f64, f64)> = samples
            .iter()
            .map(|s| (s.minute, s.rss_kib as f64))
            .collect();
        slope(&points)
    };
    let settling_slope = rss_slope(settling);
    let slope_kib_per_min = rss_slope(measured);
    let fds_min = measured.iter().map(|s| s.fds).min().unwrap_or(0);
    let fds_max = measured.iter().map(|s| s.fds).max().unwrap_or(0);
    let first = &measured[0];
    let last = &measured[measured.len() - 1];
    let span = last.minute - first.minute;
    let growth_kib = slope_kib_per_min * span;
    let flat = growth_kib.abs() <= 0.02 * first.rss_kib as f64;
    let fds_flat = fds_max - fds_min <= 4 * churn.max(1);
    let date = utc_now_text();
    let mut rows = String::new();
    for s in &samples {
        let _ = writeln!(
            rows,
            "| {:.1} | {} | {} | {} |",
            s.minute, s.rss_kib, s.fds, s.connections
        );
    }
    let text = format!(
        "# Soak\n\n\
         Measured by `cargo xtask soak --minutes {minutes}` on {date}, release build, 2 cores shared by \
         everything (how: `bench/src/soak.rs`). One relay on Redis, {DEVICES} `wardline.v1` devices, \
         {PUBLISH_PER_S} notifications/s (a `system:alerts` broadcast every 10 s), {churn} devices \
         leaving and resuming every second.\n\n\
         | measure | result | target | |\n|---|---|---|---|\n\
         | resident memory slope, first half (the allocator settling) | {settling_slope:+.1} KiB/min (from {} KiB) | — | |\n\
         | resident memory slope, second half ({:.1} min) | {slope_kib_per_min:+.1} KiB/min ({growth_kib:+.0} KiB over the half, from {} KiB) | growth within 2 % | {} |\n\
         | open file descriptors over the second half, min – max | {fds_min} – {fds_max} | within the churn ({}) | {} |\n\n\
         Published {} notifications, delivered {}, {} devices churned, {} reconnects ({} attempts that failed).\n\n\
         | minute | RSS KiB | fds | connections |\n|---|---|---|---|\n{rows}",
        settling[0].rss_kib,
        span,
        first.rss_kib,
        if flat { "met" } else { "**not met**" },
        4 * churn.max(1),
        if fds_flat { "met" } else { "**not met**" },
        published.load(Relaxed),
        counters.delivered.load(Relaxed),
        churned,
        counters.reconnects.load(Relaxed),
        counters.failed_connects.load(Relaxed),
    );
    std::fs::write(&out, text)?;
    eprintln!("soak: written to {out}");
    if !(flat && fds_flat) {
        bail!("memory or file descriptors grew: see {out}");
    }
    Ok(())
}
