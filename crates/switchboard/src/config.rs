//! The gateway's configuration: one TOML file, every key overridable from the environment as
//! `SWITCHBOARD__<SECTION>__<KEY>` (double underscores, so snake_case keys survive).
//!
//! Loading never stops at the first problem: [`load`] collects every unknown key, type error and
//! invalid value with its dotted key, so `switchboard check` can print them all at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::admission::IpNet;

mod tools;
pub use tools::{McpServerConfig, ToolConfig};
mod agents;
mod routes;
pub use routes::{MAX_CAPTURED_HEADERS, MAX_HEADER_VALUE_BYTES, Patterns, RouteConfig, RoutingConfig};
mod transfer;
pub use transfer::{OnFailure, TransferConfig, TransferMethod, valid_target, validate_transfer};
/// Bounds of `[agents.X.transfer]` values.
pub mod transfer_limits {
    pub use super::transfer::{HEADER_PLACEHOLDERS, MAX_HEADER_VALUE, MAX_HEADERS, MAX_QUEUES};
}
mod access;
pub use access::{UnknownSources, unknown_sources};
mod recording;
pub use recording::{CdrConfig, RecordingConfig, spool_dir};
mod tls;
pub use tls::rotate_tls_certificate;
mod dialog;
mod nat;
pub use dialog::session_timer;
pub mod view;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct Config {
    pub sip: SipConfig,
    pub media: MediaConfig,
    pub realtime: RealtimeConfig,
    pub calls: CallsConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Agents keyed by name. `default` answers every number no other agent claims.
    pub agents: BTreeMap<String, AgentConfig>,
    /// SIP trunks outbound calls go through, keyed by name (`POST /v1/calls` names one).
    pub trunks: BTreeMap<String, TrunkConfig>,
    /// A directory of agent files (`*.toml`, one agent each), relative to this file's
    /// directory; empty: none (config/agents.rs).
    pub agents_dir: String,
    /// `[routing]`: the time zone of `hours`, the headers captured for placeholders.
    pub routing: RoutingConfig,
    /// `[[routes]]`: which agent answers which call, first match wins (config/routes.rs).
    pub routes: Vec<RouteConfig>,
    /// Recordings and their sidecars (`[recording]`).
    pub recording: RecordingConfig,
    /// Call detail records: file, webhook, spool (`[cdr]`).
    pub cdr: CdrConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct SipConfig {
    /// UDP listen address; empty string disables UDP.
    pub udp: String,
    /// TCP listen address; empty string disables TCP.
    pub tcp: String,
    /// Host put in our Contact/Via when listening on a wildcard address.
    pub advertised_host: String,
    pub user_agent: String,
    pub max_message_bytes: usize,
    /// RFC 3261 T1 in milliseconds (retransmission base).
    pub t1_ms: u64,
    /// New INVITEs per second accepted from one source address (a token bucket holding one
    /// second's worth); more get 503 with Retry-After. 0: no limit.
    pub invite_rate_per_source: u32,
    /// Addresses or CIDR networks exempt from the per-source limits (a proxy or PBX in front).
    pub trusted_proxies: StringList,
    /// A TCP connection that receives nothing for this long is closed.
    pub tcp_idle_timeout_secs: u64,
    /// TCP connections open at once (lowered to fit the process's file-descriptor limit).
    pub tcp_max_connections: usize,
    /// TCP connections open at once from one IP address.
    pub tcp_max_connections_per_address: usize,
    /// Bytes queued for a TCP peer that does not read before it is disconnected.
    pub tcp_write_queue_bytes: usize,
    /// What a new request from an address in no trunk's `sources` (and not in
    /// `trusted_proxies`) gets: `allow`, `reject` (403) or `drop` (no answer at all). Unset:
    /// `allow` while no trunk lists `sources`, `reject` once one does.
    pub unknown_sources: Option<UnknownSources>,
    /// A source that exceeded `invite_rate_per_source` gets 503 for all its INVITEs this long.
    /// 0: no ban (only the INVITEs over the rate are refused).
    pub ban_secs: u64,
    /// New INVITEs per second over all sources; more get 503 with Retry-After. 0: no limit.
    pub max_cps: u32,
    /// Requests whose User-Agent contains one of these (case-insensitive) are dropped unanswered.
    pub user_agent_deny: StringList,
    /// The realm of our digest challenges to inbound INVITEs; empty: the advertised host.
    pub realm: String,
    /// TLS listen address (RFC 3261 §26.2, usually port 5061); empty string disables TLS.
    pub tls: String,
    /// Our certificate chain (PEM, leaf first) for the TLS listener.
    pub tls_cert: String,
    /// The private key of `tls_cert` (PEM). A path: the key itself is never in the config.
    pub tls_key: String,
    /// CA certificates (PEM): when set, every TLS client must present a certificate issued by
    /// one of them (mutual TLS); empty: no client certificate asked for.
    pub tls_client_ca: String,
    /// The address our Via, Contact and REGISTER Contact say (an IP; behind 1:1 NAT: the public
    /// one). Empty: `advertised_host`, its deprecated older name (config/nat.rs).
    pub public_host: String,
    /// Session timer interval (RFC 4028) we ask for and accept at most, seconds; 0: off.
    pub session_expires_secs: u32,
    /// Shortest session timer interval we accept (Min-SE; less is answered 422), seconds.
    pub session_min_se_secs: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct MediaConfig {
    /// Address advertised in SDP `c=` lines: where callers send RTP.
    pub address: String,
    /// Address the RTP sockets bind to.
    pub bind: String,
    /// RTP port range, e.g. "20000-20999". One even port per call.
    pub rtp_ports: String,
    /// Codec preference, best first ("PCMU", "PCMA").
    pub codecs: StringList,
    /// A call with no RTP from the caller for this long is ended with BYE.
    pub rtp_timeout_secs: u64,
    /// How long an out-of-order packet waits for the missing one before it is declared lost.
    pub reorder_wait_ms: u64,
    /// Opus encoder target bitrate (bit/s); the caller's `maxaveragebitrate` caps it.
    pub opus_bitrate_bps: u32,
    /// Opus encoder complexity, 0 (cheapest) to 10 (best).
    pub opus_complexity: u8,
    /// Strict RTP: packets in a row (one address, one SSRC, consecutive sequence numbers) before
    /// a source other than the SDP's address is learned as the caller's.
    pub rtp_probation_packets: u32,
    /// Strict RTP: how long after the answer only the SDP's address can become the caller's source.
    pub rtp_signalled_priority_ms: u64,
    /// Strict RTP: how long the caller's source must be silent before another stream may replace it.
    pub rtp_relearn_silence_ms: u64,
    /// The jitter buffer's longest wait for a missing packet, whatever the measured jitter
    /// (`reorder_wait_ms` is the shortest).
    pub jitter_max_ms: u64,
    /// Mean interval of our RTCP reports (RFC 3550 §6.2), sent from the RTP port + 1; 0: none.
    pub rtcp_interval_secs: u64,
    /// The address SDP `c=` lines say (behind 1:1 NAT: the public one); the sockets still bind
    /// `bind`. Empty: `address`, its deprecated older name (config/nat.rs).
    pub public_address: String,
    /// SRTP (RFC 4568 SDES) for calls from no trunk: off, optional or required (`crate::srtp`).
    pub srtp: crate::srtp::SrtpSetting,
}

impl RealtimeConfig {
    /// The token prices for the call meter.
    pub fn prices(&self) -> crate::call::core::meter::Prices {
        crate::call::core::meter::Prices {
            input_text: self.price_per_million_input_text,
            input_audio: self.price_per_million_input_audio,
            input_cached: self.price_per_million_input_cached,
            output_text: self.price_per_million_output_text,
            output_audio: self.price_per_million_output_audio,
        }
    }
}

impl MediaConfig {
    /// The strict RTP settings for each call's source latch.
    pub fn latch_config(&self) -> switchboard_media::latch::LatchConfig {
        switchboard_media::latch::LatchConfig {
            probation_packets: self.rtp_probation_packets,
            signalled_priority: std::time::Duration::from_millis(self.rtp_signalled_priority_ms),
            relearn_silence: std::time::Duration::from_millis(self.rtp_relearn_silence_ms),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RealtimeConfig {
    /// `wss://api.openai.com/v1/realtime` in production; `ws://` is allowed for a local endpoint.
    pub url: String,
    /// Defaults to the `OPENAI_API_KEY` environment variable. Empty: the built-in offline agent answers.
    pub api_key: String,
    pub model: String,
    /// The whole session setup (WebSocket connect, `session.created`, `session.updated`) must be
    /// done within this time, or the call is refused with 503 before it is answered.
    pub connect_timeout_ms: u64,
    /// A WebSocket Ping is sent this often during a call.
    pub ping_interval_secs: u64,
    /// No frame at all (events, pongs) for this long: the AI connection counts as dropped and the
    /// call is ended with BYE (reason `agent_watchdog`).
    pub watchdog_secs: u64,
    /// Largest Realtime server message accepted; a larger one ends the call.
    pub max_message_bytes: usize,
    /// Agent audio queued for playout per call, at most; model audio beyond it is dropped.
    pub max_queued_audio_secs: u64,
    /// Token prices in US dollars per million tokens, for the estimated cost of each call.
    pub price_per_million_input_text: f64,
    pub price_per_million_input_audio: f64,
    /// Cached input tokens (text or audio) are charged this instead.
    pub price_per_million_input_cached: f64,
    pub price_per_million_output_text: f64,
    pub price_per_million_output_audio: f64,
    /// Mid-call reconnect (docs/realtime-resilience.md): the first retry waits this long...
    pub reconnect_initial_ms: u64,
    /// ...each next one twice as long (with jitter), at most this long.
    pub reconnect_max_ms: u64,
    /// The AI not back within this time: the give-up announcement, then BYE. 0: no reconnect
    /// (a dropped AI connection ends the call, as before issue 8).
    pub reconnect_give_up_secs: u64,
    /// What the caller hears while reconnecting: `tone` (a soft comfort tone), `none`, or the
    /// path of a WAV file (16-bit PCM mono, at most 30 s).
    pub reconnect_prompt: String,
    /// What the caller hears before the gateway hangs up after giving up: `tone` (three rising
    /// tones), `none`, or a WAV file path.
    pub give_up_prompt: String,
    /// Characters of conversation text replayed to a new session at most.
    pub replay_budget_chars: usize,
    /// Turns replayed to a new session at most.
    pub replay_budget_turns: usize,
    /// `audio.input.transcription.model`: the caller's turns get text to replay. Empty: off.
    pub transcription_model: String,
    /// Roll the session over (a new one at a turn boundary, the conversation replayed) this long
    /// after it opened, or before the server's `expires_at` if that comes first. 0: only by
    /// `expires_at`.
    pub session_max_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CallsConfig {
    /// Beyond this many concurrent calls new INVITEs get 503 with Retry-After.
    pub max_concurrent: usize,
    pub retry_after_secs: u32,
    /// Calls up at once from one source address; more get 503 with Retry-After. 0: no limit.
    pub max_per_source: u32,
    /// Capacity admission (`capacity.rs`): new calls get 503 (and OPTIONS 503) once the p99 of
    /// outbound RTP send lateness over one second exceeds this. 0: off.
    pub saturation_lateness_ms: u32,
    /// ...until the p99 has stayed at or below this for `saturation_hold_secs`.
    pub recovery_lateness_ms: u32,
    pub saturation_hold_secs: u32,
    /// On SIGTERM, calls in progress may go on this long (new ones are refused) before they are
    /// hung up with BYE. 0: hang up at once.
    pub drain_secs: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    /// HTTP listener for /healthz, /readyz, /metrics and the calls API; empty disables it.
    pub listen: String,
    /// Bearer token the `/v1` API requires; mandatory when `listen` is not a loopback address.
    pub token: Secret,
    /// The name of an environment variable holding the token (instead of `token`).
    pub token_env: String,
}

/// One SIP trunk: where outbound INVITEs go and who they say they are from.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct TrunkConfig {
    /// `host:port` of the trunk's SIP server (resolved at start-up).
    pub address: String,
    pub transport: TrunkTransport,
    /// User part of our From URI (`from_user@from_domain`); a request's `from` replaces it.
    pub from_user: String,
    /// Host part of our From URI; empty: the trunk's host.
    pub from_domain: String,
    /// Digest username (RFC 3261 §22) answered to a 401/407; empty: no credentials.
    pub username: String,
    /// Digest password. Never logged (Debug shows it redacted).
    pub password: Secret,
    /// The name of an environment variable holding the password (instead of `password`).
    pub password_env: String,
    /// Codecs offered, in order; empty: `media.codecs`.
    pub codecs: StringList,
    /// Outbound calls up at once through this trunk; more are refused with 503.
    pub max_concurrent: usize,
    /// A call not answered within this time is CANCELled (outcome `no_answer`).
    pub ring_timeout_secs: u64,
    /// Addresses or CIDR networks inbound calls from this trunk come from (config/access.rs):
    /// an INVITE from one of them is this trunk's call. Empty: the trunk is not matched by source.
    pub sources: StringList,
    /// Digest username inbound INVITEs from this trunk must authenticate with (RFC 3261 §22);
    /// empty: no inbound authentication.
    pub inbound_username: String,
    /// Its password. Never logged (Debug shows it redacted).
    pub inbound_password: Secret,
    /// The name of an environment variable holding the inbound password (instead of `inbound_password`).
    pub inbound_password_env: String,
    /// RFC 3325: this trunk's P-Asserted-Identity is believed (the caller ID routes match and
    /// the model is told). From anyone else PAI is ignored and From is the caller ID.
    pub trust_asserted_identity: bool,
    /// `transport = "tls"`: CA certificates (PEM) the trunk's server certificate must chain to;
    /// empty: the system's trust store.
    pub tls_ca: String,
    /// `transport = "tls"`: the name the server certificate must carry; empty: the host of
    /// `address` (set it when `address` is an IP address and the certificate names a host).
    pub tls_server_name: String,
    /// `transport = "tls"`: `false` takes any server certificate. For labs only: anyone on the
    /// path can then read and change the signalling (and SDES keys).
    pub tls_verify: bool,
    /// CA certificates (PEM): a TLS connection from this trunk's `sources` must present a client
    /// certificate issued by one of them (mutual TLS for this trunk only). Empty: not asked.
    pub tls_client_ca: String,
    /// REGISTER our Contact at the trunk's `address` (RFC 3261 §10.2) and keep it registered,
    /// so that the provider routes calls to us (registration.rs).
    pub register: bool,
    /// The expiry asked for in each REGISTER (the registrar may grant less, or ask for more
    /// with 423); refreshed at half the granted time.
    pub register_expires_secs: u64,
    /// User part of the address-of-record (From/To of the REGISTER) and of our registered
    /// Contact; empty: `username`, else `from_user`.
    pub register_user: String,
    /// Host part of the address-of-record and the REGISTER's Request-URI; empty: the host of
    /// `address`.
    pub register_domain: String,
    /// SRTP for calls through this trunk and from it (`sources`, inbound credentials).
    pub srtp: crate::srtp::SrtpSetting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    Udp,
    Tcp,
    /// SIP over TLS (RFC 3261 §26.2); needs `sip.tls`.
    Tls,
}

/// A password or token: shown as `[redacted]` by Debug so it never reaches a log.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value itself, for the one place that needs it (digest, bearer comparison).
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Serialized masked (`GET /v1/config`): a secret never leaves the process through serde either.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(if self.0.is_empty() { "" } else { MASKED })
    }
}

/// What a configured secret is shown as.
pub const MASKED: &str = "[redacted]";

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { "[redacted]" })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A tracing env-filter directive, e.g. `info` or `switchboard=debug`. `RUST_LOG` wins if set.
    pub level: String,
    /// Phone numbers, SIP URIs and addresses in log lines (and the end-of-call summary) show
    /// only their last four characters; `false` shows them in full (a lab, a debugging session).
    pub redact_numbers: bool,
}

/// One agent: what the model is told and how it sounds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AgentConfig {
    pub instructions: String,
    pub voice: String,
    /// Spoken first when the call is answered; empty: the caller speaks first.
    pub greeting: String,
    /// `auto`: G.711 straight through to the model; `pcm`: 24 kHz PCM16 with resampling.
    pub audio_format: AudioFormatChoice,
    /// Dialled numbers this agent answers: exact, or a prefix ending in `*`. Empty on `default`:
    /// every number no other agent claims.
    pub numbers: StringList,
    /// Codec preference for this agent's calls; empty: `media.codecs`.
    pub codecs: StringList,
    pub vad_threshold: f64,
    pub vad_prefix_padding_ms: u32,
    pub vad_silence_duration_ms: u32,
    /// Said when a response fails (`response.done` with status `failed`) so the caller does not
    /// hear silence; empty: nothing is said.
    pub apology: String,
    /// The apology is said at most once per this many seconds (a failing model is not asked
    /// again and again).
    pub apology_min_interval_secs: u64,
    /// `immediate`: the caller's speech stops the agent at once. `confirm`: the agent pauses,
    /// and stops only once the speech has lasted `barge_in_confirm_ms` (docs/conversation.md).
    pub barge_in: BargeInChoice,
    pub barge_in_confirm_ms: u64,
    /// Keys pressed within this many ms of each other reach the model as one text item.
    pub dtmf_coalesce_ms: u64,
    /// Ask the model to answer (`response.create`) after telling it the keys.
    pub dtmf_response: bool,
    /// Declare the built-in `end_call` tool: the agent may hang up after its goodbye.
    pub end_call: bool,
    /// The caller silent this long after the agent finished speaking: the agent re-prompts.
    /// 0: no idle handling.
    pub idle_timeout_secs: u64,
    /// The instructions of a re-prompt.
    pub idle_prompt: String,
    /// Re-prompts without an answer before the agent says `goodbye` and the call ends.
    pub idle_prompts: u32,
    /// Said verbatim when the gateway ends the call itself (idle, `max_call_secs`).
    pub goodbye: String,
    /// The call ends (with `goodbye`) after this many seconds. 0: no limit.
    pub max_call_secs: u64,
    /// Record the call (stereo WAV and JSON sidecar under `recording.dir`); a route may override it.
    pub record: bool,
    /// Webhook function tools, keyed by tool name (`[agents.NAME.tools.TOOL]`, config/tools.rs).
    pub tools: BTreeMap<String, ToolConfig>,
    /// MCP servers run on the model's side, keyed by server label (`[agents.NAME.mcp.SERVER]`).
    pub mcp: BTreeMap<String, McpServerConfig>,
    /// A tool pending this long (and the agent silent): the caller hears `filler`. 0: never.
    pub filler_after_ms: u64,
    /// `tone` (a soft double beep, repeated), `none`, or a WAV file (16-bit PCM mono).
    pub filler: String,
    /// Transfer to a human: method, queues, rules (`[agents.NAME.transfer]`, config/transfer.rs).
    pub transfer: TransferConfig,
}

/// `agents.X.barge_in`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BargeInChoice {
    Immediate,
    Confirm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AudioFormatChoice {
    Auto,
    Pcm,
}

/// A list that may be written as a TOML array or, for environment overrides, a comma-separated string.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StringList(pub Vec<String>);

impl Serialize for StringList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl<'de> Deserialize<'de> for StringList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            List(Vec<String>),
            Text(String),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::List(items) => StringList(items),
            Raw::Text(text) => {
                StringList(text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect())
            }
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sip: SipConfig::default(),
            media: MediaConfig::default(),
            realtime: RealtimeConfig::default(),
            calls: CallsConfig::default(),
            admin: AdminConfig::default(),
            log: LogConfig::default(),
            agents: BTreeMap::from([("default".to_string(), AgentConfig::default())]),
            trunks: BTreeMap::new(),
            agents_dir: String::new(),
            routing: RoutingConfig::default(),
            routes: Vec::new(),
            recording: RecordingConfig::default(),
            cdr: CdrConfig::default(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            udp: "0.0.0.0:5060".into(),
            tcp: "0.0.0.0:5060".into(),
            advertised_host: String::new(),
            user_agent: concat!("Switchboard/", env!("CARGO_PKG_VERSION")).into(),
            max_message_bytes: 16 * 1024,
            t1_ms: 500,
            invite_rate_per_source: 10,
            trusted_proxies: StringList::default(),
            tcp_idle_timeout_secs: 300,
            tcp_max_connections: 1000,
            tcp_max_connections_per_address: 32,
            tcp_write_queue_bytes: 256 * 1024,
            unknown_sources: None,
            ban_secs: 0,
            max_cps: 0,
            user_agent_deny: StringList(access::SCANNER_USER_AGENTS.iter().map(|s| s.to_string()).collect()),
            realm: String::new(),
            tls: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            tls_client_ca: String::new(),
            public_host: String::new(),
            session_expires_secs: 1800,
            session_min_se_secs: 90,
        }
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            address: "127.0.0.1".into(),
            bind: "0.0.0.0".into(),
            rtp_ports: "20000-20999".into(),
            codecs: StringList(vec!["PCMU".into(), "PCMA".into(), "G722".into(), "opus".into()]),
            rtp_timeout_secs: 30,
            reorder_wait_ms: 40,
            opus_bitrate_bps: 32_000,
            opus_complexity: 5,
            rtp_probation_packets: 4,
            rtp_signalled_priority_ms: 500,
            rtp_relearn_silence_ms: 2000,
            jitter_max_ms: 120,
            rtcp_interval_secs: 5,
            public_address: String::new(),
            srtp: crate::srtp::SrtpSetting::Optional,
        }
    }
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        RealtimeConfig {
            url: "wss://api.openai.com/v1/realtime".into(),
            api_key: String::new(),
            model: "gpt-realtime-2.1".into(),
            connect_timeout_ms: 5000,
            ping_interval_secs: 5,
            watchdog_secs: 15,
            max_message_bytes: 4 * 1024 * 1024,
            max_queued_audio_secs: 120,
            // gpt-realtime-2 / 2.1 list prices (docs: protocol reference §9).
            price_per_million_input_text: 4.0,
            price_per_million_input_audio: 32.0,
            price_per_million_input_cached: 0.40,
            price_per_million_output_text: 24.0,
            price_per_million_output_audio: 64.0,
            reconnect_initial_ms: 200,
            reconnect_max_ms: 2000,
            reconnect_give_up_secs: 20,
            reconnect_prompt: "tone".into(),
            give_up_prompt: "tone".into(),
            replay_budget_chars: 8000,
            replay_budget_turns: 40,
            transcription_model: "gpt-4o-mini-transcribe".into(),
            session_max_secs: 3300,
        }
    }
}

impl CallsConfig {
    /// The capacity admission thresholds.
    pub fn capacity(&self) -> crate::capacity::CapacityConfig {
        crate::capacity::CapacityConfig {
            saturation_lateness: std::time::Duration::from_millis(u64::from(self.saturation_lateness_ms)),
            recovery_lateness: std::time::Duration::from_millis(u64::from(self.recovery_lateness_ms)),
            hold: std::time::Duration::from_secs(u64::from(self.saturation_hold_secs)),
        }
    }
}

impl Default for CallsConfig {
    fn default() -> Self {
        CallsConfig {
            max_concurrent: 500,
            retry_after_secs: 5,
            max_per_source: 20,
            saturation_lateness_ms: 10,
            recovery_lateness_ms: 4,
            saturation_hold_secs: 5,
            drain_secs: 300,
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig { listen: "127.0.0.1:9090".into(), token: Secret::default(), token_env: String::new() }
    }
}

impl Default for TrunkConfig {
    fn default() -> Self {
        TrunkConfig {
            address: String::new(),
            transport: TrunkTransport::Udp,
            from_user: "switchboard".into(),
            from_domain: String::new(),
            username: String::new(),
            password: Secret::default(),
            password_env: String::new(),
            codecs: StringList::default(),
            max_concurrent: 10,
            ring_timeout_secs: 30,
            sources: StringList::default(),
            inbound_username: String::new(),
            inbound_password: Secret::default(),
            inbound_password_env: String::new(),
            trust_asserted_identity: true,
            tls_ca: String::new(),
            tls_server_name: String::new(),
            tls_verify: true,
            tls_client_ca: String::new(),
            register: false,
            register_expires_secs: 3600,
            register_user: String::new(),
            register_domain: String::new(),
            srtp: crate::srtp::SrtpSetting::Optional,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: "text".into(), level: "info".into(), redact_numbers: true }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            instructions: "You are a helpful, concise phone agent. Keep answers short.".into(),
            voice: "marin".into(),
            greeting: String::new(),
            audio_format: AudioFormatChoice::Auto,
            numbers: StringList::default(),
            codecs: StringList::default(),
            vad_threshold: 0.5,
            vad_prefix_padding_ms: 300,
            vad_silence_duration_ms: 500,
            apology: "Sorry, I had a problem. Could you say that again?".into(),
            apology_min_interval_secs: 10,
            barge_in: BargeInChoice::Immediate,
            barge_in_confirm_ms: 400,
            dtmf_coalesce_ms: 1500,
            dtmf_response: true,
            end_call: true,
            idle_timeout_secs: 0,
            idle_prompt: "The caller has been silent for a while. Briefly ask whether they are still there.".into(),
            idle_prompts: 2,
            goodbye: "Thank you for calling. Goodbye.".into(),
            max_call_secs: 0,
            record: false,
            tools: BTreeMap::new(),
            mcp: BTreeMap::new(),
            filler_after_ms: 2000,
            filler: "tone".into(),
            transfer: TransferConfig::default(),
        }
    }
}

/// One problem found in the configuration, with the dotted key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// The configuration could not be used; every problem found is listed.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem(s)): {}", .0.len(), .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("; "))]
pub struct ConfigErrors(pub Vec<ConfigProblem>);

/// Values derived from [`Config`] after validation, in the types the gateway uses.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub sip_udp: Option<SocketAddr>,
    pub sip_tcp: Option<SocketAddr>,
    pub advertised_host: Option<IpAddr>,
    pub media_address: IpAddr,
    pub media_bind: IpAddr,
    pub rtp_ports: RangeInclusive<u16>,
    pub admin_listen: Option<SocketAddr>,
    /// `sip.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<IpNet>,
    /// Each trunk's `address`, resolved (the first address it resolves to).
    pub trunk_addresses: BTreeMap<String, SocketAddr>,
    /// `[[routes]]`, agents' `numbers` and the `default` catch-all, compiled.
    pub routes: switchboard_router::RouteTable,
    /// Each trunk's `sources`, parsed, in trunk-name order (see [`Resolved::trunk_for_source`]).
    pub trunk_sources: Vec<(String, Vec<IpNet>)>,
    /// `sip.tls` with the certificate and key loaded (config/tls.rs).
    pub sip_tls: Option<switchboard_sip::tls::TlsListener>,
    /// How to verify each `transport = "tls"` trunk's server, by trunk name (config/tls.rs).
    pub trunk_tls: BTreeMap<String, switchboard_sip::tls::TlsConnect>,
    /// The TLS listener's configuration for connections from a trunk with `tls_client_ca`, by
    /// trunk name (config/tls.rs).
    pub trunk_tls_clients: BTreeMap<String, std::sync::Arc<rustls::ServerConfig>>,
}

const VOICES: &[&str] = &["alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse", "marin", "cedar"];

/// Loads `path` (TOML) with `SWITCHBOARD__…` environment overrides and validates it.
pub fn load(path: &Path) -> Result<(Config, Resolved), ConfigErrors> {
    let env = std::env::vars().collect::<Vec<_>>();
    load_with_env(path, &env)
}

/// [`load`] with an explicit environment, so tests do not depend on the process environment.
pub fn load_with_env(path: &Path, env: &[(String, String)]) -> Result<(Config, Resolved), ConfigErrors> {
    let problem = |key: &str, message: String| ConfigErrors(vec![ConfigProblem { key: key.into(), message }]);
    let overrides: config::Map<String, String> =
        env.iter().filter(|(k, _)| k.starts_with("SWITCHBOARD__")).cloned().collect();
    let raw = config::Config::builder()
        .add_source(config::File::from(path).format(config::FileFormat::Toml))
        .add_source(
            config::Environment::with_prefix("SWITCHBOARD").separator("__").try_parsing(true).source(Some(overrides)),
        )
        .build()
        .map_err(|e| problem(&path.display().to_string(), e.to_string()))?;

    let mut problems = Vec::new();
    let inline_agents = raw.get_table("agents").is_ok();
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let deserializer = serde_ignored::Deserializer::new(raw, &mut record_unknown);
    let parsed: Result<Config, _> = serde_path_to_error::deserialize(deserializer);
    for key in unknown {
        problems.push(ConfigProblem { key, message: "unknown key".into() });
    }
    let mut cfg = match parsed {
        Ok(cfg) => cfg,
        Err(e) => {
            problems.push(ConfigProblem { key: e.path().to_string(), message: e.inner().to_string() });
            return Err(ConfigErrors(problems));
        }
    };
    if cfg.realtime.api_key.is_empty()
        && let Some((_, key)) = env.iter().find(|(k, _)| k == "OPENAI_API_KEY")
    {
        cfg.realtime.api_key = key.clone();
    }
    resolve_secrets(&mut cfg, env, &mut problems);
    let agent_files = agents::load_agent_files(&mut cfg, path, inline_agents, &mut problems);
    let validated = validate(&cfg, &mut problems);
    agent_files.name_files_in(&mut problems);
    match validated {
        Some(resolved) if problems.is_empty() => Ok((cfg, resolved)),
        _ => Err(ConfigErrors(problems)),
    }
}

fn validate(cfg: &Config, problems: &mut Vec<ConfigProblem>) -> Option<Resolved> {
    let mut bad = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });

    let optional_addr = |key: &str, value: &str, bad: &mut dyn FnMut(&str, String)| -> Option<SocketAddr> {
        if value.is_empty() {
            return None;
        }
        value.parse::<SocketAddr>().map_err(|_| bad(key, format!("`{value}` is not an IP:port address"))).ok()
    };
    let sip_udp = optional_addr("sip.udp", &cfg.sip.udp, &mut bad);
    let sip_tcp = optional_addr("sip.tcp", &cfg.sip.tcp, &mut bad);
    if cfg.sip.udp.is_empty() && cfg.sip.tcp.is_empty() && cfg.sip.tls.is_empty() {
        bad("sip.udp", "at least one of sip.udp, sip.tcp and sip.tls must be set".into());
    }
    let advertised_host = nat::public_host(&cfg.sip, &mut bad);
    if !(512..=65_535).contains(&cfg.sip.max_message_bytes) {
        bad("sip.max_message_bytes", "must be between 512 and 65535".into());
    }
    if !(50..=5_000).contains(&cfg.sip.t1_ms) {
        bad("sip.t1_ms", "must be between 50 and 5000".into());
    }
    let mut trusted_proxies = Vec::new();
    for entry in &cfg.sip.trusted_proxies.0 {
        match entry.parse::<IpNet>() {
            Ok(net) => trusted_proxies.push(net),
            Err(e) => bad("sip.trusted_proxies", e.to_string()),
        }
    }
    if cfg.sip.tcp_idle_timeout_secs == 0 {
        bad("sip.tcp_idle_timeout_secs", "must be at least 1".into());
    }
    if cfg.sip.tcp_max_connections == 0 {
        bad("sip.tcp_max_connections", "must be at least 1".into());
    }
    if cfg.sip.tcp_max_connections_per_address == 0 {
        bad("sip.tcp_max_connections_per_address", "must be at least 1".into());
    }
    if cfg.sip.tcp_write_queue_bytes < cfg.sip.max_message_bytes {
        bad("sip.tcp_write_queue_bytes", "must be at least sip.max_message_bytes (one full message)".into());
    }

    let media_address = nat::public_media_address(&cfg.media, &mut bad);
    let media_bind = cfg
        .media
        .bind
        .parse::<IpAddr>()
        .map_err(|_| bad("media.bind", format!("`{}` is not an IP address", cfg.media.bind)))
        .ok();
    let rtp_ports = parse_port_range(&cfg.media.rtp_ports).map_err(|m| bad("media.rtp_ports", m)).ok();
    check_codecs("media.codecs", &cfg.media.codecs, &mut bad);
    if cfg.media.codecs.0.is_empty() {
        bad("media.codecs", "at least one codec is needed".into());
    }
    if cfg.media.rtp_timeout_secs == 0 {
        bad("media.rtp_timeout_secs", "must be at least 1".into());
    }
    if cfg.media.reorder_wait_ms > 500 {
        bad("media.reorder_wait_ms", "must be at most 500".into());
    }
    if !(cfg.media.reorder_wait_ms..=1000).contains(&cfg.media.jitter_max_ms) {
        bad("media.jitter_max_ms", "must be between media.reorder_wait_ms and 1000".into());
    }
    if cfg.media.rtcp_interval_secs > 60 {
        bad("media.rtcp_interval_secs", "must be at most 60 (0 turns RTCP reports off)".into());
    }
    for (key, price) in [
        ("realtime.price_per_million_input_text", cfg.realtime.price_per_million_input_text),
        ("realtime.price_per_million_input_audio", cfg.realtime.price_per_million_input_audio),
        ("realtime.price_per_million_input_cached", cfg.realtime.price_per_million_input_cached),
        ("realtime.price_per_million_output_text", cfg.realtime.price_per_million_output_text),
        ("realtime.price_per_million_output_audio", cfg.realtime.price_per_million_output_audio),
    ] {
        if !(price.is_finite() && price >= 0.0) {
            bad(key, "must be a price of zero or more".into());
        }
    }
    if !(6_000..=510_000).contains(&cfg.media.opus_bitrate_bps) {
        bad("media.opus_bitrate_bps", "must be between 6000 and 510000 (RFC 7587 §6.1)".into());
    }
    if cfg.media.opus_complexity > 10 {
        bad("media.opus_complexity", "must be between 0 and 10".into());
    }
    if !(1..=50).contains(&cfg.media.rtp_probation_packets) {
        bad("media.rtp_probation_packets", "must be between 1 and 50".into());
    }
    if cfg.media.rtp_signalled_priority_ms > 10_000 {
        bad("media.rtp_signalled_priority_ms", "must be at most 10000".into());
    }
    if !(100..=60_000).contains(&cfg.media.rtp_relearn_silence_ms) {
        bad("media.rtp_relearn_silence_ms", "must be between 100 and 60000".into());
    }

    match cfg.realtime.url.split_once("://") {
        Some(("wss" | "ws", rest)) if !rest.is_empty() => {}
        _ => bad(
            "realtime.url",
            format!("`{}` must start with wss:// (or ws:// for a local endpoint)", cfg.realtime.url),
        ),
    }
    if cfg.realtime.model.is_empty() {
        bad("realtime.model", "must not be empty".into());
    }
    if !(100..=60_000).contains(&cfg.realtime.connect_timeout_ms) {
        bad("realtime.connect_timeout_ms", "must be between 100 and 60000".into());
    }
    if cfg.realtime.ping_interval_secs == 0 {
        bad("realtime.ping_interval_secs", "must be at least 1".into());
    }
    if cfg.realtime.watchdog_secs <= cfg.realtime.ping_interval_secs {
        bad(
            "realtime.watchdog_secs",
            "must be longer than realtime.ping_interval_secs (a pong needs a ping to answer)".into(),
        );
    }
    if !(64 * 1024..=64 * 1024 * 1024).contains(&cfg.realtime.max_message_bytes) {
        bad("realtime.max_message_bytes", "must be between 65536 and 67108864".into());
    }
    if !(1..=3600).contains(&cfg.realtime.max_queued_audio_secs) {
        bad("realtime.max_queued_audio_secs", "must be between 1 and 3600".into());
    }
    if !(10..=60_000).contains(&cfg.realtime.reconnect_initial_ms) {
        bad("realtime.reconnect_initial_ms", "must be between 10 and 60000".into());
    }
    if cfg.realtime.reconnect_max_ms < cfg.realtime.reconnect_initial_ms || cfg.realtime.reconnect_max_ms > 60_000 {
        bad("realtime.reconnect_max_ms", "must be between realtime.reconnect_initial_ms and 60000".into());
    }
    if cfg.realtime.reconnect_give_up_secs > 3600 {
        bad("realtime.reconnect_give_up_secs", "must be at most 3600".into());
    }
    for (key, value) in [
        ("realtime.reconnect_prompt", &cfg.realtime.reconnect_prompt),
        ("realtime.give_up_prompt", &cfg.realtime.give_up_prompt),
    ] {
        if let Err(e) = crate::call::prompt::LocalPrompt::from_setting(value) {
            bad(key, format!("must be \"tone\", \"none\" or a WAV file: {e}"));
        }
    }
    if !(100..=200_000).contains(&cfg.realtime.replay_budget_chars) {
        bad("realtime.replay_budget_chars", "must be between 100 and 200000".into());
    }
    if !(1..=500).contains(&cfg.realtime.replay_budget_turns) {
        bad("realtime.replay_budget_turns", "must be between 1 and 500".into());
    }
    if cfg.realtime.session_max_secs > 24 * 3600 {
        bad("realtime.session_max_secs", "must be at most 86400".into());
    }
    if cfg.calls.max_concurrent == 0 {
        bad("calls.max_concurrent", "must be at least 1".into());
    }
    if cfg.calls.saturation_lateness_ms > 1000 {
        bad("calls.saturation_lateness_ms", "must be at most 1000 (0 turns capacity admission off)".into());
    }
    if cfg.calls.saturation_lateness_ms > 0 && cfg.calls.recovery_lateness_ms > cfg.calls.saturation_lateness_ms {
        bad("calls.recovery_lateness_ms", "must not be above calls.saturation_lateness_ms".into());
    }
    if cfg.calls.saturation_hold_secs > 3600 {
        bad("calls.saturation_hold_secs", "must be at most 3600".into());
    }
    let admin_listen = optional_addr("admin.listen", &cfg.admin.listen, &mut bad);
    if admin_listen.is_some_and(|addr| !addr.ip().is_loopback()) && cfg.admin.token.is_empty() {
        bad(
            "admin.token",
            "admin.listen is not a loopback address: the calls API needs admin.token (or admin.token_env)".into(),
        );
    }
    if !matches!(cfg.log.format.as_str(), "text" | "json") {
        bad("log.format", format!("`{}` must be `text` or `json`", cfg.log.format));
    }

    if cfg.agents.is_empty() {
        bad("agents", "at least one agent is needed".into());
    }
    for (name, agent) in &cfg.agents {
        let key = |field: &str| format!("agents.{name}.{field}");
        if !VOICES.contains(&agent.voice.as_str()) {
            bad(&key("voice"), format!("`{}` is not one of {}", agent.voice, VOICES.join(", ")));
        }
        if !(0.0..=1.0).contains(&agent.vad_threshold) {
            bad(&key("vad_threshold"), "must be between 0 and 1".into());
        }
        check_codecs(&key("codecs"), &agent.codecs, &mut bad);
        if agent.apology.len() > 1000 {
            bad(&key("apology"), "must be at most 1000 bytes".into());
        }
        if agent.apology_min_interval_secs == 0 {
            bad(&key("apology_min_interval_secs"), "must be at least 1".into());
        }
        // `numbers` are checked with the routes (routes::route_table); an agent without them
        // may be reached through [[routes]] or serve outbound calls only.
        if !(50..=5000).contains(&agent.barge_in_confirm_ms) {
            bad(&key("barge_in_confirm_ms"), "must be between 50 and 5000".into());
        }
        if !(100..=10_000).contains(&agent.dtmf_coalesce_ms) {
            bad(&key("dtmf_coalesce_ms"), "must be between 100 and 10000".into());
        }
        for (field, text) in [("idle_prompt", &agent.idle_prompt), ("goodbye", &agent.goodbye)] {
            if text.len() > 1000 {
                bad(&key(field), "must be at most 1000 bytes".into());
            }
        }
        if agent.idle_timeout_secs > 0 && agent.idle_prompt.trim().is_empty() {
            bad(&key("idle_prompt"), "must not be empty when idle_timeout_secs is set".into());
        }
        tools::validate_agent_tools(name, agent, &mut bad);
        validate_transfer(name, &agent.transfer, &cfg.trunks, &mut bad);
    }

    let mut trunk_addresses = BTreeMap::new();
    for (name, trunk) in &cfg.trunks {
        let key = |field: &str| format!("trunks.{name}.{field}");
        match resolve_trunk_address(&trunk.address) {
            Ok(addr) => {
                trunk_addresses.insert(name.clone(), addr);
            }
            Err(message) => bad(&key("address"), message),
        }
        if !is_sip_user(&trunk.from_user) {
            bad(&key("from_user"), format!("`{}` is not a SIP user part", trunk.from_user));
        }
        if !trunk.from_domain.is_empty() && !is_sip_host(&trunk.from_domain) {
            bad(&key("from_domain"), format!("`{}` is not a host name or address", trunk.from_domain));
        }
        check_codecs(&key("codecs"), &trunk.codecs, &mut bad);
        if trunk.max_concurrent == 0 {
            bad(&key("max_concurrent"), "must be at least 1".into());
        }
        if !(1..=600).contains(&trunk.ring_timeout_secs) {
            bad(&key("ring_timeout_secs"), "must be between 1 and 600".into());
        }
        let listener = match trunk.transport {
            TrunkTransport::Udp => &cfg.sip.udp,
            TrunkTransport::Tcp => &cfg.sip.tcp,
            TrunkTransport::Tls => &cfg.sip.tls,
        };
        if listener.is_empty() {
            // Responses come back to where we listen (RFC 3261 §18.1.1): no listener, no calls.
            bad(
                &key("transport"),
                format!("{:?} needs sip.{:?} to be set", trunk.transport, trunk.transport).to_lowercase(),
            );
        }
        if trunk.username.is_empty() && !trunk.password.is_empty() {
            bad(&key("username"), "a password is set but no username".into());
        }
        crate::registration::validate_trunk(name, trunk, &mut bad);
    }

    let routes = routes::route_table(cfg, &trunk_addresses, &mut bad);
    let trunk_sources = access::validate(cfg, &mut bad);
    let tls::ResolvedTls { listener: sip_tls, trunks: trunk_tls, clients: trunk_tls_clients } =
        tls::validate(cfg, &mut bad);
    recording::validate(cfg, problems);
    dialog::validate(cfg, problems);

    Some(Resolved {
        sip_udp,
        sip_tcp,
        advertised_host,
        media_address: media_address?,
        media_bind: media_bind?,
        rtp_ports: rtp_ports?,
        admin_listen,
        trusted_proxies,
        trunk_addresses,
        routes,
        trunk_sources,
        sip_tls,
        trunk_tls,
        trunk_tls_clients,
    })
}

/// Fills `admin.token` and every trunk's `password` from the environment variables named by
/// `token_env` / `password_env`. Naming a variable that is not set is a problem (the operator
/// meant a secret to be there); so is giving both the value and the variable.
fn resolve_secrets(cfg: &mut Config, env: &[(String, String)], problems: &mut Vec<ConfigProblem>) {
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let mut resolve = |secret: &mut Secret, var: &str, key: &str, var_key: &str| {
        if var.is_empty() {
            return;
        }
        if !secret.is_empty() {
            problems.push(ConfigProblem { key: key.into(), message: format!("set both {key} and {var_key}") });
            return;
        }
        match lookup(var) {
            Some(value) if !value.is_empty() => *secret = Secret::new(value),
            _ => problems.push(ConfigProblem {
                key: var_key.into(),
                message: format!("environment variable `{var}` is not set"),
            }),
        }
    };
    let admin = &mut cfg.admin;
    resolve(&mut admin.token, &admin.token_env, "admin.token", "admin.token_env");
    for (name, trunk) in &mut cfg.trunks {
        resolve(
            &mut trunk.password,
            &trunk.password_env,
            &format!("trunks.{name}.password"),
            &format!("trunks.{name}.password_env"),
        );
    }
    for (name, trunk) in &mut cfg.trunks {
        resolve(
            &mut trunk.inbound_password,
            &trunk.inbound_password_env,
            &format!("trunks.{name}.inbound_password"),
            &format!("trunks.{name}.inbound_password_env"),
        );
    }
    let cdr = &mut cfg.cdr;
    resolve(&mut cdr.secret, &cdr.secret_env, "cdr.secret", "cdr.secret_env");
    tools::resolve_tool_secrets(&mut cfg.agents, env, problems);
}

/// `host:port` (a name or an IP; IPv6 in brackets) to the first address it resolves to.
fn resolve_trunk_address(address: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if address.is_empty() {
        return Err("must be set (host:port)".into());
    }
    if let Ok(addr) = address.parse::<SocketAddr>() {
        return Ok(addr);
    }
    let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("`{address}` must be host:port"))?;
    if host.is_empty() || port.parse::<u16>().is_err() {
        return Err(format!("`{address}` must be host:port"));
    }
    match address.to_socket_addrs() {
        Ok(mut addrs) => addrs.next().ok_or_else(|| format!("`{host}` resolves to no address")),
        Err(e) => Err(format!("`{host}` does not resolve: {e}")),
    }
}

/// The host part of a trunk's `address` (for `sip:NUMBER@host` and the default From domain).
pub fn trunk_host(address: &str) -> &str {
    match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => address,
    }
}

/// RFC 3261 §25.1 `user`: unreserved, escaped and user-unreserved characters; we accept the
/// printable subset that needs no escaping.
pub fn is_sip_user(text: &str) -> bool {
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c))
}

/// A host name, IPv4 address or bracketed IPv6 address (RFC 3261 §25.1 `host`).
fn is_sip_host(text: &str) -> bool {
    if let Some(inner) = text.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
        return inner.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn check_codecs(key: &str, codecs: &StringList, bad: &mut impl FnMut(&str, String)) {
    for codec in &codecs.0 {
        // One vocabulary: the names SDP negotiates are the names the configuration accepts.
        if switchboard_sdp::Codec::from_name(codec).is_none() {
            let known: Vec<&str> = switchboard_sdp::Codec::all().iter().map(|c| c.encoding_name()).collect();
            bad(key, format!("`{codec}` is not a supported codec ({})", known.join(", ")));
        }
    }
}

/// Parses "20000-20999". The range must hold at least two ports and start even (RTP on even ports).
pub fn parse_port_range(text: &str) -> Result<RangeInclusive<u16>, String> {
    let (lo, hi) = text.split_once('-').ok_or_else(|| format!("`{text}` must look like 20000-20999"))?;
    let lo: u16 = lo.trim().parse().map_err(|_| format!("`{lo}` is not a port"))?;
    let hi: u16 = hi.trim().parse().map_err(|_| format!("`{hi}` is not a port"))?;
    if lo < 1024 || hi <= lo {
        return Err(format!("`{text}`: need 1024 <= first < last"));
    }
    Ok(lo..=hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn shipped_config_file_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/switchboard.toml");
        let (cfg, resolved) = load_with_env(&path, &[]).unwrap();
        let defaults = Config::default();
        assert_eq!(cfg.sip.udp, defaults.sip.udp);
        assert_eq!(cfg.media.rtp_ports, defaults.media.rtp_ports);
        assert_eq!(cfg.media.latch_config(), defaults.media.latch_config());
        assert_eq!(defaults.media.latch_config(), switchboard_media::latch::LatchConfig::default());
        assert_eq!(cfg.realtime.model, defaults.realtime.model);
        assert_eq!(cfg.realtime.watchdog_secs, defaults.realtime.watchdog_secs);
        assert_eq!(cfg.realtime.ping_interval_secs, defaults.realtime.ping_interval_secs);
        assert_eq!(cfg.realtime.max_message_bytes, defaults.realtime.max_message_bytes);
        assert_eq!(cfg.realtime.max_queued_audio_secs, defaults.realtime.max_queued_audio_secs);
        assert_eq!(cfg.agents["default"].apology, defaults.agents["default"].apology);
        assert_eq!(cfg.agents["default"].apology_min_interval_secs, 10);
        assert_eq!(resolved.rtp_ports, 20000..=20999);
        assert!(cfg.agents.contains_key("default"));
        assert_eq!(cfg.sip.invite_rate_per_source, defaults.sip.invite_rate_per_source);
        assert_eq!(cfg.sip.trusted_proxies, defaults.sip.trusted_proxies);
        assert_eq!(cfg.sip.tcp_idle_timeout_secs, defaults.sip.tcp_idle_timeout_secs);
        assert_eq!(cfg.sip.tcp_max_connections, defaults.sip.tcp_max_connections);
        assert_eq!(cfg.sip.tcp_max_connections_per_address, defaults.sip.tcp_max_connections_per_address);
        assert_eq!(cfg.sip.tcp_write_queue_bytes, defaults.sip.tcp_write_queue_bytes);
        assert_eq!(cfg.sip.tls, defaults.sip.tls);
        assert_eq!(cfg.sip.tls_cert, defaults.sip.tls_cert);
        assert_eq!(cfg.sip.tls_key, defaults.sip.tls_key);
        assert_eq!(cfg.sip.tls_client_ca, defaults.sip.tls_client_ca);
        assert!(resolved.sip_tls.is_none());
        assert_eq!(cfg.calls.max_per_source, defaults.calls.max_per_source);
        assert_eq!(cfg.calls.retry_after_secs, defaults.calls.retry_after_secs);
        assert_eq!(cfg.sip.unknown_sources, defaults.sip.unknown_sources);
        assert_eq!(cfg.sip.ban_secs, defaults.sip.ban_secs);
        assert_eq!(cfg.sip.max_cps, defaults.sip.max_cps);
        assert_eq!(cfg.sip.user_agent_deny, defaults.sip.user_agent_deny);
        assert_eq!(cfg.sip.realm, defaults.sip.realm);
        assert_eq!(cfg.sip.public_host, defaults.sip.public_host);
        assert_eq!(cfg.media.public_address, defaults.media.public_address);
    }

    #[test]
    fn environment_overrides_nested_keys_with_double_underscores() {
        let f = write("[agents.default]\ninstructions = \"x\"\n");
        let env = [
            ("SWITCHBOARD__AGENTS__DEFAULT__AUDIO_FORMAT".to_string(), "pcm".to_string()),
            ("SWITCHBOARD__MEDIA__RTP_PORTS".to_string(), "30000-30099".to_string()),
            ("SWITCHBOARD__CALLS__MAX_CONCURRENT".to_string(), "7".to_string()),
            ("OPENAI_API_KEY".to_string(), "sk-test".to_string()),
        ];
        let (cfg, resolved) = load_with_env(f.path(), &env).unwrap();
        assert_eq!(cfg.agents["default"].audio_format, AudioFormatChoice::Pcm);
        assert_eq!(resolved.rtp_ports, 30000..=30099);
        assert_eq!(cfg.calls.max_concurrent, 7);
        assert_eq!(cfg.realtime.api_key, "sk-test");
    }

    #[test]
    fn every_problem_is_reported_with_its_key() {
        let f = write(
            "[sip]\nudp = \"nonsense\"\ncolour = \"blue\"\n[media]\nrtp_ports = \"9-3\"\ncodecs = [\"G729\"]\n\
             [realtime]\nurl = \"http://x\"\n[agents.default]\nvoice = \"robot\"\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in
            ["sip.colour", "sip.udp", "media.rtp_ports", "media.codecs", "realtime.url", "agents.default.voice"]
        {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn strict_rtp_settings_are_range_checked() {
        let f = write(
            "[media]\nrtp_probation_packets = 0\nrtp_signalled_priority_ms = 60000\nrtp_relearn_silence_ms = 10\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in
            ["media.rtp_probation_packets", "media.rtp_signalled_priority_ms", "media.rtp_relearn_silence_ms"]
        {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn capacity_admission_marks_are_checked() {
        let f = write("[calls]\nsaturation_lateness_ms = 5\nrecovery_lateness_ms = 8\nsaturation_hold_secs = 7200\n");
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"calls.recovery_lateness_ms"), "{keys:?}");
        assert!(keys.contains(&"calls.saturation_hold_secs"), "{keys:?}");
        // 0 turns it off, whatever the recovery mark.
        let f = write("[calls]\nsaturation_lateness_ms = 0\nrecovery_lateness_ms = 8\n");
        let (cfg, _) = load_with_env(f.path(), &[]).unwrap();
        assert!(!cfg.calls.capacity().enabled());
    }

    #[test]
    fn realtime_bounds_are_checked() {
        let f = write(
            "[realtime]\nping_interval_secs = 10\nwatchdog_secs = 10\nmax_message_bytes = 1\n\
             max_queued_audio_secs = 0\n[agents.default]\napology_min_interval_secs = 0\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "realtime.watchdog_secs",
            "realtime.max_message_bytes",
            "realtime.max_queued_audio_secs",
            "agents.default.apology_min_interval_secs",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn type_errors_name_the_key() {
        let f = write("[calls]\nmax_concurrent = \"lots\"\n");
        let err = load_with_env(f.path(), &[]).unwrap_err();
        assert_eq!(err.0[0].key, "calls.max_concurrent");
    }

    #[test]
    fn admission_and_tcp_keys_have_defaults_and_are_validated() {
        let f = write("");
        let (cfg, resolved) = load_with_env(f.path(), &[]).unwrap();
        assert_eq!(cfg.calls.max_per_source, 20);
        assert_eq!(cfg.sip.invite_rate_per_source, 10);
        assert!(resolved.trusted_proxies.is_empty());

        let f = write("[sip]\ntrusted_proxies = [\"10.0.0.0/8\", \"192.0.2.7\"]\n");
        let (_, resolved) = load_with_env(f.path(), &[]).unwrap();
        assert_eq!(resolved.trusted_proxies.len(), 2);
        let env = [("SWITCHBOARD__SIP__TRUSTED_PROXIES".to_string(), "127.0.0.4, ::1".to_string())];
        let (_, resolved) = load_with_env(write("").path(), &env).unwrap();
        assert_eq!(resolved.trusted_proxies.len(), 2);

        let f = write(
            "[sip]\ntrusted_proxies = [\"10.0.0.0/40\"]\ntcp_idle_timeout_secs = 0\ntcp_max_connections = 0\n\
             tcp_max_connections_per_address = 0\ntcp_write_queue_bytes = 10\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "sip.trusted_proxies",
            "sip.tcp_idle_timeout_secs",
            "sip.tcp_max_connections",
            "sip.tcp_max_connections_per_address",
            "sip.tcp_write_queue_bytes",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
    }

    #[test]
    fn codecs_accept_a_comma_separated_string() {
        let f = write("[media]\ncodecs = \"PCMA, PCMU\"\n");
        let (cfg, _) = load_with_env(f.path(), &[]).unwrap();
        assert_eq!(cfg.media.codecs.0, vec!["PCMA", "PCMU"]);
    }

    #[test]
    fn trunks_have_defaults_and_take_the_password_from_the_environment() {
        let f =
            write("[trunks.carrier]\naddress = \"127.0.0.1:5070\"\nusername = \"gw\"\npassword_env = \"TRUNK_PW\"\n");
        let env = [("TRUNK_PW".to_string(), "s3cret-pw".to_string())];
        let (cfg, resolved) = load_with_env(f.path(), &env).unwrap();
        let trunk = &cfg.trunks["carrier"];
        assert_eq!(trunk.password.expose(), "s3cret-pw");
        assert_eq!(trunk.transport, TrunkTransport::Udp);
        assert_eq!(trunk.max_concurrent, 10);
        assert_eq!(trunk.ring_timeout_secs, 30);
        assert_eq!(trunk.from_user, "switchboard");
        assert_eq!(resolved.trunk_addresses["carrier"], "127.0.0.1:5070".parse().unwrap());
        let shown = format!("{cfg:?}");
        assert!(!shown.contains("s3cret-pw"), "the password leaked into Debug: {shown}");
        assert!(shown.contains("[redacted]"));
    }

    #[test]
    fn trunk_problems_are_reported_with_their_keys() {
        let f = write(
            "[trunks.a]\naddress = \"no-port\"\ncodecs = [\"G729\"]\nmax_concurrent = 0\nring_timeout_secs = 0\n\
             password_env = \"UNSET_VARIABLE_FOR_TEST\"\nfrom_user = \"a b\"\n\
             [trunks.b]\naddress = \"name.invalid:5060\"\npassword = \"x\"\ntransport = \"tcp\"\n[sip]\ntcp = \"\"\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in [
            "trunks.a.address",
            "trunks.a.codecs",
            "trunks.a.max_concurrent",
            "trunks.a.ring_timeout_secs",
            "trunks.a.password_env",
            "trunks.a.from_user",
            "trunks.b.address",
            "trunks.b.username",
            "trunks.b.transport",
        ] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        assert!(!err.to_string().contains("\"x\""));
    }

    #[test]
    fn a_non_loopback_admin_listener_needs_a_token() {
        let f = write("[admin]\nlisten = \"0.0.0.0:9090\"\n");
        let err = load_with_env(f.path(), &[]).unwrap_err();
        assert_eq!(err.0[0].key, "admin.token");

        let f = write("[admin]\nlisten = \"0.0.0.0:9090\"\ntoken_env = \"ADMIN_TOKEN\"\n");
        let env = [("ADMIN_TOKEN".to_string(), "t0ken".to_string())];
        let (cfg, _) = load_with_env(f.path(), &env).unwrap();
        assert_eq!(cfg.admin.token.expose(), "t0ken");

        let f = write("[admin]\nlisten = \"[::1]:9090\"\n");
        assert!(load_with_env(f.path(), &[]).is_ok(), "loopback needs no token");
    }

    #[test]
    fn trunk_host_strips_the_port() {
        assert_eq!(trunk_host("203.0.113.5:5060"), "203.0.113.5");
        assert_eq!(trunk_host("sip.example.com:5080"), "sip.example.com");
        assert_eq!(trunk_host("[::1]:5060"), "[::1]");
    }

    #[test]
    fn the_shipped_trunk_example_shows_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/switchboard.toml");
        let shipped = std::fs::read_to_string(path).unwrap();
        let example: String = shipped
            .split_once("# [trunks.carrier]")
            .unwrap()
            .1
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| !line.starts_with('#'))
            .map(|line| format!("{line}\n"))
            .collect();
        let example = example.replace("sip.carrier.example:5060", "127.0.0.1:5060");
        let f = write(&format!("[trunks.carrier]\n{example}"));
        let (cfg, _) = load_with_env(f.path(), &[]).unwrap();
        let (shown, defaults) = (&cfg.trunks["carrier"], TrunkConfig::default());
        assert_eq!(shown.transport, defaults.transport);
        assert_eq!(shown.from_user, defaults.from_user);
        assert_eq!(shown.from_domain, defaults.from_domain);
        assert_eq!(shown.username, defaults.username);
        assert_eq!(shown.password, defaults.password);
        assert_eq!(shown.codecs, defaults.codecs);
        assert_eq!(shown.max_concurrent, defaults.max_concurrent);
        assert_eq!(shown.ring_timeout_secs, defaults.ring_timeout_secs);
        assert_eq!(shown.tls_ca, defaults.tls_ca);
        assert_eq!(shown.tls_server_name, defaults.tls_server_name);
        assert_eq!(shown.tls_verify, defaults.tls_verify);
        assert_eq!(shown.register, defaults.register);
        assert_eq!(shown.register_expires_secs, defaults.register_expires_secs);
        assert_eq!(shown.register_user, defaults.register_user);
        assert_eq!(shown.register_domain, defaults.register_domain);
        assert_eq!(cfg.admin.token, Secret::default());
    }

    #[test]
    fn conversation_keys_parse_and_are_checked() {
        let f = write(
            "[agents.default]\nbarge_in = \"confirm\"\nbarge_in_confirm_ms = 300\nend_call = false\n\
             idle_timeout_secs = 8\nidle_prompts = 3\nmax_call_secs = 600\ndtmf_response = false\n",
        );
        let (cfg, _) = load_with_env(f.path(), &[]).unwrap();
        let agent = &cfg.agents["default"];
        assert_eq!((agent.barge_in, agent.barge_in_confirm_ms), (BargeInChoice::Confirm, 300));
        assert!(!agent.end_call && !agent.dtmf_response);
        assert_eq!((agent.idle_timeout_secs, agent.idle_prompts, agent.max_call_secs), (8, 3, 600));
        assert_eq!(agent.dtmf_coalesce_ms, 1500, "default");

        let f = write(
            "[agents.default]\nbarge_in_confirm_ms = 10\ndtmf_coalesce_ms = 0\nidle_timeout_secs = 5\n\
             idle_prompt = \" \"\n",
        );
        let err = load_with_env(f.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in
            ["agents.default.barge_in_confirm_ms", "agents.default.dtmf_coalesce_ms", "agents.default.idle_prompt"]
        {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        let f = write("[agents.default]\nbarge_in = \"sometimes\"\n");
        assert!(load_with_env(f.path(), &[]).is_err(), "an unknown barge-in mode");
    }
}
