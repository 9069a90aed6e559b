//! One call from INVITE to its end: route, negotiate, open the Realtime session, answer, bridge.

pub mod core;
pub mod end;
pub mod facts;
pub mod journal;
pub mod outbound;
pub mod prompt;
pub mod reconnect;
pub mod renegotiate;
pub mod session;
pub mod shell;
pub mod tools;
pub mod transfer;

pub use shell::converse;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use switchboard_media::codec::Codec;
use switchboard_media::framing::{ModelAudio, model_audio_for};
use switchboard_realtime::client::{self, ClientError, ConnectConfig, ConnectLimits, RealtimeReceiver, RealtimeSender};
use switchboard_realtime::events::{ClientEvent, ServerEvent};
use switchboard_sdp::{AnswerPolicy, LocalMedia, NegotiatedMedia, SdpError};
use switchboard_sip::{Dialog, DialogEvent, IncomingCall, ServerInvite};
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::app::GatewayState;
use crate::calls::{CallGuard, CallState, Direction, NewCall};
use crate::config::{AgentConfig, AudioFormatChoice, Config, Resolved};
use crate::routing;
use crate::rtp_ports::PortLease;
use crate::telemetry::{self, Escaped, Pii};
use end::{CallEnd, Refusal};
use session::{ConfirmedAudio, SessionSetup, SetupStep};

/// What we send and ask for; an Opus caller may ask for 10, 40 or 60 ms instead.
const PTIME: Duration = Duration::from_millis(20);

/// Holds one of the `calls.max_concurrent` slots; dropping it frees the slot.
pub struct CallSlot(Arc<GatewayState>);

impl CallSlot {
    /// Takes a slot, or `None` when the gateway is at its limit.
    pub fn try_take(state: &Arc<GatewayState>) -> Option<CallSlot> {
        let limit = state.config.calls.max_concurrent;
        state.active_calls.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < limit).then_some(n + 1)).ok()?;
        metrics::gauge!(telemetry::CALLS_ACTIVE).increment(1.0);
        Some(CallSlot(Arc::clone(state)))
    }
}

impl Drop for CallSlot {
    fn drop(&mut self) {
        self.0.active_calls.fetch_sub(1, Ordering::AcqRel);
        metrics::gauge!(telemetry::CALLS_ACTIVE).decrement(1.0);
    }
}

/// Refuses a call the gateway cannot take (overload, shutdown), without spending a task on it.
pub fn refuse_early(state: &GatewayState, call: IncomingCall, refusal: Refusal) {
    let info = call.info.clone();
    let end = refuse(state, call.invite, refusal);
    record_end(CallDirection::Inbound, &end);
    let trunk = crate::access::inbound_trunk(&state.settings(), &info);
    state.records.inbound_unanswered(&info.call_id, &info, trunk.as_deref(), SystemTime::now(), &end);
}

/// Runs one call to its end in its own span.
pub async fn handle(state: Arc<GatewayState>, call: IncomingCall, slot: CallSlot) {
    // `call_id` is the gateway's id (the admin API's, the CDR's), recorded once the registry gave it.
    let span = info_span!(
        "call",
        call_id = tracing::field::Empty,
        sip_call_id = %Escaped(&call.info.call_id),
        direction = "inbound",
        dialled = %Pii(&call.info.dialled)
    );
    async move {
        let trunk = crate::access::inbound_trunk(&state.settings(), &call.info);
        // In the registry (the admin API's list, DELETE) until the call's task ends. The registry
        // has room for every call holding a slot; should it not, the call goes on unlisted.
        let listed = state.calls.register(
            NewCall {
                direction: Direction::Inbound,
                agent: String::new(),
                to: call.info.dialled.clone(),
                from: call.info.from_uri.clone(),
                // The trunk whose `sources` hold the caller's address; inbound calls are not
                // limited by the trunk's `max_concurrent` (that bounds calls we place).
                trunk: trunk.clone().map(|name| (name, usize::MAX)),
            },
            SystemTime::now(),
        );
        let (entry, hangup) = match listed {
            Ok((entry, hangup)) => (Some(entry), hangup),
            Err(e) => {
                warn!(error = %e, "call not listed in the registry");
                (None, watch::channel(false).1)
            }
        };
        let call_id = entry.as_ref().map_or_else(|| Escaped(&call.info.call_id).to_string(), |e| e.id().to_string());
        tracing::Span::current().record("call_id", call_id.as_str());
        info!(from = %Pii(&call.info.from_uri), transport = ?call.info.transport, trunk = trunk.as_deref().unwrap_or("-"), "INVITE");
        let (info, invited) = (call.info.clone(), SystemTime::now());
        let end = run(&state, call, entry.as_ref(), hangup).await;
        // A call refused or cancelled before the answer gets its CDR here (answered: converse).
        let id = entry.as_ref().map_or_else(|| info.call_id.clone(), |entry| entry.id().to_string());
        state.records.inbound_unanswered(&id, &info, trunk.as_deref(), invited, &end);
        drop(entry);
        match end.fault() {
            end::Fault::Upstream | end::Fault::Gateway => warn!(reason = ?end, fault = %end.fault(), "call ended"),
            _ => info!(reason = ?end, fault = %end.fault(), "call ended"),
        }
        record_end(CallDirection::Inbound, &end);
        drop(slot);
    }
    .instrument(span)
    .await
}

fn record_end(direction: CallDirection, end: &CallEnd) {
    telemetry::count_call(direction.label(), end.outcome_label(), end.reason_label());
}

/// Answers the INVITE with the refusal's status, and `Retry-After: calls.retry_after_secs` when
/// the condition is transient (RFC 3261 §21.5.4).
fn refuse(state: &GatewayState, invite: ServerInvite, refusal: Refusal) -> CallEnd {
    let (status, reason) = refusal.status();
    let retry_after = state.config.calls.retry_after_secs.to_string();
    let headers: &[(&str, &str)] = if refusal.retry_after() { &[("Retry-After", retry_after.as_str())] } else { &[] };
    invite.reject(status, reason, headers);
    CallEnd::Refused(refusal)
}

/// The inbound setup: route, negotiate, open the session, answer; then [`converse`].
async fn run(
    state: &Arc<GatewayState>,
    call: IncomingCall,
    entry: Option<&CallGuard>,
    hangup: watch::Receiver<bool>,
) -> CallEnd {
    let received = Instant::now();
    let IncomingCall { info, offer, mut invite } = call;
    // The configuration this call keeps to its end, whatever a reload does meanwhile.
    let settings = state.settings();
    let cfg = &settings.config;

    let id = entry.map_or_else(|| info.call_id.clone(), |entry| entry.id().to_string());
    let Some(routed) = route(&settings.config, &settings.resolved, &info, &id, switchboard_router::Timestamp::now())
    else {
        return refuse(state, invite, Refusal::NoRoute);
    };
    let (route_name, agent_name, agent) = match routed {
        Ok(routed) => routed,
        Err(code) => return refuse(state, invite, Refusal::Rejected(code)),
    };
    let agent = &agent;
    let (std_socket, port_lease) = match state.rtp_ports.allocate() {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "RTP port range exhausted");
            return refuse(state, invite, Refusal::NoMediaPort);
        }
    };
    let local = LocalMedia {
        address: state.resolved.media_address,
        port: port_lease.port(),
        session_id: rand::random::<u32>().into(),
        session_version: 1,
    };
    // The trunk the call came from (its `sources`, or its inbound credentials) decides the SRTP
    // policy; a call from no trunk gets `media.srtp`.
    let trunk = crate::access::inbound_trunk(&settings, &info);
    let srtp = crate::srtp::inbound_setting(cfg, trunk.as_deref()).mode();
    let policy = AnswerPolicy { srtp, ..answer_policy(cfg.media.codecs.0.as_slice(), agent) };
    // With an offer: our answer now. Without (delayed offer, RFC 3261 §13.2.1): our offer goes in
    // the 200 and the session opens for our first codec; the offer then lists only the codecs
    // that session can serve (`delayed_offer`).
    let answer = match offer.as_deref().map(|offer| switchboard_sdp::answer_offer(offer, &policy, &local)) {
        None => None,
        Some(Ok(answer)) => Some(answer),
        Some(Err(e @ SdpError::Malformed { .. })) => return refuse(state, invite, Refusal::BadRequest(e.to_string())),
        Some(Err(e)) => return refuse(state, invite, Refusal::NotAcceptable(e.to_string())),
    };
    let Some(codec) = answer.as_ref().map(|a| a.media.codec).or_else(|| policy.codecs.first().copied()) else {
        return refuse(state, invite, Refusal::NotAcceptable("no codec configured to offer".into()));
    };
    info!(
        route = route_name,
        agent = agent_name,
        codec = ?codec,
        delayed_offer = answer.is_none(),
        media_security = answer.as_ref().map_or("(offer in our 200)", |a| crate::srtp::media_security(a.media.srtp.as_ref())),
        "routed"
    );
    if let Some(entry) = entry {
        entry.set_routed(agent_name, codec.encoding_name());
    }
    invite.ringing();

    // The call is answered only once the session is confirmed (connect, session.created,
    // session.updated in formats we can use) within one deadline; a CANCEL meanwhile wins.
    let opened = tokio::select! {
        biased;
        _ = invite.cancelled() => return CallEnd::CallerCancelled,
        opened = open_session(state, &settings, agent, codec) => opened,
    };
    let session = match opened {
        Ok(session) => session,
        Err(refusal) => {
            if is_cancelled(&mut invite) {
                // The CANCEL came in while the refusal was being decided: 487 has been sent.
                return CallEnd::CallerCancelled;
            }
            warn!(reason = ?refusal, "Realtime session not confirmed; refusing the call");
            return refuse(state, invite, refusal);
        }
    };
    debug!(setup_ms = received.elapsed().as_millis() as u64, "Realtime session confirmed");

    // A CANCEL that arrived while the session was being confirmed has been answered 487 by
    // the SIP layer: answering now would create a dialog that never existed.
    if is_cancelled(&mut invite) {
        close_in_background(session.sender);
        return CallEnd::CallerCancelled;
    }
    // Shutdown began during setup: a 503 lets a proxy send the call elsewhere, rather than
    // answering it only to hang up at once.
    if *state.shutdown.borrow() {
        close_in_background(session.sender);
        return refuse(state, invite, Refusal::ShuttingDown);
    }
    let (our_sdp, answered, our_offer) = match answer {
        Some(answer) => (answer.sdp, Some(answer.media), None),
        None => match delayed_offer(&session, &policy, &local) {
            Ok(offer) => (offer.sdp.clone(), None, Some(offer)),
            Err(e) => {
                close_in_background(session.sender);
                return refuse(state, invite, Refusal::NotAcceptable(e.to_string()));
            }
        },
    };
    let Some(mut dialog) = invite.accept(&our_sdp) else {
        // The INVITE stopped being pending between the check above and the accept (the SIP core
        // refuses the 200): the CANCEL won.
        close_in_background(session.sender);
        return CallEnd::CallerCancelled;
    };
    let media = match (answered, our_offer) {
        (Some(media), _) => media,
        (None, Some(offer)) => match answer_in_ack(&mut dialog, &offer).await {
            Ok(media) => media,
            Err(end) => {
                close_in_background(session.sender);
                if end.needs_bye()
                    && let Err(e) = dialog.hangup().await
                {
                    warn!(error = %e, "BYE failed");
                }
                return end;
            }
        },
        // An answer or an offer: one of them is always there.
        (None, None) => {
            close_in_background(session.sender);
            return CallEnd::MediaSetupFailed("no SDP negotiated".into());
        }
    };
    let codec = media.codec;
    let sdp = renegotiate::SdpSession::new(local, media, our_sdp);
    metrics::histogram!(telemetry::CALL_SETUP_SECONDS).record(received.elapsed().as_secs_f64());
    info!(setup_ms = received.elapsed().as_millis() as u64, "answered");
    if let Some(entry) = entry {
        entry.set_state(CallState::Answered);
    }
    let facts = facts::CallFacts {
        id,
        sip_call_id: info.call_id.clone(),
        direction: CallDirection::Inbound,
        from: info.from_uri.clone(),
        to: info.dialled.clone(),
        agent: agent_name.to_string(),
        route: route_name.to_string(),
        peer: Some(info.source),
        codec: codec.encoding_name().to_string(),
        started: SystemTime::now() - received.elapsed(),
        answered: SystemTime::now(),
        trunk,
        media_security: crate::srtp::media_security(media.srtp.as_ref()),
    };
    crate::srtp::count_call(media.srtp.as_ref());
    let call = Established {
        direction: CallDirection::Inbound,
        facts,
        agent: agent.clone(),
        dialog,
        media,
        socket: std_socket,
        port_lease,
        session,
        hangup,
        settings: Arc::clone(&settings),
        sdp,
    };
    converse(state, call).await
}

/// Our offer for an INVITE without one (delayed offer): the configured codecs the confirmed
/// session can serve, in the configured order.
fn delayed_offer(
    session: &OpenSession,
    policy: &AnswerPolicy,
    local: &switchboard_sdp::LocalMedia,
) -> Result<switchboard_sdp::SdpOffer, SdpError> {
    let codecs = policy.codecs.iter().copied().filter(|codec| session.suits(*codec)).collect();
    let offer_policy = switchboard_sdp::OfferPolicy {
        codecs,
        ptime_ms: policy.ptime_ms,
        telephone_event: policy.telephone_event,
        srtp: policy.srtp,
    };
    switchboard_sdp::create_offer(&offer_policy, local)
}

/// Waits for the ACK of a 200 that carried our offer and reads its answer (RFC 3264 §5). No
/// answer, or one we cannot use: the call ends with our BYE (RFC 3261 §13.2.1 / §14.2). Bounded:
/// the SIP layer reports a missing ACK after 64*T1. `Confirmed` follows the answer and stays
/// queued for the conversation.
async fn answer_in_ack(dialog: &mut Dialog, offer: &switchboard_sdp::SdpOffer) -> Result<NegotiatedMedia, CallEnd> {
    const ACK_WAIT: Duration = Duration::from_secs(40);
    let deadline = tokio::time::Instant::now() + ACK_WAIT;
    loop {
        let event = match tokio::time::timeout_at(deadline, dialog.next_event()).await {
            Ok(event) => event,
            Err(_) => return Err(CallEnd::AckTimeout),
        };
        match event {
            Some(DialogEvent::Answer { sdp: Some(sdp) }) => {
                return switchboard_sdp::receive_answer(offer, &sdp).map_err(|e| {
                    info!(error = %e, "the ACK's answer to our offer is unusable; hanging up");
                    CallEnd::BadSdpAnswer(e.to_string())
                });
            }
            Some(DialogEvent::Answer { sdp: None }) => {
                info!("the ACK carried no answer to our offer; hanging up");
                return Err(CallEnd::BadSdpAnswer("no SDP in the ACK".into()));
            }
            Some(DialogEvent::AckTimeout) => return Err(CallEnd::AckTimeout),
            Some(DialogEvent::RemoteBye) | None => return Err(CallEnd::CallerHangup),
            // Nothing else can come before the ACK; ignored if it does.
            Some(other) => debug!(event = ?other, "dialog event before the ACK ignored"),
        }
    }
}

/// Asks the route table who answers the call: `None` for no match (404), `Err` for a reject
/// route's code, else the route's name, the agent's name and its config with the placeholders
/// filled and the route's `record` override applied.
fn route<'a>(
    config: &'a Config,
    resolved: &'a Resolved,
    info: &switchboard_sip::CallInfo,
    call_id: &str,
    now: switchboard_router::Timestamp,
) -> Option<Result<(&'a str, &'a str, AgentConfig), switchboard_router::RejectCode>> {
    use switchboard_router::Decision;
    let caller = routing::caller_id(info);
    let facts = switchboard_router::Facts { dialled: &info.dialled, caller: &caller, source: info.source.ip() };
    let decision = resolved.routes.decide(&facts, now);
    let route_label = if decision.route().is_empty() { "none" } else { decision.route() };
    metrics::counter!(telemetry::ROUTE_DECISIONS_TOTAL, "route" => route_label.to_string(), "outcome" => decision.outcome_label())
        .increment(1);
    match decision {
        Decision::NoMatch => {
            info!(caller = %Pii(&caller), "no route matches the call");
            None
        }
        Decision::Reject { route, code } => {
            info!(route, code = code.code(), caller = %Pii(&caller), "refused by route");
            Some(Err(code))
        }
        Decision::Agent { route, agent: agent_name, record } => {
            // Every route's agent exists: the configuration check made sure.
            let agent_config = config.agents.get(agent_name)?;
            let headers = routing::captured_headers(info, &config.routing.headers.0);
            let values = switchboard_router::Values {
                caller: &caller,
                dialled: &info.dialled,
                agent: agent_name,
                call_id,
                headers: &headers,
                variables: routing::no_variables(),
            };
            let mut agent = routing::render_agent(agent_config, &values);
            if let Some(record) = record {
                agent.record = record;
            }
            Some(Ok((route, agent_name, agent)))
        }
    }
}

/// Whether a call was placed by the caller (INVITE received) or by us (`POST /v1/calls`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallDirection {
    Inbound,
    Outbound,
}

impl CallDirection {
    /// Metric and API label.
    pub fn label(self) -> &'static str {
        match self {
            CallDirection::Inbound => "inbound",
            CallDirection::Outbound => "outbound",
        }
    }
}

/// A confirmed Realtime session: its two halves and the audio formats `session.updated`
/// confirmed for the codec it was opened for.
pub struct OpenSession {
    pub sender: RealtimeSender,
    pub receiver: RealtimeReceiver,
    pub confirmed: ConfirmedAudio,
    /// The codec the formats were checked against. A G.711 passthrough session only suits a
    /// call on that same law: see [`OpenSession::suits`].
    pub codec: Codec,
    /// `session.created`'s `expires_at` (unix seconds), when the server gave one.
    pub expires_at: Option<i64>,
}

impl OpenSession {
    /// Whether this session's confirmed formats can serve a call negotiated on `codec` (an
    /// outbound call opens its session before the answer picks the codec).
    pub fn suits(&self, codec: Codec) -> bool {
        let usable = |model: ModelAudio| model == ModelAudio::Pcm24k || self.codec == codec;
        usable(self.confirmed.input) && usable(self.confirmed.output)
    }

    /// Closes the WebSocket in the background (a call that will not happen after all).
    pub fn close_in_background(self) {
        close_in_background(self.sender);
    }
}

/// What every answered call, inbound or outbound, hands to the conversation ([`converse`]).
pub struct Established {
    pub direction: CallDirection,
    /// Who, whom, which agent and route (for tools, transfers, recordings and CDRs).
    pub facts: facts::CallFacts,
    pub agent: AgentConfig,
    pub dialog: Dialog,
    /// The negotiated stream (`answer_offer` for inbound, `receive_answer` for outbound).
    pub media: NegotiatedMedia,
    /// The leased RTP socket (blocking mode is fine: converse makes it non-blocking).
    pub socket: std::net::UdpSocket,
    pub port_lease: PortLease,
    pub session: OpenSession,
    /// Becomes true when the operator hangs the call up (admin API `DELETE /v1/calls/{id}`).
    /// A dropped sender means "never".
    pub hangup: watch::Receiver<bool>,
    /// The configuration snapshot the call took when it started (`reload.rs`).
    pub settings: Arc<crate::reload::Settings>,
    /// The call's SDP state, for the caller's re-offers ([`renegotiate`]).
    pub sdp: renegotiate::SdpSession,
}

/// Opens and confirms the agent's Realtime session for a call on `codec` (connect,
/// `session.update`, `session.created`, `session.updated` in formats the media code can use),
/// all within `realtime.connect_timeout_ms`. Callable before an outbound INVITE is sent; cancel
/// by dropping the future. On refusal after the upgrade the WebSocket is closed in the
/// background.
pub async fn open_session(
    state: &GatewayState,
    settings: &crate::reload::Settings,
    agent: &AgentConfig,
    codec: Codec,
) -> Result<OpenSession, Refusal> {
    let requested = match agent.audio_format {
        AudioFormatChoice::Auto => ModelAudio::G711Passthrough,
        AudioFormatChoice::Pcm => ModelAudio::Pcm24k,
    };
    // Only G.711 can go to the model untouched; Opus and G.722 calls speak 24 kHz PCM to it.
    let model_audio = model_audio_for(codec, requested);
    // The call's snapshot: its timeouts and limits stay those it started with (`reload.rs`).
    let realtime_cfg = &settings.config.realtime;
    let mut setup = SessionSetup::new(
        codec,
        session::model_format(model_audio, codec),
        Instant::now(),
        Duration::from_millis(realtime_cfg.connect_timeout_ms),
    );
    let limits = ConnectLimits {
        max_message_bytes: realtime_cfg.max_message_bytes,
        // A server that stops reading must not wedge the call's task past the watchdog.
        send_timeout: Some(Duration::from_secs(realtime_cfg.watchdog_secs)),
    };
    let update = session::session_update(agent, &realtime_cfg.model, setup.requested());
    let update = session::with_input_transcription(update, &realtime_cfg.transcription_model);
    let connecting = Instant::now();
    let (sender, receiver, confirmed, expires_at) = confirm_session(&state.realtime, limits, &update, &mut setup)
        .await
        .inspect_err(|refusal| telemetry::realtime_connect_failed(connect_failure_label(refusal)))?;
    telemetry::realtime_connected(connecting.elapsed());
    if confirmed.input != model_audio || confirmed.output != model_audio {
        info!(requested = ?model_audio, input = ?confirmed.input, output = ?confirmed.output,
            "the Realtime API confirmed other audio formats; converting to them");
    }
    Ok(OpenSession { sender, receiver, confirmed, codec, expires_at })
}

/// The `reason` of `switchboard_realtime_connect_failures_total`: the upgrade's HTTP status class
/// kept apart (401/403 are our key or account, 429 our rate limit, 5xx theirs).
fn connect_failure_label(refusal: &Refusal) -> &'static str {
    match refusal {
        Refusal::AgentRejectedUpgrade { status: 401, .. } => "http_401",
        Refusal::AgentRejectedUpgrade { status: 403, .. } => "http_403",
        Refusal::AgentRejectedUpgrade { status: 429, .. } => "http_429",
        Refusal::AgentRejectedUpgrade { status: 500..=599, .. } => "http_5xx",
        Refusal::AgentRejectedUpgrade { .. } => "http_other",
        Refusal::AgentUnavailable(_) => "unreachable",
        Refusal::AgentTimeout(_) => "timeout",
        Refusal::AgentSessionRefused(_) => "session_refused",
        Refusal::AgentFormatMismatch(_) => "format_mismatch",
        _ => "other",
    }
}

/// Connects and confirms the session (see [`SessionSetup`]); every wait ends at the setup's
/// deadline. On refusal after the upgrade the WebSocket is closed in the background.
async fn confirm_session(
    connect: &ConnectConfig,
    limits: ConnectLimits,
    update: &ClientEvent,
    setup: &mut SessionSetup,
) -> Result<(RealtimeSender, RealtimeReceiver, ConfirmedAudio, Option<i64>), Refusal> {
    let deadline = tokio::time::Instant::from_std(setup.deadline());
    let timed_out = |setup: &mut SessionSetup| {
        // The timer fired at the deadline; never earlier than it for the sans-IO check.
        setup.on_timeout(Instant::now().max(setup.deadline())).unwrap_or(Refusal::AgentTimeout("session setup"))
    };
    let (mut tx, mut rx) = match tokio::time::timeout_at(deadline, client::connect_with_limits(connect, limits)).await {
        Err(_) => return Err(timed_out(setup)),
        Ok(Err(e)) => return Err(setup.on_connect_failed(&e)),
        Ok(Ok(pair)) => pair,
    };
    setup.on_connected();
    // Sent at once, as OpenAI's samples do: the server reads it after sending session.created.
    let refusal = match tokio::time::timeout_at(deadline, tx.send(update)).await {
        Err(_) => Some(timed_out(setup)),
        Ok(Err(e)) => Some(setup.on_closed(&format!("session.update not sent: {e}"))),
        Ok(Ok(())) => None,
    };
    if let Some(refusal) = refusal {
        close_in_background(tx);
        return Err(refusal);
    }
    let mut expires_at = None;
    loop {
        let step = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => SetupStep::Refuse(timed_out(setup)),
            Ok(None) => SetupStep::Refuse(setup.on_closed("connection closed")),
            Ok(Some(Err(ClientError::Event(e)))) => {
                warn!(error = %e, "undecodable Realtime event during setup ignored");
                continue;
            }
            Ok(Some(Err(e))) => SetupStep::Refuse(setup.on_closed(&e.to_string())),
            Ok(Some(Ok(event))) => {
                if let ServerEvent::SessionCreated(created) = &event {
                    expires_at = created.session.expires_at;
                }
                setup.on_event(&event)
            }
        };
        match step {
            SetupStep::Wait => continue,
            SetupStep::Ready(confirmed) => return Ok((tx, rx, confirmed, expires_at)),
            SetupStep::Refuse(refusal) => {
                close_in_background(tx);
                return Err(refusal);
            }
        }
    }
}

/// Sends a WebSocket Close without holding up the caller's answer (bounded: the server may
/// not be reading).
fn close_in_background(mut tx: RealtimeSender) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(Duration::from_secs(2), tx.close()).await;
    });
}

/// Whether the caller's CANCEL has already arrived, without waiting for one.
fn is_cancelled(invite: &mut ServerInvite) -> bool {
    use std::future::Future;
    let mut cancelled = std::pin::pin!(invite.cancelled());
    let waker = std::task::Waker::noop();
    cancelled.as_mut().poll(&mut std::task::Context::from_waker(waker)).is_ready()
}

fn answer_policy(global_codecs: &[String], agent: &AgentConfig) -> AnswerPolicy {
    let names = if agent.codecs.0.is_empty() { global_codecs } else { agent.codecs.0.as_slice() };
    AnswerPolicy {
        codecs: names.iter().filter_map(|name| Codec::from_name(name)).collect(),
        ptime_ms: PTIME.as_millis() as u32,
        telephone_event: true,
        srtp: switchboard_sdp::SrtpMode::Off,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_gets_its_routes_agent_with_placeholders_filled_and_the_routes_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchboard.toml");
        std::fs::write(
            &path,
            "[routing]\nheaders = [\"X-Customer-Id\"]\n\
             [[routes]]\nname = \"vip\"\ndialled = \"100\"\ncaller = \"+4930*\"\nagent = \"sales\"\nrecord = true\n\
             [[routes]]\nname = \"busy\"\ndialled = \"100\"\nreject = 486\n\
             [agents.sales]\ninstructions = \"{agent} for {caller} on {dialled} ({call_id}), customer {header.X-Customer-Id}\"\n\
             greeting = \"Hello {caller}{header.X-Other}\"\n",
        )
        .unwrap();
        let (config, resolved) = crate::config::load_with_env(&path, &[]).unwrap();
        let info = |pai: &str| switchboard_sip::CallInfo {
            call_id: "sip-call".into(),
            from_uri: "sip:anonymous@example.invalid".into(),
            from_display: None,
            to_uri: "sip:100@gw".into(),
            request_uri: "sip:100@gw".into(),
            dialled: "100".into(),
            source: "192.0.2.9:5060".parse().unwrap(),
            transport: switchboard_sip::Transport::Udp,
            asserted_identity: Some(pai.into()),
            headers: vec![("X-Customer-Id".into(), "C-9".into()), ("X-Other".into(), "{caller}".into())],
        };
        let now = "2026-12-02T10:00:00Z".parse().unwrap();

        let vip = info("sip:+4930555@carrier");
        let (route_name, agent_name, agent) = route(&config, &resolved, &vip, "gw-1", now).unwrap().unwrap();
        assert_eq!((route_name, agent_name), ("vip", "sales"));
        assert_eq!(agent.instructions, "sales for +4930555 on 100 (gw-1), customer C-9");
        assert_eq!(agent.greeting, "Hello +4930555", "an uncaptured header renders empty");
        assert!(agent.record && !config.agents["sales"].record, "the route's record override applies");

        let other = info("sip:+15550000@carrier");
        let refused = route(&config, &resolved, &other, "gw-2", now).unwrap();
        assert_eq!(refused.map(|_| ()).unwrap_err().code(), 486);
        let mut unknown = other.clone();
        unknown.dialled = "200".into();
        assert!(route(&config, &resolved, &unknown, "gw-3", now).is_none(), "no route: 404");
    }

    #[test]
    fn connect_failures_are_labelled_by_who_must_act() {
        let upgrade = |status| Refusal::AgentRejectedUpgrade { status, body: String::new() };
        assert_eq!(connect_failure_label(&upgrade(401)), "http_401");
        assert_eq!(connect_failure_label(&upgrade(403)), "http_403");
        assert_eq!(connect_failure_label(&upgrade(429)), "http_429");
        assert_eq!(connect_failure_label(&upgrade(503)), "http_5xx");
        assert_eq!(connect_failure_label(&upgrade(418)), "http_other");
        assert_eq!(connect_failure_label(&Refusal::AgentTimeout("session.created")), "timeout");
        assert_eq!(connect_failure_label(&Refusal::AgentUnavailable("refused".into())), "unreachable");
        assert_eq!(connect_failure_label(&Refusal::AgentSessionRefused("x".into())), "session_refused");
        assert_eq!(connect_failure_label(&Refusal::AgentFormatMismatch("x".into())), "format_mismatch");
    }
}
