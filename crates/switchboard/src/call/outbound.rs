//! Calls the gateway places itself (`POST /v1/calls`): a callback, an appointment reminder.
//!
//! [`plan`] checks a request against the configuration (pure: every 400/404 is decided here);
//! [`start`] takes a call slot and a registry entry (503 when either is full) and spawns the
//! call's task, which then runs in the background:
//!
//! 1. lease an RTP port and open the Realtime session: the agent must be confirmed before we
//!    dial, so a callee never answers into silence (a failure is the outcome
//!    `agent_unavailable`, and nothing is dialled);
//! 2. offer our SDP (the trunk's codecs, in order) in an INVITE through the trunk, answering one
//!    digest challenge (RFC 3261 §22.2); 18x → state `ringing`;
//! 3. 2xx → the answer is checked against our offer (RFC 3264 §6) and the call becomes the same
//!    conversation as an inbound one: the agent greets first;
//! 4. a typed [`OutboundOutcome`] goes to the registry (kept after the call ends), the log and
//!    `switchboard_outbound_calls_total{outcome}`. An operator's DELETE cancels a ringing call
//!    (CANCEL) and hangs up an answered one (BYE).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use serde::Deserialize;
use switchboard_sdp::{Codec as SdpCodec, LocalMedia, OfferPolicy};
use switchboard_sip::{CallFailure, CallProgress, Credentials, Dialog, OutgoingCall, SipEndpoint, Transport};
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use super::end::CallEnd;
use super::facts::CallFacts;
use super::{CallDirection, CallSlot, Established, PTIME, converse, open_session, record_end};
use crate::app::GatewayState;
use crate::calls::{CallGuard, CallState, Direction, NewCall, OutboundOutcome, RegisterError};
use crate::config::{AgentConfig, Config, Resolved, TrunkConfig, TrunkTransport, is_sip_user};
use crate::reload::Settings;
use crate::telemetry::{self, Escaped, Pii};

/// What `POST /v1/calls` accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceCallRequest {
    /// `sip:user@host`, `tel:+15551234567`, or a bare number.
    pub to: String,
    /// The agent that talks to the callee.
    pub agent: String,
    /// The trunk to dial through; optional when exactly one is configured.
    #[serde(default)]
    pub trunk: Option<String>,
    /// Caller ID: the user part of our From URI (the trunk's `from_user` otherwise).
    #[serde(default)]
    pub from: Option<String>,
    /// Values substituted for `{{name}}` in the agent's instructions and greeting (the
    /// placeholders of docs/configuration.md, rendered by `switchboard_router::render`).
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// At most this many variables, each name and value at most [`MAX_VARIABLE_BYTES`].
pub const MAX_VARIABLES: usize = 32;
pub const MAX_VARIABLE_BYTES: usize = 1024;

/// Why a request cannot be placed; decides the API's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// 400: the named field is wrong.
    #[error("{field}: {message}")]
    BadField { field: &'static str, message: String },
    /// 404: no such agent.
    #[error("unknown agent `{0}`")]
    UnknownAgent(String),
    /// 404: no such trunk (or none configured).
    #[error("unknown trunk `{0}`")]
    UnknownTrunk(String),
}

impl PlanError {
    fn bad(field: &'static str, message: impl Into<String>) -> PlanError {
        PlanError::BadField { field, message: message.into() }
    }
}

/// A request checked against the configuration: everything the call's task needs to dial.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    pub agent_name: String,
    /// The agent as configured: [`start`] fills its placeholders (the request's variables,
    /// `{dialled}`, `{caller}`, `{call_id}`...) once the call has its id.
    pub agent: AgentConfig,
    /// The request's variables, checked.
    pub variables: BTreeMap<String, String>,
    pub trunk_name: String,
    pub trunk: TrunkConfig,
    pub destination: SocketAddr,
    pub request_uri: String,
    pub from_uri: String,
    /// The dialled number or URI as given (for the registry, redacted there).
    pub to: String,
    /// `transport = "tls"`: how the trunk's server is verified.
    pub tls: Option<switchboard_sip::tls::TlsConnect>,
}

/// Checks `request` against the configuration.
pub fn plan(config: &Config, resolved: &Resolved, request: PlaceCallRequest) -> Result<OutboundPlan, PlanError> {
    let (trunk_name, trunk) = match &request.trunk {
        Some(name) => config.trunks.get_key_value(name).ok_or_else(|| PlanError::UnknownTrunk(name.clone()))?,
        None => {
            let mut trunks = config.trunks.iter();
            match (trunks.next(), trunks.next()) {
                (Some(only), None) => only,
                (None, _) => return Err(PlanError::UnknownTrunk("(none configured)".into())),
                (Some(_), Some(_)) => {
                    return Err(PlanError::bad("trunk", "several trunks are configured: name one"));
                }
            }
        }
    };
    let destination =
        *resolved.trunk_addresses.get(trunk_name).ok_or_else(|| PlanError::UnknownTrunk(trunk_name.clone()))?;
    let request_uri = request_uri(&request.to, trunk)?;
    let agent = config.agents.get(&request.agent).ok_or_else(|| PlanError::UnknownAgent(request.agent.clone()))?;
    check_variables(&request.variables)?;
    let agent = agent.clone();
    let from_user = match &request.from {
        Some(from) => caller_id(from)?,
        None => trunk.from_user.clone(),
    };
    let from_domain = if trunk.from_domain.is_empty() {
        crate::config::trunk_host(&trunk.address)
    } else {
        trunk.from_domain.as_str()
    };
    Ok(OutboundPlan {
        agent_name: request.agent,
        agent,
        variables: request.variables,
        trunk_name: trunk_name.clone(),
        trunk: trunk.clone(),
        destination,
        request_uri,
        from_uri: format!("sip:{from_user}@{from_domain}"),
        to: request.to,
        tls: resolved.trunk_tls.get(trunk_name).cloned(),
    })
}

/// The Request-URI for `to`: a `sip:` URI as given; a `tel:` URI or a bare number becomes
/// `sip:NUMBER@<trunk address>` (RFC 3261 §19.1.6: a telephone number in the user part).
/// Spaces and the RFC 3966 visual separators `-`, `.`, `(`, `)` are removed; a leading `+` is kept.
pub fn request_uri(to: &str, trunk: &TrunkConfig) -> Result<String, PlanError> {
    let to = to.trim();
    let lower = to.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
    if lower.starts_with("sip:") {
        let rest = &to[4..];
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let forbidden = |c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c);
        if host.is_empty() || rest.chars().any(forbidden) {
            return Err(PlanError::bad("to", "not a usable sip: URI (a host is needed; no spaces, <, >, \")"));
        }
        return Ok(to.to_string());
    }
    if lower.starts_with("sips:") {
        if trunk.transport != TrunkTransport::Tls {
            return Err(PlanError::bad("to", "sips: needs a trunk with transport = \"tls\"; use sip: or a number"));
        }
        let rest = &to[5..];
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let forbidden = |c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c);
        if host.is_empty() || rest.chars().any(forbidden) {
            return Err(PlanError::bad("to", "not a usable sips: URI (a host is needed; no spaces, <, >, \")"));
        }
        return Ok(to.to_string());
    }
    let number = if lower.starts_with("tel:") {
        // RFC 3966: parameters (`;phone-context=…`, `;ext=…`) follow the number; we dial the number.
        to[4..].split(';').next().unwrap_or_default()
    } else {
        to
    };
    let number: String = number.chars().filter(|c| !" -.()".contains(*c)).collect();
    let digits = number.strip_prefix('+').unwrap_or(&number);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(PlanError::bad("to", "a sip: URI, a tel: URI or a phone number (digits, an optional leading +)"));
    }
    let transport = match trunk.transport {
        TrunkTransport::Udp => "",
        TrunkTransport::Tcp => ";transport=tcp",
        TrunkTransport::Tls => ";transport=tls",
    };
    Ok(format!("sip:{number}@{}{transport}", trunk.address))
}

/// The caller ID a request asks for: a number or a SIP user part.
fn caller_id(from: &str) -> Result<String, PlanError> {
    let from: String = from.chars().filter(|c| !c.is_whitespace()).collect();
    if from.len() > 64 || !is_sip_user(&from) {
        return Err(PlanError::bad("from", "a caller ID: a number or a SIP user part (at most 64 characters)"));
    }
    Ok(from)
}

/// Checks the request's variables: how many, their names and sizes.
fn check_variables(variables: &BTreeMap<String, String>) -> Result<(), PlanError> {
    if variables.len() > MAX_VARIABLES {
        return Err(PlanError::bad("variables", format!("at most {MAX_VARIABLES} variables")));
    }
    for (name, value) in variables {
        let good_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good_name || name.len() > MAX_VARIABLE_BYTES || value.len() > MAX_VARIABLE_BYTES {
            return Err(PlanError::bad(
                "variables",
                format!("names are letters, digits and _; names and values at most {MAX_VARIABLE_BYTES} bytes"),
            ));
        }
    }
    Ok(())
}

impl OutboundPlan {
    /// The agent with its placeholders filled for the call `call_id`: `{{name}}` from the
    /// request's variables, `{caller}` our caller ID, `{dialled}` the number called.
    pub fn rendered_agent(&self, call_id: &str) -> AgentConfig {
        let caller =
            self.from_uri.strip_prefix("sip:").and_then(|rest| rest.split_once('@')).map_or("", |(user, _)| user);
        let values = switchboard_router::Values {
            caller,
            dialled: &self.to,
            agent: &self.agent_name,
            call_id,
            headers: &[],
            variables: &self.variables,
        };
        crate::routing::render_agent(&self.agent, &values)
    }
}

/// Why [`start`] could not start a call: the API answers 503 with Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the gateway is at calls.max_concurrent")]
    GatewayFull,
    #[error("the trunk `{0}` carries its max_concurrent calls")]
    TrunkFull(String),
    #[error("the gateway's pacing is saturated (calls.saturation_lateness_ms)")]
    Saturated,
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway is not ready")]
    NotReady,
}

/// How long one outbound call's INVITE may go without a final answer beyond the trunk's ring
/// timeout (the SIP layer CANCELs at the ring timeout; this bounds the task should that fail).
const FINAL_ANSWER_ALLOWANCE: Duration = Duration::from_secs(40);

/// Starts the call in the background; returns its id. `settings` is the configuration snapshot
/// `plan` was checked against; the call keeps it to its end (`reload.rs`).
pub fn start(state: &Arc<GatewayState>, settings: Arc<Settings>, mut plan: OutboundPlan) -> Result<String, StartError> {
    if state.closing() {
        return Err(StartError::ShuttingDown);
    }
    let Some(sip) = state.sip.get().cloned() else { return Err(StartError::NotReady) };
    if !state.ready.load(Ordering::Acquire) {
        return Err(StartError::NotReady);
    }
    // Pacing saturated (capacity.rs): a new call would degrade every call up, as for INVITEs.
    if state.capacity_saturated.load(Ordering::Acquire) {
        return Err(StartError::Saturated);
    }
    let slot = CallSlot::try_take(state).ok_or(StartError::GatewayFull)?;
    let new_call = NewCall {
        direction: Direction::Outbound,
        agent: plan.agent_name.clone(),
        to: plan.to.clone(),
        from: plan.from_uri.clone(),
        trunk: Some((plan.trunk_name.clone(), plan.trunk.max_concurrent)),
    };
    let (entry, hangup) = state.calls.register(new_call, SystemTime::now()).map_err(|e| match e {
        RegisterError::TrunkFull(trunk) => StartError::TrunkFull(trunk),
        RegisterError::Full(_) => StartError::GatewayFull,
    })?;
    let id = entry.id().to_string();
    plan.agent = plan.rendered_agent(&id);
    let state = Arc::clone(state);
    tokio::spawn(handle(state, settings, sip, plan, entry, hangup, slot));
    Ok(id)
}

/// Runs one outbound call to its end in its own span, and records its outcome.
async fn handle(
    state: Arc<GatewayState>,
    settings: Arc<Settings>,
    sip: SipEndpoint,
    plan: OutboundPlan,
    entry: CallGuard,
    hangup: watch::Receiver<bool>,
    slot: CallSlot,
) {
    // The same span name and `call_id` as an inbound call's: one query finds a call's lines.
    let span = info_span!(
        "call",
        call_id = entry.id(),
        sip_call_id = tracing::field::Empty,
        direction = "outbound",
        to = %Pii(&plan.to),
        trunk = plan.trunk_name.as_str()
    );
    async {
        info!(agent = plan.agent_name.as_str(), "placing an outbound call");
        let started = SystemTime::now();
        let outcome = run(&state, settings, &sip, &plan, &entry, hangup).await;
        // Not answered: its CDR is written here (answered: converse).
        state.records.outbound_unanswered(
            entry.id(),
            &plan.from_uri,
            &plan.to,
            (&plan.agent_name, &plan.trunk_name),
            started,
            &outcome,
        );
        match &outcome {
            OutboundOutcome::Answered { .. } | OutboundOutcome::Cancelled => info!(?outcome, "outbound call ended"),
            OutboundOutcome::Failed { .. } | OutboundOutcome::AgentUnavailable { .. } => {
                warn!(?outcome, "outbound call failed")
            }
            _ => info!(?outcome, "outbound call not connected"),
        }
        metrics::counter!(telemetry::OUTBOUND_CALLS_TOTAL, "outcome" => outcome.label()).increment(1);
        if !matches!(outcome, OutboundOutcome::Answered { .. }) {
            // Answered calls count as they end (`run`); these never connected.
            telemetry::count_call(CallDirection::Outbound.label(), "not_connected", outcome.label());
        }
        entry.set_outcome(outcome);
        drop(entry);
        drop(slot);
    }
    .instrument(span)
    .await
}

/// The codecs this trunk offers, in order: the trunk's list, else `media.codecs`.
fn offered_codecs(settings: &Settings, trunk: &TrunkConfig) -> Vec<SdpCodec> {
    let names = if trunk.codecs.0.is_empty() { &settings.config.media.codecs.0 } else { &trunk.codecs.0 };
    names.iter().filter_map(|name| SdpCodec::from_name(name)).collect()
}

async fn run(
    state: &Arc<GatewayState>,
    settings: Arc<Settings>,
    sip: &SipEndpoint,
    plan: &OutboundPlan,
    entry: &CallGuard,
    mut hangup: watch::Receiver<bool>,
) -> OutboundOutcome {
    let started = SystemTime::now();
    let codecs = offered_codecs(&settings, &plan.trunk);
    let Some(&first_codec) = codecs.first() else {
        return OutboundOutcome::Failed { reason: "no codec to offer".into() };
    };
    let (socket, port_lease) = match state.rtp_ports.allocate() {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "RTP port range exhausted");
            return OutboundOutcome::Failed { reason: "no RTP port free".into() };
        }
    };

    // The agent must be there before the phone rings: a callee who answers hears it at once.
    let opened = tokio::select! {
        biased;
        _ = operator_hangup(&mut hangup) => return OutboundOutcome::Cancelled,
        opened = open_session(state, &settings, &plan.agent, first_codec) => opened,
    };
    let mut session = match opened {
        Ok(session) => session,
        Err(refusal) => {
            let reason = CallEnd::Refused(refusal).reason_label().to_string();
            return OutboundOutcome::AgentUnavailable { reason };
        }
    };

    let local = LocalMedia {
        address: state.resolved.media_address,
        port: port_lease.port(),
        session_id: rand::random::<u32>().into(),
        session_version: 1,
    };
    let policy =
        OfferPolicy { codecs, ptime_ms: PTIME.as_millis() as u32, telephone_event: true, srtp: plan.trunk.srtp.mode() };
    let offer = match switchboard_sdp::create_offer(&policy, &local) {
        Ok(offer) => offer,
        Err(e) => {
            session.close_in_background();
            return OutboundOutcome::Failed { reason: e.to_string() };
        }
    };
    let credentials = (!plan.trunk.username.is_empty()).then(|| Credentials {
        username: plan.trunk.username.clone(),
        password: plan.trunk.password.expose().to_string(),
    });
    let outgoing = OutgoingCall {
        request_uri: plan.request_uri.clone(),
        to: plan.request_uri.clone(),
        from_uri: plan.from_uri.clone(),
        from_display: None,
        destination: plan.destination,
        transport: match plan.trunk.transport {
            TrunkTransport::Udp => Transport::Udp,
            TrunkTransport::Tcp => Transport::Tcp,
            TrunkTransport::Tls => Transport::Tls,
        },
        sdp_offer: offer.sdp.clone(),
        credentials,
        ring_timeout: Duration::from_secs(plan.trunk.ring_timeout_secs),
        extra_headers: Vec::new(),
        tls: plan.tls.clone(),
    };
    let mut invite = match sip.place_call(outgoing) {
        Ok(invite) => invite,
        Err(e) => {
            session.close_in_background();
            return OutboundOutcome::Failed { reason: e.to_string() };
        }
    };
    tracing::Span::current().record("sip_call_id", tracing::field::display(Escaped(invite.call_id())));
    info!(sip_call_id = %Escaped(invite.call_id()), "INVITE sent");

    let final_deadline = Duration::from_secs(plan.trunk.ring_timeout_secs) + FINAL_ANSWER_ALLOWANCE;
    let answered = tokio::time::timeout(final_deadline, async {
        let mut shutdown = state.shutdown.subscribe();
        let mut cancelling = false;
        loop {
            tokio::select! {
                progress = invite.progress() => match progress {
                    CallProgress::Provisional { status, .. } => {
                        // 180 Ringing, 183 Session Progress: the callee's phone is alerting.
                        if status >= 180 && !cancelling {
                            entry.set_state(CallState::Ringing);
                        }
                    }
                    CallProgress::Answered { dialog, sdp_answer } => return Ok((dialog, sdp_answer)),
                    CallProgress::Failed(failure) => return Err(failure),
                },
                _ = operator_hangup(&mut hangup), if !cancelling => {
                    // RFC 3261 §9.1: the SIP layer sends the CANCEL once a 1xx has arrived.
                    info!("operator hang-up while ringing: cancelling the INVITE");
                    invite.cancel();
                    cancelling = true;
                    entry.set_state(CallState::Ending);
                }
                _ = shutdown.wait_for(|stop| *stop), if !cancelling => {
                    invite.cancel();
                    cancelling = true;
                    entry.set_state(CallState::Ending);
                }
            }
        }
    })
    .await;
    let (mut dialog, sdp_answer) = match answered {
        Ok(Ok(pair)) => pair,
        Ok(Err(failure)) => {
            session.close_in_background();
            return outcome_of(failure);
        }
        Err(_) => {
            // Dropping the ClientInvite cancels it (and BYEs a 2xx that arrives anyway).
            session.close_in_background();
            return OutboundOutcome::Unreachable { reason: "no final answer from the trunk".into() };
        }
    };
    info!("answered");

    let media = match switchboard_sdp::receive_answer(&offer, &sdp_answer) {
        Ok(media) => media,
        Err(reason) => {
            // RFC 3264 §6 leaves us nothing to send with: hang up at once.
            warn!(%reason, "unusable SDP answer: hanging up");
            hang_up(&mut dialog).await;
            session.close_in_background();
            return OutboundOutcome::Failed { reason: format!("unusable SDP answer: {reason}") };
        }
    };
    entry.set_codec(media.codec.encoding_name());
    let codec = media.codec;
    if !session.suits(codec) {
        // The callee chose another G.711 law than the one the session passes through: the model
        // must be told the other format, so the session is opened again (a short silence).
        info!(codec = ?media.codec, "answered codec differs from the session's: reopening the session");
        session.close_in_background();
        session = match open_session(state, &settings, &plan.agent, codec).await {
            Ok(session) => session,
            Err(refusal) => {
                hang_up(&mut dialog).await;
                let reason = CallEnd::Refused(refusal).reason_label().to_string();
                return OutboundOutcome::AgentUnavailable { reason };
            }
        };
    }
    entry.set_state(CallState::Answered);
    let facts = CallFacts {
        id: entry.id().to_string(),
        sip_call_id: dialog.call_id().to_string(),
        direction: CallDirection::Outbound,
        from: plan.from_uri.clone(),
        to: plan.to.clone(),
        agent: plan.agent_name.clone(),
        route: String::new(),
        peer: Some(plan.destination),
        codec: codec.encoding_name().to_string(),
        started,
        answered: SystemTime::now(),
        trunk: Some(plan.trunk_name.clone()),
        media_security: crate::srtp::media_security(media.srtp.as_ref()),
    };
    crate::srtp::count_call(media.srtp.as_ref());
    let call = Established {
        direction: CallDirection::Outbound,
        facts,
        agent: plan.agent.clone(),
        dialog,
        media,
        socket,
        port_lease,
        session,
        hangup,
        settings,
        sdp: super::renegotiate::SdpSession::new(local, media, offer.sdp.clone()),
    };
    let end = converse(state, call).await;
    record_end(CallDirection::Outbound, &end);
    OutboundOutcome::Answered { end: end.reason_label().to_string() }
}

/// Resolves once an operator asked to hang up; never when the sender is gone.
async fn operator_hangup(hangup: &mut watch::Receiver<bool>) {
    if hangup.wait_for(|h| *h).await.is_err() {
        std::future::pending::<()>().await;
    }
}

async fn hang_up(dialog: &mut Dialog) {
    if let Err(e) = dialog.hangup().await {
        warn!(error = %e, "BYE failed");
    }
}

fn outcome_of(failure: CallFailure) -> OutboundOutcome {
    match failure {
        CallFailure::Busy { status } => OutboundOutcome::Busy { status },
        CallFailure::Rejected { status, reason } => OutboundOutcome::Rejected { status, reason },
        CallFailure::NoAnswer => OutboundOutcome::NoAnswer,
        CallFailure::AuthFailed { status } => OutboundOutcome::AuthFailed { status },
        CallFailure::Unreachable { reason } => OutboundOutcome::Unreachable { reason },
        CallFailure::Cancelled => OutboundOutcome::Cancelled,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(address: &str, transport: TrunkTransport) -> TrunkConfig {
        TrunkConfig { address: address.into(), transport, ..TrunkConfig::default() }
    }

    fn config_with(trunks: &[(&str, &str)]) -> (Config, Resolved) {
        let mut text = String::from(
            "[agents.default]\ngreeting = \"Hello {{name}}, about {{topic}} ({dialled}, {call_id}, {caller})\"\n",
        );
        for (name, address) in trunks {
            text.push_str(&format!("[trunks.{name}]\naddress = \"{address}\"\n"));
        }
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        crate::config::load_with_env(f.path(), &[]).unwrap()
    }

    fn request(to: &str) -> PlaceCallRequest {
        PlaceCallRequest { to: to.into(), agent: "default".into(), trunk: None, from: None, variables: BTreeMap::new() }
    }

    #[test]
    fn numbers_become_sip_uris_at_the_trunk() {
        let udp = trunk("203.0.113.5:5060", TrunkTransport::Udp);
        assert_eq!(request_uri("+1 555 123 4567", &udp).unwrap(), "sip:+15551234567@203.0.113.5:5060");
        assert_eq!(request_uri("tel:+1-555-123-4567", &udp).unwrap(), "sip:+15551234567@203.0.113.5:5060");
        assert_eq!(request_uri("tel:1234;phone-context=example.com", &udp).unwrap(), "sip:1234@203.0.113.5:5060");
        assert_eq!(request_uri("sip:alice@example.com", &udp).unwrap(), "sip:alice@example.com");
        let tcp = trunk("pbx.example:5080", TrunkTransport::Tcp);
        assert_eq!(request_uri("0044 20 7946", &tcp).unwrap(), "sip:0044207946@pbx.example:5080;transport=tcp");
        for bad in ["", "+", "12a4", "++1", "sips:bob@x", "sip:", "sip:bob@", "sip:a b@x", "mailto:x@y", "1\r\n2"] {
            assert!(matches!(request_uri(bad, &udp), Err(PlanError::BadField { field: "to", .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn tls_trunks_say_transport_tls_and_take_sips_uris() {
        let tls = trunk("sip.carrier.example:5061", TrunkTransport::Tls);
        assert_eq!(
            request_uri("+1 555 123 4567", &tls).unwrap(),
            "sip:+15551234567@sip.carrier.example:5061;transport=tls"
        );
        assert_eq!(request_uri("sips:bob@carrier.example", &tls).unwrap(), "sips:bob@carrier.example");
        for bad in ["sips:", "sips:bob@", "sips:a b@x"] {
            assert!(matches!(request_uri(bad, &tls), Err(PlanError::BadField { field: "to", .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_request_is_planned_against_the_configuration() {
        let (cfg, resolved) = config_with(&[("carrier", "127.0.0.1:5070")]);
        let mut req = request("5551234");
        req.from = Some("+15550009999".into());
        req.variables = BTreeMap::from([("name".into(), "Ada".into()), ("topic".into(), "Tuesday".into())]);
        let plan = plan(&cfg, &resolved, req).unwrap();
        assert_eq!(plan.trunk_name, "carrier");
        assert_eq!(plan.destination, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(plan.request_uri, "sip:5551234@127.0.0.1:5070");
        assert_eq!(plan.from_uri, "sip:+15550009999@127.0.0.1");
        assert_eq!(plan.rendered_agent("c-1").greeting, "Hello Ada, about Tuesday (5551234, c-1, +15550009999)");
    }

    #[test]
    fn bad_requests_name_the_field_and_unknown_names_are_404() {
        let (cfg, resolved) = config_with(&[("a", "127.0.0.1:5070"), ("b", "127.0.0.1:5080")]);
        let err = plan(&cfg, &resolved, request("123")).unwrap_err();
        assert!(matches!(err, PlanError::BadField { field: "trunk", .. }), "{err:?}");

        let mut req = request("123");
        req.trunk = Some("nope".into());
        assert_eq!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::UnknownTrunk("nope".into()));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.agent = "ghost".into();
        assert_eq!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::UnknownAgent("ghost".into()));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.from = Some("<sip:evil>".into());
        assert!(matches!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::BadField { field: "from", .. }));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.variables = BTreeMap::from([("bad name".into(), "x".into())]);
        assert!(matches!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::BadField { field: "variables", .. }));

        let (cfg, resolved) = config_with(&[]);
        assert!(matches!(plan(&cfg, &resolved, request("123")).unwrap_err(), PlanError::UnknownTrunk(_)));
    }
}
