//! Adaptation between the RTP codec and the audio format the Realtime model speaks.
//!
//! With G.711 passthrough the model takes and produces the RTP payload bytes themselves
//! (`audio/pcmu`, `audio/pcma`): nothing to convert, only framing. With PCM 24 kHz the bytes are
//! 16-bit little-endian samples at 24 kHz, so G.711 is decoded/encoded and resampled.

use std::time::Duration;

use crate::codec::Codec;
use crate::resample::Resampler;

/// The model's audio sample rate for `audio/pcm`.
pub const MODEL_PCM_RATE: u32 = 24_000;

/// The audio format of the Realtime session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelAudio {
    /// The model speaks the call's G.711 variant (`audio/pcmu` or `audio/pcma`).
    G711Passthrough,
    /// The model speaks 16-bit little-endian PCM at 24 kHz (`audio/pcm`).
    Pcm24k,
}

/// A resampler between a codec's rate and the model's rate.
fn model_resampler(from_hz: u32, to_hz: u32) -> Resampler {
    // Every codec rate (8, 16, 48 kHz) is a supported small ratio of 24 kHz, so this does not
    // fail (tested for each codec); the identity fallback only keeps a panic path out.
    Resampler::new(from_hz, to_hz).unwrap_or_else(|_| Resampler::identity())
}

/// Converts inbound RTP payloads to bytes for `input_audio_buffer.append`.
#[derive(Debug, Clone)]
pub struct InboundAudio {
    codec: Codec,
    model: ModelAudio,
    resampler: Resampler,
    decoded: Vec<i16>,
    resampled: Vec<i16>,
}

impl InboundAudio {
    /// A converter for a call using `codec` whose model speaks `model`.
    pub fn new(codec: Codec, model: ModelAudio) -> Self {
        InboundAudio {
            codec,
            model,
            resampler: model_resampler(codec.clock_rate(), MODEL_PCM_RATE),
            decoded: Vec::new(),
            resampled: Vec::new(),
        }
    }

    /// Appends the model-format bytes for one RTP payload to `out`.
    pub fn convert(&mut self, rtp_payload: &[u8], out: &mut Vec<u8>) {
        match self.model {
            ModelAudio::G711Passthrough => out.extend_from_slice(rtp_payload),
            ModelAudio::Pcm24k => {
                self.decoded.clear();
                self.codec.decode(rtp_payload, &mut self.decoded);
                self.resampled.clear();
                self.resampler.process(&self.decoded, &mut self.resampled);
                out.reserve(self.resampled.len() * 2);
                for sample in &self.resampled {
                    out.extend_from_slice(&sample.to_le_bytes());
                }
            }
        }
    }

    /// Forgets resampler history (e.g. after the stream restarted).
    pub fn reset(&mut self) {
        self.resampler.reset();
    }
}

/// Cuts model audio (arbitrary chunk sizes) into whole encoded RTP frames.
#[derive(Debug, Clone)]
pub struct OutboundAudio {
    codec: Codec,
    model: ModelAudio,
    frame_bytes: usize,
    resampler: Resampler,
    /// Encoded bytes not yet making a whole frame.
    pending: Vec<u8>,
    /// The first byte of a PCM16 sample split across two chunks.
    odd_byte: Option<u8>,
    /// Whether audio was pushed since the last flush/reset (the resampler holds a tail).
    has_audio: bool,
    samples: Vec<i16>,
    resampled: Vec<i16>,
}

impl OutboundAudio {
    /// A framer for a call using `codec` at `ptime`, fed with audio in the `model` format.
    pub fn new(codec: Codec, model: ModelAudio, ptime: Duration) -> Self {
        let ptime_ms = u32::try_from(ptime.as_millis()).unwrap_or(u32::MAX).max(1);
        OutboundAudio {
            codec,
            model,
            frame_bytes: codec.bytes_per_frame(ptime_ms).max(1),
            resampler: model_resampler(MODEL_PCM_RATE, codec.clock_rate()),
            pending: Vec::new(),
            odd_byte: None,
            has_audio: false,
            samples: Vec::new(),
            resampled: Vec::new(),
        }
    }

    /// Encoded bytes in one frame.
    pub fn frame_bytes(&self) -> usize {
        self.frame_bytes
    }

    /// Encoded bytes waiting for more audio to fill a frame.
    pub fn pending_bytes(&self) -> usize {
        self.pending.len()
    }

    /// Appends every complete frame `model_bytes` makes to `frames`; keeps the remainder
    /// (including half of a PCM16 sample) for the next call.
    pub fn push(&mut self, model_bytes: &[u8], frames: &mut Vec<Vec<u8>>) {
        if model_bytes.is_empty() {
            return;
        }
        self.has_audio = true;
        match self.model {
            ModelAudio::G711Passthrough => self.pending.extend_from_slice(model_bytes),
            ModelAudio::Pcm24k => {
                self.samples.clear();
                let mut bytes = model_bytes;
                if let Some(low) = self.odd_byte.take()
                    && let Some((&high, rest)) = bytes.split_first()
                {
                    self.samples.push(i16::from_le_bytes([low, high]));
                    bytes = rest;
                }
                let mut pairs = bytes.chunks_exact(2);
                self.samples.extend(pairs.by_ref().map(|p| i16::from_le_bytes([p[0], p[1]])));
                self.odd_byte = pairs.remainder().first().copied();
                self.resampled.clear();
                self.resampler.process(&self.samples, &mut self.resampled);
                self.codec.encode(&self.resampled, &mut self.pending);
            }
        }
        self.drain_frames(frames);
    }

    /// End of an item: the remainder padded with silence into one last frame, or `None` if
    /// nothing remains. For PCM the resampler's tail (its last ~3 ms) is included as far as it
    /// fits in that frame, and the resampler restarts clean for the next item.
    pub fn flush_partial(&mut self) -> Option<Vec<u8>> {
        if !self.has_audio {
            return None;
        }
        self.has_audio = false;
        self.odd_byte = None;
        if self.model == ModelAudio::Pcm24k && !self.pending.is_empty() {
            let zeros = vec![0i16; self.resampler.flush_input_samples()];
            self.resampled.clear();
            self.resampler.process(&zeros, &mut self.resampled);
            let room = self.frame_bytes.saturating_sub(self.pending.len());
            let tail = &self.resampled[..self.resampled.len().min(room)];
            self.codec.encode(tail, &mut self.pending);
        }
        self.resampler.reset();
        if self.pending.is_empty() {
            return None;
        }
        let mut frame = std::mem::take(&mut self.pending);
        frame.resize(self.frame_bytes, self.codec.silence_byte());
        Some(frame)
    }

    /// Barge-in: drops the remainder and the resampler state.
    pub fn reset(&mut self) {
        self.pending.clear();
        self.odd_byte = None;
        self.has_audio = false;
        self.resampler.reset();
    }

    fn drain_frames(&mut self, frames: &mut Vec<Vec<u8>>) {
        let whole = self.pending.len() / self.frame_bytes * self.frame_bytes;
        if whole == 0 {
            return;
        }
        frames.extend(self.pending[..whole].chunks_exact(self.frame_bytes).map(<[u8]>::to_vec));
        self.pending.drain(..whole);
    }
}

/// Playout time of `bytes` of model audio, in milliseconds: G.711 is one byte per sample at
/// the codec's clock rate (bytes / 8 at 8 kHz); PCM 24 kHz is 48 bytes per millisecond.
pub fn model_audio_ms(model: ModelAudio, codec: Codec, bytes: usize) -> f64 {
    match model {
        ModelAudio::G711Passthrough => bytes as f64 * 1000.0 / f64::from(codec.clock_rate()),
        ModelAudio::Pcm24k => bytes as f64 / (f64::from(MODEL_PCM_RATE) * 2.0 / 1000.0),
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

    #[test]
    fn audio_durations() {
        assert_eq!(model_audio_ms(ModelAudio::G711Passthrough, Codec::Pcmu, 160), 20.0);
        assert_eq!(model_audio_ms(ModelAudio::Pcm24k, Codec::Pcmu, 960), 20.0);
        assert_eq!(model_audio_ms(ModelAudio::Pcm24k, Codec::Pcma, 48), 1.0);
    }
}
