//! Local prompts the gateway plays itself, without the model (`realtime.reconnect_prompt`,
//! `realtime.give_up_prompt`): a built-in tone, nothing, or a WAV file (16-bit PCM mono, any
//! rate the resampler supports, at most [`MAX_PROMPT_SECS`] long). Files are read and checked
//! when the configuration is checked (a bad file fails start-up, not a call) and kept in memory.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use switchboard_media::g711;
use switchboard_media::resample::Resampler;
use switchboard_realtime::events::AudioFormat;

/// The longest prompt accepted: it is held in memory and played while the caller waits.
pub const MAX_PROMPT_SECS: u32 = 30;

/// Prompt files cached, at most (only two settings name files; a reload may name new ones).
const MAX_CACHED_FILES: usize = 8;

/// Why a prompt setting is unusable (the operator's configuration is at fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromptError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: String, reason: String },
    #[error("{path} is not a usable WAV file: {reason}")]
    BadWav { path: String, reason: String },
}

/// Mono 16-bit PCM at its own rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WavAudio {
    pub rate: u32,
    pub samples: Vec<i16>,
}

/// What a prompt setting plays.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum LocalPrompt {
    /// The built-in tone of that prompt.
    #[default]
    Tone,
    /// Nothing (silence).
    Silence,
    Wav(Arc<WavAudio>),
}

impl LocalPrompt {
    /// `tone`, `none`, or a WAV file path (read once, then served from memory).
    pub fn from_setting(setting: &str) -> Result<LocalPrompt, PromptError> {
        match setting {
            "tone" => Ok(LocalPrompt::Tone),
            "none" => Ok(LocalPrompt::Silence),
            path => cached_wav(path).map(LocalPrompt::Wav),
        }
    }

    /// The prompt's audio in the model's output format (what the call's outbound path plays);
    /// `tone` is the built-in tone's audio. `None`: nothing to play.
    pub fn audio(&self, format: AudioFormat, tone: impl FnOnce(AudioFormat) -> Vec<u8>) -> Option<Vec<u8>> {
        match self {
            LocalPrompt::Tone => Some(tone(format)),
            LocalPrompt::Silence => None,
            LocalPrompt::Wav(wav) => Some(convert(wav, format)),
        }
    }
}

fn convert(wav: &WavAudio, format: AudioFormat) -> Vec<u8> {
    let rate = match format {
        AudioFormat::Pcm { rate } => rate,
        AudioFormat::Pcmu | AudioFormat::Pcma => 8000,
    };
    let samples = match Resampler::new(wav.rate, rate) {
        Ok(mut resampler) => {
            let mut out = Vec::with_capacity(wav.samples.len() * rate as usize / wav.rate.max(1) as usize + 64);
            resampler.process(&wav.samples, &mut out);
            // The filter's delay: push zeros through so the end is not cut.
            resampler.process(&vec![0; resampler.flush_input_samples()], &mut out);
            out
        }
        // Checked when loaded: not reached.
        Err(_) => Vec::new(),
    };
    let mut out = Vec::with_capacity(samples.len() * 2);
    match format {
        AudioFormat::Pcmu => g711::ulaw_encode_slice(&samples, &mut out),
        AudioFormat::Pcma => g711::alaw_encode_slice(&samples, &mut out),
        AudioFormat::Pcm { .. } => out.extend(samples.iter().flat_map(|s| s.to_le_bytes())),
    }
    out
}

fn cached_wav(path: &str) -> Result<Arc<WavAudio>, PromptError> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<WavAudio>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    if let Some(wav) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(path) {
        return Ok(Arc::clone(wav));
    }
    let bytes = read_bounded(Path::new(path))?;
    let wav = Arc::new(parse_wav(&bytes).map_err(|reason| PromptError::BadWav { path: path.to_owned(), reason })?);
    let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
    if cache.len() >= MAX_CACHED_FILES {
        cache.clear();
    }
    cache.insert(path.to_owned(), Arc::clone(&wav));
    Ok(wav)
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, PromptError> {
    let unreadable = |reason: String| PromptError::Unreadable { path: path.display().to_string(), reason };
    let size = std::fs::metadata(path).map_err(|e| unreadable(e.to_string()))?.len();
    // 48 kHz 16-bit mono for the longest prompt, plus headers.
    let limit = u64::from(MAX_PROMPT_SECS) * 48_000 * 2 + 4096;
    if size > limit {
        return Err(unreadable(format!("{size} bytes is more than {MAX_PROMPT_SECS} s of audio")));
    }
    std::fs::read(path).map_err(|e| unreadable(e.to_string()))
}

/// A RIFF/WAVE file of 16-bit PCM, mono (RIFF chunks: `fmt ` then `data`, others skipped).
pub fn parse_wav(bytes: &[u8]) -> Result<WavAudio, String> {
    let header = bytes.get(..12).ok_or("shorter than a RIFF header")?;
    if header.get(..4) != Some(b"RIFF".as_slice()) || header.get(8..12) != Some(b"WAVE".as_slice()) {
        return Err("not RIFF/WAVE".into());
    }
    let mut rest = bytes.get(12..).unwrap_or_default();
    let mut format: Option<(u16, u16, u32, u16)> = None;
    while rest.len() >= 8 {
        let (id, after_id) = rest.split_at(4);
        let (size_bytes, body) = after_id.split_at(4);
        let size = u32::from_le_bytes(size_bytes.try_into().map_err(|_| "chunk size")?) as usize;
        let chunk = body.get(..size.min(body.len())).unwrap_or_default();
        match id {
            b"fmt " => {
                let field = |at: usize| chunk.get(at..at + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
                let rate = chunk.get(4..8).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                match (field(0), field(2), rate, field(14)) {
                    (Some(tag), Some(channels), Some(rate), Some(bits)) => format = Some((tag, channels, rate, bits)),
                    _ => return Err("fmt chunk too short".into()),
                }
            }
            b"data" => {
                let (tag, channels, rate, bits) = format.ok_or("data before fmt")?;
                // 1: PCM; 0xFFFE: WAVE_FORMAT_EXTENSIBLE (sox writes it for some files).
                if !matches!(tag, 1 | 0xFFFE) || channels != 1 || bits != 16 {
                    return Err(format!("need 16-bit PCM mono, got format {tag}, {channels} channels, {bits} bits"));
                }
                Resampler::new(rate, 8000).map_err(|e| format!("sample rate {rate}: {e}"))?;
                if chunk.len() / 2 > (MAX_PROMPT_SECS * rate) as usize {
                    return Err(format!("longer than {MAX_PROMPT_SECS} s"));
                }
                let samples = chunk.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
                return Ok(WavAudio { rate, samples });
            }
            _ => {}
        }
        // Chunks are padded to an even size (RIFF).
        rest = body.get(size + (size & 1)..).unwrap_or_default();
    }
    Err("no data chunk".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(rate: u32, channels: u16, bits: u16, samples: &[i16]) -> Vec<u8> {
        let data: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
        out.extend_from_slice(b"WAVE");
        // An unknown chunk first, odd-sized: skipped with its pad byte.
        out.extend_from_slice(b"LIST");
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&[1, 2, 3, 0]);
        out.extend_from_slice(b"fmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&channels.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&(rate * 2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&bits.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        out.extend_from_slice(&data);
        out
    }

    #[test]
    fn a_mono_16_bit_wav_is_read_and_converted_to_the_model_format() {
        let samples: Vec<i16> = (0..16_000).map(|n| ((n % 40) * 500 - 10_000) as i16).collect();
        let audio = parse_wav(&wav(16_000, 1, 16, &samples)).unwrap();
        assert_eq!(audio.rate, 16_000);
        assert_eq!(audio.samples.len(), 16_000);
        let prompt = LocalPrompt::Wav(Arc::new(audio));
        let ulaw = prompt.audio(AudioFormat::Pcmu, |_| Vec::new()).unwrap();
        assert!((8000..8100).contains(&ulaw.len()), "one second at 8 kHz: {}", ulaw.len());
        let pcm = prompt.audio(AudioFormat::Pcm { rate: 24_000 }, |_| Vec::new()).unwrap();
        assert!((48_000..48_400).contains(&pcm.len()), "one second of 24 kHz PCM16: {}", pcm.len());
    }

    #[test]
    fn unusable_wavs_say_why() {
        assert!(parse_wav(b"RIFF").unwrap_err().contains("shorter"));
        assert!(parse_wav(&wav(8000, 2, 16, &[0; 8])).unwrap_err().contains("mono"));
        assert!(parse_wav(&wav(8000, 1, 8, &[0; 8])).unwrap_err().contains("16-bit"));
        let too_long = vec![0i16; (MAX_PROMPT_SECS * 8000 + 8) as usize];
        assert!(parse_wav(&wav(8000, 1, 16, &too_long)).unwrap_err().contains("longer"));
        let mut truncated = wav(8000, 1, 16, &[0; 8]);
        truncated.truncate(30);
        assert!(parse_wav(&truncated).is_err());
    }

    #[test]
    fn settings_name_a_tone_nothing_or_a_file() {
        assert_eq!(LocalPrompt::from_setting("tone"), Ok(LocalPrompt::Tone));
        assert_eq!(LocalPrompt::Silence.audio(AudioFormat::Pcmu, |_| vec![1]), None);
        assert_eq!(LocalPrompt::Tone.audio(AudioFormat::Pcmu, |_| vec![1]), Some(vec![1]));
        let missing = LocalPrompt::from_setting("/nonexistent/prompt.wav").unwrap_err();
        assert!(matches!(missing, PromptError::Unreadable { .. }), "{missing}");
        let dir = std::env::temp_dir().join(format!("sb-prompt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.wav");
        std::fs::write(&path, wav(8000, 1, 16, &[100; 800])).unwrap();
        let LocalPrompt::Wav(audio) = LocalPrompt::from_setting(path.to_str().unwrap()).unwrap() else { panic!() };
        assert_eq!(audio.samples.len(), 800);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
