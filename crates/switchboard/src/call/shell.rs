//! The conversation of one answered call, inbound or outbound: the thin async shell around the
//! sans-IO [`CallCore`]. It only moves bytes and time:
//!
//! - RTP received on the leg's socket, Realtime events, dialog events, operator hang-up and
//!   shutdown go into the core with `Instant::now()`;
//! - the core's outbound RTP is paced and sent by the gateway's one [`MediaClock`] (the core sits
//!   behind an `Arc<Mutex<..>>` that implements [`Paced`]; nobody holds the lock across an await);
//! - the core's Realtime events go through a bounded queue to a writer task, so the pacer never
//!   waits on the network ([`RealtimeWriter`]);
//! - the core's other outputs (hang up, DTMF, taps, the end) are carried out here;
//! - a second media leg (a bridged transfer's human) is attached and detached here (`shell/legs.rs`).

mod legs;
mod reoffer;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use switchboard_realtime::client::{ClientError, RealtimeReceiver, RealtimeSender};
use switchboard_realtime::events::{ClientEvent, ServerEvent};
use switchboard_sip::{Dialog, DialogEvent};
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{Instrument, debug, info, warn};

use super::core::agent_control::{ControlConfig, TalkConfig};
use super::core::barge_in::{BargeInConfig, BargeInMode};
use super::core::meter::Prices;
use super::core::{CALLER, CallCore, CoreConfig, DialogInput, Output, Resilience, first_audio, parse_info_dtmf};
use super::end::CallEnd;
use super::journal::CallJournal;
use super::prompt::LocalPrompt;
use super::reconnect::{self, ReconnectPolicy};
use super::renegotiate::SdpSession;
use super::session::ConfirmedAudio;
use super::tools::ToolRunner;
use super::{Established, OpenSession, open_session, session};
use crate::app::GatewayState;
use crate::config::{AgentConfig, BargeInChoice, RealtimeConfig};
use crate::media_clock::{ClockRegistration, MediaClock, Paced, RtpTransmit};
use crate::recording::CallRecorder;
use crate::telemetry;
use switchboard_media::Codec;
use switchboard_realtime::history::HistoryLimits;

/// Transfer to a human: the shell's side.
mod transfer_link;
use super::transfer::TRANSFER_TOOL;
use transfer_link::TransferLink;

/// `input_audio_buffer.append` events waiting for the writer at most: one second of 20 ms
/// packets. Policy when full: the new append is dropped and counted
/// (`switchboard_realtime_appends_dropped_total`); the model hears a gap, the pacer never waits.
pub const AUDIO_QUEUE: usize = 50;

/// Control events (truncate, response.create, ping) waiting for the writer at most. They are
/// never dropped: a full control queue means the writer has been stuck for a long time, and
/// ends the call as an upstream fault.
pub const CONTROL_QUEUE: usize = 32;

/// Runs an answered call to its end and says why: the agent greets first, then the caller and
/// the agent talk until either side (or the operator, or shutdown) ends it. Sends BYE when the
/// end is ours, closes the WebSocket and frees the RTP port.
pub async fn converse(state: &Arc<GatewayState>, call: Established) -> CallEnd {
    let Established { direction, facts, agent, mut dialog, media, socket, port_lease, session, hangup, settings, sdp } =
        call;
    let OpenSession { sender, receiver: mut realtime_rx, confirmed, codec: _, expires_at } = session;
    let session_opened = Instant::now();
    let cfg = &settings.config;
    let realtime_cfg = &cfg.realtime;
    let watchdog = Duration::from_secs(realtime_cfg.watchdog_secs);
    let mut writer = RealtimeWriter::spawn(sender, watchdog);
    // The recording (if the agent records), the transcript, the open-call marker and the CDR.
    let mut recorder = state.records.call(&facts, agent.record, media.codec, session_opened);

    // Two handles on one socket: the call's task receives, the media clock sends (non-blocking).
    let sockets = socket.set_nonblocking(true).and_then(|()| {
        let clock_socket = Arc::new(socket.try_clone()?);
        Ok((tokio::net::UdpSocket::from_std(socket)?, clock_socket))
    });
    let rtcp_socket = sockets.as_ref().ok().and_then(|(_, clock_socket)| bind_rtcp(clock_socket));
    let end = match sockets {
        Err(e) => CallEnd::MediaSetupFailed(format!("RTP socket: {e}")),
        Ok((socket, clock_socket)) => {
            let core_config = CoreConfig {
                rtp_timeout: Duration::from_secs(cfg.media.rtp_timeout_secs),
                ping_interval: Duration::from_secs(realtime_cfg.ping_interval_secs),
                watchdog,
                max_queued_audio: Duration::from_secs(realtime_cfg.max_queued_audio_secs),
                greeting: Some(agent.greeting.clone()).filter(|g| !g.is_empty()),
                apology: Some(agent.apology.clone()).filter(|a| !a.is_empty()),
                apology_min_interval: Duration::from_secs(agent.apology_min_interval_secs),
                model_output: session::model_format(confirmed.output, media.codec),
                taps: recorder.records_audio(),
                talk: talk_config(&agent),
                resilience: resilience(realtime_cfg),
            };
            let caller = legs::leg_config(cfg, &media, confirmed);
            let mut core = CallCore::new(Instant::now(), core_config, caller);
            let tools = ToolRunner::new(&agent, &facts);
            core.set_tool_names(tools.names());
            core.set_mcp_approvals(
                agent.mcp.iter().map(|(label, s)| (label.clone(), s.allowed_tools.0.clone())).collect(),
            );
            if let Some(audio) =
                super::tools::filler_audio(&agent, session::model_format(confirmed.output, media.codec))
            {
                core.set_filler(Duration::from_millis(agent.filler_after_ms), audio);
            }
            core.set_rollover_at(rollover_deadline(realtime_cfg, session_opened, expires_at));
            core.measure_first_audio_from(first_audio::origin_of(&facts), direction.label());
            core.set_transfer_rules(TransferLink::rules(&agent));
            // From here on the call takes operator commands (`POST /v1/calls/{id}/transfer`).
            let commands = state.calls.accept_commands(&facts.id);
            let transfer = TransferLink::new(&agent, &facts.id, &facts.agent, dialog.requester(), commands);
            let core = SharedCore(Arc::new(Mutex::new(core)));
            let media_loop = MediaLoop {
                core,
                clock: &state.media_clock,
                clock_socket,
                socket,
                writer: &mut writer,
                realtime_rx: &mut realtime_rx,
                dialog: &mut dialog,
                shutdown: state.shutdown.subscribe(),
                hangup,
                prices: realtime_cfg.prices(),
                rtcp_socket,
                registration: None,
                human: None,
                journal: CallJournal::new(session_opened),
                tools,
                transfer,
                recorder: &mut recorder,
                sdp,
                link: Link {
                    state,
                    settings: &settings,
                    agent: &agent,
                    codec: media.codec,
                    confirmed,
                    policy: resilience(realtime_cfg).policy,
                    up: true,
                    reconnecting: None,
                    standby: None,
                },
            };
            media_loop.run().await
        }
    };
    recorder.finish(&end);
    if end.needs_bye()
        && let Err(e) = dialog.hangup().await
    {
        warn!(error = %e, "BYE failed");
    }
    writer.close().await;
    drop(port_lease);
    debug!(direction = direction.label(), "conversation over");
    end
}

/// The call core's reconnect settings from `[realtime]`.
fn resilience(cfg: &RealtimeConfig) -> Resilience {
    let policy = (cfg.reconnect_give_up_secs > 0).then(|| ReconnectPolicy {
        initial_delay: Duration::from_millis(cfg.reconnect_initial_ms),
        max_delay: Duration::from_millis(cfg.reconnect_max_ms),
        give_up_after: Duration::from_secs(cfg.reconnect_give_up_secs),
    });
    Resilience {
        policy,
        // Checked with the configuration: a bad file never reaches a call (it would play nothing).
        reconnect_prompt: LocalPrompt::from_setting(&cfg.reconnect_prompt).unwrap_or(LocalPrompt::Silence),
        give_up_prompt: LocalPrompt::from_setting(&cfg.give_up_prompt).unwrap_or(LocalPrompt::Silence),
        history: HistoryLimits { max_chars: cfg.replay_budget_chars, max_turns: cfg.replay_budget_turns },
        caller_transcripts: !cfg.transcription_model.is_empty(),
    }
}

/// When a session opened at `opened` is rolled over ([`reconnect::rollover_at`]).
fn rollover_deadline(cfg: &RealtimeConfig, opened: Instant, expires_at: Option<i64>) -> Option<Instant> {
    let now_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let expires_in =
        expires_at.and_then(|at| u64::try_from(at).ok()).map(|at| Duration::from_secs(at.saturating_sub(now_unix)));
    let session_max = (cfg.session_max_secs > 0).then(|| Duration::from_secs(cfg.session_max_secs));
    reconnect::rollover_at(opened, session_max, expires_in)
}

/// Retries for a rollover's new session when mid-call reconnecting is off.
const ROLLOVER_RETRIES: ReconnectPolicy = ReconnectPolicy {
    initial_delay: Duration::from_millis(500),
    max_delay: Duration::from_secs(5),
    give_up_after: Duration::from_secs(60),
};

/// The AI connection of a call, replaceable mid-call: what a reconnect needs to open the same
/// session again, and the reconnect in progress.
struct Link<'a> {
    state: &'a Arc<GatewayState>,
    /// The call's configuration snapshot (`reload.rs`).
    settings: &'a Arc<crate::reload::Settings>,
    agent: &'a AgentConfig,
    codec: Codec,
    /// The formats the call's media pipeline was built for: a new session must confirm the same.
    confirmed: ConfirmedAudio,
    policy: Option<ReconnectPolicy>,
    /// Whether the current connection is usable (its receiver and writer are read).
    up: bool,
    reconnecting: Option<AbortOnDrop<OpenSession>>,
    /// A rollover's new session, confirmed and waiting for a turn boundary.
    standby: Option<OpenSession>,
}

/// A spawned task aborted when its handle is dropped (the call ended while reconnecting).
struct AbortOnDrop<T>(JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Opens the call's session again until one is confirmed in the same audio formats, with the
/// policy's backoff between attempts; runs until it succeeds or is aborted (the core decides
/// when to give up). Every attempt is a full `open_session` (connect, the same
/// `session.update`, `session.updated`) bounded by `realtime.connect_timeout_ms`.
async fn reconnect_until_confirmed(
    state: Arc<GatewayState>,
    settings: Arc<crate::reload::Settings>,
    agent: AgentConfig,
    codec: Codec,
    confirmed: ConfirmedAudio,
    policy: ReconnectPolicy,
) -> OpenSession {
    let mut attempt: u32 = 0;
    loop {
        tokio::time::sleep(policy.delay_before(attempt, rand::random::<f64>())).await;
        attempt = attempt.saturating_add(1);
        match open_session(&state, &settings, &agent, codec).await {
            Ok(session) if session.confirmed == confirmed => {
                debug!(attempt, "Realtime session reopened");
                return session;
            }
            Ok(session) => {
                warn!(attempt, confirmed = ?session.confirmed, "reopened session confirmed other audio formats; retrying");
                session.close_in_background();
            }
            Err(refusal) => info!(attempt, reason = ?refusal, "Realtime reconnect attempt failed"),
        }
    }
}

/// The call core shared with the media clock. Never locked across an await.
#[derive(Clone)]
pub(super) struct SharedCore(Arc<Mutex<CallCore>>);

impl SharedCore {
    pub(super) fn lock(&self) -> MutexGuard<'_, CallCore> {
        // A panic while the lock was held leaves a core we still want to end the call with.
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Contract M: the media clock runs the core's pacers on time and sends what they produce.
impl Paced for CallCore {
    fn handle_timeout(&mut self, now: Instant) {
        self.handle_media_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.poll_media_timeout()
    }

    fn poll_transmit(&mut self) -> Option<RtpTransmit> {
        // Each leg's packets leave on its own socket (`MediaLoop::attach_leg`).
        CallCore::poll_transmit(self).map(|t| RtpTransmit {
            leg: t.leg.0,
            destination: t.destination,
            packet: t.packet,
        })
    }

    fn wants_task(&self) -> bool {
        self.has_urgent_output() || self.needs_encoding()
    }
}

pub(super) struct MediaLoop<'a> {
    pub(super) core: SharedCore,
    clock: &'a Arc<MediaClock>,
    clock_socket: Arc<std::net::UdpSocket>,
    socket: tokio::net::UdpSocket,
    writer: &'a mut RealtimeWriter,
    realtime_rx: &'a mut RealtimeReceiver,
    dialog: &'a mut Dialog,
    shutdown: watch::Receiver<bool>,
    hangup: watch::Receiver<bool>,
    /// For the estimated cost in the end-of-call line.
    prices: Prices,
    /// The RTP port + 1 (RFC 3550 §11), if it could be bound: RTCP both ways.
    rtcp_socket: Option<tokio::net::UdpSocket>,
    /// Tool calls and transfers, for the sidecar and the CDR.
    pub(super) journal: CallJournal,
    /// The call's recording, transcript and records (`crate::recording`).
    recorder: &'a mut CallRecorder,
    link: Link<'a>,
    /// The call's webhook tools running in the background (call/tools).
    pub(super) tools: ToolRunner,
    /// The call's place in the media clock (set by `run`): legs attach their sockets to it.
    registration: Option<ClockRegistration>,
    /// A second media leg (a bridged transfer's human), if attached ([`legs`]).
    human: Option<legs::AttachedLeg>,
    /// Transfer to a human (`call/transfer/`).
    transfer: TransferLink,
    /// The call's SDP state: the caller's re-offers are answered from it ([`reoffer`]).
    sdp: SdpSession,
}

impl MediaLoop<'_> {
    async fn run(mut self) -> CallEnd {
        let task_wake = Arc::new(Notify::new());
        // Dropped with `self` when this function returns: the clock stops serving the call.
        self.registration =
            Some(self.clock.register(Arc::clone(&self.core.0), Arc::clone(&self.clock_socket), Arc::clone(&task_wake)));
        let mut recv_buf = vec![0u8; 2048];
        let mut leg_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 1500];
        // Recorded per packet: looked up once.
        let inbound_processing = metrics::histogram!(telemetry::INBOUND_PROCESSING_SECONDS);
        let outbound_processing = metrics::histogram!(telemetry::OUTBOUND_PROCESSING_SECONDS);
        loop {
            // Carry out what the core asked for; the lock is released before any await.
            let outputs: Vec<Output> = {
                let mut core = self.core.lock();
                core.encode_ahead();
                core.handle_realtime_traffic(self.realtime_rx.last_frame_at());
                std::iter::from_fn(|| core.poll_output()).collect()
            };
            for output in outputs {
                match output {
                    Output::Realtime(event) => {
                        if let Err(end) = self.writer.send(Instant::now(), event) {
                            self.core.lock().handle_realtime_closed(Instant::now(), end);
                        }
                    }
                    Output::Ping => {
                        if let Err(end) = self.writer.ping() {
                            self.core.lock().handle_realtime_closed(Instant::now(), end);
                        }
                    }
                    // BYE is sent by `converse` once the end is known (`CallEnd::needs_bye`).
                    Output::Hangup => {}
                    // Not logged: digits can be a PIN. The core tells the model (dtmf_to_model.rs).
                    Output::Dtmf { leg, duration, .. } => {
                        debug!(leg = leg.0, duration_ms = duration.as_millis() as u64, "DTMF event received")
                    }
                    // To the recorder's writer thread (bounded queue: dropped, never waited for).
                    Output::Tap(tap) => self.recorder.tap(tap),
                    Output::Ended(end) => {
                        self.recorder.on_end(&self.journal);
                        self.log_stats();
                        return end;
                    }
                    Output::Reconnect => {
                        self.drop_link();
                        match self.link.standby.take() {
                            // A rollover's session is ready: the loss costs no connect at all.
                            Some(next) => self.resume(next).await,
                            None => self.spawn_reopen(),
                        }
                    }
                    Output::Rollover => self.spawn_reopen(),
                    Output::LegLost(leg) => {
                        self.on_leg_lost(leg);
                        self.transfer_leg_lost(leg);
                    }
                    Output::Tool(call) if call.name == TRANSFER_TOOL => self.start_transfer(call),
                    Output::Transfer(signal) => self.on_transfer_signal(signal),
                    Output::Tool(call) => self.run_tool(call),
                }
            }
            self.send_rtcp();
            if self.link.up && self.link.standby.is_some() && self.core.lock().at_turn_boundary() {
                self.switch().await;
            }
            let task_due = self.core.lock().poll_task_timeout();
            let task_due = task_due.map(tokio::time::Instant::from_std);
            let transfer_due = self.transfer.deadline().map(tokio::time::Instant::from_std);

            tokio::select! {
                biased;

                // The media clock left outputs (taps, an end) for this task.
                () = task_wake.notified() => {}

                received = self.socket.recv_from(&mut recv_buf) => {
                    let Ok((len, source)) = received else { continue };
                    let now = Instant::now();
                    if let Some(datagram) = recv_buf.get(..len) {
                        self.core.lock().handle_rtp(now, CALLER, source, datagram);
                    }
                    inbound_processing.record(now.elapsed().as_secs_f64());
                }

                received = recv_rtcp(self.rtcp_socket.as_ref(), &mut rtcp_buf) => {
                    if let Ok((len, source)) = received
                        && let Some(datagram) = rtcp_buf.get(..len)
                    {
                        self.core.lock().handle_rtcp(Instant::now(), CALLER, source, datagram);
                    }
                }

                // The attached leg's RTP and RTCP (a bridged human), if any.
                (leg, received, rtcp) = legs::recv(self.human.as_ref(), &mut leg_buf) => {
                    if let Ok((len, source)) = received
                        && let Some(datagram) = leg_buf.get(..len)
                    {
                        let mut core = self.core.lock();
                        if rtcp {
                            core.handle_rtcp(Instant::now(), leg, source, datagram);
                        } else {
                            core.handle_rtp(Instant::now(), leg, source, datagram);
                        }
                    }
                }

                reopened = async {
                    match self.link.reconnecting.as_mut() {
                        Some(task) => (&mut task.0).await,
                        None => std::future::pending().await,
                    }
                }, if self.link.reconnecting.is_some() => {
                    self.link.reconnecting = None;
                    match reopened {
                        // A rollover: switch at the next turn boundary.
                        Ok(session) if self.link.up => {
                            debug!("next Realtime session ready; switching at the next turn boundary");
                            self.link.standby = Some(session);
                        }
                        Ok(session) => self.resume(session).await,
                        Err(e) => {
                            warn!(error = %e, "Realtime reconnect task failed");
                            self.core.lock().handle_realtime_closed(Instant::now(), CallEnd::AgentDisconnected(format!("reconnect task failed: {e}")));
                        }
                    }
                }

                event = self.realtime_rx.recv(), if self.link.up => {
                    let now = Instant::now();
                    match realtime_input(event) {
                        RealtimeInput::Event(event) => {
                            let is_audio = matches!(*event, ServerEvent::OutputAudioDelta(_));
                            self.recorder.observe(now, &event);
                            self.core.lock().handle_realtime(now, *event);
                            if is_audio {
                                outbound_processing.record(now.elapsed().as_secs_f64());
                            }
                        }
                        RealtimeInput::Ignore => {}
                        RealtimeInput::Closed(end) => self.core.lock().handle_realtime_closed(now, end),
                    }
                }

                result = self.tools.next_result(), if self.tools.is_running() => self.finish_tool(result),

                failed = self.writer.failed(), if self.link.up => self.core.lock().handle_realtime_closed(Instant::now(), failed),

                input = self.transfer.next() => self.on_transfer_input(input),

                _ = async { if let Some(due) = transfer_due { sleep_until(due).await } }, if transfer_due.is_some() => {
                    self.on_transfer_timeout();
                }

                _ = async { if let Some(due) = task_due { sleep_until(due).await } }, if task_due.is_some() => {
                    // Pongs are consumed inside `recv` and only show in `last_frame_at`: the
                    // watchdog must see the latest one before it judges.
                    let mut core = self.core.lock();
                    core.handle_realtime_traffic(self.realtime_rx.last_frame_at());
                    core.handle_task_timeout(Instant::now());
                }

                event = self.dialog.next_event() => {
                    let input = match event {
                        Some(DialogEvent::Confirmed) => DialogInput::Confirmed,
                        Some(DialogEvent::RemoteBye) | None => DialogInput::RemoteBye,
                        Some(DialogEvent::AckTimeout) => DialogInput::AckTimeout,
                        Some(DialogEvent::Info { content_type, body }) => match parse_info_dtmf(&content_type, &body) {
                            Ok((digit, duration)) => DialogInput::Dtmf { digit, duration },
                            Err(why) => {
                                debug!(?why, "SIP INFO without a key ignored");
                                continue;
                            }
                        },
                        Some(DialogEvent::Notify { subscription_state, body, .. }) => {
                            self.on_refer_notify(&subscription_state, &body);
                            continue;
                        }
                        // Never: the gateway's dialogs do not accept REFERs (they get 501).
                        Some(DialogEvent::Refer { .. }) => continue,
                        Some(DialogEvent::Reoffer { id, kind, sdp }) => {
                            self.on_reoffer(id, kind, sdp.as_deref());
                            continue;
                        }
                        Some(DialogEvent::Answer { sdp }) => {
                            self.on_answer_in_ack(sdp.as_deref());
                            continue;
                        }
                        Some(DialogEvent::SessionExpired { cause }) => {
                            warn!(?cause, "session timer expired; the SIP layer sent BYE");
                            DialogInput::SessionExpired
                        }
                    };
                    if input == DialogInput::RemoteBye {
                        self.transfer_caller_left();
                    }
                    self.core.lock().handle_dialog(Instant::now(), input);
                }

                // `wait_for` also sees a shutdown that began before this loop subscribed.
                // (The guard it returns is dropped inside: it must not live across the loop's awaits.)
                _ = async { drop(self.shutdown.wait_for(|stop| *stop).await) } => {
                    self.core.lock().handle_dialog(Instant::now(), DialogInput::Shutdown);
                }

                // A dropped sender means no operator can hang up: wait forever.
                _ = async {
                    if self.hangup.wait_for(|h| *h).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => self.core.lock().handle_dialog(Instant::now(), DialogInput::OperatorHangup),
            }
        }
    }

    /// Sends the RTCP reports the core has ready; a full socket buffer drops one (the next
    /// report supersedes it).
    fn send_rtcp(&mut self) {
        let packets: Vec<_> = {
            let mut core = self.core.lock();
            std::iter::from_fn(|| core.poll_rtcp_transmit()).collect()
        };
        for transmit in packets {
            let socket = match &self.human {
                Some(human) if transmit.leg == human.id => human.rtcp.as_ref(),
                _ if transmit.leg == CALLER => self.rtcp_socket.as_ref(),
                _ => None,
            };
            let Some(socket) = socket else { continue };
            if let Err(e) = socket.try_send_to(&transmit.packet, transmit.destination) {
                debug!(error = %e, "RTCP report not sent");
            }
        }
    }

    /// The core lost its AI connection and goes on: stop using the old one (closed in the
    /// background).
    fn drop_link(&mut self) {
        self.link.up = false;
        self.retire_writer();
    }

    /// Reopens the session in a task, so RTP, the comfort tone and the dialog carry on
    /// meanwhile (a reconnect), or the old session goes on meanwhile (a rollover).
    fn spawn_reopen(&mut self) {
        let policy = match (self.link.policy, self.link.up) {
            (Some(policy), _) => policy,
            (None, true) => ROLLOVER_RETRIES,
            (None, false) => return,
        };
        if self.link.reconnecting.is_none() {
            let task = tokio::spawn(
                reconnect_until_confirmed(
                    Arc::clone(self.link.state),
                    Arc::clone(self.link.settings),
                    self.link.agent.clone(),
                    self.link.codec,
                    self.link.confirmed,
                    policy,
                )
                .in_current_span(),
            );
            self.link.reconnecting = Some(AbortOnDrop(task));
        }
    }

    /// A new session is confirmed: tell it the conversation so far (sent before anything else,
    /// straight on its socket: the writer's control queue is not sized for a replay), then let
    /// the core go on with it.
    async fn resume(&mut self, session: OpenSession) {
        let OpenSession { mut sender, receiver, expires_at, .. } = session;
        if let Some(why) = self.replay(&mut sender).await {
            // Try again: the core is still reconnecting.
            warn!(why, "new Realtime session unusable; reconnecting again");
            close_in_background(sender);
            self.spawn_reopen();
            return;
        }
        if !self.core.lock().handle_realtime_resumed(Instant::now()) {
            close_in_background(sender);
            return;
        }
        self.install(sender, receiver, expires_at);
    }

    /// Rollover at a turn boundary: the next session is told the conversation, then replaces
    /// the current one, which is closed in the background. The caller's audio goes to the old
    /// session until the switch and to the new one after it: nothing is lost, nothing heard.
    async fn switch(&mut self) {
        let Some(OpenSession { mut sender, receiver, expires_at, .. }) = self.link.standby.take() else { return };
        if let Some(why) = self.replay(&mut sender).await {
            // The current session goes on; its expiry will reconnect as after a loss.
            warn!(why, "next Realtime session unusable; staying on the current one");
            close_in_background(sender);
            return;
        }
        if !self.core.lock().handle_realtime_switched(Instant::now()) {
            close_in_background(sender);
            return;
        }
        self.retire_writer();
        self.install(sender, receiver, expires_at);
    }

    /// Replaces the writer by a detached one and closes the old connection in the background;
    /// the dropped-appends count carries over (it is logged once per call).
    fn retire_writer(&mut self) {
        let mut detached = RealtimeWriter::detached(self.writer.watchdog);
        detached.dropped_appends = self.writer.dropped_appends;
        let mut old = std::mem::replace(self.writer, detached);
        tokio::spawn(async move { old.close().await });
    }

    /// Sends the conversation so far to a new session; says why it failed, if it did.
    async fn replay(&mut self, sender: &mut RealtimeSender) -> Option<String> {
        let replay = self.core.lock().replay_events();
        let deadline = Duration::from_millis(self.link.settings.config.realtime.connect_timeout_ms);
        let replayed = tokio::time::timeout(deadline, async {
            for event in &replay {
                sender.send(event).await?;
            }
            Ok::<(), switchboard_realtime::ClientError>(())
        })
        .await;
        match replayed {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("replay failed: {e}")),
            Err(_) => Some("replay timed out".to_owned()),
        }
    }

    /// Makes a confirmed, replayed session the call's connection.
    fn install(&mut self, sender: RealtimeSender, receiver: RealtimeReceiver, expires_at: Option<i64>) {
        let dropped_appends = self.writer.dropped_appends;
        *self.writer = RealtimeWriter::spawn(sender, self.writer.watchdog);
        self.writer.dropped_appends = dropped_appends;
        *self.realtime_rx = receiver;
        self.link.up = true;
        let due = rollover_deadline(&self.link.settings.config.realtime, Instant::now(), expires_at);
        self.core.lock().set_rollover_at(due);
    }

    /// The end-of-call line: one `info!` with every figure of the call (docs/media.md).
    fn log_stats(&self) {
        let stats = self.core.lock().stats();
        let rtp = stats.rtp;
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let turn_ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
        let tokens = stats.tokens;
        info!(
            rtp_packets = rtp.packets,
            rtp_lost = rtp.lost,
            rtp_late = rtp.late,
            rtp_duplicates = rtp.duplicates,
            rtp_reordered = rtp.reordered,
            rtp_stream_changes = rtp.stream_changes,
            rtp_concealed = rtp.concealed,
            jitter_ms = format_args!("{:.1}", ms(rtp.jitter)),
            jitter_max_ms = format_args!("{:.1}", ms(rtp.jitter_max)),
            buffer_delay_p50_ms = rtp.buffer_delay_p50.as_millis() as u64,
            buffer_delay_p95_ms = rtp.buffer_delay_p95.as_millis() as u64,
            rtcp_sent = rtp.rtcp.sent,
            rtcp_received = rtp.rtcp.received,
            // "none" until a report of the caller's carried the round trip of one of our SRs.
            rtt_ms = %optional_ms(rtp.rtcp.rtt),
            rtt_max_ms = %optional_ms(rtp.rtcp.rtt_max),
            remote_lost = rtp.rtcp.remote_cumulative_lost,
            remote_fraction_lost = rtp.rtcp.remote_fraction_lost,
            rtp_ignored = stats.latch.ignored,
            rtp_sources_learned = stats.latch.learned,
            barge_ins = stats.barge_ins,
            agent_frames_dropped = stats.agent_frames_dropped,
            appends_dropped = self.writer.dropped_appends,
            dtmf_events = stats.dtmf_events,
            taps_dropped = stats.taps_dropped,
            turns = stats.turns,
            turn_latency_p50_ms = turn_ms(stats.turn_latency_p50),
            turn_latency_p95_ms = turn_ms(stats.turn_latency_p95),
            // Setup to the agent's first packet (docs/metrics.md, switchboard_call_first_audio_seconds).
            first_audio_ms = self.core.lock().first_audio().map(|d| d.as_millis() as u64),
            responses = tokens.responses,
            tokens_input_text = tokens.input_text,
            tokens_input_audio = tokens.input_audio,
            tokens_input_cached = tokens.input_cached,
            tokens_output_text = tokens.output_text,
            tokens_output_audio = tokens.output_audio,
            cost_usd = format_args!("{:.6}", tokens.cost(&self.prices)),
            "call stats"
        );
        legs::log_human_stats(&stats);
        if stats.latch.ignored > 0 {
            // Once per call, not per packet: an attacked call must not flood the log.
            info!(
                ignored = stats.latch.ignored,
                accepted = stats.latch.accepted,
                learned = stats.latch.learned,
                "RTP from other sources ignored"
            );
        }
        if self.writer.dropped_appends > 0 {
            warn!(dropped = self.writer.dropped_appends, "audio appends dropped: the Realtime writer fell behind");
        }
    }
}

/// Milliseconds to 0.01 ms (a loopback round trip is well under one), or `none`.
fn optional_ms(duration: Option<Duration>) -> String {
    duration.map_or_else(|| "none".to_owned(), |d| format!("{:.2}", d.as_secs_f64() * 1000.0))
}

/// Binds the RTCP socket next to the call's RTP socket (RTP port + 1, RFC 3550 §11: the port
/// allocator leases even ports only, so the odd one is ours unless another program holds it; then
/// the call runs without RTCP).
fn bind_rtcp(rtp_socket: &std::net::UdpSocket) -> Option<tokio::net::UdpSocket> {
    let local = rtp_socket.local_addr().ok()?;
    let rtcp = SocketAddr::new(local.ip(), local.port().checked_add(1)?);
    let bound = std::net::UdpSocket::bind(rtcp).and_then(|socket| {
        socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(socket)
    });
    match bound {
        Ok(socket) => Some(socket),
        Err(e) => {
            debug!(error = %e, port = rtcp.port(), "RTCP port not available; the call runs without RTCP");
            None
        }
    }
}

async fn recv_rtcp(socket: Option<&tokio::net::UdpSocket>, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    match socket {
        Some(socket) => socket.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

enum RealtimeInput {
    Event(Box<ServerEvent>),
    Ignore,
    Closed(CallEnd),
}

/// What a receive from the Realtime connection means for the call.
fn realtime_input(received: Option<Result<ServerEvent, ClientError>>) -> RealtimeInput {
    match received {
        Some(Ok(event)) => RealtimeInput::Event(Box::new(event)),
        Some(Err(ClientError::Closed { code, reason })) => {
            RealtimeInput::Closed(CallEnd::AgentDisconnected(format!("closed with {code}: {reason}")))
        }
        Some(Err(ClientError::Event(e))) => {
            warn!(error = %e, "undecodable Realtime event ignored");
            RealtimeInput::Ignore
        }
        Some(Err(e @ ClientError::MessageTooLarge { .. })) => {
            RealtimeInput::Closed(CallEnd::AgentMessageTooLarge(e.to_string()))
        }
        Some(Err(e)) => RealtimeInput::Closed(CallEnd::AgentDisconnected(e.to_string())),
        None => RealtimeInput::Closed(CallEnd::AgentDisconnected("connection closed".into())),
    }
}

enum Command {
    Event(Box<ClientEvent>),
    Ping,
}

/// The Realtime WebSocket's sending half, in its own task behind two bounded queues (see
/// [`AUDIO_QUEUE`] and [`CONTROL_QUEUE`]): the call's task never awaits the network. Control
/// events go first. A send that blocks for the watchdog period fails (the connection's
/// `send_timeout`), which ends the writer and the call as an upstream fault.
struct RealtimeWriter {
    audio: Option<mpsc::Sender<Box<ClientEvent>>>,
    control: Option<mpsc::Sender<Command>>,
    task: Option<JoinHandle<(RealtimeSender, Result<(), String>)>>,
    watchdog: Duration,
    /// Since when appends have been dropped without a successful one.
    audio_full_since: Option<Instant>,
    dropped_appends: u64,
}

impl RealtimeWriter {
    /// A writer with no connection behind it (while reconnecting): sends go nowhere, it never
    /// fails.
    fn detached(watchdog: Duration) -> RealtimeWriter {
        RealtimeWriter { audio: None, control: None, task: None, watchdog, audio_full_since: None, dropped_appends: 0 }
    }

    fn spawn(mut sender: RealtimeSender, watchdog: Duration) -> RealtimeWriter {
        let (audio_tx, mut audio_rx) = mpsc::channel::<Box<ClientEvent>>(AUDIO_QUEUE);
        let (control_tx, mut control_rx) = mpsc::channel::<Command>(CONTROL_QUEUE);
        let task = tokio::spawn(async move {
            let result = loop {
                let sent = tokio::select! {
                    biased;
                    command = control_rx.recv() => match command {
                        Some(Command::Event(event)) => sender.send(&event).await,
                        Some(Command::Ping) => sender.ping().await,
                        None => break Ok(()),
                    },
                    event = audio_rx.recv() => match event {
                        Some(event) => sender.send(&event).await,
                        None => break Ok(()),
                    },
                };
                if let Err(e) = sent {
                    break Err(format!("send failed: {e}"));
                }
            };
            (sender, result)
        });
        RealtimeWriter {
            audio: Some(audio_tx),
            control: Some(control_tx),
            task: Some(task),
            watchdog,
            audio_full_since: None,
            dropped_appends: 0,
        }
    }

    /// Queues an event; appends are dropped when their queue is full, control events never.
    fn send(&mut self, now: Instant, event: Box<ClientEvent>) -> Result<(), CallEnd> {
        if matches!(*event, ClientEvent::InputAudioBufferAppend { .. }) {
            let Some(audio) = &self.audio else { return Ok(()) };
            return match audio.try_send(event) {
                Ok(()) => {
                    self.audio_full_since = None;
                    Ok(())
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.dropped_appends += 1;
                    metrics::counter!(telemetry::REALTIME_APPENDS_DROPPED_TOTAL).increment(1);
                    let since = *self.audio_full_since.get_or_insert(now);
                    if now.saturating_duration_since(since) >= self.watchdog {
                        return Err(CallEnd::AgentWatchdog(now.saturating_duration_since(since)));
                    }
                    Ok(())
                }
                // The writer ended: `failed` reports why.
                Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            };
        }
        self.control_command(Command::Event(event))
    }

    fn ping(&mut self) -> Result<(), CallEnd> {
        self.control_command(Command::Ping)
    }

    fn control_command(&mut self, command: Command) -> Result<(), CallEnd> {
        let Some(control) = &self.control else { return Ok(()) };
        match control.try_send(command) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => Ok(()),
            Err(mpsc::error::TrySendError::Full(_)) => {
                Err(CallEnd::AgentDisconnected("Realtime writer stalled: control queue full".into()))
            }
        }
    }

    /// Resolves when the writer task has ended with a send error (never otherwise).
    async fn failed(&mut self) -> CallEnd {
        let Some(task) = &mut self.task else { return std::future::pending().await };
        let joined = task.await;
        self.task = None;
        match joined {
            Ok((sender, Err(why))) => {
                close_in_background(sender);
                CallEnd::AgentDisconnected(why)
            }
            Ok((sender, Ok(()))) => {
                close_in_background(sender);
                std::future::pending().await
            }
            Err(e) => CallEnd::AgentDisconnected(format!("Realtime writer task failed: {e}")),
        }
    }

    /// Lets the writer send what is queued, then closes the WebSocket (bounded: the server may
    /// not be reading).
    async fn close(&mut self) {
        self.audio = None;
        self.control = None;
        if let Some(task) = self.task.take() {
            match tokio::time::timeout(Duration::from_secs(2), task).await {
                Ok(Ok((mut sender, _))) => {
                    let _ = tokio::time::timeout(Duration::from_secs(2), sender.close()).await;
                }
                Ok(Err(_)) => {}
                Err(_) => debug!("Realtime writer still busy at the end of the call; abandoned"),
            }
        }
    }
}

/// The conversational settings of a call, from its agent.
fn talk_config(agent: &AgentConfig) -> TalkConfig {
    let ms = Duration::from_millis;
    TalkConfig {
        barge_in: BargeInConfig {
            mode: match agent.barge_in {
                BargeInChoice::Immediate => BargeInMode::Immediate,
                BargeInChoice::Confirm => BargeInMode::Confirm,
            },
            confirm: ms(agent.barge_in_confirm_ms),
            prefix_padding: ms(u64::from(agent.vad_prefix_padding_ms)),
            silence_duration: ms(u64::from(agent.vad_silence_duration_ms)),
        },
        dtmf_coalesce: ms(agent.dtmf_coalesce_ms),
        dtmf_response: agent.dtmf_response,
        control: ControlConfig {
            end_call: agent.end_call,
            idle_timeout: Some(Duration::from_secs(agent.idle_timeout_secs)).filter(|t| !t.is_zero()),
            idle_prompt: agent.idle_prompt.clone(),
            idle_prompts: agent.idle_prompts,
            goodbye: agent.goodbye.clone(),
            max_call: Some(Duration::from_secs(agent.max_call_secs)).filter(|t| !t.is_zero()),
        },
    }
}

fn close_in_background(sender: RealtimeSender) {
    super::close_in_background(sender);
}
