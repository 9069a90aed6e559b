//! The async shell of one test call: the INVITE through the SIP client (digest when challenged),
//! then RTP both ways on a 20 ms clock driven by the [`TurnMachine`], the dialog's events (BYE,
//! REFER), and both sides recorded at 8 kHz on the call's RTP clock.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use switchboard_media::rtp::{RtpHeader, StreamStart, parse_rtp, write_rtp};
use switchboard_sdp::{Codec as SdpCodec, LocalMedia, OfferPolicy};
use switchboard_sip::message::Method;
use switchboard_sip::{CallFailure, CallProgress, Credentials, DialogEvent, OutgoingCall, SipEndpoint, Transport};
use tokio::net::UdpSocket;
use tokio::time::Instant;

use super::audio::{self, FRAME_SAMPLES, Law};
use super::turns::{CallerFrame, FRAME_MS, TurnMachine, TurnSpec, TurnTiming};

/// Everything needed to dial one call.
#[derive(Debug, Clone)]
pub struct DialPlan {
    pub request_uri: String,
    pub from_uri: String,
    pub destination: SocketAddr,
    pub transport: Transport,
    pub credentials: Option<Credentials>,
    /// G.711 codecs to offer, preferred first.
    pub codecs: Vec<SdpCodec>,
    /// Address in our SDP, and the one the RTP socket binds.
    pub media_address: IpAddr,
    pub media_bind: IpAddr,
    pub ring_timeout: Duration,
    /// The whole call, from INVITE to the end of the last turn.
    pub call_timeout: Duration,
    pub agent_quiet_ms: u64,
}

/// The caller's side of each turn: audio (8 kHz) for say/wav turns, digits for dtmf turns.
#[derive(Debug, Clone, Default)]
pub struct TurnMedia {
    pub speech: Vec<i16>,
    pub digits: Vec<char>,
}

/// Why a call did not connect (or did not finish).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallFailureKind {
    Busy {
        status: u16,
    },
    Rejected {
        status: u16,
        reason: String,
    },
    Unreachable {
        reason: String,
    },
    /// No final answer in time, or the call outlived `call_timeout_ms`.
    Timeout {
        reason: String,
    },
    AuthFailed {
        status: u16,
    },
    /// The answer's SDP cannot be used, or RTP could not be set up.
    Media {
        reason: String,
    },
}

impl CallFailureKind {
    /// The report's and the load summary's label.
    pub fn label(&self) -> &'static str {
        match self {
            CallFailureKind::Busy { .. } => "busy",
            CallFailureKind::Rejected { .. } => "rejected",
            CallFailureKind::Unreachable { .. } => "unreachable",
            CallFailureKind::Timeout { .. } => "timeout",
            CallFailureKind::AuthFailed { .. } => "auth_failed",
            CallFailureKind::Media { .. } => "media",
        }
    }

    pub fn describe(&self) -> String {
        match self {
            CallFailureKind::Busy { status } => format!("busy ({status})"),
            CallFailureKind::Rejected { status, reason } => format!("rejected ({status} {reason})"),
            CallFailureKind::Unreachable { reason } => format!("unreachable ({reason})"),
            CallFailureKind::Timeout { reason } => format!("timeout ({reason})"),
            CallFailureKind::AuthFailed { status } => format!("authentication failed ({status})"),
            CallFailureKind::Media { reason } => format!("media ({reason})"),
        }
    }
}

/// What one call did.
#[derive(Debug, Clone, Default)]
pub struct CallRecord {
    /// `None`: connected and ran to its end.
    pub failure: Option<CallFailureKind>,
    pub sip_call_id: String,
    pub codec: String,
    pub timings: Vec<TurnTiming>,
    /// Who ended the call: `caller` (us), `agent` (its BYE), `timeout`, or empty when it never connected.
    pub ended_by: String,
    /// Both sides at 8 kHz, sample `n` at `n / 8` ms on the call's RTP clock.
    pub caller_track: Vec<i16>,
    pub agent_track: Vec<i16>,
    pub law: Option<Law>,
    /// Things worth knowing that are not failures (no telephone-event negotiated...).
    pub notes: Vec<String>,
}

/// Places one call and runs its turns.
pub async fn run_call(sip: &SipEndpoint, plan: &DialPlan, specs: Vec<TurnSpec>, media: &[TurnMedia]) -> CallRecord {
    let mut record = CallRecord { timings: vec![TurnTiming::default(); specs.len()], ..CallRecord::default() };
    let started = Instant::now();
    let deadline = started + plan.call_timeout;
    let socket = match UdpSocket::bind(SocketAddr::new(plan.media_bind, 0)).await {
        Ok(socket) => socket,
        Err(e) => {
            record.failure = Some(CallFailureKind::Media { reason: format!("cannot bind an RTP socket: {e}") });
            return record;
        }
    };
    let port = socket.local_addr().map(|a| a.port()).unwrap_or_default();
    let local =
        LocalMedia { address: plan.media_address, port, session_id: rand::random::<u32>().into(), session_version: 1 };
    // Plain RTP: the test caller offers no SRTP (a trunk requiring it refuses the call with 488).
    let policy = OfferPolicy {
        codecs: plan.codecs.clone(),
        ptime_ms: FRAME_MS as u32,
        telephone_event: true,
        srtp: switchboard_sdp::SrtpMode::Off,
    };
    let offer = match switchboard_sdp::create_offer(&policy, &local) {
        Ok(offer) => offer,
        Err(e) => {
            record.failure = Some(CallFailureKind::Media { reason: e.to_string() });
            return record;
        }
    };
    let outgoing = OutgoingCall {
        request_uri: plan.request_uri.clone(),
        to: plan.request_uri.clone(),
        from_uri: plan.from_uri.clone(),
        from_display: None,
        destination: plan.destination,
        transport: plan.transport,
        sdp_offer: offer.sdp.clone(),
        credentials: plan.credentials.clone(),
        ring_timeout: plan.ring_timeout,
        extra_headers: vec![("X-Switchboard-Test-Call".to_string(), "1".to_string())],
        tls: None,
    };
    let mut invite = match sip.place_call(outgoing) {
        Ok(invite) => invite,
        Err(e) => {
            record.failure = Some(CallFailureKind::Unreachable { reason: e.to_string() });
            return record;
        }
    };
    record.sip_call_id = invite.call_id().to_string();
    let answered = tokio::time::timeout_at(deadline, async {
        loop {
            match invite.progress().await {
                CallProgress::Provisional { .. } => {}
                CallProgress::Answered { dialog, sdp_answer } => return Ok((dialog, sdp_answer)),
                CallProgress::Failed(failure) => return Err(failure),
            }
        }
    })
    .await;
    let (mut dialog, sdp_answer) = match answered {
        Ok(Ok(pair)) => pair,
        Ok(Err(failure)) => {
            record.failure = Some(failure_kind(failure));
            return record;
        }
        Err(_) => {
            // Dropping the invite CANCELs it.
            record.failure = Some(CallFailureKind::Timeout { reason: "no final answer within call_timeout_ms".into() });
            return record;
        }
    };
    let negotiated = match switchboard_sdp::receive_answer(&offer, &sdp_answer) {
        Ok(media) => media,
        Err(e) => {
            let _ = tokio::time::timeout(Duration::from_secs(5), dialog.hangup()).await;
            record.failure = Some(CallFailureKind::Media { reason: format!("unusable SDP answer: {e}") });
            return record;
        }
    };
    let law = match negotiated.codec {
        SdpCodec::Pcmu => Law::Ulaw,
        SdpCodec::Pcma => Law::Alaw,
        other => {
            let _ = tokio::time::timeout(Duration::from_secs(5), dialog.hangup()).await;
            record.failure =
                Some(CallFailureKind::Media { reason: format!("answered with {other:?}; only G.711 is offered") });
            return record;
        }
    };
    record.law = Some(law);
    record.codec = negotiated.codec.encoding_name().to_string();
    let has_dtmf = media.iter().any(|m| !m.digits.is_empty());
    if has_dtmf && negotiated.telephone_event.is_none() {
        record.notes.push("the far end did not accept telephone-event: digits were not sent".into());
    }
    let remote = negotiated.remote_rtp;
    // An agent's transfer (expect_transfer) arrives as a REFER: taken and recorded.
    dialog.accept_refers();

    let mut machine = TurnMachine::new(specs, plan.agent_quiet_ms);
    let stream = StreamStart::random();
    let mut sequence = stream.sequence;
    let clock = Instant::now();
    let mut frame_index: u64 = 0;
    let mut packet = Vec::with_capacity(200);
    let mut payload = Vec::with_capacity(FRAME_SAMPLES);
    let mut decoded = Vec::with_capacity(FRAME_SAMPLES);
    let mut receive_buffer = vec![0u8; 2048];
    // The agent's RTP timestamps mapped onto our clock: (its first timestamp, our ms when it came).
    let mut agent_anchor: Option<(u32, i64)> = None;
    let max_samples = (plan.call_timeout.as_millis() as usize).saturating_mul(8) + FRAME_SAMPLES;
    let mut we_hang_up = true;
    let mut dtmf_start_ts: Option<u32> = None;
    loop {
        let next_frame = clock + Duration::from_millis(frame_index * FRAME_MS);
        tokio::select! {
            biased;
            event = dialog.next_event() => match event {
                Some(DialogEvent::RemoteBye) | Some(DialogEvent::AckTimeout) | None => {
                    machine.remote_hangup(frame_index * FRAME_MS);
                    record.ended_by = "agent".into();
                    we_hang_up = false;
                    break;
                }
                Some(DialogEvent::Refer { refer_to }) => {
                    machine.transfer(refer_to);
                    // RFC 3515 §2.4.4: the referrer hears how the transfer went. A test caller
                    // has no one to transfer to: it reports success, so the agent's side ends
                    // its leg as after a real blind transfer.
                    let requester = dialog.requester();
                    tokio::spawn(async move {
                        let headers = [
                            ("Event", "refer"),
                            ("Subscription-State", "terminated;reason=noresource"),
                            ("Content-Type", "message/sipfrag;version=2.0"),
                        ];
                        let _ = requester.send_request(Method::Notify, &headers, b"SIP/2.0 200 OK\r\n").await;
                    });
                }
                Some(_) => {}
            },
            () = tokio::time::sleep_until(deadline) => {
                machine.abort();
                record.ended_by = "timeout".into();
                record.failure = Some(CallFailureKind::Timeout { reason: "the turns outlived call_timeout_ms".into() });
                break;
            }
            () = tokio::time::sleep_until(next_frame) => {
                let now_ms = frame_index * FRAME_MS;
                frame_index += 1;
                let frame = machine.tick(now_ms);
                let timestamp = stream.timestamp.wrapping_add((now_ms * 8) as u32);
                let mut samples: &[i16] = &[0; FRAME_SAMPLES];
                let mut dtmf = None;
                match frame {
                    CallerFrame::Hangup | CallerFrame::Finished => {
                        record.ended_by = "caller".into();
                        break;
                    }
                    CallerFrame::Silence => dtmf_start_ts = None,
                    CallerFrame::Speech { turn, frame } => {
                        let speech = media.get(turn).map(|m| m.speech.as_slice()).unwrap_or_default();
                        let from = frame * FRAME_SAMPLES;
                        if let Some(chunk) = speech.get(from..(from + FRAME_SAMPLES).min(speech.len())) {
                            samples = chunk;
                        }
                    }
                    CallerFrame::Dtmf { turn, digit, elapsed_ms, end } => {
                        let key = media.get(turn).and_then(|m| m.digits.get(digit)).copied();
                        let start_ts = *dtmf_start_ts.get_or_insert(timestamp);
                        if let (Some(pt), Some(event)) = (negotiated.telephone_event, key.and_then(audio::dtmf_event)) {
                            let duration = u16::try_from((elapsed_ms + FRAME_MS) * 8).unwrap_or(u16::MAX);
                            dtmf = Some((pt, audio::dtmf_payload(event, end, duration), elapsed_ms == 0, start_ts, end));
                        }
                        if end {
                            dtmf_start_ts = None;
                        }
                    }
                }
                let caller_at = (now_ms as usize) * 8;
                if caller_at + FRAME_SAMPLES <= max_samples {
                    record.caller_track.resize(caller_at, 0);
                    record.caller_track.extend_from_slice(samples);
                    record.caller_track.resize(caller_at + FRAME_SAMPLES, 0);
                }
                match dtmf {
                    Some((pt, event_payload, first, start_ts, end)) => {
                        // RFC 4733 §2.5.1.4: the end packet is sent three times.
                        let copies = if end { 3 } else { 1 };
                        for _ in 0..copies {
                            packet.clear();
                            let header = RtpHeader { payload_type: pt, marker: first, sequence, timestamp: start_ts, ssrc: stream.ssrc };
                            write_rtp(&mut packet, &header, &event_payload);
                            sequence = sequence.wrapping_add(1);
                            let _ = socket.send_to(&packet, remote).await;
                        }
                    }
                    None => {
                        payload.clear();
                        law.encode(samples, &mut payload);
                        payload.resize(FRAME_SAMPLES, payload.last().copied().unwrap_or(0xFF));
                        packet.clear();
                        let header = RtpHeader {
                            payload_type: negotiated.payload_type,
                            marker: frame_index == 1,
                            sequence,
                            timestamp,
                            ssrc: stream.ssrc,
                        };
                        write_rtp(&mut packet, &header, &payload);
                        sequence = sequence.wrapping_add(1);
                        // UDP send errors (ICMP unreachable) are the far end's problem: the turn
                        // machine sees it as silence.
                        let _ = socket.send_to(&packet, remote).await;
                    }
                }
            }
            received = socket.recv_from(&mut receive_buffer) => {
                let Ok((len, from)) = received else { continue };
                if from.ip() != remote.ip() {
                    continue;
                }
                let Some(bytes) = receive_buffer.get(..len) else { continue };
                let Ok((header, body)) = parse_rtp(bytes) else { continue };
                if header.payload_type != negotiated.payload_type {
                    continue;
                }
                let arrival_ms = clock.elapsed().as_millis() as i64;
                let (anchor_ts, anchor_ms) = *agent_anchor.get_or_insert((header.timestamp, arrival_ms));
                let offset_ms = i64::from(header.timestamp.wrapping_sub(anchor_ts) as i32) / 8;
                let at_ms = (anchor_ms + offset_ms).max(0) as u64;
                decoded.clear();
                law.decode(body, &mut decoded);
                let start = (at_ms as usize).saturating_mul(8);
                let end = start.saturating_add(decoded.len());
                if end <= max_samples {
                    if record.agent_track.len() < end {
                        record.agent_track.resize(end, 0);
                    }
                    if let Some(slot) = record.agent_track.get_mut(start..end) {
                        slot.copy_from_slice(&decoded);
                    }
                }
                machine.agent_audio(at_ms, audio::is_speech(&decoded));
            }
        }
    }
    if we_hang_up {
        let _ = tokio::time::timeout(Duration::from_secs(5), dialog.hangup()).await;
    }
    record.timings = machine.timings().to_vec();
    record
}

fn failure_kind(failure: CallFailure) -> CallFailureKind {
    match failure {
        CallFailure::Busy { status } => CallFailureKind::Busy { status },
        CallFailure::Rejected { status, reason } => CallFailureKind::Rejected { status, reason },
        CallFailure::NoAnswer => CallFailureKind::Timeout { reason: "no answer within the ring timeout".into() },
        CallFailure::AuthFailed { status } => CallFailureKind::AuthFailed { status },
        CallFailure::Unreachable { reason } => CallFailureKind::Unreachable { reason },
        CallFailure::Cancelled => CallFailureKind::Timeout { reason: "cancelled".into() },
    }
}
