//! Media framing: RTP payload -> model audio (inbound) and model audio -> RTP frames
//! (outbound), for every codec, on arbitrary payloads and chunkings.

use std::time::Duration;

use switchboard_media::framing::MAX_CONCEALED_PACKETS;
use switchboard_media::opus_codec::MAX_PACKET_SAMPLES;
use switchboard_media::{Codec, InboundAudio, ModelAudio, OutboundAudio};

/// Largest Opus packet: RFC 6716 §3.4 caps a frame at 1275 bytes, plus the TOC byte.
const MAX_OPUS_PACKET: usize = 1276;
/// Packet durations the harness tries: common ones, odd ones, and degenerate ones.
const PTIMES_MS: [u64; 8] = [20, 10, 30, 40, 60, 0, 1, 7];

/// Sample counts in and out of a resampler since its last reset.
#[derive(Default)]
struct RateCheck {
    samples_in: u64,
    samples_out: u64,
}

impl RateCheck {
    /// Over a stream, `n` input samples give `n * up / down` output samples, give or take the
    /// one sample a fractional phase can add (`Resampler::process`).
    fn check(&self, up: u64, down: u64, what: &str) {
        let exact_floor = self.samples_in * up / down;
        let exact_ceil = (self.samples_in * up).div_ceil(down);
        assert!(
            (exact_floor..=exact_ceil).contains(&self.samples_out),
            "{what}: {} samples in gave {} out, expected {exact_floor}..={exact_ceil}",
            self.samples_in,
            self.samples_out
        );
    }
}

struct Harness {
    codec: Codec,
    inbound: InboundAudio,
    outbound: OutboundAudio,
    deferred: bool,
    inbound_rate: RateCheck,
    /// Model bytes pushed outbound since the last flush/reset (passthrough conservation).
    pushed_since_flush: usize,
    framed_since_flush: usize,
}

impl Harness {
    fn inbound(&mut self, lost_before: u16, payload: &[u8]) {
        let mut out = Vec::new();
        self.inbound.convert_with_loss(lost_before, payload, &mut out);
        let packets = usize::from(lost_before.min(MAX_CONCEALED_PACKETS)) + 1;
        if self.inbound.model_audio() == ModelAudio::G711Passthrough {
            assert_eq!(out.len(), packets * payload.len(), "passthrough: one payload's worth per packet, lost or not");
            return;
        }
        assert_eq!(out.len() % 2, 0, "PCM16 output of odd length");
        let samples_out = (out.len() / 2) as u64;
        match self.codec {
            // Fixed-rate codecs: a lost packet is filled with one payload's duration of silence.
            Codec::Pcmu | Codec::Pcma => {
                self.inbound_rate.samples_in += (packets * payload.len()) as u64;
                self.inbound_rate.samples_out += samples_out;
                self.inbound_rate.check(3, 1, "G.711 8 kHz -> 24 kHz");
            }
            Codec::G722 => {
                self.inbound_rate.samples_in += (packets * payload.len() * 2) as u64;
                self.inbound_rate.samples_out += samples_out;
                self.inbound_rate.check(3, 2, "G.722 16 kHz -> 24 kHz");
            }
            // Opus runs at 24 kHz: no resampler; each packet (decoded, recovered or concealed)
            // is at most 120 ms.
            _ => assert!(
                samples_out <= (packets * MAX_PACKET_SAMPLES) as u64,
                "Opus: {samples_out} samples from {packets} packets"
            ),
        }
    }

    fn check_frame(&mut self, frame: Vec<u8>, what: &str) {
        let frame = if self.deferred { self.outbound.encode_deferred(frame) } else { frame };
        match self.codec {
            Codec::Opus => assert!(
                !frame.is_empty() && frame.len() <= MAX_OPUS_PACKET,
                "{what}: Opus packet of {} bytes",
                frame.len()
            ),
            _ => assert_eq!(frame.len(), self.outbound.frame_bytes(), "{what}: frame of the wrong size"),
        }
        self.framed_since_flush += frame.len();
    }

    fn outbound(&mut self, model_bytes: &[u8]) {
        let mut frames = Vec::new();
        self.outbound.push(model_bytes, &mut frames);
        self.pushed_since_flush += model_bytes.len();
        for frame in frames {
            self.check_frame(frame, "push");
        }
        if self.outbound.model_audio() == ModelAudio::G711Passthrough {
            assert_eq!(
                self.framed_since_flush + self.outbound.pending_bytes(),
                self.pushed_since_flush,
                "passthrough framing lost or invented bytes"
            );
        }
    }

    fn flush(&mut self) {
        if let Some(frame) = self.outbound.flush_partial() {
            self.check_frame(frame, "flush_partial");
        }
        assert_eq!(self.outbound.pending_bytes(), 0, "bytes pending after a flush");
        self.pushed_since_flush = 0;
        self.framed_since_flush = 0;
    }

    fn reset(&mut self) {
        self.outbound.reset();
        self.inbound.reset();
        self.inbound_rate = RateCheck::default();
        self.pushed_since_flush = 0;
        self.framed_since_flush = 0;
    }
}

/// `media_framing`: byte 0 picks codec (bits 0-1), model format (bit 2), deferred encoding
/// (bit 3) and ptime (bits 4-6); then records of `[op, len, len bytes]`: op < 0x80 is an
/// inbound RTP payload after `op & 3` lost packets (op >= 0x70: `(op & 15) * 4`), 0x80-0xDF an
/// outbound model chunk, 0xE0-0xEF the end of an item (flush), 0xF0-0xFF a barge-in (reset).
/// No panic; output sizes as documented.
pub fn framing(data: &[u8]) {
    let Some((&config, mut rest)) = data.split_first() else {
        return;
    };
    let codec = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus][usize::from(config & 3)];
    let model = if config & 4 != 0 { ModelAudio::G711Passthrough } else { ModelAudio::Pcm24k };
    let deferred = config & 8 != 0;
    let ptime = Duration::from_millis(PTIMES_MS[usize::from((config >> 4) & 7)]);
    let mut outbound = OutboundAudio::new(codec, model, ptime);
    outbound.defer_encoding(deferred);
    // Deferral is a no-op for G.711 (frames are encoded in `push` already).
    let deferred = deferred && !codec.is_g711();
    let mut harness = Harness {
        codec,
        inbound: InboundAudio::new(codec, model),
        outbound,
        deferred,
        inbound_rate: RateCheck::default(),
        pushed_since_flush: 0,
        framed_since_flush: 0,
    };
    let mut records = 0;
    while let Some((&[op, len], after)) = rest.split_first_chunk::<2>() {
        let (payload, after_payload) = after.split_at_checked(usize::from(len)).unwrap_or((after, &[]));
        rest = after_payload;
        records += 1;
        if records > 64 {
            break;
        }
        match op {
            // Mostly short losses (each lost Opus packet costs a PLC run), sometimes up to 60
            // packets, past the 50-packet concealment cap.
            0x00..=0x6F => harness.inbound(u16::from(op & 3), payload),
            0x70..=0x7F => harness.inbound(u16::from(op & 0x0F) * 4, payload),
            0x80..=0xDF => harness.outbound(payload),
            0xE0..=0xEF => harness.flush(),
            _ => harness.reset(),
        }
    }
    harness.flush();
}
