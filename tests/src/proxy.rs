//! What sits between a device and the relay on a real network, as TCP proxies in the test process:
//! - [`NoWebSocketProxy`]: refuses WebSocket upgrades and passes everything else, as some hospital
//!   and corporate proxies do;
//! - [`FreezableProxy`]: passes everything until frozen, then goes silent without closing anything
//!   (a dead NAT mapping, Wi-Fi roaming, a relay host that lost power): no FIN, no RST, and new
//!   connections are accepted and never answered;
//! - [`TlsProxy`]: terminates TLS with a certificate from a private CA made by the test, in front
//!   of a plain relay (what nginx does in production); [`client_config_trusting`] is the other end.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The proxy; stops on drop.
pub struct NoWebSocketProxy {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    task: JoinHandle<()>,
}

impl Drop for NoWebSocketProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl NoWebSocketProxy {
    /// Proxies to `upstream` (`127.0.0.1:<port>`).
    pub async fn start(upstream: &str) -> anyhow::Result<NoWebSocketProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(pass(client, upstream.clone()));
            }
        });
        Ok(NoWebSocketProxy { base, task })
    }
}

async fn pass(mut client: TcpStream, upstream: String) {
    let mut head = Vec::new();
    let mut buffer = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 65536 {
        match client.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    if String::from_utf8_lossy(&head)
        .to_ascii_lowercase()
        .contains("upgrade: websocket")
    {
        let _ = client
            .write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    }
    let Ok(mut server) = TcpStream::connect(&upstream).await else {
        return;
    };
    if server.write_all(&head).await.is_ok() {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    }
}

/// A proxy that can be frozen: see the module's documentation.
pub struct FreezableProxy {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    /// `127.0.0.1:<port>`.
    pub address: String,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for FreezableProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FreezableProxy {
    /// Proxies to `upstream` (`127.0.0.1:<port>`), passing everything.
    pub async fn start(upstream: &str) -> anyhow::Result<FreezableProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let (frozen, watching) = watch::channel(false);
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(forward(client, upstream.clone(), watching.clone()));
            }
        });
        Ok(FreezableProxy {
            base: format!("http://{address}"),
            address,
            frozen,
            accepted,
            task,
        })
    }

    /// Stops forwarding in both directions on every open connection without closing it, and
    /// accepts new connections without ever answering them.
    pub fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    /// Forwards new connections again; those open when it froze stay dead.
    pub fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// How many connections it has accepted.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn forward(client: TcpStream, upstream: String, frozen: watch::Receiver<bool>) {
    if *frozen.borrow() {
        hold_forever(client).await;
        return;
    }
    let Ok(server) = TcpStream::connect(&upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::spawn(pump(client_read, server_write, frozen.clone()));
    pump(server_read, client_write, frozen).await;
}

/// Copies one direction until either side closes; once frozen, keeps both ends open and silent.
async fn pump(
    mut from: impl AsyncRead + Unpin + Send,
    mut to: impl AsyncWrite + Unpin + Send,
    mut frozen: watch::Receiver<bool>,
) {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            read = from.read(&mut buffer) => match read {
                Ok(0) | Err(_) => {
                    let _ = to.shutdown().await;
                    return;
                }
                Ok(n) => {
                    if to.write_all(&buffer[..n]).await.is_err() {
                        return;
                    }
                }
            },
            _ = async { frozen.wait_for(|frozen| *frozen).await.map(|_| ()) } => {
                hold_forever((from, to)).await;
                return;
            }
        }
    }
}

/// Keeps what it is given (sockets) open and says nothing, until the test ends.
async fn hold_forever<T: Send>(held: T) {
    let _held = held;
    std::future::pending::<()>().await
}

/// A private certificate authority and a certificate it issued for `localhost` and `127.0.0.1`,
/// as a hospital's own CA would issue the relay's.
pub struct PrivateCa {
    ca_pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    leaf: rustls::pki_types::CertificateDer<'static>,
    leaf_key: rustls::pki_types::PrivateKeyDer<'static>,
}

/// A server certificate a [`PrivateCa`] issued, as PEM files hold it.
pub struct IssuedCertificate {
    /// The certificate (DER), to compare with what a server presents.
    pub der: rustls::pki_types::CertificateDer<'static>,
    /// The certificate, PEM.
    pub cert_pem: String,
    /// Its private key, PEM (PKCS#8).
    pub key_pem: String,
}

impl PrivateCa {
    /// A new CA and server certificate.
    pub fn new() -> anyhow::Result<PrivateCa> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Wardline test hospital CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate()?;
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);
        let (leaf, leaf_key) = issue(&issuer, "localhost")?;
        Ok(PrivateCa {
            ca_pem: ca.pem(),
            issuer,
            leaf: leaf.der().clone(),
            leaf_key: rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        })
    }

    /// Another certificate for `localhost` and `127.0.0.1` (a renewal), named `common_name`.
    pub fn issue(&self, common_name: &str) -> anyhow::Result<IssuedCertificate> {
        let (cert, key) = issue(&self.issuer, common_name)?;
        Ok(IssuedCertificate {
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The CA certificate, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Writes the CA certificate (PEM) into `dir`; returns its path.
    pub fn write_ca(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        let path = dir.join("hospital-ca.pem");
        std::fs::write(&path, &self.ca_pem)?;
        Ok(path)
    }
}

fn issue(
    issuer: &rcgen::Issuer<'static, rcgen::KeyPair>,
    common_name: &str,
) -> anyhow::Result<(rcgen::Certificate, rcgen::KeyPair)> {
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?;
    Ok((cert, key))
}

/// A TLS client configuration that trusts only the PEM certificate(s) `pem` (a private CA, or a
/// self-signed server certificate).
pub fn client_config_trusting(pem: &[u8]) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A TLS-terminating proxy in front of a plain relay.
pub struct TlsProxy {
    /// `https://localhost:<port>`.
    pub base: String,
    handshakes: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsProxy {
    /// Serves `ca`'s certificate and forwards to `upstream` (`127.0.0.1:<port>`).
    pub async fn start(upstream: &str, ca: &PrivateCa) -> anyhow::Result<TlsProxy> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(vec![ca.leaf.clone()], ca.leaf_key.clone_key())?;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("https://localhost:{}", listener.local_addr()?.port());
        let handshakes = Arc::new(AtomicUsize::new(0));
        let counter = handshakes.clone();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Ok(TlsProxy {
            base,
            handshakes,
            task,
        })
    }

    /// How many TLS handshakes clients started.
    pub fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}
