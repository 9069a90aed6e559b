//! Logs and metrics. Metric names live here so the admin endpoint, docs/metrics.md and tests agree.
//! Labels are small fixed sets; never a phone number or an address in a label.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::LogConfig;

pub const CALLS_ACTIVE: &str = "switchboard_calls_active";
pub const CALLS_TOTAL: &str = "switchboard_calls_total";
pub const CALL_SETUP_SECONDS: &str = "switchboard_call_setup_seconds";
pub const BARGE_INS_TOTAL: &str = "switchboard_barge_ins_total";
pub const RTP_PACKETS_TOTAL: &str = "switchboard_rtp_packets_total";
pub const RTP_LOST_TOTAL: &str = "switchboard_rtp_lost_total";
pub const RTP_IGNORED_PACKETS_TOTAL: &str = "switchboard_rtp_ignored_packets_total";
pub const REALTIME_EVENTS_UNKNOWN_TOTAL: &str = "switchboard_realtime_unknown_events_total";
pub const REALTIME_ERRORS_TOTAL: &str = "switchboard_realtime_errors_total";
pub const REALTIME_FAILED_RESPONSES_TOTAL: &str = "switchboard_realtime_failed_responses_total";
pub const AGENT_AUDIO_DROPPED_FRAMES_TOTAL: &str = "switchboard_agent_audio_dropped_frames_total";
pub const RTP_SEND_LATENESS_SECONDS: &str = "switchboard_rtp_send_lateness_seconds";
pub const INBOUND_PROCESSING_SECONDS: &str = "switchboard_inbound_processing_seconds";
pub const OUTBOUND_PROCESSING_SECONDS: &str = "switchboard_outbound_processing_seconds";

/// Per-packet timings are sub-millisecond when things are well: fine buckets.
const PACKET_TIMING_BUCKETS: &[f64] = &[0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05];

/// Installs the global tracing subscriber. `RUST_LOG` wins over `log.level`.
pub fn init_logging(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    // Colour codes only for a person at a terminal; log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    // A second init (tests) is harmless: the first subscriber stays.
    let _ = if cfg.format == "json" { builder.json().with_current_span(true).try_init() } else { builder.try_init() };
}

/// Installs the Prometheus recorder and describes every gateway metric.
pub fn init_metrics() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(CALL_SETUP_SECONDS.into()),
            &[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0],
        )?
        .set_buckets_for_metric(Matcher::Full(RTP_SEND_LATENESS_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(INBOUND_PROCESSING_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(OUTBOUND_PROCESSING_SECONDS.into()), PACKET_TIMING_BUCKETS)?
        .install_recorder()?;
    metrics::describe_gauge!(CALLS_ACTIVE, "Calls currently up (answered or being set up).");
    metrics::describe_counter!(CALLS_TOTAL, "Calls by final outcome and reason.");
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
    Ok(handle)
}

/// Phone numbers and addresses are personal data: logs at info level show only the last digits.
pub struct Redacted<'a>(pub &'a str);

impl std::fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let chars: Vec<char> = self.0.chars().collect();
        let keep = chars.len().saturating_sub(4);
        let shown: String = chars[keep..].iter().collect();
        write!(f, "…{shown}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_the_last_four_characters() {
        assert_eq!(Redacted("+15550001234").to_string(), "…1234");
        assert_eq!(Redacted("12").to_string(), "…12");
    }
}
