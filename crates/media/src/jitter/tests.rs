use super::*;

const WAIT: Duration = Duration::from_millis(60);
/// A fixed wait (min = max), so the tests of reordering do not depend on the estimator.
const CONFIG: JitterConfig = JitterConfig { clock_rate: 8000, min_wait: WAIT, max_wait: WAIT };

fn header(sequence: u16) -> RtpHeader {
    RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc: 7 }
}

fn ms(base: Instant, offset: u64) -> Instant {
    base + Duration::from_millis(offset)
}

fn sequences(frames: &[ReceivedFrame]) -> Vec<u16> {
    frames.iter().map(|f| f.header.sequence).collect()
}

fn drain(buffer: &mut JitterBuffer, now: Instant) -> Vec<ReceivedFrame> {
    std::iter::from_fn(|| buffer.pop(now)).collect()
}

#[test]
fn in_order_packets_are_released_immediately() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
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
    assert_eq!(buffer.stats(), JitterStats { received: 100, ..JitterStats::default() });
}

#[test]
fn swapped_packets_are_reordered_without_waiting_for_the_deadline() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
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
    let mut buffer = JitterBuffer::new(CONFIG);
    buffer.push(base, header(0), &[]);
    drain(&mut buffer, base);
    // Sequence 1 never arrives; 2.. pile up without any pop.
    for sequence in 2..200 {
        buffer.push(base, header(sequence), &[]);
        assert!(buffer.len() <= JITTER_CAPACITY);
    }
    // Full: released at once, without waiting for max_wait.
    let frames = drain(&mut buffer, base);
    assert_eq!(frames.len(), JITTER_CAPACITY);
    assert_eq!(frames.last().unwrap().header.sequence, 199);
    // Every sequence is either delivered or counted lost.
    assert_eq!(buffer.stats().lost + frames.len() as u64, 199);
}

#[test]
fn full_buffer_releases_early() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
    buffer.push(base, header(0), &[]);
    drain(&mut buffer, base);
    for sequence in 2..(2 + JITTER_CAPACITY as u16) {
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
        let mut buffer = JitterBuffer::new(CONFIG);
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

const ADAPTIVE: JitterConfig =
    JitterConfig { clock_rate: 8000, min_wait: Duration::from_millis(20), max_wait: Duration::from_millis(120) };

/// A deterministic xorshift generator for the property tests.
fn rng(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed;
    move |bound: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % bound
    }
}

#[test]
fn jitter_estimate_follows_rfc_3550_a8_and_is_zero_on_a_clean_network() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(ADAPTIVE);
    for i in 0..200u16 {
        buffer.push(ms(base, u64::from(i) * 20), header(i), &[]);
        drain(&mut buffer, ms(base, u64::from(i) * 20));
    }
    assert_eq!(buffer.jitter(), Duration::ZERO);
    assert_eq!(buffer.wait(), ADAPTIVE.min_wait, "no jitter: the floor");
    // Every other packet 10 ms late: |D| = 80 units (10 ms) on every packet, J converges to it.
    for i in 200..600u16 {
        let arrival = u64::from(i) * 20 + if i % 2 == 0 { 10 } else { 0 };
        buffer.push(ms(base, arrival), header(i), &[]);
        drain(&mut buffer, ms(base, arrival));
    }
    let jitter = buffer.jitter().as_secs_f64() * 1000.0;
    assert!((jitter - 10.0).abs() < 0.5, "{jitter} ms");
    let wait = buffer.wait().as_secs_f64() * 1000.0;
    assert!((wait - 30.0).abs() < 1.0, "3 x 10 ms: {wait}");
    let report = buffer.reception_report().unwrap();
    assert!((i64::from(report.jitter) - 80).abs() <= 2, "{report:?}");
}

#[test]
fn wait_is_bounded_by_jitter_max() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(ADAPTIVE);
    for i in 0..400u16 {
        let arrival = u64::from(i) * 20 + if i % 2 == 0 { 200 } else { 0 };
        buffer.push(ms(base, arrival), header(i), &[]);
        drain(&mut buffer, ms(base, arrival));
    }
    assert!(buffer.jitter() > Duration::from_millis(100));
    assert_eq!(buffer.wait(), ADAPTIVE.max_wait);
    assert!(buffer.max_jitter() >= buffer.jitter());
}

#[test]
fn timestamp_jump_with_continuous_sequence_is_neither_loss_nor_jitter() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(ADAPTIVE);
    let mut released = Vec::new();
    for i in 0..100u16 {
        let mut h = header(i);
        // A new talkspurt after 2 minutes of suppressed silence (or a sender's clock step).
        if i >= 50 {
            h.timestamp = h.timestamp.wrapping_add(8000 * 120);
        }
        buffer.push(ms(base, u64::from(i) * 20), h, &[]);
        released.extend(drain(&mut buffer, ms(base, u64::from(i) * 20)));
    }
    assert_eq!(released.len(), 100);
    assert!(released.iter().all(|f| f.lost_before == 0));
    assert_eq!(buffer.stats().lost, 0);
    assert_eq!(buffer.stats().resets, 0);
    assert_eq!(buffer.jitter(), Duration::ZERO, "the step is not a jitter sample");
}

#[test]
fn ssrc_change_releases_the_old_streams_held_packets_and_counts_no_loss_between_streams() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
    for sequence in [100, 101, 103] {
        buffer.push(base, header(sequence), &[]);
    }
    assert_eq!(sequences(&drain(&mut buffer, base)), [100, 101], "103 waits for 102");
    // The SBC fails over: a new SSRC, an unrelated sequence space.
    let mut other = header(40_000);
    other.ssrc = 99;
    assert_eq!(buffer.push(ms(base, 5), other, &[]), PushOutcome::Accepted);
    let frames = drain(&mut buffer, ms(base, 5));
    assert_eq!(sequences(&frames), [103, 40_000], "no wait: the old stream will not send 102");
    assert_eq!(frames[0].lost_before, 1, "102 of the old stream was lost");
    assert!(!frames[0].stream_start);
    assert_eq!(frames[1].lost_before, 0);
    assert!(frames[1].stream_start);
    assert_eq!(buffer.stats().lost, 1);
    assert_eq!(buffer.stats().resets, 1);
    let report = buffer.reception_report().unwrap();
    assert_eq!((report.ssrc, report.cumulative_lost, report.extended_highest), (99, 0, 40_000));
}

#[test]
fn reception_report_counts_interval_loss_and_extended_sequence_across_the_wrap() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
    // 65_530 .. 65_535, 0 .. 9: 16 packets, 4 of them lost.
    let mut now = 0;
    for i in 0..16u16 {
        let sequence = 65_530u16.wrapping_add(i);
        if i % 4 == 1 {
            continue;
        }
        now += 20;
        buffer.push(ms(base, now), header(sequence), &[]);
        drain(&mut buffer, ms(base, now + 100));
    }
    let report = buffer.reception_report().unwrap();
    assert_eq!(report.extended_highest, (1 << 16) | 9);
    assert_eq!(report.cumulative_lost, 4);
    assert_eq!(report.fraction_lost, 64, "4 of 16 = 64/256");
    // Nothing new: the next interval reports no loss.
    assert_eq!(buffer.reception_report().unwrap().fraction_lost, 0);
}

#[test]
fn delay_quantiles_are_zero_in_order_and_the_wait_behind_a_gap() {
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(CONFIG);
    for i in 0..100u16 {
        if i == 50 {
            continue;
        }
        let now = ms(base, u64::from(i) * 20);
        drain(&mut buffer, now);
        buffer.push(now, header(i), &[]);
        drain(&mut buffer, now);
    }
    drain(&mut buffer, ms(base, 10_000));
    assert_eq!(buffer.delay_quantile(0.5), Duration::ZERO);
    // 51, 52, 53 were held behind the gap (60, 40, 20 ms): 3 of 99 packets, so p95 is zero
    // and the maximum is the wait.
    assert_eq!(buffer.delay_quantile(0.95), Duration::ZERO);
    assert_eq!(buffer.delay_quantile(1.0), WAIT);
}

/// The figure: 60 ms of jitter (each packet delayed uniformly by 0..60 ms, so reordered
/// often) adds less than 80 ms at p95, and nothing is delivered twice or out of order.
#[test]
fn sixty_ms_of_jitter_adds_less_than_80_ms_at_p95() {
    let mut next_random = rng(0x5eed);
    let base = Instant::now();
    let mut buffer = JitterBuffer::new(ADAPTIVE);
    let mut arrivals: Vec<(u64, u16)> = (0..3000u64).map(|i| (i * 20 + next_random(61), (i % 65536) as u16)).collect();
    arrivals.sort_by_key(|&(at, _)| at);
    let mut released = Vec::new();
    for (at, sequence) in arrivals {
        let now = ms(base, at);
        released.extend(drain(&mut buffer, now));
        buffer.push(now, header(sequence), &[]);
        released.extend(drain(&mut buffer, now));
    }
    released.extend(drain(&mut buffer, ms(base, 100_000)));
    let p95 = buffer.delay_quantile(0.95);
    assert!(p95 < Duration::from_millis(80), "p95 {p95:?}");
    assert!(buffer.jitter() > Duration::from_millis(10), "{:?}", buffer.jitter());
    for pair in released.windows(2) {
        assert!(pair[1].header.sequence.wrapping_sub(pair[0].header.sequence) >= 1);
    }
    let stats = buffer.stats();
    // The stream starts at the first packet to arrive; any before it is late.
    let first = u64::from(released[0].header.sequence);
    assert_eq!(released.len() as u64 + stats.lost, 3000 - first);
    assert!(stats.lost < 30, "few packets given up at this jitter: {stats:?}");
}
