//! Admission before expense: the per-source call limit checked on every new INVITE before the
//! call costs anything (routing, an RTP port, a Realtime session, which is billed upstream).
//!
//! `calls.max_per_source`: calls up at once per source IP address. (The per-source INVITE rate,
//! its ban and the global CPS limit are checked earlier, before the SIP core answers anything:
//! `access/limits.rs`.)
//!
//! Sources in `sip.trusted_proxies` (a Kamailio or a PBX in front, which concentrates many
//! callers behind one address) are exempt. The per-source table is bounded: entries with no call
//! up are idle and swept once per second of traffic; when the table is still full, the least
//! recently seen entry without a call is evicted. Entries with calls up are never evicted, and
//! there are at most `calls.max_concurrent` of them, so a table larger than that always has room.
//!
//! Sans-IO: time is a parameter; the shell (`app.rs`) holds it behind a mutex.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// An IP network written as an address (`192.0.2.7`, `::1`) or a CIDR (`10.0.0.0/8`, `fd00::/8`):
/// the router's, so `sip.trusted_proxies` and a route's `source` read networks the same way.
pub use switchboard_router::IpNet;

/// The limits, from `[sip]` and `[calls]`.
#[derive(Debug, Clone, PartialEq)]
pub struct AdmissionConfig {
    /// Calls up at once per source; 0: no limit.
    pub max_calls_per_source: u32,
    /// Exempt sources.
    pub trusted: Vec<IpNet>,
    /// Bound on the per-source table.
    pub max_sources: usize,
}

/// Why a source's INVITE was refused (503 with Retry-After).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdmissionRefusal {
    /// At `calls.max_per_source`.
    TooManyCalls,
    /// The table is full of sources with calls up (cannot happen when it is larger than
    /// `calls.max_concurrent`; refusing is the bounded answer if it does).
    TableFull,
}

impl AdmissionRefusal {
    /// `reason` label of `switchboard_calls_total{outcome="refused"}`.
    pub fn reason_label(self) -> &'static str {
        match self {
            AdmissionRefusal::TooManyCalls => "source_call_limit",
            AdmissionRefusal::TableFull => "source_table_full",
        }
    }
}

/// The answer for one new INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Counted against the source: call [`Admission::release`] when the call ends.
    Admitted,
    /// From a trusted proxy: not counted, nothing to release.
    Trusted,
    Refused(AdmissionRefusal),
}

#[derive(Debug, Clone)]
struct Source {
    active_calls: u32,
    last_seen: Instant,
}

/// How often idle entries are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Per-source admission state.
#[derive(Debug)]
pub struct Admission {
    cfg: AdmissionConfig,
    sources: HashMap<IpAddr, Source>,
    last_sweep: Option<Instant>,
}

impl Admission {
    pub fn new(cfg: AdmissionConfig) -> Self {
        Admission { cfg, sources: HashMap::new(), last_sweep: None }
    }

    /// New limits from a configuration reload; the table's bound stays (it is sized by
    /// `calls.max_concurrent`, which needs a restart). Sources keep their calls and buckets.
    pub fn reconfigure(&mut self, cfg: AdmissionConfig) {
        self.cfg = AdmissionConfig { max_sources: self.cfg.max_sources, ..cfg };
    }

    /// Decides on a new INVITE from `source` at `now`.
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Decision {
        let source = source.to_canonical();
        if self.cfg.trusted.iter().any(|net| net.contains(source)) {
            return Decision::Trusted;
        }
        if self.cfg.max_calls_per_source == 0 {
            return Decision::Admitted;
        }
        self.sweep_if_due(now);
        if !self.sources.contains_key(&source) && !self.make_room(now) {
            return Decision::Refused(AdmissionRefusal::TableFull);
        }
        let entry = self.sources.entry(source).or_insert(Source { active_calls: 0, last_seen: now });
        entry.last_seen = now;
        if self.cfg.max_calls_per_source > 0 && entry.active_calls >= self.cfg.max_calls_per_source {
            return Decision::Refused(AdmissionRefusal::TooManyCalls);
        }
        entry.active_calls += 1;
        Decision::Admitted
    }

    /// A call admitted with [`Decision::Admitted`] from `source` has ended.
    pub fn release(&mut self, source: IpAddr, now: Instant) {
        if let Some(entry) = self.sources.get_mut(&source.to_canonical()) {
            entry.active_calls = entry.active_calls.saturating_sub(1);
            entry.last_seen = now;
        }
    }

    /// Sources tracked now (bounded by `max_sources`).
    pub fn tracked_sources(&self) -> usize {
        self.sources.len()
    }

    /// Calls up from `source` as counted here.
    pub fn active_calls(&self, source: IpAddr) -> u32 {
        self.sources.get(&source.to_canonical()).map_or(0, |s| s.active_calls)
    }

    fn sweep_if_due(&mut self, now: Instant) {
        if self.last_sweep.is_some_and(|last| now.saturating_duration_since(last) < SWEEP_EVERY) {
            return;
        }
        self.last_sweep = Some(now);
        self.sweep(now);
    }

    fn sweep(&mut self, _now: Instant) {
        self.sources.retain(|_, source| source.active_calls > 0);
    }

    /// Ensures room for one more entry; `false` when every entry has calls up.
    fn make_room(&mut self, now: Instant) -> bool {
        if self.sources.len() < self.cfg.max_sources {
            return true;
        }
        self.sweep(now);
        if self.sources.len() < self.cfg.max_sources {
            return true;
        }
        let oldest_without_calls = self
            .sources
            .iter()
            .filter(|(_, source)| source.active_calls == 0)
            .min_by_key(|(_, source)| source.last_seen)
            .map(|(ip, _)| *ip);
        match oldest_without_calls {
            Some(ip) => {
                self.sources.remove(&ip);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn admission(max_calls: u32) -> Admission {
        Admission::new(AdmissionConfig {
            max_calls_per_source: max_calls,
            trusted: vec!["10.0.0.0/8".parse().unwrap(), "2001:db8::1".parse().unwrap()],
            max_sources: 4,
        })
    }

    #[test]
    fn a_reload_changes_the_limits_and_keeps_the_calls_up() {
        let mut a = admission(1);
        let (source, now) = (ip("192.0.2.1"), Instant::now());
        assert_eq!(a.admit(source, now), Decision::Admitted);
        assert_eq!(a.admit(source, now), Decision::Refused(AdmissionRefusal::TooManyCalls));
        a.reconfigure(AdmissionConfig { max_calls_per_source: 2, trusted: vec![], max_sources: 1 });
        assert_eq!(a.admit(source, now), Decision::Admitted, "the call up still counts: 2 of 2");
        assert_eq!(a.admit(source, now), Decision::Refused(AdmissionRefusal::TooManyCalls));
        assert_eq!(a.cfg.max_sources, 4, "the table's bound needs a restart");
        a.reconfigure(AdmissionConfig {
            max_calls_per_source: 2,
            trusted: vec!["192.0.2.0/24".parse().unwrap()],
            max_sources: 4,
        });
        assert_eq!(a.admit(source, now), Decision::Trusted);
    }

    #[test]
    fn networks_parse_and_match() {
        let net: IpNet = "192.168.1.0/24".parse().unwrap();
        assert!(net.contains(ip("192.168.1.200")));
        assert!(!net.contains(ip("192.168.2.1")));
        assert!(net.contains(ip("::ffff:192.168.1.9")), "IPv4-mapped IPv6 counts as IPv4");
        let host: IpNet = "127.0.0.4".parse().unwrap();
        assert!(host.contains(ip("127.0.0.4")) && !host.contains(ip("127.0.0.5")));
        let all: IpNet = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.1")) && !all.contains(ip("::1")));
        let v6: IpNet = "fd00::/8".parse().unwrap();
        assert!(v6.contains(ip("fd12::1")) && !v6.contains(ip("fe80::1")));
        for bad in ["10.0.0.0/33", "nonsense", "::/129", "1.2.3.4/x", ""] {
            assert!(bad.parse::<IpNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn concurrent_calls_per_source_are_capped_until_one_ends() {
        let now = Instant::now();
        let mut admission = admission(2);
        let source = ip("192.0.2.1");
        assert_eq!(admission.admit(source, now), Decision::Admitted);
        assert_eq!(admission.admit(source, now), Decision::Admitted);
        assert_eq!(admission.admit(source, now), Decision::Refused(AdmissionRefusal::TooManyCalls));
        assert_eq!(admission.admit(ip("192.0.2.2"), now), Decision::Admitted);
        admission.release(source, now);
        assert_eq!(admission.active_calls(source), 1);
        assert_eq!(admission.admit(source, now), Decision::Admitted);
    }

    #[test]
    fn trusted_proxies_are_exempt() {
        let now = Instant::now();
        let mut admission = admission(1);
        for _ in 0..100 {
            assert_eq!(admission.admit(ip("10.1.2.3"), now), Decision::Trusted);
            assert_eq!(admission.admit(ip("2001:db8::1"), now), Decision::Trusted);
        }
        assert_eq!(admission.tracked_sources(), 0, "trusted sources are not tracked");
    }

    #[test]
    fn the_table_is_bounded_and_idle_sources_are_forgotten() {
        let start = Instant::now();
        let mut admission = admission(5);
        // A source with a call up is kept; a spray of new sources recycles the idle entries.
        let caller = ip("192.0.2.1");
        assert_eq!(admission.admit(caller, start), Decision::Admitted);
        for i in 0..1000u32 {
            let source = IpAddr::from(std::net::Ipv4Addr::from(0xC633_6400 + i));
            let now = start + Duration::from_millis(u64::from(i));
            assert_eq!(admission.admit(source, now), Decision::Admitted);
            admission.release(source, now);
            assert!(admission.tracked_sources() <= 4);
        }
        assert_eq!(admission.active_calls(caller), 1, "a source with a call up is never evicted");
        // Idle sources are swept.
        admission.admit(caller, start + Duration::from_secs(10));
        assert_eq!(admission.tracked_sources(), 1);
    }

    #[test]
    fn a_table_full_of_sources_with_calls_refuses_new_sources() {
        let now = Instant::now();
        let mut admission = admission(5);
        for i in 1..=4 {
            assert_eq!(admission.admit(ip(&format!("192.0.2.{i}")), now), Decision::Admitted);
        }
        assert_eq!(admission.admit(ip("192.0.2.9"), now), Decision::Refused(AdmissionRefusal::TableFull));
        admission.release(ip("192.0.2.1"), now);
        assert_eq!(admission.admit(ip("192.0.2.9"), now), Decision::Admitted);
    }

    #[test]
    fn zero_disables_a_limit() {
        let now = Instant::now();
        let mut admission = admission(0);
        for _ in 0..1000 {
            assert_eq!(admission.admit(ip("192.0.2.1"), now), Decision::Admitted);
        }
        assert_eq!(admission.tracked_sources(), 0);
    }
}
