//! The screen: what the application decides about a new out-of-dialog request before the core
//! answers it at all (not even 100 Trying), so that a request refused by source, User-Agent,
//! rate or authentication costs nothing and, when dropped, tells its sender nothing.
//!
//! The core consults it once per new server transaction (retransmissions are absorbed first,
//! so they are not screened twice), for every method but ACK; in-dialog requests (a To-tag)
//! and responses are never screened. A CANCEL is screened too (by source and User-Agent), but
//! must not be challenged (RFC 3261 §22.1): the screen gets the method and decides.

use std::time::Instant;

use crate::core::Origin;
use crate::message::Message;

/// What the core does with a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Handle it as usual.
    Pass,
    /// Answer it with this final response, statelessly (RFC 3261 §8.2.7): no transaction is
    /// kept, so a flood of refused requests costs no memory; a retransmission is screened and
    /// answered again, and the ACK of a refused INVITE matches nothing and is dropped.
    Reject { status: u16, reason: String, headers: Vec<(String, String)> },
    /// Send nothing at all.
    Drop,
}

/// Decides about new out-of-dialog requests. Called on the SIP driver task: it must be quick
/// and must not block.
pub trait Screen: Send + Sync + std::fmt::Debug {
    fn screen(&self, now: Instant, origin: &Origin, request: &Message) -> Verdict;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use std::net::SocketAddr;
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;
    use crate::core::{Core, CoreConfig, CoreEvent};
    use crate::message::parse_message;
    use crate::{Timers, Transport};

    /// Screens by the source port: 5001 rejected with 403, 5002 dropped, others pass; records
    /// the methods it was asked about.
    #[derive(Debug, Default)]
    struct ByPort(Mutex<Vec<String>>);

    impl Screen for ByPort {
        fn screen(&self, _now: Instant, origin: &Origin, request: &Message) -> Verdict {
            self.0.lock().unwrap().push(request.method().map(|m| m.as_str().to_string()).unwrap_or_default());
            match origin.source.port() {
                5001 => Verdict::Reject {
                    status: 403,
                    reason: "Forbidden".into(),
                    headers: vec![("Warning".into(), "399 test \"no\"".into())],
                },
                5002 => Verdict::Drop,
                _ => Verdict::Pass,
            }
        }
    }

    fn core(screen: &Arc<ByPort>) -> Core {
        let mut core = Core::new(
            CoreConfig {
                timers: Timers::default(),
                user_agent: "test".into(),
                udp_contact: Some("127.0.0.1:5060".parse().unwrap()),
                tcp_contact: None,
                tls_contact: None,
                session_timer: Default::default(),
                max_message_bytes: 16 * 1024,
                max_headers: 100,
            },
            1,
        );
        core.set_screen(Some(screen.clone()));
        core
    }

    use std::sync::Arc;

    fn request(method: &str, port: u16, to_tag: &str) -> String {
        format!(
            "{method} sip:100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK-{port}-{method}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=f\r\nTo: <sip:100@127.0.0.1>{to_tag}\r\n\
             Call-ID: c-{port}\r\nCSeq: 1 {method}\r\nContact: <sip:a@127.0.0.1:{port}>\r\nContent-Length: 0\r\n\r\n"
        )
    }

    fn origin(port: u16) -> Origin {
        Origin { transport: Transport::Udp, source: SocketAddr::from(([127, 0, 0, 1], port)), connection: None }
    }

    fn statuses(core: &mut Core) -> Vec<u16> {
        std::iter::from_fn(|| core.poll_transmit())
            .filter_map(|t| parse_message(&t.payload, Transport::Udp).ok().and_then(|m| m.status()))
            .collect()
    }

    #[test]
    fn a_dropped_request_gets_nothing_not_even_100_trying() {
        let screen = Arc::new(ByPort::default());
        let mut core = core(&screen);
        let now = Instant::now();
        for method in ["INVITE", "OPTIONS", "REGISTER", "CANCEL"] {
            core.handle_message(now, origin(5002), request(method, 5002, "").as_bytes());
        }
        assert!(statuses(&mut core).is_empty());
        assert!(core.poll_event().is_none());
        assert_eq!(core.live_state().0, 0, "no transaction is kept for a dropped request");
    }

    #[test]
    fn a_rejected_invite_gets_its_final_answer_alone_and_statelessly() {
        let screen = Arc::new(ByPort::default());
        let mut core = core(&screen);
        let now = Instant::now();
        core.handle_message(now, origin(5001), request("INVITE", 5001, "").as_bytes());
        assert_eq!(statuses(&mut core), [403], "no 100 Trying before the refusal");
        assert_eq!(core.live_state(), (0, 0, 0), "no transaction is kept for a refusal");
        // A retransmission is screened and refused again.
        core.handle_message(now, origin(5001), request("INVITE", 5001, "").as_bytes());
        assert_eq!(statuses(&mut core), [403]);
        core.handle_message(now, origin(5001), request("ACK", 5001, ";tag=x").as_bytes());
        assert!(statuses(&mut core).is_empty());
        core.handle_timeout(now + Duration::from_secs(64));
        assert!(statuses(&mut core).is_empty(), "nothing is retransmitted");
        assert_eq!(*screen.0.lock().unwrap(), ["INVITE", "INVITE"], "the ACK is never screened");
        assert!(core.poll_event().is_none());
    }

    #[test]
    fn a_malformed_request_from_a_dropped_source_gets_no_400() {
        let screen = Arc::new(ByPort::default());
        let mut core = core(&screen);
        let now = Instant::now();
        for port in [5002, 5003] {
            let broken = request("OPTIONS", port, "").replace("Content-Length: 0", "Content-Length: x");
            core.handle_message(now, origin(port), broken.as_bytes());
        }
        assert_eq!(statuses(&mut core), [400], "only the source that passes learns its request was bad");
    }

    #[test]
    fn a_passed_invite_is_served_and_in_dialog_requests_are_not_screened() {
        let screen = Arc::new(ByPort::default());
        let mut core = core(&screen);
        let now = Instant::now();
        core.handle_message(now, origin(5003), request("INVITE", 5003, "").as_bytes());
        assert_eq!(statuses(&mut core), [100]);
        assert!(matches!(core.poll_event(), Some(CoreEvent::IncomingCall { .. })));
        // An in-dialog request from a source the screen would refuse is not screened.
        core.handle_message(now, origin(5001), request("BYE", 5001, ";tag=x").as_bytes());
        assert_eq!(statuses(&mut core), [481]);
        assert_eq!(*screen.0.lock().unwrap(), ["INVITE"]);
    }
}
