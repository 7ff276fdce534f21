//! HTTPS and WSS on the relay's one listener (`--tls-cert`, `--tls-key`). No TLS record code is
//! the relay's own: rustls protects and parses every record, through tokio-rustls.
//!
//! - [`Certificates`]: the certificate chain and key, read from PEM files at start and again on
//!   [`Certificates::reload`] (SIGHUP): new handshakes use the new certificate, open connections
//!   keep theirs. A reload that fails keeps the certificate in use and says why.
//! - [`TlsListener`]: accepts TCP and runs each TLS handshake in its own task, at most
//!   [`HANDSHAKE_TIMEOUT`] long and [`MAX_HANDSHAKES`] at once, so that a client that connects and
//!   says nothing never holds up the next one. Beyond that many, accepted connections wait for a
//!   slot in turn ([`SLOT_WAIT`] at most): a reconnect stampede after a restart gets in rather than
//!   being reset. One address may have at most `--max-tls-handshakes-per-ip` connections
//!   ([`HANDSHAKES_PER_ADDRESS`] by default) waiting for a slot or in a handshake; a connection
//!   beyond is closed at once, so that one address cannot take the slots everyone's handshakes
//!   wait for (3,000 silent connections from one address made another client's handshake wait
//!   19 s). The address is the TCP peer's own: nothing the client says (a forwarding header) has
//!   been read yet. The accept loop itself never waits for a slot: a full kernel accept queue
//!   would drop connections, and with SYN cookies reset ones the client already thinks open.
//!   Handshakes that fail, time out, find no slot or pass the per-address cap are counted
//!   (`wardline_tls_handshake_failures_total`): a device that does not trust the certificate shows
//!   there.
//! - [`TlsStream`]: an established connection, tokio-rustls's server stream over TCP: rustls's
//!   connection and buffers, and its limits (at most one answer to a peer's KeyUpdate requests is
//!   queued, and a 33rd request in a row without data ends the connection: a flood of them leaves
//!   memory flat, `tests/tests/tls_abuse.rs`). What an idle TLS WebSocket costs next to a plain
//!   one is measured, without a target: `bench/results/relay.md`. (Should memory ever demand
//!   less, kernel TLS through a maintained crate, never records of our own.)

use crate::metrics::Metrics;
use crate::serve::TcpAcceptor;
use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;

/// An established TLS connection: rustls's, over TCP.
pub type TlsStream = tokio_rustls::server::TlsStream<TcpStream>;

/// Longest a client may take from TCP connect to a finished TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; connections beyond wait for a slot, in turn.
pub const MAX_HANDSHAKES: usize = 1024;

/// Longest a connection waits for a handshake slot before it is closed.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

/// Connections from one address waiting for a handshake slot or in a handshake, by default
/// (`--max-tls-handshakes-per-ip`): a sixteenth of [`MAX_HANDSHAKES`], so that it takes sixteen
/// addresses to fill them. A handshake takes milliseconds, so devices behind one NAT still get in
/// by the hundred each second; behind a TCP load balancer every device shares its address: raise
/// it there.
pub const HANDSHAKES_PER_ADDRESS: usize = 64;

/// The PEM files a certificate is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The relay's certificate, replaceable while it runs.
#[derive(Debug)]
pub struct Certificates {
    files: TlsFiles,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Reads the certificate and key; an error says which file and what is wrong with it.
    pub fn load(files: &TlsFiles) -> anyhow::Result<Arc<Certificates>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = read(files, &provider)?;
        Ok(Arc::new(Certificates {
            files: files.clone(),
            provider,
            current: RwLock::new(Arc::new(key)),
        }))
    }

    /// Reads the files again: new handshakes use what they hold now. On an error the certificate
    /// in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let key = read(&self.files, &self.provider)?;
        *self.current.write().expect("certificate lock") = Arc::new(key);
        Ok(())
    }

    /// The rustls configuration that serves these certificates (HTTP/1.1, which WebSocket
    /// upgrades need).
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("certificate lock").clone())
    }
}

fn read(files: &TlsFiles, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the TLS certificate {}", files.cert.display()))?;
    anyhow::ensure!(
        !chain.is_empty(),
        "{} holds no certificate (PEM, BEGIN CERTIFICATE)",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .with_context(|| format!("reading the TLS key {}", files.key.display()))?;
    CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "{} and {} do not make a usable certificate",
            files.cert.display(),
            files.key.display()
        )
    })
}

/// A listener whose connections are TLS streams, handshaken off the accept loop.
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream, SocketAddr)>,
}

impl TlsListener {
    /// Starts accepting on `tcp`, at most `per_address` connections from one address waiting for
    /// or in a handshake; the accept loop ends when the listener is dropped.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
        per_address: usize,
    ) -> std::io::Result<TlsListener> {
        TlsListener::with_limits(tcp, config, metrics, MAX_HANDSHAKES, per_address)
    }

    fn with_limits(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
        max_handshakes: usize,
        per_address: usize,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            TcpAcceptor::new(tcp, metrics.clone()),
            TlsAcceptor::from(config),
            metrics,
            ready_tx,
            Arc::new(Semaphore::new(max_handshakes)),
            Arc::new(Handshaking::new(per_address)),
        ));
        Ok(TlsListener { local, ready })
    }
}

async fn accept_loop(
    mut tcp: TcpAcceptor,
    acceptor: TlsAcceptor,
    metrics: Arc<Metrics>,
    ready: mpsc::Sender<(TlsStream, SocketAddr)>,
    slots: Arc<Semaphore>,
    handshaking: Arc<Handshaking>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = tcp.next() => accepted,
        };
        let Some(turn) = handshaking.admit(peer.ip()) else {
            // Dropped: closed at once, without a task or a wait.
            drop(stream);
            metrics.tls_handshake_failures_total.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "closed: too many TLS handshakes from this address");
            continue;
        };
        let (acceptor, metrics, ready) = (acceptor.clone(), metrics.clone(), ready.clone());
        let slots = slots.clone();
        tokio::spawn(async move {
            // Counted against the address until the handshake ends, however it ends.
            let _turn = turn;
            // Waiting holds only the socket; the handshake's own deadline starts with its slot.
            let Ok(Ok(_slot)) = tokio::time::timeout(SLOT_WAIT, slots.acquire_owned()).await else {
                metrics.tls_handshake_failures_total.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "no TLS handshake slot in time");
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    let _ = ready.send((tls, peer)).await;
                }
                Ok(Err(e)) => {
                    metrics.tls_handshake_failures_total.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                }
                Err(_) => {
                    metrics.tls_handshake_failures_total.fetch_add(1, Relaxed);
                    tracing::debug!(%peer, "TLS handshake not finished in time");
                }
            }
        });
    }
}

/// Connections waiting for a handshake slot or in a handshake, per TCP peer address.
struct Handshaking {
    per_address: usize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
}

/// One connection's place in [`Handshaking`]'s count, given back when dropped.
struct HandshakeTurn {
    handshaking: Arc<Handshaking>,
    address: IpAddr,
}

impl Handshaking {
    fn new(per_address: usize) -> Handshaking {
        Handshaking {
            per_address,
            by_address: Mutex::new(HashMap::new()),
        }
    }

    /// A turn for one more connection from `address`, or `None` if it has its most already.
    fn admit(self: &Arc<Self>, address: IpAddr) -> Option<HandshakeTurn> {
        // An IPv4 client on a dual-stack listener is the same client as on an IPv4 one.
        let address = address.to_canonical();
        let mut by_address = self.by_address.lock().unwrap_or_else(|e| e.into_inner());
        let count = by_address.entry(address).or_default();
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(HandshakeTurn {
            handshaking: self.clone(),
            address,
        })
    }
}

impl Drop for HandshakeTurn {
    fn drop(&mut self) {
        let mut by_address = self
            .handshaking
            .by_address
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(count) = by_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                by_address.remove(&self.address);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop only ends once this listener is gone.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use rustls::ClientConfig;
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpSocket;
    use tokio::time::{sleep, timeout};
    use tokio_rustls::TlsConnector;

    /// A server configuration for a fresh self-signed `localhost` certificate (the relay's
    /// protocol versions and cipher suites), and a client configuration trusting it.
    fn configs() -> (Arc<ServerConfig>, Arc<ClientConfig>) {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(certified.cert.der().to_vec());
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key.into())
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TCP connection to `to` from the loopback address `from`.
    async fn connect_from(from: [u8; 4], to: SocketAddr) -> TcpStream {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind(SocketAddr::from((from, 0))).unwrap();
        socket.connect(to).await.unwrap()
    }

    /// A TLS handshake with the listener at `address` from `from`, at most 5 s.
    async fn handshake_from(
        from: [u8; 4],
        address: SocketAddr,
        client: Arc<ClientConfig>,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = connect_from(from, address).await;
        timeout(
            Duration::from_secs(5),
            TlsConnector::from(client).connect("localhost".try_into().unwrap(), tcp),
        )
        .await
        .expect("the handshake ended within 5 s")
    }

    #[tokio::test]
    async fn connections_beyond_the_handshake_limit_wait_for_a_free_slot() {
        let (server, client) = configs();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener =
            TlsListener::with_limits(tcp, server, Arc::new(Metrics::default()), 1, 64).unwrap();

        // A client that connects and says nothing holds the one handshake slot.
        let silent = TcpStream::connect(address).await.unwrap();
        let connector = TlsConnector::from(client);
        let handshake = tokio::spawn(async move {
            let tcp = TcpStream::connect(address).await?;
            connector
                .connect("localhost".try_into().unwrap(), tcp)
                .await
        });
        sleep(Duration::from_millis(300)).await;
        assert!(
            !handshake.is_finished(),
            "the second client was turned away instead of waiting: {:?}",
            handshake.await
        );

        // The silent client leaves: the waiting one is accepted and its handshake completes.
        drop(silent);
        let (_, peer) = timeout(Duration::from_secs(5), listener.accept())
            .await
            .expect("the waiting client was accepted");
        let tls = handshake.await.unwrap().expect("its handshake completed");
        assert_eq!(tls.get_ref().0.local_addr().unwrap(), peer);
    }

    #[tokio::test]
    async fn one_address_beyond_its_cap_is_closed_at_once_and_others_still_get_slots() {
        let (server, client) = configs();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let mut listener = TlsListener::with_limits(tcp, server, metrics.clone(), 8, 2).unwrap();

        // Two silent connections from 127.0.0.2 take its two turns; a third is closed at once.
        let mut silent = vec![
            connect_from([127, 0, 0, 2], address).await,
            connect_from([127, 0, 0, 2], address).await,
        ];
        let mut third = connect_from([127, 0, 0, 2], address).await;
        let closed = timeout(Duration::from_secs(5), third.read(&mut [0; 1]))
            .await
            .expect("the third connection was closed at once");
        assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
        assert_eq!(metrics.tls_handshake_failures_total.load(Relaxed), 1);

        // Another address is not held up by them.
        let other = handshake_from([127, 0, 0, 3], address, client.clone()).await;
        other.expect("a handshake from 127.0.0.3 completed");
        let (_, peer) = listener.accept().await;
        assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 3]));

        // Once one of the silent ones leaves, 127.0.0.2 has a turn again.
        drop(silent.pop());
        let again = handshake_from([127, 0, 0, 2], address, client).await;
        again.expect("a handshake from 127.0.0.2 completed");
        let (_, peer) = listener.accept().await;
        assert_eq!(peer.ip(), IpAddr::from([127, 0, 0, 2]));
    }

    #[tokio::test]
    async fn a_client_that_does_not_trust_the_certificate_is_refused_and_counted() {
        let (server, _) = configs();
        let (_, stranger) = configs();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let metrics = Arc::new(Metrics::default());
        let _listener = TlsListener::new(tcp, server, metrics.clone(), 64).unwrap();
        let refused = handshake_from([127, 0, 0, 1], address, stranger).await;
        let error = refused.expect_err("the client trusted a certificate it should not");
        assert!(
            error.to_string().contains("invalid peer certificate"),
            "{error}"
        );
        // The relay's side fails once the client's alert arrives.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while metrics.tls_handshake_failures_total.load(Relaxed) == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the failed handshake was not counted"
            );
            sleep(Duration::from_millis(10)).await;
        }
    }
}
