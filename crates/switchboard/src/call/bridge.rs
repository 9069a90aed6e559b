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
//! Outbound pacing is not in this task: the pacer sits behind a mutex ([`ClockedSend`]) that the
//! gateway's one [`MediaClock`] serves on time with every other call's (issue 7). This task only
//! queues encoded frames into it, flushes it on barge-in, and tells it where to send.
//!
//! Strict RTP: every received packet goes through the call's [`RtpSourceLatch`] first. Only the
//! caller's learned source reaches the agent, refreshes the RTP timeout, or decides where we send;
//! and nothing is sent before the ACK or the caller's first packet.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
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
use switchboard_realtime::events::{ClientEvent, ErrorEvent, ResponseStatus, ServerEvent};
use switchboard_sip::{Dialog, DialogEvent};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio::time::sleep_until;
use tracing::{debug, info, warn};

use super::end::CallEnd;
use super::session::{self, ApologyLimiter};
use crate::media_clock::{MediaClock, Paced, RtpTransmit};
use crate::telemetry::{self, Redacted};

/// Everything the media loop needs, prepared by call setup.
pub struct Bridge {
    /// Strict RTP: how the caller's source is learned and re-learned (`media.rtp_*`).
    pub strict_rtp: LatchConfig,
    pub socket: UdpSocket,
    /// The same RTP socket, for the media clock's sends.
    pub clock_socket: Arc<std::net::UdpSocket>,
    /// Paces and sends this call's outbound RTP.
    pub clock: Arc<MediaClock>,
    /// The caller's RTP address from its SDP. Where we really send is the latch's decision.
    pub remote: SocketAddr,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Whether our negotiated direction lets us send (sendrecv / sendonly).
    pub may_send: bool,
    pub reorder: ReorderBuffer,
    /// Handed to the media clock when the loop starts.
    pub pacer: Pacer<ItemTag>,
    pub inbound: InboundAudio,
    pub outbound: OutboundAudio,
    /// Opus and G.722: `outbound` defers encoding, and this task encodes frames just ahead of
    /// their slot ([`ENCODE_AHEAD_FRAMES`]), so neither the media clock nor audio a barge-in
    /// discards pays for the encoder. G.711 is encoded when it arrives (it costs nothing).
    pub encode_ahead: bool,
    /// Milliseconds of model audio per byte received (G.711: 1/8, PCM16 24 kHz: 1/48).
    pub model_ms_per_byte: f64,
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

/// How many played-frame records the clock keeps before it wakes the task to take them. Each
/// record covers a run of frames of one item, so this is reached only when the task has not
/// looked for a long while (it looks at every Realtime event).
const PLAYED_RECORDS_BEFORE_WAKE: usize = 16;

/// With `encode_ahead`, the clock wakes the task when fewer encoded frames than this wait in the
/// pacer (60 ms at 20 ms ptime); the task then encodes up to two more than this.
const ENCODE_AHEAD_FRAMES: usize = 3;

/// The outbound half of the call that the media clock drives (contract M).
pub struct ClockedSend {
    pacer: Pacer<ItemTag>,
    /// Where frames go: the latch's target while we may send. `None`: frames are dropped and the
    /// pacer keeps its clock (nothing goes out before the ACK or the caller's first packet).
    target: Option<SocketAddr>,
    /// Frames played per item since the task last took them (runs of one item merged).
    played: Vec<(ItemTag, u32)>,
    ready: VecDeque<RtpTransmit>,
    /// The task holds unencoded frames to top the pacer up with (`encode_ahead`).
    unencoded_waiting: bool,
}

impl ClockedSend {
    fn new(pacer: Pacer<ItemTag>) -> ClockedSend {
        ClockedSend {
            pacer,
            target: None,
            played: Vec::new(),
            ready: VecDeque::with_capacity(4),
            unencoded_waiting: false,
        }
    }
}

impl Paced for ClockedSend {
    fn handle_timeout(&mut self, now: Instant) {
        while let Some(frame) = self.pacer.poll(now) {
            if let Some(tag) = frame.tag {
                match self.played.last_mut() {
                    Some((last, frames)) if *last == tag => *frames += 1,
                    _ => self.played.push((tag, 1)),
                }
            }
            if let Some(destination) = self.target {
                let mut packet = Vec::with_capacity(rtp::RTP_HEADER_LEN + frame.payload.len());
                rtp::write_rtp(&mut packet, &frame.header, &frame.payload);
                self.ready.push_back(RtpTransmit { destination, packet });
            }
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Some(self.pacer.next_deadline())
    }

    fn poll_transmit(&mut self) -> Option<RtpTransmit> {
        self.ready.pop_front()
    }

    fn wants_task(&self) -> bool {
        self.played.len() >= PLAYED_RECORDS_BEFORE_WAKE
            || (self.unencoded_waiting && self.pacer.queued_frames() < ENCODE_AHEAD_FRAMES)
    }
}

/// The call's [`ClockedSend`], shared with the media clock. Never held across an await.
struct SharedSend(Arc<Mutex<ClockedSend>>);

impl SharedSend {
    fn lock(&self) -> MutexGuard<'_, ClockedSend> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands the frames the clock played to the conversation's bookkeeping (what a barge-in
    /// truncates to).
    fn settle_played(&self, conversation: &mut Conversation, ptime_ms: f64) {
        let played = std::mem::take(&mut self.lock().played);
        for (tag, frames) in played {
            conversation.on_audio_played(tag, f64::from(frames) * ptime_ms);
        }
    }

    /// `encode_ahead`: encodes the next unencoded frames (outside the lock) until the pacer holds
    /// two more than [`ENCODE_AHEAD_FRAMES`].
    fn top_up(&self, outbound: &mut OutboundAudio, unencoded: &mut VecDeque<(ItemTag, Vec<u8>)>) {
        let queued = self.lock().pacer.queued_frames();
        let wanted = (ENCODE_AHEAD_FRAMES + 2).saturating_sub(queued);
        let encoded: Vec<(ItemTag, Vec<u8>)> = std::iter::from_fn(|| unencoded.pop_front())
            .take(wanted)
            .map(|(tag, raw)| (tag, outbound.encode_deferred(raw)))
            .collect();
        let mut clocked = self.lock();
        for (tag, frame) in encoded {
            clocked.pacer.enqueue(tag, frame);
        }
        clocked.unencoded_waiting = !unencoded.is_empty();
    }
}

/// Runs until the call ends, and says why.
pub async fn run(
    bridge: Bridge,
    dialog: &mut Dialog,
    realtime_tx: &mut RealtimeSender,
    realtime_rx: &mut RealtimeReceiver,
    shutdown: watch::Receiver<bool>,
) -> CallEnd {
    let mut latch = RtpSourceLatch::new(bridge.strict_rtp, bridge.remote, Instant::now());
    let end = media_loop(bridge, &mut latch, dialog, realtime_tx, realtime_rx, shutdown).await;
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
) -> CallEnd {
    let mut conversation = Conversation::new();
    let mut recv_buf = vec![0u8; 2048];
    // The pacer moves to the clock's side; the bridge keeps an idle copy of its config in its place.
    let idle = Pacer::new(bridge.pacer.config().clone(), Instant::now(), 0, 0);
    let pacer = std::mem::replace(&mut bridge.pacer, idle);
    let clocked_send = SharedSend(Arc::new(Mutex::new(ClockedSend::new(pacer))));
    let task_wake = Arc::new(Notify::new());
    // Dropped when this function returns: the clock stops sending for the call.
    let _registration =
        bridge.clock.register(Arc::clone(&clocked_send.0), Arc::clone(&bridge.clock_socket), Arc::clone(&task_wake));
    // The target the clock has; updated whenever the latch's changes.
    let mut clock_target: Option<SocketAddr> = None;
    // `encode_ahead`: frames produced but not yet encoded, in production order (bounded with the
    // pacer's queue by `max_queued_audio`).
    let mut unencoded: VecDeque<(ItemTag, Vec<u8>)> = VecDeque::new();
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
        let target = if bridge.may_send { latch.send_target() } else { None };
        if target != clock_target {
            clock_target = target;
            clocked_send.lock().target = target;
        }
        let reorder_due = bridge.reorder.next_deadline().map(tokio::time::Instant::from_std);
        let rtp_deadline = tokio::time::Instant::from_std(last_rtp_in + bridge.rtp_timeout);
        bridge.keepalive.on_traffic(realtime_rx.last_frame_at());
        let keepalive_due = tokio::time::Instant::from_std(bridge.keepalive.next_deadline());

        tokio::select! {
            biased;

            // The clock has played-frame records to hand over (see `PLAYED_RECORDS_BEFORE_WAKE`).
            () = task_wake.notified() => {
                clocked_send.settle_played(&mut conversation, ptime_ms);
                if bridge.encode_ahead {
                    clocked_send.top_up(&mut bridge.outbound, &mut unencoded);
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
                // The conversation must know what was played before it judges a barge-in.
                clocked_send.settle_played(&mut conversation, ptime_ms);
                match event {
                    ServerEvent::OutputAudioDelta(delta) => {
                        let arrived = Instant::now();
                        let Ok(audio) = BASE64.decode(delta.delta.as_bytes()) else {
                            warn!("audio delta with bad base64 ignored");
                            continue;
                        };
                        let ms = audio.len() as f64 * bridge.model_ms_per_byte;
                        let Some(tag) = conversation.on_audio_delta(&delta.response_id, &delta.item_id, ms) else {
                            continue; // late audio of an interrupted response
                        };
                        if framing_tag.is_some_and(|t| t != tag) {
                            finish_item(&mut bridge, &clocked_send, &mut framing_tag, &mut unencoded);
                        }
                        framing_tag = Some(tag);
                        frames.clear();
                        // G.711: encoded here; Opus, G.722: framed here, encoded just ahead of
                        // the slot (`encode_ahead`). Never in the clock's path.
                        bridge.outbound.push(&audio, &mut frames);
                        // Bounded playout queue: the model streams faster than real time, but
                        // never minutes ahead unless it misbehaves. Policy when full: drop the
                        // new audio (what is queued plays on; a barge-in truncates the item to
                        // what was really played).
                        let mut dropped = 0u64;
                        let mut clocked = clocked_send.lock();
                        let held = |clocked: &ClockedSend, unencoded: &VecDeque<_>| {
                            clocked.pacer.queued_duration()
                                + bridge.ptime.saturating_mul(u32::try_from(unencoded.len()).unwrap_or(u32::MAX))
                        };
                        for frame in frames.drain(..) {
                            if held(&clocked, &unencoded) >= bridge.max_queued_audio {
                                dropped += 1;
                            } else if bridge.encode_ahead {
                                unencoded.push_back((tag, frame));
                            } else {
                                clocked.pacer.enqueue(tag, frame);
                            }
                        }
                        let queued = held(&clocked, &unencoded);
                        drop(clocked);
                        if bridge.encode_ahead {
                            clocked_send.top_up(&mut bridge.outbound, &mut unencoded);
                        }
                        if dropped > 0 {
                            metrics::counter!(telemetry::AGENT_AUDIO_DROPPED_FRAMES_TOTAL).increment(dropped);
                            if overflowing_tag != Some(tag) {
                                overflowing_tag = Some(tag);
                                warn!(queued_ms = queued.as_millis() as u64,
                                    "agent audio queue full; dropping the rest of this item's audio");
                            }
                        }
                        metrics::histogram!(telemetry::OUTBOUND_PROCESSING_SECONDS).record(arrived.elapsed().as_secs_f64());
                    }
                    ServerEvent::OutputAudioDone(_) => {
                        finish_item(&mut bridge, &clocked_send, &mut framing_tag, &mut unencoded);
                    }
                    ServerEvent::SpeechStarted(_) => {
                        let dropped = {
                            let mut clocked = clocked_send.lock();
                            clocked.unencoded_waiting = false;
                            clocked.pacer.flush() + std::mem::take(&mut unencoded).len()
                        };
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
        }
    }
}

/// Pads and queues the last partial frame of the item being framed.
fn finish_item(
    bridge: &mut Bridge,
    clocked_send: &SharedSend,
    framing_tag: &mut Option<ItemTag>,
    unencoded: &mut VecDeque<(ItemTag, Vec<u8>)>,
) {
    if let Some(tag) = framing_tag.take()
        && let Some(frame) = bridge.outbound.flush_partial()
    {
        if bridge.encode_ahead {
            unencoded.push_back((tag, frame));
            clocked_send.top_up(&mut bridge.outbound, unencoded);
        } else {
            clocked_send.lock().pacer.enqueue(tag, frame);
        }
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

#[cfg(test)]
mod tests {
    use switchboard_media::pacer::PacerConfig;

    use super::*;

    const PTIME: Duration = Duration::from_millis(20);

    fn clocked(start: Instant) -> ClockedSend {
        let config = PacerConfig { payload_type: 0, ssrc: 9, clock_rate: 8000, ptime: PTIME, silence: vec![0xFF; 160] };
        ClockedSend::new(Pacer::new(config, start, 0, 0))
    }

    #[test]
    fn nothing_is_sent_before_there_is_a_target_but_the_clock_runs() {
        let start = Instant::now();
        let mut send = clocked(start);
        send.handle_timeout(start);
        assert_eq!(send.poll_transmit(), None, "no target: frame dropped");
        assert_eq!(send.poll_timeout(), Some(start + PTIME));
        send.target = Some("127.0.0.1:4000".parse().unwrap());
        send.handle_timeout(start + PTIME);
        let packet = send.poll_transmit().unwrap();
        let (header, payload) = rtp::parse_rtp(&packet.packet).unwrap();
        assert_eq!((header.sequence, header.timestamp), (1, 160), "the pacer kept its clock");
        assert_eq!(payload, [0xFF; 160]);
    }

    #[test]
    fn opus_is_encoded_just_ahead_of_the_slot_by_the_task() {
        use switchboard_media::framing::ModelAudio;
        use switchboard_media::signal::sine;
        let start = Instant::now();
        let send = SharedSend(Arc::new(Mutex::new(clocked(start))));
        let mut outbound = OutboundAudio::new(switchboard_media::Codec::Opus, ModelAudio::Pcm24k, PTIME);
        outbound.defer_encoding(true);
        let pcm: Vec<u8> = sine(440.0, 24000, 200, 8000).iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut frames = Vec::new();
        outbound.push(&pcm, &mut frames);
        assert_eq!(frames.len(), 10);
        let raw_len = frames[0].len();
        let mut unencoded: VecDeque<(ItemTag, Vec<u8>)> = frames.into_iter().map(|f| (1, f)).collect();

        send.top_up(&mut outbound, &mut unencoded);
        assert_eq!(send.lock().pacer.queued_frames(), ENCODE_AHEAD_FRAMES + 2);
        assert_eq!(unencoded.len(), 10 - (ENCODE_AHEAD_FRAMES + 2), "the rest waits unencoded");
        assert!(!send.lock().wants_task(), "enough encoded ahead");
        // Three slots later fewer than ENCODE_AHEAD_FRAMES are left: the clock asks for more.
        for slot in 0..3 {
            send.lock().handle_timeout(start + PTIME * slot);
        }
        assert!(send.lock().wants_task());
        send.top_up(&mut outbound, &mut unencoded);
        let clocked = send.lock();
        assert_eq!(clocked.pacer.queued_frames(), ENCODE_AHEAD_FRAMES + 2);
        assert!(!clocked.wants_task());
        drop(clocked);
        // What the clock sends is Opus, not the raw PCM the task framed.
        let mut clocked = send.lock();
        clocked.target = Some("127.0.0.1:4000".parse().unwrap());
        clocked.handle_timeout(start + PTIME * 3);
        let packet = clocked.poll_transmit().unwrap();
        let (_, payload) = rtp::parse_rtp(&packet.packet).unwrap();
        assert!(payload.len() < raw_len, "encoded: {} bytes, raw frame {raw_len}", payload.len());
    }

    #[test]
    fn played_frames_are_recorded_per_item_and_wake_the_task_when_many() {
        let start = Instant::now();
        let mut send = clocked(start);
        let (first, second): (ItemTag, ItemTag) = (1, 2);
        for _ in 0..3 {
            send.pacer.enqueue(first, vec![1; 160]);
        }
        send.pacer.enqueue(second, vec![2; 160]);
        let mut slot = 0;
        for _ in 0..4 {
            send.handle_timeout(start + PTIME * slot);
            slot += 1;
        }
        assert_eq!(send.played, [(first, 3), (second, 1)], "runs of one item merged");
        assert!(!send.wants_task());
        for n in 0..PLAYED_RECORDS_BEFORE_WAKE {
            send.pacer.enqueue(10 + n as ItemTag, vec![3; 160]);
        }
        for _ in 0..PLAYED_RECORDS_BEFORE_WAKE {
            send.handle_timeout(start + PTIME * slot);
            slot += 1;
        }
        assert!(send.wants_task(), "the task is woken to take the records");
    }
}
