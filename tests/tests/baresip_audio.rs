//! baresip, a real softphone, calls the gateway and plays recorded speech; the simulator's echo
//! agent says it back; baresip records what it hears. The recording's speech envelope must
//! correlate with the original (r >= 0.8) for PCMU and PCMA passthrough and for the PCM path.

use std::process::Command;
use std::time::Duration;

use switchboard_e2e::audio;
use switchboard_e2e::baresip::{Phone, heard};
use switchboard_e2e::procs::{Gateway, Sim, run_bounded};
use switchboard_e2e::{Ports, tools};

/// One call from baresip offering only `codec`; the gateway must pick `gateway_codec` (as logged).
fn echo_call(slot: u16, test: &str, codec: &str, extra_toml: &str, model_format: &str) {
    echo_call_with(slot, test, codec, extra_toml, model_format, None);
}

fn echo_call_with(
    slot: u16,
    test: &str,
    codec: &str,
    extra_toml: &str,
    model_format: &str,
    gateway_codec: Option<&str>,
) {
    let ports = Ports::for_slot(slot);
    let dir = tools::scratch_dir(test);
    let speech = audio::make_speech(&dir);
    // Speech, then silence long enough for the echo to come back before baresip hangs up.
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let gateway = Gateway::start(ports, &sim.url(), extra_toml, &dir);
    let phone = Phone { codecs: &["g722", "opus"], ..Phone::alice(ports, &source) };
    let conf = phone.folder(&dir);

    let out = run_bounded(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", &format!("audio_codecs={codec}"), "-t", "16"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{}", ports.sip)),
        Duration::from_secs(40),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (rate, samples) = heard(&dir, phone.name).unwrap_or_else(|| {
        panic!("baresip recorded nothing; baresip said:\n{stdout}\ngateway log:\n{}", gateway.log())
    });

    // baresip records at the codec's rate (8 kHz G.711, 16 kHz G.722, 48 kHz Opus): compare
    // envelopes of 20 ms frames, whatever the rate.
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let heard_env = audio::envelope(&samples, (rate / 50) as usize);
    let original_env = audio::envelope(&original, (original_rate / 50) as usize);
    let (lag, r) = audio::best_lag_correlation(&original_env, &heard_env, 600);
    eprintln!("{test}: envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "the echo heard by baresip correlates only {r:.3} with the original speech");

    let sessions = sim.sessions();
    assert_eq!(sessions.as_array().map(Vec::len), Some(1), "one Realtime session per call");
    let update = sessions[0]["events"]
        .as_array()
        .and_then(|events| events.iter().find(|e| e["direction"] == "client" && e["event"]["type"] == "session.update"))
        .expect("session.update");
    let audio = &update["event"]["session"]["audio"];
    assert_eq!(audio["input"]["format"]["type"], model_format);
    assert_eq!(audio["output"]["format"]["type"], model_format);
    if let Some(expected) = gateway_codec {
        assert!(gateway.log().contains(&format!("codec={expected}")), "gateway did not pick {expected}");
    }
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_pcmu_passthrough_echo_correlates() {
    echo_call(8, "baresip_pcmu_passthrough_echo_correlates", "PCMU", "", "audio/pcmu");
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_pcma_passthrough_echo_correlates() {
    echo_call(9, "baresip_pcma_passthrough_echo_correlates", "PCMA", "", "audio/pcma");
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_pcm24k_transcoding_echo_correlates() {
    echo_call(
        10,
        "baresip_pcm24k_transcoding_echo_correlates",
        "PCMU",
        "[agents.default]\naudio_format = \"pcm\"\n",
        "audio/pcm",
    );
}

const WIDEBAND_AGENT: &str = "[agents.default]\ncodecs = [\"opus\", \"G722\", \"PCMU\"]\n";

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_opus_echo_correlates() {
    echo_call_with(16, "baresip_opus_echo_correlates", "opus/48000/2", WIDEBAND_AGENT, "audio/pcm", Some("Opus"));
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn baresip_g722_echo_correlates() {
    echo_call_with(17, "baresip_g722_echo_correlates", "G722/16000/1", WIDEBAND_AGENT, "audio/pcm", Some("G722"));
}
