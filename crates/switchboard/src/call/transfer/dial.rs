//! A bridged transfer's call to the human: an INVITE to the queue's URI through the agent's
//! transfer trunk, built from the same pieces as the gateway's outbound calls
//! (`call/outbound.rs`): the trunk's codecs offered in our SDP on a leased RTP port, digest
//! credentials, the ring timeout (CANCEL), plus the transfer's `X-` context headers. The call
//! counts against the trunk's `max_concurrent` (it is registered as an outbound call).
//!
//! Runs in its own task; dropping the task's future cancels a call still ringing (the
//! `ClientInvite` is dropped: CANCEL).

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use switchboard_sdp::{Codec as SdpCodec, LocalMedia, NegotiatedMedia, OfferPolicy};
use switchboard_sip::{CallFailure, CallProgress, Credentials, Dialog, OutgoingCall, Transport};
use tracing::{info, warn};

use super::super::PTIME;
use super::super::outbound::request_uri;
use crate::app::GatewayState;
use crate::calls::{CallGuard, Direction, NewCall};
use crate::config::TrunkTransport;
use crate::reload::Settings;
use crate::rtp_ports::PortLease;
use crate::telemetry::Escaped;

/// What the bridged transfer needs of an answered human.
pub struct AnsweredHuman {
    pub dialog: Dialog,
    pub media: NegotiatedMedia,
    /// The leased RTP socket our offer named (the leg is attached on it).
    pub socket: std::net::UdpSocket,
    pub lease: PortLease,
    /// The human's call in the registry (the trunk's concurrency) until it is dropped.
    pub guard: CallGuard,
}

/// Why the human's call did not connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DialFailure {
    /// The final SIP status, if the far end gave one.
    pub status: Option<u16>,
    /// `no_answer`, or what went wrong.
    pub why: String,
}

impl DialFailure {
    fn local(why: impl Into<String>) -> DialFailure {
        DialFailure { status: None, why: why.into() }
    }
}

/// The INVITE to `target` through `trunk_name`, until the human answers or the call fails.
pub async fn dial_human(
    state: Arc<GatewayState>,
    settings: Arc<Settings>,
    trunk_name: String,
    target: String,
    agent: String,
    ring_timeout: Duration,
    headers: Vec<(String, String)>,
) -> Result<AnsweredHuman, DialFailure> {
    // The trunk as the call's snapshot knows it (`reload.rs`).
    let trunk = settings.config.trunks.get(&trunk_name).ok_or_else(|| DialFailure::local("no such trunk"))?;
    let destination = *settings
        .resolved
        .trunk_addresses
        .get(&trunk_name)
        .ok_or_else(|| DialFailure::local("trunk address not resolved"))?;
    let sip = state.sip.get().cloned().ok_or_else(|| DialFailure::local("SIP endpoint not ready"))?;
    let request_uri = request_uri(&target, trunk).map_err(|e| DialFailure::local(e.to_string()))?;
    let from_domain = if trunk.from_domain.is_empty() {
        crate::config::trunk_host(&trunk.address)
    } else {
        trunk.from_domain.as_str()
    };
    let from_uri = format!("sip:{}@{from_domain}", trunk.from_user);
    let new_call = NewCall {
        direction: Direction::Outbound,
        agent,
        to: target.clone(),
        from: from_uri.clone(),
        trunk: Some((trunk_name.clone(), trunk.max_concurrent)),
    };
    let (guard, _hangup) =
        state.calls.register(new_call, SystemTime::now()).map_err(|e| DialFailure::local(e.to_string()))?;
    let (socket, lease) = state.rtp_ports.allocate().map_err(|_| DialFailure::local("no RTP port free"))?;

    let names = if trunk.codecs.0.is_empty() { &settings.config.media.codecs.0 } else { &trunk.codecs.0 };
    let codecs: Vec<SdpCodec> = names.iter().filter_map(|name| SdpCodec::from_name(name)).collect();
    let local = LocalMedia {
        address: state.resolved.media_address,
        port: lease.port(),
        session_id: rand::random::<u32>().into(),
        session_version: 1,
    };
    let policy =
        OfferPolicy { codecs, ptime_ms: PTIME.as_millis() as u32, telephone_event: true, srtp: trunk.srtp.mode() };
    let offer = switchboard_sdp::create_offer(&policy, &local).map_err(|e| DialFailure::local(e.to_string()))?;
    let credentials = (!trunk.username.is_empty())
        .then(|| Credentials { username: trunk.username.clone(), password: trunk.password.expose().to_string() });
    let outgoing = OutgoingCall {
        request_uri: request_uri.clone(),
        to: request_uri,
        from_uri,
        from_display: None,
        destination,
        transport: match trunk.transport {
            TrunkTransport::Udp => Transport::Udp,
            TrunkTransport::Tcp => Transport::Tcp,
            TrunkTransport::Tls => Transport::Tls,
        },
        sdp_offer: offer.sdp.clone(),
        credentials,
        ring_timeout,
        extra_headers: headers,
        tls: settings.resolved.trunk_tls.get(trunk_name.as_str()).cloned(),
    };
    let mut invite = sip.place_call(outgoing).map_err(|e| DialFailure::local(e.to_string()))?;
    info!(sip_call_id = %Escaped(invite.call_id()), trunk = trunk_name.as_str(), "transfer: calling the human");
    let (mut dialog, answer) = loop {
        match invite.progress().await {
            CallProgress::Provisional { .. } => {}
            CallProgress::Answered { dialog, sdp_answer } => break (dialog, sdp_answer),
            CallProgress::Failed(failure) => return Err(failure_of(failure)),
        }
    };
    let media = match switchboard_sdp::receive_answer(&offer, &answer) {
        Ok(media) => media,
        Err(reason) => {
            warn!(%reason, "the human's SDP answer is unusable: hanging up");
            let _ = dialog.hangup().await;
            return Err(DialFailure::local(format!("unusable SDP answer: {reason}")));
        }
    };
    Ok(AnsweredHuman { dialog, media, socket, lease, guard })
}

fn failure_of(failure: CallFailure) -> DialFailure {
    match failure {
        CallFailure::Busy { status } => DialFailure { status: Some(status), why: "busy".into() },
        CallFailure::Rejected { status, reason } => DialFailure { status: Some(status), why: reason },
        CallFailure::NoAnswer => DialFailure { status: None, why: "no_answer".into() },
        other => DialFailure::local(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_keep_the_status_the_machine_needs() {
        assert_eq!(
            failure_of(CallFailure::Busy { status: 486 }),
            DialFailure { status: Some(486), why: "busy".into() }
        );
        assert_eq!(
            failure_of(CallFailure::Rejected { status: 404, reason: "Not Found".into() }),
            DialFailure { status: Some(404), why: "Not Found".into() }
        );
        assert_eq!(failure_of(CallFailure::NoAnswer), DialFailure { status: None, why: "no_answer".into() });
        let unreachable = failure_of(CallFailure::Unreachable { reason: "timer B".into() });
        assert_eq!(unreachable.status, None);
        assert_ne!(unreachable.why, "no_answer");
    }
}
