//! The `wardline.v1` WebSocket frames, in both directions, and the Diagnoxix notification service's frame shape.
//!
//! Every frame is one JSON object with an `op` field. `protocol/README.md` shows each with an example.

use crate::{Channel, Cursor, ErrorCode, Priority, Role};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::time::{Duration, UNIX_EPOCH};

/// One channel of a `subscribe` frame: the channel and, to resume, the last cursor the client holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscribeChannel {
    /// The channel to subscribe to.
    pub channel: String,
    /// Replay everything after this cursor before going live; absent means live only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// The history's epoch the cursor belongs to, as the last `resumed` frame said. When the
    /// relay's history is no longer that one (Redis restarted without persistence, or a store was
    /// replaced), what the client missed may be lost: `resumed` says `gap: true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// Subscribe to channels, each optionally resumed from a cursor.
    Subscribe {
        /// The channels.
        channels: Vec<SubscribeChannel>,
    },
    /// The device has stored these notifications (a delivery receipt; sent after the local commit).
    Received {
        /// The channel the ids belong to.
        channel: String,
        /// The notifications' ids.
        ids: Vec<String>,
    },
    /// A person has acknowledged these notifications.
    Ack {
        /// The channel the ids belong to.
        channel: String,
        /// The notifications' ids.
        ids: Vec<String>,
    },
    /// Any receipt by kind: `displayed` (an alert was shown), `read` (a person opened it),
    /// `declined` (a person cannot take it: the relay escalates at once), as well as `received` and
    /// `acknowledged`.
    Receipt {
        /// The channel the ids belong to.
        channel: String,
        /// The notifications' ids.
        ids: Vec<String>,
        /// What happened to them.
        kind: ReceiptKind,
    },
    /// Asks for a `pong`.
    Ping,
    /// A new token for this connection (same user), presented before the current one expires: the
    /// connection then lives until the new token's `exp`, without reconnecting.
    Refresh {
        /// The new token.
        token: String,
    },
}

/// Why a client frame was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Not JSON, not an object, or fields of the wrong shape.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// An `op` the relay does not know.
    #[error("unknown op {0:?}: expected subscribe, received, ack, receipt, ping or refresh")]
    UnknownOp(String),
}

impl FrameError {
    /// The error code sent back for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::Malformed(_) => ErrorCode::MalformedJson,
            FrameError::UnknownOp(_) => ErrorCode::UnknownOp,
        }
    }
}

impl ClientFrame {
    /// Parses a client frame, telling malformed JSON apart from an unknown `op`.
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| FrameError::Malformed(e.to_string()))?;
        let op = match value.get("op") {
            Some(Value::String(op)) => op.clone(),
            Some(_) => return Err(FrameError::Malformed("`op` must be a string".into())),
            None => return Err(FrameError::Malformed("missing `op`".into())),
        };
        if !matches!(
            op.as_str(),
            "subscribe" | "received" | "ack" | "receipt" | "ping" | "refresh"
        ) {
            return Err(FrameError::UnknownOp(op));
        }
        serde_json::from_value(value).map_err(|e| FrameError::Malformed(e.to_string()))
    }
}

/// What a receipt says about a notification and one recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    /// The recipient's device stored it.
    Received,
    /// The recipient's device showed an alert for it.
    Displayed,
    /// A person opened it.
    Read,
    /// The recipient, a person, acknowledged it: it is handled, and its escalation ends.
    Acknowledged,
    /// The recipient, a person, cannot take it ("not me / cannot now"): it escalates at once.
    Declined,
}

impl ReceiptKind {
    /// Every kind.
    pub const ALL: [ReceiptKind; 5] = [
        ReceiptKind::Received,
        ReceiptKind::Displayed,
        ReceiptKind::Read,
        ReceiptKind::Acknowledged,
        ReceiptKind::Declined,
    ];

    /// The kind's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Received => "received",
            ReceiptKind::Displayed => "displayed",
            ReceiptKind::Read => "read",
            ReceiptKind::Acknowledged => "acknowledged",
            ReceiptKind::Declined => "declined",
        }
    }

    /// Parses a kind's name.
    pub fn parse(name: &str) -> Option<ReceiptKind> {
        ReceiptKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Whether the user's other devices are told at once (a person acted on it there).
    pub fn synced_to_devices(self) -> bool {
        matches!(
            self,
            ReceiptKind::Read | ReceiptKind::Acknowledged | ReceiptKind::Declined
        )
    }
}

/// A notification as a `wardline.v1` client reads it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The notification's id: its cursor in its channel, stable across replays and relays.
    pub id: Cursor,
    /// The channel it was published to.
    pub channel: Channel,
    /// The payload's `type` field (`unknown` when it has none).
    #[serde(rename = "type")]
    pub kind: String,
    /// How urgently it must reach a person.
    pub priority: Priority,
    /// When the relay stored it, RFC 3339 UTC with milliseconds.
    pub sent_at: String,
    /// The publisher's payload, untouched.
    pub message: Value,
    /// Set when this is a reminder of a notification sent before (the same id): it is still waiting
    /// for a person's acknowledgement. Alert again; store nothing new. Counts from 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repeat: Option<u32>,
}

/// A frame from the relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum ServerFrame {
    /// The first frame: who the relay thinks you are and what you may subscribe to.
    Welcome {
        /// The token's subject.
        user: String,
        /// The token's role.
        role: Role,
        /// Every channel this token may read.
        channels: Vec<Channel>,
        /// Seconds between the relay's heartbeats; two missed heartbeats mean a dead connection.
        heartbeat_s: u64,
        /// When the token expires (Unix seconds); the connection closes with 4001 then.
        expires_at: u64,
    },
    /// A notification.
    Notification(Notification),
    /// The outcome of subscribing to one channel.
    Resumed {
        /// The channel.
        channel: Channel,
        /// How many stored notifications were replayed before going live.
        replayed: u64,
        /// True when some notifications may be lost: the cursor was older than the history kept,
        /// or in the future and beyond anything the channel held (made up, or a store's clock went
        /// back); in the latter case the subscription starts from the channel's end.
        gap: bool,
        /// The channel's newest cursor after the replay, if any notification was ever stored.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<Cursor>,
        /// The history's epoch: send it back with the cursor when resuming, so that the relay can
        /// tell when its history was lost since.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        epoch: Option<String>,
    },
    /// The relay recorded these receipts.
    Recorded {
        /// Delivery to the device, or acknowledgement by a person.
        kind: ReceiptKind,
        /// The channel.
        channel: Channel,
        /// The ids recorded.
        ids: Vec<Cursor>,
        /// Ids of no notification the channel holds (never published, or trimmed away): nothing
        /// to record, and nothing to send again.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        unknown: Vec<Cursor>,
    },
    /// A person acted on notifications on one of the user's devices (`read`, `acknowledged`,
    /// `declined`): the other devices mark them and withdraw their alerts. Sent to every connection of
    /// that user, the acting one included (it compares `device`).
    Receipt {
        /// What the person did.
        kind: ReceiptKind,
        /// The channel.
        channel: Channel,
        /// The notifications' ids.
        ids: Vec<Cursor>,
        /// The user.
        user: String,
        /// The device it was done on, when it said.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
    },
    /// The answer to `ping`.
    Pong,
    /// The token presented with `refresh` was taken: the connection closes with 4001 at this new
    /// expiry instead.
    Refreshed {
        /// When the new token expires (Unix seconds).
        expires_at: u64,
    },
    /// A request failed; the connection stays open unless a close follows.
    Error {
        /// The stable error code.
        code: ErrorCode,
        /// What went wrong, for people.
        message: String,
        /// The channel concerned, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        channel: Option<String>,
    },
}

impl ServerFrame {
    /// Encodes the frame as JSON text.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server frames always serialize")
    }
}

/// RFC 3339 UTC with milliseconds for a Unix time in milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Encodes a notification envelope from a raw payload without parsing it into a tree: the payload is
/// spliced in as it is when it is valid JSON, and as a JSON string otherwise.
pub fn encode_notification(
    id: Cursor,
    channel: &Channel,
    kind: &str,
    priority: Priority,
    payload: &str,
    repeat: Option<u32>,
) -> String {
    let sent_at = rfc3339_millis(id.ms);
    let message = if serde_json::from_str::<serde::de::IgnoredAny>(payload).is_ok() {
        payload.to_owned()
    } else {
        Value::String(payload.to_owned()).to_string()
    };
    let repeat = repeat
        .map(|n| format!(r#","repeat":{n}"#))
        .unwrap_or_default();
    format!(
        r#"{{"op":"notification","id":"{id}","channel":{},"type":{},"priority":"{}","sent_at":"{sent_at}","message":{message}{repeat}}}"#,
        Value::String(channel.to_string()),
        Value::String(kind.to_owned()),
        priority.as_str(),
    )
}

/// A notification in the Diagnoxix notification service's shape, for `/v1/ws/notifications`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiagnoxixFrame {
    /// The payload's type.
    #[serde(rename = "type")]
    pub kind: String,
    /// The recipient.
    pub user_id: String,
    /// A readable title.
    pub title: String,
    /// A readable body.
    pub message: String,
    /// The publisher's payload.
    pub data: Value,
    /// When the relay stored it.
    pub timestamp: String,
    /// The notification's id.
    pub id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn any_client_frame() -> impl proptest::strategy::Strategy<Value = ClientFrame> {
        use proptest::prelude::*;
        let text = || "\\PC{0,20}";
        let ids = || proptest::collection::vec(text(), 0..4);
        prop_oneof![
            proptest::collection::vec((text(), proptest::option::of(text())), 0..4).prop_map(
                |channels| ClientFrame::Subscribe {
                    channels: channels
                        .into_iter()
                        .map(|(channel, since)| SubscribeChannel {
                            channel,
                            since,
                            epoch: None
                        })
                        .collect(),
                }
            ),
            (text(), ids()).prop_map(|(channel, ids)| ClientFrame::Received { channel, ids }),
            (text(), ids()).prop_map(|(channel, ids)| ClientFrame::Ack { channel, ids }),
            Just(ClientFrame::Ping),
            text().prop_map(|token| ClientFrame::Refresh { token }),
        ]
    }

    proptest::proptest! {
        /// Every frame a client can send parses back to itself.
        #[test]
        fn every_client_frame_parses_back(frame in any_client_frame()) {
            let text = serde_json::to_string(&frame).unwrap();
            proptest::prop_assert_eq!(ClientFrame::parse(&text), Ok(frame));
        }

        /// Any text is a frame or a malformed / unknown-op error, never a panic; an error says
        /// which of the two it is.
        #[test]
        fn any_text_is_a_frame_or_an_error(text in "\\PC{0,80}|\\{\"op\":\"[a-z]{0,10}\"(,\"[a-z]{1,8}\":(null|1|\"x\"|\\[\\]))?\\}") {
            match ClientFrame::parse(&text) {
                Ok(_) | Err(FrameError::Malformed(_)) => {}
                Err(FrameError::UnknownOp(op)) => proptest::prop_assert!(!matches!(op.as_str(), "subscribe" | "received" | "ack" | "ping" | "refresh")),
            }
        }
    }

    #[test]
    fn client_frames_parse() {
        let frame = ClientFrame::parse(
            r#"{"op":"subscribe","channels":[{"channel":"system:alerts","since":"5-0","epoch":"e1"},{"channel":"doctor:a:notifications"}]}"#,
        )
        .unwrap();
        assert_eq!(
            frame,
            ClientFrame::Subscribe {
                channels: vec![
                    SubscribeChannel {
                        channel: "system:alerts".into(),
                        since: Some("5-0".into()),
                        epoch: Some("e1".into()),
                    },
                    SubscribeChannel {
                        channel: "doctor:a:notifications".into(),
                        since: None,
                        epoch: None,
                    },
                ]
            }
        );
        assert_eq!(
            ClientFrame::parse(r#"{"op":"ping"}"#).unwrap(),
            ClientFrame::Ping
        );
    }

    #[test]
    fn malformed_and_unknown_frames_are_told_apart() {
        assert!(matches!(
            ClientFrame::parse("{not json"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse("[1,2]"),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":1}"#),
            Err(FrameError::Malformed(_))
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"op":"ack"}"#),
            Err(FrameError::Malformed(_))
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"op":"dance"}"#),
            Err(FrameError::UnknownOp("dance".into()))
        );
    }

    #[test]
    fn encoded_notifications_read_back_as_server_frames() {
        let channel = Channel::parse("doctor:d1:notifications").unwrap();
        let payload = r#"{"type":"critical_lab_result","test_type":"BMP"}"#;
        let text = encode_notification(
            Cursor::new(1_732_370_000_123, 2),
            &channel,
            "critical_lab_result",
            Priority::Critical,
            payload,
            None,
        );
        let ServerFrame::Notification(n) = serde_json::from_str(&text).unwrap() else {
            panic!("not a notification: {text}");
        };
        assert_eq!(n.repeat, None);
        assert_eq!(n.id, Cursor::new(1_732_370_000_123, 2));
        assert_eq!(n.channel, channel);
        assert_eq!(n.priority, Priority::Critical);
        assert_eq!(n.sent_at, "2024-11-23T13:53:20.123Z");
        assert_eq!(n.message["test_type"], "BMP");

        let text = encode_notification(
            Cursor::new(1, 0),
            &channel,
            "unknown",
            Priority::Normal,
            "plain \"text\"",
            Some(3),
        );
        let ServerFrame::Notification(n) = serde_json::from_str(&text).unwrap() else {
            panic!()
        };
        assert_eq!(n.message, Value::String("plain \"text\"".into()));
        assert_eq!(n.repeat, Some(3), "a reminder says which one it is");
    }
}
