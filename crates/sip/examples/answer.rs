//! Answers every call with a fixed PCMU SDP and waits for the caller's BYE.
//! Usage: `cargo run -p switchboard-sip --example answer -- 127.0.0.1:5060`
//! (handy as a peer for SIPp: `sipp -sn uac 127.0.0.1:5060 -m 10`).

use std::net::SocketAddr;

use switchboard_sip::{DialogEvent, EndpointConfig, SipEndpoint};

const ANSWER: &str = "v=0\r\no=switchboard 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:5060".into()).parse()?;
    let cfg = EndpointConfig { udp: Some(listen), tcp: Some(listen), ..EndpointConfig::default() };
    let (endpoint, mut calls) = SipEndpoint::bind(cfg).await?;
    println!("listening on udp {:?} tcp {:?}", endpoint.local_udp_addr(), endpoint.local_tcp_addr());
    while let Some(call) = calls.recv().await {
        println!(
            "call {} to {} from {} over {:?}",
            call.info.call_id, call.info.dialled, call.info.source, call.info.transport
        );
        call.invite.ringing();
        let Some(mut dialog) = call.invite.accept(ANSWER) else {
            continue; // cancelled before we answered
        };
        tokio::spawn(async move {
            while let Some(event) = dialog.next_event().await {
                println!("{}: {event:?}", dialog.call_id());
                if event == DialogEvent::AckTimeout {
                    break;
                }
            }
        });
    }
    Ok(())
}
