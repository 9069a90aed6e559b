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

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use super::*;
    use crate::recording::sidecar::RecordingInfo;
    use crate::recording::wav::WavWriter;
    use crate::recording::worker::{self, WorkerConfig};

    #[test]
    fn a_call_left_open_gets_its_wav_repaired_a_sidecar_and_a_crash_cdr() {
        let dir = tempfile::tempdir().unwrap();
        let markers = dir.path().join("spool/open");
        let wav_path = dir.path().join("rec/c1.wav");
        std::fs::create_dir_all(&markers).unwrap();
        std::fs::create_dir_all(wav_path.parent().unwrap()).unwrap();
        // A recording cut by the crash: audio written after the last header update.
        let mut wav = WavWriter::create(&wav_path, 8000).unwrap();
        wav.append(&[1; 800]).unwrap();
        wav.update_header().unwrap();
        wav.append(&[2; 802]).unwrap();
        drop(wav);
        // ...and half a frame (a write cut short).
        let mut file = std::fs::OpenOptions::new().append(true).open(&wav_path).unwrap();
        std::io::Write::write_all(&mut file, &[7, 7]).unwrap();
        let facts = RecordFacts {
            id: "c1".into(),
            sip_call_id: "sip-c1".into(),
            direction: "inbound".into(),
            from: "sip:+15550001234@pbx".into(),
            to: "15550001000".into(),
            agent: "sales".into(),
            route: "sales".into(),
            codec: "PCMU".into(),
            started_ms: 1_764_500_000_000,
            answered_ms: 1_764_500_000_300,
            trunk: None,
            recording: Some(RecordingInfo {
                wav: wav_path.display().to_string(),
                sidecar: dir.path().join("rec/c1.json").display().to_string(),
                sample_rate: 8000,
            }),
            media_security: "rtp".into(),
        };
        std::fs::write(markers.join("c1.json"), serde_json::to_vec(&facts).unwrap()).unwrap();
        std::fs::write(markers.join("c2.json.tmp"), b"{\"id\":").unwrap();

        let queue = Arc::new(JobQueue::new(16));
        assert_eq!(recover(&markers, &queue, true, true), 1);
        queue.push(Job::Stop);
        let cdr_path = dir.path().join("cdr.jsonl");
        worker::run(
            Arc::clone(&queue),
            WorkerConfig {
                flush_interval: Duration::from_millis(200),
                header_interval: Duration::from_secs(1),
                cdr_file: Some(cdr_path.clone()),
                webhook_spool: None,
                spool_max_files: 10,
                spooled: Arc::new(AtomicUsize::new(0)),
                spool_notify: None,
            },
        );

        let cdr: serde_json::Value = serde_json::from_str(std::fs::read_to_string(&cdr_path).unwrap().trim()).unwrap();
        assert_eq!(cdr["call_id"], "c1");
        assert_eq!(cdr["reason"], "gateway_crash");
        assert_eq!(cdr["side"], "gateway");
        assert_eq!(cdr["from"], "…1234", "numbers redacted as configured");
        let sidecar: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("rec/c1.json")).unwrap()).unwrap();
        assert_eq!(sidecar["reason"], "gateway_crash");
        assert_eq!(sidecar["transcript"], serde_json::json!([]));
        let parsed = wav::parse(&std::fs::read(&wav_path).unwrap()).unwrap();
        assert_eq!(parsed.samples.len(), 1602, "everything written, in whole frames");
        assert!(parsed.samples[800..].iter().all(|&s| s == 2));
        assert!(std::fs::read_dir(&markers).unwrap().next().is_none(), "markers gone (and the half-written one)");
    }
}
