//! Which relays the receiver trusts: the certificate authorities of the OS trust store, plus one
//! extra CA file for hospitals that run their own (`--ca-file` / `WARDLINE_CA_FILE`). There is no
//! way to turn verification off.
//!
//! One rustls configuration serves the WebSocket (tokio-tungstenite) and every HTTP request
//! (reqwest), so both trust exactly the same relays. A certificate the receiver cannot trust is
//! not a passing network fault: [`certificate_problem`] recognises it so that the subscription
//! stops with a clear message instead of retrying.

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// How long opening a TCP connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the trusted certificates could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    /// The extra CA file could not be read or holds no certificate.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
}

/// The certificates the receiver trusts, and the HTTP client that uses them. Cheap to clone.
///
/// The extra CA file is read (and refused if unusable) at once; the OS trust store, the TLS
/// configuration and the HTTP client are built on first use, so that a receiver of a plain
/// `http://` relay on loopback (the demo, a ward's local relay) never pays for them in memory.
#[derive(Clone)]
pub struct Trust {
    inner: Arc<TrustInner>,
}

struct TrustInner {
    extra: Vec<CertificateDer<'static>>,
    built: OnceLock<Built>,
}

struct Built {
    config: Arc<rustls::ClientConfig>,
    http: reqwest::Client,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Trust")
    }
}

impl Trust {
    /// The OS trust store plus the certificates in `ca_file` (PEM), if given.
    pub fn new(ca_file: Option<&Path>) -> Result<Trust, TrustError> {
        let mut extra = Vec::new();
        if let Some(path) = ca_file {
            let ca_error = |reason: String| TrustError::CaFile {
                path: path.to_owned(),
                reason,
            };
            extra = CertificateDer::pem_file_iter(path)
                .map_err(|e| ca_error(e.to_string()))?
                .collect::<Result<_, _>>()
                .map_err(|e| ca_error(e.to_string()))?;
            if extra.is_empty() {
                return Err(ca_error("no PEM certificate in it".into()));
            }
            let mut check = rustls::RootCertStore::empty();
            for certificate in &extra {
                check
                    .add(certificate.clone())
                    .map_err(|e| ca_error(e.to_string()))?;
            }
        }
        Ok(Trust {
            inner: Arc::new(TrustInner {
                extra,
                built: OnceLock::new(),
            }),
        })
    }

    /// The OS trust store plus the CA file named by `WARDLINE_CA_FILE`, if set.
    pub fn from_env() -> Result<Trust, TrustError> {
        let ca_file = std::env::var_os("WARDLINE_CA_FILE")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Trust::new(ca_file.as_deref())
    }

    /// The HTTP client for the relay's endpoints.
    pub fn http(&self) -> &reqwest::Client {
        &self.built().http
    }

    /// The TLS configuration for WebSocket connections.
    pub(crate) fn rustls(&self) -> Arc<rustls::ClientConfig> {
        self.built().config.clone()
    }

    fn built(&self) -> &Built {
        self.inner.built.get_or_init(|| {
            let mut roots = rustls::RootCertStore::empty();
            // A store that cannot be read in part still gives what it can: a relay whose CA is
            // missing then fails with a clear "not trusted" error naming it.
            let native = rustls_native_certs::load_native_certs();
            for error in &native.errors {
                tracing::debug!(%error, "part of the OS trust store could not be read");
            }
            let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
            // Checked in `new`.
            let (_added, _ignored) = roots.add_parsable_certificates(self.inner.extra.clone());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            let http = reqwest::Client::builder()
                .use_preconfigured_tls(config.clone())
                .connect_timeout(CONNECT_TIMEOUT)
                .build()
                .unwrap_or_else(|e| {
                    // Only a TLS back end that cannot start fails here; without it https fails
                    // with a clear certificate error, http still works.
                    tracing::error!(error = %e, "the HTTP client could not use the trusted certificates");
                    reqwest::Client::new()
                });
            Built {
                config: Arc::new(config),
                http,
            }
        })
    }
}

/// The host of a relay's base URL (`https://relay.example:8443/x` → `relay.example`), as
/// certificates name it.
pub fn host_of(url: &str) -> &str {
    let authority = url.split("//").nth(1).unwrap_or(url);
    let authority = authority.split('/').next().unwrap_or(authority);
    match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(v6),
        None => authority.split(':').next().unwrap_or(authority),
    }
}

/// If `error` (or anything it was caused by) says the relay's certificate cannot be trusted, what
/// to tell the person: which host, why, and what to do.
pub fn certificate_problem(
    host: &str,
    error: &(dyn std::error::Error + 'static),
) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        // An I/O error's `source` skips the error it wraps: look inside it too.
        let wrapped = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(error), wrapped].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>()
                && untrusted(tls)
            {
                return Some(format!(
                    "the relay's certificate for {host} cannot be trusted ({tls}); if your \
                     hospital runs its own certificate authority, give its certificate with \
                     --ca-file or WARDLINE_CA_FILE"
                ));
            }
        }
        current = error.source();
    }
    None
}

/// Whether a TLS failure is about the certificate (not a passing fault of the network).
fn untrusted(error: &rustls::Error) -> bool {
    matches!(
        error,
        rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType
            | rustls::Error::InvalidCertRevocationList(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let error = Trust::new(Some(&path)).unwrap_err();
        assert!(error.to_string().contains("no PEM certificate"), "{error}");
        let missing = Trust::new(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(missing.to_string().contains("missing.pem"), "{missing}");
    }

    #[test]
    fn hosts_are_named_as_certificates_name_them() {
        assert_eq!(host_of("https://relay.example:8443/base"), "relay.example");
        assert_eq!(host_of("https://localhost"), "localhost");
        assert_eq!(host_of("https://[::1]:8443"), "::1");
    }

    #[test]
    fn certificate_errors_are_found_inside_io_errors() {
        let tls = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, tls);
        let message = certificate_problem("relay.example", &io).expect("recognised");
        assert!(
            message.contains("relay.example") && message.contains("UnknownIssuer"),
            "{message}"
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(certificate_problem("relay.example", &refused), None);
    }
}
