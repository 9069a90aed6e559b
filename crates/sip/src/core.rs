//! Sans-IO SIP endpoint core, server and client (RFC 3261), in layers:
//!
//! ```text
//!   Core (this file): parse, route each message to its layer, build responses (§8.2.6),
//!   |                 UAS request checks (§8.2), CANCEL of a received INVITE (§9.2)
//!   +-- outgoing.rs   calls we place: the TU above our INVITEs (§13.2), CANCEL (§9.1),
//!   |                 digest retry (§22.2)
//!   +-- dialog.rs     dialogs with a role, UAC or UAS (§12): requests in a dialog, BYE (§15),
//!   |                 2xx retransmission (§13.3.1.4), ACK for a 2xx we received (§13.2.2.4)
//!   +-- transaction/  one state machine per kind (§17), responses routed back to their owner
//!         server_invite.rs  server_non_invite.rs  client_invite.rs  client_non_invite.rs
//! ```
//!
//! Feed it with [`Core::handle_message`] and [`Core::handle_timeout`] (time is a parameter),
//! drive application decisions with [`Core::ringing`], [`Core::reject`], [`Core::accept`],
//! [`Core::hangup`], [`Core::send_request`], [`Core::place_call`] and [`Core::cancel_call`],
//! and drain [`Core::poll_transmit`], [`Core::poll_event`] and [`Core::poll_timeout`].

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use self::transaction::Retransmit;
use self::transaction::client_invite::{ClientInvite, InviteResponse, InviteTimeout};
use self::transaction::client_non_invite::{ClientNonInvite, NonInviteResponse, NonInviteTimeout};
use self::transaction::server_invite::{ServerInvite, ServerInviteState, ServerTimeout};
use self::transaction::server_non_invite::ServerNonInvite;
use crate::client::{CallFailure, OutgoingCall};
use crate::endpoint::metric_names;
use crate::message::{
    Message, Method, NameAddr, ParseError, SipUri, StartLine, count_lines, parse_message, without_uri_headers,
};
use crate::{Timers, Transport};

/// Methods we serve; sent in `Allow` (RFC 3261 §20.5).
pub const ALLOW: &str = "INVITE, ACK, BYE, CANCEL, OPTIONS, UPDATE, PRACK";

/// Identifies a TCP connection in the shell.
pub type ConnectionId = u64;

/// Identifies a pending incoming INVITE (server transaction awaiting the application).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct InviteId(pub u64);

/// Identifies a call we placed (a client INVITE and what follows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutgoingId(pub u64);

/// Who cancels a call we placed: decides the outcome reported for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// The ring timeout expired: [`CallFailure::NoAnswer`].
    RingTimeout,
    /// The application cancelled: [`CallFailure::Cancelled`].
    Caller,
}

/// A call just placed by [`Core::place_call`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlacedCall {
    pub id: OutgoingId,
    pub call_id: String,
}

/// One step of a call we placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutgoingProgress {
    /// A 1xx other than 100.
    Provisional { status: u16, reason: String },
    /// A 2xx: the dialog exists, the ACK is sent.
    Answered { dialog: DialogId, sdp_answer: String },
    /// Final failure.
    Failed(CallFailure),
}

/// Identifies a dialog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialogId(pub u64);

/// Where a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    pub transport: Transport,
    pub source: SocketAddr,
    /// The TCP connection, for TCP.
    pub connection: Option<ConnectionId>,
}

/// Bytes to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub transport: Transport,
    pub destination: SocketAddr,
    /// For TCP: the connection to write on; `None` means "any connection to `destination`,
    /// or connect".
    pub connection: Option<ConnectionId>,
    pub payload: Vec<u8>,
}

/// Facts about an incoming call, for routing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallInfo {
    pub call_id: String,
    pub from_uri: String,
    pub from_display: Option<String>,
    pub to_uri: String,
    pub request_uri: String,
    /// User part of the Request-URI, or the tel: number (percent-decoded); the To URI's when
    /// the Request-URI has none.
    pub dialled: String,
    pub source: SocketAddr,
    pub transport: Transport,
    /// RFC 3325 §9.1: the URI of the first P-Asserted-Identity, when the INVITE has one.
    pub asserted_identity: Option<String>,
    /// The INVITE's headers (name as received, value), in order, at most
    /// [`CALL_INFO_MAX_HEADERS`]: the application picks the ones it routes on or shows.
    pub headers: Vec<(String, String)>,
}

/// Headers of an INVITE kept in [`CallInfo::headers`] at most (the message itself is bounded by
/// `max_message_bytes`).
pub const CALL_INFO_MAX_HEADERS: usize = 64;

/// The user part of a SIP or tel URI (parameters dropped).
fn uri_user(uri: &str) -> Option<String> {
    SipUri::parse(uri).and_then(|u| u.user).map(|u| u.split(';').next().unwrap_or_default().to_string())
}

/// Where an in-dialog request goes before resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    pub transport: Transport,
    /// Host without IPv6 brackets.
    pub host: String,
    pub port: u16,
}

/// How our BYE ended: `Ok` for a 2xx, or a 481 (the peer had already forgotten the dialog).
pub type ByeOutcome = Result<(), HangupError>;

/// Why our BYE did not complete cleanly. The dialog is over in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HangupError {
    #[error("no final response to BYE before Timer F")]
    Timeout,
    #[error("BYE answered with {0}")]
    Rejected(u16),
    #[error("the dialog has no usable remote target; ended without BYE")]
    NoRemoteTarget,
    #[error("next hop host name did not resolve")]
    Unresolvable,
    #[error("endpoint shut down")]
    Shutdown,
}

/// Dialog events for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DialogEvent {
    /// The dialog is confirmed: UAS, the ACK for our 2xx arrived; UAC, we received the 2xx and
    /// sent our ACK (reported right after the call's `Answered`).
    Confirmed,
    /// The peer hung up (its BYE already answered 200).
    RemoteBye,
    /// UAS: no ACK within 64*T1; the endpoint has sent BYE itself (§13.3.1.4).
    AckTimeout,
    /// An INFO in the dialog (RFC 6086) with a body of one of [`INFO_CONTENT_TYPES`]
    /// (DTMF), already answered 200. `content_type` is the header's value as sent.
    Info { content_type: String, body: String },
    /// A NOTIFY in the dialog for the `refer` event package (RFC 3515 §2.4.4: the progress of
    /// a REFER we sent), already answered 200. Header values as sent; `body` is normally a
    /// `message/sipfrag` status line ([`crate::sipfrag::parse_status`]).
    Notify { event: String, subscription_state: String, content_type: String, body: String },
    /// A REFER in a dialog whose application takes them ([`Core::accept_refers`]), already
    /// answered 202 Accepted (RFC 3515 §2.4.2); `refer_to` is the Refer-To value as sent. The
    /// application owes the referrer NOTIFYs (§2.4.4).
    Refer { refer_to: String },
    /// A re-INVITE or UPDATE with a new offer (`sdp`), or a re-INVITE without one (`None`: our
    /// 2xx must carry an offer). Answer it with [`Core::answer_reoffer`] within
    /// [`reoffer::REOFFER_ANSWER_WITHIN`] ([`reoffer`]).
    Reoffer { id: ReofferId, kind: ReofferKind, sdp: Option<String> },
    /// The ACK for a 2xx that carried our offer (delayed offer, re-INVITE without SDP), with the
    /// answer (`None`: the ACK had none, which ends the session: §14.2). Precedes `Confirmed`.
    Answer { sdp: Option<String> },
    /// The session timer ended the session (RFC 4028 §10): the endpoint has sent BYE itself.
    SessionExpired { cause: session_timer::SessionEnd },
}

/// The INFO bodies taken (DTMF, the de-facto formats); others are answered 415 (RFC 6086
/// §4.2.2) with these in Accept.
pub const INFO_CONTENT_TYPES: [&str; 2] = ["application/dtmf-relay", "application/dtmf"];

/// Events for the shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoreEvent {
    /// A new out-of-dialog INVITE (already answered 100 Trying).
    IncomingCall { invite: InviteId, info: Box<CallInfo>, offer: Option<String> },
    /// The caller cancelled (already answered 200 to CANCEL and 487 to the INVITE).
    InviteCancelled { invite: InviteId },
    /// Something happened in a dialog.
    Dialog { dialog: DialogId, notice: DialogEvent },
    /// Our BYE must go to a host name: resolve it and call [`Core::send_bye`] (or
    /// [`Core::bye_unresolvable`]).
    ByeNeedsResolution { dialog: DialogId, next_hop: NextHop },
    /// Our BYE finished (or there was nothing left to hang up).
    ByeFinished { dialog: DialogId, outcome: ByeOutcome },
    /// A request sent with [`Core::send_request`] ended.
    RequestFinished { dialog: DialogId, request: RequestId, outcome: RequestOutcome },
    /// A call we placed progressed.
    Outgoing { call: OutgoingId, progress: OutgoingProgress },
    /// A request sent with [`Core::send_request_outside_dialog`] ended.
    OutOfDialogFinished { request: RequestId, outcome: OutOfDialogOutcome },
}

/// What [`Core::hangup`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HangupStart {
    /// Nothing to do: the dialog already ended.
    AlreadyEnded,
    /// BYE sent, in flight, or waiting for the next hop's resolution
    /// ([`CoreEvent::ByeNeedsResolution`]); wait for [`CoreEvent::ByeFinished`].
    InProgress,
}

/// Identifies a request sent with [`Core::send_request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RequestId(pub u64);

/// How an in-dialog request of ours ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestOutcome {
    /// Its final response.
    Answered { status: u16, reason: String },
    /// Timer F: no final response.
    TimedOut,
}

/// Static configuration of the core.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    pub timers: Timers,
    /// `Server:` / `User-Agent:` value.
    pub user_agent: String,
    /// Advertised address for our Contact/Via over UDP (if listening on UDP).
    pub udp_contact: Option<SocketAddr>,
    /// Advertised address for our Contact/Via over TCP (if listening on TCP).
    pub tcp_contact: Option<SocketAddr>,
    /// Advertised address for our Contact/Via over TLS (if listening on TLS). Never replaced by
    /// the UDP or TCP address: a peer told `transport=tls` must find TLS there.
    pub tls_contact: Option<SocketAddr>,
    pub max_message_bytes: usize,
    pub max_headers: usize,
    /// Session timers (RFC 4028) on the dialogs we answer.
    pub session_timer: session_timer::SessionTimerConfig,
}

/// Transaction key (RFC 3261 §17.2.3): branch + sent-by + method (ACK maps to INVITE).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TxKey {
    branch: String,
    sent_by: String,
    method: String,
}

impl TxKey {
    fn for_request(request: &Message, method: &Method) -> Option<TxKey> {
        let via = request.top_via()?;
        let method = match method {
            Method::Ack => "INVITE".to_string(),
            other => other.as_str().to_string(),
        };
        match via.branch() {
            // §17.2.3: RFC 3261 compliant branch.
            Some(branch) if branch.starts_with("z9hG4bK") => {
                Some(TxKey { branch: branch.to_string(), sent_by: via.sent_by(), method })
            }
            // RFC 2543 fallback: Request-URI, tags, Call-ID, CSeq number and top Via.
            _ => {
                let uri = request.request_uri().unwrap_or_default();
                let (cseq, _) = request.cseq()?;
                Some(TxKey {
                    branch: format!(
                        "2543|{uri}|{}|{}|{cseq}|{}",
                        request.call_id().unwrap_or_default(),
                        request.from_tag().unwrap_or_default(),
                        via
                    ),
                    sent_by: via.sent_by(),
                    method,
                })
            }
        }
    }
}

/// A server transaction of either kind (§17.2).
#[derive(Debug)]
enum ServerTransaction {
    /// Boxed: it keeps the request and is twice the size of a non-INVITE one.
    Invite(Box<ServerInvite>),
    NonInvite(ServerNonInvite),
}

impl ServerTransaction {
    fn origin(&self) -> &Origin {
        match self {
            ServerTransaction::Invite(tx) => tx.origin(),
            ServerTransaction::NonInvite(tx) => tx.origin(),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match self {
            ServerTransaction::Invite(tx) => tx.deadline(),
            ServerTransaction::NonInvite(tx) => tx.deadline(),
        }
    }

    /// The INVITE transaction, if this is one.
    fn as_invite(&self) -> Option<&ServerInvite> {
        match self {
            ServerTransaction::Invite(tx) => Some(tx),
            ServerTransaction::NonInvite(_) => None,
        }
    }

    fn as_invite_mut(&mut self) -> Option<&mut ServerInvite> {
        match self {
            ServerTransaction::Invite(tx) => Some(tx),
            ServerTransaction::NonInvite(_) => None,
        }
    }
}

/// Who a non-INVITE client transaction reports to (responses go back to whoever sent the
/// request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestOwner {
    /// Our BYE ending this dialog.
    Bye(DialogId),
    /// Our CANCEL of this outgoing call.
    Cancel(OutgoingId),
    /// Another in-dialog request sent with [`Core::send_request`].
    InDialog { dialog: DialogId, request: RequestId },
    /// A request outside any dialog ([`Core::send_request_outside_dialog`]: REGISTER).
    OutOfDialog(RequestId),
    /// Our session refresh (RFC 4028, [`session_timer`]).
    Refresh(DialogId),
}

#[derive(Debug)]
struct OwnedNonInvite {
    owner: RequestOwner,
    transaction: ClientNonInvite,
}

/// Client transaction key (RFC 3261 §17.1.3): the branch of our top Via and the CSeq method
/// (a CANCEL shares its INVITE's branch).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    branch: String,
    method: Method,
}

/// The sans-IO endpoint.
#[derive(Debug)]
pub struct Core {
    config: CoreConfig,
    rng: StdRng,
    options_status: u16,
    next_id: u64,
    transactions: HashMap<TxKey, ServerTransaction>,
    invites: HashMap<InviteId, TxKey>,
    /// (Call-ID, From-tag, CSeq) of live initial INVITE transactions, for §8.2.2.2.
    merge_index: HashMap<(String, String, u32), TxKey>,
    dialogs: HashMap<DialogId, DialogState>,
    dialog_index: HashMap<(String, String, String), DialogId>,
    /// Our non-INVITE requests (BYE, CANCEL, in-dialog requests).
    client_transactions: HashMap<ClientKey, OwnedNonInvite>,
    /// Our INVITEs, by branch, with the call they belong to.
    client_invites: HashMap<String, (OutgoingId, ClientInvite)>,
    /// Calls we placed.
    outgoing: HashMap<OutgoingId, outgoing::OutgoingState>,
    /// Reliable provisional responses waiting for their PRACK (RFC 3262, [`prack`]).
    reliable: HashMap<InviteId, prack::Reliable>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<CoreEvent>,
    /// Access control for new out-of-dialog requests (`crate::screen`).
    screen: Option<std::sync::Arc<dyn crate::screen::Screen>>,
    /// Dialogs whose application takes REFERs ([`Core::accept_refers`]); others answer 501.
    refer_dialogs: HashSet<DialogId>,
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        180 => "Ringing",
        183 => "Session Progress",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        413 => "Request Entity Too Large",
        415 => "Unsupported Media Type",
        416 => "Unsupported URI Scheme",
        420 => "Bad Extension",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        488 => "Not Acceptable Here",
        489 => "Bad Event",
        491 => "Request Pending",
        500 => "Server Internal Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "Version Not Supported",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// Identity of a request for merged-request detection (RFC 3261 §8.2.2.2).
fn merge_key(request: &Message) -> (String, String, u32) {
    (
        request.call_id().unwrap_or_default().to_string(),
        request.from_tag().unwrap_or_default(),
        request.cseq().map(|(n, _)| n).unwrap_or_default(),
    )
}

fn count_malformed(transport: Transport) {
    metrics::counter!(metric_names::SIP_MALFORMED_TOTAL, "transport" => transport.as_lower()).increment(1);
}

fn host_for_uri(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    }
}

/// A `Warning` value (RFC 3261 §20.43): code 399 (miscellaneous) from agent `switchboard`.
fn warning(text: &str) -> String {
    format!("399 switchboard \"{text}\"")
}

/// Request-URI schemes we serve (RFC 3261 §8.2.2.1; tel per RFC 3966).
/// Whether a URI (bare or in `<>`) has the sips scheme.
fn is_sips(uri: &str) -> bool {
    uri.trim_start().trim_start_matches('<').get(..5).is_some_and(|scheme| scheme.eq_ignore_ascii_case("sips:"))
}

/// Whether a request asks for sips all the way (RFC 3261 §8.1.1.8): its Request-URI, or its top
/// Route, is a sips URI.
fn request_is_sips(request: &Message) -> bool {
    let uri_is_sips = match &request.start {
        StartLine::Request { uri, .. } => is_sips(uri),
        StartLine::Response { .. } => false,
    };
    uri_is_sips || request.header("Route").is_some_and(is_sips)
}

fn is_served_scheme(uri: &str) -> bool {
    uri.split_once(':').is_some_and(|(scheme, _)| ["sip", "sips", "tel"].iter().any(|s| s.eq_ignore_ascii_case(scheme)))
}

/// The INVITE's remote target (§12.1.1): its Contact, or for an RFC 2543 client (no
/// `z9hG4bK` branch: Contact was optional then) the From URI (RFC 4475 §3.4.1 inv2543).
fn remote_target(request: &Message) -> Option<String> {
    if let Some(contact) = request.header("Contact") {
        return NameAddr::parse(contact).map(|c| without_uri_headers(&c.uri).to_owned());
    }
    let rfc2543 = request.top_via().is_some_and(|v| !v.branch().is_some_and(|b| b.starts_with("z9hG4bK")));
    if rfc2543 { request.from().map(|f| f.uri) } else { None }
}

/// Why an INVITE body cannot be used (§8.2.3: 415).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyProblem {
    /// A Content-Encoding other than identity.
    Encoding,
    /// Neither application/sdp nor a multipart/mixed holding one.
    MediaType,
}

/// `type/subtype` of a Content-Type or Accept entry, lower-cased, without parameters.
fn media_type(value: &str) -> String {
    value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase()
}

/// The SDP offer in an INVITE: `Ok(None)` without a body (delayed offer, RFC 3261 §13.2.1) or
/// with one that is not UTF-8; the `application/sdp` part of a `multipart/mixed` body
/// (RFC 5621; RFC 4475 mpart01); `Err` for any other Content-Type or Content-Encoding.
fn invite_offer(request: &Message) -> Result<Option<String>, BodyProblem> {
    let identity = request
        .header_values("Content-Encoding")
        .flat_map(|v| v.split(','))
        .all(|e| e.trim().eq_ignore_ascii_case("identity"));
    if !identity {
        return Err(BodyProblem::Encoding);
    }
    if request.body.is_empty() {
        return Ok(None);
    }
    // A body without Content-Type (§7.4.1 says it MUST have one) is left to the offer/answer
    // layer as before: no offer.
    let Some(content_type) = request.header("Content-Type") else {
        return Ok(None);
    };
    let sdp = match media_type(content_type).as_str() {
        "application/sdp" => Some(request.body.as_slice()),
        "multipart/mixed" => multipart_boundary(content_type)
            .and_then(|boundary| multipart_sdp_part(&request.body, &boundary))
            .map(Some)
            .ok_or(BodyProblem::MediaType)?,
        _ => return Err(BodyProblem::MediaType),
    };
    Ok(sdp.and_then(|bytes| String::from_utf8(bytes.to_vec()).ok()))
}

/// The `boundary` parameter of a multipart Content-Type (RFC 2046 §5.1.1), unquoted.
fn multipart_boundary(content_type: &str) -> Option<String> {
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.split_once('=')?;
        name.trim().eq_ignore_ascii_case("boundary").then(|| value.trim().trim_matches('"').to_string())
    })
}

/// The body of the first `application/sdp` part of a multipart body (RFC 2046 §5.1.1: parts
/// are separated by `--boundary` lines; the CRLF before a delimiter belongs to it). Works on
/// bytes: other parts may be binary.
fn multipart_sdp_part<'a>(body: &'a [u8], boundary: &str) -> Option<&'a [u8]> {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    if delimiter.len() <= 2 {
        return None;
    }
    let mut starts = Vec::new();
    let mut from = 0;
    while let Some(found) = body.get(from..).and_then(|rest| rest.windows(delimiter.len()).position(|w| w == delimiter))
    {
        starts.push(from + found);
        from += found + delimiter.len();
    }
    for pair in starts.windows(2) {
        let [start, end] = pair else {
            continue;
        };
        let part = body.get(start + delimiter.len()..*end)?;
        // Skip the rest of the delimiter line, then drop the CRLF that belongs to the next one.
        let line_end = part.iter().position(|b| *b == b'\n')?;
        let part = part.get(line_end + 1..)?;
        let part = part.strip_suffix(b"\r\n").or_else(|| part.strip_suffix(b"\n")).unwrap_or(part);
        let (headers, content) = if part.starts_with(b"\r\n") || part.starts_with(b"\n") {
            (&[][..], part.get(part.iter().position(|b| *b == b'\n')? + 1..)?)
        } else {
            let (head_end, body_start) = crate::message::find_header_end(part)?;
            (part.get(..head_end)?, part.get(body_start..)?)
        };
        let is_sdp = headers.split(|b| *b == b'\n').any(|line| {
            std::str::from_utf8(line).ok().and_then(|l| l.split_once(':')).is_some_and(|(name, value)| {
                name.trim().eq_ignore_ascii_case("Content-Type") && media_type(value) == "application/sdp"
            })
        });
        if is_sdp {
            return Some(content);
        }
    }
    None
}

/// Whether the request's Accept (if any) admits an SDP body in our response (§20.1: no Accept
/// means application/sdp; an empty one admits nothing).
fn accepts_sdp(request: &Message) -> bool {
    let mut accept = request.header_values("Accept").peekable();
    if accept.peek().is_none() {
        return true;
    }
    accept
        .flat_map(|v| v.split(','))
        .map(media_type)
        .any(|m| m == "application/sdp" || m == "application/*" || m == "*/*")
}

/// Methods a UAS knows but does not serve outside a dialog: 405 (RFC 3261 §8.2.1).
fn is_known_unserved(method: &Method) -> bool {
    matches!(
        method,
        Method::Register
            | Method::Subscribe
            | Method::Notify
            | Method::Message
            | Method::Publish
            | Method::Refer
            | Method::Info
            | Method::Update
            | Method::Prack
    )
}

impl Core {
    /// Creates a core; `seed` feeds the tag/branch generator.
    pub fn new(config: CoreConfig, seed: u64) -> Core {
        Core {
            config,
            rng: StdRng::seed_from_u64(seed),
            options_status: 200,
            next_id: 1,
            transactions: HashMap::new(),
            invites: HashMap::new(),
            merge_index: HashMap::new(),
            dialogs: HashMap::new(),
            dialog_index: HashMap::new(),
            client_transactions: HashMap::new(),
            client_invites: HashMap::new(),
            outgoing: HashMap::new(),
            reliable: HashMap::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            screen: None,
            refer_dialogs: HashSet::new(),
        }
    }

    /// Sets the screen new out-of-dialog requests pass before they are answered.
    pub fn set_screen(&mut self, screen: Option<std::sync::Arc<dyn crate::screen::Screen>>) {
        self.screen = screen;
    }

    /// Status answered to OPTIONS (200 normally, 503 while draining).
    pub fn set_options_status(&mut self, status: u16) {
        self.options_status = status;
    }

    /// Next bytes to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// Next event for the shell.
    pub fn poll_event(&mut self) -> Option<CoreEvent> {
        self.events.pop_front()
    }

    /// Number of live server transactions, dialogs and client transactions (for tests/metrics).
    pub fn live_state(&self) -> (usize, usize, usize) {
        (self.transactions.len(), self.dialogs.len(), self.client_transactions.len() + self.client_invites.len())
    }

    /// Whether a dialog or a pending transaction was set up over this TCP connection: its peer
    /// expects in-dialog requests (our BYE) on it (RFC 3261 §18.2.2), so it must not be closed
    /// for idling during a long, quiet call.
    pub fn connection_in_use(&self, connection: ConnectionId) -> bool {
        let uses = |origin: &Origin| origin.connection == Some(connection);
        self.dialogs.values().any(|d| uses(&d.origin)) || self.transactions.values().any(|t| uses(t.origin()))
    }

    /// Earliest deadline at which [`Core::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let tx = self.transactions.values().map(ServerTransaction::deadline);
        let dialogs = self.dialogs.values().flat_map(|d| match &d.pending_2xx {
            Some(p) => [p.retransmit.deadline(), Some(p.give_up_at)],
            None => [None, None],
        });
        let requests = self.client_transactions.values().map(|c| c.transaction.deadline());
        let invites = self.client_invites.values().map(|(_, c)| c.deadline());
        let outgoing = self.outgoing.values().map(|o| o.deadline());
        let reoffers = [self.reoffer_deadline(), self.session_timer_deadline(), self.prack_deadline()];
        tx.chain(dialogs).chain(requests).chain(invites).chain(outgoing).chain(reoffers).flatten().min()
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn random_token(&mut self) -> String {
        format!("{:016x}", self.rng.random::<u64>())
    }

    fn contact_for(&self, transport: Transport) -> Option<SocketAddr> {
        match transport {
            Transport::Udp => self.config.udp_contact.or(self.config.tcp_contact),
            Transport::Tcp => self.config.tcp_contact.or(self.config.udp_contact),
            Transport::Tls => self.config.tls_contact,
        }
    }

    // Kept for the requests and responses that have no sips context to pass on.
    #[allow(dead_code)]
    fn contact_header(&self, transport: Transport) -> String {
        self.contact_header_for(transport, false)
    }

    /// Our Contact. `sips`: the request that this answers or that opens the dialog has a sips
    /// Request-URI (or Route), so the Contact must be sips too (RFC 3261 §8.1.1.8, §12.1.1);
    /// RFC 5630 §3.2: a sips URI implies TLS and takes no `transport=tls`.
    fn contact_header_for(&self, transport: Transport, sips: bool) -> String {
        match self.contact_for(transport) {
            Some(addr) if sips && transport == Transport::Tls => {
                format!("<sips:switchboard@{}:{}>", host_for_uri(addr.ip()), addr.port())
            }
            Some(addr) => format!(
                "<sip:switchboard@{}:{};transport={}>",
                host_for_uri(addr.ip()),
                addr.port(),
                transport.as_lower()
            ),
            None => "<sip:switchboard@invalid>".to_string(),
        }
    }

    /// Handles one received message (a UDP datagram or a framed TCP message).
    pub fn handle_message(&mut self, now: Instant, origin: Origin, bytes: &[u8]) {
        // Guards before parsing.
        if bytes.len() > self.config.max_message_bytes || count_lines(bytes) > self.config.max_headers + 1 {
            tracing::debug!(source = %origin.source, len = bytes.len(), "dropping oversized SIP message");
            count_malformed(origin.transport);
            return;
        }
        if bytes.iter().all(|b| b.is_ascii_whitespace()) {
            return; // keep-alive
        }
        match parse_message(bytes, origin.transport) {
            Ok(message) => match &message.start {
                StartLine::Request { method, .. } => {
                    let method = method.clone();
                    metrics::counter!(metric_names::SIP_REQUESTS_TOTAL, "method" => method.metric_label()).increment(1);
                    self.handle_request(now, origin, message, method);
                }
                StartLine::Response { code, .. } => {
                    let code = *code;
                    let method = message.cseq().map_or("other", |(_, method)| method.metric_label());
                    metrics::counter!(metric_names::SIP_RESPONSES_RECEIVED_TOTAL, "method" => method, "code" => code.to_string())
                        .increment(1);
                    self.handle_response(now, origin, message, code);
                }
            },
            Err(error) => self.handle_malformed(now, origin, error),
        }
    }

    /// RFC 3261 §21.4.1 / §21.5.7: answer 400 (505 for another SIP version) with what was wrong
    /// in the reason phrase, whenever the request is readable enough to build a response.
    /// Malformed responses are dropped (a response is never answered: RFC 4475 bigcode,
    /// scalarlg).
    fn handle_malformed(&mut self, now: Instant, origin: Origin, error: ParseError) {
        count_malformed(origin.transport);
        tracing::debug!(source = %origin.source, error = %error.kind, "malformed SIP message");
        let Some(partial) = error.partial else {
            return;
        };
        let Some(method) = partial.method().cloned() else {
            return;
        };
        metrics::counter!(metric_names::SIP_REQUESTS_TOTAL, "method" => method.metric_label()).increment(1);
        // An ACK is never answered (§17.2.3); without any Via there is nothing to copy into the
        // response (§8.2.6.2). A Via we cannot parse is copied as received and the response
        // goes back to the source address (RFC 4475 badinv01).
        if method == Method::Ack || partial.header("Via").is_none() {
            return;
        }
        // A source or User-Agent the screen drops learns nothing from our 400 either.
        if partial.to_tag().is_none()
            && self.screen.as_ref().is_some_and(|s| s.screen(now, &origin, &partial) == crate::screen::Verdict::Drop)
        {
            return;
        }
        let status = error.kind.status();
        let (reason, warning) = match status {
            505 => ("Version Not Supported".to_string(), Some(warning("only SIP/2.0 is supported"))),
            _ => (format!("Bad Request ({})", error.kind), None),
        };
        let extra: Vec<(&str, &str)> = warning.iter().map(|w| ("Warning", w.as_str())).collect();
        let tag = self.random_token();
        let response = self.build_response(&partial, &origin, status, &reason, Some(&tag), &extra);
        let transmit = self.reply_transmit(&partial, &origin, response, &method, status);
        if let Some(transmit) = transmit {
            self.transmits.push_back(transmit);
        }
    }

    fn handle_request(&mut self, now: Instant, origin: Origin, request: Message, method: Method) {
        let Some(key) = TxKey::for_request(&request, &method) else {
            count_malformed(origin.transport);
            return;
        };

        // §17.2.3 matching: ACK to a non-2xx final and retransmissions.
        if method == Method::Ack {
            let taken = self
                .transactions
                .get_mut(&key)
                .and_then(ServerTransaction::as_invite_mut)
                .is_some_and(|tx| tx.on_ack(now, origin.transport.is_reliable()));
            if !taken {
                self.handle_ack_for_2xx(now, &request);
            }
            return;
        }
        if self.absorb_pending_reoffer(&key) {
            return;
        }
        if let Some(tx) = self.transactions.get(&key) {
            // Retransmission: resend the last response (§17.2.1, §17.2.2).
            let reply = match tx {
                ServerTransaction::Invite(tx) => tx.on_retransmission(),
                ServerTransaction::NonInvite(tx) => tx.on_retransmission(),
            };
            if let Some(reply) = reply {
                self.transmits.push_back(reply);
            }
            return;
        }
        if request.to_tag().is_none() && !self.passes_screen(now, &origin, &request) {
            return;
        }

        if method == Method::Cancel {
            self.handle_cancel(now, origin, request, key);
            return;
        }

        // §8.2.1 method inspection first: methods we do not know at all (501), and those we
        // know but do not serve outside a dialog (405).
        if matches!(method, Method::Other(_)) {
            self.respond(now, key, &origin, &request, 501, None, &[("Allow", ALLOW)]);
            return;
        }
        let in_dialog = request.to_tag().is_some();
        if !in_dialog && is_known_unserved(&method) {
            self.respond(now, key, &origin, &request, 405, None, &[("Allow", ALLOW)]);
            return;
        }
        // §8.2.2.1: a Request-URI scheme we do not serve (RFC 4475 unkscm, novelsc).
        if !is_served_scheme(request.request_uri().unwrap_or_default()) {
            let warning = warning("only sip, sips and tel Request-URIs are served");
            self.respond(now, key, &origin, &request, 416, None, &[("Warning", warning.as_str())]);
            return;
        }
        // §16.3 step 3: no hops left. OPTIONS is answered anyway: Max-Forwards 0 is how a peer
        // asks the next hop itself (§11, RFC 4475 §3.3.11 zeromf).
        if method != Method::Options
            && request.header("Max-Forwards").and_then(|v| v.trim().parse::<u8>().ok()) == Some(0)
        {
            self.respond(now, key, &origin, &request, 483, None, &[]);
            return;
        }
        // §8.2.2.3: of the option-tags we support `timer` (RFC 4028) and `100rel` (RFC 3262); any
        // other is unsupported.
        let required: Vec<String> = request
            .header_values("Require")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("timer") && !t.eq_ignore_ascii_case("100rel"))
            .collect();
        if !required.is_empty() {
            let unsupported = required.join(", ");
            self.respond(now, key, &origin, &request, 420, None, &[("Unsupported", unsupported.as_str())]);
            return;
        }

        match request.to_tag() {
            Some(to_tag) => self.handle_in_dialog(now, origin, request, method, key, to_tag),
            None => self.handle_out_of_dialog(now, origin, request, method, key),
        }
    }

    /// Asks the screen about a new out-of-dialog request; `false` when it was refused (answered
    /// or dropped) and must go no further.
    fn passes_screen(&mut self, now: Instant, origin: &Origin, request: &Message) -> bool {
        let Some(screen) = &self.screen else {
            return true;
        };
        match screen.screen(now, origin, request) {
            crate::screen::Verdict::Pass => true,
            crate::screen::Verdict::Drop => false,
            // Answered statelessly (§8.2.7), as Kamailio's `sl` does: a flood of refused INVITEs
            // leaves no transaction behind (a server INVITE transaction would hold the request
            // until Timer I, 5 s after the ACK). A retransmitted request is screened and answered
            // again; the ACK of the refusal matches nothing and is dropped.
            crate::screen::Verdict::Reject { status, reason, headers } => {
                let extra: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
                let tag = self.random_token();
                let response = self.build_response(request, origin, status, &reason, Some(&tag), &extra);
                if let Some(method) = request.method()
                    && let Some(reply) = self.reply_transmit(request, origin, response, method, status)
                {
                    self.transmits.push_back(reply);
                }
                false
            }
        }
    }

    fn handle_out_of_dialog(&mut self, now: Instant, origin: Origin, request: Message, method: Method, key: TxKey) {
        match method {
            Method::Invite => self.handle_new_invite(now, origin, request, key),
            Method::Options => {
                let status = self.options_status;
                self.respond(
                    now,
                    key,
                    &origin,
                    &request,
                    status,
                    None,
                    &[("Allow", ALLOW), ("Accept", "application/sdp")],
                );
            }
            // BYE outside a dialog (no To-tag): nothing to end (§15.1.2).
            Method::Bye => self.respond(now, key, &origin, &request, 481, None, &[]),
            // Unknown and unserved methods were answered in `handle_request`.
            _ => self.respond(now, key, &origin, &request, 501, None, &[]),
        }
    }

    fn handle_new_invite(&mut self, now: Instant, origin: Origin, request: Message, key: TxKey) {
        // §8.2.2.2: the same request arriving again over another path (new branch) is merged.
        let merge = merge_key(&request);
        if self.merge_index.get(&merge).is_some_and(|k| *k != key && self.transactions.contains_key(k)) {
            self.respond(now, key, &origin, &request, 482, None, &[]);
            return;
        }
        let to_tag = self.random_token();
        // §8.1.1.8: an INVITE carries exactly one Contact (it becomes the remote target).
        if request.header_values("Contact").nth(1).is_some() {
            self.respond(now, key, &origin, &request, 400, Some("Bad Request (more than one Contact)"), &[]);
            return;
        }
        if remote_target(&request).is_none() {
            self.respond(now, key, &origin, &request, 400, Some("Bad Request (missing Contact)"), &[]);
            return;
        }
        // §8.2.3 content processing: a body we cannot read is 415 with what we accept
        // (§21.4.13; RFC 4475 invut).
        let offer = match invite_offer(&request) {
            Ok(offer) => offer,
            Err(BodyProblem::Encoding) => {
                let warning = warning("only the identity Content-Encoding is supported");
                let extra = [("Accept-Encoding", "identity"), ("Warning", warning.as_str())];
                self.respond(now, key, &origin, &request, 415, None, &extra);
                return;
            }
            Err(BodyProblem::MediaType) => {
                let warning = warning("only application/sdp bodies are supported");
                let extra = [("Accept", "application/sdp"), ("Warning", warning.as_str())];
                self.respond(now, key, &origin, &request, 415, None, &extra);
                return;
            }
        };
        // §21.4.7: our answer carries SDP; an Accept without it leaves nothing we may send
        // (RFC 4475 §3.3.15 sdp01).
        if !accepts_sdp(&request) {
            let warning = warning("a session answer needs application/sdp, which Accept excludes");
            self.respond(now, key, &origin, &request, 406, None, &[("Warning", warning.as_str())]);
            return;
        }
        let request_uri = request.request_uri().unwrap_or_default().to_string();
        let from = request.from();
        let to_uri = request.to().map(|t| t.uri).unwrap_or_default();
        let info = CallInfo {
            call_id: request.call_id().unwrap_or_default().to_string(),
            from_uri: from.as_ref().map(|f| f.uri.clone()).unwrap_or_default(),
            from_display: from.and_then(|f| f.display),
            dialled: uri_user(&request_uri).or_else(|| uri_user(&to_uri)).unwrap_or_default(),
            to_uri,
            request_uri,
            source: origin.source,
            transport: origin.transport,
            // Two identities (a sip: and a tel: URI) may share one header, comma-separated.
            asserted_identity: request
                .header("P-Asserted-Identity")
                .and_then(|value| NameAddr::parse(value).or_else(|| value.split(',').next().and_then(NameAddr::parse)))
                .map(|id| id.uri),
            headers: request
                .headers
                .iter()
                .take(CALL_INFO_MAX_HEADERS)
                .map(|h| (h.name.clone(), h.value.clone()))
                .collect(),
        };

        // RFC 4028 §9: an interval below our minimum is 422 with the Min-SE we take.
        let timer = session_timer::TimerRequest::read(&request);
        if let session_timer::TimerDecision::TooSmall { min_se } =
            session_timer::negotiate_uas(self.config.session_timer, &timer)
        {
            let min_se = min_se.to_string();
            self.respond(now, key, &origin, &request, 422, None, &[("Min-SE", min_se.as_str())]);
            return;
        }
        // §17.2.1: the INVITE server transaction answers 100 Trying at once.
        let trying = self.build_response(&request, &origin, 100, "Trying", None, &[]);
        let Some(reply) = self.reply_transmit(&request, &origin, trying, &Method::Invite, 100) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        let invite = InviteId(self.fresh_id());
        let transaction = ServerInvite::proceeding(request, origin, to_tag, Some(invite), reply, self.config.timers);
        self.transactions.insert(key.clone(), ServerTransaction::Invite(Box::new(transaction)));
        self.merge_index.insert(merge, key.clone());
        self.invites.insert(invite, key);
        self.events.push_back(CoreEvent::IncomingCall { invite, info: Box::new(info), offer });
    }

    /// §9.2: CANCEL matches the INVITE transaction with the same branch and sent-by.
    fn handle_cancel(&mut self, now: Instant, origin: Origin, request: Message, key: TxKey) {
        let invite_key = TxKey { method: "INVITE".to_string(), ..key.clone() };
        let Some(tx) = self.transactions.get(&invite_key).and_then(ServerTransaction::as_invite) else {
            self.respond(now, key, &origin, &request, 481, None, &[]);
            return;
        };
        let to_tag = tx.to_tag().to_string();
        let pending = tx.state() == ServerInviteState::Proceeding;
        let invite = tx.invite();
        // §9.2: the CANCEL's 200 SHOULD carry the same To-tag as the INVITE's responses.
        self.respond_tagged(now, key, &origin, &request, 200, None, &[], Some(to_tag));
        if pending && let Some(invite) = invite {
            if self.cancel_held(now, invite) {
                return;
            }
            // A reliable 180 still unacknowledged stops being retransmitted after the 487.
            self.forget_reliable(invite);
            self.final_non_2xx(now, invite, 487, "Request Terminated", &[]);
            self.events.push_back(CoreEvent::InviteCancelled { invite });
        }
    }

    /// §17.1.3: a response goes to the client transaction whose branch and CSeq method it
    /// carries, and from there to whoever sent the request. Anything else is dropped
    /// (§18.1.2: a stray response is discarded).
    fn handle_response(&mut self, now: Instant, origin: Origin, response: Message, code: u16) {
        let Some(branch) = response.top_via().and_then(|v| v.branch().map(str::to_string)) else {
            return;
        };
        let Some((_, method)) = response.cseq() else {
            return;
        };
        if method == Method::Invite {
            let Some((call, transaction)) = self.client_invites.get_mut(&branch) else {
                return;
            };
            let call = *call;
            match transaction.on_response(now, &response, code) {
                InviteResponse::Provisional => self.outgoing_provisional(now, call, &branch, &response, code),
                InviteResponse::Success => self.outgoing_success(now, origin, call, &response),
                InviteResponse::Failure { ack } => {
                    self.transmits.push_back(ack);
                    self.outgoing_failure(now, call, &branch, &response, code);
                }
                InviteResponse::RetransmittedFailure { ack } => self.transmits.push_back(ack),
                InviteResponse::Absorbed => {}
            }
            return;
        }
        let key = ClientKey { branch, method };
        let Some(entry) = self.client_transactions.get_mut(&key) else {
            return;
        };
        if entry.transaction.on_response(now, code) != NonInviteResponse::Final {
            return;
        }
        match entry.owner {
            RequestOwner::Bye(dialog) => {
                let outcome =
                    if (200..300).contains(&code) || code == 481 { Ok(()) } else { Err(HangupError::Rejected(code)) };
                if let Some(state) = self.dialogs.get_mut(&dialog) {
                    state.bye_branch = None;
                }
                self.end_dialog(dialog);
                self.events.push_back(CoreEvent::ByeFinished { dialog, outcome });
            }
            // A 200 to our CANCEL: the 487 to the INVITE follows (§9.1); anything else (481:
            // the INVITE already ended) leaves the INVITE's own final response to decide.
            RequestOwner::Cancel(_) => {}
            RequestOwner::Refresh(dialog) => self.refresh_answered(now, dialog, &response),
            RequestOwner::InDialog { dialog, request } => {
                let reason = response.reason_phrase().to_owned();
                let outcome = RequestOutcome::Answered { status: code, reason };
                self.events.push_back(CoreEvent::RequestFinished { dialog, request, outcome });
            }
            RequestOwner::OutOfDialog(request) => {
                let outcome = OutOfDialogOutcome::Answered(Box::new(response));
                self.events.push_back(CoreEvent::OutOfDialogFinished { request, outcome });
            }
        }
    }

    /// Sends 180 Ringing (with our To-tag and the Record-Route set, §12.1.1); reliably when the
    /// INVITE requires `100rel` (RFC 3262, [`prack`]).
    pub fn ringing(&mut self, now: Instant, invite: InviteId) {
        let Some(key) = self.invites.get(&invite).cloned() else {
            return;
        };
        if self.ringing_reliably(now, invite, &key) {
            return;
        }
        let Some((request, origin, to_tag)) = self.proceeding_invite(&key) else {
            return;
        };
        let contact = self.contact_header_for(origin.transport, request_is_sips(&request));
        let mut extra: Vec<(&str, &str)> =
            request.header_values("Record-Route").map(|rr| ("Record-Route", rr)).collect();
        extra.push(("Contact", contact.as_str()));
        let response = self.build_response(&request, &origin, 180, "Ringing", Some(&to_tag), &extra);
        let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, 180) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        if let Some(tx) = self.transactions.get_mut(&key).and_then(ServerTransaction::as_invite_mut) {
            tx.provisional(reply);
        }
    }

    /// Rejects a pending INVITE with a final non-2xx (no-op after CANCEL or a prior answer).
    pub fn reject(
        &mut self,
        now: Instant,
        invite: InviteId,
        status: u16,
        reason: &str,
        extra_headers: &[(&str, &str)],
    ) {
        let status = if (300..=699).contains(&status) { status } else { 500 };
        self.final_non_2xx(now, invite, status, reason, extra_headers);
        self.invites.remove(&invite);
        self.forget_reliable(invite);
    }

    /// §17.2.1: a final non-2xx moves the INVITE transaction to Completed; over UDP it is
    /// retransmitted on Timer G until ACK or Timer H.
    fn final_non_2xx(
        &mut self,
        now: Instant,
        invite: InviteId,
        status: u16,
        reason: &str,
        extra_headers: &[(&str, &str)],
    ) {
        let Some(key) = self.invites.get(&invite).cloned() else {
            return;
        };
        let Some((request, origin, to_tag)) = self.proceeding_invite(&key) else {
            return;
        };
        let reason = if reason.is_empty() { reason_phrase(status) } else { reason };
        let response = self.build_response(&request, &origin, status, reason, Some(&to_tag), extra_headers);
        let Some(reply) = self.reply_transmit(&request, &origin, response, &Method::Invite, status) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        if let Some(tx) = self.transactions.get_mut(&key).and_then(ServerTransaction::as_invite_mut) {
            tx.complete(now, reply);
        }
    }

    /// The request, origin and To tag of an INVITE transaction still waiting for the
    /// application (Proceeding).
    fn proceeding_invite(&self, key: &TxKey) -> Option<(Message, Origin, String)> {
        let tx = self.transactions.get(key)?.as_invite()?;
        (tx.state() == ServerInviteState::Proceeding)
            .then(|| (tx.request().clone(), *tx.origin(), tx.to_tag().to_string()))
    }

    /// Answers a pending INVITE with 200 OK and our SDP; creates the dialog (§12.1.1) and
    /// retransmits the 2xx until ACK (§13.3.1.4). `None` if the INVITE is no longer pending.
    pub fn accept(&mut self, now: Instant, invite: InviteId, sdp_answer: &str) -> Option<DialogId> {
        let key = self.invites.remove(&invite)?;
        let (request, origin, to_tag) = self.proceeding_invite(&key)?;
        let contact = self.contact_header_for(origin.transport, request_is_sips(&request));
        let mut extra: Vec<(&str, &str)> =
            request.header_values("Record-Route").map(|rr| ("Record-Route", rr)).collect();
        extra.push(("Contact", contact.as_str()));
        extra.push(("Allow", ALLOW));
        extra.push(("Content-Type", "application/sdp"));
        // RFC 4028 §9: the session timer we run, and the option tags we support.
        let timer_wishes = session_timer::TimerRequest::read(&request);
        let timer_decision = session_timer::negotiate_uas(self.config.session_timer, &timer_wishes);
        let timer_headers = session_timer::response_headers(timer_decision);
        extra.extend(timer_headers.iter().map(|(name, value)| (*name, value.as_str())));
        extra.push(("Supported", session_timer::SUPPORTED));
        let mut response = self.build_response(&request, &origin, 200, "OK", Some(&to_tag), &extra);
        response.body = sdp_answer.as_bytes().to_vec();
        let reply = self.reply_transmit(&request, &origin, response, &Method::Invite, 200)?;
        // RFC 3262 §3: not before the PRACK of our reliable 180 (`prack.rs` sends it then).
        let held = self.awaiting_prack(invite);
        if !held {
            self.transmits.push_back(reply.clone());
        }
        let timers = self.config.timers;
        if !held && let Some(tx) = self.transactions.get_mut(&key).and_then(ServerTransaction::as_invite_mut) {
            tx.accept(now, reply.clone());
        }

        let call_id = request.call_id().unwrap_or_default().to_string();
        let remote_tag = request.from_tag().unwrap_or_default();
        let (cseq, _) = request.cseq()?;
        let local_party = format!("{};tag={to_tag}", request.header("To").unwrap_or_default());
        let remote_target = remote_target(&request).unwrap_or_default();
        let dialog_id = DialogId(self.fresh_id());
        // Delayed offer (§13.2.1): the INVITE had no SDP, so our 2xx carries the offer and the
        // ACK the answer.
        let offer = invite_offer(&request).ok().flatten();
        let mut pending = Pending2xx::start(now, cseq, reply.clone(), timers, true);
        pending.carries_offer = offer.is_none();
        if held {
            self.hold_until_prack(invite, dialog_id, reply, offer.is_none());
        }
        let pending = (!held).then_some(pending);
        // §8.1.1.5: CSeq MUST stay below 2**31 (peers, and our own parser, refuse more); start in
        // the lower half so that the requests we add to the dialog never reach it.
        let local_cseq = self.rng.random_range(1..=0x3fff_ffff_u32);
        self.dialogs.insert(
            dialog_id,
            DialogState {
                call_id: call_id.clone(),
                local_tag: to_tag.clone(),
                remote_tag: remote_tag.clone(),
                local_party,
                remote_party: request.header("From").unwrap_or_default().to_string(),
                remote_target,
                route_set: request.header_values("Record-Route").map(str::to_string).collect(),
                local_cseq,
                remote_cseq: Some(cseq),
                origin,
                phase: DialogPhase::WaitingAck,
                pending_2xx: pending,
                last_answer: sdp_answer.to_string(),
                bye_branch: None,
                role: Role::Uas,
                ack_for_2xx: None,
                remote_sdp_origin: offer.as_deref().and_then(reoffer::sdp_origin_line),
                reoffer: None,
                session_timer: session_timer::SessionTimer::answered(now, timer_decision),
                peer_allows_update: timer_wishes.allows_update,
            },
        );
        self.dialog_index.insert((call_id, to_tag, remote_tag), dialog_id);
        Some(dialog_id)
    }

    /// Our Via for a request (§8.1.1.7, RFC 3581 `rport`).
    fn via_value(&self, transport: Transport, branch: &str) -> String {
        let via_host = self
            .contact_for(transport)
            .map_or_else(|| "invalid".to_string(), |a| format!("{}:{}", host_for_uri(a.ip()), a.port()));
        format!("SIP/2.0/{} {via_host};branch={branch};rport", transport.as_upper())
    }

    /// Runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Server transactions: Timer G retransmits, H/I/J/L expiry.
        let mut expired = Vec::new();
        for (key, tx) in &mut self.transactions {
            match tx {
                ServerTransaction::Invite(tx) => match tx.on_timeout(now) {
                    ServerTimeout::Idle => {}
                    ServerTimeout::Retransmit(reply) => self.transmits.push_back(reply),
                    ServerTimeout::Terminated => expired.push(key.clone()),
                },
                ServerTransaction::NonInvite(tx) if tx.expired(now) => expired.push(key.clone()),
                ServerTransaction::NonInvite(_) => {}
            }
        }
        for key in expired {
            if let Some(ServerTransaction::Invite(tx)) = self.transactions.remove(&key)
                && let Some(invite) = tx.invite()
            {
                self.invites.remove(&invite);
                self.reliable.remove(&invite);
                self.merge_index.remove(&merge_key(tx.request()));
            }
        }

        // Dialogs: 2xx retransmission and the ACK wait (§13.3.1.4).
        let mut ack_timeouts = Vec::new();
        for (id, dialog) in &mut self.dialogs {
            let Some(pending) = &mut dialog.pending_2xx else {
                continue;
            };
            if pending.give_up_at <= now {
                ack_timeouts.push(*id);
                continue;
            }
            if pending.retransmit.fire(now) {
                self.transmits.push_back(pending.transmit.clone());
            }
        }
        for id in ack_timeouts {
            if let Some(dialog) = self.dialogs.get_mut(&id) {
                dialog.pending_2xx = None;
            }
            self.events.push_back(CoreEvent::Dialog { dialog: id, notice: DialogEvent::AckTimeout });
            self.hangup(now, id);
        }

        // Our non-INVITE requests: Timer E retransmits, Timer F gives up, Timer K ends.
        let mut ended = Vec::new();
        for (key, entry) in &mut self.client_transactions {
            match entry.transaction.on_timeout(now) {
                NonInviteTimeout::Idle => {}
                NonInviteTimeout::Retransmit(transmit) => self.transmits.push_back(transmit),
                NonInviteTimeout::TimedOut => ended.push((key.clone(), Some(entry.owner))),
                NonInviteTimeout::Terminated => ended.push((key.clone(), None)),
            }
        }
        for (key, timed_out) in ended {
            self.client_transactions.remove(&key);
            if let Some(owner) = timed_out {
                self.request_timed_out(owner);
            }
        }

        // Our INVITEs: Timer A retransmits, Timer B gives up, Timers D and M end them.
        let mut ended = Vec::new();
        for (branch, (call, transaction)) in &mut self.client_invites {
            match transaction.on_timeout(now) {
                InviteTimeout::Idle => {}
                InviteTimeout::Retransmit(transmit) => self.transmits.push_back(transmit),
                InviteTimeout::TimedOut => ended.push((branch.clone(), *call, true)),
                InviteTimeout::Terminated => ended.push((branch.clone(), *call, false)),
            }
        }
        for (branch, call, timed_out) in ended {
            self.client_invites.remove(&branch);
            if timed_out {
                self.invite_timed_out(now, call, &branch);
            }
            self.forget_outgoing_if_done(call);
        }
        // Ring timeouts and CANCELs left unanswered.
        self.outgoing_timeouts(now);
        // Re-offers the application left unanswered.
        self.reoffer_timeouts(now);
        // Session refreshes and expiries (RFC 4028).
        self.session_timer_timeouts(now);
        // Reliable provisionals (RFC 3262).
        self.prack_timeouts(now);
    }

    /// Answers a request with a final response through a non-INVITE server transaction
    /// (or, for INVITE errors, an INVITE transaction in Completed state).
    #[allow(clippy::too_many_arguments)]
    fn respond(
        &mut self,
        now: Instant,
        key: TxKey,
        origin: &Origin,
        request: &Message,
        status: u16,
        reason: Option<&str>,
        extra: &[(&str, &str)],
    ) {
        self.respond_tagged(now, key, origin, request, status, reason, extra, None);
    }

    /// [`Core::respond`] with a chosen To-tag for requests that carry none.
    #[allow(clippy::too_many_arguments)]
    fn respond_tagged(
        &mut self,
        now: Instant,
        key: TxKey,
        origin: &Origin,
        request: &Message,
        status: u16,
        reason: Option<&str>,
        extra: &[(&str, &str)],
        to_tag: Option<String>,
    ) {
        let Some(method) = request.method().cloned() else {
            return;
        };
        let tag = request.to_tag().or(to_tag).unwrap_or_else(|| self.random_token());
        let reason = reason.unwrap_or_else(|| reason_phrase(status));
        let response = self.build_response(request, origin, status, reason, Some(&tag), extra);
        let Some(reply) = self.reply_transmit(request, origin, response, &method, status) else {
            return;
        };
        self.transmits.push_back(reply.clone());
        let timers = self.config.timers;
        // §17.2.1 Timers G/H for INVITE; §17.2.2 Timer J (64*T1 on UDP, none on TCP).
        let transaction = if method == Method::Invite {
            let tx = ServerInvite::answered(now, request.clone(), *origin, tag, reply, status, timers);
            ServerTransaction::Invite(Box::new(tx))
        } else {
            match ServerNonInvite::completed(now, *origin, reply, timers) {
                Some(tx) => ServerTransaction::NonInvite(tx),
                None => return,
            }
        };
        self.transactions.insert(key, transaction);
    }

    /// §8.2.6.2: copy Via, From, To (adding our tag), Call-ID and CSeq; RFC 3581 / §18.2.1:
    /// add `received` and fill `rport` on the top Via.
    fn build_response(
        &self,
        request: &Message,
        origin: &Origin,
        status: u16,
        reason: &str,
        to_tag: Option<&str>,
        extra: &[(&str, &str)],
    ) -> Message {
        let mut response = Message {
            start: StartLine::Response { code: status, reason: reason.to_string() },
            headers: Vec::new(),
            body: Vec::new(),
        };
        let mut first_via = true;
        for via in request.header_values("Via") {
            if first_via {
                first_via = false;
                if let Some(mut top) = crate::message::Via::parse(via) {
                    let source_ip = origin.source.ip().to_string();
                    let rport = top.param("rport").is_some();
                    if rport || top.host.trim_matches(['[', ']']) != source_ip {
                        top.set_param("received", Some(source_ip));
                    }
                    if rport {
                        top.set_param("rport", Some(origin.source.port().to_string()));
                    }
                    response.push_header("Via", top.to_string());
                    continue;
                }
            }
            response.push_header("Via", via);
        }
        if let Some(from) = request.header("From") {
            response.push_header("From", from);
        }
        if let Some(to) = request.header("To") {
            let has_tag = NameAddr::parse(to).is_some_and(|t| t.param("tag").is_some());
            match to_tag {
                Some(tag) if status > 100 && !has_tag => {
                    response.push_header("To", format!("{to};tag={tag}"));
                }
                _ => response.push_header("To", to),
            }
        }
        if let Some(call_id) = request.call_id() {
            response.push_header("Call-ID", call_id);
        }
        if let Some(cseq) = request.header("CSeq") {
            response.push_header("CSeq", cseq);
        }
        for (name, value) in extra {
            response.push_header(name, *value);
        }
        response.push_header("Server", self.config.user_agent.clone());
        response
    }

    /// §18.2.2 and RFC 3581 §4: TCP replies on the same connection; UDP replies to the
    /// source when `rport` was requested, else to the source IP and the Via port.
    fn reply_transmit(
        &self,
        request: &Message,
        origin: &Origin,
        response: Message,
        method: &Method,
        status: u16,
    ) -> Option<Transmit> {
        let destination = match (origin.transport, request.top_via()) {
            (Transport::Udp, Some(via)) if via.param("rport").is_none() => {
                SocketAddr::new(origin.source.ip(), via.port.unwrap_or(5060))
            }
            // TCP: the same connection; UDP with rport (RFC 3581), or with a top Via we cannot
            // read (the 400 saying so still has to go somewhere): back to the source.
            _ => origin.source,
        };
        metrics::counter!(
            metric_names::SIP_RESPONSES_TOTAL,
            "method" => method.metric_label(),
            "code" => status.to_string()
        )
        .increment(1);
        Some(Transmit {
            transport: origin.transport,
            destination,
            connection: origin.connection,
            payload: response.to_bytes(),
        })
    }
}

mod dialog;
mod out_of_dialog;
mod outgoing;
mod prack;
mod refer;
pub mod reoffer;
pub mod session_timer;
pub mod transaction;

pub use self::out_of_dialog::{MAX_OUT_OF_DIALOG_REQUESTS, OutOfDialogOutcome, OutOfDialogRequest};

pub use self::dialog::Role;
use self::dialog::{DialogPhase, DialogState, Pending2xx};
pub use self::reoffer::{ReofferAnswer, ReofferId, ReofferKind};

#[cfg(test)]
mod client_tests;
#[cfg(test)]
mod tests;
