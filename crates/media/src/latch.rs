//! Strict RTP: which source may steer a call's media.
//!
//! Symmetric RTP (RFC 4961) says "send to where the caller's RTP comes from", which is what makes
//! callers behind a NAT work. Done naively (follow the source of the last packet) it lets anyone
//! who can reach the port take the call over: one forged packet and the agent's audio goes to the
//! forger, and the forger's audio goes to the agent. [`RtpSourceLatch`] does what Asterisk's
//! `strictrtp` and rtpengine do instead: it learns the caller's source once, drops packets from any
//! other source (they reach neither the agent nor change where we send), and re-learns only on
//! evidence.
//!
//! - **The signalled address** (the SDP's `c=`/`m=`) is trusted on its first packet.
//! - **Any other source** (a caller behind a NAT) is learned after a probation: `probation_packets`
//!   packets in a row from one address with one SSRC and consecutive sequence numbers (RFC 3550
//!   §A.1 uses the same idea, `MIN_SEQUENTIAL`, to validate a new source) paced like a voice stream
//!   rather than fired in a burst, and only when the source
//!   we have is quiet: the signalled address has not been heard within `signalled_priority` of the
//!   answer, or the learned source has been silent for `relearn_silence`. A burst of stray or
//!   forged packets (a spray across the port range, late packets of an old call) never passes.
//! - **The signalled address wins back** from a source learned on probation at its first packet:
//!   the SDP is the caller's own statement, probation is only the fallback for NATs.
//! - **A re-INVITE** that moves the caller's media starts over with the new address
//!   ([`RtpSourceLatch::on_remote_offer`]).
//!
//! Nothing is sent before the dialog is confirmed (ACK) or the caller's media is learned
//! ([`RtpSourceLatch::send_target`]): an INVITE that is never ACKed, with a third party's address
//! in its SDP, cannot aim the gateway's media at that third party.
//!
//! Sans-IO: time is a parameter, the caller does the logging and the metrics from the verdicts and
//! [`LatchStats`].

use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A voice stream sends one packet every 10-60 ms (RFC 3551 §4.2 `ptime`; 20 ms here). Probation
/// packets closer together than this on average are a burst (a spray across the port range, a
/// replay), not a stream, however well their sequence numbers line up.
pub const MIN_STREAM_SPACING: Duration = Duration::from_millis(5);

/// Packets of one voice stream are never this far apart (`ptime` is at most 120 ms), so a longer
/// gap starts the probation again: a source cannot bank packets sent long ago (while the caller
/// talked) and then take a silent call with one more.
pub const MAX_STREAM_GAP: Duration = Duration::from_millis(300);

/// Sources on probation tracked at once, one per address. A stranger's packets interleaved
/// with a caller's must not restart the caller's probation (one shared slot would let a spray
/// of one packet per 20 ms keep a caller behind a NAT from ever being learned), so each address
/// counts on its own. When the table is full, a new address replaces the one heard longest ago
/// among those with a single packet (a single packet is no evidence of a stream yet), else the
/// one heard longest ago. A spray from more distinct addresses than this within one packet
/// interval can still delay a NATed caller's learning (docs/operations.md, "Media security").
pub const CANDIDATE_SLOTS: usize = 8;

/// How strict the latch is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatchConfig {
    /// Packets in a row (one address, one SSRC, consecutive sequence numbers) before a source
    /// other than the signalled address is learned. Asterisk's `probation` default is 4.
    pub probation_packets: u32,
    /// After the answer, how long the signalled address has to send before another source may be
    /// learned in its place (the caller is behind a NAT and its SDP shows a private address).
    pub signalled_priority: Duration,
    /// How long a learned source must have been silent before another stream may take its place.
    pub relearn_silence: Duration,
}

impl Default for LatchConfig {
    fn default() -> Self {
        LatchConfig {
            probation_packets: 4,
            signalled_priority: Duration::from_millis(500),
            relearn_silence: Duration::from_secs(2),
        }
    }
}

/// How the current source was learned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LearnedBy {
    /// It is the address the caller's SDP gave.
    Signalled,
    /// It passed the probation (a NAT in front of the caller, or a re-learn).
    Probation,
}

/// A change of the caller's source, to be logged once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Learned {
    pub source: SocketAddr,
    /// The source it replaces, if one had been learned.
    pub previous: Option<SocketAddr>,
    pub by: LearnedBy,
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Another source while the caller's is active.
    OtherSource,
    /// A new source still on probation (too few packets in a row, or the way is not clear yet).
    Probation,
}

impl IgnoreReason {
    /// A bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            IgnoreReason::OtherSource => "other_source",
            IgnoreReason::Probation => "probation",
        }
    }
}

/// What to do with one received RTP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourceVerdict {
    /// From the caller's source: use it.
    Accept,
    /// From the caller's source, learned with this packet: use it, and log the change.
    Learned(Learned),
    /// Not from the caller: drop it.
    Ignore(IgnoreReason),
}

impl SourceVerdict {
    /// True when the packet is the caller's and goes on to the agent.
    pub fn is_accepted(&self) -> bool {
        !matches!(self, SourceVerdict::Ignore(_))
    }
}

/// Counters the media loop exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatchStats {
    /// Packets from the caller's source.
    pub accepted: u64,
    /// Packets dropped because they came from another source.
    pub ignored: u64,
    /// Times a source was learned (the first time included).
    pub learned: u32,
}

#[derive(Debug, Clone, Copy)]
struct CurrentSource {
    address: SocketAddr,
    by: LearnedBy,
    last_heard: Instant,
}

/// A source on probation: one address, one SSRC, and how many packets in sequence so far.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    address: SocketAddr,
    ssrc: u32,
    last_sequence: u16,
    packets: u32,
    first_seen: Instant,
    last_seen: Instant,
}

/// The caller's RTP source for one call.
#[derive(Debug, Clone)]
pub struct RtpSourceLatch {
    config: LatchConfig,
    /// From the SDP; `None` when it gave no usable address (`c=0.0.0.0`, port 0).
    signalled: Option<SocketAddr>,
    current: Option<CurrentSource>,
    /// The answer (or the last re-INVITE): the signalled address's priority runs from here.
    started: Instant,
    /// Sources on probation, at most [`CANDIDATE_SLOTS`], one per address.
    candidates: Vec<Candidate>,
    confirmed: bool,
    stats: LatchStats,
}

impl RtpSourceLatch {
    /// A latch for a call answered at `now`, whose SDP said the caller receives at `signalled`.
    pub fn new(config: LatchConfig, signalled: SocketAddr, now: Instant) -> RtpSourceLatch {
        RtpSourceLatch {
            config,
            signalled: usable(signalled),
            current: None,
            started: now,
            candidates: Vec::new(),
            confirmed: false,
            stats: LatchStats::default(),
        }
    }

    /// Judges one parsed RTP packet from `source`.
    pub fn on_packet(&mut self, now: Instant, source: SocketAddr, ssrc: u32, sequence: u16) -> SourceVerdict {
        if let Some(current) = self.current.as_mut()
            && current.address == source
        {
            current.last_heard = now;
            self.stats.accepted += 1;
            return SourceVerdict::Accept;
        }
        if self.signalled == Some(source) {
            // The current source, if any, was learned on probation: the SDP's address wins.
            return self.learn(now, source, LearnedBy::Signalled);
        }
        let candidate = self.track_candidate(now, source, ssrc, sequence);
        if !self.way_is_clear(now) {
            return self.ignore(IgnoreReason::OtherSource);
        }
        let paced = now.saturating_duration_since(candidate.first_seen)
            >= MIN_STREAM_SPACING.saturating_mul(candidate.packets.saturating_sub(1));
        if candidate.packets < self.config.probation_packets || !paced {
            return self.ignore(IgnoreReason::Probation);
        }
        self.learn(now, source, LearnedBy::Probation)
    }

    /// The ACK arrived: the dialog is confirmed, so the signalled address may be sent to even
    /// before the caller's first packet.
    pub fn on_dialog_confirmed(&mut self) {
        self.confirmed = true;
    }

    /// A re-INVITE (or UPDATE) moved the caller's media to `signalled`: learn it afresh, with the
    /// signalled address's priority running from `now`.
    pub fn on_remote_offer(&mut self, now: Instant, signalled: SocketAddr) {
        let signalled = usable(signalled);
        if signalled.is_some() && self.current.is_some_and(|c| Some(c.address) == signalled) {
            self.signalled = signalled;
            return;
        }
        self.signalled = signalled;
        self.current = None;
        self.candidates.clear();
        self.started = now;
    }

    /// Where RTP for the caller goes now; `None` while nothing may be sent (no ACK and no packet
    /// from the caller yet, or no usable address at all).
    pub fn send_target(&self) -> Option<SocketAddr> {
        match self.current {
            Some(current) => Some(current.address),
            None if self.confirmed => self.signalled,
            None => None,
        }
    }

    /// The learned source, if any.
    pub fn source(&self) -> Option<SocketAddr> {
        self.current.map(|c| c.address)
    }

    pub fn stats(&self) -> LatchStats {
        self.stats
    }

    /// How the current source was learned, if one was.
    pub fn learned_by(&self) -> Option<LearnedBy> {
        self.current.map(|c| c.by)
    }

    /// Counts `source`'s packet towards its probation (its own slot, see [`CANDIDATE_SLOTS`]).
    fn track_candidate(&mut self, now: Instant, source: SocketAddr, ssrc: u32, sequence: u16) -> Candidate {
        let fresh =
            Candidate { address: source, ssrc, last_sequence: sequence, packets: 1, first_seen: now, last_seen: now };
        if let Some(c) = self.candidates.iter_mut().find(|c| c.address == source) {
            let continues = c.ssrc == ssrc
                && c.last_sequence.wrapping_add(1) == sequence
                && now.saturating_duration_since(c.last_seen) <= MAX_STREAM_GAP;
            if continues {
                c.packets = c.packets.saturating_add(1);
                c.last_sequence = sequence;
                c.last_seen = now;
            } else {
                // Another SSRC, a break in the sequence or a long pause starts the count again.
                *c = fresh;
            }
            return *c;
        }
        if self.candidates.len() < CANDIDATE_SLOTS {
            self.candidates.push(fresh);
            return fresh;
        }
        let single = self.candidates.iter_mut().filter(|c| c.packets == 1).min_by_key(|c| c.last_seen);
        let victim = match single {
            Some(victim) => Some(victim),
            None => self.candidates.iter_mut().min_by_key(|c| c.last_seen),
        };
        if let Some(victim) = victim {
            *victim = fresh;
        }
        fresh
    }

    /// May a source on probation replace the current one now?
    fn way_is_clear(&self, now: Instant) -> bool {
        let (quiet_since, needed) = match (self.current, self.signalled) {
            (Some(current), _) => (current.last_heard, self.config.relearn_silence),
            (None, Some(_)) => (self.started, self.config.signalled_priority),
            (None, None) => return true,
        };
        now.saturating_duration_since(quiet_since) >= needed
    }

    fn learn(&mut self, now: Instant, source: SocketAddr, by: LearnedBy) -> SourceVerdict {
        let previous = self.current.map(|c| c.address);
        self.current = Some(CurrentSource { address: source, by, last_heard: now });
        self.candidates.clear();
        self.stats.accepted += 1;
        self.stats.learned = self.stats.learned.saturating_add(1);
        SourceVerdict::Learned(Learned { source, previous, by })
    }

    fn ignore(&mut self, reason: IgnoreReason) -> SourceVerdict {
        self.stats.ignored += 1;
        SourceVerdict::Ignore(reason)
    }
}

/// RFC 3264 §8.4: `c=0.0.0.0` (old-style hold) or port 0 is no address to send to.
fn usable(address: SocketAddr) -> Option<SocketAddr> {
    (!address.ip().is_unspecified() && address.port() != 0).then_some(address)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "192.0.2.10:4000";
    const NAT: &str = "198.51.100.7:61000";
    const ATTACKER: &str = "203.0.113.66:5000";
    const PTIME: Duration = Duration::from_millis(20);

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A stream from one address and SSRC, one packet every 20 ms, on a virtual clock.
    struct Stream {
        source: SocketAddr,
        ssrc: u32,
        sequence: u16,
    }

    impl Stream {
        fn new(source: &str, ssrc: u32) -> Stream {
            Stream { source: addr(source), ssrc, sequence: 1000 }
        }

        fn send(&mut self, latch: &mut RtpSourceLatch, now: Instant) -> SourceVerdict {
            self.sequence = self.sequence.wrapping_add(1);
            latch.on_packet(now, self.source, self.ssrc, self.sequence)
        }

        /// Sends `count` packets 20 ms apart from `*now`, advancing it; returns the verdicts.
        fn send_many(&mut self, latch: &mut RtpSourceLatch, now: &mut Instant, count: usize) -> Vec<SourceVerdict> {
            (0..count)
                .map(|_| {
                    let verdict = self.send(latch, *now);
                    *now += PTIME;
                    verdict
                })
                .collect()
        }
    }

    fn latch(signalled: &str, t0: Instant) -> RtpSourceLatch {
        RtpSourceLatch::new(LatchConfig::default(), addr(signalled), t0)
    }

    #[test]
    fn nothing_is_sent_before_the_ack_or_the_callers_first_packet() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        assert_eq!(l.send_target(), None, "a spoofed INVITE that is never ACKed aims nothing anywhere");
        l.on_dialog_confirmed();
        assert_eq!(l.send_target(), Some(addr(CALLER)), "after the ACK, the SDP's address");

        let mut early = latch(CALLER, t0);
        let verdict = Stream::new(CALLER, 1).send(&mut early, t0);
        assert_eq!(
            verdict,
            SourceVerdict::Learned(Learned { source: addr(CALLER), previous: None, by: LearnedBy::Signalled })
        );
        assert_eq!(early.send_target(), Some(addr(CALLER)), "the caller's first packet: before the ACK too");
    }

    #[test]
    fn an_unusable_signalled_address_is_never_sent_to() {
        let t0 = Instant::now();
        let mut l = latch("0.0.0.0:4000", t0);
        l.on_dialog_confirmed();
        assert_eq!(l.send_target(), None);
        let mut l = latch("192.0.2.10:0", t0);
        l.on_dialog_confirmed();
        assert_eq!(l.send_target(), None);
    }

    #[test]
    fn a_second_stream_while_the_caller_talks_is_ignored() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        l.on_dialog_confirmed();
        let (mut caller, mut attacker) = (Stream::new(CALLER, 1), Stream::new(ATTACKER, 2));
        let mut now = t0;
        for _ in 0..500 {
            assert!(caller.send(&mut l, now).is_accepted());
            assert_eq!(attacker.send(&mut l, now + PTIME / 2), SourceVerdict::Ignore(IgnoreReason::OtherSource));
            now += PTIME;
        }
        assert_eq!(l.send_target(), Some(addr(CALLER)));
        assert_eq!(l.stats(), LatchStats { accepted: 500, ignored: 500, learned: 1 });
    }

    #[test]
    fn one_packet_while_the_caller_is_silent_is_ignored() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        let mut now = t0;
        Stream::new(CALLER, 1).send_many(&mut l, &mut now, 10);
        // A minute of silence from the caller, then one forged packet (and a few unrelated ones).
        now += Duration::from_secs(60);
        assert_eq!(Stream::new(ATTACKER, 2).send(&mut l, now), SourceVerdict::Ignore(IgnoreReason::Probation));
        for port in 0..100u16 {
            let source = SocketAddr::new(addr(ATTACKER).ip(), 20000 + port);
            assert!(!l.on_packet(now, source, u32::from(port), port).is_accepted());
        }
        assert_eq!(l.send_target(), Some(addr(CALLER)));
    }

    #[test]
    fn a_spray_of_single_packets_never_passes_probation() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        l.on_dialog_confirmed();
        let mut now = t0 + Duration::from_secs(5);
        // The caller never sent (it is behind a NAT): the way is clear, yet nothing passes.
        for i in 0..500u16 {
            let source = SocketAddr::new(addr(ATTACKER).ip(), 20000 + (i % 50) * 2);
            assert!(!l.on_packet(now, source, 7, i).is_accepted(), "packet {i}");
            now += Duration::from_millis(1);
        }
        assert_eq!(l.source(), None);
        assert_eq!(l.send_target(), Some(addr(CALLER)));
        assert_eq!(l.stats().ignored, 500);
    }

    #[test]
    fn a_sustained_stream_takes_over_only_after_the_caller_went_silent() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        let cfg = LatchConfig::default();
        let mut now = t0;
        Stream::new(CALLER, 1).send_many(&mut l, &mut now, 10);
        let last_caller_packet = now - PTIME;
        // A new stream starting at once: the caller was heard just now, so it waits, however long.
        let mut newcomer = Stream::new(NAT, 99);
        let verdicts = newcomer.send_many(&mut l, &mut now, 150);
        let first_taken = verdicts.iter().position(SourceVerdict::is_accepted).unwrap();
        let taken_at = last_caller_packet + cfg.relearn_silence;
        // It has long passed probation, so it is learned with its first packet once the way is clear.
        let expected = taken_at.duration_since(t0 + PTIME * 10).as_millis() / PTIME.as_millis();
        assert_eq!(first_taken as u128, expected);
        assert_eq!(
            verdicts[first_taken],
            SourceVerdict::Learned(Learned {
                source: addr(NAT),
                previous: Some(addr(CALLER)),
                by: LearnedBy::Probation
            })
        );
        assert!(verdicts[first_taken..].iter().all(SourceVerdict::is_accepted));
        assert_eq!(l.send_target(), Some(addr(NAT)));
        assert_eq!(l.stats().learned, 2, "each learn is one event, logged once");
    }

    #[test]
    fn re_learning_needs_probation_packets_in_sequence_with_one_ssrc() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        let mut now = t0;
        Stream::new(CALLER, 1).send_many(&mut l, &mut now, 3);
        now += Duration::from_secs(10);
        let source = addr(NAT);
        let mut tick = || {
            now += PTIME;
            now
        };
        // Three in sequence, then a gap: the count starts again.
        for seq in [1u16, 2, 3, 5, 6, 7] {
            assert!(!l.on_packet(tick(), source, 42, seq).is_accepted(), "seq {seq}");
        }
        // Another SSRC from the same address starts again too.
        assert!(!l.on_packet(tick(), source, 43, 8).is_accepted());
        for seq in [9u16, 10] {
            assert!(!l.on_packet(tick(), source, 43, seq).is_accepted(), "seq {seq}");
        }
        assert!(l.on_packet(tick(), source, 43, 11).is_accepted(), "fourth in a row");
        // Sequence numbers wrap (RFC 3550 §A.1).
        let mut wrapped = latch(CALLER, t0);
        let mut now = t0 + Duration::from_secs(1);
        for seq in [65534u16, 65535, 0] {
            assert!(!wrapped.on_packet(now, source, 5, seq).is_accepted());
            now += PTIME;
        }
        assert!(wrapped.on_packet(now, source, 5, 1).is_accepted());
    }

    #[test]
    fn packets_banked_while_the_caller_talked_do_not_count_later() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        let mut now = t0;
        let (mut caller, mut attacker) = (Stream::new(CALLER, 1), Stream::new(ATTACKER, 2));
        // The attacker sends a well-formed stream while the caller talks: all ignored.
        for _ in 0..10 {
            caller.send(&mut l, now);
            assert!(!attacker.send(&mut l, now + PTIME / 2).is_accepted());
            now += PTIME;
        }
        // The caller goes quiet; a minute later one more packet continues the attacker's sequence.
        now += Duration::from_secs(60);
        assert_eq!(attacker.send(&mut l, now), SourceVerdict::Ignore(IgnoreReason::Probation));
        assert_eq!(l.send_target(), Some(addr(CALLER)));
    }

    #[test]
    fn a_burst_in_sequence_is_not_a_stream() {
        // A spray that gets its sequence numbers right but fires them back to back.
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        let mut now = t0 + Duration::from_secs(10);
        for seq in 0..10u16 {
            assert!(!l.on_packet(now, addr(ATTACKER), 9, seq).is_accepted(), "seq {seq}");
            now += Duration::from_micros(50);
        }
        assert_eq!(l.source(), None);
        // Paced like a voice stream, the same packets pass (the caller never sent).
        let mut paced = latch(CALLER, t0);
        let mut now = t0 + Duration::from_secs(10);
        let verdicts: Vec<bool> = (0..4u16)
            .map(|seq| {
                now += PTIME;
                paced.on_packet(now, addr(ATTACKER), 9, seq).is_accepted()
            })
            .collect();
        assert_eq!(verdicts, [false, false, false, true]);
    }

    #[test]
    fn a_caller_behind_a_nat_is_learned_after_the_signalled_priority() {
        let t0 = Instant::now();
        let mut l = latch("10.0.0.5:4000", t0);
        let cfg = LatchConfig::default();
        let mut now = t0;
        let verdicts = Stream::new(NAT, 5).send_many(&mut l, &mut now, 40);
        let first = verdicts.iter().position(SourceVerdict::is_accepted).unwrap();
        assert_eq!(first as u128, cfg.signalled_priority.as_millis() / PTIME.as_millis());
        assert_eq!(l.send_target(), Some(addr(NAT)));
        assert_eq!(l.learned_by(), Some(LearnedBy::Probation));
    }

    /// The NAT case of docs/configuration.md ("Behind NAT"): the SDP names a private address that
    /// never sends, the caller's packets come from its NAT's public address, and a stranger sprays
    /// single packets (random SSRC and sequence, 1 ms apart) across the same port the whole time.
    /// The caller is learned once its probation and the signalled priority are over; the stranger
    /// never is, before or after.
    #[test]
    fn a_natted_caller_is_learned_while_a_stranger_sprays_the_port() {
        let t0 = Instant::now();
        let mut l = latch("10.0.0.5:4000", t0);
        l.on_dialog_confirmed();
        let cfg = LatchConfig::default();
        let mut caller = Stream::new(NAT, 5);
        let mut now = t0;
        let mut caller_accepted = Vec::new();
        let mut spray = 0u32;
        for _ in 0..100 {
            caller_accepted.push(caller.send(&mut l, now).is_accepted());
            // Twenty stranger packets between two of the caller's.
            for k in 1..20u32 {
                spray += 1;
                let source = SocketAddr::new(addr(ATTACKER).ip(), 5000 + (spray % 7) as u16);
                let ssrc = spray.wrapping_mul(2_654_435_761);
                let sequence = (spray.wrapping_mul(40_503) % 65_536) as u16;
                let verdict = l.on_packet(now + Duration::from_millis(u64::from(k)), source, ssrc, sequence);
                assert!(!verdict.is_accepted(), "stranger packet {spray} accepted");
            }
            now += PTIME;
        }
        let first = caller_accepted.iter().position(|a| *a).unwrap();
        assert_eq!(first as u128, cfg.signalled_priority.as_millis() / PTIME.as_millis());
        assert!(caller_accepted[first..].iter().all(|a| *a), "once learned, every caller packet passes");
        assert_eq!(l.send_target(), Some(addr(NAT)));
        assert_eq!(l.learned_by(), Some(LearnedBy::Probation));
    }

    /// The probation table stays bounded under a spray from ever new addresses, and a stream that
    /// has shown two packets in sequence is not pushed out by single packets.
    #[test]
    fn a_spray_from_many_addresses_neither_grows_the_table_nor_evicts_a_stream() {
        let t0 = Instant::now();
        let mut l = latch("10.0.0.5:4000", t0);
        let mut caller = Stream::new(NAT, 5);
        let mut now = t0;
        caller.send_many(&mut l, &mut now, 2);
        let mut port = 1024u16;
        let mut accepted = false;
        for _ in 0..50 {
            for k in 0..50u64 {
                port = port.wrapping_add(1).max(1024);
                let source = SocketAddr::new(addr(ATTACKER).ip(), port);
                let verdict = l.on_packet(now + Duration::from_micros(k * 300), source, u32::from(port), port);
                assert!(!verdict.is_accepted());
                assert!(l.candidates.len() <= CANDIDATE_SLOTS);
            }
            accepted = caller.send(&mut l, now + PTIME - Duration::from_micros(100)).is_accepted();
            now += PTIME;
            if accepted {
                break;
            }
        }
        assert!(accepted, "the caller's stream was learned");
        assert_eq!(l.send_target(), Some(addr(NAT)));
    }

    #[test]
    fn an_old_stream_on_a_reused_port_loses_to_the_new_caller() {
        // After a restart, a new call gets the port an orphaned call's caller still streams to.
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        l.on_dialog_confirmed();
        let mut now = t0;
        let mut old = Stream::new(ATTACKER, 77);
        // The new caller's first packet comes within the priority window: the old stream never counts.
        assert!(old.send_many(&mut l, &mut now, 10).iter().all(|v| !v.is_accepted()));
        assert!(Stream::new(CALLER, 1).send(&mut l, now).is_accepted());
        assert_eq!(l.send_target(), Some(addr(CALLER)));
        // Even if the new caller is late and the old stream was learned, the caller wins it back
        // with its first packet.
        let mut late = latch(CALLER, t0);
        let mut now = t0;
        old.send_many(&mut late, &mut now, 40);
        assert_eq!(late.send_target(), Some(addr(ATTACKER)));
        let verdict = Stream::new(CALLER, 1).send(&mut late, now);
        assert_eq!(
            verdict,
            SourceVerdict::Learned(Learned {
                source: addr(CALLER),
                previous: Some(addr(ATTACKER)),
                by: LearnedBy::Signalled
            })
        );
        assert_eq!(old.send(&mut late, now + PTIME), SourceVerdict::Ignore(IgnoreReason::OtherSource));
    }

    #[test]
    fn without_a_signalled_address_the_first_stream_is_learned() {
        let t0 = Instant::now();
        let mut l = latch("0.0.0.0:0", t0);
        let mut now = t0;
        let verdicts = Stream::new(NAT, 5).send_many(&mut l, &mut now, 4);
        assert_eq!(verdicts.iter().filter(|v| v.is_accepted()).count(), 1);
        assert_eq!(l.send_target(), Some(addr(NAT)));
    }

    #[test]
    fn a_re_invite_moves_the_caller() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        l.on_dialog_confirmed();
        let mut now = t0;
        Stream::new(CALLER, 1).send_many(&mut l, &mut now, 5);
        let moved = "192.0.2.20:6000";
        l.on_remote_offer(now, addr(moved));
        assert_eq!(l.send_target(), Some(addr(moved)));
        assert!(!Stream::new(CALLER, 1).send(&mut l, now).is_accepted(), "the old address is a stranger now");
        assert!(Stream::new(moved, 2).send(&mut l, now).is_accepted());
        // Same address again: nothing changes.
        l.on_remote_offer(now, addr(moved));
        assert_eq!(l.source(), Some(addr(moved)));
    }

    #[test]
    fn the_same_address_with_a_new_ssrc_is_still_the_caller() {
        let t0 = Instant::now();
        let mut l = latch(CALLER, t0);
        assert!(l.on_packet(t0, addr(CALLER), 1, 10).is_accepted());
        assert_eq!(l.on_packet(t0 + PTIME, addr(CALLER), 2, 500), SourceVerdict::Accept);
    }
}
