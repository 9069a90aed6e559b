//! The media loop of one answered call: a thin async shell around the sans-IO pieces.
//!
//! One task, one `select!` over the RTP socket, the Realtime WebSocket, the SIP dialog, the
//! pacer's next deadline, the reorder buffer's next deadline, the RTP timeout and shutdown.
//!
//! ```text
//! caller RTP -> ReorderBuffer -> InboundAudio -> input_audio_buffer.append -> model
//! model response.output_audio.delta -> Conversation (tag / discard) -> OutboundAudio -> Pacer -> RTP
//! input_audio_buffer.speech_started -> Pacer::flush + conversation.item.truncate
//! ```
//!
//! Strict RTP: every received packet goes through the call's [`RtpSourceLatch`] first. Only the
//! caller's learned source reaches the agent, refreshes the RTP timeout, or decides where we send;
//! and nothing is sent before the ACK or the caller's first packet.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use switchboard_media::framing::{InboundAudio, OutboundAudio};
use switchboard_media::latch::{LatchConfig, RtpSourceLatch, SourceVerdict};
use switchboard_media::pacer::Pacer;
use switchboard_media::reorder::{PushOutcome, ReorderBuffer};
use switchboard_media::rtp;
use switchboard_realtime::client::{ClientError, Keepalive, KeepaliveAction, RealtimeReceiver, RealtimeSender};
use switchboard_realtime::conversation::{Conversation, ItemTag};
use switchboard_realtime::error_code::ErrorCode;
use switchboard_realtime::events::{AudioFormat, ClientEvent, ErrorEvent, ResponseStatus, ServerEvent};
use switchboard_sip::{Dialog, DialogEvent};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

use super::end::CallEnd;
use super::session::{self, ApologyLimiter};
use crate::telemetry::{self, Redacted};

/// Everything the media loop needs, prepared by call setup.
pub struct Bridge {
    /// Strict RTP: how the caller's source is learned and re-learned (`media.rtp_*`).
    pub strict_rtp: LatchConfig,
    pub socket: UdpSocket,
    /// The caller's RTP address from its SDP. Where we really send is the latch's decision.
    pub remote: SocketAddr,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Whether our negotiated direction lets us send (sendrecv / sendonly).
    pub may_send: bool,
    pub reorder: ReorderBuffer,
    pub pacer: Pacer<ItemTag>,
    pub inbound: InboundAudio,
    pub outbound: OutboundAudio,
    /// The format the model speaks (what one byte of its audio lasts).
    pub model_output: AudioFormat,
    pub ptime: Duration,
    pub rtp_timeout: Duration,
    /// Pings to the Realtime server and the no-traffic watchdog.
    pub keepalive: Keepalive,
    /// Agent audio queued in the pacer, at most; model audio beyond it is dropped, never played.
    pub max_queued_audio: Duration,
    /// Said after a failed response (`None`: the agent has no apology configured).
    pub apology: Option<String>,
    pub apology_limiter: ApologyLimiter,
}

/// Runs until the call ends, and says why.
pub async fn run(
    bridge: Bridge,
    dialog: &mut Dialog,
    realtime_tx: &mut RealtimeSender,
    realtime_rx: &mut RealtimeReceiver,
    shutdown: watch::Receiver<bool>,
    hangup: watch::Receiver<bool>,
) -> CallEnd {
    let mut latch = RtpSourceLatch::new(bridge.strict_rtp, bridge.remote, Instant::now());
    let end = media_loop(bridge, &mut latch, dialog, realtime_tx, realtime_rx, shutdown, hangup).await;
    let stats = latch.stats();
    if stats.ignored > 0 {
        // Once per call, not per packet: an attacked call must not flood the log.
        info!(
            ignored = stats.ignored,
            accepted = stats.accepted,
            learned = stats.learned,
            "RTP from other sources ignored"
        );
    }
    end
}

async fn media_loop(
    mut bridge: Bridge,
    latch: &mut RtpSourceLatch,
    dialog: &mut Dialog,
    realtime_tx: &mut RealtimeSender,
    realtime_rx: &mut RealtimeReceiver,
    mut shutdown: watch::Receiver<bool>,
    mut hangup: watch::Receiver<bool>,
) -> CallEnd {
    let mut conversation = Conversation::new();
    let mut recv_buf = vec![0u8; 2048];
    let mut send_buf = Vec::with_capacity(256);
    let mut model_bytes = Vec::with_capacity(2048);
    let mut frames: Vec<Vec<u8>> = Vec::new();
    // The assistant item whose audio is being framed, so its last partial frame can be padded
    // and queued when the next item starts.
    let mut framing_tag: Option<ItemTag> = None;
    let mut last_rtp_in = Instant::now();
    let ptime_ms = bridge.ptime.as_secs_f64() * 1000.0;
    // The item whose audio is being dropped because the playout queue is full (logged once).
    let mut overflowing_tag: Option<ItemTag> = None;

    loop {
        let pacer_due = tokio::time::Instant::from_std(bridge.pacer.next_deadline());
        let reorder_due = bridge.reorder.next_deadline().map(tokio::time::Instant::from_std);
        let rtp_deadline = tokio::time::Instant::from_std(last_rtp_in + bridge.rtp_timeout);
        bridge.keepalive.on_traffic(realtime_rx.last_frame_at());
        let keepalive_due = tokio::time::Instant::from_std(bridge.keepalive.next_deadline());

        tokio::select! {
            biased;

            _ = sleep_until(pacer_due) => {
                let now = Instant::now();
                let mut slot = bridge.pacer.next_deadline();
                while let Some(frame) = bridge.pacer.poll(now) {
                    let payload = match frame.tag {
                        Some(tag) => {
                            conversation.on_audio_played(tag, ptime_ms);
                            // Opus/G.722 frames are encoded in their slot (OutboundAudio::defer_encoding).
                            bridge.outbound.encode_deferred(frame.payload)
                        }
                        None => frame.payload,
                    };
                    // Nothing goes out before the ACK or the caller's first packet (the latch says
                    // where, if anywhere): the pacer keeps its clock, the frame is dropped.
                    if bridge.may_send
                        && let Some(target) = latch.send_target()
                    {
                        send_buf.clear();
                        rtp::write_rtp(&mut send_buf, &frame.header, &payload);
                        if let Err(e) = bridge.socket.send_to(&send_buf, target).await {
                            debug!(error = %e, "RTP send failed");
                        }
                        metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "out").increment(1);
                        metrics::histogram!(telemetry::RTP_SEND_LATENESS_SECONDS)
                            .record(Instant::now().saturating_duration_since(slot).as_secs_f64());
                    }
                    slot = bridge.pacer.next_deadline();
                }
            }

            received = bridge.socket.recv_from(&mut recv_buf) => {
                let Ok((len, source)) = received else { continue };
                let now = Instant::now();
                let packet = &recv_buf[..len];
                if rtp::is_rtcp(packet) {
                    continue;
                }
                let Ok((header, payload)) = rtp::parse_rtp(packet) else {
                    debug!(len, "not an RTP packet; ignored");
                    continue;
                };
                // Symmetric RTP (RFC 4961) made strict: we answer where the caller's media really
                // comes from (behind a NAT, not what its SDP said), but only a learned source
                // counts; anything else is dropped before it reaches the agent or the timeout.
                match latch.on_packet(now, source, header.ssrc, header.sequence) {
                    SourceVerdict::Accept => {}
                    SourceVerdict::Learned(learned) => {
                        let previous = learned.previous.map(|p| p.to_string()).unwrap_or_default();
                        info!(
                            source = %Redacted(&learned.source.to_string()),
                            previous = %Redacted(&previous),
                            by = ?learned.by,
                            signalled = learned.source == bridge.remote,
                            "caller's RTP source learned"
                        );
                        debug!(source = %learned.source, previous, "caller's RTP source (unredacted)");
                    }
                    SourceVerdict::Ignore(reason) => {
                        metrics::counter!(telemetry::RTP_IGNORED_PACKETS_TOTAL, "reason" => reason.label()).increment(1);
                        continue;
                    }
                }
                metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "in").increment(1);
                last_rtp_in = now;
                if header.payload_type == bridge.payload_type {
                    if bridge.reorder.push(now, header, payload) == PushOutcome::Accepted {
                        if let Err(end) = drain_inbound(&mut bridge, now, &mut model_bytes, realtime_tx).await {
                            return end;
                        }
                        metrics::histogram!(telemetry::INBOUND_PROCESSING_SECONDS).record(now.elapsed().as_secs_f64());
                    }
                } else if Some(header.payload_type) == bridge.telephone_event {
                    debug!("RFC 4733 event received (DTMF to the agent is not wired yet)");
                }
            }

            _ = async { if let Some(due) = reorder_due { sleep_until(due).await } }, if reorder_due.is_some() => {
                if let Err(end) = drain_inbound(&mut bridge, Instant::now(), &mut model_bytes, realtime_tx).await {
                    return end;
                }
            }

            event = realtime_rx.recv() => {
                let event = match event {
                    Some(Ok(event)) => event,
                    Some(Err(ClientError::Closed { code, reason })) => {
                        return CallEnd::AgentDisconnected(format!("closed with {code}: {reason}"));
                    }
                    Some(Err(ClientError::Event(e))) => {
                        warn!(error = %e, "undecodable Realtime event ignored");
                        continue;
                    }
                    Some(Err(e @ ClientError::MessageTooLarge { .. })) => {
                        return CallEnd::AgentMessageTooLarge(e.to_string());
                    }
                    Some(Err(e)) => return CallEnd::AgentDisconnected(e.to_string()),
                    None => return CallEnd::AgentDisconnected("connection closed".into()),
                };
                match event {
                    ServerEvent::OutputAudioDelta(delta) => {
                        let arrived = Instant::now();
                        let Ok(audio) = BASE64.decode(delta.delta.as_bytes()) else {
                            warn!("audio delta with bad base64 ignored");
                            continue;
                        };
                        let ms = bridge.model_output.bytes_to_ms(audio.len());
                        let Some(tag) = conversation.on_audio_delta(&delta.response_id, &delta.item_id, ms) else {
                            continue; // late audio of an interrupted response
                        };
                        if framing_tag.is_some_and(|t| t != tag) {
                            finish_item(&mut bridge, &mut framing_tag);
                        }
                        framing_tag = Some(tag);
                        frames.clear();
                        bridge.outbound.push(&audio, &mut frames);
                        // Bounded playout queue: the model streams faster than real time, but
                        // never minutes ahead unless it misbehaves. Policy when full: drop the
                        // new audio (what is queued plays on; a barge-in truncates the item to
                        // what was really played).
                        let mut dropped = 0u64;
                        for frame in frames.drain(..) {
                            if bridge.pacer.queued_duration() >= bridge.max_queued_audio {
                                dropped += 1;
                            } else {
                                bridge.pacer.enqueue(tag, frame);
                            }
                        }
                        if dropped > 0 {
                            metrics::counter!(telemetry::AGENT_AUDIO_DROPPED_FRAMES_TOTAL).increment(dropped);
                            if overflowing_tag != Some(tag) {
                                overflowing_tag = Some(tag);
                                warn!(queued_ms = bridge.pacer.queued_duration().as_millis() as u64,
                                    "agent audio queue full; dropping the rest of this item's audio");
                            }
                        }
                        metrics::histogram!(telemetry::OUTBOUND_PROCESSING_SECONDS).record(arrived.elapsed().as_secs_f64());
                    }
                    ServerEvent::OutputAudioDone(_) => finish_item(&mut bridge, &mut framing_tag),
                    ServerEvent::SpeechStarted(_) => {
                        let dropped = bridge.pacer.flush();
                        bridge.outbound.reset();
                        framing_tag = None;
                        let truncate = conversation.on_speech_started();
                        if dropped > 0 || truncate.is_some() {
                            metrics::counter!(telemetry::BARGE_INS_TOTAL).increment(1);
                            info!(dropped_frames = dropped, "barge-in: agent audio flushed");
                        }
                        if let Some(truncate) = truncate
                            && let Err(end) = send(realtime_tx, &truncate.to_event()).await
                        {
                            return end;
                        }
                    }
                    ServerEvent::ResponseCreated(created) => conversation.on_response_created(&created.response.id),
                    ServerEvent::ResponseDone(done) => {
                        conversation.on_response_done(&done.response.id);
                        if done.response.status == ResponseStatus::Failed {
                            let reason = session::failed_response_reason(done.response.status_details.as_ref());
                            metrics::counter!(telemetry::REALTIME_FAILED_RESPONSES_TOTAL, "reason" => reason).increment(1);
                            let apologise = bridge.apology.is_some() && bridge.apology_limiter.try_take(Instant::now());
                            warn!(reason, response_id = %done.response.id, apologise, "Realtime response failed");
                            // No response is active after response.done: the apology may start now.
                            if apologise
                                && let Some(text) = &bridge.apology
                                && let Err(end) = send(realtime_tx, &session::apology(text)).await
                            {
                                return end;
                            }
                        }
                    }
                    ServerEvent::Error(ErrorEvent { error, .. }) => {
                        let code = ErrorCode::parse(error.code.as_deref());
                        metrics::counter!(telemetry::REALTIME_ERRORS_TOTAL, "code" => code.as_str()).increment(1);
                        if code.is_fatal() {
                            return CallEnd::AgentFatalError(format!("{}: {}", code.as_str(), error.message));
                        }
                        warn!(code = code.as_str(), message = %error.message, "Realtime error (call continues)");
                    }
                    ServerEvent::Unknown { event_type } => {
                        metrics::counter!(telemetry::REALTIME_EVENTS_UNKNOWN_TOTAL).increment(1);
                        debug!(%event_type, "unknown Realtime event ignored");
                    }
                    _ => {}
                }
            }

            // Pings, and the watchdog: no frame at all from the Realtime server (not even a pong)
            // for realtime.watchdog_secs means it is gone or wedged (a later issue reconnects).
            _ = sleep_until(keepalive_due) => {
                bridge.keepalive.on_traffic(realtime_rx.last_frame_at());
                match bridge.keepalive.poll(Instant::now()) {
                    KeepaliveAction::Wait => {}
                    KeepaliveAction::SendPing => {
                        if let Err(e) = realtime_tx.ping().await {
                            return CallEnd::AgentDisconnected(format!("ping failed: {e}"));
                        }
                    }
                    KeepaliveAction::Dead { silent_for } => {
                        warn!(silent_ms = silent_for.as_millis() as u64, "no traffic from the Realtime server; hanging up");
                        return CallEnd::AgentWatchdog(silent_for);
                    }
                }
            }

            event = dialog.next_event() => match event {
                Some(DialogEvent::Confirmed) => {
                    // The dialog is confirmed: the SDP's address may now be sent to (RFC 3261 §13.3.1.4).
                    latch.on_dialog_confirmed();
                    debug!("ACK received");
                }
                Some(DialogEvent::RemoteBye) | None => return CallEnd::CallerHangup,
                Some(DialogEvent::AckTimeout) => return CallEnd::AckTimeout,
            },

            _ = sleep_until(rtp_deadline) => return CallEnd::RtpTimeout,

            // `wait_for` also sees a shutdown that began before this loop subscribed.
            // (The guard it returns is dropped inside: it must not live across the loop's awaits.)
            _ = async { drop(shutdown.wait_for(|stop| *stop).await) } => return CallEnd::GatewayShutdown,

            // A dropped sender means no operator can hang up: wait forever.
            _ = async {
                if hangup.wait_for(|h| *h).await.is_err() {
                    std::future::pending::<()>().await;
                }
            } => return CallEnd::Operator,
        }
    }
}

/// Pads and queues the last partial frame of the item being framed.
fn finish_item(bridge: &mut Bridge, framing_tag: &mut Option<ItemTag>) {
    if let Some(tag) = framing_tag.take()
        && let Some(frame) = bridge.outbound.flush_partial()
    {
        bridge.pacer.enqueue(tag, frame);
    }
}

/// Moves every packet the reorder buffer releases to the model, one append per packet (20 ms).
async fn drain_inbound(
    bridge: &mut Bridge,
    now: Instant,
    model_bytes: &mut Vec<u8>,
    realtime_tx: &mut RealtimeSender,
) -> Result<(), CallEnd> {
    while let Some(frame) = bridge.reorder.pop(now) {
        if frame.lost_before > 0 {
            metrics::counter!(telemetry::RTP_LOST_TOTAL).increment(u64::from(frame.lost_before));
        }
        model_bytes.clear();
        bridge.inbound.convert_with_loss(frame.lost_before, &frame.payload, model_bytes);
        let append = ClientEvent::InputAudioBufferAppend { event_id: None, audio: BASE64.encode(&model_bytes) };
        send(realtime_tx, &append).await?;
    }
    Ok(())
}

async fn send(realtime_tx: &mut RealtimeSender, event: &ClientEvent) -> Result<(), CallEnd> {
    realtime_tx.send(event).await.map_err(|e| CallEnd::AgentDisconnected(format!("send failed: {e}")))
}
