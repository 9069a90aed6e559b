//! Signal helpers for tests, benchmarks and the simulator: tone generation, tone detection,
//! levels, envelope correlation (to prove audio crossed a path) and plain 16-bit WAV files.

use std::f64::consts::PI;
use std::fs;
use std::io;
use std::path::Path;

/// Level reported for digital silence, instead of minus infinity (keeps arithmetic finite).
pub const SILENCE_DBFS: f64 = -120.0;

/// A sine tone of `duration_ms` at `rate` Hz with peak `amplitude`.
pub fn sine(freq_hz: f64, rate: u32, duration_ms: u32, amplitude: i16) -> Vec<i16> {
    let count = (u64::from(rate) * u64::from(duration_ms) / 1000) as usize;
    let step = 2.0 * PI * freq_hz / f64::from(rate);
    (0..count).map(|n| (f64::from(amplitude) * (step * n as f64).sin()).round() as i16).collect()
}

/// Power of `samples` at one frequency (Goertzel algorithm), normalized so that a sine of peak
/// amplitude `A` at exactly that frequency gives about `A^2 / 4`, whatever the length.
pub fn goertzel_power(samples: &[i16], rate: u32, freq_hz: f64) -> f64 {
    if samples.is_empty() || rate == 0 {
        return 0.0;
    }
    let omega = 2.0 * PI * freq_hz / f64::from(rate);
    let coefficient = 2.0 * omega.cos();
    let (mut previous, mut before_previous) = (0.0f64, 0.0f64);
    for &sample in samples {
        let current = f64::from(sample) + coefficient * previous - before_previous;
        before_previous = previous;
        previous = current;
    }
    let power = previous * previous + before_previous * before_previous - coefficient * previous * before_previous;
    let n = samples.len() as f64;
    power / (n * n)
}

/// The frequency between `min_hz` and `max_hz` (scanned in `step_hz` steps) with the most
/// Goertzel power. Returns `min_hz` for empty input or a non-positive step.
pub fn dominant_frequency(samples: &[i16], rate: u32, min_hz: f64, max_hz: f64, step_hz: f64) -> f64 {
    if step_hz <= 0.0 {
        return min_hz;
    }
    let mut best = (min_hz, f64::MIN);
    let mut freq = min_hz;
    while freq <= max_hz {
        let power = goertzel_power(samples, rate, freq);
        if power > best.1 {
            best = (freq, power);
        }
        freq += step_hz;
    }
    best.0
}

/// RMS level relative to full scale (a full-scale sine is about -3 dBFS). Silence and empty
/// input give [`SILENCE_DBFS`].
pub fn rms_dbfs(samples: &[i16]) -> f64 {
    if samples.is_empty() {
        return SILENCE_DBFS;
    }
    let mean_square = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / samples.len() as f64;
    let rms = mean_square.sqrt();
    if rms <= 0.0 {
        return SILENCE_DBFS;
    }
    (20.0 * (rms / 32768.0).log10()).max(SILENCE_DBFS)
}

/// Linear RMS of consecutive `frame_ms` frames (the last partial frame is dropped): a loudness
/// envelope that survives codecs and resampling, for correlating speech across a path.
pub fn rms_envelope(samples: &[i16], rate: u32, frame_ms: u32) -> Vec<f64> {
    let frame = (u64::from(rate) * u64::from(frame_ms) / 1000) as usize;
    if frame == 0 {
        return Vec::new();
    }
    samples
        .chunks_exact(frame)
        .map(|chunk| (chunk.iter().map(|&s| f64::from(s) * f64::from(s)).sum::<f64>() / frame as f64).sqrt())
        .collect()
}

/// Pearson correlation of the common prefix of `a` and `b`; 0 when either is constant or
/// shorter than two values.
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (a.iter().take(n), b.iter().take(n));
    let mean_a = a.clone().sum::<f64>() / n as f64;
    let mean_b = b.clone().sum::<f64>() / n as f64;
    let (mut covariance, mut var_a, mut var_b) = (0.0, 0.0, 0.0);
    for (x, y) in a.zip(b) {
        let (dx, dy) = (x - mean_a, y - mean_b);
        covariance += dx * dy;
        var_a += dx * dx;
        var_b += dy * dy;
    }
    if var_a <= 0.0 || var_b <= 0.0 {
        return 0.0;
    }
    covariance / (var_a.sqrt() * var_b.sqrt())
}

/// The lag (in frames, `received` later than `reference`) in `0..=max_lag_frames` that best
/// correlates the two envelopes, and that correlation.
pub fn best_lag_correlation(reference_env: &[f64], received_env: &[f64], max_lag_frames: usize) -> (usize, f64) {
    let mut best = (0, f64::MIN);
    for lag in 0..=max_lag_frames.min(received_env.len()) {
        let r = pearson(reference_env, received_env.get(lag..).unwrap_or_default());
        if r > best.1 {
            best = (lag, r);
        }
    }
    if best.1 == f64::MIN { (0, 0.0) } else { best }
}

/// Linear-interpolation resampling: crude, for tests that only need "roughly the same signal
/// at another rate". Use [`crate::resample::Resampler`] for audio that is listened to.
pub fn resample_linear(samples: &[i16], from_hz: u32, to_hz: u32) -> Vec<i16> {
    let (Some(&last), false) = (samples.last(), from_hz == 0 || to_hz == 0) else {
        return Vec::new();
    };
    let count = (samples.len() as u64 * u64::from(to_hz) / u64::from(from_hz)) as usize;
    let step = f64::from(from_hz) / f64::from(to_hz);
    (0..count)
        .map(|i| {
            let position = i as f64 * step;
            let index = position.floor() as usize;
            let fraction = position - index as f64;
            // Past the end, hold the last sample.
            let a = f64::from(samples.get(index).copied().unwrap_or(last));
            let b = f64::from(samples.get(index + 1).copied().unwrap_or(last));
            (a + (b - a) * fraction).round() as i16
        })
        .collect()
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_owned())
}

/// Reads a mono 16-bit PCM WAV file, returning its sample rate and samples. Chunks other than
/// `fmt ` and `data` (such as the `LIST` chunks sox and baresip write) are skipped wherever
/// they are; a `data` size that overruns the file (streaming writers) is cut to the file.
pub fn read_wav_mono_i16(path: impl AsRef<Path>) -> io::Result<(u32, Vec<i16>)> {
    parse_wav_mono_i16(&fs::read(path)?)
}

/// [`read_wav_mono_i16`] on bytes already in memory.
pub fn parse_wav_mono_i16(bytes: &[u8]) -> io::Result<(u32, Vec<i16>)> {
    let Some((&[b'R', b'I', b'F', b'F', _, _, _, _, b'W', b'A', b'V', b'E'], mut chunks)) =
        bytes.split_first_chunk::<12>()
    else {
        return Err(invalid("not a RIFF/WAVE file"));
    };
    let mut rate = None;
    // Each chunk: 4-byte id, 4-byte little-endian size, body.
    while let Some((&[i0, i1, i2, i3, s0, s1, s2, s3], after_header)) = chunks.split_first_chunk::<8>() {
        let size = u32::from_le_bytes([s0, s1, s2, s3]) as usize;
        let (body, after_body) = after_header.split_at_checked(size).unwrap_or((after_header, &[]));
        match &[i0, i1, i2, i3] {
            b"fmt " => {
                let Some((&[f0, f1, c0, c1, r0, r1, r2, r3, _, _, _, _, _, _, b0, b1], _)) =
                    body.split_first_chunk::<16>()
                else {
                    return Err(invalid("fmt chunk too short"));
                };
                let format = u16::from_le_bytes([f0, f1]);
                let channels = u16::from_le_bytes([c0, c1]);
                let sample_rate = u32::from_le_bytes([r0, r1, r2, r3]);
                let bits = u16::from_le_bytes([b0, b1]);
                // 1 = PCM; 0xFFFE = WAVE_FORMAT_EXTENSIBLE (sox writes it for some files).
                if format != 1 && format != 0xFFFE {
                    return Err(invalid("WAV is not PCM"));
                }
                if channels != 1 || bits != 16 {
                    return Err(invalid("WAV is not mono 16-bit"));
                }
                rate = Some(sample_rate);
            }
            b"data" => {
                let rate = rate.ok_or_else(|| invalid("data chunk before fmt chunk"))?;
                let samples = body.as_chunks::<2>().0.iter().map(|&pair| i16::from_le_bytes(pair)).collect();
                return Ok((rate, samples));
            }
            _ => {}
        }
        // Chunks are padded to an even size (RIFF); a missing pad byte at the end is tolerated.
        chunks = if size & 1 == 1 { after_body.get(1..).unwrap_or_default() } else { after_body };
    }
    Err(invalid("no data chunk"))
}

/// Writes a mono 16-bit PCM WAV file.
pub fn write_wav_mono_i16(path: impl AsRef<Path>, rate: u32, samples: &[i16]) -> io::Result<()> {
    fs::write(path, wav_mono_i16_bytes(rate, samples))
}

/// The bytes of a mono 16-bit PCM WAV file.
pub fn wav_mono_i16_bytes(rate: u32, samples: &[i16]) -> Vec<u8> {
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes()); // byte rate
    out.extend_from_slice(&2u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for sample in samples {
        out.extend_from_slice(&sample.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sine_has_expected_length_peak_and_level() {
        let tone = sine(1000.0, 8000, 100, 16384);
        assert_eq!(tone.len(), 800);
        assert_eq!(tone.iter().copied().max(), Some(16384));
        // Half-scale sine: -6.02 - 3.01 dBFS.
        assert!((rms_dbfs(&tone) + 9.03).abs() < 0.05, "{}", rms_dbfs(&tone));
        assert_eq!(rms_dbfs(&[0; 10]), SILENCE_DBFS);
        assert_eq!(rms_dbfs(&[]), SILENCE_DBFS);
    }

    #[test]
    fn goertzel_finds_the_tone() {
        let tone = sine(1000.0, 8000, 200, 10000);
        let on = goertzel_power(&tone, 8000, 1000.0);
        assert!((on - 10000.0 * 10000.0 / 4.0).abs() < 1e6, "{on}");
        assert!(goertzel_power(&tone, 8000, 1500.0) < on / 1000.0);
        let found = dominant_frequency(&tone, 8000, 100.0, 3900.0, 10.0);
        assert!((found - 1000.0).abs() < 1.0);
    }

    #[test]
    fn pearson_and_lag() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.0]) - 1.0).abs() < 1e-12);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert_eq!(pearson(&[1.0, 1.0], &[1.0, 2.0]), 0.0);
        let reference: Vec<f64> = (0..100).map(|i| ((i * 37) % 17) as f64).collect();
        let mut received = vec![0.0; 7];
        received.extend(&reference);
        let (lag, r) = best_lag_correlation(&reference, &received, 20);
        assert_eq!(lag, 7);
        assert!(r > 0.999);
    }

    #[test]
    fn envelope_tracks_loudness() {
        let mut signal = sine(440.0, 8000, 100, 1000);
        signal.extend(sine(440.0, 8000, 100, 8000));
        let envelope = rms_envelope(&signal, 8000, 20);
        assert_eq!(envelope.len(), 10);
        assert!(envelope[7] > envelope[2] * 7.0);
    }

    #[test]
    fn linear_resample_keeps_the_tone() {
        let tone = sine(500.0, 8000, 100, 10000);
        let up = resample_linear(&tone, 8000, 24000);
        assert_eq!(up.len(), 2400);
        assert!((dominant_frequency(&up, 24000, 100.0, 2000.0, 10.0) - 500.0).abs() < 1.0);
    }

    #[test]
    fn wav_parse_survives_every_truncation_and_cuts_an_overrunning_data_chunk() {
        let samples = sine(300.0, 8000, 10, 5000);
        let bytes = wav_mono_i16_bytes(8000, &samples);
        for len in 0..bytes.len() {
            // Any prefix: an error or the samples present so far, never a panic.
            if let Ok((rate, parsed)) = parse_wav_mono_i16(&bytes[..len]) {
                assert_eq!(rate, 8000);
                assert_eq!(parsed[..], samples[..parsed.len()]);
            }
        }
        // A streaming writer's data size (0xFFFFFFFF) runs past the file: cut to the file.
        let mut streaming = bytes.clone();
        streaming[40..44].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_wav_mono_i16(&streaming).unwrap(), (8000, samples));
        // A chunk claiming more bytes than the file has ends the walk: no data chunk.
        let mut huge_chunk = bytes[..36].to_vec();
        huge_chunk.extend_from_slice(b"LIST");
        huge_chunk.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_wav_mono_i16(&huge_chunk).is_err());
    }

    #[test]
    fn wav_round_trip_and_extra_chunks() {
        let samples = sine(300.0, 16000, 50, 5000);
        let bytes = wav_mono_i16_bytes(16000, &samples);
        assert_eq!(bytes.len(), 44 + samples.len() * 2);
        assert_eq!(parse_wav_mono_i16(&bytes).unwrap(), (16000, samples.clone()));

        // Insert an odd-sized LIST chunk (padded) between fmt and data, as sox does.
        let mut with_list = bytes[..36].to_vec();
        with_list.extend_from_slice(b"LIST");
        with_list.extend_from_slice(&5u32.to_le_bytes());
        with_list.extend_from_slice(b"INFOx\0");
        with_list.extend_from_slice(&bytes[36..]);
        assert_eq!(parse_wav_mono_i16(&with_list).unwrap(), (16000, samples.clone()));

        let dir = std::env::temp_dir().join(format!("switchboard-media-wav-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tone.wav");
        write_wav_mono_i16(&path, 16000, &samples).unwrap();
        assert_eq!(read_wav_mono_i16(&path).unwrap(), (16000, samples));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wav_errors() {
        assert!(parse_wav_mono_i16(b"nope").is_err());
        let mut stereo = wav_mono_i16_bytes(8000, &[1, 2]);
        stereo[22] = 2;
        assert!(parse_wav_mono_i16(&stereo).is_err());
        let header_only = &wav_mono_i16_bytes(8000, &[])[..36];
        assert!(parse_wav_mono_i16(header_only).is_err());
        // Truncated data is read as far as it goes.
        let bytes = wav_mono_i16_bytes(8000, &[1, 2, 3]);
        assert_eq!(parse_wav_mono_i16(&bytes[..48]).unwrap().1, [1, 2]);
    }
}
