//! RFC 4733 telephone-events received on a leg, reported once per event, and the SIP INFO
//! DTMF bodies some carriers send instead (`application/dtmf-relay`, `application/dtmf`).
//!
//! Every packet of one event carries the same RTP timestamp (the event's start, RFC 4733
//! §2.5.1.1); the end packet has the E bit and is sent three times (§2.5.1.4). An event is
//! reported at its first end packet; if every end packet is lost, it is reported when the next
//! event starts, or when no packet of it came for [`LOST_END_TIMEOUT`]. Repeats and
//! retransmissions of a reported event, and late packets of an older one, are ignored (RTP
//! timestamps compared in serial-number arithmetic, so a wrap is no new event). A long event
//! split into segments (§2.5.1.3: same key, a new timestamp where the previous segment ended,
//! no E bit between) is one key. The marker bit (§2.5.1.1, the first packet of an event) is not
//! relied on: some senders never set it and it is lost with the first packet. The event clock
//! is the audio codec's (§2.3.1: 8000 for G.711/G.722, 48000 for Opus).

use std::time::{Duration, Instant};

/// An event with no packet for this long is over even without its end packets (updates come
/// every 50 ms or so while a key is held, §2.5.1.2).
pub const LOST_END_TIMEOUT: Duration = Duration::from_millis(1000);

/// A DTMF key (RFC 4733 §3.2 events 0-15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DtmfDigit(char);

impl DtmfDigit {
    /// The key for an event code: 0-9, `*` (10), `#` (11), A-D (12-15). Flash (16) and other
    /// events are not keys.
    pub fn from_event(event: u8) -> Option<DtmfDigit> {
        const KEYS: &[u8; 16] = b"0123456789*#ABCD";
        KEYS.get(usize::from(event)).map(|&key| DtmfDigit(char::from(key)))
    }

    /// A key named by its character (`a`-`d` taken as `A`-`D`).
    pub fn from_char(key: char) -> Option<DtmfDigit> {
        let key = key.to_ascii_uppercase();
        matches!(key, '0'..='9' | '*' | '#' | 'A'..='D').then_some(DtmfDigit(key))
    }

    pub fn as_char(self) -> char {
        self.0
    }
}

/// Why a SIP INFO body is not a key we take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InfoDtmfError {
    /// Not `application/dtmf-relay` nor `application/dtmf` (answered 415).
    UnsupportedType,
    /// The right type, but no key in the body (answered 200: the INFO itself was fine).
    NoKey,
}

/// A key from a SIP INFO (RFC 6086 carries them; the bodies are de-facto formats):
/// `application/dtmf-relay` `Signal=5\r\nDuration=160` (Duration in ms, optional) or
/// `application/dtmf` `5`. Some senders write `Signal=10` / `11` for `*` / `#`.
pub fn parse_info_dtmf(content_type: &str, body: &str) -> Result<(DtmfDigit, Duration), InfoDtmfError> {
    let media_type = content_type.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    let key = |text: &str| -> Option<DtmfDigit> {
        let text = text.trim();
        match text {
            "10" => DtmfDigit::from_char('*'),
            "11" => DtmfDigit::from_char('#'),
            _ => {
                let mut chars = text.chars();
                let first = chars.next()?;
                if chars.next().is_some() {
                    return None;
                }
                DtmfDigit::from_char(first)
            }
        }
    };
    match media_type.as_str() {
        "application/dtmf-relay" => {
            let mut digit = None;
            let mut duration = Duration::ZERO;
            for line in body.lines() {
                let Some((name, value)) = line.split_once('=') else { continue };
                match name.trim().to_ascii_lowercase().as_str() {
                    "signal" => digit = key(value),
                    "duration" => duration = value.trim().parse::<u64>().map(Duration::from_millis).unwrap_or_default(),
                    _ => {}
                }
            }
            digit.map(|d| (d, duration)).ok_or(InfoDtmfError::NoKey)
        }
        "application/dtmf" => key(body).map(|d| (d, Duration::ZERO)).ok_or(InfoDtmfError::NoKey),
        _ => Err(InfoDtmfError::UnsupportedType),
    }
}

/// The event being received, not yet reported.
#[derive(Debug, Clone, Copy)]
struct Pending {
    timestamp: u32,
    digit: DtmfDigit,
    duration_units: u16,
    /// Duration of the earlier segments of a long event (§2.5.1.3).
    earlier_units: u64,
}

#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    pending: Option<Pending>,
    /// The timestamp of the newest event reported or pending: older packets are stale.
    newest: Option<u32>,
    last_reported: Option<u32>,
    last_packet_at: Option<Instant>,
}

/// `a` is after `b` in RTP timestamp order (RFC 3550 serial arithmetic).
fn is_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000_0000
}

impl DtmfReceiver {
    /// `clock_rate`: the telephone-event clock, the same as the audio codec's (RFC 4733 §2.3.1).
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate: clock_rate.max(1), pending: None, newest: None, last_reported: None, last_packet_at: None }
    }

    /// One telephone-event packet received at `now`; returns a key to report now, at most once
    /// per event.
    pub fn on_packet(&mut self, now: Instant, timestamp: u32, payload: &[u8]) -> Option<(DtmfDigit, Duration)> {
        let [event, flags, duration_hi, duration_lo, ..] = *payload else {
            return None; // shorter than the 4-byte event payload (§2.3)
        };
        let end = flags & 0x80 != 0;
        let duration_units = u16::from_be_bytes([duration_hi, duration_lo]);
        if self.last_reported == Some(timestamp) || self.newest.is_some_and(|newest| is_after(newest, timestamp)) {
            return None; // a repeat of a reported event's end packet, or a late packet of an older event
        }
        self.last_packet_at = Some(now);
        self.newest = Some(timestamp);
        let Some(digit) = DtmfDigit::from_event(event) else {
            // Not a key (flash, tones): it still ends a previous event whose end was lost.
            let unfinished = self.pending.filter(|p| p.timestamp != timestamp);
            return unfinished.map(|p| self.report(p));
        };
        let mut earlier_units = 0;
        let mut previous = None;
        match self.pending {
            Some(p) if p.timestamp == timestamp => earlier_units = p.earlier_units,
            // §2.5.1.3: the next segment of a long event starts where the previous one ended.
            Some(p) if p.digit == digit && timestamp == p.timestamp.wrapping_add(u32::from(p.duration_units)) => {
                earlier_units = p.earlier_units + u64::from(p.duration_units);
            }
            // A new event began while the previous one never ended (its end packets were lost).
            Some(p) => previous = Some(p),
            None => {}
        }
        let current = Pending { timestamp, digit, duration_units, earlier_units };
        if let Some(previous) = previous {
            self.pending = Some(current);
            return Some(self.report_keeping_pending(previous));
        }
        if end {
            return Some(self.report(current));
        }
        self.pending = Some(current);
        None
    }

    /// When a pending event whose end packets were all lost counts as over.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.and(self.last_packet_at).map(|at| at + LOST_END_TIMEOUT)
    }

    /// Reports the pending event once no packet of it came for [`LOST_END_TIMEOUT`].
    pub fn on_timeout(&mut self, now: Instant) -> Option<(DtmfDigit, Duration)> {
        let due = self.poll_timeout()?;
        let pending = self.pending.filter(|_| now >= due)?;
        Some(self.report(pending))
    }

    fn duration(&self, units: u64) -> Duration {
        Duration::from_micros(units.saturating_mul(1_000_000) / u64::from(self.clock_rate))
    }

    fn report(&mut self, event: Pending) -> (DtmfDigit, Duration) {
        self.pending = None;
        self.report_keeping_pending(event)
    }

    fn report_keeping_pending(&mut self, event: Pending) -> (DtmfDigit, Duration) {
        self.last_reported = Some(event.timestamp);
        (event.digit, self.duration(event.earlier_units + u64::from(event.duration_units)))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn t0() -> Instant {
        use std::sync::OnceLock;
        static T0: OnceLock<Instant> = OnceLock::new();
        *T0.get_or_init(Instant::now)
    }

    fn packet(event: u8, end: bool, duration: u16) -> Vec<u8> {
        let [hi, lo] = duration.to_be_bytes();
        vec![event, if end { 0x80 | 10 } else { 10 }, hi, lo]
    }

    #[test]
    fn one_report_per_event_at_its_first_end_packet() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(t0(), 1000, &packet(5, false, 160)), None);
        assert_eq!(rx.on_packet(t0(), 1000, &packet(5, false, 320)), None);
        let (digit, duration) = rx.on_packet(t0(), 1000, &packet(5, true, 800)).unwrap();
        assert_eq!((digit.as_char(), duration), ('5', Duration::from_millis(100)));
        assert_eq!(rx.on_packet(t0(), 1000, &packet(5, true, 800)), None, "repeated end packet");
        assert_eq!(rx.on_packet(t0(), 1000, &packet(5, true, 800)), None);
        let (digit, _) = rx.on_packet(t0(), 2000, &packet(11, true, 400)).unwrap();
        assert_eq!(digit.as_char(), '#');
    }

    #[test]
    fn an_event_whose_end_packets_were_lost_is_reported_when_the_next_starts() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(t0(), 1000, &packet(1, false, 400)), None);
        let (digit, duration) = rx.on_packet(t0(), 3000, &packet(2, false, 160)).unwrap();
        assert_eq!((digit.as_char(), duration), ('1', Duration::from_millis(50)));
        let (digit, _) = rx.on_packet(t0(), 3000, &packet(2, true, 640)).unwrap();
        assert_eq!(digit.as_char(), '2');
    }

    #[test]
    fn short_payloads_and_non_key_events_are_not_digits() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(t0(), 1, &[1, 2]), None);
        assert_eq!(rx.on_packet(t0(), 2, &packet(16, true, 800)), None, "flash is not a key");
    }

    #[test]
    fn late_packets_of_an_older_event_are_not_a_second_key() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(t0(), 1000, &packet(1, true, 800)).unwrap().0.as_char(), '1');
        assert_eq!(rx.on_packet(t0(), 2000, &packet(2, true, 800)).unwrap().0.as_char(), '2');
        // The third end packet of '1', reordered behind '2'.
        assert_eq!(rx.on_packet(t0(), 1000, &packet(1, true, 800)), None);
        assert_eq!(rx.on_packet(t0(), 2000, &packet(2, true, 800)), None);
    }

    #[test]
    fn events_across_the_timestamp_wrap_and_at_48_khz() {
        let mut rx = DtmfReceiver::new(48_000);
        let before_wrap = u32::MAX - 100;
        let (digit, duration) = rx.on_packet(t0(), before_wrap, &packet(7, true, 4800)).unwrap();
        assert_eq!((digit.as_char(), duration), ('7', Duration::from_millis(100)));
        let (digit, _) = rx.on_packet(t0(), 9_500, &packet(8, true, 4800)).unwrap();
        assert_eq!(digit.as_char(), '8', "after the wrap is later, not stale");
    }

    #[test]
    fn a_long_event_in_segments_is_one_key() {
        // §2.5.1.3: 0xFFFF units at most per segment; the next starts where it ended.
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(t0(), 1000, &packet(0, false, 0xFFFF)), None);
        assert_eq!(rx.on_packet(t0(), 1000 + 0xFFFF, &packet(0, false, 800)), None);
        let (digit, duration) = rx.on_packet(t0(), 1000 + 0xFFFF, &packet(0, true, 1600)).unwrap();
        assert_eq!(digit.as_char(), '0');
        assert_eq!(duration, Duration::from_micros((0xFFFF + 1600) * 125));
    }

    #[test]
    fn an_event_whose_end_never_comes_is_reported_after_the_timeout() {
        let start = Instant::now();
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(start, 5000, &packet(9, false, 400)), None);
        let due = rx.poll_timeout().unwrap();
        assert_eq!(due, start + LOST_END_TIMEOUT);
        assert_eq!(rx.on_timeout(due - Duration::from_millis(1)), None);
        assert_eq!(rx.on_timeout(due).unwrap().0.as_char(), '9');
        assert_eq!(rx.poll_timeout(), None);
        assert_eq!(rx.on_packet(start, 5000, &packet(9, true, 800)), None, "its late end packet");
    }

    #[test]
    fn sip_info_bodies() {
        let relay = parse_info_dtmf("application/dtmf-relay", "Signal=5\r\nDuration=160\r\n").unwrap();
        assert_eq!((relay.0.as_char(), relay.1), ('5', Duration::from_millis(160)));
        let star = parse_info_dtmf("Application/DTMF-Relay; charset=x", "Signal= *\nDuration=100").unwrap();
        assert_eq!(star.0.as_char(), '*');
        assert_eq!(parse_info_dtmf("application/dtmf-relay", "Signal=11").unwrap().0.as_char(), '#');
        assert_eq!(parse_info_dtmf("application/dtmf", "5").unwrap().0.as_char(), '5');
        assert_eq!(parse_info_dtmf("application/dtmf", " d\r\n").unwrap().0.as_char(), 'D');
        assert_eq!(parse_info_dtmf("application/dtmf-relay", "Signal=E"), Err(InfoDtmfError::NoKey));
        assert_eq!(parse_info_dtmf("application/dtmf", "55"), Err(InfoDtmfError::NoKey));
        assert_eq!(parse_info_dtmf("application/sdp", "v=0"), Err(InfoDtmfError::UnsupportedType));
    }
}
