//! What the subscription reports, so that the CLI and the app show the same truth.

use crate::alert::AlertSettings;
use crate::inbox::Row;
use serde::{Deserialize, Serialize};
use wardline_protocol::{Channel, Cursor, ReceiptKind};

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
    /// This device stopped receiving on a failure of its own (the inbox cannot be written: a full
    /// disk; the receiver stopped unexpectedly): nothing more arrives until it is fixed. A critical
    /// OS alert says so once; when `retrying`, the subscription tries again with backoff and
    /// [`Event::Connected`] and [`Event::ReceivingAgain`] follow once something is stored again.
    Failed {
        /// What failed.
        reason: String,
        /// Whether it is tried again (a cause that can clear), or the subscription ended.
        retrying: bool,
    },
    /// Notifications were acknowledged on this device (stored; the relay hears of it when connected).
    Acknowledged {
        /// The channel.
        channel: Channel,
        /// The notifications' ids.
        ids: Vec<Cursor>,
    },
    /// Notifications were declined on this device ("not me / cannot now"; the relay escalates them
    /// when told).
    Declined {
        /// The channel.
        channel: Channel,
        /// The notifications' ids.
        ids: Vec<Cursor>,
    },
    /// A reminder of a notification nobody has acknowledged yet: alerted again.
    Reminder {
        /// The stored row.
        notification: Row,
        /// Which reminder (from 1).
        repeat: u32,
    },
    /// Someone acted on notifications on another device (this user's, or a backup's
    /// acknowledgement of an escalation): marked here, their alerts withdrawn.
    HandledElsewhere {
        /// What was done.
        kind: ReceiptKind,
        /// The channel.
        channel: Channel,
        /// The notifications changed here.
        ids: Vec<Cursor>,
        /// Who.
        user: String,
        /// On which device, when it said.
        device: Option<String>,
    },
    /// Not connected for longer than the alarm threshold: this device is not receiving critical
    /// results (an OS alarm is raised once per outage).
    NotReceiving {
        /// Unix ms since when it has not been connected.
        offline_since: u64,
    },
    /// Connected again after [`Event::NotReceiving`]: the alarm is withdrawn.
    ReceivingAgain,
    /// This device's clock differs from the relay's by more than a minute: times shown, quiet
    /// hours and token expiries may be off.
    ClockSkew {
        /// Seconds the relay's clock is ahead of this device's (negative: behind).
        relay_ahead_s: i64,
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

/// Where the connection to the relay stands: kept in the inbox (for `wardline status` in another
/// process), shown by the tray and the window. Written as its snake_case name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// No subscription has run with this inbox yet.
    NeverStarted,
    /// Connected and subscribed.
    Connected,
    /// The connection is gone; the next attempt is on its way.
    Reconnecting,
    /// The token was refused or expired: nothing more is tried until there is a new one.
    SignInRequired,
    /// The relay's certificate cannot be trusted: nothing more is tried.
    Untrusted,
    /// The subscription was stopped (signed out, the app or `listen` ended).
    Stopped,
    /// Not receiving on a failure of this device (see [`Event::Failed`]); the detail says why.
    Failed,
}

/// Where the connection stands now and why: what a running subscription holds in memory, since
/// the inbox, where it is also kept for other processes, may be what failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// The state.
    pub connection: ConnectionState,
    /// Why, or the relay when connected.
    pub detail: String,
}

/// A running subscription's [`LinkState`], shared with whoever started it (who sets it when the
/// subscription itself ended unexpectedly).
pub type SharedLinkState = std::sync::Arc<std::sync::Mutex<LinkState>>;

impl ConnectionState {
    const ALL: [ConnectionState; 7] = [
        ConnectionState::NeverStarted,
        ConnectionState::Connected,
        ConnectionState::Reconnecting,
        ConnectionState::SignInRequired,
        ConnectionState::Untrusted,
        ConnectionState::Stopped,
        ConnectionState::Failed,
    ];

    /// Its name, as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::NeverStarted => "never_started",
            ConnectionState::Connected => "connected",
            ConnectionState::Reconnecting => "reconnecting",
            ConnectionState::SignInRequired => "sign_in_required",
            ConnectionState::Untrusted => "untrusted",
            ConnectionState::Stopped => "stopped",
            ConnectionState::Failed => "failed",
        }
    }

    /// The state of a stored name (`None` for one this version does not know).
    pub fn parse(name: &str) -> Option<ConnectionState> {
        ConnectionState::ALL
            .into_iter()
            .find(|s| s.as_str() == name)
    }

    /// In words, for people: "sign in required", "not receiving".
    pub fn in_words(self) -> String {
        match self {
            ConnectionState::Failed => "not receiving".into(),
            other => other.as_str().replace('_', " "),
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_states_are_stored_and_sent_by_the_same_names() {
        for state in ConnectionState::ALL {
            assert_eq!(ConnectionState::parse(state.as_str()), Some(state));
            assert_eq!(
                serde_json::to_string(&state).unwrap(),
                format!("\"{}\"", state.as_str())
            );
        }
        assert_eq!(ConnectionState::parse("connecting"), None);
        assert_eq!(
            ConnectionState::SignInRequired.in_words(),
            "sign in required"
        );
    }
}
