//! A Realtime API simulator: the oracle for tests and benchmarks, and the gateway's offline
//! agent. It follows `shared/docs/realtime-protocol.md`: GA session config and validation,
//! energy VAD turns, bursty faster-than-real-time audio, barge-in, truncation, the documented
//! errors and the 60-minute expiry.
//!
//! [`SimSession`] is the sans-IO core of one session; [`Simulator`] serves it over axum.

mod audio;
mod config;
mod control;
mod core;
mod schema;
mod script;
mod server;
mod vad;

pub use crate::config::{Behaviour, BurstPattern, FailReason, Faults, ParseError, SimConfig, Tone, parse_audio_format};
pub use crate::control::{ControlError, DropMode};
pub use crate::core::{Outgoing, SESSION_EXPIRED_MESSAGE, SimSession, ToolCallScript};
pub use crate::server::{Direction, LoggedEvent, RunningSimulator, SessionLog, Simulator};
