//! SDES key exchange for SRTP (RFC 4568): the `a=crypto` attribute, the suites we speak, the
//! per-call policy and the keys a negotiation settles on.
//!
//! `a=crypto:<tag> <crypto-suite> inline:<base64(key||salt)>[|<lifetime>][|<MKI>:<length>] [<session-params>]`
//!
//! What we accept: one `inline:` key per line, no MKI (we would have to carry it in every
//! packet and keep several master keys), a lifetime only when it is at least 2^31 packets (we
//! never re-key, and 2^31 is SRTCP's whole index space: 497 days of 20 ms packets), session
//! parameters only `WSH=` (a window-size hint; ours is larger anyway) and the `-`-prefixed
//! ones RFC 4568 §6.3.7 lets us ignore. Anything else skips the line (RFC 4568 §7.1.1: the
//! answerer picks the first line it can use).
//!
//! Keys never reach a log: [`MasterKey`] and [`SrtpKeys`] print as `<redacted>`.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Length of an AES-128 master key, bytes.
pub const MASTER_KEY_LEN: usize = 16;
/// Length of an AES-CM master salt, bytes (112 bits, RFC 3711 §8.2).
pub const MASTER_SALT_LEN: usize = 14;
/// The smallest `|lifetime` we accept (see the module docs).
const MIN_LIFETIME_LOG2: u32 = 31;

/// An SRTP crypto suite (RFC 4568 §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SrtpSuite {
    /// AES-128 counter mode, HMAC-SHA1 with an 80-bit tag on SRTP and SRTCP.
    AesCm128HmacSha1_80,
    /// AES-128 counter mode, HMAC-SHA1 with a 32-bit tag on SRTP (80 bits on SRTCP, RFC 4568 §6.2.2).
    AesCm128HmacSha1_32,
}

impl SrtpSuite {
    /// The suites we offer, in our order of preference.
    pub const OFFERED: [SrtpSuite; 2] = [SrtpSuite::AesCm128HmacSha1_80, SrtpSuite::AesCm128HmacSha1_32];

    /// The suite's name in `a=crypto`.
    pub fn name(self) -> &'static str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite named (case-sensitive, as RFC 4568's registry spells them).
    pub fn from_name(name: &str) -> Option<SrtpSuite> {
        SrtpSuite::OFFERED.into_iter().find(|suite| suite.name() == name)
    }

    /// The SRTP authentication tag length, bytes.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 => 4,
        }
    }

    /// The SRTCP authentication tag length, bytes (80 bits for both suites).
    pub fn rtcp_tag_len(self) -> usize {
        10
    }
}

impl fmt::Display for SrtpSuite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A master key and salt (RFC 3711 §3.2.1). `Debug` never shows them.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MasterKey {
    key: [u8; MASTER_KEY_LEN],
    salt: [u8; MASTER_SALT_LEN],
}

impl MasterKey {
    /// A key from its parts (the caller draws them from a CSPRNG).
    pub fn new(key: [u8; MASTER_KEY_LEN], salt: [u8; MASTER_SALT_LEN]) -> MasterKey {
        MasterKey { key, salt }
    }

    /// `key || salt` as SDES carries it (30 bytes); `None` for any other length.
    pub fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        let (key, salt) = bytes.split_first_chunk::<MASTER_KEY_LEN>()?;
        Some(MasterKey { key: *key, salt: salt.try_into().ok()? })
    }

    /// The AES master key.
    pub fn key(&self) -> &[u8; MASTER_KEY_LEN] {
        &self.key
    }

    /// The master salt.
    pub fn salt(&self) -> &[u8; MASTER_SALT_LEN] {
        &self.salt
    }

    /// `base64(key || salt)`, the `inline:` value.
    fn to_base64(self) -> String {
        let mut bytes = [0u8; MASTER_KEY_LEN + MASTER_SALT_LEN];
        for (out, byte) in bytes.iter_mut().zip(self.key.iter().chain(self.salt.iter())) {
            *out = *byte;
        }
        BASE64.encode(bytes)
    }
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// One `a=crypto` line: tag, suite and key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoAttribute {
    /// The tag the answer echoes (1 to 9 digits, RFC 4568 §9.1).
    pub tag: u32,
    pub suite: SrtpSuite,
    pub key: MasterKey,
}

/// Why an `a=crypto` line cannot be used; the line is skipped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CryptoLineError {
    /// Not `<tag> <suite> <key-params>` with a numeric tag.
    Malformed(&'static str),
    /// A suite we do not implement (the name as offered, bounded).
    UnknownSuite(String),
    /// The `inline:` key is not base64 of 30 bytes.
    BadKey,
    /// The key carries an MKI.
    Mki,
    /// The key's lifetime is shorter than we could honour without re-keying.
    Lifetime,
    /// More than one key on the line.
    SeveralKeys,
    /// A session parameter we must not ignore (e.g. `UNENCRYPTED_SRTP`, `KDR=`).
    SessionParameter(String),
}

impl fmt::Display for CryptoLineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CryptoLineError::Malformed(what) => write!(f, "malformed ({what})"),
            CryptoLineError::UnknownSuite(name) => write!(f, "unsupported suite {name}"),
            CryptoLineError::BadKey => f.write_str("inline key is not base64 of a 16-byte key and 14-byte salt"),
            CryptoLineError::Mki => f.write_str("MKI not supported"),
            CryptoLineError::Lifetime => f.write_str("key lifetime shorter than 2^31 packets not supported"),
            CryptoLineError::SeveralKeys => f.write_str("several keys per line not supported"),
            CryptoLineError::SessionParameter(param) => write!(f, "session parameter {param} not supported"),
        }
    }
}

impl CryptoAttribute {
    /// Parses the attribute value (after `crypto:`).
    pub fn parse(value: &str) -> Result<CryptoAttribute, CryptoLineError> {
        let mut fields = value.split_whitespace();
        let tag = fields.next().ok_or(CryptoLineError::Malformed("no tag"))?;
        if tag.is_empty() || tag.len() > 9 || !tag.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CryptoLineError::Malformed("the tag is not 1-9 digits"));
        }
        let tag: u32 = tag.parse().map_err(|_| CryptoLineError::Malformed("the tag is not 1-9 digits"))?;
        let suite_name = fields.next().ok_or(CryptoLineError::Malformed("no crypto suite"))?;
        let suite = SrtpSuite::from_name(suite_name)
            .ok_or_else(|| CryptoLineError::UnknownSuite(suite_name.chars().take(40).collect()))?;
        let key_params = fields.next().ok_or(CryptoLineError::Malformed("no key parameters"))?;
        for param in fields {
            let acceptable = param.starts_with('-') || param.starts_with("WSH=");
            if !acceptable {
                return Err(CryptoLineError::SessionParameter(param.chars().take(40).collect()));
            }
        }
        if key_params.contains(';') {
            return Err(CryptoLineError::SeveralKeys);
        }
        let inline =
            key_params.strip_prefix("inline:").ok_or(CryptoLineError::Malformed("key method is not inline"))?;
        let mut parts = inline.split('|');
        let key_salt = parts.next().unwrap_or_default();
        let bytes = BASE64.decode(key_salt).map_err(|_| CryptoLineError::BadKey)?;
        let key = MasterKey::from_bytes(&bytes).ok_or(CryptoLineError::BadKey)?;
        for part in parts {
            if part.contains(':') {
                return Err(CryptoLineError::Mki);
            }
            if !lifetime_is_long_enough(part)? {
                return Err(CryptoLineError::Lifetime);
            }
        }
        Ok(CryptoAttribute { tag, suite, key })
    }

    /// The attribute value we write (`<tag> <suite> inline:<key>`): the key in clear, so this
    /// string goes into an SDP body and nowhere else.
    pub fn to_value(&self) -> String {
        format!("{} {} inline:{}", self.tag, self.suite.name(), self.key.to_base64())
    }
}

/// `2^N` or a decimal number of packets: true when at least 2^31.
fn lifetime_is_long_enough(text: &str) -> Result<bool, CryptoLineError> {
    const MALFORMED: CryptoLineError = CryptoLineError::Malformed("lifetime is not 2^N or a number");
    if let Some(exponent) = text.strip_prefix("2^") {
        let exponent: u32 = exponent.parse().map_err(|_| MALFORMED)?;
        return Ok(exponent >= MIN_LIFETIME_LOG2);
    }
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(MALFORMED);
    }
    // Any number of more than 19 digits is far above 2^31.
    Ok(text.parse::<u64>().map_or(true, |packets| packets >= 1 << MIN_LIFETIME_LOG2))
}

/// Whether a call's media must, may or must not be SRTP (`media.srtp`, `[trunks.NAME] srtp`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// Plain RTP only: an RTP/SAVP-only offer is refused (488).
    Off,
    /// Inbound: SRTP when offered, plain RTP when not. Outbound: plain RTP offers (we cannot
    /// know the callee speaks SRTP, and best-effort SRTP, RFC 5939, is out of scope).
    #[default]
    Optional,
    /// SRTP only: a plain offer is refused (488), our offers are RTP/SAVP.
    Required,
}

impl SrtpPolicy {
    /// The configuration value.
    pub fn name(self) -> &'static str {
        match self {
            SrtpPolicy::Off => "off",
            SrtpPolicy::Optional => "optional",
            SrtpPolicy::Required => "required",
        }
    }
}

/// The policy of one negotiation with our fresh master key for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpMode {
    /// Plain RTP only.
    #[default]
    Off,
    /// See [`SrtpPolicy::Optional`]; the key is used when SRTP is negotiated.
    Optional(MasterKey),
    /// See [`SrtpPolicy::Required`].
    Required(MasterKey),
}

impl SrtpMode {
    /// The mode of `policy` with `key` (drawn from a CSPRNG for this negotiation).
    pub fn new(policy: SrtpPolicy, key: MasterKey) -> SrtpMode {
        match policy {
            SrtpPolicy::Off => SrtpMode::Off,
            SrtpPolicy::Optional => SrtpMode::Optional(key),
            SrtpPolicy::Required => SrtpMode::Required(key),
        }
    }

    pub(crate) fn key(self) -> Option<MasterKey> {
        match self {
            SrtpMode::Off => None,
            SrtpMode::Optional(key) | SrtpMode::Required(key) => Some(key),
        }
    }

    pub(crate) fn is_required(self) -> bool {
        matches!(self, SrtpMode::Required(_))
    }
}

/// A negotiated SRTP stream: the suite and both directions' master keys. `Debug` shows the
/// suite only.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SrtpKeys {
    pub suite: SrtpSuite,
    /// Ours: we protect what we send with it.
    pub local: MasterKey,
    /// The peer's: we unprotect what we receive with it.
    pub remote: MasterKey,
}

impl fmt::Debug for SrtpKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SrtpKeys").field("suite", &self.suite).finish_non_exhaustive()
    }
}

/// RTP/SAVP and RTP/SAVPF (RFC 5124, feedback we simply do not send).
pub(crate) fn is_sdes_srtp(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/SAVP") || proto.eq_ignore_ascii_case("RTP/SAVPF")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz"; // RFC 4568 §9.1's example

    #[test]
    fn parses_the_rfc_example_and_writes_it_back() {
        let line = CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2^31")).unwrap();
        assert_eq!((line.tag, line.suite), (1, SrtpSuite::AesCm128HmacSha1_80));
        assert_eq!(line.to_value(), format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}"));
        let short = CryptoAttribute::parse(&format!("7 AES_CM_128_HMAC_SHA1_32 inline:{KEY} WSH=64 -vendor")).unwrap();
        assert_eq!((short.tag, short.suite), (7, SrtpSuite::AesCm128HmacSha1_32));
        assert_eq!(short.suite.rtp_tag_len(), 4);
        assert_eq!(short.suite.rtcp_tag_len(), 10);
        assert!(CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}|2147483648")).is_ok());
    }

    #[test]
    fn every_malformed_or_unusable_line_says_why() {
        let cases: &[(&str, CryptoLineError)] = &[
            ("", CryptoLineError::Malformed("no tag")),
            ("x AES_CM_128_HMAC_SHA1_80 inline:K", CryptoLineError::Malformed("the tag is not 1-9 digits")),
            ("1234567890 AES_CM_128_HMAC_SHA1_80 inline:K", CryptoLineError::Malformed("the tag is not 1-9 digits")),
            ("1", CryptoLineError::Malformed("no crypto suite")),
            ("1 AES_CM_128_HMAC_SHA1_80", CryptoLineError::Malformed("no key parameters")),
            ("1 F8_128_HMAC_SHA1_80 inline:K", CryptoLineError::UnknownSuite("F8_128_HMAC_SHA1_80".into())),
            ("1 AES_CM_128_HMAC_SHA1_80 uri:x", CryptoLineError::Malformed("key method is not inline")),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:!!!", CryptoLineError::BadKey),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:AAAA", CryptoLineError::BadKey),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^20", CryptoLineError::Lifetime),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|1048576", CryptoLineError::Lifetime),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^x", CryptoLineError::Malformed("lifetime is not 2^N or a number")),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|2^31|1:4", CryptoLineError::Mki),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY|1:4", CryptoLineError::Mki),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY;inline:KEY", CryptoLineError::SeveralKeys),
            (
                "1 AES_CM_128_HMAC_SHA1_80 inline:KEY UNENCRYPTED_SRTP",
                CryptoLineError::SessionParameter("UNENCRYPTED_SRTP".into()),
            ),
            ("1 AES_CM_128_HMAC_SHA1_80 inline:KEY KDR=10", CryptoLineError::SessionParameter("KDR=10".into())),
        ];
        for (line, expected) in cases {
            let line = line.replace("KEY", KEY);
            assert_eq!(CryptoAttribute::parse(&line).as_ref(), Err(expected), "{line}");
            assert!(!expected.to_string().is_empty());
        }
    }

    #[test]
    fn keys_never_show_in_debug() {
        let line = CryptoAttribute::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}")).unwrap();
        let keys = SrtpKeys { suite: line.suite, local: line.key, remote: line.key };
        for printed in [format!("{line:?}"), format!("{keys:?}"), format!("{:?}", SrtpMode::Required(line.key))] {
            assert!(!printed.contains(KEY), "{printed}");
            assert!(printed.contains("redacted") || printed.contains(".."), "{printed}");
        }
    }
}
