use std::fmt;

/// An audio codec we can negotiate. Per-codec facts live in methods.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Codec {
    /// G.711 mu-law (RFC 3551 §4.5.14).
    Pcmu,
    /// G.711 A-law (RFC 3551 §4.5.14).
    Pcma,
    /// G.722 (RFC 3551 §4.5.2): 16 kHz audio on an 8000 Hz RTP clock.
    G722,
    /// Opus (RFC 7587): always `opus/48000/2` in SDP, whatever is actually sent.
    Opus,
}

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

    /// The RTP clock rate in Hz. G.722 keeps 8000 although it samples at 16 kHz (RFC 3551
    /// §4.5.2); Opus always uses 48000 (RFC 7587 §4.1).
    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Pcmu | Codec::Pcma | Codec::G722 => 8000,
            Codec::Opus => 48000,
        }
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
