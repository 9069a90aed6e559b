//! The REGISTER client (RFC 3261 §10.2), sans-IO: one [`Registration`] per address-of-record
//! binds our Contact at a registrar, keeps the binding alive, and removes it on request.
//!
//! Time is a parameter and nothing is sent from here: the shell asks [`Registration::poll_request`]
//! for the next REGISTER, sends it through the endpoint's non-INVITE client transaction
//! ([`crate::SipEndpoint::send_request_outside_dialog`]), and feeds the final response back with
//! [`Registration::handle_response`] (or [`Registration::handle_no_response`] after Timer F or a
//! transport error). [`Registration::poll_timeout`] says when to come back.
//!
//! - One Call-ID and From tag for the machine's life, CSeq + 1 on every REGISTER (§10.2.4).
//! - 401/407: answered once per attempt with digest credentials ([`crate::digest`]); again only
//!   when the new challenge says `stale=true` (RFC 7616 §3.3).
//! - 2xx: the granted expiry is our Contact's `expires` parameter in the 200, else its Expires
//!   header, else what we asked (§10.2.4, §10.3 step 8: the registrar's value wins).
//! - Refresh at half the granted expiry. Why half: a REGISTER that gets no answer takes Timer F
//!   (64*T1, 32 s) to fail, and the retry needs time too. For a grant of 64 s or more, half is
//!   earlier than "expiry − 32 s" and leaves at least one whole Timer F plus back-off retries
//!   before the binding lapses; for a shorter grant "expiry − 32 s" would be now or in the past,
//!   and half is the only margin there is. So half is "whichever is earlier" wherever that is
//!   meaningful.
//! - 423 Interval Too Brief (§10.3 step 7): asked again at once with the Min-Expires it names
//!   (if it is longer than what we asked and at most [`MAX_EXPIRES`]).
//! - Any other failure (a final 3xx-6xx, credentials refused, no response): retried after an
//!   exponential back-off with jitter ([`Registration::retry_delay`]), capped. While retrying,
//!   a binding already granted stays valid until it lapses ([`RegistrationEvent::Lapsed`]).
//! - [`Registration::unregister`]: `Expires: 0` for our Contact (§10.2.2), once, best effort.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::client::Credentials;
use crate::digest::Challenge;
use crate::message::{Message, NameAddr, SipUri, split_top_level_commas};

/// The longest expiry we accept to be told to ask for (a 423's Min-Expires): a day.
pub const MAX_EXPIRES: Duration = Duration::from_secs(86_400);

/// What one registration binds, where, and how it retries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationConfig {
    /// The REGISTER's Request-URI: the registrar's domain, no user part (§10.2: `sip:example.com`).
    pub registrar_uri: String,
    /// The address-of-record, in From and To (§10.2: `sip:user@example.com`).
    pub aor: String,
    /// Our Contact URI to bind (`sip:user@our-address:port;transport=udp`).
    pub contact_uri: String,
    /// Answered to a 401/407; `None`: a challenge fails the attempt.
    pub credentials: Option<Credentials>,
    /// The expiry we ask for.
    pub expires: Duration,
    /// The first retry after a failure waits about this long...
    pub retry_initial: Duration,
    /// ...each next one twice as long, at most this long (both with jitter: 50-100 %).
    pub retry_max: Duration,
}

/// A REGISTER to send: the shell adds Via, Max-Forwards and User-Agent
/// ([`crate::core::OutOfDialogRequest`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisterRequest {
    pub request_uri: String,
    pub from: String,
    pub to: String,
    pub call_id: String,
    pub cseq: u32,
    /// Contact, Expires and, after a challenge, Authorization / Proxy-Authorization.
    pub headers: Vec<(String, String)>,
}

/// Why an attempt to register failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistrationFailure {
    /// The registrar refused our credentials (a second challenge not `stale`), or challenged us
    /// with none configured or with a challenge we cannot answer: the operator's to fix.
    #[error("authentication failed ({status})")]
    AuthFailed { status: u16 },
    /// Another final response 3xx-6xx (a 423 we cannot satisfy among them): the registrar's
    /// decision.
    #[error("rejected: {status} {reason}")]
    Rejected { status: u16, reason: String },
    /// Timer F or a transport error: the registrar is unreachable.
    #[error("no final response (registrar unreachable)")]
    TimedOut,
    /// A 2xx that grants our Contact no time (`expires=0`).
    #[error("2xx without a binding for our contact")]
    NotBound,
}

impl RegistrationFailure {
    /// Short label for metrics (`outcome`) and logs.
    pub fn label(&self) -> &'static str {
        match self {
            RegistrationFailure::AuthFailed { .. } => "auth_failed",
            RegistrationFailure::Rejected { .. } => "rejected",
            RegistrationFailure::TimedOut => "timeout",
            RegistrationFailure::NotBound => "not_bound",
        }
    }
}

/// What happened, for the shell (metrics, logs, readiness).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegistrationEvent {
    /// A 2xx bound our Contact for `expires`; the refresh goes out in `refresh_in`.
    Registered { expires: Duration, refresh_in: Duration },
    /// Our `Expires: 0` was accepted: no binding left.
    Unregistered,
    /// An attempt failed. `retry_in`: when the next one goes out (`None` for a failed
    /// unregistration, which is not retried).
    Failed { failure: RegistrationFailure, retry_in: Option<Duration> },
    /// The binding expired before a refresh succeeded.
    Lapsed,
}

/// Where the machine stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// The next REGISTER goes out at `at` (first one, refresh, retry, answer to a challenge).
    Waiting { at: Instant },
    /// A REGISTER is out; its final response (or its failure) is awaited.
    InFlight,
    /// Nothing more to send (unregistered, or stopped without a binding).
    Done,
}

/// One address-of-record's registration.
#[derive(Debug)]
pub struct Registration {
    config: RegistrationConfig,
    call_id: String,
    from_tag: String,
    /// CSeq of the next REGISTER.
    cseq: u32,
    phase: Phase,
    /// The expiry asked for: `config.expires`, raised by a 423's Min-Expires.
    requested: Duration,
    /// An unregistration (`Expires: 0`) is what goes out next / is out.
    unregistering: bool,
    /// Credentials for the next REGISTER, answering the last challenge.
    authorization: Option<(&'static str, String)>,
    /// A challenge has been answered in the current attempt.
    challenge_answered: bool,
    /// When our binding expires; `None`: not registered.
    bound_until: Option<Instant>,
    /// Failed attempts in a row.
    failures: u32,
    rng: StdRng,
    events: VecDeque<RegistrationEvent>,
}

impl Registration {
    /// A registration whose first REGISTER goes out at `now`. `call_id` and `from_tag` are
    /// kept for its life; `first_cseq` is the first CSeq (below 2**31, §8.1.1.5); `seed` feeds
    /// the back-off jitter and client nonces.
    pub fn new(
        config: RegistrationConfig,
        call_id: String,
        from_tag: String,
        first_cseq: u32,
        seed: u64,
        now: Instant,
    ) -> Registration {
        let requested = config.expires;
        Registration {
            config,
            call_id,
            from_tag,
            cseq: first_cseq,
            phase: Phase::Waiting { at: now },
            requested,
            unregistering: false,
            authorization: None,
            challenge_answered: false,
            bound_until: None,
            failures: 0,
            rng: StdRng::seed_from_u64(seed),
            events: VecDeque::new(),
        }
    }

    /// Whether our binding is in force at `now`.
    pub fn is_registered(&self, now: Instant) -> bool {
        self.bound_until.is_some_and(|until| now < until)
    }

    /// Whether there is nothing more to send (unregistered, or stopped with no binding).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The expiry currently asked for (the configured one, or a 423's Min-Expires).
    pub fn requested_expires(&self) -> Duration {
        self.requested
    }

    /// The next REGISTER, when one is due at `now` and none is in flight.
    pub fn poll_request(&mut self, now: Instant) -> Option<RegisterRequest> {
        match self.phase {
            Phase::Waiting { at } if at <= now => {}
            _ => return None,
        }
        self.phase = Phase::InFlight;
        let cseq = self.cseq;
        // §8.1.1.5: CSeq stays below 2**31; a registration refreshed every second for 68 years
        // would get there: start again low rather than overflow (the registrar sees a new
        // sequence, which §10.3 step 7 only guards within one Call-ID... and we keep the
        // Call-ID, so this is a theoretical corner).
        self.cseq = if cseq >= 0x7fff_fffe { 1 } else { cseq + 1 };
        let expires = if self.unregistering { 0 } else { self.requested.as_secs() };
        let mut headers = vec![
            ("Contact".to_string(), format!("<{}>", self.config.contact_uri)),
            ("Expires".to_string(), expires.to_string()),
        ];
        if let Some((name, value)) = &self.authorization {
            headers.push(((*name).to_string(), value.clone()));
        }
        Some(RegisterRequest {
            request_uri: self.config.registrar_uri.clone(),
            from: format!("<{}>;tag={}", self.config.aor, self.from_tag),
            to: format!("<{}>", self.config.aor),
            call_id: self.call_id.clone(),
            cseq,
            headers,
        })
    }

    /// The final response to the REGISTER in flight.
    pub fn handle_response(&mut self, now: Instant, response: &Message) {
        if self.phase != Phase::InFlight {
            return;
        }
        let Some(status) = response.status() else {
            return;
        };
        match status {
            100..=199 => {}
            200..=299 => self.on_success(now, response),
            401 | 407 => self.on_challenge(now, response, status),
            423 => self.on_interval_too_brief(now, response),
            _ => {
                let reason = response.reason_phrase().to_string();
                self.fail(now, RegistrationFailure::Rejected { status, reason });
            }
        }
    }

    /// The REGISTER in flight got no final response (Timer F, transport error).
    pub fn handle_no_response(&mut self, now: Instant) {
        if self.phase == Phase::InFlight {
            self.fail(now, RegistrationFailure::TimedOut);
        }
    }

    /// Runs what is due at `now`: a binding that expired without a refresh lapses.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.bound_until.is_some_and(|until| until <= now) {
            self.bound_until = None;
            self.events.push_back(RegistrationEvent::Lapsed);
        }
    }

    /// When to call [`Registration::handle_timeout`] / [`Registration::poll_request`] next
    /// (`None` while a REGISTER is in flight and no binding runs, or when done).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let send = match self.phase {
            Phase::Waiting { at } => Some(at),
            Phase::InFlight | Phase::Done => None,
        };
        [send, self.bound_until].into_iter().flatten().min()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RegistrationEvent> {
        self.events.pop_front()
    }

    /// Removes our binding (`Expires: 0`, §10.2.2), once, best effort: a REGISTER in flight is
    /// abandoned (the shell stops waiting for it). Returns `false` when there is nothing to
    /// remove (never registered, nothing in flight): the machine is then done.
    pub fn unregister(&mut self, now: Instant) -> bool {
        if self.unregistering {
            return !self.is_done();
        }
        if self.bound_until.is_none() && self.phase != Phase::InFlight {
            self.phase = Phase::Done;
            return false;
        }
        self.unregistering = true;
        self.authorization = None;
        self.challenge_answered = false;
        self.phase = Phase::Waiting { at: now };
        true
    }

    /// The back-off before retry number `failures` (1 for the first): `retry_initial` doubled
    /// per failure in a row, capped at `retry_max`, then a random 50-100 % of it (jitter, so
    /// gateways that lost their registrar together do not come back together).
    pub fn retry_delay(&mut self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        let base = self.config.retry_initial.saturating_mul(1 << doublings).min(self.config.retry_max);
        let millis = u64::try_from(base.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(self.rng.random_range(millis / 2..=millis))
    }

    fn on_success(&mut self, now: Instant, response: &Message) {
        self.authorization = None;
        self.challenge_answered = false;
        if self.unregistering {
            self.bound_until = None;
            self.phase = Phase::Done;
            self.events.push_back(RegistrationEvent::Unregistered);
            return;
        }
        let granted = self.granted_expiry(response);
        if granted.is_zero() {
            self.fail(now, RegistrationFailure::NotBound);
            return;
        }
        self.failures = 0;
        self.bound_until = Some(now + granted);
        let refresh_in = refresh_delay(granted);
        self.phase = Phase::Waiting { at: now + refresh_in };
        self.events.push_back(RegistrationEvent::Registered { expires: granted, refresh_in });
    }

    /// §10.2.4: our Contact's `expires` in the 2xx (the registrar lists every binding of the
    /// AoR), else the Expires header, else what we asked.
    fn granted_expiry(&self, response: &Message) -> Duration {
        let ours = SipUri::parse(&self.config.contact_uri);
        let from_contact = response
            .header_values("Contact")
            .flat_map(split_top_level_commas)
            .filter_map(NameAddr::parse)
            .find(|contact| same_binding(ours.as_ref(), SipUri::parse(&contact.uri).as_ref()))
            .and_then(|contact| contact.param("expires").and_then(|e| e.trim().parse::<u64>().ok()));
        let seconds = from_contact.or_else(|| response.header("Expires").and_then(|e| e.trim().parse::<u64>().ok()));
        seconds.map_or(self.requested, Duration::from_secs).min(MAX_EXPIRES)
    }

    fn on_challenge(&mut self, now: Instant, response: &Message, status: u16) {
        let (challenge_header, answer_header) = if status == 401 {
            ("WWW-Authenticate", "Authorization")
        } else {
            ("Proxy-Authenticate", "Proxy-Authorization")
        };
        let challenge = Challenge::choose(response.header_values(challenge_header));
        let answerable = match (&self.config.credentials, &challenge) {
            (Some(credentials), Ok(challenge)) if !self.challenge_answered || challenge.stale => {
                Some((credentials.clone(), challenge.clone()))
            }
            _ => None,
        };
        let Some((credentials, challenge)) = answerable else {
            if let Err(error) = &challenge {
                tracing::debug!(%error, status, "cannot answer the registrar's challenge");
            }
            self.fail(now, RegistrationFailure::AuthFailed { status });
            return;
        };
        let cnonce = format!("{:016x}", self.rng.random::<u64>());
        let value = challenge.answer(&credentials, "REGISTER", &self.config.registrar_uri, &cnonce);
        self.authorization = Some((answer_header, value));
        self.challenge_answered = true;
        self.phase = Phase::Waiting { at: now };
    }

    fn on_interval_too_brief(&mut self, now: Instant, response: &Message) {
        let min_expires =
            response.header("Min-Expires").and_then(|v| v.trim().parse::<u64>().ok()).map(Duration::from_secs);
        match min_expires {
            Some(min) if min > self.requested && min <= MAX_EXPIRES && !self.unregistering => {
                self.requested = min;
                // A new request: its challenge (if any) is a new one to answer.
                self.challenge_answered = false;
                self.phase = Phase::Waiting { at: now };
            }
            _ => {
                let reason = response.reason_phrase().to_string();
                self.fail(now, RegistrationFailure::Rejected { status: 423, reason });
            }
        }
    }

    fn fail(&mut self, now: Instant, failure: RegistrationFailure) {
        self.authorization = None;
        self.challenge_answered = false;
        if self.unregistering {
            // Best effort: the binding lapses at the registrar by itself.
            self.bound_until = None;
            self.phase = Phase::Done;
            self.events.push_back(RegistrationEvent::Failed { failure, retry_in: None });
            return;
        }
        self.failures = self.failures.saturating_add(1);
        let retry_in = self.retry_delay(self.failures);
        self.phase = Phase::Waiting { at: now + retry_in };
        self.events.push_back(RegistrationEvent::Failed { failure, retry_in: Some(retry_in) });
    }
}

/// When to refresh a binding granted for `granted`: at half of it (see the module comment).
pub fn refresh_delay(granted: Duration) -> Duration {
    granted / 2
}

/// Whether a Contact in a 2xx is our binding: same user, host (case-insensitive) and port
/// (5060 when absent), parameters aside (RFC 3261 §19.1.4 compares URIs that way, minus the
/// parameters a registrar may add or drop).
fn same_binding(ours: Option<&SipUri>, theirs: Option<&SipUri>) -> bool {
    let (Some(ours), Some(theirs)) = (ours, theirs) else {
        return false;
    };
    ours.user == theirs.user
        && ours.host.eq_ignore_ascii_case(&theirs.host)
        && ours.port.unwrap_or(5060) == theirs.port.unwrap_or(5060)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]
    use super::*;
    use crate::message::StartLine;

    const CONTACT: &str = "sip:acme@192.0.2.10:5060;transport=udp";

    fn config(credentials: bool) -> RegistrationConfig {
        RegistrationConfig {
            registrar_uri: "sip:registrar.example".into(),
            aor: "sip:acme@registrar.example".into(),
            contact_uri: CONTACT.into(),
            credentials: credentials.then(|| Credentials { username: "acme".into(), password: "s3cret".into() }),
            expires: Duration::from_secs(3600),
            retry_initial: Duration::from_secs(2),
            retry_max: Duration::from_secs(300),
        }
    }

    fn response(status: u16, headers: &[(&str, &str)]) -> Message {
        let mut message = Message {
            start: StartLine::Response { code: status, reason: "Reason".into() },
            headers: Vec::new(),
            body: Vec::new(),
        };
        for (name, value) in headers {
            message.push_header(name, *value);
        }
        message
    }

    fn header<'a>(request: &'a RegisterRequest, name: &str) -> Option<&'a str> {
        request.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn events(machine: &mut Registration) -> Vec<RegistrationEvent> {
        std::iter::from_fn(|| machine.poll_event()).collect()
    }

    fn machine(credentials: bool, t0: Instant) -> Registration {
        Registration::new(config(credentials), "reg-1@sb".into(), "tag1".into(), 7, 42, t0)
    }

    #[test]
    fn registers_through_a_digest_challenge_and_refreshes_at_half_expiry() {
        let t0 = Instant::now();
        let mut reg = machine(true, t0);
        let first = reg.poll_request(t0).unwrap();
        assert_eq!(first.request_uri, "sip:registrar.example");
        assert_eq!(first.to, "<sip:acme@registrar.example>");
        assert_eq!(first.from, "<sip:acme@registrar.example>;tag=tag1");
        assert_eq!(first.cseq, 7);
        assert_eq!(header(&first, "Contact"), Some("<sip:acme@192.0.2.10:5060;transport=udp>"));
        assert_eq!(header(&first, "Expires"), Some("3600"));
        assert_eq!(header(&first, "Authorization"), None);
        assert_eq!(reg.poll_request(t0), None, "one REGISTER in flight at a time");

        reg.handle_response(
            t0,
            &response(401, &[("WWW-Authenticate", r#"Digest realm="registrar.example", nonce="n1", qop="auth""#)]),
        );
        let second = reg.poll_request(t0).unwrap();
        assert_eq!(second.cseq, 8, "a new request after a challenge: CSeq + 1");
        assert_eq!(second.call_id, first.call_id, "same Call-ID (§10.2.4)");
        let auth = header(&second, "Authorization").unwrap();
        assert!(auth.contains(r#"username="acme""#) && auth.contains(r#"uri="sip:registrar.example""#), "{auth}");
        assert!(!auth.contains("s3cret"));
        assert!(!reg.is_registered(t0));

        // The registrar grants less than asked, in our Contact's expires (another binding of the
        // AoR is listed too, with another expiry).
        let granted = response(
            200,
            &[
                ("Contact", "<sip:other@198.51.100.1>;expires=50, <sip:acme@192.0.2.10;transport=udp>;expires=600"),
                ("Expires", "3600"),
            ],
        );
        reg.handle_response(t0, &granted);
        assert_eq!(
            events(&mut reg),
            [RegistrationEvent::Registered { expires: Duration::from_secs(600), refresh_in: Duration::from_secs(300) }]
        );
        assert!(reg.is_registered(t0));
        assert_eq!(reg.poll_timeout(), Some(t0 + Duration::from_secs(300)));
        assert_eq!(reg.poll_request(t0 + Duration::from_secs(299)), None);

        // The refresh: same Call-ID, next CSeq, no stale credentials carried over.
        let t1 = t0 + Duration::from_secs(300);
        let refresh = reg.poll_request(t1).unwrap();
        assert_eq!((refresh.cseq, refresh.call_id.as_str()), (9, "reg-1@sb"));
        assert_eq!(header(&refresh, "Authorization"), None);
        reg.handle_response(t1, &response(200, &[("Expires", "600")]));
        assert_eq!(
            events(&mut reg),
            [RegistrationEvent::Registered { expires: Duration::from_secs(600), refresh_in: Duration::from_secs(300) }]
        );
        assert!(reg.is_registered(t1 + Duration::from_secs(599)));
    }

    #[test]
    fn a_second_challenge_is_an_auth_failure_unless_stale() {
        let t0 = Instant::now();
        let mut reg = machine(true, t0);
        reg.poll_request(t0).unwrap();
        let challenge = response(407, &[("Proxy-Authenticate", r#"Digest realm="r", nonce="n1""#)]);
        reg.handle_response(t0, &challenge);
        let answered = reg.poll_request(t0).unwrap();
        assert!(header(&answered, "Proxy-Authorization").is_some());
        // Stale: answered again with the new nonce.
        reg.handle_response(
            t0,
            &response(407, &[("Proxy-Authenticate", r#"Digest realm="r", nonce="n2", stale=true"#)]),
        );
        let again = reg.poll_request(t0).unwrap();
        assert!(header(&again, "Proxy-Authorization").unwrap().contains(r#"nonce="n2""#));
        // Not stale: the credentials are wrong.
        reg.handle_response(t0, &challenge);
        let failed = events(&mut reg);
        assert!(matches!(
            failed.as_slice(),
            [RegistrationEvent::Failed { failure: RegistrationFailure::AuthFailed { status: 407 }, retry_in: Some(_) }]
        ));
        // Without credentials a challenge fails at once.
        let mut bare = machine(false, t0);
        bare.poll_request(t0).unwrap();
        bare.handle_response(t0, &challenge);
        assert!(matches!(
            events(&mut bare).as_slice(),
            [RegistrationEvent::Failed { failure: RegistrationFailure::AuthFailed { .. }, .. }]
        ));
    }

    #[test]
    fn interval_too_brief_asks_again_with_min_expires() {
        let t0 = Instant::now();
        let mut cfg = config(false);
        cfg.expires = Duration::from_secs(30);
        let mut reg = Registration::new(cfg, "c".into(), "t".into(), 1, 1, t0);
        reg.poll_request(t0).unwrap();
        reg.handle_response(t0, &response(423, &[("Min-Expires", "120")]));
        assert!(events(&mut reg).is_empty(), "not a failure: asked again");
        let again = reg.poll_request(t0).unwrap();
        assert_eq!(header(&again, "Expires"), Some("120"));
        assert_eq!(reg.requested_expires(), Duration::from_secs(120));
        // A 423 that asks for no more than we asked, or names nothing, cannot be satisfied.
        reg.handle_response(t0, &response(423, &[("Min-Expires", "60")]));
        assert!(matches!(
            events(&mut reg).as_slice(),
            [RegistrationEvent::Failed { failure: RegistrationFailure::Rejected { status: 423, .. }, .. }]
        ));
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_up_to_the_cap() {
        let t0 = Instant::now();
        let mut reg = machine(false, t0);
        let mut now = t0;
        let mut delays = Vec::new();
        for attempt in 0..10 {
            let request = reg.poll_request(now).unwrap();
            assert_eq!(request.cseq, 7 + attempt);
            if attempt % 2 == 0 {
                reg.handle_no_response(now);
            } else {
                reg.handle_response(now, &response(503, &[]));
            }
            let Some(RegistrationEvent::Failed { retry_in: Some(delay), .. }) = reg.poll_event() else {
                panic!("a failure with a retry");
            };
            assert_eq!(reg.poll_request(now + delay - Duration::from_millis(1)), None, "not before the back-off");
            delays.push(delay);
            now += delay;
        }
        for (index, delay) in delays.iter().enumerate() {
            let base = (Duration::from_secs(2) * (1 << index)).min(Duration::from_secs(300));
            assert!(*delay >= base / 2 && *delay <= base, "retry {index}: {delay:?} not in 50-100 % of {base:?}");
        }
        assert!(delays[9] <= Duration::from_secs(300), "capped");
        // A success resets the back-off.
        reg.poll_request(now).unwrap();
        reg.handle_response(now, &response(200, &[]));
        assert!(matches!(reg.poll_event(), Some(RegistrationEvent::Registered { .. })));
        let refresh_at = reg.poll_timeout().unwrap();
        reg.poll_request(refresh_at).unwrap();
        reg.handle_no_response(refresh_at);
        let Some(RegistrationEvent::Failed { retry_in: Some(delay), .. }) = reg.poll_event() else {
            panic!("a failure with a retry");
        };
        assert!(delay <= Duration::from_secs(2));
    }

    #[test]
    fn a_binding_lapses_when_refreshes_keep_failing() {
        let t0 = Instant::now();
        let mut cfg = config(false);
        cfg.retry_initial = Duration::from_secs(10);
        let mut reg = Registration::new(cfg, "c".into(), "t".into(), 1, 3, t0);
        reg.poll_request(t0).unwrap();
        reg.handle_response(t0, &response(200, &[("Expires", "60")]));
        events(&mut reg);
        let mut now = t0 + Duration::from_secs(30);
        while now < t0 + Duration::from_secs(60) {
            if reg.poll_request(now).is_some() {
                reg.handle_no_response(now);
            }
            assert!(reg.is_registered(now));
            now = reg.poll_timeout().unwrap();
            reg.handle_timeout(now);
        }
        assert!(!reg.is_registered(now));
        assert!(events(&mut reg).contains(&RegistrationEvent::Lapsed));
    }

    #[test]
    fn unregister_sends_expires_zero_once_and_finishes() {
        let t0 = Instant::now();
        let mut reg = machine(true, t0);
        reg.poll_request(t0).unwrap();
        reg.handle_response(t0, &response(200, &[("Expires", "3600")]));
        events(&mut reg);
        let t1 = t0 + Duration::from_secs(10);
        assert!(reg.unregister(t1));
        let request = reg.poll_request(t1).unwrap();
        assert_eq!(header(&request, "Expires"), Some("0"));
        assert_eq!(header(&request, "Contact"), Some("<sip:acme@192.0.2.10:5060;transport=udp>"), "our binding only");
        // Challenged: answered.
        reg.handle_response(t1, &response(401, &[("WWW-Authenticate", r#"Digest realm="r", nonce="n""#)]));
        let answered = reg.poll_request(t1).unwrap();
        assert_eq!(header(&answered, "Expires"), Some("0"));
        assert!(header(&answered, "Authorization").is_some());
        reg.handle_response(t1, &response(200, &[]));
        assert_eq!(events(&mut reg), [RegistrationEvent::Unregistered]);
        assert!(reg.is_done() && !reg.is_registered(t1));
        assert_eq!(reg.poll_timeout(), None);

        // Never registered, nothing in flight: nothing to remove.
        let mut fresh = machine(false, t0);
        assert!(!fresh.unregister(t0));
        assert_eq!(fresh.poll_request(t0), None);
        // A failed unregistration is not retried.
        let mut reg = machine(false, t0);
        reg.poll_request(t0).unwrap();
        assert!(reg.unregister(t0), "in flight: it may have bound us");
        reg.poll_request(t0).unwrap();
        reg.handle_no_response(t0);
        assert!(matches!(events(&mut reg).as_slice(), [RegistrationEvent::Failed { retry_in: None, .. }]));
        assert!(reg.is_done());
    }

    #[test]
    fn a_2xx_without_time_for_our_contact_is_not_a_binding() {
        let t0 = Instant::now();
        let mut reg = machine(false, t0);
        reg.poll_request(t0).unwrap();
        reg.handle_response(t0, &response(200, &[("Contact", "<sip:acme@192.0.2.10:5060>;expires=0")]));
        assert!(matches!(
            events(&mut reg).as_slice(),
            [RegistrationEvent::Failed { failure: RegistrationFailure::NotBound, .. }]
        ));
        assert!(!reg.is_registered(t0));
    }

    #[test]
    fn refresh_is_at_half_the_grant() {
        assert_eq!(refresh_delay(Duration::from_secs(3600)), Duration::from_secs(1800));
        assert_eq!(refresh_delay(Duration::from_secs(4)), Duration::from_secs(2));
    }
}
