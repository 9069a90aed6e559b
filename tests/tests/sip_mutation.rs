//! 20,000 mutated SIP messages against the release gateway, over UDP and TCP, inside a network
//! namespace with only loopback (a mutated SDP or Via address cannot make it send anywhere else).
//!
//! The mutations (tests/src/mutate.rs) aim at SIP's structure: byte flips, truncations, duplicated
//! and huge headers, thousands of headers, lying Content-Length, NULs, invalid and multi-byte
//! UTF-8 in the start line, mangled line ends; 1 to 3 per message. They are seeded: the seed is
//! printed, and SWITCHBOARD_MUTATION_SEED=<seed> replays the same messages.
//!
//! Afterwards the gateway must:
//! - still be running and answer OPTIONS over UDP and TCP, with no panic in its log;
//! - end by itself every call the mutated INVITEs opened (`switchboard_calls_active` back to 0
//!   within a bounded wait: nobody ACKs those calls, RFC 3261 §13.3.1.4, and no RTP arrives);
//! - keep its memory bounded (VmRSS after the run, calls ended, within MAX_RSS_GROWTH_KIB of before);
//! - carry a real call from baresip (speech echoed back, envelope correlation >= 0.8).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchboard_e2e::mutate::{self, Kind, Rng};
use switchboard_e2e::procs::{Gateway, Sim, http_get, rss_kib};
use switchboard_e2e::sip_raw::{self, status_of};
use switchboard_e2e::{Ports, netns, real_call, tools};

const SLOT: u16 = 55;
const UDP_MESSAGES: usize = 16_000;
const UDP_SENDERS: usize = 4;
const TCP_MESSAGES: usize = 4_000;
/// A connection carries up to this many messages (fewer when the gateway closes it first).
const TCP_MESSAGES_PER_CONNECTION: usize = 20;
/// The largest UDP payload over IPv4; longer mutated messages are cut there (a truncation too).
const MAX_DATAGRAM: usize = 65_507;
const TCP_SENDERS: usize = 8;
/// UDP pacing: one datagram per sender every this long (about 500 datagrams/s in all), so the
/// gateway's socket buffer is not simply overrun and most messages are really parsed.
const UDP_GAP: Duration = Duration::from_millis(8);
/// The whole flood stops here even if not every message went out (the count sent is printed).
const FLOOD_DEADLINE: Duration = Duration::from_secs(75);
/// Half-open calls: no ACK ends them after 64*T1 (T1 = 100 ms here), no RTP after
/// rtp_timeout_secs (5 here); the Realtime connect is bounded by connect_timeout_ms (3 s).
const CALLS_END_WITHIN: Duration = Duration::from_secs(30);
/// Memory may grow by at most this much over the run (allocator caches, a few hundred closed
/// calls' worth of logs); an unbounded queue or table fed by the flood would exceed it.
const MAX_RSS_GROWTH_KIB: u64 = 64 * 1024;
/// At most this many concurrent calls (the rest get 503): keeps the run's cost bounded.
const MAX_CALLS: u32 = 20;

/// The well-formed messages the mutations start from: requests of every method the gateway
/// handles, in and out of dialog, with and without a body, and a response.
fn base_messages(ports: Ports, via: &str, i: usize) -> Vec<String> {
    let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
               m=audio 29998 RTP/AVP 0 8 9 111 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\n\
               a=rtpmap:9 G722/8000\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:101 telephone-event/8000\r\n\
               a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n";
    let sip = ports.sip;
    let request = |method: &str, to_tag: &str, extra: &str, body: &str| {
        format!(
            "{method} sip:15550001000@127.0.0.1:{sip} SIP/2.0\r\n\
             Via: SIP/2.0/{via};branch=z9hG4bK-mut-{i}-{method};rport\r\n\
             Max-Forwards: 70\r\n\
             From: \"Mutant {i}\" <sip:mutant@127.0.0.1>;tag=from-{i}\r\n\
             To: <sip:15550001000@127.0.0.1:{sip}>{to_tag}\r\n\
             Call-ID: mutation-{i}@127.0.0.1\r\n\
             CSeq: {} {method}\r\n\
             Contact: <sip:mutant@127.0.0.1>\r\n\
             User-Agent: mutation-test\r\n\
             {extra}Content-Length: {}\r\n\r\n{body}",
            1 + i % 7,
            body.len()
        )
    };
    vec![
        request("INVITE", "", "Content-Type: application/sdp\r\nAllow: INVITE, ACK, BYE, CANCEL\r\n", sdp),
        request("INVITE", "", "", ""),
        request("OPTIONS", "", "Accept: application/sdp\r\n", ""),
        request("REGISTER", "", "Expires: 60\r\n", ""),
        request("BYE", ";tag=to-x", "", ""),
        request("CANCEL", "", "", ""),
        request("ACK", ";tag=to-x", "", ""),
        request("INFO", ";tag=to-x", "Content-Type: application/dtmf-relay\r\n", "Signal=5\r\nDuration=160\r\n"),
        request("INVITE", ";tag=to-x", "Content-Type: application/sdp\r\n", sdp),
        format!(
            "SIP/2.0 200 OK\r\nVia: SIP/2.0/{via};branch=z9hG4bK-mut-{i}-resp\r\n\
             From: <sip:mutant@127.0.0.1>;tag=from-{i}\r\nTo: <sip:x@127.0.0.1>;tag=t\r\n\
             Call-ID: mutation-resp-{i}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        ),
    ]
}

/// Message `i` of the run: a base message picked and mutated by a generator seeded from the run's
/// seed and `i`, so any single message can be rebuilt from the seed.
fn mutated_message(seed: u64, i: usize, ports: Ports, via: &str) -> (Vec<u8>, Vec<Kind>) {
    let mut rng = Rng::new(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let bases = base_messages(ports, via, i);
    let base = rng.pick(&bases).clone();
    mutate::mutate(base.as_bytes(), &mut rng)
}

#[derive(Default)]
struct Tally {
    sent_udp: AtomicU64,
    sent_tcp: AtomicU64,
    tcp_closed_by_gateway: AtomicU64,
    answers: Mutex<BTreeMap<u16, u64>>,
    kinds: Mutex<BTreeMap<Kind, u64>>,
}

impl Tally {
    fn answered(&self, text: &str) {
        // A TCP read may hold several responses; count each status line.
        let mut answers = self.answers.lock().expect("tally");
        for line in text.split("\r\n").filter(|l| l.starts_with("SIP/2.0 ")) {
            if let Some(code) = status_of(line) {
                *answers.entry(code).or_default() += 1;
            }
        }
    }

    fn mutated(&self, kinds: &[Kind]) {
        let mut tally = self.kinds.lock().expect("tally");
        for kind in kinds {
            *tally.entry(*kind).or_default() += 1;
        }
    }
}

fn udp_flood(seed: u64, ports: Ports, target: SocketAddr, tally: &Arc<Tally>, deadline: Instant) {
    std::thread::scope(|scope| {
        for sender in 0..UDP_SENDERS {
            let tally = Arc::clone(tally);
            scope.spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("bind UDP sender");
                let local = socket.local_addr().expect("local addr");
                let receiver = socket.try_clone().expect("clone socket");
                let done = Arc::new(AtomicBool::new(false));
                let reader = {
                    let (done, tally) = (Arc::clone(&done), Arc::clone(&tally));
                    std::thread::spawn(move || {
                        while !done.load(Ordering::Relaxed) {
                            if let Some(answer) = sip_raw::collect_one(&receiver, Duration::from_millis(100)) {
                                tally.answered(&answer);
                            }
                        }
                    })
                };
                let via = format!("UDP {local}");
                for i in (sender..UDP_MESSAGES).step_by(UDP_SENDERS) {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let (mut message, kinds) = mutated_message(seed, i, ports, &via);
                    message.truncate(MAX_DATAGRAM);
                    tally.mutated(&kinds);
                    if socket.send_to(&message, target).is_ok() {
                        tally.sent_udp.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(UDP_GAP);
                }
                std::thread::sleep(Duration::from_millis(500)); // the last answers
                done.store(true, Ordering::Relaxed);
                reader.join().expect("UDP reader");
            });
        }
    });
}

fn tcp_flood(seed: u64, ports: Ports, target: SocketAddr, tally: &Arc<Tally>, deadline: Instant) {
    std::thread::scope(|scope| {
        for sender in 0..TCP_SENDERS {
            let tally = Arc::clone(tally);
            scope.spawn(move || {
                // Message numbers after the UDP ones: every message of the run is distinct.
                let mut numbers = (UDP_MESSAGES + sender..UDP_MESSAGES + TCP_MESSAGES).step_by(TCP_SENDERS).peekable();
                let mut retried = None;
                while numbers.peek().is_some() && Instant::now() < deadline {
                    let Ok(mut stream) = TcpStream::connect_timeout(&target, Duration::from_secs(2)) else {
                        std::thread::sleep(Duration::from_millis(50));
                        continue;
                    };
                    let via = format!("TCP {}", stream.local_addr().expect("local addr"));
                    stream.set_write_timeout(Some(Duration::from_secs(2))).expect("write timeout");
                    stream.set_read_timeout(Some(Duration::from_millis(500))).expect("read timeout");
                    let mut closed = false;
                    for _ in 0..TCP_MESSAGES_PER_CONNECTION {
                        let Some(&i) = numbers.peek() else { break };
                        let (message, kinds) = mutated_message(seed, i, ports, &via);
                        if stream.write_all(&message).is_err() {
                            // The gateway closed this connection (a framing error or an oversized
                            // message before it). The message goes on the next connection, once.
                            closed = true;
                            if retried == Some(i) {
                                numbers.next();
                            }
                            retried = Some(i);
                            break;
                        }
                        tally.mutated(&kinds);
                        tally.sent_tcp.fetch_add(1, Ordering::Relaxed);
                        numbers.next();
                    }
                    let _ = stream.shutdown(Shutdown::Write);
                    let mut received = Vec::new();
                    let mut buf = [0u8; 16_384];
                    let read_deadline = Instant::now() + Duration::from_secs(2);
                    while Instant::now() < read_deadline {
                        match stream.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => received.extend_from_slice(&buf[..n]),
                            Err(_) => break,
                        }
                    }
                    tally.answered(&String::from_utf8_lossy(&received));
                    if closed {
                        tally.tcp_closed_by_gateway.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
}

fn options(i: usize, via: &str, sip_port: u16) -> String {
    format!(
        "OPTIONS sip:ping@127.0.0.1:{sip_port} SIP/2.0\r\nVia: SIP/2.0/{via};branch=z9hG4bK-alive-{i};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:check@127.0.0.1>;tag=alive{i}\r\nTo: <sip:ping@127.0.0.1>\r\n\
         Call-ID: alive-{i}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
}

fn answers_options_over_udp(target: SocketAddr, i: usize) -> Option<u16> {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let via = format!("UDP {}", socket.local_addr().expect("addr"));
    socket.send_to(options(i, &via, target.port()).as_bytes(), target).expect("send OPTIONS");
    sip_raw::final_status(&sip_raw::collect(&socket, Duration::from_secs(2)))
}

fn answers_options_over_tcp(target: SocketAddr, i: usize) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(2)).ok()?;
    let via = format!("TCP {}", stream.local_addr().ok()?);
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(options(i, &via, target.port()).as_bytes()).ok()?;
    let mut buf = [0u8; 4096];
    let n = stream.read(&mut buf).ok()?;
    status_of(&String::from_utf8_lossy(&buf[..n]))
}

fn active_calls(admin: SocketAddr) -> Option<u64> {
    let (status, body) = http_get(admin, "/metrics");
    (status == 200).then_some(())?;
    body.lines()
        .find_map(|line| line.strip_prefix("switchboard_calls_active "))?
        .trim()
        .parse::<f64>()
        .ok()
        .map(|v| v as u64)
}

#[test]
#[cfg_attr(
    not(all(has_unshare, has_ip, has_baresip, has_espeak_ng, has_sox)),
    ignore = "needs unshare, ip, baresip, espeak-ng and sox (scripts/install-deps.sh)"
)]
fn twenty_thousand_mutated_messages_leave_the_gateway_answering_and_calling() {
    let test = "twenty_thousand_mutated_messages_leave_the_gateway_answering_and_calling";
    let seed = std::env::var("SWITCHBOARD_MUTATION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!("{test}: seed {seed} (replay: SWITCHBOARD_MUTATION_SEED={seed})");
    // The run inside the namespace gets the seed through its environment: the same messages.
    let seed_text = seed.to_string();
    let env = [("SWITCHBOARD_MUTATION_SEED", seed_text.as_str())];
    if !netns::enter_loopback_namespace_with_env(test, Duration::from_secs(300), &env) {
        return;
    }

    let ports = Ports::for_slot(SLOT);
    let dir = tools::scratch_dir("sip_mutation");
    let sim = Sim::start(ports, &["--behaviour", "echo"], &dir);
    let mut gateway = Gateway::start_with_env(
        ports,
        &sim.url(),
        &format!("[calls]\nmax_concurrent = {MAX_CALLS}\n"),
        &dir,
        &[("SWITCHBOARD__MEDIA__RTP_TIMEOUT_SECS", "5")],
    );
    let target = gateway.sip_addr();
    let admin: SocketAddr = ([127, 0, 0, 1], ports.admin).into();
    let pid = gateway.guard.pid();
    let rss_before = rss_kib(pid).expect("gateway VmRSS");

    let started = Instant::now();
    let deadline = started + FLOOD_DEADLINE;
    let tally = Arc::new(Tally::default());
    std::thread::scope(|scope| {
        scope.spawn(|| udp_flood(seed, ports, target, &tally, deadline));
        scope.spawn(|| tcp_flood(seed, ports, target, &tally, deadline));
    });
    let flood_time = started.elapsed();
    let sent_udp = tally.sent_udp.load(Ordering::Relaxed);
    let sent_tcp = tally.sent_tcp.load(Ordering::Relaxed);
    let rss_after_flood = rss_kib(pid).unwrap_or(0);
    eprintln!(
        "sent {sent_udp} UDP + {sent_tcp} TCP mutated messages in {:.1} s; {} TCP connections closed by the gateway before all their messages were written\n\
         answers by status: {:?}\nmutations by kind: {:?}",
        flood_time.as_secs_f64(),
        tally.tcp_closed_by_gateway.load(Ordering::Relaxed),
        tally.answers.lock().expect("tally"),
        tally.kinds.lock().expect("tally"),
    );

    let planned = (UDP_MESSAGES + TCP_MESSAGES) as u64;
    assert!(
        (sent_udp + sent_tcp) * 100 >= planned * 95,
        "only {} of {planned} messages went out before the flood deadline ({FLOOD_DEADLINE:?})",
        sent_udp + sent_tcp
    );

    // 1. Alive: the process runs, OPTIONS is answered on both transports, nothing panicked.
    assert!(gateway.guard.child.try_wait().expect("try_wait").is_none(), "the gateway exited; log:\n{}", gateway.log());
    assert_eq!(answers_options_over_udp(target, 1), Some(200), "OPTIONS over UDP after the flood");
    assert_eq!(answers_options_over_tcp(target, 2), Some(200), "OPTIONS over TCP after the flood");
    let (ready, _) = http_get(admin, "/readyz");
    assert_eq!(ready, 200, "/readyz after the flood");

    // 2. Every half-open call ends by itself.
    let wait_started = Instant::now();
    let mut active = active_calls(admin);
    while active != Some(0) && wait_started.elapsed() < CALLS_END_WITHIN {
        std::thread::sleep(Duration::from_millis(250));
        active = active_calls(admin);
    }
    eprintln!("active calls {active:?} {:.1} s after the flood", wait_started.elapsed().as_secs_f64());
    let metrics = gateway.metrics();
    let calls: Vec<&str> = metrics.lines().filter(|l| l.starts_with("switchboard_calls_total")).collect();
    eprintln!("calls by outcome:\n{}", calls.join("\n"));
    assert_eq!(active, Some(0), "calls still active {CALLS_END_WITHIN:?} after the flood");

    // 3. Memory bounded.
    let rss_after = rss_kib(pid).expect("gateway VmRSS");
    eprintln!(
        "VmRSS: {rss_before} KiB before, {rss_after_flood} KiB right after the flood, {rss_after} KiB with the calls ended"
    );
    assert!(
        rss_after <= rss_before + MAX_RSS_GROWTH_KIB,
        "VmRSS grew from {rss_before} KiB to {rss_after} KiB (bound: +{MAX_RSS_GROWTH_KIB} KiB)"
    );

    // 4. A real call still works, end to end.
    let r = real_call::baresip_pcmu_echo_call(ports, &gateway, &dir);
    eprintln!("baresip call after the flood: echo correlation r = {r:.3}");
    let log = std::fs::read(&gateway.log_path).expect("read gateway log");
    let log_text = String::from_utf8_lossy(&log);
    assert!(!log_text.contains("panicked"), "the gateway log shows a panic:\n{log_text}");
    assert!(gateway.guard.child.try_wait().expect("try_wait").is_none(), "the gateway exited");
    let _ = gateway.guard.terminate(Duration::from_secs(10));

    // 5. Values from the network reach the log escaped: no raw control bytes (an ANSI escape or a
    //    forged line), whatever the mutated headers held.
    let raw_lines: Vec<String> = log
        .split(|&b| b == b'\n')
        .filter(|line| line.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f))
        .take(5)
        .map(|line| String::from_utf8_lossy(line).escape_debug().to_string())
        .collect();
    assert!(
        raw_lines.is_empty(),
        "raw control bytes from the network reached the gateway log, e.g.:\n{}",
        raw_lines.join("\n")
    );
}
