//! A call's second media leg in the shell (a bridged transfer's human, issue 9): its RTP socket
//! in the call's task and in the media clock, its RTCP socket, and the [`LegConfig`] every leg
//! is built with. The transfer logic leases the leg's RTP port (`state.rtp_ports`), offers it in
//! its INVITE, and once the human answered: [`MediaLoop::leg_config`] from the answer,
//! [`MediaLoop::attach_leg`], then [`CallCore::bridge`](super::CallCore::bridge); when the human
//! leaves, [`MediaLoop::detach_leg`].

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard_media::opus_codec::OpusEncoderSettings;
use switchboard_media::rtp::StreamStart;
use switchboard_sdp::{Direction, NegotiatedMedia};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use super::super::core::{CALLER, CoreStats, HUMAN, LegConfig, LegId};
use super::super::session::ConfirmedAudio;
use super::{MediaLoop, bind_rtcp};
use crate::config::Config;

/// An attached leg's sockets on the call's task (the media clock holds a clone of the RTP one).
pub(super) struct AttachedLeg {
    pub(super) id: LegId,
    socket: UdpSocket,
    /// RTP port + 1, if it could be bound (RFC 3550 §11), as for the caller's leg.
    pub(super) rtcp: Option<UdpSocket>,
}

/// A leg's stream settings from its negotiated media and the gateway's `[media]` settings; the
/// model formats are the session's (only the caller's leg feeds the model, but every leg's
/// pipeline is built the same way).
pub fn leg_config(cfg: &Config, media: &NegotiatedMedia, confirmed: ConfirmedAudio) -> LegConfig {
    let ptime = Duration::from_millis(u64::from(media.ptime_ms.max(10)));
    let opus = OpusEncoderSettings {
        bitrate_bps: cfg.media.opus_bitrate_bps,
        complexity: cfg.media.opus_complexity,
        ..OpusEncoderSettings::default()
    };
    let opus = match media.opus {
        Some(peer) => {
            opus.with_peer_limits(peer.max_average_bitrate, peer.max_playback_rate, Some(peer.use_inband_fec))
        }
        None => opus,
    };
    LegConfig {
        codec: media.codec,
        payload_type: media.payload_type,
        telephone_event: media.telephone_event,
        remote: media.remote_rtp,
        may_send: matches!(media.direction, Direction::SendRecv | Direction::SendOnly),
        ptime,
        strict_rtp: cfg.media.latch_config(),
        reorder_wait: Duration::from_millis(cfg.media.reorder_wait_ms),
        opus,
        model_input: confirmed.input,
        model_output: confirmed.output,
        stream: StreamStart::random(),
        jitter_max: Duration::from_millis(cfg.media.jitter_max_ms),
        rtcp_interval: Duration::from_secs(cfg.media.rtcp_interval_secs),
        srtp: media.srtp,
    }
}

// `leg_config` and `attach_leg` are the transfer logic's (Contract BRIDGE), called once it
// merges; until then only the tests below use them.
#[allow(dead_code)]
impl MediaLoop<'_> {
    /// The [`LegConfig`] of a new leg negotiated as `media` (the human's answer), built as the
    /// caller's was.
    pub fn leg_config(&self, media: &NegotiatedMedia) -> LegConfig {
        leg_config(&self.link.settings.config, media, self.link.confirmed)
    }

    /// Adds a media leg on `socket` (the RTP socket the transfer code leased and offered; RTCP on
    /// its port + 1 like the caller's): the call's task receives on it, the media clock sends the
    /// leg's packets on it, and the core gets the leg ([`CallCore::add_leg`](super::CallCore::add_leg)).
    /// One leg besides the caller's at a time: attaching another detaches the previous one.
    pub fn attach_leg(&mut self, id: LegId, socket: std::net::UdpSocket, config: LegConfig) -> io::Result<()> {
        if id == CALLER {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "the caller's leg is attached already"));
        }
        let Some(registration) = &self.registration else {
            return Err(io::Error::other("the call's media loop is not running"));
        };
        socket.set_nonblocking(true)?;
        let clock_socket = Arc::new(socket.try_clone()?);
        let rtcp = bind_rtcp(&clock_socket);
        let socket = UdpSocket::from_std(socket)?;
        if !registration.attach_socket(id.0, clock_socket) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("leg {} is beyond the media clock's legs", id.0),
            ));
        }
        if let Some(previous) = self.human.as_ref().map(|leg| leg.id).filter(|previous| *previous != id) {
            self.detach_leg(previous);
        }
        let local = socket.local_addr().ok();
        self.core.lock().add_leg(Instant::now(), id, config);
        self.human = Some(AttachedLeg { id, socket, rtcp });
        info!(leg = id.0, local = ?local, "media leg attached");
        Ok(())
    }

    /// Removes the leg from the core (unbridged first if it was bridged) and stops receiving
    /// and sending on its sockets (dropped here; the transfer code keeps the port lease).
    pub fn detach_leg(&mut self, id: LegId) {
        if id == CALLER {
            return;
        }
        self.core.lock().remove_leg(Instant::now(), id);
        if let Some(registration) = &self.registration {
            registration.detach_socket(id.0);
        }
        if self.human.as_ref().is_some_and(|leg| leg.id == id) {
            self.human = None;
        }
    }

    /// [`Output::LegLost`](super::Output::LegLost): until the transfer logic acts on it, the
    /// leg is detached (the caller returns to the agent) and the call goes on.
    pub(super) fn on_leg_lost(&mut self, id: LegId) {
        warn!(leg = id.0, "media leg lost (no RTP): detached");
        self.detach_leg(id);
    }
}

/// The end-of-call line of a bridged human's leg, when the call had one (docs/media.md).
pub(super) fn log_human_stats(stats: &CoreStats) {
    let Some(rtp) = stats.human_rtp else { return };
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    info!(
        leg = HUMAN.0,
        rtp_packets = rtp.packets,
        rtp_lost = rtp.lost,
        rtp_late = rtp.late,
        rtp_concealed = rtp.concealed,
        jitter_ms = format_args!("{:.1}", ms(rtp.jitter)),
        jitter_max_ms = format_args!("{:.1}", ms(rtp.jitter_max)),
        buffer_delay_p95_ms = rtp.buffer_delay_p95.as_millis() as u64,
        rtcp_sent = rtp.rtcp.sent,
        rtcp_received = rtp.rtcp.received,
        rtt_ms = %super::optional_ms(rtp.rtcp.rtt),
        relay_frames_dropped = stats.relay_frames_dropped,
        "bridged leg stats"
    );
}

/// The next datagram on the attached leg's RTP or RTCP socket: `(leg, received, is_rtcp)`;
/// pending forever without an attached leg. Readiness first, then a non-blocking read, so one
/// buffer serves both sockets (a spurious readiness is waited out). Cancel-safe: nothing is
/// read until a read succeeds.
pub(super) async fn recv(leg: Option<&AttachedLeg>, buf: &mut [u8]) -> (LegId, io::Result<(usize, SocketAddr)>, bool) {
    let Some(leg) = leg else { return std::future::pending().await };
    loop {
        let rtcp_readable = async {
            match &leg.rtcp {
                Some(rtcp) => rtcp.readable().await.map(|()| rtcp),
                None => std::future::pending().await,
            }
        };
        let (received, is_rtcp) = tokio::select! {
            ready = leg.socket.readable() => (ready.and_then(|()| leg.socket.try_recv_from(buf)), false),
            rtcp = rtcp_readable => (rtcp.and_then(|rtcp| rtcp.try_recv_from(buf)), true),
        };
        match received {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            received => return (leg.id, received, is_rtcp),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

    use std::sync::Mutex;

    use switchboard_media::Codec;
    use switchboard_media::framing::ModelAudio;
    use switchboard_media::latch::LatchConfig;
    use switchboard_media::rtp::{self, RtpHeader};
    use switchboard_realtime::events::AudioFormat;
    use tokio::sync::Notify;

    use super::super::super::core::{CallCore, CoreConfig, DialogInput};
    use super::*;
    use crate::media_clock::MediaClock;

    fn pcmu_leg(remote: SocketAddr) -> LegConfig {
        LegConfig {
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event: None,
            remote,
            may_send: true,
            ptime: Duration::from_millis(20),
            strict_rtp: LatchConfig::default(),
            reorder_wait: Duration::from_millis(20),
            opus: OpusEncoderSettings::default(),
            model_input: ModelAudio::G711Passthrough,
            model_output: ModelAudio::G711Passthrough,
            stream: StreamStart::random(),
            jitter_max: Duration::from_millis(60),
            rtcp_interval: Duration::ZERO,
            srtp: None,
        }
    }

    fn core_config() -> CoreConfig {
        CoreConfig {
            rtp_timeout: Duration::from_secs(60),
            ping_interval: Duration::from_secs(60),
            watchdog: Duration::from_secs(120),
            max_queued_audio: Duration::from_secs(60),
            greeting: None,
            apology: None,
            apology_min_interval: Duration::from_secs(30),
            model_output: AudioFormat::Pcmu,
            taps: false,
            talk: Default::default(),
            resilience: Default::default(),
        }
    }

    fn packet(sequence: u16, marker_byte: u8) -> Vec<u8> {
        let header =
            RtpHeader { payload_type: 0, marker: false, sequence, timestamp: u32::from(sequence) * 160, ssrc: 0xAB };
        let mut packet = Vec::new();
        rtp::write_rtp(&mut packet, &header, &[marker_byte; 160]);
        packet
    }

    /// Reads packets on `phone` until one whose payload is all `marker_byte` (bounded).
    fn wait_for(phone: &std::net::UdpSocket, marker_byte: u8) -> SocketAddr {
        let mut buf = [0u8; 1500];
        for _ in 0..200 {
            let (len, from) = phone.recv_from(&mut buf).expect("a packet within the read timeout");
            let (_, payload) = rtp::parse_rtp(&buf[..len]).unwrap();
            if payload.iter().all(|&b| b == marker_byte) {
                return from;
            }
        }
        panic!("no packet of {marker_byte:#x}");
    }

    /// The real media clock thread and loopback sockets, the leg attached as `attach_leg` does:
    /// the human's RTP comes in on the attached socket (and its RTCP on port + 1), the caller
    /// hears it; the caller's RTP goes out to the human from the attached socket, not the
    /// caller's.
    #[test]
    fn an_attached_leg_receives_and_sends_on_its_own_sockets() {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            let caller_phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let human_phone = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            for phone in [&caller_phone, &human_phone] {
                phone.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            }
            let caller_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let caller_local = caller_socket.local_addr().unwrap();
            let now = Instant::now();
            let mut core = CallCore::new(now, core_config(), pcmu_leg(caller_phone.local_addr().unwrap()));
            core.handle_dialog(now, DialogInput::Confirmed);
            let core = Arc::new(Mutex::new(core));
            let clock = MediaClock::start().unwrap();
            let registration = clock.register(Arc::clone(&core), Arc::new(caller_socket), Arc::new(Notify::new()));

            // What attach_leg does with the leased socket.
            let leased = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            leased.set_nonblocking(true).unwrap();
            let clock_socket = Arc::new(leased.try_clone().unwrap());
            let rtcp = bind_rtcp(&clock_socket);
            let human_local = leased.local_addr().unwrap();
            let leg = AttachedLeg { id: HUMAN, socket: UdpSocket::from_std(leased).unwrap(), rtcp };
            assert!(registration.attach_socket(HUMAN.0, clock_socket));
            core.lock().unwrap().add_leg(Instant::now(), HUMAN, pcmu_leg(human_phone.local_addr().unwrap()));
            core.lock().unwrap().bridge(Instant::now(), CALLER, HUMAN);

            // The human speaks: received on the attached socket, heard by the caller.
            human_phone.send_to(&packet(1, 0x33), human_local).unwrap();
            let mut buf = [0u8; 2048];
            let (id, received, is_rtcp) =
                tokio::time::timeout(Duration::from_secs(5), recv(Some(&leg), &mut buf)).await.unwrap();
            let (len, source) = received.unwrap();
            assert_eq!((id, is_rtcp, source), (HUMAN, false, human_phone.local_addr().unwrap()));
            core.lock().unwrap().handle_rtp(Instant::now(), id, source, &buf[..len]);
            assert_eq!(wait_for(&caller_phone, 0x33), caller_local, "the caller hears the human from its own socket");

            // The caller speaks: the human hears it from the attached socket.
            let caller_source = caller_phone.local_addr().unwrap();
            core.lock().unwrap().handle_rtp(Instant::now(), CALLER, caller_source, &packet(1, 0x44));
            assert_eq!(wait_for(&human_phone, 0x44), human_local, "the human hears the caller from the leased socket");

            // The human's RTCP arrives on the attached leg's port + 1.
            let rtcp_port = SocketAddr::new(human_local.ip(), human_local.port() + 1);
            if leg.rtcp.is_some() {
                human_phone.send_to(&[0x81, 201, 0, 1, 0, 0, 0, 0xAB], rtcp_port).unwrap();
                let (_, received, is_rtcp) =
                    tokio::time::timeout(Duration::from_secs(5), recv(Some(&leg), &mut buf)).await.unwrap();
                assert_eq!((received.unwrap().0, is_rtcp), (8, true));
            }

            // Detached: the clock drops the leg's packets instead of sending them elsewhere.
            registration.detach_socket(HUMAN.0);
            drop(registration);
            assert_eq!(clock.registrations(), 0);
        });
    }
}
