//! The conversation of one answered call, inbound or outbound: the async shell that moves bytes
//! and time between the sockets and the call's logic.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_media::CodecCoding;
use switchboard_media::framing::{InboundAudio, OutboundAudio};
use switchboard_media::opus_codec::OpusEncoderSettings;
use switchboard_media::pacer::{Pacer, PacerConfig};
use switchboard_media::reorder::ReorderBuffer;
use switchboard_realtime::client;
use switchboard_sdp::Direction;
use tracing::warn;

use super::end::CallEnd;
use super::{Established, bridge, session};
use crate::app::GatewayState;

/// Runs an answered call to its end and says why: the agent greets first, then the caller and
/// the agent talk until either side (or the operator, or shutdown) ends it. Sends BYE when the
/// end is ours, closes the WebSocket and frees the RTP port.
pub async fn converse(state: &Arc<GatewayState>, call: Established) -> CallEnd {
    let Established { direction: _, agent_name: _, agent, mut dialog, media, socket, port_lease, session, hangup } =
        call;
    let cfg = &state.config;
    let realtime_cfg = &cfg.realtime;
    let super::OpenSession { sender: mut realtime_tx, receiver: mut realtime_rx, confirmed, codec: _ } = session;
    let end = 'call: {
        let codec = media.codec;
        let socket = match socket.set_nonblocking(true).and_then(|()| tokio::net::UdpSocket::from_std(socket)) {
            Ok(socket) => socket,
            Err(e) => {
                break 'call CallEnd::MediaSetupFailed(format!("RTP socket: {e}"));
            }
        };
        if !agent.greeting.is_empty()
            && let Err(e) = realtime_tx.send(&session::greeting(&agent.greeting)).await
        {
            warn!(error = %e, "greeting request failed");
        }
        let ptime = Duration::from_millis(u64::from(media.ptime_ms.max(10)));
        let opus_settings = OpusEncoderSettings {
            bitrate_bps: cfg.media.opus_bitrate_bps,
            complexity: cfg.media.opus_complexity,
            ..OpusEncoderSettings::default()
        };
        let opus_settings = match media.opus {
            Some(peer) => opus_settings.with_peer_limits(
                peer.max_average_bitrate,
                peer.max_playback_rate,
                Some(peer.use_inband_fec),
            ),
            None => opus_settings,
        };
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
            model_output: session::model_format(confirmed.output, codec),
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
        bridge::run(bridge, &mut dialog, &mut realtime_tx, &mut realtime_rx, state.shutdown.subscribe(), hangup).await
    };
    if end.needs_bye()
        && let Err(e) = dialog.hangup().await
    {
        warn!(error = %e, "BYE failed");
    }
    realtime_tx.close().await;
    drop(port_lease);
    end
}
