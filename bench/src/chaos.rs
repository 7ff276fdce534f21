//! `wardline-chaos`: relays and Redis broken on purpose while notifications flow, to show that
//! none is lost or stored twice, and that a loss Wardline cannot prevent is reported as a gap. Run
//! by `cargo xtask chaos` (as root: it makes a network namespace), which builds it and the relay
//! in release mode; the table goes to `bench/results/chaos.md`.
//!
//! Each round, with real processes and nothing shared with the round before:
//! - a `redis-server` with `appendonly yes` and `appendfsync always` (a publish answered is on disk);
//! - three relays on it: R1 as is; R2 with its clock 2 minutes behind (libfaketime, on that
//!   process alone, never the machine's clock; `--jwt-leeway 5m`, as an administrator who knows of the
//!   skew would set); R3 in a network namespace made for the round, reaching Redis over one veth
//!   pair and its devices over another;
//! - a publisher at 2,000 notifications/s (`POST /v1/publish` to a relay at random, over 20
//!   doctors' channels, each with an idempotency key); a publish that fails or is not answered is
//!   retried, on the next relay, with the same key until one answers `published`;
//! - 2 devices per channel speaking `wardline.v1`, each on a relay at random, resuming from its
//!   cursor and epoch whenever it is cut off, on the next relay;
//! - while it runs: a relay killed with SIGKILL and started again (twice), Redis stalled with
//!   SIGSTOP for 3 s, Redis killed with SIGKILL and restarted, R3's link to Redis cut for 4 s.
//!
//! Then publishing stops, every device catches up, and the round counts, per device, the
//! notifications published (answered `published`) but never received (lost), received under two
//! ids (doubled), and the gaps reported; per channel, the stream's length against what was
//! published (stored twice).

mod common;

use anyhow::{Context, bail};
use common::{option, utc_now_text};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;
use wardline_protocol::{ClientFrame, ServerFrame, SubscribeChannel};
use wardline_tests::{RedisServer, Relay, token, wrapped_relay_command};

const CHANNELS: u64 = 20;
const DEVICES_PER_CHANNEL: usize = 2;
const RATE_PER_S: u64 = 2_000;
const PUBLISHERS: u64 = 64;
const TRAFFIC: Duration = Duration::from_secs(24);
const CATCH_UP: Duration = Duration::from_secs(40);

/// The namespace and veth pairs of R3 (fixed names: one round at a time; removed before and after).
const NAMESPACE: &str = "wlchaos";
const REDIS_LINK: (&str, &str) = ("wlchA0", "wlchA1");
const DEVICE_LINK: (&str, &str) = ("wlchB0", "wlchB1");
const REDIS_SIDE: &str = "10.77.1.1";
const R3_REDIS_SIDE: &str = "10.77.1.2";
const DEVICE_SIDE: &str = "10.77.2.1";
const R3_DEVICE_SIDE: &str = "10.77.2.2";

fn channel(k: u64) -> String {
    format!("doctor:c{k}:notifications")
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let status = std::process::Command::new("ip").args(args).status()?;
    anyhow::ensure!(status.success(), "ip {} failed", args.join(" "));
    Ok(())
}

/// R3's network namespace; removed when dropped.
struct Namespace;

impl Namespace {
    fn create() -> anyhow::Result<Namespace> {
        Namespace::remove();
        ip(&["netns", "add", NAMESPACE])?;
        let namespace = Namespace;
        for ((host, inside), (host_addr, inside_addr)) in [
            (REDIS_LINK, (REDIS_SIDE, R3_REDIS_SIDE)),
            (DEVICE_LINK, (DEVICE_SIDE, R3_DEVICE_SIDE)),
        ] {
            ip(&["link", "add", host, "type", "veth", "peer", "name", inside])?;
            ip(&["link", "set", inside, "netns", NAMESPACE])?;
            ip(&["addr", "add", &format!("{host_addr}/30"), "dev", host])?;
            ip(&["link", "set", host, "up"])?;
            let cidr = format!("{inside_addr}/30");
            ip(&[
                "netns", "exec", NAMESPACE, "ip", "addr", "add", &cidr, "dev", inside,
            ])?;
            ip(&[
                "netns", "exec", NAMESPACE, "ip", "link", "set", inside, "up",
            ])?;
        }
        ip(&["netns", "exec", NAMESPACE, "ip", "link", "set", "lo", "up"])?;
        Ok(namespace)
    }

    /// Cuts (or restores) R3's link to Redis: no FIN, no RST, just silence.
    fn redis_link(&self, up: bool) -> anyhow::Result<()> {
        ip(&["link", "set", REDIS_LINK.0, if up { "up" } else { "down" }])
    }

    fn remove() {
        for link in [REDIS_LINK.0, DEVICE_LINK.0] {
            let _ = std::process::Command::new("ip")
                .args(["link", "del", link])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", NAMESPACE])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        Namespace::remove();
    }
}

/// How one of the three relays is started (again, after a kill).
struct RelaySpec {
    name: &'static str,
    wrapper: Vec<&'static str>,
    listen: String,
    redis_url: String,
    extra: Vec<&'static str>,
    data_dir: tempfile::TempDir,
}

impl RelaySpec {
    async fn start(&self) -> anyhow::Result<Relay> {
        let mut command = wrapped_relay_command(&self.wrapper);
        command.env("WARDLINE_LOG", "info");
        let mut extra = vec!["--listen", &self.listen, "--queue-capacity", "4096"];
        extra.extend(&self.extra);
        Relay::launch_command(
            command,
            self.data_dir.path(),
            Some(&self.redis_url),
            &extra,
            true,
            None,
        )
        .await
        .with_context(|| format!("starting {}", self.name))
    }

    fn base(&self) -> String {
        format!("http://{}", self.listen)
    }
}

/// What one device received.
#[derive(Default)]
struct DeviceLog {
    /// Message number → the ids it arrived under.
    received: HashMap<u64, HashSet<String>>,
    deliveries: u64,
    gaps: u64,
    reconnects: u64,
    cursor: Option<String>,
    epoch: Option<String>,
}

/// The round's shared state.
struct Round {
    bases: Vec<String>,
    /// Channel → the message numbers answered `published`.
    acked: Mutex<HashMap<u64, HashSet<u64>>>,
    duplicates_answered: AtomicU64,
    /// Notifications answered `published` in each second of the round.
    per_second: Vec<AtomicU64>,
    started: Instant,
    retries: AtomicU64,
    unconfirmed: AtomicU64,
    publishing: AtomicBool,
    devices_stop: AtomicBool,
}

async fn publisher(round: Arc<Round>, worker: u64, number: u32, next: Arc<AtomicU64>) {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .expect("an HTTP client");
    let service = token("chaos", "service", &[], 7200);
    let mut tick =
        tokio::time::interval(Duration::from_micros(1_000_000 * PUBLISHERS / RATE_PER_S));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut relay = worker as usize;
    while round.publishing.load(Relaxed) {
        tick.tick().await;
        let n = next.fetch_add(1, Relaxed);
        let k = n % CHANNELS;
        let body = json!({
            "channel": channel(k),
            "message": {"type": "chaos", "round": number, "n": n},
            "idempotency_key": format!("round-{number}-{n}"),
        });
        let started = Instant::now();
        loop {
            let base = &round.bases[relay % round.bases.len()];
            let answer = http
                .post(format!("{base}/v1/publish"))
                .bearer_auth(&service)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = answer
                && response.status() == 200
            {
                let reply: Value = response.json().await.unwrap_or_default();
                if reply["duplicate"] == true {
                    round.duplicates_answered.fetch_add(1, Relaxed);
                }
                let second = round.started.elapsed().as_secs() as usize;
                if let Some(count) = round.per_second.get(second) {
                    count.fetch_add(1, Relaxed);
                }
                round
                    .acked
                    .lock()
                    .expect("acked lock")
                    .entry(k)
                    .or_default()
                    .insert(n);
                break;
            }
            round.retries.fetch_add(1, Relaxed);
            relay += 1;
            if started.elapsed() > TRAFFIC + CATCH_UP {
                round.unconfirmed.fetch_add(1, Relaxed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn device(round: Arc<Round>, k: u64, first_relay: usize, log: Arc<Mutex<DeviceLog>>) {
    let user = format!("c{k}");
    let doctor = token(&user, "doctor", &[], 7200);
    let mut relay = first_relay;
    while !round.devices_stop.load(Relaxed) {
        let base = round.bases[relay % round.bases.len()].replacen("http", "ws", 1);
        relay += 1;
        let _ = connected(&base, &user, &doctor, k, &round, &log).await;
        log.lock().expect("device lock").reconnects += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One connection of a device, until it is cut off (or the round ends).
async fn connected(
    base: &str,
    user: &str,
    token: &str,
    k: u64,
    round: &Round,
    log: &Mutex<DeviceLog>,
) -> anyhow::Result<()> {
    let url = format!("{base}/ws/{user}?token={token}");
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url)?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "wardline.v1".parse()?);
    let (mut socket, _) = tokio::time::timeout(
        Duration::from_secs(3),
        tokio_tungstenite::connect_async(request),
    )
    .await??;
    let (since, epoch) = {
        let log = log.lock().expect("device lock");
        (
            log.cursor.clone().unwrap_or_else(|| "0".into()),
            log.epoch.clone(),
        )
    };
    let subscribe = ClientFrame::Subscribe {
        channels: vec![SubscribeChannel {
            channel: channel(k),
            since: Some(since),
            epoch,
        }],
    };
    socket
        .send(Message::Text(serde_json::to_string(&subscribe)?.into()))
        .await?;
    while !round.devices_stop.load(Relaxed) {
        let message = match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
            Err(_) => continue,
            Ok(None) => bail!("closed"),
            Ok(Some(message)) => message?,
        };
        let Message::Text(text) = message else {
            if let Message::Close(_) = message {
                bail!("closed");
            }
            continue;
        };
        let mut log = log.lock().expect("device lock");
        match serde_json::from_str::<ServerFrame>(&text)? {
            ServerFrame::Notification(notification) => {
                let n = notification.message["n"].as_u64().context("n")?;
                let id = notification.id.to_string();
                log.deliveries += 1;
                log.received.entry(n).or_default().insert(id.clone());
                log.cursor = Some(id);
            }
            ServerFrame::Resumed {
                gap, cursor, epoch, ..
            } => {
                if gap {
                    log.gaps += 1;
                }
                if let Some(cursor) = cursor {
                    log.cursor = Some(cursor.to_string());
                }
                if epoch.is_some() {
                    log.epoch = epoch;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a round found.
struct Outcome {
    published: u64,
    median_per_second: u64,
    seconds: f64,
    lost: u64,
    doubled: u64,
    stored_twice: u64,
    unconfirmed: u64,
    gaps: u64,
    unreported_losses: u64,
    duplicates_answered: u64,
    retries: u64,
    reconnects: u64,
    events: Vec<String>,
}

/// One round; `persistent` false runs Redis without persistence (the control: its restart loses
/// the history, which every device must hear as a gap).
async fn round(number: u32, persistent: bool) -> anyhow::Result<Outcome> {
    let namespace = Namespace::create()?;
    let persistence: &[&str] = if persistent {
        &["--appendonly", "yes", "--appendfsync", "always"]
    } else {
        &["--appendonly", "no", "--save", ""]
    };
    let mut redis = RedisServer::start_with(
        &[
            persistence,
            &[
                "--bind",
                "127.0.0.1",
                REDIS_SIDE,
                // R3 comes from the veth address, which only the round's namespace reaches.
                "--protected-mode",
                "no",
            ],
        ]
        .concat(),
    )
    .await?;
    let specs = [
        RelaySpec {
            name: "R1",
            wrapper: vec!["env"],
            listen: format!("127.0.0.1:{}", wardline_tests::free_port()),
            redis_url: redis.url(),
            extra: vec![],
            data_dir: tempfile::tempdir()?,
        },
        RelaySpec {
            name: "R2 (clock 2 min behind)",
            // libfaketime preloaded by `env`, which executes the relay: the `faketime` program
            // would stay the parent, and a SIGKILL would miss the relay.
            // The wall clock only: timers keep the real monotonic clock.
            wrapper: vec![
                "env",
                "LD_PRELOAD=/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                "FAKETIME=-120s",
                "FAKETIME_DONT_FAKE_MONOTONIC=1",
            ],
            listen: format!("127.0.0.1:{}", wardline_tests::free_port()),
            redis_url: redis.url(),
            extra: vec!["--jwt-leeway", "5m"],
            data_dir: tempfile::tempdir()?,
        },
        RelaySpec {
            name: "R3 (network namespace)",
            wrapper: vec!["ip", "netns", "exec", NAMESPACE],
            listen: format!("{R3_DEVICE_SIDE}:{}", wardline_tests::free_port()),
            redis_url: format!("redis://{REDIS_SIDE}:{}/0", redis.port),
            extra: vec![],
            data_dir: tempfile::tempdir()?,
        },
    ];
    let mut relays = Vec::new();
    for spec in &specs {
        relays.push(Some(spec.start().await?));
    }
    let round = Arc::new(Round {
        bases: specs.iter().map(RelaySpec::base).collect(),
        acked: Mutex::new(HashMap::new()),
        duplicates_answered: AtomicU64::new(0),
        per_second: (0..TRAFFIC.as_secs() + 4)
            .map(|_| AtomicU64::new(0))
            .collect(),
        started: Instant::now() + Duration::from_secs(2),
        retries: AtomicU64::new(0),
        unconfirmed: AtomicU64::new(0),
        publishing: AtomicBool::new(true),
        devices_stop: AtomicBool::new(false),
    });
    let mut rng = rand::rng();
    let mut devices = Vec::new();
    for k in 0..CHANNELS {
        for _ in 0..DEVICES_PER_CHANNEL {
            let log = Arc::new(Mutex::new(DeviceLog::default()));
            let task = tokio::spawn(device(
                round.clone(),
                k,
                rng.random_range(0..specs.len()),
                log.clone(),
            ));
            devices.push((k, log, task));
        }
    }
    // Devices subscribe before the first publish (2 s after the round's state was made): each is
    // to receive everything.
    tokio::time::sleep_until(round.started.into()).await;
    let started = round.started;
    let next = Arc::new(AtomicU64::new(0));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|worker| tokio::spawn(publisher(round.clone(), worker, number, next.clone())))
        .collect();

    let mut events = Vec::new();
    let at = |seconds: f64| {
        tokio::time::sleep_until((started + Duration::from_secs_f64(seconds)).into())
    };
    let first = rng.random_range(0..3);
    let second = (first + rng.random_range(1..3)) % 3;
    at(3.0).await;
    kill_relay(&mut relays, first)?;
    events.push(format!("kill -9 {}", specs[first].name));
    at(4.5).await;
    relays[first] = Some(specs[first].start().await?);
    at(7.0).await;
    redis.signal("STOP")?;
    events.push("Redis SIGSTOP 3 s".into());
    at(10.0).await;
    redis.signal("CONT")?;
    at(12.0).await;
    redis.restart().await?;
    events.push("kill -9 Redis, restarted".into());
    at(15.0).await;
    namespace.redis_link(false)?;
    events.push("R3 cut from Redis 4 s".into());
    at(19.0).await;
    namespace.redis_link(true)?;
    at(20.0).await;
    kill_relay(&mut relays, second)?;
    events.push(format!("kill -9 {}", specs[second].name));
    at(21.5).await;
    relays[second] = Some(specs[second].start().await?);
    at(TRAFFIC.as_secs_f64()).await;
    round.publishing.store(false, Relaxed);
    for publisher in publishers {
        publisher.await?;
    }
    let seconds = started.elapsed().as_secs_f64();

    // Every device catches up with everything answered `published` on its channel.
    let acked = round.acked.lock().expect("acked lock").clone();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let behind = devices.iter().any(|(k, log, _)| {
            let log = log.lock().expect("device lock");
            acked
                .get(k)
                .is_some_and(|numbers| numbers.iter().any(|n| !log.received.contains_key(n)))
        });
        if !behind || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    round.devices_stop.store(true, Relaxed);
    let mut seconds_counted: Vec<u64> = round.per_second[..TRAFFIC.as_secs() as usize]
        .iter()
        .map(|count| count.load(Relaxed))
        .collect();
    seconds_counted.sort_unstable();
    let mut outcome = Outcome {
        published: acked.values().map(|numbers| numbers.len() as u64).sum(),
        median_per_second: seconds_counted[seconds_counted.len() / 2],
        seconds,
        lost: 0,
        doubled: 0,
        stored_twice: 0,
        unconfirmed: round.unconfirmed.load(Relaxed),
        gaps: 0,
        unreported_losses: 0,
        duplicates_answered: round.duplicates_answered.load(Relaxed),
        retries: round.retries.load(Relaxed),
        reconnects: 0,
        events,
    };
    for (k, log, task) in devices {
        let _ = task.await;
        let log = log.lock().expect("device lock");
        let lost = acked
            .get(&k)
            .map(|numbers| {
                numbers
                    .iter()
                    .filter(|n| !log.received.contains_key(n))
                    .count() as u64
            })
            .unwrap_or(0);
        outcome.lost += lost;
        outcome.doubled += log.received.values().filter(|ids| ids.len() > 1).count() as u64;
        outcome.gaps += log.gaps;
        if lost > 0 && log.gaps == 0 {
            outcome.unreported_losses += lost;
        }
        outcome.reconnects += log.reconnects;
    }
    let mut conn = redis.connection().await;
    for k in 0..CHANNELS {
        let stored: u64 = redis::cmd("XLEN")
            .arg(format!("wardline:{{{}}}:stream", channel(k)))
            .query_async(&mut conn)
            .await?;
        let published = acked.get(&k).map(|n| n.len() as u64).unwrap_or(0);
        outcome.stored_twice += stored.saturating_sub(published);
    }
    drop(relays);
    Ok(outcome)
}

fn kill_relay(relays: &mut [Option<Relay>], index: usize) -> anyhow::Result<()> {
    if let Some(relay) = relays[index].take() {
        relay.signal("KILL")?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let rounds: u32 = option("--rounds")
        .map(|r| r.parse())
        .transpose()?
        .unwrap_or(10);
    let out = option("--out").context("--out FILE")?;
    let mut table = String::new();
    let mut control = String::new();
    let mut failed = false;
    let mut control_heard = true;
    let mut totals = [0u64; 6];
    // The rounds, then one control round on a Redis without persistence.
    for number in 1..=rounds + 1 {
        let persistent = number <= rounds;
        eprintln!(
            "chaos: round {number} of {} (persistent Redis: {persistent})",
            rounds + 1
        );
        let o = round(number, persistent).await?;
        if persistent {
            failed |= o.lost > 0 || o.doubled > 0 || o.stored_twice > 0 || o.unconfirmed > 0;
            for (total, value) in totals.iter_mut().zip([
                o.published,
                o.lost,
                o.doubled,
                o.stored_twice,
                o.gaps,
                o.unconfirmed,
            ]) {
                *total += value;
            }
        } else {
            // Every device lost the history it was following: each must have heard a gap.
            control_heard = o.unreported_losses == 0
                && o.gaps >= (CHANNELS as usize * DEVICES_PER_CHANNEL) as u64;
        }
        let _ = writeln!(
            if persistent { &mut table } else { &mut control },
            "| {number} | {} | {:.0}/s / {}/s | {} | {} | {} | {} | {} ({} unreported) | {} | {} | {} | {} |",
            o.published,
            o.published as f64 / o.seconds,
            o.median_per_second,
            o.lost,
            o.doubled,
            o.stored_twice,
            o.unconfirmed,
            o.gaps,
            o.unreported_losses,
            o.retries,
            o.duplicates_answered,
            o.reconnects,
            o.events.join("; "),
        );
        eprintln!(
            "chaos: round {number}: {} published, {} lost, {} doubled",
            o.published, o.lost, o.doubled
        );
    }
    let date = utc_now_text();
    let text = format!(
        "# Chaos\n\n\
         Measured by `cargo xtask chaos` on {date}, release builds, 2 cores shared by everything. \
         How each round runs is in `bench/src/chaos.rs`: Redis with `appendfsync always`, three relays \
         (R2's clock 2 minutes behind under libfaketime; R3 in a network namespace), a publisher at up to \
         {RATE_PER_S} notifications/s retrying each failed publish with its idempotency key, \
         {} `wardline.v1` devices resuming from cursor and epoch.\n\n\
         **Totals over {rounds} rounds: {} published, {} lost, {} doubled, {} stored twice, {} gaps reported, \
         {} publishes never confirmed.**\n\n\
         | round | published | rate | lost | doubled | stored twice | never confirmed | gaps reported | publish retries | answered duplicate | device reconnects | what broke |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n{table}\n\
         *lost*: answered `published` but never received by a device of its channel. *doubled*: received \
         by a device under two ids. *stored twice*: the channel's stream holds more than was published. \
         *answered duplicate*: a retry found its first attempt stored (the idempotency key at work). \
         *rate*: notifications answered `published` per second, over the whole round / the median \
         second (the whole round includes the seconds Redis was stalled or down).\n\n\
         ## Control: Redis without persistence\n\n\
         The same round on a Redis that keeps nothing across its restart: the history is lost, and every \
         device must hear it as a gap (history epochs). {}\n\n\
         | round | published | rate | lost | doubled | stored twice | never confirmed | gaps reported | publish retries | answered duplicate | device reconnects | what broke |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n{control}",
        CHANNELS as usize * DEVICES_PER_CHANNEL,
        totals[0],
        totals[1],
        totals[2],
        totals[3],
        totals[4],
        totals[5],
        if control_heard {
            "Every device heard it."
        } else {
            "**Not every device heard it.**"
        },
    );
    std::fs::write(&out, text)?;
    eprintln!("chaos: written to {out}");
    if failed {
        bail!("notifications were lost or doubled: see {out}");
    }
    if !control_heard {
        bail!("a lost history was not reported to every device: see {out}");
    }
    Ok(())
}
