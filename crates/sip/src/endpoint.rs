//! The tokio shell around [`crate::core::Core`]: a UDP socket, a TCP listener with
//! Content-Length framing (RFC 3261 §18.3), a TLS listener whose connections are framed and
//! bounded as TCP's are (RFC 3261 §26.2), one driver task, and the public async API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle};

use crate::client::{CallFailure, OutgoingCall};
use crate::core::{CancelReason, OutgoingId, OutgoingProgress, RequestId, RequestOutcome, Role};
use crate::core::{
    ConnectionId, Core, CoreConfig, CoreEvent, DialogId, HangupStart, InviteId, NextHop, Origin, Transmit,
};
use crate::message::Method;
use crate::message::{StreamFrame, frame_stream};
use crate::tls::{TlsConnect, TlsListener};
use crate::{CallInfo, Timers, Transport};

/// Endpoint configuration.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// UDP listen address (`None`: no UDP).
    pub udp: Option<SocketAddr>,
    /// TCP listen address (`None`: no TCP).
    pub tcp: Option<SocketAddr>,
    /// Host for our Contact/Via when listening on a wildcard address; default: the listen IP.
    pub advertised_host: Option<IpAddr>,
    /// `Server:` (and `User-Agent:`) header value.
    pub user_agent: String,
    /// Larger messages are dropped (UDP) or close the connection (TCP).
    pub max_message_bytes: usize,
    /// Messages with more header lines are dropped.
    pub max_headers: usize,
    /// RFC 3261 timer values.
    pub timers: Timers,
    /// `Retry-After` (seconds) on the 503 sent when the application's call backlog is full.
    pub retry_after_secs: u32,
    /// Bounds on the TCP transport (TLS connections included: they share its tables).
    pub tcp_limits: TcpLimits,
    /// TLS listener (`None`: no TLS, inbound or outbound).
    pub tls: Option<TlsListener>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            udp: Some(SocketAddr::from(([0, 0, 0, 0], 5060))),
            tcp: Some(SocketAddr::from(([0, 0, 0, 0], 5060))),
            advertised_host: None,
            user_agent: "switchboard".to_string(),
            max_message_bytes: 16 * 1024,
            max_headers: 100,
            timers: Timers::default(),
            retry_after_secs: 5,
            tcp_limits: TcpLimits::default(),
            tls: None,
        }
    }
}

/// Bounds on the TCP transport: every connection costs a file descriptor, two tasks and buffers,
/// so how many there are, how long they may idle and how much may queue for them are all capped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpLimits {
    /// A connection that receives nothing for this long is closed. RFC 5626 §3.5.1 CRLF
    /// keepalives count as traffic, so a client that wants a long-lived connection sends them.
    pub idle_timeout: Duration,
    /// Connections open at once (accepted and opened by us). Further connections are accepted
    /// and closed at once. Clamped at bind time to the process's file-descriptor limit minus a
    /// reserve (see [`fd_reserve`]), so TCP alone can never starve RTP sockets, WebSockets or the
    /// admin listener of descriptors.
    pub max_connections: usize,
    /// Connections accepted from one IP address at once.
    pub max_connections_per_address: usize,
    /// Bytes queued for a connection whose peer does not read; beyond this the connection is
    /// closed (the slow peer is disconnected, our memory is not its buffer).
    pub write_queue_bytes: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            idle_timeout: Duration::from_secs(300),
            max_connections: 1000,
            max_connections_per_address: 32,
            write_queue_bytes: 256 * 1024,
        }
    }
}

/// Descriptors kept free of TCP connections: a quarter of the limit, between 16 and 256.
pub fn fd_reserve(fd_limit: u64) -> u64 {
    (fd_limit / 4).clamp(16, 256)
}

/// The soft `RLIMIT_NOFILE` of this process, read from `/proc/self/limits` (no `unsafe` needed);
/// `None` when unknown or unlimited.
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// How the endpoint stopped: on request, or because a task it cannot live without ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointStopped {
    /// [`SipEndpoint::shutdown`] was called.
    Shutdown,
    /// The driver or the TCP accept loop ended on its own: nothing is read, answered or
    /// retransmitted any more. `panic` holds the panic message when it panicked.
    TaskEnded { task: &'static str, panic: Option<String> },
}

impl std::fmt::Display for EndpointStopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EndpointStopped::Shutdown => f.write_str("shut down"),
            EndpointStopped::TaskEnded { task, panic: Some(message) } => write!(f, "{task} panicked: {message}"),
            EndpointStopped::TaskEnded { task, panic: None } => write!(f, "{task} ended"),
        }
    }
}

/// Metric names of the SIP shell (documented in docs/metrics.md).
pub mod metric_names {
    /// TCP connections closed by the shell, by reason (`idle`, `write_queue_full`).
    pub const TCP_CLOSED_TOTAL: &str = "switchboard_sip_tcp_closed_total";
    /// TCP connections refused at accept, by reason (`max_connections`, `per_address`).
    pub const TCP_REFUSED_TOTAL: &str = "switchboard_sip_tcp_refused_total";
    /// `accept()` failures that paused the accept loop (EMFILE, ENFILE, ENOBUFS, ...).
    pub const TCP_ACCEPT_ERRORS_TOTAL: &str = "switchboard_sip_tcp_accept_errors_total";
    /// TCP connections open now.
    pub const TCP_CONNECTIONS: &str = "switchboard_sip_tcp_connections";
    /// SIP requests received, by `method`.
    pub const SIP_REQUESTS_TOTAL: &str = "switchboard_sip_requests_total";
    /// SIP responses sent, by `method` and `code`.
    pub const SIP_RESPONSES_TOTAL: &str = "switchboard_sip_responses_total";
    /// SIP messages dropped or answered 400, by `transport`.
    pub const SIP_MALFORMED_TOTAL: &str = "switchboard_sip_malformed_total";
    /// SIP requests the gateway sent (each new transaction once: no retransmission, no ACK), by
    /// `method`.
    pub const SIP_REQUESTS_SENT_TOTAL: &str = "switchboard_sip_requests_sent_total";
    /// SIP responses the gateway received (retransmissions included), by the `method` of their
    /// CSeq and `code`.
    pub const SIP_RESPONSES_RECEIVED_TOTAL: &str = "switchboard_sip_responses_received_total";
    /// TLS handshakes, by `direction` (`inbound`, `outbound`) and `outcome` (`ok`, `failed`,
    /// `timeout`).
    pub const TLS_HANDSHAKES_TOTAL: &str = "switchboard_sip_tls_handshakes_total";
    /// TLS connections open now (also counted in `switchboard_sip_tcp_connections`).
    pub const TLS_CONNECTIONS: &str = "switchboard_sip_tls_connections";
}

/// Rate-limits one repeated warning: the first occurrence is logged, later ones are counted and
/// a summary ("N more") is logged at most once per `every`. Sans-IO: time is a parameter.
#[derive(Debug, Clone)]
pub struct WarningLimiter {
    every: Duration,
    last_logged: Option<Instant>,
    suppressed: u64,
}

/// What to do with one occurrence of a rate-limited warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WarningAction {
    /// Log it; `suppressed` occurrences since the previous log line were not logged.
    Log { suppressed: u64 },
    /// Count it only.
    Suppress,
}

impl WarningLimiter {
    pub fn new(every: Duration) -> Self {
        WarningLimiter { every, last_logged: None, suppressed: 0 }
    }

    /// Records one occurrence at `now`.
    pub fn hit(&mut self, now: Instant) -> WarningAction {
        match self.last_logged {
            Some(last) if now.saturating_duration_since(last) < self.every => {
                self.suppressed = self.suppressed.saturating_add(1);
                WarningAction::Suppress
            }
            _ => {
                self.last_logged = Some(now);
                WarningAction::Log { suppressed: std::mem::take(&mut self.suppressed) }
            }
        }
    }
}

/// How often a repeated warning of the shell may reach the log.
const WARNING_EVERY: Duration = Duration::from_secs(10);

/// Failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("no UDP, TCP or TLS listen address is configured")]
    NoListener,
    #[error("cannot bind {transport:?} {addr}: {source}")]
    Bind { transport: Transport, addr: SocketAddr, source: std::io::Error },
    /// [`SipEndpoint::place_call`] on a transport we do not listen on (responses would have
    /// nowhere to come back to).
    #[error("no {0:?} listener to place a call from")]
    NoTransport(Transport),
    /// [`SipEndpoint::place_call`] with a Request-URI, To or From that is not a SIP URI.
    #[error("invalid outgoing call: {0}")]
    InvalidCall(String),
    /// The endpoint has stopped.
    #[error("endpoint shut down")]
    Shutdown,
}

pub use crate::core::{DialogEvent, HangupError};

/// A new call.
#[derive(Debug)]
pub struct IncomingCall {
    pub info: CallInfo,
    /// SDP body if the INVITE's Content-Type is application/sdp.
    pub offer: Option<String>,
    pub invite: ServerInvite,
}

struct Connection {
    peer: SocketAddr,
    /// TCP or TLS: a TLS message never goes out on a plain TCP connection to the same peer.
    transport: Transport,
    writer: ConnectionWriter,
}

/// Why a message could not be queued for a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum QueueError {
    /// The connection is gone (its writer ended).
    Closed,
    /// The peer does not read fast enough: the connection is being closed.
    Full,
}

/// The sending side of one TCP connection: a queue bounded in bytes. Over the bound the
/// connection is closed rather than the queue grown (design note 14: disconnect the slow peer).
#[derive(Clone)]
struct ConnectionWriter {
    queue: mpsc::UnboundedSender<Vec<u8>>,
    queued_bytes: Arc<AtomicUsize>,
    limit: usize,
    /// Set when a message did not fit: the reason the connection was closed.
    overflowed: Arc<AtomicBool>,
    close: Arc<watch::Sender<bool>>,
}

impl ConnectionWriter {
    fn send(&self, bytes: Vec<u8>) -> Result<(), QueueError> {
        let len = bytes.len();
        let admitted = self
            .queued_bytes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |queued| {
                queued.checked_add(len).filter(|total| *total <= self.limit)
            })
            .is_ok();
        if !admitted {
            self.overflowed.store(true, Ordering::Release);
            self.close.send_replace(true);
            return Err(QueueError::Full);
        }
        self.queue.send(bytes).map_err(|_| {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            QueueError::Closed
        })
    }
}

#[derive(Default)]
struct ShellState {
    invites: HashMap<InviteId, oneshot::Sender<()>>,
    dialogs: HashMap<DialogId, mpsc::UnboundedSender<DialogEvent>>,
    hangups: HashMap<DialogId, Vec<oneshot::Sender<Result<(), HangupError>>>>,
    /// In-dialog requests waiting for their final response.
    requests: HashMap<RequestId, oneshot::Sender<RequestOutcome>>,
    /// Calls we placed, until their final outcome.
    outgoing: HashMap<OutgoingId, mpsc::UnboundedSender<CallProgress>>,
    connections: HashMap<ConnectionId, Connection>,
    /// Open connections per peer IP; entries are removed at zero, so the map is bounded by
    /// the connection cap.
    connections_per_address: HashMap<IpAddr, usize>,
    next_connection: ConnectionId,
    /// Inbound TLS connections accepted but still in their handshake: they hold a slot of the
    /// connection caps (global and per address) until it ends.
    handshakes: usize,
    /// How to verify the TLS peers we placed calls to, by address, for the connections opened
    /// to them later (a BYE after the first connection closed). Bounded by [`MAX_TLS_PEERS`].
    tls_peers: HashMap<SocketAddr, TlsConnect>,
}

/// TLS peers remembered at once (one per trunk address in practice).
const MAX_TLS_PEERS: usize = 256;

/// Rate-limited warnings of the shell, one limiter per kind.
struct ShellWarnings {
    refused: WarningLimiter,
    accept_error: WarningLimiter,
    write_queue_full: WarningLimiter,
    tls_handshake: WarningLimiter,
}

struct Shared {
    core: Mutex<Core>,
    state: Mutex<ShellState>,
    wake: Notify,
    udp: Option<Arc<UdpSocket>>,
    local_udp: Option<SocketAddr>,
    local_tcp: Option<SocketAddr>,
    local_tls: Option<SocketAddr>,
    /// For TLS connections we open to a peer with no [`TlsConnect`] of its own: the system's
    /// trust store. Present when TLS is configured.
    tls_client_default: Option<Arc<rustls::ClientConfig>>,
    tls_handshake_timeout: Duration,
    /// Per-source TLS configurations (a trunk's client-certificate CA), if any.
    tls_per_source: Option<crate::tls::ConfigForSource>,
    max_message_bytes: usize,
    retry_after: String,
    tcp_limits: TcpLimits,
    /// Messages framed by the TCP readers, bounded: a full queue stops the readers (TCP
    /// backpressure) instead of growing.
    inbound: mpsc::Sender<(Origin, Vec<u8>)>,
    shutdown: watch::Sender<bool>,
    /// Set once, when the driver or the accept loop has ended (see [`SipEndpoint::closed`]).
    stopped: watch::Sender<Option<EndpointStopped>>,
    /// Test hook: the driver panics on its next turn.
    panic_requested: AtomicBool,
    warnings: Mutex<ShellWarnings>,
}

/// Locks a mutex, recovering from poisoning (a panicked holder cannot leave the core
/// half-updated in a way worse than stopping the endpoint).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        lock(&self.core)
    }

    fn state(&self) -> MutexGuard<'_, ShellState> {
        lock(&self.state)
    }

    /// Whether the endpoint is stopping or stopped: nothing sent now would go out.
    fn is_down(&self) -> bool {
        *self.shutdown.borrow() || self.stopped.borrow().is_some()
    }

    /// Logs a rate-limited warning (first one, then a summary at most every [`WARNING_EVERY`]).
    fn warn_limited(&self, pick: fn(&mut ShellWarnings) -> &mut WarningLimiter, message: &str) {
        let action = pick(&mut lock(&self.warnings)).hit(Instant::now());
        if let WarningAction::Log { suppressed } = action {
            tracing::warn!(suppressed_since_last = suppressed, "{message}");
        }
    }
}

/// Handle to the SIP endpoint; cheap to clone.
#[derive(Clone)]
pub struct SipEndpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SipEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipEndpoint")
            .field("udp", &self.shared.local_udp)
            .field("tcp", &self.shared.local_tcp)
            .field("tls", &self.shared.local_tls)
            .finish()
    }
}

fn advertised(addr: SocketAddr, host: Option<IpAddr>) -> SocketAddr {
    if let Some(host) = host {
        return SocketAddr::new(host, addr.port());
    }
    if addr.ip().is_unspecified() {
        tracing::warn!(%addr, "listening on a wildcard address without advertised_host; Contact will be unroutable");
    }
    addr
}

impl SipEndpoint {
    /// Binds the listeners and starts the driver task. Incoming calls arrive on the receiver.
    pub async fn bind(cfg: EndpointConfig) -> Result<(SipEndpoint, mpsc::Receiver<IncomingCall>), EndpointError> {
        if cfg.udp.is_none() && cfg.tcp.is_none() && cfg.tls.is_none() {
            return Err(EndpointError::NoListener);
        }
        let udp = match cfg.udp {
            Some(addr) => Some(Arc::new(UdpSocket::bind(addr).await.map_err(|source| EndpointError::Bind {
                transport: Transport::Udp,
                addr,
                source,
            })?)),
            None => None,
        };
        let tcp = match cfg.tcp {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| EndpointError::Bind {
                transport: Transport::Tcp,
                addr,
                source,
            })?),
            None => None,
        };
        let tls = match &cfg.tls {
            Some(tls) => {
                let listener = TcpListener::bind(tls.addr).await.map_err(|source| EndpointError::Bind {
                    transport: Transport::Tls,
                    addr: tls.addr,
                    source,
                })?;
                Some((listener, tokio_rustls::TlsAcceptor::from(tls.config.clone())))
            }
            None => None,
        };
        let local_udp = udp.as_ref().and_then(|s| s.local_addr().ok());
        let local_tcp = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let local_tls = tls.as_ref().and_then(|(l, _)| l.local_addr().ok());
        let tls_client_default = match &cfg.tls {
            Some(_) => crate::tls::client_config(crate::tls::ServerTrust::Roots(crate::tls::system_roots()))
                .map(Arc::new)
                .map_err(|e| tracing::warn!(error = %e, "no default TLS client configuration"))
                .ok(),
            None => None,
        };
        let core = Core::new(
            CoreConfig {
                timers: cfg.timers,
                user_agent: cfg.user_agent.clone(),
                udp_contact: local_udp.map(|a| advertised(a, cfg.advertised_host)),
                tcp_contact: local_tcp.map(|a| advertised(a, cfg.advertised_host)),
                tls_contact: local_tls.map(|a| advertised(a, cfg.advertised_host)),
                max_message_bytes: cfg.max_message_bytes,
                max_headers: cfg.max_headers,
            },
            rand::random(),
        );
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let (shutdown, _) = watch::channel(false);
        let (stopped, _) = watch::channel(None);
        let mut tcp_limits = cfg.tcp_limits;
        if let Some(fd_limit) = open_file_limit() {
            let budget = usize::try_from(fd_limit.saturating_sub(fd_reserve(fd_limit))).unwrap_or(usize::MAX);
            if budget < tcp_limits.max_connections {
                tracing::info!(
                    fd_limit,
                    configured = tcp_limits.max_connections,
                    effective = budget,
                    "TCP connection cap lowered to fit the file-descriptor limit"
                );
                tcp_limits.max_connections = budget;
            }
        }
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            state: Mutex::new(ShellState::default()),
            wake: Notify::new(),
            udp,
            local_udp,
            local_tcp,
            local_tls,
            tls_client_default,
            tls_handshake_timeout: cfg
                .tls
                .as_ref()
                .map_or(crate::tls::DEFAULT_HANDSHAKE_TIMEOUT, |t| t.handshake_timeout),
            tls_per_source: cfg.tls.as_ref().and_then(|t| t.per_source.clone()),
            max_message_bytes: cfg.max_message_bytes,
            retry_after: cfg.retry_after_secs.to_string(),
            tcp_limits,
            inbound: inbound_tx,
            shutdown,
            stopped,
            panic_requested: AtomicBool::new(false),
            warnings: Mutex::new(ShellWarnings {
                refused: WarningLimiter::new(WARNING_EVERY),
                accept_error: WarningLimiter::new(WARNING_EVERY),
                write_queue_full: WarningLimiter::new(WARNING_EVERY),
                tls_handshake: WarningLimiter::new(WARNING_EVERY),
            }),
        });
        let (calls_tx, calls_rx) = mpsc::channel(64);
        let driver = tokio::spawn(drive(shared.clone(), inbound_rx, calls_tx));
        let mut acceptors = Vec::new();
        if let Some(listener) = tcp {
            acceptors.push(("SIP TCP accept loop", tokio::spawn(accept_loop(shared.clone(), listener, None))));
        }
        if let Some((listener, acceptor)) = tls {
            let task = tokio::spawn(accept_loop(shared.clone(), listener, Some(acceptor)));
            acceptors.push(("SIP TLS accept loop", task));
        }
        tokio::spawn(supervise(shared.clone(), driver, acceptors));
        Ok((SipEndpoint { shared }, calls_rx))
    }

    /// The bound UDP address.
    pub fn local_udp_addr(&self) -> Option<SocketAddr> {
        self.shared.local_udp
    }

    /// The bound TCP address.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        self.shared.local_tcp
    }

    /// The bound TLS address.
    pub fn local_tls_addr(&self) -> Option<SocketAddr> {
        self.shared.local_tls
    }

    /// Status answered to OPTIONS: 200 normally, 503 while draining.
    pub fn set_options_response(&self, status: u16) {
        self.shared.core().set_options_status(status);
    }

    /// Stops the driver and listeners; pending dialog handles see `None` / `Shutdown`.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        release_waiters(&self.shared);
    }

    /// Completes when the endpoint has stopped: after [`SipEndpoint::shutdown`], or at once when
    /// the driver task or the TCP accept loop ends or panics. From then on no SIP message is
    /// read or answered; the application must treat it as fatal (fail readiness, exit, let the
    /// supervisor restart the process). Cancel-safe.
    pub async fn closed(&self) -> EndpointStopped {
        let mut stopped = self.shared.stopped.subscribe();
        match stopped.wait_for(Option::is_some).await {
            Ok(value) => value.clone().unwrap_or(EndpointStopped::Shutdown),
            // The sender lives in `Shared`, which `self` keeps alive: not reachable.
            Err(_) => EndpointStopped::Shutdown,
        }
    }

    /// Whether the endpoint has stopped (see [`SipEndpoint::closed`]).
    pub fn stopped(&self) -> Option<EndpointStopped> {
        self.shared.stopped.borrow().clone()
    }

    /// Test hook: makes the driver task panic on its next turn, as a parser bug would.
    #[doc(hidden)]
    pub fn panic_driver_for_test(&self) {
        self.shared.panic_requested.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }

    /// Places a call (RFC 3261 §13.2.1): sends our INVITE with the SDP offer to
    /// `call.destination` and returns the handle that reports its progress.
    pub fn place_call(&self, call: OutgoingCall) -> Result<ClientInvite, EndpointError> {
        let has_listener = match call.transport {
            Transport::Udp => self.shared.udp.is_some(),
            Transport::Tcp => self.shared.local_tcp.is_some(),
            Transport::Tls => self.shared.local_tls.is_some(),
        };
        if !has_listener {
            return Err(EndpointError::NoTransport(call.transport));
        }
        if let (Transport::Tls, Some(connect)) = (call.transport, &call.tls) {
            let mut state = self.shared.state();
            if state.tls_peers.len() >= MAX_TLS_PEERS && !state.tls_peers.contains_key(&call.destination) {
                // More distinct peers than trunks exist: forget one; a later connection to it
                // falls back to the system trust store (and fails rather than trusts less).
                if let Some(old) = state.tls_peers.keys().next().copied() {
                    state.tls_peers.remove(&old);
                }
            }
            state.tls_peers.insert(call.destination, connect.clone());
        }
        let (progress_tx, progress_rx) = mpsc::unbounded_channel();
        let (id, call_id) = {
            let mut core = self.shared.core();
            let mut state = self.shared.state();
            if self.shared.is_down() {
                return Err(EndpointError::Shutdown);
            }
            let placed = core.place_call(Instant::now(), call).map_err(EndpointError::InvalidCall)?;
            // Registered under the core lock so that no event for this call can be missed.
            state.outgoing.insert(placed.id, progress_tx);
            (placed.id, placed.call_id)
        };
        self.shared.wake.notify_one();
        Ok(ClientInvite { shared: self.shared.clone(), id, call_id, progress: progress_rx, finished: None })
    }

    /// TCP connections open now.
    pub fn tcp_connections(&self) -> usize {
        self.shared.state().connections.len()
    }

    /// The TCP connection cap in force (the configured one, lowered to fit the fd limit).
    pub fn tcp_max_connections(&self) -> usize {
        self.shared.tcp_limits.max_connections
    }
}

/// Messages framed by TCP readers waiting for the driver.
const INBOUND_QUEUE: usize = 256;

/// Drops every waiter so pending `Dialog`/`ServerInvite` futures end (`None`, `Shutdown`)
/// instead of waiting for a driver that will never answer them.
fn release_waiters(shared: &Shared) {
    let mut state = shared.state();
    state.invites.clear();
    state.dialogs.clear();
    state.hangups.clear();
    state.outgoing.clear();
    state.requests.clear();
    for connection in state.connections.values() {
        connection.writer.close.send_replace(true);
    }
}

/// Watches the driver and the accept loops. Whichever ends first (returns or panics) stops the
/// endpoint: a SIP stack without its driver answers nothing and fires no timer, and one without
/// an accept loop silently refuses TCP or TLS; both must be reported, not hidden behind a live
/// process.
async fn supervise(shared: Arc<Shared>, driver: JoinHandle<()>, mut acceptors: Vec<(&'static str, JoinHandle<()>)>) {
    let first_acceptor_to_end = std::future::poll_fn(|cx| {
        for (name, handle) in acceptors.iter_mut() {
            if let std::task::Poll::Ready(result) = std::pin::Pin::new(handle).poll(cx) {
                return std::task::Poll::Ready((*name, result));
            }
        }
        std::task::Poll::Pending
    });
    let (task, result) = tokio::select! {
        result = driver => ("SIP driver", result),
        ended = first_acceptor_to_end => ended,
    };
    let stopped = if *shared.shutdown.borrow() {
        EndpointStopped::Shutdown
    } else {
        let stopped = EndpointStopped::TaskEnded { task, panic: result.err().map(describe_join_error) };
        tracing::error!(reason = %stopped, "SIP endpoint stopped");
        stopped
    };
    // Stop the other task too: a half-working endpoint is worse than a stopped one.
    shared.shutdown.send_replace(true);
    shared.stopped.send_replace(Some(stopped));
    release_waiters(&shared);
}

fn describe_join_error(error: JoinError) -> String {
    if !error.is_panic() {
        return "cancelled".to_string();
    }
    let payload = error.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string())
}

/// One step of a call we placed.
#[derive(Debug)]
pub enum CallProgress {
    /// 1xx (other than 100 Trying, which only stops retransmissions).
    Provisional { status: u16, reason: String },
    /// 2xx: the dialog is confirmed and the ACK already sent.
    Answered { dialog: Dialog, sdp_answer: String },
    /// The call did not connect.
    Failed(CallFailure),
}

/// A call we placed ([`SipEndpoint::place_call`]). Dropping it before a final response
/// cancels the call (CANCEL after a 1xx; a 2xx that arrives anyway is ACKed and BYEd).
pub struct ClientInvite {
    shared: Arc<Shared>,
    id: OutgoingId,
    call_id: String,
    progress: mpsc::UnboundedReceiver<CallProgress>,
    /// The final outcome once seen: returned again by later [`ClientInvite::progress`] calls.
    finished: Option<Finished>,
}

#[derive(Debug, Clone)]
enum Finished {
    Answered,
    Failed(CallFailure),
}

impl std::fmt::Debug for ClientInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientInvite").field("id", &self.id).field("call_id", &self.call_id).finish()
    }
}

impl ClientInvite {
    /// The next step of the call. After a final one: a failure is returned again; after
    /// `Answered` (the dialog has been handed out) this pends forever. Cancel-safe.
    pub async fn progress(&mut self) -> CallProgress {
        match &self.finished {
            Some(Finished::Failed(failure)) => return CallProgress::Failed(failure.clone()),
            Some(Finished::Answered) => return std::future::pending().await,
            None => {}
        }
        let step = self.progress.recv().await.unwrap_or_else(|| {
            CallProgress::Failed(CallFailure::Unreachable { reason: "endpoint shut down".to_string() })
        });
        match &step {
            CallProgress::Provisional { .. } => {}
            CallProgress::Answered { .. } => self.finished = Some(Finished::Answered),
            CallProgress::Failed(failure) => self.finished = Some(Finished::Failed(failure.clone())),
        }
        step
    }

    /// Cancels the call: CANCEL once a 1xx has arrived (RFC 3261 §9.1; before that the CANCEL
    /// is held back). The outcome becomes [`CallFailure::Cancelled`] unless the call already
    /// ended. Idempotent.
    pub fn cancel(&self) {
        self.shared.core().cancel_call(Instant::now(), self.id, CancelReason::Caller);
        self.shared.wake.notify_one();
    }

    /// The call's Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }
}

impl Drop for ClientInvite {
    fn drop(&mut self) {
        if self.finished.is_none() {
            self.shared.core().cancel_call(Instant::now(), self.id, CancelReason::Caller);
            self.shared.wake.notify_one();
        }
        self.shared.state().outgoing.remove(&self.id);
    }
}

/// A pending incoming INVITE. Dropping it unanswered rejects the call with 500.
pub struct ServerInvite {
    shared: Arc<Shared>,
    id: InviteId,
    cancelled: Option<oneshot::Receiver<()>>,
    was_cancelled: bool,
    answered: bool,
}

impl std::fmt::Debug for ServerInvite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerInvite").field("id", &self.id).finish()
    }
}

impl ServerInvite {
    /// Sends 180 Ringing (with our To-tag and the Record-Route set).
    pub fn ringing(&self) {
        self.shared.core().ringing(self.id);
        self.shared.wake.notify_one();
    }

    /// Rejects the call with a final status (300-699), e.g.
    /// `(503, "Service Unavailable", &[("Retry-After", "5")])`. No-op after CANCEL.
    pub fn reject(mut self, status: u16, reason: &str, extra_headers: &[(&str, &str)]) {
        self.answered = true;
        self.shared.core().reject(Instant::now(), self.id, status, reason, extra_headers);
        self.shared.state().invites.remove(&self.id);
        self.shared.wake.notify_one();
    }

    /// Answers 200 OK with our SDP (Contact, Record-Route mirrored), retransmitted until ACK.
    /// `None` when the INVITE is no longer pending: the caller cancelled it first (the CANCEL
    /// race; 487 already sent).
    pub fn accept(mut self, sdp_answer: &str) -> Option<Dialog> {
        self.answered = true;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let (dialog, call_id) = {
            let mut core = self.shared.core();
            let dialog = core.accept(Instant::now(), self.id, sdp_answer);
            let call_id = dialog.and_then(|d| core.dialog_call_id(d)).unwrap_or_default().to_string();
            let mut state = self.shared.state();
            state.invites.remove(&self.id);
            if let Some(dialog) = dialog {
                // Registered under the core lock so no event for this dialog can be missed.
                state.dialogs.insert(dialog, events_tx);
            }
            (dialog, call_id)
        };
        self.shared.wake.notify_one();
        let id = dialog?;
        Some(Dialog { shared: self.shared.clone(), id, call_id, events: events_rx, ended: None, role: Role::Uas })
    }

    /// Completes when the caller cancelled (200 to CANCEL and 487 already sent).
    /// Cancel-safe; pends forever if the call is never cancelled.
    pub async fn cancelled(&mut self) {
        if self.was_cancelled {
            return;
        }
        match self.cancelled.as_mut() {
            Some(receiver) => {
                if receiver.await.is_ok() {
                    self.was_cancelled = true;
                    self.cancelled = None;
                } else {
                    self.cancelled = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

impl Drop for ServerInvite {
    fn drop(&mut self) {
        if !self.answered && !self.was_cancelled {
            self.shared.core().reject(Instant::now(), self.id, 500, "Server Internal Error", &[]);
            self.shared.state().invites.remove(&self.id);
            self.shared.wake.notify_one();
        }
    }
}

/// A dialog (RFC 3261 §12), of a call we answered (UAS) or placed (UAC). Dropping it without
/// a hangup sends BYE in the background.
pub struct Dialog {
    shared: Arc<Shared>,
    id: DialogId,
    call_id: String,
    events: mpsc::UnboundedReceiver<DialogEvent>,
    ended: Option<Result<(), HangupError>>,
    role: Role,
}

impl std::fmt::Debug for Dialog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialog").field("id", &self.id).field("call_id", &self.call_id).finish()
    }
}

impl Dialog {
    /// Next dialog event; `None` once the dialog is over and all events were read.
    /// Cancel-safe.
    pub async fn next_event(&mut self) -> Option<DialogEvent> {
        if self.ended.is_some() && self.events.is_empty() {
            return None;
        }
        self.events.recv().await
    }

    /// Sends BYE per the route set and waits for the final response or Timer F. Idempotent.
    pub async fn hangup(&mut self) -> Result<(), HangupError> {
        if let Some(result) = &self.ended {
            return result.clone();
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut core = self.shared.core();
            let mut state = self.shared.state();
            // Checked under the state lock: `release_waiters` runs after the flags are set, so a
            // waiter registered here is either released by it or never registered.
            if self.shared.is_down() {
                self.ended = Some(Err(HangupError::Shutdown));
                return Err(HangupError::Shutdown);
            }
            state.hangups.entry(self.id).or_default().push(tx);
            drop(state);
            core.hangup(Instant::now(), self.id)
        };
        match start {
            HangupStart::AlreadyEnded => {
                self.shared.state().hangups.remove(&self.id);
                self.ended = Some(Ok(()));
                return Ok(());
            }
            HangupStart::InProgress => {}
        }
        self.shared.wake.notify_one();
        let result = rx.await.unwrap_or(Err(HangupError::Shutdown));
        self.ended = Some(result.clone());
        result
    }

    /// The dialog's Call-ID.
    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    /// Whether we placed the call (UAC) or answered it (UAS).
    pub fn role(&self) -> Role {
        self.role
    }

    /// Sends a request inside the dialog (REFER, INFO, NOTIFY, OPTIONS, UPDATE, re-INVITE...)
    /// with extra headers (`Content-Type` among them when `body` is not empty) and waits for
    /// its final response (status and reason) or Timer F. BYE is [`Dialog::hangup`].
    pub async fn send_request(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String), RequestError> {
        if matches!(method, Method::Bye | Method::Ack | Method::Cancel) {
            return Err(RequestError::NotAllowed(method));
        }
        if self.ended.is_some() {
            return Err(RequestError::Ended);
        }
        self.requester().send_request(method, headers, body).await
    }

    /// A handle that sends requests in this dialog from another task (a REFER whose final
    /// response is awaited while this dialog's events are read). It cannot hang up; once the
    /// dialog is over its requests fail with [`RequestError::Ended`].
    pub fn requester(&self) -> DialogRequester {
        DialogRequester { shared: Arc::clone(&self.shared), id: self.id }
    }
}

/// Sends requests in a dialog without owning it ([`Dialog::requester`]).
#[derive(Clone)]
pub struct DialogRequester {
    shared: Arc<Shared>,
    id: DialogId,
}

impl std::fmt::Debug for DialogRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DialogRequester").field("id", &self.id).finish()
    }
}

impl DialogRequester {
    /// Our URI in the dialog (`None` once it is over).
    pub fn local_uri(&self) -> Option<String> {
        self.shared.core().dialog_local_uri(self.id)
    }

    /// As [`Dialog::send_request`].
    pub async fn send_request(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, String), RequestError> {
        if matches!(method, Method::Bye | Method::Ack | Method::Cancel) {
            return Err(RequestError::NotAllowed(method));
        }
        let hop = self.shared.core().dialog_next_hop(self.id).ok_or(RequestError::Ended)?;
        let destination = match hop.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, hop.port),
            Err(_) => tokio::net::lookup_host((hop.host.as_str(), hop.port))
                .await
                .ok()
                .and_then(|mut addrs| addrs.next())
                .ok_or(RequestError::Unresolvable)?,
        };
        let (tx, rx) = oneshot::channel();
        {
            let mut core = self.shared.core();
            let mut state = self.shared.state();
            if self.shared.is_down() {
                return Err(RequestError::Shutdown);
            }
            let request = core
                .send_request(Instant::now(), self.id, destination, method, headers, body)
                .ok_or(RequestError::Ended)?;
            // Registered under the core lock: its outcome cannot be missed.
            state.requests.insert(request, tx);
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(RequestOutcome::Answered { status, reason }) => Ok((status, reason)),
            Ok(RequestOutcome::TimedOut) => Err(RequestError::Timeout),
            Err(_) => Err(RequestError::Shutdown),
        }
    }
}

/// Why an in-dialog request got no final response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("{0} is not sent with send_request")]
    NotAllowed(Method),
    #[error("the dialog is over or ending")]
    Ended,
    #[error("next hop host name did not resolve")]
    Unresolvable,
    #[error("no final response before Timer F")]
    Timeout,
    #[error("endpoint shut down")]
    Shutdown,
}

impl Drop for Dialog {
    fn drop(&mut self) {
        if self.ended.is_some() {
            return;
        }
        // A host-name next hop comes back as an event the driver resolves.
        self.shared.core().hangup(Instant::now(), self.id);
        self.shared.state().dialogs.remove(&self.id);
        self.shared.wake.notify_one();
    }
}

/// Resolves a host-name next hop (only possible off the core), then sends the BYE.
fn spawn_resolve(shared: Arc<Shared>, dialog: DialogId, hop: NextHop) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        shared.core().bye_unresolvable(dialog);
        return;
    };
    runtime.spawn(async move {
        let resolved =
            tokio::net::lookup_host((hop.host.as_str(), hop.port)).await.ok().and_then(|mut addrs| addrs.next());
        {
            let mut core = shared.core();
            match resolved {
                Some(addr) => core.send_bye(Instant::now(), dialog, addr),
                None => core.bye_unresolvable(dialog),
            }
        }
        shared.wake.notify_one();
    });
}

async fn recv_udp(socket: Option<&Arc<UdpSocket>>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

/// The driver: one task owning all socket reads for the core and all timer firing.
async fn drive(shared: Arc<Shared>, mut inbound: mpsc::Receiver<(Origin, Vec<u8>)>, calls: mpsc::Sender<IncomingCall>) {
    let mut shutdown = shared.shutdown.subscribe();
    // Room for oversized datagrams so the size guard sees them.
    let mut buf = vec![0u8; 65_536];
    loop {
        if shared.panic_requested.load(Ordering::Acquire) {
            panic!("SIP driver panic requested by the test hook");
        }
        let deadline = shared.core().poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            received = recv_udp(shared.udp.as_ref(), &mut buf) => match received {
                Ok((len, source)) => {
                    let origin = Origin { transport: Transport::Udp, source, connection: None };
                    shared.core().handle_message(Instant::now(), origin, buf.get(..len).unwrap_or_default());
                }
                Err(error) => tracing::debug!(%error, "UDP receive error"),
            },
            Some((origin, bytes)) = inbound.recv() => {
                shared.core().handle_message(Instant::now(), origin, &bytes);
            }
            _ = shared.wake.notified() => {}
            _ = sleep => shared.core().handle_timeout(Instant::now()),
        }
        flush(&shared, &calls).await;
    }
}

/// Sends queued transmits and dispatches queued events.
async fn flush(shared: &Arc<Shared>, calls: &mpsc::Sender<IncomingCall>) {
    let (transmits, events) = {
        let mut core = shared.core();
        let mut transmits = Vec::new();
        while let Some(t) = core.poll_transmit() {
            transmits.push(t);
        }
        let mut events = Vec::new();
        while let Some(e) = core.poll_event() {
            events.push(e);
        }
        (transmits, events)
    };
    for transmit in transmits {
        send(shared, transmit).await;
    }
    let mut rejected_any = false;
    for event in events {
        match event {
            CoreEvent::IncomingCall { invite, info, offer } => {
                let (cancel_tx, cancel_rx) = oneshot::channel();
                shared.state().invites.insert(invite, cancel_tx);
                let call = IncomingCall {
                    info: *info,
                    offer,
                    invite: ServerInvite {
                        shared: shared.clone(),
                        id: invite,
                        cancelled: Some(cancel_rx),
                        was_cancelled: false,
                        answered: false,
                    },
                };
                if let Err(error) = calls.try_send(call) {
                    // Application backlog full or gone: shed load with 503.
                    let call = match error {
                        mpsc::error::TrySendError::Full(call) | mpsc::error::TrySendError::Closed(call) => call,
                    };
                    call.invite.reject(503, "Service Unavailable", &[("Retry-After", shared.retry_after.as_str())]);
                    rejected_any = true;
                }
            }
            CoreEvent::InviteCancelled { invite } => {
                if let Some(sender) = shared.state().invites.remove(&invite) {
                    let _ = sender.send(());
                }
            }
            CoreEvent::Dialog { dialog, notice: event } => {
                let mut state = shared.state();
                let remote_bye = event == DialogEvent::RemoteBye;
                if let Some(sender) = state.dialogs.get(&dialog) {
                    let _ = sender.send(event);
                }
                if remote_bye {
                    state.dialogs.remove(&dialog);
                    for waiter in state.hangups.remove(&dialog).unwrap_or_default() {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            CoreEvent::Outgoing { call, progress } => {
                let step = match progress {
                    OutgoingProgress::Provisional { status, reason } => CallProgress::Provisional { status, reason },
                    OutgoingProgress::Failed(failure) => CallProgress::Failed(failure),
                    OutgoingProgress::Answered { dialog, sdp_answer } => {
                        let (events_tx, events_rx) = mpsc::unbounded_channel();
                        let call_id = shared.core().dialog_call_id(dialog).unwrap_or_default().to_string();
                        shared.state().dialogs.insert(dialog, events_tx);
                        let dialog = Dialog {
                            shared: shared.clone(),
                            id: dialog,
                            call_id,
                            events: events_rx,
                            ended: None,
                            role: Role::Uac,
                        };
                        CallProgress::Answered { dialog, sdp_answer }
                    }
                };
                let last = !matches!(step, CallProgress::Provisional { .. });
                let sender = {
                    let mut state = shared.state();
                    if last { state.outgoing.remove(&call) } else { state.outgoing.get(&call).cloned() }
                };
                // Sent with no lock held: when the ClientInvite is gone the step is dropped
                // here, and a dropped Dialog hangs up (which takes the locks).
                if let Some(sender) = sender {
                    let _ = sender.send(step);
                }
            }
            CoreEvent::RequestFinished { request, outcome, .. } => {
                if let Some(waiter) = shared.state().requests.remove(&request) {
                    let _ = waiter.send(outcome);
                }
            }
            CoreEvent::ByeNeedsResolution { dialog, next_hop } => {
                spawn_resolve(shared.clone(), dialog, next_hop);
            }
            CoreEvent::ByeFinished { dialog, outcome: result } => {
                let mut state = shared.state();
                state.dialogs.remove(&dialog);
                for waiter in state.hangups.remove(&dialog).unwrap_or_default() {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }
    if rejected_any {
        // The rejections queued transmits; send them on the next turn.
        shared.wake.notify_one();
    }
}

async fn send(shared: &Arc<Shared>, transmit: Transmit) {
    match transmit.transport {
        Transport::Udp => {
            let Some(socket) = &shared.udp else {
                tracing::debug!("no UDP socket for an outgoing UDP message");
                return;
            };
            if let Err(error) = socket.send_to(&transmit.payload, transmit.destination).await {
                tracing::debug!(%error, destination = %transmit.destination, "UDP send failed");
            }
        }
        Transport::Tcp | Transport::Tls => {
            let writer = {
                let state = shared.state();
                transmit
                    .connection
                    .and_then(|id| state.connections.get(&id))
                    .or_else(|| {
                        state
                            .connections
                            .values()
                            .find(|c| c.peer == transmit.destination && c.transport == transmit.transport)
                    })
                    .map(|c| c.writer.clone())
            };
            let queued = match writer {
                Some(writer) => writer.send(transmit.payload.clone()),
                None => Err(QueueError::Closed),
            };
            match queued {
                Ok(()) => {}
                Err(QueueError::Full) => {
                    // The peer does not read: its connection is being closed; a new one to the
                    // same peer would only queue the same way.
                    shared.warn_limited(
                        |w| &mut w.write_queue_full,
                        "TCP peer does not read its responses: write queue full, connection closed",
                    );
                }
                Err(QueueError::Closed) => {
                    // §18.1.1 / §18.2.2: open a new connection to the destination.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        let destination = transmit.destination;
                        match connect(&shared, transmit.transport, destination).await {
                            Ok(writer) => {
                                let _ = writer.send(transmit.payload);
                            }
                            Err(error) => {
                                tracing::debug!(%error, %destination, transport = transmit.transport.as_lower(), "connect failed");
                                // §17.1.1.2 / §17.1.2.2: a transport error ends our requests to
                                // that peer now instead of at Timer B or F.
                                shared.core().transport_failed(destination);
                                shared.wake.notify_one();
                            }
                        }
                    });
                }
            }
        }
    }
}

/// Opens a connection to `destination` (TCP, or TLS with the handshake bounded by the handshake
/// timeout) and registers it.
async fn connect(
    shared: &Arc<Shared>,
    transport: Transport,
    destination: SocketAddr,
) -> std::io::Result<ConnectionWriter> {
    let stream = TcpStream::connect(destination).await?;
    if transport != Transport::Tls {
        let _ = stream.set_nodelay(true);
        let (read_half, write_half) = stream.into_split();
        return Ok(register_connection(shared, read_half, write_half, destination, Transport::Tcp));
    }
    let peer = shared.state().tls_peers.get(&destination).cloned();
    let connect = match peer {
        Some(connect) => connect,
        None => {
            let config = shared
                .tls_client_default
                .clone()
                .ok_or_else(|| std::io::Error::other("no TLS client configuration"))?;
            TlsConnect { config, server_name: rustls::pki_types::ServerName::IpAddress(destination.ip().into()) }
        }
    };
    let _ = stream.set_nodelay(true);
    let connector = tokio_rustls::TlsConnector::from(connect.config);
    let handshake = tokio::time::timeout(shared.tls_handshake_timeout, connector.connect(connect.server_name, stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            count_handshake("outbound", "failed");
            shared.warn_limited(|w| &mut w.tls_handshake, "TLS handshake failed");
            tracing::debug!(%error, %destination, "outbound TLS handshake failed");
            return Err(error);
        }
        Err(_) => {
            count_handshake("outbound", "timeout");
            shared.warn_limited(|w| &mut w.tls_handshake, "TLS handshake timed out");
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out"));
        }
    };
    count_handshake("outbound", "ok");
    let (read_half, write_half) = tokio::io::split(tls);
    Ok(register_connection(shared, read_half, write_half, destination, Transport::Tls))
}

fn count_handshake(direction: &'static str, outcome: &'static str) {
    metrics::counter!(metric_names::TLS_HANDSHAKES_TOTAL, "direction" => direction, "outcome" => outcome).increment(1);
}

/// An inbound TLS connection in its handshake: holds a slot of the connection caps (global and
/// per address) until dropped, so that handshakes cannot outnumber the caps.
struct HandshakeSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl HandshakeSlot {
    fn take(shared: &Arc<Shared>, ip: IpAddr) -> HandshakeSlot {
        let mut state = shared.state();
        state.handshakes += 1;
        *state.connections_per_address.entry(ip).or_default() += 1;
        HandshakeSlot { shared: shared.clone(), ip }
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        state.handshakes = state.handshakes.saturating_sub(1);
        if let Some(count) = state.connections_per_address.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.connections_per_address.remove(&self.ip);
            }
        }
    }
}

/// The server side of a TLS handshake, bounded in time; a failure is counted and logged
/// (rate-limited) and the connection dropped, nothing else.
async fn accept_tls(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
) {
    let _ = stream.set_nodelay(true);
    let mut shutdown = shared.shutdown.subscribe();
    // A trunk that must show a client certificate is known by its source address.
    let acceptor = match shared.tls_per_source.as_ref().and_then(|select| select.config_for(peer.ip())) {
        Some(config) => tokio_rustls::TlsAcceptor::from(config),
        None => acceptor,
    };
    let handshake = tokio::time::timeout(shared.tls_handshake_timeout, acceptor.accept(stream));
    let outcome = tokio::select! {
        _ = shutdown.wait_for(|stop| *stop) => return,
        outcome = handshake => outcome,
    };
    match outcome {
        Ok(Ok(tls)) => {
            count_handshake("inbound", "ok");
            drop(slot);
            let (read_half, write_half) = tokio::io::split(tls);
            register_connection(&shared, read_half, write_half, peer, Transport::Tls);
        }
        Ok(Err(error)) => {
            count_handshake("inbound", "failed");
            shared.warn_limited(|w| &mut w.tls_handshake, "TLS handshake failed");
            tracing::debug!(%peer, %error, "inbound TLS handshake failed");
        }
        Err(_) => {
            count_handshake("inbound", "timeout");
            shared.warn_limited(|w| &mut w.tls_handshake, "TLS handshake timed out");
            tracing::debug!(%peer, "inbound TLS handshake timed out");
        }
    }
}

/// Accepts TCP connections (with `tls`: TLS connections, whose handshake then runs in a task of
/// its own) within the caps. Errors that concern one connection (reset before
/// accept) are skipped; any other error, typically EMFILE/ENFILE at the descriptor limit, pauses
/// the loop with a growing back-off: the pending connection stays in the kernel's backlog, so
/// retrying at once would fail again at once and spin a core (measured: 119 % before this).
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut backoff = AcceptBackoff::default();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.reset();
                match (admit_connection(&shared, peer.ip()), &tls) {
                    (Ok(()), None) => {
                        let _ = stream.set_nodelay(true);
                        let (read_half, write_half) = stream.into_split();
                        register_connection(&shared, read_half, write_half, peer, Transport::Tcp);
                    }
                    (Ok(()), Some(acceptor)) => {
                        let slot = HandshakeSlot::take(&shared, peer.ip());
                        tokio::spawn(accept_tls(shared.clone(), acceptor.clone(), stream, peer, slot));
                    }
                    (Err(reason), _) => {
                        // Accepted only to be closed: the descriptor is released at once and
                        // the peer learns (RST/FIN) instead of waiting in the backlog.
                        drop(stream);
                        metrics::counter!(metric_names::TCP_REFUSED_TOTAL, "reason" => reason).increment(1);
                        shared.warn_limited(|w| &mut w.refused, "TCP connection refused: connection cap reached");
                        tracing::debug!(%peer, reason, "TCP connection refused");
                    }
                }
            }
            Err(error) if is_per_connection_error(&error) => {
                tracing::debug!(%error, "TCP accept: connection gone before accept");
            }
            Err(error) => {
                let pause = backoff.next_pause();
                metrics::counter!(metric_names::TCP_ACCEPT_ERRORS_TOTAL).increment(1);
                shared.warn_limited(|w| &mut w.accept_error, "TCP accept failing (descriptor limit?): backing off");
                tracing::debug!(%error, pause_ms = pause.as_millis() as u64, "TCP accept failed");
                tokio::select! {
                    _ = shutdown.wait_for(|stop| *stop) => break,
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Errors of `accept()` that concern only the connection being accepted (Linux accept(2)).
fn is_per_connection_error(error: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        error.kind(),
        ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::ConnectionRefused
            | ErrorKind::Interrupted
    )
}

/// Pause after a failed `accept()`: 10 ms, doubling up to 1 s; reset by the next success.
#[derive(Debug, Default)]
struct AcceptBackoff {
    failures: u32,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(10);
    const MAX: Duration = Duration::from_secs(1);

    fn next_pause(&mut self) -> Duration {
        let pause = Self::FIRST.saturating_mul(1u32 << self.failures.min(16)).min(Self::MAX);
        self.failures = self.failures.saturating_add(1);
        pause
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// Checks the global and per-address caps for a new inbound connection.
fn admit_connection(shared: &Shared, ip: IpAddr) -> Result<(), &'static str> {
    let state = shared.state();
    let limits = &shared.tcp_limits;
    if state.connections.len().saturating_add(state.handshakes) >= limits.max_connections {
        return Err("max_connections");
    }
    if state.connections_per_address.get(&ip).copied().unwrap_or(0) >= limits.max_connections_per_address {
        return Err("per_address");
    }
    Ok(())
}

/// Removes a connection from the tables when its read loop ends, however it ends.
struct Registration {
    shared: Arc<Shared>,
    id: ConnectionId,
    ip: IpAddr,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut state = self.shared.state();
        if let Some(connection) = state.connections.remove(&self.id) {
            connection.writer.close.send_replace(true);
        }
        if let Some(count) = state.connections_per_address.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                state.connections_per_address.remove(&self.ip);
            }
        }
        set_connection_gauges(&state);
    }
}

fn set_connection_gauges(state: &ShellState) {
    metrics::gauge!(metric_names::TCP_CONNECTIONS).set(state.connections.len() as f64);
    let tls = state.connections.values().filter(|c| c.transport == Transport::Tls).count();
    metrics::gauge!(metric_names::TLS_CONNECTIONS).set(tls as f64);
}

/// Registers a TCP or TLS connection (its two halves) and spawns its reader and writer tasks.
fn register_connection<R, W>(
    shared: &Arc<Shared>,
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    transport: Transport,
) -> ConnectionWriter
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (queue, queue_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let (close, _) = watch::channel(false);
    let writer = ConnectionWriter {
        queue,
        queued_bytes: Arc::new(AtomicUsize::new(0)),
        limit: shared.tcp_limits.write_queue_bytes,
        overflowed: Arc::new(AtomicBool::new(false)),
        close: Arc::new(close),
    };
    let id = {
        let mut state = shared.state();
        state.next_connection += 1;
        let id = state.next_connection;
        state.connections.insert(id, Connection { peer, transport, writer: writer.clone() });
        *state.connections_per_address.entry(peer.ip()).or_default() += 1;
        set_connection_gauges(&state);
        id
    };
    let registration = Registration { shared: shared.clone(), id, ip: peer.ip() };
    tokio::spawn(write_loop(writer.clone(), queue_rx, write_half));
    let origin = Origin { transport, source: peer, connection: Some(id) };
    tokio::spawn(read_loop(shared.clone(), registration, origin, read_half, writer.clone()));
    writer
}

/// Per-connection writer: sends queued messages in order until the connection is closed.
async fn write_loop<W: AsyncWrite + Unpin>(
    writer: ConnectionWriter,
    mut queue: mpsc::UnboundedReceiver<Vec<u8>>,
    mut write_half: W,
) {
    let mut close = writer.close.subscribe();
    loop {
        let bytes = tokio::select! {
            _ = close.wait_for(|closed| *closed) => break,
            bytes = queue.recv() => match bytes {
                Some(bytes) => bytes,
                None => break,
            },
        };
        let len = bytes.len();
        // A peer that does not read blocks this write; the close signal (queue over its bound,
        // idle timeout, shutdown) must still get through.
        let written = tokio::select! {
            _ = close.wait_for(|closed| *closed) => break,
            written = write_half.write_all(&bytes) => written,
        };
        writer.queued_bytes.fetch_sub(len, Ordering::AcqRel);
        if written.is_err() {
            writer.close.send_replace(true);
            break;
        }
    }
    // A connection closed in good order (the peer closed its side, a 400 before closing) still
    // gets what was already queued for it, within a short bound; a slow peer gets nothing more.
    if !writer.overflowed.load(Ordering::Acquire) {
        let drain = async {
            while let Ok(bytes) = queue.try_recv() {
                if write_half.write_all(&bytes).await.is_err() {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(CLOSE_DRAIN_TIME, drain).await;
    }
    let _ = write_half.shutdown().await;
}

/// How long a closing connection may take to send what was queued before it closed.
const CLOSE_DRAIN_TIME: Duration = Duration::from_secs(1);

/// Per-connection read loop: frames messages by Content-Length and hands them to the driver.
async fn read_loop<R: AsyncRead + Unpin>(
    shared: Arc<Shared>,
    registration: Registration,
    origin: Origin,
    mut read_half: R,
    writer: ConnectionWriter,
) {
    let peer = origin.source;
    let mut shutdown = shared.shutdown.subscribe();
    let mut close = writer.close.subscribe();
    let idle_timeout = shared.tcp_limits.idle_timeout;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 8192];
    let mut close_after_grace = false;
    'outer: loop {
        let read = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = close.wait_for(|closed| *closed) => {
                if writer.overflowed.load(Ordering::Acquire) {
                    metrics::counter!(metric_names::TCP_CLOSED_TOTAL, "reason" => "write_queue_full").increment(1);
                    tracing::debug!(%peer, "TCP peer does not read; closing");
                }
                break;
            }
            read = tokio::time::timeout(idle_timeout, read_half.read(&mut chunk)) => match read {
                Ok(read) => read,
                // A connection that carries a call stays open however quiet it is: the caller
                // (behind NAT, perhaps) can only get our BYE on it.
                Err(_) if shared.core().connection_in_use(registration.id) => continue 'outer,
                Err(_) => {
                    metrics::counter!(metric_names::TCP_CLOSED_TOTAL, "reason" => "idle").increment(1);
                    tracing::debug!(%peer, "TCP connection idle; closing");
                    break;
                }
            },
        };
        let n = match read {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        loop {
            match frame_stream(&buf, shared.max_message_bytes) {
                StreamFrame::Incomplete => break,
                StreamFrame::Keepalive(n) => {
                    // RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong.
                    let ping = buf.get(..n).unwrap_or_default().windows(4).any(|w| w == b"\r\n\r\n");
                    buf.drain(..n.min(buf.len()));
                    if ping {
                        let _ = writer.send(b"\r\n".to_vec());
                    }
                }
                StreamFrame::Message { len, then_close } => {
                    let message: Vec<u8> = buf.drain(..len.min(buf.len())).collect();
                    // Awaited: when the driver is behind, this reader stops reading and TCP
                    // flow control slows the peer down.
                    if shared.inbound.send((origin, message)).await.is_err() {
                        break 'outer;
                    }
                    shared.wake.notify_one();
                    if then_close {
                        close_after_grace = true;
                        break 'outer;
                    }
                }
                StreamFrame::TooLarge => {
                    tracing::debug!(%peer, transport = origin.transport.as_lower(), "oversized SIP message; closing");
                    metrics::counter!(metric_names::SIP_MALFORMED_TOTAL, "transport" => origin.transport.as_lower())
                        .increment(1);
                    break 'outer;
                }
            }
        }
    }
    if close_after_grace {
        // Let the 400 for the unframeable message go out before the writer closes.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(registration);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_log_the_first_then_a_summary_per_period() {
        let start = Instant::now();
        let mut limiter = WarningLimiter::new(Duration::from_secs(10));
        assert_eq!(limiter.hit(start), WarningAction::Log { suppressed: 0 });
        for ms in 1..=5 {
            assert_eq!(limiter.hit(start + Duration::from_millis(ms)), WarningAction::Suppress);
        }
        assert_eq!(limiter.hit(start + Duration::from_secs(10)), WarningAction::Log { suppressed: 5 });
        assert_eq!(limiter.hit(start + Duration::from_secs(11)), WarningAction::Suppress);
        assert_eq!(limiter.hit(start + Duration::from_secs(30)), WarningAction::Log { suppressed: 1 });
    }

    #[test]
    fn accept_backoff_doubles_to_a_ceiling_and_resets() {
        let mut backoff = AcceptBackoff::default();
        let pauses: Vec<u64> = (0..10).map(|_| backoff.next_pause().as_millis() as u64).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(10));
    }

    #[test]
    fn open_file_limit_is_read_from_proc_limits() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max cpu time              unlimited            unlimited            seconds   \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(parse_open_file_limit(limits), Some(1024));
        assert_eq!(parse_open_file_limit("Max open files unlimited unlimited files"), None);
        assert_eq!(fd_reserve(1024), 256);
        assert_eq!(fd_reserve(40), 16);
        assert_eq!(fd_reserve(20_000), 256);
    }
}
