//! What the subscription reports, so that the CLI and the app show the same truth.

use crate::alert::AlertSettings;
use crate::inbox::Row;
use serde::Serialize;
use wardline_protocol::{Channel, Cursor};

/// A change the person (or whoever watches) should know about.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Opening a connection.
    Connecting {
        /// The transport tried.
        transport: &'static str,
    },
    /// Connected and subscribed.
    Connected {
        /// The transport in use.
        transport: &'static str,
    },
    /// The connection is gone; the next attempt is in `in_ms`.
    Reconnecting {
        /// Milliseconds until the next attempt.
        in_ms: u64,
        /// Why the connection ended.
        reason: String,
        /// Unix ms since when there has been no working connection.
        offline_since: u64,
    },
    /// The relay no longer had what this device missed on a channel.
    GapDetected {
        /// The channel.
        channel: Channel,
        /// The cursor the device resumed from.
        since: Option<Cursor>,
    },
    /// A notification was stored in the inbox.
    NotificationStored {
        /// The stored row.
        notification: Row,
    },
    /// The token was refused or expired: nothing more is tried until there is a new one.
    SignInRequired {
        /// Why.
        reason: String,
    },
    /// The relay's certificate cannot be trusted: nothing more is tried until the right certificate
    /// authority is given (`--ca-file`, `WARDLINE_CA_FILE`).
    Untrusted {
        /// Which host, why, and what to do.
        reason: String,
    },
    /// Notifications were acknowledged on this device (stored; the relay hears of it when connected).
    Acknowledged {
        /// The channel.
        channel: Channel,
        /// The notifications' ids.
        ids: Vec<Cursor>,
    },
    /// Signed out: the subscription stopped and the token left the keychain.
    SignedOut,
    /// The person clicked an OS alert: show this notification (no id: a summary, show the inbox).
    AlertOpened {
        /// The notification's channel.
        channel: Option<Channel>,
        /// The notification's id.
        id: Option<Cursor>,
    },
    /// The alert settings changed (quiet hours, sound, a pause started or ended).
    AlertSettingsChanged {
        /// The settings now.
        alerts: AlertSettings,
    },
}
