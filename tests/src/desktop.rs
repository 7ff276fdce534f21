//! Real desktop parts for the receiver's tests: a private D-Bus session bus (`dbus-daemon`) and a
//! notification server on it that records every `Notify` call and can invoke an action, as a
//! person clicking "Acknowledge" would.

use anyhow::Context;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use zbus::OwnedVariant;
use zbus::object_server::SignalEmitter;

/// A private session bus, stopped on drop.
pub struct SessionBus {
    _daemon: Child,
    /// Its address, for `DBUS_SESSION_BUS_ADDRESS`.
    pub address: String,
}

impl SessionBus {
    /// Starts `dbus-daemon --session` and reads its address.
    pub async fn start() -> anyhow::Result<SessionBus> {
        let mut daemon = Command::new("dbus-daemon")
            .args(["--session", "--nofork", "--print-address=1"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("dbus-daemon is not installed (cargo xtask test installs the dbus package)")?;
        crate::show_stderr_on_failure(daemon.stderr.take().expect("piped"), "dbus-daemon");
        let mut lines = BufReader::new(daemon.stdout.take().expect("piped")).lines();
        let address = tokio::time::timeout(crate::WAIT, lines.next_line())
            .await
            .context("dbus-daemon printed no address")??
            .context("dbus-daemon exited")?;
        Ok(SessionBus {
            _daemon: daemon,
            address,
        })
    }
}

/// One `Notify` call, as the notification server received it.
#[derive(Debug, Clone, PartialEq)]
pub struct NotifyCall {
    /// The id the server gave it.
    pub id: u32,
    /// The application name.
    pub app_name: String,
    /// The summary.
    pub summary: String,
    /// The body.
    pub body: String,
    /// Action keys and labels, alternating.
    pub actions: Vec<String>,
    /// The `urgency` hint (0 low, 1 normal, 2 critical).
    pub urgency: Option<u8>,
    /// The `sound-name` hint.
    pub sound: Option<String>,
    /// Milliseconds; -1 the server's default, 0 never.
    pub expire_timeout: i32,
    /// The alert this one replaces (0: none).
    pub replaces_id: u32,
}

/// When alerts were withdrawn (`CloseNotification`), by id.
type Closed = Arc<Mutex<Vec<(u32, std::time::Instant)>>>;

struct Recorder {
    calls: Arc<Mutex<Vec<NotifyCall>>>,
    closed: Closed,
}

#[zbus::interface(name = "org.freedesktop.Notifications")]
impl Recorder {
    #[allow(clippy::too_many_arguments)]
    async fn notify(
        &self,
        app_name: &str,
        replaces_id: u32,
        _app_icon: &str,
        summary: &str,
        body: &str,
        actions: Vec<String>,
        hints: HashMap<String, OwnedVariant>,
        expire_timeout: i32,
    ) -> u32 {
        let mut calls = self.calls.lock().unwrap();
        let id = if replaces_id > 0 {
            replaces_id
        } else {
            calls.len() as u32 + 1
        };
        calls.push(NotifyCall {
            id,
            app_name: app_name.to_owned(),
            summary: summary.to_owned(),
            body: body.to_owned(),
            actions,
            urgency: hints
                .get("urgency")
                .and_then(|v| v.downcast_ref::<u8>().ok()),
            sound: hints
                .get("sound-name")
                .and_then(|v| v.downcast_ref::<String>().ok()),
            expire_timeout,
            replaces_id,
        });
        id
    }

    fn get_capabilities(&self) -> Vec<String> {
        ["actions", "body", "persistence", "sound"]
            .map(String::from)
            .to_vec()
    }

    fn get_server_information(&self) -> (String, String, String, String) {
        (
            "wardline-test-recorder".into(),
            "wardline".into(),
            "1".into(),
            "1.2".into(),
        )
    }

    fn close_notification(&self, id: u32) {
        self.closed
            .lock()
            .unwrap()
            .push((id, std::time::Instant::now()));
    }

    #[zbus(signal)]
    async fn action_invoked(
        emitter: &SignalEmitter<'_>,
        id: u32,
        action_key: &str,
    ) -> zbus::Result<()>;

    #[zbus(signal)]
    async fn notification_closed(
        emitter: &SignalEmitter<'_>,
        id: u32,
        reason: u32,
    ) -> zbus::Result<()>;
}

const PATH: &str = "/org/freedesktop/Notifications";

/// A notification server on a bus that records what it is asked to show.
pub struct NotificationServer {
    connection: zbus::Connection,
    calls: Arc<Mutex<Vec<NotifyCall>>>,
    closed: Closed,
}

impl NotificationServer {
    /// Serves `org.freedesktop.Notifications` on the bus at `address`.
    pub async fn start(address: &str) -> anyhow::Result<NotificationServer> {
        let calls = Arc::new(Mutex::new(Vec::new()));
        let closed = Arc::new(Mutex::new(Vec::new()));
        let connection = zbus::connection::Builder::address(address)
            .name("org.freedesktop.Notifications")
            .serve_at(
                PATH,
                Recorder {
                    calls: calls.clone(),
                    closed: closed.clone(),
                },
            )
            .build()
            .await?;
        Ok(NotificationServer {
            connection,
            calls,
            closed,
        })
    }

    /// The `CloseNotification` calls so far (an alert withdrawn), with when each came.
    pub fn closed(&self) -> Vec<(u32, std::time::Instant)> {
        self.closed.lock().unwrap().clone()
    }

    /// Waits until alert `id` is withdrawn; answers when it was.
    pub async fn wait_for_close(
        &self,
        id: u32,
        within: std::time::Duration,
    ) -> anyhow::Result<std::time::Instant> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some((_, at)) = self.closed().into_iter().find(|(closed, _)| *closed == id) {
                return Ok(at);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "alert {id} was not withdrawn within {within:?}; closed: {:?}",
                self.closed()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<NotifyCall> {
        self.calls.lock().unwrap().clone()
    }

    /// Waits until at least `n` calls arrived.
    pub async fn wait_for_calls(&self, n: usize) -> anyhow::Result<Vec<NotifyCall>> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let calls = self.calls();
            if calls.len() >= n {
                return Ok(calls);
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "only {} Notify calls: {calls:?}",
                calls.len()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Waits until a Notify call whose summary starts with `summary` was made; fails after
    /// [`crate::WAIT`] naming what it waited for and the calls made.
    pub async fn wait_for_call(&self, summary: &str) -> anyhow::Result<NotifyCall> {
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        loop {
            let calls = self.calls();
            if let Some(call) = calls.iter().find(|c| c.summary.starts_with(summary)) {
                return Ok(call.clone());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "no Notify call whose summary starts with {summary:?}; the calls made: {calls:?}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Emits `ActionInvoked`, as when the person clicks the action.
    pub async fn invoke_action(&self, id: u32, action: &str) -> anyhow::Result<()> {
        let iface = self
            .connection
            .object_server()
            .interface::<_, Recorder>(PATH)
            .await?;
        Recorder::action_invoked(iface.signal_emitter(), id, action).await?;
        Ok(())
    }
}

/// `gnome-keyring-daemon` on a private bus, unlocked with a known password, with its files in a
/// temporary home: the real Secret Service a Linux desktop offers.
pub struct Keyring {
    _daemon: Child,
    _home: tempfile::TempDir,
}

impl Keyring {
    /// Starts it on the bus at `address` and waits until it owns `org.freedesktop.secrets`.
    pub async fn start(address: &str) -> anyhow::Result<Keyring> {
        let home = tempfile::tempdir()?;
        for dir in ["data", "run", "config"] {
            std::fs::create_dir_all(home.path().join(dir))?;
        }
        let mut daemon = Command::new("gnome-keyring-daemon")
            .args(["--foreground", "--unlock", "--components=secrets"])
            .env("DBUS_SESSION_BUS_ADDRESS", address)
            .env("HOME", home.path())
            .env("XDG_DATA_HOME", home.path().join("data"))
            .env("XDG_RUNTIME_DIR", home.path().join("run"))
            .env("XDG_CONFIG_HOME", home.path().join("config"))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context(
                "gnome-keyring-daemon is not installed (cargo xtask test installs gnome-keyring)",
            )?;
        {
            use tokio::io::AsyncWriteExt;
            let mut stdin = daemon.stdin.take().expect("piped");
            stdin.write_all(b"test-password").await?;
        }
        // It answers before it owns the name; calling it too early would start a second, locked one.
        let connection = zbus::connection::Builder::address(address).build().await?;
        let bus = zbus::fdo::DBusProxy::new(&connection).await?;
        let deadline = tokio::time::Instant::now() + crate::WAIT;
        while !bus
            .name_has_owner("org.freedesktop.secrets".try_into()?)
            .await?
        {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "gnome-keyring-daemon never owned org.freedesktop.secrets"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(Keyring {
            _daemon: daemon,
            _home: home,
        })
    }
}

/// The OS keychain's D-Bus API (`org.freedesktop.secrets`) that never answers, as a keychain
/// waiting to be unlocked looks to a caller: it counts the sessions it was asked to open.
pub struct HangingKeychain {
    _connection: zbus::Connection,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

struct NeverAnswers {
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

#[zbus::interface(name = "org.freedesktop.Secret.Service")]
impl NeverAnswers {
    /// The first call of every secret-service client; answered never.
    async fn open_session(
        &self,
        _algorithm: &str,
        _input: OwnedVariant,
    ) -> (OwnedVariant, zbus::OwnedObjectPath) {
        self.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::future::pending().await
    }
}

impl HangingKeychain {
    /// Owns `org.freedesktop.secrets` on the bus at `address` (so no real keychain is started).
    pub async fn start(address: &str) -> anyhow::Result<HangingKeychain> {
        let asked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let connection = zbus::connection::Builder::address(address)
            .name("org.freedesktop.secrets")
            .serve_at(
                "/org/freedesktop/secrets",
                NeverAnswers {
                    asked: asked.clone(),
                },
            )
            .build()
            .await?;
        Ok(HangingKeychain {
            _connection: connection,
            asked,
        })
    }

    /// How many sessions it was asked to open.
    pub fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}
