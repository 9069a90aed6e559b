//! Per-codec facts the media plane needs (framing, silence, encode/decode).
//!
//! Two rates per codec: the RTP clock rate (timestamps, the pacer) and the audio sample rate
//! (what the codec encodes). They match for G.711 only: G.722 samples at 16 kHz on an 8 kHz
//! clock (RFC 3551 §4.5.2) and Opus always uses a 48 kHz clock (RFC 7587 §4.1) while we run it
//! at 24 kHz.

use crate::g711;
use crate::g722::{G722Decoder, G722Encoder};
use crate::opus_codec::{OpusDecoder, OpusEncoder, OpusEncoderSettings};

pub use switchboard_sdp::Codec;

/// Encoding and decoding for the one [`Codec`] vocabulary (which lives in `switchboard_sdp`, the
/// negotiation name space, so that crate stays free of libopus).
pub trait CodecCoding {
    /// One encoded frame of silence of `ptime_ms`.
    fn silence_frame(self, ptime_ms: u32) -> Vec<u8>;
    /// Appends the stateless one-shot encoding of linear samples.
    fn encode(self, samples: &[i16], out: &mut Vec<u8>);
    /// Appends the stateless one-shot linear decoding of a payload.
    fn decode(self, payload: &[u8], out: &mut Vec<i16>);
}

impl CodecCoding for Codec {
    /// One encoded frame of silence of `ptime_ms`: constant bytes for G.711, zeros encoded by
    /// a fresh encoder for G.722 and Opus (for Opus, 20 ms unless `ptime_ms` is an Opus frame
    /// duration).
    fn silence_frame(self, ptime_ms: u32) -> Vec<u8> {
        match self {
            Codec::Pcmu | Codec::Pcma => vec![self.silence_byte(); self.bytes_per_frame(ptime_ms)],
            Codec::G722 => {
                let mut frame = Vec::with_capacity(self.bytes_per_frame(ptime_ms));
                G722Encoder::new().encode(&vec![0; self.samples_per_frame(ptime_ms)], &mut frame);
                frame
            }
            Codec::Opus => crate::opus_codec::opus_silence_packet(ptime_ms),
        }
    }

    /// Appends the encoding of linear samples (at the codec's sample rate) to `out`.
    ///
    /// Stateless one-shot: exact for G.711; G.722 starts a fresh encoder per call (fine for a
    /// whole signal at once); Opus appends one packet if `samples` is exactly one Opus frame at
    /// 24 kHz and nothing otherwise. Calls use the stateful [`crate::framing`] types instead.
    fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Codec::Pcmu => g711::ulaw_encode_slice(samples, out),
            Codec::Pcma => g711::alaw_encode_slice(samples, out),
            Codec::G722 => G722Encoder::new().encode(samples, out),
            Codec::Opus => {
                if let Ok(mut encoder) = OpusEncoder::new(OpusEncoderSettings::default()) {
                    let _ = encoder.encode(samples, out);
                }
            }
        }
    }

    /// Appends the linear decoding of an encoded payload to `out`.
    ///
    /// Stateless one-shot like [`encode`](Self::encode): G.722 and Opus use a fresh decoder;
    /// an undecodable Opus packet appends nothing.
    fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        match self {
            Codec::Pcmu => g711::ulaw_decode_slice(payload, out),
            Codec::Pcma => g711::alaw_decode_slice(payload, out),
            Codec::G722 => G722Decoder::new().decode(payload, out),
            Codec::Opus => {
                if let Ok(mut decoder) = OpusDecoder::new() {
                    let _ = decoder.decode(payload, out);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_sizes() {
        assert_eq!(Codec::Pcmu.samples_per_frame(20), 160);
        assert_eq!(Codec::Pcma.samples_per_frame(30), 240);
        assert_eq!(Codec::Pcmu.clock_rate(), 8000);
        assert_eq!(Codec::G722.samples_per_frame(20), 320);
        assert_eq!(Codec::G722.bytes_per_frame(20), 160);
        assert_eq!(Codec::Opus.samples_per_frame(20), 480);
    }

    #[test]
    fn rtp_clock_and_sample_rates_differ_for_g722_and_opus() {
        assert_eq!((Codec::G722.clock_rate(), Codec::G722.sample_rate()), (8000, 16000));
        assert_eq!((Codec::Opus.clock_rate(), Codec::Opus.sample_rate()), (48000, 24000));
        assert_eq!(Codec::Pcma.rtp_clock_rate(), Codec::Pcma.sample_rate());
        assert_eq!(Codec::G722.timestamp_units_per_frame(20), 160);
        assert_eq!(Codec::Opus.timestamp_units_per_frame(20), 960);
        assert_eq!(Codec::Pcmu.timestamp_units_per_frame(20), 160);
    }

    #[test]
    fn g722_and_opus_silence_frames_decode_to_near_zero() {
        let g722 = Codec::G722.silence_frame(20);
        assert_eq!(g722.len(), 160);
        let mut pcm = Vec::new();
        Codec::G722.decode(&g722, &mut pcm);
        assert_eq!(pcm.len(), 320);
        assert!(pcm.iter().all(|&s| s.abs() <= 8));

        let opus = Codec::Opus.silence_frame(20);
        assert!(!opus.is_empty() && opus.len() < 20, "{} bytes", opus.len());
        let mut pcm = Vec::new();
        Codec::Opus.decode(&opus, &mut pcm);
        assert_eq!(pcm.len(), 480);
        assert!(pcm.iter().all(|&s| s.abs() <= 2));
    }

    #[test]
    fn the_negotiation_vocabulary_agrees_with_the_codecs() {
        assert_eq!(Codec::Pcmu.silence_byte(), g711::ULAW_SILENCE);
        assert_eq!(Codec::Pcma.silence_byte(), g711::ALAW_SILENCE);
    }

    #[test]
    fn silence_frames_decode_to_near_zero() {
        for codec in [Codec::Pcmu, Codec::Pcma] {
            let frame = codec.silence_frame(20);
            assert_eq!(frame.len(), 160);
            let mut pcm = Vec::new();
            codec.decode(&frame, &mut pcm);
            assert!(pcm.iter().all(|&s| s.abs() <= 8), "{codec:?}");
        }
        assert!(Codec::Pcmu.silence_frame(20).iter().all(|&b| b == 0xFF));
        assert!(Codec::Pcma.silence_frame(20).iter().all(|&b| b == 0xD5));
    }
}
