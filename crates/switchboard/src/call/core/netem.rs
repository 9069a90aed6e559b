//! A seeded network emulator for call-core tests (test-only): what `tc netem` does to a stream
//! of datagrams, on a virtual clock. Loss (independent or Gilbert-Elliott bursts), delay jitter
//! (which reorders packets sent closer together than the jitter), explicit reordering and
//! duplication. The same seed gives the same network, so a failure replays exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::{Duration, Instant};

/// What the network does.
#[derive(Debug, Clone, Copy, Default)]
pub struct NetemConfig {
    /// Independent loss probability (0..1), applied in the Gilbert-Elliott "good" state.
    pub loss: f64,
    /// Gilbert-Elliott burst loss: probability of going good -> bad per packet, bad -> good per
    /// packet; every packet is lost in the bad state. Zero `burst_enter`: no bursts.
    pub burst_enter: f64,
    pub burst_exit: f64,
    /// Each packet is delayed by a uniform random 0..=jitter on top of `delay`.
    pub delay: Duration,
    pub jitter: Duration,
    /// Probability that a packet is held back by `reorder_gap` more (explicit reordering).
    pub reorder: f64,
    pub reorder_gap: Duration,
    /// Probability that a packet is delivered twice (the copy up to 30 ms later).
    pub duplicate: f64,
}

/// A deterministic xorshift64* generator.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in 0..1.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }

    pub fn duration_up_to(&mut self, max: Duration) -> Duration {
        max.mul_f64(self.unit())
    }
}

/// The emulated link: give it what was sent and when, get back what arrives and when.
#[derive(Debug, Clone)]
pub struct Netem {
    config: NetemConfig,
    rng: Rng,
    bursting: bool,
    /// Packets the emulator dropped (what a receiver should count lost, duplicates aside).
    pub dropped: u64,
    pub duplicated: u64,
}

impl Netem {
    pub fn new(config: NetemConfig, seed: u64) -> Netem {
        Netem { config, rng: Rng::new(seed), bursting: false, dropped: 0, duplicated: 0 }
    }

    /// The arrivals of `sent` (send time, datagram), sorted by arrival time.
    pub fn run(&mut self, sent: Vec<(Instant, Vec<u8>)>) -> Vec<(Instant, Vec<u8>)> {
        let mut arrivals = Vec::with_capacity(sent.len());
        for (at, packet) in sent {
            if self.config.burst_enter > 0.0 {
                self.bursting = if self.bursting {
                    !self.rng.chance(self.config.burst_exit)
                } else {
                    self.rng.chance(self.config.burst_enter)
                };
            }
            if self.bursting || self.rng.chance(self.config.loss) {
                self.dropped += 1;
                continue;
            }
            let mut arrival = at + self.config.delay + self.rng.duration_up_to(self.config.jitter);
            if self.rng.chance(self.config.reorder) {
                arrival += self.config.reorder_gap;
            }
            if self.rng.chance(self.config.duplicate) {
                self.duplicated += 1;
                let copy = arrival + self.rng.duration_up_to(Duration::from_millis(30));
                arrivals.push((copy, packet.clone()));
            }
            arrivals.push((arrival, packet));
        }
        // Stable: packets arriving at the same instant keep their sending order.
        arrivals.sort_by_key(|(arrival, _)| *arrival);
        arrivals
    }
}

#[test]
fn the_same_seed_gives_the_same_network_and_the_loss_rate_is_what_was_asked() {
    let start = Instant::now();
    let sent: Vec<_> =
        (0..10_000u32).map(|i| (start + Duration::from_millis(u64::from(i) * 20), i.to_be_bytes().to_vec())).collect();
    let config =
        NetemConfig { loss: 0.05, jitter: Duration::from_millis(60), duplicate: 0.01, ..NetemConfig::default() };
    let first = Netem::new(config, 7).run(sent.clone());
    assert_eq!(first, Netem::new(config, 7).run(sent.clone()));
    let mut netem = Netem::new(config, 7);
    netem.run(sent.clone());
    assert!((400..600).contains(&netem.dropped), "{}", netem.dropped);
    let bursty = NetemConfig { burst_enter: 0.01, burst_exit: 0.25, ..NetemConfig::default() };
    let mut netem = Netem::new(bursty, 9);
    let arrived = netem.run(sent);
    // Mean burst 4 packets, one every ~100: about 4 % lost, in runs.
    assert!((200..700).contains(&netem.dropped), "{}", netem.dropped);
    let runs = arrived
        .windows(2)
        .filter(|w| {
            u32::from_be_bytes(w[1].1[..4].try_into().unwrap())
                > u32::from_be_bytes(w[0].1[..4].try_into().unwrap()) + 2
        })
        .count();
    assert!(runs > 20, "losses come in bursts of more than one: {runs}");
}
