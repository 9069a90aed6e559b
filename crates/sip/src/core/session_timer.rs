//! Session timers (RFC 4028) on the dialogs we answer: `Session-Expires` / `Min-SE` read from
//! the INVITE (and from every re-INVITE or UPDATE, §9 applies to them too), 422 below our
//! minimum, the interval and the refresher written in our 2xx, and the dialog's timer:
//!
//! - we refresh (refresher `uas` on a call we answered): an UPDATE without SDP at half the
//!   interval (§10: the UPDATE needs no offer). A refresh answered 408 or 481, or not answered at
//!   all, ends the dialog with our BYE (§10); another failure leaves the session to expire;
//! - the peer refreshes: no refresh (a re-INVITE or UPDATE answered 2xx) before the interval
//!   minus min(32 s, interval/3) ends the dialog with our BYE (§10).
//!
//! Either way the application hears [`DialogEvent::SessionExpired`] (after the BYE is sent).
//!
//! Who refreshes (§9): the caller's choice when it supports `timer` and made one; when it
//! supports `timer` and left it to us, the caller (`uac`: a phone that asked for timers refreshes
//! its own calls, and we keep no timer but the expiry); when it does not support `timer`, us
//! (`uas`), which needs UPDATE: a caller that neither supports `timer` nor allows UPDATE gets no
//! session timer (we do not send re-INVITE refreshes).

use std::time::{Duration, Instant};

use super::*;

/// The session timer settings (`sip.session_expires_secs`, `sip.session_min_se_secs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionTimerConfig {
    /// The interval we ask for or accept at most, seconds; 0: no session timers.
    pub expires_secs: u32,
    /// The shortest interval we accept, seconds (RFC 4028 §4: at least 90 on the wire; lower
    /// only for tests).
    pub min_se_secs: u32,
}

impl Default for SessionTimerConfig {
    fn default() -> Self {
        SessionTimerConfig { expires_secs: 1800, min_se_secs: 90 }
    }
}

/// The `refresher` parameter (§4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// Why a session ended by its timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The peer was to refresh and did not before the expiry.
    NotRefreshed,
    /// Our refresh was answered with this status (408 or 481: §10), or the session expired
    /// after another failure.
    RefreshFailed(u16),
    /// Our refresh got no final response (Timer F).
    RefreshTimedOut,
}

/// What a request says about session timers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TimerRequest {
    pub expires: Option<u32>,
    pub refresher: Option<Refresher>,
    pub min_se: Option<u32>,
    /// `Supported: timer` (or `Require: timer`).
    pub supports_timer: bool,
    /// `UPDATE` in its Allow.
    pub allows_update: bool,
}

impl TimerRequest {
    pub fn read(request: &Message) -> TimerRequest {
        let (expires, refresher) = request.header("Session-Expires").map_or((None, None), parse_session_expires);
        let min_se =
            request.header("Min-SE").and_then(|v| v.split(';').next()).and_then(|v| v.trim().parse::<u32>().ok());
        let has_tag = |header: &str, tag: &str| {
            request.header_values(header).flat_map(|v| v.split(',')).any(|t| t.trim().eq_ignore_ascii_case(tag))
        };
        TimerRequest {
            expires,
            refresher,
            min_se,
            supports_timer: has_tag("Supported", "timer") || has_tag("Require", "timer"),
            allows_update: has_tag("Allow", "UPDATE"),
        }
    }
}

/// `delta-seconds *(;param)` with `refresher=uac|uas` (§4).
fn parse_session_expires(value: &str) -> (Option<u32>, Option<Refresher>) {
    let mut parts = value.split(';');
    let expires = parts.next().and_then(|v| v.trim().parse::<u32>().ok());
    let refresher = parts.find_map(|p| {
        let (name, value) = p.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("refresher") {
            return None;
        }
        match value.trim().to_ascii_lowercase().as_str() {
            "uac" => Some(Refresher::Uac),
            "uas" => Some(Refresher::Uas),
            _ => None,
        }
    });
    (expires, refresher)
}

/// The UAS's decision on a request (§9).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDecision {
    /// No session timer on this dialog.
    Off,
    /// 422 Session Interval Too Small, with this `Min-SE`.
    TooSmall { min_se: u32 },
    /// A timer of `interval` seconds, refreshed by `refresher`; `require`: `Require: timer` in
    /// the 2xx.
    Use { interval: u32, refresher: Refresher, require: bool },
}

/// RFC 4028 §9 as a table: the request's wishes against our configuration.
pub fn negotiate_uas(config: SessionTimerConfig, request: &TimerRequest) -> TimerDecision {
    if config.expires_secs == 0 {
        return TimerDecision::Off;
    }
    let floor = config.min_se_secs.max(request.min_se.unwrap_or(0));
    if let Some(asked) = request.expires
        && asked < config.min_se_secs
    {
        return TimerDecision::TooSmall { min_se: floor };
    }
    let interval = request.expires.unwrap_or(config.expires_secs).min(config.expires_secs).max(floor);
    let refresher = match (request.supports_timer, request.refresher) {
        (true, Some(chosen)) => chosen,
        (true, None) => Refresher::Uac,
        (false, _) => Refresher::Uas,
    };
    if refresher == Refresher::Uas && !request.allows_update {
        // We would have to refresh with re-INVITEs, which we do not send.
        return TimerDecision::Off;
    }
    TimerDecision::Use { interval, refresher, require: refresher == Refresher::Uac || request.supports_timer }
}

/// The headers of a 2xx for `decision`.
pub(super) fn response_headers(decision: TimerDecision) -> Vec<(&'static str, String)> {
    match decision {
        TimerDecision::Use { interval, refresher, require } => {
            let mut headers = vec![("Session-Expires", format!("{interval};refresher={}", refresher.as_str()))];
            if require {
                headers.push(("Require", "timer".to_string()));
            }
            headers
        }
        TimerDecision::Off | TimerDecision::TooSmall { .. } => Vec::new(),
    }
}

/// A dialog's running session timer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct SessionTimer {
    pub(super) interval: Duration,
    /// We refresh (else the peer does).
    pub(super) we_refresh: bool,
    /// The last refresh (a 2xx to a re-INVITE or UPDATE, either way), or the 2xx that set it up.
    pub(super) refreshed_at: Instant,
    /// Our refresh is in flight.
    pub(super) refreshing: bool,
    /// Our last refresh failed (other than 408/481): no new attempt, the session expires.
    pub(super) gave_up: bool,
    /// Our refresh timed out (Timer F): the session ends on the next timer run.
    pub(super) timed_out: bool,
}

impl SessionTimer {
    /// The timer of a request answered 2xx at `now` (we were its UAS).
    pub(super) fn answered(now: Instant, decision: TimerDecision) -> Option<SessionTimer> {
        match decision {
            TimerDecision::Use { interval, refresher, .. } => Some(SessionTimer {
                interval: Duration::from_secs(u64::from(interval)),
                we_refresh: refresher == Refresher::Uas,
                refreshed_at: now,
                refreshing: false,
                gave_up: false,
                timed_out: false,
            }),
            TimerDecision::Off | TimerDecision::TooSmall { .. } => None,
        }
    }

    /// The timer a 2xx to our INVITE grants (§7.2): its `Session-Expires`, `refresher=uac`
    /// meaning us; none without one. A refresher of ours is only kept when the callee allows
    /// UPDATE (we send no re-INVITE refreshes; we asked for `refresher=uas`).
    pub(super) fn granted(now: Instant, response: &Message) -> Option<SessionTimer> {
        let granted = TimerRequest::read(response);
        let interval = granted.expires.filter(|secs| *secs > 0)?;
        let we_refresh = granted.refresher == Some(Refresher::Uac);
        if we_refresh && !granted.allows_update {
            tracing::info!("the callee wants us to refresh the session but does not allow UPDATE; no session timer");
            return None;
        }
        Some(SessionTimer {
            interval: Duration::from_secs(u64::from(interval)),
            we_refresh,
            refreshed_at: now,
            refreshing: false,
            gave_up: false,
            timed_out: false,
        })
    }

    /// When we send our refresh: half the interval (§10), if we refresh and none is in flight.
    pub(super) fn refresh_due(&self) -> Option<Instant> {
        (self.we_refresh && !self.refreshing && !self.gave_up).then(|| self.refreshed_at + self.interval / 2)
    }

    /// When the session is over without a refresh: the interval for our own refreshes, the
    /// interval minus min(32 s, interval/3) when the peer refreshes (§10).
    pub(super) fn expires_at(&self) -> Instant {
        if self.we_refresh {
            self.refreshed_at + self.interval
        } else {
            let margin = Duration::from_secs(32).min(self.interval / 3);
            self.refreshed_at + self.interval.saturating_sub(margin)
        }
    }

    pub(super) fn deadline(&self) -> Instant {
        if self.timed_out {
            return self.refreshed_at;
        }
        self.refresh_due().map_or(self.expires_at(), |due| due.min(self.expires_at()))
    }
}

impl Core {
    /// A re-INVITE or UPDATE of the peer's (`request`) is about to be answered 2xx: negotiates
    /// its session timer (§9) and returns the 2xx's extra headers; `Err(min_se)`: answer 422.
    pub(super) fn refresh_on_request(
        &mut self,
        now: Instant,
        dialog_id: DialogId,
        request: &Message,
    ) -> Result<Vec<(&'static str, String)>, u32> {
        let mut wishes = TimerRequest::read(request);
        let Some(dialog) = self.dialogs.get_mut(&dialog_id) else {
            return Ok(Vec::new());
        };
        // The peer's Allow was learned with the INVITE; a refresh need not repeat it.
        wishes.allows_update |= dialog.peer_allows_update;
        if wishes.expires.is_none() && dialog.session_timer.is_none() {
            return Ok(Vec::new());
        }
        let decision = negotiate_uas(self.config.session_timer, &wishes);
        if let TimerDecision::TooSmall { min_se } = decision {
            return Err(min_se);
        }
        dialog.session_timer = SessionTimer::answered(now, decision);
        Ok(response_headers(decision))
    }

    /// Runs the dialogs' session timers: sends our refreshes, ends expired sessions with BYE.
    pub(super) fn session_timer_timeouts(&mut self, now: Instant) {
        let mut refresh = Vec::new();
        let mut expired = Vec::new();
        for (id, dialog) in &self.dialogs {
            let Some(timer) = dialog.session_timer else { continue };
            if dialog.phase == DialogPhase::Terminating {
                continue;
            }
            if timer.timed_out || timer.expires_at() <= now {
                expired.push(*id);
            } else if timer.refresh_due().is_some_and(|due| due <= now) {
                refresh.push(*id);
            }
        }
        for id in refresh {
            self.send_refresh(now, id);
        }
        for id in expired {
            let timer = self.dialogs.get(&id).and_then(|d| d.session_timer);
            let cause = match timer {
                // Ours in flight at the expiry counts as unanswered.
                Some(t) if t.timed_out || (t.we_refresh && t.refreshing) => SessionEnd::RefreshTimedOut,
                Some(t) if t.we_refresh => SessionEnd::RefreshFailed(0),
                _ => SessionEnd::NotRefreshed,
            };
            self.session_over(now, id, cause);
        }
    }

    /// The earliest session-timer deadline.
    pub(super) fn session_timer_deadline(&self) -> Option<Instant> {
        self.dialogs
            .values()
            .filter(|d| d.phase != DialogPhase::Terminating)
            .filter_map(|d| d.session_timer.map(|t| t.deadline()))
            .min()
    }

    /// Our refresh: an UPDATE without SDP (§10) to the dialog's next hop (an address; a host
    /// name falls back to where the peer's requests come from).
    fn send_refresh(&mut self, now: Instant, dialog_id: DialogId) {
        let Some(dialog) = self.dialogs.get(&dialog_id) else { return };
        let Some(timer) = dialog.session_timer else { return };
        let destination = self
            .next_hop(dialog)
            .and_then(|hop| hop.host.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, hop.port)))
            .unwrap_or(dialog.origin.source);
        let interval = timer.interval.as_secs();
        let session_expires = format!("{interval};refresher=uac");
        let headers = [("Session-Expires", session_expires.as_str()), ("Supported", SUPPORTED)];
        let sent = self.send_request_owned(now, dialog_id, destination, Method::Update, &headers, b"", |_| {
            RequestOwner::Refresh(dialog_id)
        });
        if let Some(timer) = self.dialogs.get_mut(&dialog_id).and_then(|d| d.session_timer.as_mut()) {
            timer.refreshing = sent.is_some();
            timer.gave_up |= sent.is_none();
        }
    }

    /// The final response to our refresh.
    pub(super) fn refresh_answered(&mut self, now: Instant, dialog_id: DialogId, response: &Message) {
        match response.status() {
            Some(200..=299) => {
                let granted = TimerRequest::read(response);
                if let Some(timer) = self.dialogs.get_mut(&dialog_id).and_then(|d| d.session_timer.as_mut()) {
                    timer.refreshing = false;
                    timer.refreshed_at = now;
                    // §7.2 / §10: the 2xx says the interval and who refreshes from now on.
                    if let Some(secs) = granted.expires {
                        timer.interval = Duration::from_secs(u64::from(secs.max(1)));
                        timer.we_refresh = granted.refresher != Some(Refresher::Uas);
                    }
                }
            }
            None => {}
            Some(code @ (408 | 481)) => self.session_over(now, dialog_id, SessionEnd::RefreshFailed(code)),
            Some(code) => {
                tracing::warn!(status = code, "session refresh refused; the session expires unless the peer refreshes");
                if let Some(timer) = self.dialogs.get_mut(&dialog_id).and_then(|d| d.session_timer.as_mut()) {
                    timer.refreshing = false;
                    timer.gave_up = true;
                }
            }
        }
    }

    /// Timer F of our refresh: the session ends at the next timer run (§10).
    pub(super) fn refresh_timed_out(&mut self, dialog_id: DialogId) {
        if let Some(timer) = self.dialogs.get_mut(&dialog_id).and_then(|d| d.session_timer.as_mut()) {
            timer.refreshing = false;
            timer.timed_out = true;
        }
    }

    /// The session timer ended the session: BYE, then the event.
    fn session_over(&mut self, now: Instant, dialog_id: DialogId, cause: SessionEnd) {
        if let Some(dialog) = self.dialogs.get_mut(&dialog_id) {
            dialog.session_timer = None;
        } else {
            return;
        }
        metrics::counter!(crate::endpoint::metric_names::SIP_SESSION_EXPIRED_TOTAL, "cause" => cause.label())
            .increment(1);
        self.events.push_back(CoreEvent::Dialog { dialog: dialog_id, notice: DialogEvent::SessionExpired { cause } });
        self.hangup(now, dialog_id);
    }
}

impl SessionEnd {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            SessionEnd::NotRefreshed => "not_refreshed",
            SessionEnd::RefreshFailed(_) => "refresh_failed",
            SessionEnd::RefreshTimedOut => "refresh_timeout",
        }
    }
}

/// The option tags we support, sent in `Supported`.
pub const SUPPORTED: &str = "100rel, timer";

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SessionTimerConfig {
        SessionTimerConfig { expires_secs: 1800, min_se_secs: 90 }
    }

    fn wishes(expires: Option<u32>, refresher: Option<Refresher>, supports: bool, update: bool) -> TimerRequest {
        TimerRequest { expires, refresher, min_se: None, supports_timer: supports, allows_update: update }
    }

    /// RFC 4028 §9, case by case.
    #[test]
    fn the_uas_negotiation_table() {
        use Refresher::*;
        use TimerDecision::*;
        let cases = [
            // The caller supports timer and chose: its choice, the interval it asked (under ours).
            (wishes(Some(600), Some(Uac), true, true), Use { interval: 600, refresher: Uac, require: true }),
            (wishes(Some(600), Some(Uas), true, true), Use { interval: 600, refresher: Uas, require: true }),
            // Left to us: the caller refreshes.
            (wishes(Some(600), None, true, true), Use { interval: 600, refresher: Uac, require: true }),
            // Supported but no Session-Expires: we ask for ours; the caller refreshes.
            (wishes(None, None, true, false), Use { interval: 1800, refresher: Uac, require: true }),
            // More than we allow: reduced to ours (§9: the UAS MAY reduce it).
            (wishes(Some(7200), Some(Uac), true, true), Use { interval: 1800, refresher: Uac, require: true }),
            // No timer support (a proxy's Session-Expires, or none): we refresh, with UPDATE.
            (wishes(Some(600), Some(Uac), false, true), Use { interval: 600, refresher: Uas, require: false }),
            (wishes(None, None, false, true), Use { interval: 1800, refresher: Uas, require: false }),
            // ... which needs UPDATE: without it, no timer.
            (wishes(None, None, false, false), Off),
            // Below our minimum: 422 with our Min-SE.
            (wishes(Some(60), Some(Uac), true, true), TooSmall { min_se: 90 }),
        ];
        for (request, expected) in cases {
            assert_eq!(negotiate_uas(config(), &request), expected, "{request:?}");
        }
        let with_min_se = TimerRequest { min_se: Some(1200), ..wishes(Some(60), None, true, true) };
        assert_eq!(negotiate_uas(config(), &with_min_se), TooSmall { min_se: 1200 }, "the larger Min-SE");
        let floor = TimerRequest { min_se: Some(2400), ..wishes(None, None, true, true) };
        assert_eq!(
            negotiate_uas(config(), &floor),
            Use { interval: 2400, refresher: Uac, require: true },
            "never below the request's Min-SE"
        );
        let off = SessionTimerConfig { expires_secs: 0, min_se_secs: 90 };
        assert_eq!(negotiate_uas(off, &wishes(Some(600), Some(Uac), true, true)), Off);
    }

    #[test]
    fn headers_are_read_in_full_and_compact_form() {
        let text = "INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:c@d>;tag=1\r\n\
                    To: <sip:a@b>\r\nCall-ID: x1\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\n\
                    x: 1200 ; refresher=UAS\r\nMin-SE: 120\r\nk: 100rel, timer\r\nAllow: INVITE, ACK, UPDATE\r\n\
                    Content-Length: 0\r\n\r\n";
        let request = crate::message::parse_message(text.as_bytes(), crate::Transport::Udp).unwrap();
        assert_eq!(
            TimerRequest::read(&request),
            TimerRequest {
                expires: Some(1200),
                refresher: Some(Refresher::Uas),
                min_se: Some(120),
                supports_timer: true,
                allows_update: true
            }
        );
    }

    #[test]
    fn refreshes_at_half_the_interval_and_the_peers_expiry_keeps_a_margin() {
        let t0 = Instant::now();
        let ours =
            SessionTimer::answered(t0, TimerDecision::Use { interval: 90, refresher: Refresher::Uas, require: false })
                .unwrap();
        assert_eq!(ours.refresh_due(), Some(t0 + Duration::from_secs(45)));
        assert_eq!(ours.expires_at(), t0 + Duration::from_secs(90));
        let theirs =
            SessionTimer::answered(t0, TimerDecision::Use { interval: 90, refresher: Refresher::Uac, require: true })
                .unwrap();
        assert_eq!(theirs.refresh_due(), None);
        assert_eq!(theirs.expires_at(), t0 + Duration::from_secs(60), "90 - min(32, 30)");
        let long = SessionTimer { interval: Duration::from_secs(1800), ..theirs };
        assert_eq!(long.expires_at(), t0 + Duration::from_secs(1768), "1800 - min(32, 600)");
    }
}
