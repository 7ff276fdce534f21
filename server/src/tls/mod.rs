//! HTTPS and WSS on the relay's one listener (`--tls-cert`, `--tls-key`).
//!
//! - [`Certificates`]: the certificate chain and key, read from PEM files at start and again on
//!   [`Certificates::reload`] (SIGHUP): new handshakes use the new certificate, open connections
//!   keep theirs. A reload that fails keeps the certificate in use and says why.
//! - [`TlsListener`]: accepts TCP and runs each TLS handshake in its own task, at most
//!   [`HANDSHAKE_TIMEOUT`] long and [`MAX_HANDSHAKES`] at once, so that a client that connects and
//!   says nothing never holds up the next one. Beyond that many, accepted connections wait for a
//!   slot in turn ([`SLOT_WAIT`] at most): a reconnect stampede after a restart gets in rather than
//!   being reset. The accept loop itself never waits for a slot: a full kernel accept queue would
//!   drop connections, and with SYN cookies reset ones the client already thinks open. Handshakes
//!   that fail are counted (`wardline_tls_handshake_failures_total`): a device that does not trust
//!   the certificate shows there.
//! - [`TlsStream`] (`stream.rs`): the relay's side of one connection, holding no buffer while the
//!   connection is idle; once a TLS 1.3 handshake is done, rustls's connection object is dropped
//!   and `records.rs` protects the records (RFC 8446's record layer over ring, keys from rustls).
//!   Measured per idle WebSocket against a plain one: `bench/results/relay.md`.

use crate::metrics::Metrics;
use crate::serve::TcpAcceptor;
use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, ServerConfig};
use rustls::sign::CertifiedKey;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};

mod records;
mod stream;
pub use stream::TlsStream;

/// Longest a client may take from TCP connect to a finished TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once; connections beyond wait for a slot, in turn.
pub const MAX_HANDSHAKES: usize = 1024;

/// Longest a connection waits for a handshake slot before it is closed.
pub const SLOT_WAIT: Duration = Duration::from_secs(30);

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
        // Established TLS 1.3 connections leave rustls for [`records`].
        config.enable_secret_extraction = true;
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
    /// Starts accepting on `tcp`; the accept loop ends when the listener is dropped.
    pub fn new(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
    ) -> std::io::Result<TlsListener> {
        TlsListener::with_handshake_limit(tcp, config, metrics, MAX_HANDSHAKES)
    }

    fn with_handshake_limit(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        metrics: Arc<Metrics>,
        max_handshakes: usize,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (ready_tx, ready) = mpsc::channel(64);
        tokio::spawn(accept_loop(
            TcpAcceptor::new(tcp, metrics.clone()),
            config,
            metrics,
            ready_tx,
            Arc::new(Semaphore::new(max_handshakes)),
        ));
        Ok(TlsListener { local, ready })
    }
}

async fn accept_loop(
    mut tcp: TcpAcceptor,
    config: Arc<ServerConfig>,
    metrics: Arc<Metrics>,
    ready: mpsc::Sender<(TlsStream, SocketAddr)>,
    handshakes: Arc<Semaphore>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = ready.closed() => return,
            accepted = tcp.next() => accepted,
        };
        let (config, metrics, ready) = (config.clone(), metrics.clone(), ready.clone());
        let handshakes = handshakes.clone();
        tokio::spawn(async move {
            // Waiting holds only the socket; the handshake's own deadline starts with its slot.
            let Ok(Ok(_permit)) = tokio::time::timeout(SLOT_WAIT, handshakes.acquire_owned()).await
            else {
                metrics.tls_handshake_failures_total.fetch_add(1, Relaxed);
                tracing::debug!(%peer, "no TLS handshake slot in time");
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsStream::accept(stream, config)).await {
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
    use tokio::net::TcpStream;
    use tokio::time::{sleep, timeout};
    use tokio_rustls::TlsConnector;

    #[tokio::test]
    async fn connections_beyond_the_handshake_limit_wait_for_a_free_slot() {
        let (server, client) = stream::tests::configs();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = tcp.local_addr().unwrap();
        let mut listener =
            TlsListener::with_handshake_limit(tcp, server, Arc::new(Metrics::default()), 1)
                .unwrap();

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
}
