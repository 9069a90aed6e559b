//! `message/sipfrag` (RFC 3420) as carried by the NOTIFYs of a REFER (RFC 3515 §2.4.5): the
//! status line of the response the referred party got for its INVITE, e.g. `SIP/2.0 180
//! Ringing`, possibly followed by headers (which we ignore). Only the status line matters to
//! the transferor: 1xx is progress, 2xx success, 3xx-6xx failure.
//!
//! Tolerant of what peers send (leading blank lines, `\n` line ends, missing reason phrase,
//! trailing headers), strict about the status itself (three digits, 100-699). Never panics.

/// Why a sipfrag body gave no status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SipfragError {
    #[error("empty sipfrag body")]
    Empty,
    #[error("the first line is not a SIP/2.0 status line")]
    NotAStatusLine,
    #[error("the status code is not a number between 100 and 699")]
    BadStatus,
}

/// A sipfrag's status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipfragStatus {
    pub code: u16,
    /// The reason phrase as sent (may be empty).
    pub reason: String,
}

impl SipfragStatus {
    /// 1xx: the referred call is still being set up.
    pub fn is_provisional(&self) -> bool {
        self.code < 200
    }

    /// 2xx: the referred call was answered.
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.code)
    }
}

/// Reason phrases longer than this are cut (they end up in logs and records).
const MAX_REASON: usize = 100;

/// The status line of a `message/sipfrag` body.
pub fn parse_status(body: &str) -> Result<SipfragStatus, SipfragError> {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty()).ok_or(SipfragError::Empty)?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.eq_ignore_ascii_case("SIP/2.0") {
        return Err(SipfragError::NotAStatusLine);
    }
    let code = parts.next().unwrap_or_default();
    if code.len() != 3 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SipfragError::BadStatus);
    }
    let code: u16 = code.parse().map_err(|_| SipfragError::BadStatus)?;
    if !(100..700).contains(&code) {
        return Err(SipfragError::BadStatus);
    }
    let reason: String =
        parts.next().unwrap_or_default().trim().chars().filter(|c| !c.is_control()).take(MAX_REASON).collect();
    Ok(SipfragStatus { code, reason })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_as_peers_send_them() {
        type Expected = Result<(u16, &'static str), SipfragError>;
        let cases: [(&str, Expected); 12] = [
            ("SIP/2.0 100 Trying", Ok((100, "Trying"))),
            ("SIP/2.0 180 Ringing\r\n", Ok((180, "Ringing"))),
            ("SIP/2.0 200 OK\r\nContact: <sip:b@example.com>\r\n\r\n", Ok((200, "OK"))),
            ("\r\n\r\nsip/2.0 486 Busy Here\n", Ok((486, "Busy Here"))),
            ("SIP/2.0 603", Ok((603, ""))),
            ("SIP/2.0 503 Service   Unavailable  ", Ok((503, "Service   Unavailable"))),
            ("", Err(SipfragError::Empty)),
            ("\r\n  \r\n", Err(SipfragError::Empty)),
            ("INVITE sip:b@example.com SIP/2.0", Err(SipfragError::NotAStatusLine)),
            ("SIP/2.0 20 OK", Err(SipfragError::BadStatus)),
            ("SIP/2.0 999 Nope", Err(SipfragError::BadStatus)),
            ("SIP/2.0 2x0 OK", Err(SipfragError::BadStatus)),
        ];
        for (body, expected) in cases {
            let parsed = parse_status(body).map(|s| (s.code, s.reason));
            let expected = expected.map(|(c, r)| (c, r.to_owned()));
            assert_eq!(parsed, expected, "{body:?}");
        }
    }

    #[test]
    fn classes() {
        let status = |code| SipfragStatus { code, reason: String::new() };
        assert!(status(180).is_provisional() && !status(180).is_success());
        assert!(status(200).is_success() && status(299).is_success());
        assert!(!status(300).is_success() && !status(486).is_provisional());
    }

    #[test]
    fn never_panics_on_any_prefix_or_odd_bytes() {
        let body = "SIP/2.0 200 OK\r\nX: é\u{0}\u{7f}\r\n";
        for end in 0..=body.len() {
            if let Some(prefix) = body.get(..end) {
                let _ = parse_status(prefix);
            }
        }
        for weird in
            ["SIP/2.0 \u{0660}\u{0661}\u{0662} x", "SIP/2.0  200 OK", "\u{feff}SIP/2.0 200", "SIP/2.0 200 \u{1}\u{2}"]
        {
            let _ = parse_status(weird);
        }
        assert_eq!(parse_status("SIP/2.0 200 \u{1}ok").map(|s| s.reason), Ok("ok".to_owned()));
    }
}
