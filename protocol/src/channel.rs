//! Channel names and the channels each role may read by default.
//!
//! The names are the ones hospital backends already publish to (the HealthHub notification effect's): anything else is refused,
//! so a typo in a subscription is an error rather than a silent, forever-empty channel.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;

/// Longest id accepted inside a channel name.
const MAX_ID_LEN: usize = 128;

/// A validated channel name. Cloning shares the name: a relay holds the same channel in its
/// fan-out map and in every session's resume positions.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Channel(Arc<str>);

/// What a channel is for, borrowed from its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind<'a> {
    /// `doctor:{id}:notifications`
    Doctor(&'a str),
    /// `patient:{id}:notifications`
    Patient(&'a str),
    /// `appointment:{id}:updates`
    Appointment(&'a str),
    /// `system:alerts`
    SystemAlerts,
}

/// Why a channel name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// Not one of the known channel patterns.
    #[error(
        "unknown channel {0:?}: expected doctor:{{id}}:notifications, patient:{{id}}:notifications, appointment:{{id}}:updates or system:alerts"
    )]
    Unknown(String),
    /// The id part is empty, too long or has characters outside `[A-Za-z0-9._-]`.
    #[error("invalid id in channel {0:?}: 1 to 128 characters of A-Z a-z 0-9 . _ -")]
    InvalidId(String),
}

/// The role a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A clinician: reads `doctor:{sub}:notifications` and `system:alerts`.
    Doctor,
    /// A patient: reads `patient:{sub}:notifications` and `system:alerts`.
    Patient,
    /// An administrator: stats, test notifications, publishing to `system:alerts`.
    Admin,
    /// The hospital backend: publishes anywhere, reads stats.
    Service,
}

impl Role {
    /// The role's name as it appears in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Doctor => "doctor",
            Role::Patient => "patient",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }

    /// Parses a role name as it appears in tokens.
    pub fn parse(name: &str) -> Option<Role> {
        match name {
            "doctor" => Some(Role::Doctor),
            "patient" => Some(Role::Patient),
            "admin" => Some(Role::Admin),
            "service" => Some(Role::Service),
            _ => None,
        }
    }

    /// The channels a user of this role reads without any extra grant.
    pub fn default_channels(self, user: &str) -> Vec<Channel> {
        let own = match self {
            Role::Doctor => Channel::parse(&format!("doctor:{user}:notifications")).ok(),
            Role::Patient => Channel::parse(&format!("patient:{user}:notifications")).ok(),
            Role::Admin | Role::Service => None,
        };
        own.into_iter().chain([Channel::system_alerts()]).collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Channel {
    /// Validates a channel name.
    pub fn parse(name: &str) -> Result<Channel, ChannelError> {
        if name == "system:alerts" {
            return Ok(Channel(name.into()));
        }
        let mut parts = name.split(':');
        let (Some(prefix), Some(id), Some(suffix), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(ChannelError::Unknown(name.to_owned()));
        };
        match (prefix, suffix) {
            ("doctor", "notifications")
            | ("patient", "notifications")
            | ("appointment", "updates") => {
                if valid_id(id) {
                    Ok(Channel(name.into()))
                } else {
                    Err(ChannelError::InvalidId(name.to_owned()))
                }
            }
            _ => Err(ChannelError::Unknown(name.to_owned())),
        }
    }

    /// `system:alerts`, the broadcast channel.
    pub fn system_alerts() -> Channel {
        Channel("system:alerts".into())
    }

    /// The channel's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What the channel is for.
    pub fn kind(&self) -> ChannelKind<'_> {
        if &*self.0 == "system:alerts" {
            return ChannelKind::SystemAlerts;
        }
        let mut parts = self.0.split(':');
        let prefix = parts.next().unwrap_or_default();
        let id = parts.next().unwrap_or_default();
        match prefix {
            "doctor" => ChannelKind::Doctor(id),
            "patient" => ChannelKind::Patient(id),
            _ => ChannelKind::Appointment(id),
        }
    }

    /// The Redis glob patterns that match every channel name Wardline accepts.
    pub fn legacy_patterns() -> [&'static str; 4] {
        [
            "doctor:*:notifications",
            "patient:*:notifications",
            "appointment:*:updates",
            "system:alerts",
        ]
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Channel {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Channel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Channel::parse(&name).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Whatever a client or a plain PUBLISH names, a channel that parses is one of the four
        /// patterns and holds nothing that could break a log line, a Redis key or an SSE id
        /// (`;`, `=`, `,`, whitespace, control characters).
        #[test]
        fn any_name_parses_to_a_known_pattern_or_is_refused(name in "\\PC{0,40}|(doctor|patient|appointment|system):[!-~]{0,12}:(notifications|updates|alerts)") {
            if let Ok(channel) = Channel::parse(&name) {
                proptest::prop_assert_eq!(channel.as_str(), name.as_str());
                proptest::prop_assert!(
                    name.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)),
                    "{:?}", name
                );
                let kind_is_known = matches!(
                    channel.kind(),
                    ChannelKind::Doctor(_) | ChannelKind::Patient(_) | ChannelKind::Appointment(_) | ChannelKind::SystemAlerts
                );
                proptest::prop_assert!(kind_is_known);
            }
        }

        #[test]
        fn every_valid_id_makes_channels(id in "[A-Za-z0-9._-]{1,128}") {
            for name in [format!("doctor:{id}:notifications"), format!("patient:{id}:notifications"), format!("appointment:{id}:updates")] {
                proptest::prop_assert_eq!(Channel::parse(&name).map(|c| c.as_str().to_owned()), Ok(name.clone()));
            }
        }
    }

    #[test]
    fn healthhub_channel_names_parse_into_their_kinds() {
        let doctor = Channel::parse("doctor:abc123:notifications").unwrap();
        assert_eq!(doctor.kind(), ChannelKind::Doctor("abc123"));
        let patient = Channel::parse("patient:def456:notifications").unwrap();
        assert_eq!(patient.kind(), ChannelKind::Patient("def456"));
        let appointment = Channel::parse("appointment:ghi789:updates").unwrap();
        assert_eq!(appointment.kind(), ChannelKind::Appointment("ghi789"));
        assert_eq!(
            Channel::parse("system:alerts").unwrap().kind(),
            ChannelKind::SystemAlerts
        );
    }

    #[test]
    fn unknown_patterns_and_bad_ids_are_refused() {
        for name in [
            "",
            "doctor:abc",
            "nurse:x:notifications",
            "doctor:a:b:notifications",
            "system:other",
        ] {
            assert!(
                matches!(Channel::parse(name), Err(ChannelError::Unknown(_))),
                "{name}"
            );
        }
        for name in [
            "doctor::notifications",
            "doctor:a b:notifications",
            "patient:*:notifications",
        ] {
            assert!(
                matches!(Channel::parse(name), Err(ChannelError::InvalidId(_))),
                "{name}"
            );
        }
        let long = format!("doctor:{}:notifications", "a".repeat(129));
        assert!(Channel::parse(&long).is_err());
    }

    #[test]
    fn default_channels_follow_the_role() {
        let names = |role: Role| -> Vec<String> {
            role.default_channels("u1")
                .iter()
                .map(|c| c.to_string())
                .collect()
        };
        assert_eq!(
            names(Role::Doctor),
            ["doctor:u1:notifications", "system:alerts"]
        );
        assert_eq!(
            names(Role::Patient),
            ["patient:u1:notifications", "system:alerts"]
        );
        assert_eq!(names(Role::Admin), ["system:alerts"]);
    }
}
