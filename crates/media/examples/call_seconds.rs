//! Runs one call's media work for N call-seconds, for counting instructions with callgrind:
//! a figure that CPU contention on a shared machine cannot blur (docs/benchmarks.md).
//!
//! ```sh
//! cargo build --release -p switchboard-media --example call_seconds
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p target/release/examples/call_seconds passthrough 10
//! ```
//!
//! Per 20 ms, both directions, as the gateway does them:
//! - inbound: parse the caller's RTP packet, jitter buffer push + pop, convert to the model's
//!   format, base64 and the `input_audio_buffer.append` JSON;
//! - outbound: base64-decode the model's delta, frame (and encode) it, pacer enqueue + poll,
//!   write the RTP packet.
//!
//! Pipelines: `passthrough` (PCMU both ways, the model speaks G.711) and `opus` (Opus at 48 kHz
//! RTP clock, decode -> 24 kHz PCM16 for the model, and 24 kHz PCM16 -> Opus encode back).
//! Instructions per call-second are the difference between two runs (e.g. 60 and 10 seconds)
//! divided by the difference in seconds, so setup (codec state, tables) cancels out.

use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio};
use switchboard_media::signal::sine;
use switchboard_media::{
    Codec, CodecCoding, JitterBuffer, JitterConfig, Pacer, PacerConfig, RtpHeader, parse_rtp, write_rtp,
};

const PTIME: Duration = Duration::from_millis(20);
const FRAMES_PER_SECOND: u32 = 50;

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let pipeline = args.next().unwrap_or_else(|| "passthrough".into());
    let seconds: u32 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10);
    let (codec, model, payload_type) = match pipeline.as_str() {
        "passthrough" => (Codec::Pcmu, ModelAudio::G711Passthrough, 0u8),
        "opus" => (Codec::Opus, ModelAudio::Pcm24k, 111u8),
        other => {
            eprintln!("unknown pipeline `{other}`: passthrough or opus");
            std::process::exit(2);
        }
    };

    // The caller's side: one second of tone, encoded and packetised once (the far end's work).
    let caller_packets: Vec<Vec<u8>> = {
        let mut far_end = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
        let mut frames = Vec::new();
        far_end.push(&pcm_bytes(&sine(440.0, 24000, 1000, 8000)), &mut frames);
        frames
            .iter()
            .enumerate()
            .map(|(n, payload)| {
                let header =
                    RtpHeader { payload_type, marker: false, sequence: n as u16, timestamp: n as u32 * 960, ssrc: 7 };
                let mut packet = Vec::new();
                write_rtp(&mut packet, &header, payload);
                packet
            })
            .collect()
    };
    // The model's side: 20 ms of audio in its format, base64 as in `response.output_audio.delta`.
    let model_delta = match model {
        ModelAudio::Pcm24k => BASE64.encode(pcm_bytes(&sine(300.0, 24000, 20, 8000))),
        _ => {
            let mut ulaw = Vec::new();
            Codec::Pcmu.encode(&sine(300.0, 8000, 20, 8000), &mut ulaw);
            BASE64.encode(ulaw)
        }
    };

    let start = Instant::now();
    let mut jitter = JitterBuffer::new(JitterConfig {
        clock_rate: codec.clock_rate(),
        min_wait: Duration::from_millis(40),
        max_wait: Duration::from_millis(120),
    });
    let mut inbound = InboundAudio::new(codec, model);
    let mut outbound = OutboundAudio::new(codec, model, PTIME);
    let pacer_config = PacerConfig {
        payload_type,
        ssrc: 1,
        clock_rate: codec.clock_rate(),
        ptime: PTIME,
        silence: codec.silence_frame(20),
    };
    let mut pacer: Pacer<u32> = Pacer::new(pacer_config, start, 0, 0);
    let mut model_bytes = Vec::with_capacity(2048);
    let mut frames = Vec::new();
    let mut send_buf = Vec::with_capacity(512);
    let mut checksum = 0usize;

    for n in 0..seconds * FRAMES_PER_SECOND {
        // Virtual time: the pipeline is measured, not the sleeping.
        let now = start + PTIME * n;
        let received = &caller_packets[(n % FRAMES_PER_SECOND) as usize];
        let Ok((mut header, payload)) = parse_rtp(black_box(received)) else { continue };
        // Continuous numbering across the looped second, as a real stream has.
        header.sequence = n as u16;
        header.timestamp = n.wrapping_mul(codec.clock_rate() / FRAMES_PER_SECOND);
        jitter.push(now, header, payload);
        while let Some(frame) = jitter.pop(now) {
            model_bytes.clear();
            inbound.convert_with_loss(frame.lost_before, &frame.payload, &mut model_bytes);
            let append = serde_json::json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(&model_bytes)});
            checksum += serde_json::to_string(&append).map(|s| s.len()).unwrap_or(0);
        }

        let audio = BASE64.decode(black_box(&model_delta)).unwrap_or_default();
        frames.clear();
        outbound.push(&audio, &mut frames);
        for frame in frames.drain(..) {
            pacer.enqueue(n, frame);
        }
        while let Some(paced) = pacer.poll(now) {
            send_buf.clear();
            write_rtp(&mut send_buf, &paced.header, &paced.payload);
            checksum += black_box(&send_buf).len();
        }
    }
    println!("{pipeline}: {seconds} call-seconds, {checksum} bytes handled");
}
