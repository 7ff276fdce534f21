//! The escalation email: sent through the hospital's SMTP server (`--smtp-url`), saying only that a
//! critical result for someone is waiting, never what it is or about whom.

use anyhow::{Context, anyhow, bail};
use lettre::message::Mailbox;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use std::path::Path;
use std::time::Duration;

/// The longest one SMTP exchange may take: a hospital's server under load may take 10 s over a
/// message, and one given up on while it delivers is sent again. The step's claim is renewed
/// while it waits (see [`crate::broker::tracking::STEP_RENEWAL`]).
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(30);

/// An SMTP server and the sender address.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

/// What an email says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email {
    /// The subject line.
    pub subject: String,
    /// The plain-text body.
    pub body: String,
}

impl Mailer {
    /// A mailer for `url`: `smtp://host:port` (plain), `smtp://host:port?tls=required` (STARTTLS),
    /// `smtps://host:port` (TLS from the start), with `user:password@` for servers that ask. The
    /// server's certificate is checked with the OS's certificate authorities, or with `ca_file`'s
    /// only (PEM) when one is given.
    pub fn new(url: &str, ca_file: Option<&Path>, from: &str) -> anyhow::Result<Mailer> {
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow!("--smtp-url {}: {e}", redacted(url)))?;
        if let Some(ca_file) = ca_file {
            builder = builder.tls(tls_with_ca(url, ca_file)?);
        }
        let transport = builder.timeout(Some(SMTP_TIMEOUT)).build();
        let from = from
            .parse()
            .map_err(|e| anyhow!("--smtp-from {from}: {e}"))?;
        Ok(Mailer { transport, from })
    }

    /// Sends `email` to every address of `to` in one message.
    pub async fn send(&self, to: &[String], email: &Email) -> Result<(), String> {
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(&email.subject);
        for address in to {
            let mailbox: Mailbox = address
                .parse()
                .map_err(|e| format!("not an address: {address}: {e}"))?;
            builder = builder.to(mailbox);
        }
        let message = builder
            .body(email.body.clone())
            .map_err(|e| format!("building the email: {e}"))?;
        tokio::time::timeout(SMTP_TIMEOUT, self.transport.send(message))
            .await
            .map_err(|_| format!("the SMTP server did not answer within {SMTP_TIMEOUT:?}"))?
            .map(|_| ())
            .map_err(|e| format!("SMTP: {e}"))
    }
}

/// The TLS `url` asks for (STARTTLS or TLS from the start), with the server's certificate checked
/// against the certificate authorities in `ca_file` and no others.
fn tls_with_ca(url: &str, ca_file: &Path) -> anyhow::Result<Tls> {
    let shown = redacted(url);
    let parsed = url::Url::parse(url).map_err(|e| anyhow!("--smtp-url {shown}: {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| anyhow!("--smtp-url {shown} names no host"))?;
    let asked = parsed
        .query_pairs()
        .find(|(key, _)| key == "tls")
        .map(|(_, value)| value.into_owned());
    let with_tls: fn(TlsParameters) -> Tls = match (parsed.scheme(), asked.as_deref()) {
        ("smtps", _) => Tls::Wrapper,
        ("smtp", Some("required")) => Tls::Required,
        ("smtp", Some("opportunistic")) => Tls::Opportunistic,
        _ => bail!(
            "--smtp-ca-file is for a server spoken to over TLS: use smtps://HOST:PORT or \
             smtp://HOST:PORT?tls=required in --smtp-url (not {shown})"
        ),
    };
    let pem = std::fs::read(ca_file)
        .with_context(|| format!("reading the SMTP CA certificate {}", ca_file.display()))?;
    let authorities = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("--smtp-ca-file {}: {e}", ca_file.display()))?;
    if authorities.is_empty() {
        bail!(
            "--smtp-ca-file {} holds no PEM certificate",
            ca_file.display()
        );
    }
    let mut parameters =
        TlsParameters::builder(host.to_owned()).certificate_store(CertificateStore::None);
    for authority in authorities {
        let certificate = Certificate::from_der(authority.to_vec())
            .map_err(|e| anyhow!("--smtp-ca-file {}: {e}", ca_file.display()))?;
        parameters = parameters.add_root_certificate(certificate);
    }
    let parameters = parameters
        .build_rustls()
        .map_err(|e| anyhow!("--smtp-ca-file {}: {e}", ca_file.display()))?;
    Ok(with_tls(parameters))
}

/// The longest display name an address may carry (`Dr Jones <jones@hospital.example>`): a name,
/// not a paragraph; with the address it keeps each mailbox far below a header line's 998
/// characters (RFC 5322).
pub const MAX_DISPLAY_NAME_CHARS: usize = 64;

/// Whether `address` reads as an email address, with a display name of at most
/// [`MAX_DISPLAY_NAME_CHARS`].
pub fn valid_address(address: &str) -> bool {
    address.parse::<Mailbox>().is_ok_and(|mailbox| {
        mailbox
            .name
            .is_none_or(|name| name.chars().count() <= MAX_DISPLAY_NAME_CHARS)
    })
}

/// Whether `address` is a valid address in one of `allowed_domains` (`--email-allowed-domains`:
/// exact domains, any case; none allows nothing).
pub fn allowed_address(address: &str, allowed_domains: &[String]) -> bool {
    let Ok(mailbox) = address.parse::<Mailbox>() else {
        return false;
    };
    valid_address(address)
        && allowed_domains
            .iter()
            .any(|domain| domain.eq_ignore_ascii_case(mailbox.email.domain()))
}

/// Why `address` may not be emailed, for an error message.
pub fn refusal(address: &str, allowed_domains: &[String]) -> String {
    if !valid_address(address) {
        format!(
            "`escalation.email_to`: not an email address (with a display name of at most \
             {MAX_DISPLAY_NAME_CHARS} characters): {address}"
        )
    } else if allowed_domains.is_empty() {
        format!(
            "`escalation.email_to`: {address}: the relay emails no domain until its administrator \
             names the hospital's (--email-allowed-domains)"
        )
    } else {
        format!(
            "`escalation.email_to`: {address} is not in a domain the relay may email ({})",
            allowed_domains.join(", ")
        )
    }
}

/// `url` without its password, for messages.
fn redacted(url: &str) -> String {
    match url.split_once('@') {
        Some((before, after)) => match before.rsplit_once(':') {
            Some((user, _)) if user.contains("//") => format!("{user}:***@{after}"),
            _ => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redacted("smtps://relay:s3cret@mail.example:465"),
            "smtps://relay:***@mail.example:465"
        );
        assert_eq!(redacted("smtp://mail:25"), "smtp://mail:25");
    }

    #[test]
    fn a_ca_file_needs_a_tls_url() {
        let error = Mailer::new(
            "smtp://mail.example:25",
            Some(Path::new("/nonexistent/ca.pem")),
            "wardline@localhost",
        )
        .expect_err("a plain URL with a CA file is refused");
        assert!(error.to_string().contains("smtps://HOST:PORT"), "{error}");
        let error = Mailer::new(
            "smtps://mail.example:465",
            Some(Path::new("/nonexistent/ca.pem")),
            "wardline@localhost",
        )
        .expect_err("a missing file is refused");
        assert!(
            format!("{error:#}").contains("reading the SMTP CA certificate /nonexistent/ca.pem"),
            "{error:#}"
        );
        let ca = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(ca.path(), "not a certificate").expect("written");
        let error = Mailer::new(
            "smtps://mail.example:465",
            Some(ca.path()),
            "wardline@localhost",
        )
        .expect_err("a file without a certificate is refused");
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
    }

    #[test]
    fn addresses_are_checked() {
        assert!(valid_address("oncall@hospital.example"));
        assert!(valid_address("Dr Jones <jones@hospital.example>"));
        assert!(!valid_address("not an address"));
        let long_name = format!("{} <jones@hospital.example>", "J".repeat(65));
        assert!(
            !valid_address(&long_name),
            "a display name over 64 characters"
        );
    }

    #[test]
    fn only_allowed_domains_are_emailed() {
        let allowed = vec!["Hospital.example".to_owned()];
        assert!(allowed_address("oncall@hospital.example", &allowed));
        assert!(allowed_address(
            "Dr Jones <jones@HOSPITAL.example>",
            &allowed
        ));
        assert!(!allowed_address("someone@elsewhere.example", &allowed));
        assert!(
            !allowed_address("x@evil.hospital.example", &allowed),
            "exact domains only"
        );
        assert!(
            !allowed_address("oncall@hospital.example", &[]),
            "none allows nothing"
        );
        assert!(refusal("oncall@hospital.example", &[]).contains("--email-allowed-domains"));
    }

    #[test]
    fn every_header_line_of_an_email_to_many_long_names_is_within_998_characters() {
        let mut builder = Message::builder()
            .from("wardline@localhost".parse().unwrap())
            .subject("Wardline: a critical result for dr-smith is waiting for acknowledgement");
        for n in 0..10 {
            let name = format!("{n}{}", "é".repeat(MAX_DISPLAY_NAME_CHARS - 1));
            let local = "a".repeat(64);
            let address = format!("{name} <{local}@hospital.example>");
            assert!(valid_address(&address));
            builder = builder.to(address.parse().unwrap());
        }
        let message = builder.body(String::from("body")).unwrap().formatted();
        let text = String::from_utf8(message).unwrap();
        for line in text.split("\r\n") {
            assert!(line.len() <= 998, "a {}-character line: {line}", line.len());
        }
    }
}
