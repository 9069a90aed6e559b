//! RTCP (RFC 3550 §6): the sender and receiver reports a call exchanges with its peer, and the
//! SDES CNAME every compound packet carries (§6.1).
//!
//! The parser takes hostile bytes: it never panics, never allocates more than the datagram
//! allows (at most 31 report blocks per packet, by the 5-bit count), and rejects a compound
//! packet whose lengths do not add up (§6.1, A.2 validity checks) rather than guessing.

use thiserror::Error;

/// RTCP packet types (RFC 3550 §12.1).
pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
/// SDES item type CNAME (§6.5.1).
const SDES_CNAME: u8 = 1;
/// Size of one report block (§6.4.1).
const REPORT_BLOCK_LEN: usize = 24;
/// Most report blocks one SR/RR can carry (a 5-bit count).
pub const MAX_REPORT_BLOCKS: usize = 31;

/// Why a datagram is not a valid RTCP compound packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP packet of {len} bytes is shorter than its 4-byte header")]
    TooShort { len: usize },
    #[error("unsupported RTCP version {0}")]
    UnsupportedVersion(u8),
    #[error("RTCP packet length {words} words runs past the end of a {len}-byte datagram")]
    Truncated { words: usize, len: usize },
    #[error("RTCP {kind} with {count} report blocks does not fit its {len}-byte packet")]
    BadReportCount { kind: &'static str, count: usize, len: usize },
    #[error("a compound RTCP packet must start with SR or RR, not type {0} (RFC 3550 §6.1)")]
    NotAReportFirst(u8),
}

/// One reception report block (§6.4.1): what the reporter received from `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed).
    pub cumulative_lost: i32,
    pub extended_highest: u32,
    /// Interarrival jitter, in timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from `ssrc` (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// The sender information of an SR (§6.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    /// NTP timestamp, 32.32 fixed point seconds.
    pub ntp: u64,
    pub rtp_timestamp: u32,
    pub packets: u32,
    pub octets: u32,
}

/// One packet of a compound RTCP datagram, as far as the gateway reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        sender: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    /// SDES, BYE, APP, feedback...: read past.
    Other {
        packet_type: u8,
    },
}

/// The middle 32 bits of an NTP timestamp (the LSR / RTT unit, 1/65536 s).
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// Round-trip time from a report block about our stream, received when our NTP clock read
/// `now_ntp` (§6.4.1: A - LSR - DLSR). `None` if the peer has not received an SR of ours yet, or
/// the figures are inconsistent (a negative time).
pub fn round_trip(block: &ReportBlock, now_ntp: u64) -> Option<std::time::Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let rtt = ntp_middle(now_ntp).wrapping_sub(block.last_sr).wrapping_sub(block.delay_since_last_sr);
    // More than half the 16.16 range is a negative difference, not a 9-hour round trip.
    if rtt >= 1 << 31 {
        return None;
    }
    Some(std::time::Duration::from_micros(u64::from(rtt) * 1_000_000 / 65_536))
}

/// Parses a compound RTCP datagram.
pub fn parse_compound(datagram: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut packets = Vec::new();
    let mut rest = datagram;
    while !rest.is_empty() {
        let Some((header, after_header)) = rest.split_first_chunk::<4>() else {
            return Err(RtcpError::TooShort { len: rest.len() });
        };
        let [first, packet_type, len_hi, len_lo] = *header;
        let version = first >> 6;
        if version != 2 {
            return Err(RtcpError::UnsupportedVersion(version));
        }
        let count = usize::from(first & 0x1F);
        let words = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let Some((body, next)) = after_header.split_at_checked(words * 4) else {
            return Err(RtcpError::Truncated { words, len: datagram.len() });
        };
        if packets.is_empty() && packet_type != PT_SR && packet_type != PT_RR {
            return Err(RtcpError::NotAReportFirst(packet_type));
        }
        packets.push(parse_packet(packet_type, count, body)?);
        rest = next;
    }
    if packets.is_empty() {
        return Err(RtcpError::TooShort { len: 0 });
    }
    Ok(packets)
}

fn parse_packet(packet_type: u8, count: usize, body: &[u8]) -> Result<RtcpPacket, RtcpError> {
    match packet_type {
        PT_SR => {
            let bad = || RtcpError::BadReportCount { kind: "SR", count, len: body.len() };
            let (ssrc, rest) = read_u32(body).ok_or_else(bad)?;
            let (ntp_hi, rest) = read_u32(rest).ok_or_else(bad)?;
            let (ntp_lo, rest) = read_u32(rest).ok_or_else(bad)?;
            let (rtp_timestamp, rest) = read_u32(rest).ok_or_else(bad)?;
            let (packets, rest) = read_u32(rest).ok_or_else(bad)?;
            let (octets, rest) = read_u32(rest).ok_or_else(bad)?;
            let sender =
                SenderInfo { ntp: (u64::from(ntp_hi) << 32) | u64::from(ntp_lo), rtp_timestamp, packets, octets };
            let reports = parse_blocks(count, rest).ok_or_else(bad)?;
            Ok(RtcpPacket::SenderReport { ssrc, sender, reports })
        }
        PT_RR => {
            let bad = || RtcpError::BadReportCount { kind: "RR", count, len: body.len() };
            let (ssrc, rest) = read_u32(body).ok_or_else(bad)?;
            let reports = parse_blocks(count, rest).ok_or_else(bad)?;
            Ok(RtcpPacket::ReceiverReport { ssrc, reports })
        }
        other => Ok(RtcpPacket::Other { packet_type: other }),
    }
}

/// `count` report blocks; profile-specific extensions after them are ignored (§6.4.1).
fn parse_blocks(count: usize, mut rest: &[u8]) -> Option<Vec<ReportBlock>> {
    if rest.len() < count * REPORT_BLOCK_LEN {
        return None;
    }
    let mut blocks = Vec::with_capacity(count.min(MAX_REPORT_BLOCKS));
    for _ in 0..count {
        let (block, next) = rest.split_first_chunk::<REPORT_BLOCK_LEN>()?;
        let word = |i: usize| block.get(i * 4..i * 4 + 4).and_then(|b| b.try_into().ok()).map_or(0, u32::from_be_bytes);
        let lost_word = word(1);
        // 24-bit two's complement.
        let cumulative_lost = ((lost_word << 8) as i32) >> 8;
        blocks.push(ReportBlock {
            ssrc: word(0),
            fraction_lost: (lost_word >> 24) as u8,
            cumulative_lost,
            extended_highest: word(2),
            jitter: word(3),
            last_sr: word(4),
            delay_since_last_sr: word(5),
        });
        rest = next;
    }
    Some(blocks)
}

fn read_u32(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let (word, rest) = bytes.split_first_chunk::<4>()?;
    Some((u32::from_be_bytes(*word), rest))
}

/// Appends a compound packet: an SR (when `sender` is given: we sent RTP since the last report,
/// §6.4) or else an RR, from `ssrc`, with `blocks` (at most [`MAX_REPORT_BLOCKS`] are written),
/// then an SDES with our CNAME (§6.1: every compound packet carries one).
pub fn write_report(out: &mut Vec<u8>, ssrc: u32, sender: Option<&SenderInfo>, blocks: &[ReportBlock], cname: &str) {
    let blocks = blocks.get(..blocks.len().min(MAX_REPORT_BLOCKS)).unwrap_or_default();
    let words = 1 + if sender.is_some() { 5 } else { 0 } + blocks.len() * 6;
    let packet_type = if sender.is_some() { PT_SR } else { PT_RR };
    out.push(0x80 | blocks.len() as u8);
    out.push(packet_type);
    out.extend_from_slice(&(words as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    if let Some(sender) = sender {
        out.extend_from_slice(&sender.ntp.to_be_bytes());
        out.extend_from_slice(&sender.rtp_timestamp.to_be_bytes());
        out.extend_from_slice(&sender.packets.to_be_bytes());
        out.extend_from_slice(&sender.octets.to_be_bytes());
    }
    for block in blocks {
        out.extend_from_slice(&block.ssrc.to_be_bytes());
        let lost = (block.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
        out.extend_from_slice(&((u32::from(block.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&block.extended_highest.to_be_bytes());
        out.extend_from_slice(&block.jitter.to_be_bytes());
        out.extend_from_slice(&block.last_sr.to_be_bytes());
        out.extend_from_slice(&block.delay_since_last_sr.to_be_bytes());
    }
    // SDES: one chunk (SSRC, CNAME item, a null item, padding to a 32-bit boundary).
    let cname = cname.as_bytes().get(..cname.len().min(255)).unwrap_or_default();
    let chunk_len = 4 + 2 + cname.len() + 1;
    let padded = chunk_len.div_ceil(4) * 4;
    out.push(0x81);
    out.push(PT_SDES);
    out.extend_from_slice(&((padded / 4) as u16).to_be_bytes());
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.push(SDES_CNAME);
    out.push(cname.len() as u8);
    out.extend_from_slice(cname);
    out.resize(out.len() + (padded - chunk_len) + 1, 0);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0xCAFE,
            fraction_lost: 64,
            cumulative_lost: -3,
            extended_highest: (2 << 16) | 17,
            jitter: 80,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    #[test]
    fn what_we_write_parses_back() {
        let sender = SenderInfo { ntp: 0xE000_0000_8000_0000, rtp_timestamp: 160, packets: 50, octets: 8000 };
        for cname in ["", "a", "switchboard", &"x".repeat(300)] {
            for with_sender in [false, true] {
                let mut out = Vec::new();
                write_report(&mut out, 0xBEEF, with_sender.then_some(&sender), &[block()], cname);
                assert_eq!(out.len() % 4, 0, "32-bit aligned");
                let packets = parse_compound(&out).unwrap();
                assert_eq!(packets.len(), 2);
                match &packets[0] {
                    RtcpPacket::SenderReport { ssrc, sender: info, reports } => {
                        assert!(with_sender);
                        assert_eq!((*ssrc, *info, reports.as_slice()), (0xBEEF, sender, &[block()][..]));
                    }
                    RtcpPacket::ReceiverReport { ssrc, reports } => {
                        assert!(!with_sender);
                        assert_eq!((*ssrc, reports.as_slice()), (0xBEEF, &[block()][..]));
                    }
                    other => panic!("{other:?}"),
                }
                assert_eq!(packets[1], RtcpPacket::Other { packet_type: PT_SDES });
                // The SDES chunk ends with a null item inside the packet.
                assert_eq!(*out.last().unwrap(), 0);
            }
        }
    }

    #[test]
    fn round_trip_time_from_lsr_and_dlsr() {
        // We sent an SR at NTP 100.0 s; the peer held it 0.5 s; its RR arrives at 100.75 s.
        let sent_ntp = 100u64 << 32;
        let block = ReportBlock { last_sr: ntp_middle(sent_ntp), delay_since_last_sr: 0x8000, ..block() };
        let now = (100u64 << 32) | (3u64 << 30); // 100.75 s
        assert_eq!(round_trip(&block, now), Some(std::time::Duration::from_millis(250)));
        assert_eq!(round_trip(&ReportBlock { last_sr: 0, ..block }, now), None, "no SR of ours received");
        let early = (100u64 << 32) | (1u64 << 30); // before the DLSR could have passed
        assert_eq!(round_trip(&block, early), None);
    }

    #[test]
    fn a_crafted_sender_report_from_a_peer_parses() {
        // An SR with one report block followed by SDES and BYE, as a softphone sends it.
        let mut bytes = vec![0x81, 200, 0, 12];
        bytes.extend_from_slice(&0x0102_0304u32.to_be_bytes());
        bytes.extend_from_slice(&[0xE8, 0, 0, 0, 0x40, 0, 0, 0]); // NTP
        bytes.extend_from_slice(&[0, 0, 0x0A, 0, 0, 0, 0, 5, 0, 0, 3, 0x20]);
        bytes.extend_from_slice(&[0, 0, 0xBE, 0xEF, 0x0A, 0xFF, 0xFF, 0xFE, 0, 1, 0, 9, 0, 0, 0, 40]);
        bytes.extend_from_slice(&[0x12, 0x34, 0x56, 0x78, 0, 0, 0x80, 0]);
        bytes.extend_from_slice(&[0x81, 202, 0, 2, 1, 2, 3, 4, 1, 1, b'p', 0]);
        bytes.extend_from_slice(&[0x81, 203, 0, 1, 1, 2, 3, 4]);
        let packets = parse_compound(&bytes).unwrap();
        let RtcpPacket::SenderReport { ssrc, sender, reports } = &packets[0] else { panic!() };
        assert_eq!(*ssrc, 0x0102_0304);
        assert_eq!(sender.ntp, 0xE800_0000_4000_0000);
        assert_eq!((sender.rtp_timestamp, sender.packets, sender.octets), (0x0A00, 5, 0x320));
        assert_eq!(reports[0].ssrc, 0xBEEF);
        assert_eq!(reports[0].fraction_lost, 10);
        assert_eq!(reports[0].cumulative_lost, -2);
        assert_eq!(reports[0].extended_highest, 0x0001_0009);
        assert_eq!(reports[0].last_sr, 0x1234_5678);
        assert_eq!(packets[1..], [RtcpPacket::Other { packet_type: 202 }, RtcpPacket::Other { packet_type: 203 }]);
    }

    #[test]
    fn malformed_packets_are_errors_not_panics() {
        assert!(parse_compound(&[]).is_err());
        assert!(parse_compound(&[0x80, 201, 0]).is_err());
        assert_eq!(parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 0]), Err(RtcpError::UnsupportedVersion(1)));
        // Length beyond the datagram.
        assert!(matches!(parse_compound(&[0x80, 201, 0, 9, 0, 0, 0, 0]), Err(RtcpError::Truncated { .. })));
        // A report count the packet cannot hold.
        assert!(matches!(parse_compound(&[0x85, 201, 0, 1, 0, 0, 0, 0]), Err(RtcpError::BadReportCount { .. })));
        // SDES first.
        assert_eq!(parse_compound(&[0x81, 202, 0, 0]), Err(RtcpError::NotAReportFirst(202)));
        // Every prefix of a valid packet: no panic.
        let mut out = Vec::new();
        write_report(&mut out, 1, Some(&SenderInfo::default()), &[block(); 3], "cname");
        for len in 0..out.len() {
            let _ = parse_compound(&out[..len]);
        }
    }
}
