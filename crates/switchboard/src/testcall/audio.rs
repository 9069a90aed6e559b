//! The caller's audio: `say` text spoken by espeak-ng, `wav` files, both brought to 8 kHz mono;
//! G.711 frames; RFC 4733 telephone-event payloads; the energy test that tells agent speech
//! from silence.

use std::path::Path;
use std::time::Duration;

use switchboard_media::g711;
use switchboard_media::signal;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
pub const RATE: u32 = 8000;
/// A received frame louder than this carries agent speech; G.711 silence and comfort noise
/// stay far below it.
pub const SPEECH_DBFS: f64 = -45.0;
/// At most this much caller audio per turn (a longer file is an error, not a truncation).
const MAX_TURN_AUDIO_SECS: usize = 120;
const ESPEAK_TIMEOUT: Duration = Duration::from_secs(20);

/// Why a turn's audio could not be made.
#[derive(Debug, thiserror::Error)]
pub enum AudioError {
    #[error("espeak-ng could not be run: {0} (install it: scripts/install-deps.sh)")]
    EspeakMissing(String),
    #[error("espeak-ng failed: {0}")]
    Espeak(String),
    #[error("{path}: {reason}")]
    Wav { path: String, reason: String },
}

/// Text to 8 kHz speech through espeak-ng (`-w FILE`: a 22.05 kHz mono WAV).
pub async fn speak(text: &str, scratch: &Path) -> Result<Vec<i16>, AudioError> {
    let file = scratch.join(format!("say-{}.wav", rand::random::<u64>()));
    let mut command = tokio::process::Command::new("espeak-ng");
    // `--` keeps a text that starts with '-' from being read as an option.
    command.arg("-w").arg(&file).arg("--").arg(text).kill_on_drop(true);
    let output = tokio::time::timeout(ESPEAK_TIMEOUT, command.output())
        .await
        .map_err(|_| AudioError::Espeak(format!("no result within {ESPEAK_TIMEOUT:?}")))?
        .map_err(|e| AudioError::EspeakMissing(e.to_string()))?;
    if !output.status.success() {
        return Err(AudioError::Espeak(String::from_utf8_lossy(&output.stderr).trim().to_string()));
    }
    let read = signal::read_wav_mono_i16(&file);
    let _ = std::fs::remove_file(&file);
    let (rate, samples) = read.map_err(|e| AudioError::Espeak(format!("unreadable output: {e}")))?;
    Ok(to_8k(&samples, rate))
}

/// A 16-bit PCM mono WAV at any rate, as 8 kHz samples.
pub fn load_wav(path: &Path) -> Result<Vec<i16>, AudioError> {
    let wav_error = |reason: String| AudioError::Wav { path: path.display().to_string(), reason };
    let (rate, samples) = signal::read_wav_mono_i16(path).map_err(|e| wav_error(e.to_string()))?;
    if rate == 0 {
        return Err(wav_error("sample rate 0".into()));
    }
    if samples.len() / rate as usize > MAX_TURN_AUDIO_SECS {
        return Err(wav_error(format!("longer than {MAX_TURN_AUDIO_SECS} s")));
    }
    Ok(to_8k(&samples, rate))
}

/// Resamples to 8 kHz: the media crate's polyphase resampler where the ratio suits it, else a
/// low-pass (windowed sinc below 3.6 kHz) then linear interpolation (espeak-ng's 22.05 kHz
/// has no small integer ratio to 8 kHz).
pub fn to_8k(samples: &[i16], rate: u32) -> Vec<i16> {
    if rate == RATE {
        return samples.to_vec();
    }
    if let Ok(mut resampler) = switchboard_media::resample::Resampler::new(rate, RATE) {
        let mut out = Vec::with_capacity(samples.len() * RATE as usize / rate as usize + FRAME_SAMPLES);
        resampler.process(samples, &mut out);
        return out;
    }
    let filtered = if rate > RATE { low_pass(samples, rate, 3600.0) } else { samples.to_vec() };
    signal::resample_linear(&filtered, rate, RATE)
}

fn low_pass(samples: &[i16], rate: u32, cutoff_hz: f64) -> Vec<i16> {
    const TAPS: usize = 63;
    let fc = cutoff_hz / f64::from(rate);
    let middle = (TAPS / 2) as f64;
    let mut kernel: Vec<f64> = (0..TAPS)
        .map(|i| {
            let x = i as f64 - middle;
            let sinc = if x == 0.0 {
                2.0 * fc
            } else {
                (2.0 * std::f64::consts::PI * fc * x).sin() / (std::f64::consts::PI * x)
            };
            let window = 0.54 - 0.46 * (2.0 * std::f64::consts::PI * i as f64 / (TAPS - 1) as f64).cos();
            sinc * window
        })
        .collect();
    let sum: f64 = kernel.iter().sum();
    kernel.iter_mut().for_each(|k| *k /= sum);
    (0..samples.len())
        .map(|n| {
            let acc: f64 = kernel
                .iter()
                .enumerate()
                .filter_map(|(k, c)| {
                    (n + k).checked_sub(TAPS / 2).and_then(|i| samples.get(i)).map(|s| c * f64::from(*s))
                })
                .sum();
            acc.round().clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16
        })
        .collect()
}

/// The caller's speech without the silence a synthesiser or a recording leaves before and after
/// it (whole 20 ms frames below [`SPEECH_DBFS`]), so that `caller_end_ms`, and with it the
/// latency, is the end of the speech and not of the file.
pub fn trim_silence(samples: &[i16]) -> Vec<i16> {
    let frames: Vec<&[i16]> = samples.chunks(FRAME_SAMPLES).collect();
    let first = frames.iter().position(|f| is_speech(f));
    let last = frames.iter().rposition(|f| is_speech(f));
    match (first, last) {
        (Some(first), Some(last)) => frames.get(first..=last).map(|f| f.concat()).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The G.711 law of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Law {
    Ulaw,
    Alaw,
}

impl Law {
    pub fn encode(self, samples: &[i16], out: &mut Vec<u8>) {
        match self {
            Law::Ulaw => g711::ulaw_encode_slice(samples, out),
            Law::Alaw => g711::alaw_encode_slice(samples, out),
        }
    }

    pub fn decode(self, payload: &[u8], out: &mut Vec<i16>) {
        match self {
            Law::Ulaw => g711::ulaw_decode_slice(payload, out),
            Law::Alaw => g711::alaw_decode_slice(payload, out),
        }
    }

    /// The Realtime input format carrying this law unchanged (reference §2.2).
    pub fn realtime_format(self) -> switchboard_realtime::events::AudioFormat {
        match self {
            Law::Ulaw => switchboard_realtime::events::AudioFormat::Pcmu,
            Law::Alaw => switchboard_realtime::events::AudioFormat::Pcma,
        }
    }
}

/// Whether a received frame carries speech.
pub fn is_speech(samples: &[i16]) -> bool {
    !samples.is_empty() && signal::rms_dbfs(samples) > SPEECH_DBFS
}

/// RFC 4733 §2.3 event numbers: 0-9, * = 10, # = 11, A-D = 12-15.
pub fn dtmf_event(key: char) -> Option<u8> {
    match key {
        '0'..='9' => u8::try_from(u32::from(key) - u32::from('0')).ok(),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => u8::try_from(u32::from(key) - u32::from('A') + 12).ok(),
        _ => None,
    }
}

/// An RFC 4733 §2.3 payload: event, E bit, volume 10 (-10 dBm0), duration in timestamp units
/// since the event began.
pub fn dtmf_payload(event: u8, end: bool, duration_samples: u16) -> [u8; 4] {
    let [d0, d1] = duration_samples.to_be_bytes();
    [event, (u8::from(end) << 7) | 10, d0, d1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4733_payloads() {
        assert_eq!(dtmf_event('5'), Some(5));
        assert_eq!(dtmf_event('*'), Some(10));
        assert_eq!(dtmf_event('#'), Some(11));
        assert_eq!(dtmf_event('D'), Some(15));
        assert_eq!(dtmf_event('x'), None);
        assert_eq!(dtmf_payload(11, false, 160), [11, 10, 0, 160]);
        assert_eq!(dtmf_payload(1, true, 800), [1, 0x8A, 3, 32]);
    }

    #[test]
    fn silence_around_speech_is_trimmed_by_whole_frames() {
        let mut samples = vec![0i16; 160 * 3 + 40];
        samples.extend(signal::sine(300.0, RATE, 100, 8000));
        samples.extend(vec![3i16; 160 * 5]);
        let trimmed = trim_silence(&samples);
        // From the frame where the tone begins (frame 3, which starts 40 samples before it) to
        // the last frame holding any of it.
        assert_eq!(trimmed.len(), 160 * 6);
        assert_eq!(trimmed[..40], [0i16; 40]);
        assert!(trim_silence(&[0; 800]).is_empty());
    }

    #[test]
    fn resampling_to_8k_keeps_length_and_tone() {
        let tone = signal::sine(440.0, 22050, 1000, 8000);
        let out = to_8k(&tone, 22050);
        assert!((out.len() as i64 - 8000).abs() <= 2, "{}", out.len());
        let f = signal::dominant_frequency(&out[400..7600], RATE, 200.0, 1000.0, 10.0);
        assert!((f - 440.0).abs() <= 10.0, "{f}");
        assert!(is_speech(&out[1000..1160]));
        assert!(!is_speech(&[0; 160]));
        let out = to_8k(&signal::sine(440.0, 16000, 1000, 8000), 16000);
        assert!((out.len() as i64 - 8000).abs() <= 40, "{}", out.len());
    }
}
