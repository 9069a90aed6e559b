//! Reads the classic pcap files tshark writes, down to UDP payloads and RTP headers. Written
//! independently of the gateway's own RTP code, so a capture is an outside judge.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;

#[derive(Debug, Clone)]
pub struct UdpPacket {
    /// Capture time, microseconds since the Unix epoch (same clock as the simulator's log).
    pub time_us: i64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct RtpPacket {
    pub time_us: i64,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload_type: u8,
    pub marker: bool,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
    pub payload: Vec<u8>,
}

/// All IPv4 UDP packets in the file.
pub fn read_udp(path: &Path) -> Vec<UdpPacket> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(data.len() >= 24, "pcap too short");
    let magic = u32::from_le_bytes([data[0], data[1], data[2], data[3]]);
    let (nanos, le) = match magic {
        0xa1b2c3d4 => (false, true),
        0xa1b23c4d => (true, true),
        0xd4c3b2a1 => (false, false),
        0x4d3cb2a1 => (true, false),
        other => panic!("not a classic pcap file (magic {other:#x}); capture with -F pcap"),
    };
    let u32_at = |b: &[u8], at: usize| {
        let bytes = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le { u32::from_le_bytes(bytes) } else { u32::from_be_bytes(bytes) }
    };
    let link = u32_at(&data, 20);
    let mut packets = Vec::new();
    let mut at = 24;
    while at + 16 <= data.len() {
        let secs = i64::from(u32_at(&data, at));
        let frac = i64::from(u32_at(&data, at + 4));
        let caplen = u32_at(&data, at + 8) as usize;
        let frame_start = at + 16;
        at = frame_start + caplen;
        if at > data.len() {
            break;
        }
        let frame = &data[frame_start..at];
        let time_us = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        let ip = match link {
            1 if frame.len() > 14 && frame[12..14] == [0x08, 0x00] => &frame[14..], // Ethernet, IPv4
            113 if frame.len() > 16 && frame[14..16] == [0x08, 0x00] => &frame[16..], // Linux cooked
            _ => continue,
        };
        if ip.len() < 20 || ip[0] >> 4 != 4 || ip[9] != 17 {
            continue;
        }
        let ihl = usize::from(ip[0] & 0x0f) * 4;
        if ip.len() < ihl + 8 {
            continue;
        }
        let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
        let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
        let udp = &ip[ihl..];
        let src_port = u16::from_be_bytes([udp[0], udp[1]]);
        let dst_port = u16::from_be_bytes([udp[2], udp[3]]);
        let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]])).min(udp.len());
        packets.push(UdpPacket {
            time_us,
            src: SocketAddr::V4(SocketAddrV4::new(src_ip, src_port)),
            dst: SocketAddr::V4(SocketAddrV4::new(dst_ip, dst_port)),
            payload: udp[8..udp_len.max(8)].to_vec(),
        });
    }
    packets
}

/// The RTP packets (version 2, not RTCP) among the UDP packets.
pub fn read_rtp(path: &Path) -> Vec<RtpPacket> {
    read_udp(path)
        .into_iter()
        .filter_map(|p| {
            let b = &p.payload;
            if b.len() < 12 || b[0] >> 6 != 2 || (200..=204).contains(&b[1]) {
                return None;
            }
            let header_len = 12 + usize::from(b[0] & 0x0f) * 4;
            let payload = b.get(header_len..)?.to_vec();
            Some(RtpPacket {
                time_us: p.time_us,
                src: p.src,
                dst: p.dst,
                payload_type: b[1] & 0x7f,
                marker: b[1] & 0x80 != 0,
                sequence: u16::from_be_bytes([b[2], b[3]]),
                timestamp: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
                ssrc: u32::from_be_bytes([b[8], b[9], b[10], b[11]]),
                payload,
            })
        })
        .collect()
}
