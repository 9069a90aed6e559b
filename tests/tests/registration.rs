//! REGISTER to a provider (RFC 3261 §10.2) against a real registrar: Debian's Kamailio runs
//! `tests/kamailio/registrar.cfg` (usrloc in memory, digest with a password given as a define),
//! the gateway registers through the digest challenge, refreshes, receives a call the registrar
//! routes to its registration, and removes its binding when it stops.
//!
//! Slots: 116 (the gateway), 117 (Kamailio on its SIP port, SIPp on its peer ports).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use switchboard_e2e::Ports;
use switchboard_e2e::procs::{ChildGuard, Gateway, http_get, promtool_check_metrics, run_bounded};
use switchboard_e2e::{sipp, tools};

const AOR_USER: &str = "acme";
const PASSWORD: &str = "s3cret";
const DIALLED: &str = "15550001000";

fn kamailio_tool(name: &str) -> PathBuf {
    option_env!("E2E_KAMAILIO_DIR").map_or_else(|| PathBuf::from(name), |dir| PathBuf::from(dir).join(name))
}

/// The registrar, in the foreground and its own process group, everything in the test's folder.
struct Registrar {
    guard: ChildGuard,
    ctl: String,
    log_path: PathBuf,
}

impl Registrar {
    fn start(port: u16, dir: &Path) -> Registrar {
        use std::os::unix::process::CommandExt;
        let dir = dir.join("kamailio");
        std::fs::create_dir_all(&dir).expect("kamailio dir");
        let ctl = format!("unix:{}", dir.join("ctl").display());
        let log_path = dir.join("kamailio.log");
        let log = std::fs::File::create(&log_path).expect("kamailio log");
        let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("kamailio/registrar.cfg");
        let guard = ChildGuard::spawn(
            "kamailio",
            Command::new(kamailio_tool("kamailio"))
                .arg("-f")
                .arg(config)
                .args(["-DD", "-E", "-m", "32", "-M", "8"])
                .arg("-w")
                .arg(&dir)
                .arg("-Y")
                .arg(&dir)
                .arg("-P")
                .arg(dir.join("kamailio.pid"))
                .args(["-A", &format!("LISTEN=udp:127.0.0.1:{port}")])
                .args(["-A", &format!("CTL_SOCKET=\"{ctl}\"")])
                .args(["-A", &format!("AUTH_USER=\"{AOR_USER}\""), "-A", &format!("AUTH_PASSWORD=\"{PASSWORD}\"")])
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log),
        );
        let registrar = Registrar { guard, ctl, log_path };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !registrar.bindings().contains("Domains") {
            assert!(Instant::now() < deadline, "kamailio not answering kamcmd; log:\n{}", registrar.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        registrar
    }

    /// `kamcmd ul.dump`: every address-of-record and its contacts.
    fn bindings(&self) -> String {
        let out = run_bounded(
            "kamcmd",
            Command::new(kamailio_tool("kamcmd")).args(["-s", &self.ctl, "ul.dump"]),
            Duration::from_secs(5),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl Drop for Registrar {
    /// SIGTERM to the whole group (the main process stops its workers), SIGKILL to what is left
    /// after 5 s. `--` is required: without it procps' kill reads `-1234` as options and, for a
    /// PID starting with 1, signals -1 (every process the user may signal).
    fn drop(&mut self) {
        let group = format!("-{}", self.guard.pid());
        let _ = Command::new("kill").args(["-TERM", "--", &group]).stderr(Stdio::null()).status();
        if self.guard.wait_timeout(Duration::from_secs(5)).is_none() {
            let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        }
    }
}

/// A counter's value in the exposition text (0 when absent).
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|line| line.strip_prefix(series).and_then(|rest| rest.trim().parse::<f64>().ok()))
        .map_or(0, |v| v as u64)
}

fn wait_for(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Registers through the digest challenge (the gateway is not ready before), shows in the
/// registrar's location table with its Contact, refreshes (4 s asked, so every 2 s), receives a
/// call the registrar routes to its registration and routes it on the number in To (a catch-all
/// 404 route would refuse the contact user), and on SIGTERM removes its binding. A second trunk
/// with a wrong password leaves `/readyz` 200 but names it with the auth failure. The registration
/// metrics pass `promtool check metrics`.
#[test]
#[cfg_attr(
    not(all(has_kamailio, has_sipp, has_promtool)),
    ignore = "needs kamailio, sipp and promtool (scripts/install-deps.sh)"
)]
fn registers_refreshes_takes_a_routed_call_and_unregisters() {
    let dir = tools::scratch_dir("registration_kamailio");
    let gateway_ports = Ports::for_slot(116);
    let peer_ports = Ports::for_slot(117);
    let registrar_port = peer_ports.sip;
    let registrar = Registrar::start(registrar_port, &dir);

    let extra = format!(
        "[trunks.provider]\naddress = \"127.0.0.1:{registrar_port}\"\nregister = true\nregister_expires_secs = 4\n\
         username = \"{AOR_USER}\"\npassword = \"{PASSWORD}\"\n\
         [trunks.wrong]\naddress = \"127.0.0.1:{registrar_port}\"\nregister = true\nregister_user = \"intruder\"\n\
         username = \"{AOR_USER}\"\npassword = \"not-the-password\"\n\
         [[routes]]\nname = \"dialled\"\ndialled = \"{DIALLED}\"\nagent = \"default\"\n\
         [[routes]]\nname = \"other\"\ndialled = \"*\"\nreject = 404\n"
    );
    // Gateway::start returns once /readyz says 200: with registering trunks, not before one
    // of them is registered.
    let started = Instant::now();
    let mut gateway = Gateway::start(gateway_ports, "", &extra, &dir);
    let became_ready = started.elapsed();

    let contact = format!("sip:{AOR_USER}@127.0.0.1:{};transport=udp", gateway_ports.sip);
    let bindings = registrar.bindings();
    assert!(bindings.contains(&format!("AoR: {AOR_USER}")), "{bindings}");
    assert!(bindings.contains(&contact), "our Contact is bound: {bindings}");
    assert!(!bindings.contains("intruder"), "the wrong password bound nothing: {bindings}");

    // Refreshed at half the 4 s granted: at least two refreshes after the first registration.
    let registered = r#"switchboard_sip_registrations_total{trunk="provider",outcome="registered"}"#;
    wait_for(Duration::from_secs(8), "two refreshes", || counter(&gateway.metrics(), registered) >= 3);
    let metrics = gateway.metrics();
    assert!(metrics.contains("switchboard_sip_registration_state{trunk=\"provider\"} 1"), "{metrics}");
    assert!(metrics.contains("switchboard_sip_registration_state{trunk=\"wrong\"} 0"), "{metrics}");
    assert!(
        counter(&metrics, "switchboard_sip_registrations_total{trunk=\"wrong\",outcome=\"auth_failed\"}") >= 1,
        "{metrics}"
    );
    let (status, body) = http_get(([127, 0, 0, 1], gateway_ports.admin).into(), "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("degraded: trunk wrong not registered (auth_failed"), "{body}");
    assert!(registrar.bindings().contains(&contact), "still bound after the refreshes");
    let (clean, said) = promtool_check_metrics(&metrics, &dir);
    assert!(clean && said.trim().is_empty(), "promtool check metrics: {said}");

    // A caller of acme: the registrar looks it up and relays to our Contact.
    let sipp_ports = Ports { sip: registrar_port, ..peer_ports };
    let port = registrar_port.to_string();
    let output = sipp::run(
        "uac_to_registration.xml",
        &[("AOR_USER", AOR_USER), ("PROXY_PORT", port.as_str())],
        &dir,
        sipp_ports,
        DIALLED,
        1000,
    );
    assert!(output.status.success(), "the call through the registrar failed; gateway log:\n{}", gateway.log());
    let metrics = gateway.metrics();
    assert!(
        metrics.contains("switchboard_route_decisions_total{route=\"dialled\",outcome=\"agent\"} 1"),
        "routed on the number in To: {metrics}"
    );

    // SIGTERM: drain (no call up), unregister, exit.
    let exited = gateway.guard.terminate(Duration::from_secs(15));
    assert!(exited.is_some_and(|s| s.success()), "clean exit: {exited:?}\n{}", gateway.log());
    let bindings = registrar.bindings();
    assert!(!bindings.contains(&contact), "binding removed at shutdown: {bindings}");
    assert!(gateway.log().contains("unregistered"), "{}", gateway.log());
    eprintln!("ready after {became_ready:?} (registration through the digest challenge included)");
}

/// Behind 1:1 NAT (docs/configuration.md, "Behind NAT"): the gateway binds 127.0.0.1 and says
/// `sip.public_host` (127.0.0.2) in the Contact it registers and in its 200's Contact, and
/// `media.public_address` (127.0.0.3) in its SDP `c=`, while the old `media.address` stays at its
/// value. The registrar is a raw UDP socket here that answers every REGISTER 200 and keeps what
/// it received; before answering the first one it asks `/readyz`, which must say 503 naming the
/// trunk (the gateway's only registering trunk is not registered yet).
#[test]
fn public_host_and_public_address_are_what_signalling_says() {
    use std::net::UdpSocket;
    use std::sync::{Arc, Mutex};
    use switchboard_e2e::sip_raw::{collect_one, header, status_of};

    let dir = tools::scratch_dir("registration_nat");
    let ports = Ports::for_slot(118);
    let registrar = UdpSocket::bind(("127.0.0.1", ports.peer_sip)).expect("bind registrar");
    let received = Arc::new(Mutex::new(Vec::<String>::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // What /readyz said while the first REGISTER waited for its answer.
    let readiness_before = Arc::new(Mutex::new(None::<(u16, String)>));
    let admin: std::net::SocketAddr = ([127, 0, 0, 1], ports.admin).into();
    let answering = {
        let (received, stop, readiness_before) =
            (Arc::clone(&received), Arc::clone(&stop), Arc::clone(&readiness_before));
        std::thread::spawn(move || {
            let mut buf = [0u8; 65_535];
            registrar.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                let Ok((n, from)) = registrar.recv_from(&mut buf) else { continue };
                let request = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !request.starts_with("REGISTER ") {
                    continue;
                }
                let copied: String = ["Via", "From", "To", "Call-ID", "CSeq", "Contact"]
                    .iter()
                    .filter_map(|name| header(&request, name).map(|value| format!("{name}: {value}\r\n")))
                    .collect();
                let mut before = readiness_before.lock().expect("lock");
                if before.is_none() {
                    // The first REGISTER may leave before start-up has finished ("starting"): ask
                    // until that is over (the REGISTER is retransmitted meanwhile).
                    let deadline = Instant::now() + Duration::from_secs(3);
                    let mut answer = http_get(admin, "/readyz");
                    while answer.1.contains("starting") && Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(20));
                        answer = http_get(admin, "/readyz");
                    }
                    *before = Some(answer);
                }
                drop(before);
                let expires = if header(&request, "Expires") == Some("0") { "0" } else { "60" };
                let reply = format!("SIP/2.0 200 OK\r\n{copied}Expires: {expires}\r\nContent-Length: 0\r\n\r\n");
                let _ = registrar.send_to(reply.as_bytes(), from);
                received.lock().expect("lock").push(request);
            }
        })
    };
    let extra = format!(
        "[trunks.provider]\naddress = \"127.0.0.1:{}\"\nregister = true\nregister_user = \"line1\"\n",
        ports.peer_sip
    );
    let env = [("SWITCHBOARD__SIP__PUBLIC_HOST", "127.0.0.2"), ("SWITCHBOARD__MEDIA__PUBLIC_ADDRESS", "127.0.0.3")];
    let mut gateway = Gateway::start_with_env(ports, "", &extra, &dir, &env);

    let (status, body) = readiness_before.lock().expect("lock").clone().expect("/readyz asked");
    assert_eq!(status, 503, "not ready before the only registering trunk is registered: {body}");
    assert!(body.contains("not ready: trunk provider not registered"), "{body}");
    let register = received.lock().expect("lock").first().cloned().expect("a REGISTER");
    assert_eq!(
        header(&register, "Contact"),
        Some(format!("<sip:line1@127.0.0.2:{};transport=udp>", ports.sip).as_str()),
        "{register}"
    );
    assert!(register.starts_with(&format!("REGISTER sip:127.0.0.1:{} SIP/2.0", ports.peer_sip)), "{register}");
    assert!(header(&register, "Via").is_some_and(|via| via.contains("127.0.0.2:")), "{register}");

    // An INVITE: the 200 says the public host in Contact and the public media address in c=.
    let caller = UdpSocket::bind("127.0.0.1:0").expect("bind caller");
    let local = caller.local_addr().expect("local");
    let sdp = format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio {} RTP/AVP 0\r\n\
         a=rtpmap:0 PCMU/8000\r\n",
        ports.peer_media
    );
    let invite = format!(
        "INVITE sip:15550001000@127.0.0.1:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-nat-1\r\n\
         From: <sip:caller@127.0.0.1>;tag=nat-from\r\nTo: <sip:15550001000@127.0.0.1>\r\nCall-ID: nat-call\r\n\
         CSeq: 1 INVITE\r\nContact: <sip:caller@{local}>\r\nMax-Forwards: 70\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len(),
        sip = ports.sip
    );
    caller.send_to(invite.as_bytes(), gateway.sip_addr()).expect("send INVITE");
    let deadline = Instant::now() + Duration::from_secs(10);
    let answer = loop {
        assert!(Instant::now() < deadline, "no final response; log:\n{}", gateway.log());
        if let Some(message) = collect_one(&caller, Duration::from_millis(500))
            && status_of(&message).is_some_and(|s| s >= 200)
        {
            break message;
        }
    };
    assert_eq!(status_of(&answer), Some(200), "{answer}");
    assert_eq!(
        header(&answer, "Contact"),
        Some(format!("<sip:switchboard@127.0.0.2:{};transport=udp>", ports.sip).as_str())
    );
    assert!(answer.contains("c=IN IP4 127.0.0.3\r\n"), "{answer}");

    // ACK and BYE to where the gateway really is (a NAT would map the public host onto it).
    let to = header(&answer, "To").expect("To").to_string();
    let in_dialog = |method: &str, cseq: u32, branch: &str| {
        format!(
            "{method} sip:switchboard@127.0.0.1:{sip};transport=udp SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch={branch}\r\n\
             From: <sip:caller@127.0.0.1>;tag=nat-from\r\nTo: {to}\r\nCall-ID: nat-call\r\nCSeq: {cseq} {method}\r\n\
             Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            sip = ports.sip
        )
    };
    caller.send_to(in_dialog("ACK", 1, "z9hG4bK-nat-2").as_bytes(), gateway.sip_addr()).expect("send ACK");
    caller.send_to(in_dialog("BYE", 2, "z9hG4bK-nat-3").as_bytes(), gateway.sip_addr()).expect("send BYE");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < deadline, "BYE not answered");
        if let Some(message) = collect_one(&caller, Duration::from_millis(500))
            && message.starts_with("SIP/2.0 200")
            && header(&message, "CSeq") == Some("2 BYE")
        {
            break;
        }
    }

    // Shutdown removes the binding: the last REGISTER says Expires: 0.
    let exited = gateway.guard.terminate(Duration::from_secs(15));
    assert!(exited.is_some(), "exits on SIGTERM");
    stop.store(true, std::sync::atomic::Ordering::Release);
    answering.join().expect("registrar thread");
    let last = received.lock().expect("lock").last().cloned().expect("REGISTERs");
    assert_eq!(header(&last, "Expires"), Some("0"), "{last}");
}
