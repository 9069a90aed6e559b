//! `switchboard test-call`: scripted test calls to an agent over real SIP, with per-turn latency,
//! transcripts and expectations (docs/test-call.md).
//!
//! - [`scenario`]: the scenario file, checked key by key;
//! - [`turns`]: the sans-IO turn machine (what the caller sends when, when the agent answered);
//! - [`caller`]: the async shell of one call (SIP client, RTP, dialog events);
//! - [`transcribe`]: a Realtime transcription session per call for what the agent said;
//! - [`report`] and [`load`]: table, JSON, JUnit, WAV; percentiles and failures by kind.
//!
//! Exit status: 0 when every expectation of every call holds, 1 when one fails (a call that does
//! not connect counts), 2 on a usage or configuration error (the problem and its key printed).

pub mod audio;
pub mod caller;
pub mod load;
pub mod report;
pub mod scenario;
pub mod transcribe;
pub mod turns;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use switchboard_sdp::Codec as SdpCodec;
use switchboard_sip::{Credentials, EndpointConfig, SipEndpoint, Timers, Transport};

use self::caller::{CallRecord, DialPlan, TurnMedia};
use self::load::Summary;
use self::report::{CallFailureReport, CallReport, ExpectationReport, RunReport, TurnReport};
use self::scenario::{Action, Scenario, Target};
use self::transcribe::TranscribeConfig;
use self::turns::{TurnSpec, judge};
use crate::config::{Config, Resolved, TrunkTransport};

/// Exit statuses.
pub const EXIT_PASSED: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;

/// The command line of `switchboard test-call`.
#[derive(Debug, Clone)]
pub struct Options {
    pub config: PathBuf,
    pub scenario: PathBuf,
    /// Overrides the scenario's `target` / `trunk`.
    pub target: Option<String>,
    pub report_dir: Option<PathBuf>,
    pub calls: Option<u32>,
    pub concurrency: Option<u32>,
}

/// A usage or configuration problem: exit 2 with `where: key: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{place}: {key}: {message}")]
pub struct UsageError {
    /// The file (or `command line`).
    pub place: String,
    pub key: String,
    pub message: String,
}

fn usage(place: &Path, key: impl Into<String>, message: impl Into<String>) -> UsageError {
    UsageError { place: place.display().to_string(), key: key.into(), message: message.into() }
}

/// Everything a run needs, checked before anything is bound or dialled.
#[derive(Debug)]
pub struct Prepared {
    pub scenario: Scenario,
    pub plan: DialPlan,
    pub target_label: String,
    pub sip_bind: SocketAddr,
    pub advertised_host: Option<IpAddr>,
    pub user_agent: String,
    pub t1: Duration,
    pub transcription: Option<TranscriptionSource>,
}

/// Where transcripts come from.
#[derive(Clone)]
pub enum TranscriptionSource {
    /// OpenAI (or the configured `realtime.url`) with the API key.
    Realtime { url: String, api_key: String, model: String },
    /// The simulator, started in-process (no API key).
    Offline { model: String },
}

impl std::fmt::Debug for TranscriptionSource {
    /// The API key is never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TranscriptionSource::Realtime { url, model, .. } => {
                f.debug_struct("Realtime").field("url", url).field("model", model).finish_non_exhaustive()
            }
            TranscriptionSource::Offline { model } => f.debug_struct("Offline").field("model", model).finish(),
        }
    }
}

/// Runs the command; returns the exit status.
pub fn main(options: Options) -> u8 {
    let prepared = match prepare(&options) {
        Ok(prepared) => prepared,
        Err(problems) => {
            for problem in &problems {
                eprintln!("{problem}");
            }
            return EXIT_USAGE;
        }
    };
    if let Some(dir) = &options.report_dir
        && let Err(e) = std::fs::create_dir_all(dir)
    {
        eprintln!("{}: --report-dir: cannot create: {e}", dir.display());
        return EXIT_USAGE;
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return EXIT_USAGE;
        }
    };
    runtime.block_on(execute(prepared, options.report_dir))
}

/// Loads and checks the configuration and the scenario; every problem names its key.
pub fn prepare(options: &Options) -> Result<Prepared, Vec<UsageError>> {
    let (config, resolved) = crate::config::load(&options.config).map_err(|errors| {
        errors.0.iter().map(|p| usage(&options.config, p.key.clone(), p.message.clone())).collect::<Vec<_>>()
    })?;
    let mut scenario =
        scenario::load(&options.scenario).map_err(|e| vec![usage(&options.scenario, e.key, e.message)])?;
    let cli = Path::new("command line");
    if let Some(calls) = options.calls {
        if calls == 0 || u64::from(calls) > scenario::MAX_CALLS {
            return Err(vec![usage(cli, "--calls", format!("1 to {}", scenario::MAX_CALLS))]);
        }
        scenario.calls = calls;
    }
    if let Some(concurrency) = options.concurrency {
        if concurrency == 0 || u64::from(concurrency) > scenario::MAX_CONCURRENCY {
            return Err(vec![usage(cli, "--concurrency", format!("1 to {}", scenario::MAX_CONCURRENCY))]);
        }
        scenario.concurrency = concurrency;
    }
    scenario.concurrency = scenario.concurrency.min(scenario.calls).max(1);
    if let Some(target) = &options.target {
        scenario::check_sip_uri(target).map_err(|m| vec![usage(cli, "--target", m)])?;
        scenario.target = Some(Target::Uri(target.clone()));
    }
    let plan_and_label = dial_plan(&config, &resolved, &scenario, &options.scenario)?;
    let (plan, target_label) = plan_and_label;
    let model = config.realtime.transcription_model.trim().to_string();
    let transcription = if model.is_empty() {
        if let Some(i) = scenario.turns.iter().position(|t| t.expect.says.is_some()) {
            return Err(vec![usage(
                &options.config,
                "realtime.transcription_model",
                format!("empty (transcription off), but turns[{i}].expect_says needs transcripts"),
            )]);
        }
        None
    } else if config.realtime.api_key.is_empty() {
        Some(TranscriptionSource::Offline { model })
    } else {
        Some(TranscriptionSource::Realtime {
            url: config.realtime.url.clone(),
            api_key: config.realtime.api_key.clone(),
            model,
        })
    };
    // An ephemeral SIP port on the gateway's SIP address, so a test call runs next to a gateway.
    let sip_ip = resolved.sip_udp.or(resolved.sip_tcp).map_or(IpAddr::from([127, 0, 0, 1]), |a| a.ip());
    let advertised_host =
        resolved.advertised_host.or_else(|| sip_ip.is_unspecified().then_some(resolved.media_address));
    Ok(Prepared {
        scenario,
        plan,
        target_label,
        sip_bind: SocketAddr::new(sip_ip, 0),
        advertised_host,
        user_agent: format!("{} test-call", config.sip.user_agent),
        t1: Duration::from_millis(config.sip.t1_ms),
        transcription,
    })
}

/// The dial plan for the scenario's target (a direct URI or a trunk).
fn dial_plan(
    config: &Config,
    resolved: &Resolved,
    scenario: &Scenario,
    scenario_path: &Path,
) -> Result<(DialPlan, String), Vec<UsageError>> {
    let g711 = |names: &[String]| -> Vec<SdpCodec> {
        names
            .iter()
            .filter_map(|n| SdpCodec::from_name(n))
            .filter(|c| matches!(c, SdpCodec::Pcmu | SdpCodec::Pcma))
            .collect()
    };
    let mut plan = DialPlan {
        request_uri: String::new(),
        from_uri: String::new(),
        destination: SocketAddr::from(([127, 0, 0, 1], 5060)),
        transport: Transport::Udp,
        credentials: None,
        codecs: g711(&config.media.codecs.0),
        media_address: resolved.media_address,
        media_bind: resolved.media_bind,
        ring_timeout: Duration::from_secs(30),
        call_timeout: Duration::from_millis(scenario.call_timeout_ms),
        agent_quiet_ms: scenario.agent_quiet_ms,
    };
    let from_user = scenario.from.clone().unwrap_or_else(|| "switchboard-test".to_string());
    let label = match &scenario.target {
        None => {
            return Err(vec![usage(
                scenario_path,
                "target",
                "no target: set target or trunk in the scenario, or --target",
            )]);
        }
        Some(Target::Uri(uri)) => {
            let (destination, transport) = uri_next_hop(uri).map_err(|m| vec![usage(scenario_path, "target", m)])?;
            plan.destination = destination;
            plan.transport = transport;
            plan.request_uri = uri.clone();
            plan.from_uri = format!("sip:{from_user}@{}", host_literal(resolved.media_address));
            uri.clone()
        }
        Some(Target::Trunk { trunk: name, to }) => {
            let Some(trunk) = config.trunks.get(name) else {
                return Err(vec![usage(scenario_path, "trunk", format!("no [trunks.{name}] in the configuration"))]);
            };
            let destination = resolved
                .trunk_addresses
                .get(name)
                .copied()
                .ok_or_else(|| vec![usage(scenario_path, "trunk", format!("[trunks.{name}] did not resolve"))])?;
            plan.request_uri = crate::call::outbound::request_uri(to, trunk)
                .map_err(|e| vec![usage(scenario_path, "to", e.to_string())])?;
            plan.destination = destination;
            plan.transport = match trunk.transport {
                TrunkTransport::Udp => Transport::Udp,
                TrunkTransport::Tcp => Transport::Tcp,
                // The test caller binds no TLS listener (and so has no certificate to present).
                TrunkTransport::Tls => {
                    return Err(vec![usage(
                        scenario_path,
                        "trunk",
                        format!("[trunks.{name}] uses transport = \"tls\", which test-call does not speak yet"),
                    )]);
                }
            };
            plan.credentials = (!trunk.username.is_empty()).then(|| Credentials {
                username: trunk.username.clone(),
                password: trunk.password.expose().to_string(),
            });
            plan.ring_timeout = Duration::from_secs(trunk.ring_timeout_secs);
            let trunk_codecs = g711(&trunk.codecs.0);
            if !trunk_codecs.is_empty() {
                plan.codecs = trunk_codecs;
            }
            let user = scenario.from.clone().unwrap_or_else(|| trunk.from_user.clone());
            let domain = if trunk.from_domain.is_empty() {
                crate::config::trunk_host(&trunk.address).to_string()
            } else {
                trunk.from_domain.clone()
            };
            plan.from_uri = format!("sip:{user}@{domain}");
            format!("{} via trunk {name}", plan.request_uri)
        }
    };
    if plan.codecs.is_empty() {
        // The test caller speaks G.711 only; a codec list without it still gets a call.
        plan.codecs = vec![SdpCodec::Pcmu, SdpCodec::Pcma];
    }
    Ok((plan, label))
}

fn host_literal(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// Where a direct `sip:` URI's INVITE goes: its host and port (5060 by default), resolved, and
/// its `transport` parameter (RFC 3263's SRV/NAPTR steps are not taken: name the port).
pub fn uri_next_hop(uri: &str) -> Result<(SocketAddr, Transport), String> {
    let rest = uri.strip_prefix("sip:").ok_or("must be a sip: URI")?;
    let (hostport, params) = rest.split_once(';').unwrap_or((rest, ""));
    let hostport = hostport.rsplit_once('@').map_or(hostport, |(_, h)| h);
    let transport =
        params.split(';').find_map(|p| p.strip_prefix("transport=")).map_or(Ok(Transport::Udp), |t| {
            match t.to_ascii_lowercase().as_str() {
                "udp" => Ok(Transport::Udp),
                "tcp" => Ok(Transport::Tcp),
                other => Err(format!("transport={other} is not supported (udp or tcp)")),
            }
        })?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or("unclosed [ in the host")?;
        let port = after.strip_prefix(':').map(str::parse::<u16>).transpose().map_err(|_| "bad port")?;
        (host.to_string(), port.unwrap_or(5060))
    } else {
        match hostport.rsplit_once(':') {
            Some((host, port)) => (host.to_string(), port.parse::<u16>().map_err(|_| "bad port")?),
            None => (hostport.to_string(), 5060),
        }
    };
    let address = (host.as_str(), port)
        .to_socket_addrs()
        .map_err(|e| format!("{host} does not resolve: {e}"))?
        .next()
        .ok_or_else(|| format!("{host} does not resolve"))?;
    Ok((address, transport))
}

/// Places the calls, transcribes, judges, reports; returns the exit status.
async fn execute(prepared: Prepared, report_dir: Option<PathBuf>) -> u8 {
    let Prepared { scenario, plan, target_label, sip_bind, advertised_host, user_agent, t1, transcription } = prepared;
    // The caller's audio, made once for every call.
    let scratch = std::env::temp_dir();
    let mut media = Vec::with_capacity(scenario.turns.len());
    for (i, turn) in scenario.turns.iter().enumerate() {
        let made = match &turn.action {
            Action::Say(text) => audio::speak(text, &scratch).await.map_err(|e| (format!("turns[{i}].say"), e)),
            Action::Wav(path) => audio::load_wav(path).map_err(|e| (format!("turns[{i}].wav"), e)),
            _ => Ok(Vec::new()),
        };
        let speech = match made {
            Ok(speech) => audio::trim_silence(&speech),
            Err((key, e)) => {
                eprintln!("scenario: {key}: {e}");
                return EXIT_USAGE;
            }
        };
        let digits = match &turn.action {
            Action::Dtmf(d) => d.chars().collect(),
            _ => Vec::new(),
        };
        media.push(TurnMedia { speech, digits });
    }
    let media = Arc::new(media);
    let specs: Vec<TurnSpec> = scenario
        .turns
        .iter()
        .zip(media.iter())
        .map(|(turn, m)| TurnSpec::from_turn(turn, m.speech.len().div_ceil(audio::FRAME_SAMPLES)))
        .collect();

    let endpoint = SipEndpoint::bind(EndpointConfig {
        udp: Some(sip_bind),
        tcp: (plan.transport == Transport::Tcp).then_some(sip_bind),
        advertised_host,
        user_agent,
        timers: Timers { t1, t2: Duration::from_secs(4).max(t1), t4: Duration::from_secs(5) },
        ..EndpointConfig::default()
    })
    .await;
    let sip = match endpoint {
        Ok((sip, mut incoming)) => {
            // Nobody should call the test caller: 403 to anyone who does.
            tokio::spawn(async move {
                while let Some(call) = incoming.recv().await {
                    call.invite.reject(403, "Forbidden", &[]);
                }
            });
            sip
        }
        Err(e) => {
            eprintln!("cannot bind the SIP client on {sip_bind}: {e}");
            return EXIT_USAGE;
        }
    };

    // Transcription: the simulator in-process without an API key (its scripted transcripts).
    let mut offline = None;
    let transcriber = match transcription {
        None => None,
        Some(TranscriptionSource::Realtime { url, api_key, model }) => {
            Some(TranscribeConfig { url, api_key, model, timeout: Duration::from_secs(30) })
        }
        Some(TranscriptionSource::Offline { model }) => {
            let config = switchboard_sim::SimConfig { log_limit: 0, ..switchboard_sim::SimConfig::default() };
            match switchboard_sim::Simulator::start(config, SocketAddr::from(([127, 0, 0, 1], 0))).await {
                Ok(sim) => {
                    let url = sim.url();
                    offline = Some(sim);
                    Some(TranscribeConfig { url, api_key: "offline".into(), model, timeout: Duration::from_secs(30) })
                }
                Err(e) => {
                    eprintln!("cannot start the offline transcription simulator: {e}");
                    return EXIT_USAGE;
                }
            }
        }
    };

    let semaphore = Arc::new(tokio::sync::Semaphore::new(scenario.concurrency as usize));
    let scenario = Arc::new(scenario);
    let plan = Arc::new(plan);
    let transcriber = Arc::new(transcriber);
    let mut tasks = tokio::task::JoinSet::new();
    for index in 0..scenario.calls as usize {
        let (sip, plan, media, specs, scenario, transcriber, semaphore, report_dir) = (
            sip.clone(),
            Arc::clone(&plan),
            Arc::clone(&media),
            specs.clone(),
            Arc::clone(&scenario),
            Arc::clone(&transcriber),
            Arc::clone(&semaphore),
            report_dir.clone(),
        );
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let record = caller::run_call(&sip, &plan, specs, &media).await;
            let transcripts = transcripts_of(&record, transcriber.as_ref().as_ref()).await;
            build_call_report(index + 1, &scenario, record, transcripts, report_dir.as_deref())
        });
    }
    let mut calls = Vec::with_capacity(scenario.calls as usize);
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(call) => calls.push(call),
            Err(e) => eprintln!("a call's task failed: {e}"),
        }
    }
    calls.sort_by_key(|c| c.call);
    sip.shutdown().await;
    if let Some(sim) = offline {
        sim.shutdown().await;
    }
    let report = run_report(&scenario.name, &target_label, calls, scenario.calls as usize);
    for call in &report.calls {
        print!("{}", report::call_table(call));
    }
    print!("{}", report::summary_text(&report));
    if let Some(dir) = &report_dir {
        if let Err(e) = report::write_files(dir, &report) {
            eprintln!("{}: cannot write the reports: {e}", dir.display());
            return EXIT_FAILED;
        }
        println!("reports: {}/report.json, {}/junit.xml", dir.display(), dir.display());
    }
    if report.passed { EXIT_PASSED } else { EXIT_FAILED }
}

/// Transcribes each answered turn of a connected call (the agent's audio from its first audio
/// to the end of its answer, or to the next turn's start after a barge-in).
async fn transcripts_of(
    record: &CallRecord,
    transcriber: Option<&TranscribeConfig>,
) -> Result<Vec<Option<String>>, String> {
    let (Some(cfg), Some(law)) = (transcriber, record.law) else {
        return Ok(vec![None; record.timings.len()]);
    };
    let track_ms = (record.agent_track.len() / 8) as u64;
    let segments: Vec<Vec<u8>> = record
        .timings
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let Some(start) = t.agent_first_audio_ms else { return Vec::new() };
            let next_start = record.timings.get(i + 1).and_then(|n| n.caller_start_ms);
            let end = t.agent_end_ms.or(next_start).unwrap_or(track_ms).min(track_ms);
            let samples = record.agent_track.get((start as usize * 8)..(end as usize * 8)).unwrap_or_default();
            let mut bytes = Vec::with_capacity(samples.len());
            law.encode(samples, &mut bytes);
            bytes
        })
        .collect();
    transcribe::transcribe(cfg, law.realtime_format(), &segments).await.map_err(|e| e.to_string())
}

fn build_call_report(
    call: usize,
    scenario: &Scenario,
    record: CallRecord,
    transcripts: Result<Vec<Option<String>>, String>,
    report_dir: Option<&Path>,
) -> CallReport {
    let connected = record.law.is_some();
    let mut notes = record.notes.clone();
    let transcripts = match transcripts {
        Ok(t) => t,
        Err(e) => {
            notes.push(format!("transcription failed: {e}"));
            Vec::new()
        }
    };
    let turns: Vec<TurnReport> = scenario
        .turns
        .iter()
        .zip(record.timings.iter())
        .enumerate()
        .map(|(i, (turn, timing))| {
            let transcript = transcripts.get(i).cloned().flatten();
            let expectations: Vec<ExpectationReport> = if connected {
                judge(&turn.expect, timing, transcript.as_deref())
                    .into_iter()
                    .map(|v| ExpectationReport {
                        expectation: v.expectation.to_string(),
                        passed: v.passed,
                        detail: v.detail,
                    })
                    .collect()
            } else {
                Vec::new()
            };
            TurnReport {
                turn: i,
                action: turn.action.describe(),
                reached: timing.reached,
                caller_start_ms: timing.caller_start_ms,
                caller_end_ms: timing.caller_end_ms,
                agent_first_audio_ms: timing.agent_first_audio_ms,
                agent_end_ms: timing.agent_end_ms,
                latency_ms: timing.latency_ms(),
                barged_in: timing.barged_in,
                transcript,
                passed: expectations.iter().all(|e| e.passed),
                expectations,
            }
        })
        .collect();
    let wav = match (report_dir, connected) {
        (Some(dir), true) => {
            let name = format!("call-{call}.wav");
            let bytes = report::stereo_wav(audio::RATE, &record.caller_track, &record.agent_track);
            match std::fs::write(dir.join(&name), bytes) {
                Ok(()) => Some(name),
                Err(e) => {
                    notes.push(format!("recording not written: {e}"));
                    None
                }
            }
        }
        _ => None,
    };
    let failure =
        record.failure.as_ref().map(|f| CallFailureReport { kind: f.label().to_string(), detail: f.describe() });
    let passed = failure.is_none() && turns.iter().all(|t| t.passed);
    CallReport {
        call,
        sip_call_id: record.sip_call_id,
        connected,
        failure,
        codec: record.codec,
        ended_by: record.ended_by,
        wav,
        notes,
        turns,
        passed,
    }
}

/// Totals, failures by kind and latency percentiles over `calls`.
pub fn run_report(scenario: &str, target: &str, calls: Vec<CallReport>, planned: usize) -> RunReport {
    let mut failures_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    let mut latencies = Vec::new();
    for call in &calls {
        if let Some(f) = &call.failure {
            *failures_by_kind.entry(f.kind.clone()).or_default() += 1;
        } else if !call.passed {
            *failures_by_kind.entry("expectation".into()).or_default() += 1;
        }
        latencies.extend(call.turns.iter().filter_map(|t| t.latency_ms));
    }
    let passed_calls = calls.iter().filter(|c| c.passed).count();
    // A call whose task died is a failure too.
    let lost = planned.saturating_sub(calls.len());
    if lost > 0 {
        *failures_by_kind.entry("internal".into()).or_default() += lost;
    }
    let summary = Summary {
        calls: planned,
        passed: passed_calls,
        failed: planned - passed_calls,
        failures_by_kind,
        latency_ms: load::percentiles(&latencies),
    };
    RunReport {
        scenario: scenario.to_string(),
        target: target.to_string(),
        passed: passed_calls == planned,
        summary,
        calls,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_uris_give_their_next_hop_and_transport() {
        let (addr, transport) = uri_next_hop("sip:agent@127.0.0.1:5070").unwrap();
        assert_eq!((addr, transport), ("127.0.0.1:5070".parse().unwrap(), Transport::Udp));
        let (addr, transport) = uri_next_hop("sip:127.0.0.1;transport=TCP").unwrap();
        assert_eq!((addr, transport), ("127.0.0.1:5060".parse().unwrap(), Transport::Tcp));
        let (addr, _) = uri_next_hop("sip:bob@[::1]:5080").unwrap();
        assert_eq!(addr, "[::1]:5080".parse().unwrap());
        assert!(uri_next_hop("sip:a@127.0.0.1;transport=sctp").unwrap_err().contains("sctp"));
        assert!(uri_next_hop("sip:a@127.0.0.1:99999").is_err());
    }
}
