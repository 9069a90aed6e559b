//! Audio helpers of the simulator: decoding the session formats to linear PCM, re-encoding,
//! 8 kHz <-> 24 kHz conversion for echo, tone synthesis and frame energy.

use switchboard_media::g711;
use switchboard_realtime::events::AudioFormat;

/// Decodes `bytes` in `format` to linear samples at the format's own rate. A trailing odd byte
/// of PCM is ignored.
pub fn decode(format: AudioFormat, bytes: &[u8]) -> Vec<i16> {
    match format {
        AudioFormat::Pcm { .. } => bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect(),
        AudioFormat::Pcmu => bytes.iter().map(|&b| g711::ulaw_decode(b)).collect(),
        AudioFormat::Pcma => bytes.iter().map(|&b| g711::alaw_decode(b)).collect(),
    }
}

/// Encodes linear samples (already at the format's rate) into `format`.
pub fn encode(format: AudioFormat, samples: &[i16]) -> Vec<u8> {
    match format {
        AudioFormat::Pcm { .. } => samples.iter().flat_map(|s| s.to_le_bytes()).collect(),
        AudioFormat::Pcmu => samples.iter().map(|&s| g711::ulaw_encode(s)).collect(),
        AudioFormat::Pcma => samples.iter().map(|&s| g711::alaw_encode(s)).collect(),
    }
}

/// Converts between the two rates the API uses (8 and 24 kHz). Upsampling interpolates
/// linearly and keeps every original sample at index 3n; downsampling keeps every third
/// sample. So 8k -> 24k -> 8k is lossless (echo tests compare samples exactly); true 24 kHz
/// content aliases, which a test oracle can live with.
pub fn resample(samples: &[i16], from_rate: u32, to_rate: u32) -> Vec<i16> {
    if from_rate == to_rate || samples.is_empty() {
        return samples.to_vec();
    }
    if to_rate > from_rate && to_rate.is_multiple_of(from_rate) {
        let factor = (to_rate / from_rate) as usize;
        let mut out = Vec::with_capacity(samples.len() * factor);
        for (i, &s) in samples.iter().enumerate() {
            let next = samples.get(i + 1).copied().unwrap_or(s);
            for k in 0..factor {
                let t = k as f64 / factor as f64;
                let v = f64::from(s) + (f64::from(next) - f64::from(s)) * t;
                out.push(v.round() as i16);
            }
        }
        return out;
    }
    if from_rate > to_rate && from_rate.is_multiple_of(to_rate) {
        let factor = (from_rate / to_rate) as usize;
        return samples.iter().step_by(factor).copied().collect();
    }
    // Other ratios never occur in the API (24 kHz is the only PCM rate): nearest sample.
    let out_len = samples.len() as u64 * u64::from(to_rate) / u64::from(from_rate);
    (0..out_len)
        .map(|i| {
            let src = (i * u64::from(from_rate) / u64::from(to_rate)) as usize;
            samples.get(src).copied().unwrap_or(0)
        })
        .collect()
}

/// A sine of `freq_hz` at `rate`, `duration_ms` long, `amplitude` in 0..1 of full scale.
pub fn sine(freq_hz: f64, rate: u32, duration_ms: u32, amplitude: f64) -> Vec<i16> {
    let count = (u64::from(rate) * u64::from(duration_ms) / 1000) as usize;
    let peak = amplitude.clamp(0.0, 1.0) * f64::from(i16::MAX);
    (0..count)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            (peak * (2.0 * std::f64::consts::PI * freq_hz * t).sin()).round() as i16
        })
        .collect()
}

/// Speech-like audio for long answers: a 180 Hz voice with harmonics, amplitude-modulated at
/// about 4 syllables per second, so energy detectors see talk spurts, not a steady tone.
pub fn babble(rate: u32, duration_ms: u32) -> Vec<i16> {
    let count = (u64::from(rate) * u64::from(duration_ms) / 1000) as usize;
    let peak = 0.4 * f64::from(i16::MAX);
    (0..count)
        .map(|n| {
            let t = n as f64 / f64::from(rate);
            let tau = 2.0 * std::f64::consts::PI;
            let voice = (tau * 180.0 * t).sin() + 0.5 * (tau * 360.0 * t).sin() + 0.25 * (tau * 540.0 * t).sin();
            let envelope = 0.6 + 0.4 * (tau * 4.0 * t).sin();
            (peak * envelope * voice / 1.75).round() as i16
        })
        .collect()
}

/// RMS level of a frame in dBFS (full scale = 0 dB); silence gives -120.
pub fn rms_dbfs(frame: &[i16]) -> f64 {
    if frame.is_empty() {
        return -120.0;
    }
    let sum: f64 = frame.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (sum / frame.len() as f64).sqrt();
    if rms <= 0.0 { -120.0 } else { (20.0 * (rms / 32768.0).log10()).max(-120.0) }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn pcm_round_trips() {
        let samples = vec![0, 1, -1, i16::MAX, i16::MIN, 1234];
        let bytes = encode(AudioFormat::PCM24K, &samples);
        assert_eq!(bytes.len(), 12);
        assert_eq!(decode(AudioFormat::PCM24K, &bytes), samples);
    }

    #[test]
    fn ulaw_bytes_survive_decode_encode() {
        let tone = encode(AudioFormat::Pcmu, &sine(440.0, 8000, 100, 0.5));
        let again = encode(AudioFormat::Pcmu, &decode(AudioFormat::Pcmu, &tone));
        assert_eq!(again, tone);
    }

    #[test]
    fn upsampling_then_downsampling_is_lossless() {
        let tone = sine(440.0, 8000, 100, 0.5);
        let up = resample(&tone, 8000, 24000);
        assert_eq!(up.len(), tone.len() * 3);
        assert_eq!(resample(&up, 24000, 8000), tone);
    }

    #[test]
    fn levels() {
        assert_eq!(rms_dbfs(&[0; 160]), -120.0);
        let full = sine(1000.0, 8000, 20, 1.0);
        // A full-scale sine has an RMS of -3 dBFS.
        assert!((rms_dbfs(&full) + 3.0).abs() < 0.2, "{}", rms_dbfs(&full));
        let quiet = sine(1000.0, 8000, 20, 0.001);
        assert!(rms_dbfs(&quiet) < -60.0);
    }

    #[test]
    fn sine_length_follows_rate_and_duration() {
        assert_eq!(sine(440.0, 24000, 1000, 0.5).len(), 24000);
        assert_eq!(babble(8000, 500).len(), 4000);
    }
}
