//! RTCP for one leg (sans-IO): our reports every `media.rtcp_interval_secs` (RFC 3550 §6.2,
//! randomised by ±50 % as §6.3.1 asks so calls started together do not report together), and what
//! the peer's SR/RR tell us: round-trip time (§6.4.1, A - LSR - DLSR) and how it receives us.
//!
//! We send RTP, so our report is an SR (§6.4: an SR carries the reception report block too),
//! which is also what lets the peer's next report carry the LSR/DLSR the round trip needs.
//! Every compound packet ends with an SDES CNAME (§6.1); the CNAME is derived from our random
//! SSRC (RFC 7022 asks for a per-session random one; no address or name of ours is revealed).

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use switchboard_media::jitter::ReceptionReport;
use switchboard_media::rtcp::{self, ReportBlock, RtcpPacket, SenderInfo};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// What the peer's reports said, for the end-of-call line and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtcpStats {
    pub sent: u64,
    pub received: u64,
    /// Compound packets that did not parse (counted, ignored).
    pub malformed: u64,
    /// Round-trip time of the latest report that carried one, and the largest.
    pub rtt: Option<Duration>,
    pub rtt_max: Option<Duration>,
    /// The peer's view of our stream, from its latest report block about our SSRC.
    pub remote_fraction_lost: u8,
    pub remote_cumulative_lost: i32,
    /// In the peer's timestamp units (our clock rate).
    pub remote_jitter: u32,
}

/// The RTCP state of one leg.
#[derive(Debug)]
pub struct Reports {
    interval: Duration,
    ssrc: u32,
    cname: String,
    /// Our NTP clock: the wall clock read once when the leg starts, advanced by `Instant`s (only
    /// differences of it matter to the round trip, and the call's decisions never depend on it).
    ntp_base: u64,
    started: Instant,
    next_due: Instant,
    /// xorshift state for the interval's randomisation, seeded from our SSRC.
    random: u64,
    /// Middle 32 bits of the NTP timestamp of the peer's last SR, and when it arrived.
    last_peer_sr: Option<(u32, Instant)>,
    /// Where the peer's RTCP comes from (symmetric RTCP, RFC 4961), once it has sent some.
    peer_source: Option<SocketAddr>,
    sent_packets: u32,
    sent_octets: u32,
    stats: RtcpStats,
}

impl Reports {
    /// `interval` zero: RTCP off (nothing sent; what arrives is still read).
    pub fn new(now: Instant, interval: Duration, ssrc: u32) -> Reports {
        let unix = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ntp_base = to_ntp(Duration::from_secs(NTP_UNIX_OFFSET_SECS) + unix);
        let mut reports = Reports {
            interval,
            ssrc,
            cname: format!("{ssrc:08x}@switchboard"),
            ntp_base,
            started: now,
            next_due: now,
            random: u64::from(ssrc) | 1 << 40,
            last_peer_sr: None,
            peer_source: None,
            sent_packets: 0,
            sent_octets: 0,
            stats: RtcpStats::default(),
        };
        // RFC 3550 §6.2: the first report after half an interval.
        reports.next_due = now + reports.randomised(interval / 2);
        reports
    }

    /// When our next report is due (`None`: RTCP off).
    pub fn next_due(&self) -> Option<Instant> {
        (!self.interval.is_zero()).then_some(self.next_due)
    }

    /// One RTP packet of ours went out.
    pub fn on_rtp_sent(&mut self, payload_len: usize) {
        self.sent_packets = self.sent_packets.wrapping_add(1);
        self.sent_octets = self.sent_octets.wrapping_add(u32::try_from(payload_len).unwrap_or(u32::MAX));
    }

    /// Our compound report, if one is due at `now`: written to `out`, sent to `rtp_target`'s
    /// port + 1 (RFC 3550 §11) unless the peer's RTCP came from elsewhere. `reception` is the
    /// jitter buffer's block for the peer's stream; `rtp_timestamp` our stream's timestamp for
    /// `now`.
    pub fn poll(
        &mut self,
        now: Instant,
        rtp_target: Option<SocketAddr>,
        reception: Option<ReceptionReport>,
        rtp_timestamp: u32,
        out: &mut Vec<u8>,
    ) -> Option<SocketAddr> {
        if self.interval.is_zero() || now < self.next_due {
            return None;
        }
        self.next_due = now + self.randomised(self.interval);
        let destination = self.peer_source.or_else(|| {
            rtp_target.map(|rtp| SocketAddr::new(rtp.ip(), rtp.port().checked_add(1).unwrap_or(rtp.port())))
        })?;
        let blocks: Vec<ReportBlock> = reception
            .map(|r| {
                let (last_sr, delay_since_last_sr) = match self.last_peer_sr {
                    Some((lsr, at)) => (lsr, (to_ntp(now.saturating_duration_since(at)) >> 16) as u32),
                    None => (0, 0),
                };
                ReportBlock {
                    ssrc: r.ssrc,
                    fraction_lost: r.fraction_lost,
                    cumulative_lost: r.cumulative_lost,
                    extended_highest: r.extended_highest,
                    jitter: r.jitter,
                    last_sr,
                    delay_since_last_sr,
                }
            })
            .into_iter()
            .collect();
        let sender =
            SenderInfo { ntp: self.ntp(now), rtp_timestamp, packets: self.sent_packets, octets: self.sent_octets };
        rtcp::write_report(out, self.ssrc, Some(&sender), &blocks, &self.cname);
        self.stats.sent += 1;
        Some(destination)
    }

    /// A compound RTCP packet from the peer (the caller checked where it came from). Returns the
    /// round-trip time it gave, if any.
    pub fn on_packet(&mut self, now: Instant, source: SocketAddr, datagram: &[u8]) -> Option<Duration> {
        let Ok(packets) = rtcp::parse_compound(datagram) else {
            self.stats.malformed += 1;
            return None;
        };
        self.stats.received += 1;
        self.peer_source = Some(source);
        let mut rtt = None;
        for packet in packets {
            let reports = match packet {
                RtcpPacket::SenderReport { sender, reports, .. } => {
                    self.last_peer_sr = Some((rtcp::ntp_middle(sender.ntp), now));
                    reports
                }
                RtcpPacket::ReceiverReport { reports, .. } => reports,
                RtcpPacket::Other { .. } => continue,
            };
            for block in reports.iter().filter(|block| block.ssrc == self.ssrc) {
                self.stats.remote_fraction_lost = block.fraction_lost;
                self.stats.remote_cumulative_lost = block.cumulative_lost;
                self.stats.remote_jitter = block.jitter;
                if let Some(measured) = rtcp::round_trip(block, self.ntp(now)) {
                    self.stats.rtt = Some(measured);
                    self.stats.rtt_max = self.stats.rtt_max.max(Some(measured));
                    rtt = Some(measured);
                }
            }
        }
        rtt
    }

    pub fn stats(&self) -> RtcpStats {
        self.stats
    }

    fn ntp(&self, now: Instant) -> u64 {
        self.ntp_base.wrapping_add(to_ntp(now.saturating_duration_since(self.started)))
    }

    /// `base` times a factor in 0.5..1.5.
    fn randomised(&mut self, base: Duration) -> Duration {
        self.random ^= self.random << 13;
        self.random ^= self.random >> 7;
        self.random ^= self.random << 17;
        let factor = 0.5 + (self.random % 1000) as f64 / 1000.0;
        base.mul_f64(factor)
    }
}

/// A duration as 32.32 fixed-point NTP seconds.
fn to_ntp(duration: Duration) -> u64 {
    (duration.as_secs() << 32) | ((u64::from(duration.subsec_nanos()) << 32) / 1_000_000_000)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn peer() -> SocketAddr {
        "192.0.2.10:40000".parse().unwrap()
    }

    #[test]
    fn reports_are_sent_every_interval_to_rtp_port_plus_one_with_our_sr() {
        let t0 = Instant::now();
        let mut reports = Reports::new(t0, Duration::from_secs(5), 0xABCD);
        assert!(reports.next_due().unwrap() <= t0 + Duration::from_millis(3750));
        let mut out = Vec::new();
        assert_eq!(reports.poll(t0, Some(peer()), None, 0, &mut out), None, "not due yet");
        let mut sent_at = Vec::new();
        let mut now = t0;
        while now < t0 + Duration::from_secs(60) {
            now += Duration::from_millis(100);
            reports.on_rtp_sent(160);
            out.clear();
            if let Some(to) = reports.poll(now, Some(peer()), None, 1234, &mut out) {
                assert_eq!(to, "192.0.2.10:40001".parse().unwrap());
                sent_at.push(now);
                let packets = rtcp::parse_compound(&out).unwrap();
                let RtcpPacket::SenderReport { ssrc, sender, .. } = &packets[0] else { panic!("{packets:?}") };
                assert_eq!((*ssrc, sender.rtp_timestamp), (0xABCD, 1234));
                assert_eq!(sender.octets, sender.packets * 160);
            }
        }
        // 60 s at 5 s +-50 %: 8 to 24 reports, no two closer than 2.5 s.
        assert!((8..=24).contains(&sent_at.len()), "{}", sent_at.len());
        assert!(sent_at.windows(2).all(|w| w[1] - w[0] >= Duration::from_millis(2500)));
        assert_eq!(reports.stats().sent, sent_at.len() as u64);
    }

    #[test]
    fn the_peers_rr_gives_the_round_trip_of_our_sr_and_its_view_of_our_stream() {
        let t0 = Instant::now();
        let mut reports = Reports::new(t0, Duration::from_secs(5), 0xABCD);
        let mut out = Vec::new();
        let now = reports.next_due().unwrap();
        reports.poll(now, Some(peer()), None, 0, &mut out).unwrap();
        let RtcpPacket::SenderReport { sender, .. } = rtcp::parse_compound(&out).unwrap()[0].clone() else { panic!() };
        // The peer answers 300 ms later, having held our SR 200 ms: RTT 100 ms.
        let block = ReportBlock {
            ssrc: 0xABCD,
            fraction_lost: 26,
            cumulative_lost: 7,
            extended_highest: 500,
            jitter: 96,
            last_sr: rtcp::ntp_middle(sender.ntp),
            delay_since_last_sr: (65_536 * 2) / 10,
        };
        let mut rr = Vec::new();
        rtcp::write_report(&mut rr, 0x5555, None, &[block], "peer");
        let rtt =
            reports.on_packet(now + Duration::from_millis(300), "192.0.2.10:40009".parse().unwrap(), &rr).unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(100)) < Duration::from_millis(1), "{rtt:?}");
        let stats = reports.stats();
        assert_eq!((stats.remote_fraction_lost, stats.remote_cumulative_lost, stats.remote_jitter), (26, 7, 96));
        assert_eq!(stats.received, 1);
        // Symmetric RTCP: the next report goes where the peer's came from.
        out.clear();
        let later = reports.next_due().unwrap();
        assert_eq!(reports.poll(later, Some(peer()), None, 0, &mut out), Some("192.0.2.10:40009".parse().unwrap()));
        // Garbage is counted, not trusted.
        assert_eq!(reports.on_packet(later, peer(), &[0x80, 201, 0, 9]), None);
        assert_eq!(reports.stats().malformed, 1);
    }

    #[test]
    fn our_block_carries_lsr_and_dlsr_of_the_peers_sr() {
        let t0 = Instant::now();
        let mut reports = Reports::new(t0, Duration::from_secs(5), 1);
        let peer_sr = SenderInfo { ntp: (3_900_000_000u64 << 32) | (1 << 31), ..SenderInfo::default() };
        let mut sr = Vec::new();
        rtcp::write_report(&mut sr, 0x5555, Some(&peer_sr), &[], "peer");
        assert_eq!(reports.on_packet(t0, peer(), &sr), None, "no block about us: no RTT");
        let due = reports.next_due().unwrap();
        let reception =
            ReceptionReport { ssrc: 0x5555, fraction_lost: 0, cumulative_lost: 0, extended_highest: 9, jitter: 3 };
        let mut out = Vec::new();
        reports.poll(due, None, Some(reception), 0, &mut out).unwrap();
        let RtcpPacket::SenderReport { reports: blocks, .. } = &rtcp::parse_compound(&out).unwrap()[0] else {
            panic!()
        };
        assert_eq!(blocks[0].last_sr, rtcp::ntp_middle(peer_sr.ntp));
        let held = Duration::from_micros(u64::from(blocks[0].delay_since_last_sr) * 1_000_000 / 65_536);
        assert!(held.abs_diff(due - t0) < Duration::from_millis(1));
    }
}
