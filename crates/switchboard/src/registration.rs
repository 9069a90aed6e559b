//! REGISTER to the trunks that ask for it (`[trunks.NAME] register = true`): one task per trunk
//! drives the sans-IO [`switchboard_sip::registration::Registration`] through the SIP endpoint,
//! keeps its state for `/readyz` and the metrics, and removes the binding at drain or shutdown.
//!
//! Readiness (docs/operations.md): a gateway that must register and has no registration in
//! force at all cannot receive calls through its registrar, so `/readyz` answers 503 naming the
//! trunks; while at least one registering trunk is registered, `/readyz` stays 200 and names
//! the ones that are not (degraded, still taking calls).
//!
//! Calls routed to a registration: a registrar forwards a call to the Contact we registered, so
//! the Request-URI user is our contact user, not the number dialled. When the Request-URI user
//! is the contact user of a registering trunk, the dialled number is taken from
//! `P-Called-Party-ID` (RFC 3455 §4.2) when present, else from the `To` URI
//! ([`Registrations::route_to_dialled`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchboard_sip::core::OutOfDialogRequest;
use switchboard_sip::message::{Method, NameAddr, SipUri};
use switchboard_sip::registration::{Registration, RegistrationConfig, RegistrationEvent};
use switchboard_sip::{CallInfo, Credentials, SipEndpoint, Transport};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::config::{Config, Resolved, TrunkConfig, TrunkTransport, is_sip_user};
use crate::telemetry;

/// The first retry after a failed REGISTER waits about this long (with jitter)...
const RETRY_INITIAL: Duration = Duration::from_secs(2);
/// ...each next one twice as long, at most this long (5 min: a registrar back from an outage
/// sees every gateway again within minutes, not all at once).
const RETRY_MAX: Duration = Duration::from_secs(300);
/// How long the unregistrations at drain or shutdown may take, all together (best effort: the
/// binding lapses at the registrar by itself anyway).
pub const UNREGISTER_LIMIT: Duration = Duration::from_secs(3);

/// Checks a trunk's registration keys (called from `config::validate`).
pub fn validate_trunk(name: &str, trunk: &TrunkConfig, bad: &mut impl FnMut(&str, String)) {
    let key = |field: &str| format!("trunks.{name}.{field}");
    if !trunk.register_user.is_empty() && !is_sip_user(&trunk.register_user) {
        bad(&key("register_user"), format!("`{}` is not a SIP user part", trunk.register_user));
    }
    let domain_ok = trunk.register_domain.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c));
    if !domain_ok || trunk.register_domain.starts_with(':') {
        bad(&key("register_domain"), format!("`{}` is not a host name or address", trunk.register_domain));
    }
    if !trunk.register {
        return;
    }
    if !(1..=86_400).contains(&trunk.register_expires_secs) {
        bad(&key("register_expires_secs"), "must be between 1 and 86400".into());
    }
    if trunk.transport == TrunkTransport::Tls {
        // The REGISTER would need the trunk's TLS verification (tls_ca, tls_server_name) on the
        // connection it opens; not wired yet: refused rather than verified less.
        bad(&key("register"), "not supported yet with transport = \"tls\" (use udp or tcp)".into());
    }
}

/// `trunks.NAME.register*`: the registration tasks start with the gateway, so these keys
/// need a restart (`reload.rs`).
pub fn is_restart_only_key(key: &str) -> bool {
    let mut parts = key.splitn(3, '.');
    parts.next() == Some("trunks") && parts.nth(1).is_some_and(|field| field.starts_with("register"))
}

/// The user part of the address-of-record and of our registered Contact.
pub fn contact_user(trunk: &TrunkConfig) -> &str {
    [&trunk.register_user, &trunk.username, &trunk.from_user]
        .into_iter()
        .find(|u| !u.is_empty())
        .map_or("switchboard", String::as_str)
}

/// `host[:port]` of the address-of-record and the REGISTER's Request-URI.
fn registrar_domain(trunk: &TrunkConfig) -> String {
    if !trunk.register_domain.is_empty() {
        return trunk.register_domain.clone();
    }
    // The trunk's host, with its port unless it is the default one (a registrar on another
    // port must recognise its own URI, e.g. Kamailio's `myself` check).
    match trunk.address.rsplit_once(':') {
        Some((host, "5060")) => host.to_string(),
        _ => trunk.address.clone(),
    }
}

fn sip_transport(transport: TrunkTransport) -> Transport {
    match transport {
        TrunkTransport::Udp => Transport::Udp,
        TrunkTransport::Tcp => Transport::Tcp,
        // Refused by `validate_trunk` for now.
        TrunkTransport::Tls => Transport::Tls,
    }
}

/// Where one trunk's registration stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Status {
    registered: bool,
    /// The last failure, as an operator reads it (`auth_failed: authentication failed (401)`).
    last_failure: Option<String>,
}

#[derive(Debug)]
struct Entry {
    contact_user: String,
    status: Mutex<Status>,
}

/// The registrations of every trunk that registers (fixed at start).
#[derive(Debug)]
pub struct Registrations {
    entries: BTreeMap<String, Entry>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What `/readyz` makes of the registrations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// No trunk registers, or every one that does is registered.
    Fine,
    /// Some registering trunks are registered, these are not: ready, degraded.
    Degraded(Vec<String>),
    /// No registering trunk is registered: not ready.
    NoneRegistered(Vec<String>),
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Registrations {
    /// The registrations the configuration asks for (not started yet).
    pub fn new(config: &Config) -> Arc<Registrations> {
        let entries = config
            .trunks
            .iter()
            .filter(|(_, trunk)| trunk.register)
            .map(|(name, trunk)| {
                let entry =
                    Entry { contact_user: contact_user(trunk).to_string(), status: Mutex::new(Status::default()) };
                (name.clone(), entry)
            })
            .collect();
        let (stop, _) = watch::channel(false);
        Arc::new(Registrations { entries, stop, tasks: Mutex::new(Vec::new()) })
    }

    /// Starts one registration task per registering trunk.
    pub fn start(self: &Arc<Self>, sip: &SipEndpoint, config: &Config, resolved: &Resolved) {
        let mut tasks = lock(&self.tasks);
        for (name, entry) in &self.entries {
            metrics::gauge!(telemetry::SIP_REGISTRATION_STATE, "trunk" => name.clone()).set(0.0);
            let (Some(trunk), Some(destination)) = (config.trunks.get(name), resolved.trunk_addresses.get(name)) else {
                continue;
            };
            let transport = sip_transport(trunk.transport);
            let Some(contact_uri) = sip.local_contact_uri(transport, &entry.contact_user) else {
                // Not reachable: validation refuses a trunk transport without its listener.
                self.set_status(name, false, Some(format!("no {} listener for the Contact", transport.as_upper())));
                continue;
            };
            let domain = registrar_domain(trunk);
            let credentials = (!trunk.username.is_empty()).then(|| Credentials {
                username: trunk.username.clone(),
                password: trunk.password.expose().to_string(),
            });
            let machine_config = RegistrationConfig {
                registrar_uri: format!("sip:{domain}"),
                aor: format!("sip:{}@{domain}", entry.contact_user),
                contact_uri,
                credentials,
                expires: Duration::from_secs(trunk.register_expires_secs),
                retry_initial: RETRY_INITIAL,
                retry_max: RETRY_MAX,
            };
            let task = Task {
                trunk: name.clone(),
                destination: *destination,
                transport,
                sip: sip.clone(),
                registrations: Arc::clone(self),
                stop: self.stop.subscribe(),
            };
            tasks.push(tokio::spawn(task.run(machine_config)));
        }
    }

    /// Asks every registration to remove its binding and end (drain, shutdown); returns at
    /// once. Idempotent.
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// [`Registrations::stop`], then waits for the unregistrations, at most
    /// [`UNREGISTER_LIMIT`] (then the tasks are aborted).
    pub async fn stop_and_wait(&self) {
        self.stop();
        let tasks: Vec<JoinHandle<()>> = lock(&self.tasks).drain(..).collect();
        let aborts: Vec<_> = tasks.iter().map(JoinHandle::abort_handle).collect();
        let all = async {
            for task in tasks {
                let _ = task.await;
            }
        };
        if tokio::time::timeout(UNREGISTER_LIMIT + Duration::from_millis(500), all).await.is_err() {
            tracing::warn!("unregistration did not finish in time");
            for abort in aborts {
                abort.abort();
            }
        }
    }

    /// What `/readyz` makes of the registrations.
    pub fn readiness(&self) -> Readiness {
        let mut registered = 0;
        let mut failing = Vec::new();
        for (name, entry) in &self.entries {
            let status = lock(&entry.status).clone();
            if status.registered {
                registered += 1;
            } else {
                let why = status.last_failure.unwrap_or_else(|| "registering".to_string());
                failing.push(format!("trunk {name} not registered ({why})"));
            }
        }
        match (registered, failing.is_empty()) {
            (_, true) => Readiness::Fine,
            (0, false) => Readiness::NoneRegistered(failing),
            (_, false) => Readiness::Degraded(failing),
        }
    }

    /// A call a registrar routed to our registered Contact: the dialled number is in
    /// `P-Called-Party-ID` or `To`, not in the Request-URI (see the module comment).
    pub fn route_to_dialled(&self, info: &mut CallInfo) {
        if self.entries.is_empty() {
            return;
        }
        let request_user = SipUri::parse(&info.request_uri).and_then(|uri| uri.user);
        let Some(request_user) = request_user.map(|u| u.split(';').next().unwrap_or_default().to_string()) else {
            return;
        };
        if !self.entries.values().any(|entry| entry.contact_user == request_user) {
            return;
        }
        let called_party = info
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case("P-Called-Party-ID"))
            .and_then(|(_, value)| NameAddr::parse(value))
            .map(|party| party.uri);
        let dialled = called_party
            .iter()
            .chain(std::iter::once(&info.to_uri))
            .find_map(|uri| SipUri::parse(uri).and_then(|u| u.user))
            .map(|user| user.split(';').next().unwrap_or_default().to_string())
            .filter(|user| !user.is_empty());
        if let Some(dialled) = dialled {
            info.dialled = dialled;
        }
    }

    fn set_status(&self, trunk: &str, registered: bool, failure: Option<String>) {
        if let Some(entry) = self.entries.get(trunk) {
            let mut status = lock(&entry.status);
            status.registered = registered;
            if failure.is_some() || registered {
                status.last_failure = failure;
            }
        }
        metrics::gauge!(telemetry::SIP_REGISTRATION_STATE, "trunk" => trunk.to_string()).set(if registered {
            1.0
        } else {
            0.0
        });
    }
}

/// One trunk's registration task.
struct Task {
    trunk: String,
    destination: SocketAddr,
    transport: Transport,
    sip: SipEndpoint,
    registrations: Arc<Registrations>,
    stop: watch::Receiver<bool>,
}

impl Task {
    async fn run(self, config: RegistrationConfig) {
        let now = Instant::now();
        let call_id = format!("{:016x}{:016x}@switchboard", rand::random::<u64>(), rand::random::<u64>());
        let from_tag = format!("{:016x}", rand::random::<u64>());
        // §8.1.1.5: below 2**31, low enough for a lifetime of refreshes.
        let first_cseq = rand::random_range(1..=0x0fff_ffff_u32);
        let mut machine = Registration::new(config, call_id, from_tag, first_cseq, rand::random(), now);
        loop {
            if *self.stop.borrow() {
                break;
            }
            let now = Instant::now();
            machine.handle_timeout(now);
            self.report(&mut machine);
            if let Some(request) = machine.poll_request(now) {
                let sent = self.sip.send_request_outside_dialog(self.request(request));
                let mut stop = self.stop.clone();
                tokio::select! {
                    outcome = sent => match outcome {
                        Ok(response) => machine.handle_response(Instant::now(), &response),
                        Err(error) => {
                            tracing::debug!(trunk = %self.trunk, %error, "REGISTER got no final response");
                            machine.handle_no_response(Instant::now());
                        }
                    },
                    // Abandon the REGISTER in flight: the unregistration below replaces it.
                    _ = stop.wait_for(|stop| *stop) => break,
                }
                continue;
            }
            let wake = machine.poll_timeout();
            let mut stop = self.stop.clone();
            tokio::select! {
                _ = stop.wait_for(|stop| *stop) => break,
                () = sleep_until(wake) => {}
            }
        }
        self.unregister(&mut machine).await;
    }

    /// Removes our binding, best effort and bounded by [`UNREGISTER_LIMIT`].
    async fn unregister(&self, machine: &mut Registration) {
        let deadline = tokio::time::Instant::now() + UNREGISTER_LIMIT;
        if !machine.unregister(Instant::now()) {
            self.registrations.set_status(&self.trunk, false, None);
            return;
        }
        let exchange = async {
            while let Some(request) = machine.poll_request(Instant::now()) {
                match self.sip.send_request_outside_dialog(self.request(request)).await {
                    Ok(response) => machine.handle_response(Instant::now(), &response),
                    Err(_) => machine.handle_no_response(Instant::now()),
                }
            }
        };
        if tokio::time::timeout_at(deadline, exchange).await.is_err() {
            tracing::info!(trunk = %self.trunk, "unregistration not confirmed in time; the binding lapses by itself");
        }
        self.report(machine);
        self.registrations.set_status(&self.trunk, false, None);
    }

    fn request(&self, request: switchboard_sip::registration::RegisterRequest) -> OutOfDialogRequest {
        OutOfDialogRequest {
            method: Method::Register,
            request_uri: request.request_uri,
            from: request.from,
            to: request.to,
            call_id: request.call_id,
            cseq: request.cseq,
            destination: self.destination,
            transport: self.transport,
            headers: request.headers,
            body: Vec::new(),
        }
    }

    /// Logs, counts and records what the machine reports.
    fn report(&self, machine: &mut Registration) {
        let trunk = &self.trunk;
        while let Some(event) = machine.poll_event() {
            let outcome = match &event {
                RegistrationEvent::Registered { expires, refresh_in } => {
                    tracing::info!(%trunk, expires_secs = expires.as_secs(), refresh_in_secs = refresh_in.as_secs(), "registered");
                    self.registrations.set_status(trunk, true, None);
                    "registered"
                }
                RegistrationEvent::Unregistered => {
                    tracing::info!(%trunk, "unregistered");
                    "unregistered"
                }
                RegistrationEvent::Failed { failure, retry_in } => {
                    tracing::warn!(%trunk, %failure, retry_in_secs = retry_in.map(|d| d.as_secs()), "registration failed");
                    let registered = machine.is_registered(Instant::now());
                    self.registrations.set_status(trunk, registered, Some(format!("{}: {failure}", failure.label())));
                    failure.label()
                }
                RegistrationEvent::Lapsed => {
                    tracing::warn!(%trunk, "registration lapsed: no successful refresh before it expired");
                    self.registrations.set_status(trunk, false, None);
                    "lapsed"
                }
            };
            metrics::counter!(telemetry::SIP_REGISTRATIONS_TOTAL, "trunk" => trunk.clone(), "outcome" => outcome)
                .increment(1);
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut file, text.as_bytes()).unwrap();
        crate::config::load_with_env(file.path(), &[]).unwrap().0
    }

    fn info(request_uri: &str, to: &str, headers: &[(&str, &str)]) -> CallInfo {
        CallInfo {
            call_id: "c".into(),
            from_uri: "sip:caller@198.51.100.1".into(),
            from_display: None,
            to_uri: to.into(),
            request_uri: request_uri.into(),
            dialled: SipUri::parse(request_uri).and_then(|u| u.user).unwrap_or_default(),
            source: "127.0.0.1:5060".parse().unwrap(),
            transport: Transport::Udp,
            asserted_identity: None,
            headers: headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    const TRUNKS: &str = "[trunks.provider]\naddress = \"127.0.0.1:7170\"\nregister = true\nusername = \"acme\"\n\
                          password = \"pw\"\n[trunks.plain]\naddress = \"127.0.0.1:7180\"\n";

    #[test]
    fn calls_to_our_registered_contact_route_on_the_number_dialled() {
        let registrations = Registrations::new(&config(TRUNKS));
        // A registrar forwarded the call to our Contact; the number is in To.
        let mut call = info("sip:acme@192.0.2.10:5060;transport=udp", "<sip:+15550001000@provider.example>", &[]);
        call.to_uri = "sip:+15550001000@provider.example".into();
        registrations.route_to_dialled(&mut call);
        assert_eq!(call.dialled, "+15550001000");
        // P-Called-Party-ID wins over To.
        let mut call = info(
            "sip:acme@192.0.2.10",
            "sip:acme@provider.example",
            &[("P-Called-Party-ID", "<sip:15550002000@provider.example>")],
        );
        registrations.route_to_dialled(&mut call);
        assert_eq!(call.dialled, "15550002000");
        // Any other Request-URI keeps its user as the number dialled.
        let mut call = info("sip:15550003000@192.0.2.10", "sip:other@provider.example", &[]);
        registrations.route_to_dialled(&mut call);
        assert_eq!(call.dialled, "15550003000");
    }

    #[test]
    fn readiness_fails_only_when_no_registering_trunk_is_registered() {
        let none = Registrations::new(&config(""));
        assert_eq!(none.readiness(), Readiness::Fine);
        let two = Registrations::new(&config(&format!(
            "{TRUNKS}[trunks.second]\naddress = \"127.0.0.1:7190\"\nregister = true\nregister_user = \"line2\"\n"
        )));
        assert!(matches!(two.readiness(), Readiness::NoneRegistered(names) if names.len() == 2));
        two.set_status("provider", true, None);
        let Readiness::Degraded(failing) = two.readiness() else { panic!("degraded") };
        assert_eq!(failing, ["trunk second not registered (registering)"]);
        two.set_status("second", false, Some("auth_failed: authentication failed (401)".into()));
        let Readiness::Degraded(failing) = two.readiness() else { panic!("degraded") };
        assert!(failing[0].contains("auth_failed"), "{failing:?}");
        two.set_status("second", true, None);
        assert_eq!(two.readiness(), Readiness::Fine);
    }

    #[test]
    fn registration_keys_need_a_restart() {
        assert!(is_restart_only_key("trunks.provider.register"));
        assert!(is_restart_only_key("trunks.provider.register_expires_secs"));
        assert!(!is_restart_only_key("trunks.provider.address"));
        assert!(!is_restart_only_key("agents.register.voice"));
    }

    #[test]
    fn registration_keys_are_validated_and_defaults_derived() {
        let cfg = config(TRUNKS);
        let trunk = &cfg.trunks["provider"];
        assert_eq!(trunk.register_expires_secs, 3600);
        assert_eq!(contact_user(trunk), "acme");
        assert_eq!(registrar_domain(trunk), "127.0.0.1:7170");
        assert_eq!(contact_user(&cfg.trunks["plain"]), "switchboard", "from_user's default");
        let mut standard = trunk.clone();
        standard.address = "sip.provider.example:5060".into();
        assert_eq!(registrar_domain(&standard), "sip.provider.example");

        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"[trunks.bad]\naddress = \"127.0.0.1:7170\"\nregister = true\nregister_expires_secs = 0\n\
              register_user = \"a b\"\nregister_domain = \"x/y\"\n",
        )
        .unwrap();
        let err = crate::config::load_with_env(file.path(), &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        for expected in ["trunks.bad.register_expires_secs", "trunks.bad.register_user", "trunks.bad.register_domain"] {
            assert!(keys.contains(&expected), "missing {expected} in {keys:?}");
        }
        // Over TLS: refused for now (the REGISTER's connection would not be verified as calls are).
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(
            &mut file,
            b"[trunks.secure]\naddress = \"127.0.0.1:5061\"\ntransport = \"tls\"\nregister = true\n",
        )
        .unwrap();
        let err = crate::config::load_with_env(file.path(), &[]).unwrap_err();
        assert!(err.0.iter().any(|p| p.key == "trunks.secure.register"), "{err}");
    }
}
