//! The test command's check of `cargo xtask demo` as a person runs it: started twice on its real
//! port, the second time on a display of its own (so with the app), stopped by a signal to its own
//! process (as `kill` or a service manager sends it, not the
//! terminal's Ctrl-C to the whole process group), it must leave no relay or receiver behind and the
//! port free; a demo started while another runs must name the process holding the port; and what it
//! prints, piped, must hold no traceback, no ERROR line and no colour codes.

use crate::demo::children::OwnedChild;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const PORT: u16 = 8851;

/// A demo started as `cargo xtask demo` runs it (without a display: no app), its output lines
/// gathered as they come.
struct RunningDemo {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

/// A desktop of the check's own for the demo's app: Xvfb and a D-Bus session bus, stopped when
/// dropped.
struct Desktop {
    _xvfb: OwnedChild,
    _bus: OwnedChild,
    display: String,
    bus_address: String,
}

impl Desktop {
    fn start() -> Result<Self, String> {
        let mut xvfb = OwnedChild::new(
            Command::new("Xvfb")
                .args([
                    "-displayfd",
                    "1",
                    "-screen",
                    "0",
                    "1280x800x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting Xvfb: {e}"))?,
        );
        let number = first_line(xvfb.child_mut().stdout.take().expect("piped"), "Xvfb")?;
        let mut bus = OwnedChild::new(
            Command::new("dbus-daemon")
                .args(["--session", "--nofork", "--print-address=1"])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("starting dbus-daemon: {e}"))?,
        );
        let bus_address = first_line(bus.child_mut().stdout.take().expect("piped"), "dbus-daemon")?;
        Ok(Self {
            _xvfb: xvfb,
            _bus: bus,
            display: format!(":{number}"),
            bus_address,
        })
    }
}

/// The first line a program prints (its display number, its address), within 10 s.
fn first_line(pipe: impl Read + Send + 'static, program: &str) -> Result<String, String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(pipe).read_line(&mut line);
        let _ = tx.send(line);
    });
    match rx.recv_timeout(Duration::from_secs(10)) {
        Ok(line) if !line.trim().is_empty() => Ok(line.trim().to_owned()),
        _ => Err(format!("{program} did not start")),
    }
}

impl RunningDemo {
    /// The demo without a display (the receivers only), or on `desktop` (the app too).
    fn start(desktop: Option<&Desktop>) -> Result<Self, String> {
        let mut command = Command::new(xtask()?);
        command
            .arg("demo")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY");
        if let Some(desktop) = desktop {
            command
                .env("DISPLAY", &desktop.display)
                .env("DBUS_SESSION_BUS_ADDRESS", &desktop.bus_address);
        }
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting the demo: {e}"))?;
        let (tx, lines) = mpsc::channel();
        forward_lines(child.stdout.take().expect("piped"), tx.clone());
        forward_lines(child.stderr.take().expect("piped"), tx);
        Ok(Self {
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Reads output until a line satisfies `wanted`, for at most `within`; fails with what was
    /// seen otherwise.
    fn wait_for(
        &mut self,
        what: &str,
        within: Duration,
        wanted: impl Fn(&str) -> bool,
    ) -> Result<(), String> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    let found = wanted(&line);
                    self.seen.push(line);
                    if found {
                        return Ok(());
                    }
                }
                Err(_) => {
                    return Err(format!(
                        "the demo never printed {what}; it printed:\n{}",
                        self.seen.join("\n")
                    ));
                }
            }
        }
    }

    /// Sends `signal` to the demo's process alone and waits for it to end; returns its output.
    fn stop_with(mut self, signal: &str) -> Result<Vec<String>, String> {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args([signal, &pid]).status();
        if !sent.is_ok_and(|s| s.success()) {
            return Err(format!("kill {signal} {pid} failed"));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                return Err(format!("the demo did not end within 20 s of {signal}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The pipes close when the last process holding them ends.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        if !status.success() {
            return Err(format!(
                "the demo ended with {status} after {signal}; it printed:\n{}",
                self.seen.join("\n")
            ));
        }
        if !self.seen.iter().any(|line| line == "demo stopped") {
            return Err(format!(
                "the demo did not say \"demo stopped\"; it printed:\n{}",
                self.seen.join("\n")
            ));
        }
        Ok(self.seen)
    }
}

fn forward_lines(pipe: impl Read + Send + 'static, lines: mpsc::Sender<String>) {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                return;
            }
        }
    });
}

/// The xtask binary as the workspace build left it: this process's own file may have been replaced
/// by that build since it started.
fn xtask() -> Result<std::path::PathBuf, String> {
    Ok(crate::deps::target_dir()?.join("debug").join("xtask"))
}

/// The processes whose parent is `pid`, with their names, read from `/proc`.
fn children_of(pid: u32) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let child: u32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{child}/stat")).ok()?;
            // `pid (comm) state ppid …`: the name may hold spaces, so split after its last ')'.
            let (name_part, rest) = stat.rsplit_once(')')?;
            let name = name_part.split_once('(')?.1.to_owned();
            let parent: u32 = rest.split_whitespace().nth(1)?.parse().ok()?;
            (parent == pid).then_some((child, name))
        })
        .collect()
}

fn is_running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    })
}

/// Whether a healthy run must not print `line`: a traceback, an ERROR line, a colour code.
pub fn is_alarming(line: &str) -> bool {
    line.contains("Traceback (most recent call last)")
        || line.contains("ERROR")
        || line.contains('\u{1b}')
}

/// The lines a healthy run must not print, escaped for showing.
pub fn alarming_lines(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter(|line| is_alarming(line))
        .map(|line| line.escape_debug().to_string())
        .collect()
}

/// One demo run stopped by `signal`: its relay and receivers (and app, on a desktop) must be gone
/// and the port free.
fn run_and_stop(signal: &str, desktop: Option<&Desktop>) -> Result<Vec<String>, String> {
    let mut demo = RunningDemo::start(desktop)?;
    // With a display the demo first builds the app, which on a cold build directory takes minutes
    // (a build of its own: `-p wardline-app` alone unifies other features than the workspace's).
    demo.wait_for("that its relay started", BUILD_TIME, |line| {
        line.starts_with("Wardline demo: relay on")
    })?;
    demo.wait_for("a critical lab result for the doctor", RUN_TIME, |line| {
        line.starts_with("[dr-demo]") && line.contains("CRITICAL")
    })?;
    demo.wait_for("a notification for the patient", RUN_TIME, |line| {
        line.starts_with("[pt-demo]") && line.contains("(id ")
    })?;
    let children = children_of(demo.child.id());
    let owned: Vec<&(u32, String)> = children
        .iter()
        .filter(|(_, name)| name.starts_with("wardline"))
        .collect();
    let expected = if desktop.is_some() { 4 } else { 3 };
    if owned.len() < expected
        || (desktop.is_some() && !owned.iter().any(|(_, name)| name == "wardline-app"))
    {
        return Err(format!(
            "expected the demo to run a relay, two receivers{}, found its children {children:?}",
            if desktop.is_some() {
                " and the app"
            } else {
                ""
            }
        ));
    }
    // A second demo while this one runs is refused, naming the relay that holds the port.
    let relay = owned
        .iter()
        .find(|(_, name)| name == "wardline-relay")
        .ok_or_else(|| format!("no wardline-relay among {children:?}"))?;
    let refused = Command::new(xtask()?)
        .arg("demo")
        .env_remove("DISPLAY")
        .env_remove("WAYLAND_DISPLAY")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&refused.stderr);
    let expected = format!("port {PORT} is taken by wardline-relay (pid {})", relay.0);
    if refused.status.success() || !stderr.contains(&expected) {
        return Err(format!(
            "a second demo should fail with {expected:?}; it ended {} saying:\n{stderr}",
            refused.status
        ));
    }
    let output = demo.stop_with(signal)?;
    let left: Vec<&&(u32, String)> = owned.iter().filter(|(pid, _)| is_running(*pid)).collect();
    if !left.is_empty() {
        return Err(format!(
            "after {signal} to the demo, still running: {left:?}"
        ));
    }
    std::net::TcpListener::bind(("127.0.0.1", PORT))
        .map_err(|e| format!("after {signal} to the demo, port {PORT} is not free: {e}"))?;
    Ok(output)
}

/// How long the demo may take to build what it runs before its relay starts.
const BUILD_TIME: Duration = Duration::from_secs(30 * 60);

/// How long the running demo may take to print what a person waits for.
const RUN_TIME: Duration = Duration::from_secs(120);

/// Entry point, from `cargo xtask test`.
pub fn run() -> Result<(), String> {
    let mut output = run_and_stop("-TERM", None)?;
    // The port is free for the next demo, which starts, this time with a display and so the app;
    // SIGHUP (a closed terminal) stops it and the app too.
    let desktop = Desktop::start()?;
    output.extend(run_and_stop("-HUP", Some(&desktop))?);
    let alarming = alarming_lines(&output);
    if !alarming.is_empty() {
        return Err(format!(
            "the demo's output on a healthy run should hold no traceback, ERROR or colour code:\n{}",
            alarming.join("\n")
        ));
    }
    println!(
        "demo check: stopped by SIGTERM, then with the app by SIGHUP; nothing left running, port {PORT} free"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tracebacks_error_lines_and_colour_codes_are_alarming_and_warnings_are_not() {
        let lines = [
            "Traceback (most recent call last):",
            "2026-12-01 07:23:23.031: ERROR CORE sqlcipher_page_cipher: hmac check failed",
            "\u{1b}[32mok\u{1b}[0m",
            "[dr-demo] 2026-12-01T07:38:43Z  WARN wardline_client::alert: OS alerts are unavailable",
            "test an_error_is_reported ... ok",
        ]
        .map(String::from);
        let alarming = alarming_lines(&lines);
        assert_eq!(alarming.len(), 3, "{alarming:?}");
        assert!(
            alarming[2].contains("\\u{1b}"),
            "shown escaped: {}",
            alarming[2]
        );
    }
}
