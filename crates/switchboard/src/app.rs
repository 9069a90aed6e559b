//! The running gateway: SIP endpoint, call tasks, admin HTTP, offline agent, and shutdown.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_realtime::client::ConnectConfig;
use switchboard_sim::{Behaviour, RunningSimulator, SimConfig, Simulator};
use switchboard_sip::endpoint::{EndpointStopped, TcpLimits};
use switchboard_sip::{EndpointConfig, IncomingCall, SipEndpoint, Timers};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tracing::{error, info, warn};

use crate::admin;
use crate::admission::{Admission, AdmissionConfig, AdmissionRefusal, Decision};
use crate::call::end::Refusal;
use crate::call::{self, CallSlot};
use crate::calls::CallRegistry;
use crate::capacity::{CapacityGate, Transition};
use crate::config::{Config, Resolved};
use crate::media_clock::{LATENESS_WINDOW, MediaClock};
use crate::recording::Records;
use crate::reload::{ReloadError, ReloadReport, Reloader, Settings, SettingsCell};
use crate::rtp_ports::RtpPorts;
use crate::telemetry::{self, Escaped, WarningAction, WarningLimiter};

/// How long shutdown waits for the recorder to write what the calls left it.
const RECORDER_DRAIN_LIMIT: Duration = Duration::from_secs(10);

/// What every call task shares.
pub struct GatewayState {
    /// The configuration the process started with. What needs a restart (listeners, media
    /// addresses, `[calls]`, `[realtime]`...) is read here; what a call uses comes from its
    /// snapshot of [`GatewayState::settings`], which a reload replaces.
    pub config: Config,
    pub resolved: Resolved,
    pub realtime: ConnectConfig,
    pub rtp_ports: Arc<RtpPorts>,
    pub active_calls: AtomicUsize,
    /// Every call up (inbound and outbound) for the admin API, and recent outbound outcomes.
    pub calls: Arc<CallRegistry>,
    /// The SIP endpoint, set once it is bound: outbound calls are placed through it.
    pub sip: OnceLock<SipEndpoint>,
    /// Flips to true once at shutdown; every call task watches it.
    pub shutdown: watch::Sender<bool>,
    pub ready: AtomicBool,
    /// Per-source limits, checked before a call costs anything.
    pub admission: Mutex<Admission>,
    /// Paces and sends every call's outbound RTP (one thread, see `media_clock`).
    pub media_clock: Arc<MediaClock>,
    /// True while capacity admission refuses new calls (`capacity.rs`, `watch_capacity`).
    pub capacity_saturated: AtomicBool,
    /// True once a drain began (SIGTERM): new calls are refused, calls in progress go on.
    pub draining: AtomicBool,
    /// Rate limit on the "refused by per-source admission" warning.
    admission_warnings: Mutex<WarningLimiter>,
    /// Recordings, sidecars and call detail records (`recording`): one writer thread.
    pub records: Arc<Records>,
    /// Set once, when a task the gateway cannot live without has ended: what ended and why.
    /// `/healthz` and `/readyz` report it; the process then exits non-zero.
    failure: OnceLock<String>,
    /// The configuration new calls take (`reload.rs`): swapped whole by a reload.
    pub settings: SettingsCell,
    /// The file to re-read and the lock that serializes reloads.
    pub reloader: Reloader,
}

impl GatewayState {
    /// True once the gateway takes no new calls for good: draining or shutting down.
    pub fn closing(&self) -> bool {
        self.draining.load(Ordering::Acquire) || *self.shutdown.borrow()
    }

    /// Why the gateway is broken, if it is.
    pub fn failure(&self) -> Option<&str> {
        self.failure.get().map(String::as_str)
    }

    /// Records a fatal failure (the first one wins) and stops taking calls at once.
    fn fail(&self, what: String) {
        if self.failure.set(what).is_ok() {
            self.ready.store(false, Ordering::Release);
            metrics::gauge!(telemetry::UP).set(0.0);
        }
    }

    /// A reload's per-source admission limits (`reload.rs`).
    pub(crate) fn reconfigure_admission(&self, settings: &Settings) {
        self.admission().reconfigure(AdmissionConfig {
            max_calls_per_source: settings.config.calls.max_per_source,
            invites_per_second: settings.config.sip.invite_rate_per_source,
            trusted: settings.resolved.trusted_proxies.clone(),
            max_sources: admission_table_size(self.config.calls.max_concurrent),
        });
    }

    /// The configuration a call starting now takes and keeps to its end.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings.current()
    }

    fn admission(&self) -> MutexGuard<'_, Admission> {
        self.admission.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How many sources the admission table may track: always more than the calls that can be up
/// (entries with calls up are never evicted), and at least 4096.
fn admission_table_size(max_concurrent: usize) -> usize {
    max_concurrent.saturating_mul(2).max(4096)
}

/// The call registry holds every call that has a slot (`calls.max_concurrent`) and, on top,
/// what the trunks may carry, so registering a call that holds a slot never fails.
pub(crate) fn registry_capacity(config: &Config) -> usize {
    let outbound: usize = config.trunks.values().map(|t| t.max_concurrent).sum();
    config.calls.max_concurrent.saturating_add(outbound)
}

/// A call admitted against its source's limits; dropping it (the call ended) gives the slot back.
struct SourceSlot {
    state: Arc<GatewayState>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        self.state.admission().release(self.source, Instant::now());
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("SIP listener: {0}")]
    Sip(#[from] switchboard_sip::EndpointError),
    #[error("admin listener on {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("offline agent: {0}")]
    OfflineAgent(std::io::Error),
    #[error("media clock thread: {0}")]
    MediaClock(std::io::Error),
    #[error("recording: {0}")]
    Records(#[from] crate::recording::RecordsError),
}

pub struct RunningGateway {
    state: Arc<GatewayState>,
    sip: SipEndpoint,
    /// Aborting it aborts the accept task, which drops its JoinSet and so every call task.
    accept_abort: tokio::task::AbortHandle,
    offline_agent: Option<RunningSimulator>,
    admin_addr: Option<SocketAddr>,
    /// Flips to `Some(what)` when a task the gateway cannot live without ends.
    fatal: watch::Receiver<Option<String>>,
}

/// Binds everything (admin, offline agent, SIP) and starts accepting calls.
pub async fn start(
    config: Config,
    resolved: Resolved,
    metrics: Option<PrometheusHandle>,
) -> Result<RunningGateway, StartError> {
    let mut offline_agent = None;
    let realtime = if config.realtime.api_key.is_empty() {
        let sim = Simulator::start(
            offline_agent_config(),
            "127.0.0.1:0"
                .parse()
                .map_err(|_| StartError::OfflineAgent(std::io::Error::other("bad loopback address")))?,
        )
        .await
        .map_err(StartError::OfflineAgent)?;
        warn!(
            url = %sim.url(),
            "no OpenAI API key configured (realtime.api_key / OPENAI_API_KEY): calls are answered by the \
             built-in OFFLINE AGENT, a local simulator that echoes what the caller says"
        );
        let connect = ConnectConfig { url: sim.url(), model: config.realtime.model.clone(), api_key: "offline".into() };
        offline_agent = Some(sim);
        connect
    } else {
        ConnectConfig {
            url: config.realtime.url.clone(),
            model: config.realtime.model.clone(),
            api_key: config.realtime.api_key.clone(),
        }
    };

    // Before any call: directories checked, what a crash left recovered, the writer started.
    let records = Records::start(&config)?;
    let (shutdown, _) = watch::channel(false);
    let admission = Admission::new(AdmissionConfig {
        max_calls_per_source: config.calls.max_per_source,
        invites_per_second: config.sip.invite_rate_per_source,
        trusted: resolved.trusted_proxies.clone(),
        max_sources: admission_table_size(config.calls.max_concurrent),
    });
    let state = Arc::new(GatewayState {
        rtp_ports: RtpPorts::new(resolved.media_bind, resolved.rtp_ports.clone()),
        realtime,
        active_calls: AtomicUsize::new(0),
        calls: CallRegistry::new(registry_capacity(&config)),
        sip: OnceLock::new(),
        shutdown,
        ready: AtomicBool::new(false),
        admission: Mutex::new(admission),
        media_clock: MediaClock::start().map_err(StartError::MediaClock)?,
        capacity_saturated: AtomicBool::new(false),
        draining: AtomicBool::new(false),
        admission_warnings: Mutex::new(WarningLimiter::new(Duration::from_secs(10))),
        failure: OnceLock::new(),
        records,
        settings: SettingsCell::new(Settings { config: config.clone(), resolved: resolved.clone() }),
        reloader: Reloader::default(),
        resolved,
        config,
    });
    crate::reload::record_loaded();

    let (admin_addr, admin_task) = match state.resolved.admin_listen {
        Some(addr) => {
            let (bound, task) = admin::serve(addr, Arc::clone(&state), metrics)
                .await
                .map_err(|source| StartError::Admin { addr, source })?;
            (Some(bound), Some(task))
        }
        None => (None, None),
    };

    let sip_cfg = &state.config.sip;
    let t1 = Duration::from_millis(sip_cfg.t1_ms);
    let (sip, mut incoming) = SipEndpoint::bind(EndpointConfig {
        udp: state.resolved.sip_udp,
        tcp: state.resolved.sip_tcp,
        advertised_host: state.resolved.advertised_host.or_else(|| {
            let tls = state.resolved.sip_tls.as_ref().map(|t| t.addr);
            let wildcard =
                state.resolved.sip_udp.or(state.resolved.sip_tcp).or(tls).is_some_and(|a| a.ip().is_unspecified());
            wildcard.then_some(state.resolved.media_address)
        }),
        user_agent: sip_cfg.user_agent.clone(),
        max_message_bytes: sip_cfg.max_message_bytes,
        max_headers: 100,
        timers: Timers { t1, t2: Duration::from_secs(4).max(t1), t4: Duration::from_secs(5) },
        retry_after_secs: state.config.calls.retry_after_secs,
        tcp_limits: TcpLimits {
            idle_timeout: Duration::from_secs(sip_cfg.tcp_idle_timeout_secs),
            max_connections: sip_cfg.tcp_max_connections,
            max_connections_per_address: sip_cfg.tcp_max_connections_per_address,
            write_queue_bytes: sip_cfg.tcp_write_queue_bytes,
        },
        tls: state.resolved.sip_tls.clone().map(|mut listener| {
            // A trunk with `tls_client_ca` is known by its `sources`; read from the settings in
            // effect, so a reload changes them for the next connections.
            let weak = Arc::downgrade(&state);
            listener.per_source = Some(switchboard_sip::tls::ConfigForSource::new(move |ip| {
                let settings = weak.upgrade()?.settings();
                let trunk = settings.resolved.trunk_for_source(ip)?;
                settings.resolved.trunk_tls_clients.get(trunk).cloned()
            }));
            listener
        }),
    })
    .await?;
    let _ = state.sip.set(sip.clone());
    info!(
        udp = ?sip.local_udp_addr(),
        tcp = ?sip.local_tcp_addr(),
        tls = ?sip.local_tls_addr(),
        admin = ?admin_addr,
        tcp_max_connections = sip.tcp_max_connections(),
        "Switchboard listening"
    );

    let accept_state = Arc::clone(&state);
    let accept_task = tokio::spawn(async move {
        let mut calls = JoinSet::new();
        while let Some(call) = incoming.recv().await {
            accept_call(&accept_state, &mut calls, call);
            while calls.try_join_next().is_some() {}
        }
        // The endpoint hands out no more calls (shutdown, or its driver died, which the
        // supervisor reports). Keep the call tasks so they end in order, each with its BYE
        // where possible and its metrics, until `shutdown` aborts this task after its grace.
        std::future::pending::<()>().await;
        drop(calls);
    });
    let accept_abort = accept_task.abort_handle();
    let (fatal_tx, fatal) = watch::channel(None);
    tokio::spawn(supervise(Arc::clone(&state), sip.clone(), accept_task, admin_task, fatal_tx));
    tokio::spawn(watch_capacity(Arc::clone(&state), sip.clone()));
    state.ready.store(true, Ordering::Release);
    metrics::gauge!(telemetry::UP).set(1.0);
    metrics::gauge!(telemetry::DRAINING).set(0.0);

    Ok(RunningGateway { state, sip, accept_abort, offline_agent, admin_addr, fatal })
}

/// One new INVITE: per-source admission, then a global call slot, then the call's own task.
/// Everything here is cheap; routing, RTP ports and the Realtime session come after.
fn accept_call(state: &Arc<GatewayState>, calls: &mut JoinSet<()>, call: IncomingCall) {
    if state.closing() {
        call::refuse_early(state, call, Refusal::ShuttingDown);
        return;
    }
    if state.capacity_saturated.load(Ordering::Acquire) {
        refuse_saturated(state, call);
        return;
    }
    let source = call.info.source.ip();
    let decision = state.admission().admit(source, Instant::now());
    let source_slot = match decision {
        Decision::Admitted => Some(SourceSlot { state: Arc::clone(state), source }),
        Decision::Trusted => None,
        Decision::Refused(refusal) => {
            refuse_by_admission(state, call, refusal);
            return;
        }
    };
    metrics::gauge!(telemetry::ADMISSION_SOURCES).set(state.admission().tracked_sources() as f64);
    match CallSlot::try_take(state) {
        Some(slot) => {
            let call_state = Arc::clone(state);
            calls.spawn(async move {
                call::handle(call_state, call, slot).await;
                drop(source_slot);
            });
        }
        None => call::refuse_early(state, call, Refusal::Overloaded),
    }
}

/// 503 + Retry-After for a source over its limits, counted by reason; the warning is rate-limited
/// (an attacker must not be able to flood the log either).
fn refuse_by_admission(state: &GatewayState, call: IncomingCall, refusal: AdmissionRefusal) {
    let retry_after = state.config.calls.retry_after_secs.to_string();
    let source = call.info.source;
    tracing::debug!(%source, call_id = %Escaped(&call.info.call_id), reason = refusal.reason_label(), "INVITE refused by per-source admission");
    call.invite.reject(503, "Service Unavailable", &[("Retry-After", retry_after.as_str())]);
    telemetry::count_call("inbound", "refused", refusal.reason_label());
    let action = state.admission_warnings.lock().unwrap_or_else(|p| p.into_inner()).hit(Instant::now());
    if let WarningAction::Log { suppressed } = action {
        warn!(
            reason = refusal.reason_label(),
            suppressed_since_last = suppressed,
            "INVITE refused: source over its per-source limit (sip.invite_rate_per_source / calls.max_per_source)"
        );
    }
}

/// 503 + Retry-After while capacity admission says the machine is full. Logged once per
/// transition by `watch_capacity`, here only at debug level (a flood must not flood the log).
fn refuse_saturated(state: &GatewayState, call: IncomingCall) {
    let retry_after = state.config.calls.retry_after_secs.to_string();
    tracing::debug!(call_id = %Escaped(&call.info.call_id), "INVITE refused: pacing saturated");
    call.invite.reject(503, "Service Unavailable", &[("Retry-After", retry_after.as_str())]);
    telemetry::count_call("inbound", "refused", "saturated");
}

/// Capacity admission's shell: reads the media clock's lateness once per window, feeds the
/// sans-IO [`CapacityGate`], and applies its transitions: the flag `accept_call` and `/readyz`
/// read, the OPTIONS answer, the `switchboard_capacity_saturated` gauge.
async fn watch_capacity(state: Arc<GatewayState>, sip: SipEndpoint) {
    let mut gate = CapacityGate::new(state.config.calls.capacity());
    metrics::gauge!(telemetry::CAPACITY_SATURATED).set(0.0);
    let mut shutdown = state.shutdown.subscribe();
    // Four looks per window: a window is seen at most a quarter window after it ends.
    let mut tick = tokio::time::interval(LATENESS_WINDOW / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_window = 0;
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return,
            _ = tick.tick() => {}
        }
        let window = state.media_clock.lateness();
        if window.window == last_window {
            continue;
        }
        last_window = window.window;
        metrics::gauge!(telemetry::MEDIA_CLOCK_LATENESS_P99_SECONDS).set(window.p99.as_secs_f64());
        metrics::gauge!(telemetry::MEDIA_CLOCK_LATENESS_MAX_SECONDS).set(window.max.as_secs_f64());
        if let Some(transition) = gate.observe(Instant::now(), window) {
            apply_capacity(&state, &sip, transition);
        }
    }
}

/// Applies a capacity admission decision: the flag `accept_call` and `/readyz` read, the OPTIONS
/// answer, the gauge, one log line.
fn apply_capacity(state: &GatewayState, sip: &SipEndpoint, transition: Transition) {
    match transition {
        Transition::Saturated { p99 } => {
            state.capacity_saturated.store(true, Ordering::Release);
            metrics::gauge!(telemetry::CAPACITY_SATURATED).set(1.0);
            sip.set_options_response(503);
            warn!(
                p99_ms = p99.as_secs_f64() * 1000.0,
                active_calls = state.active_calls.load(Ordering::Acquire),
                "pacing saturated: refusing new calls (calls.saturation_lateness_ms)"
            );
        }
        Transition::Recovered => {
            state.capacity_saturated.store(false, Ordering::Release);
            metrics::gauge!(telemetry::CAPACITY_SATURATED).set(0.0);
            // Drain, shutdown and failure keep their 503.
            if state.ready.load(Ordering::Acquire) && state.failure().is_none() && !state.closing() {
                sip.set_options_response(200);
            }
            info!(active_calls = state.active_calls.load(Ordering::Acquire), "pacing recovered: taking calls again");
        }
    }
}

/// Watches the tasks the gateway cannot live without: the SIP endpoint (its driver and TCP accept
/// loop), the call accept loop and the admin server. The first to end (return or panic) outside
/// a shutdown marks the gateway failed: readiness and health fail at once, the OPTIONS answer
/// turns 503, calls are told to hang up, and `main` exits non-zero so systemd or Kubernetes
/// restarts the process. A gateway that cannot read SIP any more must not look healthy.
async fn supervise(
    state: Arc<GatewayState>,
    sip: SipEndpoint,
    accept_task: JoinHandle<()>,
    admin_task: Option<JoinHandle<()>>,
    fatal: watch::Sender<Option<String>>,
) {
    let admin = async {
        match admin_task {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    let mut shutdown = state.shutdown.subscribe();
    let ended = tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => return,
        stopped = sip.closed() => Ended::Sip(stopped),
        ended = accept_task => Ended::AcceptLoop(ended),
        ended = admin => Ended::Admin(ended),
    };
    let what = match ended {
        // Only `shutdown` stops the endpoint this way, and that is no failure.
        Ended::Sip(EndpointStopped::Shutdown) => return,
        Ended::Sip(stopped) => format!("SIP endpoint: {stopped}"),
        Ended::AcceptLoop(ended) => format!("call accept loop {}", describe_end(ended)),
        Ended::Admin(ended) => format!("admin server {}", describe_end(ended)),
    };
    if *state.shutdown.borrow() {
        // Tasks end during a graceful shutdown by design.
        return;
    }
    error!(failure = %what, "a task the gateway cannot live without has ended: failing readiness and exiting");
    state.fail(what.clone());
    sip.set_options_response(503);
    fatal.send_replace(Some(what));
}

/// Which supervised task ended first.
enum Ended {
    Sip(EndpointStopped),
    AcceptLoop(Result<(), tokio::task::JoinError>),
    Admin(Result<(), tokio::task::JoinError>),
}

fn describe_end(ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => "ended".to_string(),
        Err(e) if e.is_panic() => "panicked".to_string(),
        Err(_) => "was cancelled".to_string(),
    }
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drained {
    /// Every call in progress ended by itself.
    CallsEnded,
    /// `calls.drain_secs` passed with calls still up.
    TimeUp,
    /// A second stop signal: hang up at once.
    Interrupted,
}

impl Drained {
    pub fn label(self) -> &'static str {
        match self {
            Drained::CallsEnded => "calls_ended",
            Drained::TimeUp => "time_up",
            Drained::Interrupted => "interrupted",
        }
    }
}

/// The offline agent: the simulator in-process, echoing the caller. It keeps no session logs, so
/// a gateway left running on it for months does not grow.
fn offline_agent_config() -> SimConfig {
    SimConfig { behaviour: Behaviour::Echo, log_limit: 0, seed: rand::random(), ..SimConfig::default() }
}

impl RunningGateway {
    pub fn sip_udp_addr(&self) -> Option<SocketAddr> {
        self.sip.local_udp_addr()
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn active_calls(&self) -> usize {
        self.state.active_calls.load(Ordering::Acquire)
    }

    /// Completes when a task the gateway cannot live without has ended, with what ended. The
    /// caller should then [`RunningGateway::shutdown`] (calls are hung up where the SIP endpoint
    /// still can) and exit non-zero.
    pub async fn failed(&self) -> String {
        let mut fatal = self.fatal.clone();
        match fatal.wait_for(Option::is_some).await {
            Ok(what) => what.clone().unwrap_or_default(),
            // The supervisor returned without a failure (graceful shutdown): never completes.
            Err(_) => std::future::pending().await,
        }
    }

    /// Reloads re-read `path` (the file `run` was started with).
    pub fn set_config_path(&self, path: std::path::PathBuf) {
        self.state.reloader.set_path(path);
    }

    /// A handle that reloads the configuration (SIGHUP), usable from another task.
    pub fn reload_trigger(&self) -> ReloadTrigger {
        ReloadTrigger(Arc::clone(&self.state))
    }

    /// The shared state, for the crate's own tests.
    #[cfg(test)]
    pub(crate) fn state_for_test(&self) -> &Arc<GatewayState> {
        &self.state
    }

    /// Test hook: a function that makes the SIP endpoint's driver task panic, as a parser bug
    /// would.
    #[doc(hidden)]
    pub fn driver_killer_for_test(&self) -> impl FnOnce() + Send + 'static {
        let sip = self.sip.clone();
        move || sip.panic_driver_for_test()
    }

    /// Drains: new INVITEs and outbound calls get 503 + Retry-After, OPTIONS 503 and `/readyz`
    /// 503 (a dispatcher steers calls elsewhere), while the calls in progress go on until they
    /// end, `calls.drain_secs` passes or `interrupt` completes (a second SIGTERM). Then call
    /// [`RunningGateway::shutdown`], which hangs up what is left with BYE.
    pub async fn drain(&self, interrupt: impl std::future::Future<Output = ()>) -> Drained {
        let limit = Duration::from_secs(self.state.config.calls.drain_secs);
        self.state.draining.store(true, Ordering::Release);
        self.sip.set_options_response(503);
        metrics::gauge!(telemetry::DRAINING).set(1.0);
        let started = tokio::time::Instant::now();
        info!(
            active_calls = self.active_calls(),
            drain_secs = limit.as_secs(),
            "draining: taking no new calls; a second SIGTERM hangs up at once"
        );
        let calls_ended = async {
            while self.active_calls() > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        let drained = tokio::select! {
            () = calls_ended => Drained::CallsEnded,
            () = tokio::time::sleep(limit) => Drained::TimeUp,
            () = interrupt => Drained::Interrupted,
        };
        info!(
            outcome = drained.label(),
            after_ms = started.elapsed().as_millis() as u64,
            active_calls = self.active_calls(),
            "drain over"
        );
        drained
    }

    /// Stops taking calls (new INVITEs and OPTIONS get 503), hangs up every call with BYE, waits
    /// up to `grace` for the calls to finish, then closes the listeners.
    pub async fn shutdown(mut self, grace: Duration) {
        self.state.ready.store(false, Ordering::Release);
        self.sip.set_options_response(503);
        // send_replace: `send` would leave the flag unset when no task happens to watch it yet.
        self.state.shutdown.send_replace(true);
        let active = self.active_calls();
        info!(active_calls = active, "shutting down: hanging up calls");
        let deadline = tokio::time::Instant::now() + grace;
        while self.active_calls() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if self.active_calls() > 0 {
            warn!(active_calls = self.active_calls(), "calls still up after the grace period");
        }
        self.sip.shutdown().await;
        // Dropping the accept task's JoinSet aborts any call task still running.
        self.accept_abort.abort();
        // Then the recorder finishes what the calls handed it (recordings closed, sidecars and
        // CDRs written) before the process exits; an aborted call's recorder writes its records
        // as it is dropped, so give the aborts a moment to run.
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Bounded: a wedged disk must not keep the process from exiting (what is left then is
        // repaired and recovered at the next start, as after a crash).
        let records = Arc::clone(&self.state.records);
        let stopped = tokio::time::timeout(
            RECORDER_DRAIN_LIMIT,
            tokio::task::spawn_blocking(move || records.stop(Duration::from_secs(1))),
        )
        .await;
        if !matches!(stopped, Ok(Ok(()))) {
            warn!(limit_secs = RECORDER_DRAIN_LIMIT.as_secs(), "recorder did not finish writing in time");
        }
        if let Some(sim) = self.offline_agent.take() {
            sim.shutdown().await;
        }
    }
}

/// Reloads the gateway's configuration ([`crate::reload::reload`]).
#[derive(Clone)]
pub struct ReloadTrigger(Arc<GatewayState>);

impl ReloadTrigger {
    pub async fn reload(&self) -> Result<ReloadReport, ReloadError> {
        crate::reload::reload(&self.0).await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A gateway on ephemeral loopback ports with the offline agent.
    async fn start_gateway() -> RunningGateway {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(
            b"[sip]\nudp = \"127.0.0.1:0\"\ntcp = \"127.0.0.1:0\"\n[media]\nbind = \"127.0.0.1\"\n\
              [admin]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap();
        let (config, resolved) = crate::config::load_with_env(file.path(), &[]).unwrap();
        start(config, resolved, None).await.unwrap()
    }

    async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let status = response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, response.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_dead_sip_driver_fails_health_and_readiness_at_once() {
        let gateway = start_gateway().await;
        let admin = gateway.admin_addr().unwrap();
        assert_eq!(http_get(admin, "/readyz").await.0, 200);
        assert_eq!(http_get(admin, "/healthz").await.0, 200);

        gateway.driver_killer_for_test()();
        let failure = tokio::time::timeout(Duration::from_secs(5), gateway.failed()).await.unwrap();
        assert!(failure.contains("SIP driver panicked"), "{failure}");
        // By the time `failed()` completes (what main waits for), both endpoints say so.
        let (status, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("SIP driver panicked"), "{body}");
        let (status, body) = http_get(admin, "/healthz").await;
        assert_eq!(status, 503);
        assert!(body.starts_with("unhealthy"), "{body}");
        gateway.shutdown(Duration::from_secs(1)).await;
    }

    /// Sends one SIP request over UDP and returns the first final response.
    async fn sip_request(gateway: &RunningGateway, method: &str, body: &str) -> String {
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let local = socket.local_addr().unwrap();
        let target = gateway.sip_udp_addr().unwrap();
        let content_type = if body.is_empty() { "" } else { "Content-Type: application/sdp\r\n" };
        let request = format!(
            "{method} sip:100@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-{method}-cap\r\n\
             Max-Forwards: 70\r\nFrom: <sip:t@{local}>;tag=1\r\nTo: <sip:100@{target}>\r\n\
             Call-ID: cap-{method}@test\r\nCSeq: 1 {method}\r\nContact: <sip:t@{local}>\r\n\
             {content_type}Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        socket.send_to(request.as_bytes(), target).await.unwrap();
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, _) =
                tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf)).await.unwrap().unwrap();
            let text = String::from_utf8_lossy(&buf[..len]).to_string();
            if !text.starts_with("SIP/2.0 1") {
                return text;
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saturation_refuses_invites_options_and_readiness_until_recovered() {
        let gateway = start_gateway().await;
        let admin = gateway.admin_addr().unwrap();
        let offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                     m=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
        assert!(sip_request(&gateway, "OPTIONS", "").await.starts_with("SIP/2.0 200"));

        apply_capacity(&gateway.state, &gateway.sip, Transition::Saturated { p99: Duration::from_millis(30) });
        let (status, body) = http_get(admin, "/readyz").await;
        assert_eq!(status, 503);
        assert!(body.contains("saturated"), "{body}");
        assert!(sip_request(&gateway, "OPTIONS", "").await.starts_with("SIP/2.0 503"));
        let refused = sip_request(&gateway, "INVITE", offer).await;
        assert!(refused.starts_with("SIP/2.0 503"), "{refused}");
        assert!(refused.contains("Retry-After: 5"), "{refused}");
        assert_eq!(gateway.state.active_calls.load(Ordering::Acquire), 0, "refused before it cost anything");

        apply_capacity(&gateway.state, &gateway.sip, Transition::Recovered);
        assert_eq!(http_get(admin, "/readyz").await.0, 200);
        assert!(sip_request(&gateway, "OPTIONS", "").await.starts_with("SIP/2.0 200"));
        gateway.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovery_while_not_ready_keeps_options_503() {
        let gateway = start_gateway().await;
        let state = Arc::clone(&gateway.state);
        let sip = gateway.sip.clone();
        apply_capacity(&state, &sip, Transition::Saturated { p99: Duration::from_millis(30) });
        // Shutting down (ready cleared first): recovering must not reopen the door.
        state.ready.store(false, Ordering::Release);
        apply_capacity(&state, &sip, Transition::Recovered);
        assert!(sip_request(&gateway, "OPTIONS", "").await.starts_with("SIP/2.0 503"));
        gateway.shutdown(Duration::from_secs(1)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_graceful_shutdown_is_not_a_failure() {
        let gateway = start_gateway().await;
        let state = Arc::clone(&gateway.state);
        let fatal = gateway.fatal.clone();
        gateway.shutdown(Duration::from_secs(1)).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(state.failure(), None);
        assert_eq!(*fatal.borrow(), None);
    }
}
