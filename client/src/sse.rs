//! The Server-Sent Events fallback, for networks whose proxies refuse WebSocket upgrades: the same
//! resume (one `Last-Event-ID` carries every channel's cursor), the same storing and gap handling;
//! receipts and acknowledgements go back over `POST /v1/receipts`. After a while on SSE the
//! subscription ends the stream so that the WebSocket is tried again.
//!
//! The event-stream parser is a few lines of our own rather than `reqwest-eventsource`, whose
//! built-in reconnection would bypass this subscription's backoff, resume and state reporting.

use crate::subscription::{
    Acknowledgement, ChangeDetector, Grouped, Outcome, SSE_FALLBACK_FOR, Subscription,
    SubscriptionError, resume_point, retry,
};
use std::time::Duration;
use tokio::sync::mpsc;
use wardline_protocol::{Channel, ErrorCode, ReceiptKind, ServerFrame};

/// One event of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub name: String,
    /// `data:` lines, joined with newlines.
    pub data: String,
    /// `id:`, if given.
    pub id: Option<String>,
}

/// Turns chunks of an event stream into events.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: String,
}

impl SseParser {
    /// Adds a chunk; returns the events it completed (comments and empty events are skipped).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        self.buffer
            .push_str(&String::from_utf8_lossy(chunk).replace("\r\n", "\n"));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
            let mut event = SseEvent {
                name: "message".into(),
                data: String::new(),
                id: None,
            };
            let mut data_lines = Vec::new();
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event.name = value.to_owned(),
                    "data" => data_lines.push(value),
                    "id" => event.id = Some(value.to_owned()),
                    _ => {}
                }
            }
            if !data_lines.is_empty() {
                event.data = data_lines.join("\n");
                events.push(event);
            }
        }
        events
    }
}

impl Subscription {
    /// One SSE connection, from opening to its end.
    pub(crate) async fn sse(
        &self,
        acks: &mut mpsc::UnboundedReceiver<Acknowledgement>,
    ) -> Result<Outcome, SubscriptionError> {
        let (_, http) = self.bases()?;
        let cursors = self.with_inbox(|inbox| inbox.cursors()).await?;
        let since_of = |channel: &Channel| Some(resume_point(&cursors, channel));
        // The stream carries every channel the token reads; the relay says which.
        let me = match crate::http::whoami(&http, &self.options.token).await {
            Ok(me) => me,
            Err(e @ crate::http::TokenCheckError::Unreachable(_)) => {
                return Ok(retry(&e.to_string()));
            }
            Err(e) => return Ok(Outcome::SignIn(e.to_string())),
        };
        let channels: Vec<Channel> =
            serde_json::from_value(me["channels"].clone()).unwrap_or_default();
        let position: Vec<String> = channels
            .iter()
            .map(|c| format!("{c}={}", resume_point(&cursors, c)))
            .collect();
        let client = reqwest::Client::new();
        let mut request = client
            .get(format!("{http}/sse/{}", self.options.user))
            .bearer_auth(self.options.token.expose())
            .header("accept", "text/event-stream");
        if !position.is_empty() {
            request = request.header("last-event-id", position.join(";"));
        }
        let mut response = match tokio::time::timeout(Duration::from_secs(10), request.send()).await
        {
            Err(_) => return Ok(retry("connecting (SSE) timed out")),
            Ok(Err(e)) => return Ok(retry(&format!("cannot reach the relay (SSE): {e}"))),
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        if status != 200 {
            let body: serde_json::Value = response.json().await.unwrap_or_default();
            let message = body["message"].as_str().unwrap_or("refused").to_owned();
            return Ok(match (status, body["code"].as_u64()) {
                (401 | 403, Some(code)) if code == u64::from(ErrorCode::TokenExpired.code()) => {
                    Outcome::SignIn("the token has expired: sign in again".into())
                }
                // Only the relay's own refusals carry a Wardline code.
                (401 | 403, Some(_)) => {
                    Outcome::SignIn(format!("the relay refused the token: {message}"))
                }
                _ => retry(&format!("the relay answered {status} (SSE): {message}")),
            });
        }
        let pending = self.with_inbox(|inbox| inbox.pending_receipts()).await?;
        self.post_receipts(&client, &http, ReceiptKind::Received, pending.received)
            .await?;
        self.post_receipts(
            &client,
            &http,
            ReceiptKind::Acknowledged,
            pending.acknowledged,
        )
        .await?;
        self.set_state(
            "connected",
            &format!(
                "{} (Server-Sent Events: the WebSocket was refused)",
                self.options.server
            ),
        );
        self.online();
        self.emit(crate::Event::Connected { transport: "sse" });
        let dead_after = self.options.heartbeat * 2 + Duration::from_secs(5);
        let give_websocket_a_try = tokio::time::sleep(SSE_FALLBACK_FOR);
        tokio::pin!(give_websocket_a_try);
        let mut clock = tokio::time::interval(Duration::from_secs(5));
        let mut changes = ChangeDetector::new();
        let mut parser = SseParser::default();
        loop {
            tokio::select! {
                chunk = tokio::time::timeout(dead_after, response.chunk()) => {
                    let chunk = match chunk {
                        Err(_) => {
                            let reason = format!("no heartbeat from the relay for {} s", dead_after.as_secs());
                            return Ok(Outcome::Retry { reason, immediate: true });
                        }
                        Ok(Err(e)) => return Ok(retry(&format!("connection lost (SSE): {e}"))),
                        Ok(Ok(None)) => return Ok(retry("the relay ended the event stream")),
                        Ok(Ok(Some(chunk))) => chunk,
                    };
                    self.touch_state();
                    let mut frames = Vec::new();
                    let mut ended = None;
                    for event in parser.push(&chunk) {
                        match event.name.as_str() {
                            "error" => {
                                let body: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                                let code = body["close"].as_u64().unwrap_or(1011) as u16;
                                ended = Some(crate::ws::closed(code, body["message"].as_str().unwrap_or("")));
                            }
                            _ => match serde_json::from_str::<ServerFrame>(&event.data) {
                                Ok(frame) => frames.push(frame),
                                Err(e) => tracing::warn!(error = %e, "unreadable event from the relay"),
                            },
                        }
                    }
                    let received = self.handle(frames, &since_of).await?;
                    self.post_receipts(&client, &http, ReceiptKind::Received, received).await?;
                    if let Some(outcome) = ended {
                        return Ok(outcome);
                    }
                }
                Some(ack) = acks.recv() => {
                    let acknowledged = self.take_acks(ack, acks).await?;
                    self.post_receipts(&client, &http, ReceiptKind::Acknowledged, acknowledged).await?;
                }
                _ = clock.tick() => {
                    if let Some(what) = changes.changed() {
                        return Ok(Outcome::Retry { reason: what.into(), immediate: true });
                    }
                }
                _ = &mut give_websocket_a_try => {
                    return Ok(Outcome::Retry { reason: "trying the WebSocket again".into(), immediate: true });
                }
            }
        }
    }

    /// Sends receipts over HTTP; those the relay confirms are marked synced, the others are sent
    /// again on the next connection.
    async fn post_receipts(
        &self,
        client: &reqwest::Client,
        http: &str,
        kind: ReceiptKind,
        groups: Grouped,
    ) -> Result<(), SubscriptionError> {
        for (channel, ids) in groups {
            let sent =
                crate::http::send_receipts(client, http, &self.options.token, kind, &channel, &ids)
                    .await;
            match sent {
                Ok(()) => {
                    self.with_inbox(move |inbox| inbox.mark_synced(kind, &channel, &ids))
                        .await?
                }
                Err(reason) => tracing::warn!(%reason, "receipts not recorded; sent again later"),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_are_put_back_together() {
        let mut parser = SseParser::default();
        assert!(
            parser
                .push(b"retry: 2000\n\n: heartbeat\n\nid: a=1-0\nda")
                .is_empty()
        );
        let events = parser.push(b"ta: {\"op\":1}\n\nevent: resumed\r\ndata: x\r\n\r\n");
        assert_eq!(
            events,
            [
                SseEvent {
                    name: "message".into(),
                    data: "{\"op\":1}".into(),
                    id: Some("a=1-0".into())
                },
                SseEvent {
                    name: "resumed".into(),
                    data: "x".into(),
                    id: None
                },
            ]
        );
    }
}
