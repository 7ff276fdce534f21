//! A position in one channel's history.
//!
//! Cursors are Redis stream ids, `<milliseconds>-<sequence>`, on both brokers: the embedded broker
//! generates ids of the same form, so a client never needs to know which broker a relay runs on.
//! Ids grow strictly within a channel, which is what makes "replay after the cursor, then skip any
//! live message at or before the last one sent" gap-free and duplicate-free.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A stream id: milliseconds since the Unix epoch, then a sequence within that millisecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cursor {
    /// Milliseconds since the Unix epoch at which the message was stored.
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

/// A cursor that is not `<ms>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid cursor {0:?}: expected <milliseconds>-<sequence>, each at most {max}, e.g. 1732370000000-0",
    max = Cursor::MAX_PART
)]
pub struct CursorError(pub String);

impl Cursor {
    /// The position before every message.
    pub const ZERO: Cursor = Cursor { ms: 0, seq: 0 };

    /// The largest milliseconds or sequence a cursor may carry: what SQLite's integers (the
    /// embedded broker) hold. Redis never makes larger ids from real clocks.
    pub const MAX_PART: u64 = i64::MAX as u64;

    /// Builds a cursor.
    pub fn new(ms: u64, seq: u64) -> Cursor {
        Cursor { ms, seq }
    }

    /// The smallest cursor after this one.
    pub fn next(self) -> Cursor {
        match self.seq.checked_add(1) {
            Some(seq) => Cursor { ms: self.ms, seq },
            None => Cursor {
                ms: self.ms + 1,
                seq: 0,
            },
        }
    }
}

impl FromStr for Cursor {
    type Err = CursorError;

    fn from_str(text: &str) -> Result<Cursor, CursorError> {
        let bad = || CursorError(text.to_owned());
        let (ms, seq) = match text.split_once('-') {
            Some((ms, seq)) => (ms, seq),
            None => (text, "0"),
        };
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(bad());
        }
        let part = |s: &str| {
            s.parse::<u64>()
                .ok()
                .filter(|n| *n <= Cursor::MAX_PART)
                .ok_or_else(bad)
        };
        Ok(Cursor {
            ms: part(ms)?,
            seq: part(seq)?,
        })
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_stream_ids() {
        let cursor: Cursor = "1732370000000-7".parse().unwrap();
        assert_eq!(cursor, Cursor::new(1_732_370_000_000, 7));
        assert_eq!(cursor.to_string(), "1732370000000-7");
        assert_eq!("0".parse::<Cursor>().unwrap(), Cursor::ZERO);
        let largest = "9223372036854775807-9223372036854775807";
        assert_eq!(largest.parse::<Cursor>().unwrap().to_string(), largest);
    }

    #[test]
    fn refuses_anything_else() {
        for text in [
            "",
            "-",
            "1-",
            "-1",
            "a-1",
            "1-2-3",
            "1.5-0",
            "99999999999999999999-0",
            "9223372036854775808-0",
            "0-9223372036854775808",
        ] {
            assert!(text.parse::<Cursor>().is_err(), "{text}");
        }
    }

    proptest::proptest! {
        #[test]
        fn every_cursor_prints_and_parses_back(ms in 0..=Cursor::MAX_PART, seq in 0..=Cursor::MAX_PART) {
            let cursor = Cursor::new(ms, seq);
            proptest::prop_assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        }

        #[test]
        fn any_text_parses_to_a_cursor_a_broker_can_hold_or_to_an_error(text in "\\PC{0,45}|[0-9]{1,20}(-[0-9]{1,20})?") {
            if let Ok(cursor) = text.parse::<Cursor>() {
                proptest::prop_assert!(cursor.ms <= Cursor::MAX_PART && cursor.seq <= Cursor::MAX_PART);
                proptest::prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
            }
        }

        #[test]
        fn order_is_time_then_sequence(a in (0..10u64, 0..10u64), b in (0..10u64, 0..10u64)) {
            let (x, y) = (Cursor::new(a.0, a.1), Cursor::new(b.0, b.1));
            proptest::prop_assert_eq!(x.cmp(&y), a.cmp(&b));
            proptest::prop_assert!(x < x.next());
        }
    }

    #[test]
    fn orders_by_time_then_sequence() {
        assert!(Cursor::new(1, 9) < Cursor::new(2, 0));
        assert!(Cursor::new(2, 0) < Cursor::new(2, 1));
        assert_eq!(Cursor::new(5, u64::MAX).next(), Cursor::new(6, 0));
    }
}
