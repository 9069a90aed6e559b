//! A stereo 16-bit PCM WAV file that survives `kill -9`: audio is appended, and the RIFF and
//! `data` sizes in the 44-byte header are rewritten only after the audio they count has been
//! written, so at any moment the header never claims more than the file holds: a player plays
//! up to the last header update. [`repair`] (run at start-up on the files of calls that were up
//! when the gateway died) sets the sizes to what the file really holds, in whole frames.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// The canonical header: RIFF, `fmt ` (16 bytes, PCM), `data`.
pub const HEADER_LEN: u64 = 44;
pub const CHANNELS: u16 = 2;
/// Bytes of one stereo frame (two 16-bit samples).
pub const FRAME_BYTES: u64 = 4;

/// The header of a stereo PCM16 file at `rate` with `data_len` bytes of audio.
pub fn header(rate: u32, data_len: u32) -> [u8; HEADER_LEN as usize] {
    let mut h = [0u8; HEADER_LEN as usize];
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        for &b in bytes {
            if let Some(slot) = h.get_mut(at) {
                *slot = b;
            }
            at += 1;
        }
    };
    put(b"RIFF");
    put(&data_len.saturating_add(36).to_le_bytes());
    put(b"WAVE");
    put(b"fmt ");
    put(&16u32.to_le_bytes());
    put(&1u16.to_le_bytes()); // PCM
    put(&CHANNELS.to_le_bytes());
    put(&rate.to_le_bytes());
    put(&(rate.saturating_mul(u32::from(CHANNELS) * 2)).to_le_bytes()); // byte rate
    put(&(CHANNELS * 2).to_le_bytes()); // block align
    put(&16u16.to_le_bytes()); // bits per sample
    put(b"data");
    put(&data_len.to_le_bytes());
    h
}

/// The largest `data` a RIFF file can describe (its sizes are 32-bit), in whole frames.
const MAX_DATA_LEN: u64 = (u32::MAX as u64 - 36) / FRAME_BYTES * FRAME_BYTES;

/// A recording being written.
pub struct WavWriter {
    file: File,
    rate: u32,
    /// Audio bytes written to the file.
    data_len: u64,
    /// Audio bytes the header says (what a player would play after a crash now).
    header_data_len: u64,
    bytes: Vec<u8>,
}

impl WavWriter {
    /// Creates (truncates) `path` with an empty stereo file at `rate`.
    pub fn create(path: &Path, rate: u32) -> std::io::Result<WavWriter> {
        let mut file = OpenOptions::new().create(true).write(true).truncate(true).open(path)?;
        file.write_all(&header(rate, 0))?;
        Ok(WavWriter { file, rate, data_len: 0, header_data_len: 0, bytes: Vec::new() })
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Appends interleaved stereo samples (left, right, left, ...). Audio beyond the 4 GiB a
    /// RIFF header can describe (about 74 hours at 8 kHz) is dropped; returns the frames kept.
    pub fn append(&mut self, interleaved: &[i16]) -> std::io::Result<usize> {
        let room = MAX_DATA_LEN.saturating_sub(self.data_len) / 2;
        let samples = interleaved.len().min(usize::try_from(room).unwrap_or(usize::MAX)) / 2 * 2;
        let Some(kept) = interleaved.get(..samples) else { return Ok(0) };
        self.bytes.clear();
        self.bytes.resize(kept.len() * 2, 0);
        for (slot, sample) in self.bytes.chunks_exact_mut(2).zip(kept) {
            slot.copy_from_slice(&sample.to_le_bytes());
        }
        self.file.write_all_at(&self.bytes, HEADER_LEN + self.data_len)?;
        self.data_len += self.bytes.len() as u64;
        Ok(kept.len() / 2)
    }

    /// Rewrites the sizes to cover everything written so far (after the audio: the header never
    /// runs ahead of the data).
    pub fn update_header(&mut self) -> std::io::Result<()> {
        if self.header_data_len == self.data_len {
            return Ok(());
        }
        write_sizes(&self.file, self.data_len)?;
        self.header_data_len = self.data_len;
        Ok(())
    }

    /// Frames written so far.
    pub fn frames(&self) -> u64 {
        self.data_len / FRAME_BYTES
    }

    /// The final header update.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.update_header()?;
        Ok(self.frames())
    }
}

fn write_sizes(file: &File, data_len: u64) -> std::io::Result<()> {
    let data = u32::try_from(data_len.min(MAX_DATA_LEN)).unwrap_or(u32::MAX);
    file.write_all_at(&data.saturating_add(36).to_le_bytes(), 4)?;
    file.write_all_at(&data.to_le_bytes(), 40)
}

/// What [`repair`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// The sizes already matched the file.
    Intact { frames: u64 },
    /// The sizes were rewritten (and a partial last frame cut off).
    Fixed { frames: u64 },
    /// The header itself was cut short (a crash right after the file was created): it was
    /// written again, empty, at `rate`.
    Rewritten { rate: u32 },
}

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a stereo PCM16 WAV written by the recorder")]
    NotOurs,
}

/// Makes a recording cut short by a crash playable: sizes set to the whole frames the file
/// holds. `rate` is used only when even the header was cut short.
pub fn repair(path: &Path, rate: u32) -> Result<Repair, RepairError> {
    let file = OpenOptions::new().read(true).write(true).open(path)?;
    let len = file.metadata()?.len();
    let mut head = [0u8; HEADER_LEN as usize];
    let read = read_up_to(&file, &mut head)?;
    let expected = header(rate, 0);
    if (read as u64) < HEADER_LEN {
        // Every byte there must be what we would have written, but for the sizes (4..8, 40..44)
        // and the rate fields (24..32), which need not match `rate`.
        let written = head.get(..read).unwrap_or_default();
        let ours = written
            .iter()
            .zip(expected.iter())
            .enumerate()
            .all(|(i, (a, b))| (4..8).contains(&i) || (24..32).contains(&i) || (40..44).contains(&i) || a == b);
        if !ours {
            return Err(RepairError::NotOurs);
        }
        file.set_len(0)?;
        file.write_all_at(&expected, 0)?;
        return Ok(Repair::Rewritten { rate });
    }
    let fixed_fields = [(0..4), (8..24), (32..40)];
    if fixed_fields.iter().any(|r| head.get(r.clone()) != expected.get(r.clone())) {
        return Err(RepairError::NotOurs);
    }
    let data_len = ((len - HEADER_LEN) / FRAME_BYTES * FRAME_BYTES).min(MAX_DATA_LEN);
    let said = head.get(40..44).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
    let riff = head.get(4..8).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes);
    let frames = data_len / FRAME_BYTES;
    if said.map(u64::from) == Some(data_len)
        && riff.map(u64::from) == Some(data_len + 36)
        && len == HEADER_LEN + data_len
    {
        return Ok(Repair::Intact { frames });
    }
    file.set_len(HEADER_LEN + data_len)?;
    write_sizes(&file, data_len)?;
    Ok(Repair::Fixed { frames })
}

fn read_up_to(mut file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(rest) = buf.get_mut(filled..) else { break };
        match file.read(rest)? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// A parsed recording (tests and tools): rate, channels, interleaved samples.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub rate: u32,
    pub channels: u16,
    pub samples: Vec<i16>,
}

/// Parses a canonical PCM16 WAV strictly: the RIFF size must match the data size, and the data
/// must be whole frames and within the file.
pub fn parse(bytes: &[u8]) -> Result<Parsed, String> {
    let u32_at = |at: usize| {
        bytes.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_le_bytes).ok_or("short header")
    };
    let u16_at = |at: usize| {
        bytes.get(at..at + 2).and_then(|b| <[u8; 2]>::try_from(b).ok()).map(u16::from_le_bytes).ok_or("short header")
    };
    if bytes.get(0..4) != Some(b"RIFF") || bytes.get(8..16) != Some(b"WAVEfmt ") || bytes.get(36..40) != Some(b"data") {
        return Err("not a canonical WAV".into());
    }
    if u16_at(20)? != 1 || u16_at(34)? != 16 {
        return Err("not PCM16".into());
    }
    let channels = u16_at(22)?;
    let rate = u32_at(24)?;
    let data_len = u32_at(40)? as usize;
    if u32_at(4)? as usize != data_len + 36 {
        return Err(format!("RIFF size {} does not match data size {data_len}", u32_at(4)?));
    }
    if channels == 0 || !data_len.is_multiple_of(usize::from(channels) * 2) {
        return Err("data is not whole frames".into());
    }
    let data = bytes.get(44..44 + data_len).ok_or("data size beyond the end of the file")?;
    let samples = data.as_chunks::<2>().0.iter().map(|&pair| i16::from_le_bytes(pair)).collect();
    Ok(Parsed { rate, channels, samples })
}

#[cfg(test)]
mod tests {
    use rand::{Rng, SeedableRng};

    use super::*;

    fn sample_audio(frames: usize) -> Vec<i16> {
        (0..frames * 2).map(|i| (i as i16).wrapping_mul(97)).collect()
    }

    #[test]
    fn a_finished_file_parses_with_everything_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut wav = WavWriter::create(&path, 8000).unwrap();
        let audio = sample_audio(8000);
        wav.append(&audio[..6000]).unwrap();
        wav.update_header().unwrap();
        wav.append(&audio[6000..]).unwrap();
        assert_eq!(wav.finish().unwrap(), 8000);
        let parsed = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!((parsed.rate, parsed.channels), (8000, 2));
        assert_eq!(parsed.samples, audio);
    }

    #[test]
    fn before_a_header_update_the_file_plays_what_the_last_update_covered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let mut wav = WavWriter::create(&path, 16000).unwrap();
        let audio = sample_audio(1000);
        wav.append(&audio[..800]).unwrap();
        wav.update_header().unwrap();
        wav.append(&audio[800..]).unwrap();
        // Killed here: no finish.
        drop(wav);
        let parsed = parse(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(parsed.samples, audio[..800]);
        assert_eq!(repair(&path, 16000).unwrap(), Repair::Fixed { frames: 1000 });
        assert_eq!(parse(&std::fs::read(&path).unwrap()).unwrap().samples, audio);
        assert_eq!(repair(&path, 16000).unwrap(), Repair::Intact { frames: 1000 });
    }

    /// The crash-safety property: a file cut anywhere (a crash between a write and the header
    /// update, or in the middle of a write) is, after repair, a valid WAV whose frames are a
    /// prefix of what was written.
    #[test]
    fn truncated_anywhere_then_repaired_is_a_valid_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let original = dir.path().join("full.wav");
        let audio = sample_audio(4000);
        let mut wav = WavWriter::create(&original, 8000).unwrap();
        for chunk in audio.chunks(320) {
            wav.append(chunk).unwrap();
        }
        wav.finish().unwrap();
        let full = std::fs::read(&original).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed_0009);
        let mut cuts: Vec<usize> = (0..300).map(|_| rng.random_range(0..=full.len())).collect();
        cuts.extend([0, 1, 27, 43, 44, 45, 46, 47, 48, full.len()]);
        for cut in cuts {
            let path = dir.path().join(format!("cut{cut}.wav"));
            std::fs::write(&path, &full[..cut]).unwrap();
            repair(&path, 8000).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            let parsed = parse(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
            assert_eq!((parsed.rate, parsed.channels), (8000, 2), "cut at {cut}");
            let whole_frames = cut.saturating_sub(44) / 4;
            assert_eq!(parsed.samples.len(), whole_frames * 2, "cut at {cut}");
            assert_eq!(parsed.samples, audio[..whole_frames * 2], "cut at {cut}: not a prefix");
        }
    }

    #[test]
    fn repair_leaves_other_files_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("other.wav");
        std::fs::write(&path, b"not a wav file at all, just some text that is long enough").unwrap();
        assert!(matches!(repair(&path, 8000), Err(RepairError::NotOurs)));
        assert_eq!(std::fs::read(&path).unwrap(), b"not a wav file at all, just some text that is long enough");
    }
}
