//! End-to-end harness: the release gateway and simulator binaries against real SIP peers (SIPp,
//! baresip), with packet captures (tshark) as the ground truth for what went over the wire.
//!
//! Every external process is started by us, bounded by a timeout and killed by PID on drop.
//! Each test takes a distinct `slot`, which fixes its ports, so tests can run in parallel.

pub mod audio;
pub mod baresip;
pub mod mutate;
pub mod netns;
pub mod pcap;
pub mod procs;
pub mod real_call;
pub mod sip_raw;
pub mod sipp;
pub mod tls;
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
    /// Slots 0..25 have 100 RTP ports each (30000-32499); slots 25..65 have 50 each (20000-21999);
    /// slots 65..90 have 50 each (12000-13249), their peers' media 100 each (9000-11499);
    /// slots 90..110 live in 3000-7099 (SIP 3000-3199, admin 3200-3219, simulator 3250-3269,
    /// peer control 3300-3319, RTP 50 each in 3400-4399, peer SIP 4500-4699, peer media 100 each
    /// in 5100-7099); slots 110..127 live in 7100-8599 and 13250-14949 (SIP 7100-7269, admin
    /// 7300-7316, simulator 7320-7336, peer control 7340-7356, peer SIP 7400-7569, RTP 50 each in
    /// 7600-8449, peer media 100 each in 13250-14949). Each slot's SIP port has nine spare ports
    /// above it (`sip + 1` for TLS). All stay below Linux's ephemeral range (32768+), so a
    /// kernel-chosen port never collides.
    pub fn for_slot(slot: u16) -> Ports {
        assert!(slot < 127, "slots 0..127 keep every range apart and below the ephemeral range");
        if slot >= 110 {
            let n = slot - 110;
            return Ports {
                sip: 7100 + n * 10,
                admin: 7300 + n,
                sim: 7320 + n,
                rtp_first: 7600 + n * 50,
                rtp_last: 7600 + n * 50 + 49,
                peer_sip: 7400 + n * 10,
                peer_media: 13250 + n * 100,
                peer_control: 7340 + n,
            };
        }
        if slot >= 90 {
            let n = slot - 90;
            return Ports {
                sip: 3000 + n * 10,
                admin: 3200 + n,
                sim: 3250 + n,
                rtp_first: 3400 + n * 50,
                rtp_last: 3400 + n * 50 + 49,
                peer_sip: 4500 + n * 10,
                peer_media: 5100 + n * 100,
                peer_control: 3300 + n,
            };
        }
        let (rtp_first, rtp_last) = match slot {
            0..25 => (30000 + slot * 100, 30000 + slot * 100 + 99),
            25..65 => (20000 + (slot - 25) * 50, 20000 + (slot - 25) * 50 + 49),
            _ => (12000 + (slot - 65) * 50, 12000 + (slot - 65) * 50 + 49),
        };
        let peer_media = if slot < 65 { 22000 + slot * 100 } else { 9000 + (slot - 65) * 100 };
        Ports {
            sip: 15060 + slot * 10,
            admin: 16000 + slot,
            sim: 17000 + slot,
            rtp_first,
            rtp_last,
            peer_sip: 18060 + slot * 10,
            peer_media,
            peer_control: 16500 + slot,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Ports;

    /// Every port any slot uses belongs to that slot alone, and all stay below the ephemeral range.
    #[test]
    fn slots_never_share_a_port() {
        let mut owner = std::collections::HashMap::new();
        for slot in 0..127 {
            let p = Ports::for_slot(slot);
            let mut ports = vec![p.admin, p.sim, p.peer_control];
            ports.extend(p.sip..p.sip + 10);
            ports.extend(p.peer_sip..p.peer_sip + 10);
            ports.extend(p.rtp_first..=p.rtp_last);
            ports.extend(p.peer_media..p.peer_media + 100);
            for port in ports {
                assert!(port < 32768, "slot {slot}: port {port} is in the ephemeral range");
                if let Some(other) = owner.insert(port, slot) {
                    assert_eq!(other, slot, "port {port} is used by slots {other} and {slot}");
                }
            }
        }
    }
}
