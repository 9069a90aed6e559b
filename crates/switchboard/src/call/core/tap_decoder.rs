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

    /// The payload's audio at 24 kHz, after `lost_before` packets that never came. Allocates
    /// the tap's buffer once and writes it in place: this runs on the media clock for the
    /// caller's direction of every recorded call.
    pub fn decode(&mut self, lost_before: u16, payload: &[u8]) -> Vec<i16> {
        match self {
            TapDecoder::Resampled(inbound) => {
                let mut bytes = Vec::new();
                inbound.convert_with_loss(lost_before, payload, &mut bytes);
                bytes.as_chunks::<2>().0.iter().map(|&pair| i16::from_le_bytes(pair)).collect()
            }
            TapDecoder::G711 { alaw, decoded } => {
                let lost = usize::from(lost_before.min(MAX_CONCEALED_PACKETS));
                decoded.clear();
                if *alaw {
                    g711::alaw_decode_slice(payload, decoded);
                } else {
                    g711::ulaw_decode_slice(payload, decoded);
                }
                let silence = lost * payload.len() * REPEAT;
                let mut pcm = vec![0i16; silence + decoded.len() * REPEAT];
                let repeated = pcm.get_mut(silence..).unwrap_or_default().chunks_exact_mut(REPEAT);
                for (slot, &sample) in repeated.zip(decoded.iter()) {
                    slot.fill(sample);
                }
                pcm
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn g711_taps_are_the_decoded_samples_three_times_and_silence_for_losses() {
        let payload: Vec<u8> = (0..160u8).collect();
        let mut expected = Vec::new();
        g711::ulaw_decode_slice(&payload, &mut expected);
        let mut decoder = TapDecoder::new(Codec::Pcmu);
        let pcm = decoder.decode(1, &payload);
        assert_eq!(pcm.len(), 2 * 480, "one lost packet, then the packet: 20 ms each at 24 kHz");
        assert!(pcm[..480].iter().all(|&s| s == 0), "the lost packet is silence");
        let every_third: Vec<i16> = pcm[480..].iter().step_by(3).copied().collect();
        assert_eq!(every_third, expected, "every third sample is the decoded G.711");
        assert!(pcm[480..].chunks(3).all(|c| c[0] == c[1] && c[1] == c[2]));
    }
}
