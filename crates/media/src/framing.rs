//! Adaptation between the RTP codec and the audio format the Realtime model speaks.
//!
//! With G.711 passthrough the model takes and produces the RTP payload bytes themselves
//! (`audio/pcmu`, `audio/pcma`): nothing to convert, only framing. With PCM 24 kHz the bytes are
//! 16-bit little-endian samples at 24 kHz: G.711 is decoded/encoded and resampled (8k <-> 24k),
//! G.722 likewise (16k <-> 24k), and Opus runs at 24 kHz so it needs no resampler.
//!
//! Passthrough exists for G.711 only: asking for it on a G.722 or Opus call gives PCM 24 kHz
//! (see [`model_audio_for`]).

use std::time::Duration;

use crate::codec::{Codec, CodecCoding};
use crate::g722::{G722Decoder, G722Encoder};
use crate::opus_codec::{OpusDecoder, OpusEncoder, OpusEncoderSettings, is_opus_frame_size};
use crate::resample::Resampler;

/// The model's audio sample rate for `audio/pcm`.
pub const MODEL_PCM_RATE: u32 = 24_000;

/// Lost packets concealed before one received packet at most. A larger gap is a stall or a
/// stream restart, not loss; filling it would flood the model with seconds of invented audio.
pub const MAX_CONCEALED_PACKETS: u16 = 50;

/// The audio format of the Realtime session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelAudio {
    /// The model speaks the call's G.711 variant (`audio/pcmu` or `audio/pcma`).
    G711Passthrough,
    /// The model speaks 16-bit little-endian PCM at 24 kHz (`audio/pcm`).
    Pcm24k,
}

/// The model audio format a call on `codec` actually uses when `requested` is asked for:
/// passthrough only exists for G.711, every other codec gives the model PCM 24 kHz.
pub fn model_audio_for(codec: Codec, requested: ModelAudio) -> ModelAudio {
    if codec.is_g711() { requested } else { ModelAudio::Pcm24k }
}

/// A resampler between a codec's rate and the model's rate.
fn model_resampler(from_hz: u32, to_hz: u32) -> Resampler {
    // Every codec rate (8, 16, 24 kHz) is a supported small ratio of 24 kHz, so this does not
    // fail (tested for each codec); the identity fallback only keeps a panic path out.
    Resampler::new(from_hz, to_hz).unwrap_or_else(|_| Resampler::identity())
}

/// The samples of 16-bit little-endian PCM; a trailing odd byte is not a sample and is ignored.
fn pcm16_samples(bytes: &[u8]) -> impl Iterator<Item = i16> + '_ {
    bytes.as_chunks::<2>().0.iter().map(|&pair| i16::from_le_bytes(pair))
}

/// Appends 16-bit little-endian PCM.
fn extend_pcm16(samples: &[i16], out: &mut Vec<u8>) {
    out.reserve(samples.len() * 2);
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
}

/// The stateful part of decoding. Cloning gives fresh codec state (libopus state cannot be
/// copied); a clone is a converter for a new stream with the same configuration.
#[derive(Debug)]
enum Decoding {
    /// G.711 is stateless.
    G711,
    G722(G722Decoder),
    /// `None` only if libopus could not allocate a decoder; packets then become silence.
    Opus(Option<OpusDecoder>),
}

impl Decoding {
    fn for_codec(codec: Codec) -> Decoding {
        match codec {
            Codec::G722 => Decoding::G722(G722Decoder::new()),
            Codec::Opus => Decoding::Opus(OpusDecoder::new().ok()),
            Codec::Pcmu | Codec::Pcma => Decoding::G711,
        }
    }
}

/// Converts inbound RTP payloads to bytes for `input_audio_buffer.append`.
#[derive(Debug)]
pub struct InboundAudio {
    codec: Codec,
    model: ModelAudio,
    decoding: Decoding,
    resampler: Resampler,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
    /// G.711 and G.722: the last received packet, decoded at the codec's rate, the source of
    /// fade-and-repeat concealment.
    last_frame: Vec<i16>,
    /// G.711 passthrough: the last received payload (decoded into `last_frame` only on loss).
    last_payload: Vec<u8>,
    /// Scratch for concealment in G.711 passthrough.
    concealed: Vec<i16>,
}

/// Fade-and-repeat concealment reaches silence after this many lost packets (60 ms at 20 ms):
/// repeating a voiced frame longer than that sounds like a buzz, not like speech.
pub const FADE_PACKETS: usize = 3;

/// Appends `lost` packets of `samples_per_packet` each standing in for lost audio: `last`
/// repeated (cycled if its length differs) with a gain falling linearly from 1 to 0 over
/// [`FADE_PACKETS`] packets, then silence. No `last` (loss before any packet): silence.
pub fn fade_and_repeat(last: &[i16], lost: usize, samples_per_packet: usize, out: &mut Vec<i16>) {
    let total = lost * samples_per_packet;
    let fade_len = FADE_PACKETS * samples_per_packet;
    let start = out.len();
    if !last.is_empty() {
        out.extend(last.iter().cycle().take(fade_len.min(total)).enumerate().map(|(index, &sample)| {
            let gain = (fade_len - index) as f32 / fade_len as f32;
            (f32::from(sample) * gain) as i16
        }));
    }
    out.resize(start + total, 0);
}

impl Clone for InboundAudio {
    /// Same configuration, fresh codec and resampler state.
    fn clone(&self) -> Self {
        InboundAudio::new(self.codec, self.model)
    }
}

impl InboundAudio {
    /// A converter for a call using `codec` whose model speaks `model`. For G.722 and Opus the
    /// model always gets PCM 24 kHz, whatever `model` says ([`model_audio_for`]).
    pub fn new(codec: Codec, model: ModelAudio) -> Self {
        InboundAudio {
            codec,
            model: model_audio_for(codec, model),
            decoding: Decoding::for_codec(codec),
            resampler: model_resampler(codec.sample_rate(), MODEL_PCM_RATE),
            decoded: Vec::new(),
            resampled: Vec::new(),
            last_frame: Vec::new(),
            last_payload: Vec::new(),
            concealed: Vec::new(),
        }
    }

    /// The model audio format this converter produces.
    pub fn model_audio(&self) -> ModelAudio {
        self.model
    }

    /// How long `bytes` of this converter's output last (8 kHz G.711 bytes, or 24 kHz 16-bit PCM).
    pub fn model_audio_duration(&self, bytes: usize) -> Duration {
        let bytes_per_second: u64 = match self.model {
            ModelAudio::G711Passthrough => 8000,
            ModelAudio::Pcm24k => u64::from(MODEL_PCM_RATE) * 2,
        };
        Duration::from_micros(bytes as u64 * 1_000_000 / bytes_per_second)
    }

    /// Appends the model-format bytes for one RTP payload to `out`.
    pub fn convert(&mut self, rtp_payload: &[u8], out: &mut Vec<u8>) {
        self.convert_with_loss(0, rtp_payload, out);
    }

    /// Like [`convert`](Self::convert) for a payload that follows `lost_before` lost packets
    /// (the reorder buffer's count), first appending audio standing in for them so the model's
    /// input timeline stays continuous (its timeline is time).
    ///
    /// Opus recovers the packet just before this one from this packet's in-band FEC (RFC 7587
    /// §3.2) and conceals earlier ones with libopus PLC; G.711 and G.722 repeat the last packet
    /// received, fading to silence over [`FADE_PACKETS`] packets ([`fade_and_repeat`]), one
    /// packet of this payload's duration per lost packet. At most [`MAX_CONCEALED_PACKETS`] are filled in. An
    /// Opus packet that does not decode is concealed as if lost.
    pub fn convert_with_loss(&mut self, lost_before: u16, rtp_payload: &[u8], out: &mut Vec<u8>) {
        let lost = usize::from(lost_before.min(MAX_CONCEALED_PACKETS));
        if self.model == ModelAudio::G711Passthrough {
            // The model hears the concealment too (its input clock must not shrink), so the
            // faded repeat is encoded back to the call's G.711 variant.
            // Only the bytes are kept per packet (a copy); they are decoded when a loss needs them.
            if lost > 0 {
                self.last_frame.clear();
                self.codec.decode(&self.last_payload, &mut self.last_frame);
                self.concealed.clear();
                fade_and_repeat(&self.last_frame, lost, rtp_payload.len(), &mut self.concealed);
                self.codec.encode(&self.concealed, out);
            }
            out.extend_from_slice(rtp_payload);
            if !rtp_payload.is_empty() {
                self.last_payload.clear();
                self.last_payload.extend_from_slice(rtp_payload);
            }
            return;
        }
        self.decoded.clear();
        match &mut self.decoding {
            Decoding::G711 => {
                fade_and_repeat(&self.last_frame, lost, rtp_payload.len(), &mut self.decoded);
                let start = self.decoded.len();
                self.codec.decode(rtp_payload, &mut self.decoded);
                remember_last_frame(&mut self.last_frame, self.decoded.get(start..));
            }
            Decoding::G722(decoder) => {
                fade_and_repeat(&self.last_frame, lost, rtp_payload.len() * 2, &mut self.decoded);
                let start = self.decoded.len();
                decoder.decode(rtp_payload, &mut self.decoded);
                remember_last_frame(&mut self.last_frame, self.decoded.get(start..));
            }
            Decoding::Opus(Some(decoder)) => decode_opus_with_loss(decoder, lost, rtp_payload, &mut self.decoded),
            Decoding::Opus(None) => {
                let samples = self.codec.samples_per_frame(20);
                self.decoded.resize((lost + 1) * samples, 0);
            }
        }
        self.resampled.clear();
        self.resampler.process(&self.decoded, &mut self.resampled);
        extend_pcm16(&self.resampled, out);
    }

    /// Forgets codec and resampler history (e.g. after the stream restarted).
    pub fn reset(&mut self) {
        self.resampler.reset();
        self.last_frame.clear();
        self.last_payload.clear();
        match &mut self.decoding {
            Decoding::G711 | Decoding::Opus(None) => {}
            Decoding::G722(decoder) => decoder.reset(),
            Decoding::Opus(Some(decoder)) => decoder.reset(),
        }
    }
}

/// Keeps a received packet's samples for concealment; an empty packet keeps the previous one.
fn remember_last_frame(last_frame: &mut Vec<i16>, samples: Option<&[i16]>) {
    if let Some(samples) = samples.filter(|s| !s.is_empty()) {
        last_frame.clear();
        last_frame.extend_from_slice(samples);
    }
}

/// PLC for all but the last lost packet, FEC for the last, then the packet itself; each step
/// that fails is replaced by PLC so the timeline keeps its length.
fn decode_opus_with_loss(decoder: &mut OpusDecoder, lost: usize, payload: &[u8], out: &mut Vec<i16>) {
    for _ in 1..lost {
        conceal_or_silence(decoder, out);
    }
    if lost > 0 && decoder.recover_from_fec(payload, out).is_err() {
        conceal_or_silence(decoder, out);
    }
    if decoder.decode(payload, out).is_err() {
        conceal_or_silence(decoder, out);
    }
}

fn conceal_or_silence(decoder: &mut OpusDecoder, out: &mut Vec<i16>) {
    if decoder.conceal(out).is_err() {
        out.resize(out.len() + decoder.last_packet_samples(), 0);
    }
}

/// The stateful part of encoding; cloning gives fresh state like [`Decoding`].
#[derive(Debug)]
enum Encoding {
    G711,
    G722(G722Encoder),
    /// `None` only if libopus refused the encoder; frames then become silence packets.
    Opus(Option<OpusEncoder>, OpusEncoderSettings),
}

impl Encoding {
    fn for_codec(codec: Codec, settings: OpusEncoderSettings) -> Encoding {
        match codec {
            Codec::G722 => Encoding::G722(G722Encoder::new()),
            Codec::Opus => Encoding::Opus(OpusEncoder::new(settings).ok(), settings),
            Codec::Pcmu | Codec::Pcma => Encoding::G711,
        }
    }

    fn reset(&mut self) {
        match self {
            Encoding::G711 | Encoding::Opus(None, _) => {}
            Encoding::G722(encoder) => encoder.reset(),
            Encoding::Opus(Some(encoder), _) => encoder.reset(),
        }
    }
}

/// Cuts model audio (arbitrary chunk sizes) into whole encoded RTP frames.
#[derive(Debug)]
pub struct OutboundAudio {
    codec: Codec,
    model: ModelAudio,
    ptime: Duration,
    frame_bytes: usize,
    /// Codec-rate samples per frame (G.722 and Opus, which encode whole frames).
    frame_samples: usize,
    encoding: Encoding,
    resampler: Resampler,
    /// Encoded bytes not yet making a whole frame (G.711).
    pending: Vec<u8>,
    /// Codec-rate samples not yet making a whole frame (G.722, Opus).
    pending_samples: Vec<i16>,
    /// The first byte of a PCM16 sample split across two chunks.
    odd_byte: Option<u8>,
    /// Whether audio was pushed since the last flush/reset (the resampler holds a tail).
    has_audio: bool,
    samples: Vec<i16>,
    resampled: Vec<i16>,
    /// G.722/Opus frames leave `push` as raw codec-rate PCM16 and are encoded by
    /// [`OutboundAudio::encode_deferred`] when their slot comes (see [`OutboundAudio::defer_encoding`]).
    deferred: bool,
}

impl Clone for OutboundAudio {
    /// Same configuration, fresh codec and resampler state and nothing pending.
    fn clone(&self) -> Self {
        let settings = match &self.encoding {
            Encoding::Opus(_, settings) => *settings,
            Encoding::G711 | Encoding::G722(_) => OpusEncoderSettings::default(),
        };
        OutboundAudio::with_opus_settings(self.codec, self.model, self.ptime, settings)
    }
}

impl OutboundAudio {
    /// A framer for a call using `codec` at `ptime`, fed with audio in the `model` format
    /// (PCM 24 kHz for G.722 and Opus whatever `model` says). Opus uses the default
    /// [`OpusEncoderSettings`].
    pub fn new(codec: Codec, model: ModelAudio, ptime: Duration) -> Self {
        OutboundAudio::with_opus_settings(codec, model, ptime, OpusEncoderSettings::default())
    }

    /// Like [`new`](Self::new) with explicit Opus encoder settings (ignored by other codecs).
    /// Opus packets last `ptime` when it is an Opus frame duration (10, 20, 40, 60 ms), else 20 ms.
    pub fn with_opus_settings(codec: Codec, model: ModelAudio, ptime: Duration, settings: OpusEncoderSettings) -> Self {
        let ptime_ms = u32::try_from(ptime.as_millis()).unwrap_or(u32::MAX).max(1);
        let mut frame_samples = codec.samples_per_frame(ptime_ms).max(1);
        if codec == Codec::Opus && !is_opus_frame_size(frame_samples) {
            frame_samples = codec.samples_per_frame(20);
        }
        OutboundAudio {
            codec,
            model: model_audio_for(codec, model),
            ptime,
            frame_bytes: codec.bytes_per_frame(ptime_ms).max(usize::from(codec != Codec::Opus)),
            frame_samples,
            encoding: Encoding::for_codec(codec, settings),
            resampler: model_resampler(MODEL_PCM_RATE, codec.sample_rate()),
            pending: Vec::new(),
            pending_samples: Vec::new(),
            odd_byte: None,
            has_audio: false,
            samples: Vec::new(),
            resampled: Vec::new(),
            deferred: false,
        }
    }

    /// Defers G.722 and Opus encoding from [`push`](Self::push) to send time: frames come out
    /// as raw PCM16 at the codec rate and [`encode_deferred`](Self::encode_deferred) encodes each
    /// one when the pacer sends it. A model delta of up to a few hundred ms then costs one frame's
    /// encode per 20 ms slot instead of a burst that holds up every call sharing the thread, and
    /// audio flushed by a barge-in is never encoded. No effect on G.711.
    pub fn defer_encoding(&mut self, deferred: bool) {
        self.deferred = deferred && !matches!(self.encoding, Encoding::G711);
    }

    /// Encodes one frame produced while encoding is deferred; frames must be encoded in the
    /// order they were produced (the codec state runs across them). Without deferral, or for
    /// G.711, the frame is already encoded and comes back unchanged.
    pub fn encode_deferred(&mut self, frame: Vec<u8>) -> Vec<u8> {
        if !self.deferred {
            return frame;
        }
        let samples: Vec<i16> = pcm16_samples(&frame).collect();
        let mut encoded = Vec::with_capacity(self.frame_bytes.max(64));
        self.encode_samples(&samples, &mut encoded);
        encoded
    }

    /// The model audio format this framer expects.
    pub fn model_audio(&self) -> ModelAudio {
        self.model
    }

    /// Encoded bytes in one frame; 0 for Opus, whose packets vary in size.
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Encoded bytes waiting for more audio to fill a frame (for G.722 the bytes the waiting
    /// samples will encode to; for Opus, which has no fixed size, the waiting PCM16 bytes).
    pub fn pending_bytes(&self) -> usize {
        match self.codec {
            Codec::G722 => self.pending_samples.len() / 2,
            Codec::Opus => self.pending_samples.len() * 2,
            _ => self.pending.len(),
        }
    }

    /// Appends every complete frame `model_bytes` makes to `frames`; keeps the remainder
    /// (including half of a PCM16 sample) for the next call.
    pub fn push(&mut self, model_bytes: &[u8], frames: &mut Vec<Vec<u8>>) {
        if model_bytes.is_empty() {
            return;
        }
        self.has_audio = true;
        if self.model == ModelAudio::G711Passthrough {
            self.pending.extend_from_slice(model_bytes);
            self.drain_frames(frames);
            return;
        }
        self.samples.clear();
        let mut bytes = model_bytes;
        if let Some(low) = self.odd_byte.take()
            && let Some((&high, rest)) = bytes.split_first()
        {
            self.samples.push(i16::from_le_bytes([low, high]));
            bytes = rest;
        }
        self.samples.extend(pcm16_samples(bytes));
        self.odd_byte = bytes.as_chunks::<2>().1.first().copied();
        self.resampled.clear();
        self.resampler.process(&self.samples, &mut self.resampled);
        if matches!(self.encoding, Encoding::G711) {
            self.codec.encode(&self.resampled, &mut self.pending);
            self.drain_frames(frames);
        } else {
            self.pending_samples.extend_from_slice(&self.resampled);
            self.encode_whole_frames(frames);
        }
    }

    /// End of an item: the remainder padded with silence into one last frame, or `None` if
    /// nothing remains. For PCM the resampler's tail (its last ~3 ms) is included as far as it
    /// fits in that frame, and the resampler restarts clean for the next item (G.722's
    /// encoder too, matching the fresh-state silence frames the pacer sends in between).
    pub fn flush_partial(&mut self) -> Option<Vec<u8>> {
        if !self.has_audio {
            return None;
        }
        self.has_audio = false;
        self.odd_byte = None;
        if matches!(self.encoding, Encoding::G711) {
            return self.flush_g711();
        }
        let mut frame = None;
        if !self.pending_samples.is_empty() {
            let zeros = vec![0i16; self.resampler.flush_input_samples()];
            self.resampled.clear();
            self.resampler.process(&zeros, &mut self.resampled);
            let room = self.frame_samples.saturating_sub(self.pending_samples.len());
            self.resampled.truncate(room);
            self.pending_samples.extend_from_slice(&self.resampled);
            self.pending_samples.resize(self.frame_samples, 0);
            let mut frames = Vec::with_capacity(1);
            self.encode_whole_frames(&mut frames);
            frame = frames.pop();
        }
        self.resampler.reset();
        // With deferred encoding this item's frames are still queued, unencoded: resetting the
        // encoder now would encode them from a fresh state mid-stream.
        if !self.deferred
            && let Encoding::G722(encoder) = &mut self.encoding
        {
            encoder.reset();
        }
        frame
    }

    fn flush_g711(&mut self) -> Option<Vec<u8>> {
        if self.model == ModelAudio::Pcm24k && !self.pending.is_empty() {
            let zeros = vec![0i16; self.resampler.flush_input_samples()];
            self.resampled.clear();
            self.resampler.process(&zeros, &mut self.resampled);
            let room = self.frame_bytes.saturating_sub(self.pending.len());
            self.resampled.truncate(room);
            self.codec.encode(&self.resampled, &mut self.pending);
        }
        self.resampler.reset();
        if self.pending.is_empty() {
            return None;
        }
        let mut frame = std::mem::take(&mut self.pending);
        frame.resize(self.frame_bytes, self.codec.silence_byte());
        Some(frame)
    }

    /// Barge-in: drops the remainder and the codec and resampler state.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.pending_samples.clear();
        self.odd_byte = None;
        self.has_audio = false;
        self.resampler.reset();
        self.encoding.reset();
    }

    fn drain_frames(&mut self, frames: &mut Vec<Vec<u8>>) {
        let whole = self.pending.len() / self.frame_bytes * self.frame_bytes;
        if whole == 0 {
            return;
        }
        // `chunks_exact` yields exactly the `whole / frame_bytes` complete frames.
        frames.extend(self.pending.chunks_exact(self.frame_bytes).map(<[u8]>::to_vec));
        self.pending.drain(..whole);
    }

    /// Encodes (or, deferred, passes on as raw PCM16) every whole frame of `pending_samples`
    /// (G.722, Opus).
    fn encode_whole_frames(&mut self, frames: &mut Vec<Vec<u8>>) {
        let whole = self.pending_samples.len() / self.frame_samples * self.frame_samples;
        if self.deferred {
            for chunk in self.pending_samples.chunks_exact(self.frame_samples) {
                let mut raw = Vec::with_capacity(chunk.len() * 2);
                extend_pcm16(chunk, &mut raw);
                frames.push(raw);
            }
            self.pending_samples.drain(..whole);
            return;
        }
        let pending = std::mem::take(&mut self.pending_samples);
        for chunk in pending.chunks_exact(self.frame_samples) {
            let mut frame = Vec::with_capacity(self.frame_bytes.max(64));
            self.encode_samples(chunk, &mut frame);
            frames.push(frame);
        }
        self.pending_samples = pending;
        self.pending_samples.drain(..whole);
    }

    /// Encodes one frame of codec-rate samples.
    fn encode_samples(&mut self, chunk: &[i16], frame: &mut Vec<u8>) {
        let frame_ms = u32::try_from(self.frame_samples * 1000 / self.codec.sample_rate() as usize).unwrap_or(20);
        match &mut self.encoding {
            Encoding::G722(encoder) => encoder.encode(chunk, frame),
            Encoding::Opus(Some(encoder), _) => {
                if encoder.encode(chunk, frame).is_err() {
                    *frame = crate::opus_codec::opus_silence_packet(frame_ms);
                }
            }
            Encoding::Opus(None, _) => *frame = crate::opus_codec::opus_silence_packet(frame_ms),
            Encoding::G711 => self.codec.encode(chunk, frame),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{dominant_frequency, rms_dbfs, sine};

    const PTIME: Duration = Duration::from_millis(20);

    fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    fn pcm_samples(bytes: &[u8]) -> Vec<i16> {
        bytes.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])).collect()
    }

    #[test]
    fn deferred_encoding_gives_the_same_packets_at_send_time() {
        for codec in [Codec::Opus, Codec::G722] {
            let audio = pcm_bytes(&sine(700.0, MODEL_PCM_RATE, 300, 8000));
            let mut now = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
            let mut later = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
            later.defer_encoding(true);
            let (mut direct, mut raw) = (Vec::new(), Vec::new());
            for chunk in audio.chunks(1234) {
                now.push(chunk, &mut direct);
                later.push(chunk, &mut raw);
            }
            direct.extend(now.flush_partial());
            raw.extend(later.flush_partial());
            assert_eq!(raw.len(), direct.len(), "{codec:?}: same number of frames");
            let samples = codec.samples_per_frame(20);
            assert!(raw.iter().all(|f| f.len() == samples * 2), "{codec:?}: raw PCM16 frames before encoding");
            let deferred: Vec<Vec<u8>> = raw.into_iter().map(|f| later.encode_deferred(f)).collect();
            assert_eq!(deferred, direct, "{codec:?}: identical packets");
        }
    }

    #[test]
    fn inbound_passthrough_copies() {
        let mut inbound = InboundAudio::new(Codec::Pcmu, ModelAudio::G711Passthrough);
        let mut out = vec![9];
        inbound.convert(&[1, 2, 3], &mut out);
        assert_eq!(out, [9, 1, 2, 3]);
    }

    #[test]
    fn inbound_pcm24k_decodes_and_upsamples() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let tone = sine(1000.0, 8000, 400, 8000);
            let mut inbound = InboundAudio::new(codec, ModelAudio::Pcm24k);
            let mut out = Vec::new();
            for frame in tone.chunks(160) {
                let mut payload = Vec::new();
                codec.encode(frame, &mut payload);
                let before = out.len();
                inbound.convert(&payload, &mut out);
                assert_eq!(out.len() - before, 960, "20 ms at 24 kHz, 16-bit");
            }
            let pcm = pcm_samples(&out);
            let steady = &pcm[2400..];
            let freq = dominant_frequency(steady, 24000, 200.0, 4000.0, 10.0);
            assert!((freq - 1000.0).abs() < 1.0, "{codec:?}: {freq}");
            assert!((rms_dbfs(steady) - rms_dbfs(&tone)).abs() < 0.5);
        }
    }

    #[test]
    fn outbound_passthrough_frames_arbitrary_chunks() {
        let mut outbound = OutboundAudio::new(Codec::Pcmu, ModelAudio::G711Passthrough, PTIME);
        assert_eq!(outbound.frame_bytes(), 160);
        let audio: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
        let mut frames = Vec::new();
        let mut offset = 0;
        for size in [1, 7, 333, 159, 200, 300] {
            outbound.push(&audio[offset..offset + size], &mut frames);
            offset += size;
        }
        assert_eq!(offset, 1000);
        assert_eq!(frames.len(), 6);
        assert!(frames.iter().all(|f| f.len() == 160));
        assert_eq!(frames.concat(), audio[..960]);
        assert_eq!(outbound.pending_bytes(), 40);
        let last = outbound.flush_partial().unwrap();
        assert_eq!(&last[..40], &audio[960..]);
        assert!(last[40..].iter().all(|&b| b == 0xFF));
        assert_eq!(outbound.flush_partial(), None);
    }

    #[test]
    fn outbound_pcma_pads_with_alaw_silence_and_reset_drops_remainder() {
        let mut outbound = OutboundAudio::new(Codec::Pcma, ModelAudio::G711Passthrough, PTIME);
        let mut frames = Vec::new();
        outbound.push(&[1; 10], &mut frames);
        let last = outbound.flush_partial().unwrap();
        assert!(last[10..].iter().all(|&b| b == 0xD5));
        outbound.push(&[1; 10], &mut frames);
        outbound.reset();
        assert_eq!(outbound.flush_partial(), None);
        assert!(frames.is_empty());
    }

    #[test]
    fn outbound_pcm24k_handles_odd_chunks_identically() {
        let tone = pcm_bytes(&sine(1000.0, 24000, 1000, 8000));
        let mut whole = OutboundAudio::new(Codec::Pcmu, ModelAudio::Pcm24k, PTIME);
        let mut expected = Vec::new();
        whole.push(&tone, &mut expected);
        assert_eq!(expected.len(), 50, "1 s at 24 kHz = 50 frames of 20 ms");

        let mut chunked = OutboundAudio::new(Codec::Pcmu, ModelAudio::Pcm24k, PTIME);
        let mut frames = Vec::new();
        for chunk in tone.chunks(1001) {
            chunked.push(chunk, &mut frames);
        }
        assert_eq!(frames, expected);

        let mut decoded = Vec::new();
        for frame in &frames {
            Codec::Pcmu.decode(frame, &mut decoded);
        }
        let freq = dominant_frequency(&decoded[800..], 8000, 200.0, 3800.0, 10.0);
        assert!((freq - 1000.0).abs() < 1.0, "{freq}");
    }

    #[test]
    fn outbound_pcm24k_flush_pads_one_frame_and_restarts_clean() {
        let mut outbound = OutboundAudio::new(Codec::Pcma, ModelAudio::Pcm24k, PTIME);
        // 105 ms of audio: five frames and 5 ms left over.
        let tone = pcm_bytes(&sine(500.0, 24000, 105, 8000));
        let mut frames = Vec::new();
        outbound.push(&tone, &mut frames);
        assert_eq!(frames.len(), 5);
        assert_eq!(outbound.pending_bytes(), 40);
        let last = outbound.flush_partial().unwrap();
        assert_eq!(last.len(), 160);
        // The filter tail follows the 40 remaining bytes; the end is padded silence.
        assert!(last[100..].iter().all(|&b| b == 0xD5));
        assert!(last[..40].iter().any(|&b| b != 0xD5));
        assert_eq!(outbound.flush_partial(), None);
        // Silence in after the flush gives silence out: no ringing from the previous item.
        let mut frames = Vec::new();
        outbound.push(&[0; 960], &mut frames);
        assert!(frames[0].iter().all(|&b| b == 0xD5));
    }

    fn opus_frames_round_trip(frames: &[Vec<u8>], inbound: &mut InboundAudio) -> Vec<i16> {
        let mut out = Vec::new();
        for frame in frames {
            inbound.convert(frame, &mut out);
        }
        pcm_samples(&out)
    }

    #[test]
    fn passthrough_exists_only_for_g711() {
        assert_eq!(model_audio_for(Codec::Pcmu, ModelAudio::G711Passthrough), ModelAudio::G711Passthrough);
        assert_eq!(model_audio_for(Codec::Pcma, ModelAudio::Pcm24k), ModelAudio::Pcm24k);
        for codec in [Codec::G722, Codec::Opus] {
            assert_eq!(model_audio_for(codec, ModelAudio::G711Passthrough), ModelAudio::Pcm24k);
            assert_eq!(InboundAudio::new(codec, ModelAudio::G711Passthrough).model_audio(), ModelAudio::Pcm24k);
            let outbound = OutboundAudio::new(codec, ModelAudio::G711Passthrough, PTIME);
            assert_eq!(outbound.model_audio(), ModelAudio::Pcm24k);
        }
    }

    #[test]
    fn opus_and_g722_round_trip_tones_through_the_model_format() {
        for codec in [Codec::Opus, Codec::G722] {
            for freq in [400.0, 1000.0, 3000.0] {
                let tone = sine(freq, MODEL_PCM_RATE, 600, 8000);
                let mut outbound = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
                let mut frames = Vec::new();
                for chunk in pcm_bytes(&tone).chunks(777) {
                    outbound.push(chunk, &mut frames);
                }
                assert_eq!(frames.len(), 30, "{codec:?}: 600 ms in 20 ms frames");
                if codec == Codec::G722 {
                    assert!(frames.iter().all(|f| f.len() == 160));
                }
                let mut inbound = InboundAudio::new(codec, ModelAudio::G711Passthrough);
                let decoded = opus_frames_round_trip(&frames, &mut inbound);
                assert_eq!(decoded.len(), tone.len(), "{codec:?}: 480 samples per frame at 24 kHz");
                let steady = &decoded[4800..];
                let found = dominant_frequency(steady, MODEL_PCM_RATE, 100.0, 7000.0, 10.0);
                assert!((found - freq).abs() <= 10.0, "{codec:?} {freq}: {found}");
                let level = rms_dbfs(steady) - rms_dbfs(&tone);
                assert!(level.abs() < 3.0, "{codec:?} {freq}: {level:.1} dB");
            }
        }
    }

    #[test]
    fn opus_packet_duration_follows_ptime() {
        let tone = pcm_bytes(&sine(500.0, MODEL_PCM_RATE, 240, 8000));
        for (ptime_ms, per_packet) in [(10, 240), (20, 480), (40, 960), (60, 1440), (30, 480)] {
            let mut outbound = OutboundAudio::new(Codec::Opus, ModelAudio::Pcm24k, Duration::from_millis(ptime_ms));
            let mut frames = Vec::new();
            outbound.push(&tone, &mut frames);
            assert_eq!(frames.len(), 5760 / per_packet, "{ptime_ms} ms");
            let mut inbound = InboundAudio::new(Codec::Opus, ModelAudio::Pcm24k);
            let mut out = Vec::new();
            inbound.convert(&frames[0], &mut out);
            assert_eq!(out.len(), per_packet * 2, "{ptime_ms} ms");
        }
    }

    #[test]
    fn opus_and_g722_flush_pad_one_frame_and_reset_drops_the_rest() {
        for codec in [Codec::Opus, Codec::G722] {
            let mut outbound = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
            let mut frames = Vec::new();
            outbound.push(&pcm_bytes(&sine(500.0, MODEL_PCM_RATE, 105, 8000)), &mut frames);
            assert_eq!(frames.len(), 5, "{codec:?}");
            assert!(outbound.pending_bytes() > 0);
            let last = outbound.flush_partial().unwrap();
            let mut inbound = InboundAudio::new(codec, ModelAudio::Pcm24k);
            let mut out = Vec::new();
            inbound.convert(&last, &mut out);
            assert_eq!(out.len(), 960, "{codec:?}: the last frame is a whole 20 ms");
            assert_eq!(outbound.flush_partial(), None);
            outbound.push(&[0; 500], &mut frames);
            outbound.reset();
            assert_eq!(outbound.pending_bytes(), 0);
            assert_eq!(outbound.flush_partial(), None);
        }
    }

    /// A 440 Hz tone with a 3 Hz syllable-like envelope: a steady tone would look like
    /// stationary noise to the encoder's voice activity detector, which then stops adding FEC.
    fn speech_like_tone(duration_ms: u32) -> Vec<i16> {
        sine(440.0, MODEL_PCM_RATE, duration_ms, 12000)
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                let t = i as f64 / f64::from(MODEL_PCM_RATE);
                let envelope = 0.8 + 0.2 * (2.0 * std::f64::consts::PI * 3.0 * t).sin();
                (f64::from(s) * envelope) as i16
            })
            .collect()
    }

    #[test]
    fn opus_loss_keeps_the_timeline_and_recovers_the_tone() {
        let tone = speech_like_tone(2000);
        let mut outbound = OutboundAudio::new(Codec::Opus, ModelAudio::Pcm24k, PTIME);
        let mut frames = Vec::new();
        outbound.push(&pcm_bytes(&tone), &mut frames);
        assert_eq!(frames.len(), 100);
        let mut inbound = InboundAudio::new(Codec::Opus, ModelAudio::Pcm24k);
        let mut out = Vec::new();
        let mut lost = 0;
        for (index, frame) in frames.iter().enumerate() {
            if index % 5 == 4 {
                lost += 1;
                continue;
            }
            inbound.convert_with_loss(lost, frame, &mut out);
            lost = 0;
        }
        let pcm = pcm_samples(&out);
        // Everything up to the last received packet (the 100th is lost) is there: 99 packets.
        assert_eq!(pcm.len(), 99 * 480);
        // Every stand-in keeps the tone (a 20 ms window resolves about 50 Hz); most come from
        // FEC at full level, the rest from PLC a few dB down (the encoder's VAD skips FEC on
        // frames it finds inactive).
        let mut at_full_level = 0;
        let recovered: Vec<usize> = (9..99).step_by(5).collect();
        for &lost_index in &recovered {
            let span = lost_index * 480..(lost_index + 1) * 480;
            let level = rms_dbfs(&pcm[span.clone()]) - rms_dbfs(&tone[span.clone()]);
            assert!(level > -12.0, "packet {lost_index}: {level:.1} dB");
            at_full_level += usize::from(level > -3.0);
            let found = dominant_frequency(&pcm[span], MODEL_PCM_RATE, 200.0, 2000.0, 10.0);
            assert!((found - 440.0).abs() <= 50.0, "packet {lost_index}: {found}");
        }
        assert!(at_full_level * 2 > recovered.len(), "{at_full_level} of {} at full level", recovered.len());
    }

    #[test]
    fn opus_burst_loss_and_bad_packets_conceal_whole_packets() {
        let mut outbound = OutboundAudio::new(Codec::Opus, ModelAudio::Pcm24k, PTIME);
        let mut frames = Vec::new();
        outbound.push(&pcm_bytes(&sine(440.0, MODEL_PCM_RATE, 100, 8000)), &mut frames);
        let mut inbound = InboundAudio::new(Codec::Opus, ModelAudio::Pcm24k);
        let mut out = Vec::new();
        inbound.convert(&frames[0], &mut out);
        inbound.convert_with_loss(3, &frames[4], &mut out);
        assert_eq!(out.len(), 5 * 960);
        inbound.convert(&[0xFF, 0x3F], &mut out);
        assert_eq!(out.len(), 6 * 960, "an undecodable packet is concealed, not dropped");
        inbound.convert_with_loss(u16::MAX, &frames[0], &mut out);
        assert_eq!(out.len(), (7 + usize::from(MAX_CONCEALED_PACKETS)) * 960);
    }

    #[test]
    fn g711_and_g722_loss_is_concealed_by_a_faded_repeat_of_the_packet_duration() {
        // Passthrough: loss before any packet is silence; after one, a faded repeat of it.
        let mut passthrough = InboundAudio::new(Codec::Pcmu, ModelAudio::G711Passthrough);
        let mut out = Vec::new();
        passthrough.convert_with_loss(2, &[1; 160], &mut out);
        assert_eq!(out.len(), 480);
        assert!(out[..320].iter().all(|&b| b == 0xFF));
        assert!(out[320..].iter().all(|&b| b == 1));
        let tone = sine(1000.0, 8000, 20, 8000);
        let mut ulaw = Vec::new();
        Codec::Pcmu.encode(&tone, &mut ulaw);
        let mut out = Vec::new();
        passthrough.convert(&ulaw, &mut out);
        passthrough.convert_with_loss(4, &ulaw, &mut out);
        assert_eq!(out.len(), 6 * 160);
        let mut pcm = Vec::new();
        Codec::Pcmu.decode(&out, &mut pcm);
        let level = |packet: usize| rms_dbfs(&pcm[packet * 160..(packet + 1) * 160]);
        assert!(level(1) > level(0) - 3.0, "the first repeat is near full level");
        assert!(level(2) < level(1) && level(3) < level(2), "then fades");
        assert!(level(4) < -60.0, "silence after {FADE_PACKETS} packets");
        assert!((level(5) - level(0)).abs() < 1.0, "the packet itself follows");

        for codec in [Codec::Pcma, Codec::G722] {
            let tone = sine(1000.0, codec.sample_rate(), 200, 8000);
            let mut payload = Vec::new();
            codec.encode(&tone, &mut payload);
            let frame = &payload[..codec.bytes_per_frame(20)];
            let mut inbound = InboundAudio::new(codec, ModelAudio::Pcm24k);
            let mut out = Vec::new();
            inbound.convert(frame, &mut out);
            inbound.convert_with_loss(5, frame, &mut out);
            let pcm = pcm_samples(&out);
            assert_eq!(pcm.len(), 7 * 480, "{codec:?}");
            // The first concealed packet carries the tone; after the fade the gap is silent.
            let found = dominant_frequency(&pcm[480..960], MODEL_PCM_RATE, 200.0, 2000.0, 10.0);
            assert!((found - 1000.0).abs() <= 50.0, "{codec:?}: {found}");
            assert!(rms_dbfs(&pcm[480..960]) > -20.0, "{codec:?}");
            assert!(rms_dbfs(&pcm[4 * 480 + 100..6 * 480 - 100]) < -60.0, "{codec:?}");
            assert!(rms_dbfs(&pcm[6 * 480 + 100..]) > -20.0, "{codec:?}");
        }
    }

    #[test]
    fn fade_and_repeat_has_the_requested_length_and_never_exceeds_the_source() {
        let last: Vec<i16> = (0..160).map(|i| if i % 2 == 0 { 20_000 } else { -20_000 }).collect();
        for lost in 0..8 {
            let mut out = vec![7];
            fade_and_repeat(&last, lost, 160, &mut out);
            assert_eq!(out.len(), 1 + lost * 160);
            assert!(out[1..].iter().all(|s| s.abs() <= 20_000));
            let mut silent = Vec::new();
            fade_and_repeat(&[], lost, 160, &mut silent);
            assert!(silent.iter().all(|&s| s == 0) && silent.len() == lost * 160);
        }
    }

    #[test]
    fn clones_start_fresh_with_the_same_configuration() {
        let outbound = OutboundAudio::with_opus_settings(
            Codec::Opus,
            ModelAudio::Pcm24k,
            Duration::from_millis(40),
            OpusEncoderSettings { bitrate_bps: 16_000, ..Default::default() },
        );
        let mut copy = outbound.clone();
        let mut frames = Vec::new();
        copy.push(&[0; 1920], &mut frames);
        assert_eq!(frames.len(), 1, "40 ms packets kept");
        let inbound = InboundAudio::new(Codec::G722, ModelAudio::Pcm24k);
        assert_eq!(inbound.clone().model_audio(), ModelAudio::Pcm24k);
    }
}
