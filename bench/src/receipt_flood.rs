//! `wardline-receiptflood`: how much a flood of receipt frames slows publishing (issue 21, finding
//! 6). Run by `cargo xtask bench receipts`, which builds it and the relay in release mode; the table
//! goes to `bench/results/receipts.md`.
//!
//! One release relay on its embedded broker (SQLite, `synchronous=FULL` for publishes). 1,000
//! notifications are published to `system:alerts` first, and four patients each open 32
//! `wardline.v1` connections (the per-user cap). Then the same publishing load is measured in
//! rounds that alternate, so that both conditions see the shared machine alike: quiet (the
//! connections open and silent), and flooded (every connection sending receipt frames of those
//! 1,000 ids as fast as it may: a frame every 60 ms, just under the relay's frame limit, so no
//! connection is cut for flooding; kinds cycling through `received`, `displayed` and `read`, each
//! frame's text made once, so that the load generator spends its share of the cores sending rather
//! than encoding). Publishing: 300 `POST /v1/publish` of a critical result to doctors' channels per
//! round, 25 ms apart, each timed from request to answer by a thread of its own; every one must be answered 200, and every
//! receipt frame sent must be answered (recorded or refused), or the run fails.

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
const ROUNDS: usize = 3;
const PUBLISHES: usize = 300;
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

/// Publishes [`PUBLISHES`] critical results, [`PUBLISH_EVERY`] apart, adding each one's time to
/// `latencies`: from a thread and runtime of their own, so that the flood's tasks in this process
/// (the attackers' machines, in life) never delay a publish or its timing.
async fn measure_publishing(url: &str, latencies: &mut Vec<u64>) -> anyhow::Result<()> {
    let url = url.to_owned();
    let measured = tokio::task::spawn_blocking(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(publish_timed(&url))
    })
    .await??;
    latencies.extend(measured);
    Ok(())
}

async fn publish_timed(url: &str) -> anyhow::Result<Vec<u64>> {
    let http = reqwest::Client::new();
    let service = token("backend", "service", &[], 3600);
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::with_capacity(PUBLISHES);
    for n in 0..PUBLISHES {
        tick.tick().await;
        let started = Instant::now();
        let response = http
            .post(format!("{url}/v1/publish"))
            .bearer_auth(&service)
            .json(
                &json!({"channel": format!("doctor:d{}:notifications", n % 50),
                          "message": critical_lab_result(n), "escalation": null}),
            )
            .send()
            .await?;
        let code = response.status();
        let reply = response.text().await?;
        latencies.push(started.elapsed().as_micros() as u64);
        ensure!(code == 200, "publish {n} answered {code}: {reply}");
    }
    Ok(latencies)
}

/// Whether the flooding connections send, and whether they are done.
#[derive(Default)]
struct Switch {
    flooding: AtomicBool,
    stop: AtomicBool,
}

/// One flooding connection: while flooding, the `frames` in turn, at most one per
/// [`FRAME_EVERY`], each answered before the next; until `stop`.
async fn flood(
    mut client: V1Client,
    frames: Arc<Vec<String>>,
    switch: Arc<Switch>,
    counts: Arc<Flood>,
) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(FRAME_EVERY);
    // A late frame is not followed by a burst of them.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n = 0;
    loop {
        tick.tick().await;
        if switch.stop.load(Relaxed) {
            return Ok(());
        }
        if !switch.flooding.load(Relaxed) {
            continue;
        }
        client.send_text(&frames[n % frames.len()]).await?;
        n += 1;
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
}

/// Waits until every receipt frame sent has been answered.
async fn until_answered(counts: &Flood) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let answered = counts.recorded.load(Relaxed) + counts.rate_limited.load(Relaxed);
        if answered == counts.sent.load(Relaxed) {
            return Ok(());
        }
        ensure!(
            started.elapsed() < Duration::from_secs(30),
            "receipt frames left unanswered for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
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
    let frames: Arc<Vec<String>> = Arc::new(
        [
            ReceiptKind::Received,
            ReceiptKind::Displayed,
            ReceiptKind::Read,
        ]
        .into_iter()
        .map(|kind| {
            serde_json::to_string(&ClientFrame::Receipt {
                channel: ALERTS.to_owned(),
                ids: ids.clone(),
                kind,
            })
        })
        .collect::<Result<_, _>>()?,
    );

    let switch = Arc::new(Switch::default());
    let counts = Arc::new(Flood::default());
    let mut flooders = Vec::new();
    for patient in 0..PATIENTS {
        let patient = format!("flood-{patient}");
        let token = token(&patient, "patient", &[], 3600);
        for _ in 0..CONNECTIONS_PER_PATIENT {
            let client = V1Client::connect(&relay.ws_url(""), &patient, &token).await?;
            flooders.push(tokio::spawn(flood(
                client,
                frames.clone(),
                switch.clone(),
                counts.clone(),
            )));
        }
    }

    let (mut quiet, mut flooded) = (Vec::new(), Vec::new());
    let mut flood_s = 0.0;
    for _ in 0..ROUNDS {
        measure_publishing(&relay.base, &mut quiet).await?;
        // Every connection is sending before publishing is measured.
        let before = counts.sent.load(Relaxed);
        switch.flooding.store(true, Relaxed);
        let started = Instant::now();
        while counts.sent.load(Relaxed) < before + (PATIENTS * CONNECTIONS_PER_PATIENT) as u64 {
            ensure!(
                started.elapsed() < Duration::from_secs(60),
                "the flood did not start"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let flood_started = Instant::now();
        measure_publishing(&relay.base, &mut flooded).await?;
        flood_s += flood_started.elapsed().as_secs_f64();
        switch.flooding.store(false, Relaxed);
        until_answered(&counts).await?;
    }
    switch.stop.store(true, Relaxed);
    for flooder in flooders {
        flooder.await??;
    }
    quiet.sort_unstable();
    flooded.sort_unstable();
    let (quiet, flooded) = (Latencies(quiet), Latencies(flooded));
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
         | `POST /v1/publish` p50 / p99 / max ({ROUNDS} rounds of each, alternating, of {PUBLISHES} publishes {PUBLISH_EVERY:?} apart, each answered 200) | {} | {} | | |\n\
         | p99 under the flood ÷ p99 quiet | | {ratio:.2} | ≤ {TARGET_RATIO} | {verdict} |\n\n\
         The flood: {PATIENTS} patients × {CONNECTIONS_PER_PATIENT} connections, each sending a receipt frame of {STORED} \
         `system:alerts` ids every {FRAME_EVERY:?} (the relay's frame limit) for {flood_s:.1} s in all: {sent} frames sent, \
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
