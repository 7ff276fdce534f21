//! The escalation email: sent through the hospital's SMTP server (`--smtp-url`), saying only that a
//! critical result for someone is waiting, never what it is or about whom.

use lettre::message::Mailbox;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// The longest one SMTP exchange may take: well inside a claimed step's lease.
const SMTP_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// `smtps://host:port` (TLS from the start), with `user:password@` for servers that ask.
    pub fn new(url: &str, from: &str) -> anyhow::Result<Mailer> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(url)
            .map_err(|e| anyhow::anyhow!("--smtp-url {}: {e}", redacted(url)))?
            .timeout(Some(SMTP_TIMEOUT))
            .build();
        let from = from
            .parse()
            .map_err(|e| anyhow::anyhow!("--smtp-from {from}: {e}"))?;
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

/// Whether `address` reads as an email address.
pub fn valid_address(address: &str) -> bool {
    address.parse::<Mailbox>().is_ok()
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
    fn addresses_are_checked() {
        assert!(valid_address("oncall@hospital.example"));
        assert!(!valid_address("not an address"));
    }
}
