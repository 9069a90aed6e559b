//! The tokio shell around [`crate::core::Core`]: a UDP socket, a TCP listener with
//! Content-Length framing (RFC 3261 §18.3), one driver task, and the public async API.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Notify, mpsc, oneshot, watch};

use crate::core::{
    ByeOutcome, ConnectionId, Core, CoreConfig, CoreEvent, DialogId, DialogNotice, HangupStart, InviteId, NextHop,
    Origin, Transmit,
};
use crate::message::{StreamFrame, frame_stream};
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
        }
    }
}

/// Failure to start the endpoint.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("neither a UDP nor a TCP listen address is configured")]
    NoListener,
    #[error("cannot bind {transport:?} {addr}: {source}")]
    Bind { transport: Transport, addr: SocketAddr, source: std::io::Error },
}

/// Why our BYE did not complete cleanly. The dialog is over in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HangupError {
    #[error("no final response to BYE before Timer F")]
    Timeout,
    #[error("BYE answered with {0}")]
    Rejected(u16),
    #[error("next hop host name did not resolve")]
    Unresolvable,
    #[error("endpoint shut down")]
    Shutdown,
}

/// Dialog events for the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DialogEvent {
    /// ACK received.
    Confirmed,
    /// The caller hung up (already answered 200).
    RemoteBye,
    /// No ACK within 64*T1: the endpoint has sent BYE itself (RFC 3261 §13.3.1.4).
    AckTimeout,
}

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
    writer: mpsc::UnboundedSender<Vec<u8>>,
}

#[derive(Default)]
struct ShellState {
    invites: HashMap<InviteId, oneshot::Sender<()>>,
    dialogs: HashMap<DialogId, mpsc::UnboundedSender<DialogEvent>>,
    hangups: HashMap<DialogId, Vec<oneshot::Sender<Result<(), HangupError>>>>,
    connections: HashMap<ConnectionId, Connection>,
    next_connection: ConnectionId,
}

struct Shared {
    core: Mutex<Core>,
    state: Mutex<ShellState>,
    wake: Notify,
    udp: Option<Arc<UdpSocket>>,
    local_udp: Option<SocketAddr>,
    local_tcp: Option<SocketAddr>,
    max_message_bytes: usize,
    inbound: mpsc::UnboundedSender<(Origin, Vec<u8>)>,
    shutdown: watch::Sender<bool>,
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
}

/// Handle to the SIP endpoint; cheap to clone.
#[derive(Clone)]
pub struct SipEndpoint {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for SipEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SipEndpoint").field("udp", &self.shared.local_udp).field("tcp", &self.shared.local_tcp).finish()
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
        if cfg.udp.is_none() && cfg.tcp.is_none() {
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
        let local_udp = udp.as_ref().and_then(|s| s.local_addr().ok());
        let local_tcp = tcp.as_ref().and_then(|l| l.local_addr().ok());
        let core = Core::new(
            CoreConfig {
                timers: cfg.timers,
                user_agent: cfg.user_agent.clone(),
                udp_contact: local_udp.map(|a| advertised(a, cfg.advertised_host)),
                tcp_contact: local_tcp.map(|a| advertised(a, cfg.advertised_host)),
                max_message_bytes: cfg.max_message_bytes,
                max_headers: cfg.max_headers,
            },
            rand::random(),
        );
        let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
        let (shutdown, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            core: Mutex::new(core),
            state: Mutex::new(ShellState::default()),
            wake: Notify::new(),
            udp,
            local_udp,
            local_tcp,
            max_message_bytes: cfg.max_message_bytes,
            inbound: inbound_tx,
            shutdown,
        });
        let (calls_tx, calls_rx) = mpsc::channel(64);
        tokio::spawn(drive(shared.clone(), inbound_rx, calls_tx));
        if let Some(listener) = tcp {
            tokio::spawn(accept_loop(shared.clone(), listener));
        }
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

    /// Status answered to OPTIONS: 200 normally, 503 while draining.
    pub fn set_options_response(&self, status: u16) {
        self.shared.core().set_options_status(status);
    }

    /// Stops the driver and listeners; pending dialog handles see `None` / `Shutdown`.
    pub async fn shutdown(&self) {
        self.shared.shutdown.send_replace(true);
        let mut state = self.shared.state();
        state.invites.clear();
        state.dialogs.clear();
        state.hangups.clear();
        state.connections.clear();
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
    /// After a CANCEL the returned dialog is already ended.
    pub fn accept(mut self, sdp_answer: &str) -> Dialog {
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
        Dialog {
            shared: self.shared.clone(),
            id: dialog.unwrap_or(DialogId(0)),
            call_id,
            events: events_rx,
            ended: dialog.is_none().then_some(Ok(())),
        }
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

/// An established (or establishing) dialog on the UAS side. Dropping it without a hangup
/// sends BYE in the background.
pub struct Dialog {
    shared: Arc<Shared>,
    id: DialogId,
    call_id: String,
    events: mpsc::UnboundedReceiver<DialogEvent>,
    ended: Option<Result<(), HangupError>>,
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
            self.shared.state().hangups.entry(self.id).or_default().push(tx);
            core.hangup(Instant::now(), self.id)
        };
        match start {
            HangupStart::AlreadyEnded => {
                self.shared.state().hangups.remove(&self.id);
                self.ended = Some(Ok(()));
                return Ok(());
            }
            HangupStart::InProgress => {}
            HangupStart::NeedsResolution(hop) => spawn_resolve(self.shared.clone(), self.id, hop),
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
}

impl Drop for Dialog {
    fn drop(&mut self) {
        if self.ended.is_some() {
            return;
        }
        let start = self.shared.core().hangup(Instant::now(), self.id);
        if let HangupStart::NeedsResolution(hop) = start {
            spawn_resolve(self.shared.clone(), self.id, hop);
        }
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
async fn drive(
    shared: Arc<Shared>,
    mut inbound: mpsc::UnboundedReceiver<(Origin, Vec<u8>)>,
    calls: mpsc::Sender<IncomingCall>,
) {
    let mut shutdown = shared.shutdown.subscribe();
    // Room for oversized datagrams so the size guard sees them.
    let mut buf = vec![0u8; 65_536];
    loop {
        let deadline = shared.core().poll_timeout();
        let sleep = async {
            match deadline {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.changed() => break,
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
                    info,
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
                    call.invite.reject(503, "Service Unavailable", &[("Retry-After", "5")]);
                    rejected_any = true;
                }
            }
            CoreEvent::InviteCancelled { invite } => {
                if let Some(sender) = shared.state().invites.remove(&invite) {
                    let _ = sender.send(());
                }
            }
            CoreEvent::Dialog { dialog, notice } => {
                let event = match notice {
                    DialogNotice::Confirmed => DialogEvent::Confirmed,
                    DialogNotice::RemoteBye => DialogEvent::RemoteBye,
                    DialogNotice::AckTimeout => DialogEvent::AckTimeout,
                };
                let mut state = shared.state();
                if let Some(sender) = state.dialogs.get(&dialog) {
                    let _ = sender.send(event);
                }
                if notice == DialogNotice::RemoteBye {
                    state.dialogs.remove(&dialog);
                    for waiter in state.hangups.remove(&dialog).unwrap_or_default() {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            CoreEvent::ByeNeedsResolution { dialog, next_hop } => {
                spawn_resolve(shared.clone(), dialog, next_hop);
            }
            CoreEvent::ByeFinished { dialog, outcome } => {
                let result = match outcome {
                    ByeOutcome::Answered(_) => Ok(()),
                    ByeOutcome::Rejected(code) => Err(HangupError::Rejected(code)),
                    ByeOutcome::TimedOut => Err(HangupError::Timeout),
                    ByeOutcome::Unresolvable => Err(HangupError::Unresolvable),
                };
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
        Transport::Tcp => {
            let writer = {
                let state = shared.state();
                transmit
                    .connection
                    .and_then(|id| state.connections.get(&id))
                    .or_else(|| state.connections.values().find(|c| c.peer == transmit.destination))
                    .map(|c| c.writer.clone())
            };
            match writer {
                Some(writer) if writer.send(transmit.payload.clone()).is_ok() => {}
                _ => {
                    // §18.1.1 / §18.2.2: open a new connection to the destination.
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        match TcpStream::connect(transmit.destination).await {
                            Ok(stream) => {
                                let writer = register_connection(&shared, stream);
                                let _ = writer.send(transmit.payload);
                            }
                            Err(error) => tracing::debug!(
                                %error,
                                destination = %transmit.destination,
                                "TCP connect failed"
                            ),
                        }
                    });
                }
            }
        }
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    let mut shutdown = shared.shutdown.subscribe();
    loop {
        tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    register_connection(&shared, stream);
                }
                Err(error) => tracing::debug!(%error, "TCP accept failed"),
            },
        }
    }
}

/// Registers a TCP connection and spawns its reader and writer tasks.
fn register_connection(shared: &Arc<Shared>, stream: TcpStream) -> mpsc::UnboundedSender<Vec<u8>> {
    let _ = stream.set_nodelay(true);
    let peer = stream.peer_addr().unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (read_half, mut write_half) = stream.into_split();
    let (writer_tx, mut writer_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let id = {
        let mut state = shared.state();
        state.next_connection += 1;
        let id = state.next_connection;
        state.connections.insert(id, Connection { peer, writer: writer_tx.clone() });
        id
    };
    tokio::spawn(async move {
        while let Some(bytes) = writer_rx.recv().await {
            if write_half.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = write_half.shutdown().await;
    });
    tokio::spawn(read_loop(shared.clone(), id, peer, read_half));
    writer_tx
}

/// Per-connection read loop: frames messages by Content-Length and hands them to the driver.
async fn read_loop(
    shared: Arc<Shared>,
    id: ConnectionId,
    peer: SocketAddr,
    mut read_half: tokio::net::tcp::OwnedReadHalf,
) {
    let mut shutdown = shared.shutdown.subscribe();
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = vec![0u8; 8192];
    let origin = Origin { transport: Transport::Tcp, source: peer, connection: Some(id) };
    let mut close_after_grace = false;
    'outer: loop {
        let read = tokio::select! {
            _ = shutdown.changed() => break,
            read = read_half.read(&mut chunk) => read,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
        }
        loop {
            match frame_stream(&buf, shared.max_message_bytes) {
                StreamFrame::Incomplete => break,
                StreamFrame::Keepalive(n) => {
                    // RFC 5626 §3.5.1: answer a double-CRLF ping with a single CRLF pong.
                    let ping = buf.get(..n).unwrap_or_default().windows(4).any(|w| w == b"\r\n\r\n");
                    buf.drain(..n);
                    if ping && let Some(connection) = shared.state().connections.get(&id) {
                        let _ = connection.writer.send(b"\r\n".to_vec());
                    }
                }
                StreamFrame::Message { len, then_close } => {
                    let message: Vec<u8> = buf.drain(..len).collect();
                    let _ = shared.inbound.send((origin, message));
                    shared.wake.notify_one();
                    if then_close {
                        close_after_grace = true;
                        break 'outer;
                    }
                }
                StreamFrame::TooLarge => {
                    tracing::debug!(%peer, "oversized SIP message on TCP; closing");
                    metrics::counter!("switchboard_sip_malformed_total", "transport" => "tcp").increment(1);
                    break 'outer;
                }
            }
        }
    }
    if close_after_grace {
        // Let the 400 for the unframeable message go out before the writer closes.
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    shared.state().connections.remove(&id);
}
