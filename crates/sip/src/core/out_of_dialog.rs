//! Requests we send outside any dialog (RFC 3261 §8.1), first of all REGISTER (§10.2): the
//! caller (the registration machine, [`crate::registration`]) owns Call-ID, tags and CSeq so
//! that they stay the same across refreshes (§10.2.4); the core adds Via (a new `z9hG4bK`
//! branch, `rport`), Max-Forwards and User-Agent, runs the non-INVITE client transaction
//! (§17.1.2: Timers E, F, K) and hands the whole final response back, since the caller needs
//! its headers (Contact `expires`, Expires, Min-Expires, WWW-Authenticate).

use std::net::SocketAddr;
use std::time::Instant;

use super::*;

/// Out-of-dialog requests of ours waiting for their final response at once, at most. Each
/// registering trunk has at most one in flight; the bound is the backstop that refuses rather
/// than grows.
pub const MAX_OUT_OF_DIALOG_REQUESTS: usize = 1024;

/// An out-of-dialog request to send ([`Core::send_request_outside_dialog`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutOfDialogRequest {
    /// REGISTER, OPTIONS, MESSAGE...; INVITE, ACK, CANCEL and BYE are refused (they have
    /// their own paths).
    pub method: Method,
    pub request_uri: String,
    /// The whole From value, tag included.
    pub from: String,
    /// The whole To value.
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    /// Next hop, already resolved.
    pub destination: SocketAddr,
    pub transport: Transport,
    /// Further headers (Contact, Expires, Authorization...), as given: the caller keeps CR/LF
    /// out of them.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// How an out-of-dialog request of ours ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutOfDialogOutcome {
    /// Its final response, whole.
    Answered(Box<Message>),
    /// Timer F, or a transport error: no final response.
    TimedOut,
}

impl Core {
    /// Sends a request outside any dialog through a non-INVITE client transaction
    /// (§17.1.2); its outcome arrives as [`CoreEvent::OutOfDialogFinished`]. `Err` says
    /// what is unusable.
    pub fn send_request_outside_dialog(
        &mut self,
        now: Instant,
        request: OutOfDialogRequest,
    ) -> Result<RequestId, String> {
        if matches!(request.method, Method::Invite | Method::Ack | Method::Cancel | Method::Bye) {
            return Err(format!("{} is not sent outside a dialog this way", request.method));
        }
        if SipUri::parse(&request.request_uri).is_none() {
            return Err(format!("request URI {:?} is not a SIP URI", request.request_uri));
        }
        if self.contact_for(request.transport).is_none() {
            return Err(format!("no {} address of ours for Via", request.transport.as_upper()));
        }
        let waiting = self
            .client_transactions
            .values()
            .filter(|entry| matches!(entry.owner, RequestOwner::OutOfDialog(_)) && entry.transaction.is_waiting())
            .count();
        if waiting >= MAX_OUT_OF_DIALOG_REQUESTS {
            return Err(format!("{MAX_OUT_OF_DIALOG_REQUESTS} out-of-dialog requests already in flight"));
        }
        let branch = format!("z9hG4bK{}", self.random_token());
        let mut message = Message::request(request.method.clone(), request.request_uri);
        message.push_header("Via", self.via_value(request.transport, &branch));
        message.push_header("Max-Forwards", "70");
        message.push_header("From", request.from);
        message.push_header("To", request.to);
        message.push_header("Call-ID", request.call_id);
        message.push_header("CSeq", format!("{} {}", request.cseq, request.method));
        for (name, value) in &request.headers {
            message.push_header(name, value.clone());
        }
        message.push_header("User-Agent", self.config.user_agent.clone());
        message.body = request.body;
        let transmit = Transmit {
            transport: request.transport,
            destination: request.destination,
            connection: None,
            payload: message.to_bytes(),
        };
        let id = RequestId(self.fresh_id());
        let key = ClientKey { branch, method: request.method };
        self.start_request(now, key, RequestOwner::OutOfDialog(id), transmit);
        Ok(id)
    }

    /// Our Contact URI for `transport` with `user` as its user part (a registration's binding,
    /// §10.2.1): `sip:user@our-address:port;transport=udp`. `None` without an address of ours.
    pub fn local_contact_uri(&self, transport: Transport, user: &str) -> Option<String> {
        let addr = self.contact_for(transport)?;
        Some(format!("sip:{user}@{}:{};transport={}", host_for_uri(addr.ip()), addr.port(), transport.as_lower()))
    }
}
