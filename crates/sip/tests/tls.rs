//! SIP over TLS (RFC 3261 §26.2) through a bound endpoint: a tokio-rustls client's OPTIONS and
//! INVITE, Via and Contact saying TLS (and sips), our client calling our server over TLS with
//! the certificate verified, and what must not harm the listener: a garbage handshake, a
//! half-open connection, a client without the certificate mutual TLS asks for.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::RootCertStore;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use switchboard_sip::endpoint::TcpLimits;
use switchboard_sip::message::{Message, Method, StreamFrame, frame_stream, parse_message};
use switchboard_sip::tls::{
    ConfigForSource, ServerCertificate, ServerTrust, TlsConnect, TlsListener, client_config, server_config,
};
use switchboard_sip::{
    CallFailure, CallProgress, DialogEvent, EndpointConfig, IncomingCall, OutgoingCall, SipEndpoint, Timers, Transport,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Guard against hangs only; never a performance assertion.
const WAIT: Duration = Duration::from_secs(5);

/// A test CA and what it issued.
struct Pki {
    ca: CertificateDer<'static>,
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Pki { ca: issuer.der().clone(), issuer }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses) and its key.
    fn issue(&self, names: &[&str]) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        let key = KeyPair::generate().unwrap();
        let params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (vec![cert.der().clone()], PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())))
    }

    fn roots(&self) -> RootCertStore {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        roots
    }
}

async fn start_tls(pki: &Pki, adjust: impl FnOnce(&mut EndpointConfig)) -> (SipEndpoint, mpsc::Receiver<IncomingCall>) {
    let (certs, key) = pki.issue(&["localhost", "127.0.0.1"]);
    let mut cfg = EndpointConfig {
        udp: Some("127.0.0.1:0".parse().unwrap()),
        tcp: None,
        user_agent: "switchboard-test".into(),
        timers: Timers {
            t1: Duration::from_millis(100),
            t2: Duration::from_millis(400),
            t4: Duration::from_millis(500),
        },
        tls: Some(
            TlsListener::new(
                "127.0.0.1:0".parse().unwrap(),
                Arc::new(ServerCertificate::new(certs, key).unwrap()),
                None,
                Duration::from_millis(500),
            )
            .unwrap(),
        ),
        ..EndpointConfig::default()
    };
    adjust(&mut cfg);
    SipEndpoint::bind(cfg).await.unwrap()
}

/// A SIP peer on a TLS (or any) stream: frames what it reads.
struct Peer<S> {
    stream: S,
    buf: Vec<u8>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    async fn send(&mut self, text: &str) {
        self.stream.write_all(text.as_bytes()).await.unwrap();
        self.stream.flush().await.unwrap();
    }

    async fn recv(&mut self) -> Message {
        loop {
            match frame_stream(&self.buf, 65_536) {
                StreamFrame::Message { len, .. } => {
                    let bytes: Vec<u8> = self.buf.drain(..len).collect();
                    return parse_message(&bytes, Transport::Tls).unwrap();
                }
                StreamFrame::Keepalive(n) => {
                    self.buf.drain(..n);
                    continue;
                }
                _ => {}
            }
            let mut chunk = [0u8; 4096];
            let n = timeout(WAIT, self.stream.read(&mut chunk)).await.expect("no message in time").unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

async fn tls_client(
    pki: &Pki,
    target: SocketAddr,
) -> Result<Peer<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let config = client_config(ServerTrust::Roots(pki.roots())).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(target).await?;
    let stream = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await?;
    Ok(Peer { stream, buf: Vec::new() })
}

fn invite(request_uri: &str, local: SocketAddr, call_id: &str) -> String {
    let body = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
    let contact_scheme = if request_uri.starts_with("sips:") { "sips" } else { "sip" };
    format!(
        "INVITE {request_uri} SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-{call_id}-inv;rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=caller\r\n\
         To: <sip:15550001000@example.com>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <{contact_scheme}:alice@{local};transport=tls>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn request(method: &str, local: SocketAddr, call_id: &str, to_tag: Option<&str>, cseq: u32) -> String {
    let tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    format!(
        "{method} sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TLS {local};branch=z9hG4bK-{call_id}-{method}-{cseq};rport\r\n\
         Max-Forwards: 70\r\n\
         From: \"Alice\" <sip:alice@example.com>;tag=caller\r\n\
         To: <sip:15550001000@example.com>{tag}\r\n\
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

#[tokio::test]
async fn a_tls_client_gets_options_answered_and_an_invite_through_to_bye() {
    let pki = Pki::new();
    let (endpoint, mut calls) = start_tls(&pki, |_| {}).await;
    let target = endpoint.local_tls_addr().unwrap();
    let mut phone = tls_client(&pki, target).await.unwrap();
    let local = phone.stream.get_ref().0.local_addr().unwrap();

    phone.send(&request("OPTIONS", local, "tls-opt", None, 1)).await;
    let options = phone.recv().await;
    assert_eq!(options.status(), Some(200));
    assert_eq!(options.top_via().unwrap().transport, "TLS");

    phone.send(&invite(&format!("sip:15550001000@{target};transport=tls"), local, "tls-1")).await;
    assert_eq!(phone.recv().await.status(), Some(100));
    let call = timeout(WAIT, calls.recv()).await.unwrap().unwrap();
    assert_eq!(call.info.transport, Transport::Tls);
    assert_eq!(call.info.source, local);
    let mut dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = phone.recv().await;
    assert_eq!(ok.status(), Some(200));
    assert_eq!(ok.header("Contact").unwrap(), format!("<sip:switchboard@{target};transport=tls>"));
    let tag = ok.to_tag().unwrap();
    phone.send(&request("ACK", local, "tls-1", Some(&tag), 1)).await;
    assert_eq!(timeout(WAIT, dialog.next_event()).await.unwrap(), Some(DialogEvent::Confirmed));

    // Our BYE comes back on the caller's TLS connection, with a TLS Via and Contact.
    let hangup = tokio::spawn(async move { dialog.hangup().await });
    let bye = phone.recv().await;
    assert_eq!(bye.method(), Some(&Method::Bye));
    assert_eq!(bye.top_via().unwrap().transport, "TLS");
    assert_eq!(bye.header("Contact").unwrap(), format!("<sip:switchboard@{target};transport=tls>"));
    phone.send(&reply_to(&bye, 200)).await;
    assert_eq!(timeout(WAIT, hangup).await.unwrap().unwrap(), Ok(()));
}

#[tokio::test]
async fn a_sips_request_uri_gets_a_sips_contact() {
    let pki = Pki::new();
    let (endpoint, mut calls) = start_tls(&pki, |_| {}).await;
    let target = endpoint.local_tls_addr().unwrap();
    let mut phone = tls_client(&pki, target).await.unwrap();
    let local = phone.stream.get_ref().0.local_addr().unwrap();
    phone.send(&invite(&format!("sips:15550001000@{target}"), local, "sips-1")).await;
    assert_eq!(phone.recv().await.status(), Some(100));
    let call = timeout(WAIT, calls.recv()).await.unwrap().unwrap();
    call.invite.ringing();
    let ringing = phone.recv().await;
    assert_eq!(ringing.status(), Some(180));
    // RFC 3261 §8.1.1.8, RFC 5630 §3.2: sips, and no transport=tls with it.
    assert_eq!(ringing.header("Contact").unwrap(), format!("<sips:switchboard@{target}>"));
    let _dialog = call.invite.accept("v=0\r\n").expect("INVITE still pending");
    let ok = phone.recv().await;
    assert_eq!(ok.header("Contact").unwrap(), format!("<sips:switchboard@{target}>"));
}

/// Whether the server closes `stream` within `limit` (EOF or reset).
async fn closed_by_server(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn garbage_and_half_open_handshakes_are_closed_without_harm() {
    let pki = Pki::new();
    let (endpoint, _calls) = start_tls(&pki, |cfg| {
        cfg.tcp_limits = TcpLimits { max_connections_per_address: 1, ..TcpLimits::default() };
    })
    .await;
    let target = endpoint.local_tls_addr().unwrap();

    // Cleartext SIP on the TLS port: the handshake fails, the connection is closed.
    let mut garbage = TcpStream::connect(target).await.unwrap();
    let local = garbage.local_addr().unwrap();
    garbage.write_all(request("OPTIONS", local, "plain", None, 1).as_bytes()).await.unwrap();
    assert!(closed_by_server(&mut garbage, WAIT).await, "a garbage handshake closes the connection");

    // A connection that never says anything holds its address's only slot until the
    // handshake timeout: meanwhile another connection from the address is refused.
    let mut half_open = TcpStream::connect(target).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut refused = TcpStream::connect(target).await.unwrap();
    assert!(closed_by_server(&mut refused, Duration::from_millis(400)).await, "the slot is held by the handshake");
    assert!(closed_by_server(&mut half_open, WAIT).await, "a half-open connection is closed at the handshake timeout");

    // The listener is unharmed and the slot released: a real client gets through.
    let mut phone = tls_client(&pki, target).await.unwrap();
    let local = phone.stream.get_ref().0.local_addr().unwrap();
    phone.send(&request("OPTIONS", local, "after", None, 1)).await;
    assert_eq!(phone.recv().await.status(), Some(200));
    assert!(endpoint.stopped().is_none());
}

#[tokio::test]
async fn mutual_tls_refuses_a_client_without_a_certificate_from_the_ca() {
    let pki = Pki::new();
    let (certs, key) = pki.issue(&["localhost"]);
    let config = server_config(Arc::new(ServerCertificate::new(certs, key).unwrap()), Some(pki.roots())).unwrap();
    let (endpoint, _calls) = start_tls(&pki, |cfg| {
        if let Some(tls) = cfg.tls.as_mut() {
            tls.config = Arc::new(config);
        }
    })
    .await;
    let target = endpoint.local_tls_addr().unwrap();

    // No client certificate: TLS 1.3 reports the refusal on the first read.
    let refused = match tls_client(&pki, target).await {
        Err(_) => true,
        Ok(mut phone) => {
            let local = phone.stream.get_ref().0.local_addr().unwrap();
            let _ = phone.stream.write_all(request("OPTIONS", local, "nocert", None, 1).as_bytes()).await;
            let mut buf = [0u8; 256];
            !matches!(timeout(WAIT, phone.stream.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
        }
    };
    assert!(refused, "a client without a certificate must not get through");

    // With a certificate issued by the CA: answered.
    let (client_certs, client_key) = pki.issue(&["client.example"]);
    let config = rustls::ClientConfig::builder_with_provider(switchboard_sip::tls::provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(pki.roots())
        .with_client_auth_cert(client_certs, client_key)
        .unwrap();
    let tcp = TcpStream::connect(target).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let mut phone = Peer { stream, buf: Vec::new() };
    let local = phone.stream.get_ref().0.local_addr().unwrap();
    phone.send(&request("OPTIONS", local, "cert", None, 1)).await;
    assert_eq!(phone.recv().await.status(), Some(200));
}

fn outgoing(destination: SocketAddr, tls: TlsConnect) -> OutgoingCall {
    OutgoingCall {
        request_uri: format!("sip:+15551234567@{destination};transport=tls"),
        to: format!("sip:+15551234567@{destination}"),
        from_uri: "sip:switchboard@127.0.0.1".into(),
        from_display: None,
        destination,
        transport: Transport::Tls,
        sdp_offer: "v=0\r\n".into(),
        credentials: None,
        ring_timeout: Duration::from_secs(5),
        extra_headers: Vec::new(),
        tls: Some(tls),
    }
}

#[tokio::test]
async fn our_client_calls_our_server_over_verified_tls() {
    let pki = Pki::new();
    let (caller, _) = start_tls(&pki, |_| {}).await;
    let (callee, mut callee_calls) = start_tls(&pki, |_| {}).await;
    let destination = callee.local_tls_addr().unwrap();
    let trusted = TlsConnect {
        config: Arc::new(client_config(ServerTrust::Roots(pki.roots())).unwrap()),
        server_name: ServerName::try_from("localhost").unwrap(),
    };
    let mut call = caller.place_call(outgoing(destination, trusted)).unwrap();
    let incoming = timeout(WAIT, callee_calls.recv()).await.unwrap().unwrap();
    assert_eq!(incoming.info.transport, Transport::Tls);
    let _callee_dialog = incoming.invite.accept("v=0\r\n").unwrap();
    let mut dialog = loop {
        match timeout(WAIT, call.progress()).await.unwrap() {
            CallProgress::Answered { dialog, .. } => break dialog,
            CallProgress::Provisional { .. } => {}
            CallProgress::Failed(failure) => panic!("call failed: {failure}"),
        }
    };
    assert_eq!(timeout(WAIT, dialog.hangup()).await.unwrap(), Ok(()));

    // A server whose certificate does not chain to the trunk's CA: the call fails at once,
    // as unreachable, without an INVITE reaching the callee. (Another callee: the connection
    // to the first one stays open and would be reused.)
    let (callee, mut callee_calls) = start_tls(&pki, |_| {}).await;
    let destination = callee.local_tls_addr().unwrap();
    let other = Pki::new();
    let untrusted = TlsConnect {
        config: Arc::new(client_config(ServerTrust::Roots(other.roots())).unwrap()),
        server_name: ServerName::try_from("localhost").unwrap(),
    };
    let mut call = caller.place_call(outgoing(destination, untrusted)).unwrap();
    match timeout(WAIT, call.progress()).await.unwrap() {
        CallProgress::Failed(CallFailure::Unreachable { .. }) => {}
        other => panic!("expected unreachable, got {other:?}"),
    }
    assert!(timeout(Duration::from_millis(200), callee_calls.recv()).await.is_err(), "no INVITE got through");

    // tls_verify = false (labs): any certificate is taken.
    let unverified = TlsConnect {
        config: Arc::new(client_config(ServerTrust::Unverified).unwrap()),
        server_name: ServerName::try_from("wrong.example").unwrap(),
    };
    let _call = caller.place_call(outgoing(destination, unverified)).unwrap();
    let incoming = timeout(WAIT, callee_calls.recv()).await.unwrap().unwrap();
    assert_eq!(incoming.info.transport, Transport::Tls);
}

#[tokio::test]
async fn a_replaced_certificate_is_presented_to_the_next_handshakes() {
    let (old_ca, new_ca) = (Pki::new(), Pki::new());
    let (certs, key) = old_ca.issue(&["localhost"]);
    let running = Arc::new(ServerCertificate::new(certs, key).unwrap());
    let listener = TlsListener::new("127.0.0.1:0".parse().unwrap(), running.clone(), None, WAIT).unwrap();
    let (endpoint, _calls) = start_tls(&old_ca, |cfg| cfg.tls = Some(listener)).await;
    let target = endpoint.local_tls_addr().unwrap();
    let mut before = tls_client(&old_ca, target).await.unwrap();
    assert!(tls_client(&new_ca, target).await.is_err(), "the renewed CA does not know the old certificate");

    // What a configuration reload does with a renewed sip.tls_cert (config/tls.rs).
    let (certs, key) = new_ca.issue(&["localhost"]);
    let renewed = ServerCertificate::new(certs, key).unwrap();
    assert!(running.replace_with(&renewed));
    let mut after = tls_client(&new_ca, target).await.unwrap();
    let local = after.stream.get_ref().0.local_addr().unwrap();
    after.send(&request("OPTIONS", local, "renewed", None, 1)).await;
    assert_eq!(after.recv().await.status(), Some(200));
    // The connection made before keeps working.
    let local = before.stream.get_ref().0.local_addr().unwrap();
    before.send(&request("OPTIONS", local, "kept", None, 1)).await;
    assert_eq!(before.recv().await.status(), Some(200));
}

/// A TLS client connecting from `source` (any 127.0.0.0/8 address reaches the listener).
async fn tls_client_from(
    pki: &Pki,
    source: std::net::IpAddr,
    target: SocketAddr,
) -> Result<Peer<tokio_rustls::client::TlsStream<TcpStream>>, std::io::Error> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let tcp = socket.connect(target).await?;
    let config = client_config(ServerTrust::Roots(pki.roots())).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    Ok(Peer { stream, buf: Vec::new() })
}

/// Whether `phone` gets its OPTIONS answered (a refused client certificate shows, in TLS 1.3,
/// only when the client reads).
async fn answered<S: AsyncRead + AsyncWrite + Unpin>(phone: &mut Peer<S>, local: SocketAddr) -> bool {
    let _ = phone.stream.write_all(request("OPTIONS", local, "who", None, 1).as_bytes()).await;
    let mut buf = [0u8; 512];
    matches!(timeout(WAIT, phone.stream.read(&mut buf)).await, Ok(Ok(n)) if n > 0)
}

#[tokio::test]
async fn a_source_with_its_own_configuration_must_show_a_client_certificate_and_others_need_not() {
    let pki = Pki::new();
    let trunk_ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    let (certs, key) = pki.issue(&["localhost"]);
    let certificate = Arc::new(ServerCertificate::new(certs, key).unwrap());
    let mutual = Arc::new(server_config(certificate.clone(), Some(pki.roots())).unwrap());
    let mut listener = TlsListener::new("127.0.0.1:0".parse().unwrap(), certificate, None, WAIT).unwrap();
    listener.per_source = Some(ConfigForSource::new(move |ip| (ip == trunk_ip).then(|| mutual.clone())));
    let (endpoint, _calls) = start_tls(&pki, |cfg| cfg.tls = Some(listener)).await;
    let target = endpoint.local_tls_addr().unwrap();

    // From the trunk's address, without a certificate: refused.
    let refused = match tls_client_from(&pki, trunk_ip, target).await {
        Err(_) => true,
        Ok(mut phone) => {
            let local = phone.stream.get_ref().0.local_addr().unwrap();
            !answered(&mut phone, local).await
        }
    };
    assert!(refused, "the trunk's address must show a client certificate");
    // From another address, the listener's own configuration: no certificate needed.
    let mut other = tls_client_from(&pki, "127.0.0.2".parse().unwrap(), target).await.unwrap();
    let local = other.stream.get_ref().0.local_addr().unwrap();
    assert!(answered(&mut other, local).await, "another source is served without a certificate");
}
