//! The Server-Sent Events fallback, for networks whose proxies refuse WebSocket upgrades: the same
//! resume (one `Last-Event-ID` carries every channel's cursor), the same storing and gap handling;
//! receipts and acknowledgements go back over `POST /v1/receipts`. After a while on SSE the
//! subscription ends the stream so that the WebSocket is tried again.
//!
//! The event-stream parser ([`SseParser`]) follows the HTML standard's interpretation of event
//! streams; it is our own rather than `reqwest-eventsource`, whose built-in reconnection would
//! bypass this subscription's backoff, resume and state reporting.

use crate::liveness::{HANDSHAKE_TIMEOUT, Silence, silence_limit};
use crate::subscription::{
    ChangeDetector, Grouped, HISTORY_EPOCH, Outcome, Pace, SSE_FALLBACK_FOR, Subscription,
    SubscriptionError, closed, refused, resume_point, retry,
};
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use wardline_protocol::{Channel, Cursor, ReceiptKind, ServerFrame};

/// One event of an event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// `event:` (`message` when absent).
    pub name: String,
    /// `data:` lines, joined with newlines.
    pub data: String,
    /// `id:`, if this event gave one.
    pub id: Option<String>,
}

/// Turns chunks of an event stream into events, as the HTML standard's event-stream interpretation
/// says: lines end with CRLF, LF or CR (also when a CRLF is split between chunks); a line is decoded
/// as UTF-8 only once it is whole, so a character split between chunks arrives intact; `data:`
/// lines join with newlines; comments are skipped; `retry:` sets the reconnection time.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    after_cr: bool,
    started: bool,
    name: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    retry: Option<Duration>,
}

/// The byte order mark a stream may start with.
const BOM: &str = "\u{feff}";

impl SseParser {
    /// Adds a chunk; returns the events it completed.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        for &byte in chunk {
            match byte {
                b'\n' if self.after_cr => self.after_cr = false,
                b'\n' | b'\r' => {
                    self.after_cr = byte == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(event) = self.line_ended(&line) {
                        events.push(event);
                    }
                }
                _ => {
                    self.after_cr = false;
                    self.line.push(byte);
                }
            }
        }
        events
    }

    /// The reconnection time the stream asked for, if it did (read so that the stream is parsed
    /// as the standard says; the subscription's own backoff decides when to come back).
    #[cfg(test)]
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    fn line_ended(&mut self, line: &[u8]) -> Option<SseEvent> {
        let text = String::from_utf8_lossy(line);
        let mut text: &str = &text;
        if !self.started {
            self.started = true;
            text = text.strip_prefix(BOM).unwrap_or(text);
        }
        if text.is_empty() {
            return self.dispatch();
        }
        if text.starts_with(':') {
            return None;
        }
        let (field, value) = match text.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (text, ""),
        };
        match field {
            "event" => self.name = Some(value.to_owned()),
            "data" => {
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(value);
                self.has_data = true;
            }
            "id" if !value.contains('\0') => self.id = Some(value.to_owned()),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.retry = value.parse().ok().map(Duration::from_millis);
            }
            _ => {}
        }
        None
    }

    fn dispatch(&mut self) -> Option<SseEvent> {
        let name = self.name.take();
        let id = self.id.take();
        if !std::mem::take(&mut self.has_data) {
            return None;
        }
        Some(SseEvent {
            name: name
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "message".into()),
            data: std::mem::take(&mut self.data),
            id,
        })
    }
}

impl Subscription {
    /// One SSE connection, from opening to its end.
    pub(crate) async fn sse(&self) -> Result<Outcome, SubscriptionError> {
        let (_, http) = self.bases()?;
        let cursors = self.with_inbox(|inbox| inbox.cursors()).await?;
        // The stream carries every channel the token reads; the relay says which. When it cannot
        // say, the channels this device already follows resume from their cursors all the same:
        // resuming from "now" would skip what was published while it was away, unseen.
        let channels: Vec<Channel> = match crate::http::whoami(
            self.options.trust.http(),
            &http,
            &self.token(),
        )
        .await
        {
            Ok(me) => match serde_json::from_value::<Vec<Channel>>(me["channels"].clone()) {
                Ok(channels) if !channels.is_empty() => channels,
                _ => cursors.iter().map(|(c, _)| c.clone()).collect(),
            },
            Err(crate::http::TokenCheckError::Untrusted(problem)) => {
                return Ok(Outcome::Untrusted(problem));
            }
            Err(e @ crate::http::TokenCheckError::Unreachable(_)) => {
                tracing::warn!(error = %e, "the relay did not say which channels this token reads");
                cursors.iter().map(|(c, _)| c.clone()).collect()
            }
            Err(e) => return Ok(Outcome::SignIn(e.to_string())),
        };
        if channels.is_empty() {
            return Ok(retry("the relay did not say which channels to follow"));
        }
        let epoch = self
            .with_inbox(|inbox| inbox.state(HISTORY_EPOCH))
            .await?
            .filter(|_| !cursors.is_empty());
        let position: Vec<String> = epoch
            .map(|epoch| format!("epoch={epoch}"))
            .into_iter()
            .chain(
                channels
                    .iter()
                    .map(|c| format!("{c}={}", resume_point(&cursors, c))),
            )
            .collect();
        let client = self.options.trust.http();
        let request = client
            .get(format!("{http}/sse/{}", self.options.user))
            .query(&[("device", self.device())])
            .bearer_auth(self.token().expose())
            .header("accept", "text/event-stream")
            .header("last-event-id", position.join(";"));
        let response = match tokio::time::timeout(HANDSHAKE_TIMEOUT, request.send()).await {
            Err(_) => return Ok(retry("the relay did not answer the event-stream request")),
            Ok(Err(e)) => {
                if let Some(problem) =
                    crate::tls::certificate_problem(crate::tls::host_of(&http), &e)
                {
                    return Ok(Outcome::Untrusted(problem));
                }
                return Ok(retry(&format!("cannot reach the relay (SSE): {e}")));
            }
            Ok(Ok(response)) => response,
        };
        self.check_clock(response.headers().get("date").and_then(|d| d.to_str().ok()));
        let status = response.status().as_u16();
        if status != 200 {
            let body = response.bytes().await.unwrap_or_default();
            return Ok(refused(status, &body)
                .unwrap_or_else(|| retry(&format!("the relay answered {status} (SSE)"))));
        }
        let pending = self.with_inbox(|inbox| inbox.pending_receipts()).await?;
        self.post_receipts(&http, ReceiptKind::Received, pending.received)
            .await?;
        self.post_receipts(&http, ReceiptKind::Acknowledged, pending.acknowledged)
            .await?;
        self.post_receipts(&http, ReceiptKind::Declined, pending.declined)
            .await?;
        self.online().await?;
        let detail = format!(
            "{} (Server-Sent Events: the WebSocket was refused)",
            self.options.server
        );
        self.connected("sse", &detail).await;
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.map_err(|e| e.to_string()));
        self.sse_session(&http, &cursors, chunks).await
    }

    /// An event stream that is open: events in, receipts and acknowledgements out over HTTP,
    /// until it ends, goes silent, or it is time to try the WebSocket again.
    pub(crate) async fn sse_session<S, C>(
        &self,
        http: &str,
        cursors: &[(Channel, Cursor)],
        mut chunks: S,
    ) -> Result<Outcome, SubscriptionError>
    where
        S: Stream<Item = Result<C, String>> + Unpin,
        C: AsRef<[u8]>,
    {
        let since_of = |channel: &Channel| Some(resume_point(cursors, channel));
        let give_websocket_a_try = tokio::time::sleep(SSE_FALLBACK_FOR);
        tokio::pin!(give_websocket_a_try);
        let mut clock = tokio::time::interval(Duration::from_secs(5));
        let mut changes = ChangeDetector::new();
        let mut parser = SseParser::default();
        // The relay sends a comment every heartbeat: only what arrives pushes this deadline back.
        let mut silence = Silence::new(silence_limit(self.options.heartbeat));
        loop {
            tokio::select! {
                chunk = chunks.next() => {
                    let chunk = match chunk {
                        Some(Ok(chunk)) => chunk,
                        Some(Err(e)) => return Ok(retry(&format!("connection lost (SSE): {e}"))),
                        None => return Ok(retry("the relay ended the event stream")),
                    };
                    // `handle` notes the listener alive, heartbeat comments included.
                    silence.heard();
                    let mut frames = Vec::new();
                    let mut ended = None;
                    for event in parser.push(chunk.as_ref()) {
                        match event.name.as_str() {
                            // What the user did on another device: applied here too.
                            "receipt" => match serde_json::from_str::<ServerFrame>(&event.data) {
                                Ok(frame) => frames.push(frame),
                                Err(e) => tracing::warn!(error = %e, "unreadable receipt from the relay"),
                            },
                            "error" => {
                                let body: serde_json::Value = serde_json::from_str(&event.data).unwrap_or_default();
                                let code = body["close"].as_u64().unwrap_or(1011) as u16;
                                ended = Some(closed(code, body["message"].as_str().unwrap_or("")));
                            }
                            _ => match serde_json::from_str::<ServerFrame>(&event.data) {
                                Ok(frame) => frames.push(frame),
                                Err(e) => tracing::warn!(error = %e, "unreadable event from the relay"),
                            },
                        }
                    }
                    let received = self.handle(frames, &since_of).await?;
                    self.post_receipts(http, ReceiptKind::Received, received).await?;
                    self.post_receipts(http, ReceiptKind::Displayed, self.take_displayed()).await?;
                    if let Some(outcome) = ended {
                        return Ok(outcome);
                    }
                }
                _ = silence.expired() => {
                    let reason = format!("no heartbeat from the relay for {} s", silence.limit().as_secs());
                    return Ok(Outcome::Retry { reason, pace: Pace::Now });
                }
                _ = self.acknowledger.waiting() => {
                    for (kind, pending) in self.pending_acks().await? {
                        self.post_receipts(http, kind, pending).await?;
                    }
                }
                _ = clock.tick() => {
                    if let Some(what) = changes.changed() {
                        return Ok(Outcome::Retry { reason: what.into(), pace: Pace::Now });
                    }
                }
                _ = &mut give_websocket_a_try => {
                    return Ok(Outcome::Retry { reason: "trying the WebSocket again".into(), pace: Pace::Now });
                }
            }
        }
    }

    /// Sends receipts over HTTP; those the relay confirms are marked synced, the others are sent
    /// again on the next connection.
    async fn post_receipts(
        &self,
        http: &str,
        kind: ReceiptKind,
        groups: Grouped,
    ) -> Result<(), SubscriptionError> {
        for (channel, ids) in groups {
            let sent = crate::http::send_receipts(
                self.options.trust.http(),
                http,
                &self.token(),
                kind,
                &channel,
                &ids,
                Some(self.device()).filter(|d| !d.is_empty()),
            )
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

    fn message(data: &str, id: Option<&str>) -> SseEvent {
        SseEvent {
            name: "message".into(),
            data: data.into(),
            id: id.map(str::to_owned),
        }
    }

    #[test]
    fn events_split_across_chunks_are_put_back_together() {
        let mut parser = SseParser::default();
        assert!(
            parser
                .push(b"retry: 2000\n\n: heartbeat\n\nid: a=1-0\nda")
                .is_empty()
        );
        assert_eq!(parser.retry(), Some(Duration::from_millis(2000)));
        let events = parser.push(b"ta: {\"op\":1}\n\nevent: resumed\r\ndata: x\r\n\r\n");
        assert_eq!(
            events,
            [
                message("{\"op\":1}", Some("a=1-0")),
                SseEvent {
                    name: "resumed".into(),
                    data: "x".into(),
                    id: None
                },
            ]
        );
    }

    #[test]
    fn a_pretty_printed_payload_on_several_data_lines_arrives_whole() {
        let payload =
            "{\n  \"type\": \"critical_lab_result\",\n  \"patient_name\": \"Bob Wilson\"\n}";
        let mut stream = String::new();
        for line in payload.split('\n') {
            stream.push_str(&format!("data: {line}\r\n"));
        }
        stream.push_str("\r\n");
        let mut parser = SseParser::default();
        // A CRLF split between two chunks is one line end, not two.
        let bytes = stream.as_bytes();
        let cut = stream.find("\r\n").unwrap() + 1;
        let mut events = parser.push(&bytes[..cut]);
        events.extend(parser.push(&bytes[cut..]));
        assert_eq!(events, [message(payload, None)]);
        let value: serde_json::Value = serde_json::from_str(&events[0].data).unwrap();
        assert_eq!(value["patient_name"], "Bob Wilson");
        // Lone CRs end lines too.
        assert_eq!(
            parser.push(b"data: a\rdata: b\r\r"),
            [message("a\nb", None)]
        );
    }

    #[test]
    fn a_character_split_between_chunks_arrives_intact() {
        let stream = "data: {\"patient_name\": \"Zoë Müller – K⁺ 6.8 🩸\"}\n\n".as_bytes();
        for cut in 0..stream.len() {
            let mut parser = SseParser::default();
            let mut events = parser.push(&stream[..cut]);
            events.extend(parser.push(&stream[cut..]));
            assert_eq!(
                events,
                [message(
                    "{\"patient_name\": \"Zoë Müller – K⁺ 6.8 🩸\"}",
                    None
                )],
                "cut at byte {cut}"
            );
        }
        // One byte at a time, too.
        let mut parser = SseParser::default();
        let events: Vec<SseEvent> = stream.iter().flat_map(|b| parser.push(&[*b])).collect();
        assert_eq!(events.len(), 1);
        assert!(events[0].data.contains("Zoë Müller – K⁺ 6.8 🩸"));
    }

    #[test]
    fn comments_fields_without_values_and_a_leading_bom_follow_the_standard() {
        let mut parser = SseParser::default();
        let events = parser.push(
            "\u{feff}data\n\n: only a comment\n\nevent: x\nid\n\ndata:no space\n\n".as_bytes(),
        );
        assert_eq!(
            events,
            [message("", None), message("no space", None)],
            "an event with no data is not dispatched; `data` alone is an empty line of data"
        );
        assert!(parser.push(b"retry: soon\n\n").is_empty());
        assert_eq!(
            parser.retry(),
            None,
            "a retry that is not digits is ignored"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_event_stream_is_left_after_two_heartbeats() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = crate::inbox::Inbox::open_encrypted(
            &dir.path().join("inbox.sqlite3"),
            &crate::inbox_key::test_key(),
        )
        .unwrap();
        let options = crate::subscription::Options {
            server: "http://relay.test".into(),
            user: "d1".into(),
            token: wardline_protocol::Sensitive::new("t".into()),
            heartbeat: Duration::from_secs(15),
            trust: crate::tls::Trust::new(None).unwrap(),
            offline_alarm: crate::subscription::OFFLINE_ALARM,
        };
        let subscription = Subscription::new(options, crate::inbox_handle::InboxHandle::new(inbox));
        // A heartbeat at 20 s, then nothing.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<&'static [u8], String>>(4);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            tx.send(Ok(b": heartbeat\n\n")).await.unwrap();
            std::future::pending::<()>().await;
        });
        let start = tokio::time::Instant::now();
        let chunks = tokio_stream_from(rx);
        let outcome = subscription
            .sse_session("http://relay.test", &[], chunks)
            .await
            .unwrap();
        assert!(
            matches!(&outcome, Outcome::Retry { reason, pace: Pace::Now } if reason.contains("33 s")),
            "{outcome:?}"
        );
        assert_eq!(start.elapsed(), Duration::from_secs(53));
    }

    fn tokio_stream_from<T: Send + 'static>(
        mut rx: tokio::sync::mpsc::Receiver<T>,
    ) -> impl Stream<Item = T> + Unpin {
        Box::pin(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)))
    }
}
