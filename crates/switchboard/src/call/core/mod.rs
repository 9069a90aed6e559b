//! The sans-IO call core: every decision of an answered call, with no socket, no task and no
//! clock of its own (the str0m / quinn-proto style). The shell ([`super::shell`]) feeds it what
//! arrived and the time, and carries out what it asks for.
//!
//! ```text
//! inputs                                   outputs
//! handle_rtp(now, leg, source, bytes)      poll_transmit() -> Transmit (RTP on a leg; the media clock drains it)
//! handle_realtime(now, ServerEvent)        poll_output()   -> Output (Realtime events, ping, hang up,
//! handle_realtime_traffic(at)                                         DTMF, recorder taps, the end)
//! handle_realtime_closed(now, CallEnd)     poll_timeout()  -> when to call handle_timeout
//! handle_dialog(now, DialogInput)
//! handle_timeout(now)
//! handle_rtcp(now, leg, source, bytes)     poll_rtcp_transmit() -> Transmit (RTCP for the leg's RTCP socket)
//! ```
//!
//! The data path, per media leg ([`LegId`]; the caller's is [`CALLER`], a human's for a bridged
//! transfer is [`HUMAN`]: [`add_leg`](CallCore::add_leg), [`bridge`](CallCore::bridge), in
//! `bridge.rs`):
//!
//! ```text
//! leg RTP -> strict latch -> JitterBuffer -> InboundAudio -> input_audio_buffer.append -> model
//!                                         (bridged: -> relay to the other leg's codec -> its Pacer)
//!         -> telephone-event (RFC 4733) -> Output::Dtmf, once per event
//! leg RTCP -> reports (RTT, the peer's view of us); our SR + SDES every ~5 s -> poll_rtcp_transmit
//!         (docs/media.md; the meter times turns and sums tokens, `meter.rs`)
//! model response.output_audio.delta -> AgentPlayout (item tag, bounded queue) -> OutboundAudio
//!         -> Pacer -> Transmit on the caller's leg (dropped while bridged)
//! a leg other than the caller's silent for rtp_timeout -> Output::LegLost (the call goes on)
//! input_audio_buffer.speech_started -> AgentPlayout::barge_in: Pacer flushed at once, then
//!         conversation.item.truncate with the milliseconds really sent
//! ```
//!
//! Barge-in bookkeeping lives in one place, [`AgentPlayout`]: which item is being framed, what
//! each item received and played (the [`Conversation`]) and the pacer queue it all goes through.
//!
//! Outbound timing rules (what a receiver sees): sequence numbers are continuous for the whole
//! call; timestamps advance by one ptime per packet, silence included, so they are continuous
//! too; the marker bit is set on the first audio packet after silence or after a flush
//! (RFC 3551 §4.1). The only timestamp jump is after a stall of more than
//! [`switchboard_media::pacer::MAX_CATCH_UP_FRAMES`] slots (the process was not scheduled):
//! the missed slots are skipped (timestamp jumps, sequence does not, marker set).

pub mod agent_control;
pub mod barge_in;
mod bridge;
#[cfg(test)]
mod bridge_tests;
mod dtmf;
mod dtmf_to_model;
pub mod first_audio;
pub mod hold;
#[cfg(test)]
mod hold_tests;
pub mod meter;
#[cfg(test)]
mod net_tests;
#[cfg(test)]
mod netem;
mod reconnecting;
pub mod reports;
mod talk;
#[cfg(test)]
mod talk_tests;
pub mod tap_decoder;
#[cfg(test)]
mod tests;
pub mod tools;
pub mod transfer;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_media::framing::MAX_CONCEALED_PACKETS;
use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio};
use switchboard_media::jitter::{JitterBuffer, JitterConfig, PushOutcome};
use switchboard_media::latch::{LatchConfig, LatchStats, RtpSourceLatch, SourceVerdict};
use switchboard_media::opus_codec::OpusEncoderSettings;
use switchboard_media::pacer::{Pacer, PacerConfig};
use switchboard_media::rtp::{self, StreamStart};
use switchboard_media::{Codec, CodecCoding};
use switchboard_realtime::client::{Keepalive, KeepaliveAction};
use switchboard_realtime::conversation::{Conversation, ItemTag};
use switchboard_realtime::error_code::ErrorCode;
use switchboard_realtime::events::{AudioFormat, ClientEvent, ErrorEvent, ResponseStatus, ServerEvent};
use switchboard_realtime::history::History;
use tracing::{debug, info, warn};

use agent_control::{AgentControl, Purpose, TalkConfig};
use barge_in::{BargeIn, BargeInAction, BargeInMode};
use dtmf::DtmfReceiver;
pub use dtmf::{DtmfDigit, InfoDtmfError, parse_info_dtmf};
use dtmf_to_model::DtmfToModel;
use meter::{Meter, TokenTotals};
pub use reconnecting::Resilience;
use reports::{Reports, RtcpStats};
use tap_decoder::TapDecoder;
pub use tap_decoder::tap_rate;

use super::end::CallEnd;
use super::session::{self, ApologyLimiter};
use crate::telemetry::{self, Escaped, Pii};

/// One media leg of a call: an RTP stream with its own codec, latch, reorder buffer and pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LegId(pub u8);

/// The caller's leg (inbound) or the callee's (outbound): the one the agent talks with.
pub const CALLER: LegId = LegId(0);

/// A human's leg (a bridged transfer): it only ever carries audio bridged to the caller's
/// ([`CallCore::add_leg`], [`CallCore::bridge`]).
pub const HUMAN: LegId = LegId(1);

/// Recorder taps waiting for the shell at most; beyond it taps are dropped and counted (a
/// recorder that cannot keep up must not grow the call's memory).
pub const MAX_PENDING_TAPS: usize = 250;

/// Recorder taps alone do not wake the call's task until this many wait (100 ms at 20 ms ptime):
/// they ride along with its next wake-up (the caller's RTP comes every 20 ms), so recording
/// does not add a task wake-up per packet ([`CallCore::has_urgent_output`]).
pub const TAP_WAKE_BATCH: usize = 5;

/// RTCP packets waiting for the shell at most (see `CallCore::poll_rtcp_transmit`).
pub const MAX_PENDING_RTCP: usize = 4;

/// Opus and G.722 are encoded just ahead of their slot, not when the model's audio arrives: a
/// delta of a second or more would otherwise hold the core's lock (and so the media clock) for
/// milliseconds, and a barge-in would discard audio already paid for. The media clock wakes the
/// call's task when fewer encoded frames than this wait (60 ms at 20 ms ptime)...
const ENCODE_AHEAD_LOW: usize = 3;
/// ...and the task encodes up to this many, so one wake-up covers at least 40 ms.
const ENCODE_AHEAD_HIGH: usize = ENCODE_AHEAD_LOW + 2;

/// Per-call settings (from `realtime.*`, `media.*` and the agent).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// No RTP from a leg's source for this long ends the call (`media.rtp_timeout_secs`).
    pub rtp_timeout: Duration,
    /// WebSocket pings (`realtime.ping_interval_secs`).
    pub ping_interval: Duration,
    /// No frame at all from the Realtime server for this long ends the call (`realtime.watchdog_secs`).
    pub watchdog: Duration,
    /// Agent audio queued in the pacer, at most (`realtime.max_queued_audio_secs`); beyond it the
    /// model's audio is dropped, never played.
    pub max_queued_audio: Duration,
    /// The agent's greeting (`None`: the caller speaks first).
    pub greeting: Option<String>,
    /// Said after a failed response (`None`: no apology configured).
    pub apology: Option<String>,
    pub apology_min_interval: Duration,
    /// The audio format the model speaks (what one byte of a delta lasts).
    pub model_output: AudioFormat,
    /// Recorder taps: decoded PCM per direction (off unless a recorder asks for it).
    pub taps: bool,
    /// Barge-in mode, DTMF to the model, end_call, idle and call length (`agents.X.*`).
    pub talk: TalkConfig,
    /// Mid-call reconnect, its prompts and the replay budget ([`reconnecting`]).
    pub resilience: Resilience,
}

/// One leg's negotiated stream.
#[derive(Debug, Clone)]
pub struct LegConfig {
    pub codec: Codec,
    /// The negotiated payload type: we send it and expect it.
    pub payload_type: u8,
    /// RFC 4733 telephone-event payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// The RTP address from the peer's SDP; where we really send is the latch's decision.
    pub remote: SocketAddr,
    /// Whether our negotiated direction lets us send (sendrecv / sendonly).
    pub may_send: bool,
    pub ptime: Duration,
    pub strict_rtp: LatchConfig,
    /// The jitter buffer's shortest wait for a missing packet (`media.reorder_wait_ms`).
    pub reorder_wait: Duration,
    pub opus: OpusEncoderSettings,
    /// The model audio formats confirmed by `session.updated`.
    pub model_input: ModelAudio,
    pub model_output: ModelAudio,
    /// Our SSRC, first sequence number and timestamp (random, RFC 3550 §5.1).
    pub stream: StreamStart,
    /// The jitter buffer's longest wait (`media.jitter_max_ms`).
    pub jitter_max: Duration,
    /// Our RTCP reports' mean interval (`media.rtcp_interval_secs`); zero: none sent.
    pub rtcp_interval: Duration,
    /// SRTP keys when the leg's stream is RTP/SAVP (`crate::srtp`); `None`: plain RTP.
    pub srtp: Option<switchboard_sdp::SrtpKeys>,
}

/// What happens on the dialog side, or to the call as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogInput {
    /// The ACK arrived: the SDP's address may now be sent to (RFC 3261 §13.3.1.4).
    Confirmed,
    /// BYE from the other side (or the dialog is gone).
    RemoteBye,
    /// No ACK for our 200 OK (the SIP layer already sent BYE).
    AckTimeout,
    /// The operator hung up (admin API).
    OperatorHangup,
    /// The gateway is shutting down.
    Shutdown,
    /// A key from a SIP INFO in the dialog (already answered 200).
    Dtmf { digit: DtmfDigit, duration: Duration },
    /// The session timer ended the session (RFC 4028; the SIP layer sent BYE).
    SessionExpired,
}

/// One RTP packet to send now on a leg.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub leg: LegId,
    pub destination: SocketAddr,
    pub packet: Vec<u8>,
}

/// Which way a tap's audio went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TapDirection {
    /// Received from the leg (the caller's voice).
    FromLeg,
    /// Sent to the leg (the agent's voice, silence included).
    ToLeg,
}

/// Decoded audio for a recorder: 16-bit PCM at the leg codec's decoding rate
/// ([`tap_rate`]), stamped with the call clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tap {
    pub leg: LegId,
    pub direction: TapDirection,
    /// Since the call core started.
    pub at: Duration,
    /// Samples per second of `pcm`.
    pub rate: u32,
    pub pcm: Vec<i16>,
}

/// A completed function call the gateway must run (every tool but the built-in `end_call`):
/// the shell runs it off the call's task and answers with [`CallCore::complete_tool`], exactly
/// once per `call_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub call_id: String,
    pub name: String,
    /// JSON text, as the model wrote it.
    pub arguments: String,
}

/// What the shell must do, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Send to the Realtime API (through the writer queue).
    Realtime(Box<ClientEvent>),
    /// Send a WebSocket Ping.
    Ping,
    /// End the dialog with BYE (the end is ours).
    Hangup,
    /// A DTMF digit from a leg (RFC 4733), reported once per event.
    Dtmf { leg: LegId, digit: DtmfDigit, duration: Duration },
    /// Recorder audio (only with [`CoreConfig::taps`]).
    Tap(Tap),
    /// The call is over; nothing follows.
    Ended(CallEnd),
    /// The AI connection is lost and the call goes on: drop the old connection, open a new
    /// session (backoff), send it [`CallCore::replay_events`], then
    /// [`CallCore::handle_realtime_resumed`].
    Reconnect,
    /// The session nears its end: open a new one in the background, then switch to it when
    /// [`CallCore::at_turn_boundary`] (send it [`CallCore::replay_events`], then
    /// [`CallCore::handle_realtime_switched`]).
    Rollover,
    /// Run a tool; its result comes back through [`CallCore::complete_tool`].
    Tool(ToolCall),
    /// A leg other than the caller's sent no RTP for `rtp_timeout` (the human's phone is gone):
    /// the call goes on; the transfer logic decides (usually [`CallCore::remove_leg`]).
    /// Reported once per silence (again only after the leg's RTP resumed and stopped again).
    LegLost(LegId),
    /// A transfer's announcement has played, or a transfer rule fired ([`transfer`]).
    Transfer(transfer::TransferSignal),
}

/// Counters the shell logs at the end of the call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoreStats {
    pub latch: LatchStats,
    /// Agent frames dropped because the playout queue was full.
    pub agent_frames_dropped: u64,
    pub barge_ins: u64,
    pub taps_dropped: u64,
    pub dtmf_events: u64,
    /// The caller's inbound RTP (see [`RtpStats`]).
    pub rtp: RtpStats,
    /// Caller turns measured and the p50/p95 of their total latency ([`meter`]).
    pub turns: u64,
    pub turn_latency_p50: Option<Duration>,
    pub turn_latency_p95: Option<Duration>,
    /// Tokens of every `response.done` `usage`.
    pub tokens: TokenTotals,
    /// The human's inbound RTP after a bridged transfer (the last human leg's, kept when it is
    /// removed); `None`: the call never had one.
    pub human_rtp: Option<RtpStats>,
    /// Bridged audio dropped by the relay queue's policy (`bridge.rs`: full queue or trimmed delay).
    pub relay_frames_dropped: u64,
}

/// Per-call inbound RTP figures of the caller's leg (docs/media.md).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStats {
    /// Packets of the call's audio payload type accepted (each sequence number once).
    pub packets: u64,
    /// Sequence numbers never received (RFC 3550 A.3, over every SSRC the call had).
    pub lost: u64,
    /// Packets that arrived after their slot was concealed (dropped).
    pub late: u64,
    /// Second copies (dropped).
    pub duplicates: u64,
    pub reordered: u64,
    /// Re-syncs on a new SSRC or a restarted sequence.
    pub stream_changes: u64,
    /// Packets of audio made up for lost ones (PLC, FEC, fade-and-repeat).
    pub concealed: u64,
    /// RFC 3550 A.8 interarrival jitter at the end of the call, and the highest during it.
    pub jitter: Duration,
    pub jitter_max: Duration,
    /// Delay the jitter buffer added to released packets, p50 and p95.
    pub buffer_delay_p50: Duration,
    pub buffer_delay_p95: Duration,
    /// RTCP both ways: round-trip time, the peer's view of our stream.
    pub rtcp: RtcpStats,
}

struct Leg {
    id: LegId,
    codec: Codec,
    payload_type: u8,
    telephone_event: Option<u8>,
    may_send: bool,
    ptime: Duration,
    latch: RtpSourceLatch,
    jitter: JitterBuffer,
    /// `switchboard_jitter_buffer_delay_seconds`, looked up once: it is recorded per packet.
    delay_metric: metrics::Histogram,
    /// Packets of audio concealed (see [`RtpStats::concealed`]).
    concealed: u64,
    reports: Reports,
    inbound: InboundAudio,
    pacer: Pacer<ItemTag>,
    outbound: OutboundAudio,
    /// Opus and G.722 only: framed PCM waiting to be encoded, in order (see [`ENCODE_AHEAD_LOW`]).
    /// G.711 costs nothing to encode and goes straight to the pacer.
    unencoded: VecDeque<(ItemTag, Vec<u8>)>,
    last_rtp_in: Instant,
    dtmf: DtmfReceiver,
    /// Decoders for the recorder, one per direction (only with taps).
    tap_decoders: Option<(TapDecoder, TapDecoder)>,
    signalled: SocketAddr,
    /// Opus encoder settings of the leg (the bridge's relay encodes with them).
    opus: OpusEncoderSettings,
    /// A non-caller leg's RTP timeout was reported ([`Output::LegLost`]): its timer is off
    /// until its RTP resumes.
    lost: bool,
    /// SRTP contexts: received packets are unprotected before the latch, sent ones protected last.
    srtp: Option<crate::srtp::LegSrtp>,
}

impl Leg {
    fn new(id: LegId, now: Instant, config: LegConfig, taps: bool) -> Leg {
        let ptime_ms = u32::try_from(config.ptime.as_millis()).unwrap_or(20).max(1);
        let pacer = Pacer::new(
            PacerConfig {
                payload_type: config.payload_type,
                ssrc: config.stream.ssrc,
                clock_rate: config.codec.clock_rate(),
                ptime: config.ptime,
                silence: config.codec.silence_frame(ptime_ms),
            },
            now,
            config.stream.sequence,
            config.stream.timestamp,
        );
        // Encoded in the call's task, never on the media clock's path, which is only an RTP
        // header and a send (docs/decisions/0003-media-clock.md): G.711 when the model's audio
        // arrives, Opus and G.722 just ahead of their slot (`Leg::top_up`).
        let mut outbound =
            OutboundAudio::with_opus_settings(config.codec, config.model_output, config.ptime, config.opus);
        outbound.defer_encoding(true);
        let tap_decoders = taps.then(|| (TapDecoder::new(config.codec), TapDecoder::new(config.codec)));
        Leg {
            id,
            codec: config.codec,
            payload_type: config.payload_type,
            telephone_event: config.telephone_event,
            may_send: config.may_send,
            ptime: config.ptime,
            latch: RtpSourceLatch::new(config.strict_rtp, config.remote, now),
            delay_metric: metrics::histogram!(telemetry::JITTER_BUFFER_DELAY_SECONDS),
            jitter: JitterBuffer::new(JitterConfig {
                clock_rate: config.codec.clock_rate(),
                min_wait: config.reorder_wait,
                max_wait: config.jitter_max,
            }),
            concealed: 0,
            reports: Reports::new(now, config.rtcp_interval, config.stream.ssrc),
            inbound: InboundAudio::new(config.codec, config.model_input),
            pacer,
            outbound,
            unencoded: VecDeque::new(),
            last_rtp_in: now,
            dtmf: DtmfReceiver::new(config.codec.clock_rate()),
            tap_decoders,
            signalled: config.remote,
            opus: config.opus,
            lost: false,
            srtp: config.srtp.as_ref().map(crate::srtp::LegSrtp::new),
        }
    }

    fn ptime_ms(&self) -> f64 {
        self.ptime.as_secs_f64() * 1000.0
    }

    /// Whether frames wait for [`top_up`](Self::top_up) (Opus, G.722) rather than going to the
    /// pacer encoded.
    fn encodes_ahead(&self) -> bool {
        matches!(self.codec, Codec::Opus | Codec::G722)
    }

    /// Agent audio held for this leg, encoded or not.
    fn held_audio(&self) -> Duration {
        let waiting = u32::try_from(self.unencoded.len()).unwrap_or(u32::MAX);
        self.pacer.queued_duration() + self.ptime.saturating_mul(waiting)
    }

    fn queue_frame(&mut self, tag: ItemTag, frame: Vec<u8>) {
        if self.encodes_ahead() {
            self.unencoded.push_back((tag, frame));
        } else {
            self.pacer.enqueue(tag, frame);
        }
    }

    /// Encodes waiting frames until [`ENCODE_AHEAD_HIGH`] encoded frames are queued.
    fn top_up(&mut self) {
        while self.pacer.queued_frames() < ENCODE_AHEAD_HIGH {
            let Some((tag, raw)) = self.unencoded.pop_front() else { break };
            let frame = self.outbound.encode_deferred(raw);
            self.pacer.enqueue(tag, frame);
        }
    }

    fn needs_encoding(&self) -> bool {
        !self.unencoded.is_empty() && self.pacer.queued_frames() < ENCODE_AHEAD_LOW
    }

    /// The agent's audio is gone: drops every queued frame, encoded or not, and the framer's
    /// partial frame, and lifts a confirm-mode pause (nothing is left to resume). Returns how
    /// many frames were dropped.
    fn flush(&mut self) -> usize {
        self.outbound.reset();
        self.pacer.set_paused(false);
        self.pacer.flush() + std::mem::take(&mut self.unencoded).len()
    }
}

/// The agent's side of the playout: every piece of barge-in bookkeeping in one place.
#[derive(Default)]
struct AgentPlayout {
    conversation: Conversation,
    /// The item whose audio is being framed, so its last partial frame can be padded and queued
    /// when the next item starts (or its audio is done).
    framing: Option<ItemTag>,
    /// The item whose audio is being dropped because the queue is full (logged once).
    overflowing: Option<ItemTag>,
    frames: Vec<Vec<u8>>,
}

impl AgentPlayout {
    /// Pads and queues the last partial frame of the item being framed.
    fn finish_item(&mut self, leg: &mut Leg) {
        if let Some(tag) = self.framing.take()
            && let Some(frame) = leg.outbound.flush_partial()
        {
            leg.queue_frame(tag, frame);
            leg.top_up();
        }
    }

    /// Queues a delta's audio on `leg`; returns the frames dropped because the queue was full.
    fn queue_audio(&mut self, leg: &mut Leg, tag: ItemTag, audio: &[u8], max_queued: Duration) -> u64 {
        if self.framing.is_some_and(|t| t != tag) {
            self.finish_item(leg);
        }
        self.framing = Some(tag);
        self.frames.clear();
        leg.outbound.push(audio, &mut self.frames);
        // Bounded playout queue: the model streams faster than real time, but never minutes
        // ahead unless it misbehaves. Policy when full: drop the new audio (what is queued plays
        // on; a barge-in truncates the item to what was really played).
        let mut dropped = 0u64;
        for frame in self.frames.drain(..) {
            if leg.held_audio() >= max_queued {
                dropped += 1;
            } else {
                leg.queue_frame(tag, frame);
            }
        }
        leg.top_up();
        if dropped > 0 && self.overflowing != Some(tag) {
            self.overflowing = Some(tag);
            warn!(
                queued_ms = leg.held_audio().as_millis() as u64,
                "agent audio queue full; dropping the rest of this item's audio"
            );
        }
        dropped
    }

    /// The caller started speaking: stop the agent at once (the queue is flushed, nothing of it
    /// is sent after this) and say how much of the item being played was really heard.
    fn barge_in(&mut self, leg: &mut Leg) -> (usize, Vec<ClientEvent>) {
        let dropped = leg.flush();
        self.framing = None;
        let truncates = self.conversation.on_speech_started();
        (dropped, truncates.iter().map(|t| t.to_event()).collect())
    }
}

/// The state machine of one answered call.
pub struct CallCore {
    config: CoreConfig,
    started: Instant,
    legs: Vec<Leg>,
    agent: AgentPlayout,
    keepalive: Keepalive,
    apology_limiter: ApologyLimiter,
    outputs: VecDeque<Output>,
    pending_taps: usize,
    transmits: VecDeque<Transmit>,
    ended: Option<CallEnd>,
    /// The call ends this way once the agent's queued audio has been sent in full
    /// ([`end_after_playout`](CallCore::end_after_playout)).
    ending_after_playout: Option<CallEnd>,
    stats: CoreStats,
    /// RTCP compound packets for the shell to send on the leg's RTCP socket, at most
    /// [`MAX_PENDING_RTCP`] (policy when full: the oldest is dropped; a newer report supersedes it).
    rtcp_transmits: VecDeque<Transmit>,
    /// Turn latency and token usage.
    meter: Meter,
    /// Scratch buffer for model audio converted from RTP.
    model_bytes: Vec<u8>,
    barge_in: BargeIn,
    dtmf_to_model: DtmfToModel,
    control: AgentControl,
    /// The last time anyone was heard: an agent packet played, the caller's speech or keys (the
    /// idle timer runs from it).
    last_activity: Instant,
    /// The conversation so far as text, replayed to a new session after a reconnect.
    history: History,
    /// Set while the AI connection is being replaced ([`reconnecting`]).
    outage: Option<reconnecting::Outage>,
    /// When the session is to be rolled over, and whether the caller is speaking.
    rollover: reconnecting::Rollover,
    /// Tool calls waiting for their output, and the filler ([`tools`]).
    tools: tools::Tools,
    /// Two legs relaying each other's audio (a bridged transfer, [`bridge`]); `None`: the caller
    /// talks with the agent.
    bridge: Option<bridge::Bridge>,
    /// Transfer rules and the announcement being played ([`transfer`]).
    transfer: transfer::TransferHooks,
    /// Setup time to the agent's first audio ([`first_audio`]).
    first_audio: first_audio::FirstAudio,
    /// The caller has the call on hold ([`hold`]).
    held: bool,
}

impl CallCore {
    /// A call whose Realtime session is confirmed and whose caller leg is negotiated; the
    /// greeting (if any) is the first output: the agent speaks first.
    pub fn new(now: Instant, config: CoreConfig, caller: LegConfig) -> CallCore {
        let legs = vec![Leg::new(CALLER, now, caller, config.taps)];
        let mut core = CallCore {
            keepalive: Keepalive::new(now, config.ping_interval, config.watchdog),
            apology_limiter: ApologyLimiter::new(config.apology_min_interval),
            started: now,
            legs,
            agent: AgentPlayout::default(),
            outputs: VecDeque::new(),
            pending_taps: 0,
            transmits: VecDeque::new(),
            ended: None,
            ending_after_playout: None,
            stats: CoreStats::default(),
            meter: Meter::default(),
            rtcp_transmits: VecDeque::new(),
            model_bytes: Vec::with_capacity(2048),
            barge_in: BargeIn::new(config.talk.barge_in),
            dtmf_to_model: DtmfToModel::new(config.talk.dtmf_coalesce),
            control: AgentControl::new(now, config.talk.control.clone()),
            last_activity: now,
            history: if config.resilience.caller_transcripts {
                History::new(config.resilience.history)
            } else {
                History::new(config.resilience.history).without_caller_transcripts()
            },
            outage: None,
            rollover: reconnecting::Rollover::default(),
            tools: tools::Tools::default(),
            bridge: None,
            transfer: transfer::TransferHooks::default(),
            first_audio: first_audio::FirstAudio::default(),
            held: false,
            config,
        };
        if let Some(greeting) = core.config.greeting.as_deref().filter(|g| !g.is_empty()) {
            let event = session::greeting(greeting);
            core.send_realtime(event);
            core.control.on_greeting_sent();
        }
        core
    }

    /// How the call ended, once it has.
    pub fn ended(&self) -> Option<&CallEnd> {
        self.ended.as_ref()
    }

    pub fn stats(&self) -> CoreStats {
        let mut stats = self.stats;
        if let Some(leg) = self.caller_leg() {
            stats.latch = leg.latch.stats();
            stats.rtp = rtp_stats(leg);
        }
        if let Some(leg) = self.legs.iter().find(|leg| leg.id == HUMAN) {
            stats.human_rtp = Some(rtp_stats(leg));
        }
        stats.turns = self.meter.turns();
        stats.turn_latency_p50 = self.meter.total_latency_quantile(0.5);
        stats.turn_latency_p95 = self.meter.total_latency_quantile(0.95);
        stats.tokens = self.meter.tokens();
        stats
    }

    /// Ends the call once everything the agent has queued for the caller has been sent (a
    /// goodbye is heard in full, then BYE). Audio that arrives before the queue runs dry is
    /// played too.
    pub fn end_after_playout(&mut self, end: CallEnd) {
        if self.ended.is_some() || self.ending_after_playout.is_some() {
            return;
        }
        if let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) {
            self.agent.finish_item(leg);
        }
        self.ending_after_playout = Some(end);
        self.end_if_played_out();
    }

    // ---- inputs ----

    /// One datagram received on a leg's socket.
    pub fn handle_rtp(&mut self, now: Instant, leg: LegId, source: SocketAddr, datagram: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        if rtp::is_rtcp(datagram) {
            self.handle_rtcp(now, leg, source, datagram);
            return;
        }
        // SRTP: authenticated and decrypted before anything reads it (the latch above all).
        let mut decrypted = [0u8; crate::srtp::MAX_DATAGRAM];
        let datagram = match self.leg_index(leg).and_then(|index| self.legs.get_mut(index)?.srtp.as_mut()) {
            Some(srtp) => match srtp.unprotect_rtp(datagram, &mut decrypted) {
                Some(plain) => plain,
                None => return,
            },
            None => datagram,
        };
        let Ok((header, payload)) = rtp::parse_rtp(datagram) else {
            debug!(len = datagram.len(), "not an RTP packet; ignored");
            return;
        };
        let Some(index) = self.leg_index(leg) else { return };
        let Some(leg) = self.legs.get_mut(index) else { return };
        // Symmetric RTP (RFC 4961) made strict: we answer where the peer's media really comes
        // from (behind a NAT, not what its SDP said), but only a learned source counts; anything
        // else is dropped before it reaches the agent or the timeout.
        match leg.latch.on_packet(now, source, header.ssrc, header.sequence) {
            SourceVerdict::Accept => {}
            SourceVerdict::Learned(learned) => {
                let previous = learned.previous.map(|p| p.to_string()).unwrap_or_default();
                info!(
                    leg = leg.id.0,
                    source = %Pii(&learned.source.to_string()),
                    previous = %Pii(&previous),
                    by = ?learned.by,
                    signalled = learned.source == leg.signalled,
                    // The message operators (and the e2e tests) look for; legs are numbered.
                    "caller's RTP source learned"
                );
                debug!(source = %learned.source, previous, "RTP source (unredacted)");
            }
            SourceVerdict::Ignore(reason) => {
                metrics::counter!(telemetry::RTP_IGNORED_PACKETS_TOTAL, "reason" => reason.label()).increment(1);
                return;
            }
        }
        metrics::counter!(telemetry::RTP_PACKETS_TOTAL, "direction" => "in").increment(1);
        leg.last_rtp_in = now;
        leg.lost = false;
        if header.payload_type == leg.payload_type {
            match leg.jitter.push(now, header, payload) {
                PushOutcome::Accepted => self.drain_inbound(now, index),
                PushOutcome::Duplicate => metrics::counter!(telemetry::RTP_DUPLICATE_PACKETS_TOTAL).increment(1),
                PushOutcome::Late => metrics::counter!(telemetry::RTP_LATE_PACKETS_TOTAL).increment(1),
            }
        } else if Some(header.payload_type) == leg.telephone_event
            && let Some((digit, duration)) = leg.dtmf.on_packet(now, header.timestamp, payload)
        {
            // Never audio: telephone-event payloads go to the DTMF receiver only.
            let id = leg.id;
            self.on_dtmf(now, id, digit, duration);
        }
    }

    /// One RTCP compound packet on a leg (its RTCP socket, or the RTP one multiplexed, RFC 5761).
    /// Only the peer's address may report: RTCP from anywhere else is dropped unread.
    pub fn handle_rtcp(&mut self, now: Instant, leg: LegId, source: SocketAddr, datagram: &[u8]) {
        if self.ended.is_some() {
            return;
        }
        let Some(leg) = self.leg_index(leg).and_then(|index| self.legs.get_mut(index)) else { return };
        let peer_ip = leg.latch.send_target().map_or(leg.signalled.ip(), |target| target.ip());
        if source.ip() != peer_ip {
            metrics::counter!(telemetry::RTCP_PACKETS_TOTAL, "direction" => "in", "result" => "ignored").increment(1);
            return;
        }
        let mut decrypted = [0u8; crate::srtp::MAX_DATAGRAM];
        let datagram = match leg.srtp.as_mut() {
            Some(srtp) => match srtp.unprotect_rtcp(datagram, &mut decrypted) {
                Some(plain) => plain,
                None => return,
            },
            None => datagram,
        };
        let before = leg.reports.stats().malformed;
        let rtt = leg.reports.on_packet(now, source, datagram);
        let result = if leg.reports.stats().malformed > before { "malformed" } else { "ok" };
        metrics::counter!(telemetry::RTCP_PACKETS_TOTAL, "direction" => "in", "result" => result).increment(1);
        if let Some(rtt) = rtt {
            metrics::histogram!(telemetry::RTCP_ROUND_TRIP_SECONDS).record(rtt.as_secs_f64());
        }
    }

    /// The next RTCP packet to send on a leg's RTCP socket (not on the media clock: reports are
    /// not time-critical to the millisecond).
    pub fn poll_rtcp_transmit(&mut self) -> Option<Transmit> {
        self.rtcp_transmits.pop_front()
    }

    /// One event from the Realtime API.
    pub fn handle_realtime(&mut self, now: Instant, event: ServerEvent) {
        if self.ended.is_some() {
            return;
        }
        if self.outage.is_some() {
            return; // the old connection's last events: its session is gone
        }
        self.keepalive.on_traffic(now);
        self.history.on_server_event(&event);
        self.rollover.on_server_event(&event);
        match event {
            ServerEvent::OutputAudioDelta(delta) => {
                self.stop_filler();
                let ms = self.config.model_output.bytes_to_ms(delta.delta.len());
                let Some(tag) = self.agent.conversation.on_audio_delta(&delta.response_id, &delta.item_id, ms) else {
                    return; // late audio of an interrupted response
                };
                if self.bridge.is_some() {
                    // Nobody hears the agent while the caller talks with a human: dropped, and
                    // truncated to what was heard (nothing) at the unbridge.
                    return;
                }
                self.meter.on_audio_delta(now);
                self.history.on_agent_audio(&delta.item_id, ms);
                let max_queued = self.config.max_queued_audio;
                let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
                let dropped = self.agent.queue_audio(leg, tag, &delta.delta, max_queued);
                if dropped > 0 {
                    self.stats.agent_frames_dropped += dropped;
                    metrics::counter!(telemetry::AGENT_AUDIO_DROPPED_FRAMES_TOTAL).increment(dropped);
                }
            }
            ServerEvent::OutputAudioDone(_) => {
                if let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) {
                    self.agent.finish_item(leg);
                }
            }
            ServerEvent::SpeechStarted(started) => {
                self.stop_filler();
                self.meter.on_speech_started();
                self.control.on_caller_activity();
                self.last_activity = now;
                if self.bridge.is_some() {
                    return; // the caller's leg plays the human: nothing to barge in on
                }
                let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
                let agent_talking = !leg.held_audio().is_zero() || self.agent.conversation.has_active_response();
                match self.barge_in.on_speech_started(now, started.audio_start_ms, agent_talking) {
                    // The API cancelled the response itself (interrupt_response, immediate mode).
                    BargeInAction::Interrupt => self.interrupt_agent(false),
                    BargeInAction::Pause => {
                        leg.pacer.set_paused(true);
                        debug!("caller speech: agent paused until it is confirmed as a barge-in");
                    }
                    BargeInAction::Resume | BargeInAction::None => {}
                }
            }
            ServerEvent::SpeechStopped(stopped) => {
                self.meter.on_speech_stopped(stopped.audio_end_ms);
                self.last_activity = now;
                if self.bridge.is_some() {
                    return;
                }
                let (action, real_turn) = self.barge_in.on_speech_stopped(stopped.audio_end_ms);
                self.apply_barge_in(action);
                // Confirm mode runs VAD with create_response off: the gateway asks for the answer.
                if real_turn && self.barge_in.mode() == BargeInMode::Confirm {
                    let active = self.agent.conversation.has_active_response();
                    let commands = self.control.request(Purpose::Turn, active);
                    self.run_control(commands);
                }
            }
            ServerEvent::OutputItemDone(item_done) => {
                let commands = self.control.on_output_item_done(&item_done.response_id, &item_done.item);
                if !commands.is_empty() {
                    info!(response_id = %item_done.response_id, "the agent called end_call: hanging up after its goodbye");
                    self.run_control(commands);
                } else {
                    self.on_function_call_done(now, &item_done.response_id, &item_done.item);
                }
            }
            ServerEvent::ResponseCreated(created) => {
                self.control.on_response_created(&created.response.id);
                self.agent.conversation.on_response_created(&created.response.id)
            }
            ServerEvent::ResponseDone(done) => {
                self.agent.conversation.on_response_done(&done.response.id);
                if let Some(usage) = &done.response.usage {
                    count_tokens(&self.meter.on_usage(usage));
                }
                // The idle clock runs from the later of this and the agent's last packet played.
                self.last_activity = now;
                let active = self.agent.conversation.has_active_response();
                let commands = self.control.on_response_done(&done.response.id, active);
                self.run_control(commands);
                self.on_tool_response_done(&done.response.id);
                if done.response.status == ResponseStatus::Failed {
                    let reason = session::failed_response_reason(done.response.status_details.as_ref());
                    metrics::counter!(telemetry::REALTIME_FAILED_RESPONSES_TOTAL, "reason" => reason).increment(1);
                    let apologise = self.config.apology.is_some() && self.apology_limiter.try_take(now);
                    warn!(reason, response_id = %done.response.id, apologise, "Realtime response failed");
                    // No response is active after response.done: the apology may start now.
                    if apologise && let Some(text) = &self.config.apology {
                        let apology = session::apology(text);
                        self.send_realtime(apology);
                    }
                }
            }
            ServerEvent::Error(ErrorEvent { error, .. }) => {
                let code = ErrorCode::parse(error.code.as_deref());
                metrics::counter!(telemetry::REALTIME_ERRORS_TOTAL, "code" => code.as_str()).increment(1);
                let ours = error.event_id.as_deref().is_some_and(agent_control::is_our_response_create);
                if code == ErrorCode::ConversationAlreadyHasActiveResponse || ours {
                    self.control.on_create_refused();
                }
                if code.is_fatal() {
                    self.handle_realtime_closed(
                        now,
                        CallEnd::AgentFatalError(format!("{}: {}", code.as_str(), error.message)),
                    );
                    return;
                }
                warn!(code = code.as_str(), message = %Escaped(&error.message), "Realtime error (call continues)");
            }
            ServerEvent::Unknown { event_type } if tools::is_mcp_event(&event_type) => {
                metrics::counter!(telemetry::MCP_EVENTS_TOTAL, "type" => event_type.clone()).increment(1);
                debug!(%event_type, "MCP event");
            }
            ServerEvent::Unknown { event_type } => {
                metrics::counter!(telemetry::REALTIME_EVENTS_UNKNOWN_TOTAL).increment(1);
                debug!(%event_type, "unknown Realtime event ignored");
            }
            _ => {}
        }
    }

    /// A frame of any kind (a pong included) arrived from the Realtime server at `at`.
    pub fn handle_realtime_traffic(&mut self, at: Instant) {
        self.keepalive.on_traffic(at);
    }

    /// The Realtime connection is gone (closed, failed, a message too large, the writer wedged).
    pub fn handle_realtime_closed(&mut self, now: Instant, end: CallEnd) {
        if self.ended.is_some() || self.start_outage(now, &end) {
            return;
        }
        self.end(end);
    }

    /// Something happened to the dialog or the call as a whole.
    pub fn handle_dialog(&mut self, now: Instant, input: DialogInput) {
        match input {
            DialogInput::Confirmed => {
                for leg in &mut self.legs {
                    leg.latch.on_dialog_confirmed();
                }
                debug!("ACK received");
            }
            DialogInput::RemoteBye => self.end(CallEnd::CallerHangup),
            DialogInput::AckTimeout => self.end(CallEnd::AckTimeout),
            DialogInput::OperatorHangup => self.end(CallEnd::Operator),
            DialogInput::Shutdown => self.end(CallEnd::GatewayShutdown),
            DialogInput::Dtmf { digit, duration } => self.on_dtmf(now, CALLER, digit, duration),
            DialogInput::SessionExpired => self.end(CallEnd::SessionExpired),
        }
    }

    /// Runs everything due at `now`: the media ([`handle_media_timeout`](Self::handle_media_timeout))
    /// and the call's other timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.encode_ahead();
        self.handle_media_timeout(now);
        self.handle_task_timeout(now);
    }

    /// Opus and G.722: encodes the frames due soon (the call's task does this when
    /// [`needs_encoding`](Self::needs_encoding) says so; never the media clock).
    pub fn encode_ahead(&mut self) {
        for leg in &mut self.legs {
            leg.top_up();
        }
    }

    /// Whether a leg is running short of encoded frames while unencoded ones wait.
    pub fn needs_encoding(&self) -> bool {
        self.ended.is_none() && self.legs.iter().any(Leg::needs_encoding)
    }

    /// The pacers only: what the media clock runs on time for every call.
    pub fn handle_media_timeout(&mut self, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        // Judged before this slot is paced: the last audio packet went out on an earlier tick
        // of the media clock, so the BYE the call's task sends cannot overtake it.
        self.end_if_played_out();
        if self.ended.is_some() {
            return;
        }
        self.transfer_if_played_out();
        for index in 0..self.legs.len() {
            self.pace(now, index);
        }
    }

    /// Everything but the pacers: reorder deadlines, RTP timeout, keepalive and watchdog.
    pub fn handle_task_timeout(&mut self, now: Instant) {
        if self.ended.is_some() {
            return;
        }
        for index in 0..self.legs.len() {
            if self.legs.get(index).and_then(|leg| leg.jitter.next_deadline()).is_some_and(|due| due <= now) {
                self.drain_inbound(now, index);
            }
        }
        self.send_reports(now);
        // On hold the caller may send nothing at all (inactive): no RTP timeout then (hold.rs).
        if !self.held && self.caller_leg().is_some_and(|leg| now >= leg.last_rtp_in + self.config.rtp_timeout) {
            self.end(CallEnd::RtpTimeout);
            return;
        }
        // Any other leg's silence is the transfer logic's business, not the end of the call.
        self.report_lost_legs(now);
        self.outage_timeout(now);
        self.rollover_timeout(now);
        self.handle_talk_timeout(now);
        self.handle_tools_timeout(now);
        if self.ended.is_some() || self.outage.is_some() {
            return; // over, or no connection to ping or watch
        }
        // Pings, and the watchdog: no frame at all from the Realtime server (not even a pong)
        // for the watchdog period means it is gone or wedged.
        match self.keepalive.poll(now) {
            KeepaliveAction::Wait => {}
            KeepaliveAction::SendPing => self.outputs.push_back(Output::Ping),
            KeepaliveAction::Dead { silent_for } => {
                warn!(silent_ms = silent_for.as_millis() as u64, "no traffic from the Realtime server; hanging up");
                self.end(CallEnd::AgentWatchdog(silent_for));
            }
        }
    }

    // ---- outputs ----

    /// The next RTP packet to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front()?;
        if matches!(output, Output::Tap(_)) {
            self.pending_taps = self.pending_taps.saturating_sub(1);
        }
        Some(output)
    }

    /// Whether outputs are waiting (the media clock wakes the call's task for them).
    pub fn has_output(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// Whether the media clock should wake the call's task now: outputs other than recorder taps
    /// wait, or [`TAP_WAKE_BATCH`] taps do.
    pub fn has_urgent_output(&self) -> bool {
        self.outputs.len() > self.pending_taps || self.pending_taps >= TAP_WAKE_BATCH
    }

    /// When [`handle_timeout`](Self::handle_timeout) is next due; `None` once the call ended.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.poll_media_timeout(), self.poll_task_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next pacer slot of any leg.
    pub fn poll_media_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        self.legs.iter().map(|leg| leg.pacer.next_deadline()).min()
    }

    /// The next deadline of the call's other timers.
    pub fn poll_task_timeout(&self) -> Option<Instant> {
        if self.ended.is_some() {
            return None;
        }
        let legs = self.legs.iter().flat_map(|leg| {
            let held_caller = self.held && leg.id == CALLER;
            let rtp_timeout = (!leg.lost && !held_caller).then(|| leg.last_rtp_in + self.config.rtp_timeout);
            [rtp_timeout, leg.jitter.next_deadline(), leg.reports.next_due()].into_iter().flatten()
        });
        let link = if self.outage.is_some() { self.outage_deadline() } else { Some(self.keepalive.next_deadline()) };
        legs.chain(link)
            .chain(self.rollover_deadline())
            .chain(self.poll_talk_timeout())
            .chain(self.poll_tools_timeout())
            .min()
    }

    // ---- internals ----

    /// Every event for the Realtime API but the caller's audio appends (and the reconnect's
    /// resume note) leaves through here: one place that sees what the model was told.
    fn send_realtime(&mut self, event: ClientEvent) {
        self.history.on_client_event(&event);
        if self.outage.is_some() {
            return; // no session to tell; text items are in the history and will be replayed
        }
        self.outputs.push_back(Output::Realtime(Box::new(event)));
    }

    fn end_if_played_out(&mut self) {
        // Bridged audio is live, not a goodbye to hear out: with a human talking the queue
        // would never run dry.
        let played_out = self.bridge.is_some() || self.caller_leg().is_none_or(|leg| leg.held_audio().is_zero());
        if played_out && let Some(end) = self.ending_after_playout.take() {
            self.end(end);
        }
    }

    fn leg_index(&self, leg: LegId) -> Option<usize> {
        self.legs.iter().position(|l| l.id == leg)
    }

    /// The leg the agent talks with.
    fn caller_leg(&self) -> Option<&Leg> {
        self.legs.iter().find(|leg| leg.id == CALLER)
    }

    fn caller_leg_mut(&mut self) -> Option<&mut Leg> {
        self.legs.iter_mut().find(|leg| leg.id == CALLER)
    }

    fn end(&mut self, end: CallEnd) {
        if self.ended.is_some() {
            return;
        }
        if end.needs_bye() {
            self.outputs.push_back(Output::Hangup);
        }
        self.outputs.push_back(Output::Ended(end.clone()));
        self.ended = Some(end);
        self.transmits.clear();
        if let Some(leg) = self.caller_leg() {
            // Per call, not per packet: the call's jitter as the network left it.
            metrics::histogram!(telemetry::RTP_JITTER_SECONDS).record(leg.jitter.jitter().as_secs_f64());
        }
    }

    /// Our RTCP report of every leg that is due one (reports.rs).
    fn send_reports(&mut self, now: Instant) {
        for leg in &mut self.legs {
            if leg.reports.next_due().is_none_or(|due| due > now) {
                continue;
            }
            let reception = leg.jitter.reception_report();
            let rtp_timestamp = leg.pacer.timestamp_at(now);
            let mut packet = Vec::new();
            let target = if leg.may_send { leg.latch.send_target() } else { None };
            let Some(destination) = leg.reports.poll(now, target, reception, rtp_timestamp, &mut packet) else {
                continue;
            };
            if let Some(srtp) = leg.srtp.as_mut() {
                let Some(protected) = srtp.protect_rtcp(&packet) else { continue };
                packet = protected;
            }
            if self.rtcp_transmits.len() >= MAX_PENDING_RTCP {
                self.rtcp_transmits.pop_front();
            }
            metrics::counter!(telemetry::RTCP_PACKETS_TOTAL, "direction" => "out", "result" => "ok").increment(1);
            self.rtcp_transmits.push_back(Transmit { leg: leg.id, destination, packet });
        }
    }

    /// Moves every packet the leg's jitter buffer releases on: the caller's to the model, one
    /// append per packet, concealment for lost packets included (docs/media.md: the model's
    /// input clock must not shrink).
    fn drain_inbound(&mut self, now: Instant, index: usize) {
        let at = now.saturating_duration_since(self.started);
        // While reconnecting there is no session to hear the caller; on hold nothing for it.
        let reconnecting = self.outage.is_some() || self.held;
        let Some(leg) = self.legs.get_mut(index) else { return };
        while let Some(frame) = leg.jitter.pop(now) {
            leg.delay_metric.record(now.saturating_duration_since(frame.arrived).as_secs_f64());
            if frame.stream_start {
                // A new SSRC or a restarted stream: the old stream's decoder state (Opus, G.722
                // prediction) would smear into the new one's first packets.
                leg.inbound.reset();
            }
            if frame.lost_before > 0 {
                let concealed = u64::from(frame.lost_before.min(MAX_CONCEALED_PACKETS));
                leg.concealed += concealed;
                metrics::counter!(telemetry::RTP_LOST_TOTAL).increment(u64::from(frame.lost_before));
                metrics::counter!(telemetry::RTP_CONCEALED_FRAMES_TOTAL).increment(concealed);
            }
            if let Some((decoder, _)) = &mut leg.tap_decoders {
                let pcm = decoder.decode(frame.lost_before, &frame.payload);
                let tap = Tap { leg: leg.id, direction: TapDirection::FromLeg, at, rate: tap_rate(leg.codec), pcm };
                push_tap(&mut self.outputs, &mut self.pending_taps, &mut self.stats, tap);
            }
            // Bridged: the other leg hears it, the model does not.
            let relayed = bridge::relay_frame(&mut self.bridge, leg.id, &frame);
            // While reconnecting there is no session to hear the caller.
            if leg.id == CALLER && !reconnecting && !relayed {
                self.model_bytes.clear();
                leg.inbound.convert_with_loss(frame.lost_before, &frame.payload, &mut self.model_bytes);
                let appended = leg.inbound.model_audio_duration(self.model_bytes.len());
                self.meter.on_append(frame.arrived, now, appended);
                // Audio, not conversation: the one event that bypasses `send_realtime`.
                self.outputs.push_back(Output::Realtime(Box::new(ClientEvent::append(self.model_bytes.clone()))));
            }
        }
        if let Some(from) = self.legs.get(index).map(|leg| leg.id) {
            self.deliver_relayed(from);
        }
    }

    /// Emits every frame due on a leg; nothing goes out before the dialog is confirmed or the
    /// peer's first packet (the latch says where, if anywhere): the pacer keeps its clock and
    /// the frame is dropped.
    fn pace(&mut self, now: Instant, index: usize) {
        let at = now.saturating_duration_since(self.started);
        let Some(leg) = self.legs.get_mut(index) else { return };
        let ptime_ms = leg.ptime_ms();
        while let Some(frame) = leg.pacer.poll(now) {
            if let Some(tag) = frame.tag.filter(|tag| *tag != tools::FILLER_TAG)
                && tag != bridge::RELAY_TAG
            {
                self.agent.conversation.on_audio_played(tag, ptime_ms);
                if let Some(turn) = self.meter.on_agent_packet(now) {
                    record_turn_latency(&turn);
                }
                self.last_activity = now;
            }
            if let Some((_, decoder)) = &mut leg.tap_decoders {
                let pcm = decoder.decode(0, &frame.payload);
                let tap = Tap { leg: leg.id, direction: TapDirection::ToLeg, at, rate: tap_rate(leg.codec), pcm };
                push_tap(&mut self.outputs, &mut self.pending_taps, &mut self.stats, tap);
            }
            if leg.may_send
                && let Some(destination) = leg.latch.send_target()
            {
                let mut packet =
                    Vec::with_capacity(rtp::RTP_HEADER_LEN + frame.payload.len() + crate::srtp::MAX_RTP_OVERHEAD);
                rtp::write_rtp(&mut packet, &frame.header, &frame.payload);
                if let Some(srtp) = leg.srtp.as_mut()
                    && !srtp.protect_rtp(&mut packet)
                {
                    continue;
                }
                leg.reports.on_rtp_sent(frame.payload.len());
                if leg.id == CALLER && frame.tag.is_some_and(|tag| tag != tools::FILLER_TAG && tag != bridge::RELAY_TAG)
                {
                    self.first_audio.on_agent_packet_sent(now);
                }
                self.transmits.push_back(Transmit { leg: leg.id, destination, packet });
            }
        }
    }
}

/// The leg's inbound figures for [`CoreStats::rtp`].
/// A completed function call other than `end_call` (which [`AgentControl`] runs): executed only
/// when `response.output_item.done` shows it completed (reference §5 step 3; the arguments also
/// arrive for cancelled responses).
fn tool_to_run(item: &switchboard_realtime::events::Item) -> Option<ToolCall> {
    let switchboard_realtime::events::Item::FunctionCall(call) = item else { return None };
    if call.name == agent_control::END_CALL_TOOL
        || call.status != Some(switchboard_realtime::events::ItemStatus::Completed)
    {
        return None;
    }
    Some(ToolCall { call_id: call.call_id.clone()?, name: call.name.clone(), arguments: call.arguments.clone() })
}

fn rtp_stats(leg: &Leg) -> RtpStats {
    let jitter = leg.jitter.stats();
    RtpStats {
        packets: jitter.received,
        lost: jitter.lost,
        late: jitter.late,
        duplicates: jitter.duplicates,
        reordered: jitter.reordered,
        stream_changes: jitter.resets,
        concealed: leg.concealed,
        jitter: leg.jitter.jitter(),
        jitter_max: leg.jitter.max_jitter(),
        buffer_delay_p50: leg.jitter.delay_quantile(0.5),
        buffer_delay_p95: leg.jitter.delay_quantile(0.95),
        rtcp: leg.reports.stats(),
    }
}

fn record_turn_latency(turn: &meter::TurnLatency) {
    for (part, latency) in [("total", turn.total), ("model", turn.model), ("gateway", turn.gateway)] {
        metrics::histogram!(telemetry::TURN_LATENCY_SECONDS, "part" => part).record(latency.as_secs_f64());
    }
}

fn count_tokens(tokens: &TokenTotals) {
    for (direction, kind, count) in [
        ("input", "text", tokens.input_text),
        ("input", "audio", tokens.input_audio),
        ("input", "cached", tokens.input_cached),
        ("output", "text", tokens.output_text),
        ("output", "audio", tokens.output_audio),
    ] {
        if count > 0 {
            metrics::counter!(telemetry::REALTIME_TOKENS_TOTAL, "direction" => direction, "kind" => kind)
                .increment(count);
        }
    }
}

fn push_tap(outputs: &mut VecDeque<Output>, pending: &mut usize, stats: &mut CoreStats, tap: Tap) {
    if *pending >= MAX_PENDING_TAPS {
        stats.taps_dropped += 1;
        return;
    }
    *pending += 1;
    outputs.push_back(Output::Tap(tap));
}
