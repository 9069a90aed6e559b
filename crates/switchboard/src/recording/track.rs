//! Two mono streams laid on one call clock as a stereo track (sans-IO: the writer thread feeds
//! it and drains whole frames).
//!
//! Each chunk of a channel carries the call-clock time it was taken (`at`). A channel's chunks
//! follow each other sample for sample while their stamps agree with that (within
//! [`RESYNC_AHEAD`]): the scheduling jitter of the stamps must not chop the audio. A chunk stamped
//! later than that leaves silence up to its stamp (nobody spoke, packets were lost); one stamped
//! more than [`RESYNC_BEHIND`] earlier than where its channel has got to puts the channel back on
//! the clock. Frames are released once both channels have passed them, or when one channel is
//! more than [`MAX_SKEW`] ahead of the other (a channel with nothing to say must not hold the
//! other back forever); audio arriving for frames already released is dropped and counted.

use std::time::Duration;

use switchboard_media::resample::Resampler;

/// Left: what the caller said; right: what the caller heard (the agent, or a bridged human).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Channel {
    Left = 0,
    Right = 1,
}

/// A chunk stamped this much later than where its channel has got to starts after silence.
pub const RESYNC_AHEAD: Duration = Duration::from_millis(60);
/// A chunk stamped this much earlier than where its channel has got to goes back to its stamp.
pub const RESYNC_BEHIND: Duration = Duration::from_millis(1000);
/// Frames are held for the slower channel at most this long.
pub const MAX_SKEW: Duration = Duration::from_millis(1000);

pub struct StereoTrack {
    rate: u32,
    /// Absolute frame index of the first frame in `pending`.
    base: u64,
    /// Interleaved frames from `base` on, not yet released.
    pending: Vec<i16>,
    /// Where each channel's next sample goes (absolute frame index); `None` before its first.
    cursor: [Option<u64>; 2],
    /// Samples that arrived for frames already released.
    pub late_samples: u64,
}

impl StereoTrack {
    pub fn new(rate: u32) -> StereoTrack {
        StereoTrack { rate, base: 0, pending: Vec::new(), cursor: [None, None], late_samples: 0 }
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    fn frames(&self, duration: Duration) -> u64 {
        // u128 arithmetic: no overflow for any call length.
        u64::try_from(duration.as_nanos() * u128::from(self.rate) / 1_000_000_000).unwrap_or(u64::MAX)
    }

    /// Lays `samples` (at the track's rate) of `channel`, taken at `at` on the call clock.
    pub fn push(&mut self, channel: Channel, at: Duration, samples: &[i16]) {
        let stamp = self.frames(at);
        let index = channel as usize;
        let start = match self.cursor.get(index).copied().flatten() {
            Some(cursor) if stamp > cursor + self.frames(RESYNC_AHEAD) => stamp,
            Some(cursor) if stamp + self.frames(RESYNC_BEHIND) < cursor => stamp,
            Some(cursor) => cursor,
            None => stamp,
        };
        let end = start + samples.len() as u64;
        if let Some(slot) = self.cursor.get_mut(index) {
            *slot = Some(end);
        }
        // Samples for frames already released are too late.
        let skip = self.base.saturating_sub(start);
        self.late_samples += skip.min(samples.len() as u64);
        let first = start.max(self.base);
        if end <= first {
            return;
        }
        let needed = usize::try_from((end - self.base) * 2).unwrap_or(usize::MAX);
        if self.pending.len() < needed {
            self.pending.resize(needed, 0); // silence where nobody spoke
        }
        let offset = usize::try_from((first - self.base) * 2).unwrap_or(usize::MAX);
        let kept = samples.get(usize::try_from(skip).unwrap_or(usize::MAX)..).unwrap_or_default();
        let frames = self.pending.get_mut(offset..).unwrap_or_default().chunks_exact_mut(2);
        for (frame, &sample) in frames.zip(kept) {
            if let Some(slot) = frame.get_mut(index) {
                *slot = sample;
            }
        }
    }

    /// Up to where frames may be released now (absolute frame index).
    fn ready_until(&self) -> u64 {
        let [left, right] = self.cursor.map(|c| c.unwrap_or(0));
        let lagging = left.min(right);
        let leading = left.max(right);
        lagging.max(leading.saturating_sub(self.frames(MAX_SKEW))).max(self.base)
    }

    /// Frames ready to be written (see the module doc), interleaved, appended to `out`; returns
    /// how many.
    pub fn drain_ready(&mut self, out: &mut Vec<i16>) -> u64 {
        let until = self.ready_until();
        self.drain_until(until, out)
    }

    /// Every frame laid so far (at the end of the call).
    pub fn drain_all(&mut self, out: &mut Vec<i16>) -> u64 {
        let until = self.base + (self.pending.len() / 2) as u64;
        self.drain_until(until, out)
    }

    fn drain_until(&mut self, until: u64, out: &mut Vec<i16>) -> u64 {
        let laid = self.base + (self.pending.len() / 2) as u64;
        let until = until.min(laid);
        let frames = until.saturating_sub(self.base);
        let samples = usize::try_from(frames * 2).unwrap_or(usize::MAX).min(self.pending.len());
        out.extend(self.pending.drain(..samples));
        self.base = until.max(self.base);
        frames
    }

    /// Frames waiting to be released.
    pub fn pending_frames(&self) -> u64 {
        (self.pending.len() / 2) as u64
    }
}

/// Tap audio to the recording's rate: nothing to do for G.711 and G.722 calls (their taps come at
/// the rate they are recorded at); Opus taps (24 kHz) go through the media crate's polyphase
/// resampler to 16 kHz.
pub enum TapResampler {
    Filter(Box<Resampler>),
    Identity,
}

impl TapResampler {
    pub fn new(from: u32, to: u32) -> TapResampler {
        if from == to {
            return TapResampler::Identity;
        }
        match Resampler::new(from, to) {
            Ok(resampler) => TapResampler::Filter(Box::new(resampler)),
            // The rates are ours (24 kHz to 16 kHz): not reachable; keep the audio anyway.
            Err(_) => TapResampler::Identity,
        }
    }

    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        match self {
            TapResampler::Identity => out.extend_from_slice(input),
            TapResampler::Filter(resampler) => resampler.process(input, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RATE: u32 = 8000;
    const FRAME: usize = 160; // 20 ms at 8 kHz

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn drained(track: &mut StereoTrack) -> Vec<i16> {
        let mut out = Vec::new();
        track.drain_all(&mut out);
        out
    }

    fn channel(frames: &[i16], channel: Channel) -> Vec<i16> {
        frames.iter().skip(channel as usize).step_by(2).copied().collect()
    }

    #[test]
    fn a_chunk_at_two_seconds_lands_at_sample_two_times_rate() {
        let mut track = StereoTrack::new(RATE);
        track.push(Channel::Left, ms(2000), &[7; FRAME]);
        let out = drained(&mut track);
        let left = channel(&out, Channel::Left);
        assert_eq!(left.len(), 2 * 8000 + FRAME);
        assert!(left[..16000].iter().all(|&s| s == 0), "silence before the first chunk");
        assert!(left[16000..].iter().all(|&s| s == 7));
        assert!(channel(&out, Channel::Right).iter().all(|&s| s == 0), "nobody on the right");
    }

    #[test]
    fn jittery_stamps_keep_a_channel_contiguous_and_gaps_become_silence() {
        let mut track = StereoTrack::new(RATE);
        // 20 ms chunks whose stamps wobble by a few ms: laid end to end.
        for (i, wobble) in [0i64, 3, -2, 5, 1].iter().enumerate() {
            let at = (i as i64 * 20 + 100 + wobble) as u64;
            track.push(Channel::Left, ms(at), &[i as i16 + 1; FRAME]);
        }
        // Then nothing for 400 ms (lost packets, or nobody talking), then one more.
        track.push(Channel::Left, ms(100 + 100 + 400), &[9; FRAME]);
        let left = channel(&drained(&mut track), Channel::Left);
        let start = 800; // 100 ms
        for i in 0..5 {
            let chunk = &left[start + i * FRAME..start + (i + 1) * FRAME];
            assert!(chunk.iter().all(|&s| s == i as i16 + 1), "chunk {i} not contiguous");
        }
        let gap = &left[start + 5 * FRAME..4800];
        assert!(gap.iter().all(|&s| s == 0), "the gap is silence");
        assert!(left[4800..4800 + FRAME].iter().all(|&s| s == 9), "the late chunk sits at its stamp");
    }

    #[test]
    fn both_channels_share_the_clock() {
        let mut track = StereoTrack::new(RATE);
        for i in 0..50u64 {
            track.push(Channel::Right, ms(i * 20), &[2; FRAME]);
        }
        for i in 25..50u64 {
            track.push(Channel::Left, ms(i * 20), &[1; FRAME]);
        }
        let out = drained(&mut track);
        assert_eq!(out.len(), 50 * FRAME * 2);
        let (left, right) = (channel(&out, Channel::Left), channel(&out, Channel::Right));
        assert!(right.iter().all(|&s| s == 2));
        assert!(left[..25 * FRAME].iter().all(|&s| s == 0));
        assert!(left[25 * FRAME..].iter().all(|&s| s == 1), "the caller's audio at 500 ms, on the same clock");
    }

    #[test]
    fn frames_are_released_when_both_channels_passed_them_or_one_is_too_far_ahead() {
        let mut track = StereoTrack::new(RATE);
        let mut out = Vec::new();
        track.push(Channel::Right, ms(0), &[1; FRAME * 10]); // 200 ms
        assert_eq!(track.drain_ready(&mut out), 0, "the left channel may still come");
        track.push(Channel::Left, ms(0), &[1; FRAME * 5]); // 100 ms
        assert_eq!(track.drain_ready(&mut out), FRAME as u64 * 5);
        // The right runs on alone for 1.5 s: everything older than MAX_SKEW is released.
        track.push(Channel::Right, ms(200), &[1; 8000 * 13 / 10]);
        assert_eq!(track.drain_ready(&mut out), 8000 * 3 / 2 - 8000 - FRAME as u64 * 5);
        // Late left audio for frames already released is dropped and counted.
        track.push(Channel::Left, ms(100), &[3; FRAME]);
        assert_eq!(track.late_samples, FRAME as u64);
    }

    #[test]
    fn taps_at_the_recording_rate_pass_through_and_opus_taps_are_resampled() {
        let input: Vec<i16> = (0..100).collect();
        let mut out = Vec::new();
        TapResampler::new(8000, 8000).process(&input, &mut out);
        assert_eq!(out, input);
        let mut resampler = TapResampler::new(24_000, 16_000);
        let mut out = Vec::new();
        resampler.process(&[0; 480], &mut out);
        assert!((300..=330).contains(&out.len()), "20 ms at 24 kHz is about 20 ms at 16 kHz: {}", out.len());
    }
}
