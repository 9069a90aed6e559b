//! Places one call with a PCMU offer, prints each step, hangs up after a second.
//! Usage: `cargo run -p switchboard-sip --example call -- LISTEN DESTINATION [udp|tcp] [USER PASSWORD]`
//! (handy against SIPp: `sipp -sn uas -i 127.0.0.1 -p 5070`, then
//! `cargo run -p switchboard-sip --example call -- 127.0.0.1:5060 127.0.0.1:5070`); with
//! `examples/sipp_uas_verify_auth.xml` SIPp verifies our digest answer itself (user gw, password secret).

use std::net::SocketAddr;
use std::time::Duration;

use switchboard_sip::{CallProgress, Credentials, EndpointConfig, OutgoingCall, SipEndpoint, Transport};

const OFFER: &str = "v=0\r\no=switchboard 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:5060".into()).parse()?;
    let destination: SocketAddr = args.next().unwrap_or_else(|| "127.0.0.1:5070".into()).parse()?;
    let transport = match args.next().as_deref() {
        Some("tcp") => Transport::Tcp,
        _ => Transport::Udp,
    };
    let credentials = match (args.next(), args.next()) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        _ => None,
    };
    let cfg = EndpointConfig { udp: Some(listen), tcp: Some(listen), ..EndpointConfig::default() };
    let (endpoint, _calls) = SipEndpoint::bind(cfg).await?;
    let mut call = endpoint.place_call(OutgoingCall {
        request_uri: format!("sip:service@{destination}"),
        to: format!("sip:service@{destination}"),
        from_uri: format!("sip:switchboard@{listen}"),
        from_display: Some("Switchboard".into()),
        destination,
        transport,
        sdp_offer: OFFER.into(),
        credentials,
        ring_timeout: Duration::from_secs(30),
        extra_headers: Vec::new(),
        tls: None,
    })?;
    println!("INVITE sent, Call-ID {}", call.call_id());
    loop {
        match call.progress().await {
            CallProgress::Provisional { status, reason } => println!("{status} {reason}"),
            CallProgress::Answered { mut dialog, sdp_answer } => {
                println!("answered; SDP answer:\n{sdp_answer}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                println!("hangup: {:?}", dialog.hangup().await);
                break;
            }
            CallProgress::Failed(failure) => {
                println!("failed: {failure}");
                break;
            }
        }
    }
    endpoint.shutdown().await;
    Ok(())
}
