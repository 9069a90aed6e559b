//! Signed webhooks (tools and CDRs): a receiver checks a request in three lines and rejects
//! replays by the timestamp.
//!
//! ```text
//! X-Switchboard-Timestamp: <unix seconds>
//! X-Switchboard-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>
//! ```
//!
//! The timestamp is inside the MAC, so an old request replayed later fails a receiver's
//! freshness check (say, five minutes) even though its signature is still valid.

use ring::hmac;

pub const TIMESTAMP_HEADER: &str = "X-Switchboard-Timestamp";
pub const SIGNATURE_HEADER: &str = "X-Switchboard-Signature";

/// The value of [`SIGNATURE_HEADER`] for `body` sent at `timestamp` (unix seconds).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut context = hmac::Context::with_key(&key);
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    let tag = context.sign();
    let mut value = String::with_capacity(7 + 64);
    value.push_str("sha256=");
    for byte in tag.as_ref() {
        value.push_str(&format!("{byte:02x}"));
    }
    value
}

/// Both headers for `body` sent at `timestamp`.
pub fn headers(secret: &[u8], timestamp: u64, body: &[u8]) -> [(&'static str, String); 2] {
    [(TIMESTAMP_HEADER, timestamp.to_string()), (SIGNATURE_HEADER, signature(secret, timestamp, body))]
}

/// A receiver's check (what the tests' webhook servers run): the signature matches, compared
/// in constant time.
pub fn verify(secret: &[u8], timestamp: u64, body: &[u8], header_value: &str) -> bool {
    let Some(hex) = header_value.strip_prefix("sha256=") else { return false };
    let Some(tag) = decode_hex(hex) else { return false };
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut message = format!("{timestamp}.").into_bytes();
    message.extend_from_slice(body);
    hmac::verify(&key, &message, &tag).is_ok()
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| hex.get(i..i + 2).and_then(|b| u8::from_str_radix(b, 16).ok())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rfc_4231_test_case_2() {
        // RFC 4231 §4.3 (key "Jefe") checks the primitive; then our framing of the message,
        // "<timestamp>.<body>".
        let key = hmac::Key::new(hmac::HMAC_SHA256, b"Jefe");
        let tag = hmac::sign(&key, b"what do ya want for nothing?");
        let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        let framed = hmac::sign(&key, b"1700000000.{\"a\":1}");
        let expected: String = framed.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(signature(b"Jefe", 1_700_000_000, b"{\"a\":1}"), format!("sha256={expected}"));
    }

    #[test]
    fn verify_rejects_another_body_time_or_secret() {
        let value = signature(b"s3cret", 1_700_000_000, b"body");
        assert!(verify(b"s3cret", 1_700_000_000, b"body", &value));
        assert!(!verify(b"s3cret", 1_700_000_001, b"body", &value), "the timestamp is signed");
        assert!(!verify(b"s3cret", 1_700_000_000, b"bodx", &value));
        assert!(!verify(b"other", 1_700_000_000, b"body", &value));
        assert!(!verify(b"s3cret", 1_700_000_000, b"body", "sha256=zz"));
        assert!(!verify(b"s3cret", 1_700_000_000, b"body", value.trim_start_matches("sha256=")));
    }
}
