//! The SDP data model, a lenient parser and a serializer (RFC 8866 §5).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::codec::Direction;
use crate::error::SdpError;

/// Address type of an `o=` or `c=` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressType {
    /// `IP4`
    Ip4,
    /// `IP6`
    Ip6,
}

impl AddressType {
    /// The address type matching an IP address.
    pub fn of(address: IpAddr) -> AddressType {
        match address {
            IpAddr::V4(_) => AddressType::Ip4,
            IpAddr::V6(_) => AddressType::Ip6,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            AddressType::Ip4 => "IP4",
            AddressType::Ip6 => "IP6",
        }
    }
}

/// `o=` line (RFC 8866 §5.2). Identifiers are kept as text: real-world offers put numbers
/// larger than 64 bits there, and we only ever echo or compare them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// `<username>`, `-` when unknown.
    pub username: String,
    /// `<sess-id>`
    pub session_id: String,
    /// `<sess-version>`; a re-INVITE with a changed SDP increments it.
    pub session_version: String,
    /// `<unicast-address>` as written (may be a host name).
    pub address: String,
    /// `<addrtype>`
    pub address_type: AddressType,
}

/// `c=` line (RFC 8866 §5.7). Only IP literals are supported; a multicast `/ttl` suffix is
/// parsed off and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connection {
    /// The connection address. `0.0.0.0` means "on hold" in pre-RFC 3264 offers (RFC 3264 §8.4).
    pub address: IpAddr,
}

impl Connection {
    /// True for the unspecified address (`0.0.0.0` / `::`), the legacy way to put a call on hold.
    pub fn is_hold(&self) -> bool {
        self.address.is_unspecified()
    }
}

/// `t=` line (RFC 8866 §5.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timing {
    /// Start time (NTP seconds), 0 for unbounded.
    pub start: u64,
    /// Stop time (NTP seconds), 0 for unbounded.
    pub stop: u64,
}

/// `a=<name>[:<value>]` (RFC 8866 §5.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attribute {
    /// The attribute name, e.g. `rtpmap`.
    pub name: String,
    /// The value after the first `:`; `None` for property attributes such as `sendrecv`.
    pub value: Option<String>,
}

impl Attribute {
    /// A property attribute without value.
    pub fn flag(name: impl Into<String>) -> Attribute {
        Attribute { name: name.into(), value: None }
    }

    /// A value attribute.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Attribute {
        Attribute { name: name.into(), value: Some(value.into()) }
    }
}

/// A parsed `a=rtpmap:<pt> <name>/<rate>[/<channels>]` (RFC 8866 §6.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    /// The payload type number.
    pub payload_type: u8,
    /// Encoding name as written (compare case-insensitively).
    pub encoding_name: String,
    /// Clock rate in Hz.
    pub clock_rate: u32,
    /// Encoding parameters (number of audio channels), if given.
    pub channels: Option<u32>,
}

impl RtpMap {
    /// Parses the attribute value (after `rtpmap:`); `None` if it is not well formed.
    pub fn parse(value: &str) -> Option<RtpMap> {
        let (pt, encoding) = value.trim().split_once(char::is_whitespace)?;
        let payload_type = pt.parse().ok()?;
        let mut parts = encoding.trim().split('/');
        let encoding_name = parts.next()?.trim().to_owned();
        let clock_rate = parts.next()?.trim().parse().ok()?;
        let channels = match parts.next() {
            Some(ch) => Some(ch.trim().parse().ok()?),
            None => None,
        };
        if encoding_name.is_empty() || parts.next().is_some() {
            return None;
        }
        Some(RtpMap { payload_type, encoding_name, clock_rate, channels })
    }
}

/// One `m=` section (RFC 8866 §5.14) with the lines that follow it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// Media type, e.g. `audio`, `video`, `application`.
    pub media: String,
    /// Transport port; 0 means the stream is disabled/rejected (RFC 3264 §5.1).
    pub port: u16,
    /// `/<number of ports>` when present.
    pub port_count: Option<u16>,
    /// Transport protocol, e.g. `RTP/AVP`.
    pub proto: String,
    /// Media formats; RTP payload type numbers for RTP transports.
    pub formats: Vec<String>,
    /// Media-level `c=`, which overrides the session-level one.
    pub connection: Option<Connection>,
    /// Media-level attributes, in order.
    pub attributes: Vec<Attribute>,
    /// Other media-level lines (`i=`, `b=`, `k=`, unknown types) kept verbatim, in order.
    pub other_lines: Vec<(char, String)>,
}

impl MediaDescription {
    /// The first attribute with this name.
    pub fn attribute(&self, name: &str) -> Option<&Attribute> {
        self.attributes.iter().find(|a| a.name == name)
    }

    /// All well-formed `a=rtpmap` entries.
    pub fn rtpmaps(&self) -> impl Iterator<Item = RtpMap> + '_ {
        self.attributes.iter().filter(|a| a.name == "rtpmap").filter_map(|a| a.value.as_deref().and_then(RtpMap::parse))
    }

    /// The `a=rtpmap` entry for a payload type.
    pub fn rtpmap(&self, payload_type: u8) -> Option<RtpMap> {
        self.rtpmaps().find(|m| m.payload_type == payload_type)
    }

    /// The `a=fmtp` parameters for a payload type (the text after `<pt> `).
    pub fn fmtp(&self, payload_type: u8) -> Option<&str> {
        self.attributes.iter().filter(|a| a.name == "fmtp").filter_map(|a| a.value.as_deref()).find_map(|v| {
            let (pt, params) = v.trim().split_once(char::is_whitespace).unwrap_or((v, ""));
            (pt.parse::<u8>().ok() == Some(payload_type)).then_some(params.trim())
        })
    }

    /// The media-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        self.attributes.iter().filter(|a| a.value.is_none()).find_map(|a| Direction::from_attribute_name(&a.name))
    }

    /// The `a=ptime` value in milliseconds, if present and numeric.
    pub fn ptime_ms(&self) -> Option<u32> {
        self.attribute("ptime").and_then(|a| a.value.as_deref()).and_then(|v| v.trim().parse().ok())
    }

    /// The formats that are valid RTP payload type numbers, in offer order.
    pub fn payload_types(&self) -> impl Iterator<Item = u8> + '_ {
        self.formats.iter().filter_map(|f| f.parse::<u8>().ok())
    }
}

/// A whole session description.
///
/// Parsing is lenient where real-world SDPs are sloppy: `v=`, `o=`, `s=` and `t=` may be
/// missing, line endings may be CRLF or LF, unknown line types and attributes are kept.
/// Serializing with [`fmt::Display`] writes CRLF line endings in RFC 8866 §5 order.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionDescription {
    /// `o=`
    pub origin: Option<Origin>,
    /// `s=`
    pub session_name: Option<String>,
    /// Session-level `c=`.
    pub connection: Option<Connection>,
    /// `t=`; the first one when there are several.
    pub timing: Option<Timing>,
    /// Session-level attributes, in order.
    pub attributes: Vec<Attribute>,
    /// Other session-level lines (`i=`, `u=`, `e=`, `p=`, `b=`, `r=`, `z=`, `k=`, extra `t=`,
    /// unknown types) kept verbatim, in order.
    pub other_lines: Vec<(char, String)>,
    /// The media sections, in order.
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// Parses an SDP body. Never panics; returns [`SdpError::Malformed`] with the 1-based line
    /// number of the first line that does not have the `<type>=<value>` shape or whose known
    /// type has an unparseable value.
    pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
        let mut session = SessionDescription::default();
        let mut saw_any_line = false;
        for (index, raw_line) in text.split('\n').enumerate() {
            let line_number = index + 1;
            let line = raw_line.strip_suffix('\r').unwrap_or(raw_line);
            // Blank lines (typically a trailing one) carry nothing; tolerate them.
            if line.trim().is_empty() {
                continue;
            }
            saw_any_line = true;
            let malformed = |reason: &str| SdpError::Malformed { line: line_number, reason: reason.to_owned() };
            // RFC 8866 §5: `<type>=<value>` where <type> is exactly one case-significant letter.
            // `split_at_checked` is None when the line is shorter than 2 bytes or byte 2 is inside
            // a multi-byte character; either way it is not `<letter>=`.
            let (kind, value) = match line.split_at_checked(2) {
                Some((prefix, value)) => match prefix.as_bytes() {
                    [letter, b'='] if letter.is_ascii_alphabetic() => (char::from(*letter), value),
                    _ => return Err(malformed("expected a line of the form <letter>=<value>")),
                },
                None => return Err(malformed("expected a line of the form <letter>=<value>")),
            };
            let in_media = !session.media.is_empty();
            match kind {
                'v' => {
                    if value.trim() != "0" {
                        return Err(malformed("unsupported SDP version (expected v=0)"));
                    }
                }
                'o' if !in_media => {
                    session.origin = Some(parse_origin(value).ok_or_else(|| {
                        malformed("o= needs <username> <sess-id> <sess-version> IN <addrtype> <address>")
                    })?);
                }
                's' if !in_media => session.session_name = Some(value.to_owned()),
                't' if !in_media && session.timing.is_none() => {
                    session.timing =
                        Some(parse_timing(value).ok_or_else(|| malformed("t= needs <start-time> <stop-time>"))?);
                }
                'c' => {
                    let connection = parse_connection(value).map_err(&malformed)?;
                    match session.media.last_mut() {
                        Some(media) => media.connection = Some(connection),
                        None => session.connection = Some(connection),
                    }
                }
                'a' => {
                    let attribute = parse_attribute(value);
                    match session.media.last_mut() {
                        Some(media) => media.attributes.push(attribute),
                        None => session.attributes.push(attribute),
                    }
                }
                'm' => {
                    let media = parse_media(value).map_err(&malformed)?;
                    session.media.push(media);
                }
                _ => match session.media.last_mut() {
                    Some(media) => media.other_lines.push((kind, value.to_owned())),
                    None => session.other_lines.push((kind, value.to_owned())),
                },
            }
        }
        if !saw_any_line {
            return Err(SdpError::Malformed { line: 1, reason: "empty session description".to_owned() });
        }
        Ok(session)
    }

    /// The session-level direction attribute, if any.
    pub fn direction(&self) -> Option<Direction> {
        self.attributes.iter().filter(|a| a.value.is_none()).find_map(|a| Direction::from_attribute_name(&a.name))
    }

    /// The effective direction of a media section: media level wins over session level, and
    /// the default is sendrecv (RFC 8866 §6.7).
    pub fn media_direction(&self, media: &MediaDescription) -> Direction {
        media.direction().or_else(|| self.direction()).unwrap_or_default()
    }

    /// The effective connection of a media section: media level wins over session level.
    pub fn media_connection(&self, media: &MediaDescription) -> Option<Connection> {
        media.connection.or(self.connection)
    }
}

fn parse_origin(value: &str) -> Option<Origin> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let [username, session_id, session_version, net_type, addr_type, address] = fields[..] else {
        return None;
    };
    if net_type != "IN" {
        return None;
    }
    Some(Origin {
        username: username.to_owned(),
        session_id: session_id.to_owned(),
        session_version: session_version.to_owned(),
        address: address.to_owned(),
        address_type: parse_address_type(addr_type)?,
    })
}

fn parse_address_type(text: &str) -> Option<AddressType> {
    if text.eq_ignore_ascii_case("IP4") {
        Some(AddressType::Ip4)
    } else if text.eq_ignore_ascii_case("IP6") {
        Some(AddressType::Ip6)
    } else {
        None
    }
}

fn parse_timing(value: &str) -> Option<Timing> {
    let mut fields = value.split_whitespace();
    let start = fields.next()?.parse().ok()?;
    let stop = fields.next()?.parse().ok()?;
    fields.next().is_none().then_some(Timing { start, stop })
}

/// RFC 8866 §5.7: `c=<nettype> <addrtype> <connection-address>`.
fn parse_connection(value: &str) -> Result<Connection, &'static str> {
    let fields: Vec<&str> = value.split_whitespace().collect();
    let [net_type, addr_type, address] = fields[..] else {
        return Err("c= needs <nettype> <addrtype> <connection-address>");
    };
    if net_type != "IN" {
        return Err("c= network type is not IN");
    }
    let addr_type = parse_address_type(addr_type).ok_or("c= address type is not IP4 or IP6")?;
    // Multicast addresses carry `/ttl[/count]` (IP4) or `/count` (IP6); we only need the address.
    let literal = address.split('/').next().unwrap_or(address);
    let address = IpAddr::from_str(literal).map_err(|_| "c= address is not an IP literal")?;
    if AddressType::of(address) != addr_type {
        return Err("c= address does not match its address type");
    }
    Ok(Connection { address })
}

fn parse_attribute(value: &str) -> Attribute {
    match value.split_once(':') {
        Some((name, value)) => Attribute::new(name, value),
        None => Attribute::flag(value),
    }
}

/// RFC 8866 §5.14: `m=<media> <port>[/<number of ports>] <proto> <fmt> ...`.
fn parse_media(value: &str) -> Result<MediaDescription, &'static str> {
    let mut fields = value.split_whitespace();
    let media = fields.next().ok_or("m= is empty")?;
    let port_field = fields.next().ok_or("m= has no port")?;
    let (port, port_count) = match port_field.split_once('/') {
        Some((port, count)) => (port, Some(count.parse().map_err(|_| "m= port count is not a number")?)),
        None => (port_field, None),
    };
    let port = port.parse().map_err(|_| "m= port is not a number in 0-65535")?;
    let proto = fields.next().ok_or("m= has no transport protocol")?;
    let formats: Vec<String> = fields.map(str::to_owned).collect();
    if formats.is_empty() {
        return Err("m= lists no media formats");
    }
    Ok(MediaDescription {
        media: media.to_owned(),
        port,
        port_count,
        proto: proto.to_owned(),
        formats,
        connection: None,
        attributes: Vec::new(),
        other_lines: Vec::new(),
    })
}

fn write_connection(f: &mut fmt::Formatter<'_>, connection: &Connection) -> fmt::Result {
    write!(f, "c=IN {} {}\r\n", AddressType::of(connection.address).as_str(), connection.address)
}

fn write_attributes(f: &mut fmt::Formatter<'_>, attributes: &[Attribute]) -> fmt::Result {
    for attribute in attributes {
        match &attribute.value {
            Some(value) => write!(f, "a={}:{}\r\n", attribute.name, value)?,
            None => write!(f, "a={}\r\n", attribute.name)?,
        }
    }
    Ok(())
}

fn write_other(f: &mut fmt::Formatter<'_>, lines: &[(char, String)], kinds: &[char]) -> fmt::Result {
    for (kind, value) in lines.iter().filter(|(k, _)| kinds.contains(k)) {
        write!(f, "{kind}={value}\r\n")?;
    }
    Ok(())
}

/// Line types we order explicitly; anything else is written after the known ones of its level.
const SESSION_KNOWN: &[char] = &['i', 'u', 'e', 'p', 'b', 't', 'r', 'z', 'k'];
const MEDIA_KNOWN: &[char] = &['i', 'b', 'k'];

impl fmt::Display for MediaDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 8866 §5 order within a media description: m, i, c, b, k, a.
        write!(f, "m={} {}", self.media, self.port)?;
        if let Some(count) = self.port_count {
            write!(f, "/{count}")?;
        }
        write!(f, " {}", self.proto)?;
        for format in &self.formats {
            write!(f, " {format}")?;
        }
        f.write_str("\r\n")?;
        write_other(f, &self.other_lines, &['i'])?;
        if let Some(connection) = &self.connection {
            write_connection(f, connection)?;
        }
        write_other(f, &self.other_lines, &['b', 'k'])?;
        let unknown: Vec<(char, String)> =
            self.other_lines.iter().filter(|(k, _)| !MEDIA_KNOWN.contains(k)).cloned().collect();
        let unknown_kinds: Vec<char> = unknown.iter().map(|(k, _)| *k).collect();
        write_other(f, &unknown, &unknown_kinds)?;
        write_attributes(f, &self.attributes)
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // RFC 8866 §5 order: v, o, s, i, u, e, p, c, b, t, r, z, k, a, then media sections.
        f.write_str("v=0\r\n")?;
        if let Some(origin) = &self.origin {
            write!(
                f,
                "o={} {} {} IN {} {}\r\n",
                origin.username,
                origin.session_id,
                origin.session_version,
                origin.address_type.as_str(),
                origin.address
            )?;
        }
        // s= is mandatory; "-" is the conventional placeholder (RFC 8866 §5.3).
        write!(f, "s={}\r\n", self.session_name.as_deref().unwrap_or("-"))?;
        write_other(f, &self.other_lines, &['i', 'u', 'e', 'p'])?;
        if let Some(connection) = &self.connection {
            write_connection(f, connection)?;
        }
        write_other(f, &self.other_lines, &['b'])?;
        let timing = self.timing.unwrap_or_default();
        write!(f, "t={} {}\r\n", timing.start, timing.stop)?;
        write_other(f, &self.other_lines, &['t', 'r', 'z', 'k'])?;
        let unknown: Vec<(char, String)> =
            self.other_lines.iter().filter(|(k, _)| !SESSION_KNOWN.contains(k)).cloned().collect();
        let unknown_kinds: Vec<char> = unknown.iter().map(|(k, _)| *k).collect();
        write_other(f, &unknown, &unknown_kinds)?;
        write_attributes(f, &self.attributes)?;
        for media in &self.media {
            write!(f, "{media}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "v=0\r\n\
o=alice 2890844526 2890844527 IN IP4 192.0.2.10\r\n\
s=call\r\n\
c=IN IP4 192.0.2.10\r\n\
b=AS:64\r\n\
t=0 0\r\n\
a=sendonly\r\n\
m=audio 49170 RTP/AVP 0 8 101\r\n\
c=IN IP4 192.0.2.11\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:30\r\n\
a=x-unknown\r\n\
m=video 0 RTP/AVP 31\r\n";

    #[test]
    fn parses_sample() {
        let sdp = SessionDescription::parse(SAMPLE).unwrap();
        let origin = sdp.origin.as_ref().unwrap();
        assert_eq!(origin.session_id, "2890844526");
        assert_eq!(origin.address_type, AddressType::Ip4);
        assert_eq!(sdp.session_name.as_deref(), Some("call"));
        assert_eq!(sdp.direction(), Some(Direction::SendOnly));
        assert_eq!(sdp.media.len(), 2);
        let audio = &sdp.media[0];
        assert_eq!(audio.port, 49170);
        assert_eq!(audio.formats, ["0", "8", "101"]);
        assert_eq!(audio.connection.unwrap().address.to_string(), "192.0.2.11");
        assert_eq!(audio.rtpmap(101).unwrap().encoding_name, "telephone-event");
        assert_eq!(audio.fmtp(101), Some("0-15"));
        assert_eq!(audio.ptime_ms(), Some(30));
        assert_eq!(audio.rtpmap(8), None);
        assert_eq!(sdp.media_direction(audio), Direction::SendOnly);
        assert_eq!(sdp.media[1].port, 0);
    }

    #[test]
    fn round_trips_through_display() {
        let sdp = SessionDescription::parse(SAMPLE).unwrap();
        let text = sdp.to_string();
        assert_eq!(text, SAMPLE);
        assert_eq!(SessionDescription::parse(&text).unwrap(), sdp);
    }

    #[test]
    fn media_direction_overrides_session_direction() {
        let sdp = SessionDescription::parse("v=0\na=inactive\nm=audio 1 RTP/AVP 0\na=recvonly\nm=audio 2 RTP/AVP 0\n")
            .unwrap();
        assert_eq!(sdp.media_direction(&sdp.media[0]), Direction::RecvOnly);
        assert_eq!(sdp.media_direction(&sdp.media[1]), Direction::Inactive);
    }

    #[test]
    fn rtpmap_parsing() {
        let map = RtpMap::parse("111 opus/48000/2").unwrap();
        assert_eq!(map.payload_type, 111);
        assert_eq!(map.clock_rate, 48000);
        assert_eq!(map.channels, Some(2));
        assert_eq!(RtpMap::parse("111"), None);
        assert_eq!(RtpMap::parse("x opus/48000"), None);
        assert_eq!(RtpMap::parse("300 opus/48000"), None);
        assert_eq!(RtpMap::parse("96 opus/fast"), None);
    }

    #[test]
    fn malformed_lines_report_their_number() {
        let cases = [
            ("v=0\nhello\n", 2),
            ("v=1\n", 1),
            ("v=0\r\ns=x\r\nc=IN IP4 not-an-ip\r\n", 3),
            ("v=0\nm=audio 70000 RTP/AVP 0\n", 2),
            ("v=0\nm=audio 4000 RTP/AVP\n", 2),
            ("v=0\nc=IN IP6 192.0.2.1\n", 2),
            ("v=0\nt=now\n", 2),
            ("=x\n", 1),
        ];
        for (text, line) in cases {
            match SessionDescription::parse(text) {
                Err(SdpError::Malformed { line: got, .. }) => assert_eq!(got, line, "{text:?}"),
                other => panic!("{text:?}: expected Malformed, got {other:?}"),
            }
        }
    }

    #[test]
    fn empty_input_is_malformed() {
        assert!(matches!(SessionDescription::parse("\r\n"), Err(SdpError::Malformed { line: 1, .. })));
    }

    #[test]
    fn multicast_ttl_suffix_is_dropped() {
        let sdp = SessionDescription::parse("v=0\nc=IN IP4 224.2.1.1/127\n").unwrap();
        assert_eq!(sdp.connection.unwrap().address.to_string(), "224.2.1.1");
    }
}
