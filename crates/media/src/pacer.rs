//! Outbound RTP pacer (sans-IO): exactly one frame per ptime on a fixed schedule, whatever the
//! burst pattern of the audio handed to it.
//!
//! The model's audio arrives in bursts (seconds of audio in a few hundred milliseconds) and in
//! gaps. Sending it as it comes gives choppy playout at the far end; the pacer queues it and
//! emits it on a clock, filling gaps with silence so the far end's jitter buffer never starves.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;

/// How many whole slots `poll` may be behind and still catch up by sending the backlog
/// back-to-back. Beyond this the process stalled and the missed slots are skipped.
pub const MAX_CATCH_UP_FRAMES: u64 = 3;

/// Static parameters of the outbound stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacerConfig {
    /// RTP payload type of the audio frames (the negotiated codec's).
    pub payload_type: u8,
    /// Our SSRC.
    pub ssrc: u32,
    /// RTP clock rate of the codec, in Hz.
    pub clock_rate: u32,
    /// Packetization time. Must be non-zero (a zero value is treated as 1 ms).
    pub ptime: Duration,
    /// One encoded frame of silence, sent when no audio is queued.
    pub silence: Vec<u8>,
}

/// A frame due for sending now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacedFrame<T> {
    /// The RTP header to send with the payload.
    pub header: RtpHeader,
    /// The encoded payload.
    pub payload: Vec<u8>,
    /// The origin tag given to [`Pacer::enqueue`]; `None` for silence.
    pub tag: Option<T>,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacerStats {
    /// Frames carrying queued audio.
    pub audio_frames: u64,
    /// Frames of silence filling gaps.
    pub silence_frames: u64,
    /// Schedule slots skipped after stalls.
    pub skipped_slots: u64,
    /// Frames dropped by [`Pacer::flush`].
    pub flushed_frames: u64,
}

/// Paces encoded audio frames onto a fixed `start + n * ptime` schedule.
///
/// `T` tags each frame with its origin (the bridge uses the Realtime item) so the caller knows
/// how much of each item was actually sent when it is interrupted.
#[derive(Debug)]
pub struct Pacer<T> {
    config: PacerConfig,
    ptime: Duration,
    start: Instant,
    /// Index of the next slot to send.
    slot: u64,
    sequence: u16,
    timestamp: u32,
    timestamp_step: u32,
    queue: VecDeque<(T, Vec<u8>)>,
    /// True while the previous frame sent was audio (no marker on the next audio frame).
    in_talkspurt: bool,
    stats: PacerStats,
    /// While set, every slot is silence and the queue is kept (confirm-mode barge-in).
    paused: bool,
}

impl<T> Pacer<T> {
    /// A pacer whose first slot is due at `start`.
    pub fn new(config: PacerConfig, start: Instant, initial_sequence: u16, initial_timestamp: u32) -> Pacer<T> {
        let ptime = config.ptime.max(Duration::from_millis(1));
        let timestamp_step = (u128::from(config.clock_rate) * ptime.as_micros() / 1_000_000) as u32;
        Pacer {
            config,
            ptime,
            start,
            slot: 0,
            sequence: initial_sequence,
            timestamp: initial_timestamp,
            timestamp_step,
            queue: VecDeque::new(),
            in_talkspurt: false,
            stats: PacerStats::default(),
            paused: false,
        }
    }

    /// Queues one ptime of encoded audio.
    pub fn enqueue(&mut self, tag: T, frame: Vec<u8>) {
        self.queue.push_back((tag, frame));
    }

    /// Returns the frame for the current slot if it is due. Call in a loop until `None`, then
    /// sleep until [`next_deadline`](Self::next_deadline).
    pub fn poll(&mut self, now: Instant) -> Option<PacedFrame<T>> {
        let due = self.slot_deadline(self.slot);
        if now < due {
            return None;
        }
        let slots_behind = u64::try_from((now - due).as_nanos() / self.ptime.as_nanos().max(1)).unwrap_or(u64::MAX);
        let mut resumed_after_stall = false;
        if slots_behind > MAX_CATCH_UP_FRAMES {
            // Do not burst the backlog: skip the missed slots so the far end sees a timestamp
            // jump (a gap in time) with a continuous sequence, not a flood of packets.
            self.slot = self.slot.saturating_add(slots_behind);
            self.timestamp = self.timestamp.wrapping_add((slots_behind as u32).wrapping_mul(self.timestamp_step));
            self.stats.skipped_slots += slots_behind;
            resumed_after_stall = true;
        }
        let next = if self.paused { None } else { self.queue.pop_front() };
        let (tag, payload, marker) = match next {
            Some((tag, frame)) => {
                // RFC 3551 §4.1: the marker bit flags the first packet of a talkspurt, i.e. the
                // first audio after silence (or after a stall, where the timestamp jumps).
                let marker = !self.in_talkspurt || resumed_after_stall;
                self.in_talkspurt = true;
                self.stats.audio_frames += 1;
                (Some(tag), frame, marker)
            }
            None => {
                self.in_talkspurt = false;
                self.stats.silence_frames += 1;
                (None, self.config.silence.clone(), false)
            }
        };
        let header = RtpHeader {
            payload_type: self.config.payload_type,
            marker,
            sequence: self.sequence,
            timestamp: self.timestamp,
            ssrc: self.config.ssrc,
        };
        self.slot = self.slot.saturating_add(1);
        self.sequence = self.sequence.wrapping_add(1);
        self.timestamp = self.timestamp.wrapping_add(self.timestamp_step);
        Some(PacedFrame { header, payload, tag })
    }

    /// The RTP timestamp of the stream at `now` (for an RTCP SR, RFC 3550 §6.4.1): the next
    /// slot's timestamp, less the time still to go until that slot.
    pub fn timestamp_at(&self, now: Instant) -> u32 {
        let ahead = self.next_deadline().saturating_duration_since(now);
        let ahead_units = (ahead.as_micros() * u128::from(self.config.clock_rate) / 1_000_000) as u32;
        self.timestamp.wrapping_sub(ahead_units)
    }

    /// When the next frame is due.
    pub fn next_deadline(&self) -> Instant {
        self.slot_deadline(self.slot)
    }

    /// Barge-in: drops every queued frame at once. Returns how many were dropped. The next
    /// audio frame after a flush starts a new talkspurt (marker set).
    pub fn flush(&mut self) -> usize {
        let dropped = self.queue.len();
        self.queue.clear();
        self.in_talkspurt = false;
        self.stats.flushed_frames += dropped as u64;
        dropped
    }

    /// Pauses (silence in every slot, the queue kept, the clock running) or resumes; the first
    /// audio frame after a pause starts a new talkspurt (marker set).
    pub fn set_paused(&mut self, paused: bool) {
        self.paused = paused;
    }

    /// Whether the pacer is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Frames waiting to be sent.
    pub fn queued_frames(&self) -> usize {
        self.queue.len()
    }

    /// Audio waiting to be sent, as playout time.
    pub fn queued_duration(&self) -> Duration {
        self.ptime.saturating_mul(u32::try_from(self.queue.len()).unwrap_or(u32::MAX))
    }

    /// Counters since creation.
    pub fn stats(&self) -> PacerStats {
        self.stats
    }

    /// The configuration in use.
    pub fn config(&self) -> &PacerConfig {
        &self.config
    }

    /// `start + slot * ptime`, computed from the start each time so no rounding accumulates.
    fn slot_deadline(&self, slot: u64) -> Instant {
        let offset_nanos = self.ptime.as_nanos().saturating_mul(u128::from(slot));
        let offset = Duration::from_nanos(u64::try_from(offset_nanos).unwrap_or(u64::MAX));
        // Unreachable in practice (centuries of slots); fall back to "due now" over a panic.
        self.start.checked_add(offset).unwrap_or(self.start)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PTIME: Duration = Duration::from_millis(20);

    fn config() -> PacerConfig {
        PacerConfig { payload_type: 0, ssrc: 0xABCD, clock_rate: 8000, ptime: PTIME, silence: vec![0xFF; 160] }
    }

    fn audio() -> Vec<u8> {
        vec![0x11; 160]
    }

    fn drain<T>(pacer: &mut Pacer<T>, now: Instant) -> Vec<PacedFrame<T>> {
        std::iter::from_fn(|| pacer.poll(now)).collect()
    }

    #[test]
    fn timestamps_advance_by_the_rtp_clock_not_the_sample_rate() {
        use crate::codec::{Codec, CodecCoding};
        // RFC 3551 §4.5.2: G.722 at 16 kHz counts 8 kHz; RFC 7587 §4.1: Opus counts 48 kHz.
        for (codec, step) in [(Codec::G722, 160u32), (Codec::Opus, 960), (Codec::Pcmu, 160)] {
            let start = Instant::now();
            let config = PacerConfig {
                payload_type: 9,
                ssrc: 1,
                clock_rate: codec.clock_rate(),
                ptime: PTIME,
                silence: codec.silence_frame(20),
            };
            let mut pacer: Pacer<u8> = Pacer::new(config, start, 0, u32::MAX - 500);
            pacer.enqueue(1, vec![1; 10]);
            let frames = drain(&mut pacer, start + PTIME * 3);
            assert_eq!(frames.len(), 4, "{codec:?}");
            for (n, frame) in frames.iter().enumerate() {
                assert_eq!(frame.header.timestamp, (u32::MAX - 500).wrapping_add(n as u32 * step), "{codec:?}");
            }
            assert_eq!(frames[1].payload, codec.silence_frame(20), "{codec:?}");
        }
    }

    #[test]
    fn ten_minute_bursty_call_is_perfectly_paced() {
        let start = Instant::now();
        let mut pacer: Pacer<u32> = Pacer::new(config(), start, 65000, u32::MAX - 1000);
        let call = Duration::from_secs(600);
        let mut frames = Vec::new();
        let mut next_burst = Duration::ZERO;
        let mut burst_index = 0u32;
        let mut elapsed = Duration::ZERO;
        // Irregular wake-ups (3..=17 ms) like a busy event loop; never a stall.
        let mut step_ms = 3u64;
        while elapsed < call {
            if elapsed >= next_burst {
                // 2.5 s of audio arrives in one go every 3 s.
                for _ in 0..125 {
                    pacer.enqueue(burst_index, audio());
                }
                burst_index += 1;
                next_burst += Duration::from_secs(3);
            }
            for frame in drain(&mut pacer, start + elapsed) {
                frames.push((elapsed, frame));
            }
            step_ms = (step_ms * 7 + 5) % 15 + 3;
            elapsed += Duration::from_millis(step_ms);
        }
        assert_eq!(frames.len(), 30_000);
        for (index, (sent_at, frame)) in frames.iter().enumerate() {
            let n = index as u32;
            assert_eq!(frame.header.sequence, 65000u16.wrapping_add(n as u16));
            assert_eq!(frame.header.timestamp, (u32::MAX - 1000).wrapping_add(n * 160));
            // Sent no earlier than its slot, and within one wake-up of it.
            let slot = PTIME * n;
            assert!(*sent_at >= slot && *sent_at < slot + Duration::from_millis(18));
        }
        let audio_frames = frames.iter().filter(|(_, f)| f.tag.is_some()).count();
        assert_eq!(audio_frames, 200 * 125);
        let markers = frames.iter().filter(|(_, f)| f.header.marker).count();
        assert_eq!(markers, 200);
        assert_eq!(pacer.stats().skipped_slots, 0);
        assert_eq!(pacer.queued_frames(), 0);
    }

    #[test]
    fn silence_fills_gaps_with_continuous_numbering() {
        let start = Instant::now();
        let mut pacer: Pacer<()> = Pacer::new(config(), start, 1, 0);
        assert_eq!(pacer.next_deadline(), start);
        let first = pacer.poll(start).unwrap();
        assert!(first.tag.is_none());
        assert_eq!(first.payload, vec![0xFF; 160]);
        assert!(!first.header.marker);
        assert_eq!(pacer.poll(start + Duration::from_millis(19)), None);
        assert_eq!(pacer.next_deadline(), start + PTIME);
        let second = pacer.poll(start + PTIME).unwrap();
        assert_eq!((second.header.sequence, second.header.timestamp), (2, 160));
    }

    #[test]
    fn marker_on_first_audio_after_silence_only() {
        let start = Instant::now();
        let mut pacer: Pacer<&str> = Pacer::new(config(), start, 0, 0);
        let at = |slot: u32| start + PTIME * slot;
        assert!(pacer.poll(at(0)).unwrap().tag.is_none());
        pacer.enqueue("a", audio());
        pacer.enqueue("a", audio());
        let f1 = pacer.poll(at(1)).unwrap();
        let f2 = pacer.poll(at(2)).unwrap();
        assert_eq!((f1.tag, f1.header.marker), (Some("a"), true));
        assert_eq!((f2.tag, f2.header.marker), (Some("a"), false));
        // Back-to-back items without silence in between: still one talkspurt.
        pacer.enqueue("b", audio());
        assert!(!pacer.poll(at(3)).unwrap().header.marker);
        assert!(pacer.poll(at(4)).unwrap().tag.is_none());
        pacer.enqueue("c", audio());
        let f5 = pacer.poll(at(5)).unwrap();
        assert_eq!((f5.tag, f5.header.marker), (Some("c"), true));
        assert!(pacer.poll(at(6)).unwrap().tag.is_none());
    }

    #[test]
    fn flush_drops_everything_and_next_frame_is_silence() {
        let start = Instant::now();
        let mut pacer: Pacer<u8> = Pacer::new(config(), start, 0, 0);
        for _ in 0..50 {
            pacer.enqueue(1, audio());
        }
        assert_eq!(pacer.queued_duration(), Duration::from_secs(1));
        assert_eq!(pacer.poll(start).unwrap().tag, Some(1));
        assert_eq!(pacer.flush(), 49);
        assert_eq!(pacer.queued_frames(), 0);
        let next = pacer.poll(start + PTIME).unwrap();
        assert!(next.tag.is_none());
        assert_eq!(next.payload, vec![0xFF; 160]);
        assert_eq!((next.header.sequence, next.header.timestamp), (1, 160));
        // Audio after a flush starts a new talkspurt.
        pacer.enqueue(2, audio());
        assert!(pacer.poll(start + PTIME * 2).unwrap().header.marker);
        assert_eq!(pacer.stats().flushed_frames, 49);
    }

    #[test]
    fn flush_then_immediate_audio_is_marked() {
        let start = Instant::now();
        let mut pacer: Pacer<u8> = Pacer::new(config(), start, 0, 0);
        pacer.enqueue(1, audio());
        pacer.enqueue(1, audio());
        assert!(pacer.poll(start).unwrap().header.marker);
        pacer.flush();
        pacer.enqueue(2, audio());
        let frame = pacer.poll(start + PTIME).unwrap();
        assert_eq!((frame.tag, frame.header.marker), (Some(2), true));
    }

    #[test]
    fn slightly_late_poll_catches_up_without_skipping() {
        let start = Instant::now();
        let mut pacer: Pacer<()> = Pacer::new(config(), start, 0, 0);
        pacer.poll(start);
        // 50 ms late for slot 1: slots 1, 2 and 3 are due.
        let frames = drain(&mut pacer, start + PTIME + Duration::from_millis(50));
        let timestamps: Vec<u32> = frames.iter().map(|f| f.header.timestamp).collect();
        assert_eq!(timestamps, [160, 320, 480]);
        assert_eq!(pacer.stats().skipped_slots, 0);
    }

    #[test]
    fn stall_skips_missed_slots_instead_of_bursting() {
        let start = Instant::now();
        let mut pacer: Pacer<u8> = Pacer::new(config(), start, 100, 1000);
        for _ in 0..100 {
            pacer.enqueue(7, audio());
        }
        let first = pacer.poll(start).unwrap();
        assert!(first.header.marker);
        // The process stalls for one second.
        let resume = start + PTIME + Duration::from_secs(1);
        let frames = drain(&mut pacer, resume);
        assert_eq!(frames.len(), 1, "no burst after a stall");
        let resumed = &frames[0];
        assert_eq!(resumed.header.sequence, 101, "sequence stays continuous");
        assert_eq!(resumed.header.timestamp, 1000 + 51 * 160, "timestamp covers the gap");
        assert!(resumed.header.marker, "timestamp jump starts a new talkspurt");
        assert_eq!(pacer.stats().skipped_slots, 50);
        // Back on the schedule, one frame per ptime, no audio lost to the stall.
        assert_eq!(pacer.next_deadline(), resume + PTIME);
        let next = pacer.poll(resume + PTIME).unwrap();
        assert_eq!((next.header.sequence, next.header.timestamp), (102, 1000 + 52 * 160));
        assert!(!next.header.marker);
        assert_eq!(pacer.queued_frames(), 97);
    }

    #[test]
    fn a_paused_pacer_sends_silence_keeps_its_queue_and_resumes_with_a_marker() {
        let start = Instant::now();
        let mut pacer: Pacer<u8> = Pacer::new(config(), start, 10, 1000);
        for tag in 1..=3 {
            pacer.enqueue(tag, audio());
        }
        let first = drain(&mut pacer, start);
        assert_eq!(first[0].tag, Some(1));
        pacer.set_paused(true);
        let paused = drain(&mut pacer, start + PTIME * 2);
        assert_eq!(paused.len(), 2);
        assert!(paused.iter().all(|f| f.tag.is_none() && f.payload == vec![0xFF; 160]));
        assert_eq!(pacer.queued_frames(), 2, "the queue is kept while paused");
        pacer.set_paused(false);
        let resumed = drain(&mut pacer, start + PTIME * 3);
        assert_eq!(resumed[0].tag, Some(2));
        assert!(resumed[0].header.marker, "a new talkspurt after the pause");
        // Sequence and timestamp ran on through the pause.
        assert_eq!(resumed[0].header.sequence, 13);
        assert_eq!(resumed[0].header.timestamp, 1000 + 3 * 160);
    }
}
