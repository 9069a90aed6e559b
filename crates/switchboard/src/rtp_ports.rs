//! The RTP port pool: one even port per call from `media.rtp_ports`, released when the call ends.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Debug, thiserror::Error)]
#[error("no free RTP port in {first}-{last}")]
pub struct NoFreePort {
    first: u16,
    last: u16,
}

pub struct RtpPorts {
    bind: IpAddr,
    range: RangeInclusive<u16>,
    state: Mutex<PoolState>,
}

struct PoolState {
    next: u16,
    in_use: HashSet<u16>,
}

/// A port held by one call; dropping it gives the port back.
pub struct PortLease {
    pool: Arc<RtpPorts>,
    port: u16,
}

impl RtpPorts {
    pub fn new(bind: IpAddr, range: RangeInclusive<u16>) -> Arc<Self> {
        let first_even = range.start() + range.start() % 2;
        Arc::new(RtpPorts { bind, range, state: Mutex::new(PoolState { next: first_even, in_use: HashSet::new() }) })
    }

    /// Binds the next free even port. Ports taken by other processes are skipped, and reuse is
    /// round-robin so a just-released port is not handed out at once (late packets of the old call).
    pub fn allocate(self: &Arc<Self>) -> Result<(UdpSocket, PortLease), NoFreePort> {
        let (first, last) = (*self.range.start(), *self.range.end());
        let even_ports = (u32::from(last) - u32::from(first)) / 2 + 1;
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..even_ports {
            let port = state.next;
            state.next = if u32::from(port) + 2 > u32::from(last) { first + first % 2 } else { port + 2 };
            if state.in_use.contains(&port) {
                continue;
            }
            if let Ok(socket) = UdpSocket::bind(SocketAddr::new(self.bind, port)) {
                state.in_use.insert(port);
                return Ok((socket, PortLease { pool: Arc::clone(self), port }));
            }
        }
        Err(NoFreePort { first, last })
    }

    pub fn in_use(&self) -> usize {
        self.state.lock().unwrap_or_else(PoisonError::into_inner).in_use.len()
    }
}

impl PortLease {
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for PortLease {
    fn drop(&mut self) {
        self.pool.state.lock().unwrap_or_else(PoisonError::into_inner).in_use.remove(&self.port);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn ports_are_even_unique_and_released_on_drop() {
        let pool = RtpPorts::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 41001..=41006);
        let (_s1, a) = pool.allocate().unwrap();
        let (_s2, b) = pool.allocate().unwrap();
        let (_s3, c) = pool.allocate().unwrap();
        let mut ports = vec![a.port(), b.port(), c.port()];
        ports.sort();
        assert_eq!(ports, vec![41002, 41004, 41006]);
        assert!(pool.allocate().is_err(), "pool of three is exhausted");
        drop((_s2, b));
        assert_eq!(pool.in_use(), 2);
        let (_s4, d) = pool.allocate().unwrap();
        assert_eq!(d.port(), 41004);
    }

    #[test]
    fn ports_bound_elsewhere_are_skipped() {
        let squatter = UdpSocket::bind("127.0.0.1:41102").unwrap();
        let pool = RtpPorts::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 41102..=41104);
        let (_s, lease) = pool.allocate().unwrap();
        assert_eq!(lease.port(), 41104);
        drop(squatter);
    }
}
