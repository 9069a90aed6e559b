//! Two legs in one call: the caller's and a human's, for a bridged transfer (issue 9). The
//! transfer logic adds the human's leg once the human has answered ([`CallCore::add_leg`]),
//! bridges it with the caller's ([`CallCore::bridge`]), and goes back to the agent
//! ([`CallCore::unbridge`]) or drops the leg ([`CallCore::remove_leg`]) when the human leaves.
//!
//! While bridged, each packet a leg's jitter buffer releases (or conceals) is relayed to the
//! other leg, in the call's task (never on the media clock):
//!
//! ```text
//! leg A RTP -> strict latch -> JitterBuffer -> relay decoder (A's codec -> common format,
//!           concealment of lost packets included) -> relay encoder (common format -> B's codec
//!           and ptime) -> B's Pacer (tagged RELAY_TAG, bounded) -> Transmit on leg B
//! ```
//!
//! The common format is the payload itself when both legs speak the same G.711 law (no
//! transcoding at all), else 16-bit PCM at 24 kHz, the core's common rate. The caller's
//! recorder taps see the relayed audio like the agent's: leg CALLER's `ToLeg` tap is what the
//! caller heard, the human included.
//!
//! Delay and the relay queue. A packet released by A's jitter buffer (at once when it arrived
//! in order) waits in B's pacer for B's next slot: under one ptime. Arrival jitter may leave
//! B's pacer without a frame for a slot (it sends silence) and one frame more queued from then
//! on; a peer whose clock runs fast, or a burst released after a loss, queues more. Policy:
//! - at most [`RELAY_MAX_QUEUED_FRAMES`] relayed frames wait in a pacer (200 ms at 20 ms); a
//!   frame arriving at a full queue is dropped: memory is bounded whatever the peer sends;
//! - every [`RELAY_TRIM_WINDOW`] arrivals, if the queue never fell below
//!   [`RELAY_TRIM_ABOVE_FRAMES`] frames in that window, the excess over one frame of slack is
//!   dropped from the next arrivals: the added delay comes back down to one or two frames.
//!
//! While bridged the agent is silent: its queued audio is flushed and its items truncated to
//! what was heard (as for a barge-in), its later audio is dropped, caller audio no longer goes
//! to the model (the session stays open), and barge-in, idle prompts, the call-length goodbye,
//! reconnect prompts and keys told to the model wait until [`CallCore::unbridge`].

use std::time::Instant;

use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio};
use switchboard_media::jitter::ReceivedFrame;
use switchboard_media::pacer::Pacer;
use switchboard_realtime::conversation::ItemTag;
use tracing::{info, warn};

use super::{CALLER, CallCore, HUMAN, Leg, LegConfig, LegId, Output, rtp_stats};
use crate::telemetry;

/// The pacer tag of relayed audio: not an agent item (which count from 0), not the local
/// prompts' tag (`u32::MAX`).
pub(super) const RELAY_TAG: ItemTag = u32::MAX - 1;

/// Relayed frames waiting in a leg's pacer at most; beyond it a new frame is dropped.
pub const RELAY_MAX_QUEUED_FRAMES: usize = 10;

/// Arrivals over which the relay queue's low-water mark is watched (one second at 20 ms).
pub const RELAY_TRIM_WINDOW: u32 = 50;

/// A queue that never fell below this many frames for a whole window holds delay for nothing:
/// it is trimmed to one frame.
pub const RELAY_TRIM_ABOVE_FRAMES: usize = 2;

/// Media legs of one call at most, the caller's included: a caller and a human, with room to
/// spare. [`CallCore::add_leg`] refuses more (a transfer logic bug must not grow the call).
pub const MAX_LEGS: usize = 4;

/// The relays of a bridge, one per direction.
pub(super) struct Bridge {
    relays: [Relay; 2],
}

impl Bridge {
    fn relay_from(&mut self, from: LegId) -> Option<&mut Relay> {
        self.relays.iter_mut().find(|relay| relay.from == from)
    }

    fn involves(&self, leg: LegId) -> bool {
        self.relays.iter().any(|relay| relay.from == leg)
    }
}

/// One direction of a bridge: leg `from`'s released packets, made into frames for leg `to`.
struct Relay {
    from: LegId,
    to: LegId,
    decoder: InboundAudio,
    encoder: OutboundAudio,
    /// Scratch: one packet in the common format.
    decoded: Vec<u8>,
    /// Frames encoded for `to`, moved into its pacer at the end of the jitter buffer's drain.
    ready: Vec<Vec<u8>>,
    /// The fewest frames `to`'s pacer held at an arrival in this window, and the arrivals so far.
    window_min: usize,
    window_arrivals: u32,
    /// Arrivals still to drop to bring the delay back down.
    trim: usize,
}

impl Relay {
    fn new(from: &Leg, to: &Leg) -> Relay {
        // Same G.711 law both ways: the payload bytes pass as they are (concealment is encoded
        // back to that law by the decoder).
        let common = if from.codec == to.codec && from.codec.is_g711() {
            ModelAudio::G711Passthrough
        } else {
            ModelAudio::Pcm24k
        };
        Relay {
            from: from.id,
            to: to.id,
            decoder: InboundAudio::new(from.codec, common),
            encoder: OutboundAudio::with_opus_settings(to.codec, common, to.ptime, to.opus),
            decoded: Vec::with_capacity(1024),
            ready: Vec::new(),
            window_min: usize::MAX,
            window_arrivals: 0,
            trim: 0,
        }
    }

    /// One packet released by `from`'s jitter buffer (after `lost_before` lost ones).
    fn push(&mut self, frame: &ReceivedFrame) {
        if frame.stream_start {
            self.decoder.reset();
        }
        self.decoded.clear();
        self.decoder.convert_with_loss(frame.lost_before, &frame.payload, &mut self.decoded);
        self.encoder.push(&self.decoded, &mut self.ready);
    }

    /// Moves the ready frames into `to`'s pacer under the queue policy (module doc); returns
    /// how many were dropped.
    fn deliver(&mut self, pacer: &mut Pacer<ItemTag>) -> u64 {
        let mut dropped = 0u64;
        for frame in self.ready.drain(..) {
            let queued = pacer.queued_frames();
            self.window_min = self.window_min.min(queued);
            self.window_arrivals += 1;
            if self.window_arrivals >= RELAY_TRIM_WINDOW {
                if self.window_min >= RELAY_TRIM_ABOVE_FRAMES {
                    self.trim = self.window_min - 1;
                }
                self.window_arrivals = 0;
                self.window_min = usize::MAX;
            }
            if self.trim > 0 {
                self.trim -= 1;
                dropped += 1;
            } else if queued >= RELAY_MAX_QUEUED_FRAMES {
                dropped += 1;
            } else {
                pacer.enqueue(RELAY_TAG, frame);
            }
        }
        dropped
    }
}

/// Called for each packet leg `from`'s jitter buffer releases: relays it when `from` is
/// bridged (and says so: the model must not hear it then).
pub(super) fn relay_frame(bridge: &mut Option<Bridge>, from: LegId, frame: &ReceivedFrame) -> bool {
    let Some(relay) = bridge.as_mut().and_then(|bridge| bridge.relay_from(from)) else { return false };
    relay.push(frame);
    true
}

impl CallCore {
    /// A second media leg: the human's ([`HUMAN`]) once they answered our INVITE, with its own
    /// latch, jitter buffer, codec, pacer and RTCP. [`handle_rtp`](Self::handle_rtp) and
    /// [`handle_rtcp`](Self::handle_rtcp) with its id feed it; [`poll_transmit`](Self::poll_transmit)
    /// and [`poll_rtcp_transmit`](Self::poll_rtcp_transmit) send on it. It carries nothing
    /// until [`bridge`](Self::bridge) (the pacer sends silence). We are the UAC of its dialog:
    /// the answer's address may be sent to at once (no ACK to wait for, RFC 3261 §13.2.2.4).
    /// A leg with the same id is replaced; beyond [`MAX_LEGS`] legs none is added. No recorder
    /// taps: the recorder uses leg CALLER only.
    pub fn add_leg(&mut self, now: Instant, id: LegId, config: LegConfig) {
        if self.ended.is_some() {
            return;
        }
        if id == CALLER {
            warn!("the caller's leg cannot be added again; ignored");
            return;
        }
        if self.leg_index(id).is_some() {
            self.remove_leg(now, id);
        }
        if self.legs.len() >= MAX_LEGS {
            warn!(leg = id.0, legs = self.legs.len(), "too many media legs; not added");
            return;
        }
        let mut leg = Leg::new(id, now, config, false);
        leg.latch.on_dialog_confirmed();
        info!(leg = id.0, codec = ?leg.codec, "media leg added");
        self.legs.push(leg);
    }

    /// The leg is gone (its BYE, or its RTP timeout: [`Output::LegLost`]); unbridged first if
    /// it was bridged. The caller's leg is the call and cannot be removed.
    pub fn remove_leg(&mut self, now: Instant, id: LegId) {
        if id == CALLER {
            warn!("the caller's leg cannot be removed; end the call instead");
            return;
        }
        if self.bridge.as_ref().is_some_and(|bridge| bridge.involves(id)) {
            self.unbridge(now);
        }
        let Some(index) = self.leg_index(id) else { return };
        let leg = self.legs.remove(index);
        if id == HUMAN {
            self.stats.human_rtp = Some(rtp_stats(&leg));
        }
        self.transmits.retain(|t| t.leg != id);
        self.rtcp_transmits.retain(|t| t.leg != id);
        info!(leg = id.0, "media leg removed");
    }

    /// From now on each leg's inbound audio is played to the other (module doc); the agent's
    /// queued audio is flushed and its items truncated to what the caller heard, the model
    /// hears nothing more until [`unbridge`](Self::unbridge). Both legs must exist.
    pub fn bridge(&mut self, now: Instant, a: LegId, b: LegId) {
        if self.ended.is_some() {
            return;
        }
        let (Some(leg_a), Some(leg_b)) = (self.legs.iter().find(|l| l.id == a), self.legs.iter().find(|l| l.id == b))
        else {
            warn!(a = a.0, b = b.0, "bridge asked for a leg that does not exist; ignored");
            return;
        };
        if a == b {
            warn!(leg = a.0, "a leg cannot be bridged with itself; ignored");
            return;
        }
        let relays = [Relay::new(leg_a, leg_b), Relay::new(leg_b, leg_a)];
        if self.bridge.is_some() {
            self.unbridge(now);
        }
        self.cut_agent_off();
        for leg in self.legs.iter_mut().filter(|leg| leg.id != CALLER && (leg.id == a || leg.id == b)) {
            leg.flush();
        }
        self.bridge = Some(Bridge { relays });
        metrics::counter!(telemetry::BRIDGES_TOTAL).increment(1);
        info!(a = a.0, b = b.0, "legs bridged: the agent is silent");
    }

    /// Back to the agent: the relay stops (relayed audio still queued is dropped), caller audio
    /// goes to the model again, and agent items whose audio arrived during the bridge are
    /// truncated to what was heard (nothing). The human's leg, if still there, hears silence.
    pub fn unbridge(&mut self, now: Instant) {
        let Some(bridge) = self.bridge.take() else { return };
        self.cut_agent_off();
        for leg in self.legs.iter_mut().filter(|leg| leg.id != CALLER && bridge.involves(leg.id)) {
            leg.flush();
        }
        // The idle clock starts again with the agent.
        self.last_activity = now;
        info!("legs unbridged: the caller is back with the agent");
    }

    /// Whether two legs are bridged (the agent is silent).
    pub fn is_bridged(&self) -> bool {
        self.bridge.is_some()
    }

    /// The agent's audio still to be played to the caller (encoded or not): zero once an
    /// announcement has been heard in full, e.g. before [`bridge`](Self::bridge) cuts it off.
    /// While bridged, relayed audio waiting for its slot.
    pub fn agent_audio_queued(&self) -> std::time::Duration {
        self.caller_leg().map_or(std::time::Duration::ZERO, Leg::held_audio)
    }

    /// Stops the agent at once, as a barge-in does but without counting one: its queue on the
    /// caller's leg is flushed and its items truncated to what was played.
    fn cut_agent_off(&mut self) {
        self.barge_in.forget();
        let Some(leg) = self.legs.iter_mut().find(|leg| leg.id == CALLER) else { return };
        let (_, truncates) = self.agent.barge_in(leg);
        for truncate in truncates {
            self.send_realtime(truncate);
        }
    }

    /// Moves what leg `from`'s relay made into the other leg's pacer.
    pub(super) fn deliver_relayed(&mut self, from: LegId) {
        let Some(relay) = self.bridge.as_mut().and_then(|bridge| bridge.relay_from(from)) else { return };
        if relay.ready.is_empty() {
            return;
        }
        let Some(to) = self.legs.iter_mut().find(|leg| leg.id == relay.to) else {
            relay.ready.clear();
            return;
        };
        let dropped = relay.deliver(&mut to.pacer);
        if dropped > 0 {
            self.stats.relay_frames_dropped += dropped;
            metrics::counter!(telemetry::BRIDGE_RELAY_DROPPED_FRAMES_TOTAL).increment(dropped);
        }
    }

    /// Reports, once, each leg but the caller's that sent no RTP for `rtp_timeout`.
    pub(super) fn report_lost_legs(&mut self, now: Instant) {
        for leg in &mut self.legs {
            if leg.id != CALLER && !leg.lost && now >= leg.last_rtp_in + self.config.rtp_timeout {
                leg.lost = true;
                warn!(leg = leg.id.0, "no RTP from the leg; reported lost (the call goes on)");
                self.outputs.push_back(Output::LegLost(leg.id));
            }
        }
    }
}
