//! The running gateway: SIP endpoint, call tasks, admin HTTP, offline agent, and shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use switchboard_realtime::client::ConnectConfig;
use switchboard_sim::{Behaviour, RunningSimulator, SimConfig, Simulator};
use switchboard_sip::{EndpointConfig, SipEndpoint, Timers};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::admin;
use crate::call::{self, CallSlot};
use crate::config::{Config, Resolved};
use crate::rtp_ports::RtpPorts;

/// What every call task shares.
pub struct GatewayState {
    pub config: Config,
    pub resolved: Resolved,
    pub realtime: ConnectConfig,
    pub rtp_ports: Arc<RtpPorts>,
    pub active_calls: AtomicUsize,
    /// Flips to true once at shutdown; every call task watches it.
    pub shutdown: watch::Sender<bool>,
    pub ready: AtomicBool,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("SIP listener: {0}")]
    Sip(#[from] switchboard_sip::EndpointError),
    #[error("admin listener on {addr}: {source}")]
    Admin { addr: SocketAddr, source: std::io::Error },
    #[error("offline agent: {0}")]
    OfflineAgent(std::io::Error),
}

pub struct RunningGateway {
    state: Arc<GatewayState>,
    sip: SipEndpoint,
    accept_task: tokio::task::JoinHandle<JoinSet<()>>,
    offline_agent: Option<RunningSimulator>,
    admin_addr: Option<SocketAddr>,
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

    let (shutdown, _) = watch::channel(false);
    let state = Arc::new(GatewayState {
        rtp_ports: RtpPorts::new(resolved.media_bind, resolved.rtp_ports.clone()),
        realtime,
        active_calls: AtomicUsize::new(0),
        shutdown,
        ready: AtomicBool::new(false),
        resolved,
        config,
    });

    let admin_addr = match state.resolved.admin_listen {
        Some(addr) => {
            let bound = admin::serve(addr, Arc::clone(&state), metrics)
                .await
                .map_err(|source| StartError::Admin { addr, source })?;
            Some(bound)
        }
        None => None,
    };

    let sip_cfg = &state.config.sip;
    let t1 = Duration::from_millis(sip_cfg.t1_ms);
    let (sip, mut incoming) = SipEndpoint::bind(EndpointConfig {
        udp: state.resolved.sip_udp,
        tcp: state.resolved.sip_tcp,
        advertised_host: state.resolved.advertised_host.or_else(|| {
            let wildcard = state.resolved.sip_udp.or(state.resolved.sip_tcp).is_some_and(|a| a.ip().is_unspecified());
            wildcard.then_some(state.resolved.media_address)
        }),
        user_agent: sip_cfg.user_agent.clone(),
        max_message_bytes: sip_cfg.max_message_bytes,
        max_headers: 100,
        timers: Timers { t1, t2: Duration::from_secs(4).max(t1), t4: Duration::from_secs(5) },
    })
    .await?;
    info!(udp = ?sip.local_udp_addr(), tcp = ?sip.local_tcp_addr(), admin = ?admin_addr, "Switchboard listening");

    let accept_state = Arc::clone(&state);
    let accept_task = tokio::spawn(async move {
        let mut calls = JoinSet::new();
        while let Some(call) = incoming.recv().await {
            if *accept_state.shutdown.borrow() {
                call::refuse_overloaded(&accept_state, call);
                continue;
            }
            match CallSlot::try_take(&accept_state) {
                Some(slot) => {
                    calls.spawn(call::handle(Arc::clone(&accept_state), call, slot));
                }
                None => call::refuse_overloaded(&accept_state, call),
            }
            while calls.try_join_next().is_some() {}
        }
        calls
    });
    state.ready.store(true, Ordering::Release);

    Ok(RunningGateway { state, sip, accept_task, offline_agent, admin_addr })
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

    /// Stops taking calls (new INVITEs and OPTIONS get 503), hangs up every call with BYE, waits
    /// up to `grace` for the calls to finish, then closes the listeners.
    pub async fn shutdown(mut self, grace: Duration) {
        self.state.ready.store(false, Ordering::Release);
        self.sip.set_options_response(503);
        let _ = self.state.shutdown.send(true);
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
        self.accept_task.abort();
        if let Some(sim) = self.offline_agent.take() {
            sim.shutdown().await;
        }
    }
}
