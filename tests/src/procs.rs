//! Processes the tests start: the gateway, the simulator, tshark, SIPp, baresip. Each is killed by
//! PID when its guard drops, and every wait is bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::Ports;
use crate::tools;

/// A child process killed (by its PID) when dropped.
pub struct ChildGuard {
    pub name: String,
    pub child: Child,
}

impl ChildGuard {
    pub fn spawn(name: &str, cmd: &mut Command) -> ChildGuard {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        ChildGuard { name: name.to_string(), child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `limit` for the process to exit by itself.
    pub fn wait_timeout(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Sends SIGTERM and waits up to `limit`; SIGKILL after that.
    pub fn terminate(&mut self, limit: Duration) -> Option<ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        let status = self.wait_timeout(limit);
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        status
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a command to completion with a hard time limit (the child is killed when it is exceeded).
pub fn run_bounded(name: &str, cmd: &mut Command, limit: Duration) -> Output {
    let mut guard = ChildGuard::spawn(name, cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()));
    let mut stdout = guard.child.stdout.take().expect("stdout piped");
    let mut stderr = guard.child.stderr.take().expect("stderr piped");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let status = match guard.wait_timeout(limit) {
        Some(status) => status,
        None => {
            let _ = guard.child.kill();
            let status = guard.child.wait().expect("wait after kill");
            eprintln!("{name}: killed after {limit:?}");
            status
        }
    };
    Output { status, stdout: out_reader.join().unwrap_or_default(), stderr: err_reader.join().unwrap_or_default() }
}

fn wait_for_tcp(addr: SocketAddr, limit: Duration, what: &str) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("{what} did not listen on {addr} within {limit:?}");
}

/// Minimal HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect for HTTP GET");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").expect("send GET");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read HTTP response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Minimal HTTP/1.0 POST of a JSON body; returns (status, body).
pub fn http_post(addr: SocketAddr, path: &str, json: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect for HTTP POST");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{json}",
        json.len()
    )
    .expect("send POST");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("read HTTP response");
    let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// The Realtime simulator, as a separate process.
pub struct Sim {
    pub guard: ChildGuard,
    pub addr: SocketAddr,
}

impl Sim {
    /// `args` are extra simulator flags, e.g. `["--behaviour", "echo"]`.
    pub fn start(ports: Ports, args: &[&str], log_dir: &Path) -> Sim {
        let addr: SocketAddr = ([127, 0, 0, 1], ports.sim).into();
        let log = std::fs::File::create(log_dir.join("sim.log")).expect("sim log");
        let guard = ChildGuard::spawn(
            "switchboard-sim",
            Command::new(tools::sim_binary())
                .arg("--listen")
                .arg(addr.to_string())
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log),
        );
        wait_for_tcp(addr, Duration::from_secs(10), "simulator");
        Sim { guard, addr }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/v1/realtime", self.addr)
    }

    /// Every session the simulator saw, with the client events it received and the server events it sent.
    pub fn sessions(&self) -> serde_json::Value {
        let (status, body) = http_get(self.addr, "/_sim/sessions");
        assert_eq!(status, 200, "GET /_sim/sessions: {body}");
        serde_json::from_str(&body).expect("sessions JSON")
    }

    /// A runtime fault control: `POST /_sim/control/{what}` with a JSON body (docs/simulator.md),
    /// e.g. `sim.control("drop", r#"{"mode":"reset"}"#)`. Panics unless the simulator says 200.
    pub fn control(&self, what: &str, json: &str) -> serde_json::Value {
        let (status, body) = http_post(self.addr, &format!("/_sim/control/{what}"), json);
        assert_eq!(status, 200, "POST /_sim/control/{what}: {body}");
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }
}

/// The gateway binary with a generated configuration.
pub struct Gateway {
    pub guard: ChildGuard,
    pub ports: Ports,
    pub log_path: PathBuf,
}

impl Gateway {
    /// Starts the gateway on the slot's ports. `extra_toml` is appended to the generated config
    /// (agents, overrides). An empty `realtime_url` leaves the API key unset: the built-in offline
    /// agent answers. Waits until /readyz says ready.
    pub fn start(ports: Ports, realtime_url: &str, extra_toml: &str, dir: &Path) -> Gateway {
        Self::start_with_env(ports, realtime_url, extra_toml, dir, &[])
    }

    pub fn start_with_env(
        ports: Ports,
        realtime_url: &str,
        extra_toml: &str,
        dir: &Path,
        env: &[(&str, &str)],
    ) -> Gateway {
        let realtime = if realtime_url.is_empty() {
            "api_key = \"\"".to_string()
        } else {
            format!("url = \"{realtime_url}\"\napi_key = \"test-key\"")
        };
        let config = format!(
            "[sip]\nudp = \"127.0.0.1:{sip}\"\ntcp = \"127.0.0.1:{sip}\"\nt1_ms = 100\n\
             [media]\naddress = \"127.0.0.1\"\nbind = \"127.0.0.1\"\nrtp_ports = \"{rf}-{rl}\"\nrtp_timeout_secs = 10\n\
             [realtime]\n{realtime}\nconnect_timeout_ms = 3000\n\
             [admin]\nlisten = \"127.0.0.1:{admin}\"\n[log]\nlevel = \"info,switchboard=debug\"\n{extra_toml}",
            sip = ports.sip,
            rf = ports.rtp_first,
            rl = ports.rtp_last,
            admin = ports.admin,
        );
        let config_path = dir.join("switchboard.toml");
        std::fs::write(&config_path, config).expect("write gateway config");
        let log_path = dir.join("gateway.log");
        let log = std::fs::File::create(&log_path).expect("gateway log");
        let mut cmd = Command::new(tools::gateway_binary());
        cmd.arg("run").arg("--config").arg(&config_path).env_remove("RUST_LOG").env_remove("OPENAI_API_KEY");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let guard = ChildGuard::spawn("switchboard", cmd.stdout(Stdio::null()).stderr(log));
        let gateway = Gateway { guard, ports, log_path };
        gateway.wait_ready(Duration::from_secs(15));
        gateway
    }

    fn wait_ready(&self, limit: Duration) {
        let admin: SocketAddr = ([127, 0, 0, 1], self.ports.admin).into();
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if TcpStream::connect_timeout(&admin, Duration::from_millis(200)).is_ok()
                && http_get(admin, "/readyz").0 == 200
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("gateway not ready within {limit:?}; log:\n{}", self.log());
    }

    pub fn sip_addr(&self) -> SocketAddr {
        ([127, 0, 0, 1], self.ports.sip).into()
    }

    pub fn metrics(&self) -> String {
        let (status, body) = http_get(([127, 0, 0, 1], self.ports.admin).into(), "/metrics");
        assert_eq!(status, 200);
        body
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// A tshark capture on loopback, written as classic pcap. Started synchronously: returns once
/// tshark says the capture has begun.
pub struct Capture {
    guard: ChildGuard,
    pub path: PathBuf,
}

impl Capture {
    pub fn start(filter: &str, path: &Path, max_secs: u32) -> Capture {
        let mut guard = ChildGuard::spawn(
            "tshark",
            Command::new("tshark")
                .args(["-i", "lo", "-f", filter, "-F", "pcap", "-w"])
                .arg(path)
                .args(["-a", &format!("duration:{max_secs}"), "-q"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let stderr = guard.child.stderr.take().expect("tshark stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("Capturing on") || line.contains("Capture started") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(15)).expect("tshark did not start capturing");
        // "Capturing on" is printed just before the capture loop runs; give it a moment.
        std::thread::sleep(Duration::from_millis(300));
        Capture { guard, path: path.to_path_buf() }
    }

    /// Stops the capture (SIGINT lets tshark flush) and returns the pcap path.
    pub fn finish(mut self) -> PathBuf {
        let _ = Command::new("kill").arg("-INT").arg(self.guard.pid().to_string()).status();
        if self.guard.wait_timeout(Duration::from_secs(10)).is_none() {
            let _ = self.guard.child.kill();
        }
        self.path.clone()
    }
}

/// The resident memory of a process in KiB (VmRSS in /proc/PID/status).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?.split_whitespace().next()?.parse().ok()
}

/// `promtool check metrics` on a `/metrics` text (its lint of names, units, HELP and TYPE):
/// whether it passed, and everything it printed (nothing when all is well).
pub fn promtool_check_metrics(text: &str, dir: &Path) -> (bool, String) {
    let said_path = dir.join("promtool.out");
    let said = std::fs::File::create(&said_path).expect("promtool output file");
    let mut child = ChildGuard::spawn(
        "promtool",
        Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(said.try_clone().expect("clone"))
            .stderr(said),
    );
    let mut stdin = child.child.stdin.take().expect("promtool stdin");
    stdin.write_all(text.as_bytes()).expect("write to promtool");
    drop(stdin);
    let status = child.wait_timeout(Duration::from_secs(20)).expect("promtool finished within 20 s");
    (status.success(), std::fs::read_to_string(&said_path).unwrap_or_default())
}
