//! SRTP (issue 11): baresip with its `srtp` module and `mediaenc=srtp-mand` calls the echo agent
//! over SIP over TLS with SDES-SRTP (the issue's acceptance test); the echo correlates, the capture of the media ports holds no plain RTP, and a
//! stranger spraying the gateway's RTP ports with forged packets is dropped and counted, never
//! heard. SIPp offers that cannot be answered get 488: RTP/SAVP with no usable key line, and a
//! plain offer to a gateway with `media.srtp = "required"`. An outbound call through a trunk with
//! `srtp = "required"` offers RTP/SAVP and baresip answers it encrypted.

use std::process::{Command, Stdio};
use std::time::Duration;

use switchboard_e2e::audio;
use switchboard_e2e::baresip::{Phone, heard};
use switchboard_e2e::pcap;
use switchboard_e2e::procs::{Capture, ChildGuard, Gateway, Sim, http_post, run_bounded};
use switchboard_e2e::tls::TestCerts;
use switchboard_e2e::{Ports, sipp, tools};

/// The value of a metric line (`name{labels} value`) summed over its label sets; 0 when absent.
fn metric_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|line| line.starts_with(name) && !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' ').and_then(|(_, value)| value.parse::<f64>().ok()))
        .sum()
}

/// Sends forged RTP (valid headers, PCMU silence, a 10-byte junk "tag") to every port of the
/// gateway's range from one socket for `duration`: what a stranger spraying the range sends.
fn spray(ports: Ports, duration: Duration) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind sprayer");
        let deadline = std::time::Instant::now() + duration;
        let mut sent = 0u64;
        let mut sequence = 1000u16;
        while std::time::Instant::now() < deadline {
            for port in ports.rtp_first..=ports.rtp_last {
                let mut packet = vec![0x80, 0x00];
                packet.extend_from_slice(&sequence.to_be_bytes());
                packet.extend_from_slice(&(u32::from(sequence) * 160).to_be_bytes());
                packet.extend_from_slice(&0x5757_5757u32.to_be_bytes());
                packet.extend_from_slice(&[0xFF; 160]);
                packet.extend_from_slice(&[0xAB; 10]);
                if socket.send_to(&packet, ("127.0.0.1", port)).is_ok() {
                    sent += 1;
                }
            }
            sequence = sequence.wrapping_add(1);
            std::thread::sleep(Duration::from_millis(20));
        }
        sent
    })
}

/// How many of a payload's bytes are its most common value: plain G.711 (speech, padding
/// silence) repeats values a lot; SRTP ciphertext is uniformly spread.
fn most_common_byte_share(payload: &[u8]) -> f64 {
    let mut counts = [0usize; 256];
    for &byte in payload {
        counts[usize::from(byte)] += 1;
    }
    counts.iter().copied().max().unwrap_or(0) as f64 / payload.len().max(1) as f64
}

#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox, has_tshark)),
    ignore = "needs baresip, espeak-ng, sox and tshark (scripts/install-deps.sh)"
)]
fn baresip_srtp_call_echoes_with_no_plain_rtp_and_strangers_dropped() {
    let ports = Ports::for_slot(108);
    // A short folder name: baresip cuts its recording's path at 128 bytes.
    let dir = tools::scratch_dir("srtp_baresip_echo");
    let speech = audio::make_speech(&dir);
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    // SIP over TLS on the slot's SIP port + 1 with a certificate made now; the gateway's own
    // policy is `required`: the call can only be SRTP.
    let certs = TestCerts::make(&dir);
    let tls = std::net::SocketAddr::from(([127, 0, 0, 1], ports.sip + 1));
    let mut env = certs.gateway_env(tls);
    env.push(("SWITCHBOARD__MEDIA__SRTP".to_string(), "required".to_string()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let gateway = Gateway::start_with_env(ports, &sim.url(), "", &dir, &env);
    let phone = Phone { extra: "module srtp.so\n", ..Phone::alice(ports, &source) };
    let conf = phone.folder_tls(&dir, &certs);
    // `mediaenc=srtp-mand`: baresip offers RTP/SAVP with SDES keys and nothing else.
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{}@127.0.0.1:{};transport=tls>;regint=0;mediaenc=srtp-mand\n", phone.name, phone.sip_port),
    )
    .expect("write baresip accounts");
    // Every UDP packet between the two media port ranges (RTP and RTCP, both ways).
    let filter = format!(
        "udp and portrange {}-{} and portrange {}-{}",
        ports.rtp_first,
        ports.rtp_last + 1,
        ports.peer_media,
        ports.peer_media + 99
    );
    let capture = Capture::start(&filter, &dir.join("media.pcap"), 60);
    let sprayer = spray(ports, Duration::from_secs(8));

    let out = run_bounded(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "16"])
            .arg("-e")
            .arg(format!("/dial sip:15550001000@127.0.0.1:{};transport=tls", tls.port())),
        Duration::from_secs(40),
    );
    let sprayed = sprayer.join().expect("sprayer");
    let pcap_path = capture.finish();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = gateway.log();
    assert!(
        log.contains("media_security=\"AES_CM_128_HMAC_SHA1_"),
        "the call was not answered with SRTP; baresip said:\n{stdout}\ngateway log:\n{log}"
    );
    assert!(log.contains("transport=Tls"), "the INVITE did not come over TLS:\n{log}");

    // The echo: baresip decrypted what we sent, we decrypted what it sent.
    let (rate, samples) = heard(&dir, phone.name)
        .unwrap_or_else(|| panic!("baresip recorded nothing; baresip said:\n{stdout}\ngateway log:\n{log}"));
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let heard_env = audio::envelope(&samples, (rate / 50) as usize);
    let original_env = audio::envelope(&original, (original_rate / 50) as usize);
    let (lag, r) = audio::best_lag_correlation(&original_env, &heard_env, 600);
    eprintln!("srtp echo: envelope correlation r = {r:.3} at lag {} ms", lag * 20);
    assert!(r >= 0.8, "the echo heard over SRTP correlates only {r:.3} with the original speech");

    // The capture: only SRTP. Every RTP-shaped packet carries 160 bytes of PCMU plus a 10-byte
    // tag (80-bit suite) or 4 (32-bit), and no payload looks like G.711 (which repeats values:
    // the 7 s of padding silence would be one byte repeated).
    let udp = pcap::read_udp(&pcap_path);
    let rtp: Vec<&pcap::UdpPacket> =
        udp.iter().filter(|p| p.payload.len() >= 12 && p.payload[0] >> 6 == 2 && p.payload[1] & 0x7F == 0).collect();
    let from_gateway = rtp.iter().filter(|p| p.src.port() >= ports.rtp_first && p.src.port() <= ports.rtp_last).count();
    let from_phone = rtp.iter().filter(|p| p.src.port() >= ports.peer_media).count();
    assert!(from_gateway > 100 && from_phone > 100, "media both ways ({from_gateway} from us, {from_phone} to us)");
    for packet in &rtp {
        let len = packet.payload.len();
        assert!(len == 12 + 160 + 10 || len == 12 + 160 + 4, "a {len}-byte RTP packet is not PCMU SRTP");
        let share = most_common_byte_share(&packet.payload[12..12 + 160]);
        assert!(share < 0.1, "a payload looks like plain G.711 ({share:.2} of it one byte value): {packet:?}");
    }

    // The stranger's packets: dropped as failing authentication, never learned.
    let metrics = gateway.metrics();
    let failures = metric_sum(&metrics, "switchboard_srtp_auth_failures_total");
    eprintln!("sprayed {sprayed} forged packets; {failures} failed authentication");
    assert!(sprayed > 0 && failures >= 1.0, "the forged packets were not counted:\n{metrics}");
    // Dropped before the strict-RTP latch: it never even saw them to ignore them.
    assert_eq!(metric_sum(&metrics, "switchboard_rtp_ignored_packets_total"), 0.0, "{metrics}");
    assert_eq!(metric_sum(&metrics, "switchboard_srtp_calls_total"), 1.0, "{metrics}");
    assert!(!log.contains("inline:"), "a key reached the log");
}

#[test]
#[cfg_attr(not(has_sipp), ignore = "needs sipp (scripts/install-deps.sh)")]
fn offers_we_cannot_answer_get_488_saying_why() {
    let ports = Ports::for_slot(109);
    let dir = tools::scratch_dir("srtp_488");
    let gateway = Gateway::start(ports, "", "", &dir);
    // An MKI we do not carry, a suite we do not implement, a key that is not 30 bytes.
    let crypto = "      a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\n\
                  \x20     a=crypto:2 AEAD_AES_256_GCM inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\n\
                  \x20     a=crypto:3 AES_CM_128_HMAC_SHA1_32 inline:c2hvcnQ=";
    let out = sipp::run(
        "uac_srtp_offer.xml",
        &[("PROTO", "RTP/SAVP"), ("CRYPTO", crypto), ("CODE", "488")],
        &dir,
        ports,
        "15550001000",
        0,
    );
    assert!(out.status.success(), "the bad RTP/SAVP offer did not get 488; gateway log:\n{}", gateway.log());
    let log = gateway.log();
    for reason in
        ["no usable SRTP crypto line", "tag 1: ", "tag 2: unsupported suite AEAD_AES_256_GCM", "tag 3: inline key"]
    {
        assert!(log.contains(reason), "the refusal does not say `{reason}`:\n{log}");
    }
    assert!(!log.contains("WVNfX19zZW1jdGwg"), "a key reached the log");
    drop(gateway);

    // `media.srtp = "required"`: a plain offer is refused.
    let dir = tools::scratch_dir("srtp_488_required");
    let gateway = Gateway::start_with_env(ports, "", "", &dir, &[("SWITCHBOARD__MEDIA__SRTP", "required")]);
    let out = sipp::run(
        "uac_srtp_offer.xml",
        &[("PROTO", "RTP/AVP"), ("CRYPTO", ""), ("CODE", "488")],
        &dir,
        ports,
        "15550001000",
        0,
    );
    assert!(out.status.success(), "the plain offer was not refused with 488; gateway log:\n{}", gateway.log());
    assert!(gateway.log().contains("SRTP is required"), "{}", gateway.log());
    drop(gateway);

    // `media.srtp` allows plain RTP, but the call comes from a trunk (its `sources`) that requires SRTP.
    let dir = tools::scratch_dir("srtp_488_trunk");
    let trunk = format!(
        "[trunks.carrier]\naddress = \"127.0.0.1:{}\"\nsources = [\"127.0.0.1\"]\nsrtp = \"required\"\n",
        ports.peer_sip
    );
    let gateway = Gateway::start(ports, "", &trunk, &dir);
    let out = sipp::run(
        "uac_srtp_offer.xml",
        &[("PROTO", "RTP/AVP"), ("CRYPTO", ""), ("CODE", "488")],
        &dir,
        ports,
        "15550001000",
        0,
    );
    assert!(out.status.success(), "the trunk's plain offer was not refused with 488; gateway log:\n{}", gateway.log());
    assert!(gateway.log().contains("SRTP is required"), "{}", gateway.log());
}

/// A trunk with `srtp = "required"`: our INVITE offers RTP/SAVP, baresip (srtp-mand,
/// answering by itself) answers with one of our suites, and the echo goes both ways encrypted.
#[test]
#[cfg_attr(
    not(all(has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn outbound_call_through_an_srtp_required_trunk_is_encrypted_both_ways() {
    let ports = Ports::for_slot(111);
    let dir = tools::scratch_dir("srtp_outbound");
    let speech = audio::make_speech(&dir);
    let source = dir.join("speech_then_silence.wav");
    let padded = run_bounded(
        "sox",
        Command::new("sox").arg(&speech.wav_8k).arg(&source).args(["pad", "0", "7"]),
        Duration::from_secs(30),
    );
    assert!(padded.status.success(), "sox pad failed");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let trunk = format!(
        "[trunks.peer]\naddress = \"127.0.0.1:{}\"\nring_timeout_secs = 5\ncodecs = [\"PCMU\"]\nsrtp = \"required\"\n",
        ports.peer_sip
    );
    let gateway = Gateway::start(ports, &sim.url(), &trunk, &dir);
    let phone = Phone { auto_answer: true, extra: "module srtp.so\n", ..Phone::alice(ports, &source) };
    let conf = phone.folder(&dir);
    std::fs::write(
        conf.join("accounts"),
        format!("<sip:{}@127.0.0.1:{}>;regint=0;answermode=auto;mediaenc=srtp-mand\n", phone.name, phone.sip_port),
    )
    .expect("write baresip accounts");
    let log = std::fs::File::create(dir.join("baresip.out")).expect("baresip log");
    let mut baresip = ChildGuard::spawn(
        "baresip",
        Command::new("baresip")
            .arg("-f")
            .arg(&conf)
            .args(["-u", "audio_codecs=PCMU", "-t", "18"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log),
    );
    std::thread::sleep(Duration::from_millis(800));
    let body = format!(r#"{{"to": "sip:alice@127.0.0.1:{}", "agent": "default"}}"#, ports.peer_sip);
    let (status, answer) = http_post(([127, 0, 0, 1], ports.admin).into(), "/v1/calls", &body);
    assert_eq!(status, 201, "POST /v1/calls answered {status}: {answer}\ngateway log:\n{}", gateway.log());
    if baresip.wait_timeout(Duration::from_secs(30)).is_none() {
        baresip.terminate(Duration::from_secs(3));
    }
    let said = std::fs::read_to_string(dir.join("baresip.out")).unwrap_or_default();
    let gateway_log = gateway.log();
    assert!(
        gateway_log.contains("media_security=\"AES_CM_128_HMAC_SHA1_"),
        "the outbound call was not SRTP; baresip said:\n{said}\ngateway log:\n{gateway_log}"
    );
    let (rate, samples) = heard(&dir, phone.name)
        .unwrap_or_else(|| panic!("baresip recorded nothing; baresip said:\n{said}\ngateway log:\n{gateway_log}"));
    let (original_rate, original) = audio::read_wav(&speech.wav_8k);
    let (_, r) = audio::best_lag_correlation(
        &audio::envelope(&original, (original_rate / 50) as usize),
        &audio::envelope(&samples, (rate / 50) as usize),
        600,
    );
    eprintln!("srtp outbound echo: envelope correlation r = {r:.3}");
    assert!(r >= 0.8, "the echo baresip heard over SRTP correlates only {r:.3}");
    let metrics = gateway.metrics();
    let srtp_lines: Vec<&str> = metrics.lines().filter(|l| l.contains("srtp") || l.contains("rtcp_packets")).collect();
    // Not one RTP packet of baresip's failed: keys, suite and rollover agree. (RTCP may count
    // one or two: baresip sends an RTCP APP "PINGPONG" in clear as its stream starts, before
    // its SRTCP is up, and we rightly drop it.)
    assert_eq!(
        metric_sum(&metrics, "switchboard_srtp_auth_failures_total{kind=\"rtp\"}"),
        0.0,
        "{srtp_lines:#?}\nbaresip said:\n{said}\ngateway log:\n{gateway_log}"
    );
    assert!(metric_sum(&metrics, "switchboard_srtp_auth_failures_total{kind=\"rtcp\"}") <= 2.0, "{srtp_lines:#?}");
}
