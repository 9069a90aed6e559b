//! RTP fixed header parsing and writing (RFC 3550 §5.1) and RTP/RTCP demultiplexing
//! (RFC 5761 §4).

use thiserror::Error;

/// Size of the fixed RTP header.
pub const RTP_HEADER_LEN: usize = 12;

/// The RTP header fields the gateway uses. CSRCs and header extensions are skipped on parse
/// and never written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RtpHeader {
    /// Payload type (7 bits).
    pub payload_type: u8,
    /// Marker bit: start of a talkspurt for audio (RFC 3551 §4.1).
    pub marker: bool,
    /// Sequence number.
    pub sequence: u16,
    /// Media timestamp in clock-rate units.
    pub timestamp: u32,
    /// Synchronization source.
    pub ssrc: u32,
}

/// Why a datagram is not a valid RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    /// Shorter than the 12-byte fixed header.
    #[error("packet of {len} bytes is shorter than the 12-byte RTP header")]
    TooShort {
        /// Datagram length.
        len: usize,
    },
    /// Version field is not 2.
    #[error("unsupported RTP version {0}")]
    UnsupportedVersion(u8),
    /// The CSRC list or header extension runs past the end of the packet.
    #[error("RTP {part} runs past the end of a {len}-byte packet")]
    Truncated {
        /// Which header part was cut off.
        part: &'static str,
        /// Datagram length.
        len: usize,
    },
    /// The padding count is zero or larger than the payload.
    #[error("invalid RTP padding count {count} with {available} bytes after the header")]
    BadPadding {
        /// The padding count from the last byte.
        count: u8,
        /// Bytes available after the header.
        available: usize,
    },
}

/// Parses an RTP packet, returning its header and payload (without CSRCs, extension or padding).
pub fn parse_rtp(buf: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    let len = buf.len();
    let Some((fixed, after_fixed)) = buf.split_first_chunk::<RTP_HEADER_LEN>() else {
        return Err(RtpError::TooShort { len });
    };
    let [first, second, seq0, seq1, ts0, ts1, ts2, ts3, ssrc0, ssrc1, ssrc2, ssrc3] = *fixed;
    let version = first >> 6;
    if version != 2 {
        return Err(RtpError::UnsupportedVersion(version));
    }
    let has_padding = first & 0x20 != 0;
    let has_extension = first & 0x10 != 0;
    let csrc_count = usize::from(first & 0x0F);
    let header = RtpHeader {
        payload_type: second & 0x7F,
        marker: second & 0x80 != 0,
        sequence: u16::from_be_bytes([seq0, seq1]),
        timestamp: u32::from_be_bytes([ts0, ts1, ts2, ts3]),
        ssrc: u32::from_be_bytes([ssrc0, ssrc1, ssrc2, ssrc3]),
    };
    let Some((_csrcs, mut rest)) = after_fixed.split_at_checked(4 * csrc_count) else {
        return Err(RtpError::Truncated { part: "CSRC list", len });
    };
    // RFC 3550 §5.3.1: 16-bit profile-defined id, 16-bit length in 32-bit words, then data.
    if has_extension {
        let Some((&[_, _, length_high, length_low], after_extension_header)) = rest.split_first_chunk::<4>() else {
            return Err(RtpError::Truncated { part: "header extension", len });
        };
        let words = usize::from(u16::from_be_bytes([length_high, length_low]));
        let Some((_extension, after_extension)) = after_extension_header.split_at_checked(4 * words) else {
            return Err(RtpError::Truncated { part: "header extension", len });
        };
        rest = after_extension;
    }
    // RFC 3550 §5.1: the last octet of the padding counts the padding octets, itself included.
    if has_padding {
        let available = rest.len();
        // A padding bit on a packet that ends with the header has no count octet at all.
        let count = rest.last().copied().unwrap_or(0);
        let Some(payload_len) = available.checked_sub(usize::from(count)).filter(|_| count != 0) else {
            return Err(RtpError::BadPadding { count, available });
        };
        rest = rest.get(..payload_len).unwrap_or_default();
    }
    Ok((header, rest))
}

/// True when a datagram on a muxed RTP/RTCP port is RTCP (RFC 5761 §4): version 2 and the
/// second octet (RTCP packet type) in 192..=223, which covers SR/RR/SDES/BYE/APP (200-204) and
/// the feedback/XR types. RTP payload types 64-95 are excluded from muxed sessions for this.
pub fn is_rtcp(buf: &[u8]) -> bool {
    match buf {
        [first, second, ..] => first >> 6 == 2 && (192..=223).contains(second),
        _ => false,
    }
}

/// Random initial SSRC, sequence number and timestamp for a new outbound stream
/// (RFC 3550 §5.1: the initial values SHOULD be random to make known-plaintext attacks harder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamStart {
    /// Synchronization source identifier.
    pub ssrc: u32,
    /// First sequence number.
    pub sequence: u16,
    /// First timestamp.
    pub timestamp: u32,
}

impl StreamStart {
    /// Fresh random values from the thread-local generator.
    pub fn random() -> StreamStart {
        StreamStart { ssrc: rand::random(), sequence: rand::random(), timestamp: rand::random() }
    }
}

/// Appends an RTP packet (fixed header, no CSRC, no extension, no padding) to `out`.
pub fn write_rtp(out: &mut Vec<u8>, header: &RtpHeader, payload: &[u8]) {
    out.reserve(RTP_HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((u8::from(header.marker) << 7) | (header.payload_type & 0x7F));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RtpHeader {
        RtpHeader { payload_type: 8, marker: true, sequence: 0xFFFE, timestamp: 0xDEAD_BEEF, ssrc: 0x1234_5678 }
    }

    #[test]
    fn write_then_parse_round_trips() {
        let mut out = vec![0xAA];
        write_rtp(&mut out, &header(), &[1, 2, 3]);
        assert_eq!(out[0], 0xAA, "write appends");
        assert_eq!(&out[1..], &[0x80, 0x88, 0xFF, 0xFE, 0xDE, 0xAD, 0xBE, 0xEF, 0x12, 0x34, 0x56, 0x78, 1, 2, 3]);
        let (parsed, payload) = parse_rtp(&out[1..]).unwrap();
        assert_eq!(parsed, header());
        assert_eq!(payload, &[1, 2, 3]);
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        let mut packet = vec![0x80 | 0x20 | 0x10 | 2, 0x00, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9];
        packet.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // two CSRCs
        packet.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // one-word extension
        packet.extend_from_slice(&[7, 7, 7]); // payload
        packet.extend_from_slice(&[0, 0, 3]); // three bytes of padding
        let (header, payload) = parse_rtp(&packet).unwrap();
        assert_eq!(header.sequence, 1);
        assert_eq!(header.timestamp, 160);
        assert_eq!(header.ssrc, 9);
        assert!(!header.marker);
        assert_eq!(payload, &[7, 7, 7]);
    }

    #[test]
    fn rejects_bad_packets() {
        let good = {
            let mut out = Vec::new();
            write_rtp(&mut out, &header(), &[1, 2, 3, 4]);
            out
        };
        assert_eq!(parse_rtp(&good[..11]), Err(RtpError::TooShort { len: 11 }));
        assert_eq!(parse_rtp(&[]), Err(RtpError::TooShort { len: 0 }));

        let mut v1 = good.clone();
        v1[0] = 0x40;
        assert_eq!(parse_rtp(&v1), Err(RtpError::UnsupportedVersion(1)));

        let mut csrc = good.clone();
        csrc[0] |= 0x02; // claims 2 CSRCs = 8 bytes, only 4 follow
        assert!(matches!(parse_rtp(&csrc), Err(RtpError::Truncated { part: "CSRC list", .. })));

        let mut ext = good.clone();
        ext[0] |= 0x10;
        ext[14] = 0;
        ext[15] = 5; // 5 words of extension, none present
        assert!(matches!(parse_rtp(&ext), Err(RtpError::Truncated { part: "header extension", .. })));
        let mut ext_short = good[..13].to_vec();
        ext_short[0] |= 0x10;
        assert!(matches!(parse_rtp(&ext_short), Err(RtpError::Truncated { .. })));

        let mut pad_zero = good.clone();
        pad_zero[0] |= 0x20;
        *pad_zero.last_mut().unwrap() = 0;
        assert_eq!(parse_rtp(&pad_zero), Err(RtpError::BadPadding { count: 0, available: 4 }));
        let mut pad_big = good.clone();
        pad_big[0] |= 0x20;
        *pad_big.last_mut().unwrap() = 5;
        assert_eq!(parse_rtp(&pad_big), Err(RtpError::BadPadding { count: 5, available: 4 }));

        // Padding bit on a bare header: no count octet after the header, so no padding to strip.
        let mut pad_bare = good[..RTP_HEADER_LEN].to_vec();
        pad_bare[0] |= 0x20;
        assert_eq!(parse_rtp(&pad_bare), Err(RtpError::BadPadding { count: 0, available: 0 }));
    }

    #[test]
    fn empty_payload_is_valid() {
        let mut out = Vec::new();
        write_rtp(&mut out, &header(), &[]);
        assert_eq!(parse_rtp(&out).unwrap().1, &[] as &[u8]);
    }

    #[test]
    fn rtcp_detection() {
        // Receiver report: V=2, RC=0, PT=201.
        assert!(is_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1]));
        assert!(is_rtcp(&[0x81, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 205, 0, 6]));
        // RTP PCMU with and without marker.
        assert!(!is_rtcp(&[0x80, 0x00, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0x80, 0, 1]));
        // telephone-event 101 with marker: 0x80 | 101 = 229.
        assert!(!is_rtcp(&[0x80, 0x80 | 101, 0, 1]));
        assert!(!is_rtcp(&[0x00, 201]));
        assert!(!is_rtcp(&[0x80]));
    }

    #[test]
    fn parse_never_panics_on_any_short_input() {
        let mut state = 0x1234_5678_u32;
        for len in 0..64 {
            for _ in 0..200 {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        (state >> 8) as u8
                    })
                    .collect();
                if let Ok((_, payload)) = parse_rtp(&bytes) {
                    assert!(payload.len() + RTP_HEADER_LEN <= bytes.len());
                }
            }
        }
    }
}
