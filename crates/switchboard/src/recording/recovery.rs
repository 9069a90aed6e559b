//! Start-up recovery: every open-call marker left in `<spool>/open/` belongs to a call the
//! gateway died during (`kill -9`, OOM, power). Its recording is repaired (sizes set to what
//! the file holds, [`super::wav::repair`]), its sidecar written from what the marker knows (no
//! transcript), and its CDR written with reason `gateway_crash`; the writer thread removes the
//! marker once the CDR is safe, as after any call.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use tracing::{info, warn};

use super::sidecar::{CallSummary, RecordFacts};
use super::wav::{self, Repair};
use super::worker::{Job, JobQueue};

/// Queues the records of every call left open; returns how many there were.
pub fn recover(marker_dir: &Path, queue: &Arc<JobQueue>, cdrs: bool, redact_numbers: bool) -> usize {
    let Ok(entries) = std::fs::read_dir(marker_dir) else { return 0 };
    let mut recovered = 0;
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.ends_with(".tmp") {
            // A marker half-written when the gateway died: the call was being answered.
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        let facts = std::fs::read(&path).ok().and_then(|body| serde_json::from_slice::<RecordFacts>(&body).ok());
        let Some(facts) = facts else {
            warn!(path = %path.display(), "unreadable open-call marker set aside (.bad)");
            let _ = std::fs::rename(&path, path.with_extension("bad"));
            continue;
        };
        recovered += 1;
        let mut ended = modified(&path);
        if let Some(recording) = &facts.recording {
            let wav_path = Path::new(&recording.wav);
            if wav_path.exists() {
                ended = modified(wav_path).max(ended);
                match wav::repair(wav_path, recording.sample_rate) {
                    Ok(Repair::Intact { frames }) | Ok(Repair::Fixed { frames }) => {
                        info!(call = facts.id.as_str(), frames, "recording of a call left open repaired");
                    }
                    Ok(Repair::Rewritten { .. }) => {
                        info!(call = facts.id.as_str(), "recording header rewritten (empty)")
                    }
                    Err(e) => warn!(error = %e, path = %wav_path.display(), "recording not repaired"),
                }
            }
        }
        let summary = CallSummary { facts: &facts, ended, end: None, journal: None, redact_numbers };
        if let Some(recording) = &facts.recording
            && !Path::new(&recording.sidecar).exists()
            && let Ok(body) = serde_json::to_vec_pretty(&summary.sidecar(None))
        {
            queue.push(Job::WriteFile { path: recording.sidecar.clone().into(), body });
        }
        let line = if cdrs { serde_json::to_vec(&summary.cdr()).unwrap_or_default() } else { Vec::new() };
        queue.push(Job::Cdr { id: facts.id.clone(), line, marker: Some(path) });
    }
    recovered
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now())
}
