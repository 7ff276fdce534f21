//! `cargo xtask bench relay`: a benchmark, not a test. Release builds of the relay and of
//! `wardline-loadgen`, a real `redis-server`, several load generator processes with their sources
//! spread over 127.0.0.x; the table goes to `bench/results/relay.md`.
//!
//! Measured, in order:
//! 1. idle memory per WebSocket: the relay's RSS with N subscribed `wardline.v1` connections minus
//!    its RSS after a warm-up, divided by N;
//! 2. broadcast: K notifications to `system:alerts` (which every connection reads), published with
//!    `POST /v1/publish` 500 ms apart; the relay's CPU time (user + system, from /proc) over the phase
//!    divided by K, and the latency from just before each publish to each receipt;
//! 3. unicast throughput: M plain `PUBLISH`es (the existing backends' path) to the connections' own
//!    channels from 50 Redis clients, end to end (first publish → last receipt, every message
//!    recorded to history and delivered), against `redis-benchmark` PUBLISH with 50 clients in the same run.
//!
//! All three twice, plain and over TLS (a private CA and a certificate made for the run), side by side.
//! WebSocket heartbeats are set to 1 h so that idle pings do not count as broadcast CPU.

use crate::deps::{ensure_apt, workspace_root};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const SECRET: &str = "benchmark-secret-0123456789abcdef";

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

/// User + system CPU time of a process, in milliseconds.
fn cpu_ms(pid: u32, ticks_per_s: u64) -> Result<u64, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| e.to_string())?;
    let after_name = stat.rsplit_once(") ").ok_or("bad stat")?.1;
    let fields: Vec<&str> = after_name.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().map_err(|e| e.to_string())?
        + fields[12].parse::<u64>().map_err(|e| e.to_string())?;
    Ok(ticks * 1000 / ticks_per_s)
}

/// The date and time now, for the results' headers.
fn utc_now_text() -> Result<String, String> {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Loadgen {
    _process: Process,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Loadgen {
    fn spawn(
        bin: &Path,
        relay: &str,
        ca: Option<&Path>,
        count: usize,
        offset: usize,
        first_ip: usize,
    ) -> Result<Loadgen, String> {
        let mut command = Command::new(bin);
        command
            .args([
                "connect", "--relay", relay, "--secret", SECRET, "--prefix", "bench",
            ])
            .args([
                "--count",
                &count.to_string(),
                "--offset",
                &offset.to_string(),
            ])
            .args(["--first-ip", &first_ip.to_string(), "--ips", "40"]);
        if let Some(ca) = ca {
            command.arg("--ca").arg(ca);
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the load generator: {e}"))?;
        let stdin = child.stdin.take().expect("piped");
        let stdout = BufReader::new(child.stdout.take().expect("piped"));
        Ok(Loadgen {
            _process: Process(child),
            stdin,
            stdout,
        })
    }

    fn expect_line(&mut self, prefix: &str) -> Result<String, String> {
        let mut line = String::new();
        self.stdout
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        if line.starts_with(prefix) {
            Ok(line)
        } else {
            Err(format!("load generator said {line:?}, expected {prefix}"))
        }
    }

    fn report(&mut self, path: &Path) -> Result<Value, String> {
        writeln!(self.stdin, "report {}", path.display()).map_err(|e| e.to_string())?;
        self.expect_line("reported")?;
        serde_json::from_str(&std::fs::read_to_string(path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }
}

/// Release builds of the relay, the CLI and the benchmark programs; answers where they are.
pub(crate) fn build_release() -> Result<PathBuf, String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::deps::run(Command::new(cargo).current_dir(workspace_root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "wardline-relay",
        "-p",
        "wardline-client",
        "-p",
        "wardline-bench",
    ]))?;
    Ok(crate::deps::target_dir()?.join("release"))
}

/// Entry point of `cargo xtask bench <what>`.
pub fn run(args: &[String]) -> Result<(), String> {
    match args.first().map(String::as_str) {
        Some("relay") => relay(),
        Some("client") => client(),
        Some("app") => app(),
        Some("receipts") => receipts(),
        _ => Err("usage: cargo xtask bench relay|client|app|receipts (WARDLINE_BENCH_CONNECTIONS, _BROADCASTS, _MESSAGES, _ROWS to scale)".into()),
    }
}

/// `cargo xtask bench receipts`: publishing's latency, quiet and under a flood of receipt frames
/// (how: `bench/src/receipt_flood.rs`), into `bench/results/receipts.md`.
fn receipts() -> Result<(), String> {
    let release = build_release()?;
    let out = workspace_root().join("bench/results/receipts.md");
    crate::deps::run(
        Command::new(release.join("wardline-receiptflood"))
            .arg("--out")
            .arg(&out),
    )
}

/// How the load generators and the publisher reach the relay: plain `ws://`/`http://`, or
/// `wss://`/`https://` with a certificate from a private CA made for the run.
enum Transport {
    Plain,
    Tls(Certificate),
}

/// A server certificate for `localhost` and 127.0.0.1, and the private CA that signed it.
struct Certificate {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Transport {
    fn name(&self) -> &'static str {
        match self {
            Transport::Plain => "plain",
            Transport::Tls(_) => "TLS",
        }
    }

    fn scheme(&self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls(_) => "https",
        }
    }
}

/// Makes a private CA and a server certificate it signs (ECDSA P-256, as a hospital's internal CA
/// issues today), with `openssl`.
fn make_certificate(dir: &Path) -> Result<Certificate, String> {
    let ca = dir.join("ca.pem");
    let ca_key = dir.join("ca-key.pem");
    let cert = dir.join("relay.pem");
    let key = dir.join("relay-key.pem");
    let csr = dir.join("relay.csr");
    let extensions = dir.join("relay.ext");
    std::fs::write(
        &extensions,
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .map_err(|e| e.to_string())?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    crate::deps::run(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-days",
                "2",
                "-subj",
                "/CN=Wardline benchmark CA",
            ])
            .args(ec)
            .arg("-keyout")
            .arg(&ca_key)
            .arg("-out")
            .arg(&ca)
            .stderr(Stdio::null()),
    )?;
    crate::deps::run(
        Command::new("openssl")
            .args(["req", "-subj", "/CN=localhost"])
            .args(ec)
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .stderr(Stdio::null()),
    )?;
    crate::deps::run(
        Command::new("openssl")
            .args(["x509", "-req", "-days", "2", "-CAcreateserial"])
            .arg("-in")
            .arg(&csr)
            .arg("-CA")
            .arg(&ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .arg("-extfile")
            .arg(&extensions)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null()),
    )?;
    Ok(Certificate { ca, cert, key })
}

/// `POST /v1/publish` with curl (over TLS trusting the run's CA), so that both runs publish alike.
fn publish(transport: &Transport, address: &str, token: &str, body: &Value) -> Result<(), String> {
    let mut curl = Command::new("curl");
    curl.args(["--silent", "--show-error", "--fail-with-body"])
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .args(["-H", "Content-Type: application/json"])
        .args(["--data-binary", &body.to_string()])
        .arg(format!("{}://{address}/v1/publish", transport.scheme()));
    if let Transport::Tls(certificate) = transport {
        curl.arg("--cacert").arg(&certificate.ca);
    }
    let output = curl.output().map_err(|e| format!("curl: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "publishing failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

/// What one run measured.
#[derive(Default)]
struct Measurement {
    rss_before: u64,
    rss_after: u64,
    /// The median of [`SAMPLES`] relays' (see `memory_samples`).
    per_connection_kib: f64,
    /// Per idle connection, from each relay started, sorted.
    memory_samples: Vec<f64>,
    /// CPU per broadcast, from each relay started, sorted.
    cpu_samples: Vec<f64>,
    /// Connections made again after a subscription was answered "broker unavailable".
    subscribe_retries: u64,
    open_s: f64,
    cpu_broadcast_ms: f64,
    phase_s: f64,
    /// Broadcast latencies in µs, sorted.
    latencies: Vec<u64>,
    unicast_received: u64,
    unicast_s: f64,
    unicast_rps: f64,
    redis_rps: f64,
    publish_line: String,
}

impl Measurement {
    fn latency_ms(&self, p: f64) -> f64 {
        percentile(&self.latencies, p) as f64 / 1000.0
    }

    fn max_latency_ms(&self) -> f64 {
        self.latencies.last().copied().unwrap_or(0) as f64 / 1000.0
    }

    fn ratio(&self) -> f64 {
        self.unicast_rps / self.redis_rps
    }
}

/// Relays started per transport. One relay's figures move from run to run (idle memory by up to
/// 2 KiB per connection, where the allocator's arenas land; CPU per broadcast by up to 20 % on this
/// shared machine), so the table gives medians and every sample.
const SAMPLES: usize = 5;

/// Both transports, [`SAMPLES`] relays each, plain and TLS alternating so that a slow stretch of
/// the machine weighs on both: the first run of each does every phase, the others idle memory and
/// broadcast CPU, whose medians replace the first run's.
fn measure_alternating(
    release: &Path,
    work: &Path,
    transports: [&Transport; 2],
    scale: &Scale,
) -> Result<[Measurement; 2], String> {
    let mut runs: [Vec<Measurement>; 2] = [Vec::new(), Vec::new()];
    for k in 0..SAMPLES {
        for (transport, runs) in transports.iter().zip(runs.iter_mut()) {
            let dir = work.join(transport.name()).join(format!("run-{k}"));
            runs.push(measure(release, &dir, transport, scale, k == 0)?);
        }
    }
    Ok(runs.map(|runs| {
        let mut memory: Vec<f64> = runs.iter().map(|r| r.per_connection_kib).collect();
        let mut cpu: Vec<f64> = runs.iter().map(|r| r.cpu_broadcast_ms).collect();
        let subscribe_retries = runs.iter().map(|r| r.subscribe_retries).sum();
        memory.sort_by(f64::total_cmp);
        cpu.sort_by(f64::total_cmp);
        let mut full = runs.into_iter().next().expect("SAMPLES > 0");
        full.per_connection_kib = memory[memory.len() / 2];
        full.cpu_broadcast_ms = cpu[cpu.len() / 2];
        full.memory_samples = memory;
        full.cpu_samples = cpu;
        full.subscribe_retries = subscribe_retries;
        full
    }))
}

/// The scale of a run.
struct Scale {
    connections: usize,
    broadcasts: usize,
    messages: usize,
    processes: usize,
}

fn relay() -> Result<(), String> {
    let scale = Scale {
        connections: env_or("WARDLINE_BENCH_CONNECTIONS", 10_000),
        broadcasts: env_or("WARDLINE_BENCH_BROADCASTS", 20),
        messages: env_or("WARDLINE_BENCH_MESSAGES", 100_000),
        processes: 4,
    };
    ensure_apt(&[
        ("redis-server", "redis-server"),
        ("redis-benchmark", "redis-tools"),
        ("curl", "curl"),
        ("openssl", "openssl"),
    ])?;
    let release = build_release()?;
    let work = std::env::temp_dir().join(format!("wardline-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| e.to_string())?;
    let certificate_dir = work.join("certificate");
    std::fs::create_dir_all(&certificate_dir).map_err(|e| e.to_string())?;
    let tls = Transport::Tls(make_certificate(&certificate_dir)?);
    let [plain, tls] = measure_alternating(&release, &work, [&Transport::Plain, &tls], &scale)?;

    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let kernel = String::from_utf8_lossy(
        &Command::new("uname")
            .arg("-r")
            .output()
            .map_err(|e| e.to_string())?
            .stdout,
    )
    .trim()
    .to_owned();
    let date = utc_now_text()?;
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let Scale {
        connections,
        broadcasts,
        messages,
        processes,
    } = scale;
    let expected = connections * broadcasts;
    let tls_extra_kib = tls.per_connection_kib - plain.per_connection_kib;
    let tls_cpu_ratio = tls.cpu_broadcast_ms / plain.cpu_broadcast_ms;
    let samples = |values: &[f64]| {
        values
            .iter()
            .map(|value| format!("{value:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let latency = |m: &Measurement| {
        format!(
            "{:.1} / {:.1} / {:.1} ms ({} of {expected})",
            m.latency_ms(0.50),
            m.latency_ms(0.99),
            m.max_latency_ms(),
            m.latencies.len()
        )
    };
    let latency_met =
        |m: &Measurement| m.latency_ms(0.99) <= 120.0 && m.latencies.len() == expected;
    let unicast = |m: &Measurement| {
        format!(
            "{:.0} msg/s ({} of {messages} in {:.2} s)",
            m.unicast_rps, m.unicast_received, m.unicast_s
        )
    };
    let table = format!(
        "# Relay benchmark\n\n\
         Measured by `cargo xtask bench relay` on {date}: {cores} cores, Linux {kernel}, release build, relay on \
         Redis (one node, recorder on), {connections} `wardline.v1` connections from {processes} load \
         generator processes (sources 127.0.0.2–{last_ip}), each subscribed to its own doctor channel and \
         `system:alerts`. The load generators, Redis and the relay share the same cores, so latencies \
         are upper bounds. Heartbeats were set to 1 h during the run. For each transport {SAMPLES} runs, each on a fresh relay and Redis, \
         plain and TLS alternating: the first of each runs every phase, the others open the connections and broadcast (idle memory and CPU \
         per broadcast are the medians of all {SAMPLES}). Plain (`ws://`, `http://`) and TLS (`wss://`, `https://`; `--tls-cert`/`--tls-key` \
         with an ECDSA P-256 certificate from a private CA made for the run, TLS 1.3). Broadcasts are \
         published with `curl` in both runs, so the TLS run's CPU includes the publisher's handshakes.\n\n\
         | measure | plain | TLS | target | |\n|---|---|---|---|---|\n\
         | idle memory per WebSocket connection ({connections} connections; median of {SAMPLES} relays) | {:.2} KiB | {:.2} KiB | ≤ 6 KiB (plain) | {} |\n\
         | TLS − plain, per idle connection | | {tls_extra_kib:+.2} KiB | none (measured) | |\n\
         | relay CPU time per broadcast to {connections} connections (median of {SAMPLES} relays) | {:.1} ms | {:.1} ms | ≤ 100 ms (plain) | {} |\n\
         | TLS ÷ plain, CPU per broadcast | | {tls_cpu_ratio:.3} | ≤ 1.10 | {} |\n\
         | broadcast delivery latency p50 / p99 / max (the run of every phase) | {} | {} | p99 ≤ 120 ms | {} / {} |\n\
         | unicast end-to-end throughput (plain PUBLISH → recorded → delivered, 50 publishers) | {} | {} | | |\n\
         | `redis-benchmark -c 50` PUBLISH, same run | {:.0} msg/s | {:.0} msg/s | | |\n\
         | unicast throughput ÷ redis-benchmark PUBLISH | {:.2} | {:.2} | ≥ 0.8 | {} / {} |\n\n\
         Each relay: idle memory per connection plain {}, TLS {} KiB; CPU per broadcast plain {}, TLS {} ms.\n\n\
         Details, plain: relay RSS {} KiB after warm-up, {} KiB with the connections open (opened in {:.1} s); \
         broadcast phase {broadcasts} publishes 500 ms apart over {:.1} s; publisher: `{}`.\n\n\
         Details, TLS: relay RSS {} KiB after warm-up, {} KiB with the connections open (opened in {:.1} s); \
         broadcast phase {broadcasts} publishes 500 ms apart over {:.1} s; publisher: `{}`.\n\n\
         Connections the load generators made again a second after the relay answered a subscription \"broker unavailable\" \
         (50301) and closed with 1013, as the receiver does, over all runs: plain {}, TLS {}.\n",
        plain.per_connection_kib,
        tls.per_connection_kib,
        met(plain.per_connection_kib <= 6.0),
        plain.cpu_broadcast_ms,
        tls.cpu_broadcast_ms,
        met(plain.cpu_broadcast_ms <= 100.0),
        met(tls_cpu_ratio <= 1.10),
        latency(&plain),
        latency(&tls),
        met(latency_met(&plain)),
        met(latency_met(&tls)),
        unicast(&plain),
        unicast(&tls),
        plain.redis_rps,
        tls.redis_rps,
        plain.ratio(),
        tls.ratio(),
        met(plain.ratio() >= 0.8),
        met(tls.ratio() >= 0.8),
        samples(&plain.memory_samples),
        samples(&tls.memory_samples),
        samples(&plain.cpu_samples),
        samples(&tls.cpu_samples),
        plain.rss_before,
        plain.rss_after,
        plain.open_s,
        plain.phase_s,
        plain.publish_line,
        tls.rss_before,
        tls.rss_after,
        tls.open_s,
        tls.phase_s,
        tls.publish_line,
        plain.subscribe_retries,
        tls.subscribe_retries,
        last_ip = 2 + processes * 40 - 1,
    );
    let out = workspace_root().join("bench/results/relay.md");
    std::fs::create_dir_all(out.parent().expect("parent")).map_err(|e| e.to_string())?;
    std::fs::write(&out, &table).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&work);
    println!("{table}");
    println!("written to {}", out.display());
    Ok(())
}

/// One run: a fresh Redis and relay over `transport`, the three phases (or the first two),
/// everything stopped at the end.
fn measure(
    release: &Path,
    work: &Path,
    transport: &Transport,
    scale: &Scale,
    all_phases: bool,
) -> Result<Measurement, String> {
    let &Scale {
        connections,
        broadcasts,
        messages,
        processes,
    } = scale;
    eprintln!("bench: {} run", transport.name());
    std::fs::create_dir_all(work).map_err(|e| e.to_string())?;
    let ticks_per_s: u64 = String::from_utf8_lossy(
        &Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .map_err(|e| e.to_string())?
            .stdout,
    )
    .trim()
    .parse()
    .unwrap_or(100);

    let redis_port = free_port().to_string();
    let _redis = Process(
        Command::new("redis-server")
            .args([
                "--port",
                &redis_port,
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--maxclients",
                "1000",
            ])
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| format!("redis-server: {e}"))?,
    );
    let redis_url = format!("redis://127.0.0.1:{redis_port}/0");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !Command::new("redis-cli")
        .args(["-p", &redis_port, "ping"])
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"PONG"))
    {
        if Instant::now() > deadline {
            return Err("redis-server did not start".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut relay_command = Command::new(release.join("wardline-relay"));
    relay_command
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--redis-url",
            &redis_url,
            "--jwt-secret",
            SECRET,
        ])
        .args([
            "--connections-per-ip-burst",
            "1000000",
            "--connections-per-ip-per-s",
            "1000000",
            "--max-connections-per-ip",
            "1000000",
            "--heartbeat",
            "1h",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(work)
        .env("WARDLINE_LOG", "warn")
        .stdout(Stdio::piped());
    let ca = match transport {
        Transport::Plain => None,
        Transport::Tls(certificate) => {
            relay_command
                .arg("--tls-cert")
                .arg(&certificate.cert)
                .arg("--tls-key")
                .arg(&certificate.key);
            Some(certificate.ca.as_path())
        }
    };
    let mut relay_child = relay_command
        .spawn()
        .map_err(|e| format!("starting the relay: {e}"))?;
    let mut relay_out = BufReader::new(relay_child.stdout.take().expect("piped"));
    let relay_pid = relay_child.id();
    let _relay = Process(relay_child);
    let mut line = String::new();
    relay_out.read_line(&mut line).map_err(|e| e.to_string())?;
    let relay_addr = line
        .trim()
        .strip_prefix(&format!("listening on {}://", transport.scheme()))
        .ok_or_else(|| format!("relay said {line:?}"))?
        .to_owned();
    let loadgen_bin = release.join("wardline-loadgen");
    let admin = token_via_relay(release, work)?;

    // Warm-up: one round of connections and publishes, so that allocator arenas and the channel map exist.
    {
        let mut warm = Loadgen::spawn(&loadgen_bin, &relay_addr, ca, 200, connections, 200)?;
        warm.expect_line("ready")?;
        publish(
            transport,
            &relay_addr,
            &admin,
            &json!({"channel": "system:alerts", "message": {"type": "warmup"}}),
        )?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let rss_before = rss_kib(relay_pid)?;

    eprintln!("bench: opening {connections} connections from {processes} processes");
    let opened = Instant::now();
    let mut loadgens = Vec::new();
    for k in 0..processes {
        let share = connections / processes + usize::from(k < connections % processes);
        let offset = k * (connections / processes) + k.min(connections % processes);
        loadgens.push(Loadgen::spawn(
            &loadgen_bin,
            &relay_addr,
            ca,
            share,
            offset,
            2 + k * 40,
        )?);
    }
    for loadgen in &mut loadgens {
        loadgen.expect_line("ready")?;
    }
    let open_s = opened.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_secs(3));
    let rss_after = rss_kib(relay_pid)?;
    let per_connection_kib = (rss_after.saturating_sub(rss_before)) as f64 / connections as f64;
    eprintln!(
        "bench: {connections} connections in {open_s:.1} s, {per_connection_kib:.2} KiB each"
    );
    let cpu_before = cpu_ms(relay_pid, ticks_per_s)?;
    let phase = Instant::now();
    for n in 0..broadcasts {
        let message = json!({"type": "system_notification", "content": format!("broadcast {n}"), "sent_us": now_us()});
        publish(
            transport,
            &relay_addr,
            &admin,
            &json!({"channel": "system:alerts", "message": message}),
        )?;
        std::thread::sleep(Duration::from_millis(500));
    }
    std::thread::sleep(Duration::from_secs(2));
    let cpu_broadcast_ms =
        cpu_ms(relay_pid, ticks_per_s)?.saturating_sub(cpu_before) as f64 / broadcasts as f64;
    let phase_s = phase.elapsed().as_secs_f64();
    let mut latencies = Vec::new();
    let mut subscribe_retries = 0;
    for (k, loadgen) in loadgens.iter_mut().enumerate() {
        let report = loadgen.report(&work.join(format!("broadcast-{k}.json")))?;
        subscribe_retries += report["subscribe_retries"].as_u64().unwrap_or(0);
        latencies.extend(
            report["broadcast_latencies_us"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_u64),
        );
    }
    latencies.sort_unstable();
    eprintln!(
        "bench: broadcast {cpu_broadcast_ms:.1} ms CPU each, {} of {} received",
        latencies.len(),
        connections * broadcasts
    );
    if !all_phases {
        return Ok(Measurement {
            rss_before,
            rss_after,
            per_connection_kib,
            open_s,
            cpu_broadcast_ms,
            phase_s,
            latencies,
            subscribe_retries,
            ..Measurement::default()
        });
    }

    // Raw Redis PUBLISH, as redis-benchmark measures it, with a payload of the same size.
    let sample =
        json!({"type": "lab_result_available", "n": 99_999, "sent_us": now_us()}).to_string();
    let benchmark = Command::new("redis-benchmark")
        .args([
            "-p",
            &redis_port,
            "-c",
            "50",
            "-n",
            &messages.to_string(),
            "-q",
            "PUBLISH",
            "bench:raw",
            &sample,
        ])
        .output()
        .map_err(|e| format!("redis-benchmark: {e}"))?;
    let benchmark_text = String::from_utf8_lossy(&benchmark.stdout);
    let redis_rps: f64 = benchmark_text
        .rsplit(':')
        .next()
        .and_then(|tail| tail.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("could not read redis-benchmark's output {benchmark_text:?}"))?;

    let start_us = now_us();
    let publisher = Command::new(&loadgen_bin)
        .args([
            "publish",
            "--redis",
            &redis_url,
            "--count",
            &messages.to_string(),
            "--clients",
            "50",
        ])
        .args(["--prefix", "bench", "--users", &connections.to_string()])
        .output()
        .map_err(|e| format!("publisher: {e}"))?;
    if !publisher.status.success() {
        return Err(format!(
            "publisher failed: {}",
            String::from_utf8_lossy(&publisher.stderr)
        ));
    }
    let publish_line = String::from_utf8_lossy(&publisher.stdout).trim().to_owned();
    let deadline = Instant::now() + Duration::from_secs(300);
    let (unicast_received, last_us) = loop {
        let (mut received, mut last_us) = (0, 0);
        for (k, loadgen) in loadgens.iter_mut().enumerate() {
            let report = loadgen.report(&work.join(format!("unicast-{k}.json")))?;
            received += report["unicast_received"].as_u64().unwrap_or(0);
            last_us = last_us.max(report["unicast_last_us"].as_u64().unwrap_or(0));
        }
        if received as usize >= messages || Instant::now() > deadline {
            break (received, last_us);
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let unicast_s = last_us.saturating_sub(start_us) as f64 / 1e6;
    let unicast_rps = unicast_received as f64 / unicast_s;
    eprintln!(
        "bench: unicast {unicast_received}/{messages} in {unicast_s:.2} s = {unicast_rps:.0}/s; redis-benchmark {redis_rps:.0}/s"
    );
    Ok(Measurement {
        rss_before,
        rss_after,
        per_connection_kib,
        memory_samples: Vec::new(),
        cpu_samples: Vec::new(),
        subscribe_retries,
        open_s,
        cpu_broadcast_ms,
        phase_s,
        latencies,
        unicast_received,
        unicast_s,
        unicast_rps,
        redis_rps,
        publish_line,
    })
}

fn token_via_relay(release: &Path, data_dir: &Path) -> Result<String, String> {
    let output = Command::new(release.join("wardline-relay"))
        .args([
            "token",
            "--sub",
            "bench-admin",
            "--role",
            "admin",
            "--ttl",
            "2h",
            "--jwt-secret",
            SECRET,
            "--data-dir",
        ])
        .arg(data_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn clientbench(release: &Path, args: &[&str]) -> Result<Value, String> {
    eprintln!("bench: wardline-clientbench {}", args.join(" "));
    let output = Command::new(release.join("wardline-clientbench"))
        .args(args)
        .output()
        .map_err(|e| format!("wardline-clientbench: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "wardline-clientbench {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())
}

/// `cargo xtask bench client` → `bench/results/client.md` (how each number is taken: the first
/// lines of `bench/src/clientbench.rs`).
fn client() -> Result<(), String> {
    let rows = env_or("WARDLINE_BENCH_ROWS", 1_000_000).to_string();
    ensure_apt(&[("dbus-daemon", "dbus")])?;
    let release = build_release()?;
    let store = clientbench(&release, &["store", "--count", "200000"])?;
    let search = clientbench(&release, &["search", "--rows", &rows, "--queries", "400"])?;
    let alert = clientbench(&release, &["alert", "--count", "100"])?;
    let idle = clientbench(&release, &["idle", "--seconds", "30"])?;
    let num = |v: &Value, k: &str| v[k].as_f64().unwrap_or(f64::NAN);
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let date = utc_now_text()?;
    let rss_mib = num(&idle, "rss_kib") / 1024.0;
    let table = format!(
        "# Receiver benchmark\n\n\
         Measured by `cargo xtask bench client` on {date}: 2 cores shared by everything, release build. \
         How each number is taken is in `bench/src/clientbench.rs`.\n\n\
         | measure | result | target | |\n|---|---|---|---|\n\
         | store throughput (batches of 256, rows + cursor per transaction, {} notifications) | {:.0} notifications/s | ≥ 20,000/s | {} |\n\
         | full-text search over {} stored notifications ({} queries, 50 newest matches) p50 / p99 / max | {:.2} / {:.2} / {:.2} ms | p99 ≤ 20 ms | {} |\n\
         | relay publish → D-Bus `Notify` of a critical result ({} results) p50 / p99 / max | {:.1} / {:.1} / {:.1} ms | p99 ≤ 100 ms | {} |\n\
         | idle `wardline listen`, connected, over {} s: RSS / CPU | {rss_mib:.1} MiB / {} ms ({:.2} %) | ≤ 15 MiB, ~0 % | {} |\n\n\
         Filling the search inbox took {:.1} s.\n",
        store["count"],
        num(&store, "per_second"),
        met(num(&store, "per_second") >= 20_000.0),
        search["rows"],
        search["queries"],
        num(&search, "p50_ms"),
        num(&search, "p99_ms"),
        num(&search, "max_ms"),
        met(num(&search, "p99_ms") <= 20.0),
        alert["count"],
        num(&alert, "p50_ms"),
        num(&alert, "p99_ms"),
        num(&alert, "max_ms"),
        met(num(&alert, "p99_ms") <= 100.0),
        idle["seconds"],
        idle["cpu_ms"],
        num(&idle, "cpu_percent"),
        met(rss_mib <= 15.0 && num(&idle, "cpu_percent") < 1.0),
        num(&search, "fill_seconds"),
    );
    let out = workspace_root().join("bench/results/client.md");
    std::fs::write(&out, &table).map_err(|e| e.to_string())?;
    println!("{table}");
    println!("written to {}", out.display());
    Ok(())
}

/// `cargo xtask bench app` → `bench/results/app.md`: the release app with 100,000 stored notifications
/// (how: the first lines of `bench/src/clientbench.rs`).
fn app() -> Result<(), String> {
    ensure_apt(crate::deps::TAURI_PACKAGES)?;
    crate::deps::build_ui()?;
    let release = build_release()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::deps::run(Command::new(cargo).current_dir(workspace_root()).args([
        "build",
        "--release",
        "--quiet",
        "-p",
        "wardline-app",
    ]))?;
    let result = clientbench(&release, &["app", "--rows", "100000", "--seconds", "30"])?;
    let num = |k: &str| result[k].as_f64().unwrap_or(f64::NAN);
    let table = format!(
        "# App benchmark\n\n\
         Measured by `cargo xtask bench app` on {}: release build of the app under Xvfb (no GPU), driven over \
         WebDriver, inbox of {} notifications, 2 cores shared with the relay and the driver. How each number \
         is taken is in `bench/src/clientbench.rs`.\n\n\
         | measure | result |\n|---|---|\n\
         | launch to first painted inbox (WebDriver session start → first row) | {:.0} ms |\n\
         | search (the `inbox` command with full-text search, from the window) p50 / p99 | {:.1} / {:.1} ms |\n\
         | list refresh and scroll to the end (200 rows rendered) p50 / p99 | {:.1} / {:.1} ms |\n\
         | the window's commands (`status`, `inbox` of the 200 newest; {} calls) while the app catches up {} notifications published while its relay was away (published in {:.1} s; stored in {:.1} s): p50 / p99 / max (target p99 ≤ 50 ms) | {:.1} / {:.1} / {:.1} ms |\n\
         | idle over {} s: RSS summed over the app's {} processes (app, WebKit web and network; shared pages counted in each) / CPU | {:.1} MiB / {} ms ({:.2} %) |\n",
        utc_now_text()?,
        result["rows"],
        num("first_paint_ms"),
        num("search_p50_ms"),
        num("search_p99_ms"),
        num("list_p50_ms"),
        num("list_p99_ms"),
        result["burst_commands"],
        result["burst"],
        num("burst_published_s"),
        num("burst_stored_ms") / 1000.0,
        num("burst_p50_ms"),
        num("burst_p99_ms"),
        num("burst_max_ms"),
        result["idle_seconds"],
        result["processes"],
        num("rss_kib") / 1024.0,
        result["cpu_ms"],
        num("cpu_percent"),
    );
    let mut table = table;
    table.push_str("\nIdle, per process:\n\n| process | RSS | CPU |\n|---|---|---|\n");
    for process in result["per_process"].as_array().into_iter().flatten() {
        table.push_str(&format!(
            "| {} | {:.1} MiB | {} ms |\n",
            process["process"].as_str().unwrap_or("?"),
            process["rss_kib"].as_f64().unwrap_or(f64::NAN) / 1024.0,
            process["cpu_ms"],
        ));
    }
    table.push_str(
        "\nWithout a GPU the app turns WebKit's accelerated compositing off (`WEBKIT_DISABLE_COMPOSITING_MODE=1`, \
         see `src-tauri/src/lib.rs`). Measured before that change, the same run gave 2,220 ms of CPU in 20 s \
         (11 %), 2,060 ms of it in WebKitWebProcess, and 287 MiB for that process.\n",
    );
    let out = workspace_root().join("bench/results/app.md");
    std::fs::write(&out, &table).map_err(|e| e.to_string())?;
    println!("{table}");
    println!("written to {}", out.display());
    Ok(())
}
