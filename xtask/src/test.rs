//! `cargo xtask test`: everything CI checks, in the order that fails fastest.

use crate::deps::{
    TAURI_PACKAGES, build_ui, ensure_apt, ensure_python_websockets, run as run_command,
    workspace_root,
};
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

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
    run_steps()?;
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

fn run_steps() -> Result<(), String> {
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
    run_command(
        Command::new("npm")
            .current_dir(&ui)
            .args(["run", "--silent", "test"]),
    )?;
    // The built UI in real headless Chromium, Tauri's IPC mocked at the boundary.
    run_command(
        Command::new("npm")
            .current_dir(&ui)
            .args(["run", "--silent", "test:browser"]),
    )?;
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    // The end-to-end tests start the real binaries: build them first.
    run_command(cargo().args(["build", "--workspace", "--bins"]))?;
    // The packages' layout is checked by a test (tests/tests/package.rs), on the debug binaries.
    crate::package::run_package(&["--debug".to_owned()])?;
    crate::demo::run(&["--smoke".to_owned()])?;
    run_tests()
}

/// Runs `cargo test --workspace`, echoing its output, and ends with one summary line over all test
/// binaries (cargo's own last line is that of whichever binary ran last, often one with no tests).
fn run_tests() -> Result<(), String> {
    let mut child = cargo()
        .args(["test", "--workspace"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cargo test: {e}"))?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.map_err(|e| e.to_string())?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
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
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    println!("{passed} passed, {failed} failed");
    if status.success() {
        Ok(())
    } else {
        Err(format!("cargo test failed ({status})"))
    }
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
