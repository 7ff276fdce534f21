//! `wardline-loadgen`: the load generator of `cargo xtask bench relay`.
//!
//! - `wardline-loadgen connect --relay ADDR --secret S --count N --offset O --first-ip K --ips M --prefix P [--ca FILE]`
//!   opens N `wardline.v1` WebSockets (wss://, trusting the PEM certificate FILE, with `--ca`) as
//!   doctors `P-O … P-(O+N-1)`, each bound to a source address
//!   127.0.0.K … 127.0.0.(K+M-1), subscribed to its own channel and `system:alerts`; prints
//!   `ready N`; then records the latency of every notification whose payload carries `sent_us`
//!   (microseconds since the Unix epoch, set by the publisher on this same machine). On a stdin line
//!   `report PATH` it writes what it recorded to PATH as JSON and prints `reported`; on EOF it exits.
//! - `wardline-loadgen publish --redis URL --count M --clients C --prefix P --users N` sends M plain
//!   `PUBLISH`es (as existing backends do) over C connections, round-robin to `doctor:P-i:notifications`,
//!   and prints `published M in S s`.
//!
//! Several processes share the work because one process may hold only 20,000 open files here.

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

fn flags(args: &[String]) -> HashMap<String, String> {
    args.chunks(2)
        .filter_map(|pair| Some((pair[0].strip_prefix("--")?.to_owned(), pair.get(1)?.clone())))
        .collect()
}

fn flag<T: std::str::FromStr>(flags: &HashMap<String, String>, name: &str) -> anyhow::Result<T> {
    flags
        .get(name)
        .with_context(|| format!("--{name} is required"))?
        .parse()
        .ok()
        .with_context(|| format!("bad --{name}"))
}

/// What one process recorded.
#[derive(Default)]
struct Recorded {
    broadcast_latencies_us: Vec<u64>,
    unicast_received: u64,
    unicast_first_us: u64,
    unicast_last_us: u64,
    /// Connections made again after the relay answered a subscription "broker unavailable".
    subscribe_retries: u64,
}

fn token(secret: &str, sub: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 24 * 3600;
    let claims = json!({"sub": sub, "role": "doctor", "exp": exp});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signing")
}

/// Where and how one load-generating connection connects.
struct Connection {
    relay: SocketAddr,
    source: Ipv4Addr,
    tls: Option<tokio_rustls::TlsConnector>,
}

/// A TLS connector trusting the PEM certificate(s) in `path`.
fn tls_connector(path: &str) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = std::fs::read(path).with_context(|| format!("reading {path}"))?;
    let config = wardline_tests::proxy::client_config_trusting(&pem)?;
    Ok(tokio_rustls::TlsConnector::from(config))
}

/// The relay answered a subscription "broker unavailable" and closed with "try again later".
struct TryAgain;

/// One device: connects, subscribes and records, connecting again a second after a "try again
/// later" (as the receiver does; counted), at most five times.
async fn one_connection(
    connection: Connection,
    user: String,
    secret: Arc<String>,
    recorded: Arc<Mutex<Recorded>>,
    ready: tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<()> {
    for _ in 0..5 {
        let TryAgain = connect_once(&connection, &user, &secret, &recorded, &ready).await?;
        recorded.lock().unwrap().subscribe_retries += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    bail!("the relay said 'try again later' five times")
}

async fn connect_once(
    connection: &Connection,
    user: &str,
    secret: &str,
    recorded: &Arc<Mutex<Recorded>>,
    ready: &tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<TryAgain> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((connection.source, 0)))?;
    let stream = socket.connect(connection.relay).await?;
    let port = connection.relay.port();
    let scheme = if connection.tls.is_some() {
        "wss"
    } else {
        "ws"
    };
    let mut request = format!(
        "{scheme}://localhost:{port}/ws/{user}?token={}",
        token(secret, user)
    )
    .into_client_request()?;
    request
        .headers_mut()
        .insert("sec-websocket-protocol", "wardline.v1".parse()?);
    match &connection.tls {
        Some(tls) => {
            let stream = tls.connect("localhost".try_into()?, stream).await?;
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            receive(ws, user, recorded, ready).await
        }
        None => {
            let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
            receive(ws, user, recorded, ready).await
        }
    }
}

/// Subscribes, reports ready once both channels resumed, then records what arrives; returns when
/// the relay could not place a subscription now.
async fn receive<S>(
    mut ws: tokio_tungstenite::WebSocketStream<S>,
    user: &str,
    recorded: &Mutex<Recorded>,
    ready: &tokio::sync::mpsc::Sender<()>,
) -> anyhow::Result<TryAgain>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let subscribe = json!({"op": "subscribe", "channels": [
        {"channel": format!("doctor:{user}:notifications")}, {"channel": "system:alerts"}]});
    ws.send(Message::Text(subscribe.to_string().into())).await?;
    let mut resumed = 0;
    while let Some(message) = ws.next().await {
        let Message::Text(text) = message? else {
            continue;
        };
        let received = now_us();
        let frame: Value = serde_json::from_str(text.as_str())?;
        match frame["op"].as_str() {
            Some("resumed") => {
                resumed += 1;
                if resumed == 2 {
                    let _ = ready.send(()).await;
                }
            }
            Some("notification") => {
                let Some(sent) = frame["message"]["sent_us"].as_u64() else {
                    continue;
                };
                let mut recorded = recorded.lock().unwrap();
                if frame["channel"] == "system:alerts" {
                    recorded
                        .broadcast_latencies_us
                        .push(received.saturating_sub(sent));
                } else {
                    recorded.unicast_received += 1;
                    if recorded.unicast_first_us == 0 {
                        recorded.unicast_first_us = received;
                    }
                    recorded.unicast_last_us = received;
                }
            }
            Some("error") if frame["code"] == 50301 => return Ok(TryAgain),
            Some("error") => bail!("relay error: {text}"),
            _ => {}
        }
    }
    bail!("connection closed")
}

async fn connect(args: &[String]) -> anyhow::Result<()> {
    let flags = flags(args);
    let relay: SocketAddr = flag(&flags, "relay")?;
    let secret = Arc::new(flag::<String>(&flags, "secret")?);
    let count: usize = flag(&flags, "count")?;
    let first_ip: u8 = flag(&flags, "first-ip")?;
    let ips: u8 = flag(&flags, "ips")?;
    let prefix: String = flag(&flags, "prefix")?;
    let offset: usize = flag(&flags, "offset")?;
    let tls = match flags.get("ca") {
        Some(path) => Some(tls_connector(path)?),
        None => None,
    };
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel(count.max(1));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    for i in 0..count {
        let source = Ipv4Addr::new(127, 0, 0, first_ip + (i % ips as usize) as u8);
        let (secret, recorded, ready, failures, tls) = (
            secret.clone(),
            recorded.clone(),
            ready_tx.clone(),
            failures.clone(),
            tls.clone(),
        );
        let user = format!("{prefix}-{}", offset + i);
        tokio::spawn(async move {
            let connection = Connection { relay, source, tls };
            if let Err(e) = one_connection(connection, user, secret, recorded, ready).await {
                failures.lock().unwrap().push(e.to_string());
            }
        });
        // Pace the opening a little so the relay's accept queue never overflows.
        if i % 500 == 499 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    drop(ready_tx);
    for n in 0..count {
        if tokio::time::timeout(Duration::from_secs(120), ready_rx.recv())
            .await
            .ok()
            .flatten()
            .is_none()
        {
            bail!(
                "only {n} of {count} connections subscribed; failures: {:?}",
                failures.lock().unwrap().iter().take(3).collect::<Vec<_>>()
            );
        }
    }
    println!("ready {count}");
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = stdin.next_line().await? {
        let Some(path) = line.strip_prefix("report ") else {
            continue;
        };
        let report = {
            let recorded = recorded.lock().unwrap();
            json!({
                "broadcast_latencies_us": recorded.broadcast_latencies_us,
                "unicast_received": recorded.unicast_received,
                "unicast_first_us": recorded.unicast_first_us,
                "unicast_last_us": recorded.unicast_last_us,
                "subscribe_retries": recorded.subscribe_retries,
                "failures": failures.lock().unwrap().len(),
            })
        };
        std::fs::write(path, report.to_string())?;
        println!("reported");
    }
    Ok(())
}

async fn publish(args: &[String]) -> anyhow::Result<()> {
    let flags = flags(args);
    let url: String = flag(&flags, "redis")?;
    let count: usize = flag(&flags, "count")?;
    let clients: usize = flag(&flags, "clients")?;
    let prefix: String = flag(&flags, "prefix")?;
    let users: usize = flag(&flags, "users")?;
    let client = redis::Client::open(url)?;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut conn = client.get_multiplexed_async_connection().await?;
        let prefix = prefix.clone();
        tasks.push(tokio::spawn(async move {
            let mut n = c;
            while n < count {
                let channel = format!("doctor:{prefix}-{}:notifications", n % users);
                let payload = json!({"type": "lab_result_available", "n": n, "sent_us": now_us()})
                    .to_string();
                redis::cmd("PUBLISH")
                    .arg(channel)
                    .arg(payload)
                    .query_async::<i64>(&mut conn)
                    .await?;
                n += clients;
            }
            Ok::<_, redis::RedisError>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    println!(
        "published {count} in {:.3} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("connect") => connect(&args[1..]).await,
        Some("publish") => publish(&args[1..]).await,
        _ => bail!("usage: wardline-loadgen connect … | publish … (see the source's first lines)"),
    }
}
