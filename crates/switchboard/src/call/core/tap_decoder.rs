//! Recorder taps' decoding: a leg's RTP payloads to PCM16 at the codec's own decoding rate
//! ([`tap_rate`]), the rate its recording is written at, so the recorder resamples nothing for
//! G.711 (8 kHz) and G.722 (16 kHz) calls. Opus is decoded at 24 kHz (the rate the gateway runs
//! it at) and resampled to 16 kHz by the recorder, off the hot path. Lost packets are silence in
//! the recording (the model's input conceals them; the recording says what was heard).

use switchboard_media::framing::{InboundAudio, MAX_CONCEALED_PACKETS, ModelAudio};
use switchboard_media::g722::G722Decoder;
use switchboard_media::{Codec, g711};

/// The sample rate of a leg's taps.
pub fn tap_rate(codec: Codec) -> u32 {
    match codec {
        Codec::Pcmu | Codec::Pcma => 8000,
        Codec::G722 => 16_000,
        Codec::Opus => 24_000,
    }
}

pub enum TapDecoder {
    Pcmu,
    Pcma,
    G722(G722Decoder),
    Opus(Box<InboundAudio>),
}

impl TapDecoder {
    pub fn new(codec: Codec) -> TapDecoder {
        match codec {
            Codec::Pcmu => TapDecoder::Pcmu,
            Codec::Pcma => TapDecoder::Pcma,
            Codec::G722 => TapDecoder::G722(G722Decoder::new()),
            Codec::Opus => TapDecoder::Opus(Box::new(InboundAudio::new(Codec::Opus, ModelAudio::Pcm24k))),
        }
    }

    /// The payload's audio at [`tap_rate`], after `lost_before` packets that never came. This
    /// runs on the media clock for the caller's direction of every recorded call: one
    /// allocation, the tap's own buffer.
    pub fn decode(&mut self, lost_before: u16, payload: &[u8]) -> Vec<i16> {
        let samples_per_packet = match self {
            TapDecoder::Pcmu | TapDecoder::Pcma => payload.len(),
            // 64 kbit/s G.722: one byte per two 16 kHz samples.
            TapDecoder::G722(_) => payload.len() * 2,
            TapDecoder::Opus(inbound) => {
                let mut bytes = Vec::new();
                inbound.convert_with_loss(lost_before, payload, &mut bytes);
                return bytes.as_chunks::<2>().0.iter().map(|&pair| i16::from_le_bytes(pair)).collect();
            }
        };
        let silence = usize::from(lost_before.min(MAX_CONCEALED_PACKETS)) * samples_per_packet;
        let mut pcm = Vec::with_capacity(silence + samples_per_packet);
        pcm.resize(silence, 0);
        match self {
            TapDecoder::Pcmu => g711::ulaw_decode_slice(payload, &mut pcm),
            TapDecoder::Pcma => g711::alaw_decode_slice(payload, &mut pcm),
            TapDecoder::G722(decoder) => decoder.decode(payload, &mut pcm),
            TapDecoder::Opus(_) => {}
        }
        pcm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use switchboard_media::CodecCoding;

    #[test]
    fn g711_taps_are_the_decoded_samples_and_silence_for_losses() {
        let payload: Vec<u8> = (0..160u8).collect();
        let mut expected = Vec::new();
        g711::ulaw_decode_slice(&payload, &mut expected);
        let mut decoder = TapDecoder::new(Codec::Pcmu);
        let pcm = decoder.decode(1, &payload);
        assert_eq!(pcm.len(), 2 * 160, "one lost packet, then the packet: 20 ms each at 8 kHz");
        assert!(pcm[..160].iter().all(|&s| s == 0), "the lost packet is silence");
        assert_eq!(pcm[160..], expected[..], "the decoded G.711");
    }

    #[test]
    fn g722_taps_are_16_khz_from_one_decoder_state() {
        let tone: Vec<i16> = (0..640).map(|i| ((i as f64 * 0.2).sin() * 8000.0) as i16).collect();
        let mut encoded = Vec::new();
        Codec::G722.encode(&tone, &mut encoded);
        let (first, second) = encoded.split_at(160);
        let mut decoder = TapDecoder::new(Codec::G722);
        let mut pcm = decoder.decode(0, first);
        pcm.extend(decoder.decode(0, second));
        assert_eq!(pcm.len(), 640, "40 ms at 16 kHz");
        let mut whole = Vec::new();
        G722Decoder::new().decode(&encoded, &mut whole);
        assert_eq!(pcm, whole, "the decoder's state carries from packet to packet");
        assert_eq!(decoder.decode(2, first).len(), 3 * 320, "two lost packets are 40 ms of silence");
    }
}
