//! A TLS client that misbehaves against the relay serving TLS itself (`--tls-cert`): a flood of
//! TLS 1.3 KeyUpdate requests, before any sign-in and over a signed-in WebSocket, leaves the
//! relay's memory flat (rustls queues at most one answer to them and refuses a 33rd in a row
//! without data); and silent connections from one address cannot take the handshake slots another
//! device's handshake needs. Before, the relay's own record layer queued an answer to every
//! request (here, 10 MB of them took it from 25 to 32 MiB, over a WebSocket from 27 to 33 MiB),
//! and 3,000 silent connections from one address made a real handshake wait 19 s. Real relay; raw
//! TLS clients (rustls's `ClientConnection` driven by hand over TCP).

use rustls::ClientConnection;
use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::TcpSocket;
use wardline_tests::proxy::{PrivateCa, client_config_trusting};
use wardline_tests::{Relay, WAIT, token};

/// Bytes of KeyUpdate records each flood sends, as the red team did.
const FLOOD_BYTES: usize = 10 * 1024 * 1024;

/// Most the relay's resident memory may grow while it takes a flood: flat, give or take the
/// allocator.
const FLAT_BYTES: u64 = 2 * 1024 * 1024;

/// A relay serving TLS with a certificate of a CA made for the test.
async fn tls_relay() -> (Relay, PrivateCa) {
    let ca = PrivateCa::new().unwrap();
    let certificate = ca.issue("Wardline relay").unwrap();
    let relay = Relay::embedded_tls(&ca, &certificate, &[]).await.unwrap();
    // The relay's first TLS request and answer, so that what they allocate once is not counted.
    assert_eq!(relay.get("/healthz", None).await.0, 200);
    (relay, ca)
}

/// A kB field of the relay's `/proc/<pid>/status`, in bytes.
fn status_bytes(relay: &Relay, field: &str) -> u64 {
    let pid = relay.pid().expect("the relay runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .trim()
        .parse()
        .unwrap();
    kib * 1024
}

/// Starts the relay's peak resident memory (`VmHWM`) over from what it holds now (writing 5 to
/// `clear_refs` does, since Linux 4.0); returns that (`VmRSS`).
fn restart_peak(relay: &Relay) -> u64 {
    let pid = relay.pid().expect("the relay runs");
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    status_bytes(relay, "VmRSS")
}

/// A TCP connection to the relay with a receive buffer of 4 KiB: what reads nothing fills it at
/// once, as any client's buffer fills sooner or later when it reads nothing (Linux would otherwise
/// grow it to megabytes on loopback and take the relay's answers there). Blocking, for
/// [`handshake`].
async fn connect_reading_little(relay: &Relay) -> StdTcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket
        .connect(relay.address.parse().unwrap())
        .await
        .unwrap()
        .into_std()
        .unwrap();
    tcp.set_nonblocking(false).unwrap();
    tcp.set_read_timeout(Some(WAIT)).unwrap();
    tcp
}

/// A TLS 1.3 handshake with the relay over `tcp`, driven by hand (blocking, so run it off the
/// test's runtime).
fn handshake(ca: &PrivateCa, mut tcp: StdTcpStream) -> (ClientConnection, StdTcpStream) {
    let config = client_config_trusting(ca.ca_pem().as_bytes()).unwrap();
    let mut tls = ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
    while tls.is_handshaking() {
        tls.complete_io(&mut tcp).unwrap();
    }
    assert_eq!(
        tls.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3),
        "KeyUpdate is TLS 1.3's"
    );
    (tls, tcp)
}

/// What a flood did.
struct Flooded {
    /// Bytes of records the relay took.
    sent: usize,
    /// Why the socket stopped taking them (the relay closed the connection), if it did.
    refused: Option<std::io::Error>,
}

/// Sends KeyUpdate requests, each asking the relay to update its own keys too, until
/// [`FLOOD_BYTES`] went out or the socket fails. With `data_every`, one byte of application data
/// follows every that many requests (`data`: what the bytes are), as a client does to keep
/// rustls's count of requests in a row from reaching its limit.
fn flood(tls: &mut ClientConnection, tcp: &mut StdTcpStream, data_every: Option<usize>) -> Flooded {
    let mut records = Vec::new();
    let mut sent = 0;
    while sent < FLOOD_BYTES {
        for n in 1..=64 {
            tls.refresh_traffic_keys()
                .expect("rustls sends a KeyUpdate request");
            if data_every.is_some_and(|every| n % every == 0) {
                tls.writer().write_all(b"x").unwrap();
            }
        }
        records.clear();
        while tls.wants_write() {
            tls.write_tls(&mut records).unwrap();
        }
        if let Err(e) = tcp.write_all(&records) {
            return Flooded {
                sent,
                refused: Some(e),
            };
        }
        sent += records.len();
    }
    Flooded {
        sent,
        refused: None,
    }
}

/// Waits until the relay has read all that was sent to it on the connection between `ours` and
/// `relays` (taken while it was open): our socket has nothing the relay's kernel has not
/// acknowledged, and the relay's socket nothing the relay has not read (`/proc/net/tcp`'s queues;
/// a socket no longer listed holds nothing). Until then the flood may still be in kernel buffers
/// rather than in the relay.
fn wait_until_relay_read_all((ours, relays): (SocketAddr, SocketAddr)) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let queued = |local: SocketAddr, remote: SocketAddr| -> (u64, u64) {
            table
                .lines()
                .skip(1)
                .find_map(|line| {
                    let fields: Vec<&str> = line.split_whitespace().collect();
                    if proc_address(fields[1]) != local || proc_address(fields[2]) != remote {
                        return None;
                    }
                    let (tx, rx) = fields[4].split_once(':')?;
                    Some((
                        u64::from_str_radix(tx, 16).ok()?,
                        u64::from_str_radix(rx, 16).ok()?,
                    ))
                })
                .unwrap_or((0, 0))
        };
        let (unacknowledged, _) = queued(ours, relays);
        let (_, unread) = queued(relays, ours);
        if unacknowledged == 0 && unread == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the relay did not read what was sent in {WAIT:?}: {unacknowledged} bytes unacknowledged, {unread} unread"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// An IPv4 address as `/proc/net/tcp` writes it (`0100007F:1F90`: the address in the machine's
/// byte order, the port in hex).
fn proc_address(text: &str) -> SocketAddr {
    let (ip, port) = text.split_once(':').expect("address:port");
    let ip = u32::from_str_radix(ip, 16).expect("hex address");
    let port = u16::from_str_radix(port, 16).expect("hex port");
    SocketAddr::from((ip.to_ne_bytes(), port))
}

/// Ends our side of the connection and reads (raw, undecrypted) until the relay ends its side:
/// by then the relay has processed all we sent. Fails if it keeps the connection past [`WAIT`].
fn finish(tcp: &mut StdTcpStream) {
    let _ = tcp.shutdown(Shutdown::Write);
    let mut sink = vec![0; 64 * 1024];
    loop {
        match tcp.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the relay kept the connection open for {WAIT:?} after the flood")
            }
            // Reset: closed as well.
            Err(_) => return,
        }
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_flood_before_sign_in_is_refused_and_leaves_memory_flat() {
    let (relay, ca) = tls_relay().await;
    let relay = std::sync::Arc::new(relay);
    let flooding = relay.clone();
    let tcp = connect_reading_little(&relay).await;
    let (before, flooded, peak) = tokio::task::spawn_blocking(move || {
        // No token, no request: a handshake, then KeyUpdate requests only, nothing read.
        let (mut tls, mut tcp) = handshake(&ca, tcp);
        let ends = (tcp.local_addr().unwrap(), tcp.peer_addr().unwrap());
        let before = restart_peak(&flooding);
        let flooded = flood(&mut tls, &mut tcp, None);
        // Nothing read yet: what the relay queued for us is still with it.
        wait_until_relay_read_all(ends);
        let peak = status_bytes(&flooding, "VmHWM");
        finish(&mut tcp);
        (before, flooded, peak)
    })
    .await
    .unwrap();
    eprintln!(
        "relay resident {:.1} MiB before, peak {:.1} MiB; {} bytes of KeyUpdates taken",
        mib(before),
        mib(peak),
        flooded.sent
    );
    assert!(
        peak < before + FLAT_BYTES,
        "the relay grew from {:.1} to {:.1} MiB taking {} bytes of KeyUpdates",
        mib(before),
        mib(peak),
        flooded.sent
    );
    assert!(
        flooded.refused.is_some() && flooded.sent < FLOOD_BYTES,
        "the relay took all {} bytes of KeyUpdate requests instead of closing the connection",
        flooded.sent
    );
    assert_eq!(relay.get("/healthz", None).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_update_flood_over_a_signed_in_websocket_leaves_memory_flat() {
    let (relay, ca) = tls_relay().await;
    let relay = std::sync::Arc::new(relay);
    let flooding = relay.clone();
    let doctor = token("d1", "doctor", &[], 600);
    let tcp = connect_reading_little(&relay).await;
    let (before, flooded, peak) = tokio::task::spawn_blocking(move || {
        let (mut tls, mut tcp) = handshake(&ca, tcp);
        // Signed in: a WebSocket of the HealthHub tutorial's kind (no subprotocol).
        write!(
            tls.writer(),
            "GET /ws/d1?token={doctor} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            tls.complete_io(&mut tcp).unwrap();
            let mut chunk = [0; 4096];
            match tls.reader().read(&mut chunk) {
                Ok(0) => panic!("the relay closed the connection instead of answering"),
                Ok(n) => head.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => continue,
                Err(e) => panic!("reading the upgrade's answer: {e}"),
            }
        }
        let head = String::from_utf8_lossy(&head).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        // The application data between requests: the payload of one text frame (client frames
        // are masked; a zero mask leaves it as written) that the flood never completes, so the
        // relay's WebSocket only buffers it and its frame limit does not end the connection.
        tls.writer()
            .write_all(&[0x81, 0x80 | 126, 0xff, 0xff, 0, 0, 0, 0])
            .unwrap();
        let ends = (tcp.local_addr().unwrap(), tcp.peer_addr().unwrap());
        let before = restart_peak(&flooding);
        let flooded = flood(&mut tls, &mut tcp, Some(16));
        wait_until_relay_read_all(ends);
        let peak = status_bytes(&flooding, "VmHWM");
        finish(&mut tcp);
        (before, flooded, peak)
    })
    .await
    .unwrap();
    eprintln!(
        "relay resident {:.1} MiB before, peak {:.1} MiB; {} bytes of KeyUpdates and data taken",
        mib(before),
        mib(peak),
        flooded.sent
    );
    assert!(
        peak < before + FLAT_BYTES,
        "the relay grew from {:.1} to {:.1} MiB taking {} bytes of KeyUpdates over a WebSocket",
        mib(before),
        mib(peak),
        flooded.sent
    );
    assert_eq!(relay.get("/healthz", None).await.0, 200);
}

/// More silent connections from one address than the relay has handshake slots (1,024).
const SILENT: usize = 3000;

/// The relay's default cap on handshakes from one address (`--max-tls-handshakes-per-ip`).
const HANDSHAKES_PER_ADDRESS: usize = 64;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_from_one_address_leave_handshake_slots_to_others() {
    // One descriptor per silent connection, in the test's process too.
    rlimit::increase_nofile_limit(SILENT as u64 + 1024).unwrap();
    let (relay, ca) = tls_relay().await;
    let address: SocketAddr = relay.address.parse().unwrap();
    let mut silent = Vec::with_capacity(SILENT);
    for _ in 0..SILENT {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from(([127, 0, 0, 2], 0))).unwrap();
        silent.push(socket.connect(address).await.unwrap());
    }

    // A device from another address: its handshake and request go through while they wait. (A
    // deadline, not a measurement: before, it waited for two rounds of the silent connections'
    // handshake timeouts, 20 s.)
    let device = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.ca_pem().as_bytes()).unwrap())
        .local_address(IpAddr::from([127, 0, 0, 3]))
        .build()
        .unwrap();
    let answered = tokio::time::timeout(
        Duration::from_secs(5),
        device.get(format!("{}/healthz", relay.base)).send(),
    )
    .await
    .expect("the device from 127.0.0.3 got no answer in 5 s: its handshake waited for a slot")
    .expect("the device from 127.0.0.3 was answered");
    assert_eq!(answered.status(), 200);

    // The connections from 127.0.0.2 beyond the cap were closed at once, and counted.
    let mut last = silent.pop().unwrap();
    let mut byte = [0; 1];
    let closed = tokio::time::timeout(WAIT, last.read(&mut byte))
        .await
        .expect("the relay kept a connection beyond the per-address cap waiting");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    let failures = relay
        .metric("wardline_tls_handshake_failures_total")
        .await
        .unwrap_or(0.0);
    assert!(
        failures >= (SILENT - HANDSHAKES_PER_ADDRESS) as f64,
        "{failures} handshake failures counted"
    );
}
