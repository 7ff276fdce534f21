//! `cargo xtask demo`: the relay on its embedded broker, a demo publisher sending seed 000/001's
//! notification types (one critical lab result a minute) and the real receiver, `wardline listen`,
//! for a doctor and a patient, each with its own inbox. `--smoke` runs it fast and briefly and fails unless the view received the
//! notifications, including a critical one (the test command runs it so).
//!
//! Plain std networking on purpose: the demo publishes the way any HTTP client does.

use crate::deps::workspace_root;
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};
use wardline_protocol::message::describe;

const DOCTOR: &str = "dr-demo";
/// Set when the demo ends, so that its threads stop reporting the relay going away.
static STOPPING: AtomicBool = AtomicBool::new(false);
const PATIENT: &str = "pt-demo";

/// Kills a child (the relay, a receiver) when the demo ends, however it ends.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mint(
    relay: &std::path::Path,
    data_dir: &std::path::Path,
    sub: &str,
    role: &str,
) -> Result<String, String> {
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

pub(crate) fn http_post(
    address: &str,
    path: &str,
    token: &str,
    body: &Value,
) -> Result<Value, String> {
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

/// The seed notification types in turn; every `critical_every`-th one is a critical lab result.
fn demo_notification(n: u64, critical_every: u64) -> (String, Value) {
    let doctor = format!("doctor:{DOCTOR}:notifications");
    let patient = format!("patient:{PATIENT}:notifications");
    // The fifth is critical, then every `critical_every`-th: something loud early in the demo.
    if n % critical_every == 4 {
        return (
            doctor,
            json!({"type": "critical_lab_result", "urgent": true, "result_id": format!("lab-{n}"),
            "patient_name": "Bob Wilson", "test_type": "BMP", "requires_review": true}),
        );
    }
    match n % 4 {
        0 => (
            doctor,
            json!({"type": "appointment_requested", "appointment_id": format!("apt-{n}"),
            "patient_name": "Alice Johnson", "reason": "Annual checkup", "requested_time": "2026-12-01T10:00:00Z"}),
        ),
        1 => (
            patient.clone(),
            json!({"type": "appointment_status_changed", "appointment_id": format!("apt-{n}"),
            "new_status": "Confirmed", "scheduled_time": "2026-12-01T10:00:00Z"}),
        ),
        2 => (
            patient.clone(),
            json!({"type": "new_prescription", "prescription_id": format!("rx-{n}"),
            "medication": "Amoxicillin", "doctor_name": "Dr. Smith"}),
        ),
        _ => (
            patient,
            json!({"type": "lab_result_available", "result_id": format!("lab-{n}"),
            "test_type": "CBC", "reviewed": n % 8 == 3}),
        ),
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
    wardline: &std::path::Path,
    address: &str,
    user: &'static str,
    token: &str,
    db: &std::path::Path,
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

/// With a display, the app too, signed in as the demo doctor (the terminal keeps showing both
/// receivers); without one, says that the terminal view is all there is.
fn start_app(
    relay_path: &std::path::Path,
    address: &str,
    token: &str,
    data_dir: &std::path::Path,
) -> Result<Option<Relay>, String> {
    if std::env::var_os("DISPLAY").is_none() && std::env::var_os("WAYLAND_DISPLAY").is_none() {
        println!(
            "No display: the demo shows the receiver (the `wardline` CLI) in this terminal; the app needs a desktop.\n"
        );
        return Ok(None);
    }
    println!("Building the app (the first build takes several minutes)…");
    crate::deps::build_ui()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    crate::deps::run(Command::new(cargo).current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "wardline-app",
    ]))?;
    let app = Command::new(relay_path.with_file_name("wardline-app"))
        .env("WARDLINE_SERVER", format!("http://{address}"))
        .env("WARDLINE_USER", DOCTOR)
        .env("WARDLINE_TOKEN", token)
        .env("WARDLINE_DB", data_dir.join("app-inbox.sqlite3"))
        .spawn()
        .map_err(|e| format!("starting the app: {e}"))?;
    println!("The app is running in the tray and window, signed in as {DOCTOR}.\n");
    Ok(Some(Relay(app)))
}

/// Entry point of `cargo xtask demo [--smoke]`.
pub fn run(args: &[String]) -> Result<(), String> {
    let smoke = args.iter().any(|a| a == "--smoke");
    if let Some(other) = args.iter().find(|a| *a != "--smoke") {
        return Err(format!(
            "unexpected argument {other:?}: `cargo xtask demo [--smoke]`"
        ));
    }
    let relay_path = crate::deps::build_relay_and_cli(false)?.join("wardline-relay");
    let data_dir = if smoke {
        std::env::temp_dir().join(format!("wardline-demo-{}", std::process::id()))
    } else {
        workspace_root().join("wardline-data")
    };
    let listen = if smoke {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:8851"
    };
    let mut child = Command::new(&relay_path)
        .args(["serve", "--listen", listen, "--data-dir"])
        .arg(&data_dir)
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
    let stdout = child.stdout.take().expect("piped stdout");
    let relay = Relay(child);
    let mut first_line = String::new();
    BufReader::new(stdout)
        .read_line(&mut first_line)
        .map_err(|e| e.to_string())?;
    let address = first_line
        .trim()
        .strip_prefix("listening on http://")
        .ok_or_else(|| {
            format!("the relay did not start (it said {first_line:?}); is port 8851 in use?")
        })?
        .to_owned();
    let service = mint(&relay_path, &data_dir, "demo-backend", "service")?;
    let doctor = mint(&relay_path, &data_dir, DOCTOR, "doctor")?;
    let patient = mint(&relay_path, &data_dir, PATIENT, "patient")?;
    if !smoke {
        println!(
            "Wardline demo: relay on http://{address} (embedded broker, history in {})",
            data_dir.display()
        );
        println!("  doctor token ({DOCTOR}): {doctor}");
        println!("  patient token ({PATIENT}): {patient}");
        println!(
            "  the HealthHub client tutorial's WebSocket clients work as written: ws://{address}/ws/{DOCTOR}?token=<doctor token>"
        );
        println!("  Ctrl-C stops the demo\n");
    }
    let (seen_tx, seen) = mpsc::channel();
    let wardline = relay_path.with_file_name("wardline");
    let mut receivers = Vec::new();
    for (user, token) in [(DOCTOR, &doctor), (PATIENT, &patient)] {
        let db = data_dir.join(format!("{user}-inbox.sqlite3"));
        receivers.push(Relay(view(
            &wardline,
            &address,
            user,
            token,
            &db,
            seen_tx.clone(),
        )?));
    }
    drop(seen_tx);
    if !smoke {
        receivers.extend(start_app(&relay_path, &address, &doctor, &data_dir)?);
    }
    // One critical lab result a minute at the demo's pace (every 30th at 2 s); faster for --smoke.
    let (interval, critical_every) = if smoke {
        (Duration::from_millis(100), 5)
    } else {
        (Duration::from_secs(2), 30)
    };
    let publisher_address = address.clone();
    std::thread::spawn(move || {
        // The viewers subscribe within a moment; the first notifications would also be in history.
        std::thread::sleep(Duration::from_millis(300));
        for n in 0.. {
            let (channel, message) = demo_notification(n, critical_every);
            let body = json!({"channel": channel, "message": message});
            if let Err(e) = http_post(&publisher_address, "/v1/publish", &service, &body)
                && !STOPPING.load(Ordering::Relaxed)
            {
                eprintln!("xtask: publish failed: {e}");
            }
            std::thread::sleep(interval);
        }
    });
    if !smoke {
        while seen.recv().is_ok() {}
        drop(receivers);
        drop(relay);
        return Err("every receiver stopped".into());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let (mut total, mut critical, mut patients) = (0, 0, 0);
    while Instant::now() < deadline && (total < 8 || critical < 1 || patients < 2) {
        let Ok(item) = seen.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
            break;
        };
        total += 1;
        critical += usize::from(
            item.priority == "critical" && item.title.starts_with("Critical lab result"),
        );
        patients += usize::from(item.who == PATIENT);
    }
    STOPPING.store(true, Ordering::Relaxed);
    drop(receivers);
    drop(relay);
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
