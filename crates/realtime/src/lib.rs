//! OpenAI Realtime API (GA) protocol: typed wire events, the sans-IO playout/barge-in
//! bookkeeping of one conversation, and a WebSocket client.
//!
//! The reference for every event name and field is `shared/docs/realtime-protocol.md`.

// Byte-facing code must not panic on hostile input (issue 6): no slicing or indexing that can
// go out of bounds or split a UTF-8 character; use `get`, `split_at_checked`, iterators.
#![warn(clippy::string_slice, clippy::indexing_slicing)]
// Tests may unwrap and index: a panic is the failure report there.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::string_slice, clippy::indexing_slicing))]

pub mod client;
pub mod conversation;
pub mod error_code;
pub mod events;
pub mod history;
mod items;
mod session;

pub use client::{
    ClientError, ConnectConfig, ConnectError, ConnectLimits, Keepalive, KeepaliveAction, RealtimeReceiver,
    RealtimeSender, connect, connect_with_limits,
};
pub use conversation::{Conversation, ItemTag, Truncate};
pub use error_code::ErrorCode;
pub use events::{ClientEvent, EventError, ServerEvent};
