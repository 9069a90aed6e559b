//! Capacity admission: take new calls only while the calls already up are paced on time.
//!
//! The measure is the media clock's own: the p99 of outbound RTP send lateness over its last
//! one-second window ([`LatenessStats`]). Why that and not CPU or a call count:
//! - it is what callers hear: a late packet is a gap in the far end's playout, whatever made it
//!   late (our CPU, another process on the box, a noisy neighbour VM, lock contention);
//! - it follows the real capacity of this machine now, which a fixed `calls.max_concurrent`
//!   cannot (it is the same number on a quiet box and a busy one, and for G.711 and Opus);
//! - CPU utilisation misses contention from other processes and says nothing about timing;
//! - p99 over a second (25,000 samples at 500 calls) is stable against a single late wake-up,
//!   yet moves within one window when the machine runs out of CPU.
//!
//! Hysteresis (so the gateway does not flap between 503 and 200 around the mark): it trips when a
//! window's p99 is above `calls.saturation_lateness_ms`, and recovers only after the p99 has
//! stayed at or below `calls.recovery_lateness_ms` for `calls.saturation_hold_secs`. A window
//! with fewer than [`MIN_SAMPLES`] packets says nothing about saturation (an idle gateway is not
//! saturated) and counts as below the mark. Refusing new calls never ends calls already up:
//! protect the calls the gateway has instead of degrading them all.
//!
//! Sans-IO: [`CapacityGate::observe`] takes `now` and one window's stats; the shell (`app.rs`)
//! feeds it once per clock window and applies the transitions (503 to INVITE and OPTIONS,
//! `/readyz`, the `switchboard_capacity_saturated` gauge).

use std::time::{Duration, Instant};

use crate::media_clock::LatenessStats;

/// Fewer packets than this in a window (under half a second of one call's audio... of 25 calls'
/// 20 ms packets) is no evidence of saturation either way.
pub const MIN_SAMPLES: u64 = 50;

/// The thresholds, from `[calls]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityConfig {
    /// Trip when a window's p99 lateness is above this. Zero disables capacity admission.
    pub saturation_lateness: Duration,
    /// Recover when p99 has stayed at or below this for `hold`.
    pub recovery_lateness: Duration,
    pub hold: Duration,
}

impl CapacityConfig {
    pub fn enabled(&self) -> bool {
        !self.saturation_lateness.is_zero()
    }
}

/// A change of state the shell must apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Start refusing new calls (503 + Retry-After, OPTIONS 503).
    Saturated { p99: Duration },
    /// Take calls again.
    Recovered,
}

/// Whether the gateway takes new calls, decided from pacing lateness.
#[derive(Debug, Clone)]
pub struct CapacityGate {
    config: CapacityConfig,
    saturated: bool,
    /// While saturated: since when every window has been at or below the recovery mark.
    calm_since: Option<Instant>,
}

impl CapacityGate {
    pub fn new(config: CapacityConfig) -> CapacityGate {
        CapacityGate { config, saturated: false, calm_since: None }
    }

    /// True while new calls must be refused.
    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// One completed lateness window, ending at `now`.
    pub fn observe(&mut self, now: Instant, window: LatenessStats) -> Option<Transition> {
        if !self.config.enabled() {
            return None;
        }
        let evidence = window.samples >= MIN_SAMPLES;
        if !self.saturated {
            if evidence && window.p99 > self.config.saturation_lateness {
                self.saturated = true;
                self.calm_since = None;
                return Some(Transition::Saturated { p99: window.p99 });
            }
            return None;
        }
        let calm = !evidence || window.p99 <= self.config.recovery_lateness;
        if !calm {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= self.config.hold {
            self.saturated = false;
            self.calm_since = None;
            return Some(Transition::Recovered);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn config() -> CapacityConfig {
        CapacityConfig {
            saturation_lateness: Duration::from_millis(10),
            recovery_lateness: Duration::from_millis(4),
            hold: Duration::from_secs(5),
        }
    }

    fn window(p99_ms: u64, samples: u64) -> LatenessStats {
        LatenessStats { samples, p99: Duration::from_millis(p99_ms), ..LatenessStats::default() }
    }

    /// Feeds one window per second of virtual time; returns the transitions with their second.
    fn run(gate: &mut CapacityGate, start: Instant, p99s: &[u64]) -> Vec<(usize, Transition)> {
        p99s.iter()
            .enumerate()
            .filter_map(|(n, &p99)| gate.observe(start + SECOND * (n as u32 + 1), window(p99, 25_000)).map(|t| (n, t)))
            .collect()
    }

    #[test]
    fn trips_on_the_first_window_over_the_mark() {
        let mut gate = CapacityGate::new(config());
        let start = Instant::now();
        let transitions = run(&mut gate, start, &[1, 2, 10, 11, 30]);
        assert_eq!(transitions, [(3, Transition::Saturated { p99: Duration::from_millis(11) })]);
        assert!(gate.is_saturated());
    }

    #[test]
    fn recovers_only_after_the_hold_below_the_lower_mark() {
        let mut gate = CapacityGate::new(config());
        let start = Instant::now();
        // Saturated at second 0; then between the marks (no recovery), then calm but interrupted
        // at second 5, then calm for good from second 6: recovered 5 s later, at second 11.
        let p99s = [20, 8, 6, 3, 3, 9, 2, 2, 2, 2, 2, 2, 2];
        let transitions = run(&mut gate, start, &p99s);
        assert_eq!(
            transitions,
            [(0, Transition::Saturated { p99: Duration::from_millis(20) }), (11, Transition::Recovered)]
        );
        assert!(!gate.is_saturated());
    }

    #[test]
    fn no_flapping_around_the_mark() {
        let mut gate = CapacityGate::new(config());
        let start = Instant::now();
        // Oscillating around 10 ms for a minute: one trip, never a recovery.
        let p99s: Vec<u64> = (0..60).map(|n| if n % 2 == 0 { 12 } else { 9 }).collect();
        assert_eq!(run(&mut gate, start, &p99s).len(), 1);
        assert!(gate.is_saturated());
    }

    #[test]
    fn thin_windows_are_no_evidence() {
        let mut gate = CapacityGate::new(config());
        let start = Instant::now();
        // One late packet of one call does not refuse calls.
        assert_eq!(gate.observe(start, window(200, MIN_SAMPLES - 1)), None);
        assert!(!gate.is_saturated());
        // Once saturated, an idle gateway (all calls ended) counts as calm and recovers.
        gate.observe(start + SECOND, window(50, 25_000));
        assert!(gate.is_saturated());
        let mut recovered = None;
        for n in 2..10u32 {
            if let Some(t) = gate.observe(start + SECOND * n, window(0, 0)) {
                recovered = Some((n, t));
            }
        }
        assert_eq!(recovered, Some((7, Transition::Recovered)));
    }

    #[test]
    fn zero_threshold_disables_it() {
        let mut gate = CapacityGate::new(CapacityConfig { saturation_lateness: Duration::ZERO, ..config() });
        assert_eq!(run(&mut gate, Instant::now(), &[100, 200]), []);
        assert!(!gate.is_saturated());
    }
}
