//! The relay's plain HTTP endpoints a receiver uses: `GET /v1/me` to check a token at sign-in, and
//! `POST /v1/receipts` to send receipts without a WebSocket (the SSE fallback, `wardline ack`).

use std::time::Duration;
use wardline_protocol::{Channel, Cursor, ReceiptKind, Sensitive};

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

/// What the relay makes of a token: `{user, role, channels, expires_at}`.
pub async fn whoami(server: &str, token: &Sensitive<String>) -> Result<serde_json::Value, String> {
    let response = reqwest::Client::new()
        .get(format!("{}/v1/me", server.trim_end_matches('/')))
        .bearer_auth(token.expose())
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("cannot reach the relay at {server}: {e}"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if status.is_success() {
        Ok(body)
    } else {
        let reason = body["message"].as_str().unwrap_or("no reason given");
        Err(format!("the relay refused the token ({status}): {reason}"))
    }
}
