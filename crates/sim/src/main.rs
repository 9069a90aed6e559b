//! `switchboard-sim`: runs the Realtime API simulator on a local port.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use switchboard_realtime::events::AudioFormat;
use switchboard_sim::{Behaviour, BurstPattern, FailReason, Faults, SimConfig, Simulator, Tone, parse_audio_format};

/// Serve a simulated OpenAI Realtime API (GA) on ws://LISTEN/v1/realtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// What a VAD-triggered response says: echo, tone:HZ:MS or monologue:MS.
    #[arg(long, default_value = "echo")]
    behaviour: Behaviour,
    /// Tone answering a client response.create (the greeting), HZ:MS.
    #[arg(long, default_value = "440:1000")]
    greeting_tone: Tone,
    /// Output audio speed, times real time (0 = as fast as possible).
    #[arg(long, default_value_t = 4.0)]
    speed: f64,
    /// Smallest output audio chunk, ms.
    #[arg(long, default_value_t = 40)]
    min_chunk_ms: u32,
    /// Largest output audio chunk, ms.
    #[arg(long, default_value_t = 240)]
    max_chunk_ms: u32,
    /// Required Bearer key; without it any non-empty key is accepted.
    #[arg(long, env = "SIM_API_KEY")]
    api_key: Option<String>,
    /// Session lifetime in seconds before session_expired.
    #[arg(long, default_value_t = 3600)]
    max_session_secs: u64,
    /// Session lifetime in milliseconds (overrides --max-session-secs); `expires_at` in
    /// session.created matches it (rounded down to the second).
    #[arg(long, value_name = "MS")]
    max_session_ms: Option<u64>,
    /// Seed for chunk sizes and ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Events kept per session log.
    #[arg(long, default_value_t = 100_000)]
    log_limit: usize,
    /// Fault: refuse the WebSocket upgrade with this HTTP status (e.g. 401, 429, 503).
    #[arg(long, value_name = "STATUS", value_parser = clap::value_parser!(u16).range(400..=599))]
    reject_upgrade: Option<u16>,
    /// Fault: accept the upgrade, then never send anything (no session.created).
    #[arg(long)]
    no_session_created: bool,
    /// Fault: answer session.update with an `error` instead of session.updated.
    #[arg(long)]
    refuse_session_update: bool,
    /// Fault: confirm session.update with this audio format both ways: pcm, pcmu or pcma.
    #[arg(long, value_name = "FORMAT", value_parser = parse_format)]
    updated_format: Option<AudioFormat>,
    /// Fault: wait this long before answering session.update.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    session_update_delay_ms: u64,
    /// Fault: this many seconds after the upgrade, stop reading and sending (no pongs either).
    #[arg(long, value_name = "SECS")]
    stall_after_secs: Option<f64>,
    /// Fault: one second after session.updated, send one text message of this many bytes.
    #[arg(long, value_name = "BYTES")]
    huge_message_bytes: Option<usize>,
    /// Fault: responses to the caller's speech end `failed` (see --fail-reason), without audio.
    #[arg(long)]
    fail_responses: bool,
    /// Why --fail-responses fail: server_error, rate_limit_exceeded or insufficient_quota.
    #[arg(long, value_name = "REASON", default_value = "server_error")]
    fail_reason: FailReason,
    /// Every VAD-triggered response has two audio items: phase commentary (a short tone),
    /// then final_answer (the usual reply).
    #[arg(long)]
    phases: bool,
    /// After speech_started interrupts a response, up to N more audio deltas of it are sent
    /// before its response.done.
    #[arg(long, value_name = "N", default_value_t = 0)]
    late_deltas: u32,
    /// Input transcriptions (when the session enables audio.input.transcription) arrive this
    /// long after their user item is committed; 0 = right after it.
    #[arg(long, value_name = "MS", default_value_t = 0)]
    transcription_delay_ms: u64,
    /// Input transcriptions end conversation.item.input_audio_transcription.failed.
    #[arg(long)]
    transcription_fails: bool,
}

fn parse_format(text: &str) -> Result<AudioFormat, String> {
    parse_audio_format(text).map_err(|e| e.to_string())
}

/// The simulator configuration the flags describe.
fn config(args: Args) -> SimConfig {
    SimConfig {
        api_key: args.api_key,
        behaviour: args.behaviour,
        greeting: args.greeting_tone,
        burst: BurstPattern { min_chunk_ms: args.min_chunk_ms, max_chunk_ms: args.max_chunk_ms, speed: args.speed },
        max_session: match args.max_session_ms {
            Some(ms) => Duration::from_millis(ms),
            None => Duration::from_secs(args.max_session_secs),
        },
        seed: args.seed,
        log_limit: args.log_limit,
        faults: Faults {
            reject_upgrade: args.reject_upgrade,
            silent: args.no_session_created,
            refuse_session_update: args.refuse_session_update,
            updated_format: args.updated_format,
            session_update_delay: Duration::from_millis(args.session_update_delay_ms),
            stall_after: args.stall_after_secs.filter(|s| s.is_finite() && *s >= 0.0).map(Duration::from_secs_f64),
            huge_message_bytes: args.huge_message_bytes,
            fail_vad_responses: args.fail_responses,
            fail_reason: args.fail_reason,
        },
        phases: args.phases,
        late_deltas: args.late_deltas,
        transcription_delay: Duration::from_millis(args.transcription_delay_ms),
        transcription_fails: args.transcription_fails,
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let listen = args.listen;
    let cfg = config(args);
    let sim = Simulator::start(cfg, listen).await?;
    println!("{}", sim.url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn parse(flags: &[&str]) -> SimConfig {
        config(Args::try_parse_from([&["switchboard-sim"], flags].concat()).unwrap())
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        // SIM_API_KEY may be set in the environment; every other value is the flags' default.
        let cfg = SimConfig { api_key: None, ..parse(&[]) };
        assert_eq!(cfg, SimConfig::default());
    }

    #[test]
    fn issue_8_flags_reach_the_config() {
        let cfg = parse(&[
            "--max-session-ms",
            "1500",
            "--phases",
            "--late-deltas",
            "3",
            "--fail-responses",
            "--fail-reason",
            "rate_limit_exceeded",
            "--transcription-delay-ms",
            "250",
            "--transcription-fails",
        ]);
        assert_eq!(cfg.max_session, Duration::from_millis(1500));
        assert!(cfg.phases);
        assert_eq!(cfg.late_deltas, 3);
        assert!(cfg.faults.fail_vad_responses);
        assert_eq!(cfg.faults.fail_reason, FailReason::RateLimitExceeded);
        assert_eq!(cfg.transcription_delay, Duration::from_millis(250));
        assert!(cfg.transcription_fails);
        assert_eq!(parse(&["--max-session-secs", "60"]).max_session, Duration::from_secs(60));
        assert!(Args::try_parse_from(["switchboard-sim", "--fail-reason", "tired"]).is_err());
    }
}
