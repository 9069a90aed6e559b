//! The endpoint as a client: calls placed to a tiny UAS written here, over loopback UDP and
//! TCP (no external tools).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_sip::message::{Message, Method, StreamFrame, frame_stream, parse_message};
use switchboard_sip::{
    CallFailure, CallProgress, Credentials, DialogEvent, EndpointConfig, IncomingCall, OutgoingCall, SipEndpoint,
    Timers, Transport,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Guard against hangs only; never a performance assertion.
const WAIT: Duration = Duration::from_secs(5);
const ANSWER: &str =
    "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9000 RTP/AVP 0\r\n";

async fn start() -> (SipEndpoint, mpsc::Receiver<IncomingCall>) {
    let cfg = EndpointConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        user_agent: "switchboard-test".into(),
        timers: Timers {
            t1: Duration::from_millis(100),
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        },
        ..EndpointConfig::default()
    };
    SipEndpoint::bind(cfg).await.unwrap()
}

fn outgoing(destination: SocketAddr, transport: Transport, credentials: Option<Credentials>) -> OutgoingCall {
    OutgoingCall {
        request_uri: format!("sip:+15551234567@{destination}"),
        to: format!("sip:+15551234567@{destination}"),
        from_uri: "sip:agent@gw.example".into(),
        from_display: None,
        destination,
        transport,
        sdp_offer: "v=0\r\n".into(),
        credentials,
        ring_timeout: Duration::from_secs(30),
        extra_headers: Vec::new(),
        tls: None,
    }
}

/// A response to `request` (§8.2.6.2), with a To tag.
fn response(request: &Message, code: u16, reason: &str, extra: &str, body: &str) -> Vec<u8> {
    let mut text = format!("SIP/2.0 {code} {reason}\r\n");
    for via in request.header_values("Via") {
        text.push_str(&format!("Via: {via}\r\n"));
    }
    let to = request.header("To").unwrap();
    let to = if to.contains("tag=") { to.to_string() } else { format!("{to};tag=uas") };
    text.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n{extra}",
        request.header("From").unwrap(),
        request.call_id().unwrap(),
        request.header("CSeq").unwrap()
    ));
    if !body.is_empty() {
        text.push_str("Content-Type: application/sdp\r\n");
    }
    text.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    text.into_bytes()
}

async fn recv_udp(socket: &UdpSocket) -> (Message, SocketAddr) {
    let mut buf = vec![0u8; 65_536];
    let (len, from) = timeout(WAIT, socket.recv_from(&mut buf)).await.expect("no SIP message in time").unwrap();
    (parse_message(&buf[..len], Transport::Udp).unwrap(), from)
}

/// Next request with this method (skipping retransmissions of others).
async fn recv_method(socket: &UdpSocket, method: Method) -> (Message, SocketAddr) {
    loop {
        let (message, from) = recv_udp(socket).await;
        if message.method() == Some(&method) {
            return (message, from);
        }
    }
}

async fn progress(call: &mut switchboard_sip::ClientInvite) -> CallProgress {
    timeout(WAIT, call.progress()).await.expect("no call progress in time")
}

#[tokio::test]
async fn udp_call_answered_acked_and_hung_up() {
    let (endpoint, _calls) = start().await;
    let uas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uas_addr = uas.local_addr().unwrap();
    let mut call = endpoint.place_call(outgoing(uas_addr, Transport::Udp, None)).unwrap();
    let (invite, from) = recv_method(&uas, Method::Invite).await;
    assert_eq!(invite.call_id(), Some(call.call_id()));
    assert_eq!(from, endpoint.local_udp_addr().unwrap(), "sent from our SIP socket");
    uas.send_to(&response(&invite, 100, "Trying", "", ""), from).await.unwrap();
    uas.send_to(&response(&invite, 180, "Ringing", "", ""), from).await.unwrap();
    match progress(&mut call).await {
        CallProgress::Provisional { status: 180, reason } => assert_eq!(reason, "Ringing"),
        other => panic!("expected 180, got {other:?}"),
    }
    let contact = format!("Contact: <sip:callee@{uas_addr}>\r\n");
    uas.send_to(&response(&invite, 200, "OK", &contact, ANSWER), from).await.unwrap();
    let mut dialog = match progress(&mut call).await {
        CallProgress::Answered { dialog, sdp_answer } => {
            assert_eq!(sdp_answer, ANSWER);
            dialog
        }
        other => panic!("expected Answered, got {other:?}"),
    };
    assert_eq!(dialog.call_id(), call.call_id());
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));
    let (ack, _) = recv_method(&uas, Method::Ack).await;
    assert_eq!(ack.cseq().unwrap().0, invite.cseq().unwrap().0);
    // After the final step, progress pends (the dialog has been handed out).
    assert!(timeout(Duration::from_millis(50), call.progress()).await.is_err());

    let hangup = tokio::spawn(async move { (dialog.hangup().await, dialog) });
    let (bye, from) = recv_method(&uas, Method::Bye).await;
    assert_eq!(bye.request_uri(), Some(format!("sip:callee@{uas_addr}").as_str()));
    uas.send_to(&response(&bye, 200, "OK", "", ""), from).await.unwrap();
    let (result, mut dialog) = timeout(WAIT, hangup).await.unwrap().unwrap();
    assert_eq!(result, Ok(()));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), None);
    endpoint.shutdown().await;
}

#[tokio::test]
async fn udp_call_busy_and_remote_bye() {
    let (endpoint, _calls) = start().await;
    let uas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let uas_addr = uas.local_addr().unwrap();

    // 486: busy, ACKed by the transaction.
    let mut call = endpoint.place_call(outgoing(uas_addr, Transport::Udp, None)).unwrap();
    let (invite, from) = recv_method(&uas, Method::Invite).await;
    uas.send_to(&response(&invite, 486, "Busy Here", "", ""), from).await.unwrap();
    assert!(matches!(progress(&mut call).await, CallProgress::Failed(CallFailure::Busy { status: 486 })));
    let (ack, _) = recv_method(&uas, Method::Ack).await;
    assert_eq!(ack.top_via().unwrap().branch(), invite.top_via().unwrap().branch());
    // A failure is returned again.
    assert!(matches!(progress(&mut call).await, CallProgress::Failed(CallFailure::Busy { .. })));

    // Answered, then the callee hangs up.
    let mut call = endpoint.place_call(outgoing(uas_addr, Transport::Udp, None)).unwrap();
    let (invite, from) = recv_method(&uas, Method::Invite).await;
    let contact = format!("Contact: <sip:callee@{uas_addr}>\r\n");
    uas.send_to(&response(&invite, 200, "OK", &contact, ANSWER), from).await.unwrap();
    let CallProgress::Answered { mut dialog, .. } = progress(&mut call).await else { panic!("not answered") };
    recv_method(&uas, Method::Ack).await;
    let bye = format!(
        "BYE sip:switchboard@{from} SIP/2.0\r\nVia: SIP/2.0/UDP {uas_addr};branch=z9hG4bKuasbye\r\nMax-Forwards: 70\r\n\
         From: {};tag=uas\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        invite.header("To").unwrap(),
        invite.header("From").unwrap(),
        invite.call_id().unwrap()
    );
    uas.send_to(bye.as_bytes(), from).await.unwrap();
    let (ok, _) = recv_udp(&uas).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::RemoteBye));
    endpoint.shutdown().await;
}

/// Over TCP: the endpoint opens the connection, answers a 401 with digest on the same
/// connection, and nothing is retransmitted.
#[tokio::test]
async fn tcp_call_with_digest_challenge() {
    let (endpoint, _calls) = start().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let uas_addr = listener.local_addr().unwrap();
    let credentials = Credentials { username: "gw".into(), password: "secret".into() };
    let mut call = endpoint.place_call(outgoing(uas_addr, Transport::Tcp, Some(credentials))).unwrap();
    let (stream, _) = timeout(WAIT, listener.accept()).await.unwrap().unwrap();
    let mut peer = TcpPeer { stream, buf: Vec::new() };
    let invite = peer.recv().await;
    assert_eq!(invite.top_via().unwrap().transport, "TCP");
    let challenge = "WWW-Authenticate: Digest realm=\"trunk\", nonce=\"abc\", qop=\"auth\", algorithm=MD5\r\n";
    peer.send(&response(&invite, 401, "Unauthorized", challenge, "")).await;
    let ack = peer.recv().await;
    assert_eq!(ack.method(), Some(&Method::Ack));
    let retry = peer.recv().await;
    assert_eq!(retry.method(), Some(&Method::Invite));
    assert!(retry.header("Authorization").unwrap().contains("username=\"gw\""));
    let contact = format!("Contact: <sip:callee@{uas_addr};transport=tcp>\r\n");
    peer.send(&response(&retry, 200, "OK", &contact, ANSWER)).await;
    let CallProgress::Answered { mut dialog, .. } = progress(&mut call).await else { panic!("not answered") };
    let ack = peer.recv().await;
    assert_eq!(ack.method(), Some(&Method::Ack));
    let hangup = tokio::spawn(async move { dialog.hangup().await });
    let bye = peer.recv().await;
    assert_eq!(bye.method(), Some(&Method::Bye));
    peer.send(&response(&bye, 200, "OK", "", "")).await;
    assert_eq!(timeout(WAIT, hangup).await.unwrap().unwrap(), Ok(()));
    endpoint.shutdown().await;
}

/// Cancelled by the application after a 180: CANCEL, 200, 487, ACK; outcome Cancelled.
#[tokio::test]
async fn udp_call_cancelled_after_ringing() {
    let (endpoint, _calls) = start().await;
    let uas = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut call = endpoint.place_call(outgoing(uas.local_addr().unwrap(), Transport::Udp, None)).unwrap();
    let (invite, from) = recv_method(&uas, Method::Invite).await;
    uas.send_to(&response(&invite, 180, "Ringing", "", ""), from).await.unwrap();
    assert!(matches!(progress(&mut call).await, CallProgress::Provisional { status: 180, .. }));
    call.cancel();
    let (cancel, _) = recv_method(&uas, Method::Cancel).await;
    uas.send_to(&response(&cancel, 200, "OK", "", ""), from).await.unwrap();
    uas.send_to(&response(&invite, 487, "Request Terminated", "", ""), from).await.unwrap();
    assert!(matches!(progress(&mut call).await, CallProgress::Failed(CallFailure::Cancelled)));
    recv_method(&uas, Method::Ack).await;
    endpoint.shutdown().await;
}

/// Nobody listens: the refused TCP connection fails the call at once (not after Timer B).
#[tokio::test]
async fn tcp_call_to_a_closed_port_is_unreachable_at_once() {
    let (endpoint, _calls) = start().await;
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    let mut call = endpoint.place_call(outgoing(closed, Transport::Tcp, None)).unwrap();
    match progress(&mut call).await {
        CallProgress::Failed(CallFailure::Unreachable { reason }) => assert!(reason.contains("TCP"), "{reason}"),
        other => panic!("expected unreachable, got {other:?}"),
    }
    endpoint.shutdown().await;
}

struct TcpPeer {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl TcpPeer {
    async fn recv(&mut self) -> Message {
        loop {
            if let StreamFrame::Message { len, .. } = frame_stream(&self.buf, 65_536) {
                let bytes: Vec<u8> = self.buf.drain(..len).collect();
                return parse_message(&bytes, Transport::Tcp).unwrap();
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("no TCP message in time").unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.unwrap();
    }
}

/// Our client against our own server: a call placed from one endpoint to another is answered,
/// confirmed on both sides (our ACK matches our UAS's dialog), and hung up by the caller; a
/// second call is cancelled while ringing.
#[tokio::test]
async fn our_client_calls_our_server() {
    let (caller, _caller_calls) = start().await;
    let (callee, mut callee_calls) = start().await;
    for transport in [Transport::Udp, Transport::Tcp] {
        let callee_addr = match transport {
            Transport::Udp => callee.local_udp_addr().unwrap(),
            Transport::Tcp => callee.local_tcp_addr().unwrap(),
            Transport::Tls => unreachable!("tests/tls.rs covers TLS"),
        };
        let mut call = caller.place_call(outgoing(callee_addr, transport, None)).unwrap();
        let incoming = timeout(WAIT, callee_calls.recv()).await.unwrap().unwrap();
        assert_eq!(incoming.info.call_id, call.call_id());
        assert_eq!(incoming.info.dialled, "+15551234567");
        assert_eq!(incoming.info.transport, transport);
        incoming.invite.ringing();
        assert!(matches!(progress(&mut call).await, CallProgress::Provisional { status: 180, .. }));
        let mut uas_dialog = incoming.invite.accept(ANSWER).expect("still pending");
        let CallProgress::Answered { dialog: mut uac_dialog, sdp_answer } = progress(&mut call).await else {
            panic!("not answered")
        };
        assert_eq!(sdp_answer, ANSWER);
        assert_eq!(timeout(WAIT, uac_dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));
        assert_eq!(timeout(WAIT, uas_dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));
        // Requests inside the dialog, from either side, come back with their final response.
        let options = uac_dialog.send_request(Method::Options, &[], b"");
        assert_eq!(timeout(WAIT, options).await.unwrap(), Ok((200, "OK".to_string())));
        let info =
            uas_dialog.send_request(Method::Info, &[("Content-Type", "application/dtmf-relay")], b"Signal=5\r\n");
        assert_eq!(timeout(WAIT, info).await.unwrap(), Ok((200, "OK".to_string())));
        let key = DialogEvent::Info { content_type: "application/dtmf-relay".into(), body: "Signal=5\r\n".into() };
        assert_eq!(timeout(WAIT, uac_dialog.next_event()).await.unwrap(), Some(key), "RFC 6086 DTMF INFO");
        assert_eq!(
            uac_dialog.send_request(Method::Bye, &[], b"").await,
            Err(switchboard_sip::RequestError::NotAllowed(Method::Bye))
        );
        assert_eq!(timeout(WAIT, uac_dialog.hangup()).await.unwrap(), Ok(()));
        assert_eq!(timeout(WAIT, uas_dialog.next_event()).await.unwrap(), Some(DialogEvent::RemoteBye));

        // Cancelled while ringing: the callee sees the CANCEL, the caller gets Cancelled.
        let mut call = caller.place_call(outgoing(callee_addr, transport, None)).unwrap();
        let mut incoming = timeout(WAIT, callee_calls.recv()).await.unwrap().unwrap();
        incoming.invite.ringing();
        assert!(matches!(progress(&mut call).await, CallProgress::Provisional { status: 180, .. }));
        call.cancel();
        timeout(WAIT, incoming.invite.cancelled()).await.unwrap();
        assert!(matches!(progress(&mut call).await, CallProgress::Failed(CallFailure::Cancelled)));
    }
    caller.shutdown().await;
    callee.shutdown().await;
}
