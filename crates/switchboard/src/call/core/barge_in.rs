//! When the caller's speech interrupts the agent (`agents.X.barge_in`), sans-IO.
//!
//! - `immediate` (default): `input_audio_buffer.speech_started` stops the agent at once (queue
//!   flushed, item truncated to what was heard). Server VAD runs with `interrupt_response` and
//!   `create_response` on: the API cancels the response and answers the turn itself.
//! - `confirm`: `speech_started` only *pauses* the agent (the pacer sends silence, the queue is
//!   kept). The speech is a real barge-in once it has lasted `barge_in_confirm_ms`; then the
//!   queue is dropped, the response cancelled if still active and the item truncated at the ms
//!   the caller heard. Shorter speech (a cough, an "uh-huh") resumes the agent where it paused.
//!   Server VAD then runs with `interrupt_response: false` (reference §2.2: with it on, the API
//!   itself cancels the response at `speech_started`, before anyone knows whether it was a
//!   cough) and `create_response: false` (a cough would otherwise get its own answer queued
//!   behind the resumed one): the gateway sends `response.cancel` (§6 step 3) and
//!   `response.create` itself.
//!
//! How long the speech lasted is only known from the VAD's own timeline: `speech_stopped`
//! arrives `silence_duration_ms` after the speech ended, and its `audio_end_ms` minus the
//! `speech_started` `audio_start_ms` (which includes `prefix_padding_ms`, §4.2) is the speech.
//! If no `speech_stopped` has come `confirm + silence_duration` after `speech_started`, the
//! speech has lasted longer than `confirm`: the barge-in is confirmed on that timer.

use std::time::{Duration, Instant};

/// `agents.X.barge_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BargeInMode {
    #[default]
    Immediate,
    Confirm,
}

/// The barge-in settings of one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BargeInConfig {
    pub mode: BargeInMode,
    /// `agents.X.barge_in_confirm_ms`: speech at least this long is a barge-in (confirm mode).
    pub confirm: Duration,
    /// The session's VAD `prefix_padding_ms` (counted in `audio_start_ms`).
    pub prefix_padding: Duration,
    /// The session's VAD `silence_duration_ms` (how late `speech_stopped` comes).
    pub silence_duration: Duration,
}

/// What the call core must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BargeInAction {
    /// Nothing (yet).
    None,
    /// Flush the agent's queue, cancel the response if still active, truncate.
    Interrupt,
    /// Pause the agent's audio and keep the queue.
    Pause,
    /// Resume the paused agent where it stopped.
    Resume,
}

/// Caller speech that paused the agent and is not judged yet (confirm mode).
#[derive(Debug, Clone, Copy)]
struct Pending {
    /// When `speech_started` arrived.
    since: Instant,
    audio_start_ms: u64,
}

/// The barge-in decisions of one call.
#[derive(Debug)]
pub struct BargeIn {
    config: BargeInConfig,
    pending: Option<Pending>,
    /// The caller is speaking (between `speech_started` and `speech_stopped`).
    caller_speaking: bool,
}

impl BargeIn {
    pub fn new(config: BargeInConfig) -> Self {
        Self { config, pending: None, caller_speaking: false }
    }

    pub fn mode(&self) -> BargeInMode {
        self.config.mode
    }

    /// Between `speech_started` and `speech_stopped`.
    pub fn caller_speaking(&self) -> bool {
        self.caller_speaking
    }

    /// Whether the agent is paused awaiting the verdict.
    pub fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    /// `input_audio_buffer.speech_started`; `agent_talking`: the agent has audio queued or a
    /// response still streaming.
    pub fn on_speech_started(&mut self, now: Instant, audio_start_ms: u64, agent_talking: bool) -> BargeInAction {
        self.caller_speaking = true;
        match self.config.mode {
            BargeInMode::Immediate => BargeInAction::Interrupt,
            BargeInMode::Confirm if agent_talking => {
                if self.pending.is_some() {
                    return BargeInAction::None; // already paused
                }
                self.pending = Some(Pending { since: now, audio_start_ms });
                BargeInAction::Pause
            }
            BargeInMode::Confirm => BargeInAction::None,
        }
    }

    /// `input_audio_buffer.speech_stopped`. Returns the action and whether the caller's turn
    /// was a real one (not a cough that resumed the agent): in confirm mode the gateway then
    /// creates the response itself.
    pub fn on_speech_stopped(&mut self, audio_end_ms: u64) -> (BargeInAction, bool) {
        self.caller_speaking = false;
        let Some(pending) = self.pending.take() else {
            return (BargeInAction::None, true);
        };
        let prefix = u64::try_from(self.config.prefix_padding.as_millis()).unwrap_or(u64::MAX);
        let speech_ms = audio_end_ms.saturating_sub(pending.audio_start_ms).saturating_sub(prefix);
        let confirm_ms = u64::try_from(self.config.confirm.as_millis()).unwrap_or(u64::MAX);
        if speech_ms < confirm_ms { (BargeInAction::Resume, false) } else { (BargeInAction::Interrupt, true) }
    }

    /// When the pending speech counts as a barge-in without its `speech_stopped`.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.pending.map(|p| p.since + self.config.confirm + self.config.silence_duration)
    }

    /// The timer of [`poll_timeout`](Self::poll_timeout).
    pub fn on_timeout(&mut self, now: Instant) -> BargeInAction {
        match self.poll_timeout() {
            Some(due) if now >= due => {
                self.pending = None;
                BargeInAction::Interrupt
            }
            _ => BargeInAction::None,
        }
    }

    /// The agent's queue was dropped or played out some other way: nothing left to resume.
    pub fn forget(&mut self) {
        self.pending = None;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn confirm() -> BargeIn {
        BargeIn::new(BargeInConfig {
            mode: BargeInMode::Confirm,
            confirm: Duration::from_millis(400),
            prefix_padding: Duration::from_millis(300),
            silence_duration: Duration::from_millis(500),
        })
    }

    #[test]
    fn immediate_mode_interrupts_at_once() {
        let mut b = BargeIn::new(BargeInConfig::default());
        assert_eq!(b.on_speech_started(Instant::now(), 1000, true), BargeInAction::Interrupt);
        assert_eq!(b.poll_timeout(), None);
        assert_eq!(b.on_speech_stopped(3000), (BargeInAction::None, true));
    }

    #[test]
    fn a_cough_resumes_and_is_not_a_turn() {
        let t0 = Instant::now();
        let mut b = confirm();
        assert_eq!(b.on_speech_started(t0, 10_000, true), BargeInAction::Pause);
        assert!(b.caller_speaking());
        // 300 ms prefix + 250 ms of cough.
        assert_eq!(b.on_speech_stopped(10_550), (BargeInAction::Resume, false));
        assert!(!b.is_pending());
    }

    #[test]
    fn speech_of_the_confirm_time_interrupts_on_speech_stopped() {
        let t0 = Instant::now();
        let mut b = confirm();
        b.on_speech_started(t0, 10_000, true);
        assert_eq!(b.on_speech_stopped(10_700), (BargeInAction::Interrupt, true), "exactly 400 ms of speech");
    }

    #[test]
    fn long_speech_interrupts_on_the_timer_before_speech_stopped() {
        let t0 = Instant::now();
        let mut b = confirm();
        b.on_speech_started(t0, 10_000, true);
        let due = b.poll_timeout().unwrap();
        assert_eq!(due, t0 + Duration::from_millis(900));
        assert_eq!(b.on_timeout(due - Duration::from_millis(1)), BargeInAction::None);
        assert_eq!(b.on_timeout(due), BargeInAction::Interrupt);
        assert_eq!(b.poll_timeout(), None);
        assert_eq!(b.on_speech_stopped(13_000), (BargeInAction::None, true), "a turn: answer it");
    }

    #[test]
    fn speech_while_the_agent_is_silent_is_a_plain_turn() {
        let mut b = confirm();
        assert_eq!(b.on_speech_started(Instant::now(), 0, false), BargeInAction::None);
        assert_eq!(b.on_speech_stopped(200), (BargeInAction::None, true));
    }
}
