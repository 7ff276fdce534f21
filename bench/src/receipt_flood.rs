//! `wardline-receiptflood`: how much a flood of receipt frames slows publishing (issue 21, finding
//! 6). Run by `cargo xtask bench receipts`, which builds it and the relay in release mode; the table
//! goes to `bench/results/receipts.md`.
//!
//! One release relay on its embedded broker (SQLite, `synchronous=FULL` for publishes). 1,000
//! notifications are published to `system:alerts` first. Then the same publishing load is measured
//! twice: quiet, and while four patients each hold 32 `wardline.v1` connections (the per-user cap)
//! sending receipt frames of those 1,000 ids as fast as each connection may (a frame every 60 ms,
//! just under the relay's frame limit, so no connection is cut for flooding), kinds cycling through
//! `received`, `displayed` and `read`. Publishing: 400 `POST /v1/publish` of a critical result to
//! doctors' channels, 25 ms apart, each timed from request to answer; every one must be answered
//! 200, and every receipt frame sent must be answered (recorded or refused), or the run fails.

mod common;

use anyhow::{Context, bail, ensure};
use common::{option, utc_now_text};
use serde_json::json;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};
use wardline_protocol::{ClientFrame, ErrorCode, ReceiptKind, ServerFrame};
use wardline_tests::client::V1Client;
use wardline_tests::{Relay, critical_lab_result, token};

const ALERTS: &str = "system:alerts";
const STORED: usize = 1_000;
const PUBLISHES: usize = 400;
const PUBLISH_EVERY: Duration = Duration::from_millis(25);
const PATIENTS: usize = 4;
const CONNECTIONS_PER_PATIENT: usize = 32;
/// Just under the relay's default frame limit per connection (20 a second), so that no
/// connection is cut for flooding.
const FRAME_EVERY: Duration = Duration::from_millis(60);
/// The publish p99 under the flood may be at most this many times the quiet one.
const TARGET_RATIO: f64 = 2.0;

/// What the flooding connections did.
#[derive(Default)]
struct Flood {
    sent: AtomicU64,
    recorded: AtomicU64,
    rate_limited: AtomicU64,
    ids_recorded: AtomicU64,
}

/// Publishing's latencies, sorted, in microseconds.
struct Latencies(Vec<u64>);

impl Latencies {
    fn ms(&self, p: f64) -> f64 {
        let i = ((self.0.len() as f64 * p).ceil() as usize).clamp(1, self.0.len()) - 1;
        self.0[i] as f64 / 1000.0
    }

    fn max_ms(&self) -> f64 {
        self.0.last().copied().unwrap_or_default() as f64 / 1000.0
    }
}

/// Publishes [`PUBLISHES`] critical results, [`PUBLISH_EVERY`] apart, timing each.
async fn measure_publishing(relay: &Relay) -> anyhow::Result<Latencies> {
    let service = token("backend", "service", &[], 3600);
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::with_capacity(PUBLISHES);
    for n in 0..PUBLISHES {
        tick.tick().await;
        let started = Instant::now();
        let (code, reply) = relay
            .publish_as(
                &service,
                &json!({"channel": format!("doctor:d{}:notifications", n % 50),
                        "message": critical_lab_result(n), "escalation": null}),
            )
            .await;
        latencies.push(started.elapsed().as_micros() as u64);
        ensure!(code == 200, "publish {n} answered {code}: {reply}");
    }
    latencies.sort_unstable();
    Ok(Latencies(latencies))
}

/// One flooding connection: receipt frames of `ids`, at most one per [`FRAME_EVERY`], each
/// answered before the next, until `stop`.
async fn flood(
    base_ws: String,
    patient: String,
    ids: Arc<Vec<String>>,
    stop: Arc<AtomicBool>,
    counts: Arc<Flood>,
) -> anyhow::Result<()> {
    let token = token(&patient, "patient", &[], 3600);
    let mut client = V1Client::connect(&base_ws, &patient, &token).await?;
    let kinds = [
        ReceiptKind::Received,
        ReceiptKind::Displayed,
        ReceiptKind::Read,
    ];
    let mut tick = tokio::time::interval(FRAME_EVERY);
    // A late frame is not followed by a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for n in 0.. {
        tick.tick().await;
        if stop.load(Relaxed) {
            return Ok(());
        }
        let frame = ClientFrame::Receipt {
            channel: ALERTS.to_owned(),
            ids: ids.as_ref().clone(),
            kind: kinds[n % kinds.len()],
        };
        client.send(&frame).await?;
        counts.sent.fetch_add(1, Relaxed);
        match client.frame().await? {
            ServerFrame::Recorded { ids, .. } => {
                counts.recorded.fetch_add(1, Relaxed);
                counts.ids_recorded.fetch_add(ids.len() as u64, Relaxed);
            }
            ServerFrame::Error {
                code: ErrorCode::RateLimited,
                ..
            } => {
                counts.rate_limited.fetch_add(1, Relaxed);
            }
            other => bail!("a receipt frame answered {other:?}"),
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let out = option("--out").context("--out FILE is required")?;
    let data_dir = tempfile::tempdir()?;
    // The flood's 128 connections come from one address at once.
    let relay = Relay::launch(
        data_dir.path(),
        None,
        &[
            "--connections-per-ip-per-s",
            "1000",
            "--connections-per-ip-burst",
            "1000",
        ],
        true,
        None,
    )
    .await?;
    let service = token("backend", "service", &[], 3600);
    let mut ids = Vec::with_capacity(STORED);
    for n in 0..STORED {
        let (code, reply) = relay
            .publish_as(
                &service,
                &json!({"channel": ALERTS, "message": {"type": "system_alert", "n": n}, "escalation": null}),
            )
            .await;
        ensure!(code == 200, "{reply}");
        ids.push(reply["message_id"].as_str().context("an id")?.to_owned());
    }
    let ids = Arc::new(ids);

    let quiet = measure_publishing(&relay).await?;

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Flood::default());
    let mut flooders = Vec::new();
    for patient in 0..PATIENTS {
        for _ in 0..CONNECTIONS_PER_PATIENT {
            flooders.push(tokio::spawn(flood(
                relay.ws_url(""),
                format!("flood-{patient}"),
                ids.clone(),
                stop.clone(),
                counts.clone(),
            )));
        }
    }
    // Every connection is sending before publishing is measured.
    let started = Instant::now();
    while counts.sent.load(Relaxed) < (PATIENTS * CONNECTIONS_PER_PATIENT) as u64 {
        ensure!(
            started.elapsed() < Duration::from_secs(60),
            "the flood did not start"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let flood_started = Instant::now();
    let flooded = measure_publishing(&relay).await?;
    let flood_s = flood_started.elapsed().as_secs_f64();
    stop.store(true, Relaxed);
    for flooder in flooders {
        flooder.await??;
    }
    let sent = counts.sent.load(Relaxed);
    let recorded = counts.recorded.load(Relaxed);
    let limited = counts.rate_limited.load(Relaxed);
    ensure!(
        recorded + limited == sent,
        "{sent} receipt frames sent, {recorded} recorded and {limited} refused"
    );
    ensure!(
        recorded > 0,
        "no receipt frame was recorded: no flood reached the store"
    );
    let ratio = flooded.ms(0.99) / quiet.ms(0.99);
    let verdict = if ratio <= TARGET_RATIO {
        "met"
    } else {
        "**not met**"
    };
    let row = |l: &Latencies| {
        format!(
            "{:.2} / {:.2} / {:.2} ms",
            l.ms(0.5),
            l.ms(0.99),
            l.max_ms()
        )
    };
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let table = format!(
        "# Receipt flood benchmark\n\n\
         Measured by `cargo xtask bench receipts` on {date}: {cores} cores, release build, one relay on its \
         embedded broker; the publisher, the flooding patients and the relay share the cores. How: \
         `bench/src/receipt_flood.rs`.\n\n\
         | measure | quiet | {PATIENTS} patients flooding receipt frames | target | |\n|---|---|---|---|---|\n\
         | `POST /v1/publish` p50 / p99 / max ({PUBLISHES} publishes, {PUBLISH_EVERY:?} apart, each answered 200) | {} | {} | | |\n\
         | p99 under the flood ÷ p99 quiet | | {ratio:.2} | ≤ {TARGET_RATIO} | {verdict} |\n\n\
         The flood: {PATIENTS} patients × {CONNECTIONS_PER_PATIENT} connections, each sending a receipt frame of {STORED} \
         `system:alerts` ids every {FRAME_EVERY:?} (the relay's frame limit) for {flood_s:.1} s: {sent} frames sent, \
         {recorded} recorded ({} ids), {limited} refused with 42901 (receipts are limited per user across connections); \
         every frame was answered.\n",
        row(&quiet),
        row(&flooded),
        counts.ids_recorded.load(Relaxed),
        date = utc_now_text(),
    );
    std::fs::write(&out, &table).with_context(|| format!("writing {out}"))?;
    println!("{table}");
    println!("written to {out}");
    Ok(())
}
