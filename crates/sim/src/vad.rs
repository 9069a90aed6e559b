//! Energy voice activity detection on 20 ms frames, standing in for server VAD (reference §2.2).
//!
//! `threshold` (0..1) maps onto an RMS level of `-60 + 50 * threshold` dBFS (0.5 -> -35 dBFS).
//! Speech starts on the first loud frame (reported `prefix_padding_ms` earlier) and stops once
//! `silence_duration_ms` of quiet frames followed the last loud one.

use crate::audio::rms_dbfs;

/// Frame length of the detector.
pub const FRAME_MS: u64 = 20;

/// VAD parameters taken from `turn_detection`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VadParams {
    pub threshold: f64,
    pub prefix_padding_ms: u64,
    pub silence_duration_ms: u64,
}

impl VadParams {
    /// Level (dBFS) above which a frame counts as speech.
    pub fn level_dbfs(&self) -> f64 {
        -60.0 + 50.0 * self.threshold.clamp(0.0, 1.0)
    }
}

/// A turn boundary found by the detector, in input-timeline milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    SpeechStarted { audio_start_ms: u64 },
    SpeechStopped { audio_end_ms: u64 },
}

/// Detector state over one input timeline.
#[derive(Debug)]
pub struct Vad {
    params: VadParams,
    rate: u32,
    pending: Vec<i16>,
    /// Frames consumed so far; frame `n` covers `[n*20, (n+1)*20)` ms of the timeline.
    frames: u64,
    /// Timeline offset (ms) of frame 0, for detectors created mid-session.
    origin_ms: u64,
    /// `Some(end of the last loud frame)` while in speech.
    last_speech_end_ms: Option<u64>,
}

impl Vad {
    /// A detector for audio at `rate` Hz whose first sample sits at `origin_ms` on the timeline.
    pub fn new(params: VadParams, rate: u32, origin_ms: u64) -> Self {
        Self { params, rate, pending: Vec::new(), frames: 0, origin_ms, last_speech_end_ms: None }
    }

    /// Whether speech is in progress.
    #[cfg(test)]
    pub fn in_speech(&self) -> bool {
        self.last_speech_end_ms.is_some()
    }

    /// Forgets any speech in progress (after a manual commit or clear).
    pub fn reset_speech(&mut self) {
        self.last_speech_end_ms = None;
    }

    /// Feeds samples; returns the turn boundaries they complete, in order.
    pub fn push(&mut self, samples: &[i16]) -> Vec<VadEvent> {
        let frame_len = (u64::from(self.rate) * FRAME_MS / 1000) as usize;
        let mut events = Vec::new();
        if frame_len == 0 {
            return events;
        }
        self.pending.extend_from_slice(samples);
        let mut consumed = 0;
        while self.pending.len() - consumed >= frame_len {
            let frame = &self.pending[consumed..consumed + frame_len];
            consumed += frame_len;
            let start_ms = self.origin_ms + self.frames * FRAME_MS;
            let end_ms = start_ms + FRAME_MS;
            self.frames += 1;
            let loud = rms_dbfs(frame) > self.params.level_dbfs();
            match (self.last_speech_end_ms, loud) {
                (None, true) => {
                    let audio_start_ms = start_ms.saturating_sub(self.params.prefix_padding_ms);
                    self.last_speech_end_ms = Some(end_ms);
                    events.push(VadEvent::SpeechStarted { audio_start_ms });
                }
                (Some(_), true) => self.last_speech_end_ms = Some(end_ms),
                (Some(last), false) => {
                    if end_ms - last >= self.params.silence_duration_ms.max(FRAME_MS) {
                        self.last_speech_end_ms = None;
                        events.push(VadEvent::SpeechStopped { audio_end_ms: last });
                    }
                }
                (None, false) => {}
            }
        }
        self.pending.drain(..consumed);
        events
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use crate::audio::sine;

    fn params() -> VadParams {
        VadParams { threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500 }
    }

    #[test]
    fn silence_tone_silence_gives_one_turn() {
        let mut vad = Vad::new(params(), 8000, 0);
        let mut events = vad.push(&vec![0; 8000]);
        assert!(events.is_empty());
        events.extend(vad.push(&sine(440.0, 8000, 1000, 0.5)));
        assert_eq!(events, vec![VadEvent::SpeechStarted { audio_start_ms: 700 }]);
        assert!(vad.in_speech());
        // 20 ms pushes, as a gateway would append.
        let mut stop = Vec::new();
        for _ in 0..50 {
            stop.extend(vad.push(&[0; 160]));
        }
        assert_eq!(stop, vec![VadEvent::SpeechStopped { audio_end_ms: 2000 }]);
    }

    #[test]
    fn short_pauses_do_not_end_the_turn() {
        let mut vad = Vad::new(params(), 24000, 0);
        let mut events = vad.push(&sine(300.0, 24000, 400, 0.5));
        events.extend(vad.push(&vec![0; 24000 * 3 / 10]));
        events.extend(vad.push(&sine(300.0, 24000, 400, 0.5)));
        assert_eq!(events, vec![VadEvent::SpeechStarted { audio_start_ms: 0 }]);
    }

    #[test]
    fn threshold_maps_onto_level() {
        let quiet = sine(440.0, 8000, 200, 0.005); // about -49 dBFS
        let mut sensitive = Vad::new(VadParams { threshold: 0.1, ..params() }, 8000, 0);
        assert_eq!(sensitive.push(&quiet).len(), 1);
        let mut strict = Vad::new(params(), 8000, 0);
        assert!(strict.push(&quiet).is_empty());
    }

    #[test]
    fn origin_offsets_the_timeline() {
        let mut vad = Vad::new(params(), 8000, 10_000);
        let events = vad.push(&sine(440.0, 8000, 40, 0.5));
        assert_eq!(events, vec![VadEvent::SpeechStarted { audio_start_ms: 9_700 }]);
    }
}
