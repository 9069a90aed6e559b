//! OpenAI Realtime API (GA) protocol: typed wire events, the sans-IO playout/barge-in
//! bookkeeping of one conversation, and a WebSocket client.
//!
//! The reference for every event name and field is `shared/docs/realtime-protocol.md`.

pub mod client;
pub mod conversation;
pub mod events;
mod items;
mod session;

pub use client::{ClientError, ConnectConfig, ConnectError, RealtimeReceiver, RealtimeSender, connect};
pub use conversation::{Conversation, ItemTag, Truncate};
pub use events::{ClientEvent, EventError, ServerEvent};
