//! SDP (RFC 8866, formerly RFC 4566) model and both sides of the RFC 3264 offer/answer model
//! for one audio stream: the answerer (calls we receive) and the offerer (calls we place).
//!
//! The crate is pure: no sockets, no clocks. [`SessionDescription`] parses and serializes any
//! SDP leniently (unknown lines and attributes are kept); [`answer_offer`] turns a remote offer
//! into our answer plus the [`NegotiatedMedia`] the media layer needs; [`create_offer`] and
//! [`receive_answer`] do the same for an offer of ours and the remote answer.

// Byte-facing code must not panic on hostile input (issue 6): no slicing or indexing that can
// go out of bounds or split a UTF-8 character; use `get`, `split_at_checked`, iterators.
#![warn(clippy::string_slice, clippy::indexing_slicing)]
// Tests may unwrap and index: a panic is the failure report there.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::string_slice, clippy::indexing_slicing))]

mod codec;
mod crypto;
mod error;
mod model;
mod negotiate;
mod offer;

pub use codec::{Codec, Direction};
pub use crypto::{
    CryptoAttribute, CryptoLineError, MASTER_KEY_LEN, MASTER_SALT_LEN, MasterKey, SrtpKeys, SrtpMode, SrtpPolicy,
    SrtpSuite,
};
pub use error::SdpError;
pub use model::{AddressType, Attribute, Connection, MediaDescription, Origin, RtpMap, SessionDescription, Timing};
pub use negotiate::{AnswerPolicy, LocalMedia, NegotiatedMedia, OpusParams, SdpAnswer, answer_offer};
pub use offer::{
    OPUS_PAYLOAD_TYPE, OfferPolicy, OfferedCodec, SdpOffer, TELEPHONE_EVENT_8K_PAYLOAD_TYPE,
    TELEPHONE_EVENT_48K_PAYLOAD_TYPE, create_offer, receive_answer,
};
