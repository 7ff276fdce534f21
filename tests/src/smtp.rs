//! A real SMTP server for the escalation emails: `aiosmtpd` (Debian's python3-aiosmtpd, installed by
//! `cargo xtask test`) on an ephemeral port, delivering every message it accepts into a Maildir.

use crate::{WAIT, free_port};
use anyhow::Context;
use std::path::PathBuf;
use std::time::Duration;
use tokio::process::{Child, Command};

/// `aiosmtpd` on `127.0.0.1:<port>`, killed on drop.
pub struct SmtpServer {
    _child: Child,
    /// Its port.
    pub port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmtpServer {
    /// Starts it and waits until it accepts connections.
    pub async fn start() -> anyhow::Result<SmtpServer> {
        SmtpServer::start_on(free_port()).await
    }

    /// Starts it on `port` (one a relay was already told of) and waits until it accepts
    /// connections.
    pub async fn start_on(port: u16) -> anyhow::Result<SmtpServer> {
        let dir = tempfile::tempdir()?;
        let maildir = dir.path().join("Maildir");
        let child = Command::new("aiosmtpd")
            .args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("aiosmtpd is not installed (cargo xtask test installs python3-aiosmtpd)")?;
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "aiosmtpd did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(SmtpServer {
            _child: child,
            port,
            maildir,
            _dir: dir,
        })
    }

    /// `smtp://127.0.0.1:<port>`, for `--smtp-url`.
    pub fn url(&self) -> String {
        format!("smtp://127.0.0.1:{}", self.port)
    }

    /// Every message delivered so far, as its raw text.
    pub fn messages(&self) -> Vec<String> {
        let mut messages = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir.join(sub)) else {
                continue;
            };
            for entry in entries.flatten() {
                if let Ok(text) = std::fs::read_to_string(entry.path()) {
                    messages.push(text);
                }
            }
        }
        messages
    }

    /// Waits until at least `n` messages were delivered; returns them.
    pub async fn wait_for_messages(
        &self,
        n: usize,
        within: Duration,
    ) -> anyhow::Result<Vec<String>> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let messages = self.messages();
            if messages.len() >= n {
                return Ok(messages);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {} of {n} emails arrived",
                messages.len()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}
