//! `wardline-clientbench`: the receiver's benchmarks, run by `cargo xtask bench client`; each mode
//! prints one JSON object.
//!
//! - `store --count N`: notifications stored per second through the inbox, in batches of 256 (as
//!   the subscription stores what arrives together), each batch one transaction with its cursor.
//! - `search --rows N --queries Q`: full-text search latency over an inbox of N notifications.
//! - `alert --count N`: time from `POST /v1/publish` of a critical lab result to the `Notify` call
//!   on a D-Bus notification server, through a real relay and a real `wardline listen`.
//! - `idle --seconds S`: resident memory and CPU time of a connected, idle `wardline listen`.
//! - `app --rows N --seconds S --burst B`: the app (under Xvfb, over WebDriver) with an inbox of N
//!   notifications: launch to first painted inbox, `inbox` search and list-render latency measured
//!   in the window; then a catch-up: the app's relay node goes away, B notifications are published
//!   through a second node on the same Redis, the node comes back and the app replays them from
//!   history, while the window's commands (`status`, and `inbox` for the 200 newest) are timed
//!   from the window; then the app started directly (no WebDriver) for RSS and CPU while idle.

use anyhow::Context;
use serde_json::{Value, json};
use std::time::{Duration, Instant};
use wardline_client::{Filter, Inbox};
use wardline_protocol::{Channel, Cursor, Notification, Priority};
use wardline_tests::desktop::{NotificationServer, SessionBus};
use wardline_tests::receiver::Listener;
use wardline_tests::{RedisServer, Relay, critical_lab_result, free_port, token};

const PATIENTS: [&str; 8] = [
    "Bob Wilson",
    "Alice Johnson",
    "Maria Garcia",
    "Chen Wei",
    "Amara Okafor",
    "Lars Nilsson",
    "Priya Patel",
    "Tomás Silva",
];
const TESTS: [&str; 6] = ["BMP", "CBC", "Troponin", "Potassium", "Lactate", "INR"];

fn notification(n: u64) -> Notification {
    let patient = PATIENTS[(n % 8) as usize];
    let test = TESTS[(n / 8 % 6) as usize];
    let (channel, message) = if n.is_multiple_of(10) {
        (
            "doctor:bench:notifications",
            json!({"type": "critical_lab_result", "urgent": true, "result_id": format!("r{n}"),
            "patient_name": patient, "test_type": test, "requires_review": true}),
        )
    } else {
        (
            "patient:bench:notifications",
            json!({"type": "lab_result_available", "result_id": format!("r{n}"),
            "test_type": test, "reviewed": n.is_multiple_of(3), "note": format!("sample {n} for {patient}")}),
        )
    };
    Notification {
        id: Cursor::new(1_700_000_000_000 + n, 0),
        channel: Channel::parse(channel).expect("valid"),
        kind: message["type"].as_str().unwrap_or("unknown").to_owned(),
        priority: Priority::default_for(&message),
        sent_at: "2026-11-23T10:00:00.000Z".into(),
        message,
        repeat: None,
    }
}

fn fill(inbox: &mut Inbox, from: u64, count: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut n = from;
    while n < from + count {
        let batch: Vec<Notification> = (n..(n + 256).min(from + count)).map(notification).collect();
        inbox.store(&batch)?;
        n += batch.len() as u64;
    }
    Ok(started.elapsed().as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn flag(args: &[String], name: &str, default: u64) -> u64 {
    args.windows(2)
        .find(|w| w[0] == format!("--{name}"))
        .and_then(|w| w[1].parse().ok())
        .unwrap_or(default)
}

fn store(args: &[String]) -> anyhow::Result<Value> {
    let count = flag(args, "count", 200_000);
    let dir = tempfile::tempdir()?;
    let mut inbox = Inbox::open(&dir.path().join("inbox.sqlite3"))?;
    let seconds = fill(&mut inbox, 0, count)?;
    Ok(json!({"count": count, "seconds": seconds, "per_second": count as f64 / seconds}))
}

fn search(args: &[String]) -> anyhow::Result<Value> {
    let rows = flag(args, "rows", 1_000_000);
    let queries = flag(args, "queries", 200) as usize;
    let dir = tempfile::tempdir()?;
    let mut inbox = Inbox::open(&dir.path().join("inbox.sqlite3"))?;
    let fill_seconds = fill(&mut inbox, 0, rows)?;
    let words = [
        "Wilson",
        "Troponin",
        "potassium",
        "Garcia INR",
        "Amara Okafor",
        "sample",
        "Lactate",
        "Nilsson",
    ];
    let mut latencies = Vec::with_capacity(queries);
    let mut found = 0;
    for q in 0..queries {
        let filter = Filter {
            search: Some(words[q % words.len()].into()),
            limit: 50,
            ..Filter::default()
        };
        let started = Instant::now();
        found += inbox.list(&filter)?.len();
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(
        json!({"rows": rows, "fill_seconds": fill_seconds, "queries": queries, "results": found,
              "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99), "max_ms": latencies[latencies.len() - 1]}),
    )
}

async fn alert(args: &[String]) -> anyhow::Result<Value> {
    let count = flag(args, "count", 100) as usize;
    let bus = SessionBus::start().await?;
    let server = NotificationServer::start(&bus.address).await?;
    let relay = Relay::embedded(&[]).await?;
    let dir = tempfile::tempdir()?;
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start_with_bus(
        &relay.base,
        "d1",
        &doctor,
        &dir.path().join("inbox.sqlite3"),
        &bus.address,
    )
    .await?;
    let mut latencies = Vec::with_capacity(count);
    for n in 0..count {
        let started = Instant::now();
        let (status, _) = relay
            .publish("doctor:d1:notifications", &critical_lab_result(n))
            .await;
        anyhow::ensure!(status == 200, "publish failed");
        server.wait_for_calls(n + 1).await?;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        listener.notifications(1).await?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    latencies.sort_by(f64::total_cmp);
    Ok(
        json!({"count": count, "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99), "max_ms": latencies[count - 1]}),
    )
}

fn proc_stat(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat
        .rsplit_once(") ")
        .context("stat")?
        .1
        .split(' ')
        .collect();
    let ticks = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok((rss_kib, ticks))
}

async fn idle(args: &[String]) -> anyhow::Result<Value> {
    let seconds = flag(args, "seconds", 30);
    let relay = Relay::embedded(&[]).await?;
    let dir = tempfile::tempdir()?;
    let doctor = token("d1", "doctor", &[], 3600);
    let mut listener = Listener::start(
        &relay.base,
        "d1",
        &doctor,
        &dir.path().join("inbox.sqlite3"),
    )
    .await?;
    relay
        .publish("doctor:d1:notifications", &critical_lab_result(1))
        .await;
    listener.notifications(1).await?;
    let pid = listener.pid().context("listener pid")?;
    let ticks_per_s = 100;
    let (_, before) = proc_stat(pid)?;
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (rss_kib, after) = proc_stat(pid)?;
    let cpu_ms = (after - before) * 1000 / ticks_per_s;
    Ok(
        json!({"seconds": seconds, "rss_kib": rss_kib, "cpu_ms": cpu_ms, "cpu_percent": cpu_ms as f64 / (seconds as f64 * 10.0)}),
    )
}

/// Processes whose command line mentions `needle`: (pid, RSS KiB, CPU ticks).
fn processes(needle: &str) -> Vec<(u32, u64, u64)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(needle))
        })
        .filter_map(|pid| proc_stat(pid).ok().map(|(rss, ticks)| (pid, rss, ticks)))
        .collect()
}

async fn app(args: &[String]) -> anyhow::Result<Value> {
    use wardline_tests::webdriver::{Display, Driver};
    let rows = flag(args, "rows", 100_000);
    let seconds = flag(args, "seconds", 30);
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("inbox.sqlite3");
    fill(&mut Inbox::open(&db)?, 0, rows)?;
    // Two relay nodes on one Redis: the app's node goes away while the other takes a burst, and
    // comes back for the app to catch up from history.
    let redis = RedisServer::start().await?;
    let relay_dir = tempfile::tempdir()?;
    let address = format!("127.0.0.1:{}", free_port());
    let keep = ["--history-max-len", "100000"];
    let node = |dir: std::path::PathBuf, redis_url: String, address: String| async move {
        let mut flags = keep.to_vec();
        flags.extend(["--listen", address.as_str()]);
        Relay::start_in(&dir, Some(&redis_url), &flags, None).await
    };
    let relay = node(relay_dir.path().to_owned(), redis.url(), address.clone()).await?;
    let relay_base = relay.base.clone();
    let other = Relay::on_redis(&redis, &keep).await?;
    let display = Display::start().await?;
    let bus = SessionBus::start().await?;
    let _notifications = NotificationServer::start(&bus.address).await?;
    let doctor = token("bench", "doctor", &[], 3600);
    let config = dir.path().join("config");
    let env = [
        ("DISPLAY", display.name.as_str()),
        ("DBUS_SESSION_BUS_ADDRESS", bus.address.as_str()),
        ("WARDLINE_SERVER", relay_base.as_str()),
        ("WARDLINE_USER", "bench"),
        ("WARDLINE_TOKEN", doctor.as_str()),
        ("WARDLINE_DB", db.to_str().context("path")?),
        ("XDG_CONFIG_HOME", config.to_str().context("path")?),
    ];
    let driver = Driver::start(&env).await?;
    let started = Instant::now();
    let session = driver.session().await?;
    session.find("#list li").await?;
    let first_paint_ms = started.elapsed().as_secs_f64() * 1000.0;
    // Measured in the window: the command the search box calls, and a full list render.
    let timings = session
        .execute_async(
            r##"const done = arguments[arguments.length - 1];
            (async () => {
              const invoke = window.__TAURI_INTERNALS__.invoke;
              const words = ["Wilson", "Troponin", "potassium", "Garcia", "Okafor", "sample", "Lactate", "Nilsson"];
              const search = [];
              for (let i = 0; i < 80; i++) {
                const t = performance.now();
                await invoke("inbox", { query: { search: words[i % words.length] } });
                search.push(performance.now() - t);
              }
              const list = [];
              for (let i = 0; i < 20; i++) {
                const t = performance.now();
                await invoke("inbox", { query: {} });
                document.querySelector("#list").lastElementChild?.scrollIntoView();
                await new Promise((r) => requestAnimationFrame(() => r()));
                list.push(performance.now() - t);
              }
              done({ search, list });
            })();"##,
        )
        .await?;
    let mut search: Vec<f64> = serde_json::from_value(timings["search"].clone())?;
    let mut list: Vec<f64> = serde_json::from_value(timings["list"].clone())?;
    search.sort_by(f64::total_cmp);
    list.sort_by(f64::total_cmp);
    // A catch-up: the app's relay node goes away, a burst is published through the other node,
    // the node comes back and the app replays the burst from history. The window's commands are
    // measured from the window while it stores, from the first stored row of the burst until the
    // inbox holds all of it.
    let burst = flag(args, "burst", 10_000);
    drop(relay);
    let published = publish_burst(other.base.clone(), burst).await?;
    let _relay = node(relay_dir.path().to_owned(), redis.url(), address).await?;
    let during = session
        .execute_async(&format!(
            r##"const done = arguments[arguments.length - 1];
            (async () => {{
              const invoke = window.__TAURI_INTERNALS__.invoke;
              const before = {rows};
              const target = {target};
              const latencies = [];
              const start = performance.now();
              let total = before;
              let first = null;
              while (total < target && performance.now() - start < 25000) {{
                let t = performance.now();
                const status = await invoke("status");
                const statusMs = performance.now() - t;
                t = performance.now();
                await invoke("inbox", {{ query: {{ limit: 200 }} }});
                const inboxMs = performance.now() - t;
                // Only what was measured while the catch-up ran counts.
                if (total > before) latencies.push(statusMs, inboxMs);
                total = status.counts.total;
                if (total > before && first === null) first = performance.now();
              }}
              done({{ latencies, total, ms: first === null ? 0 : performance.now() - first }});
            }})();"##,
            target = rows + burst
        ))
        .await?;
    let mut during_burst: Vec<f64> = serde_json::from_value(during["latencies"].clone())?;
    during_burst.sort_by(f64::total_cmp);
    let burst_total = during["total"].as_u64().unwrap_or(0);
    anyhow::ensure!(
        burst_total >= rows + burst,
        "the app stored {} of {} within the measurement window",
        burst_total.saturating_sub(rows),
        burst
    );
    session.close().await?;
    // Idle is measured on the app started directly: a WebDriver session keeps WebKit busy.
    let mut direct = tokio::process::Command::new(wardline_tests::binary("wardline-app"))
        .envs(env)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let connection = Inbox::open(&db)?.state("connection")?;
        if connection.as_deref() == Some("connected") || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // The app and the WebKit processes it started.
    let app_processes = || -> Vec<(u32, u64, u64)> {
        ["wardline-app", "WebKitWebProcess", "WebKitNetworkProcess"]
            .into_iter()
            .flat_map(processes)
            .collect()
    };
    let before = app_processes();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let now = app_processes();
    let ticks_before: u64 = before.iter().map(|p| p.2).sum();
    let after: u64 = now.iter().map(|p| p.2).sum();
    let rss_kib: u64 = now.iter().map(|p| p.1).sum();
    // Per process: its name, RSS and CPU over the idle period.
    let breakdown: Vec<Value> = now
        .iter()
        .map(|(pid, rss, ticks)| {
            let name = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            let earlier = before.iter().find(|p| p.0 == *pid).map_or(0, |p| p.2);
            json!({"process": name.trim(), "rss_kib": rss, "cpu_ms": ticks.saturating_sub(earlier) * 10})
        })
        .collect();
    direct.kill().await?;
    Ok(json!({
        "rows": rows, "first_paint_ms": first_paint_ms,
        "search_p50_ms": percentile(&search, 0.5), "search_p99_ms": percentile(&search, 0.99),
        "list_p50_ms": percentile(&list, 0.5), "list_p99_ms": percentile(&list, 0.99),
        "burst": burst, "burst_published_s": published, "burst_stored_ms": during["ms"],
        "burst_commands": during_burst.len(),
        "burst_p50_ms": percentile(&during_burst, 0.5), "burst_p99_ms": percentile(&during_burst, 0.99),
        "burst_max_ms": during_burst.last().copied().unwrap_or(f64::NAN),
        "idle_seconds": seconds, "rss_kib": rss_kib, "processes": now.len(),
        "cpu_ms": (after.saturating_sub(ticks_before)) * 10, "cpu_percent": (after.saturating_sub(ticks_before)) as f64 / seconds as f64,
        "per_process": breakdown,
    }))
}

/// Publishes `count` notifications to the bench user as fast as the relay takes them (8 at a
/// time); returns how many seconds it took.
async fn publish_burst(base: String, count: u64) -> anyhow::Result<f64> {
    let service = token("backend", "service", &[], 3600);
    let client = reqwest::Client::new();
    let started = Instant::now();
    let workers: Vec<_> = (0..8u64)
        .map(|worker| {
            let (base, service, client) = (base.clone(), service.clone(), client.clone());
            tokio::spawn(async move {
                let mut n = worker;
                while n < count {
                    // Non-critical: a burst of them makes one summary alert per batch.
                    let message = json!({"type": "lab_result_available", "result_id": format!("b{n}"),
                        "test_type": TESTS[(n % 6) as usize], "note": format!("burst {n} for {}", PATIENTS[(n % 8) as usize])});
                    let body = json!({"channel": "doctor:bench:notifications", "message": message});
                    let response = client
                        .post(format!("{base}/v1/publish"))
                        .bearer_auth(&service)
                        .json(&body)
                        .send()
                        .await?;
                    anyhow::ensure!(response.status().is_success(), "publish: {}", response.status());
                    n += 8;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for worker in workers {
        worker.await??;
    }
    Ok(started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("store") => store(&args)?,
        Some("search") => search(&args)?,
        Some("alert") => alert(&args).await?,
        Some("idle") => idle(&args).await?,
        Some("app") => app(&args).await?,
        _ => anyhow::bail!(
            "usage: wardline-clientbench store|search|alert|idle|app [--count N] [--rows N] [--queries Q] [--seconds S]"
        ),
    };
    println!("{result}");
    Ok(())
}
