//! Call recording and call detail records, end to end: a SIPp caller streams speech to the
//! simulator's echo agent through a gateway that records.
//!
//! - the stereo WAV's left channel is what the caller sent, its right what the caller heard
//!   (the echo, later), at 8 kHz for PCMU; the sidecar is complete (transcript with offsets
//!   inside the recording); the CDR file has the call; a refused call (404) has a CDR too;
//! - `kill -9` mid-call leaves a WAV that plays up to about the kill; after a restart on the same
//!   directories, the call has a CDR with reason `gateway_crash` and a sidecar; a SIGTERM mid-call
//!   then closes the call's recording and writes its sidecar and CDR before the process exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use switchboard_e2e::audio::{self, Speech};
use switchboard_e2e::procs::{Gateway, Sim, run_bounded};
use switchboard_e2e::sip_raw::{self, status_of};
use switchboard_e2e::{Ports, sipp, tools};

/// The gateway's recording settings for a test directory: the `sales` agent answers
/// 15550001000 and records; no other number is routed.
fn recording_toml(dir: &Path) -> String {
    format!(
        "[recording]\ndir = \"{rec}\"\nheader_interval_ms = 500\n\
         [cdr]\npath = \"{cdr}\"\n\
         [agents.sales]\nnumbers = [\"15550001000\"]\nrecord = true\ngreeting = \"\"\n",
        rec = dir.join("rec").display(),
        cdr = dir.join("cdr.jsonl").display(),
    )
}

/// µ-law speech then `silence_secs` of silence, as SIPp's rtp_stream file.
fn speech_stream(dir: &Path, speech: &Speech, silence_secs: f64) -> PathBuf {
    let mut stream = std::fs::read(&speech.ulaw).expect("read speech");
    stream.extend(std::iter::repeat_n(0xFF_u8, (8000.0 * silence_secs) as usize));
    let path = dir.join("stream.ul");
    std::fs::write(&path, stream).expect("write stream");
    path
}

/// Every file under `dir` (recursively) whose name ends with `suffix`.
fn files_ending(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return found };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_ending(&path, suffix));
        } else if path.to_string_lossy().ends_with(suffix) {
            found.push(path);
        }
    }
    found
}

fn wait_for<T>(limit: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(found) = check() {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn cdr_lines(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("cdr.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("CDR line is not JSON ({e}): {line}")))
        .collect()
}

/// `soxi -D`: the duration a real audio tool reads from the file.
fn soxi_seconds(path: &Path) -> f64 {
    let out = run_bounded("soxi", Command::new("soxi").arg("-D").arg(path), Duration::from_secs(10));
    assert!(out.status.success(), "soxi cannot read {}: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().expect("soxi duration")
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_espeak_ng, has_sox)),
    ignore = "needs sipp, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn a_recorded_call_has_a_stereo_wav_a_complete_sidecar_and_a_cdr() {
    let test = "a_recorded_call_has_a_stereo_wav_a_complete_sidecar_and_a_cdr";
    let ports = Ports::for_slot(87);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let stream = speech_stream(&dir, &speech, 3.0);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), &recording_toml(&dir), &dir);

    let out = sipp::run(
        "uac_call.xml",
        &[
            ("FORMATS", "0 101"),
            ("RTPMAPS", &sipp::rtpmaps("0 101")),
            ("EXPECT_PT", "0"),
            ("MEDIA", &sipp::rtp_stream(&stream.display().to_string(), "0")),
        ],
        &dir,
        ports,
        "15550001000",
        7000,
    );
    assert!(out.status.success(), "the call failed (SIPp); gateway log:\n{}", gateway.log());

    // A refused call: no route for this number.
    let invite = "INVITE sip:15550009999@127.0.0.1 SIP/2.0\n\
                  Via: SIP/2.0/UDP LOCAL;branch=z9hG4bK-rec-404\n\
                  From: <sip:caller@127.0.0.1>;tag=abc\n\
                  To: <sip:15550009999@127.0.0.1>\n\
                  Call-ID: rec-404@test\n\
                  CSeq: 1 INVITE\n\
                  Contact: <sip:caller@LOCAL>\n\
                  Max-Forwards: 70\n\
                  Content-Length: 0\n\n";
    let answers = sip_raw::exchange(gateway.sip_addr(), invite, Duration::from_millis(800));
    let status = answers.iter().filter_map(|a| status_of(a)).find(|s| *s >= 200);
    assert_eq!(status, Some(404), "{answers:?}");

    let lines = wait_for(Duration::from_secs(5), || {
        let lines = cdr_lines(&dir);
        (lines.len() >= 2).then_some(lines)
    })
    .unwrap_or_else(|| panic!("two CDR lines expected, got {:?}; log:\n{}", cdr_lines(&dir), gateway.log()));
    assert_eq!(lines.len(), 2, "{lines:?}");
    let refused = lines.iter().find(|l| l["sip_call_id"] == "rec-404@test").expect("the refused call's CDR");
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["reason"], "no_route");
    assert_eq!(refused["sip_status"], 404);
    assert_eq!(refused["answered"], serde_json::Value::Null);
    let cdr = lines.iter().find(|l| l["sip_call_id"] != "rec-404@test").expect("the recorded call's CDR");
    assert_eq!(cdr["outcome"], "completed", "{cdr}");
    assert_eq!(cdr["reason"], "caller_bye");
    assert_eq!(cdr["side"], "none");
    assert_eq!(cdr["direction"], "inbound");
    assert_eq!(cdr["agent"], "sales");
    assert_eq!(cdr["codec"], "PCMU");
    assert_eq!(cdr["to"], "15550001000");
    assert!(cdr["duration_ms"].as_u64().unwrap() >= 6000, "{cdr}");

    // The recording and its sidecar, where the CDR says, under <dir>/<YYYY>/<MM>/<DD>/.
    let wav = PathBuf::from(cdr["recording"].as_str().expect("recording path in the CDR"));
    let sidecar_path = PathBuf::from(cdr["sidecar"].as_str().expect("sidecar path in the CDR"));
    assert_eq!(files_ending(&dir.join("rec"), ".wav"), vec![wav.clone()]);
    let call_id = cdr["call_id"].as_str().unwrap();
    assert!(wav.ends_with(format!("{call_id}.wav")), "{}", wav.display());
    let date = wav.parent().unwrap().strip_prefix(dir.join("rec")).unwrap().to_string_lossy().to_string();
    assert_eq!(date.len(), 10, "YYYY/MM/DD: {date}");
    assert!(cdr["answered"].as_str().unwrap().starts_with(&date.replace('/', "-")), "UTC date of the answer");

    let (rate, left, right) = audio::read_stereo_wav(&wav);
    assert_eq!(rate, 8000, "G.711 calls are recorded at 8 kHz");
    let seconds = left.len() as f64 / 8000.0;
    assert!((6.0..9.0).contains(&seconds), "recording lasts {seconds:.2} s");
    let soxi = soxi_seconds(&wav);
    assert!((soxi - seconds).abs() < 0.01, "soxi reads {soxi} s, we parsed {seconds} s");

    // Left: what the caller sent; right: what the caller heard (the echo, after the speech).
    let (_, reference) = audio::read_wav(&speech.wav_8k);
    let reference_env = audio::envelope(&reference, 160);
    let (left_lag, left_r) = audio::best_lag_correlation(&reference_env, &audio::envelope(&left, 160), 300);
    let (right_lag, right_r) = audio::best_lag_correlation(&reference_env, &audio::envelope(&right, 160), 300);
    eprintln!("left r = {left_r:.3} at {} ms, right r = {right_r:.3} at {} ms", left_lag * 20, right_lag * 20);
    assert!(left_r >= 0.8, "the left channel correlates only {left_r:.3} with what the caller sent");
    assert!(right_r >= 0.8, "the right channel correlates only {right_r:.3} with what the caller heard");
    let speech_frames = reference_env.len();
    assert!(
        right_lag > left_lag + speech_frames / 2,
        "the echo (right, at {} ms) comes after the speech (left, at {} ms)",
        right_lag * 20,
        left_lag * 20
    );

    let sidecar: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&sidecar_path).expect("sidecar")).expect("sidecar JSON");
    for key in ["call_id", "sip_call_id", "from", "to", "agent", "route", "codec", "started", "answered", "ended"] {
        assert!(sidecar[key].as_str().is_some_and(|v| !v.is_empty()), "sidecar {key} missing: {sidecar}");
    }
    assert_eq!(sidecar["call_id"], cdr["call_id"]);
    assert_eq!(sidecar["sip_call_id"], cdr["sip_call_id"]);
    assert_eq!(sidecar["reason"], "caller_bye");
    assert_eq!(sidecar["side"], "none");
    assert_eq!(sidecar["recording"]["sample_rate"], 8000);
    assert!(sidecar["tools"].as_array().is_some() && sidecar["transfers"].as_array().is_some(), "{sidecar}");
    let transcript = sidecar["transcript"].as_array().expect("transcript");
    let length_ms = (seconds * 1000.0) as u64;
    let caller = transcript.iter().find(|t| t["speaker"] == "caller").expect("a caller turn");
    let agent = transcript.iter().find(|t| t["speaker"] == "agent").expect("an agent turn");
    assert!(caller["text"].as_str().unwrap().starts_with("caller utterance 1"), "{caller}");
    assert!(agent["text"].as_str().unwrap().starts_with("You said something for"), "{agent}");
    for turn in transcript {
        let offset = turn["offset_ms"].as_u64().expect("offset");
        assert!(offset < length_ms, "turn at {offset} ms, recording {length_ms} ms: {turn}");
    }
    // The caller spoke where the left channel has the speech; the agent answered later.
    let caller_ms = caller["offset_ms"].as_u64().unwrap();
    assert!(
        caller_ms.abs_diff(left_lag as u64 * 20) < 700,
        "caller turn at {caller_ms} ms, speech at {} ms",
        left_lag * 20
    );
    assert!(agent["offset_ms"].as_u64().unwrap() > caller_ms);
    assert!(gateway.metrics().contains("switchboard_recordings_total 1"), "recording counted");
}

#[test]
#[cfg_attr(
    not(all(has_sipp, has_espeak_ng, has_sox)),
    ignore = "needs sipp, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn kill_9_mid_call_leaves_a_playable_recording_and_a_crash_cdr_after_restart() {
    let test = "kill_9_mid_call_leaves_a_playable_recording_and_a_crash_cdr_after_restart";
    let ports = Ports::for_slot(88);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    let stream = speech_stream(&dir, &speech, 8.0);
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let toml = recording_toml(&dir);
    let mut gateway = Gateway::start(ports, &sim.url(), &toml, &dir);

    // The call runs in the background; the gateway dies under it.
    let caller = {
        let (dir, stream) = (dir.clone(), stream.clone());
        std::thread::spawn(move || {
            sipp::run(
                "uac_call.xml",
                &[
                    ("FORMATS", "0 101"),
                    ("RTPMAPS", &sipp::rtpmaps("0 101")),
                    ("EXPECT_PT", "0"),
                    ("MEDIA", &sipp::rtp_stream(&stream.display().to_string(), "0")),
                ],
                &dir,
                ports,
                "15550001000",
                // The BYE reaches the restarted gateway, which knows no such dialog (481): SIPp
                // gives up at once.
                6000,
            )
        })
    };
    let wav = wait_for(Duration::from_secs(10), || files_ending(&dir.join("rec"), ".wav").pop())
        .unwrap_or_else(|| panic!("no recording started; log:\n{}", gateway.log()));
    // The file appears at the answer (within this poll's 50 ms).
    let recording_seen = Instant::now();
    // Between two header updates (every 500 ms from the start of the file).
    std::thread::sleep(Duration::from_millis(3250));
    // SIGKILL: no shutdown, no final header, no CDR.
    gateway.guard.child.kill().expect("kill -9 the gateway");
    let killed_at = recording_seen.elapsed().as_secs_f64();
    gateway.guard.child.wait().expect("reap the gateway");
    assert!(cdr_lines(&dir).is_empty(), "no CDR could have been written");
    assert_eq!(files_ending(&dir.join("rec"), ".json").len(), 0, "no sidecar yet");

    // As the crash left it: a valid WAV that plays up to the last header update (<= 0.5 s ago,
    // plus the batch not yet written).
    let (rate, left, _) = audio::read_stereo_wav(&wav);
    assert_eq!(rate, 8000);
    let played = left.len() as f64 / 8000.0;
    eprintln!("killed {killed_at:.2} s into the recording; it plays {played:.2} s");
    assert!(played <= killed_at + 0.2, "plays {played:.2} s, more than the {killed_at:.2} s recorded");
    assert!(played >= killed_at - 1.5, "plays only {played:.2} s of {killed_at:.2} s");
    assert!((soxi_seconds(&wav) - played).abs() < 0.01, "soxi agrees");

    // Restarted on the same directories: the call gets its records. `drain_secs = 0`: the
    // SIGTERM below hangs up at once instead of waiting for the call to end.
    let gateway = Gateway::start_with_env(ports, &sim.url(), &toml, &dir, &[("SWITCHBOARD__CALLS__DRAIN_SECS", "0")]);
    let lines = wait_for(Duration::from_secs(5), || {
        let lines = cdr_lines(&dir);
        (!lines.is_empty()).then_some(lines)
    })
    .unwrap_or_else(|| panic!("no CDR after the restart; log:\n{}", gateway.log()));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["reason"], "gateway_crash");
    assert_eq!(lines[0]["side"], "gateway");
    assert_eq!(lines[0]["recording"], wav.display().to_string());
    let sidecar = wait_for(Duration::from_secs(5), || files_ending(&dir.join("rec"), ".json").pop())
        .expect("the sidecar is written at recovery");
    let sidecar: serde_json::Value = serde_json::from_slice(&std::fs::read(sidecar).unwrap()).unwrap();
    assert_eq!(sidecar["reason"], "gateway_crash");
    assert_eq!(sidecar["call_id"], lines[0]["call_id"]);
    // Repaired: everything written before the kill plays.
    let (_, repaired, _) = audio::read_stereo_wav(&wav);
    assert!(repaired.len() >= left.len(), "repair never loses audio");
    assert!(gateway.log().contains("calls left open by a crash"), "the recovery is logged");
    let _ = caller.join();

    // A graceful stop (SIGTERM, no drain) mid-call: the call is hung up, and before the process exits its
    // recording is closed, its sidecar and its CDR written.
    let mut gateway = gateway;
    let second = {
        let (dir, stream) = (dir.clone(), stream.clone());
        std::thread::spawn(move || {
            sipp::run(
                "uac_call.xml",
                &[
                    ("FORMATS", "0 101"),
                    ("RTPMAPS", &sipp::rtpmaps("0 101")),
                    ("EXPECT_PT", "0"),
                    ("MEDIA", &sipp::rtp_stream(&stream.display().to_string(), "0")),
                ],
                &dir,
                ports,
                "15550001000",
                6000,
            )
        })
    };
    let second_wav = wait_for(Duration::from_secs(10), || {
        files_ending(&dir.join("rec"), ".wav").into_iter().find(|path| *path != wav)
    })
    .unwrap_or_else(|| panic!("the second call was not recorded; log:\n{}", gateway.log()));
    std::thread::sleep(Duration::from_millis(1500));
    assert!(gateway.guard.terminate(Duration::from_secs(15)).is_some_and(|s| s.success()), "clean exit");
    let lines = cdr_lines(&dir);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[1]["reason"], "shutdown");
    assert_eq!(lines[1]["recording"], second_wav.display().to_string());
    let sidecar = PathBuf::from(lines[1]["sidecar"].as_str().unwrap());
    assert!(sidecar.exists(), "the sidecar is written before the process exits");
    let (_, left, _) = audio::read_stereo_wav(&second_wav);
    let length = std::fs::metadata(&second_wav).unwrap().len();
    assert_eq!(44 + left.len() as u64 * 4, length, "the final header covers the whole file");
    assert!(left.len() >= 8000, "at least the second and a half of the call");
    let _ = second.join();
}
