//! The access screen: every new out-of-dialog request passes it before the SIP core answers
//! anything, cheapest check first and before anything costs (routing, an RTP port, a Realtime
//! session):
//!
//! 1. `sip.user_agent_deny`: a scanner's User-Agent is dropped silently (any method);
//! 2. the source: an address in no trunk's `sources` and not in `sip.trusted_proxies` gets what
//!    `sip.unknown_sources` says (403, nothing at all, or on), any method but an in-dialog one;
//! 3. INVITE only: the ban, the per-source rate and the global CPS (`limits.rs`): 503 with
//!    Retry-After;
//! 4. INVITE only: inbound digest for a trunk with `inbound_username` (`401` with SHA-256 and
//!    MD5 challenges, `403` for wrong credentials). CANCEL is never challenged (RFC 3261 §22.1),
//!    nor OPTIONS (a trunk's keep-alive).
//!
//! Per-source call limits and the call slot come after, in `app.rs`, once the core has handed
//! the call over. The decision logic is sans-IO ([`Policy::decide`], time a parameter); the
//! [`Screen`] implementation only adds the lock and the counters.

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use switchboard_sip::core::Origin;
use switchboard_sip::digest_server::{self, DigestServer};
use switchboard_sip::message::{Message, Method};
use switchboard_sip::screen::{Screen, Verdict};

use super::limits::{RateConfig, RateLimits, RateRefusal};
use crate::admission::IpNet;
use crate::config::{Config, Resolved, Secret, UnknownSources};
use crate::telemetry::{self, WarningAction, WarningLimiter};

/// One trunk's inbound credentials.
#[derive(Debug, Clone)]
struct TrunkAuth {
    name: String,
    /// The trunk lists no `sources`: its calls come from unknown sources and are told apart by
    /// the username they authenticate with.
    by_credentials_only: bool,
    username: String,
    password: Secret,
}

/// What the screen knows of the configuration (rebuilt on reload).
#[derive(Debug, Clone)]
pub struct Policy {
    /// `sip.user_agent_deny`, lower-cased.
    user_agent_deny: Vec<String>,
    unknown_sources: UnknownSources,
    trusted_proxies: Vec<IpNet>,
    trunk_sources: Vec<(String, Vec<IpNet>)>,
    auth: Vec<TrunkAuth>,
    realm: String,
    retry_after_secs: u32,
    rates: RateConfig,
}

impl Policy {
    /// `default_realm`: the advertised host, used when `sip.realm` is empty.
    pub fn new(config: &Config, resolved: &Resolved, default_realm: &str) -> Policy {
        let sip = &config.sip;
        Policy {
            user_agent_deny: sip.user_agent_deny.0.iter().map(|ua| ua.trim().to_lowercase()).collect(),
            unknown_sources: crate::config::unknown_sources(config),
            trusted_proxies: resolved.trusted_proxies.clone(),
            trunk_sources: resolved.trunk_sources.clone(),
            auth: config
                .trunks
                .iter()
                .filter(|(_, trunk)| trunk.challenges_inbound())
                .map(|(name, trunk)| TrunkAuth {
                    name: name.clone(),
                    by_credentials_only: trunk.sources.0.is_empty(),
                    username: trunk.inbound_username.clone(),
                    password: trunk.inbound_password.clone(),
                })
                .collect(),
            realm: if sip.realm.is_empty() { default_realm.to_string() } else { sip.realm.clone() },
            retry_after_secs: config.calls.retry_after_secs,
            rates: RateConfig {
                per_source: sip.invite_rate_per_source,
                ban: Duration::from_secs(sip.ban_secs),
                max_cps: sip.max_cps,
                exempt: resolved.trusted_proxies.clone(),
                max_sources: rate_table_size(config.calls.max_concurrent),
            },
        }
    }

    fn trunk_for_source(&self, ip: IpAddr) -> Option<&str> {
        self.trunk_sources.iter().find(|(_, nets)| nets.iter().any(|n| n.contains(ip))).map(|(name, _)| name.as_str())
    }
}

/// How many sources the rate table may track (as the admission table: at least 4096).
fn rate_table_size(max_concurrent: usize) -> usize {
    max_concurrent.saturating_mul(2).max(4096)
}

/// Why a request was screened out: the `action` and `reason` labels of
/// `switchboard_sip_screened_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screened {
    UserAgent,
    UnknownSource(UnknownSources),
    Rate(RateRefusal),
    /// 401: no credentials yet (or unusable ones); `stale`: the nonce expired or was replayed.
    Challenged {
        stale: bool,
    },
    /// 403: wrong credentials.
    AuthFailed,
}

impl Screened {
    pub fn labels(self) -> (&'static str, &'static str) {
        match self {
            Screened::UserAgent => ("drop", "user_agent"),
            Screened::UnknownSource(UnknownSources::Drop) => ("drop", "unknown_source"),
            Screened::UnknownSource(_) => ("reject", "unknown_source"),
            Screened::Rate(refusal) => ("reject", refusal.reason_label()),
            Screened::Challenged { stale: false } => ("challenge", "auth_required"),
            Screened::Challenged { stale: true } => ("challenge", "stale_nonce"),
            Screened::AuthFailed => ("reject", "auth_failed"),
        }
    }
}

/// The screen's state: policy, rate table, digest server.
#[derive(Debug)]
pub struct Decider {
    policy: Policy,
    limits: RateLimits,
    digest: DigestServer,
}

impl Decider {
    pub fn new(policy: Policy, digest: DigestServer) -> Decider {
        Decider { limits: RateLimits::new(policy.rates.clone()), policy, digest }
    }

    pub fn reconfigure(&mut self, policy: Policy) {
        self.limits.reconfigure(policy.rates.clone());
        self.policy = policy;
    }

    /// Sources tracked by the rate limits.
    pub fn tracked_sources(&self) -> usize {
        self.limits.tracked_sources()
    }

    /// The verdict on one new out-of-dialog request, and why it was screened out if it was.
    pub fn decide(&mut self, now: Instant, source: IpAddr, request: &Message) -> (Verdict, Option<Screened>) {
        let policy = &self.policy;
        let Some(method) = request.method() else {
            return (Verdict::Pass, None);
        };
        if *method == Method::Ack {
            return (Verdict::Pass, None);
        }
        if let Some(agent) = request.header("User-Agent") {
            let agent = agent.to_lowercase();
            if policy.user_agent_deny.iter().any(|denied| agent.contains(denied.as_str())) {
                return (Verdict::Drop, Some(Screened::UserAgent));
            }
        }
        let source = source.to_canonical();
        let trunk = policy.trunk_for_source(source);
        let trusted = policy.trusted_proxies.iter().any(|n| n.contains(source));
        if trunk.is_none() && !trusted {
            match policy.unknown_sources {
                UnknownSources::Allow => {}
                UnknownSources::Reject => {
                    return (
                        reject(403, "Forbidden", Vec::new()),
                        Some(Screened::UnknownSource(UnknownSources::Reject)),
                    );
                }
                UnknownSources::Drop => return (Verdict::Drop, Some(Screened::UnknownSource(UnknownSources::Drop))),
            }
        }
        if *method != Method::Invite {
            return (Verdict::Pass, None);
        }
        // A trunk's own sources answer to the global CPS limit only (`limits.rs`).
        let limited = if trunk.is_some() { self.limits.check_global(now) } else { self.limits.check(source, now) };
        if let Err(refusal) = limited {
            let retry_after = match refusal {
                RateRefusal::Banned { remaining } => remaining.as_secs_f64().ceil() as u64,
                _ => u64::from(policy.retry_after_secs),
            };
            let headers = vec![("Retry-After".to_string(), retry_after.to_string())];
            return (reject(503, "Service Unavailable", headers), Some(Screened::Rate(refusal)));
        }
        if trusted && trunk.is_none() {
            return (Verdict::Pass, None);
        }
        // Whose credentials: the source's trunk's; from an unknown source, the credential-only
        // trunk whose username the request names (or the first, to refuse a wrong username).
        let auth = match trunk {
            Some(name) => policy.auth.iter().find(|a| a.name == name),
            None => {
                let named = request
                    .header_values("Authorization")
                    .filter_map(digest_server::Credentials::parse)
                    .map(|c| c.username)
                    .collect::<Vec<_>>();
                let candidates = || policy.auth.iter().filter(|a| a.by_credentials_only);
                candidates().find(|a| named.contains(&a.username)).or_else(|| candidates().next())
            }
        };
        let Some(auth) = auth else {
            return (Verdict::Pass, None);
        };
        let user =
            digest_server::User { realm: &policy.realm, username: &auth.username, password: auth.password.expose() };
        let verdict = self.digest.check(now, &user, method.as_str(), request.header_values("Authorization"));
        match verdict {
            digest_server::Verdict::Authenticated => (Verdict::Pass, None),
            digest_server::Verdict::Forbidden => (reject(403, "Forbidden", Vec::new()), Some(Screened::AuthFailed)),
            digest_server::Verdict::Challenge { stale } => {
                let realm = self.policy.realm.clone();
                let headers = self
                    .digest
                    .challenges(now, &realm, stale)
                    .into_iter()
                    .map(|challenge| ("WWW-Authenticate".to_string(), challenge))
                    .collect();
                (reject(401, "Unauthorized", headers), Some(Screened::Challenged { stale }))
            }
        }
    }
}

fn reject(status: u16, reason: &str, headers: Vec<(String, String)>) -> Verdict {
    Verdict::Reject { status, reason: reason.to_string(), headers }
}

/// The [`Screen`] the SIP endpoint consults: the [`Decider`] behind a lock, plus counters and a
/// rate-limited warning.
#[derive(Debug)]
pub struct AccessScreen {
    decider: Mutex<Decider>,
    warnings: Mutex<WarningLimiter>,
}

impl AccessScreen {
    pub fn new(policy: Policy) -> AccessScreen {
        let secret: [u8; 32] = rand::random();
        AccessScreen {
            decider: Mutex::new(Decider::new(policy, DigestServer::new(secret, Instant::now()))),
            warnings: Mutex::new(WarningLimiter::new(Duration::from_secs(10))),
        }
    }

    /// A reload's policy (trunks, `[sip]` access keys).
    pub fn reconfigure(&self, policy: Policy) {
        self.decider.lock().unwrap_or_else(|p| p.into_inner()).reconfigure(policy);
    }
}

impl Screen for AccessScreen {
    fn screen(&self, now: Instant, origin: &Origin, request: &Message) -> Verdict {
        let (verdict, screened) =
            self.decider.lock().unwrap_or_else(|p| p.into_inner()).decide(now, origin.source.ip(), request);
        let Some(screened) = screened else {
            return verdict;
        };
        let (action, reason) = screened.labels();
        metrics::counter!(telemetry::SIP_SCREENED_TOTAL, "action" => action, "reason" => reason).increment(1);
        if let Screened::Rate(refusal) = screened {
            // An INVITE refused for its rate is a refused inbound call, as before the screen.
            telemetry::count_call("inbound", "refused", refusal.reason_label());
        }
        tracing::debug!(source = %origin.source, action, reason, "request screened out");
        if matches!(screened, Screened::Rate(_) | Screened::AuthFailed | Screened::UnknownSource(_)) {
            let action_taken = self.warnings.lock().unwrap_or_else(|p| p.into_inner()).hit(now);
            if let WarningAction::Log { suppressed } = action_taken {
                tracing::warn!(
                    reason,
                    suppressed_since_last = suppressed,
                    "request refused by the access screen (sip.unknown_sources, rate limits, inbound digest)"
                );
            }
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use switchboard_sip::Transport;
    use switchboard_sip::client::Credentials;
    use switchboard_sip::digest::Challenge;
    use switchboard_sip::message::parse_message;

    use super::*;

    const URI: &str = "sip:100@192.0.2.1";

    fn decider(toml: &str) -> Decider {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(toml.as_bytes()).unwrap();
        let (config, resolved) = crate::config::load_with_env(file.path(), &[]).unwrap();
        Decider::new(Policy::new(&config, &resolved, "192.0.2.1"), DigestServer::new([1; 32], Instant::now()))
    }

    fn request(method: &str, user_agent: &str, authorization: Option<&str>) -> Message {
        let auth = authorization.map(|a| format!("Authorization: {a}\r\n")).unwrap_or_default();
        let text = format!(
            "{method} {URI} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.9;branch=z9hG4bK-1\r\nMax-Forwards: 70\r\n\
             From: <sip:a@192.0.2.9>;tag=f\r\nTo: <{URI}>\r\nCall-ID: c1\r\nCSeq: 1 {method}\r\n\
             Contact: <sip:a@192.0.2.9>\r\nUser-Agent: {user_agent}\r\n{auth}Content-Length: 0\r\n\r\n"
        );
        parse_message(text.as_bytes(), Transport::Udp).unwrap()
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    const TRUNKS: &str = "[trunks.carrier]\naddress = \"127.0.0.1:5070\"\nsources = [\"203.0.113.0/24\"]\n\
                          [trunks.pbx]\naddress = \"127.0.0.1:5071\"\nsources = [\"198.51.100.7\"]\n\
                          inbound_username = \"pbx\"\ninbound_password = \"pa55\"\n";

    #[test]
    fn scanners_are_dropped_by_user_agent_whatever_their_source_and_method() {
        let mut d = decider("");
        let now = Instant::now();
        for (method, ua) in [("INVITE", "friendly-scanner"), ("OPTIONS", "SIPVicious 0.3"), ("REGISTER", "sipcli/v1.8")]
        {
            assert_eq!(
                d.decide(now, ip("192.0.2.9"), &request(method, ua, None)),
                (Verdict::Drop, Some(Screened::UserAgent))
            );
        }
        assert_eq!(d.decide(now, ip("192.0.2.9"), &request("OPTIONS", "baresip", None)).0, Verdict::Pass);
    }

    #[test]
    fn unknown_sources_are_rejected_by_default_once_a_trunk_lists_sources() {
        let mut d = decider(TRUNKS);
        let now = Instant::now();
        let (verdict, why) = d.decide(now, ip("192.0.2.9"), &request("INVITE", "x", None));
        assert!(matches!(verdict, Verdict::Reject { status: 403, .. }), "{verdict:?}");
        assert_eq!(why.unwrap().labels(), ("reject", "unknown_source"));
        assert!(matches!(
            d.decide(now, ip("192.0.2.9"), &request("OPTIONS", "x", None)).0,
            Verdict::Reject { status: 403, .. }
        ));
        assert_eq!(d.decide(now, ip("203.0.113.5"), &request("INVITE", "x", None)).0, Verdict::Pass);
        let mut d = decider(&format!("[sip]\nunknown_sources = \"drop\"\ntrusted_proxies = [\"10.0.0.1\"]\n{TRUNKS}"));
        for method in ["INVITE", "OPTIONS", "CANCEL"] {
            assert_eq!(d.decide(now, ip("192.0.2.9"), &request(method, "x", None)).0, Verdict::Drop, "{method}");
        }
        assert_eq!(d.decide(now, ip("10.0.0.1"), &request("INVITE", "x", None)).0, Verdict::Pass, "a trusted proxy");
        let mut d = decider("");
        assert_eq!(
            d.decide(now, ip("192.0.2.9"), &request("INVITE", "x", None)).0,
            Verdict::Pass,
            "no trunk sources: allow"
        );
    }

    fn answer(verdict: &Verdict, user: &str, password: &str) -> String {
        let Verdict::Reject { status: 401, headers, .. } = verdict else { panic!("not a challenge: {verdict:?}") };
        let challenge = Challenge::choose(headers.iter().map(|(_, v)| v.as_str())).unwrap();
        challenge.answer(&Credentials { username: user.into(), password: password.into() }, "INVITE", URI, "c0ffee")
    }

    #[test]
    fn a_trunk_with_inbound_credentials_challenges_and_accepts_the_right_ones() {
        let mut d = decider(TRUNKS);
        let now = Instant::now();
        let pbx = ip("198.51.100.7");
        let (challenge, why) = d.decide(now, pbx, &request("INVITE", "pbx", None));
        assert_eq!(why, Some(Screened::Challenged { stale: false }));
        let Verdict::Reject { headers, .. } = &challenge else { unreachable!() };
        assert!(headers.iter().all(|(n, v)| n == "WWW-Authenticate" && v.contains("realm=\"192.0.2.1\"")));
        let right = answer(&challenge, "pbx", "pa55");
        assert_eq!(d.decide(now, pbx, &request("INVITE", "pbx", Some(&right))), (Verdict::Pass, None));
        let (challenge, _) = d.decide(now, pbx, &request("INVITE", "pbx", None));
        let wrong = answer(&challenge, "pbx", "guess");
        assert_eq!(d.decide(now, pbx, &request("INVITE", "pbx", Some(&wrong))).1, Some(Screened::AuthFailed));
        // Neither CANCEL nor OPTIONS is challenged; the carrier without credentials is not either.
        assert_eq!(d.decide(now, pbx, &request("CANCEL", "pbx", None)).0, Verdict::Pass);
        assert_eq!(d.decide(now, pbx, &request("OPTIONS", "pbx", None)).0, Verdict::Pass);
        assert_eq!(d.decide(now, ip("203.0.113.1"), &request("INVITE", "x", None)).0, Verdict::Pass);
    }

    #[test]
    fn a_credential_only_trunk_challenges_unknown_sources_under_allow() {
        let mut d = decider(
            "[sip]\nunknown_sources = \"allow\"\n[trunks.a]\naddress = \"127.0.0.1:5070\"\n\
             inbound_username = \"alice\"\ninbound_password = \"one\"\n\
             [trunks.b]\naddress = \"127.0.0.1:5071\"\ninbound_username = \"bob\"\ninbound_password = \"two\"\n",
        );
        let now = Instant::now();
        let anyone = ip("192.0.2.50");
        let (challenge, _) = d.decide(now, anyone, &request("INVITE", "x", None));
        let bob = answer(&challenge, "bob", "two");
        assert_eq!(d.decide(now, anyone, &request("INVITE", "x", Some(&bob))).0, Verdict::Pass);
        let (challenge, _) = d.decide(now, anyone, &request("INVITE", "x", None));
        let mallory = answer(&challenge, "mallory", "two");
        assert_eq!(d.decide(now, anyone, &request("INVITE", "x", Some(&mallory))).1, Some(Screened::AuthFailed));
    }

    #[test]
    fn rate_ban_and_cps_refusals_carry_retry_after() {
        let mut d = decider("[sip]\ninvite_rate_per_source = 1\nban_secs = 30\n[calls]\nretry_after_secs = 7\n");
        let now = Instant::now();
        let source = ip("192.0.2.9");
        assert_eq!(d.decide(now, source, &request("INVITE", "x", None)).0, Verdict::Pass);
        let retry_after = |v: &Verdict| match v {
            Verdict::Reject { status: 503, headers, .. } => {
                headers.iter().find(|(n, _)| n == "Retry-After").map(|(_, v)| v.clone())
            }
            _ => None,
        };
        let (limited, why) = d.decide(now, source, &request("INVITE", "x", None));
        assert_eq!(
            (retry_after(&limited).as_deref(), why),
            (Some("7"), Some(Screened::Rate(RateRefusal::RateLimited)))
        );
        let (banned, why) = d.decide(now + Duration::from_secs(10), source, &request("INVITE", "x", None));
        assert_eq!(retry_after(&banned).as_deref(), Some("20"));
        assert_eq!(why.unwrap().labels(), ("reject", "source_banned"));
        // OPTIONS are not rate limited.
        assert_eq!(d.decide(now, source, &request("OPTIONS", "x", None)).0, Verdict::Pass);
        let mut d = decider("[sip]\nmax_cps = 2\n");
        let results: Vec<_> =
            (0..3).map(|i| d.decide(now, ip(&format!("192.0.2.{i}")), &request("INVITE", "x", None)).1).collect();
        assert_eq!(results, [None, None, Some(Screened::Rate(RateRefusal::Cps))]);
    }

    /// A trunk's own source (a carrier's SBC: one address, many callers) is never rate limited
    /// or banned per source; the global CPS limit still holds for it.
    #[test]
    fn a_trunks_sources_answer_only_to_the_global_cps_limit() {
        let mut d = decider(
            "[sip]\ninvite_rate_per_source = 1\nban_secs = 30\nmax_cps = 3\n\
             [trunks.carrier]\naddress = \"192.0.2.20:5060\"\nsources = [\"192.0.2.20\"]\n",
        );
        let now = Instant::now();
        let carrier = ip("192.0.2.20");
        let verdicts: Vec<_> = (0..4).map(|_| d.decide(now, carrier, &request("INVITE", "x", None)).1).collect();
        assert_eq!(verdicts, [None, None, None, Some(Screened::Rate(RateRefusal::Cps))]);
        let later = now + Duration::from_secs(2);
        assert_eq!(d.decide(later, carrier, &request("INVITE", "x", None)).0, Verdict::Pass, "no ban");
    }
}
