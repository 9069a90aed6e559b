//! The delay the adaptive jitter buffer adds, on a seeded emulated network: p50/p95/max of
//! (release - arrival) over ten minutes of 20 ms packets, with each packet delayed by a uniform
//! 0..J ms (so packets sent closer together than J arrive reordered) and optional loss.
//! (docs/benchmarks.md, "Issue 8: jitter buffer, RTCP, meters".)
//!
//! ```sh
//! cargo run --release -p switchboard-media --example jitter_delay            # J = 0, 20, 60, 100 ms
//! cargo run --release -p switchboard-media --example jitter_delay -- 60 0.05 # J = 60 ms, 5 % loss
//! ```

use std::time::{Duration, Instant};

use switchboard_media::{JitterBuffer, JitterConfig, RtpHeader};

const PACKETS: u64 = 30_000; // 10 minutes

fn run(jitter_ms: u64, loss: f64, seed: u64) {
    let mut state = seed;
    let mut random = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start = Instant::now();
    let config =
        JitterConfig { clock_rate: 8000, min_wait: Duration::from_millis(40), max_wait: Duration::from_millis(120) };
    let mut buffer = JitterBuffer::new(config);
    let mut arrivals: Vec<(Duration, u64)> = Vec::new();
    for i in 0..PACKETS {
        if ((random() % 1_000_000) as f64) < loss * 1_000_000.0 {
            continue;
        }
        let delay = if jitter_ms == 0 { 0 } else { random() % (jitter_ms * 1000 + 1) };
        arrivals.push((Duration::from_micros(i * 20_000 + delay), i));
    }
    arrivals.sort();
    let mut delays = Vec::with_capacity(arrivals.len());
    let release = |buffer: &mut JitterBuffer, now: Instant, delays: &mut Vec<Duration>| {
        while let Some(frame) = buffer.pop(now) {
            delays.push(now - frame.arrived);
        }
    };
    for (at, i) in arrivals {
        let now = start + at;
        // Timers run when due, as the call's task does.
        while let Some(due) = buffer.next_deadline().filter(|&due| due <= now) {
            release(&mut buffer, due, &mut delays);
        }
        let header =
            RtpHeader { payload_type: 0, marker: false, sequence: i as u16, timestamp: (i * 160) as u32, ssrc: 1 };
        buffer.push(now, header, &[0; 160]);
        release(&mut buffer, now, &mut delays);
    }
    // The end of the stream: what still waits is released at its deadline.
    while let Some(due) = buffer.next_deadline() {
        release(&mut buffer, due, &mut delays);
    }
    delays.sort();
    let quantile = |q: f64| delays[((q * delays.len() as f64).ceil() as usize).clamp(1, delays.len()) - 1];
    let stats = buffer.stats();
    println!(
        "| {jitter_ms} | {:.0} % | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {} | {} | {} |",
        loss * 100.0,
        buffer.jitter().as_secs_f64() * 1000.0,
        quantile(0.5).as_secs_f64() * 1000.0,
        quantile(0.95).as_secs_f64() * 1000.0,
        quantile(0.99).as_secs_f64() * 1000.0,
        delays.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        stats.lost,
        stats.late,
        stats.reordered,
    );
}

fn main() {
    let mut args = std::env::args().skip(1);
    let jitter: Option<u64> = args.next().and_then(|s| s.parse().ok());
    let loss: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(0.0);
    println!(
        "| jitter J (ms, uniform 0..J) | loss | RFC 3550 jitter at end (ms) | added p50 (ms) | p95 | p99 | max | lost | late | reordered |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    match jitter {
        Some(j) => run(j, loss, 0x5eed),
        None => {
            for (j, l) in [(0, 0.0), (20, 0.0), (60, 0.0), (100, 0.0), (0, 0.05), (60, 0.05)] {
                run(j, l, 0x5eed);
            }
        }
    }
}
