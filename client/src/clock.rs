//! The device's clock against the relay's: a notification's times, a quiet-hours window and a token's
//! expiry are only as right as the device's clock, so a difference of more than a minute with the
//! relay's `Date` (sent with every answer, the WebSocket handshake's included) is reported.

use std::time::{Duration, SystemTime};

/// A difference with the relay's clock beyond this is reported.
pub const SKEW_LIMIT: Duration = Duration::from_secs(60);

/// How far the relay's clock (its `Date` header) is ahead of this device's, in seconds (negative:
/// behind), when the header reads as an HTTP date.
pub fn relay_ahead_s(date: &str, now: SystemTime) -> Option<i64> {
    let relay = httpdate::parse_http_date(date).ok()?;
    Some(match relay.duration_since(now) {
        Ok(ahead) => ahead.as_secs() as i64,
        Err(behind) => -(behind.duration().as_secs() as i64),
    })
}

/// Whether a difference is worth telling the person about.
pub fn is_skewed(relay_ahead_s: i64) -> bool {
    relay_ahead_s.unsigned_abs() > SKEW_LIMIT.as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_two_minutes_behind_is_skewed_and_a_second_is_not() {
        let now = httpdate::parse_http_date("Tue, 01 Dec 2026 04:00:00 GMT").unwrap();
        let behind = relay_ahead_s("Tue, 01 Dec 2026 03:58:00 GMT", now).unwrap();
        assert_eq!(behind, -120);
        assert!(is_skewed(behind));
        let close = relay_ahead_s("Tue, 01 Dec 2026 04:00:01 GMT", now).unwrap();
        assert_eq!(close, 1);
        assert!(!is_skewed(close));
        assert_eq!(relay_ahead_s("yesterday", now), None);
    }
}
