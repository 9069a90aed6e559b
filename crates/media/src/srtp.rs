//! SRTP and SRTCP (RFC 3711) for the AES-CM / HMAC-SHA1 suites SDES negotiates
//! (`AES_CM_128_HMAC_SHA1_80` and `_32`, RFC 4568 §6.2), sans-IO.
//!
//! One [`SrtpContext`] per direction: the sending one (our master key) protects our RTP and
//! RTCP, the receiving one (the peer's key) unprotects theirs. What each does:
//! - session keys derived once from the master key and salt (§4.3.1, key derivation rate 0);
//! - AES-128 in counter mode (§4.1.1) over the payload (RTP) or everything after the first
//!   8 bytes (RTCP), HMAC-SHA1 (§4.2.1) over the header, the ciphertext and the rollover
//!   counter (RTP) or the E-bit and SRTCP index (RTCP), truncated to the suite's tag;
//! - the rollover counter estimated from the sequence number (§3.3.1, Appendix A) per SSRC;
//! - replay protection (§3.3.2): a [`REPLAY_WINDOW`]-packet sliding window per SSRC, and the
//!   window only moves for packets that authenticated.
//!
//! Nothing here allocates per packet except the `Vec` a protect returns (unprotect decrypts in
//! place in the caller's buffer). A receiving context keeps state for at most
//! [`MAX_STREAMS`] SSRCs (a peer restarting its stream gets a new SSRC; the oldest is
//! forgotten).

use aes::Aes128;
use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher, StreamCipherCoreWrapper};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use switchboard_sdp::{MasterKey, SrtpSuite};
use thiserror::Error;

use crate::rtp::RTP_HEADER_LEN;

type Aes128CtrCore = ctr::CtrCore<Aes128, ctr::flavors::Ctr128BE>;
type HmacSha1 = Hmac<Sha1>;

/// Packets behind the highest index still accepted once each (RFC 3711 §3.3.2 asks for 64 at
/// least).
pub const REPLAY_WINDOW: u64 = 128;
/// SSRCs a receiving context tracks at most.
pub const MAX_STREAMS: usize = 4;
/// The 8-byte RTCP header SRTCP leaves in clear (§3.4).
const RTCP_CLEAR_LEN: usize = 8;
/// The E-bit and 31-bit SRTCP index trailer.
const SRTCP_INDEX_LEN: usize = 4;
/// The SRTCP index wraps at 2^31 (§3.4); we never re-key, so a context stops there.
const SRTCP_INDEX_MAX: u32 = 0x7FFF_FFFF;

/// Why a packet was not accepted. A tampered or foreign packet is an
/// [`SrtpError::AuthenticationFailed`]; the shell drops it and counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SrtpError {
    /// Shorter than a header plus the authentication tag (or not RTP/RTCP at all).
    #[error("packet too short for SRTP ({len} bytes)")]
    TooShort { len: usize },
    /// The tag does not match: tampered, or not sent with the negotiated key.
    #[error("SRTP authentication failed")]
    AuthenticationFailed,
    /// A packet seen before, or older than the replay window.
    #[error("SRTP replay (index {index})")]
    Replayed { index: u64 },
    /// The SRTCP index space is used up; the call must be re-keyed (we do not).
    #[error("SRTCP index exhausted")]
    IndexExhausted,
}

/// Session keys for one of SRTP / SRTCP (§4.3.1).
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; 14],
    auth: HmacSha1,
}

impl SessionKeys {
    /// Labels: 0/1/2 for SRTP's cipher key, auth key and salt, 3/4/5 for SRTCP's.
    fn derive(master: &MasterKey, first_label: u8) -> SessionKeys {
        let prf = Aes128::new(master.key().into());
        let mut cipher_key = [0u8; 16];
        let mut auth_key = [0u8; 20];
        let mut salt = [0u8; 14];
        derive(&prf, master.salt(), first_label, &mut cipher_key);
        derive(&prf, master.salt(), first_label + 1, &mut auth_key);
        derive(&prf, master.salt(), first_label + 2, &mut salt);
        // HMAC pads a key shorter than the hash's 64-byte block with zeros (RFC 2104 §2): the
        // infallible fixed-size constructor with the padded key is the same MAC.
        let mut padded = [0u8; 64];
        for (out, byte) in padded.iter_mut().zip(auth_key) {
            *out = byte;
        }
        let auth = <HmacSha1 as KeyInit>::new(&padded.into());
        SessionKeys { cipher: Aes128::new(&cipher_key.into()), salt, auth }
    }

    /// XORs the AES-CM keystream for `(ssrc, index)` into `data` (§4.1.1).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        for (out, salt) in iv.iter_mut().zip(self.salt.iter()) {
            *out = *salt;
        }
        for (out, byte) in iv.iter_mut().skip(4).zip(ssrc.to_be_bytes()) {
            *out ^= byte;
        }
        // The 48-bit index lands in bytes 8..14.
        for (out, byte) in iv.iter_mut().skip(8).zip(index.to_be_bytes().iter().skip(2)) {
            *out ^= byte;
        }
        let core = Aes128CtrCore::inner_iv_init(self.cipher.clone(), &iv.into());
        let mut keystream = StreamCipherCoreWrapper::from_core(core);
        keystream.apply_keystream(data);
    }

    /// HMAC-SHA1 over `parts`, full 20 bytes.
    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The AES-CM PRF (§4.3.3): `out` = keystream of `IV = (salt XOR label << 48) * 2^16`.
fn derive(prf: &Aes128, master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    for (out, salt) in iv.iter_mut().zip(master_salt.iter()) {
        *out = *salt;
    }
    // key_id = label || index DIV kdr (48 bits, zero): the label is byte 7 of the 14.
    if let Some(byte) = iv.get_mut(7) {
        *byte ^= label;
    }
    let mut counter = u128::from_be_bytes(iv);
    for chunk in out.chunks_mut(16) {
        let mut block = counter.to_be_bytes().into();
        prf.encrypt_block(&mut block);
        for (o, k) in chunk.iter_mut().zip(block.iter()) {
            *o = *k;
        }
        counter = counter.wrapping_add(1);
    }
}

/// Constant-time tag comparison.
fn tags_match(expected: &[u8], received: &[u8]) -> bool {
    expected.len() == received.len() && expected.iter().zip(received).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

/// Replay state of one SSRC (§3.3.1 and §3.3.2): the highest index that authenticated and the
/// window behind it.
#[derive(Debug, Clone, Copy)]
struct ReplayState {
    ssrc: u32,
    highest: u64,
    /// Bit `n` set: index `highest - n` was received.
    window: u128,
}

impl ReplayState {
    /// The index of `sequence` (§3.3.1): the rollover counter that puts it closest to the
    /// highest index seen.
    fn estimate(&self, sequence: u16) -> u64 {
        let roc = self.highest >> 16;
        let s_l = self.highest & 0xFFFF;
        let seq = u64::from(sequence);
        let guess = if s_l < 0x8000 {
            if seq > s_l + 0x8000 { roc.checked_sub(1) } else { Some(roc) }
        } else if s_l - 0x8000 > seq {
            Some(roc + 1)
        } else {
            Some(roc)
        };
        // Before the first wrap a "previous ROC" does not exist: treat it as very old.
        guess.map_or(u64::MAX, |v| (v << 16) | seq)
    }

    fn check(&self, index: u64) -> Result<(), SrtpError> {
        if index == u64::MAX {
            return Err(SrtpError::Replayed { index: 0 });
        }
        if index > self.highest {
            return Ok(());
        }
        let behind = self.highest - index;
        if behind >= REPLAY_WINDOW || self.window & (1u128 << behind) != 0 {
            return Err(SrtpError::Replayed { index });
        }
        Ok(())
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.window = if shift >= REPLAY_WINDOW { 0 } else { self.window << shift };
            self.window |= 1;
            self.highest = index;
        } else {
            self.window |= 1u128 << (self.highest - index);
        }
    }
}

/// Counters a receiving context keeps (the shell turns them into metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpStats {
    pub protected: u64,
    pub unprotected: u64,
    pub auth_failures: u64,
    pub replays: u64,
}

/// One direction's SRTP and SRTCP crypto state.
pub struct SrtpContext {
    suite: SrtpSuite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// Receiving: per-SSRC RTP replay state, oldest first. Sending: our stream's index.
    rtp_streams: Vec<ReplayState>,
    /// Receiving: per-SSRC SRTCP replay state.
    rtcp_streams: Vec<ReplayState>,
    /// Sending: the next SRTCP index.
    next_rtcp_index: u32,
    stats: SrtpStats,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext").field("suite", &self.suite).field("stats", &self.stats).finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// A context for `suite` keyed with `master` (ours to send, the peer's to receive).
    pub fn new(suite: SrtpSuite, master: &MasterKey) -> SrtpContext {
        SrtpContext {
            suite,
            rtp: SessionKeys::derive(master, 0),
            rtcp: SessionKeys::derive(master, 3),
            rtp_streams: Vec::with_capacity(1),
            rtcp_streams: Vec::with_capacity(1),
            next_rtcp_index: 0,
            stats: SrtpStats::default(),
        }
    }

    pub fn suite(&self) -> SrtpSuite {
        self.suite
    }

    pub fn stats(&self) -> SrtpStats {
        self.stats
    }

    /// Protects one RTP packet (header as written by [`crate::rtp::write_rtp`] or any valid
    /// one) into a new buffer: the payload encrypted, the tag appended.
    pub fn protect(&mut self, rtp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut packet = Vec::with_capacity(rtp.len() + self.suite.rtp_tag_len());
        packet.extend_from_slice(rtp);
        self.protect_in_place(&mut packet)?;
        Ok(packet)
    }

    /// Protects one RTP packet in its own buffer (no allocation when it has room for the tag).
    /// On error the packet is unchanged.
    pub fn protect_in_place(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let rtp = packet.as_slice();
        let header_len = rtp_header_len(rtp)?;
        let (ssrc, sequence) = rtp_ssrc_sequence(rtp)?;
        // Our own stream: the same estimate from the last index sent keeps the ROC (a sender's
        // sequence only moves forward, so a wrap is the only big backward step).
        let index = match stream_mut(&mut self.rtp_streams, ssrc) {
            Some(state) => {
                let index = state.estimate(sequence);
                if index != u64::MAX && index > state.highest {
                    state.highest = index;
                }
                if index == u64::MAX { u64::from(sequence) } else { index }
            }
            None => {
                insert_stream(&mut self.rtp_streams, ReplayState { ssrc, highest: u64::from(sequence), window: 1 });
                u64::from(sequence)
            }
        };
        let tag_len = self.suite.rtp_tag_len();
        if let Some(payload) = packet.get_mut(header_len..) {
            self.rtp.apply_keystream(ssrc, index, payload);
        }
        let roc = ((index >> 16) as u32).to_be_bytes();
        let tag = self.rtp.tag(&[packet, &roc]);
        packet.extend_from_slice(tag.get(..tag_len).unwrap_or_default());
        self.stats.protected += 1;
        Ok(())
    }

    /// Checks and decrypts one SRTP packet in place; returns the RTP packet's length (a prefix
    /// of `packet`). A packet that fails is left as it was, and the replay state is only
    /// updated by packets that authenticated.
    pub fn unprotect(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let len = packet.len();
        let rtp_len = len.checked_sub(tag_len).filter(|&n| n >= RTP_HEADER_LEN).ok_or(SrtpError::TooShort { len })?;
        let (rtp, received_tag) = packet.split_at_mut(rtp_len);
        let header_len = rtp_header_len(rtp)?;
        let (ssrc, sequence) = rtp_ssrc_sequence(rtp)?;
        let known = self.rtp_streams.iter().position(|s| s.ssrc == ssrc);
        let index = match known.and_then(|i| self.rtp_streams.get(i)) {
            Some(state) => {
                let index = state.estimate(sequence);
                if let Err(e) = state.check(index) {
                    self.stats.replays += 1;
                    return Err(e);
                }
                index
            }
            // A new SSRC starts at ROC 0 (§3.3.1).
            None => u64::from(sequence),
        };
        let roc = ((index >> 16) as u32).to_be_bytes();
        let expected = self.rtp.tag(&[rtp, &roc]);
        if !tags_match(expected.get(..tag_len).unwrap_or_default(), received_tag) {
            self.stats.auth_failures += 1;
            return Err(SrtpError::AuthenticationFailed);
        }
        if let Some(payload) = rtp.get_mut(header_len..) {
            self.rtp.apply_keystream(ssrc, index, payload);
        }
        match known.and_then(|i| self.rtp_streams.get_mut(i)) {
            Some(state) => state.accept(index),
            None => insert_stream(&mut self.rtp_streams, ReplayState { ssrc, highest: index, window: 1 }),
        }
        self.stats.unprotected += 1;
        Ok(rtp_len)
    }

    /// Protects one RTCP compound packet: everything after the first 8 bytes encrypted, the
    /// E-bit and SRTCP index appended, then the 80-bit tag (§3.4).
    pub fn protect_rtcp(&mut self, rtcp: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let ssrc = rtcp_ssrc(rtcp)?;
        let index = self.next_rtcp_index;
        if index > SRTCP_INDEX_MAX {
            return Err(SrtpError::IndexExhausted);
        }
        self.next_rtcp_index += 1;
        let tag_len = self.suite.rtcp_tag_len();
        let mut packet = Vec::with_capacity(rtcp.len() + SRTCP_INDEX_LEN + tag_len);
        packet.extend_from_slice(rtcp);
        if let Some(body) = packet.get_mut(RTCP_CLEAR_LEN..) {
            self.rtcp.apply_keystream(ssrc, u64::from(index), body);
        }
        packet.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.rtcp.tag(&[&packet]);
        packet.extend_from_slice(tag.get(..tag_len).unwrap_or_default());
        self.stats.protected += 1;
        Ok(packet)
    }

    /// Checks and decrypts one SRTCP packet in place; returns the RTCP packet's length.
    pub fn unprotect_rtcp(&mut self, packet: &mut [u8]) -> Result<usize, SrtpError> {
        let tag_len = self.suite.rtcp_tag_len();
        let len = packet.len();
        let authenticated_len = len
            .checked_sub(tag_len)
            .filter(|&n| n >= RTCP_CLEAR_LEN + SRTCP_INDEX_LEN)
            .ok_or(SrtpError::TooShort { len })?;
        let (authenticated, received_tag) = packet.split_at_mut(authenticated_len);
        let rtcp_len = authenticated_len - SRTCP_INDEX_LEN;
        let ssrc = rtcp_ssrc(authenticated)?;
        let trailer = authenticated
            .get(rtcp_len..)
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .ok_or(SrtpError::TooShort { len })?;
        let e_and_index = u32::from_be_bytes(trailer);
        let encrypted = e_and_index & 0x8000_0000 != 0;
        let index = u64::from(e_and_index & SRTCP_INDEX_MAX);
        let known = self.rtcp_streams.iter().position(|s| s.ssrc == ssrc);
        if let Some(state) = known.and_then(|i| self.rtcp_streams.get(i))
            && let Err(e) = state.check(index)
        {
            self.stats.replays += 1;
            return Err(e);
        }
        let expected = self.rtcp.tag(&[authenticated]);
        if !tags_match(expected.get(..tag_len).unwrap_or_default(), received_tag) {
            self.stats.auth_failures += 1;
            return Err(SrtpError::AuthenticationFailed);
        }
        if encrypted && let Some(body) = authenticated.get_mut(RTCP_CLEAR_LEN..rtcp_len) {
            self.rtcp.apply_keystream(ssrc, index, body);
        }
        match known.and_then(|i| self.rtcp_streams.get_mut(i)) {
            Some(state) => state.accept(index),
            None => insert_stream(&mut self.rtcp_streams, ReplayState { ssrc, highest: index, window: 1 }),
        }
        self.stats.unprotected += 1;
        Ok(rtcp_len)
    }
}

fn stream_mut(streams: &mut [ReplayState], ssrc: u32) -> Option<&mut ReplayState> {
    streams.iter_mut().find(|s| s.ssrc == ssrc)
}

/// Adds a stream, forgetting the oldest beyond [`MAX_STREAMS`].
fn insert_stream(streams: &mut Vec<ReplayState>, state: ReplayState) {
    if streams.len() >= MAX_STREAMS {
        streams.remove(0);
    }
    streams.push(state);
}

/// The RTP header's length with CSRCs and extension (what SRTP leaves in clear).
fn rtp_header_len(rtp: &[u8]) -> Result<usize, SrtpError> {
    let too_short = SrtpError::TooShort { len: rtp.len() };
    let first = *rtp.first().ok_or(too_short)?;
    let mut len = RTP_HEADER_LEN + 4 * usize::from(first & 0x0F);
    if first & 0x10 != 0 {
        let words: [u8; 2] = rtp.get(len + 2..len + 4).and_then(|w| w.try_into().ok()).ok_or(too_short)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes(words));
    }
    if len > rtp.len() {
        return Err(too_short);
    }
    Ok(len)
}

fn rtp_ssrc_sequence(rtp: &[u8]) -> Result<(u32, u16), SrtpError> {
    let too_short = SrtpError::TooShort { len: rtp.len() };
    let sequence: [u8; 2] = rtp.get(2..4).and_then(|b| b.try_into().ok()).ok_or(too_short)?;
    let ssrc: [u8; 4] = rtp.get(8..12).and_then(|b| b.try_into().ok()).ok_or(too_short)?;
    Ok((u32::from_be_bytes(ssrc), u16::from_be_bytes(sequence)))
}

fn rtcp_ssrc(rtcp: &[u8]) -> Result<u32, SrtpError> {
    let ssrc: [u8; 4] =
        rtcp.get(4..8).and_then(|b| b.try_into().ok()).ok_or(SrtpError::TooShort { len: rtcp.len() })?;
    Ok(u32::from_be_bytes(ssrc))
}

#[cfg(test)]
mod tests;
