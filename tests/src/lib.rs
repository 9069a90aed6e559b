//! End-to-end harness: the release gateway and simulator binaries against real SIP peers (SIPp,
//! baresip), with packet captures (tshark) as the ground truth for what went over the wire.
//!
//! Every external process is started by us, bounded by a timeout and killed by PID on drop.
//! Each test takes a distinct `slot`, which fixes its ports, so tests can run in parallel.

pub mod audio;
pub mod pcap;
pub mod procs;
pub mod sip_raw;
pub mod sipp;
pub mod tools;

/// Ports for one test, derived from its slot so parallel tests never collide.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    pub sip: u16,
    pub admin: u16,
    pub sim: u16,
    pub rtp_first: u16,
    pub rtp_last: u16,
    pub peer_sip: u16,
    pub peer_media: u16,
    pub peer_control: u16,
}

impl Ports {
    pub fn for_slot(slot: u16) -> Ports {
        assert!(slot < 25, "slots 0..25 keep RTP ranges below the ephemeral range");
        Ports {
            sip: 15060 + slot * 10,
            admin: 16000 + slot,
            sim: 17000 + slot,
            rtp_first: 30000 + slot * 100,
            rtp_last: 30000 + slot * 100 + 99,
            peer_sip: 18060 + slot * 10,
            peer_media: 22000 + slot * 100,
            peer_control: 16500 + slot,
        }
    }
}
