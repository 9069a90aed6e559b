use std::fmt;

/// The one codec vocabulary of the gateway: what SDP negotiates, what the media pipeline runs and
/// what the configuration names. It lives here, in the pure SDP crate, because negotiation is
/// where a codec gets its name; `switchboard_media` re-exports it and adds encoding on top, so
/// nothing that only negotiates pays for libopus. Per-codec facts live in methods.
// Not `non_exhaustive`: a new codec must be handled wherever codecs are matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law (RFC 3551 §4.5.14): 8 kHz, one byte per sample.
    Pcmu,
    /// G.711 A-law (RFC 3551 §4.5.14): 8 kHz, one byte per sample.
    Pcma,
    /// G.722 at 64 kbit/s (RFC 3551 §4.5.2): 16 kHz audio, one byte per two samples, on an
    /// 8000 Hz RTP clock.
    G722,
    /// Opus (RFC 7587): always `opus/48000/2` in SDP; mono, run at 24 kHz, variable packet size.
    Opus,
}

/// The rate the gateway runs Opus at: the model's 24 kHz, so no resampling on that path.
const OPUS_SAMPLE_RATE: u32 = 24_000;
/// The RTP clock of Opus, whatever the audio rate (RFC 7587 §4.1).
const OPUS_RTP_CLOCK_RATE: u32 = 48_000;
/// G.722 samples at 16 kHz (RFC 3551 §4.5.2).
const G722_SAMPLE_RATE: u32 = 16_000;

/// Every codec, for lookups.
const ALL: [Codec; 4] = [Codec::Pcmu, Codec::Pcma, Codec::G722, Codec::Opus];

impl Codec {
    /// The encoding name used in `a=rtpmap` (RFC 3551 §6 table 4, RFC 7587 §7).
    pub fn encoding_name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
            Codec::G722 => "G722",
            Codec::Opus => "opus",
        }
    }

    /// The RTP clock rate in Hz: what RTP timestamps count. G.722 keeps 8000 although it
    /// samples at 16 kHz (RFC 3551 §4.5.2); Opus always uses 48000 (RFC 7587 §4.1).
    pub const fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => OPUS_RTP_CLOCK_RATE,
        }
    }

    /// Same as [`clock_rate`](Self::clock_rate), for call sites that contrast it with
    /// [`sample_rate`](Self::sample_rate).
    pub const fn rtp_clock_rate(self) -> u32 {
        self.clock_rate()
    }

    /// The rate of the audio samples the codec encodes and decodes, in Hz. It matches the RTP
    /// clock for G.711 only.
    pub const fn sample_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma => 8000,
            Codec::G722 => G722_SAMPLE_RATE,
            Codec::Opus => OPUS_SAMPLE_RATE,
        }
    }

    /// True for the G.711 variants, the only codecs the model can speak directly.
    pub const fn is_g711(self) -> bool {
        matches!(self, Codec::Pcmu | Codec::Pcma)
    }

    /// Audio samples (at [`sample_rate`](Self::sample_rate)) in one frame of `ptime_ms`.
    pub fn samples_per_frame(self, ptime_ms: u32) -> usize {
        (u64::from(self.sample_rate()) * u64::from(ptime_ms) / 1000) as usize
    }

    /// RTP timestamp units in one frame of `ptime_ms`.
    pub fn timestamp_units_per_frame(self, ptime_ms: u32) -> u32 {
        (u64::from(self.rtp_clock_rate()) * u64::from(ptime_ms) / 1000) as u32
    }

    /// Encoded bytes in one frame of `ptime_ms`; 0 for Opus, whose packets vary in size.
    pub fn bytes_per_frame(self, ptime_ms: u32) -> usize {
        match self {
            Codec::Pcmu | Codec::Pcma => self.samples_per_frame(ptime_ms),
            Codec::G722 => self.samples_per_frame(ptime_ms) / 2,
            Codec::Opus => 0,
        }
    }

    /// The G.711 encoding of one linear zero sample (ITU-T G.711: 0xFF mu-law, 0xD5 A-law).
    /// G.722 and Opus have no such byte (their silence depends on codec state): 0.
    pub const fn silence_byte(self) -> u8 {
        match self {
            Codec::Pcmu => 0xFF,
            Codec::Pcma => 0xD5,
            Codec::G722 | Codec::Opus => 0,
        }
    }

    /// Every codec the gateway supports.
    pub fn all() -> [Codec; 4] {
        ALL
    }

    /// The `<encoding parameters>` (channel count) written after the clock rate in `a=rtpmap`:
    /// RFC 7587 §7 requires `/2` for Opus even for mono streams; none for the others.
    pub fn rtpmap_channels(self) -> Option<u32> {
        match self {
            Codec::Opus => Some(2),
            Codec::Pcmu | Codec::Pcma | Codec::G722 => None,
        }
    }

    /// The static payload type assigned by RFC 3551 §6, if any.
    pub fn static_payload_type(self) -> Option<u8> {
        match self {
            Codec::Pcmu => Some(0),
            Codec::Pcma => Some(8),
            Codec::G722 => Some(9),
            Codec::Opus => None,
        }
    }

    /// The codec an `a=rtpmap` entry names; the name is compared case-insensitively
    /// (RFC 4855 §3: media subtype names are case-insensitive).
    pub fn from_rtpmap(name: &str, clock_rate: u32) -> Option<Codec> {
        ALL.into_iter()
            .find(|codec| codec.encoding_name().eq_ignore_ascii_case(name) && codec.clock_rate() == clock_rate)
    }

    /// The codec with this encoding name (case-insensitive), whatever the clock rate: for
    /// configuration lists such as `["opus", "G722", "PCMU"]`.
    pub fn from_name(name: &str) -> Option<Codec> {
        ALL.into_iter().find(|codec| codec.encoding_name().eq_ignore_ascii_case(name.trim()))
    }

    /// The codec statically bound to a payload type without an `a=rtpmap` (RFC 3551 §6).
    pub fn from_static_payload_type(payload_type: u8) -> Option<Codec> {
        ALL.into_iter().find(|codec| codec.static_payload_type() == Some(payload_type))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encoding_name())
    }
}

/// Media direction attribute (RFC 8866 §6.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    /// `a=sendrecv`, the default when no direction attribute is present.
    #[default]
    SendRecv,
    /// `a=sendonly`
    SendOnly,
    /// `a=recvonly`
    RecvOnly,
    /// `a=inactive`
    Inactive,
}

impl Direction {
    /// The direction an answerer uses for an offered direction (RFC 3264 §6.1): sendonly
    /// becomes recvonly and vice versa; sendrecv and inactive stay.
    pub fn reverse(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// The attribute name, e.g. `sendrecv`.
    pub fn attribute_name(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Parses a direction attribute name (case-sensitive, as in RFC 8866).
    pub fn from_attribute_name(name: &str) -> Option<Direction> {
        match name {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// True when this side sends media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// True when this side receives media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.attribute_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtpmap_lookup_is_case_insensitive_and_checks_rate() {
        assert_eq!(Codec::from_rtpmap("pcmu", 8000), Some(Codec::Pcmu));
        assert_eq!(Codec::from_rtpmap("PCMA", 8000), Some(Codec::Pcma));
        assert_eq!(Codec::from_rtpmap("PCMU", 16000), None);
        assert_eq!(Codec::from_rtpmap("opus", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("OPUS", 48000), Some(Codec::Opus));
        assert_eq!(Codec::from_rtpmap("opus", 16000), None);
        assert_eq!(Codec::from_rtpmap("g722", 8000), Some(Codec::G722));
        assert_eq!(Codec::from_rtpmap("G722", 16000), None);
    }

    #[test]
    fn names_from_configuration() {
        assert_eq!(Codec::from_name("Opus"), Some(Codec::Opus));
        assert_eq!(Codec::from_name(" g722 "), Some(Codec::G722));
        assert_eq!(Codec::from_name("pcma"), Some(Codec::Pcma));
        assert_eq!(Codec::from_name("G729"), None);
        assert_eq!(Codec::Opus.rtpmap_channels(), Some(2));
        assert_eq!(Codec::Opus.to_string(), "opus");
    }

    #[test]
    fn static_payload_types() {
        assert_eq!(Codec::from_static_payload_type(0), Some(Codec::Pcmu));
        assert_eq!(Codec::from_static_payload_type(8), Some(Codec::Pcma));
        assert_eq!(Codec::from_static_payload_type(9), Some(Codec::G722));
        assert_eq!(Codec::from_static_payload_type(18), None);
    }

    #[test]
    fn direction_reverse() {
        assert_eq!(Direction::SendOnly.reverse(), Direction::RecvOnly);
        assert_eq!(Direction::RecvOnly.reverse(), Direction::SendOnly);
        assert_eq!(Direction::Inactive.reverse(), Direction::Inactive);
        assert_eq!(Direction::SendRecv.reverse(), Direction::SendRecv);
    }
}
