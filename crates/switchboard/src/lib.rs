//! Switchboard: a SIP telephony gateway to the OpenAI Realtime API.
//!
//! This crate wires the protocol crates together: configuration ([`config`]), the gateway
//! ([`app`]), one task per call ([`call`]), the admin HTTP listener ([`admin`]) and telemetry.

pub mod access;
pub mod admin;
pub mod admission;
pub mod app;
pub mod call;
pub mod calls;
pub mod capacity;
pub mod config;
pub mod media_clock;
pub mod recording;
pub mod registration;
pub mod reload;
pub mod routing;
pub mod rtp_ports;
pub mod signing;
pub mod srtp;
pub mod telemetry;
pub mod testcall;
pub mod webhook;
