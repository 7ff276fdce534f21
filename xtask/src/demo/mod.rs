//! `cargo xtask demo [--keep-data]`: the relay on its embedded broker, a demo publisher sending the
//! notifications HealthHub's backends send (one critical lab result a minute) and the real receiver,
//! `wardline listen`, for a doctor and a patient, each with its own inbox; with a display, the app.
//! Each run starts from clean demo data unless `--keep-data`. SIGINT, SIGTERM or SIGHUP stop it and
//! every process it started. `--smoke` runs it fast and briefly and fails unless the view received
//! the notifications, including a critical one (the test command runs it so).
//!
//! Plain std networking on purpose: the demo publishes the way any HTTP client does.

pub(crate) mod children;
mod samples;

use crate::deps::workspace_root;
use children::OwnedChild;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wardline_protocol::message::describe;

const DOCTOR: &str = "dr-demo";
const PATIENT: &str = "pt-demo";
/// The demo relay's port, the one README and the HealthHub client tutorial's clients use.
const PORT: u16 = 8851;
/// Set when the demo is to stop (a signal) or stops, so that its threads stop publishing and stop
/// reporting the relay going away.
static STOPPING: AtomicBool = AtomicBool::new(false);

fn mint(relay: &Path, data_dir: &Path, sub: &str, role: &str) -> Result<String, String> {
    let output = Command::new(relay)
        .args([
            "token",
            "--sub",
            sub,
            "--role",
            role,
            "--ttl",
            "24h",
            "--data-dir",
        ])
        .arg(data_dir)
        .env_remove("WARDLINE_JWT_SECRET")
        .output()
        .map_err(|e| format!("minting a token: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "minting a token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn http_post(address: &str, path: &str, token: &str, body: &Value) -> Result<Value, String> {
    let body = body.to_string();
    let mut stream =
        TcpStream::connect(address).map_err(|e| format!("connecting to {address}: {e}"))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| e.to_string())?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let parsed: Value = serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()));
    if head.starts_with("HTTP/1.1 200") {
        Ok(parsed)
    } else {
        Err(format!("{}: {parsed}", head.lines().next().unwrap_or(head)))
    }
}

/// What the terminal view saw.
struct Seen {
    who: &'static str,
    priority: String,
    title: String,
}

/// Runs the real receiver (`wardline listen --json`) for one user and reports what it stores.
fn view(
    wardline: &Path,
    address: &str,
    user: &'static str,
    token: &str,
    db: &Path,
    seen: mpsc::Sender<Seen>,
) -> Result<Child, String> {
    let mut child = Command::new(wardline)
        .args(["listen", "--json"])
        .env("WARDLINE_SERVER", format!("http://{address}"))
        .env("WARDLINE_USER", user)
        .env("WARDLINE_TOKEN", token)
        .env("WARDLINE_DB", db)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting wardline listen: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if !STOPPING.load(Ordering::Relaxed) {
                println!("[{user}] {}", line.trim_start_matches("wardline: "));
            }
        }
    });
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let Ok(row) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let priority = row["priority"].as_str().unwrap_or("normal").to_owned();
            let (title, body) = describe(&row["message"]);
            let marker = if priority == "critical" {
                "‼ CRITICAL"
            } else {
                "  "
            };
            println!(
                "[{user}] {marker} {title} — {body}  (id {}, {})",
                row["id"].as_str().unwrap_or("?"),
                row["channel"].as_str().unwrap_or("?")
            );
            if seen
                .send(Seen {
                    who: user,
                    priority,
                    title,
                })
                .is_err()
            {
                return;
            }
        }
    });
    Ok(child)
}

/// With a display, builds the app (cargo's progress shown: the first build takes minutes) before
/// anything starts, so the notifications are not published to a black window; `false` without one.
fn build_app() -> Result<bool, String> {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        println!(
            "No display: the demo shows the receiver (the `wardline` CLI) in this terminal; the app needs a desktop.\n"
        );
        return Ok(false);
    }
    println!("Building the app (the first build takes several minutes)…");
    crate::deps::build_ui()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = Command::new(cargo)
        .current_dir(workspace_root())
        .args(["build", "-p", "wardline-app"])
        .spawn()
        .map_err(|e| format!("building the app: {e}"))?;
    let mut build = OwnedChild::new(build);
    loop {
        if STOPPING.load(Ordering::Relaxed) {
            return Err("stopped while building the app".into());
        }
        match build.exit_status() {
            Some(status) if status.success() => return Ok(true),
            Some(status) => return Err(format!("building the app failed ({status})")),
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// Starts the built app, signed in as the demo doctor (the terminal keeps showing both receivers).
fn start_app(
    bin_dir: &Path,
    address: &str,
    token: &str,
    data_dir: &Path,
) -> Result<OwnedChild, String> {
    // The terminal shows the receivers; the app's own chatter (GTK, WebKit, its log) goes to a file.
    let log_path = data_dir.join("app.log");
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("creating {}: {e}", log_path.display()))?;
    let app = Command::new(bin_dir.join("wardline-app"))
        .env("WARDLINE_SERVER", format!("http://{address}"))
        .env("WARDLINE_USER", DOCTOR)
        .env("WARDLINE_TOKEN", token)
        .env("WARDLINE_DB", data_dir.join("app-inbox.sqlite3"))
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("starting the app: {e}"))?;
    println!(
        "The app is running in the tray and window, signed in as {DOCTOR} (its log: {}).\n",
        log_path.display()
    );
    Ok(OwnedChild::new(app))
}

/// Fails, naming the holder, when the demo's port is taken (most often by an earlier demo).
fn check_port_free(port: u16) -> Result<(), String> {
    match std::net::TcpListener::bind(("127.0.0.1", port)) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            Err(match children::port_holder(port) {
                Some(holder) => format!(
                    "port {port} is taken by {holder}: stop it (an earlier demo? `kill {}`) and run the demo again",
                    holder.pid
                ),
                None => format!(
                    "port {port} is taken by another process (`ss -ltnp 'sport = :{port}'` names it): stop it and run the demo again"
                ),
            })
        }
        Err(e) => Err(format!("checking port {port}: {e}")),
    }
}

/// Whether a signal asked the demo to stop. A terminal's Ctrl-C reaches the children too, so one of
/// them ending may come a moment before the flag: waits that moment before answering.
fn stopped_by_signal() -> bool {
    std::thread::sleep(Duration::from_millis(300));
    STOPPING.load(Ordering::Relaxed)
}

struct Options {
    smoke: bool,
    keep_data: bool,
}

fn parse(args: &[String]) -> Result<Options, String> {
    let mut options = Options {
        smoke: false,
        keep_data: false,
    };
    for arg in args {
        match arg.as_str() {
            "--smoke" => options.smoke = true,
            "--keep-data" => options.keep_data = true,
            other => {
                return Err(format!(
                    "unexpected argument {other:?}: `cargo xtask demo [--keep-data] [--smoke]`"
                ));
            }
        }
    }
    Ok(options)
}

/// Entry point of `cargo xtask demo [--keep-data] [--smoke]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let options = parse(args)?;
    if options.smoke {
        return run_smoke();
    }
    // SIGINT, SIGTERM and SIGHUP end the main loop below, whose end stops every child.
    ctrlc::set_handler(|| STOPPING.store(true, Ordering::Relaxed))
        .map_err(|e| format!("installing the signal handler: {e}"))?;
    run_interactive(options.keep_data)
}

/// Says that the demo stopped, once everything it started has (it is dropped after them).
struct SaysStopped;

impl Drop for SaysStopped {
    fn drop(&mut self) {
        println!("demo stopped");
    }
}

/// The demo as a person runs it: until a signal, on port 8851, data in `./wardline-data`.
fn run_interactive(keep_data: bool) -> Result<(), String> {
    let bin_dir = crate::deps::build_relay_and_cli(false)?;
    let with_app = build_app()?;
    check_port_free(PORT)?;
    let data_dir = workspace_root().join("wardline-data");
    if !keep_data && data_dir.exists() {
        std::fs::remove_dir_all(&data_dir)
            .map_err(|e| format!("removing the last demo's {}: {e}", data_dir.display()))?;
    }
    // Declared before the demo, so dropped after it, whichever way this function returns.
    let _says_stopped = SaysStopped;
    let mut demo = start(&bin_dir, &data_dir, &format!("127.0.0.1:{PORT}"))?;
    println!(
        "Wardline demo: relay on http://{} (embedded broker, history in {}{})",
        demo.address,
        data_dir.display(),
        if keep_data {
            ", kept from earlier runs"
        } else {
            ""
        }
    );
    println!("  doctor token ({DOCTOR}): {}", demo.doctor_token);
    println!("  patient token ({PATIENT}): {}", demo.patient_token);
    println!(
        "  the HealthHub client tutorial's WebSocket clients work as written: ws://{}/ws/{DOCTOR}?token=<doctor token>",
        demo.address
    );
    println!("  Ctrl-C stops the demo\n");
    if with_app {
        let app = start_app(&bin_dir, &demo.address, &demo.doctor_token, &data_dir)?;
        demo.receivers.push(app);
    }
    demo.publish(Duration::from_secs(2), 30);
    // Until a signal; whichever way it ends, `demo` then `_says_stopped` are dropped on return.
    loop {
        if STOPPING.load(Ordering::Relaxed) {
            break Ok(());
        }
        if let Some(status) = demo.relay.exit_status() {
            break if stopped_by_signal() {
                Ok(())
            } else {
                Err(format!("the relay stopped ({status})"))
            };
        }
        match demo.seen.recv_timeout(Duration::from_millis(200)) {
            Ok(_) | Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                break if stopped_by_signal() {
                    Ok(())
                } else {
                    Err("every receiver stopped".into())
                };
            }
        }
    }
}

/// The demo fast and briefly, on a port of its own and a temporary data directory: fails unless
/// the view received the notifications, including a critical one.
fn run_smoke() -> Result<(), String> {
    let bin_dir = crate::deps::build_relay_and_cli(false)?;
    let data_dir = std::env::temp_dir().join(format!("wardline-demo-{}", std::process::id()));
    let demo = start(&bin_dir, &data_dir, "127.0.0.1:0")?;
    demo.publish(Duration::from_millis(100), 5);
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut total, mut critical, mut patients) = (0, 0, 0);
    while Instant::now() < deadline && (total < 8 || critical < 1 || patients < 2) {
        let Ok(item) = demo
            .seen
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            break;
        };
        total += 1;
        critical += usize::from(
            item.priority == "critical" && item.title.starts_with("Critical lab result"),
        );
        patients += usize::from(item.who == PATIENT);
    }
    drop(demo);
    let _ = std::fs::remove_dir_all(&data_dir);
    if total >= 8 && critical >= 1 && patients >= 2 {
        println!("demo smoke run: the view received {total} notifications, {critical} critical");
        Ok(())
    } else {
        Err(format!(
            "demo smoke run: the view received {total} notifications ({critical} critical, {patients} for the patient)"
        ))
    }
}

/// A running demo: the relay, the receivers (and the app), what they saw. Dropping it stops them,
/// the receivers first.
struct Demo {
    receivers: Vec<OwnedChild>,
    relay: OwnedChild,
    address: String,
    service_token: String,
    doctor_token: String,
    patient_token: String,
    seen: mpsc::Receiver<Seen>,
}

/// Starts the relay on `listen` with its data in `data_dir`, mints the tokens and starts a receiver
/// for the doctor and one for the patient.
fn start(bin_dir: &Path, data_dir: &Path, listen: &str) -> Result<Demo, String> {
    let relay_path = bin_dir.join("wardline-relay");
    let child = Command::new(&relay_path)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(data_dir)
        .env_remove("REDIS_URL")
        .env_remove("REDIS_HOST")
        .env_remove("WARDLINE_REDIS_URL")
        .env_remove("WARDLINE_JWT_SECRET")
        .env(
            "WARDLINE_LOG",
            std::env::var("WARDLINE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", relay_path.display()))?;
    let mut relay = OwnedChild::new(child);
    let stdout = relay.child_mut().stdout.take().expect("piped stdout");
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .map_err(|e| e.to_string())?;
    let address = first_line
        .trim()
        .strip_prefix("listening on http://")
        .ok_or_else(|| format!("the relay did not start (it said {first_line:?})"))?
        .to_owned();
    let service_token = mint(&relay_path, data_dir, "demo-backend", "service")?;
    let doctor_token = mint(&relay_path, data_dir, DOCTOR, "doctor")?;
    let patient_token = mint(&relay_path, data_dir, PATIENT, "patient")?;
    let (seen_tx, seen) = mpsc::channel();
    let wardline = bin_dir.join("wardline");
    let mut receivers = Vec::new();
    for (user, token) in [(DOCTOR, &doctor_token), (PATIENT, &patient_token)] {
        let db = data_dir.join(format!("{user}-inbox.sqlite3"));
        let child = view(&wardline, &address, user, token, &db, seen_tx.clone())?;
        receivers.push(OwnedChild::new(child));
    }
    Ok(Demo {
        receivers,
        relay,
        address,
        service_token,
        doctor_token,
        patient_token,
        seen,
    })
}

impl Demo {
    /// Publishes a notification every `interval`, every `critical_every`-th a critical lab result,
    /// from a thread of its own until the demo stops.
    fn publish(&self, interval: Duration, critical_every: u64) {
        let address = self.address.clone();
        let service_token = self.service_token.clone();
        std::thread::spawn(move || {
            // The viewers subscribe within a moment; the first notifications would also be in history.
            std::thread::sleep(Duration::from_millis(300));
            for n in 0.. {
                if STOPPING.load(Ordering::Relaxed) {
                    return;
                }
                let (channel, message) = samples::notification(n, critical_every, DOCTOR, PATIENT);
                let body = json!({"channel": channel, "message": message});
                if let Err(e) = http_post(&address, "/v1/publish", &service_token, &body)
                    && !STOPPING.load(Ordering::Relaxed)
                {
                    eprintln!("xtask: publish failed: {e}");
                }
                std::thread::sleep(interval);
            }
        });
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        // Its threads stop publishing and stop reporting what they see of the end.
        STOPPING.store(true, Ordering::Relaxed);
        // The receivers first: the relay going away first would have them report a lost connection.
        self.receivers.clear();
    }
}
