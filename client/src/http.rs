//! The relay's plain HTTP endpoints a receiver uses: `GET /v1/me` to check a token at sign-in, and
//! `POST /v1/receipts` to send receipts without a WebSocket (the SSE fallback, `wardline ack`).

use std::time::Duration;
use wardline_protocol::{Channel, Cursor, ErrorCode, ReceiptKind, Reconnect, Sensitive};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Records receipts at the relay; `Err` says why not (the caller sends them again later).
pub async fn send_receipts(
    client: &reqwest::Client,
    server: &str,
    token: &Sensitive<String>,
    kind: ReceiptKind,
    channel: &Channel,
    ids: &[Cursor],
    device: Option<&str>,
) -> Result<(), String> {
    let mut body = serde_json::json!({"channel": channel, "ids": ids, "kind": kind});
    if let Some(device) = device {
        body["device"] = device.into();
    }
    let response = client
        .post(format!("{}/v1/receipts", server.trim_end_matches('/')))
        .bearer_auth(token.expose())
        .json(&body)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(server, &e))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(format!("the relay refused it ({status}: {body})"))
}

/// A notification's state and trail as the relay keeps them (`GET /v1/messages/{channel}/{id}`):
/// `{state, acknowledged_by, trail: [{at, event, user?, device?, detail?}]}`.
pub async fn status(
    client: &reqwest::Client,
    server: &str,
    token: &Sensitive<String>,
    channel: &Channel,
    id: Cursor,
) -> Result<serde_json::Value, String> {
    let response = client
        .get(format!(
            "{}/v1/messages/{channel}/{id}",
            server.trim_end_matches('/')
        ))
        .bearer_auth(token.expose())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable(server, &e))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!(
            "the relay answered {status}: {}",
            body["message"].as_str().unwrap_or("")
        ))
    }
}

/// Why a token check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenCheckError {
    /// The relay says the token expired.
    #[error("the token has expired: sign in again")]
    Expired,
    /// The relay refused the token.
    #[error("the relay refused the token ({status}): {reason}")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The relay's message.
        reason: String,
    },
    /// The relay could not be reached or answered something else.
    #[error("{0}")]
    Unreachable(String),
    /// The relay's certificate cannot be trusted.
    #[error("{0}")]
    Untrusted(String),
}

/// What the relay makes of a token: `{user, role, channels, expires_at}`.
pub async fn whoami(
    client: &reqwest::Client,
    server: &str,
    token: &Sensitive<String>,
) -> Result<serde_json::Value, TokenCheckError> {
    let server = server.trim_end_matches('/');
    let response = client
        .get(format!("{server}/v1/me"))
        .bearer_auth(token.expose())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(
            |e| match crate::tls::certificate_problem(crate::tls::host_of(server), &e) {
                Some(problem) => TokenCheckError::Untrusted(problem),
                None => TokenCheckError::Unreachable(unreachable(server, &e)),
            },
        )?;
    let status = response.status().as_u16();
    let body = response.bytes().await.unwrap_or_default();
    if (200..300).contains(&status) {
        return serde_json::from_slice(&body).map_err(|_| {
            TokenCheckError::Unreachable(format!(
                "the relay at {server} gave an answer to /v1/me that is not JSON"
            ))
        });
    }
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let code = relay_error_code(&body);
    match code.map(|code| (code, Reconnect::after_refusal(code))) {
        Some((ErrorCode::TokenExpired, _)) => Err(TokenCheckError::Expired),
        // Only the relay's own refusals carry a Wardline code; anything else is in the way.
        Some((_, Reconnect::SignIn)) => Err(TokenCheckError::Refused {
            status,
            reason: body["message"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        }),
        _ => Err(TokenCheckError::Unreachable(format!(
            "the relay at {server} answered {status}"
        ))),
    }
}

/// The Wardline error code of an error body (`{"code": 40103, "message": …}`); `None` when the
/// answer has none, i.e. it came from something in between, not the relay.
pub(crate) fn relay_error_code(body: &serde_json::Value) -> Option<ErrorCode> {
    let code = u32::try_from(body["code"].as_u64()?).ok()?;
    ErrorCode::try_from(code).ok()
}

/// Why the relay at `server` could not be reached, and what to check: a refused connection means
/// nothing listens there, a timeout that the address or the network is wrong.
pub fn unreachable(server: &str, error: &reqwest::Error) -> String {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut refused = false;
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            refused |= io.kind() == std::io::ErrorKind::ConnectionRefused;
        }
        source = cause.source();
    }
    let place = crate::tls::host_of(server);
    let port = server
        .rsplit_once(':')
        .map(|(_, port)| port.trim_end_matches('/'))
        .filter(|port| port.bytes().all(|b| b.is_ascii_digit()));
    let address = match port {
        Some(port) => format!("{place}:{port}"),
        None => place.to_owned(),
    };
    if refused {
        format!("connection refused by {address} — is the relay running there, on that port?")
    } else if error.is_timeout() {
        format!(
            "no answer from {address} within {} s — is the address right, and the network up?",
            TIMEOUT.as_secs()
        )
    } else {
        format!("cannot reach the relay at {server}: {}", describe(error))
    }
}

/// An error with its causes, which reqwest's own message leaves out ("error sending request").
pub fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
