//! `wardline`: the receiver on the command line — `listen` keeps the subscription in the foreground;
//! `list`, `ack`, `read` and `status` work on the inbox (and tell the relay about acknowledgements).
//! Everything goes through the receiver's door ([`Wardline`], [`Receiver`]); this file only reads
//! arguments and prints.

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::time::Duration;
use wardline_client::{
    Alerts, ConnectionState, Event, Filter, Listener, Place, QuietHours, Receiver, ReceiverError,
    Row, Told, Trust, Wardline, now_ms,
};
use wardline_protocol::{Priority, ReceiptKind, Sensitive};

#[derive(Parser)]
#[command(
    name = "wardline",
    version,
    about = "Wardline receiver: never miss a clinical notification",
    after_help = "Exit codes: 0 done; 2 an error (the message says what happened and what to do); \
                  3 the relay refused the token: sign in again (`wardline login`); \
                  4 the relay's certificate cannot be trusted (give the hospital's CA with --ca-file)."
)]
struct Cli {
    /// The relay's base URL, e.g. http://127.0.0.1:8851.
    #[arg(long, global = true, env = "WARDLINE_SERVER")]
    server: Option<String>,
    /// Your user id (the token's subject).
    #[arg(long, global = true, env = "WARDLINE_USER")]
    user: Option<String>,
    /// The inbox database (default: the one the app uses, $XDG_DATA_HOME/wardline/inbox.sqlite3).
    #[arg(long, global = true, env = "WARDLINE_DB")]
    db: Option<PathBuf>,
    /// A certificate authority to trust besides the system's (PEM), for a relay whose https
    /// certificate comes from the hospital's own CA.
    #[arg(long, global = true, env = "WARDLINE_CA_FILE")]
    ca_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Sign in: check the token with the relay, keep it in the OS keychain, remember server and user.
    Login {
        /// The token (read from stdin when not given, so it stays out of shell history).
        #[arg(long)]
        token: Option<String>,
    },
    /// Sign out: remove the token from the OS keychain.
    Logout,
    /// Keep the subscription running in the foreground, printing each new notification.
    Listen {
        /// One JSON object per line on stdout.
        #[arg(long)]
        json: bool,
        /// Do not raise OS notifications.
        #[arg(long)]
        no_alerts: bool,
        /// Only critical alerts in these hours, local time (e.g. 22:00-07:00).
        #[arg(long, env = "WARDLINE_QUIET_HOURS", value_parser = QuietHours::parse)]
        quiet_hours: Option<QuietHours>,
        /// Delete notifications received longer ago than this.
        #[arg(long, env = "WARDLINE_RETENTION", default_value = "90d", value_parser = humantime::parse_duration)]
        retention: Duration,
        /// Raise the "not receiving critical results" alarm after this long without a connection.
        #[arg(long, env = "WARDLINE_OFFLINE_ALARM", default_value = "2m", value_parser = humantime::parse_duration)]
        offline_alarm: Duration,
        /// Show what notifications say (patients' names, results) in OS alerts; by default an
        /// alert says only what kind of notification waits.
        #[arg(long)]
        show_details: bool,
    },
    /// List stored notifications, newest first.
    List {
        /// Only unread ones.
        #[arg(long)]
        unread: bool,
        /// Only this type (e.g. critical_lab_result).
        #[arg(long = "type")]
        kind: Option<String>,
        /// Only this priority (low, normal, high, critical).
        #[arg(long, value_parser = parse_priority)]
        priority: Option<Priority>,
        /// Full-text search.
        #[arg(long)]
        search: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// With each notification, its state and trail as the relay keeps them (published,
        /// delivered, displayed, read, acknowledged, repeated, escalated, emailed): asks the relay.
        #[arg(long)]
        trail: bool,
    },
    /// Acknowledge notifications (and tell the relay): this ends their escalation.
    Ack {
        /// Ids as listed (or channel/id).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Decline notifications ("not me / cannot now"): the relay escalates them to the backup at once.
    Decline {
        /// Ids as listed (or channel/id).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Mark notifications read (and tell the relay: the notification's trail shows it, and your other
    /// devices mark it read too).
    Read {
        /// Ids as listed (or channel/id).
        #[arg(required = true)]
        ids: Vec<String>,
    },
    /// Connection state, last message, unread and unacknowledged critical counts, gaps.
    Status {
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

fn parse_priority(name: &str) -> Result<Priority, String> {
    Priority::parse(name).ok_or_else(|| format!("{name:?} is not low, normal, high or critical"))
}

/// The door, as the flags say: the inbox (`--db`, else the one the app uses), the trusted
/// authorities (`--ca-file`) and the account (`--server`, `--user`, else the last sign-in).
fn door(cli: &Cli) -> anyhow::Result<Wardline> {
    let place = match &cli.db {
        Some(db) => Place::desktop().with_inbox(db.clone()),
        None => Place::desktop(),
    };
    let trust = Trust::new(cli.ca_file.as_deref())?;
    Ok(Wardline::new(place, trust).with_account(cli.server.clone(), cli.user.clone()))
}

/// An exit code for an error: 3 when the relay refused the token (sign in again), 4 when its
/// certificate cannot be trusted, 2 otherwise (see `--help`).
fn exit_code(error: &anyhow::Error) -> i32 {
    match error.downcast_ref::<ReceiverError>() {
        Some(ReceiverError::TokenRefused(_)) => 3,
        Some(ReceiverError::Untrusted(_)) => 4,
        _ => 2,
    }
}

/// A keychain that failed says what to do without one.
fn without_keychain(error: ReceiverError, instead: &str) -> anyhow::Error {
    match error {
        ReceiverError::Keychain(e) => anyhow::anyhow!("{e}: {instead}"),
        other => other.into(),
    }
}

/// Asks for a secret on the terminal and reads it without showing it. Echo is off before the
/// prompt appears: rpassword turns it off only after writing the prompt, and whatever is typed or
/// pasted in between would be shown (and kept in the terminal's scrollback).
fn read_hidden(prompt: &str) -> std::io::Result<String> {
    #[cfg(unix)]
    {
        use rustix::termios::{LocalModes, OptionalActions, tcgetattr, tcsetattr};
        let tty = std::fs::File::open("/dev/tty")?;
        let before = tcgetattr(&tty)?;
        let mut quiet = before.clone();
        quiet.local_modes.remove(LocalModes::ECHO);
        tcsetattr(&tty, OptionalActions::Now, &quiet)?;
        let secret = rpassword::prompt_password(prompt);
        tcsetattr(&tty, OptionalActions::Now, &before)?;
        secret
    }
    #[cfg(not(unix))]
    rpassword::prompt_password(prompt)
}

async fn login(cli: &Cli, given: Option<String>) -> anyhow::Result<i32> {
    let server = wardline_client::relay_url(
        &cli.server
            .clone()
            .context("give --server URL (the relay's base URL, e.g. http://127.0.0.1:8851)")?,
    )
    .map_err(anyhow::Error::msg)?;
    let user = cli.user.clone().context("give --user ID")?;
    let token = match given {
        Some(token) => token,
        // On a terminal: asked for, and not shown as it is typed (nor kept in the shell's history).
        None if std::io::IsTerminal::is_terminal(&std::io::stdin()) => {
            read_hidden(&format!("Token for {user} at {server} (not shown): "))
                .context("reading the token")?
        }
        None => {
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the token from stdin")?;
            line
        }
    };
    let token = Sensitive::new(token.trim().to_owned());
    let signed_in = door(cli)?
        .sign_in(&server, &user, &token)
        .await
        .map_err(|e| {
            without_keychain(
                e,
                "there is no usable keychain on this machine; set WARDLINE_TOKEN instead (the token is then never stored)",
            )
        })?;
    println!(
        "signed in as {} ({}) at {}; the token is in the OS keychain",
        signed_in.user, signed_in.role, signed_in.server
    );
    Ok(0)
}

fn row_json(row: &Row) -> serde_json::Value {
    serde_json::json!({
        "id": row.id, "channel": row.channel, "type": row.kind, "priority": row.priority,
        "title": row.title, "message": row.message, "sent_at": row.sent_at,
        "read": row.read_at.is_some(), "acked": row.acked_at.is_some(),
    })
}

/// `list --trail`: each row with what the relay knows of it (its state, who acknowledged it, its
/// trail). A row the relay cannot say anything of (pruned, unreachable) says why instead.
async fn list_with_trails(receiver: &Receiver, rows: Vec<Row>, json: bool) -> anyhow::Result<i32> {
    for row in rows {
        let status = receiver
            .trail(format!("{}/{}", row.channel, row.id))
            .await
            .map_err(|e| e.to_string());
        if json {
            let mut line = row_json(&row);
            match status {
                Ok(status) => {
                    for key in ["state", "acknowledged_by", "trail"] {
                        line[key] = status[key].clone();
                    }
                }
                Err(reason) => line["trail_error"] = reason.into(),
            }
            println!("{line}");
            continue;
        }
        print_row(&row, false);
        match status {
            Ok(status) => {
                for event in status["trail"].as_array().into_iter().flatten() {
                    let text = |key: &str| event[key].as_str().unwrap_or("").to_owned();
                    let who = match (text("user"), text("device")) {
                        (user, _) if user.is_empty() => String::new(),
                        (user, device) if device.is_empty() => format!(" by {user}"),
                        (user, device) => format!(" by {user} on {device}"),
                    };
                    let detail = Some(text("detail"))
                        .filter(|d| !d.is_empty())
                        .map(|d| format!(" ({d})"))
                        .unwrap_or_default();
                    println!("    {} {}{who}{detail}", text("at"), text("event"));
                }
            }
            Err(reason) => println!("    (no trail: {reason})"),
        }
    }
    Ok(0)
}

fn print_row(row: &Row, json: bool) {
    if json {
        println!("{}", row_json(row));
    } else {
        let marker = match row.priority {
            Priority::Critical => "‼ CRITICAL",
            Priority::High => "! high    ",
            _ => "          ",
        };
        let state = if row.acked_at.is_some() {
            "acked"
        } else if row.read_at.is_some() {
            "read"
        } else {
            "new"
        };
        println!(
            "{} {marker} {:5} {} — {}  [{}]",
            row.id, state, row.title, row.body, row.channel
        );
    }
}

fn describe_event(event: &Event) -> Option<String> {
    Some(match event {
        Event::Connecting { transport } => format!("connecting ({transport})"),
        Event::Connected { transport } => format!("connected ({transport})"),
        Event::Reconnecting {
            in_ms,
            reason,
            offline_since,
        } => {
            let offline = Duration::from_millis(now_ms().saturating_sub(*offline_since)).as_secs();
            format!(
                "offline for {offline} s ({reason}); retrying in {:.1} s",
                *in_ms as f64 / 1000.0
            )
        }
        Event::GapDetected { channel, since } => format!(
            "HISTORY GAP on {channel}: notifications after {} are no longer on the relay; some may be missing",
            since
                .map(|s| s.to_string())
                .unwrap_or_else(|| "the start".into())
        ),
        Event::SignInRequired { reason } => format!("sign-in required: {reason}"),
        Event::Untrusted { reason } => format!("stopped: {reason}"),
        Event::Failed {
            reason,
            retrying: true,
        } => format!("NOT RECEIVING: {reason}; retrying"),
        Event::Failed { reason, .. } => format!("stopped: {reason}"),
        Event::AlertSettingsChanged { alerts } => format!(
            "alerts: quiet hours {}, sound {}, {}",
            alerts
                .quiet_hours
                .map(|q| q.to_string())
                .unwrap_or_else(|| "none".into()),
            if alerts.sound { "on" } else { "off" },
            match alerts.paused_until {
                Some(until) if until > now_ms() => format!(
                    "non-critical paused for {} min",
                    (until - now_ms()).div_ceil(60_000)
                ),
                _ => "not paused".into(),
            }
        ),
        Event::Acknowledged { channel, ids } => {
            format!("acknowledged {} on {channel}", ids.len())
        }
        Event::Declined { channel, ids } => {
            format!(
                "declined {} on {channel}: the relay escalates it",
                ids.len()
            )
        }
        Event::Reminder {
            notification,
            repeat,
        } => format!(
            "REMINDER {repeat}: {} on {} is still not acknowledged",
            notification.id, notification.channel
        ),
        Event::HandledElsewhere {
            kind,
            channel,
            ids,
            user,
            device,
        } => format!(
            "{} {} on {channel} by {user}{}",
            kind.as_str(),
            ids.iter()
                .map(|id| id.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            device
                .as_deref()
                .map(|d| format!(" on device {d}"))
                .unwrap_or_default()
        ),
        Event::NotReceiving { offline_since } => format!(
            "NOT RECEIVING critical results: no connection to the relay for {} s",
            now_ms().saturating_sub(*offline_since) / 1000
        ),
        Event::ReceivingAgain => "receiving again".into(),
        Event::ClockSkew { relay_ahead_s } => format!(
            "CLOCK: this device's clock is {} s {} the relay's; times shown and quiet hours may be wrong: set the clock (or enable network time)",
            relay_ahead_s.unsigned_abs(),
            if *relay_ahead_s > 0 {
                "behind"
            } else {
                "ahead of"
            }
        ),
        Event::SignedOut => "signed out".into(),
        Event::NotificationStored { .. } | Event::AlertOpened { .. } => return None,
    })
}

/// Ctrl-C, or (on Unix) SIGTERM from a service manager.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

/// How `listen` runs.
struct ListenRun {
    /// Notifications received longer ago are deleted.
    retention: Duration,
    /// JSON lines on stdout.
    json: bool,
    /// `None` for no OS alerts, else quiet hours that override the settings file's.
    alerts: Option<Option<QuietHours>>,
    /// The "not receiving" alarm's threshold.
    offline_alarm: Duration,
    /// Alerts show what notifications say.
    show_details: bool,
}

/// `listen`: the receiver in the foreground, as the app runs it, printing what happens.
async fn listen(cli: &Cli, run: ListenRun) -> anyhow::Result<i32> {
    let ListenRun {
        retention,
        json,
        alerts,
        offline_alarm,
        show_details,
    } = run;
    let wardline = door(cli)?;
    let account = wardline.account().await.map_err(|e| {
        without_keychain(
            e,
            "without a keychain on this machine, set WARDLINE_TOKEN instead",
        )
    })?;
    let receiver = wardline.open().await?;
    receiver.purge_older_than(retention).await?;
    receiver.set_offline_alarm(offline_alarm);
    if show_details {
        receiver.show_details_for_run();
    }
    let alerts = match alerts {
        None => Alerts::Off,
        Some(quiet_hours) => {
            if let Some(quiet_hours) = quiet_hours {
                receiver.override_quiet_hours(quiet_hours);
            }
            // There is no window to open: of what the person does with an alert, "Acknowledge"
            // is what matters here (stored at once and sent by the subscription).
            Alerts::Desktop
        }
    };
    let mut events = receiver.events();
    receiver.start(&account.server, &account.user, account.token, alerts);
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(Event::NotificationStored { notification }) => print_row(&notification, json),
                Ok(event) => {
                    if let Some(text) = describe_event(&event) {
                        eprintln!("wardline: {text}");
                    }
                    match event {
                        Event::SignInRequired { reason } => {
                            eprintln!("wardline: stopped: {reason}");
                            return Ok(3);
                        }
                        Event::Untrusted { .. } => return Ok(4),
                        Event::Failed { retrying: false, .. } => return Ok(2),
                        _ => {}
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    eprintln!("wardline: {n} events not shown (all are stored; see `wardline list`)");
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(0),
            },
            _ = &mut shutdown => {
                receiver.shutdown().await;
                // What was stored before the stop is printed too.
                while let Ok(event) = events.try_recv() {
                    if let Event::NotificationStored { notification } = event {
                        print_row(&notification, json);
                    }
                }
                return Ok(0);
            }
        }
    }
}

/// `ack`, `decline` and `read`: stored in the inbox first, then told to the relay if signed in
/// (else the listener tells it of an acknowledgement or decline when it connects).
async fn receipt(cli: &Cli, ids: Vec<String>, kind: ReceiptKind) -> anyhow::Result<i32> {
    let receiver = door(cli)?.open_existing().await?;
    let receipted = match kind {
        ReceiptKind::Declined => receiver.decline(ids).await?,
        ReceiptKind::Read => receiver.mark_read(ids).await?,
        _ => receiver.acknowledge(ids).await?,
    };
    let done = match kind {
        ReceiptKind::Declined => "declined",
        ReceiptKind::Read => "read",
        _ => "acknowledged",
    };
    match receipted.told {
        Told::Relay | Told::BySubscription => {
            for (_, id) in &receipted.ids {
                println!("{done} {id}");
            }
        }
        Told::NotYet(reason) => {
            // Acknowledgements and declines are kept until the relay confirms them; a read is told once.
            let later = if kind == ReceiptKind::Read {
                "the relay was not told"
            } else {
                "the listener tells the relay when it connects"
            };
            eprintln!("wardline: {done} here, but {reason}; {later}");
        }
    }
    Ok(0)
}

async fn status(cli: &Cli, json: bool) -> anyhow::Result<i32> {
    let status = door(cli)?.open_existing().await?.status().await?;
    let (counts, gaps) = (&status.counts, &status.gaps);
    let mut connection = status.connection.to_string();
    let ended = matches!(
        status.connection,
        ConnectionState::Stopped | ConnectionState::NeverStarted
    );
    if status.listener == Listener::NotRunning && !ended {
        connection = format!("not running (last seen as {connection})");
    }
    let detail = &status.detail;
    if json {
        let value = serde_json::json!({
            "connection": connection, "detail": detail, "changed_at": status.changed_at,
            "total": counts.total, "unread": counts.unread, "unacked_critical": counts.unacked_critical,
            "last_received_at": counts.last_received_at, "gaps": gaps,
            "not_receiving_since": status.not_receiving_since, "listener": status.listener,
        });
        println!("{value}");
    } else {
        println!(
            "connection: {connection}{}",
            if detail.is_empty() {
                String::new()
            } else {
                format!(" — {detail}")
            }
        );
        if let Some(since) = status.not_receiving_since {
            let for_s = Duration::from_millis(now_ms().saturating_sub(since)).as_secs();
            println!("NOT RECEIVING critical results: no connection to the relay for {for_s} s");
        }
        println!(
            "notifications: {} stored, {} unread, {} critical not acknowledged",
            counts.total, counts.unread, counts.unacked_critical
        );
        if let Some(last) = counts.last_received_at {
            let ago = Duration::from_millis(now_ms().saturating_sub(last)).as_secs();
            println!("last notification: {ago} s ago");
        }
        for gap in gaps {
            println!(
                "HISTORY GAP on {} (after {}): some notifications may be missing",
                gap.channel,
                gap.since.as_deref().unwrap_or("the start")
            );
        }
    }
    Ok(0)
}

async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.command {
        Command::Login { token } => login(&cli, token.clone()).await,
        Command::Logout => {
            let (server, user) = door(&cli)?.sign_out().await?;
            println!(
                "signed out: the token for {user} at {server} is no longer in the OS keychain"
            );
            Ok(0)
        }
        Command::Listen {
            json,
            no_alerts,
            quiet_hours,
            retention,
            offline_alarm,
            show_details,
        } => {
            let alerts = (!*no_alerts).then_some(*quiet_hours);
            let run = ListenRun {
                retention: *retention,
                json: *json,
                alerts,
                offline_alarm: *offline_alarm,
                show_details: *show_details,
            };
            listen(&cli, run).await
        }
        Command::List {
            unread,
            kind,
            priority,
            search,
            limit,
            json,
            trail,
        } => {
            let filter = Filter {
                unread: *unread,
                kind: kind.clone(),
                priority: *priority,
                search: search.clone(),
                limit: *limit,
                ..Filter::default()
            };
            let receiver = door(&cli)?.open_existing().await?;
            let rows = receiver.list(filter).await?;
            if *trail {
                return list_with_trails(&receiver, rows, *json).await;
            }
            for row in rows {
                print_row(&row, *json);
            }
            Ok(0)
        }
        Command::Ack { ids } => receipt(&cli, ids.clone(), ReceiptKind::Acknowledged).await,
        Command::Decline { ids } => receipt(&cli, ids.clone(), ReceiptKind::Declined).await,
        Command::Read { ids } => receipt(&cli, ids.clone(), ReceiptKind::Read).await,
        Command::Status { json } => status(&cli, *json).await,
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WARDLINE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        // Colour for a person at a terminal, never escape codes in a file or a pipe.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let code = match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("wardline: {e:#}");
            exit_code(&e)
        }
    };
    std::process::exit(code);
}
