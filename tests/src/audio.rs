//! Test audio: speech from espeak-ng converted by sox, as WAV, raw µ-law and raw A-law, plus
//! independent G.711 decoding for judging captured audio.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::procs::run_bounded;

pub const PHRASE: &str = "hello world, this is a test of the telephony gateway";

/// Speech fixtures in `dir`: `hello8k.wav` (16-bit, 8 kHz mono), `hello.ul`, `hello.al` (raw G.711).
pub struct Speech {
    pub wav_8k: PathBuf,
    pub ulaw: PathBuf,
    pub alaw: PathBuf,
}

pub fn make_speech(dir: &Path) -> Speech {
    let wav = dir.join("hello.wav");
    let speech = Speech { wav_8k: dir.join("hello8k.wav"), ulaw: dir.join("hello.ul"), alaw: dir.join("hello.al") };
    let limit = Duration::from_secs(30);
    let ok = |out: std::process::Output, what: &str| {
        assert!(out.status.success(), "{what} failed: {}", String::from_utf8_lossy(&out.stderr));
    };
    ok(run_bounded("espeak-ng", Command::new("espeak-ng").arg("-w").arg(&wav).arg(PHRASE), limit), "espeak-ng");
    ok(
        run_bounded(
            "sox",
            Command::new("sox").arg(&wav).args(["-r", "8000", "-c", "1", "-b", "16"]).arg(&speech.wav_8k),
            limit,
        ),
        "sox wav",
    );
    ok(
        run_bounded(
            "sox",
            Command::new("sox").arg(&wav).args(["-r", "8000", "-c", "1", "-t", "ul"]).arg(&speech.ulaw),
            limit,
        ),
        "sox ul",
    );
    ok(
        run_bounded(
            "sox",
            Command::new("sox").arg(&wav).args(["-r", "8000", "-c", "1", "-t", "al"]).arg(&speech.alaw),
            limit,
        ),
        "sox al",
    );
    speech
}

/// ITU-T G.711 µ-law of one linear sample (the bias-and-segment form), written here
/// independently of the gateway's codec.
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut value = i32::from(sample);
    let sign: u8 = if value < 0 {
        value = -value;
        0x80
    } else {
        0
    };
    // The segment is the position of the highest set bit above bit 7 (0 for values below 256).
    let value = (value.min(32_635) + BIAS) as u32;
    let exponent = (31 - value.leading_zeros()).saturating_sub(7).min(7);
    let mantissa = (value >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) as u8 | mantissa as u8)
}

/// A raw µ-law file for SIPp's `rtp_stream` (`dir/name`): `silence_ms` of silence, `tone_ms` of a
/// loud `hz` tone (the simulator's energy VAD hears it as speech), then `after_ms` of silence.
/// Returns its path.
pub fn silence_tone_silence_ulaw(
    dir: &Path,
    name: &str,
    silence_ms: usize,
    hz: f64,
    tone_ms: usize,
    after_ms: usize,
) -> String {
    let mut audio = vec![0xFFu8; silence_ms * 8];
    audio.extend((0..tone_ms * 8).map(|n| {
        let t = n as f64 / 8000.0;
        linear_to_ulaw((f64::from(i16::MAX) * 0.7 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16)
    }));
    audio.extend(std::iter::repeat_n(0xFF, after_ms * 8));
    let path = dir.join(name);
    std::fs::write(&path, audio).expect("write audio");
    path.display().to_string()
}

/// ITU-T G.711 µ-law to linear, written here independently of the gateway's codec.
pub fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let sign = u & 0x80;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if sign != 0 { -magnitude } else { magnitude }) as i16
}

/// ITU-T G.711 A-law to linear.
pub fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let sign = a & 0x80;
    let exponent = (a >> 4) & 0x07;
    let mantissa = i32::from(a & 0x0f);
    let magnitude = if exponent == 0 { (mantissa << 4) + 8 } else { ((mantissa << 4) + 0x108) << (exponent - 1) };
    (if sign != 0 { magnitude } else { -magnitude }) as i16
}

/// Reads a 16-bit PCM WAV (mono), skipping any chunks before `data`. Returns (rate, samples).
pub fn read_wav(path: &Path) -> (u32, Vec<i16>) {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(data.len() >= 12 && &data[0..4] == b"RIFF" && &data[8..12] == b"WAVE", "not a WAV file");
    let mut at = 12;
    let mut rate = 0;
    let mut channels = 1u16;
    while at + 8 <= data.len() {
        let id = &data[at..at + 4];
        let len = u32::from_le_bytes([data[at + 4], data[at + 5], data[at + 6], data[at + 7]]) as usize;
        let body = &data[at + 8..(at + 8 + len).min(data.len())];
        if id == b"fmt " {
            channels = u16::from_le_bytes([body[2], body[3]]);
            rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
        } else if id == b"data" {
            let samples: Vec<i16> = body
                .chunks_exact(2 * usize::from(channels))
                .map(|frame| i16::from_le_bytes([frame[0], frame[1]]))
                .collect();
            return (rate, samples);
        }
        at += 8 + len + (len & 1);
    }
    panic!("{}: no data chunk", path.display());
}

/// RMS envelope in frames of `frame` samples.
/// A stereo PCM16 WAV parsed here, independently of the gateway's code: (rate, left, right).
/// Strict: canonical header, RIFF size consistent with the data size, whole frames.
pub fn read_stereo_wav(path: &Path) -> (u32, Vec<i16>, Vec<i16>) {
    let bytes = std::fs::read(path).expect("read recording");
    assert!(bytes.len() >= 44, "{}: shorter than a WAV header", path.display());
    let u32_at = |at: usize| u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]]);
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    assert_eq!(&bytes[0..4], b"RIFF");
    assert_eq!(&bytes[8..16], b"WAVEfmt ");
    assert_eq!(&bytes[36..40], b"data");
    assert_eq!((u16_at(20), u16_at(22), u16_at(34)), (1, 2, 16), "PCM, stereo, 16-bit");
    let data_len = u32_at(40) as usize;
    assert_eq!(u32_at(4) as usize, data_len + 36, "RIFF size matches the data");
    assert_eq!(data_len % 4, 0, "whole frames");
    assert!(44 + data_len <= bytes.len(), "the header claims more than the file holds");
    let samples: Vec<i16> =
        bytes[44..44 + data_len].chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect();
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    (u32_at(24), left, right)
}

pub fn envelope(samples: &[i16], frame: usize) -> Vec<f64> {
    samples
        .chunks(frame)
        .map(|c| (c.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / c.len() as f64).sqrt())
        .collect()
}

pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n < 2 {
        return 0.0;
    }
    let (a, b) = (&a[..n], &b[..n]);
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    if va == 0.0 || vb == 0.0 { 0.0 } else { cov / (va.sqrt() * vb.sqrt()) }
}

/// Best Pearson correlation of `reference`'s envelope against `received`'s envelope shifted by
/// 0..`max_lag` frames (the received audio starts later). Returns (lag in frames, r).
pub fn best_lag_correlation(reference: &[f64], received: &[f64], max_lag: usize) -> (usize, f64) {
    (0..=max_lag.min(received.len().saturating_sub(1)))
        .map(|lag| (lag, pearson(reference, &received[lag..])))
        .fold((0, f64::MIN), |best, cur| if cur.1 > best.1 { cur } else { best })
}

/// Energy of a tone at `freq` in `samples` (Goertzel), normalised by length.
pub fn goertzel(samples: &[i16], rate: f64, freq: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * freq / rate;
    let coeff = 2.0 * w.cos();
    let (mut s1, mut s2) = (0.0, 0.0);
    for &x in samples {
        let s0 = f64::from(x) + coeff * s1 - s2;
        s2 = s1;
        s1 = s0;
    }
    (s1 * s1 + s2 * s2 - coeff * s1 * s2) / (samples.len().max(1) as f64).powi(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_reference_points() {
        for sample in (i16::MIN..=i16::MAX).step_by(97) {
            let back = i32::from(ulaw_to_linear(linear_to_ulaw(sample)));
            // µ-law keeps about 1/16 of the magnitude's segment: within 1/16 + the bias.
            assert!(
                (back - i32::from(sample)).abs() <= (i32::from(sample).abs() / 16).max(8) + 132,
                "{sample} -> {back}"
            );
        }
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
    }

    #[test]
    fn correlation_finds_a_delayed_copy() {
        let reference: Vec<f64> = (0..100).map(|i| ((i as f64) * 0.3).sin().abs()).collect();
        let mut received = vec![0.0; 7];
        received.extend(reference.iter().map(|x| x * 0.5));
        let (lag, r) = best_lag_correlation(&reference, &received, 20);
        assert_eq!(lag, 7);
        assert!(r > 0.99);
    }
}
