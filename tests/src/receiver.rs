//! Running the receiver: the real `wardline` binary (a listener in the background, one-shot
//! commands), and waiting for the in-process receiver's events.

use crate::{WAIT, binary};
use anyhow::{Context, bail};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

/// `wardline listen --json` in the background, killed on drop.
pub struct Listener {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    stderr: Lines<BufReader<ChildStderr>>,
}

fn command(server: &str, user: &str, token: &str, db: &Path) -> Command {
    let mut command = Command::new(binary("wardline"));
    command
        .env("WARDLINE_SERVER", server)
        .env("WARDLINE_USER", user)
        .env("WARDLINE_TOKEN", token)
        .env("WARDLINE_DB", db)
        .env("WARDLINE_LOG", "warn")
        // Never the developer's own desktop: tests that check alerts give their own bus.
        .env(
            "DBUS_SESSION_BUS_ADDRESS",
            "unix:path=/nonexistent/wardline-test-bus",
        );
    command
}

impl Listener {
    /// Starts a listener and waits until it is connected (or reports that it stopped).
    pub async fn start(
        server: &str,
        user: &str,
        token: &str,
        db: &Path,
    ) -> anyhow::Result<Listener> {
        let mut listener = Listener::spawn(server, user, token, db)?;
        listener.wait_for_stderr("connected (websocket)").await?;
        Ok(listener)
    }

    /// Starts a listener without waiting.
    pub fn spawn(server: &str, user: &str, token: &str, db: &Path) -> anyhow::Result<Listener> {
        Listener::spawn_with(server, user, token, db, None, &[], &[])
    }

    /// Starts a listener whose OS alerts go to the D-Bus session bus at `bus`, and waits until it
    /// is connected.
    pub async fn start_with_bus(
        server: &str,
        user: &str,
        token: &str,
        db: &Path,
        bus: &str,
    ) -> anyhow::Result<Listener> {
        let mut listener = Listener::spawn_with(server, user, token, db, Some(bus), &[], &[])?;
        listener.wait_for_stderr("connected (websocket)").await?;
        Ok(listener)
    }

    /// Starts a listener with OS alerts on `bus`, extra `listen` flags and environment.
    pub fn spawn_with(
        server: &str,
        user: &str,
        token: &str,
        db: &Path,
        bus: Option<&str>,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Listener> {
        let mut command = command(server, user, token, db);
        if let Some(bus) = bus {
            command.env("DBUS_SESSION_BUS_ADDRESS", bus);
        }
        command.envs(env.iter().copied());
        let mut child = command
            .args(["listen", "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("starting wardline listen")?;
        let stdout = BufReader::new(child.stdout.take().expect("piped")).lines();
        let stderr = BufReader::new(child.stderr.take().expect("piped")).lines();
        Ok(Listener {
            child,
            stdout,
            stderr,
        })
    }

    /// Reads stderr until a line contains `text`; returns the lines read.
    pub async fn wait_for_stderr(&mut self, text: &str) -> anyhow::Result<Vec<String>> {
        let mut seen = Vec::new();
        loop {
            let line = tokio::time::timeout(WAIT * 4, self.stderr.next_line())
                .await
                .with_context(|| format!("no {text:?} on stderr; saw {seen:?}"))??
                .with_context(|| format!("listener exited before {text:?}; saw {seen:?}"))?;
            let found = line.contains(text);
            seen.push(line);
            if found {
                return Ok(seen);
            }
        }
    }

    /// The next `n` notifications printed on stdout.
    pub async fn notifications(&mut self, n: usize) -> anyhow::Result<Vec<Value>> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let line = tokio::time::timeout(WAIT * 4, self.stdout.next_line())
                .await
                .with_context(|| format!("only {} of {n} notifications printed", out.len()))??
                .context("listener exited")?;
            out.push(serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?);
        }
        Ok(out)
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Kills it with SIGKILL, as a crash or a power cut would.
    pub async fn kill9(mut self) {
        let _ = self.child.kill().await;
    }

    /// Sends SIGTERM and waits for the exit code.
    pub async fn stop(mut self) -> anyhow::Result<i32> {
        let pid = self.child.id().context("already exited")?;
        std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()?;
        Ok(tokio::time::timeout(WAIT, self.child.wait())
            .await??
            .code()
            .unwrap_or(-1))
    }

    /// Waits for the process to exit by itself; returns its code and what it said on stderr.
    pub async fn exit(mut self) -> anyhow::Result<(i32, String)> {
        let mut said = String::new();
        while let Ok(Some(line)) = tokio::time::timeout(WAIT, self.stderr.next_line()).await? {
            said.push_str(&line);
            said.push('\n');
        }
        let status = tokio::time::timeout(WAIT, self.child.wait()).await??;
        Ok((status.code().unwrap_or(-1), said))
    }
}

/// Runs a one-shot `wardline` command; returns (exit code, stdout, stderr).
pub async fn run(
    server: &str,
    user: &str,
    token: &str,
    db: &Path,
    args: &[&str],
) -> anyhow::Result<(i32, String, String)> {
    run_with(server, user, token, db, args, &[]).await
}

/// Runs a one-shot `wardline` command with extra environment; returns (exit code, stdout, stderr).
pub async fn run_with(
    server: &str,
    user: &str,
    token: &str,
    db: &Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(i32, String, String)> {
    let mut command = command(server, user, token, db);
    command.envs(env.iter().copied()).args(args);
    let output = tokio::time::timeout(WAIT, command.output()).await??;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// `wardline list --json --limit 10000`, parsed.
pub async fn list(server: &str, user: &str, token: &str, db: &Path) -> anyhow::Result<Vec<Value>> {
    let (code, stdout, stderr) = run(
        server,
        user,
        token,
        db,
        &["list", "--json", "--limit", "10000"],
    )
    .await?;
    if code != 0 {
        bail!("wardline list failed ({code}): {stderr}");
    }
    stdout
        .lines()
        .map(|l| Ok(serde_json::from_str(l)?))
        .collect()
}

/// A fresh inbox path in a temporary directory.
pub fn inbox_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("inbox.sqlite3")
}

/// An in-process receiver with its inbox and settings in `dir`, trusting the OS's authorities.
pub async fn open_receiver(dir: &tempfile::TempDir) -> wardline_client::Receiver {
    let place = wardline_client::Place::in_dir(dir.path()).with_inbox(inbox_path(dir));
    wardline_client::Wardline::new(place, wardline_client::Trust::new(None).unwrap())
        .open()
        .await
        .unwrap()
}

/// Waits (at most [`WAIT`]) for the first of the receiver's events that `wanted` accepts.
pub async fn wait_for_event(
    events: &mut tokio::sync::broadcast::Receiver<wardline_client::Event>,
    wanted: impl Fn(&wardline_client::Event) -> bool,
) {
    use tokio::sync::broadcast::error::RecvError;
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Ok(event) if wanted(&event) => return,
                Ok(_) | Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => panic!("the receiver's events ended"),
            }
        }
    })
    .await
    .expect("the event came");
}
