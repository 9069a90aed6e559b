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
use switchboard_realtime::client;
use switchboard_sdp::{AnswerPolicy, Codec as SdpCodec, Direction, LocalMedia, SdpError};
use switchboard_sip::{IncomingCall, ServerInvite};
use tracing::{Instrument, info, info_span, warn};

use crate::app::GatewayState;
use crate::config::{AgentConfig, AudioFormatChoice};
use crate::routing;
use crate::telemetry::{self, Escaped, Redacted};
use end::{CallEnd, Refusal};

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

/// Refuses a call the gateway cannot take (overload), without spending a task on it.
pub fn refuse_overloaded(state: &GatewayState, call: IncomingCall) {
    let retry_after = state.config.calls.retry_after_secs.to_string();
    let refusal = Refusal::Overloaded;
    let (status, reason) = refusal.status();
    call.invite.reject(status, reason, &[("Retry-After", retry_after.as_str())]);
    record_end(&CallEnd::Refused(refusal));
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

fn refuse(invite: ServerInvite, refusal: Refusal) -> CallEnd {
    let (status, reason) = refusal.status();
    invite.reject(status, reason, &[]);
    CallEnd::Refused(refusal)
}

async fn run(state: &GatewayState, call: IncomingCall) -> CallEnd {
    let received = Instant::now();
    let IncomingCall { info, offer, mut invite } = call;
    let cfg = &state.config;

    let Some((agent_name, agent)) = routing::route(&cfg.agents, &info.dialled) else {
        return refuse(invite, Refusal::NoRoute);
    };
    let Some(offer) = offer else {
        return refuse(
            invite,
            Refusal::NotAcceptable("INVITE without an SDP offer (delayed offer) is not supported yet".into()),
        );
    };
    let (std_socket, port_lease) = match state.rtp_ports.allocate() {
        Ok(pair) => pair,
        Err(e) => {
            warn!(error = %e, "RTP port range exhausted");
            return refuse(invite, Refusal::NoMediaPort);
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
            Err(e @ SdpError::Malformed { .. }) => return refuse(invite, Refusal::BadRequest(e.to_string())),
            Err(e) => return refuse(invite, Refusal::NotAcceptable(e.to_string())),
        };
    let media = answer.media;
    let Some(codec) = media_codec(media.codec) else {
        return refuse(invite, Refusal::NotAcceptable(format!("{:?} has no media pipeline", media.codec)));
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

    let connect = client::connect(&state.realtime);
    let connected = tokio::select! {
        _ = invite.cancelled() => return CallEnd::CallerCancelled,
        result = tokio::time::timeout(Duration::from_millis(cfg.realtime.connect_timeout_ms), connect) => result,
    };
    let (mut realtime_tx, mut realtime_rx) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => return refuse(invite, Refusal::AgentUnavailable(e.to_string())),
        Err(_) => return refuse(invite, Refusal::AgentUnavailable("connect timed out".into())),
    };
    let format = session::model_format(model_audio, codec);
    if let Err(e) = realtime_tx.send(&session::session_update(agent, &cfg.realtime.model, format)).await {
        return refuse(invite, Refusal::AgentUnavailable(format!("session.update failed: {e}")));
    }

    let socket = match std_socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(std_socket)) {
        Ok(socket) => socket,
        Err(e) => {
            warn!(error = %e, "RTP socket setup failed");
            return refuse(invite, Refusal::NoMediaPort);
        }
    };
    let mut dialog = invite.accept(&answer.sdp);
    metrics::histogram!(telemetry::CALL_SETUP_SECONDS).record(received.elapsed().as_secs_f64());
    info!(setup_ms = received.elapsed().as_millis() as u64, "answered");

    if !agent.greeting.is_empty()
        && let Err(e) = realtime_tx.send(&session::greeting(&agent.greeting)).await
    {
        warn!(error = %e, "greeting request failed");
    }

    let bridge = bridge::Bridge {
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
        inbound: InboundAudio::new(codec, model_audio),
        outbound: {
            let mut outbound = OutboundAudio::with_opus_settings(codec, model_audio, ptime, opus_settings);
            outbound.defer_encoding(true);
            outbound
        },
        model_ms_per_byte: switchboard_media::framing::model_audio_ms(model_audio, codec, 1),
        ptime,
        rtp_timeout: Duration::from_secs(cfg.media.rtp_timeout_secs),
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
