//! Opus (RFC 6716) over RTP (RFC 7587) through libopus: mono, run at 24 kHz directly (the
//! model's rate, so no resampler), VOIP application.
//!
//! RFC 7587 §4.1: the RTP clock is 48 kHz whatever rate the codec actually runs at, so a 20 ms
//! packet advances the RTP timestamp by 960 while it carries 480 samples at 24 kHz.

use thiserror::Error;

/// The rate we run the Opus encoder and decoder at (the model's PCM rate).
pub const OPUS_SAMPLE_RATE: u32 = crate::Codec::Opus.sample_rate();
/// The RTP clock rate of Opus (RFC 7587 §4.1).
pub const OPUS_RTP_CLOCK_RATE: u32 = crate::Codec::Opus.rtp_clock_rate();
/// Samples in the longest Opus packet (120 ms, RFC 6716 §3.2.5) at [`OPUS_SAMPLE_RATE`].
pub const MAX_PACKET_SAMPLES: usize = 2880;
/// Output buffer for one encoded packet: RFC 6716 §3.4 caps a frame at 1275 bytes.
const MAX_PACKET_BYTES: usize = 1500;
/// Samples in 20 ms at [`OPUS_SAMPLE_RATE`]: the duration assumed before any packet arrived.
const DEFAULT_PACKET_SAMPLES: usize = 480;

/// Why an Opus operation failed.
#[derive(Debug, Error)]
pub enum OpusError {
    /// libopus refused (invalid packet, invalid argument, ...).
    #[error("libopus: {0}")]
    Codec(#[from] opus::Error),
    /// The input is not one Opus frame duration (2.5, 5, 10, 20, 40 or 60 ms).
    #[error("{samples} samples at 24 kHz is not an Opus frame duration")]
    FrameSize {
        /// The number of samples given.
        samples: usize,
    },
}

/// How our Opus encoder runs. The peer's SDP limits are applied with
/// [`with_peer_limits`](Self::with_peer_limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpusEncoderSettings {
    /// Target bitrate in bit/s (default 32000: wideband speech with room for FEC).
    pub bitrate_bps: u32,
    /// Encoder complexity 0-10 (default 5: most of the quality at half the CPU of 10).
    pub complexity: u8,
    /// Whether to add in-band FEC (LBRR) so the peer can recover a lost packet (default true).
    pub use_inband_fec: bool,
    /// Expected loss, which sizes the FEC (default 10).
    pub packet_loss_percent: u8,
    /// The peer's `maxplaybackrate` (RFC 7587 §6.1): caps the encoded bandwidth. `None` means
    /// no cap beyond our 24 kHz input.
    pub max_playback_rate: Option<u32>,
}

impl Default for OpusEncoderSettings {
    fn default() -> Self {
        OpusEncoderSettings {
            bitrate_bps: 32_000,
            complexity: 5,
            use_inband_fec: true,
            packet_loss_percent: 10,
            max_playback_rate: None,
        }
    }
}

impl OpusEncoderSettings {
    /// Applies the receiver's fmtp (RFC 7587 §6.1): `maxaveragebitrate` caps our bitrate,
    /// `maxplaybackrate` caps our bandwidth, and `useinbandfec` (when given) says whether the
    /// peer's decoder uses FEC at all, so we only spend bits on it when it does.
    pub fn with_peer_limits(
        mut self,
        max_average_bitrate: Option<u32>,
        max_playback_rate: Option<u32>,
        peer_uses_inband_fec: Option<bool>,
    ) -> Self {
        if let Some(max) = max_average_bitrate {
            // RFC 7587 §6.1 range for maxaveragebitrate.
            self.bitrate_bps = self.bitrate_bps.min(max.clamp(6_000, 510_000));
        }
        if let Some(rate) = max_playback_rate {
            self.max_playback_rate = Some(self.max_playback_rate.map_or(rate, |own| own.min(rate)));
        }
        if let Some(fec) = peer_uses_inband_fec {
            self.use_inband_fec = self.use_inband_fec && fec;
        }
        self
    }

    /// The widest Opus bandwidth a playback rate can render.
    fn max_bandwidth(&self) -> opus::Bandwidth {
        match self.max_playback_rate {
            Some(rate) if rate <= 8_000 => opus::Bandwidth::Narrowband,
            Some(rate) if rate <= 12_000 => opus::Bandwidth::Mediumband,
            Some(rate) if rate <= 16_000 => opus::Bandwidth::Wideband,
            // 24 kHz input cannot carry more than super-wideband anyway.
            _ => opus::Bandwidth::Superwideband,
        }
    }
}

/// True when `samples` at 24 kHz is one Opus frame: 2.5, 5, 10, 20, 40 or 60 ms.
pub fn is_opus_frame_size(samples: usize) -> bool {
    matches!(samples, 60 | 120 | 240 | 480 | 960 | 1440)
}

/// A mono 24 kHz Opus encoder producing one packet per call.
#[derive(Debug)]
pub struct OpusEncoder {
    inner: opus::Encoder,
    settings: OpusEncoderSettings,
}

impl OpusEncoder {
    /// An encoder configured with `settings`.
    pub fn new(settings: OpusEncoderSettings) -> Result<Self, OpusError> {
        let mut inner = opus::Encoder::new(OPUS_SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        let bitrate = i32::try_from(settings.bitrate_bps.clamp(6_000, 510_000)).unwrap_or(32_000);
        inner.set_bitrate(opus::Bitrate::Bits(bitrate))?;
        inner.set_complexity(i32::from(settings.complexity.min(10)))?;
        inner.set_inband_fec(settings.use_inband_fec)?;
        inner.set_packet_loss_perc(i32::from(settings.packet_loss_percent.min(100)))?;
        inner.set_max_bandwidth(settings.max_bandwidth())?;
        // The model only speaks: keep libopus in SILK/hybrid mode, which is where in-band FEC
        // lives (CELT-only frames carry none), even on tonal passages it might take for music.
        inner.set_signal(opus::Signal::Voice)?;
        Ok(OpusEncoder { inner, settings })
    }

    /// The settings this encoder was made with.
    pub fn settings(&self) -> OpusEncoderSettings {
        self.settings
    }

    /// Encodes one frame (see [`is_opus_frame_size`]) of 24 kHz samples and appends the packet
    /// to `out`. Returns the packet length.
    pub fn encode(&mut self, samples: &[i16], out: &mut Vec<u8>) -> Result<usize, OpusError> {
        if !is_opus_frame_size(samples.len()) {
            return Err(OpusError::FrameSize { samples: samples.len() });
        }
        let mut packet = [0u8; MAX_PACKET_BYTES];
        let len = self.inner.encode(samples, &mut packet)?;
        // libopus returns at most the buffer's length; `get` keeps that a promise, not a panic.
        let encoded = packet.get(..len).unwrap_or(&packet);
        out.extend_from_slice(encoded);
        Ok(encoded.len())
    }

    /// Forgets the encoder history (e.g. at barge-in), keeping the settings.
    pub fn reset(&mut self) {
        // Resetting a valid encoder cannot fail in libopus; nothing useful to do if it did.
        let _ = self.inner.reset_state();
    }
}

/// A mono 24 kHz Opus decoder with loss handling: in-band FEC and packet loss concealment.
#[derive(Debug)]
pub struct OpusDecoder {
    inner: opus::Decoder,
    /// Duration of the last decoded packet, the best guess for a lost one.
    last_packet_samples: usize,
    buffer: Vec<i16>,
}

impl OpusDecoder {
    /// A decoder with fresh state.
    pub fn new() -> Result<Self, OpusError> {
        Ok(OpusDecoder {
            inner: opus::Decoder::new(OPUS_SAMPLE_RATE, opus::Channels::Mono)?,
            last_packet_samples: DEFAULT_PACKET_SAMPLES,
            buffer: vec![0; MAX_PACKET_SAMPLES],
        })
    }

    /// Samples per packet assumed for a lost packet (the last packet's duration).
    pub fn last_packet_samples(&self) -> usize {
        self.last_packet_samples
    }

    /// Decodes a packet of any duration (2.5 to 120 ms) and appends its 24 kHz samples to
    /// `out`. Returns the number of samples appended.
    pub fn decode(&mut self, packet: &[u8], out: &mut Vec<i16>) -> Result<usize, OpusError> {
        let samples = self.inner.get_nb_samples(packet)?;
        if samples == 0 || samples > MAX_PACKET_SAMPLES {
            return Err(OpusError::FrameSize { samples });
        }
        let decoded = self.decode_into(packet, samples, false, out)?;
        self.last_packet_samples = decoded;
        Ok(decoded)
    }

    /// RFC 7587 §3.2 / RFC 6716 §2.1.7: recovers the packet lost just before `next_packet` from
    /// the in-band FEC it carries (or conceals it when it has none) and appends the samples.
    /// Call [`decode`](Self::decode) on `next_packet` afterwards.
    pub fn recover_from_fec(&mut self, next_packet: &[u8], out: &mut Vec<i16>) -> Result<usize, OpusError> {
        self.decode_into(next_packet, self.last_packet_samples, true, out)
    }

    /// Packet loss concealment for one lost packet of the last packet's duration.
    pub fn conceal(&mut self, out: &mut Vec<i16>) -> Result<usize, OpusError> {
        self.decode_into(&[], self.last_packet_samples, false, out)
    }

    /// Decodes `samples` samples (at most [`MAX_PACKET_SAMPLES`]) of `packet` (empty: conceal)
    /// and appends what libopus produced to `out`.
    fn decode_into(
        &mut self,
        packet: &[u8],
        samples: usize,
        fec: bool,
        out: &mut Vec<i16>,
    ) -> Result<usize, OpusError> {
        let Some(buffer) = self.buffer.get_mut(..samples) else {
            return Err(OpusError::FrameSize { samples });
        };
        let decoded = self.inner.decode(packet, buffer, fec)?;
        let decoded_samples = buffer.get(..decoded).unwrap_or(buffer);
        out.extend_from_slice(decoded_samples);
        Ok(decoded_samples.len())
    }

    /// Forgets the decoder history (e.g. after the stream restarted).
    pub fn reset(&mut self) {
        let _ = self.inner.reset_state();
        self.last_packet_samples = DEFAULT_PACKET_SAMPLES;
    }
}

/// One packet of `ptime_ms` of digital silence, encoded with default settings; `ptime_ms` not
/// an Opus frame duration gives 20 ms. Falls back to a TOC-only packet (one 20 ms CELT frame
/// of zero length, which decoders treat as silence/DTX, RFC 6716 §3.2.1) if libopus fails.
pub fn opus_silence_packet(ptime_ms: u32) -> Vec<u8> {
    let samples = usize::try_from(OPUS_SAMPLE_RATE / 1000 * ptime_ms).unwrap_or(0);
    let samples = if is_opus_frame_size(samples) { samples } else { DEFAULT_PACKET_SAMPLES };
    let mut packet = Vec::new();
    match OpusEncoder::new(OpusEncoderSettings::default()).and_then(|mut e| e.encode(&vec![0; samples], &mut packet)) {
        Ok(_) => packet,
        // TOC: config 31 (CELT FB 20 ms), mono, code 0.
        Err(_) => vec![31 << 3],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::{dominant_frequency, goertzel_power, rms_dbfs, sine};

    fn encode_all(encoder: &mut OpusEncoder, pcm: &[i16], frame: usize) -> Vec<Vec<u8>> {
        pcm.chunks_exact(frame)
            .map(|chunk| {
                let mut packet = Vec::new();
                encoder.encode(chunk, &mut packet).unwrap();
                packet
            })
            .collect()
    }

    #[test]
    fn tones_round_trip_at_several_frequencies() {
        for freq in [300.0, 1000.0, 3000.0, 6000.0] {
            let tone = sine(freq, OPUS_SAMPLE_RATE, 600, 8000);
            let mut encoder = OpusEncoder::new(OpusEncoderSettings::default()).unwrap();
            let mut decoder = OpusDecoder::new().unwrap();
            let mut decoded = Vec::new();
            for packet in encode_all(&mut encoder, &tone, 480) {
                assert!(packet.len() < 200, "{} bytes at 32 kbit/s", packet.len());
                assert_eq!(decoder.decode(&packet, &mut decoded).unwrap(), 480);
            }
            assert_eq!(decoded.len(), tone.len());
            let steady = &decoded[4800..];
            let found = dominant_frequency(steady, OPUS_SAMPLE_RATE, 100.0, 11000.0, 10.0);
            assert!((found - freq).abs() <= 10.0, "{freq}: found {found}");
            let level = rms_dbfs(steady) - rms_dbfs(&tone);
            assert!(level.abs() < 3.0, "{freq}: level off by {level:.1} dB");
        }
    }

    #[test]
    fn decodes_whatever_duration_arrives() {
        let tone = sine(800.0, OPUS_SAMPLE_RATE, 600, 8000);
        for frame in [240, 480, 960, 1440] {
            let mut encoder = OpusEncoder::new(OpusEncoderSettings::default()).unwrap();
            let mut decoder = OpusDecoder::new().unwrap();
            let mut decoded = Vec::new();
            for packet in encode_all(&mut encoder, &tone, frame) {
                assert_eq!(decoder.decode(&packet, &mut decoded).unwrap(), frame);
            }
            assert_eq!(decoder.last_packet_samples(), frame);
            let found = dominant_frequency(&decoded[4800..], OPUS_SAMPLE_RATE, 100.0, 4000.0, 10.0);
            assert!((found - 800.0).abs() <= 10.0, "{frame}: {found}");
        }
    }

    #[test]
    fn rejects_non_frame_sizes_and_garbage() {
        let mut encoder = OpusEncoder::new(OpusEncoderSettings::default()).unwrap();
        let mut out = vec![7];
        assert!(matches!(encoder.encode(&[0; 500], &mut out), Err(OpusError::FrameSize { samples: 500 })));
        assert_eq!(out, [7]);
        let mut decoder = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        assert!(decoder.decode(&[], &mut pcm).is_err());
        // Code 3 packet announcing 63 frames of 60 ms: over 120 ms.
        assert!(decoder.decode(&[0xFF, 0x3F], &mut pcm).is_err());
        assert!(pcm.is_empty());
    }

    #[test]
    fn fec_recovers_the_lost_packet_better_than_plc() {
        let tone = sine(440.0, OPUS_SAMPLE_RATE, 2000, 10000);
        let mut encoder =
            OpusEncoder::new(OpusEncoderSettings { packet_loss_percent: 20, ..Default::default() }).unwrap();
        let packets = encode_all(&mut encoder, &tone, 480);
        let (mut with_fec, mut plc_only) = (OpusDecoder::new().unwrap(), OpusDecoder::new().unwrap());
        let (mut fec_power, mut plc_power) = (0.0, 0.0);
        for (index, packet) in packets.iter().enumerate() {
            if index % 5 == 4 {
                continue;
            }
            let (mut a, mut b) = (Vec::new(), Vec::new());
            if index > 5 && index % 5 == 0 {
                with_fec.recover_from_fec(packet, &mut a).unwrap();
                plc_only.conceal(&mut b).unwrap();
                assert_eq!((a.len(), b.len()), (480, 480));
                fec_power += goertzel_power(&a, OPUS_SAMPLE_RATE, 440.0);
                plc_power += goertzel_power(&b, OPUS_SAMPLE_RATE, 440.0);
            }
            with_fec.decode(packet, &mut a).unwrap();
            plc_only.decode(packet, &mut b).unwrap();
        }
        assert!(fec_power > plc_power * 1.2, "FEC {fec_power:.3e} vs PLC {plc_power:.3e}");
    }

    #[test]
    fn peer_limits_only_lower_our_settings() {
        let base = OpusEncoderSettings::default();
        let limited = base.with_peer_limits(Some(20_000), Some(16_000), Some(false));
        assert_eq!(limited.bitrate_bps, 20_000);
        assert_eq!(limited.max_playback_rate, Some(16_000));
        assert!(!limited.use_inband_fec);
        let generous = base.with_peer_limits(Some(128_000), None, Some(true));
        assert_eq!(generous, base);
        assert!(OpusEncoder::new(limited).is_ok());
    }

    #[test]
    fn silence_packet_decodes_to_silence() {
        let packet = opus_silence_packet(20);
        let mut decoder = OpusDecoder::new().unwrap();
        let mut pcm = Vec::new();
        assert_eq!(decoder.decode(&packet, &mut pcm).unwrap(), 480);
        assert!(pcm.iter().all(|&s| s.abs() <= 2));
        assert_eq!(decoder.decode(&opus_silence_packet(33), &mut pcm).unwrap(), 480);
        assert_eq!(decoder.decode(&opus_silence_packet(40), &mut pcm).unwrap(), 960);
    }
}
