//! Call recording and call detail records (docs/configuration.md, "Recording and call records").
//!
//! ```text
//! call task (shell)                         writer thread (worker.rs)          webhook task
//! CallRecorder::tap ----- bounded queue --> StereoTrack -> WavWriter
//!   (audio dropped when full)               (batched writes, header every ~1 s)
//! CallRecorder::start --> marker <spool>/open/<id>.json
//! CallRecorder::finish -> Close (rest of the audio, header, sidecar)
//!                      -> Cdr (line to cdr.path, <spool>/webhook/, marker removed) --> POST, retry
//! Records::start: markers left by a crash -> WAV repaired, sidecar, CDR `gateway_crash`
//! ```
//!
//! Nothing here blocks a call: the call's side only queues jobs; every disk write is on the
//! writer thread; the webhook is an async task reading the spool.

pub mod recovery;
pub mod sidecar;
pub mod track;
pub mod wav;
pub mod webhook;
pub mod worker;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use switchboard_realtime::events::ServerEvent;
use switchboard_sdp::Codec;
use switchboard_sip::CallInfo;
use tracing::{info, warn};

use crate::call::core::{CALLER, Tap, TapDirection};
use crate::call::end::CallEnd;
use crate::call::facts::CallFacts;
use crate::call::journal::CallJournal;
use crate::calls::OutboundOutcome;
use crate::config::{self, Config};
use crate::telemetry;
use sidecar::{CallSummary, RecordFacts, RecordingInfo, Transcript, Unanswered};
use track::Channel;
use worker::{Chunk, Job, JobQueue, WorkerConfig};

/// Why recording and CDRs cannot start (the gateway does not start either: calls would be
/// taken that the operator wants recorded).
#[derive(Debug, thiserror::Error)]
pub enum RecordsError {
    #[error("{what} `{path}` is not writable: {source}")]
    NotWritable { what: &'static str, path: String, source: std::io::Error },
    #[error("recorder thread: {0}")]
    Thread(std::io::Error),
}

/// The gateway's recorder and CDR writer (one per gateway).
pub struct Records {
    queue: Arc<JobQueue>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    recording_dir: Option<PathBuf>,
    /// `<spool>/open`: one marker per answered call that is up.
    marker_dir: Option<PathBuf>,
    cdrs: bool,
    redact_numbers: bool,
    max_turns: usize,
    max_chars: usize,
    next_key: AtomicU64,
    webhook: Option<webhook::Poster>,
}

impl Records {
    /// Checks the directories, recovers what a crash left, starts the writer thread and (with a
    /// webhook) the poster task. Call inside the runtime, before calls are taken.
    pub fn start(cfg: &Config) -> Result<Arc<Records>, RecordsError> {
        let recording = &cfg.recording;
        let cdr = &cfg.cdr;
        let records_anything = cfg.agents.values().any(|a| a.record);
        let recording_dir = (!recording.dir.is_empty()).then(|| PathBuf::from(&recording.dir));
        if let Some(dir) = &recording_dir {
            probe_writable(dir, "recording.dir")?;
        }
        let spool = config::spool_dir(cdr, recording).filter(|_| cdr.enabled() || recording_dir.is_some());
        let marker_dir = spool.as_ref().map(|s| s.join("open"));
        if let Some(dir) = &marker_dir {
            probe_writable(dir, "cdr.spool_dir")?;
        }
        let webhook_spool = spool.as_ref().filter(|_| !cdr.webhook_url.is_empty()).map(|s| s.join("webhook"));
        if let Some(dir) = &webhook_spool {
            probe_writable(dir, "cdr.spool_dir")?;
        }
        if !cdr.path.is_empty() {
            worker::open_append(Path::new(&cdr.path)).map_err(|source| RecordsError::NotWritable {
                what: "cdr.path",
                path: cdr.path.clone(),
                source,
            })?;
        }
        let queue = Arc::new(JobQueue::new(recording.max_queued_chunks));
        let spooled = Arc::new(AtomicUsize::new(webhook_spool.as_deref().map_or(0, webhook::count_spooled)));
        let webhook = webhook_spool.as_ref().map(|dir| webhook::Poster::start(cdr, dir.clone(), Arc::clone(&spooled)));
        let worker_config = WorkerConfig {
            flush_interval: Duration::from_millis(recording.flush_interval_ms),
            header_interval: Duration::from_millis(recording.header_interval_ms),
            cdr_file: (!cdr.path.is_empty()).then(|| PathBuf::from(&cdr.path)),
            webhook_spool,
            spool_max_files: cdr.spool_max_files,
            spooled,
            spool_notify: webhook.as_ref().map(webhook::Poster::notify),
        };
        if let Some(dir) = &marker_dir {
            let recovered = recovery::recover(dir, &queue, cdr.enabled(), recording.redact_numbers);
            if recovered > 0 {
                warn!(
                    calls = recovered,
                    "calls left open by a crash: their recordings repaired, records written (reason gateway_crash)"
                );
            }
        }
        let thread_queue = Arc::clone(&queue);
        let thread = std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || worker::run(thread_queue, worker_config))
            .map_err(RecordsError::Thread)?;
        if records_anything || cdr.enabled() {
            info!(
                recording_dir = recording.dir.as_str(),
                cdr_path = cdr.path.as_str(),
                cdr_webhook = !cdr.webhook_url.is_empty(),
                "recording and call records on"
            );
        }
        Ok(Arc::new(Records {
            queue,
            thread: Mutex::new(Some(thread)),
            recording_dir,
            marker_dir,
            cdrs: cdr.enabled(),
            redact_numbers: recording.redact_numbers,
            max_turns: recording.max_transcript_turns,
            max_chars: recording.max_transcript_chars,
            next_key: AtomicU64::new(1),
            webhook,
        }))
    }

    /// The records of one answered call: its recording when `record` (and `recording.dir` is
    /// set), its open-call marker, its transcript. `origin` is the call clock's zero (the core's
    /// start): tap stamps and transcript offsets count from it.
    pub fn call(self: &Arc<Self>, facts: &CallFacts, record: bool, codec: Codec, origin: Instant) -> CallRecorder {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let recording = match (&self.recording_dir, record) {
            (Some(dir), true) => {
                let rate = if matches!(codec, Codec::Pcmu | Codec::Pcma) { 8000 } else { 16_000 };
                let base = recording_base(dir, &facts.id, facts.answered);
                let wav = base.with_extension("wav");
                let tap_rate = crate::call::core::tap_rate(codec);
                self.queue.push(Job::Open { key, path: wav.clone(), rate, tap_rate });
                Some(RecordingInfo {
                    wav: wav.display().to_string(),
                    sidecar: base.with_extension("json").display().to_string(),
                    sample_rate: rate,
                })
            }
            (None, true) => {
                warn!("the agent records but recording.dir is not set: the call is not recorded");
                None
            }
            _ => None,
        };
        let facts = RecordFacts::new(facts, recording);
        let marker = self.marker_dir.as_ref().map(|dir| dir.join(format!("{}.json", safe_file_name(&facts.id))));
        if let Some(marker) = &marker
            && let Ok(body) = serde_json::to_vec(&facts)
        {
            self.queue.push(Job::WriteFile { path: marker.clone(), body });
        }
        let transcript = facts.recording.is_some().then(|| Transcript::new(origin, self.max_turns, self.max_chars));
        CallRecorder {
            records: Arc::clone(self),
            key,
            facts,
            transcript,
            marker,
            journal: None,
            chunks_dropped: 0,
            finished: false,
            batch: Vec::new(),
        }
    }

    /// The CDR of a call that was never answered, and its summary line in the log.
    pub fn unanswered(&self, call: Unanswered<'_>) {
        let side = call.side.clone();
        telemetry::summary::log_call_summary(
            &Unanswered { redact_numbers: telemetry::redact_numbers(), side, ..call }.cdr(),
        );
        if !self.cdrs {
            return;
        }
        let unanswered = Unanswered { redact_numbers: self.redact_numbers, ..call };
        match serde_json::to_vec(&unanswered.cdr()) {
            Ok(line) => {
                self.queue.push(Job::Cdr { id: unanswered.id.to_owned(), line, marker: None });
            }
            Err(e) => warn!(error = %e, "CDR not serialized"),
        }
    }

    /// The CDR of an inbound call that ended before it was answered (refused or cancelled):
    /// answered calls get theirs from the conversation ([`CallRecorder::finish`]). `id` is the
    /// gateway's call id (the registry's), `started` when the INVITE arrived.
    pub fn inbound_unanswered(
        &self,
        id: &str,
        info: &CallInfo,
        trunk: Option<&str>,
        started: SystemTime,
        end: &CallEnd,
    ) {
        let sip_status = match end {
            CallEnd::Refused(refusal) => Some(refusal.status().0),
            CallEnd::CallerCancelled => Some(487),
            // Answered: the conversation wrote the record.
            _ => return,
        };
        self.unanswered(Unanswered {
            id,
            sip_call_id: &info.call_id,
            direction: "inbound",
            from: &info.from_uri,
            to: &info.dialled,
            agent: "",
            started,
            ended: SystemTime::now(),
            outcome: end.outcome_label(),
            reason: end.reason_label(),
            side: end.fault().to_string(),
            sip_status,
            redact_numbers: self.redact_numbers,
            trunk,
        });
    }

    /// The CDR of an outbound call that was not answered (busy, no answer, refused, the agent
    /// unavailable...): `outcome` is its `switchboard_outbound_calls_total` label.
    pub fn outbound_unanswered(
        &self,
        id: &str,
        from: &str,
        to: &str,
        (agent, trunk): (&str, &str),
        started: SystemTime,
        outcome: &OutboundOutcome,
    ) {
        let (sip_status, side) = match outcome {
            OutboundOutcome::Answered { .. } => return,
            OutboundOutcome::Busy { status } | OutboundOutcome::AuthFailed { status } => (Some(*status), "callee"),
            OutboundOutcome::Rejected { status, .. } => (Some(*status), "callee"),
            OutboundOutcome::NoAnswer => (None, "callee"),
            OutboundOutcome::Unreachable { .. } => (None, "network"),
            OutboundOutcome::AgentUnavailable { .. } => (None, "upstream"),
            OutboundOutcome::Cancelled => (None, "none"),
            OutboundOutcome::Failed { .. } => (None, "gateway"),
        };
        let reason = match outcome {
            OutboundOutcome::Rejected { reason, .. }
            | OutboundOutcome::Unreachable { reason }
            | OutboundOutcome::AgentUnavailable { reason }
            | OutboundOutcome::Failed { reason } => reason.as_str(),
            _ => outcome.label(),
        };
        self.unanswered(Unanswered {
            id,
            sip_call_id: "",
            direction: "outbound",
            from,
            to,
            agent,
            started,
            ended: SystemTime::now(),
            outcome: outcome.label(),
            reason,
            side: side.to_owned(),
            sip_status,
            redact_numbers: self.redact_numbers,
            trunk: Some(trunk),
        });
    }

    /// Graceful shutdown: the writer finishes every queued job (recordings closed, sidecars and
    /// CDRs written) and stops; the webhook poster gets `grace` to send what is spooled (the rest
    /// stays in the spool for the next start). Blocking: run it off the runtime's workers.
    pub fn stop(&self, grace: Duration) {
        self.queue.push(Job::Stop);
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread
            && thread.join().is_err()
        {
            warn!("recorder thread panicked");
        }
        if let Some(webhook) = &self.webhook {
            webhook.stop(grace);
        }
    }
}

/// Makes sure `dir` exists and a file can be written in it.
fn probe_writable(dir: &Path, what: &'static str) -> Result<(), RecordsError> {
    let not_writable = |source| RecordsError::NotWritable { what, path: dir.display().to_string(), source };
    std::fs::create_dir_all(dir).map_err(not_writable)?;
    let probe = dir.join(format!(".write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(not_writable)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// `<dir>/<YYYY>/<MM>/<DD>/<call id>` (UTC date of the answer), without extension.
pub fn recording_base(dir: &Path, id: &str, answered: SystemTime) -> PathBuf {
    let date = crate::calls::rfc3339_utc(answered);
    let (year, month, day) = (date.get(0..4), date.get(5..7), date.get(8..10));
    let mut path = dir.to_path_buf();
    for part in [year, month, day] {
        path.push(part.unwrap_or("0"));
    }
    path.push(safe_file_name(id));
    path
}

/// A call id as a file name: the gateway's ids are hex, but one taken from a SIP Call-ID could
/// hold anything (`/`, `..`): only `[A-Za-z0-9._@-]` are kept, others become `_`, and no name
/// starts with a dot.
pub fn safe_file_name(id: &str) -> String {
    let mut name: String = id
        .chars()
        .take(128)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@') { c } else { '_' })
        .collect();
    if name.is_empty() || name.starts_with('.') {
        name.insert(0, '_');
    }
    name
}

/// The records of one answered call, owned by its shell. Dropped without
/// [`finish`](CallRecorder::finish) (the call's task aborted at shutdown), it finishes as a
/// gateway shutdown.
pub struct CallRecorder {
    records: Arc<Records>,
    key: u64,
    facts: RecordFacts,
    transcript: Option<Transcript>,
    marker: Option<PathBuf>,
    journal: Option<CallJournal>,
    chunks_dropped: u64,
    finished: bool,
    /// Taps waiting to go to the writer together.
    batch: Vec<Chunk>,
}

/// Taps handed to the writer thread together (100 ms of both directions): the queue's lock is
/// taken a tenth as often.
pub const TAP_BATCH: usize = 10;

impl CallRecorder {
    /// Whether the call's audio is recorded (the core's taps are wanted).
    pub fn records_audio(&self) -> bool {
        self.facts.recording.is_some()
    }

    /// A tap from the core: the caller's leg only (`FromLeg` left, `ToLeg` right: what the
    /// caller heard, the agent or a bridged human).
    pub fn tap(&mut self, tap: Tap) {
        if tap.leg != CALLER || self.facts.recording.is_none() {
            return;
        }
        let channel = match tap.direction {
            TapDirection::FromLeg => Channel::Left,
            TapDirection::ToLeg => Channel::Right,
        };
        self.batch.push(Chunk { channel, at: tap.at, pcm: tap.pcm });
        if self.batch.len() >= TAP_BATCH {
            self.send_batch();
        }
    }

    /// Hands the batched chunks to the writer (one lock and one push for [`TAP_BATCH`] taps).
    fn send_batch(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let chunks = std::mem::replace(&mut self.batch, Vec::with_capacity(TAP_BATCH));
        let count = chunks.len() as u64;
        if !self.records.queue.push(Job::Audio { key: self.key, chunks }) {
            self.chunks_dropped += count;
            metrics::counter!(telemetry::RECORDING_SAMPLES_DROPPED_TOTAL, "why" => "queue_full").increment(count);
        }
    }

    /// A Realtime event (before the core sees it): transcript turns.
    pub fn observe(&mut self, now: Instant, event: &ServerEvent) {
        if let Some(transcript) = &mut self.transcript {
            transcript.observe(now, event);
        }
    }

    /// The call's tool calls and transfers, as it ends.
    pub fn on_end(&mut self, journal: &CallJournal) {
        self.journal = Some(journal.clone());
    }

    /// Closes the recording, writes the sidecar and the CDR (all on the writer thread).
    pub fn finish(mut self, end: &CallEnd) {
        self.write_up(end);
    }

    fn write_up(&mut self, end: &CallEnd) {
        if self.finished {
            return;
        }
        self.finished = true;
        // The last taps before the Close that writes them out.
        self.send_batch();
        let records = Arc::clone(&self.records);
        let summary = CallSummary {
            facts: &self.facts,
            ended: SystemTime::now(),
            end: Some(end),
            journal: self.journal.as_ref(),
            redact_numbers: records.redact_numbers,
        };
        telemetry::summary::log_call_summary(
            &CallSummary { redact_numbers: telemetry::redact_numbers(), ..summary }.cdr(),
        );
        if let Some(recording) = &self.facts.recording {
            let mut sidecar = summary.sidecar(self.transcript.as_ref());
            sidecar["recording"]["chunks_dropped"] = serde_json::json!(self.chunks_dropped);
            let body = serde_json::to_vec_pretty(&sidecar).ok().map(|body| (PathBuf::from(&recording.sidecar), body));
            records.queue.push(Job::Close { key: self.key, sidecar: body });
        }
        if records.cdrs {
            match serde_json::to_vec(&summary.cdr()) {
                Ok(line) => {
                    records.queue.push(Job::Cdr { id: self.facts.id.clone(), line, marker: self.marker.take() });
                }
                Err(e) => warn!(error = %e, "CDR not serialized"),
            }
        } else if let Some(marker) = self.marker.take() {
            // No CDR to wait for: the marker only guarded the recording, now closed.
            records.queue.push(Job::Cdr { id: self.facts.id.clone(), line: Vec::new(), marker: Some(marker) });
        }
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        self.write_up(&CallEnd::GatewayShutdown);
    }
}
