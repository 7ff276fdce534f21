//! Stable numeric error codes and WebSocket close codes.
//!
//! Codes are five digits: the HTTP status they belong with, then a number within it (ntfy's scheme).
//! They never change meaning once released; clients may switch on them.

use serde::{Deserialize, Serialize};

/// A stable error code, sent in error frames and HTTP error bodies as `{"code": …, "message": …}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "u32", try_from = "u32")]
pub enum ErrorCode {
    /// A frame or body that is not valid JSON, or not of the expected shape.
    MalformedJson,
    /// A frame whose `op` is not known.
    UnknownOp,
    /// A channel name that is not one of the known patterns.
    UnknownChannel,
    /// A cursor that is not `<ms>-<seq>`.
    BadCursor,
    /// A request that is well-formed but not valid (e.g. a recipient that contradicts the channel).
    InvalidRequest,
    /// A publish's `escalation.escalate_to` names a channel no escalation may reach: escalations
    /// go only to clinicians' own channels (`doctor:{id}:notifications`), never to
    /// `system:alerts`, a patient's or an appointment's channel, nor back to the notification's own.
    EscalationTargetRefused,
    /// No token was given.
    TokenMissing,
    /// The token's signature, algorithm or claims are wrong.
    TokenInvalid,
    /// The token has expired.
    TokenExpired,
    /// The user in the path is not the token's subject.
    WrongUser,
    /// The token does not grant the channel.
    ChannelForbidden,
    /// The token's role may not do this.
    RoleForbidden,
    /// A browser page from an origin the relay does not allow (`--allowed-origins`).
    OriginForbidden,
    /// A publish's `escalation.email_to` names an address outside the domains the relay may email
    /// (`--email-allowed-domains`; none until the hospital configures them).
    EmailNotAllowed,
    /// Nothing is at that path.
    NotFound,
    /// An `idempotency_key` already used for a different notification.
    IdempotencyConflict,
    /// A frame or body larger than the limit.
    TooLarge,
    /// The client did not read notifications as fast as they came: resume from the last id.
    SlowConsumer,
    /// Too many connections from one address.
    RateLimited,
    /// Too many frames on one connection.
    Flood,
    /// This user, or this client address, already has as many connections open as the relay allows
    /// (`--max-connections-per-user`, `--max-connections-per-ip`): close one, or retry later.
    TooManyConnections,
    /// The relay failed in a way that is its own fault.
    Internal,
    /// The broker (Redis, or the embedded store) cannot be reached.
    BrokerUnavailable,
    /// The relay is shutting down.
    ShuttingDown,
    /// This relay node holds as many connections as it allows (`--max-connections`): retry later,
    /// or on another node.
    RelayFull,
    /// The broker did not answer a publish in time: the notification may or may not be stored.
    /// Retry with the same `idempotency_key`, which stores it at most once.
    PublishOutcomeUnknown,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u32 {
        match self {
            ErrorCode::MalformedJson => 40001,
            ErrorCode::UnknownOp => 40002,
            ErrorCode::UnknownChannel => 40003,
            ErrorCode::BadCursor => 40004,
            ErrorCode::InvalidRequest => 40005,
            ErrorCode::EscalationTargetRefused => 40006,
            ErrorCode::TokenMissing => 40101,
            ErrorCode::TokenInvalid => 40102,
            ErrorCode::TokenExpired => 40103,
            ErrorCode::WrongUser => 40301,
            ErrorCode::ChannelForbidden => 40302,
            ErrorCode::RoleForbidden => 40303,
            ErrorCode::OriginForbidden => 40304,
            ErrorCode::EmailNotAllowed => 40305,
            ErrorCode::NotFound => 40401,
            ErrorCode::IdempotencyConflict => 40901,
            ErrorCode::SlowConsumer => 40801,
            ErrorCode::TooLarge => 41301,
            ErrorCode::RateLimited => 42901,
            ErrorCode::Flood => 42902,
            ErrorCode::TooManyConnections => 42903,
            ErrorCode::Internal => 50001,
            ErrorCode::BrokerUnavailable => 50301,
            ErrorCode::ShuttingDown => 50302,
            ErrorCode::RelayFull => 50303,
            ErrorCode::PublishOutcomeUnknown => 50401,
        }
    }

    /// The HTTP status that goes with the code.
    pub fn http_status(self) -> u16 {
        (self.code() / 100) as u16
    }

    /// Every code.
    pub const ALL: [ErrorCode; 26] = [
        ErrorCode::MalformedJson,
        ErrorCode::UnknownOp,
        ErrorCode::UnknownChannel,
        ErrorCode::BadCursor,
        ErrorCode::InvalidRequest,
        ErrorCode::EscalationTargetRefused,
        ErrorCode::TokenMissing,
        ErrorCode::TokenInvalid,
        ErrorCode::TokenExpired,
        ErrorCode::WrongUser,
        ErrorCode::ChannelForbidden,
        ErrorCode::RoleForbidden,
        ErrorCode::OriginForbidden,
        ErrorCode::EmailNotAllowed,
        ErrorCode::NotFound,
        ErrorCode::SlowConsumer,
        ErrorCode::IdempotencyConflict,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::Flood,
        ErrorCode::TooManyConnections,
        ErrorCode::Internal,
        ErrorCode::BrokerUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::RelayFull,
        ErrorCode::PublishOutcomeUnknown,
    ];
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> u32 {
        code.code()
    }
}

impl TryFrom<u32> for ErrorCode {
    type Error = String;

    fn try_from(value: u32) -> Result<ErrorCode, String> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.code() == value)
            .ok_or_else(|| format!("unknown error code {value}"))
    }
}

/// WebSocket close codes the relay uses.
pub mod close {
    /// The relay is shutting down; reconnect (to another node) and resume.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the WebSocket protocol (a reserved bit, an unmasked frame, …).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A frame was larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The broker is unreachable; reconnect later and resume.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The token expired; get a new one before reconnecting.
    pub const TOKEN_EXPIRED: u16 = 4001;
    /// The token does not allow this connection.
    pub const FORBIDDEN: u16 = 4003;
    /// The client read too slowly and its queue filled; reconnect at once and resume from the cursor.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The client sent frames faster than allowed.
    pub const FLOOD: u16 = 4029;
    /// The client stopped answering heartbeats.
    pub const HEARTBEAT_TIMEOUT: u16 = 4408;
}

/// What a client does after its connection ended or its connection request was refused: the one
/// place that decides it, next to the codes (as centrifuge defines reconnect advice with its
/// disconnect codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Soon, after a random wait of up to [`Reconnect::SPREAD`]: nothing is wrong with the client
    /// (a relay node going away, the client fell behind), but a whole ward's devices must not come
    /// back in the same millisecond.
    Spread,
    /// After the client's growing backoff: the relay or its broker is in trouble, or the client
    /// broke a rule.
    Backoff,
    /// Not with this token: the person must sign in again.
    SignIn,
}

impl Reconnect {
    /// The longest random wait of [`Reconnect::Spread`].
    pub const SPREAD: std::time::Duration = std::time::Duration::from_secs(5);

    /// After the relay closed a WebSocket with `code` (or ended an event stream with it).
    pub fn after_close(code: u16) -> Reconnect {
        match code {
            close::TOKEN_EXPIRED | close::FORBIDDEN => Reconnect::SignIn,
            close::GOING_AWAY | close::SLOW_CONSUMER => Reconnect::Spread,
            _ => Reconnect::Backoff,
        }
    }

    /// After the relay refused a connection with `code` (an HTTP error body's code).
    pub fn after_refusal(code: ErrorCode) -> Reconnect {
        match code {
            ErrorCode::TokenMissing
            | ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::WrongUser
            | ErrorCode::RoleForbidden
            | ErrorCode::ChannelForbidden => Reconnect::SignIn,
            ErrorCode::ShuttingDown => Reconnect::Spread,
            _ => Reconnect::Backoff,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_advice_follows_the_codes() {
        assert_eq!(
            Reconnect::after_close(close::TOKEN_EXPIRED),
            Reconnect::SignIn
        );
        assert_eq!(Reconnect::after_close(close::FORBIDDEN), Reconnect::SignIn);
        assert_eq!(Reconnect::after_close(close::GOING_AWAY), Reconnect::Spread);
        assert_eq!(
            Reconnect::after_close(close::SLOW_CONSUMER),
            Reconnect::Spread
        );
        for code in [
            1005,
            1006,
            1011,
            close::TRY_AGAIN_LATER,
            close::PROTOCOL_ERROR,
            close::INVALID_PAYLOAD,
            close::FLOOD,
            close::HEARTBEAT_TIMEOUT,
        ] {
            assert_eq!(Reconnect::after_close(code), Reconnect::Backoff, "{code}");
        }
        for (code, advice) in [
            (ErrorCode::TokenExpired, Reconnect::SignIn),
            (ErrorCode::WrongUser, Reconnect::SignIn),
            (ErrorCode::ShuttingDown, Reconnect::Spread),
            (ErrorCode::RateLimited, Reconnect::Backoff),
            (ErrorCode::BrokerUnavailable, Reconnect::Backoff),
        ] {
            assert_eq!(Reconnect::after_refusal(code), advice, "{code:?}");
        }
    }

    #[test]
    fn codes_round_trip_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.code()), "duplicate {}", code.code());
            assert_eq!(ErrorCode::try_from(code.code()), Ok(code));
        }
        assert_eq!(ErrorCode::TokenExpired.http_status(), 401);
        assert_eq!(ErrorCode::BrokerUnavailable.http_status(), 503);
        assert_eq!(
            serde_json::to_string(&ErrorCode::WrongUser).unwrap(),
            "40301"
        );
    }
}
