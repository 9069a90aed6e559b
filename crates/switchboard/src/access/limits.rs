//! New-INVITE rate limits before anything is answered, in the spirit of Kamailio's `pike`:
//! - `sip.invite_rate_per_source`: a token bucket per source address holding one second's worth
//!   (a burst of that size passes, a sustained flood does not);
//! - `sip.ban_secs`: a source that went over its rate gets 503 for every INVITE until the ban ends
//!   (a flooder stops costing even the bucket arithmetic's answers being useful to it);
//! - `sip.max_cps`: one bucket for all sources together, the gateway's own protection.
//!
//! Sources in `sip.trusted_proxies` and in a trunk's `sources` are exempt from the per-source
//! limit and ban (a proxy or a carrier's SBC concentrates many callers behind one address), not
//! from `max_cps`. The per-source table is bounded: idle
//! entries (full bucket, no ban) are swept once per second of traffic; when it is still full,
//! the least recently seen entry is forgotten (a forgotten source only gets a fresh bucket).
//!
//! Sans-IO: time is a parameter.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use crate::admission::IpNet;

/// The limits, from `[sip]`.
#[derive(Debug, Clone, PartialEq)]
pub struct RateConfig {
    /// New INVITEs per second per source; 0: no limit.
    pub per_source: u32,
    /// How long a source over its rate stays refused; zero: only the INVITEs over the rate.
    pub ban: Duration,
    /// New INVITEs per second over all sources; 0: no limit.
    pub max_cps: u32,
    /// Exempt from the per-source limit.
    pub exempt: Vec<IpNet>,
    /// Bound on the per-source table.
    pub max_sources: usize,
}

/// Why an INVITE is refused (503 + Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateRefusal {
    /// Over `sip.invite_rate_per_source` (and banned from now on if `sip.ban_secs` is set).
    RateLimited,
    /// Still within the ban that followed; `remaining` is the Retry-After.
    Banned { remaining: Duration },
    /// Over `sip.max_cps`.
    Cps,
}

impl RateRefusal {
    /// `reason` label of `switchboard_sip_screened_total` (and of `switchboard_calls_total`).
    pub fn reason_label(self) -> &'static str {
        match self {
            RateRefusal::RateLimited => "source_rate_limited",
            RateRefusal::Banned { .. } => "source_banned",
            RateRefusal::Cps => "max_cps",
        }
    }
}

/// A token bucket holding one second's worth of `rate`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn full(rate: u32, now: Instant) -> Bucket {
        Bucket { tokens: f64::from(rate), refilled_at: now }
    }

    fn level(&self, rate: u32, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(self.refilled_at).as_secs_f64();
        (self.tokens + elapsed * f64::from(rate)).min(f64::from(rate.max(1)))
    }

    /// Takes a token if there is one.
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        self.tokens = self.level(rate, now);
        self.refilled_at = now;
        if self.tokens < 1.0 {
            return false;
        }
        self.tokens -= 1.0;
        true
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    bucket: Bucket,
    banned_until: Option<Instant>,
    last_seen: Instant,
}

/// How often idle entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct RateLimits {
    cfg: RateConfig,
    sources: HashMap<IpAddr, Source>,
    global: Option<Bucket>,
    last_sweep: Option<Instant>,
}

impl RateLimits {
    pub fn new(cfg: RateConfig) -> RateLimits {
        RateLimits { cfg, sources: HashMap::new(), global: None, last_sweep: None }
    }

    /// New limits from a reload; the table's bound stays, sources keep their buckets and bans.
    pub fn reconfigure(&mut self, cfg: RateConfig) {
        self.cfg = RateConfig { max_sources: self.cfg.max_sources, ..cfg };
    }

    /// Sources tracked now (bounded by `max_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Decides on a new INVITE from `source` at `now`.
    pub fn check(&mut self, source: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        let source = source.to_canonical();
        if self.cfg.per_source > 0 && !self.cfg.exempt.iter().any(|net| net.contains(source)) {
            self.check_source(source, now)?;
        }
        self.check_global(now)
    }

    /// The global CPS limit only: for a trunk's own sources, which are exempt from the
    /// per-source rate and ban (a carrier's SBC is one address carrying many callers; banning it
    /// would be an outage of that trunk).
    pub fn check_global(&mut self, now: Instant) -> Result<(), RateRefusal> {
        if self.cfg.max_cps > 0 {
            let rate = self.cfg.max_cps;
            let global = self.global.get_or_insert_with(|| Bucket::full(rate, now));
            if !global.take(rate, now) {
                return Err(RateRefusal::Cps);
            }
        }
        Ok(())
    }

    fn check_source(&mut self, source: IpAddr, now: Instant) -> Result<(), RateRefusal> {
        self.sweep_if_due(now);
        if !self.sources.contains_key(&source) {
            self.make_room(now);
        }
        let (rate, ban) = (self.cfg.per_source, self.cfg.ban);
        let entry = self.sources.entry(source).or_insert(Source {
            bucket: Bucket::full(rate, now),
            banned_until: None,
            last_seen: now,
        });
        entry.last_seen = now;
        if let Some(until) = entry.banned_until {
            if now < until {
                return Err(RateRefusal::Banned { remaining: until - now });
            }
            entry.banned_until = None;
        }
        if entry.bucket.take(rate, now) {
            return Ok(());
        }
        if !ban.is_zero() {
            entry.banned_until = Some(now + ban);
        }
        Err(RateRefusal::RateLimited)
    }

    fn is_idle(&self, source: &Source, now: Instant) -> bool {
        source.banned_until.is_none_or(|until| until <= now)
            && source.bucket.level(self.cfg.per_source, now) >= f64::from(self.cfg.per_source.max(1))
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.sweep(now);
    }

    fn sweep(&mut self, now: Instant) {
        let idle: Vec<IpAddr> =
            self.sources.iter().filter(|(_, source)| self.is_idle(source, now)).map(|(ip, _)| *ip).collect();
        for ip in idle {
            self.sources.remove(&ip);
        }
    }

    /// Ensures room for one more entry: sweeps, then forgets the least recently seen source.
    fn make_room(&mut self, now: Instant) {
        if self.sources.len() < self.cfg.max_sources {
            return;
        }
        self.sweep(now);
        while self.sources.len() >= self.cfg.max_sources.max(1) {
            let Some(oldest) = self.sources.iter().min_by_key(|(_, s)| s.last_seen).map(|(ip, _)| *ip) else {
                return;
            };
            self.sources.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn limits(per_source: u32, ban_secs: u64, max_cps: u32) -> RateLimits {
        RateLimits::new(RateConfig {
            per_source,
            ban: Duration::from_secs(ban_secs),
            max_cps,
            exempt: vec!["10.0.0.0/8".parse().unwrap()],
            max_sources: 4,
        })
    }

    #[test]
    fn a_flood_from_one_source_is_held_to_its_rate_without_a_ban() {
        let start = Instant::now();
        let mut limits = limits(10, 0, 0);
        let flooder = ip("192.0.2.1");
        // 20 INVITEs per second for 3 s: the first second's burst of 10, then 10 per second.
        let passed =
            (0..60u64).filter(|i| limits.check(flooder, start + Duration::from_millis(i * 50)).is_ok()).count();
        assert!((38..=41).contains(&passed), "{passed} passed");
        assert_eq!(
            limits.check(ip("192.0.2.2"), start + Duration::from_secs(3)),
            Ok(()),
            "another source is not affected"
        );
    }

    #[test]
    fn a_source_over_its_rate_is_banned_until_the_ban_ends() {
        let start = Instant::now();
        let mut limits = limits(2, 30, 0);
        let source = ip("192.0.2.1");
        assert_eq!(limits.check(source, start), Ok(()));
        assert_eq!(limits.check(source, start), Ok(()));
        assert_eq!(limits.check(source, start), Err(RateRefusal::RateLimited));
        // Its bucket refills, but the ban holds.
        let later = start + Duration::from_secs(10);
        assert_eq!(limits.check(source, later), Err(RateRefusal::Banned { remaining: Duration::from_secs(20) }));
        // Sweeps do not forget a banned source.
        let _ = limits.check(ip("192.0.2.9"), start + Duration::from_secs(29));
        assert_eq!(limits.tracked_sources(), 2);
        assert_eq!(limits.check(source, start + Duration::from_secs(30)), Ok(()), "the ban is over");
    }

    #[test]
    fn the_global_cps_limit_counts_every_source_including_exempt_ones() {
        let start = Instant::now();
        let mut limits = limits(0, 0, 5);
        let results: Vec<_> = (0..8).map(|i| limits.check(ip(&format!("10.0.0.{i}")), start)).collect();
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
        assert!(results[5..].iter().all(|r| *r == Err(RateRefusal::Cps)));
        // 200 ms later one more token (5 per second).
        assert_eq!(limits.check(ip("192.0.2.1"), start + Duration::from_millis(200)), Ok(()));
        assert_eq!(limits.check(ip("192.0.2.1"), start + Duration::from_millis(200)), Err(RateRefusal::Cps));
        assert_eq!(limits.tracked_sources(), 0, "no per-source limit, nothing tracked");
    }

    #[test]
    fn trusted_proxies_are_exempt_from_the_per_source_rate() {
        let now = Instant::now();
        let mut limits = limits(1, 60, 0);
        for _ in 0..100 {
            assert_eq!(limits.check(ip("10.1.2.3"), now), Ok(()));
        }
        assert_eq!(limits.tracked_sources(), 0);
    }

    #[test]
    fn the_table_is_bounded_under_a_spray_of_sources() {
        let start = Instant::now();
        let mut limits = limits(10, 60, 0);
        for i in 0..10_000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
            let now = start + Duration::from_micros(u64::from(i));
            assert_eq!(limits.check(source, now), Ok(()));
            assert!(limits.tracked_sources() <= 4);
        }
        // Once their buckets refill, idle sources are swept.
        let _ = limits.check(ip("192.0.2.1"), start + Duration::from_secs(10));
        assert_eq!(limits.tracked_sources(), 1);
    }

    #[test]
    fn a_reload_changes_the_limits_and_keeps_the_bans() {
        let now = Instant::now();
        let mut limits = limits(1, 60, 0);
        let source = ip("192.0.2.1");
        assert_eq!(limits.check(source, now), Ok(()));
        assert_eq!(limits.check(source, now), Err(RateRefusal::RateLimited));
        limits.reconfigure(RateConfig {
            per_source: 100,
            ban: Duration::ZERO,
            max_cps: 0,
            exempt: vec![],
            max_sources: 1,
        });
        assert!(matches!(limits.check(source, now), Err(RateRefusal::Banned { .. })));
        assert_eq!(limits.cfg.max_sources, 4, "the table's bound needs a restart");
    }
}
