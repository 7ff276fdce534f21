//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::deps::{
    TAURI_PACKAGES, build_ui, ensure_apt, ensure_python_websockets, run as run_command,
    without_colour, workspace_root,
};
use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Lines of the run's output that a healthy run must not print (tracebacks, ERROR lines, colour
/// codes), gathered while they are echoed.
type Alarming = Arc<Mutex<Vec<String>>>;

fn cargo() -> Command {
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command.current_dir(workspace_root());
    command
}

/// What `git status` says of the checkout (`None` outside a git checkout).
fn checkout_status() -> Option<String> {
    let output = Command::new("git")
        .current_dir(workspace_root())
        .args(["status", "--porcelain", "--untracked-files=all"])
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Installs the test dependencies, then runs fmt, clippy, the demo smoke run and every test, and
/// checks that the run left the checkout as it found it (no tracked file rewritten, nothing new
/// outside `.gitignore`).
pub fn run_all() -> Result<(), String> {
    let before = checkout_status();
    let alarming = Alarming::default();
    run_steps(&alarming)?;
    let alarming = std::mem::take(&mut *alarming.lock().expect("not poisoned"));
    if !alarming.is_empty() {
        return Err(format!(
            "every test passed, but a healthy run should print no traceback, ERROR line or colour code; it printed:\n{}",
            alarming.join("\n")
        ));
    }
    let after = checkout_status();
    if before != after {
        return Err(format!(
            "the test run changed the checkout; `git status` before:\n{}\nafter:\n{}",
            before.unwrap_or_default(),
            after.unwrap_or_default()
        ));
    }
    Ok(())
}

fn run_steps(alarming: &Alarming) -> Result<(), String> {
    // Real parts for the end-to-end tests: Redis, a D-Bus bus for OS alerts, a keychain; and what
    // the Tauri app builds with.
    ensure_apt(&[
        ("redis-server", "redis-server"),
        ("redis-cli", "redis-tools"),
        ("dbus-daemon", "dbus"),
        ("gnome-keyring-daemon", "gnome-keyring"),
        // A real SMTP server for the escalation emails.
        ("aiosmtpd", "python3-aiosmtpd"),
        // A relay whose clock is off (libfaketime), for the device's clock check.
        ("faketime", "faketime"),
        // Plain SQLite, to check that the inbox is unreadable without its key.
        ("sqlite3", "sqlite3"),
    ])?;
    ensure_apt(TAURI_PACKAGES)?;
    ensure_apt(&[("chromium", "chromium")])?;
    // The packages' test: dpkg-deb builds and reads them, systemd-analyze verifies the unit.
    ensure_apt(&[("dpkg-deb", "dpkg"), ("systemd-analyze", "systemd")])?;
    // WebDriver for the app's end-to-end test (it drives WebKitWebDriver from webkit2gtk-driver).
    if !crate::deps::have("tauri-driver") {
        run_command(cargo().args(["install", "tauri-driver", "--locked"]))?;
    }
    ensure_python_websockets()?;
    // The app embeds ui/dist: build it (and run the UI's unit tests) before any cargo step.
    build_ui()?;
    let ui = workspace_root().join("ui");
    run_watched(
        Command::new("npm")
            .current_dir(&ui)
            .args(["run", "--silent", "test"]),
        alarming,
    )?;
    // The built UI in real headless Chromium, Tauri's IPC mocked at the boundary.
    run_watched(
        Command::new("npm")
            .current_dir(&ui)
            .args(["run", "--silent", "test:browser"]),
        alarming,
    )?;
    run_watched(cargo().args(["fmt", "--all", "--check"]), alarming)?;
    run_watched(
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
        alarming,
    )?;
    // The end-to-end tests start the real binaries: build them first.
    run_watched(cargo().args(["build", "--workspace", "--bins"]), alarming)?;
    // The packages' layout is checked by a test (tests/tests/package.rs), on the debug binaries.
    crate::package::run_package(&["--debug".to_owned()])?;
    crate::demo::run(&["--smoke".to_owned()])?;
    crate::demo_check::run()?;
    run_tests(alarming)
}

/// Echoes a pipe line by line to `out`, keeping the lines a healthy run must not print.
fn echo_watched(
    pipe: impl Read + Send + 'static,
    mut out: impl Write + Send + 'static,
    alarming: &Alarming,
    mut on_line: impl FnMut(&str) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    let alarming = Arc::clone(alarming);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(pipe);
        let mut line = Vec::new();
        while reader.read_until(b'\n', &mut line).is_ok_and(|n| n > 0) {
            let _ = out.write_all(&line);
            let _ = out.flush();
            let text = String::from_utf8_lossy(&line);
            let text = text.trim_end_matches(['\r', '\n']);
            on_line(text);
            if crate::demo_check::is_alarming(text) {
                let shown = text.escape_debug().to_string();
                alarming.lock().expect("not poisoned").push(shown);
            }
            line.clear();
        }
    })
}

/// Runs a command with its output echoed and watched; fails if the command fails. Its output is
/// a pipe, so it is asked not to colour it.
fn run_watched(command: &mut Command, alarming: &Alarming) -> Result<(), String> {
    let description = format!("{command:?}");
    let mut child = without_colour(command)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{description}: {e}"))?;
    let out = echo_watched(
        child.stdout.take().expect("piped"),
        std::io::stdout(),
        alarming,
        |_| {},
    );
    let err = echo_watched(
        child.stderr.take().expect("piped"),
        std::io::stderr(),
        alarming,
        |_| {},
    );
    let status = child.wait().map_err(|e| format!("{description}: {e}"))?;
    let _ = (out.join(), err.join());
    if status.success() {
        Ok(())
    } else {
        Err(format!("{description} failed with {status}"))
    }
}

/// Longest one test binary may run; past it the binary is stopped and the run fails, naming its
/// tests that never finished. The slowest binary (the escalation tests) takes about 2.5 minutes
/// on a 2-core CI machine. More than a minute, so that libtest has named every test still running
/// ("has been running for over 60 seconds") by then.
const TEST_BINARY_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `cargo test --workspace`, its output echoed and watched, and ends with one summary line
/// over all test binaries (cargo's own last line is that of whichever binary ran last, often one
/// with no tests).
fn run_tests(alarming: &Alarming) -> Result<(), String> {
    let (passed, failed, outcome) = cargo_test(
        cargo().args(["test", "--workspace"]),
        TEST_BINARY_DEADLINE,
        alarming,
        (std::io::stdout(), std::io::stderr()),
    );
    println!("{passed} passed, {failed} failed");
    outcome
}

/// Runs `command` (a `cargo test`) with every test binary under `deadline` (`timeout`, as cargo's
/// runner), its output echoed to `stdout` and `stderr` and watched; answers the tests passed and
/// failed, and the outcome. A binary past its deadline fails the run with the names of the tests it
/// never finished.
fn cargo_test(
    command: &mut Command,
    deadline: Duration,
    alarming: &Alarming,
    (stdout, stderr): (impl Write + Send + 'static, impl Write + Send + 'static),
) -> (u64, u64, Result<(), String>) {
    let runner = format!(
        "target.'cfg(unix)'.runner = ['timeout', '--kill-after=10s', '{}s']",
        deadline.as_secs()
    );
    let child = without_colour(command)
        .args(["--config", &runner])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => return (0, 0, Err(format!("cargo test: {e}"))),
    };
    let counts = Arc::new(Mutex::new((0u64, 0u64)));
    let unfinished = Arc::new(Mutex::new(BTreeSet::new()));
    let (counter, running) = (Arc::clone(&counts), Arc::clone(&unfinished));
    let out = echo_watched(
        child.stdout.take().expect("piped"),
        stdout,
        alarming,
        move |line| {
            if let Some(rest) = line.strip_prefix("test result: ") {
                let mut counts = counter.lock().expect("not poisoned");
                counts.0 += result_count(rest, " passed");
                counts.1 += result_count(rest, " failed");
            }
            follow_running(line, &mut running.lock().expect("not poisoned"));
        },
    );
    let err = echo_watched(
        child.stderr.take().expect("piped"),
        stderr,
        alarming,
        |_| {},
    );
    let status = match child.wait() {
        Ok(status) => status,
        Err(e) => return (0, 0, Err(format!("cargo test: {e}"))),
    };
    let _ = (out.join(), err.join());
    let (passed, failed) = *counts.lock().expect("not poisoned");
    let unfinished = std::mem::take(&mut *unfinished.lock().expect("not poisoned"));
    let outcome = if status.success() {
        Ok(())
    } else if !unfinished.is_empty() {
        let names: Vec<String> = unfinished.into_iter().collect();
        Err(format!(
            "cargo test failed ({status}): its test binary was stopped at its {} s deadline with \
             these tests never finished: {}",
            deadline.as_secs(),
            names.join(", ")
        ))
    } else {
        Err(format!("cargo test failed ({status})"))
    };
    (passed, failed, outcome)
}

/// Follows libtest's lines: a test named as running for over a minute is added to `running`, and
/// taken out when its result (`test NAME ... ok`) comes.
fn follow_running(line: &str, running: &mut BTreeSet<String>) {
    let Some(rest) = line.strip_prefix("test ") else {
        return;
    };
    if let Some(name) = rest.strip_suffix(" has been running for over 60 seconds") {
        running.insert(name.to_owned());
    } else if let Some((name, _)) = rest.split_once(" ... ") {
        running.remove(name);
    }
}

/// The number before `word` in a `test result:` line (`ok. 12 passed; 0 failed; …`).
fn result_count(rest: &str, word: &str) -> u64 {
    rest.split(';')
        .find_map(|part| {
            part.trim()
                .strip_suffix(word)?
                .trim()
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .unwrap_or(0)
}

/// Entry point of `cargo xtask test`.
pub fn run(args: &[String]) -> Result<(), String> {
    if let Some(extra) = args.first() {
        return Err(format!(
            "unexpected argument {extra:?}: `cargo xtask test` takes none"
        ));
    }
    run_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tests_named_as_running_stay_unfinished_until_their_result() {
        let mut running = BTreeSet::new();
        for line in [
            "test slow has been running for over 60 seconds",
            "test stuck has been running for over 60 seconds",
            "test slow ... ok",
            "test result: ok. 1 passed; 0 failed",
        ] {
            follow_running(line, &mut running);
        }
        assert_eq!(running.into_iter().collect::<Vec<_>>(), ["stuck"]);
    }

    /// A crate of its own with one test that ends and one that never does, run as the test
    /// command runs the workspace's tests with a 70 s deadline: the run fails within it (plus
    /// the 10 s `timeout` allows before killing) and names the test that never ended.
    #[test]
    fn a_test_that_never_ends_fails_the_run_with_its_name() {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(
            dir.path().join("Cargo.toml"),
            "[package]\nname = \"hangs\"\nversion = \"0.0.0\"\nedition = \"2024\"\n\n[workspace]\n",
        )
        .expect("written");
        std::fs::create_dir(dir.path().join("src")).expect("made");
        std::fs::write(
            dir.path().join("src/lib.rs"),
            "//! A test that never ends.\n#[test]\nfn ends() {}\n\
             #[test]\nfn waits_forever() { loop { std::thread::park(); } }\n",
        )
        .expect("written");
        let started = std::time::Instant::now();
        let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
        command.current_dir(dir.path()).arg("test");
        let (_, _, outcome) = cargo_test(
            &mut command,
            Duration::from_secs(70),
            &Alarming::default(),
            (std::io::sink(), std::io::sink()),
        );
        let error = outcome.expect_err("a test that never ends fails the run");
        assert!(error.ends_with("never finished: waits_forever"), "{error}");
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "{:?}",
            started.elapsed()
        );
    }
}
