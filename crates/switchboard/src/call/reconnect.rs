//! Keeping the AI connection of an answered call, sans-IO (docs/realtime-resilience.md): why a
//! connection is being replaced, how long to wait between attempts (exponential backoff with
//! jitter), when to give up, and the audio the caller hears meanwhile (a comfort tone, and the
//! announcement before the gateway hangs up). Time and randomness are parameters; the shell
//! ([`super::shell`]) does the connecting and the core ([`super::core`]) keeps the call.

use std::time::{Duration, Instant};

use switchboard_media::g711;
use switchboard_realtime::error_code::ErrorCode;
use switchboard_realtime::events::AudioFormat;

use super::end::CallEnd;

/// Why the AI connection is being replaced (the `reason` label of
/// `switchboard_realtime_reconnects_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconnectReason {
    /// The WebSocket ended without a close frame, or the transport failed (a reset, 1006).
    Dropped,
    /// The server sent a close frame (1011, 1001 without `session_expired`, ...).
    Closed,
    /// A fatal `error` event (reference §7) other than `session_expired`.
    FatalError,
    /// `session_expired`: the session hit its maximum duration (reference §7).
    Expired,
    /// Not a loss: the session was replaced before its expiry, at a turn boundary.
    Rollover,
}

impl ReconnectReason {
    pub fn label(self) -> &'static str {
        match self {
            ReconnectReason::Dropped => "dropped",
            ReconnectReason::Closed => "closed",
            ReconnectReason::FatalError => "error",
            ReconnectReason::Expired => "expired",
            ReconnectReason::Rollover => "rollover",
        }
    }

    /// Whether a call ending this way may be saved by a new session instead. A message over
    /// `realtime.max_message_bytes` (a hostile or broken server), a writer wedged past the
    /// watchdog or a silent server are not retried: the next session would likely do the same,
    /// and the watchdog already made the caller wait.
    pub fn of(end: &CallEnd) -> Option<ReconnectReason> {
        match end {
            CallEnd::AgentDisconnected(why) if why.starts_with("closed with ") => Some(ReconnectReason::Closed),
            CallEnd::AgentDisconnected(why) if why.contains("control queue full") => None,
            CallEnd::AgentDisconnected(_) => Some(ReconnectReason::Dropped),
            CallEnd::AgentFatalError(why) if why.starts_with(ErrorCode::SessionExpired.as_str()) => {
                Some(ReconnectReason::Expired)
            }
            CallEnd::AgentFatalError(_) => Some(ReconnectReason::FatalError),
            _ => None,
        }
    }
}

/// `realtime.reconnect_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub initial_delay: Duration,
    pub max_delay: Duration,
    /// The AI not back within this time after the loss: give up.
    pub give_up_after: Duration,
}

impl ReconnectPolicy {
    /// How long to wait before attempt `attempt` (0 = the first, at once: every millisecond of
    /// the pause is heard). Then `initial_delay` doubling up to `max_delay`, each drawn from
    /// [half, all] of that step by `jitter` in [0, 1) ("equal jitter"), so calls that lost the
    /// same server do not all come back at the same instant.
    pub fn delay_before(&self, attempt: u32, jitter: f64) -> Duration {
        if attempt == 0 {
            return Duration::ZERO;
        }
        let doublings = attempt.saturating_sub(1).min(20);
        let step = self.initial_delay.saturating_mul(1u32 << doublings).min(self.max_delay);
        let jitter = if jitter.is_finite() { jitter.clamp(0.0, 1.0) } else { 0.0 };
        step / 2 + step.mul_f64(jitter / 2.0)
    }

    /// When an outage that began at `since` is given up.
    pub fn give_up_at(&self, since: Instant) -> Instant {
        since + self.give_up_after
    }
}

/// The longest a rollover starts before the server's `expires_at`: time to open the new session
/// and to wait for a turn boundary.
const ROLLOVER_MARGIN: Duration = Duration::from_secs(120);

/// When a session opened at `opened` is to be rolled over (a new session opened in the
/// background and switched to at a turn boundary): `session_max` after it opened
/// (`realtime.session_max_secs`; `None`: no own limit), or [`ROLLOVER_MARGIN`] before the
/// server's `expires_at` (`expires_in`, from `session.created`; a quarter of the lifetime for a
/// session shorter than four margins), whichever comes first. `None`: never.
pub fn rollover_at(opened: Instant, session_max: Option<Duration>, expires_in: Option<Duration>) -> Option<Instant> {
    let by_server = expires_in.map(|left| opened + left.saturating_sub(ROLLOVER_MARGIN.min(left / 4)));
    let by_config = session_max.map(|max| opened + max);
    match (by_server, by_config) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// One comfort pulse: 200 ms of 425 Hz (the European ring/dial frequency, heard as "the line is
/// alive"), repeated every [`COMFORT_PERIOD`], at about -24 dBFS: soft, not a ringback.
pub const COMFORT_PULSE: Duration = Duration::from_millis(200);
pub const COMFORT_PERIOD: Duration = Duration::from_secs(2);
const COMFORT_HZ: f64 = 425.0;
const COMFORT_LEVEL: f64 = 0.063;

/// The comfort pulse in the model's output format (what the core's outbound path plays).
pub fn comfort_pulse(format: AudioFormat) -> Vec<u8> {
    encode(format, &tone(format, &[(COMFORT_HZ, COMFORT_PULSE)], COMFORT_LEVEL))
}

/// The give-up announcement: the three rising special information tones (ITU-T E.180 SIT,
/// 950 / 1400 / 1800 Hz, 330 ms each), which callers know as "this call cannot go on", at
/// about -18 dBFS.
pub fn give_up_tones(format: AudioFormat) -> Vec<u8> {
    let step = Duration::from_millis(330);
    encode(format, &tone(format, &[(950.0, step), (1400.0, step), (1800.0, step)], 0.125))
}

fn sample_rate(format: AudioFormat) -> u32 {
    match format {
        AudioFormat::Pcm { rate } => rate,
        _ => 8000,
    }
}

/// Linear samples of consecutive tones, each faded in and out over 10 ms (no clicks).
fn tone(format: AudioFormat, parts: &[(f64, Duration)], level: f64) -> Vec<i16> {
    let rate = f64::from(sample_rate(format));
    let fade = (rate * 0.010).max(1.0);
    let mut samples = Vec::new();
    for &(hz, length) in parts {
        let count = (rate * length.as_secs_f64()).round() as usize;
        for n in 0..count {
            let position = n as f64;
            let envelope = (position / fade).min((count as f64 - position) / fade).clamp(0.0, 1.0);
            let value = (2.0 * std::f64::consts::PI * hz * position / rate).sin() * level * envelope;
            samples.push((value * f64::from(i16::MAX)) as i16);
        }
    }
    samples
}

fn encode(format: AudioFormat, samples: &[i16]) -> Vec<u8> {
    let mut out = Vec::with_capacity(samples.len() * 2);
    match format {
        AudioFormat::Pcmu => g711::ulaw_encode_slice(samples, &mut out),
        AudioFormat::Pcma => g711::alaw_encode_slice(samples, &mut out),
        AudioFormat::Pcm { .. } => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> ReconnectPolicy {
        ReconnectPolicy {
            initial_delay: Duration::from_millis(200),
            max_delay: Duration::from_millis(2000),
            give_up_after: Duration::from_secs(20),
        }
    }

    #[test]
    fn the_first_attempt_is_immediate_then_backoff_doubles_to_the_cap_with_jitter() {
        let p = policy();
        assert_eq!(p.delay_before(0, 0.7), Duration::ZERO);
        // Without jitter: half of each step; with full jitter: the whole step.
        let low: Vec<u128> = (1..=6).map(|a| p.delay_before(a, 0.0).as_millis()).collect();
        let high: Vec<u128> = (1..=6).map(|a| p.delay_before(a, 1.0).as_millis()).collect();
        assert_eq!(low, vec![100, 200, 400, 800, 1000, 1000]);
        assert_eq!(high, vec![200, 400, 800, 1600, 2000, 2000]);
        // Never beyond the cap, whatever the attempt number or a broken jitter source.
        assert_eq!(p.delay_before(u32::MAX, 1.0), Duration::from_millis(2000));
        assert_eq!(p.delay_before(3, f64::NAN), Duration::from_millis(400));
        assert_eq!(p.delay_before(3, 7.0), Duration::from_millis(800));
    }

    #[test]
    fn rollover_comes_before_the_server_expiry_or_the_configured_maximum() {
        let t0 = Instant::now();
        let hour = Duration::from_secs(3600);
        let max = Some(Duration::from_secs(55 * 60));
        // The API's 60 minutes: the configured 55 come first.
        assert_eq!(rollover_at(t0, max, Some(hour)), Some(t0 + Duration::from_secs(55 * 60)));
        // A server expiring sooner wins, 2 minutes early.
        assert_eq!(rollover_at(t0, max, Some(Duration::from_secs(1800))), Some(t0 + Duration::from_secs(1680)));
        // A short session: a quarter of it as the margin, never "at once".
        assert_eq!(rollover_at(t0, None, Some(Duration::from_secs(8))), Some(t0 + Duration::from_secs(6)));
        assert_eq!(rollover_at(t0, None, None), None);
    }

    #[test]
    fn give_up_is_counted_from_the_loss() {
        let t0 = Instant::now();
        assert_eq!(policy().give_up_at(t0), t0 + Duration::from_secs(20));
    }

    #[test]
    fn which_ends_are_retried() {
        let of = |end: CallEnd| ReconnectReason::of(&end);
        assert_eq!(of(CallEnd::AgentDisconnected("closed with 1011: boom".into())), Some(ReconnectReason::Closed));
        assert_eq!(of(CallEnd::AgentDisconnected("connection closed".into())), Some(ReconnectReason::Dropped));
        assert_eq!(of(CallEnd::AgentFatalError("session_expired: 60 min".into())), Some(ReconnectReason::Expired));
        assert_eq!(of(CallEnd::AgentFatalError("invalid_api_key: no".into())), Some(ReconnectReason::FatalError));
        assert_eq!(of(CallEnd::AgentDisconnected("Realtime writer stalled: control queue full".into())), None);
        assert_eq!(of(CallEnd::AgentMessageTooLarge("big".into())), None);
        assert_eq!(of(CallEnd::AgentWatchdog(Duration::from_secs(15))), None);
        assert_eq!(of(CallEnd::CallerHangup), None);
    }

    #[test]
    fn tones_have_the_length_and_format_asked_for() {
        assert_eq!(comfort_pulse(AudioFormat::Pcmu).len(), 1600, "200 ms of 8 kHz G.711");
        assert_eq!(comfort_pulse(AudioFormat::Pcm { rate: 24_000 }).len(), 9600, "200 ms of 24 kHz PCM16");
        assert_eq!(give_up_tones(AudioFormat::Pcma).len(), 3 * 2640);
        // Soft: the comfort pulse peaks well below full scale.
        let pcm = comfort_pulse(AudioFormat::Pcm { rate: 24_000 });
        let peak = pcm.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]]).unsigned_abs()).max().unwrap();
        assert!((1500..2500).contains(&peak), "{peak}");
    }
}
