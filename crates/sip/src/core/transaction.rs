//! The transaction layer (RFC 3261 §17): one state machine per transaction kind, each with its
//! own state enum and the RFC's diagram in its doc comment.
//!
//! - [`client_invite`]: our INVITE (Timers A, B, D; ACK for a non-2xx; RFC 6026 Accepted state);
//! - [`client_non_invite`]: our BYE, CANCEL and other requests (Timers E, F, K);
//! - [`server_invite`]: an INVITE we received (Timers G, H, I; RFC 6026 Accepted, Timer L);
//! - [`server_non_invite`]: any other request we received (Timer J).
//!
//! Every one of them is sans-IO: time is a parameter, what to send is returned. All share one
//! retransmission helper, [`Retransmit`].

use std::time::{Duration, Instant};

pub mod client_invite;
pub mod client_non_invite;
pub mod server_invite;
pub mod server_non_invite;

/// A retransmission timer that starts at T1 and doubles, optionally up to a ceiling (RFC 3261
/// Timers A, E, G and the 2xx retransmission of §13.3.1.4). Never armed over a reliable
/// transport (§17.1.1.2, §17.1.2.2, §17.2.1: TCP does its own retransmissions).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retransmit {
    next_at: Option<Instant>,
    interval: Duration,
    /// `None`: doubles without bound (Timer A, §17.1.1.2); `Some(T2)` otherwise.
    ceiling: Option<Duration>,
}

impl Retransmit {
    /// Armed to fire first at `now + t1` when the transport is unreliable.
    pub fn start(now: Instant, t1: Duration, ceiling: Option<Duration>, reliable: bool) -> Retransmit {
        Retransmit { next_at: (!reliable).then(|| now + t1), interval: t1, ceiling }
    }

    /// A timer that never fires.
    pub fn off(t1: Duration) -> Retransmit {
        Retransmit { next_at: None, interval: t1, ceiling: None }
    }

    /// When it fires next.
    pub fn deadline(&self) -> Option<Instant> {
        self.next_at
    }

    /// Whether it is armed.
    pub fn is_armed(&self) -> bool {
        self.next_at.is_some()
    }

    /// When due at `now`: doubles the interval (up to the ceiling), re-arms, and returns `true`
    /// (the caller resends).
    pub fn fire(&mut self, now: Instant) -> bool {
        match self.next_at {
            Some(at) if at <= now => {
                let doubled = self.interval.saturating_mul(2);
                self.interval = self.ceiling.map_or(doubled, |ceiling| doubled.min(ceiling));
                self.next_at = Some(now + self.interval);
                true
            }
            _ => false,
        }
    }

    /// Keeps firing, but from the next time on every `interval` (§17.1.2.2: Timer E in
    /// Proceeding is T2).
    pub fn settle_at(&mut self, interval: Duration) {
        if self.next_at.is_some() {
            self.interval = interval;
            self.ceiling = Some(interval);
        }
    }

    /// Stops it.
    pub fn stop(&mut self) {
        self.next_at = None;
    }
}

/// Whether `deadline` is set and has passed.
pub fn expired(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|at| at <= now)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;

    fn fire_times(mut timer: Retransmit, base: Instant, until: Duration) -> Vec<u64> {
        let mut times = Vec::new();
        let mut t = Duration::ZERO;
        while t <= until {
            if timer.fire(base + t) {
                times.push(t.as_millis() as u64);
            }
            t += Duration::from_millis(10);
        }
        times
    }

    #[test]
    fn doubles_without_ceiling_and_with_one() {
        let base = Instant::now();
        let t1 = Duration::from_millis(500);
        let a = Retransmit::start(base, t1, None, false);
        assert_eq!(fire_times(a, base, Duration::from_secs(32)), [500, 1500, 3500, 7500, 15_500, 31_500]);
        let e = Retransmit::start(base, t1, Some(Duration::from_secs(4)), false);
        assert_eq!(&fire_times(e, base, Duration::from_secs(16))[..6], [500, 1500, 3500, 7500, 11_500, 15_500]);
        let tcp = Retransmit::start(base, t1, None, true);
        assert!(fire_times(tcp, base, Duration::from_secs(32)).is_empty());
    }
}
