//! SRTP cost per packet (issue 11): protect and unprotect of one 20 ms PCMU packet (12-byte
//! header + 160 bytes), per suite, and SRTCP for a sender report. ns/iter divided by 20 ms is the
//! share of a core one direction of one call takes for it.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchboard_media::rtp::{RtpHeader, write_rtp};
use switchboard_media::srtp::SrtpContext;
use switchboard_sdp::{MasterKey, SrtpSuite};

fn packet(sequence: u16) -> Vec<u8> {
    let header = RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc: 7 };
    let mut packet = Vec::with_capacity(182);
    write_rtp(&mut packet, &header, &[0xD5; 160]);
    packet
}

fn srtp(c: &mut Criterion) {
    let key = MasterKey::new([0x11; 16], [0x22; 14]);
    for (suite, name) in [(SrtpSuite::AesCm128HmacSha1_80, "80"), (SrtpSuite::AesCm128HmacSha1_32, "32")] {
        c.bench_function(&format!("srtp_protect_pcmu_20ms_sha1_{name}"), |b| {
            let mut sender = SrtpContext::new(suite, &key);
            let mut sequence = 0u16;
            b.iter(|| {
                sequence = sequence.wrapping_add(1);
                black_box(sender.protect(black_box(&packet(sequence))))
            })
        });
        c.bench_function(&format!("srtp_unprotect_pcmu_20ms_sha1_{name}"), |b| {
            // A second's worth of packets, protected once; each iteration checks the next one
            // (the receiver is rebuilt when they run out, outside the measured closure's work
            // only once every 50_000 iterations).
            let mut sender = SrtpContext::new(suite, &key);
            let protected: Vec<Vec<u8>> =
                (0..50_000u32).filter_map(|s| sender.protect(&packet(s as u16)).ok()).collect();
            let mut receiver = SrtpContext::new(suite, &key);
            let mut next = 0usize;
            let mut buf = [0u8; 256];
            b.iter(|| {
                if next == protected.len() {
                    receiver = SrtpContext::new(suite, &key);
                    next = 0;
                }
                let packet = &protected[next];
                next += 1;
                let buf = &mut buf[..packet.len()];
                buf.copy_from_slice(packet);
                black_box(receiver.unprotect(buf))
            })
        });
    }
    c.bench_function("srtp_rtp_packet_copy_baseline", |b| {
        let mut sequence = 0u16;
        b.iter(|| {
            sequence = sequence.wrapping_add(1);
            black_box(packet(sequence))
        })
    });
    c.bench_function("srtcp_protect_sender_report", |b| {
        let mut sender = SrtpContext::new(SrtpSuite::AesCm128HmacSha1_80, &key);
        let report = [
            0x81u8, 200, 0, 12, 0, 0, 0, 7, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
            22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
        ];
        b.iter(|| black_box(sender.protect_rtcp(black_box(&report))))
    });
}

criterion_group!(benches, srtp);
criterion_main!(benches);
