//! OpenAI Realtime API (GA) protocol: typed wire events, the sans-IO playout/barge-in
//! bookkeeping of one conversation, and a WebSocket client.
//!
//! The reference for every event name and field is `shared/docs/realtime-protocol.md`.

pub mod client;
pub mod conversation;
pub mod error_code;
pub mod events;
mod items;
mod session;

pub use client::{
    ClientError, ConnectConfig, ConnectError, ConnectLimits, Keepalive, KeepaliveAction, RealtimeReceiver,
    RealtimeSender, connect, connect_with_limits,
};
pub use conversation::{Conversation, ItemTag, Truncate};
pub use error_code::ErrorCode;
pub use events::{ClientEvent, EventError, ServerEvent};
