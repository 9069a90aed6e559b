//! What recording costs per call, per 20 ms (docs/benchmarks.md, "Recording cost"): the core's
//! tap decoding (two directions, on the call's task and the media clock) and the writer thread's
//! work for the two chunks (laying them on the call clock, batched disk writes). ns/iter
//! divided by 20 ms is the share of a core one call takes for it.

#![allow(clippy::expect_used)] // a bench with a broken precondition must stop

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use switchboard::call::core::tap_decoder::TapDecoder;
use switchboard::recording::track::{Channel, StereoTrack, TapResampler};
use switchboard::recording::wav::WavWriter;
use switchboard::recording::worker::{Chunk, Job, JobQueue};
use switchboard_media::framing::{InboundAudio, ModelAudio};
use switchboard_media::{Codec, CodecCoding};

fn pcmu_frame() -> Vec<u8> {
    let tone: Vec<i16> = (0..160).map(|i| ((i as f64 * 0.785).sin() * 8000.0) as i16).collect();
    let mut payload = Vec::new();
    Codec::Pcmu.encode(&tone, &mut payload);
    payload
}

fn recording(c: &mut Criterion) {
    let payload = pcmu_frame();

    // The core, per direction: decoding a frame to an 8 kHz tap.
    c.bench_function("tap_decode_pcmu_20ms", |b| {
        let mut decoder = TapDecoder::new(Codec::Pcmu);
        b.iter(|| black_box(decoder.decode(0, black_box(&payload))))
    });
    // What the taps cost before: G.711 through the model pipeline's 8 -> 24 kHz filter.
    c.bench_function("tap_decode_pcmu_filtered_20ms", |b| {
        let mut decoder = InboundAudio::new(Codec::Pcmu, ModelAudio::Pcm24k);
        b.iter(|| {
            let mut pcm = Vec::new();
            decoder.convert(black_box(&payload), &mut pcm);
            black_box(pcm)
        })
    });

    // The call's task: handing one chunk to the writer (a lock and a push), and the writer
    // taking it.
    c.bench_function("recorder_queue_push_take_20ms", |b| {
        let queue = JobQueue::new(1024);
        let mut taken = Vec::new();
        b.iter(|| {
            let chunk = Chunk { channel: Channel::Left, at: Duration::ZERO, pcm: vec![0; 160] };
            queue.push(Job::Audio { key: 1, chunks: vec![chunk] });
            queue.take(Duration::ZERO, &mut taken);
            taken.clear();
        })
    });

    // The writer thread, for both channels of 20 ms: the stereo track (8 kHz taps, no resampling),
    // and every 200 ms a write of the batch to the file (page cache).
    c.bench_function("recorder_write_both_channels_20ms", |b| {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut wav = WavWriter::create(&dir.path().join("bench.wav"), 8000).expect("wav");
        let mut track = StereoTrack::new(8000);
        let mut resamplers = [TapResampler::new(8000, 8000), TapResampler::new(8000, 8000)];
        let tap: Vec<i16> = (0..160).map(|i| (i * 13) as i16).collect();
        let (mut scratch, mut frames) = (Vec::new(), Vec::new());
        let mut slot = 0u64;
        b.iter(|| {
            let at = Duration::from_millis(slot * 20);
            for (channel, resampler) in [Channel::Left, Channel::Right].into_iter().zip(resamplers.iter_mut()) {
                scratch.clear();
                resampler.process(&tap, &mut scratch);
                track.push(channel, at, &scratch);
            }
            if track.pending_frames() >= 1600 {
                frames.clear();
                track.drain_ready(&mut frames);
                wav.append(&frames).expect("write");
            }
            slot += 1;
            if slot.is_multiple_of(50) {
                wav.update_header().expect("header");
            }
        })
    });
}

/// One call's whole recording path for `slots` 20 ms slots, outside criterion: what callgrind
/// counts (`RECORDING_SLOTS=N`; the difference between two N is the per-slot instruction count,
/// stable on a busy machine where wall-clock timings are not).
fn slots(slots: u64) {
    let payload = pcmu_frame();
    let mut decoders = [TapDecoder::new(Codec::Pcmu), TapDecoder::new(Codec::Pcmu)];
    let queue = JobQueue::new(1024);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut wav = WavWriter::create(&dir.path().join("callgrind.wav"), 8000).expect("wav");
    let mut track = StereoTrack::new(8000);
    let mut resamplers = [TapResampler::new(8000, 8000), TapResampler::new(8000, 8000)];
    let (mut taken, mut scratch, mut frames) = (Vec::new(), Vec::new(), Vec::new());
    for slot in 0..slots {
        let at = Duration::from_millis(slot * 20);
        // The core (a tap per direction) and the call's task (to the queue).
        for (channel, decoder) in [Channel::Left, Channel::Right].into_iter().zip(decoders.iter_mut()) {
            let pcm = decoder.decode(0, black_box(&payload));
            queue.push(Job::Audio { key: 1, chunks: vec![Chunk { channel, at, pcm }] });
        }
        // The writer thread.
        queue.take(Duration::ZERO, &mut taken);
        for job in taken.drain(..) {
            if let Job::Audio { chunks, .. } = job {
                for Chunk { channel, at, pcm } in chunks {
                    scratch.clear();
                    resamplers[channel as usize].process(&pcm, &mut scratch);
                    track.push(channel, at, &scratch);
                }
            }
        }
        if track.pending_frames() >= 1600 {
            frames.clear();
            track.drain_ready(&mut frames);
            wav.append(&frames).expect("write");
        }
        if slot % 50 == 49 {
            wav.update_header().expect("header");
        }
    }
    black_box(wav.frames());
}

criterion_group!(benches, recording);

fn main() {
    if let Some(n) = std::env::var("RECORDING_SLOTS").ok().and_then(|n| n.parse().ok()) {
        slots(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
