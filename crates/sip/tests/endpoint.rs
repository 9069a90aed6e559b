//! Drives a bound endpoint with raw UDP and TCP sockets.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_sip::endpoint::{EndpointStopped, TcpLimits};
use switchboard_sip::message::{Message, Method, StreamFrame, frame_stream, parse_message};
use switchboard_sip::{DialogEvent, EndpointConfig, HangupError, IncomingCall, SipEndpoint, Timers, Transport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Guard against hangs only; never a performance assertion.
const WAIT: Duration = Duration::from_secs(5);

async fn start() -> (SipEndpoint, mpsc::Receiver<IncomingCall>) {
    start_with_t1(100).await
}

async fn start_with_t1(t1_ms: u64) -> (SipEndpoint, mpsc::Receiver<IncomingCall>) {
    let cfg = EndpointConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        tcp: Some("127.0.0.1:0".parse().unwrap()),
        user_agent: "switchboard-test".into(),
        timers: Timers {
            t1: Duration::from_millis(t1_ms),
            t2: Duration::from_millis(t1_ms * 4),
            t4: Duration::from_millis(t1_ms * 5),
        },
        ..EndpointConfig::default()
    };
    SipEndpoint::bind(cfg).await.unwrap()
}

async fn recv_udp(socket: &UdpSocket) -> Message {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = timeout(WAIT, socket.recv_from(&mut buf)).await.expect("no SIP message in time").unwrap();
    match parse_message(&buf[..len], Transport::Udp) {
        Ok(m) => m,
        Err(e) => *e.partial.expect("unparseable message from the endpoint"),
    }
}

/// Next message that is not a retransmitted 2xx/1xx we are not interested in.
async fn recv_udp_where(socket: &UdpSocket, pred: impl Fn(&Message) -> bool) -> Message {
    loop {
        let m = recv_udp(socket).await;
        if pred(&m) {
            return m;
        }
    }
}

struct TcpPeer {
    stream: TcpStream,
    buf: Vec<u8>,
    pongs: usize,
}

impl TcpPeer {
    async fn recv(&mut self) -> Message {
        loop {
            match frame_stream(&self.buf, 65_536) {
                StreamFrame::Message { len, .. } => {
                    let bytes: Vec<u8> = self.buf.drain(..len).collect();
                    return parse_message(&bytes, Transport::Tcp).unwrap();
                }
                StreamFrame::Keepalive(n) => {
                    self.buf.drain(..n);
                    self.pongs += 1;
                    continue;
                }
                _ => {}
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("no TCP message in time").unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn invite(transport: &str, local: SocketAddr, target: SocketAddr, call_id: &str, extra: &str) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:15550001000@{target} SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{call_id}-inv;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@{local}>;tag=caller\r\n\
         To: <sip:15550001000@{target}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{local};transport={}>\r\n\
         {extra}\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        transport.to_ascii_lowercase(),
        body.len()
    )
}

fn in_dialog(method: &str, transport: &str, local: SocketAddr, call_id: &str, tag: &str, cseq: u32) -> String {
    format!(
        "{method} sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/{transport} {local};branch=z9hG4bK-{call_id}-{method}-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@{local}>;tag=caller\r\n\
         To: <sip:15550001000@127.0.0.1>;tag={tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

fn reply_to(request: &Message, status: u16) -> String {
    let mut out = format!("SIP/2.0 {status} OK\r\n");
    for via in request.header_values("Via") {
        out.push_str(&format!("Via: {via}\r\n"));
    }
    for name in ["From", "To", "Call-ID", "CSeq"] {
        out.push_str(&format!("{name}: {}\r\n", request.header(name).unwrap()));
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

async fn next_call(calls: &mut mpsc::Receiver<IncomingCall>) -> IncomingCall {
    timeout(WAIT, calls.recv()).await.unwrap().unwrap()
}

#[tokio::test]
async fn udp_call_with_remote_bye() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    let rr = "Record-Route: <sip:127.0.0.1:5999;lr>, <sip:10.0.0.1;lr>\r\n";
    phone.send_to(invite("UDP", local, target, "udp-1", rr).as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(100));

    let call = next_call(&mut calls).await;
    assert_eq!(call.info.dialled, "15550001000");
    assert_eq!(call.info.transport, Transport::Udp);
    assert_eq!(call.info.source, local);
    assert!(call.offer.as_deref().unwrap().contains("m=audio 6000"));
    call.invite.ringing();
    let ringing = recv_udp(&phone).await;
    assert_eq!(ringing.status(), Some(180));
    assert_eq!(ringing.header_values("Record-Route").count(), 2);

    let mut dialog = call.invite.accept("v=0\r\nanswer\r\n").expect("INVITE still pending");
    assert_eq!(dialog.call_id(), "udp-1");
    let ok = recv_udp(&phone).await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.body, b"v=0\r\nanswer\r\n");
    let rr: Vec<_> = ok.header_values("Record-Route").collect();
    assert_eq!(rr, vec!["<sip:127.0.0.1:5999;lr>", "<sip:10.0.0.1;lr>"]);
    assert_eq!(ok.header("Contact").unwrap(), format!("<sip:switchboard@{target};transport=udp>"));
    let via = ok.top_via().unwrap();
    assert_eq!(via.param("rport"), Some(local.port().to_string().as_str()));
    let tag = ok.to_tag().unwrap();

    phone.send_to(in_dialog("ACK", "UDP", local, "udp-1", &tag, 1).as_bytes(), target).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));

    phone.send_to(in_dialog("BYE", "UDP", local, "udp-1", &tag, 2).as_bytes(), target).await.unwrap();
    let bye_ok = recv_udp_where(&phone, |m| m.cseq().map(|c| c.1) == Some(Method::Bye)).await;
    assert_eq!(bye_ok.status(), Some(200));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::RemoteBye));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), None);
    assert_eq!(dialog.hangup().await, Ok(()));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn udp_hangup_sends_bye_along_the_route_set() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    // The "proxy" in the route set is our raw socket itself.
    let rr = format!("Record-Route: <sip:{local};lr>\r\n");
    phone.send_to(invite("UDP", local, target, "udp-2", &rr).as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(100));
    let call = next_call(&mut calls).await;
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = recv_udp(&phone).await;
    let tag = ok.to_tag().unwrap();
    phone.send_to(in_dialog("ACK", "UDP", local, "udp-2", &tag, 1).as_bytes(), target).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));

    let hangup = tokio::spawn(async move { dialog.hangup().await });
    let bye = recv_udp_where(&phone, |m| m.method() == Some(&Method::Bye)).await;
    assert_eq!(bye.request_uri().unwrap(), format!("sip:alice@{local};transport=udp"));
    assert_eq!(bye.header("Route").unwrap(), format!("<sip:{local};lr>"));
    assert_eq!(bye.from_tag().as_deref(), Some(tag.as_str()));
    assert_eq!(bye.to_tag().as_deref(), Some("caller"));
    phone.send_to(reply_to(&bye, 200).as_bytes(), target).await.unwrap();
    assert_eq!(timeout(WAIT, hangup).await.unwrap().unwrap(), Ok(()));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn udp_error_responses() {
    let (endpoint, _calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();

    let options = in_dialog("OPTIONS", "UDP", local, "opt-1", "x", 1).replace(";tag=x", "");
    phone.send_to(options.as_bytes(), target).await.unwrap();
    let m = recv_udp(&phone).await;
    assert_eq!(m.status(), Some(200));
    assert_eq!(m.header("Allow"), Some("INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK"));
    assert_eq!(m.header("Server"), Some("switchboard-test"));

    endpoint.set_options_response(503);
    let options = options.replace("CSeq: 1", "CSeq: 2").replace("-1;rport", "-2;rport");
    phone.send_to(options.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(503));

    let unknown = in_dialog("FROB", "UDP", local, "frob-1", "x", 1).replace(";tag=x", "");
    phone.send_to(unknown.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(501));

    let register = in_dialog("REGISTER", "UDP", local, "reg-1", "x", 1).replace(";tag=x", "");
    phone.send_to(register.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(405));

    let stray_bye = in_dialog("BYE", "UDP", local, "nope", "nosuchtag", 7);
    phone.send_to(stray_bye.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(481));

    let bad = in_dialog("OPTIONS", "UDP", local, "bad-1", "x", 1)
        .replace(";tag=x", "")
        .replace("Content-Length: 0", "Content-Length: zero");
    phone.send_to(bad.as_bytes(), target).await.unwrap();
    let m = recv_udp(&phone).await;
    assert_eq!(m.status(), Some(400));
    assert_eq!(m.call_id(), Some("bad-1"));

    // Garbage without a Via: dropped; the next valid request is still answered.
    phone.send_to(b"\x00\x01garbage\r\n\r\n", target).await.unwrap();
    let options = options.replace("CSeq: 2", "CSeq: 3").replace("-2;rport", "-3;rport");
    phone.send_to(options.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.cseq().map(|c| c.0), Some(3));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn udp_cancel() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    let text = invite("UDP", local, target, "cancel-1", "");
    phone.send_to(text.as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(100));
    let mut call = next_call(&mut calls).await;

    let cancel = format!(
        "CANCEL sip:15550001000@{target} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-cancel-1-inv;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@{local}>;tag=caller\r\n\
         To: <sip:15550001000@{target}>\r\n\
         Call-ID: cancel-1\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    phone.send_to(cancel.as_bytes(), target).await.unwrap();
    let first = recv_udp(&phone).await;
    let second = recv_udp(&phone).await;
    assert_eq!(first.status(), Some(200));
    assert_eq!(first.cseq().map(|c| c.1), Some(Method::Cancel));
    assert_eq!(second.status(), Some(487));
    timeout(WAIT, call.invite.cancelled()).await.unwrap();
    assert!(call.invite.accept("v=0\r\n").is_none(), "no dialog after the CANCEL won");
    endpoint.shutdown().await;
}

#[tokio::test]
async fn tcp_call_with_local_hangup() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_tcp_addr().unwrap();
    let stream = TcpStream::connect(target).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut phone = TcpPeer { stream, buf: Vec::new(), pongs: 0 };
    // Keep-alive CRLFs first, then the INVITE split across two writes.
    let text = invite("TCP", local, target, "tcp-1", "");
    phone.stream.write_all(b"\r\n\r\n").await.unwrap();
    let (a, b) = text.as_bytes().split_at(60);
    phone.stream.write_all(a).await.unwrap();
    phone.stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    phone.stream.write_all(b).await.unwrap();
    assert_eq!(phone.recv().await.status(), Some(100));
    assert_eq!(phone.pongs, 1, "double-CRLF ping answered with a CRLF pong (RFC 5626)");

    let call = next_call(&mut calls).await;
    assert_eq!(call.info.transport, Transport::Tcp);
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = phone.recv().await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Contact").unwrap(), format!("<sip:switchboard@{target};transport=tcp>"));
    let tag = ok.to_tag().unwrap();
    phone.stream.write_all(in_dialog("ACK", "TCP", local, "tcp-1", &tag, 1).as_bytes()).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));

    let hangup = tokio::spawn(async move { dialog.hangup().await });
    let bye = phone.recv().await;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.top_via().unwrap().transport, "TCP");
    phone.stream.write_all(reply_to(&bye, 200).as_bytes()).await.unwrap();
    assert_eq!(timeout(WAIT, hangup).await.unwrap().unwrap(), Ok(()));

    // A request without Content-Length on TCP: 400.
    let options = in_dialog("OPTIONS", "TCP", local, "tcp-opt", "x", 1)
        .replace(";tag=x", "")
        .replace("Content-Length: 0\r\n", "");
    phone.stream.write_all(options.as_bytes()).await.unwrap();
    let m = phone.recv().await;
    assert_eq!(m.status(), Some(400));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn ack_timeout_sends_bye() {
    let (endpoint, mut calls) = start_with_t1(20).await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    phone.send_to(invite("UDP", local, target, "noack", "").as_bytes(), target).await.unwrap();
    let call = next_call(&mut calls).await;
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    // Never ACK: after 64*T1 (1.28 s with T1 = 20 ms) the endpoint gives up and sends BYE.
    let event = timeout(Duration::from_secs(15), dialog.next_event()).await.unwrap();
    assert_eq!(event, Some(DialogEvent::AckTimeout));
    let bye =
        timeout(Duration::from_secs(5), recv_udp_where(&phone, |m| m.method() == Some(&Method::Bye))).await.unwrap();
    phone.send_to(reply_to(&bye, 200).as_bytes(), target).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.hangup()).await.unwrap(), Ok(()));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn dropped_invite_is_rejected_and_dropped_dialog_hangs_up() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    phone.send_to(invite("UDP", local, target, "drop-1", "").as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(100));
    drop(next_call(&mut calls).await);
    assert_eq!(recv_udp(&phone).await.status(), Some(500));

    phone.send_to(invite("UDP", local, target, "drop-2", "").as_bytes(), target).await.unwrap();
    assert_eq!(recv_udp(&phone).await.status(), Some(100));
    let dialog = next_call(&mut calls).await.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = recv_udp_where(&phone, |m| m.status() == Some(200)).await;
    let tag = ok.to_tag().unwrap();
    phone.send_to(in_dialog("ACK", "UDP", local, "drop-2", &tag, 1).as_bytes(), target).await.unwrap();
    drop(dialog);
    let bye = recv_udp_where(&phone, |m| m.method() == Some(&Method::Bye)).await;
    assert_eq!(bye.call_id(), Some("drop-2"));
    endpoint.shutdown().await;
}

async fn start_with(adjust: impl FnOnce(&mut EndpointConfig)) -> (SipEndpoint, mpsc::Receiver<IncomingCall>) {
    let mut cfg = EndpointConfig {
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
    adjust(&mut cfg);
    SipEndpoint::bind(cfg).await.unwrap()
}

fn options(local: SocketAddr, call_id: &str, vias: usize) -> String {
    let mut extra_vias = String::new();
    for i in 0..vias {
        extra_vias.push_str(&format!(
            "Via: SIP/2.0/TCP proxy{i}.example.invalid:5060;branch=z9hG4bK-{i}-{}\r\n",
            "x".repeat(120)
        ));
    }
    format!(
        "OPTIONS sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-{call_id}\r\n\
         {extra_vias}\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=p\r\n\
         To: <sip:switchboard@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// Reads until the peer closes (EOF or reset); `false` if it is still open after `limit`.
async fn closed_by_peer(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_panicking_driver_is_reported_and_releases_every_waiter() {
    let (endpoint, mut calls) = start().await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    phone.send_to(invite("UDP", local, target, "doomed", "").as_bytes(), target).await.unwrap();
    let call = next_call(&mut calls).await;
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = recv_udp_where(&phone, |m| m.status() == Some(200)).await;
    phone.send_to(in_dialog("ACK", "UDP", local, "doomed", &ok.to_tag().unwrap(), 1).as_bytes(), target).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));
    assert_eq!(endpoint.stopped(), None);

    endpoint.panic_driver_for_test();
    let stopped = timeout(WAIT, endpoint.closed()).await.expect("closed() must complete when the driver dies");
    match &stopped {
        EndpointStopped::TaskEnded { task, panic: Some(message) } => {
            assert_eq!(*task, "SIP driver");
            assert!(message.contains("test hook"), "{message}");
        }
        other => panic!("expected a driver panic, got {other:?}"),
    }
    assert_eq!(endpoint.stopped(), Some(stopped));
    // Nothing will answer a BYE any more: waiters end instead of hanging.
    assert_eq!(timeout(WAIT, dialog.hangup()).await.unwrap(), Err(HangupError::Shutdown));
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), None);
    assert!(timeout(WAIT, calls.recv()).await.unwrap().is_none(), "no more calls after the driver died");
}

#[tokio::test]
async fn shutdown_is_reported_as_shutdown() {
    let (endpoint, _calls) = start().await;
    endpoint.shutdown().await;
    assert_eq!(timeout(WAIT, endpoint.closed()).await.unwrap(), EndpointStopped::Shutdown);
}

#[tokio::test]
async fn backlog_503_carries_the_configured_retry_after() {
    let (endpoint, _calls) = start_with(|cfg| cfg.retry_after_secs = 17).await;
    let target = endpoint.local_udp_addr().unwrap();
    let phone = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let local = phone.local_addr().unwrap();
    // Nobody takes calls from the receiver: the 64-call backlog fills, then 503.
    for i in 0..70 {
        phone.send_to(invite("UDP", local, target, &format!("backlog-{i}"), "").as_bytes(), target).await.unwrap();
    }
    let refused = recv_udp_where(&phone, |m| m.status() == Some(503)).await;
    assert_eq!(refused.header("Retry-After"), Some("17"));
    endpoint.shutdown().await;
}

#[tokio::test]
async fn idle_tcp_connections_are_closed() {
    let limits = TcpLimits { idle_timeout: Duration::from_millis(300), ..TcpLimits::default() };
    let (endpoint, _calls) = start_with(|cfg| cfg.tcp_limits = limits).await;
    let target = endpoint.local_tcp_addr().unwrap();
    let mut idle = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_peer(&mut idle, WAIT).await, "an idle connection must be closed");
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoint.tcp_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "connection still registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    endpoint.shutdown().await;
}

/// A 70-minute call over TCP is quiet on SIP: its connection must not be closed for idling, or the
/// caller (behind NAT, say) could never get our BYE.
#[tokio::test]
async fn a_tcp_connection_carrying_a_call_outlives_the_idle_timeout() {
    let limits = TcpLimits { idle_timeout: Duration::from_millis(200), ..TcpLimits::default() };
    // A short T1: the INVITE transaction (64*T1 after its 2xx, RFC 6026) ends soon after the call.
    let (endpoint, mut calls) = start_with(|cfg| {
        cfg.tcp_limits = limits;
        cfg.timers.t1 = Duration::from_millis(20);
    })
    .await;
    let target = endpoint.local_tcp_addr().unwrap();
    let stream = TcpStream::connect(target).await.unwrap();
    let local = stream.local_addr().unwrap();
    let mut phone = TcpPeer { stream, buf: Vec::new(), pongs: 0 };
    phone.stream.write_all(invite("TCP", local, target, "tcp-quiet", "").as_bytes()).await.unwrap();
    assert_eq!(phone.recv().await.status(), Some(100));
    let call = next_call(&mut calls).await;
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = phone.recv().await;
    let tag = ok.to_tag().unwrap();
    phone.stream.write_all(in_dialog("ACK", "TCP", local, "tcp-quiet", &tag, 1).as_bytes()).await.unwrap();
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));

    // Five idle timeouts of silence, then our BYE still arrives on the same connection.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(endpoint.tcp_connections(), 1, "the call's connection was closed for idling");
    let hangup = tokio::spawn(async move { dialog.hangup().await });
    let bye = phone.recv().await;
    assert_eq!(bye.method(), Some(&Method::Bye));
    phone.stream.write_all(reply_to(&bye, 200).as_bytes()).await.unwrap();
    assert_eq!(timeout(WAIT, hangup).await.unwrap().unwrap(), Ok(()));

    // With the call over, the idle timeout applies again.
    assert!(closed_by_peer(&mut phone.stream, WAIT).await, "an idle connection without a call must be closed");
    endpoint.shutdown().await;
}

#[tokio::test]
async fn tcp_connections_beyond_the_per_address_cap_are_closed_at_once() {
    let limits = TcpLimits { max_connections_per_address: 2, ..TcpLimits::default() };
    let (endpoint, _calls) = start_with(|cfg| cfg.tcp_limits = limits).await;
    let target = endpoint.local_tcp_addr().unwrap();
    let mut kept = Vec::new();
    for _ in 0..2 {
        kept.push(TcpStream::connect(target).await.unwrap());
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoint.tcp_connections() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "connections not registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut third = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_peer(&mut third, WAIT).await, "the third connection from one address must be closed");
    // The first two still work.
    let local = kept[0].local_addr().unwrap();
    kept[0].write_all(options(local, "still-open", 0).as_bytes()).await.unwrap();
    let mut peer = TcpPeer { stream: kept.remove(0), buf: Vec::new(), pongs: 0 };
    assert_eq!(peer.recv().await.status(), Some(200));
    assert_eq!(endpoint.tcp_connections(), 2);

    let limits = TcpLimits { max_connections: 1, ..TcpLimits::default() };
    let (endpoint, _calls) = start_with(|cfg| cfg.tcp_limits = limits).await;
    let target = endpoint.local_tcp_addr().unwrap();
    let _first = TcpStream::connect(target).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoint.tcp_connections() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "connection not registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut second = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_peer(&mut second, WAIT).await, "beyond the global cap connections are closed");
}

#[tokio::test]
async fn a_tcp_peer_that_does_not_read_is_disconnected() {
    let limits = TcpLimits { write_queue_bytes: 64 * 1024, ..TcpLimits::default() };
    let (endpoint, _calls) = start_with(|cfg| cfg.tcp_limits = limits).await;
    let target = endpoint.local_tcp_addr().unwrap();
    let mut stream = TcpStream::connect(target).await.unwrap();
    let local = stream.local_addr().unwrap();
    // Each OPTIONS carries 40 long Via headers, which the ~6 KB response repeats (§8.2.6.2).
    // We never read: once the kernel buffers are full the gateway's queue grows to its bound.
    let mut disconnected = false;
    for i in 0..20_000 {
        let request = options(local, &format!("flood-{i}"), 40);
        match timeout(WAIT, stream.write_all(request.as_bytes())).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => {
                disconnected = true;
                break;
            }
            Err(_) => break,
        }
    }
    if !disconnected {
        disconnected = closed_by_peer(&mut stream, WAIT).await;
    }
    assert!(disconnected, "a peer that never reads must be disconnected");
    let deadline = tokio::time::Instant::now() + WAIT;
    while endpoint.tcp_connections() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "connection still registered");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    endpoint.shutdown().await;
}
