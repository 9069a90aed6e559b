//! Inbound adaptive jitter buffer (sans-IO) with the receiver's RTP statistics.
//!
//! Packets that arrive in order are released at once: zero added delay on a clean network. When
//! a packet is missing, the packets after the gap are held until the *wait* has passed since
//! the first of them arrived, giving the missing one a chance to arrive late; then the gap is
//! declared lost (the caller conceals it, see `framing::InboundAudio::convert_with_loss`). A
//! copy arriving after its slot was concealed is *late* and dropped; a second copy of a packet
//! held or released is a *duplicate* and dropped.
//!
//! The wait adapts to the network: [`WAIT_JITTER_FACTOR`] times the RFC 3550 §6.4.1 / A.8
//! interarrival jitter, bounded by [`JitterConfig::min_wait`] below and
//! [`JitterConfig::max_wait`] above. Reordering on a network with jitter J displaces a packet by
//! about 2J at most, so a few J covers almost every late packet without holding in-order audio.
//!
//! Stream changes that are not loss:
//! - a new SSRC (call on hold and back, an SBC failing over) re-syncs at once: nothing held for
//!   the old stream is waited for, no gap is counted between the two streams;
//! - a sequence jump of more than [`MAX_SEQUENCE_JUMP`] either way is a restarted stream, treated
//!   like a new SSRC;
//! - a timestamp jump with continuous sequence numbers (a new talkspurt after silence
//!   suppression, a sender's clock step) is not loss at all: loss is counted on sequence numbers
//!   (RFC 3550 A.3), and a jitter sample that large is a clock step, not jitter, and is skipped.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;

/// Maximum packets held; beyond this the oldest gap is given up on at once.
pub const JITTER_CAPACITY: usize = 64;
/// A sequence jump larger than this (either way) means the peer restarted its stream.
pub const MAX_SEQUENCE_JUMP: i64 = 1000;
/// The wait for a missing packet is this many times the measured interarrival jitter.
pub const WAIT_JITTER_FACTOR: u32 = 3;
/// A jitter sample (RFC 3550 A.8 `D`) above this is a sender's clock step, not jitter.
const MAX_JITTER_SAMPLE: Duration = Duration::from_secs(1);
/// Offset of the first extended sequence number, so extension below it never goes negative.
const EXTENDED_START: i64 = 1 << 32;
/// Width of one buffer-delay histogram bucket, in milliseconds.
const DELAY_BUCKET_MS: u64 = 2;
/// Buffer-delay histogram buckets; the last one also holds everything above.
const DELAY_BUCKETS: usize = 256;

/// Settings of one inbound stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// The RTP clock rate (timestamp units per second), for the jitter estimator.
    pub clock_rate: u32,
    /// The shortest wait for a missing packet (`media.reorder_wait_ms`).
    pub min_wait: Duration,
    /// The longest wait, whatever the jitter (`media.jitter_max_ms`).
    pub max_wait: Duration,
}

/// What happened to a pushed packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushOutcome {
    /// Buffered for delivery.
    Accepted,
    /// Already buffered or already delivered; dropped.
    Duplicate,
    /// Arrived after its slot was given up as lost; dropped.
    Late,
}

/// A packet released in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedFrame {
    /// The packet's RTP header.
    pub header: RtpHeader,
    /// The packet's payload.
    pub payload: Vec<u8>,
    /// Packets declared lost just before this one (0 when in sequence). Saturates at `u16::MAX`.
    pub lost_before: u16,
    /// When the packet arrived (the buffer added `released - arrived`).
    pub arrived: Instant,
    /// The first packet of a new stream (first packet, new SSRC or restarted sequence): codec
    /// state of the previous stream should be forgotten.
    pub stream_start: bool,
}

/// Counters since creation, over every source the call had.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets accepted into the buffer (each sequence number once).
    pub received: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped because their slot had already been declared lost.
    pub late: u64,
    /// Sequence numbers declared lost (RFC 3550 A.3, summed over sources).
    pub lost: u64,
    /// Accepted packets that arrived after a packet with a higher sequence number.
    pub reordered: u64,
    /// Times the stream re-synced (SSRC change or a large sequence jump).
    pub resets: u64,
}

/// The current source's figures for an RTCP report block (RFC 3550 §6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReceptionReport {
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256 (0 when more arrived than expected).
    pub fraction_lost: u8,
    /// Cumulative packets lost (expected - received), clamped to 24 bits signed.
    pub cumulative_lost: i32,
    /// Extended highest sequence number received (cycles << 16 | sequence).
    pub extended_highest: u32,
    /// Interarrival jitter in timestamp units.
    pub jitter: u32,
}

#[derive(Debug)]
struct Pending {
    header: RtpHeader,
    payload: Vec<u8>,
    arrived: Instant,
}

/// RFC 3550 A.1/A.3/A.8 reception state of the current source.
#[derive(Debug, Clone, Copy)]
struct Source {
    ssrc: u32,
    /// Extended sequence number of the source's first packet.
    base: i64,
    /// Unique packets received from this source.
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter in timestamp units, times 16 (A.8's fixed-point form).
    jitter_x16: u64,
    /// The previous packet's relative transit time (arrival in timestamp units - timestamp).
    last_transit: Option<i64>,
}

/// The adaptive jitter buffer of one inbound RTP stream. See the module documentation.
#[derive(Debug)]
pub struct JitterBuffer {
    config: JitterConfig,
    /// The reference for arrival times in timestamp units (A.8's arrival clock).
    epoch: Option<Instant>,
    source: Option<Source>,
    /// Extended sequence number of the next packet to release; `None` before the first packet.
    next_expected: Option<i64>,
    /// Highest extended sequence number accepted: the reference for extending new ones.
    highest: i64,
    /// Bit i set: sequence `next_expected - 1 - i` was delivered (tells duplicates from late).
    delivered_history: u64,
    /// The next released frame starts a new stream.
    starting: bool,
    pending: BTreeMap<i64, Pending>,
    /// The old stream's held packets after a re-sync, released before the new stream's.
    draining: VecDeque<ReceivedFrame>,
    stats: JitterStats,
    delay_histogram: Vec<u32>,
    max_jitter: Duration,
}

impl JitterBuffer {
    pub fn new(config: JitterConfig) -> Self {
        JitterBuffer {
            config: JitterConfig { clock_rate: config.clock_rate.max(1), ..config },
            epoch: None,
            source: None,
            next_expected: None,
            highest: 0,
            delivered_history: 0,
            starting: true,
            pending: BTreeMap::new(),
            draining: VecDeque::new(),
            stats: JitterStats::default(),
            delay_histogram: vec![0; DELAY_BUCKETS],
            max_jitter: Duration::ZERO,
        }
    }

    /// Offers a received packet.
    pub fn push(&mut self, now: Instant, header: RtpHeader, payload: &[u8]) -> PushOutcome {
        if self.source.is_some_and(|source| source.ssrc != header.ssrc) {
            self.restart(now);
        }
        let Some(next_expected) = self.next_expected else {
            let extended = EXTENDED_START + i64::from(header.sequence);
            self.next_expected = Some(extended);
            self.highest = extended;
            self.source = Some(Source {
                ssrc: header.ssrc,
                base: extended,
                received: 0,
                expected_prior: 0,
                received_prior: 0,
                jitter_x16: self.source.map_or(0, |s| s.jitter_x16),
                last_transit: None,
            });
            return self.accept(now, extended, header, payload);
        };
        let extended = self.extend(header.sequence);
        let ahead = extended - next_expected;
        if ahead.abs() > MAX_SEQUENCE_JUMP {
            // The peer restarted its sequence space: start over rather than drop everything.
            self.restart(now);
            return self.push(now, header, payload);
        }
        if ahead < 0 {
            let behind = ahead.unsigned_abs();
            let delivered = behind <= 64 && self.delivered_history & (1 << (behind - 1)) != 0;
            return if delivered {
                self.stats.duplicates += 1;
                PushOutcome::Duplicate
            } else {
                self.stats.late += 1;
                PushOutcome::Late
            };
        }
        if self.pending.contains_key(&extended) {
            self.stats.duplicates += 1;
            return PushOutcome::Duplicate;
        }
        if extended < self.highest {
            self.stats.reordered += 1;
        }
        self.highest = self.highest.max(extended);
        self.accept(now, extended, header, payload)
    }

    /// Releases the next packet if it is due: the next expected one at once, or the one after
    /// a gap once it has waited [`wait`](Self::wait) (or the buffer is full).
    pub fn pop(&mut self, now: Instant) -> Option<ReceivedFrame> {
        if let Some(frame) = self.draining.pop_front() {
            return Some(frame);
        }
        let next_expected = self.next_expected?;
        let (&extended, first) = self.pending.first_key_value()?;
        let gap = extended - next_expected;
        let full = self.pending.len() >= JITTER_CAPACITY;
        if gap > 0 && !full && now < first.arrived + self.wait() {
            return None;
        }
        let pending = self.pending.remove(&extended)?;
        Some(self.release(now, extended, gap, pending))
    }

    /// When [`pop`](Self::pop) will next return a packet, if anything is buffered. A deadline
    /// in the past means "now".
    pub fn next_deadline(&self) -> Option<Instant> {
        if let Some(frame) = self.draining.front() {
            return Some(frame.arrived);
        }
        let next_expected = self.next_expected?;
        let (&extended, first) = self.pending.first_key_value()?;
        if extended == next_expected || self.pending.len() >= JITTER_CAPACITY {
            Some(first.arrived)
        } else {
            Some(first.arrived + self.wait())
        }
    }

    /// How long packets after a gap are held for the missing one now.
    pub fn wait(&self) -> Duration {
        let adaptive = self.jitter().saturating_mul(WAIT_JITTER_FACTOR);
        adaptive.clamp(self.config.min_wait, self.config.max_wait.max(self.config.min_wait))
    }

    /// The current interarrival jitter estimate (RFC 3550 A.8).
    pub fn jitter(&self) -> Duration {
        jitter_of(self.source.map_or(0, |s| s.jitter_x16), self.config.clock_rate)
    }

    /// The highest jitter estimate seen during the call.
    pub fn max_jitter(&self) -> Duration {
        self.max_jitter
    }

    /// Counters since creation.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// The `quantile` (0..=1) of the delay the buffer added to released packets, to
    /// [`DELAY_BUCKET_MS`] (upper bound of the bucket); zero before the first release.
    pub fn delay_quantile(&self, quantile: f64) -> Duration {
        let total: u64 = self.delay_histogram.iter().map(|&n| u64::from(n)).sum();
        if total == 0 {
            return Duration::ZERO;
        }
        let rank = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (bucket, &count) in self.delay_histogram.iter().enumerate() {
            seen += u64::from(count);
            if seen >= rank {
                // Bucket 0 is exactly zero delay (in-order packets); bucket b>0 is up to b*width.
                return Duration::from_millis(bucket as u64 * DELAY_BUCKET_MS);
            }
        }
        Duration::from_millis(DELAY_BUCKETS as u64 * DELAY_BUCKET_MS)
    }

    /// The current source's report block figures, and starts a new reporting interval
    /// (RFC 3550 A.3). `None` before the first packet.
    pub fn reception_report(&mut self) -> Option<ReceptionReport> {
        let highest = self.highest;
        let source = self.source.as_mut()?;
        let expected = u64::try_from(highest - source.base + 1).unwrap_or(0);
        let expected_interval = expected.saturating_sub(source.expected_prior);
        let received_interval = source.received.saturating_sub(source.received_prior);
        source.expected_prior = expected;
        source.received_prior = source.received;
        let lost_interval = expected_interval.saturating_sub(received_interval);
        let fraction_lost = (lost_interval << 8).checked_div(expected_interval).unwrap_or(0).min(255);
        let cumulative = i64::try_from(expected).unwrap_or(i64::MAX) - i64::try_from(source.received).unwrap_or(0);
        // 24-bit signed field (RFC 3550 §6.4.1): clamp rather than wrap.
        let cumulative_lost = cumulative.clamp(-0x80_0000, 0x7F_FFFF) as i32;
        let extended_highest = (highest - EXTENDED_START) as u32;
        Some(ReceptionReport {
            ssrc: source.ssrc,
            fraction_lost: fraction_lost as u8,
            cumulative_lost,
            extended_highest,
            jitter: u32::try_from(source.jitter_x16 / 16).unwrap_or(u32::MAX),
        })
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.pending.len() + self.draining.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.draining.is_empty()
    }

    fn accept(&mut self, now: Instant, extended: i64, header: RtpHeader, payload: &[u8]) -> PushOutcome {
        self.stats.received += 1;
        self.update_jitter(now, header.timestamp);
        if let Some(source) = &mut self.source {
            source.received += 1;
        }
        self.pending.insert(extended, Pending { header, payload: payload.to_vec(), arrived: now });
        // Only reachable when the caller does not pop: give up on the oldest packet (and its
        // gap) so memory stays bounded.
        if self.pending.len() > JITTER_CAPACITY
            && let Some((oldest, pending)) = self.pending.pop_first()
            && let Some(next_expected) = self.next_expected
        {
            let gap = oldest - next_expected;
            self.release(now, oldest, gap, pending);
            // Dropped, not delivered: a copy arriving later is late, not a duplicate.
            self.delivered_history &= !1;
            self.stats.lost += 1;
        }
        PushOutcome::Accepted
    }

    /// RFC 3550 A.8: J += (|D| - J) / 16, D the difference of relative transit times, in
    /// timestamp units. Samples from a clock step are skipped (see the module documentation).
    fn update_jitter(&mut self, now: Instant, timestamp: u32) {
        let epoch = *self.epoch.get_or_insert(now);
        let clock_rate = u128::from(self.config.clock_rate);
        let arrival_units = (now.saturating_duration_since(epoch).as_micros() * clock_rate / 1_000_000) as i64;
        let Some(source) = &mut self.source else { return };
        // Transit modulo 2^32 like the timestamp itself, so a timestamp wrap is not a jump.
        let transit = arrival_units.wrapping_sub(i64::from(timestamp)) & 0xFFFF_FFFF;
        if let Some(last) = source.last_transit {
            let mut d = (transit - last).rem_euclid(1 << 32);
            if d >= 1 << 31 {
                d = (1 << 32) - d;
            }
            let max_sample = (MAX_JITTER_SAMPLE.as_micros() * clock_rate / 1_000_000) as i64;
            if d <= max_sample {
                // A.8 in its fixed-point form: J*16 += |D| - round(J*16 / 16).
                let jitter_x16 = i64::try_from(source.jitter_x16).unwrap_or(i64::MAX);
                source.jitter_x16 = u64::try_from((jitter_x16 + d - ((jitter_x16 + 8) >> 4)).max(0)).unwrap_or(0);
                let jitter = jitter_of(source.jitter_x16, self.config.clock_rate);
                self.max_jitter = self.max_jitter.max(jitter);
            }
        }
        source.last_transit = Some(transit);
    }

    fn release(&mut self, now: Instant, extended: i64, gap: i64, pending: Pending) -> ReceivedFrame {
        let gap = gap.max(0);
        self.stats.lost += gap.unsigned_abs();
        let shift = gap.unsigned_abs() + 1;
        self.delivered_history = if shift >= 64 { 0 } else { self.delivered_history << shift } | 1;
        self.next_expected = Some(extended + 1);
        let delay_ms = now.saturating_duration_since(pending.arrived).as_millis() as u64;
        let bucket = usize::try_from(delay_ms.div_ceil(DELAY_BUCKET_MS)).unwrap_or(usize::MAX).min(DELAY_BUCKETS - 1);
        if let Some(count) = self.delay_histogram.get_mut(bucket) {
            *count = count.saturating_add(1);
        }
        ReceivedFrame {
            header: pending.header,
            payload: pending.payload,
            lost_before: u16::try_from(gap).unwrap_or(u16::MAX),
            arrived: pending.arrived,
            stream_start: std::mem::take(&mut self.starting),
        }
    }

    /// RFC 3550 Appendix A.1 style extension: the 32-bit candidate closest to the highest
    /// sequence number seen so far.
    fn extend(&self, sequence: u16) -> i64 {
        let mut candidate = (self.highest & !0xFFFF) | i64::from(sequence);
        if candidate - self.highest > 0x8000 {
            candidate -= 0x1_0000;
        } else if self.highest - candidate > 0x8000 {
            candidate += 0x1_0000;
        }
        candidate
    }

    /// Re-syncs on a new stream: what is held for the old one is released at once (it was
    /// waiting for a packet of a stream that ended), and the next packet starts afresh.
    fn restart(&mut self, now: Instant) {
        if let Some(next_expected) = self.next_expected {
            let mut expected = next_expected;
            while let Some((extended, pending)) = self.pending.pop_first() {
                let frame = self.release(now, extended, extended - expected, pending);
                expected = extended + 1;
                self.draining.push_back(frame);
            }
        }
        self.next_expected = None;
        self.delivered_history = 0;
        self.starting = true;
        if let Some(source) = &mut self.source {
            source.last_transit = None;
        }
        self.stats.resets += 1;
    }
}

/// A jitter in timestamp units x 16 as a duration.
fn jitter_of(jitter_x16: u64, clock_rate: u32) -> Duration {
    Duration::from_micros((jitter_x16 / 16).saturating_mul(1_000_000) / u64::from(clock_rate.max(1)))
}

#[cfg(test)]
mod tests;
