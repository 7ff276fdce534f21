//! The real app under test: Xvfb, `tauri-driver` (WebDriver for Tauri, over WebKitWebDriver) and a
//! minimal W3C WebDriver client over HTTP.

use crate::{WAIT, binary, free_port};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};

/// A virtual X display, stopped on drop.
pub struct Display {
    _xvfb: Child,
    /// `:N`.
    pub name: String,
}

impl Display {
    /// Starts Xvfb on a free display number.
    pub async fn start() -> anyhow::Result<Display> {
        let mut xvfb = Command::new("Xvfb")
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
            .kill_on_drop(true)
            .spawn()
            .context("Xvfb is not installed (cargo xtask test installs xvfb)")?;
        let mut stdout = xvfb.stdout.take().expect("piped");
        let mut number = String::new();
        let mut byte = [0u8; 1];
        while tokio::time::timeout(WAIT, stdout.read_exact(&mut byte))
            .await
            .context("Xvfb did not start")?
            .is_ok()
        {
            if byte[0] == b'\n' {
                break;
            }
            number.push(byte[0] as char);
        }
        Ok(Display {
            _xvfb: xvfb,
            name: format!(":{}", number.trim()),
        })
    }
}

/// `tauri-driver` serving WebDriver on a free port, stopped on drop.
pub struct Driver {
    _process: Child,
    base: String,
    http: reqwest::Client,
}

/// One WebDriver session: the app's window.
pub struct Session {
    base: String,
    http: reqwest::Client,
}

impl Driver {
    /// Starts `tauri-driver` with the app's environment.
    pub async fn start(env: &[(&str, &str)]) -> anyhow::Result<Driver> {
        let port = free_port();
        let native = free_port();
        let process = Command::new("tauri-driver")
            .args(["--port", &port.to_string(), "--native-port", &native.to_string()])
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("tauri-driver is not installed (cargo xtask test installs it: cargo install tauri-driver --locked)")?;
        let driver = Driver {
            _process: process,
            base: format!("http://127.0.0.1:{port}"),
            // A WebDriver command that never answers fails the test instead of hanging it.
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        let deadline = tokio::time::Instant::now() + WAIT;
        while driver
            .http
            .get(format!("{}/status", driver.base))
            .send()
            .await
            .is_err()
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "tauri-driver did not answer"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(driver)
    }

    /// Opens the app (`wardline-app` next to the tests) in a new session.
    pub async fn session(&self) -> anyhow::Result<Session> {
        let application = binary("wardline-app");
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "wry",
            "tauri:options": {"application": application},
        }}});
        let reply: Value = self
            .http
            .post(format!("{}/session", self.base))
            .json(&capabilities)
            .send()
            .await
            .context("POST /session")?
            .json()
            .await?;
        let id = reply["value"]["sessionId"]
            .as_str()
            .with_context(|| format!("no session: {reply}"))?;
        Ok(Session {
            base: format!("{}/session/{id}", self.base),
            http: self.http.clone(),
        })
    }
}

impl Session {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let reply: Value = request
            .send()
            .await
            .with_context(|| format!("WebDriver {method} {path}"))?
            .json()
            .await?;
        if reply["value"]["error"].is_string() {
            bail!("WebDriver {path}: {}", reply["value"]);
        }
        Ok(reply["value"].clone())
    }

    /// The element matching a CSS selector, waiting for it.
    pub async fn find(&self, css: &str) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let found = self
                .call(
                    reqwest::Method::POST,
                    "/element",
                    Some(json!({"using": "css selector", "value": css})),
                )
                .await;
            if let Ok(element) = found
                && let Some(id) = element
                    .as_object()
                    .and_then(|o| o.values().next())
                    .and_then(Value::as_str)
            {
                return Ok(id.to_owned());
            }
            anyhow::ensure!(tokio::time::Instant::now() < deadline, "no element {css}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An element's text.
    pub async fn text(&self, element: &str) -> anyhow::Result<String> {
        Ok(self
            .call(
                reqwest::Method::GET,
                &format!("/element/{element}/text"),
                None,
            )
            .await?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// Waits until the element matching `css` has text containing `want`, for up to `within`.
    pub async fn wait_for_text(
        &self,
        css: &str,
        want: &str,
        within: Duration,
    ) -> anyhow::Result<String> {
        self.wait_until_text(css, |text| text.contains(want), within)
            .await
            .with_context(|| format!("{css} never said {want:?}"))
    }

    /// Waits until the text of the element matching `css` satisfies `want`, for up to `within`.
    pub async fn wait_until_text(
        &self,
        css: &str,
        want: impl Fn(&str) -> bool,
        within: Duration,
    ) -> anyhow::Result<String> {
        let deadline = tokio::time::Instant::now() + within;
        let mut last = None;
        loop {
            if let Ok(element) = self.find(css).await
                && let Ok(text) = self.text(&element).await
            {
                if want(&text) {
                    return Ok(text);
                }
                last = Some(text);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{css} still says {last:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Runs an async script in the window (its last argument is the callback to call with the result).
    pub async fn execute_async(&self, script: &str) -> anyhow::Result<Value> {
        self.call(
            reqwest::Method::POST,
            "/execute/async",
            Some(json!({"script": script, "args": []})),
        )
        .await
    }

    /// Clicks the element matching a CSS selector, waiting for it.
    pub async fn click_on(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        self.click(&element).await
    }

    /// Clicks an element.
    pub async fn click(&self, element: &str) -> anyhow::Result<()> {
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(json!({})),
        )
        .await
        .map(|_| ())
    }

    /// Saves a screenshot of the window as PNG.
    pub async fn screenshot(&self, path: &std::path::Path) -> anyhow::Result<()> {
        use base64::Engine;
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(data.as_str().unwrap_or_default())?;
        std::fs::create_dir_all(path.parent().expect("dir"))?;
        std::fs::write(path, png)?;
        Ok(())
    }

    /// Closes the app.
    pub async fn close(self) -> anyhow::Result<()> {
        self.call(reqwest::Method::DELETE, "", None)
            .await
            .map(|_| ())
    }
}
