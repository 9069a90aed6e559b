//! Per-call DSP kernels: what one 20 ms frame costs in each direction. Every `*_20ms` bench is
//! one frame of one pipeline in one direction, so ns/iter divided by 20 ms is the share of a
//! core one call takes for it.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio};
use switchboard_media::opus_codec::{OpusDecoder, OpusEncoder, OpusEncoderSettings};
use switchboard_media::signal::sine;
use switchboard_media::{Codec, CodecCoding, Pacer, PacerConfig, Resampler, g711};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

const PTIME: Duration = Duration::from_millis(20);

fn pcm_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

/// One second of 24 kHz tone cut into 20 ms packets by `codec`'s outbound pipeline, so decode
/// benches see realistic payloads with codec state that matches.
fn encoded_second(codec: Codec) -> Vec<Vec<u8>> {
    let mut outbound = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
    let mut frames = Vec::new();
    outbound.push(&pcm_bytes(&sine(440.0, 24000, 1000, 8000)), &mut frames);
    frames
}

/// Inbound and outbound pipelines per codec, per 20 ms frame.
fn pipelines(c: &mut Criterion) {
    let tone_8k = sine(1000.0, 8000, 20, 8000);
    let tone_24k_bytes = pcm_bytes(&sine(1000.0, 24000, 20, 8000));

    c.bench_function("inbound_pcmu_passthrough_append_json_20ms", |b| {
        let mut payload = Vec::new();
        Codec::Pcmu.encode(&tone_8k, &mut payload);
        let mut inbound = InboundAudio::new(Codec::Pcmu, ModelAudio::G711Passthrough);
        let mut audio = Vec::with_capacity(160);
        b.iter(|| {
            audio.clear();
            inbound.convert(black_box(&payload), &mut audio);
            let event = serde_json::json!({"type": "input_audio_buffer.append", "audio": BASE64.encode(&audio)});
            black_box(serde_json::to_string(&event).unwrap_or_default())
        })
    });

    c.bench_function("outbound_pcmu_passthrough_delta_20ms", |b| {
        let mut payload = Vec::new();
        Codec::Pcmu.encode(&tone_8k, &mut payload);
        let delta = BASE64.encode(&payload);
        let mut outbound = OutboundAudio::new(Codec::Pcmu, ModelAudio::G711Passthrough, PTIME);
        let mut frames = Vec::new();
        b.iter(|| {
            frames.clear();
            let audio = BASE64.decode(black_box(&delta)).unwrap_or_default();
            outbound.push(&audio, &mut frames);
        })
    });

    for codec in [Codec::Opus, Codec::G722] {
        let name = format!("{codec:?}").to_lowercase();
        let packets = encoded_second(codec);
        c.bench_function(&format!("inbound_{name}_to_pcm24k_20ms"), |b| {
            let mut inbound = InboundAudio::new(codec, ModelAudio::Pcm24k);
            let mut out = Vec::with_capacity(960);
            let mut index = 0;
            b.iter(|| {
                out.clear();
                inbound.convert(black_box(&packets[index % packets.len()]), &mut out);
                index += 1;
            })
        });
        c.bench_function(&format!("outbound_pcm24k_to_{name}_20ms"), |b| {
            let mut outbound = OutboundAudio::new(codec, ModelAudio::Pcm24k, PTIME);
            let mut frames = Vec::new();
            b.iter(|| {
                frames.clear();
                outbound.push(black_box(&tone_24k_bytes), &mut frames);
            })
        });
    }

    let tone_24k = sine(440.0, 24000, 20, 8000);
    // Complexity 5 is our default; 10 is libopus' own default.
    for complexity in [5, 10] {
        c.bench_function(&format!("opus_encode_complexity{complexity}_20ms"), |b| {
            let settings = OpusEncoderSettings { complexity, ..OpusEncoderSettings::default() };
            let Ok(mut encoder) = OpusEncoder::new(settings) else { return };
            let mut packet = Vec::with_capacity(256);
            b.iter(|| {
                packet.clear();
                black_box(encoder.encode(black_box(&tone_24k), &mut packet).ok())
            })
        });
    }

    c.bench_function("opus_decode_20ms", |b| {
        let packets = encoded_second(Codec::Opus);
        let Ok(mut decoder) = OpusDecoder::new() else { return };
        let mut pcm = Vec::with_capacity(480);
        let mut index = 0;
        b.iter(|| {
            pcm.clear();
            black_box(decoder.decode(black_box(&packets[index % packets.len()]), &mut pcm).ok());
            index += 1;
        })
    });
}

fn kernels(c: &mut Criterion) {
    let tone_8k = sine(1000.0, 8000, 20, 8000);
    let tone_24k = sine(1000.0, 24000, 20, 8000);

    c.bench_function("g711_ulaw_encode_20ms", |b| {
        let mut out = Vec::with_capacity(160);
        b.iter(|| {
            out.clear();
            g711::ulaw_encode_slice(black_box(&tone_8k), &mut out);
        })
    });

    c.bench_function("resample_8k_to_24k_20ms", |b| {
        let mut resampler = Resampler::new(8000, 24000).unwrap_or_else(|_| Resampler::identity());
        let mut out = Vec::with_capacity(480);
        b.iter(|| {
            out.clear();
            resampler.process(black_box(&tone_8k), &mut out);
        })
    });

    c.bench_function("resample_24k_to_8k_20ms", |b| {
        let mut resampler = Resampler::new(24000, 8000).unwrap_or_else(|_| Resampler::identity());
        let mut out = Vec::with_capacity(160);
        b.iter(|| {
            out.clear();
            resampler.process(black_box(&tone_24k), &mut out);
        })
    });

    c.bench_function("inbound_pcmu_to_pcm24k_20ms", |b| {
        let mut payload = Vec::new();
        Codec::Pcmu.encode(&tone_8k, &mut payload);
        let mut inbound = InboundAudio::new(Codec::Pcmu, ModelAudio::Pcm24k);
        let mut out = Vec::with_capacity(960);
        b.iter(|| {
            out.clear();
            inbound.convert(black_box(&payload), &mut out);
        })
    });

    c.bench_function("outbound_pcm24k_to_pcmu_20ms", |b| {
        let bytes: Vec<u8> = tone_24k.iter().flat_map(|s| s.to_le_bytes()).collect();
        let mut outbound = OutboundAudio::new(Codec::Pcmu, ModelAudio::Pcm24k, Duration::from_millis(20));
        let mut frames = Vec::new();
        b.iter(|| {
            frames.clear();
            outbound.push(black_box(&bytes), &mut frames);
        })
    });

    c.bench_function("pacer_enqueue_poll_frame", |b| {
        let start = Instant::now();
        let config = PacerConfig {
            payload_type: 0,
            ssrc: 1,
            clock_rate: 8000,
            ptime: Duration::from_millis(20),
            silence: Codec::Pcmu.silence_frame(20),
        };
        let mut pacer: Pacer<u32> = Pacer::new(config, start, 0, 0);
        let frame = vec![0u8; 160];
        let mut now = start;
        b.iter(|| {
            pacer.enqueue(1, frame.clone());
            let sent = pacer.poll(now);
            now += Duration::from_millis(20);
            black_box(sent)
        })
    });
}

criterion_group!(benches, kernels, pipelines);
criterion_main!(benches);
