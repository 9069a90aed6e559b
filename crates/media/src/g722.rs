//! G.722 (ITU-T G.722, 64 kbit/s mode 1) with the public-domain SpanDSP-derived codec of
//! `ezk-g722`: 16 kHz audio, one byte per two samples.
//!
//! RFC 3551 §4.5.2: G.722's RTP clock rate is 8000 Hz although it samples at 16 kHz (an error in
//! RFC 1890 kept for compatibility), so a 20 ms frame is 320 samples, 160 bytes and 160
//! timestamp units.

use ezk_g722::libg722::Bitrate;
use ezk_g722::libg722::decoder::Decoder;
use ezk_g722::libg722::encoder::Encoder;

/// G.722's audio sample rate.
pub const G722_SAMPLE_RATE: u32 = crate::Codec::G722.sample_rate();

/// A stateful G.722 encoder (the ADPCM predictors and QMF history carry across frames).
pub struct G722Encoder {
    /// Boxed: the state is ~470 bytes and lives in enums next to pointer-sized variants.
    inner: Box<Encoder>,
}

impl G722Encoder {
    /// A 64 kbit/s encoder for 16 kHz input with fresh state.
    pub fn new() -> Self {
        G722Encoder { inner: Box::new(Encoder::new(Bitrate::Mode1_64000, false, false)) }
    }

    /// Appends the encoding of 16 kHz samples to `out` (one byte per two samples; an odd
    /// trailing sample is dropped by the codec, so feed even counts).
    pub fn encode(&mut self, samples: &[i16], out: &mut Vec<u8>) {
        out.extend_from_slice(&self.inner.encode(samples));
    }

    /// Forgets the codec history.
    pub fn reset(&mut self) {
        *self = G722Encoder::new();
    }
}

impl Default for G722Encoder {
    fn default() -> Self {
        G722Encoder::new()
    }
}

impl std::fmt::Debug for G722Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G722Encoder").finish_non_exhaustive()
    }
}

/// A stateful G.722 decoder.
pub struct G722Decoder {
    inner: Box<Decoder>,
}

impl G722Decoder {
    /// A 64 kbit/s decoder producing 16 kHz samples, with fresh state.
    pub fn new() -> Self {
        G722Decoder { inner: Box::new(Decoder::new(Bitrate::Mode1_64000, false, false)) }
    }

    /// Appends the 16 kHz samples of `payload` to `out` (two per byte).
    pub fn decode(&mut self, payload: &[u8], out: &mut Vec<i16>) {
        out.extend_from_slice(&self.inner.decode(payload));
    }

    /// Forgets the codec history.
    pub fn reset(&mut self) {
        *self = G722Decoder::new();
    }
}

impl Default for G722Decoder {
    fn default() -> Self {
        G722Decoder::new()
    }
}

impl std::fmt::Debug for G722Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("G722Decoder").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{dominant_frequency, rms_dbfs, sine};

    /// Signal-to-noise ratio of `decoded` against `reference`, in dB, after aligning for the
    /// codec's delay (searched over the first few milliseconds).
    fn snr_db(reference: &[i16], decoded: &[i16]) -> f64 {
        let skip = 320;
        (0..64)
            .map(|delay| {
                let (mut signal, mut noise) = (0.0f64, 0.0f64);
                for i in skip..reference.len() - 64 {
                    let r = f64::from(reference[i]);
                    let d = f64::from(decoded[i + delay]);
                    signal += r * r;
                    noise += (r - d) * (r - d);
                }
                10.0 * (signal / noise.max(1e-9)).log10()
            })
            .fold(f64::MIN, f64::max)
    }

    #[test]
    fn one_kilohertz_tone_survives_with_snr_above_20_db() {
        let tone = sine(1000.0, G722_SAMPLE_RATE, 500, 8000);
        let mut encoder = G722Encoder::new();
        let mut decoder = G722Decoder::new();
        let mut decoded = Vec::new();
        for frame in tone.chunks(320) {
            let mut payload = Vec::new();
            encoder.encode(frame, &mut payload);
            assert_eq!(payload.len(), 160, "20 ms at 64 kbit/s");
            decoder.decode(&payload, &mut decoded);
        }
        assert_eq!(decoded.len(), tone.len());
        let freq = dominant_frequency(&decoded[1600..], G722_SAMPLE_RATE, 200.0, 7000.0, 10.0);
        assert!((freq - 1000.0).abs() < 1.0, "{freq}");
        let snr = snr_db(&tone, &decoded);
        assert!(snr > 20.0, "SNR {snr:.1} dB");
        assert!((rms_dbfs(&decoded[1600..]) - rms_dbfs(&tone)).abs() < 1.0);
    }

    #[test]
    fn reset_restarts_from_fresh_state() {
        let tone = sine(700.0, G722_SAMPLE_RATE, 40, 8000);
        let mut fresh = Vec::new();
        G722Encoder::new().encode(&tone, &mut fresh);
        let mut encoder = G722Encoder::new();
        let mut used = Vec::new();
        encoder.encode(&sine(300.0, G722_SAMPLE_RATE, 40, 9000), &mut used);
        encoder.reset();
        let mut again = Vec::new();
        encoder.encode(&tone, &mut again);
        assert_eq!(again, fresh);
    }
}
