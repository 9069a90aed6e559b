//! RFC 4733 telephone-events received on a leg, reported once per event.
//!
//! Every packet of one event carries the same RTP timestamp (the event's start, RFC 4733
//! §2.5.1.1); the end packet has the E bit and is sent three times (§2.5.1.4). An event is
//! reported at its first end packet; if every end packet is lost, it is reported when the next
//! event starts. Repeats and retransmissions of a reported timestamp are ignored.

use std::time::Duration;

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

    pub fn as_char(self) -> char {
        self.0
    }
}

/// The event being received, not yet reported.
#[derive(Debug, Clone, Copy)]
struct Pending {
    timestamp: u32,
    digit: DtmfDigit,
    duration_units: u16,
}

#[derive(Debug)]
pub struct DtmfReceiver {
    clock_rate: u32,
    pending: Option<Pending>,
    last_reported: Option<u32>,
}

impl DtmfReceiver {
    /// `clock_rate`: the telephone-event clock, the same as the audio codec's (RFC 4733 §2.3.1).
    pub fn new(clock_rate: u32) -> Self {
        Self { clock_rate: clock_rate.max(1), pending: None, last_reported: None }
    }

    /// One telephone-event packet; returns a digit to report now, at most once per event.
    pub fn on_packet(&mut self, timestamp: u32, payload: &[u8]) -> Option<(DtmfDigit, Duration)> {
        let [event, flags, duration_hi, duration_lo, ..] = *payload else {
            return None; // shorter than the 4-byte event payload (§2.3)
        };
        let end = flags & 0x80 != 0;
        let duration_units = u16::from_be_bytes([duration_hi, duration_lo]);
        if self.last_reported == Some(timestamp) {
            return None; // a repeat of a reported event's end packet
        }
        // A new event began while the previous one never ended (its end packets were lost).
        let unfinished = self.pending.filter(|p| p.timestamp != timestamp);
        let Some(digit) = DtmfDigit::from_event(event) else {
            return unfinished.map(|p| self.report(p));
        };
        if let Some(previous) = unfinished {
            self.pending = Some(Pending { timestamp, digit, duration_units });
            return Some(self.report_keeping_pending(previous));
        }
        let pending = Pending { timestamp, digit, duration_units };
        if end {
            return Some(self.report(pending));
        }
        self.pending = Some(pending);
        None
    }

    fn duration(&self, units: u16) -> Duration {
        Duration::from_micros(u64::from(units) * 1_000_000 / u64::from(self.clock_rate))
    }

    fn report(&mut self, event: Pending) -> (DtmfDigit, Duration) {
        self.pending = None;
        self.report_keeping_pending(event)
    }

    fn report_keeping_pending(&mut self, event: Pending) -> (DtmfDigit, Duration) {
        self.last_reported = Some(event.timestamp);
        (event.digit, self.duration(event.duration_units))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(event: u8, end: bool, duration: u16) -> Vec<u8> {
        let [hi, lo] = duration.to_be_bytes();
        vec![event, if end { 0x80 | 10 } else { 10 }, hi, lo]
    }

    #[test]
    fn one_report_per_event_at_its_first_end_packet() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(1000, &packet(5, false, 160)), None);
        assert_eq!(rx.on_packet(1000, &packet(5, false, 320)), None);
        let (digit, duration) = rx.on_packet(1000, &packet(5, true, 800)).unwrap();
        assert_eq!((digit.as_char(), duration), ('5', Duration::from_millis(100)));
        assert_eq!(rx.on_packet(1000, &packet(5, true, 800)), None, "repeated end packet");
        assert_eq!(rx.on_packet(1000, &packet(5, true, 800)), None);
        let (digit, _) = rx.on_packet(2000, &packet(11, true, 400)).unwrap();
        assert_eq!(digit.as_char(), '#');
    }

    #[test]
    fn an_event_whose_end_packets_were_lost_is_reported_when_the_next_starts() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(1000, &packet(1, false, 400)), None);
        let (digit, duration) = rx.on_packet(3000, &packet(2, false, 160)).unwrap();
        assert_eq!((digit.as_char(), duration), ('1', Duration::from_millis(50)));
        let (digit, _) = rx.on_packet(3000, &packet(2, true, 640)).unwrap();
        assert_eq!(digit.as_char(), '2');
    }

    #[test]
    fn short_payloads_and_non_key_events_are_not_digits() {
        let mut rx = DtmfReceiver::new(8000);
        assert_eq!(rx.on_packet(1, &[1, 2]), None);
        assert_eq!(rx.on_packet(2, &packet(16, true, 800)), None, "flash is not a key");
    }
}
