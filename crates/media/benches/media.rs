//! Per-call DSP kernels: what one 20 ms frame costs in each direction.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_media::framing::{InboundAudio, ModelAudio, OutboundAudio};
use switchboard_media::signal::sine;
use switchboard_media::{Codec, Pacer, PacerConfig, Resampler, g711};

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

criterion_group!(benches, kernels);
criterion_main!(benches);
