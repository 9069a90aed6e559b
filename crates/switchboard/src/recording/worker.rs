//! The recorder's writer thread: every disk write of recordings, sidecars, open-call markers and
//! CDRs happens here, never on a call's task or the media clock. Calls hand it jobs through one
//! bounded queue ([`JobQueue`]): audio is dropped (and counted) when the queue is full, the
//! few control jobs (open, close, marker, CDR: a handful per call) always go in, so a call's
//! sidecar and CDR are never lost to a burst of audio.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

use super::track::{Channel, StereoTrack, TapResampler};
use super::wav::WavWriter;
use crate::telemetry;

pub enum Job {
    /// Starts the recording `key` at `path` (directories created as needed).
    Open { key: u64, path: PathBuf, rate: u32, tap_rate: u32 },
    /// Tap audio (at the `Open`'s `tap_rate`) of the recording `key`, a few chunks at a time.
    Audio { key: u64, chunks: Vec<Chunk> },
    /// Ends the recording `key`: the rest of its audio, the final header, then the sidecar.
    Close { key: u64, sidecar: Option<(PathBuf, Vec<u8>)> },
    /// Writes a small file whole (write to a temporary name, then rename).
    WriteFile { path: PathBuf, body: Vec<u8> },
    /// Appends one CDR line, queues it for the webhook, then removes the call's open marker.
    Cdr { id: String, line: Vec<u8>, marker: Option<PathBuf> },
    /// Closes every recording and ends the thread (graceful shutdown).
    Stop,
}

/// One tap's audio: PCM of one channel at the recording's tap rate, taken at `at` on the call clock.
pub struct Chunk {
    pub channel: Channel,
    pub at: Duration,
    pub pcm: Vec<i16>,
}

struct QueueState {
    jobs: VecDeque<Job>,
    audio: usize,
    /// A job is waiting that should not wait for the writer's next tick.
    urgent: bool,
    /// The writer thread is waiting (only then is it woken: a wake-up is a syscall).
    idle: bool,
}

/// The bounded queue between the calls and the writer thread.
pub struct JobQueue {
    state: Mutex<QueueState>,
    wake: Condvar,
    max_audio: usize,
}

impl JobQueue {
    pub fn new(max_audio: usize) -> JobQueue {
        JobQueue {
            state: Mutex::new(QueueState { jobs: VecDeque::new(), audio: 0, urgent: false, idle: false }),
            wake: Condvar::new(),
            max_audio,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues a job; audio beyond the bound is dropped (returns false). Never blocks on the
    /// writer: the lock is held for a push. Audio does not wake the writer (it looks every
    /// [`TICK`] anyway; a wake-up per 20 ms chunk and call would cost more than the writing),
    /// unless half the bound is waiting; control jobs do.
    pub fn push(&self, job: Job) -> bool {
        let mut state = self.lock();
        let urgent = if let Job::Audio { chunks, .. } = &job {
            if state.audio >= self.max_audio {
                return false;
            }
            state.audio += chunks.len();
            state.audio >= self.max_audio / 2
        } else {
            true
        };
        state.jobs.push_back(job);
        if urgent {
            state.urgent = true;
            if state.idle {
                state.idle = false;
                self.wake.notify_one();
            }
        }
        true
    }

    /// Takes every queued job, after waiting up to `timeout` unless an urgent one is there.
    pub fn take(&self, timeout: Duration, into: &mut Vec<Job>) {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        // A loop: a condition variable may wake up for nothing.
        while !state.urgent {
            let Some(left) = deadline.checked_duration_since(Instant::now()).filter(|d| !d.is_zero()) else { break };
            state.idle = true;
            state = match self.wake.wait_timeout(state, left) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
            state.idle = false;
        }
        state.urgent = false;
        state.audio = 0;
        into.extend(state.jobs.drain(..));
    }
}

/// What the thread needs besides the queue.
/// How often the writer looks for queued audio without being woken.
pub const TICK: Duration = Duration::from_millis(50);

pub struct WorkerConfig {
    pub flush_interval: Duration,
    pub header_interval: Duration,
    pub cdr_file: Option<PathBuf>,
    /// `<spool>/webhook`, when CDRs go to a webhook.
    pub webhook_spool: Option<PathBuf>,
    pub spool_max_files: usize,
    /// CDRs waiting in the webhook spool (shared with the poster).
    pub spooled: Arc<AtomicUsize>,
    /// Told when a CDR was spooled.
    pub spool_notify: Option<Arc<tokio::sync::Notify>>,
}

struct Recording {
    path: PathBuf,
    wav: Option<WavWriter>,
    track: StereoTrack,
    resamplers: [TapResampler; 2],
    last_header: Instant,
    dropped_late: u64,
}

struct Worker {
    config: WorkerConfig,
    recordings: HashMap<u64, Recording>,
    cdr_file: Option<File>,
    scratch: Vec<i16>,
    frames: Vec<i16>,
}

/// The writer thread's nice value: recording is background work that may lag (its queue absorbs
/// it), the media clock and the calls' tasks may not; lowering a thread's priority needs no
/// privilege.
pub const WRITER_THREAD_NICE: i32 = 10;

/// Runs the writer until [`Job::Stop`].
pub fn run(queue: Arc<JobQueue>, config: WorkerConfig) {
    // setpriority(PRIO_PROCESS, tid) sets one thread's nice on Linux.
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), WRITER_THREAD_NICE) {
        debug!(error = %e, "recorder thread runs at the process's priority");
    }
    let cdr_file = config.cdr_file.as_deref().and_then(|path| match open_append(path) {
        Ok(file) => Some(file),
        Err(e) => {
            warn!(error = %e, path = %path.display(), "CDR file cannot be opened; CDRs are not written to it");
            None
        }
    });
    let mut worker = Worker { config, recordings: HashMap::new(), cdr_file, scratch: Vec::new(), frames: Vec::new() };
    let mut jobs = Vec::new();
    loop {
        let tick = worker.config.header_interval.min(worker.config.flush_interval).min(TICK);
        queue.take(tick, &mut jobs);
        let mut stop = false;
        for job in jobs.drain(..) {
            match job {
                Job::Stop => stop = true,
                job => worker.handle(job),
            }
        }
        worker.upkeep(Instant::now());
        if stop {
            worker.close_all();
            debug!("recorder stopped");
            return;
        }
    }
}

pub fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// Writes `body` to `path` whole: a reader (or a crash) never sees half a file.
pub fn write_whole(path: &Path, body: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, body)?;
    std::fs::rename(&temporary, path)
}

impl Worker {
    fn handle(&mut self, job: Job) {
        match job {
            Job::Open { key, path, rate, tap_rate } => {
                let created =
                    path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| WavWriter::create(&path, rate));
                let wav = match created {
                    Ok(wav) => Some(wav),
                    Err(e) => {
                        metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "wav").increment(1);
                        warn!(error = %e, path = %path.display(), "recording cannot be created; the call is not recorded");
                        None
                    }
                };
                let resampler = || TapResampler::new(tap_rate, rate);
                self.recordings.insert(
                    key,
                    Recording {
                        path,
                        wav,
                        track: StereoTrack::new(rate),
                        resamplers: [resampler(), resampler()],
                        last_header: Instant::now(),
                        dropped_late: 0,
                    },
                );
            }
            Job::Audio { key, chunks } => {
                let Some(recording) = self.recordings.get_mut(&key) else { return };
                for Chunk { channel, at, pcm } in chunks {
                    self.scratch.clear();
                    if let Some(resampler) = recording.resamplers.get_mut(channel as usize) {
                        resampler.process(&pcm, &mut self.scratch);
                    }
                    recording.track.push(channel, at, &self.scratch);
                }
                let batch = frames_in(recording.track.rate(), self.config.flush_interval);
                if recording.track.pending_frames() >= batch {
                    self.frames.clear();
                    recording.track.drain_ready(&mut self.frames);
                    write_frames(recording, &self.frames);
                }
            }
            Job::Close { key, sidecar } => {
                if let Some(mut recording) = self.recordings.remove(&key) {
                    self.frames.clear();
                    recording.track.drain_all(&mut self.frames);
                    write_frames(&mut recording, &self.frames);
                    finish(recording);
                }
                if let Some((path, body)) = sidecar
                    && let Err(e) = write_whole(&path, &body)
                {
                    metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "sidecar").increment(1);
                    warn!(error = %e, path = %path.display(), "sidecar not written");
                }
            }
            Job::WriteFile { path, body } => {
                if let Err(e) = write_whole(&path, &body) {
                    metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "marker").increment(1);
                    warn!(error = %e, path = %path.display(), "open-call marker not written");
                }
            }
            Job::Cdr { id, line, marker } => self.write_cdr(&id, &line, marker.as_deref()),
            Job::Stop => {}
        }
    }

    fn write_cdr(&mut self, id: &str, line: &[u8], marker: Option<&Path>) {
        let mut written = true;
        // An empty line only removes the marker (a recorded call with CDRs off).
        if let Some(file) = self.cdr_file.as_mut().filter(|_| !line.is_empty()) {
            // One write per line (O_APPEND): a line is whole or absent after a crash.
            let mut whole = Vec::with_capacity(line.len() + 1);
            whole.extend_from_slice(line);
            whole.push(b'\n');
            if let Err(e) = file.write_all(&whole) {
                written = false;
                metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "cdr").increment(1);
                warn!(error = %e, "CDR not written to the file");
            } else {
                metrics::counter!(telemetry::CDRS_WRITTEN_TOTAL).increment(1);
            }
        }
        if let Some(spool) = self.config.webhook_spool.as_ref().filter(|_| !line.is_empty()) {
            if self.config.spooled.load(Ordering::Acquire) >= self.config.spool_max_files {
                metrics::counter!(telemetry::CDR_WEBHOOK_DROPPED_TOTAL).increment(1);
                warn!(call = id, "CDR webhook spool full (cdr.spool_max_files): this CDR is not sent");
            } else {
                let name = super::webhook::spool_name(id);
                match write_whole(&spool.join(name), line) {
                    Ok(()) => {
                        self.config.spooled.fetch_add(1, Ordering::AcqRel);
                        if let Some(notify) = &self.config.spool_notify {
                            notify.notify_one();
                        }
                    }
                    Err(e) => {
                        written = false;
                        metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "spool").increment(1);
                        warn!(error = %e, "CDR not spooled for the webhook");
                    }
                }
            }
        }
        // The marker goes only once the record is safe: a crash before this leaves it, and the
        // next start writes the call's record (reason gateway_crash) instead.
        if written
            && let Some(marker) = marker
            && let Err(e) = std::fs::remove_file(marker)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            warn!(error = %e, path = %marker.display(), "open-call marker not removed");
        }
    }

    /// Header updates of recordings that got no audio for a while, and their pending audio.
    fn upkeep(&mut self, now: Instant) {
        for recording in self.recordings.values_mut() {
            if now.saturating_duration_since(recording.last_header) < self.config.header_interval {
                continue;
            }
            self.frames.clear();
            recording.track.drain_ready(&mut self.frames);
            write_frames(recording, &self.frames);
            update_header(recording);
            recording.last_header = now;
        }
    }

    fn close_all(&mut self) {
        for (_, mut recording) in self.recordings.drain() {
            self.frames.clear();
            recording.track.drain_all(&mut self.frames);
            write_frames(&mut recording, &self.frames);
            finish(recording);
        }
    }
}

fn frames_in(rate: u32, duration: Duration) -> u64 {
    u64::try_from(duration.as_millis() * u128::from(rate) / 1000).unwrap_or(u64::MAX)
}

fn write_frames(recording: &mut Recording, frames: &[i16]) {
    let late = recording.track.late_samples;
    if late > recording.dropped_late {
        metrics::counter!(telemetry::RECORDING_SAMPLES_DROPPED_TOTAL, "why" => "late")
            .increment(late - recording.dropped_late);
        recording.dropped_late = late;
    }
    if frames.is_empty() {
        return;
    }
    let Some(wav) = &mut recording.wav else { return };
    if let Err(e) = wav.append(frames) {
        metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "wav").increment(1);
        warn!(error = %e, path = %recording.path.display(), "recording write failed; the rest of the call is not recorded");
        recording.wav = None;
    }
}

fn update_header(recording: &mut Recording) {
    let Some(wav) = &mut recording.wav else { return };
    if let Err(e) = wav.update_header() {
        metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "wav").increment(1);
        warn!(error = %e, path = %recording.path.display(), "recording header update failed");
    }
}

fn finish(recording: Recording) {
    let Some(wav) = recording.wav else {
        // Not created, or abandoned after a failed write (both logged then).
        metrics::counter!(telemetry::RECORDINGS_FAILED_TOTAL).increment(1);
        return;
    };
    let rate = wav.rate();
    match wav.finish() {
        Ok(frames) => {
            metrics::counter!(telemetry::RECORDINGS_TOTAL).increment(1);
            metrics::counter!(telemetry::RECORDING_SECONDS_TOTAL).increment(frames / u64::from(rate.max(1)));
            debug!(path = %recording.path.display(), frames, "recording closed");
        }
        Err(e) => {
            metrics::counter!(telemetry::RECORDING_ERRORS_TOTAL, "what" => "wav").increment(1);
            metrics::counter!(telemetry::RECORDINGS_FAILED_TOTAL).increment(1);
            warn!(error = %e, path = %recording.path.display(), "recording not closed cleanly (start-up recovery repairs it)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audio_beyond_the_bound_is_dropped_and_control_jobs_always_go_in() {
        let queue = JobQueue::new(2);
        let chunk = || Chunk { channel: Channel::Left, at: Duration::ZERO, pcm: vec![0; 480] };
        let audio = || Job::Audio { key: 1, chunks: vec![chunk()] };
        assert!(queue.push(audio()));
        assert!(queue.push(audio()));
        assert!(!queue.push(audio()), "third audio chunk over the bound");
        assert!(queue.push(Job::Close { key: 1, sidecar: None }), "control jobs are never dropped");
        let mut jobs = Vec::new();
        queue.take(Duration::ZERO, &mut jobs);
        assert_eq!(jobs.len(), 3);
        assert!(matches!(jobs.last(), Some(Job::Close { .. })), "order kept");
        assert!(queue.push(audio()), "room again once taken");
    }

    #[test]
    fn audio_waits_for_the_tick_and_control_jobs_wake_the_writer() {
        let queue = Arc::new(JobQueue::new(100));
        let audio = Job::Audio {
            key: 1,
            chunks: vec![Chunk { channel: Channel::Left, at: Duration::ZERO, pcm: vec![0; 480] }],
        };
        queue.push(audio);
        let started = Instant::now();
        let mut jobs = Vec::new();
        queue.take(Duration::from_millis(200), &mut jobs);
        assert!(started.elapsed() >= Duration::from_millis(200), "audio alone does not wake the writer");
        assert_eq!(jobs.len(), 1);
        let pusher = Arc::clone(&queue);
        let push = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            pusher.push(Job::Stop);
        });
        jobs.clear();
        queue.take(Duration::from_secs(60), &mut jobs);
        assert!(matches!(jobs.as_slice(), [Job::Stop]), "a control job wakes it");
        push.join().unwrap();
    }
}
