//! DTMF digits to the model, sans-IO: each key the caller presses (RFC 4733 or SIP INFO)
//! reaches the model as a user `input_text` item naming it (reference §3.1, §11 "Telephony
//! extras"), never as audio. Digits pressed in quick succession are coalesced into one item
//! ("The caller pressed 1, 2, 3.") so a PIN is one turn, not four answers talking over each
//! other: the item goes out `agents.X.dtmf_coalesce_ms` after the last key.

use std::time::{Duration, Instant};

use super::dtmf::DtmfDigit;

/// Keys held for one item at most; a caller leaning on the keypad gets an item every this
/// many keys (the policy when full: send now, start a new item).
pub const MAX_COALESCED_DIGITS: usize = 32;

/// Keys waiting to be told to the model.
#[derive(Debug)]
pub struct DtmfToModel {
    coalesce: Duration,
    keys: Vec<char>,
    /// When the waiting keys go out.
    due: Option<Instant>,
}

impl DtmfToModel {
    pub fn new(coalesce: Duration) -> Self {
        Self { coalesce, keys: Vec::new(), due: None }
    }

    /// A key was pressed at `now`; returns an item text to send at once when the item is full.
    pub fn on_digit(&mut self, now: Instant, digit: DtmfDigit) -> Option<String> {
        self.keys.push(digit.as_char());
        self.due = Some(now + self.coalesce);
        if self.keys.len() >= MAX_COALESCED_DIGITS { self.take() } else { None }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.due
    }

    /// The item text once the coalescing time since the last key has passed.
    pub fn on_timeout(&mut self, now: Instant) -> Option<String> {
        if self.due.is_some_and(|due| now >= due) { self.take() } else { None }
    }

    fn take(&mut self) -> Option<String> {
        self.due = None;
        if self.keys.is_empty() {
            return None;
        }
        let keys: Vec<String> = self.keys.drain(..).map(String::from).collect();
        Some(format!("The caller pressed {}.", keys.join(", ")))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn key(c: char) -> DtmfDigit {
        DtmfDigit::from_char(c).unwrap()
    }

    #[test]
    fn one_key_is_one_item_after_the_coalescing_time() {
        let t0 = Instant::now();
        let mut d = DtmfToModel::new(Duration::from_millis(1500));
        assert_eq!(d.on_digit(t0, key('5')), None);
        assert_eq!(d.poll_timeout(), Some(t0 + Duration::from_millis(1500)));
        assert_eq!(d.on_timeout(t0 + Duration::from_millis(1499)), None);
        assert_eq!(d.on_timeout(t0 + Duration::from_millis(1500)).as_deref(), Some("The caller pressed 5."));
        assert_eq!(d.poll_timeout(), None);
    }

    #[test]
    fn quick_keys_are_coalesced_and_each_key_restarts_the_wait() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut d = DtmfToModel::new(ms(1500));
        d.on_digit(t0, key('1'));
        d.on_digit(t0 + ms(1000), key('2'));
        d.on_digit(t0 + ms(2000), key('#'));
        assert_eq!(d.on_timeout(t0 + ms(3000)), None, "1.5 s after the first key, but not the last");
        assert_eq!(d.on_timeout(t0 + ms(3500)).as_deref(), Some("The caller pressed 1, 2, #."));
        d.on_digit(t0 + ms(9000), key('*'));
        assert_eq!(d.on_timeout(t0 + ms(10_500)).as_deref(), Some("The caller pressed *."));
    }

    #[test]
    fn a_full_item_goes_out_at_once() {
        let t0 = Instant::now();
        let mut d = DtmfToModel::new(Duration::from_secs(5));
        for _ in 0..MAX_COALESCED_DIGITS - 1 {
            assert_eq!(d.on_digit(t0, key('9')), None);
        }
        let text = d.on_digit(t0, key('9')).unwrap();
        assert_eq!(text.matches('9').count(), MAX_COALESCED_DIGITS);
        assert_eq!(d.poll_timeout(), None);
    }
}
