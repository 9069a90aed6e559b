//! A Realtime API simulator: the oracle for tests and benchmarks, and the gateway's offline
//! agent. It follows `shared/docs/realtime-protocol.md` and is stricter, never looser, than the
//! real API: every client event is validated against the reference's schemas at every depth
//! (`schema`), GA session config, energy VAD turns, bursty faster-than-real-time audio,
//! barge-in, truncation, multi-item responses (phases, function calls), input transcription,
//! deterministic usage, the documented errors and the 60-minute expiry; runtime controls let a
//! test drop, expire or refuse sessions (`control`). docs/simulator.md describes it all.
//!
//! [`SimSession`] is the sans-IO core of one session; [`Simulator`] serves it over axum.

mod audio;
mod config;
mod control;
mod core;
mod mcp;
mod schema;
mod script;
mod server;
mod vad;

pub use crate::config::{Behaviour, BurstPattern, FailReason, Faults, ParseError, SimConfig, Tone, parse_audio_format};
pub use crate::control::{ControlError, DropMode};
pub use crate::core::{Outgoing, SESSION_EXPIRED_MESSAGE, SimSession, ToolCallScript};
pub use crate::mcp::McpCallScript;
pub use crate::server::{Direction, LoggedEvent, RunningSimulator, SessionLog, Simulator};
