//! SRTP for a call (issue 11): the policy (`media.srtp`, `[trunks.NAME] srtp`), our fresh SDES
//! master key per negotiation, and a leg's two crypto contexts in the call core.
//!
//! The SDP side is `switchboard_sdp` (RFC 4568), the packet side `switchboard_media::srtp`
//! (RFC 3711); this module joins them to the configuration and the metrics. Where it sits in
//! the media path (call/core): every datagram received on an SRTP leg is authenticated and
//! decrypted before the strict-RTP latch sees it, so a packet that does not authenticate is
//! dropped and counted and can never be learned as the caller's source; every packet we send is
//! protected as the last step before it is queued for the socket, so recording, taps and the
//! first-audio metrics all see the plain payloads.

use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use switchboard_media::srtp::{SrtpContext, SrtpError};
use switchboard_sdp::{MASTER_KEY_LEN, MASTER_SALT_LEN, MasterKey, SrtpKeys, SrtpMode, SrtpPolicy};

use crate::config::Config;
use crate::telemetry;

/// `media.srtp` and `[trunks.NAME] srtp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SrtpSetting {
    /// Plain RTP only; an RTP/SAVP-only offer gets 488.
    Off,
    /// Inbound: SRTP when offered, plain when not. Outbound: plain RTP offers.
    #[default]
    Optional,
    /// SRTP only: plain offers get 488, our offers are RTP/SAVP.
    Required,
}

impl SrtpSetting {
    pub fn policy(self) -> SrtpPolicy {
        match self {
            SrtpSetting::Off => SrtpPolicy::Off,
            SrtpSetting::Optional => SrtpPolicy::Optional,
            SrtpSetting::Required => SrtpPolicy::Required,
        }
    }

    /// The mode of one negotiation: this policy with a fresh key.
    pub fn mode(self) -> SrtpMode {
        SrtpMode::new(self.policy(), fresh_key())
    }
}

/// The policy of an inbound call: the trunk it came from (`crate::access::inbound_trunk`: its
/// `sources`, or its inbound credentials), else `media.srtp`.
pub fn inbound_setting(config: &Config, trunk: Option<&str>) -> SrtpSetting {
    trunk.and_then(|name| config.trunks.get(name)).map_or(config.media.srtp, |trunk| trunk.srtp)
}

/// A new master key and salt from the thread's CSPRNG (ChaCha, seeded from the OS): one per
/// negotiation, never reused across calls.
pub fn fresh_key() -> MasterKey {
    let mut key = [0u8; MASTER_KEY_LEN];
    let mut salt = [0u8; MASTER_SALT_LEN];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut key);
    rng.fill_bytes(&mut salt);
    MasterKey::new(key, salt)
}

/// The CDR's and call summary's `media_security`: the suite's name, or `"rtp"` for plain media.
pub fn media_security(keys: Option<&SrtpKeys>) -> &'static str {
    keys.map_or("rtp", |keys| keys.suite.name())
}

/// Counts a call whose media is SRTP (`switchboard_srtp_calls_total{suite}`).
pub fn count_call(keys: Option<&SrtpKeys>) {
    if let Some(keys) = keys {
        metrics::counter!(telemetry::SRTP_CALLS_TOTAL, "suite" => keys.suite.name()).increment(1);
    }
}

/// Largest datagram a leg decrypts (the shell's receive buffers are 2048 bytes).
pub const MAX_DATAGRAM: usize = 2048;
/// Bytes SRTP adds to an RTP packet at most (the 80-bit tag); senders reserve it up front.
pub const MAX_RTP_OVERHEAD: usize = 10;

/// One leg's SRTP: ours to protect what we send, the peer's to check what we receive.
#[derive(Debug)]
pub struct LegSrtp {
    send: SrtpContext,
    receive: SrtpContext,
}

impl LegSrtp {
    pub fn new(keys: &SrtpKeys) -> LegSrtp {
        LegSrtp { send: SrtpContext::new(keys.suite, &keys.local), receive: SrtpContext::new(keys.suite, &keys.remote) }
    }

    /// Authenticates and decrypts a received SRTP datagram into `out`; `None` (counted) when it
    /// does not authenticate, is a replay, or does not fit.
    pub fn unprotect_rtp<'a>(&mut self, datagram: &[u8], out: &'a mut [u8; MAX_DATAGRAM]) -> Option<&'a [u8]> {
        let buf = out.get_mut(..datagram.len())?;
        buf.copy_from_slice(datagram);
        let result = self.receive.unprotect(buf);
        Self::verdict(result, "rtp").and_then(|len| out.get(..len))
    }

    /// The same for an SRTCP datagram.
    pub fn unprotect_rtcp<'a>(&mut self, datagram: &[u8], out: &'a mut [u8; MAX_DATAGRAM]) -> Option<&'a [u8]> {
        let buf = out.get_mut(..datagram.len())?;
        buf.copy_from_slice(datagram);
        let result = self.receive.unprotect_rtcp(buf);
        Self::verdict(result, "rtcp").and_then(|len| out.get(..len))
    }

    /// Protects an RTP packet of ours in place (give it [`MAX_RTP_OVERHEAD`] bytes of spare
    /// capacity); false only for a packet our own code malformed.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> bool {
        self.send.protect_in_place(packet).is_ok()
    }

    /// Protects an RTCP compound packet of ours; `None` once the SRTCP index is used up.
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Option<Vec<u8>> {
        self.send.protect_rtcp(packet).ok()
    }

    fn verdict(result: Result<usize, SrtpError>, kind: &'static str) -> Option<usize> {
        match result {
            Ok(len) => Some(len),
            Err(SrtpError::Replayed { .. }) => {
                metrics::counter!(telemetry::SRTP_REPLAYS_TOTAL, "kind" => kind).increment(1);
                None
            }
            Err(SrtpError::AuthenticationFailed | SrtpError::TooShort { .. } | SrtpError::IndexExhausted) => {
                metrics::counter!(telemetry::SRTP_AUTH_FAILURES_TOTAL, "kind" => kind).increment(1);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use switchboard_sdp::SrtpSuite;

    use super::*;

    #[test]
    fn the_inbound_policy_is_the_trunks_else_media_srtp() {
        let mut config = Config::default();
        assert_eq!(inbound_setting(&config, None), SrtpSetting::Optional, "the default");
        config.media.srtp = SrtpSetting::Off;
        config
            .trunks
            .insert("carrier".into(), crate::config::TrunkConfig { srtp: SrtpSetting::Required, ..Default::default() });
        assert_eq!(inbound_setting(&config, None), SrtpSetting::Off);
        assert_eq!(inbound_setting(&config, Some("carrier")), SrtpSetting::Required);
        assert_eq!(inbound_setting(&config, Some("gone")), SrtpSetting::Off);
    }

    #[test]
    fn fresh_keys_differ_and_modes_carry_them() {
        assert_ne!(fresh_key(), fresh_key());
        assert_eq!(SrtpSetting::Off.mode(), SrtpMode::Off);
        assert!(matches!(SrtpSetting::Required.mode(), SrtpMode::Required(_)));
        assert!(matches!(SrtpSetting::Optional.mode(), SrtpMode::Optional(_)));
    }

    /// Two legs keyed crosswise talk; a packet from a stranger's key, or a replay, is dropped.
    #[test]
    fn a_leg_unprotects_its_peers_packets_and_drops_strangers() {
        let (ours, theirs) = (fresh_key(), fresh_key());
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let mut gateway = LegSrtp::new(&SrtpKeys { suite, local: ours, remote: theirs });
        let mut phone = LegSrtp::new(&SrtpKeys { suite, local: theirs, remote: ours });
        let rtp = [0x80, 0, 0, 1, 0, 0, 0, 160, 0, 0, 0, 9, 0xFF, 0xFF, 0xFF, 0xFF];
        let mut sent = rtp.to_vec();
        assert!(phone.protect_rtp(&mut sent));
        let mut out = [0u8; MAX_DATAGRAM];
        assert_eq!(gateway.unprotect_rtp(&sent, &mut out), Some(&rtp[..]));
        assert_eq!(gateway.unprotect_rtp(&sent, &mut out), None, "replay");
        let mut stranger = LegSrtp::new(&SrtpKeys { suite, local: fresh_key(), remote: ours });
        let mut forged = rtp.to_vec();
        assert!(stranger.protect_rtp(&mut forged));
        assert_eq!(gateway.unprotect_rtp(&forged, &mut out), None);
        assert_eq!(gateway.unprotect_rtp(&[0u8; MAX_DATAGRAM + 1], &mut out), None, "too big");
        let rtcp = [0x80, 200, 0, 1, 0, 0, 0, 9];
        let report = gateway.protect_rtcp(&rtcp).unwrap();
        assert_eq!(phone.unprotect_rtcp(&report, &mut out), Some(&rtcp[..]));
        assert_eq!(media_security(None), "rtp");
        assert_eq!(media_security(Some(&SrtpKeys { suite, local: ours, remote: theirs })), "AES_CM_128_HMAC_SHA1_80");
    }
}
