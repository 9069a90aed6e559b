//! Media plane building blocks for the gateway: RTP and RTCP packets, G.711, G.722, Opus, an inbound adaptive jitter buffer,
//! an outbound pacer, a polyphase resampler, the adaptation between RTP frames and the model's
//! audio format, and signal helpers for tests and the simulator.
//!
//! Everything here is pure and sans-IO: time is passed in as `now: Instant` and deadlines are
//! returned, so a 10-minute call can be simulated in milliseconds.

// Byte-facing code must not panic on hostile input (issue 6): no slicing or indexing that can
// go out of bounds or split a UTF-8 character; use `get`, `split_at_checked`, iterators.
#![warn(clippy::string_slice, clippy::indexing_slicing)]
// Tests may unwrap and index: a panic is the failure report there.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::string_slice, clippy::indexing_slicing))]

pub mod codec;
pub mod framing;
pub mod g711;
pub mod g722;
pub mod jitter;
pub mod latch;
pub mod opus_codec;
pub mod pacer;
pub mod resample;
pub mod rtcp;
pub mod rtp;
pub mod signal;
pub mod srtp;

pub use codec::{Codec, CodecCoding};
pub use framing::{InboundAudio, ModelAudio, OutboundAudio, model_audio_for};
pub use jitter::{JitterBuffer, JitterConfig, JitterStats, PushOutcome, ReceivedFrame, ReceptionReport};
pub use latch::{LatchConfig, LatchStats, RtpSourceLatch, SourceVerdict};
pub use opus_codec::{OpusEncoderSettings, OpusError};
pub use pacer::{PacedFrame, Pacer, PacerConfig};
pub use resample::{ResampleError, Resampler};
pub use rtp::{RtpError, RtpHeader, StreamStart, is_rtcp, parse_rtp, write_rtp};
pub use srtp::{SrtpContext, SrtpError, SrtpStats};
