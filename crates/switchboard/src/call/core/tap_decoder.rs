//! Recorder taps' decoding: a leg's RTP payloads to 24 kHz PCM16 ([`super::TAP_SAMPLE_RATE`]).
//!
//! G.711 taps are the decoded samples each repeated three times, not a filtered 8 -> 24 kHz
//! resampling: the polyphase filter costs about 6.5 us per 20 ms frame and direction (0.065 % of
//! a core per call for the two directions, over the recording's whole budget), and the recorder
//! writes G.711 calls at 8 kHz by keeping every third sample, so it gets exactly the decoded
//! G.711 back. Lost packets are silence in the recording (the model's input conceals them; the
//! recording says what was heard). Other codecs go through [`InboundAudio`] as the model's
//! audio does.

use switchboard_media::framing::{InboundAudio, MAX_CONCEALED_PACKETS, ModelAudio};
use switchboard_media::{Codec, g711};

/// Samples of 24 kHz per sample of 8 kHz.
const REPEAT: usize = 3;

pub enum TapDecoder {
    G711 { alaw: bool, decoded: Vec<i16> },
    Resampled(Box<InboundAudio>),
}

impl TapDecoder {
    pub fn new(codec: Codec) -> TapDecoder {
        match codec {
            Codec::Pcmu => TapDecoder::G711 { alaw: false, decoded: Vec::new() },
            Codec::Pcma => TapDecoder::G711 { alaw: true, decoded: Vec::new() },
            _ => TapDecoder::Resampled(Box::new(InboundAudio::new(codec, ModelAudio::Pcm24k))),
        }
    }

    /// Appends the payload's audio (16-bit little-endian, 24 kHz) to `out`.
    pub fn convert(&mut self, payload: &[u8], out: &mut Vec<u8>) {
        self.convert_with_loss(0, payload, out);
    }

    /// Like [`convert`](Self::convert), after `lost_before` packets that never came.
    pub fn convert_with_loss(&mut self, lost_before: u16, payload: &[u8], out: &mut Vec<u8>) {
        match self {
            TapDecoder::Resampled(inbound) => inbound.convert_with_loss(lost_before, payload, out),
            TapDecoder::G711 { alaw, decoded } => {
                let lost = usize::from(lost_before.min(MAX_CONCEALED_PACKETS));
                out.reserve((lost + 1) * payload.len() * REPEAT * 2);
                out.resize(out.len() + lost * payload.len() * REPEAT * 2, 0);
                decoded.clear();
                if *alaw {
                    g711::alaw_decode_slice(payload, decoded);
                } else {
                    g711::ulaw_decode_slice(payload, decoded);
                }
                let start = out.len();
                out.resize(start + decoded.len() * REPEAT * 2, 0);
                let repeated = out.get_mut(start..).unwrap_or_default().chunks_exact_mut(REPEAT * 2);
                for (slot, sample) in repeated.zip(decoded.iter()) {
                    let [low, high] = sample.to_le_bytes();
                    slot.copy_from_slice(&[low, high, low, high, low, high]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(bytes: &[u8]) -> Vec<i16> {
        bytes.chunks_exact(2).map(|pair| i16::from_le_bytes([pair[0], pair[1]])).collect()
    }

    #[test]
    fn g711_taps_are_the_decoded_samples_three_times_and_silence_for_losses() {
        let payload: Vec<u8> = (0..160u8).collect();
        let mut expected = Vec::new();
        g711::ulaw_decode_slice(&payload, &mut expected);
        let mut decoder = TapDecoder::new(Codec::Pcmu);
        let mut out = Vec::new();
        decoder.convert_with_loss(1, &payload, &mut out);
        let pcm = samples(&out);
        assert_eq!(pcm.len(), 2 * 480, "one lost packet, then the packet: 20 ms each at 24 kHz");
        assert!(pcm[..480].iter().all(|&s| s == 0), "the lost packet is silence");
        let every_third: Vec<i16> = pcm[480..].iter().step_by(3).copied().collect();
        assert_eq!(every_third, expected, "every third sample is the decoded G.711");
        assert!(pcm[480..].chunks(3).all(|c| c[0] == c[1] && c[1] == c[2]));
    }
}
