//! Per-codec facts the media plane needs (framing, silence, encode/decode).

use crate::g711;

/// An RTP audio codec. Opus and G.722 will be added; keep per-codec facts in methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 mu-law, 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law, 8 kHz, one byte per sample.
    Pcma,
}

impl Codec {
    /// RTP clock rate in Hz (also the sample rate for G.711).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
        }
    }

    /// Samples (and RTP timestamp units) in one frame of `ptime_ms`.
    pub fn samples_per_frame(self, ptime_ms: u32) -> usize {
        (u64::from(self.clock_rate()) * u64::from(ptime_ms) / 1000) as usize
    }

    /// Encoded bytes in one frame of `ptime_ms`.
    pub fn bytes_per_frame(self, ptime_ms: u32) -> usize {
        match self {
            Codec::Pcmu | Codec::Pcma => self.samples_per_frame(ptime_ms),
        }
    }

    /// The encoding of one linear zero sample.
    pub fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => g711::ULAW_SILENCE,
            Codec::Pcma => g711::ALAW_SILENCE,
        }
    }

    /// One encoded frame of silence of `ptime_ms`.
    pub fn silence_frame(self, ptime_ms: u32) -> Vec<u8> {
        vec![self.silence_byte(); self.bytes_per_frame(ptime_ms)]
    }

    /// Appends the encoding of linear samples (at the codec's rate) to `out`.
    pub fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Codec::Pcmu => g711::ulaw_encode_slice(samples, out),
            Codec::Pcma => g711::alaw_encode_slice(samples, out),
        }
    }

    /// Appends the linear decoding of an encoded payload to `out`.
    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        match self {
            Codec::Pcmu => g711::ulaw_decode_slice(payload, out),
            Codec::Pcma => g711::alaw_decode_slice(payload, out),
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
