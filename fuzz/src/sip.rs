//! SIP: the message parser, the TCP stream framer and the sans-IO core.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use switchboard_sip::Transport;
use switchboard_sip::core::{Core, CoreConfig, CoreEvent, DialogId, InviteId, Origin};
use switchboard_sip::message::{Message, StreamFrame, frame_stream, parse_message};

use crate::split_records;

/// The endpoint's default size limit (`EndpointConfig::default`).
const MAX_MESSAGE_BYTES: usize = 16 * 1024;

/// Headers without `Content-Length`: `to_bytes` always rewrites it at the end from the body
/// length, so it is the one header allowed to move or change on a round trip.
fn without_content_length(message: &Message) -> Message {
    let mut copy = message.clone();
    copy.headers.retain(|header| !header.name.eq_ignore_ascii_case("Content-Length"));
    copy
}

/// `sip_message`: whatever parses (over UDP or TCP) serializes with `to_bytes` and parses back
/// to the same message (up to `Content-Length`, which serialization recomputes), and the
/// serialization is then a fixed point.
pub fn message_round_trip(data: &[u8]) {
    for transport in [Transport::Udp, Transport::Tcp] {
        let Ok(message) = parse_message(data, transport) else {
            continue;
        };
        let bytes = message.to_bytes();
        let reparsed = match parse_message(&bytes, transport) {
            Ok(reparsed) => reparsed,
            Err(error) => panic!(
                "{transport:?}: a parsed message re-serializes to something unparseable ({error}):\n{:?}",
                String::from_utf8_lossy(&bytes)
            ),
        };
        assert_eq!(
            without_content_length(&reparsed),
            without_content_length(&message),
            "{transport:?}: parse(to_bytes(m)) != m"
        );
        assert_eq!(reparsed.to_bytes(), bytes, "{transport:?}: to_bytes is not a fixed point after one round trip");
    }
}

/// What a TCP connection's reader did with its bytes, in the endpoint's loop
/// (`endpoint.rs`: frame, discard keep-alives, hand over messages, close).
#[derive(Debug, PartialEq, Eq)]
enum StreamEvent {
    /// Keep-alive bytes discarded; consecutive runs are merged (a split can cut a run).
    Keepalive(usize),
    Message {
        bytes: Vec<u8>,
        then_close: bool,
    },
    TooLarge,
}

/// The endpoint's reader loop over `buf`, recording what it does; returns whether the
/// connection is closed.
fn drain_frames(buf: &mut Vec<u8>, max: usize, events: &mut Vec<StreamEvent>) -> bool {
    loop {
        let frame = frame_stream(buf, max);
        match frame {
            StreamFrame::Incomplete => return false,
            StreamFrame::Keepalive(n) => {
                assert!(n > 0 && n <= buf.len(), "keep-alive of {n} bytes in a buffer of {}", buf.len());
                assert!(
                    buf.iter().take(n).all(|b| *b == b'\r' || *b == b'\n'),
                    "keep-alive run contains other bytes than CR/LF"
                );
                buf.drain(..n);
                match events.last_mut() {
                    Some(StreamEvent::Keepalive(total)) => *total += n,
                    _ => events.push(StreamEvent::Keepalive(n)),
                }
            }
            StreamFrame::Message { len, then_close } => {
                assert!(len > 0, "an empty message frame would spin the reader loop");
                assert!(len <= buf.len(), "frame of {len} bytes in a buffer of {}", buf.len());
                assert!(len <= max, "frame of {len} bytes exceeds the {max}-byte limit");
                events.push(StreamEvent::Message { bytes: buf.drain(..len).collect(), then_close });
                if then_close {
                    return true;
                }
            }
            StreamFrame::TooLarge => {
                events.push(StreamEvent::TooLarge);
                return true;
            }
        }
    }
}

/// `sip_stream`: input = 2 bytes of size limit, 1 byte of split count `k`, `2k` bytes of split
/// offsets, then the stream. Frames lie within the buffer and the limit, and the framing is
/// the same whether the stream arrives whole or in the given pieces.
pub fn stream_framing(data: &[u8]) {
    let Some((&[max_high, max_low, split_count], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    // A limit of 64 bytes to 64 KiB: small limits reach the TooLarge paths with small inputs.
    let max = usize::from(u16::from_be_bytes([max_high, max_low])).max(64);
    let split_bytes = usize::from(split_count % 17) * 2;
    let Some((split_spec, stream)) = rest.split_at_checked(split_bytes) else {
        return;
    };
    let mut cuts: Vec<usize> = split_spec
        .chunks_exact(2)
        .map(|pair| usize::from(u16::from_be_bytes([pair[0], pair[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();
    cuts.dedup();

    let mut whole_events = Vec::new();
    let mut whole = stream.to_vec();
    drain_frames(&mut whole, max, &mut whole_events);

    let mut piece_events = Vec::new();
    let mut buf = Vec::new();
    let mut start = 0;
    let mut closed = false;
    for end in cuts.into_iter().chain(std::iter::once(stream.len())) {
        buf.extend_from_slice(&stream[start..end]);
        start = end;
        if drain_frames(&mut buf, max, &mut piece_events) {
            closed = true;
            break;
        }
    }
    let _ = closed;
    assert_eq!(piece_events, whole_events, "framing depends on how the stream was split");
}

/// Each record of the `sip_core` input starts with one control byte, then the message.
/// Records are separated by this line (see the corpus files).
pub const RECORD_SEPARATOR: &[u8] = b"\n--next-record--\n";
/// Replaced in a record by the To tag of the last response the core sent, so the fuzzer can
/// reach in-dialog requests (ACK, BYE, re-INVITE) although our tags are random.
const TAG_PLACEHOLDER: &[u8] = b"@@tag@@";

fn core_config() -> CoreConfig {
    CoreConfig {
        timers: switchboard_sip::Timers::default(),
        user_agent: "switchboard-fuzz".into(),
        udp_contact: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
        tcp_contact: Some(SocketAddr::from(([127, 0, 0, 1], 5060))),
        tls_contact: None,
        max_message_bytes: MAX_MESSAGE_BYTES,
        max_headers: 100,
    }
}

fn replace_all(haystack: &[u8], needle: &[u8], replacement: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = rest.windows(needle.len()).position(|window| window == needle) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement);
        rest = &rest[at + needle.len()..];
    }
    out.extend_from_slice(rest);
    out
}

/// The application side of the harness: what the gateway would do with the core's events.
#[derive(Default)]
struct Application {
    pending_invites: Vec<InviteId>,
    dialogs: Vec<DialogId>,
    last_to_tag: Option<String>,
    transmits: usize,
}

struct CoreHarness {
    core: Core,
    now: Instant,
    app: Application,
    requests_handled: usize,
}

impl CoreHarness {
    /// Drains transmits (each must parse as SIP) and events (answered per `control`).
    fn drain(&mut self, control: u8) {
        while let Some(transmit) = self.core.poll_transmit() {
            self.app.transmits += 1;
            let message = match parse_message(&transmit.payload, Transport::Udp) {
                Ok(message) => message,
                // An error response copies the request's Via, From, To, Call-ID and CSeq as they
                // came (RFC 3261 §8.2.6.2), broken ones included (a 400 for a bad Call-ID, a 505
                // echoing `Via: SIP/7.0/UDP`): the parser's salvage must still read its status.
                // Our own requests (BYE) and 1xx/2xx must parse outright.
                Err(error) => match error.partial {
                    Some(partial) if partial.status().is_some_and(|code| code >= 400) => *partial,
                    _ => panic!(
                        "the core sent an unparseable message ({}):\n{:?}",
                        error.kind,
                        String::from_utf8_lossy(&transmit.payload)
                    ),
                },
            };
            if message.status().is_some()
                && let Some(tag) = message.to_tag()
            {
                self.app.last_to_tag = Some(tag);
            }
        }
        while let Some(event) = self.core.poll_event() {
            match event {
                CoreEvent::IncomingCall { invite, .. } => match control >> 5 {
                    0 | 1 => self.accept(invite),
                    2 => self.core.reject(self.now, invite, 486, "Busy Here", &[]),
                    3 => self.core.reject(self.now, invite, 503, "Service Unavailable", &[("Retry-After", "5")]),
                    4 => {
                        self.core.ringing(invite);
                        self.app.pending_invites.push(invite);
                    }
                    // Left pending: the application answers later (or at the end).
                    _ => self.app.pending_invites.push(invite),
                },
                CoreEvent::InviteCancelled { invite } => self.app.pending_invites.retain(|i| *i != invite),
                CoreEvent::ByeNeedsResolution { dialog, .. } => self.core.bye_unresolvable(dialog),
                // This harness drives the server side only: no request or call of ours to end.
                CoreEvent::Dialog { .. }
                | CoreEvent::ByeFinished { .. }
                | CoreEvent::RequestFinished { .. }
                | CoreEvent::Outgoing { .. } => {}
            }
        }
    }

    fn accept(&mut self, invite: InviteId) {
        let answer =
            "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\n";
        if let Some(dialog) = self.core.accept(self.now, invite, answer) {
            self.app.dialogs.push(dialog);
        }
    }

    fn hangup(&mut self, dialog: DialogId) {
        // A host-name next hop comes back as `ByeNeedsResolution`, answered in `drain`.
        self.core.hangup(self.now, dialog);
    }

    /// Runs every timer due up to `until`, in order, as the shell's timer loop does.
    fn run_timers_until(&mut self, until: Instant, control: u8) {
        let mut fired = 0u32;
        while let Some(deadline) = self.core.poll_timeout() {
            if deadline > until {
                break;
            }
            self.now = self.now.max(deadline);
            self.core.handle_timeout(self.now);
            self.drain(control);
            fired += 1;
            assert!(fired < 10_000, "timer storm: poll_timeout keeps returning a due deadline");
        }
        self.now = until;
        self.core.handle_timeout(self.now);
        self.drain(control);
    }

    fn assert_bounded(&self) {
        let (transactions, dialogs, clients) = self.core.live_state();
        // One server transaction per request at most, one dialog per accepted INVITE, one
        // client transaction (our BYE) per dialog.
        assert!(
            transactions <= self.requests_handled,
            "{transactions} transactions from {} requests",
            self.requests_handled
        );
        assert!(dialogs <= self.app.dialogs.len(), "{dialogs} dialogs from {} accepts", self.app.dialogs.len());
        assert!(
            clients <= self.app.dialogs.len(),
            "{clients} client transactions from {} dialogs",
            self.app.dialogs.len()
        );
    }
}

/// `sip_core`: records of (control byte, message) fed to `Core::handle_message` on a virtual
/// clock, with the application answering per control bits. Every transmit parses as SIP, the
/// live state stays bounded by what was received, and once every call is hung up and every
/// INVITE answered, all state drains away with the timers (nothing leaks).
///
/// Control byte: bits 0-1 source (4 peers), bit 2 TCP, bits 3-4 time step before the message
/// (0, 100 ms, 2 s, 40 s), bits 5-7 what the application does with a new INVITE.
pub fn core_sequence(data: &[u8]) {
    let base = Instant::now();
    let mut harness =
        CoreHarness { core: Core::new(core_config(), 7), now: base, app: Application::default(), requests_handled: 0 };
    for record in split_records(data, RECORD_SEPARATOR).take(64) {
        let Some((&control, message)) = record.split_first() else {
            continue;
        };
        let step = [0, 100, 2_000, 40_000][usize::from((control >> 3) & 3)];
        let until = harness.now + Duration::from_millis(step);
        harness.run_timers_until(until, control);
        let tag = harness.app.last_to_tag.clone().unwrap_or_default();
        let message = replace_all(message, TAG_PLACEHOLDER, tag.as_bytes());
        let transport = if control & 4 != 0 { Transport::Tcp } else { Transport::Udp };
        let source = SocketAddr::from(([127, 0, 0, 1], 5061 + u16::from(control & 3)));
        let connection = (transport == Transport::Tcp).then_some(u64::from(control & 3));
        harness.core.handle_message(harness.now, Origin { transport, source, connection }, &message);
        harness.requests_handled += 1;
        harness.drain(control);
        harness.assert_bounded();
        // Hang up the oldest call now and then, as callers and agents do.
        if control & 0xE0 == 0xE0
            && let Some(dialog) = harness.app.dialogs.first().copied()
        {
            harness.hangup(dialog);
            harness.drain(control);
        }
    }
    // The end of every call: answer what is pending, hang up every dialog, let time pass.
    let now = harness.now;
    for invite in std::mem::take(&mut harness.app.pending_invites) {
        harness.core.reject(now, invite, 480, "Temporarily Unavailable", &[]);
    }
    for dialog in harness.app.dialogs.clone() {
        harness.hangup(dialog);
    }
    harness.drain(0xA0);
    let end = harness.now + Duration::from_secs(600);
    harness.run_timers_until(end, 0xA0);
    assert_eq!(harness.core.live_state(), (0, 0, 0), "state left after every call ended and 10 minutes passed");
    assert_eq!(harness.core.poll_timeout(), None, "a timer is still armed with nothing alive");
}
