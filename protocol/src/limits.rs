//! What a notification may be, wherever it enters (`POST /v1/publish` or a plain Redis `PUBLISH`):
//! at most [`MAX_PAYLOAD_BYTES`], and JSON nested at most [`MAX_JSON_DEPTH`] deep, so that
//! every receiver can parse what the relay stores and delivers.

/// Largest payload the relay stores, in bytes (the size of its largest inbound frame).
pub const MAX_PAYLOAD_BYTES: usize = crate::MAX_INBOUND_FRAME_BYTES;

/// Most notification ids one receipt carries (a `received` or `ack` frame, a `POST /v1/receipts`):
/// the receiver sends at most this many at once.
pub const MAX_RECEIPT_IDS: usize = 1000;

/// Deepest nesting of arrays and objects the relay stores. JSON parsers refuse deeper documents
/// (serde_json at 128), and a clinical notification needs a handful.
pub const MAX_JSON_DEPTH: usize = 64;

/// The deepest nesting of `[` and `{` in `json`, outside strings. For any text: what is not JSON
/// just has a depth too.
pub fn json_depth(json: &[u8]) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &byte in json {
        if in_string {
            match byte {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_nesting_outside_strings() {
        assert_eq!(json_depth(br#"{"a": 1}"#), 1);
        assert_eq!(json_depth(br#"{"a": [1, {"b": []}]}"#), 4);
        assert_eq!(json_depth(br#"{"a": "[[[{{{\"[["}"#), 1);
        assert_eq!(json_depth(b"plain text"), 0);
    }

    proptest::proptest! {
        /// The depth of a nested document is its nesting, brackets in strings aside; any text has a
        /// depth, without a panic.
        #[test]
        fn depth_matches_the_documents_nesting(depth in 0usize..60, text in "\\PC{0,80}") {
            // A string with brackets in it at the bottom: they do not count.
            let document = format!("{}\"x]}}\\\"[\"{}", "[{\"k\":".repeat(depth), "}]".repeat(depth));
            if depth > 0 {
                let value: serde_json::Value = serde_json::from_str(&document).unwrap();
                proptest::prop_assert!(value.is_array());
            }
            proptest::prop_assert_eq!(json_depth(document.as_bytes()), depth * 2);
            let _ = json_depth(text.as_bytes());
        }
    }
}
