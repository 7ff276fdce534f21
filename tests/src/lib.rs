//! Harness for Wardline's end-to-end tests: real `redis-server` processes on ephemeral ports, real
//! `wardline-relay` processes on port 0, real WebSocket/SSE/HTTP clients.
//!
//! Waiting is always for an event (a line on stdout, a frame, a port answering) with a deadline,
//! never a fixed sleep. A missing `redis-server` is a failure: `cargo xtask test` installs it.

pub mod client;
pub mod desktop;
pub mod proxy;
pub mod receiver;
pub mod small_disk;
pub mod smtp;
pub mod static_server;
pub mod tray;
pub mod webdriver;

use anyhow::{Context, bail};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The secret every test relay signs with.
pub const SECRET: &str = "end-to-end-test-secret-0123456789";

/// How long any single wait may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(15);

/// A workspace binary: next to the running executable (a benchmark in `<target>/release`) or one
/// level up (a test in `<target>/debug/deps`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let here = exe.parent().expect("exe dir");
    [here.join(name), here.parent().map(|p| p.join(name)).unwrap_or_default()]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is missing next to {}: run `cargo build --workspace --bins` first (cargo xtask test does)", exe.display()))
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A token signed with [`SECRET`]; `ttl_s` may be negative for an expired one.
pub fn token(sub: &str, role: &str, channels: &[&str], ttl_s: i64) -> String {
    let mut claims = json!({"sub": sub, "role": role, "exp": (unix_now() as i64 + ttl_s)});
    if !channels.is_empty() {
        claims["channels"] = json!(channels);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A token signed with another secret.
pub fn forged_token(sub: &str, role: &str) -> String {
    let claims = json!({"sub": sub, "role": role, "exp": unix_now() + 600});
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(b"not-the-relay-secret-0123456789"),
    )
    .unwrap()
}

/// A real `redis-server` on an ephemeral port, killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    /// Its port.
    pub port: u16,
    dir: tempfile::TempDir,
    /// `--replicaof` or `--sentinel` arguments.
    role: Vec<String>,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub async fn start() -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            role: Vec::new(),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts one with extra `redis-server` arguments (they come after, and override, the
    /// defaults: `--appendonly yes`, say).
    pub async fn start_with(args: &[&str]) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            role: args.iter().map(|a| a.to_string()).collect(),
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Sends a signal (`STOP`, `CONT`, …) to the server.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(Child::id)
            .context("not running")?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// Starts a replica of `master`.
    pub async fn start_replica_of(master: &RedisServer) -> anyhow::Result<RedisServer> {
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            role: vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                master.port.to_string(),
            ],
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts a Redis Sentinel watching `master` under the name `wardline`, deciding alone (quorum
    /// 1) that it is down after 1 s of silence.
    pub async fn start_sentinel_of(master: &RedisServer) -> anyhow::Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        // Sentinel rewrites its configuration file, so it gets one of its own.
        let config = dir.path().join("sentinel.conf");
        std::fs::write(
            &config,
            format!(
                "sentinel monitor wardline 127.0.0.1 {} 1\n\
                 sentinel down-after-milliseconds wardline 1000\n\
                 sentinel failover-timeout wardline 5000\n",
                master.port
            ),
        )?;
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir,
            role: vec![config.display().to_string(), "--sentinel".into()],
        };
        server.spawn().await?;
        Ok(server)
    }

    /// Starts one that also speaks TLS on another port, with the certificate and key in these PEM
    /// files (clients are not asked for certificates); returns it and that port.
    pub async fn start_tls(
        cert: &Path,
        key: &Path,
        ca: &Path,
    ) -> anyhow::Result<(RedisServer, u16)> {
        let tls_port = free_port();
        let path = |p: &Path| p.display().to_string();
        let mut server = RedisServer {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir()?,
            role: vec![
                "--tls-port".into(),
                tls_port.to_string(),
                "--tls-cert-file".into(),
                path(cert),
                "--tls-key-file".into(),
                path(key),
                "--tls-ca-cert-file".into(),
                path(ca),
                "--tls-auth-clients".into(),
                "no".into(),
            ],
        };
        server.spawn().await?;
        Ok((server, tls_port))
    }

    /// `redis://127.0.0.1:<port>/0`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        // A configuration file (Sentinel's) must come first.
        let (file, role) = match self.role.first() {
            Some(first) if !first.starts_with("--") => (vec![first.clone()], &self.role[1..]),
            _ => (Vec::new(), &self.role[..]),
        };
        let child = Command::new("redis-server")
            .args(&file)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(role)
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("redis-server is not installed (cargo xtask test installs it: apt-get install redis-server)")?;
        self.child = Some(child);
        let client = redis::Client::open(self.url())?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await
                && redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok()
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!("redis-server on port {} did not answer", self.port);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills it (SIGKILL): everything it held is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts it again on the same port.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await;
        self.spawn().await
    }

    /// A connection for test commands (PUBLISH, XLEN, …).
    pub async fn connection(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

/// Which broker a relay runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// The embedded one (SQLite in the data dir).
    Embedded,
    /// Redis.
    Redis,
}

/// `wardline-relay` run by a wrapper that executes it, so that the child is the relay itself
/// (`ip netns exec NAME`, `prlimit --nofile=N:N --`, `env VAR=…`): for [`Relay::launch_command`].
pub fn wrapped_relay_command(wrapper: &[&str]) -> Command {
    let mut command = Command::new(wrapper[0]);
    command.args(&wrapper[1..]).arg(binary("wardline-relay"));
    command
}

/// A real `wardline-relay serve` process, killed on drop.
pub struct Relay {
    child: Child,
    /// `http://127.0.0.1:<port>` (`https://` when it serves TLS).
    pub base: String,
    /// `http://127.0.0.1:<port>/metrics`, on the metrics listener.
    pub metrics_url: String,
    /// The HTTP client `publish` and `get` use (trusting the relay's CA when it serves TLS).
    http: reqwest::Client,
    /// `127.0.0.1:<port>`.
    pub address: String,
    /// Its data dir.
    pub data_dir: PathBuf,
    _owned_dir: Option<tempfile::TempDir>,
}

impl Relay {
    /// Starts a relay on the embedded broker with extra flags.
    pub async fn embedded(extra: &[&str]) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        Relay::start_in(&path, None, extra, Some(dir)).await
    }

    /// Starts a relay on a Redis server with extra flags.
    pub async fn on_redis(redis: &RedisServer, extra: &[&str]) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        Relay::start_in(&path, Some(&redis.url()), extra, Some(dir)).await
    }

    /// Starts a relay on the given broker (the Redis server must be given for [`BrokerKind::Redis`]).
    pub async fn start(
        kind: BrokerKind,
        redis: Option<&RedisServer>,
        extra: &[&str],
    ) -> anyhow::Result<Relay> {
        match kind {
            BrokerKind::Embedded => Relay::embedded(extra).await,
            BrokerKind::Redis => Relay::on_redis(redis.expect("a Redis server"), extra).await,
        }
    }

    /// Starts a relay on the embedded broker whose process may hold at most `open_files` file
    /// descriptors (soft and hard limit, set with `prlimit`).
    pub async fn embedded_with_open_files(
        open_files: u64,
        extra: &[&str],
    ) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        let limit = format!("--nofile={open_files}:{open_files}");
        let command = wrapped_relay_command(&["prlimit", &limit, "--"]);
        Relay::launch_command(command, &path, None, extra, true, Some(dir)).await
    }

    /// Starts a relay on a Redis server logging with `filter` (`WARDLINE_LOG`).
    pub async fn on_redis_logging(
        redis: &RedisServer,
        filter: &str,
        extra: &[&str],
    ) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        let mut command = Command::new(binary("wardline-relay"));
        command.env("WARDLINE_LOG", filter);
        Relay::launch_command(command, &path, Some(&redis.url()), extra, true, Some(dir)).await
    }

    /// Starts a relay with this data dir (kept by the caller, so a restart finds its history).
    pub async fn start_in(
        data_dir: &Path,
        redis_url: Option<&str>,
        extra: &[&str],
        owned_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Relay> {
        Relay::launch(data_dir, redis_url, extra, true, owned_dir).await
    }

    /// Starts a relay; without `with_secret` it resolves its secret itself (the data dir's).
    pub async fn launch(
        data_dir: &Path,
        redis_url: Option<&str>,
        extra: &[&str],
        with_secret: bool,
        owned_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Relay> {
        let command = Command::new(binary("wardline-relay"));
        Relay::launch_command(command, data_dir, redis_url, extra, with_secret, owned_dir).await
    }

    /// Starts a relay with a command made by [`wrapped_relay_command`] (the arguments follow it).
    pub async fn launch_command(
        mut command: Command,
        data_dir: &Path,
        redis_url: Option<&str>,
        extra: &[&str],
        with_secret: bool,
        owned_dir: Option<tempfile::TempDir>,
    ) -> anyhow::Result<Relay> {
        let listen = if extra.contains(&"--listen") {
            &[][..]
        } else {
            &["--listen", "127.0.0.1:0"][..]
        };
        // Many relays run at once in tests: each its own metrics port.
        let metrics_listen = if extra.contains(&"--metrics-listen") {
            &[][..]
        } else {
            &["--metrics-listen", "127.0.0.1:0"][..]
        };
        command
            .arg("serve")
            .args(listen)
            .args(metrics_listen)
            .arg("--data-dir")
            .arg(data_dir)
            .env_remove("WARDLINE_JWT_SECRET");
        if with_secret {
            command.args(["--jwt-secret", SECRET]);
        }
        // Tests open many connections from one address; a test of the limit sets its own.
        if !extra.iter().any(|a| a.starts_with("--connections-per-ip")) {
            command.args([
                "--connections-per-ip-burst",
                "1000",
                "--connections-per-ip-per-s",
                "1000",
            ]);
        }
        if !extra.contains(&"--max-connections-per-ip") {
            command.args(["--max-connections-per-ip", "100000"]);
        }
        if command
            .as_std()
            .get_envs()
            .all(|(key, _)| key != "WARDLINE_LOG")
        {
            command.env("WARDLINE_LOG", "wardline_relay=debug,info");
        }
        command
            .args(extra)
            .env_remove("REDIS_URL")
            .env_remove("REDIS_HOST")
            .env_remove("WARDLINE_REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(
                data_dir.join("relay.log"),
            )?))
            .kill_on_drop(true);
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
        let mut child = command.spawn().context("starting wardline-relay")?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("the relay did not report its address in time")??
            .with_context(|| {
                format!(
                    "the relay exited: {}",
                    std::fs::read_to_string(data_dir.join("relay.log")).unwrap_or_default()
                )
            })?;
        let (scheme, address) = line
            .strip_prefix("listening on ")
            .and_then(|url| url.split_once("://"))
            .with_context(|| format!("unexpected first line {line:?}"))?;
        let metrics_url = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .context("the relay did not report its metrics address in time")??
            .and_then(|line| line.strip_prefix("metrics on ").map(str::to_owned))
            .context("no metrics address")?;
        Ok(Relay {
            metrics_url,
            child,
            base: format!("{scheme}://{address}"),
            http: reqwest::Client::new(),
            address: address.to_owned(),
            data_dir: data_dir.to_owned(),
            _owned_dir: owned_dir,
        })
    }

    /// A relay on the embedded broker serving https:// and wss:// with `certificate` (its files
    /// written into the data dir: `tls-cert.pem`, `tls-key.pem`); `publish` and `get` trust `ca`.
    pub async fn embedded_tls(
        ca: &proxy::PrivateCa,
        certificate: &proxy::IssuedCertificate,
        extra: &[&str],
    ) -> anyhow::Result<Relay> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().to_owned();
        let (cert, key) = (path.join("tls-cert.pem"), path.join("tls-key.pem"));
        std::fs::write(&cert, &certificate.cert_pem)?;
        std::fs::write(&key, &certificate.key_pem)?;
        let mut flags = vec!["--tls-cert", cert.to_str().context("path")?];
        flags.extend(["--tls-key", key.to_str().context("path")?]);
        flags.extend(extra);
        let mut relay = Relay::start_in(&path, None, &flags, Some(dir)).await?;
        relay.http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes())?)
            .build()?;
        Ok(relay)
    }

    /// `ws://127.0.0.1:<port><path>` (`wss://` when it serves TLS).
    pub fn ws_url(&self, path: &str) -> String {
        let scheme = if self.base.starts_with("https") {
            "wss"
        } else {
            "ws"
        };
        format!("{scheme}://{}{path}", self.address)
    }

    /// The relay's Prometheus text, from its metrics listener.
    pub async fn metrics(&self) -> String {
        reqwest::get(&self.metrics_url)
            .await
            .expect("the metrics listener answers")
            .text()
            .await
            .unwrap_or_default()
    }

    /// The value of one sample of the relay's metrics (`name` with its labels, as written:
    /// `wardline_replay_size_count`, `wardline_errors_total{code="40005"}`); `None` if absent.
    pub async fn metric(&self, name: &str) -> Option<f64> {
        self.metrics().await.lines().find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
    }

    /// Sends a signal (`HUP`, `STOP`, …) to the relay process.
    pub fn signal(&self, name: &str) -> anyhow::Result<()> {
        let pid = self.child.id().context("already exited")?;
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{name} failed");
        Ok(())
    }

    /// The relay process's id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// The relay's resident memory now, in bytes (`VmRSS`).
    pub fn resident_bytes(&self) -> anyhow::Result<u64> {
        let pid = self.child.id().context("already exited")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .context("no VmRSS")?
            .trim()
            .parse::<u64>()?;
        Ok(kib * 1024)
    }

    /// The relay's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("relay.log")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the process to exit; returns whether it exited successfully.
    pub async fn terminate(mut self) -> anyhow::Result<bool> {
        self.signal("TERM")?;
        let exit = tokio::time::timeout(WAIT, self.child.wait()).await??;
        Ok(exit.success())
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// `POST /v1/publish` with a service token; returns the HTTP status and the body.
    pub async fn publish(&self, channel: &str, message: &Value) -> (u16, Value) {
        self.publish_as(
            &token("backend", "service", &[], 600),
            &json!({"channel": channel, "message": message}),
        )
        .await
    }

    /// `POST /v1/publish` with a given token and body.
    pub async fn publish_as(&self, token: &str, body: &Value) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/publish", self.base))
            .bearer_auth(token)
            .json(body)
            .send()
            .await
            .expect("the relay answers HTTP");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `GET` a path with an optional bearer token; returns the status and the body as JSON or text.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, Value) {
        let mut request = self.http.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("the relay answers HTTP");
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    /// Waits until the relay has recorded a receipt of `kind` (`received`, `acknowledged`) from
    /// `user` for a notification, as its publisher reads them; `nudge` runs before each look (to
    /// click an alert's action again, say). Fails after [`WAIT`] with the receipts last seen.
    pub async fn wait_for_receipt<Nudge, Nudged>(
        &self,
        channel: &str,
        id: &str,
        (kind, user): (&str, &str),
        mut nudge: Nudge,
    ) -> anyhow::Result<()>
    where
        Nudge: FnMut() -> Nudged,
        Nudged: std::future::Future<Output = ()>,
    {
        let service = token("backend", "service", &[], 3600);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            nudge().await;
            let (_, receipts) = self
                .get(
                    &format!("/v1/receipts?channel={channel}&id={id}"),
                    Some(&service),
                )
                .await;
            let recorded = receipts["receipts"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r["kind"] == kind && r["user"] == user));
            if recorded {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the relay never recorded {kind} from {user}: {receipts}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Passes a child process's stderr (its activation messages, its warnings) through the test's own
/// output, which the test harness shows only when the test fails.
pub fn show_stderr_on_failure(stderr: tokio::process::ChildStderr, name: &'static str) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("[{name}] {line}");
        }
    });
}

/// The events named `event` in a notification's trail, as `GET /v1/messages/{channel}/{id}`
/// answered it.
pub fn trail_events<'a>(status: &'a Value, event: &str) -> Vec<&'a Value> {
    status["trail"]
        .as_array()
        .expect("a trail")
        .iter()
        .filter(|e| e["event"] == event)
        .collect()
}

/// A HealthHub notification of each type, numbered.
pub fn critical_lab_result(n: usize) -> Value {
    json!({"type": "critical_lab_result", "urgent": true, "result_id": format!("r{n}"),
           "patient_name": "Bob Wilson", "test_type": "BMP", "requires_review": true})
}

/// A lab result that carries its number `n` in its payload, to check order and completeness.
pub fn numbered(n: usize) -> Value {
    json!({"type": "lab_result_available", "result_id": format!("r{n}"), "test_type": "CBC", "n": n})
}

/// The numbers of [`numbered`] notifications as a receiver printed or listed them.
pub fn numbers(rows: &[Value]) -> Vec<u64> {
    rows.iter()
        .map(|r| r["message"]["n"].as_u64().expect("numbered"))
        .collect()
}

/// A relay on the given broker, with its Redis server when it needs one.
pub async fn setup(
    kind: BrokerKind,
    extra: &[&str],
) -> anyhow::Result<(Option<RedisServer>, Relay)> {
    let redis = match kind {
        BrokerKind::Redis => Some(RedisServer::start().await?),
        BrokerKind::Embedded => None,
    };
    let relay = Relay::start(kind, redis.as_ref(), extra).await?;
    Ok((redis, relay))
}

/// Waits until some relay holds the recorder lease and listens for plain PUBLISHes.
pub async fn wait_for_recorder(redis: &RedisServer) -> anyhow::Result<()> {
    let mut conn = redis.connection().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let patterns: i64 = redis::cmd("PUBSUB")
            .arg("NUMPAT")
            .query_async(&mut conn)
            .await?;
        if patterns > 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("no relay started recording plain PUBLISHes");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs an async test body once per broker: `on_both_brokers!(name);` for `async fn name(kind)`.
#[macro_export]
macro_rules! on_both_brokers {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn embedded() {
                super::$name($crate::BrokerKind::Embedded).await.unwrap()
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::BrokerKind::Redis).await.unwrap()
            }
        }
    };
}

impl Relay {
    /// `POST /v1/publish` with a service token and a body given as text (so the payload's bytes are
    /// exactly the test's).
    pub async fn publish_text(&self, body: String) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}/v1/publish", self.base))
            .bearer_auth(token("backend", "service", &[], 600))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the relay answers HTTP");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}
