//! Inbound RTP reorder buffer (sans-IO).
//!
//! Packets that arrive in order are released at once: no added delay on a clean network. When
//! a packet is missing, the packets after the gap are held until `max_wait` has passed since the
//! first of them arrived, giving the missing one a chance to arrive late; then the gap is
//! declared lost.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::rtp::RtpHeader;

/// Maximum packets held; beyond this the oldest gap is given up on at once.
pub const REORDER_CAPACITY: usize = 64;
/// A sequence jump larger than this (either way) means the peer restarted its stream.
const MAX_SEQUENCE_JUMP: i64 = 1000;
/// Offset of the first extended sequence number, so extension below it never goes negative.
const EXTENDED_START: i64 = 1 << 32;

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
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReorderStats {
    /// Packets accepted into the buffer.
    pub received: u64,
    /// Packets dropped as duplicates.
    pub duplicates: u64,
    /// Packets dropped because their slot had already been declared lost.
    pub late: u64,
    /// Sequence numbers declared lost.
    pub lost: u64,
    /// Accepted packets that arrived after a packet with a higher sequence number.
    pub reordered: u64,
    /// Times the stream was restarted (SSRC change or a large sequence jump).
    pub resets: u64,
}

#[derive(Debug)]
struct Pending {
    header: RtpHeader,
    payload: Vec<u8>,
    arrived: Instant,
}

/// Reorders one inbound RTP stream. See the module documentation.
#[derive(Debug)]
pub struct ReorderBuffer {
    max_wait: Duration,
    ssrc: Option<u32>,
    /// Extended sequence number of the next packet to release; `None` before the first packet.
    next_expected: Option<i64>,
    /// Highest extended sequence number accepted: the reference for extending new ones.
    highest: i64,
    /// Bit i set: sequence `next_expected - 1 - i` was delivered (tells duplicates from late).
    delivered_history: u64,
    pending: BTreeMap<i64, Pending>,
    stats: ReorderStats,
}

impl ReorderBuffer {
    /// A buffer that waits at most `max_wait` for a missing packet.
    pub fn new(max_wait: Duration) -> Self {
        ReorderBuffer {
            max_wait,
            ssrc: None,
            next_expected: None,
            highest: 0,
            delivered_history: 0,
            pending: BTreeMap::new(),
            stats: ReorderStats::default(),
        }
    }

    /// Offers a received packet.
    pub fn push(&mut self, now: Instant, header: RtpHeader, payload: &[u8]) -> PushOutcome {
        if self.ssrc.is_some_and(|ssrc| ssrc != header.ssrc) {
            self.restart();
        }
        self.ssrc = Some(header.ssrc);
        let Some(next_expected) = self.next_expected else {
            let extended = EXTENDED_START + i64::from(header.sequence);
            self.next_expected = Some(extended);
            self.highest = extended;
            return self.accept(now, extended, header, payload);
        };
        let extended = self.extend(header.sequence);
        let ahead = extended - next_expected;
        if ahead.abs() > MAX_SEQUENCE_JUMP {
            // The peer restarted its sequence space: start over rather than drop everything.
            self.restart();
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
    /// a gap once it has waited `max_wait` (or the buffer is full).
    pub fn pop(&mut self, now: Instant) -> Option<ReceivedFrame> {
        let next_expected = self.next_expected?;
        let (&extended, first) = self.pending.first_key_value()?;
        let gap = extended - next_expected;
        let full = self.pending.len() >= REORDER_CAPACITY;
        if gap > 0 && !full && now < first.arrived + self.max_wait {
            return None;
        }
        let pending = self.pending.remove(&extended)?;
        Some(self.release(extended, gap, pending))
    }

    /// When [`pop`](Self::pop) will next return a packet, if anything is buffered. A deadline
    /// in the past means "now".
    pub fn next_deadline(&self) -> Option<Instant> {
        let next_expected = self.next_expected?;
        let (&extended, first) = self.pending.first_key_value()?;
        if extended == next_expected || self.pending.len() >= REORDER_CAPACITY {
            Some(first.arrived)
        } else {
            Some(first.arrived + self.max_wait)
        }
    }

    /// Counters since creation.
    pub fn stats(&self) -> ReorderStats {
        self.stats
    }

    /// Packets currently held.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    fn accept(&mut self, now: Instant, extended: i64, header: RtpHeader, payload: &[u8]) -> PushOutcome {
        self.stats.received += 1;
        self.pending.insert(extended, Pending { header, payload: payload.to_vec(), arrived: now });
        // Only reachable when the caller does not pop: give up on the oldest packet (and its
        // gap) so memory stays bounded.
        if self.pending.len() > REORDER_CAPACITY
            && let Some((oldest, pending)) = self.pending.pop_first()
            && let Some(next_expected) = self.next_expected
        {
            let gap = oldest - next_expected;
            self.release(oldest, gap, pending);
            // Dropped, not delivered: a copy arriving later is late, not a duplicate.
            self.delivered_history &= !1;
            self.stats.lost += 1;
        }
        PushOutcome::Accepted
    }

    fn release(&mut self, extended: i64, gap: i64, pending: Pending) -> ReceivedFrame {
        let gap = gap.max(0);
        self.stats.lost += gap.unsigned_abs();
        let shift = gap.unsigned_abs() + 1;
        self.delivered_history = if shift >= 64 { 0 } else { self.delivered_history << shift } | 1;
        self.next_expected = Some(extended + 1);
        ReceivedFrame {
            header: pending.header,
            payload: pending.payload,
            lost_before: u16::try_from(gap).unwrap_or(u16::MAX),
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

    fn restart(&mut self) {
        self.pending.clear();
        self.next_expected = None;
        self.delivered_history = 0;
        self.stats.resets += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_millis(60);

    fn header(sequence: u16) -> RtpHeader {
        RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc: 7 }
    }

    fn ms(base: Instant, offset: u64) -> Instant {
        base + Duration::from_millis(offset)
    }

    fn sequences(frames: &[ReceivedFrame]) -> Vec<u16> {
        frames.iter().map(|f| f.header.sequence).collect()
    }

    fn drain(buffer: &mut ReorderBuffer, now: Instant) -> Vec<ReceivedFrame> {
        std::iter::from_fn(|| buffer.pop(now)).collect()
    }

    #[test]
    fn in_order_packets_are_released_immediately() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        for i in 0..100u16 {
            let now = ms(base, u64::from(i) * 20);
            assert_eq!(buffer.push(now, header(i), &[i as u8]), PushOutcome::Accepted);
            assert_eq!(buffer.next_deadline(), Some(now));
            let frame = buffer.pop(now).unwrap();
            assert_eq!(frame.header.sequence, i);
            assert_eq!(frame.payload, [i as u8]);
            assert_eq!(frame.lost_before, 0);
            assert_eq!(buffer.pop(now), None);
            assert_eq!(buffer.next_deadline(), None);
        }
        assert_eq!(buffer.stats(), ReorderStats { received: 100, ..ReorderStats::default() });
    }

    #[test]
    fn swapped_packets_are_reordered_without_waiting_for_the_deadline() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(1), &[]);
        assert_eq!(sequences(&drain(&mut buffer, base)), [1]);
        buffer.push(ms(base, 20), header(3), &[]);
        assert_eq!(buffer.pop(ms(base, 20)), None);
        assert_eq!(buffer.next_deadline(), Some(ms(base, 80)));
        buffer.push(ms(base, 25), header(2), &[]);
        let frames = drain(&mut buffer, ms(base, 25));
        assert_eq!(sequences(&frames), [2, 3]);
        assert!(frames.iter().all(|f| f.lost_before == 0));
        assert_eq!(buffer.stats().reordered, 1);
        assert_eq!(buffer.stats().lost, 0);
    }

    #[test]
    fn gap_is_declared_lost_after_max_wait_and_late_packet_is_dropped() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(10), &[]);
        drain(&mut buffer, base);
        buffer.push(ms(base, 40), header(12), &[]);
        buffer.push(ms(base, 60), header(13), &[]);
        assert!(drain(&mut buffer, ms(base, 99)).is_empty());
        let frames = drain(&mut buffer, ms(base, 100));
        assert_eq!(sequences(&frames), [12, 13]);
        assert_eq!(frames[0].lost_before, 1);
        assert_eq!(frames[1].lost_before, 0);
        assert_eq!(buffer.push(ms(base, 110), header(11), &[]), PushOutcome::Late);
        let stats = buffer.stats();
        assert_eq!((stats.lost, stats.late, stats.received), (1, 1, 3));
    }

    #[test]
    fn duplicates_are_detected_buffered_and_delivered() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(1), &[]);
        drain(&mut buffer, base);
        assert_eq!(buffer.push(base, header(1), &[]), PushOutcome::Duplicate);
        assert_eq!(buffer.push(base, header(3), &[]), PushOutcome::Accepted);
        assert_eq!(buffer.push(base, header(3), &[]), PushOutcome::Duplicate);
        assert_eq!(buffer.stats().duplicates, 2);
        assert_eq!(buffer.len(), 1);
    }

    #[test]
    fn sequence_wrap_is_continuous() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        let mut released = Vec::new();
        for sequence in [65533, 65534, 0, 65535, 1, 2] {
            buffer.push(base, header(sequence), &[]);
            released.extend(drain(&mut buffer, base));
        }
        assert_eq!(sequences(&released), [65533, 65534, 65535, 0, 1, 2]);
        assert!(released.iter().all(|f| f.lost_before == 0));
        assert_eq!(buffer.stats().resets, 0);
        assert_eq!(buffer.stats().reordered, 1);
    }

    #[test]
    fn large_jump_restarts_instead_of_discarding() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(100), &[]);
        drain(&mut buffer, base);
        // Far ahead: a restarted stream, delivered at once.
        assert_eq!(buffer.push(base, header(30000), &[]), PushOutcome::Accepted);
        assert_eq!(sequences(&drain(&mut buffer, base)), [30000]);
        // Far behind: also a restart, not "late".
        assert_eq!(buffer.push(base, header(5), &[]), PushOutcome::Accepted);
        let frames = drain(&mut buffer, base);
        assert_eq!(sequences(&frames), [5]);
        assert_eq!(frames[0].lost_before, 0);
        assert_eq!(buffer.stats().resets, 2);
        assert_eq!(buffer.stats().lost, 0);
    }

    #[test]
    fn moderate_jump_is_a_gap() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(100), &[]);
        drain(&mut buffer, base);
        buffer.push(base, header(600), &[]);
        assert!(drain(&mut buffer, base).is_empty());
        let frames = drain(&mut buffer, ms(base, 60));
        assert_eq!(frames[0].lost_before, 499);
        assert_eq!(buffer.stats().resets, 0);
    }

    #[test]
    fn ssrc_change_restarts() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(100), &[]);
        drain(&mut buffer, base);
        let mut other = header(102);
        other.ssrc = 8;
        buffer.push(base, other, &[]);
        let frames = drain(&mut buffer, base);
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].lost_before, 0);
        assert_eq!(buffer.stats().resets, 1);
    }

    #[test]
    fn buffer_is_bounded() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(0), &[]);
        drain(&mut buffer, base);
        // Sequence 1 never arrives; 2.. pile up without any pop.
        for sequence in 2..200 {
            buffer.push(base, header(sequence), &[]);
            assert!(buffer.len() <= REORDER_CAPACITY);
        }
        // Full: released at once, without waiting for max_wait.
        let frames = drain(&mut buffer, base);
        assert_eq!(frames.len(), REORDER_CAPACITY);
        assert_eq!(frames.last().unwrap().header.sequence, 199);
        // Every sequence is either delivered or counted lost.
        assert_eq!(buffer.stats().lost + frames.len() as u64, 199);
    }

    #[test]
    fn full_buffer_releases_early() {
        let base = Instant::now();
        let mut buffer = ReorderBuffer::new(WAIT);
        buffer.push(base, header(0), &[]);
        drain(&mut buffer, base);
        for sequence in 2..(2 + REORDER_CAPACITY as u16) {
            buffer.push(base, header(sequence), &[]);
        }
        assert_eq!(buffer.next_deadline(), Some(base));
        let first = buffer.pop(base).unwrap();
        assert_eq!((first.header.sequence, first.lost_before), (2, 1));
    }

    /// Property: on a network that delays, drops and duplicates packets, every sequence number
    /// is released at most once, in increasing order, and released + declared lost covers the
    /// whole span with nothing unaccounted for.
    #[test]
    fn property_jittery_network_releases_in_order_exactly_once() {
        let mut rng = 0x2545_F491_4F6C_DD1D_u64;
        let mut next_random = move |bound: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % bound
        };
        for _round in 0..20 {
            let base = Instant::now();
            let mut buffer = ReorderBuffer::new(WAIT);
            // (arrival time in ms, sequence); sent every 20 ms starting near the wrap.
            let mut arrivals = Vec::new();
            let first_sequence = 65000u16;
            let count = 3000u64;
            for i in 0..count {
                if next_random(100) < 3 {
                    continue; // dropped
                }
                let sequence = first_sequence.wrapping_add(i as u16);
                let arrival = i * 20 + next_random(90); // up to 90 ms of jitter
                arrivals.push((arrival, sequence));
                if next_random(100) < 2 {
                    arrivals.push((arrival + next_random(40), sequence)); // duplicated
                }
            }
            arrivals.sort_by_key(|&(arrival, _)| arrival);
            let mut released: Vec<(u64, ReceivedFrame)> = Vec::new();
            for &(arrival, sequence) in &arrivals {
                let now = ms(base, arrival);
                released.extend(drain(&mut buffer, now).into_iter().map(|f| (arrival, f)));
                buffer.push(now, header(sequence), &[]);
                released.extend(drain(&mut buffer, now).into_iter().map(|f| (arrival, f)));
            }
            released.extend(drain(&mut buffer, ms(base, count * 20 + 1000)).into_iter().map(|f| (0, f)));

            // The stream starts at whichever packet arrives first.
            let start_sequence = released[0].1.header.sequence;
            assert_eq!(released[0].1.lost_before, 0);
            assert!(start_sequence.wrapping_sub(first_sequence) < 10);
            let mut expected = start_sequence;
            let mut lost_total = 0u64;
            for (_, frame) in &released {
                let skipped = frame.header.sequence.wrapping_sub(expected);
                assert_eq!(skipped, frame.lost_before, "lost_before matches the gap");
                assert!(skipped < 1000, "strictly increasing");
                lost_total += u64::from(frame.lost_before);
                expected = frame.header.sequence.wrapping_add(1);
            }
            let stats = buffer.stats();
            assert_eq!(stats.lost, lost_total);
            assert_eq!(stats.resets, 0);
            assert_eq!(released.len() as u64 + stats.lost, u64::from(expected.wrapping_sub(start_sequence)));
            // Every push is accounted for exactly once.
            assert_eq!(stats.received + stats.duplicates + stats.late, arrivals.len() as u64);
            assert_eq!(stats.received, released.len() as u64);
            // The scenario really exercises every path.
            assert!(stats.reordered > 0 && stats.late > 0 && stats.duplicates > 0, "{stats:?}");
        }
    }
}
