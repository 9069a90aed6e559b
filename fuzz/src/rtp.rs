//! RTP parse/write and the RTP/RTCP demultiplexer.

use switchboard_media::rtp::RTP_HEADER_LEN;
use switchboard_media::{is_rtcp, parse_rtp, write_rtp};

/// `rtp`: parsing never panics; a parsed payload is a slice of the packet after the fixed
/// header; re-writing the header and payload with `write_rtp` parses back to the same header
/// and payload, byte-identical to the input when it had no CSRC, extension or padding; and the
/// RFC 5761 §4 demultiplexer never takes a packet we write with a payload type outside 64-95
/// (or without the marker bit) for RTCP.
pub fn round_trip(data: &[u8]) {
    let _ = is_rtcp(data);
    let Ok((header, payload)) = parse_rtp(data) else {
        return;
    };
    let data_range = data.as_ptr_range();
    let payload_range = payload.as_ptr_range();
    assert!(
        payload_range.start >= data_range.start && payload_range.end <= data_range.end,
        "payload is not inside the packet"
    );
    let offset = payload_range.start as usize - data_range.start as usize;
    assert!(offset >= RTP_HEADER_LEN, "payload starts inside the fixed header (offset {offset})");
    assert!(header.payload_type <= 0x7F);

    let mut written = Vec::new();
    write_rtp(&mut written, &header, payload);
    assert_eq!(written.len(), RTP_HEADER_LEN + payload.len());
    let (header_again, payload_again) =
        parse_rtp(&written).unwrap_or_else(|e| panic!("write_rtp wrote an invalid packet: {e}"));
    assert_eq!(header_again, header, "header changed on write/parse");
    assert_eq!(payload_again, payload, "payload changed on write/parse");
    let plain = data.first().is_some_and(|first| first & 0x3F == 0);
    if plain {
        assert_eq!(written, data, "a plain packet did not re-write byte-identical");
    }
    let looks_like_rtcp = header.marker && (64..=95).contains(&header.payload_type);
    assert_eq!(is_rtcp(&written), looks_like_rtcp, "demultiplexing of a written packet");
}
