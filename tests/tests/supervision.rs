//! A dead task is a dead process, and the TCP shell is bounded: the gateway against a killed SIP
//! driver, hundreds of idle TCP connections, a peer that never reads, and the file-descriptor
//! limit. Loopback only; every wait is bounded; processes are killed by PID.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_e2e::procs::{ChildGuard, Gateway, http_get};
use switchboard_e2e::{Ports, tools};

/// HTTP GET that tolerates a refused or failing connection (`None`).
fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Some((status, body))
}

fn admin(ports: Ports) -> SocketAddr {
    ([127, 0, 0, 1], ports.admin).into()
}

/// User + system CPU time of a process, from /proc/PID/stat (fields 14 and 15, in clock ticks).
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let after_name = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let per_second = run_getconf_clk_tck();
    Duration::from_millis(ticks * 1000 / per_second)
}

fn run_getconf_clk_tck() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

/// Resident memory of a process in KiB (VmRSS in /proc/PID/status).
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// The descriptor number the kernel would hand out next (the lowest one not open): with the
/// soft limit set to it, the next `accept()` fails with EMFILE.
fn lowest_free_fd(pid: u32) -> usize {
    let open: std::collections::BTreeSet<usize> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc/PID/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !open.contains(n)).unwrap_or(0)
}

fn metric(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l.as_bytes().get(series.len()) == Some(&b' '))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Waits until the peer closes the connection (EOF or reset); `false` if still open at `deadline`.
fn closed_by_peer(stream: &mut TcpStream, deadline: Instant) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else { return false };
        stream.set_read_timeout(Some(left.max(Duration::from_millis(1)))).unwrap();
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// An OPTIONS whose response repeats `vias` long Via headers (RFC 3261 §8.2.6.2): ~6 KB for 40.
fn options(local: SocketAddr, call_id: &str, vias: usize) -> String {
    let mut extra = String::new();
    for i in 0..vias {
        extra.push_str(&format!(
            "Via: SIP/2.0/TCP proxy{i}.example.invalid:5060;branch=z9hG4bK-{i}-{}\r\n",
            "x".repeat(120)
        ));
    }
    format!(
        "OPTIONS sip:switchboard@127.0.0.1 SIP/2.0\r\n\
         Via: SIP/2.0/TCP {local};branch=z9hG4bK-{call_id}\r\n\
         {extra}\
         Max-Forwards: 70\r\n\
         From: <sip:probe@{local}>;tag=p\r\n\
         To: <sip:switchboard@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn a_dead_sip_driver_fails_readiness_and_ends_the_process_non_zero() {
    let test = "dead_sip_driver";
    let ports = Ports::for_slot(34);
    let dir = tools::scratch_dir(test);
    let mut gateway = Gateway::start_with_env(ports, "", "", &dir, &[("SWITCHBOARD_TEST_HOOKS", "1")]);
    assert_eq!(http_get(admin(ports), "/healthz").0, 200);
    assert_eq!(http_get(admin(ports), "/readyz").0, 200);

    // SIGUSR1 (test hook) makes the SIP driver task panic, as a parser bug did (issue 6).
    let pid = gateway.guard.pid();
    let status = Command::new("kill").args(["-USR1", &pid.to_string()]).status().unwrap();
    assert!(status.success());

    // Readiness fails at once: every probe from now on is a 503 or no answer (process gone).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut not_ready = false;
    while Instant::now() < deadline {
        match try_http_get(admin(ports), "/readyz") {
            Some((200, _)) => std::thread::sleep(Duration::from_millis(5)),
            Some((503, body)) => {
                assert!(body.contains("SIP driver"), "readiness must say what died: {body}");
                not_ready = true;
                break;
            }
            Some((other, body)) => panic!("/readyz answered {other}: {body}"),
            None => {
                not_ready = true;
                break;
            }
        }
    }
    assert!(not_ready, "/readyz still 200 after the driver died; log:\n{}", gateway.log());

    // ... and the process exits non-zero, so its supervisor restarts it.
    let exit = gateway.guard.wait_timeout(Duration::from_secs(15));
    let code = exit.and_then(|s| s.code());
    assert_eq!(code, Some(70), "exit status {exit:?}; log:\n{}", gateway.log());
    let log = gateway.log();
    assert!(log.contains("SIP driver panicked"), "{log}");
}

#[test]
fn five_hundred_idle_tcp_connections_are_closed_after_the_idle_timeout() {
    let test = "idle_tcp_connections_closed";
    let ports = Ports::for_slot(35);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start_with_env(
        ports,
        "",
        "",
        &dir,
        &[
            ("SWITCHBOARD__SIP__TCP_IDLE_TIMEOUT_SECS", "2"),
            ("SWITCHBOARD__SIP__TCP_MAX_CONNECTIONS_PER_ADDRESS", "600"),
        ],
    );
    let mut connections: Vec<TcpStream> = (0..500)
        .map(|_| TcpStream::connect_timeout(&gateway.sip_addr(), Duration::from_secs(2)).expect("connect"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    // Every connection was taken (some may already be idle-closed on a loaded machine).
    let accepted = |m: &str| {
        metric(m, "switchboard_sip_tcp_connections") + metric(m, r#"switchboard_sip_tcp_closed_total{reason="idle"}"#)
    };
    while accepted(&gateway.metrics()) < 500 {
        assert!(Instant::now() < deadline, "not all 500 connections accepted:\n{}", gateway.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Idle timeout 2 s: all are closed by the gateway well within 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let still_open = connections.iter_mut().map(|c| closed_by_peer(c, deadline)).filter(|closed| !closed).count();
    assert_eq!(still_open, 0, "{still_open} of 500 idle connections still open; log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    assert_eq!(metric(&metrics, "switchboard_sip_tcp_connections"), 0, "{metrics}");
    assert_eq!(metric(&metrics, r#"switchboard_sip_tcp_closed_total{reason="idle"}"#), 500, "{metrics}");
    // The gateway still takes new connections.
    let mut fresh = TcpStream::connect(gateway.sip_addr()).unwrap();
    let local = fresh.local_addr().unwrap();
    fresh.write_all(options(local, "after-idle", 0).as_bytes()).unwrap();
    fresh.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = [0u8; 64];
    let n = fresh.read(&mut answer).unwrap();
    assert!(answer[..n].starts_with(b"SIP/2.0 200"), "{}", String::from_utf8_lossy(&answer[..n]));
}

#[test]
fn a_tcp_peer_that_never_reads_is_disconnected_with_memory_bounded() {
    let test = "non_reading_tcp_peer";
    let ports = Ports::for_slot(36);
    let dir = tools::scratch_dir(test);
    let gateway = Gateway::start(ports, "", "", &dir);
    let pid = gateway.guard.pid();
    let rss_before = rss_kib(pid);
    let mut stream = TcpStream::connect(gateway.sip_addr()).unwrap();
    stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
    let local = stream.local_addr().unwrap();
    // Up to 20,000 requests of ~6 KB (120 MB of responses owed), never reading an answer.
    let started = Instant::now();
    let mut sent = 0;
    let mut disconnected = false;
    for i in 0..20_000 {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        match stream.write_all(options(local, &format!("flood-{i}"), 40).as_bytes()) {
            Ok(()) => sent += 1,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(_) => {
                disconnected = true;
                break;
            }
        }
    }
    if !disconnected {
        disconnected = closed_by_peer(&mut stream, Instant::now() + Duration::from_secs(10));
    }
    let rss_after = rss_kib(pid);
    eprintln!("sent {sent} requests; VmRSS {rss_before} KiB -> {rss_after} KiB");
    assert!(disconnected, "a peer that never reads must be disconnected (sent {sent}); log:\n{}", gateway.log());
    assert!(
        rss_after < rss_before + 30 * 1024,
        "memory grew from {rss_before} KiB to {rss_after} KiB for one slow peer"
    );
    let metrics = gateway.metrics();
    assert_eq!(metric(&metrics, r#"switchboard_sip_tcp_closed_total{reason="write_queue_full"}"#), 1, "{metrics}");
}

#[test]
fn at_the_fd_limit_admin_answers_and_the_accept_loop_does_not_spin() {
    let test = "fd_limit";
    let ports = Ports::for_slot(37);
    let dir = tools::scratch_dir(test);
    let config = format!(
        "[sip]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\ntcp_max_connections_per_address = 1000\n\
         [media]\naddress = \"127.0.0.1\"\nbind = \"127.0.0.1\"\nrtp_ports = \"{rf}-{rl}\"\n\
         [realtime]\napi_key = \"\"\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"info,switchboard=debug\"\n",
        sip = ports.sip,
        rf = ports.rtp_first,
        rl = ports.rtp_last,
        admin = ports.admin,
    );
    let config_path = dir.join("switchboard.toml");
    std::fs::write(&config_path, config).unwrap();
    let log_path = dir.join("gateway.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    // 128 descriptors: the gateway itself needs a few dozen.
    let mut guard = ChildGuard::spawn(
        "switchboard (prlimit)",
        Command::new("prlimit")
            .arg("--nofile=128:128")
            .arg("--")
            .arg(tools::gateway_binary())
            .args(["run", "--config"])
            .arg(&config_path)
            .env_remove("RUST_LOG")
            .env_remove("OPENAI_API_KEY")
            .stdout(Stdio::null())
            .stderr(log),
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    while try_http_get(admin(ports), "/readyz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "gateway not ready; log:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = guard.pid();
    let sip: SocketAddr = ([127, 0, 0, 1], ports.sip).into();

    // Phase 1: 300 connections against a limit of 128 descriptors.
    let mut connections = Vec::new();
    for _ in 0..300 {
        if let Ok(c) = TcpStream::connect_timeout(&sip, Duration::from_millis(500)) {
            connections.push(c);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let cpu_before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_spent = cpu_time(pid).saturating_sub(cpu_before);
    let health = try_http_get(admin(ports), "/healthz");
    let metrics = try_http_get(admin(ports), "/metrics").map(|r| r.1).unwrap_or_default();
    eprintln!(
        "phase 1: {} fds open, {cpu_spent:?} CPU in 2 s, {} TCP connections held",
        open_fds(pid),
        metric(&metrics, "switchboard_sip_tcp_connections")
    );
    assert!(matches!(health, Some((200, _))), "admin unreachable at the fd limit: {health:?}; log:\n{}", read_log());
    assert!(cpu_spent < Duration::from_millis(500), "accept loop spinning: {cpu_spent:?} CPU in 2 s");
    let held = metric(&metrics, "switchboard_sip_tcp_connections");
    assert!(held > 0 && held <= 96, "{held} connections held (cap: 128 - reserve of 32)");
    assert!(metric(&metrics, r#"switchboard_sip_tcp_refused_total{reason="max_connections"}"#) > 0, "{metrics}");

    // Phase 2: no descriptor left at all (soft limit lowered to the next free descriptor
    // number): accept() fails with EMFILE, and the loop must back off rather than retry at once.
    // A descriptor closed in the meantime (a refused connection, an admin request) leaves a hole
    // below the limit: lower again until accept() is seen failing.
    let mut pending = Vec::new();
    for _ in 0..10 {
        let next_free = lowest_free_fd(pid);
        let lowered = Command::new("prlimit")
            .args(["--pid", &pid.to_string(), &format!("--nofile={next_free}:128")])
            .status()
            .unwrap();
        assert!(lowered.success());
        for _ in 0..5 {
            if let Ok(c) = TcpStream::connect_timeout(&sip, Duration::from_millis(500)) {
                pending.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(200));
        if read_log().contains("TCP accept failing") {
            break;
        }
    }
    assert!(read_log().contains("TCP accept failing"), "accept() never hit EMFILE:\n{}", read_log());
    std::thread::sleep(Duration::from_millis(300));
    let cpu_before = cpu_time(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu_spent = cpu_time(pid).saturating_sub(cpu_before);
    eprintln!("phase 2: {cpu_spent:?} CPU in 2 s at EMFILE");
    let restored = Command::new("prlimit").args(["--pid", &pid.to_string(), "--nofile=128:128"]).status().unwrap();
    assert!(restored.success());
    assert!(cpu_spent < Duration::from_millis(500), "accept loop spinning at EMFILE: {cpu_spent:?} CPU in 2 s");
    // Descriptors back: admin answers again (axum pauses 1 s after its own EMFILE).
    drop(pending);
    let deadline = Instant::now() + Duration::from_secs(10);
    while try_http_get(admin(ports), "/healthz").map(|r| r.0) != Some(200) {
        assert!(Instant::now() < deadline, "admin did not recover; log:\n{}", read_log());
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(connections);
    guard.terminate(Duration::from_secs(10));
}
