//! The RTP port pool: one even port per call from `media.rtp_ports`, chosen at random, released
//! when the call ends and then kept out of use for a while.
//!
//! Why random: ports handed out in order are predictable (an attacker knows which port the next
//! call gets) and, after a restart, the first new call lands on the port of a call the old process
//! left behind, whose caller may still be streaming to it.
//!
//! Why a quarantine: a caller does not stop sending the moment we hang up (a lost BYE, an RTP
//! timeout, a caller that ignores BYE). A port released less than [`QUARANTINE`] ago is only reused
//! when no other port is free, oldest release first; strict RTP (`switchboard_media::latch`) keeps
//! the old stream out of the new call either way.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tracing::warn;

/// How long a released port stays out of use (unless nothing else is free).
pub const QUARANTINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
#[error("no free RTP port in {first}-{last}")]
pub struct NoFreePort {
    first: u16,
    last: u16,
}

pub struct RtpPorts {
    bind: IpAddr,
    range: RangeInclusive<u16>,
    quarantine: Duration,
    state: Mutex<PoolState>,
}

struct PoolState {
    in_use: HashSet<u16>,
    /// Ports released within the quarantine, with when. Bounded by the number of ports in the range.
    released: HashMap<u16, Instant>,
    /// Times a quarantined port had to be reused (the range is too small for the load).
    quarantine_reuses: u64,
}

/// A port held by one call; dropping it gives the port back (into quarantine).
pub struct PortLease {
    pool: Arc<RtpPorts>,
    port: u16,
}

impl RtpPorts {
    pub fn new(bind: IpAddr, range: RangeInclusive<u16>) -> Arc<Self> {
        Self::with_quarantine(bind, range, QUARANTINE)
    }

    pub fn with_quarantine(bind: IpAddr, range: RangeInclusive<u16>, quarantine: Duration) -> Arc<Self> {
        Arc::new(RtpPorts {
            bind,
            range,
            quarantine,
            state: Mutex::new(PoolState { in_use: HashSet::new(), released: HashMap::new(), quarantine_reuses: 0 }),
        })
    }

    /// Binds a free even port chosen at random, preferring ports out of quarantine. Ports taken
    /// by other processes are skipped.
    pub fn allocate(self: &Arc<Self>) -> Result<(UdpSocket, PortLease), NoFreePort> {
        self.allocate_at(Instant::now())
    }

    /// [`RtpPorts::allocate`] with the clock as a parameter.
    pub fn allocate_at(self: &Arc<Self>, now: Instant) -> Result<(UdpSocket, PortLease), NoFreePort> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let first_even = u32::from(first) + u32::from(first) % 2;
        let even_ports = if first_even > u32::from(last) { 0 } else { (u32::from(last) - first_even) / 2 + 1 };
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let quarantine = self.quarantine;
        state.released.retain(|_, released| now.saturating_duration_since(*released) < quarantine);

        // A random starting point, then every even port once: unpredictable, and never misses a free one.
        let offset = if even_ports == 0 { 0 } else { rand::random_range(0..even_ports) };
        let candidates =
            (0..even_ports).filter_map(|i| u16::try_from(first_even + 2 * ((offset + i) % even_ports)).ok());
        let mut quarantined = Vec::new();
        for port in candidates {
            if state.in_use.contains(&port) {
                continue;
            }
            if let Some(released) = state.released.get(&port) {
                quarantined.push((*released, port));
                continue;
            }
            if let Some(socket) = self.bind(port) {
                state.in_use.insert(port);
                return Ok((socket, PortLease { pool: Arc::clone(self), port }));
            }
        }
        // Every free port was released recently: reuse the one released longest ago.
        quarantined.sort_unstable();
        for (_, port) in quarantined {
            if let Some(socket) = self.bind(port) {
                state.quarantine_reuses += 1;
                // Logged at the 1st, 2nd, 4th, 8th... reuse: visible, but never one line per call.
                if state.quarantine_reuses.is_power_of_two() {
                    warn!(
                        reuses = state.quarantine_reuses,
                        "every free RTP port is in quarantine; reusing the one released longest ago \
                         (media.rtp_ports is small for this load)"
                    );
                }
                state.released.remove(&port);
                state.in_use.insert(port);
                return Ok((socket, PortLease { pool: Arc::clone(self), port }));
            }
        }
        Err(NoFreePort { first, last })
    }

    fn bind(&self, port: u16) -> Option<UdpSocket> {
        UdpSocket::bind(SocketAddr::new(self.bind, port)).ok()
    }

    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).in_use.len()
    }

    /// Ports released recently and not yet handed out again.
    pub fn in_quarantine(&self, now: Instant) -> usize {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.released.values().filter(|released| now.saturating_duration_since(**released) < self.quarantine).count()
    }
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        let mut state = self.pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.in_use.remove(&self.port);
        state.released.insert(self.port, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;

    const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    #[test]
    fn ports_are_even_unique_and_the_pool_runs_out() {
        let pool = RtpPorts::new(LOCALHOST, 41001..=41006);
        let leases: Vec<_> = (0..3).map(|_| pool.allocate().unwrap()).collect();
        let ports: BTreeSet<u16> = leases.iter().map(|(_, lease)| lease.port()).collect();
        assert_eq!(ports, BTreeSet::from([41002, 41004, 41006]));
        assert!(pool.allocate().is_err(), "pool of three is exhausted");
        drop(leases);
        assert_eq!(pool.in_use(), 0);
    }

    #[test]
    fn ports_are_not_handed_out_in_order() {
        // 50 even ports; in-order allocation would always start at the bottom of the range.
        let firsts: BTreeSet<u16> = (0..20)
            .map(|_| {
                let pool = RtpPorts::new(LOCALHOST, 41200..=41299);
                pool.allocate().unwrap().1.port()
            })
            .collect();
        assert!(firsts.len() > 5, "first ports of 20 fresh pools: {firsts:?}");
    }

    #[test]
    fn a_released_port_is_not_reused_while_others_are_free() {
        let pool = RtpPorts::new(LOCALHOST, 41400..=41409);
        let (socket, lease) = pool.allocate().unwrap();
        let released = lease.port();
        drop((socket, lease));
        assert_eq!(pool.in_quarantine(Instant::now()), 1);
        // Four other ports are free: the released one stays out of use until they are all taken.
        let others: Vec<_> = (0..4).map(|_| pool.allocate().unwrap()).collect();
        assert!(others.iter().all(|(_, lease)| lease.port() != released));
        let (_s, last) = pool.allocate().unwrap();
        assert_eq!(last.port(), released, "the only free port, quarantined or not");
    }

    #[test]
    fn quarantine_ends_and_when_all_free_ports_are_quarantined_the_oldest_is_reused() {
        let pool = RtpPorts::new(LOCALHOST, 41500..=41503);
        let (s1, first) = pool.allocate().unwrap();
        let (s2, second) = pool.allocate().unwrap();
        let (first_port, second_port) = (first.port(), second.port());
        drop((s1, first));
        std::thread::sleep(Duration::from_millis(5));
        drop((s2, second));
        let (_s, reused) = pool.allocate().unwrap();
        assert_eq!(reused.port(), first_port, "released longest ago");
        assert_eq!(pool.in_quarantine(Instant::now()), 1);
        let later = Instant::now() + QUARANTINE + Duration::from_secs(1);
        assert_eq!(pool.in_quarantine(later), 0);
        let (_s, after) = pool.allocate_at(later).unwrap();
        assert_eq!(after.port(), second_port);
    }

    #[test]
    fn ports_bound_elsewhere_are_skipped() {
        let squatter = UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = RtpPorts::new(LOCALHOST, 41102..=41104);
        for _ in 0..10 {
            let (_s, lease) = pool.allocate().unwrap();
            assert_eq!(lease.port(), 41104);
        }
        drop(squatter);
    }
}
