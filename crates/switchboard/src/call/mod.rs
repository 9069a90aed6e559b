//! One call from INVITE to its end: route, negotiate, open the Realtime session, answer, bridge.

pub mod bridge;
pub mod end;
pub mod session;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchboard_media::codec::Codec as MediaCodec;
use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio, model_audio_for};
use switchboard_media::opus_codec::OpusEncoderSettings;
use switchboard_media::pacer::{Pacer, PacerConfig};
use switchboard_media::reorder::ReorderBuffer;
use switchboard_realtime::client::{self, ClientError, ConnectConfig, ConnectLimits, RealtimeReceiver, RealtimeSender};
use switchboard_realtime::events::ClientEvent;
use switchboard_sdp::{AnswerPolicy, Codec as SdpCodec, Direction, LocalMedia, SdpError};
use switchboard_sip::{IncomingCall, ServerInvite};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::app::GatewayState;
use crate::config::{AgentConfig, AudioFormatChoice};
use crate::routing;
use crate::telemetry::{self, Escaped, Redacted};
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
    let end = refuse(state, call.invite, refusal);
    record_end(&end);
}

/// Runs one call to its end in its own span.
pub async fn handle(state: Arc<GatewayState>, call: IncomingCall, slot: CallSlot) {
    let span = info_span!("call", call_id = %Escaped(&call.info.call_id), dialled = %Redacted(&call.info.dialled));
    async move {
        info!(from = %Redacted(&call.info.from_uri), transport = ?call.info.transport, "INVITE");
        let end = run(&state, call).await;
        match end.fault() {
            end::Fault::Upstream | end::Fault::Gateway => warn!(reason = ?end, fault = %end.fault(), "call ended"),
            _ => info!(reason = ?end, fault = %end.fault(), "call ended"),
        }
        record_end(&end);
        drop(slot);
    }
    .instrument(span)
    .await
}

fn record_end(end: &CallEnd) {
    metrics::counter!(telemetry::CALLS_TOTAL, "outcome" => end.outcome_label(), "reason" => end.reason_label())
        .increment(1);
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

async fn run(state: &GatewayState, call: IncomingCall) -> CallEnd {
    let received = Instant::now();
    let IncomingCall { info, offer, mut invite } = call;
    let cfg = &state.config;

    let Some((agent_name, agent)) = routing::route(&cfg.agents, &info.dialled) else {
        return refuse(state, invite, Refusal::NoRoute);
    };
    let Some(offer) = offer else {
        return refuse(state, invite, Refusal::NoSdpOffer);
    };
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
    let answer =
        match switchboard_sdp::answer_offer(&offer, &answer_policy(cfg.media.codecs.0.as_slice(), agent), &local) {
            Ok(answer) => answer,
            Err(e @ SdpError::Malformed { .. }) => return refuse(state, invite, Refusal::BadRequest(e.to_string())),
            Err(e) => return refuse(state, invite, Refusal::NotAcceptable(e.to_string())),
        };
    let media = answer.media;
    let Some(codec) = media_codec(media.codec) else {
        return refuse(state, invite, Refusal::NotAcceptable(format!("{:?} has no media pipeline", media.codec)));
    };
    let requested = match agent.audio_format {
        AudioFormatChoice::Auto => ModelAudio::G711Passthrough,
        AudioFormatChoice::Pcm => ModelAudio::Pcm24k,
    };
    // Only G.711 can go to the model untouched; Opus and G.722 calls speak 24 kHz PCM to it.
    let model_audio = model_audio_for(codec, requested);
    let ptime = Duration::from_millis(u64::from(media.ptime_ms.max(10)));
    let opus_settings = OpusEncoderSettings {
        bitrate_bps: cfg.media.opus_bitrate_bps,
        complexity: cfg.media.opus_complexity,
        ..OpusEncoderSettings::default()
    };
    let opus_settings = match media.opus {
        Some(peer) => {
            opus_settings.with_peer_limits(peer.max_average_bitrate, peer.max_playback_rate, Some(peer.use_inband_fec))
        }
        None => opus_settings,
    };
    info!(agent = agent_name, codec = ?media.codec, model_audio = ?model_audio, "routed");
    invite.ringing();

    // The call is answered only once the session is confirmed (connect, session.created,
    // session.updated in formats we can use) within one deadline; a CANCEL meanwhile wins.
    let realtime_cfg = &cfg.realtime;
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
    let opened = tokio::select! {
        biased;
        _ = invite.cancelled() => return CallEnd::CallerCancelled,
        opened = open_session(&state.realtime, limits, &update, &mut setup) => opened,
    };
    let (mut realtime_tx, mut realtime_rx, confirmed) = match opened {
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
    if confirmed.input != model_audio || confirmed.output != model_audio {
        info!(requested = ?model_audio, input = ?confirmed.input, output = ?confirmed.output,
            "the Realtime API confirmed other audio formats; converting to them");
    }
    debug!(setup_ms = received.elapsed().as_millis() as u64, "Realtime session confirmed");

    let socket = match std_socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(std_socket)) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(error = %e, "RTP socket setup failed");
            return refuse(state, invite, Refusal::NoMediaPort);
        }
    };
    // A CANCEL that arrived while the session was being confirmed has been answered 487 by
    // the SIP layer: answering now would create a dialog that never existed.
    if is_cancelled(&mut invite) {
        close_in_background(realtime_tx);
        return CallEnd::CallerCancelled;
    }
    // Shutdown began during setup: a 503 lets a proxy send the call elsewhere, rather than
    // answering it only to hang up at once.
    if *state.shutdown.borrow() {
        close_in_background(realtime_tx);
        return refuse(state, invite, Refusal::ShuttingDown);
    }
    let Some(mut dialog) = invite.accept(&answer.sdp) else {
        // The INVITE stopped being pending between the check above and the accept (the SIP core
        // refuses the 200): the CANCEL won.
        close_in_background(realtime_tx);
        return CallEnd::CallerCancelled;
    };
    metrics::histogram!(telemetry::CALL_SETUP_SECONDS).record(received.elapsed().as_secs_f64());
    info!(setup_ms = received.elapsed().as_millis() as u64, "answered");

    if !agent.greeting.is_empty()
        && let Err(e) = realtime_tx.send(&session::greeting(&agent.greeting)).await
    {
        warn!(error = %e, "greeting request failed");
    }

    let bridge = bridge::Bridge {
        strict_rtp: cfg.media.latch_config(),
        socket,
        remote: media.remote_rtp,
        payload_type: media.payload_type,
        telephone_event: media.telephone_event,
        may_send: matches!(media.direction, Direction::SendRecv | Direction::SendOnly),
        reorder: ReorderBuffer::new(Duration::from_millis(cfg.media.reorder_wait_ms)),
        pacer: Pacer::new(
            PacerConfig {
                payload_type: media.payload_type,
                ssrc: rand::random(),
                clock_rate: codec.clock_rate(),
                ptime,
                silence: codec.silence_frame(media.ptime_ms),
            },
            Instant::now(),
            rand::random(),
            rand::random(),
        ),
        inbound: InboundAudio::new(codec, confirmed.input),
        outbound: {
            let mut outbound = OutboundAudio::with_opus_settings(codec, confirmed.output, ptime, opus_settings);
            outbound.defer_encoding(true);
            outbound
        },
        model_ms_per_byte: switchboard_media::framing::model_audio_ms(confirmed.output, codec, 1),
        ptime,
        rtp_timeout: Duration::from_secs(cfg.media.rtp_timeout_secs),
        keepalive: client::Keepalive::new(
            Instant::now(),
            Duration::from_secs(realtime_cfg.ping_interval_secs),
            Duration::from_secs(realtime_cfg.watchdog_secs),
        ),
        max_queued_audio: Duration::from_secs(realtime_cfg.max_queued_audio_secs),
        apology: (!agent.apology.is_empty()).then(|| agent.apology.clone()),
        apology_limiter: session::ApologyLimiter::new(Duration::from_secs(agent.apology_min_interval_secs)),
    };
    let end = bridge::run(bridge, &mut dialog, &mut realtime_tx, &mut realtime_rx, state.shutdown.subscribe()).await;
    if end.needs_bye()
        && let Err(e) = dialog.hangup().await
    {
        warn!(error = %e, "BYE failed");
    }
    realtime_tx.close().await;
    drop(port_lease);
    end
}

/// Connects and confirms the session (see [`SessionSetup`]); every wait ends at the setup's
/// deadline. On refusal after the upgrade the WebSocket is closed in the background.
async fn open_session(
    connect: &ConnectConfig,
    limits: ConnectLimits,
    update: &ClientEvent,
    setup: &mut SessionSetup,
) -> Result<(RealtimeSender, RealtimeReceiver, ConfirmedAudio), Refusal> {
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
    loop {
        let step = match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => SetupStep::Refuse(timed_out(setup)),
            Ok(None) => SetupStep::Refuse(setup.on_closed("connection closed")),
            Ok(Some(Err(ClientError::Event(e)))) => {
                warn!(error = %e, "undecodable Realtime event during setup ignored");
                continue;
            }
            Ok(Some(Err(e))) => SetupStep::Refuse(setup.on_closed(&e.to_string())),
            Ok(Some(Ok(event))) => setup.on_event(&event),
        };
        match step {
            SetupStep::Wait => continue,
            SetupStep::Ready(confirmed) => return Ok((tx, rx, confirmed)),
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
        codecs: names.iter().filter_map(|name| SdpCodec::from_name(name)).collect(),
        ptime_ms: PTIME.as_millis() as u32,
        telephone_event: true,
    }
}

/// The media pipeline for a negotiated codec; `None` for a codec SDP knows but media does not.
fn media_codec(codec: SdpCodec) -> Option<MediaCodec> {
    match codec {
        SdpCodec::Pcmu => Some(MediaCodec::Pcmu),
        SdpCodec::Pcma => Some(MediaCodec::Pcma),
        SdpCodec::G722 => Some(MediaCodec::G722),
        SdpCodec::Opus => Some(MediaCodec::Opus),
        _ => None,
    }
}
