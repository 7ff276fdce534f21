//! The relay's plain HTTP endpoints a receiver uses: `GET /v1/me` to check a token at sign-in, and
//! `POST /v1/receipts` to send receipts without a WebSocket (the SSE fallback, `wardline ack`).

use std::time::Duration;
use wardline_protocol::{Channel, Cursor, ErrorCode, ReceiptKind, Sensitive};

const TIMEOUT: Duration = Duration::from_secs(10);

/// Records receipts at the relay; `Err` says why not (the caller sends them again later).
pub async fn send_receipts(
    client: &reqwest::Client,
    server: &str,
    token: &Sensitive<String>,
    kind: ReceiptKind,
    channel: &Channel,
    ids: &[Cursor],
) -> Result<(), String> {
    let body = serde_json::json!({"channel": channel, "ids": ids, "kind": kind});
    let response = client
        .post(format!("{}/v1/receipts", server.trim_end_matches('/')))
        .bearer_auth(token.expose())
        .json(&body)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("the relay is unreachable ({e})"))?;
    if response.status().is_success() {
        return Ok(());
    }
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    Err(format!("the relay refused it ({status}: {body})"))
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
}

/// What the relay makes of a token: `{user, role, channels, expires_at}`.
pub async fn whoami(
    server: &str,
    token: &Sensitive<String>,
) -> Result<serde_json::Value, TokenCheckError> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/me", server.trim_end_matches('/')))
        .bearer_auth(token.expose())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| {
            TokenCheckError::Unreachable(format!("cannot reach the relay at {server}: {e}"))
        })?;
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let code = body["code"].as_u64();
    match status {
        200..=299 => Ok(body),
        401 | 403 if code == Some(u64::from(ErrorCode::TokenExpired.code())) => {
            Err(TokenCheckError::Expired)
        }
        // Only the relay's own refusals carry a Wardline code; anything else is in the way.
        401 | 403 if code.is_some() => Err(TokenCheckError::Refused {
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
