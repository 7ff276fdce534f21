//! The relay's configuration: command-line flags, `WARDLINE_*` environment variables, a TOML file,
//! then defaults, in that order of precedence. Redis also falls back to the `REDIS_URL` of the
//! hospital's Celery notification service and the HealthHub notification effect's
//! `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB`.

use crate::broker::tracking::{Policy, refused_escalation_target};
use crate::client_addr::{Cidr, ForwardedHeader};
use crate::escalation::email;
use crate::tls::TlsFiles;
use anyhow::{Context, bail};
use axum::http::HeaderValue;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use wardline_protocol::{Priority, Sensitive};

/// Flags of `wardline-relay serve`; every one can also be set as `WARDLINE_<NAME>` or in the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (default 127.0.0.1:8851; port 0 picks a free port).
    #[arg(long, env = "WARDLINE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of the metrics listener (Prometheus `/metrics`; default 127.0.0.1:9851, never the
    /// public one).
    #[arg(long, env = "WARDLINE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS certificate chain (PEM, leaf first): serve https:// and wss:// (with --tls-key). Re-read
    /// on SIGHUP.
    #[arg(long, env = "WARDLINE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) of --tls-cert.
    #[arg(long, env = "WARDLINE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Reverse proxies (addresses or networks, comma-separated: 10.0.0.0/8,::1) whose forwarding
    /// header (--forwarded-header) names the client; from any other peer it is ignored.
    #[arg(long, env = "WARDLINE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Option<Vec<Cidr>>,
    /// The header --trusted-proxies name the client in: x-forwarded-for or forwarded (default
    /// x-forwarded-for); the other one is never read (a device can put anything in it).
    #[arg(long, env = "WARDLINE_FORWARDED_HEADER")]
    pub forwarded_header: Option<ForwardedHeader>,
    /// Origins whose web pages may use the relay (comma-separated: https://portal.example); any
    /// origin when unset (auth is by bearer token, never a cookie).
    #[arg(long, env = "WARDLINE_ALLOWED_ORIGINS", value_delimiter = ',', value_parser = crate::origins::parse_origin)]
    pub allowed_origins: Option<Vec<HeaderValue>>,
    /// Redis URL (redis://host:port/db), or Redis Sentinel's
    /// (redis+sentinel://[:password@]host:port[,host:port…]/<master>[/<db>]); without one the relay
    /// runs on its embedded broker.
    #[arg(long, env = "WARDLINE_REDIS_URL")]
    pub redis_url: Option<String>,
    /// The certificate authority (PEM) a rediss:// server's certificate is checked with, instead of
    /// the OS's.
    #[arg(long, env = "WARDLINE_REDIS_CA_FILE")]
    pub redis_ca_file: Option<PathBuf>,
    /// HS256 secret tokens are signed with (default: generated once into the data dir).
    #[arg(long, env = "WARDLINE_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// Directory for the generated secret and the embedded broker's history.
    #[arg(long, env = "WARDLINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// TOML file with any of these settings (names with underscores).
    #[arg(long, env = "WARDLINE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Required `iss` claim, if any.
    #[arg(long, env = "WARDLINE_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` claim, if any.
    #[arg(long, env = "WARDLINE_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// The identity provider's key set (JWKS) URL: RS256, ES256 and EdDSA tokens are checked with
    /// the key their `kid` names (Entra ID, Okta, Keycloak publish one).
    #[arg(long, env = "WARDLINE_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// A PEM public key (RSA, EC or Ed25519) RS256, ES256 or EdDSA tokens are checked with.
    #[arg(long, env = "WARDLINE_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<PathBuf>,
    /// Name of the claim that holds the role (default `role`).
    #[arg(long, env = "WARDLINE_JWT_ROLE_CLAIM")]
    pub jwt_role_claim: Option<String>,
    /// Clock difference allowed when checking a token's `exp`, `nbf` and `iat` (default 0s: an
    /// expired token is refused at once; give e.g. 30s when the identity provider's clock may run
    /// ahead of the relay's).
    #[arg(long, env = "WARDLINE_JWT_LEEWAY", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Option<Duration>,
    /// How long history is kept (default 7d).
    #[arg(long, env = "WARDLINE_HISTORY_MAX_AGE", value_parser = humantime::parse_duration)]
    pub history_max_age: Option<Duration>,
    /// Most notifications kept per channel (default 10000).
    #[arg(long, env = "WARDLINE_HISTORY_MAX_LEN")]
    pub history_max_len: Option<u64>,
    /// Notifications queued per connection before it counts as a slow consumer (default 256).
    #[arg(long, env = "WARDLINE_QUEUE_CAPACITY")]
    pub queue_capacity: Option<usize>,
    /// Interval of WebSocket pings and SSE heartbeat comments (default 15s).
    #[arg(long, env = "WARDLINE_HEARTBEAT", value_parser = humantime::parse_duration)]
    pub heartbeat: Option<Duration>,
    /// New connections one IP address may open per second, sustained (default 20).
    #[arg(long, env = "WARDLINE_CONNECTIONS_PER_IP_PER_S")]
    pub connections_per_ip_per_s: Option<u32>,
    /// New connections one IP address may open at once (default 100).
    #[arg(long, env = "WARDLINE_CONNECTIONS_PER_IP_BURST")]
    pub connections_per_ip_burst: Option<u32>,
    /// Frames a client may send per second, sustained (default 20).
    #[arg(long, env = "WARDLINE_FRAMES_PER_S")]
    pub frames_per_s: Option<u32>,
    /// Frames a client may send at once (default 60).
    #[arg(long, env = "WARDLINE_FRAME_BURST")]
    pub frame_burst: Option<u32>,
    /// Longest a shutdown waits for connections to close (default 10s).
    #[arg(long, env = "WARDLINE_SHUTDOWN_DEADLINE", value_parser = humantime::parse_duration)]
    pub shutdown_deadline: Option<Duration>,
    /// Devices (WebSockets and event streams) this node serves at once (default: the open-file
    /// limit less an eighth, at least 64, kept for everything else); past it, 503 with Retry-After.
    #[arg(long, env = "WARDLINE_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Devices connected at once from one client address (default 1000; behind a NAT or a proxy
    /// not in --trusted-proxies every device shares one); past it, 429 with Retry-After.
    #[arg(long, env = "WARDLINE_MAX_CONNECTIONS_PER_IP")]
    pub max_connections_per_ip: Option<usize>,
    /// Devices connected at once per user (default 32); past it, 429 with Retry-After.
    #[arg(long, env = "WARDLINE_MAX_CONNECTIONS_PER_USER")]
    pub max_connections_per_user: Option<usize>,
    /// Connections from one address waiting for or in a TLS handshake (default 64); past it, a new
    /// one is closed at once (behind a TCP load balancer every device shares its address).
    #[arg(long, env = "WARDLINE_MAX_TLS_HANDSHAKES_PER_IP")]
    pub max_tls_handshakes_per_ip: Option<usize>,
    /// Longest a connection may take to send a complete request head, from its start or its last
    /// response: a half-sent or idle connection is closed then (default 10s).
    #[arg(long, env = "WARDLINE_HEADER_TIMEOUT", value_parser = humantime::parse_duration)]
    pub header_timeout: Option<Duration>,
    /// Longest a write may wait on a client that reads nothing before the connection is closed
    /// (default 30s).
    #[arg(long, env = "WARDLINE_WRITE_TIMEOUT", value_parser = humantime::parse_duration)]
    pub write_timeout: Option<Duration>,
    /// Whether this node may hold the recorder lease for plain Redis PUBLISHes (default true).
    #[arg(long, env = "WARDLINE_RECORDER")]
    pub recorder: Option<bool>,
    /// Whether critical notifications follow the escalation policy below unless their publish says
    /// `"escalation": null` (default true).
    #[arg(long, env = "WARDLINE_ESCALATION_CRITICAL")]
    pub escalation_critical: Option<bool>,
    /// Send an unacknowledged notification again every this long (default 2m; 0s: never).
    #[arg(long, env = "WARDLINE_ESCALATION_REPEAT_EVERY", value_parser = humantime::parse_duration)]
    pub escalation_repeat_every: Option<Duration>,
    /// Publish it to the escalation channels after this long (default 5m; 0s: never).
    #[arg(long, env = "WARDLINE_ESCALATION_ESCALATE_AFTER", value_parser = humantime::parse_duration)]
    pub escalation_escalate_after: Option<Duration>,
    /// Channels an unacknowledged notification escalates to when its publish names none
    /// (comma-separated; default none).
    #[arg(long, env = "WARDLINE_ESCALATION_ESCALATE_TO", value_delimiter = ',')]
    pub escalation_escalate_to: Option<Vec<String>>,
    /// Email the addresses after this long (default 10m; 0s: never).
    #[arg(long, env = "WARDLINE_ESCALATION_EMAIL_AFTER", value_parser = humantime::parse_duration)]
    pub escalation_email_after: Option<Duration>,
    /// Addresses emailed when its publish names none (comma-separated; default none).
    #[arg(long, env = "WARDLINE_ESCALATION_EMAIL_TO", value_delimiter = ',')]
    pub escalation_email_to: Option<Vec<String>>,
    /// Wait between attempts at an email that failed (3 retries; default 30s).
    #[arg(long, env = "WARDLINE_ESCALATION_EMAIL_RETRY", value_parser = humantime::parse_duration)]
    pub escalation_email_retry: Option<Duration>,
    /// The domains escalation emails may go to (comma-separated, exact, e.g. hospital.example;
    /// default none: no email is sent and a publish naming `email_to` is refused).
    #[arg(long, env = "WARDLINE_EMAIL_ALLOWED_DOMAINS", value_delimiter = ',')]
    pub email_allowed_domains: Option<Vec<String>>,
    /// The SMTP server escalation emails go through: smtp://host:port, smtp://host:port?tls=required
    /// (STARTTLS), smtps://host:port (TLS); user:password@ before the host when it asks.
    #[arg(long, env = "WARDLINE_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,
    /// The certificate authority (PEM) the SMTP server's certificate is checked with, instead of
    /// the OS's: for a hospital's own CA. Needs a TLS URL (smtps:// or ?tls=required).
    #[arg(long, env = "WARDLINE_SMTP_CA_FILE")]
    pub smtp_ca_file: Option<PathBuf>,
    /// The sender of escalation emails (default wardline@localhost).
    #[arg(long, env = "WARDLINE_SMTP_FROM")]
    pub smtp_from: Option<String>,
    /// Log format: text or json (default text).
    #[arg(long, env = "WARDLINE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    metrics_listen: Option<SocketAddr>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    trusted_proxies: Option<Vec<String>>,
    forwarded_header: Option<ForwardedHeader>,
    allowed_origins: Option<Vec<String>>,
    redis_url: Option<String>,
    redis_ca_file: Option<PathBuf>,
    jwt_secret: Option<String>,
    data_dir: Option<PathBuf>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_role_claim: Option<String>,
    jwt_jwks_url: Option<String>,
    jwt_public_key: Option<PathBuf>,
    #[serde(default, with = "humantime_opt")]
    jwt_leeway: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    history_max_age: Option<Duration>,
    history_max_len: Option<u64>,
    queue_capacity: Option<usize>,
    #[serde(default, with = "humantime_opt")]
    heartbeat: Option<Duration>,
    connections_per_ip_per_s: Option<u32>,
    connections_per_ip_burst: Option<u32>,
    frames_per_s: Option<u32>,
    frame_burst: Option<u32>,
    #[serde(default, with = "humantime_opt")]
    shutdown_deadline: Option<Duration>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_connections_per_user: Option<usize>,
    max_tls_handshakes_per_ip: Option<usize>,
    #[serde(default, with = "humantime_opt")]
    header_timeout: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    write_timeout: Option<Duration>,
    recorder: Option<bool>,
    log_format: Option<LogFormat>,
    escalation: Option<EscalationFile>,
    email_allowed_domains: Option<Vec<String>>,
    smtp_url: Option<String>,
    smtp_ca_file: Option<PathBuf>,
    smtp_from: Option<String>,
}

/// The `[escalation]` table of the TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EscalationFile {
    critical: Option<bool>,
    #[serde(default, with = "humantime_opt")]
    repeat_every: Option<Duration>,
    #[serde(default, with = "humantime_opt")]
    escalate_after: Option<Duration>,
    escalate_to: Option<Vec<String>>,
    #[serde(default, with = "humantime_opt")]
    email_after: Option<Duration>,
    email_to: Option<Vec<String>>,
    #[serde(default, with = "humantime_opt")]
    email_retry: Option<Duration>,
}

mod humantime_opt {
    use serde::Deserialize;
    use std::time::Duration;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Token verification settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The HS256 secret.
    pub secret: Sensitive<Vec<u8>>,
    /// Required `iss`, if any.
    pub issuer: Option<String>,
    /// Required `aud`, if any.
    pub audience: Option<String>,
    /// The claim that holds the role.
    pub role_claim: String,
    /// A PEM public key for RS256/ES256/EdDSA tokens.
    pub public_key: Option<PathBuf>,
    /// The identity provider's JWKS URL.
    pub jwks_url: Option<String>,
    /// Clock difference allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

/// Everything the relay needs to run, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Address of the metrics listener.
    pub metrics_listen: SocketAddr,
    /// Certificate and key to serve https:// and wss:// with; plain http:// without.
    pub tls: Option<TlsFiles>,
    /// Peers whose forwarded-for headers are believed.
    pub trusted_proxies: Vec<Cidr>,
    /// The one header they name the client in.
    pub forwarded_header: ForwardedHeader,
    /// Origins whose pages may use the relay; `None`: any.
    pub allowed_origins: Option<Vec<HeaderValue>>,
    /// Redis URL; `None` runs the embedded broker.
    pub redis_url: Option<Sensitive<String>>,
    /// The authority a rediss:// server is checked with, instead of the OS's.
    pub redis_ca_file: Option<PathBuf>,
    /// Token verification.
    pub jwt: JwtConfig,
    /// Data directory.
    pub data_dir: PathBuf,
    /// How long history is kept.
    pub history_max_age: Duration,
    /// Most notifications kept per channel.
    pub history_max_len: u64,
    /// Per-connection queue capacity.
    pub queue_capacity: usize,
    /// Heartbeat interval.
    pub heartbeat: Duration,
    /// Sustained new connections per second per IP.
    pub connections_per_ip_per_s: u32,
    /// Burst of new connections per IP.
    pub connections_per_ip_burst: u32,
    /// Sustained client frames per second per connection.
    pub frames_per_s: u32,
    /// Burst of client frames per connection.
    pub frame_burst: u32,
    /// Hard deadline for a graceful shutdown.
    pub shutdown_deadline: Duration,
    /// Devices this node serves at once.
    pub max_connections: usize,
    /// Devices connected at once from one client address.
    pub max_connections_per_ip: usize,
    /// Devices connected at once per user.
    pub max_connections_per_user: usize,
    /// Connections from one TCP peer address waiting for or in a TLS handshake.
    pub max_tls_handshakes_per_ip: usize,
    /// Deadlines of each connection's request heads and writes.
    pub deadlines: crate::serve::Deadlines,
    /// Whether this node may record plain Redis PUBLISHes.
    pub recorder: bool,
    /// Log format.
    pub log_format: LogFormat,
    /// The escalation policy's defaults.
    pub escalation: EscalationConfig,
    /// The SMTP server escalation emails go through.
    pub smtp_url: Option<Sensitive<String>>,
    /// The certificate authority the SMTP server's certificate is checked with.
    pub smtp_ca_file: Option<PathBuf>,
    /// The sender of escalation emails.
    pub smtp_from: String,
}

/// The escalation policy's defaults (`[escalation]`).
#[derive(Debug, Clone)]
pub struct EscalationConfig {
    /// Whether critical notifications follow [`EscalationConfig::defaults`] when their publish
    /// says nothing of escalation.
    pub critical: bool,
    /// What a publish's `escalation` leaves out.
    pub defaults: Policy,
    /// Wait between attempts at an email.
    pub email_retry: Duration,
    /// The domains emails may go to; none: no email goes anywhere.
    pub email_allowed_domains: Vec<String>,
}

impl EscalationConfig {
    /// The policy of a notification published without `escalation`.
    pub fn default_for(&self, priority: Priority) -> Option<Policy> {
        (self.critical && priority == Priority::Critical).then(|| self.defaults.clone())
    }
}

/// Whole seconds of a duration, `None` for zero (the step is off).
fn seconds(duration: Duration) -> Option<u64> {
    Some(duration.as_secs()).filter(|s| *s > 0)
}

impl FileConfig {
    /// The file's settings; none without a file.
    fn read(path: Option<&Path>) -> anyhow::Result<FileConfig> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
    }
}

/// The data directory as `serve` resolves it (the flag or environment, then the file, then the
/// default), without resolving anything else (no secret is read or generated).
pub fn data_dir(data_dir: Option<PathBuf>, config: Option<&Path>) -> anyhow::Result<PathBuf> {
    Ok(match data_dir {
        Some(dir) => dir,
        None => FileConfig::read(config)?
            .data_dir
            .unwrap_or_else(default_data_dir),
    })
}

/// Where the relay keeps its data when no directory is configured.
pub fn default_data_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(dir).join("wardline-relay");
    }
    match std::env::var_os("HOME") {
        Some(home) => PathBuf::from(home).join(".local/share/wardline-relay"),
        None => PathBuf::from("wardline-data"),
    }
}

/// Redis from the HealthHub notification effect's `REDIS_HOST`/`REDIS_PORT`/`REDIS_DB` or the
/// Celery notification service's `REDIS_URL`.
fn redis_url_from_legacy_env() -> Option<String> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        return Some(url);
    }
    let host = std::env::var("REDIS_HOST").ok()?;
    let port = std::env::var("REDIS_PORT").unwrap_or_else(|_| "6379".into());
    let db = std::env::var("REDIS_DB").unwrap_or_else(|_| "0".into());
    Some(format!("redis://{host}:{port}/{db}"))
}

impl Config {
    /// Resolves flags and environment (already in `args`), then the file, then defaults.
    pub fn load(args: ServeArgs) -> anyhow::Result<Config> {
        let file = FileConfig::read(args.config.as_deref())?;
        let data_dir = args
            .data_dir
            .or(file.data_dir)
            .unwrap_or_else(default_data_dir);
        let secret = match args.jwt_secret.or(file.jwt_secret) {
            Some(secret) if secret.len() < 16 => bail!("the JWT secret must be at least 16 bytes"),
            Some(secret) => secret.into_bytes(),
            None => load_or_create_secret(&data_dir)?,
        };
        let tls = match (
            args.tls_cert.or(file.tls_cert),
            args.tls_key.or(file.tls_key),
        ) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key)"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate chain)"),
        };
        let trusted_proxies = match args.trusted_proxies {
            Some(list) => list,
            None => file
                .trusted_proxies
                .unwrap_or_default()
                .iter()
                .map(|net| net.parse::<Cidr>().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<_>>()
                .context("trusted_proxies in the config file")?,
        };
        let allowed_origins = match args.allowed_origins {
            Some(list) => Some(list),
            None => file
                .allowed_origins
                .map(|list| {
                    list.iter()
                        .map(|origin| crate::origins::parse_origin(origin))
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(anyhow::Error::msg)
                        .context("allowed_origins in the config file")
                })
                .transpose()?,
        };
        let escalation = {
            let table = file.escalation.unwrap_or_default();
            let escalate_to = args
                .escalation_escalate_to
                .or(table.escalate_to)
                .unwrap_or_default();
            for channel in &escalate_to {
                let parsed = wardline_protocol::Channel::parse(channel)
                    .with_context(|| format!("escalation escalate_to {channel}"))?;
                if let Some(reason) = refused_escalation_target(None, &parsed) {
                    bail!("escalation escalate_to: {reason}");
                }
            }
            let email_to = args
                .escalation_email_to
                .or(table.email_to)
                .unwrap_or_default();
            let email_allowed_domains: Vec<String> = args
                .email_allowed_domains
                .or(file.email_allowed_domains)
                .unwrap_or_default()
                .into_iter()
                .map(|domain| domain.trim().to_owned())
                .filter(|domain| !domain.is_empty())
                .collect();
            if let Some(bad) = email_to
                .iter()
                .find(|a| !email::allowed_address(a, &email_allowed_domains))
            {
                bail!(
                    "escalation email_to: {}",
                    email::refusal(bad, &email_allowed_domains)
                );
            }
            EscalationConfig {
                critical: args.escalation_critical.or(table.critical).unwrap_or(true),
                defaults: Policy {
                    repeat_every_s: seconds(
                        args.escalation_repeat_every
                            .or(table.repeat_every)
                            .unwrap_or(Duration::from_secs(120)),
                    ),
                    escalate_after_s: seconds(
                        args.escalation_escalate_after
                            .or(table.escalate_after)
                            .unwrap_or(Duration::from_secs(300)),
                    ),
                    escalate_to,
                    email_after_s: seconds(
                        args.escalation_email_after
                            .or(table.email_after)
                            .unwrap_or(Duration::from_secs(600)),
                    ),
                    email_to,
                },
                email_retry: args
                    .escalation_email_retry
                    .or(table.email_retry)
                    .unwrap_or(Duration::from_secs(30)),
                email_allowed_domains,
            }
        };
        let queue_capacity = args.queue_capacity.or(file.queue_capacity).unwrap_or(256);
        if queue_capacity == 0 {
            bail!("queue_capacity must be at least 1");
        }
        Ok(Config {
            listen: args
                .listen
                .or(file.listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 8851))),
            metrics_listen: args
                .metrics_listen
                .or(file.metrics_listen)
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9851))),
            tls,
            trusted_proxies,
            forwarded_header: args
                .forwarded_header
                .or(file.forwarded_header)
                .unwrap_or_default(),
            allowed_origins,
            redis_url: args
                .redis_url
                .or(file.redis_url)
                .or_else(redis_url_from_legacy_env)
                .map(Sensitive::new),
            redis_ca_file: args.redis_ca_file.or(file.redis_ca_file),
            jwt: JwtConfig {
                secret: Sensitive::new(secret),
                issuer: args.jwt_issuer.or(file.jwt_issuer),
                audience: args.jwt_audience.or(file.jwt_audience),
                role_claim: args
                    .jwt_role_claim
                    .or(file.jwt_role_claim)
                    .unwrap_or_else(|| "role".into()),
                public_key: args.jwt_public_key.or(file.jwt_public_key),
                jwks_url: args.jwt_jwks_url.or(file.jwt_jwks_url),
                leeway: args.jwt_leeway.or(file.jwt_leeway).unwrap_or_default(),
            },
            data_dir,
            history_max_age: args
                .history_max_age
                .or(file.history_max_age)
                .unwrap_or(Duration::from_secs(7 * 24 * 3600)),
            history_max_len: args
                .history_max_len
                .or(file.history_max_len)
                .unwrap_or(10_000),
            queue_capacity,
            heartbeat: args
                .heartbeat
                .or(file.heartbeat)
                .unwrap_or(Duration::from_secs(15)),
            connections_per_ip_per_s: args
                .connections_per_ip_per_s
                .or(file.connections_per_ip_per_s)
                .unwrap_or(20),
            connections_per_ip_burst: args
                .connections_per_ip_burst
                .or(file.connections_per_ip_burst)
                .unwrap_or(100),
            frames_per_s: args.frames_per_s.or(file.frames_per_s).unwrap_or(20),
            frame_burst: args.frame_burst.or(file.frame_burst).unwrap_or(60),
            shutdown_deadline: args
                .shutdown_deadline
                .or(file.shutdown_deadline)
                .unwrap_or(Duration::from_secs(10)),
            max_connections: args
                .max_connections
                .or(file.max_connections)
                .unwrap_or_else(crate::connection_caps::default_node_cap),
            max_connections_per_ip: args
                .max_connections_per_ip
                .or(file.max_connections_per_ip)
                .unwrap_or(1000),
            max_connections_per_user: args
                .max_connections_per_user
                .or(file.max_connections_per_user)
                .unwrap_or(32),
            max_tls_handshakes_per_ip: match args
                .max_tls_handshakes_per_ip
                .or(file.max_tls_handshakes_per_ip)
            {
                Some(0) => bail!("max_tls_handshakes_per_ip must be at least 1"),
                set => set.unwrap_or(crate::tls::HANDSHAKES_PER_ADDRESS),
            },
            deadlines: crate::serve::Deadlines {
                header: args
                    .header_timeout
                    .or(file.header_timeout)
                    .unwrap_or(Duration::from_secs(10)),
                write: args
                    .write_timeout
                    .or(file.write_timeout)
                    .unwrap_or(Duration::from_secs(30)),
            },
            recorder: args.recorder.or(file.recorder).unwrap_or(true),
            log_format: args
                .log_format
                .or(file.log_format)
                .unwrap_or(LogFormat::Text),
            escalation,
            smtp_url: args.smtp_url.or(file.smtp_url).map(Sensitive::new),
            smtp_ca_file: args.smtp_ca_file.or(file.smtp_ca_file),
            smtp_from: args
                .smtp_from
                .or(file.smtp_from)
                .unwrap_or_else(|| "wardline@localhost".into()),
        })
    }

    /// A configuration for tests: embedded broker in `data_dir`, the given secret, port 0.
    pub fn for_tests(data_dir: &Path, secret: &str) -> Config {
        Config::load(ServeArgs {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            jwt_secret: Some(secret.to_owned()),
            data_dir: Some(data_dir.to_owned()),
            ..ServeArgs::default()
        })
        .expect("test configuration is valid")
    }
}

/// Reads the secret generated on a first run, or generates it now (mode 0600).
fn load_or_create_secret(data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    crate::data_dir::make_private(data_dir)?;
    let path = data_dir.join("jwt-secret");
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let secret = text.trim().to_owned();
            if secret.len() < 16 {
                bail!(
                    "{} holds fewer than 16 bytes; delete it to generate a new secret",
                    path.display()
                );
            }
            return Ok(secret.into_bytes());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let bytes: [u8; 32] = rand::random();
    let secret: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    write_private(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(path = %path.display(), "generated a new JWT secret");
    Ok(secret.into_bytes())
}

#[cfg(unix)]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(not(unix))]
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_private_secret_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_create_secret(dir.path()).unwrap();
        let second = load_or_create_secret(dir.path()).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("jwt-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nhistory_max_age = \"2h\"\nqueue_capacity = 8\njwt_secret = \"file-secret-0123456789\"\n",
        )
        .unwrap();
        let config = Config::load(ServeArgs {
            config: Some(file),
            queue_capacity: Some(16),
            data_dir: Some(dir.path().to_owned()),
            ..ServeArgs::default()
        })
        .unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.history_max_age, Duration::from_secs(7200));
        assert_eq!(config.queue_capacity, 16);
        assert_eq!(config.jwt.secret.expose(), b"file-secret-0123456789");
        assert_eq!(config.heartbeat, Duration::from_secs(15));
    }

    #[test]
    fn unknown_file_settings_and_short_secrets_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, "lisen = \"127.0.0.1:9000\"\n").unwrap();
        let err = Config::load(ServeArgs {
            config: Some(file),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{err:#}").contains("lisen"), "{err:#}");
        let err = Config::load(ServeArgs {
            jwt_secret: Some("short".into()),
            ..ServeArgs::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("16 bytes"));
    }

    #[test]
    fn every_setting_in_the_sample_config_is_one_the_relay_knows() {
        let sample = include_str!("../../deploy/relay.toml");
        // Each commented `# key = value` line, taken in; a key given twice (examples of one
        // setting) is taken once.
        let mut seen = std::collections::HashSet::new();
        let mut text = String::new();
        let mut table = String::new();
        for line in sample.lines() {
            let line = line.strip_prefix("# ").unwrap_or(line);
            if line.starts_with('[') && line.ends_with(']') {
                table = line.trim_matches(['[', ']']).to_owned() + ".";
                text.push_str(line);
                text.push('\n');
                continue;
            }
            let Some((key, _)) = line.split_once(" = ") else {
                continue;
            };
            if key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                && seen.insert(format!("{table}{key}"))
            {
                text.push_str(line);
                text.push('\n');
            }
        }
        let file: FileConfig = toml::from_str(&text).unwrap();
        assert!(
            file.tls_cert.is_some() && file.jwt_jwks_url.is_some() && file.log_format.is_some()
        );
        let escalation = file.escalation.expect("the [escalation] table");
        assert_eq!(escalation.email_to.unwrap().len(), 1);
        assert_eq!(seen.len(), 37 + 7, "every setting, once: {seen:?}");
    }
}
