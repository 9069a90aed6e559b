//! Logs and metrics. Metric names live here so the admin endpoint, docs/metrics.md and tests agree.
//! Labels are small fixed sets; never a phone number or an address in a label.

pub mod process;
pub mod summary;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub const CALLS_ACTIVE: &str = "switchboard_calls_active";
pub const CALLS_TOTAL: &str = "switchboard_calls_total";
/// Outbound calls (`POST /v1/calls`) by outcome (answered, busy, no_answer, ...).
pub const OUTBOUND_CALLS_TOTAL: &str = "switchboard_outbound_calls_total";
pub const CALL_SETUP_SECONDS: &str = "switchboard_call_setup_seconds";
pub const BARGE_INS_TOTAL: &str = "switchboard_barge_ins_total";
pub const RTP_PACKETS_TOTAL: &str = "switchboard_rtp_packets_total";
pub const RTP_LOST_TOTAL: &str = "switchboard_rtp_lost_total";
pub const RTP_IGNORED_PACKETS_TOTAL: &str = "switchboard_rtp_ignored_packets_total";
pub const REALTIME_EVENTS_UNKNOWN_TOTAL: &str = "switchboard_realtime_unknown_events_total";
pub const REALTIME_ERRORS_TOTAL: &str = "switchboard_realtime_errors_total";
pub const REALTIME_FAILED_RESPONSES_TOTAL: &str = "switchboard_realtime_failed_responses_total";
pub const AGENT_AUDIO_DROPPED_FRAMES_TOTAL: &str = "switchboard_agent_audio_dropped_frames_total";
/// Caller audio appends dropped because the call's Realtime writer queue was full.
pub const REALTIME_APPENDS_DROPPED_TOTAL: &str = "switchboard_realtime_appends_dropped_total";
pub const RTP_SEND_LATENESS_SECONDS: &str = "switchboard_rtp_send_lateness_seconds";
pub const INBOUND_PROCESSING_SECONDS: &str = "switchboard_inbound_processing_seconds";
pub const OUTBOUND_PROCESSING_SECONDS: &str = "switchboard_outbound_processing_seconds";
/// Outbound RTP packets the media clock could not send, by reason (would_block, error).
pub const RTP_SEND_DROPPED_TOTAL: &str = "switchboard_rtp_send_dropped_total";
/// Times the media clock found a call's lock busy and retried it shortly after.
pub const MEDIA_CLOCK_BUSY_RETRIES_TOTAL: &str = "switchboard_media_clock_busy_retries_total";
/// 1 while capacity admission refuses new calls (pacing lateness over the threshold), else 0.
pub const CAPACITY_SATURATED: &str = "switchboard_capacity_saturated";
/// p99 send lateness of the last media clock window, seconds (what capacity admission reads).
pub const MEDIA_CLOCK_LATENESS_P99_SECONDS: &str = "switchboard_media_clock_lateness_p99_seconds";
/// Largest send lateness of the media clock's last window, seconds.
pub const MEDIA_CLOCK_LATENESS_MAX_SECONDS: &str = "switchboard_media_clock_lateness_max_seconds";
/// 1 while the gateway can work; 0 once a task it cannot live without has ended.
pub const UP: &str = "switchboard_up";
/// Sources tracked by per-source admission.
pub const ADMISSION_SOURCES: &str = "switchboard_admission_sources";
/// Inbound RTP: copies of packets already held or delivered (dropped).
pub const RTP_DUPLICATE_PACKETS_TOTAL: &str = "switchboard_rtp_duplicate_packets_total";
/// Inbound RTP: packets that arrived after their slot was concealed (dropped).
pub const RTP_LATE_PACKETS_TOTAL: &str = "switchboard_rtp_late_packets_total";
/// Inbound RTP: packets of audio concealed for lost ones (PLC, FEC, fade-and-repeat).
pub const RTP_CONCEALED_FRAMES_TOTAL: &str = "switchboard_rtp_concealed_frames_total";
/// Delay the jitter buffer added to each inbound packet, seconds.
pub const JITTER_BUFFER_DELAY_SECONDS: &str = "switchboard_jitter_buffer_delay_seconds";
/// Each call's RFC 3550 interarrival jitter at its end, seconds.
pub const RTP_JITTER_SECONDS: &str = "switchboard_rtp_jitter_seconds";
/// Caller turn latency by `part` (total, model, gateway), seconds.
pub const TURN_LATENCY_SECONDS: &str = "switchboard_turn_latency_seconds";
/// Realtime tokens from `response.done` usage, by `direction` (input, output) and `kind` (text,
/// audio, cached; cached input is a subset of text + audio).
pub const REALTIME_TOKENS_TOTAL: &str = "switchboard_realtime_tokens_total";
/// RTCP compound packets by `direction` (in, out) and `result` (ok, malformed, ignored).
pub const RTCP_PACKETS_TOTAL: &str = "switchboard_rtcp_packets_total";
/// Round-trip time to the caller from its RTCP reports (RFC 3550 §6.4.1), seconds.
pub const RTCP_ROUND_TRIP_SECONDS: &str = "switchboard_rtcp_round_trip_seconds";
/// Confirm-mode barge-ins that turned out too short (a cough): the agent resumed.
pub const BARGE_INS_RESUMED_TOTAL: &str = "switchboard_barge_ins_resumed_total";
/// DTMF keys received from callers (RFC 4733 or SIP INFO), each once.
pub const DTMF_DIGITS_TOTAL: &str = "switchboard_dtmf_digits_total";
/// Mid-call AI connection replacements, by `reason` (dropped, closed, error, expired) and
/// `outcome` (resumed, gave_up).
pub const REALTIME_RECONNECTS_TOTAL: &str = "switchboard_realtime_reconnects_total";
/// Realtime session openings that failed (call setup and reconnect attempts), by `reason`.
pub const REALTIME_CONNECT_FAILURES_TOTAL: &str = "switchboard_realtime_connect_failures_total";
/// Tool calls by `tool` (a configured name, or `unknown`) and `status` (ok, failed, timeout,
/// rejected, cancelled).
pub const TOOL_CALLS_TOTAL: &str = "switchboard_tool_calls_total";
/// Webhook tool calls, start to answer (or timeout), seconds, by `tool`.
pub const TOOL_DURATION_SECONDS: &str = "switchboard_tool_duration_seconds";
/// Tool outputs for a `call_id` not pending (a duplicate or an unknown id): not sent.
pub const TOOL_OUTPUTS_IGNORED_TOTAL: &str = "switchboard_tool_outputs_ignored_total";
/// MCP server events from the Realtime API (reference §4.5), by `type`.
pub const MCP_EVENTS_TOTAL: &str = "switchboard_mcp_events_total";
/// Two legs of a call bridged (a bridged transfer: caller and human hear each other).
pub const BRIDGES_TOTAL: &str = "switchboard_bridges_total";
/// Bridged audio frames dropped by the relay queue's policy (full, or delay trimmed).
pub const BRIDGE_RELAY_DROPPED_FRAMES_TOTAL: &str = "switchboard_bridge_relay_dropped_frames_total";
/// Inbound calls by the route that decided (`route`: its name, `none` for no match) and
/// `outcome` (agent, reject, no_match).
pub const ROUTE_DECISIONS_TOTAL: &str = "switchboard_route_decisions_total";
/// Transfers to a human, by `method` (refer, bridge) and `outcome` (transferred, bridged,
/// refused, failed, busy, rejected, no_answer, timeout, error): one per attempt.
pub const TRANSFERS_TOTAL: &str = "switchboard_transfers_total";
/// Recordings closed (a stereo WAV and its sidecar written).
pub const RECORDINGS_TOTAL: &str = "switchboard_recordings_total";
/// Seconds of audio written to recordings.
pub const RECORDING_SECONDS_TOTAL: &str = "switchboard_recording_seconds_total";
/// Recorder audio dropped, by `why`: queue_full (chunks: the writer thread fell behind), late
/// (samples for frames already written).
pub const RECORDING_SAMPLES_DROPPED_TOTAL: &str = "switchboard_recording_dropped_total";
/// Recorder and CDR disk errors, by `what` (wav, sidecar, marker, cdr, spool).
pub const RECORDING_ERRORS_TOTAL: &str = "switchboard_recording_errors_total";
/// CDR lines appended to `cdr.path`.
pub const CDRS_WRITTEN_TOTAL: &str = "switchboard_cdrs_written_total";
/// CDR webhook POSTs by `result` (ok, failed).
pub const CDR_WEBHOOK_POSTS_TOTAL: &str = "switchboard_cdr_webhook_posts_total";
/// CDRs not queued for the webhook because the spool was full (`cdr.spool_max_files`).
pub const CDR_WEBHOOK_DROPPED_TOTAL: &str = "switchboard_cdr_webhook_dropped_total";
/// Agent's first audio: INVITE received (inbound) or 200 OK received (outbound) to the first RTP
/// packet of agent audio sent to the caller, seconds, by `direction`.
pub const CALL_FIRST_AUDIO_SECONDS: &str = "switchboard_call_first_audio_seconds";
/// Realtime session openings (call setup, outbound pre-dial, reconnects), by `outcome`: `ok`, or
/// the failure reason of [`REALTIME_CONNECT_FAILURES_TOTAL`].
pub const REALTIME_CONNECTS_TOTAL: &str = "switchboard_realtime_connects_total";
/// Connect to a confirmed session (`session.updated` in usable formats), seconds; successes only.
pub const REALTIME_CONNECT_SECONDS: &str = "switchboard_realtime_connect_seconds";
/// Recordings that failed: the WAV could not be created, a write failed (the rest of the call
/// is not recorded) or it was not closed cleanly. One per recording.
pub const RECORDINGS_FAILED_TOTAL: &str = "switchboard_recordings_failed_total";
/// Always 1, with the build's `version` and `commit` as labels.
pub const BUILD_INFO: &str = "switchboard_build_info";
/// 1 while the gateway drains (SIGTERM: no new calls, calls in progress go on), else 0.
pub const DRAINING: &str = "switchboard_draining";
/// Configuration reloads (SIGHUP, `POST /v1/reload`) by `outcome` (applied, refused).
pub const CONFIG_RELOADS_TOTAL: &str = "switchboard_config_reloads_total";
/// Unix time of the last configuration successfully loaded (at start, then each applied reload).
pub const CONFIG_RELOAD_SUCCESS_TIMESTAMP: &str = "switchboard_config_last_reload_success_timestamp_seconds";
/// New out-of-dialog SIP requests the access screen refused before answering anything, by
/// `action` (drop, reject, challenge) and `reason` (docs/security.md).
pub const SIP_SCREENED_TOTAL: &str = "switchboard_sip_screened_total";
/// 1 while a trunk's registration (`register = true`) is in force, else 0, by `trunk`.
pub const SIP_REGISTRATION_STATE: &str = "switchboard_sip_registration_state";
/// Registration outcomes by `trunk` and `outcome` (registered, unregistered, auth_failed,
/// rejected, timeout, not_bound, lapsed): one per REGISTER exchange (a challenge answered is
/// part of its exchange).
pub const SIP_REGISTRATIONS_TOTAL: &str = "switchboard_sip_registrations_total";
/// Calls the caller put on hold (re-INVITE or UPDATE: sendonly, inactive or c=0.0.0.0).
pub const CALL_HOLDS_TOTAL: &str = "switchboard_call_holds_total";
/// Re-offers (re-INVITE, UPDATE) the call answered, by `method` and `result` (`answered`,
/// `refused`: 488, the call goes on unchanged).
pub const REOFFERS_ANSWERED_TOTAL: &str = "switchboard_reoffers_answered_total";
pub use switchboard_sip::endpoint::metric_names::SIP_REOFFERS_TOTAL;
/// SRTP/SRTCP packets dropped because their authentication tag did not verify (tampered, or
/// not sent with the negotiated key: a stranger spraying the port), by `kind` (rtp, rtcp).
pub const SRTP_AUTH_FAILURES_TOTAL: &str = "switchboard_srtp_auth_failures_total";
/// SRTP/SRTCP packets dropped as replays (seen before, or older than the replay window), by `kind`.
pub const SRTP_REPLAYS_TOTAL: &str = "switchboard_srtp_replays_total";
/// Calls answered or placed with SRTP media, by `suite`.
pub const SRTP_CALLS_TOTAL: &str = "switchboard_srtp_calls_total";
pub use switchboard_sip::endpoint::metric_names::{
    SIP_MALFORMED_TOTAL, SIP_REQUESTS_SENT_TOTAL, SIP_REQUESTS_TOTAL, SIP_RESPONSES_RECEIVED_TOTAL,
    SIP_RESPONSES_TOTAL, TCP_ACCEPT_ERRORS_TOTAL, TCP_CLOSED_TOTAL, TCP_CONNECTIONS, TCP_REFUSED_TOTAL,
};
/// SIP over TLS (issue 11): handshakes by direction and outcome, TLS connections open.
pub use switchboard_sip::endpoint::metric_names::{TLS_CONNECTIONS, TLS_HANDSHAKES_TOTAL};
/// Rate-limits a repeated warning: first one, then a summary count at most once per period.
pub use switchboard_sip::endpoint::{WarningAction, WarningLimiter};

/// Call setup, first audio and Realtime connect: tens of milliseconds on a LAN to seconds.
const SETUP_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Per-packet timings are sub-millisecond when things are well: fine buckets.
const PACKET_TIMING_BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05];

/// Jitter and jitter-buffer delay: 0 (in-order packets) to the longest wait.
const NETWORK_DELAY_BUCKETS: &[f64] = &[0.0005, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.12, 0.2, 0.5];
/// Turn latency: a good voice agent answers in well under a second.
const TURN_LATENCY_BUCKETS: &[f64] = &[0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0];

/// Installs the global tracing subscriber. `RUST_LOG` wins over `log.level`.
pub fn init_logging(cfg: &LogConfig) {
    set_redact_numbers(cfg.redact_numbers);
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colour codes only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests) is harmless: the first subscriber stays.
    // The filter is reloadable: a configuration reload can change `log.level` (`set_log_level`).
    let _ = if cfg.format == "json" {
        let builder = builder.json().with_current_span(true).with_filter_reloading();
        keep_level_handle(builder.reload_handle());
        builder.try_init()
    } else {
        let builder = builder.with_filter_reloading();
        keep_level_handle(builder.reload_handle());
        builder.try_init()
    };
}

/// Replaces the log filter of the installed subscriber (`log.level` after a reload).
type LevelSetter = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;
static LOG_LEVEL: std::sync::OnceLock<LevelSetter> = std::sync::OnceLock::new();

fn keep_level_handle<S: 'static>(handle: tracing_subscriber::reload::Handle<EnvFilter, S>)
where
    tracing_subscriber::reload::Handle<EnvFilter, S>: Send + Sync,
{
    let _ = LOG_LEVEL.set(Box::new(move |filter| handle.reload(filter).map_err(|e| e.to_string())));
}

/// Sets the log filter to `level` (an env-filter directive) unless `RUST_LOG` decides it, as it
/// does at start. An invalid directive is an error and changes nothing.
pub fn set_log_level(level: &str) -> Result<(), String> {
    if std::env::var_os(EnvFilter::DEFAULT_ENV).is_some() {
        return Ok(());
    }
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    match LOG_LEVEL.get() {
        Some(set) => set(filter),
        None => Ok(()),
    }
}

/// How often histogram samples are folded into their buckets.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// The exporter keeps every histogram sample until upkeep folds it into the buckets, and an
/// installed recorder runs no upkeep of its own: a gateway nobody scrapes would otherwise keep
/// every per-packet sample (tens of thousands a second under load) for ever.
fn spawn_upkeep(handle: PrometheusHandle) {
    let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
        loop {
            std::thread::sleep(UPKEEP_INTERVAL);
            handle.run_upkeep();
        }
    });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "metrics upkeep thread not started; histograms grow until scraped");
    }
}

/// Installs the Prometheus recorder and describes every gateway metric.
pub fn init_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(CALL_SETUP_SECONDS.into()), SETUP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RTP_SEND_LATENESS_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INBOUND_PROCESSING_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(OUTBOUND_PROCESSING_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(JITTER_BUFFER_DELAY_SECONDS.into()), NETWORK_DELAY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RTP_JITTER_SECONDS.into()), NETWORK_DELAY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TURN_LATENCY_SECONDS.into()), TURN_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(RTCP_ROUND_TRIP_SECONDS.into()), NETWORK_DELAY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(TOOL_DURATION_SECONDS.into()), TURN_LATENCY_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(CALL_FIRST_AUDIO_SECONDS.into()), SETUP_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(REALTIME_CONNECT_SECONDS.into()), SETUP_BUCKETS)?
        .install_recorder()?;
    spawn_upkeep(handle.clone());
    describe_operations_metrics();
    describe_dialog_metrics();
    metrics::describe_gauge!(CALLS_ACTIVE, "Calls currently up (answered or being set up).");
    metrics::describe_counter!(CALLS_TOTAL, "Calls by direction (inbound, outbound), final outcome and reason.");
    metrics::describe_counter!(
        OUTBOUND_CALLS_TOTAL,
        "Outbound calls by outcome: answered, busy, no_answer, rejected, auth_failed, unreachable, \
         agent_unavailable, cancelled, failed."
    );
    metrics::describe_histogram!(CALL_SETUP_SECONDS, "INVITE received to 200 OK sent, seconds.");
    metrics::describe_counter!(BARGE_INS_TOTAL, "Caller interruptions that flushed agent audio.");
    metrics::describe_counter!(RTP_PACKETS_TOTAL, "RTP packets by direction (in, out).");
    metrics::describe_counter!(RTP_LOST_TOTAL, "Inbound RTP packets declared lost by the reorder buffer.");
    metrics::describe_counter!(
        RTP_IGNORED_PACKETS_TOTAL,
        "RTP packets dropped by strict RTP (not from the caller's source), by reason (other_source, probation)."
    );
    metrics::describe_counter!(REALTIME_EVENTS_UNKNOWN_TOTAL, "Realtime server events of unknown type (ignored).");
    metrics::describe_counter!(REALTIME_ERRORS_TOTAL, "Realtime `error` events by code.");
    metrics::describe_counter!(
        REALTIME_FAILED_RESPONSES_TOTAL,
        "Realtime responses that ended with status `failed`, by reason."
    );
    metrics::describe_counter!(
        AGENT_AUDIO_DROPPED_FRAMES_TOTAL,
        "Agent audio frames dropped because the call's playout queue was full."
    );
    metrics::describe_histogram!(
        RTP_SEND_LATENESS_SECONDS,
        "How late each outbound RTP packet left against its 20 ms slot."
    );
    metrics::describe_histogram!(
        INBOUND_PROCESSING_SECONDS,
        "Caller RTP packet received to its audio handed to the Realtime socket (in-order packets)."
    );
    metrics::describe_histogram!(
        OUTBOUND_PROCESSING_SECONDS,
        "Model audio delta received to its RTP frames queued in the pacer."
    );
    metrics::describe_counter!(
        RTP_SEND_DROPPED_TOTAL,
        "Outbound RTP packets not sent by the media clock, by reason (would_block: socket buffer full; error)."
    );
    metrics::describe_counter!(
        MEDIA_CLOCK_BUSY_RETRIES_TOTAL,
        "Times the media clock found a call busy and retried it 200 us later."
    );
    metrics::describe_gauge!(
        CAPACITY_SATURATED,
        "1 while new calls are refused because pacing lateness is over the threshold."
    );
    metrics::describe_gauge!(
        MEDIA_CLOCK_LATENESS_P99_SECONDS,
        "p99 outbound RTP send lateness over the media clock's last 1 s window."
    );
    metrics::describe_gauge!(
        MEDIA_CLOCK_LATENESS_MAX_SECONDS,
        "Largest outbound RTP send lateness in the media clock's last 1 s window."
    );
    metrics::describe_gauge!(UP, "1 while every task the gateway needs runs; 0 once one has ended (it then exits).");
    metrics::describe_gauge!(DRAINING, "1 while the gateway drains (no new calls, calls in progress go on), else 0.");
    metrics::describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Configuration reloads (SIGHUP, POST /v1/reload) by outcome (applied, refused)."
    );
    metrics::describe_gauge!(
        CONFIG_RELOAD_SUCCESS_TIMESTAMP,
        "Unix time the configuration in effect was loaded (at start, then each applied reload)."
    );
    metrics::describe_gauge!(ADMISSION_SOURCES, "Source addresses tracked by per-source admission.");
    metrics::describe_counter!(
        SIP_SCREENED_TOTAL,
        "New SIP requests refused by the access screen before any answer, by action and reason."
    );
    metrics::describe_counter!(TCP_CLOSED_TOTAL, "SIP TCP connections closed by the gateway, by reason.");
    metrics::describe_counter!(TCP_REFUSED_TOTAL, "SIP TCP connections refused at accept (caps), by reason.");
    metrics::describe_counter!(TCP_ACCEPT_ERRORS_TOTAL, "SIP TCP accept() failures that paused the accept loop.");
    metrics::describe_gauge!(TCP_CONNECTIONS, "SIP TCP connections open.");
    describe_net_metrics();
    metrics::describe_counter!(
        BARGE_INS_RESUMED_TOTAL,
        "Confirm-mode barge-ins shorter than barge_in_confirm_ms: the agent resumed."
    );
    metrics::describe_counter!(DTMF_DIGITS_TOTAL, "DTMF keys received from callers (RFC 4733 or SIP INFO).");
    metrics::describe_counter!(
        REALTIME_RECONNECTS_TOTAL,
        "Mid-call AI connection losses by reason and outcome (resumed, gave_up)."
    );
    metrics::describe_counter!(
        REALTIME_CONNECT_FAILURES_TOTAL,
        "Realtime session openings that failed (call setup and reconnect attempts), by reason."
    );
    metrics::describe_counter!(TRANSFERS_TOTAL, "Transfers to a human by method and outcome, one per attempt.");
    metrics::describe_counter!(
        TLS_HANDSHAKES_TOTAL,
        "SIP TLS handshakes by direction (inbound, outbound) and outcome (ok, failed, timeout)."
    );
    metrics::describe_gauge!(TLS_CONNECTIONS, "SIP TLS connections open (also in switchboard_sip_tcp_connections).");
    metrics::describe_gauge!(SIP_REGISTRATION_STATE, "1 while the trunk's registration is in force, else 0.");
    metrics::describe_counter!(
        SIP_REGISTRATIONS_TOTAL,
        "REGISTER exchanges by trunk and outcome (registered, unregistered, auth_failed, rejected, timeout, \
         not_bound, lapsed)."
    );
    Ok(handle)
}

/// Re-offers, hold and session timers (issue 11, dialog).
fn describe_dialog_metrics() {
    metrics::describe_counter!(CALL_HOLDS_TOTAL, "Calls put on hold by the caller (re-INVITE or UPDATE).");
    metrics::describe_counter!(
        REOFFERS_ANSWERED_TOTAL,
        "Re-offers (re-INVITE, UPDATE) the call answered, by method and result (answered, refused)."
    );
    metrics::describe_counter!(
        SIP_REOFFERS_TOTAL,
        "re-INVITEs and UPDATEs received in a dialog, by method and kind (refresh, offer, no_sdp)."
    );
}

/// The inbound network, turn latency and token metrics (docs/metrics.md, "Network, turns, tokens").
fn describe_net_metrics() {
    metrics::describe_counter!(RTP_DUPLICATE_PACKETS_TOTAL, "Inbound RTP packets dropped as duplicates.");
    metrics::describe_counter!(
        RTP_LATE_PACKETS_TOTAL,
        "Inbound RTP packets dropped because they arrived after their slot was concealed."
    );
    metrics::describe_counter!(
        RTP_CONCEALED_FRAMES_TOTAL,
        "Inbound packets of audio concealed for lost ones (Opus PLC/FEC, G.711/G.722 fade-and-repeat)."
    );
    metrics::describe_histogram!(
        JITTER_BUFFER_DELAY_SECONDS,
        "Delay the jitter buffer added to each inbound RTP packet."
    );
    metrics::describe_histogram!(
        RTP_JITTER_SECONDS,
        "Each call's RFC 3550 interarrival jitter at the end of the call."
    );
    metrics::describe_histogram!(
        TURN_LATENCY_SECONDS,
        "Caller turn latency: end of the caller's speech on the RTP clock to the answer's first RTP \
         packet (part=total), split into part=gateway and part=model (docs/media.md)."
    );
    metrics::describe_counter!(
        REALTIME_TOKENS_TOTAL,
        "Realtime tokens from response.done usage by direction and kind (cached: subset of input)."
    );
    metrics::describe_counter!(
        RTCP_PACKETS_TOTAL,
        "RTCP compound packets by direction (in, out) and result (ok, malformed, ignored: not from the caller)."
    );
    metrics::describe_histogram!(RTCP_ROUND_TRIP_SECONDS, "Round-trip time to the caller from its RTCP reports.");
    metrics::describe_counter!(BRIDGES_TOTAL, "Two legs of a call bridged (bridged transfer to a human).");
    metrics::describe_counter!(
        BRIDGE_RELAY_DROPPED_FRAMES_TOTAL,
        "Bridged audio frames dropped by the relay queue (full queue, or added delay trimmed)."
    );
    metrics::describe_counter!(
        ROUTE_DECISIONS_TOTAL,
        "Inbound calls by the route that decided (none: no match) and outcome (agent, reject, no_match)."
    );
    metrics::describe_counter!(RECORDINGS_TOTAL, "Recordings closed (stereo WAV and sidecar written).");
    metrics::describe_counter!(RECORDING_SECONDS_TOTAL, "Seconds of audio written to recordings.");
    metrics::describe_counter!(
        RECORDING_SAMPLES_DROPPED_TOTAL,
        "Recorder audio dropped, by why: queue_full (chunks), late (samples for frames already written)."
    );
    metrics::describe_counter!(
        RECORDING_ERRORS_TOTAL,
        "Recorder and CDR disk errors, by what (wav, sidecar, marker, cdr, spool)."
    );
    metrics::describe_counter!(CDRS_WRITTEN_TOTAL, "CDR lines appended to cdr.path.");
    metrics::describe_counter!(CDR_WEBHOOK_POSTS_TOTAL, "CDR webhook POSTs by result (ok, failed).");
    metrics::describe_counter!(
        CDR_WEBHOOK_DROPPED_TOTAL,
        "CDRs not queued for the webhook because the spool was full (cdr.spool_max_files)."
    );
}

/// The metrics of issue 10 ("operate it like carrier infrastructure") and the ones that had no
/// description: every series gets a HELP line (`promtool check metrics` insists), and the build
/// is announced once.
fn describe_operations_metrics() {
    metrics::describe_counter!(SIP_REQUESTS_TOTAL, "SIP requests received, by method.");
    metrics::describe_counter!(SIP_RESPONSES_TOTAL, "SIP responses sent, by method and status code.");
    metrics::describe_counter!(
        SIP_REQUESTS_SENT_TOTAL,
        "SIP requests sent (new transactions: no retransmission, no ACK), by method."
    );
    metrics::describe_counter!(
        SIP_RESPONSES_RECEIVED_TOTAL,
        "SIP responses received (retransmissions included), by CSeq method and status code."
    );
    metrics::describe_counter!(SIP_MALFORMED_TOTAL, "SIP messages dropped or answered 400 as malformed, by transport.");
    metrics::describe_counter!(
        REALTIME_APPENDS_DROPPED_TOTAL,
        "Caller audio appends dropped because the call's Realtime writer queue was full."
    );
    metrics::describe_counter!(
        TOOL_CALLS_TOTAL,
        "Tool calls by tool and status (ok, failed, timeout, rejected, cancelled)."
    );
    metrics::describe_histogram!(TOOL_DURATION_SECONDS, "Webhook tool call to its answer (or timeout), by tool.");
    metrics::describe_counter!(
        TOOL_OUTPUTS_IGNORED_TOTAL,
        "Tool outputs for a call_id that was not pending (a duplicate or unknown id): not sent."
    );
    metrics::describe_counter!(MCP_EVENTS_TOTAL, "MCP server events from the Realtime API, by type.");
    metrics::describe_histogram!(
        CALL_FIRST_AUDIO_SECONDS,
        "INVITE received (inbound) or 200 OK received (outbound) to the agent's first RTP packet sent, by direction."
    );
    metrics::describe_counter!(
        REALTIME_CONNECTS_TOTAL,
        "Realtime session openings by outcome: ok, or the failure reason of switchboard_realtime_connect_failures_total."
    );
    metrics::describe_histogram!(
        REALTIME_CONNECT_SECONDS,
        "Realtime connect to a confirmed session (session.updated), successful openings only."
    );
    metrics::describe_counter!(
        RECORDINGS_FAILED_TOTAL,
        "Recordings that failed (WAV not created, a write failed, or not closed cleanly), one per recording."
    );
    metrics::describe_counter!(
        SRTP_AUTH_FAILURES_TOTAL,
        "SRTP/SRTCP packets dropped because authentication failed (tampered or foreign), by kind (rtp, rtcp)."
    );
    metrics::describe_counter!(SRTP_REPLAYS_TOTAL, "SRTP/SRTCP packets dropped as replays, by kind (rtp, rtcp).");
    metrics::describe_counter!(SRTP_CALLS_TOTAL, "Calls whose media was SRTP, by suite.");
    metrics::describe_gauge!(BUILD_INFO, "Always 1; the labels say which build runs (version, commit).");
    metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("SWITCHBOARD_COMMIT"))
        .set(1.0);
}

/// `switchboard_calls_total` for one call that ended: every call counts once, inbound or
/// outbound, answered or not (label values in docs/metrics.md).
pub fn count_call(direction: &'static str, outcome: &'static str, reason: &'static str) {
    metrics::counter!(CALLS_TOTAL, "direction" => direction, "outcome" => outcome, "reason" => reason).increment(1);
}

/// A Realtime session opening that succeeded after `took`.
pub fn realtime_connected(took: std::time::Duration) {
    metrics::counter!(REALTIME_CONNECTS_TOTAL, "outcome" => "ok").increment(1);
    metrics::histogram!(REALTIME_CONNECT_SECONDS).record(took.as_secs_f64());
}

/// A Realtime session opening that failed, for `reason` (the label of
/// [`REALTIME_CONNECT_FAILURES_TOTAL`], counted there too).
pub fn realtime_connect_failed(reason: &'static str) {
    metrics::counter!(REALTIME_CONNECT_FAILURES_TOTAL, "reason" => reason).increment(1);
    metrics::counter!(REALTIME_CONNECTS_TOTAL, "outcome" => reason).increment(1);
}

/// `log.redact_numbers`: set once from the configuration when logging starts.
static REDACT_NUMBERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Sets whether [`Pii`] values (and the end-of-call summary's numbers) are redacted in logs.
pub fn set_redact_numbers(redact: bool) {
    REDACT_NUMBERS.store(redact, std::sync::atomic::Ordering::Relaxed);
}

/// Whether logs redact phone numbers and addresses (`log.redact_numbers`, default true).
pub fn redact_numbers() -> bool {
    REDACT_NUMBERS.load(std::sync::atomic::Ordering::Relaxed)
}

/// A phone number, SIP URI or address in a log line: its last four characters (of the URI's
/// user part) unless `log.redact_numbers = false`, then in full; escaped either way.
pub struct Pii<'a>(pub &'a str);

impl Pii<'_> {
    /// What the log shows, with redaction `on` or off.
    fn shown(&self, redact: bool) -> String {
        if redact { crate::calls::redact_party(self.0) } else { Escaped(self.0).to_string() }
    }
}

impl std::fmt::Display for Pii<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown(redact_numbers()))
    }
}

/// Phone numbers and addresses are personal data: logs at info level show only the last digits.
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let skip = self.0.chars().count().saturating_sub(4);
        let shown: String = self.0.chars().skip(skip).collect();
        write!(f, "…{}", Escaped(&shown))
    }
}

/// A value from the network (Call-ID, URI, display name, User-Agent) made safe for a text log:
/// control characters, ANSI escapes and CR/LF cannot forge log lines or drive a terminal, so
/// they are written as `\x1b`, `\r`, `\n`, `\t`, `\u{..}`; a backslash is doubled so the
/// escaped form is unambiguous; Unicode bidirectional overrides (which reorder what a reader sees)
/// are escaped too. Everything else is shown as is.
pub struct Escaped<'a>(pub &'a str);

impl std::fmt::Display for Escaped<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use std::fmt::Write;
        for c in self.0.chars() {
            match c {
                '\\' => f.write_str("\\\\")?,
                '\r' => f.write_str("\\r")?,
                '\n' => f.write_str("\\n")?,
                '\t' => f.write_str("\\t")?,
                c if c.is_control() && u32::from(c) < 0x100 => write!(f, "\\x{:02x}", u32::from(c))?,
                c if c.is_control() || is_bidi_control(c) => write!(f, "\\u{{{:x}}}", u32::from(c))?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// Unicode bidirectional formatting characters (Unicode TR9 §2): marks, embeddings, overrides
/// and isolates.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_the_last_four_characters() {
        assert_eq!(Redacted("+15550001234").to_string(), "…1234");
        assert_eq!(Redacted("12").to_string(), "…12");
        assert_eq!(Redacted("123\r\nX").to_string(), "…3\\r\\nX");
    }

    /// `promtool check metrics` (and Prometheus users) need a HELP line for every series: each
    /// metric name declared or re-exported here has its `describe_*!` call in this file.
    #[test]
    fn every_metric_name_is_described() {
        let source = include_str!("telemetry.rs");
        let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
        let mut names: Vec<String> = source
            .lines()
            .filter_map(|line| line.strip_prefix("pub const ")?.split_once(": &str = \"switchboard_"))
            .map(|(name, _)| name.to_owned())
            .collect();
        let reexported = compact.split_once("pubuseswitchboard_sip::endpoint::metric_names::{").map(|(_, rest)| rest);
        let reexported = reexported.and_then(|rest| rest.split_once('}')).map_or("", |(list, _)| list);
        names.extend(reexported.split(',').filter(|n| !n.is_empty()).map(str::to_owned));
        assert!(names.len() > 60, "the scan found the names: {names:?}");
        let undescribed: Vec<&String> = names
            .iter()
            .filter(|name| {
                !["counter", "gauge", "histogram"]
                    .iter()
                    .any(|kind| compact.contains(&format!("describe_{kind}!({name},")))
            })
            .collect();
        assert!(undescribed.is_empty(), "metrics without a description: {undescribed:?}");
    }

    #[test]
    fn pii_is_redacted_to_the_users_last_four_characters_unless_turned_off() {
        let uri = Pii("sip:+15550001234@carrier.example;user=phone");
        assert_eq!(uri.shown(true), "…1234");
        assert_eq!(uri.shown(false), "sip:+15550001234@carrier.example;user=phone");
        assert_eq!(Pii("+4930\r\n5678").shown(true), "…5678");
        assert_eq!(Pii("bad\u{1b}[2J").shown(false), "bad\\x1b[2J", "shown in full, but escaped");
    }

    #[test]
    fn network_values_are_escaped_for_the_log() {
        assert_eq!(Escaped("abc-123@host").to_string(), "abc-123@host");
        assert_eq!(
            Escaped("id\u{1b}[31mRED\r\n2026-11-30T00:00:00Z  INFO forged").to_string(),
            "id\\x1b[31mRED\\r\\n2026-11-30T00:00:00Z  INFO forged"
        );
        assert_eq!(Escaped("a\tb\0c\u{7f}").to_string(), "a\\tb\\x00c\\x7f");
        assert_eq!(Escaped("back\\slash").to_string(), "back\\\\slash");
        assert_eq!(Escaped("\u{202e}txt.exe").to_string(), "\\u{202e}txt.exe");
        assert_eq!(Escaped("\u{9b}31m").to_string(), "\\x9b31m", "C1 CSI is a control character too");
        assert_eq!(Escaped("Zoë 日本").to_string(), "Zoë 日本");
        let escaped = Escaped("\u{1b}\r\n\u{7}").to_string();
        assert!(!escaped.chars().any(char::is_control), "{escaped:?}");
    }
}
