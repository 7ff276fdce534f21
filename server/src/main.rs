//! `wardline-relay`: parses the command line and runs the relay (`serve`) or mints a token (`token`).

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;
use tracing_subscriber::EnvFilter;
use wardline_protocol::{Channel, Role};
use wardline_relay::auth::Authenticator;
use wardline_relay::config::{Config, LogFormat, ServeArgs};

#[derive(Parser)]
#[command(
    name = "wardline-relay",
    version,
    about = "Wardline relay: Redis to devices over WebSocket and SSE"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the relay.
    Serve(Box<ServeArgs>),
    /// Print a token signed with the secret `serve` would use.
    Token(TokenArgs),
    /// Copy the embedded broker's history to FILE while the relay runs (Redis: see its own
    /// persistence, RDB/AOF).
    Backup(BackupArgs),
}

#[derive(clap::Args)]
struct BackupArgs {
    /// Where the copy goes (must not exist; created mode 0600).
    file: PathBuf,
    /// The relay's data directory.
    #[arg(long, env = "WARDLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The relay's config file (for its data_dir).
    #[arg(long, env = "WARDLINE_CONFIG")]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The user (the token's `sub`).
    #[arg(long)]
    sub: String,
    /// doctor, patient, admin or service.
    #[arg(long, value_parser = parse_role)]
    role: Role,
    /// Extra channels to grant, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_channel)]
    channels: Vec<Channel>,
    /// Lifetime (e.g. 12h, 30m).
    #[arg(long, default_value = "12h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The HS256 secret (default: as `serve` resolves it).
    #[arg(long, env = "WARDLINE_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// The data directory holding a generated secret.
    #[arg(long, env = "WARDLINE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// The relay's config file.
    #[arg(long, env = "WARDLINE_CONFIG")]
    config: Option<PathBuf>,
}

fn parse_role(name: &str) -> Result<Role, String> {
    Role::parse(name).ok_or_else(|| format!("{name:?} is not doctor, patient, admin or service"))
}

fn parse_channel(name: &str) -> Result<Channel, String> {
    Channel::parse(name).map_err(|e| e.to_string())
}

/// Libraries whose debug and trace logs print what passes through them (tungstenite logs every
/// WebSocket frame, notifications included): held at `info` whatever `WARDLINE_LOG` asks, so that
/// no log level shows a patient's details.
const QUIET_LIBRARIES: &[&str] = &[
    "tungstenite",
    "tokio_tungstenite",
    "hyper",
    "hyper_util",
    "h2",
    "redis",
    "reqwest",
    "rustls",
    "axum",
    "tower_http",
];

fn init_logs(format: LogFormat) {
    let mut filter = EnvFilter::try_from_env("WARDLINE_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info"));
    for library in QUIET_LIBRARIES {
        if let Ok(directive) = format!("{library}=info").parse() {
            filter = filter.add_directive(directive);
        }
    }
    // Colours only for a terminal: not into a journal, a file or a pipe.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing the SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// Re-reads the TLS certificate on each SIGHUP (a renewed certificate, without a restart).
#[cfg(unix)]
fn reload_on_hangup(
    certificates: std::sync::Arc<wardline_relay::tls::Certificates>,
) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            match certificates.reload() {
                Ok(()) => tracing::info!("TLS certificate re-read"),
                Err(e) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "TLS certificate not re-read; the one in use stays"
                    )
                }
            }
        }
    });
    Ok(())
}

/// Raises the soft open-file limit to the hard one (as Go and systemd's services expect a server to
/// do: the soft limit of 1024 is kept low only for programs that use `select`). Answers the limit.
#[cfg(unix)]
fn raise_open_file_limit() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> std::io::Result<u64> {
    Ok(0)
}

/// A listener that could not bind, with what to do when another process holds the port.
fn bind_failed(error: std::io::Error, address: std::net::SocketAddr, flag: &str) -> anyhow::Error {
    let advice = if error.kind() == std::io::ErrorKind::AddrInUse {
        format!(
            ": another process listens there (`ss -ltnp 'sport = :{}'` names it); stop it or choose another {flag}",
            address.port()
        )
    } else {
        String::new()
    };
    anyhow::Error::new(error).context(format!("binding {address} ({flag}){advice}"))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => {
            // Before the configuration: the default connection cap is taken from this limit.
            let raised = raise_open_file_limit();
            let config = Config::load(*args)?;
            init_logs(config.log_format);
            match raised {
                Ok(limit) => tracing::info!(
                    open_files = limit,
                    max_connections = config.max_connections,
                    "open-file limit"
                ),
                Err(e) => tracing::warn!(error = %e, "the open-file limit could not be raised"),
            }
            let listener = tokio::net::TcpListener::bind(config.listen)
                .await
                .map_err(|e| bind_failed(e, config.listen, "--listen"))?;
            let address = listener.local_addr()?;
            let metrics_listener = tokio::net::TcpListener::bind(config.metrics_listen)
                .await
                .map_err(|e| bind_failed(e, config.metrics_listen, "--metrics-listen"))?;
            let metrics_address = metrics_listener.local_addr()?;
            let relay = wardline_relay::Relay::build(config).await?;
            relay.serve_metrics(metrics_listener);
            #[cfg(unix)]
            if let Some(certificates) = relay.certificates() {
                reload_on_hangup(certificates)?;
            }
            // One write, and not fatal: a supervisor that reads only the first line may close the
            // pipe after it (`print!` would write line by line, and panic on the closed pipe).
            let banner = format!(
                "listening on {}://{address}\nmetrics on http://{metrics_address}/metrics\n",
                relay.scheme()
            );
            let mut stdout = std::io::stdout().lock();
            if let Err(e) = stdout
                .write_all(banner.as_bytes())
                .and_then(|()| stdout.flush())
            {
                tracing::debug!(error = %e, "the listening addresses could not be printed");
            }
            drop(stdout);
            relay.serve(listener, shutdown_signal()).await
        }
        Command::Backup(args) => {
            let data_dir = wardline_relay::config::data_dir(args.data_dir, args.config.as_deref())?;
            let bytes = wardline_relay::broker::embedded::backup(&data_dir, &args.file)?;
            println!(
                "history of {} copied to {} ({bytes} bytes)",
                data_dir.display(),
                args.file.display()
            );
            Ok(())
        }
        Command::Token(args) => {
            let config = Config::load(ServeArgs {
                jwt_secret: args.jwt_secret,
                data_dir: args.data_dir,
                config: args.config,
                ..ServeArgs::default()
            })?;
            let token = Authenticator::new(&config.jwt)?.mint(
                &args.sub,
                args.role,
                &args.channels,
                args.ttl,
            );
            println!("{token}");
            Ok(())
        }
    }
}
