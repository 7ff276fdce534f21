//! A real SMTP server for the escalation emails: `aiosmtpd` (Debian's python3-aiosmtpd, installed by
//! `cargo xtask test`) on an ephemeral port, delivering every message it accepts into a Maildir;
//! plain, slow (`tests/smtp/slow_server.py`), or over TLS with a certificate from a private CA and a
//! login (`tests/smtp/tls_server.py`).

use crate::proxy::IssuedCertificate;
use crate::{WAIT, free_port, show_stderr_on_failure};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::{Child, Command};

/// How a TLS SMTP server speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpTls {
    /// Plain first, then STARTTLS before anything else (port 587's way).
    StartTls,
    /// TLS from the first byte (port 465's way).
    Smtps,
}

/// `aiosmtpd` on `127.0.0.1:<port>`, killed on drop.
pub struct SmtpServer {
    _child: Child,
    /// Its port.
    pub port: u16,
    url: String,
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
        let mut command = Command::new("aiosmtpd");
        command
            .args(["-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir);
        let url = format!("smtp://127.0.0.1:{port}");
        SmtpServer::spawn(command, port, url, maildir, dir).await
    }

    /// Starts one that takes `delay` over each message before accepting it
    /// (`tests/smtp/slow_server.py`), and waits until it accepts connections.
    pub async fn start_slow(delay: Duration) -> anyhow::Result<SmtpServer> {
        let dir = tempfile::tempdir()?;
        let maildir = dir.path().join("Maildir");
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/slow_server.py");
        let mut command = Command::new(aiosmtpd_python()?);
        command
            .arg(script)
            .args(["--port", &port.to_string()])
            .args(["--delay", &delay.as_secs_f64().to_string()])
            .arg("--maildir")
            .arg(&maildir);
        let url = format!("smtp://127.0.0.1:{port}");
        SmtpServer::spawn(command, port, url, maildir, dir).await
    }

    /// Starts it over TLS (`tls`) with `certificate`, accepting mail only after the login `user`,
    /// `password`; waits until it accepts connections.
    pub async fn start_tls(
        tls: SmtpTls,
        certificate: &IssuedCertificate,
        user: &str,
        password: &str,
    ) -> anyhow::Result<SmtpServer> {
        let dir = tempfile::tempdir()?;
        let maildir = dir.path().join("Maildir");
        let cert = dir.path().join("smtp-cert.pem");
        let key = dir.path().join("smtp-key.pem");
        std::fs::write(&cert, &certificate.cert_pem)?;
        std::fs::write(&key, &certificate.key_pem)?;
        let port = free_port();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/tls_server.py");
        let mut command = Command::new(aiosmtpd_python()?);
        command
            .arg(script)
            .args(["--port", &port.to_string()])
            .args([
                "--mode",
                match tls {
                    SmtpTls::StartTls => "starttls",
                    SmtpTls::Smtps => "smtps",
                },
            ])
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key)
            .args(["--user", user, "--password", password])
            .arg("--maildir")
            .arg(&maildir);
        let url = match tls {
            SmtpTls::StartTls => format!("smtp://{user}:{password}@127.0.0.1:{port}?tls=required"),
            SmtpTls::Smtps => format!("smtps://{user}:{password}@127.0.0.1:{port}"),
        };
        SmtpServer::spawn(command, port, url, maildir, dir).await
    }

    async fn spawn(
        mut command: Command,
        port: u16,
        url: String,
        maildir: PathBuf,
        dir: tempfile::TempDir,
    ) -> anyhow::Result<SmtpServer> {
        let mut child = command
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("aiosmtpd is not installed (cargo xtask test installs python3-aiosmtpd)")?;
        show_stderr_on_failure(child.stderr.take().expect("piped"), "smtp");
        let deadline = tokio::time::Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            anyhow::ensure!(
                child.try_wait()?.is_none(),
                "the SMTP server on {port} exited (its stderr is above)"
            );
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the SMTP server did not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(SmtpServer {
            _child: child,
            port,
            url,
            maildir,
            _dir: dir,
        })
    }

    /// Its URL for `--smtp-url`, with the login when it asks for one.
    pub fn url(&self) -> String {
        self.url.clone()
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

/// The Python interpreter aiosmtpd is installed for (named in the `aiosmtpd` script's first line):
/// the `python3` first on the PATH may be another one, without aiosmtpd.
fn aiosmtpd_python() -> anyhow::Result<PathBuf> {
    let script = which("aiosmtpd")
        .context("aiosmtpd is not installed (cargo xtask test installs python3-aiosmtpd)")?;
    let text = std::fs::read_to_string(&script)?;
    let words: Vec<&str> = text
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("#!"))
        .map(|line| line.split_whitespace().collect())
        .unwrap_or_default();
    match words.as_slice() {
        [env, program, ..] if env.ends_with("/env") => {
            which(program).with_context(|| format!("{program} is not on the PATH"))
        }
        [interpreter, ..] => Ok(PathBuf::from(interpreter)),
        [] => anyhow::bail!("{} has no #! line", script.display()),
    }
}

/// Where `program` is on the PATH.
fn which(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
}
