//! A notification on its way to connections, with each wire format encoded at most once.
//!
//! Server-to-client WebSocket frames are not masked, so a frame's text is the same for every
//! recipient: a broadcast to 10,000 connections encodes its JSON once and hands out reference-counted
//! copies. The Diagnoxix frame names its recipient and SSE ids carry each stream's own positions, so
//! those parts are encoded per connection.

use crate::broker::StoredMessage;
use crate::broker::tracking::ReceiptSync;
use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use std::sync::{Arc, OnceLock};
use wardline_protocol::frame::{DiagnoxixFrame, encode_notification, rfc3339_millis};
use wardline_protocol::message::describe;

/// What the hub queues for a connection.
#[derive(Debug, Clone)]
pub enum Outbound {
    /// A notification (or a reminder of one).
    Notification(Arc<Delivery>),
    /// A person's receipts on one device: for that user's connections only.
    Receipts(Arc<ReceiptSync>),
}

/// A stored notification shared by every connection that receives it.
#[derive(Debug)]
pub struct Delivery {
    /// The notification.
    pub message: StoredMessage,
    /// The payload's `type` (`unknown` when it has none).
    pub kind: String,
    /// Set on a reminder: the notification again, still waiting for acknowledgement (its number).
    pub repeat: Option<u32>,
    raw: OnceLock<Utf8Bytes>,
    v1: OnceLock<Utf8Bytes>,
    sse_data: OnceLock<Bytes>,
}

impl Delivery {
    /// Wraps a stored notification.
    pub fn new(message: StoredMessage) -> Delivery {
        let kind = serde_json::from_slice::<serde_json::Value>(&message.payload)
            .ok()
            .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "unknown".to_owned());
        Delivery {
            message,
            kind,
            repeat: None,
            raw: OnceLock::new(),
            v1: OnceLock::new(),
            sse_data: OnceLock::new(),
        }
    }

    /// Wraps the `n`th reminder of a stored notification.
    pub fn repeat(message: StoredMessage, n: u32) -> Delivery {
        Delivery {
            repeat: Some(n),
            ..Delivery::new(message)
        }
    }

    fn payload_text(&self) -> String {
        String::from_utf8_lossy(&self.message.payload).into_owned()
    }

    /// The published text itself, byte for byte (the frames HealthHub's clients read).
    pub fn raw_frame(&self) -> Utf8Bytes {
        self.raw
            .get_or_init(|| Utf8Bytes::from(self.payload_text()))
            .clone()
    }

    /// The `wardline.v1` notification envelope.
    pub fn v1_frame(&self) -> Utf8Bytes {
        self.v1
            .get_or_init(|| {
                let m = &self.message;
                Utf8Bytes::from(encode_notification(
                    m.id,
                    &m.channel,
                    &self.kind,
                    m.priority,
                    &self.payload_text(),
                    self.repeat,
                ))
            })
            .clone()
    }

    /// `data: <envelope>\n\n`, the shared part of an SSE event (its `id:` line is per stream).
    /// A payload published with line breaks (pretty-printed JSON) gets one `data:` line per line.
    pub fn sse_data(&self) -> Bytes {
        self.sse_data
            .get_or_init(|| {
                let mut event = sse_data_lines(self.v1_frame().as_str());
                event.push('\n');
                Bytes::from(event)
            })
            .clone()
    }

    /// The notification in the Diagnoxix notification service's shape, addressed to `user`.
    pub fn diagnoxix_frame(&self, user: &str) -> Utf8Bytes {
        let data = serde_json::from_slice(&self.message.payload)
            .unwrap_or_else(|_| serde_json::Value::String(self.payload_text()));
        let (title, message) = describe(&data);
        let frame = DiagnoxixFrame {
            kind: self.kind.clone(),
            user_id: user.to_owned(),
            title,
            message,
            data,
            timestamp: rfc3339_millis(self.message.id.ms),
            id: self.message.id.to_string(),
        };
        Utf8Bytes::from(serde_json::to_string(&frame).expect("Diagnoxix frames serialize"))
    }
}

/// `text` as the data field of an SSE event: one `data: ` line per line of `text`, each ended by
/// `\n`. The event-stream format ends a line at CR, LF or CRLF, so a line break inside one
/// `data:` line would cut the event; a parser joins the lines with LF, which JSON reads as the
/// whitespace it was (line breaks cannot occur inside a JSON string).
pub fn sse_data_lines(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    loop {
        let end = rest.find(['\r', '\n']).unwrap_or(rest.len());
        out.push_str("data: ");
        out.push_str(&rest[..end]);
        out.push('\n');
        if end == rest.len() {
            return out;
        }
        let newline = if rest[end..].starts_with("\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + newline..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wardline_protocol::{Channel, Cursor, Priority, ServerFrame};

    fn delivery(payload: &'static str) -> Delivery {
        Delivery::new(StoredMessage {
            id: Cursor::new(1_700_000_000_000, 3),
            channel: Channel::parse("doctor:d1:notifications").unwrap(),
            priority: Priority::Critical,
            ttl: None,
            payload: Bytes::from_static(payload.as_bytes()),
        })
    }

    #[test]
    fn raw_frames_are_the_published_bytes_and_encoded_once() {
        let d = delivery(r#"{"type": "critical_lab_result",  "test_type":"BMP"}"#);
        assert_eq!(
            d.raw_frame().as_str(),
            r#"{"type": "critical_lab_result",  "test_type":"BMP"}"#
        );
        assert_eq!(
            d.raw_frame().as_str().as_ptr(),
            d.raw_frame().as_str().as_ptr()
        );
        assert_eq!(
            d.v1_frame().as_str().as_ptr(),
            d.v1_frame().as_str().as_ptr()
        );
        assert_eq!(d.kind, "critical_lab_result");
    }

    #[test]
    fn envelopes_and_diagnoxix_frames_carry_id_and_payload() {
        let d = delivery(
            r#"{"type":"critical_lab_result","patient_name":"Bob Wilson","test_type":"BMP"}"#,
        );
        let ServerFrame::Notification(n) = serde_json::from_str(d.v1_frame().as_str()).unwrap()
        else {
            panic!("not a notification")
        };
        assert_eq!(
            (n.id, n.priority),
            (Cursor::new(1_700_000_000_000, 3), Priority::Critical)
        );
        let frame: DiagnoxixFrame = serde_json::from_str(d.diagnoxix_frame("d1").as_str()).unwrap();
        assert_eq!(frame.title, "Critical lab result — BMP for Bob Wilson");
        assert_eq!(
            (frame.user_id.as_str(), frame.id.as_str()),
            ("d1", "1700000000000-3")
        );
        assert!(d.sse_data().starts_with(b"data: {\"op\":\"notification\""));
    }

    #[test]
    fn sse_data_has_one_line_per_payload_line_whatever_ends_it() {
        assert_eq!(sse_data_lines("{}"), "data: {}\n");
        assert_eq!(
            sse_data_lines("{\r\n \"a\": 1,\r \"b\": \"Zoë\"\n}"),
            "data: {\ndata:  \"a\": 1,\ndata:  \"b\": \"Zoë\"\ndata: }\n"
        );
        assert_eq!(sse_data_lines("a\n"), "data: a\ndata: \n");
        let d = delivery(
            "{\n  \"type\": \"critical_lab_result\",\r\n  \"patient_name\": \"Zoë Ørsted\"\n}",
        );
        let data = d.sse_data();
        let text = std::str::from_utf8(&data).unwrap();
        assert!(text.ends_with("\n\n") && !text.contains('\r'), "{text:?}");
        // What an EventSource hands over: the data lines' values joined by LF.
        let joined: Vec<&str> = text
            .trim_end_matches('\n')
            .split('\n')
            .map(|line| line.strip_prefix("data: ").expect(line))
            .collect();
        let ServerFrame::Notification(n) = serde_json::from_str(&joined.join("\n")).unwrap() else {
            panic!("not a notification")
        };
        assert_eq!(n.message["patient_name"], "Zoë Ørsted");
    }
}
