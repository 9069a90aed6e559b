//! Digest authentication as a server (RFC 3261 §22.4, RFC 7616): the challenges of a `401` to
//! an INVITE and the check of the `Authorization` a re-sent INVITE carries. Sans-IO: time is a
//! parameter.
//!
//! Nonces are stateless: `<issued>.<serial>.<mac>`, the seconds since the server started and a
//! serial number (hex; every challenge gets its own nonce, so two clients never share one and
//! their nonce counts cannot collide) and an HMAC-SHA-256 of both and the realm under a secret
//! made at start-up, so any nonce we did not
//! issue (or issued before a restart) is recognised without a table. A nonce is good for
//! [`NONCE_LIFETIME`]; an older one gets a new challenge with `stale=true` (RFC 7616 §3.3: the
//! credentials were right, retry with the new nonce without asking the user).
//!
//! Replay: within a nonce's lifetime each nonce count (`nc`) is taken once, in increasing order
//! (RFC 7616 §3.4: the server SHOULD check). The table of nonces in use is bounded: when it is
//! full and nothing in it has expired, the oldest entry is forgotten and every nonce issued up to
//! it counts as stale from then on, so forgetting never lets a replay through (its owner only
//! re-authenticates).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::digest::{Algorithm, auth_params};

/// How long a nonce we issued is accepted.
pub const NONCE_LIFETIME: Duration = Duration::from_secs(300);

/// Nonces whose nonce counts are tracked at most.
pub const MAX_TRACKED_NONCES: usize = 4096;

/// One parsed `Authorization: Digest` value.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    pub response: String,
    pub algorithm: Algorithm,
    pub qop: Option<String>,
    pub nc: Option<String>,
    pub cnonce: Option<String>,
}

/// The response hash is a proof of the password: not for logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("realm", &self.realm)
            .field("uri", &self.uri)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl Credentials {
    /// Parses an `Authorization` (or `Proxy-Authorization`) value; `None` if it is not a
    /// Digest answer with the fields a check needs.
    pub fn parse(value: &str) -> Option<Credentials> {
        let (scheme, rest) = value.trim().split_once(char::is_whitespace)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return None;
        }
        let params = auth_params(rest);
        let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        Some(Credentials {
            username: get("username")?,
            realm: get("realm")?,
            nonce: get("nonce")?,
            uri: get("uri")?,
            response: get("response")?.to_ascii_lowercase(),
            // RFC 7616 §3.4: no algorithm means MD5.
            algorithm: match get("algorithm") {
                Some(token) => Algorithm::parse(&token)?,
                None => Algorithm::Md5,
            },
            qop: get("qop"),
            nc: get("nc"),
            cnonce: get("cnonce"),
        })
    }
}

/// What a request's credentials are worth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The right user and password, on a nonce we issued, not replayed.
    Authenticated,
    /// Answer 401 with new challenges: no (usable) credentials, a nonce that is not ours, another
    /// realm. `stale`: the nonce expired or its count was used already, but the answer was
    /// computed with the right password (RFC 7616 §3.3) or cannot be told apart from one that was.
    Challenge { stale: bool },
    /// A nonce of ours answered with a wrong username or password: 403 (asking again would
    /// only invite password guessing; the operator sees the refusal counted).
    Forbidden,
}

/// Issues nonces and checks answers for one realm set (the secret is per process).
#[derive(Debug)]
pub struct DigestServer {
    secret: Secret,
    epoch: Instant,
    /// The nonce counts used per nonce, with when the nonce was issued.
    seen: HashMap<String, Seen>,
    /// Nonces issued at or before this (seconds since `epoch`) are stale: an entry of theirs
    /// may have been forgotten.
    stale_up_to: Option<u64>,
    /// Nonces issued so far (the serial of the next one).
    issued_count: u64,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    issued: u64,
    last_nc: u32,
}

/// The HMAC key; never shown.
struct Secret([u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl DigestServer {
    /// `secret`: random bytes made at start-up; `epoch`: the instant nonce times count from.
    pub fn new(secret: [u8; 32], epoch: Instant) -> DigestServer {
        DigestServer { secret: Secret(secret), epoch, seen: HashMap::new(), stale_up_to: None, issued_count: 0 }
    }

    fn mac(&self, issued: u64, serial: u64, realm: &str) -> String {
        // HMAC accepts a key of any length: `new_from_slice` cannot fail here.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret.0) else {
            return String::new();
        };
        mac.update(format!("{issued:x}:{serial:x}:{realm}").as_bytes());
        let tag = mac.finalize().into_bytes();
        tag.iter().take(16).map(|b| format!("{b:02x}")).collect()
    }

    fn seconds(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_secs()
    }

    /// A fresh nonce for `realm`.
    pub fn nonce(&mut self, now: Instant, realm: &str) -> String {
        let issued = self.seconds(now);
        let serial = self.issued_count;
        self.issued_count = self.issued_count.wrapping_add(1);
        format!("{issued:x}.{serial:x}.{}", self.mac(issued, serial, realm))
    }

    /// The `WWW-Authenticate` values of a 401: SHA-256 first, then MD5 (RFC 7616 §3.7: the
    /// client picks the first it supports; RFC 8760 for SIP), `qop="auth"`, one nonce.
    pub fn challenges(&mut self, now: Instant, realm: &str, stale: bool) -> Vec<String> {
        let nonce = self.nonce(now, realm);
        let stale = if stale { ", stale=true" } else { "" };
        [Algorithm::Sha256, Algorithm::Md5]
            .iter()
            .map(|algorithm| {
                format!(
                    "Digest realm=\"{realm}\", nonce=\"{nonce}\", qop=\"auth\", algorithm={}{stale}",
                    algorithm.as_str()
                )
            })
            .collect()
    }

    /// When `nonce` was issued for `realm` by us, if it was.
    fn issued(&self, nonce: &str, realm: &str) -> Option<u64> {
        let mut parts = nonce.splitn(3, '.');
        let (issued_hex, serial_hex, mac) = (parts.next()?, parts.next()?, parts.next()?);
        let issued = u64::from_str_radix(issued_hex, 16).ok()?;
        let serial = u64::from_str_radix(serial_hex, 16).ok()?;
        let expected = self.mac(issued, serial, realm);
        bool::from(expected.as_bytes().ct_eq(mac.as_bytes())).then_some(issued)
    }

    /// Checks the `Authorization` values of a request (`method`, `request_uri`) against the
    /// one user allowed in `realm`.
    pub fn check<'a>(
        &mut self,
        now: Instant,
        realm: &str,
        method: &str,
        request_uri: &str,
        authorization: impl Iterator<Item = &'a str>,
        username: &str,
        password: &str,
    ) -> Verdict {
        let Some(credentials) = authorization.filter_map(Credentials::parse).find(|c| c.realm == realm) else {
            return Verdict::Challenge { stale: false };
        };
        let Some(issued) = self.issued(&credentials.nonce, realm) else {
            return Verdict::Challenge { stale: false };
        };
        // RFC 7616 §3.4: qop was offered, so the answer must use it (auth; auth-int was not offered).
        let (Some(qop), Some(nc_text), Some(cnonce)) = (&credentials.qop, &credentials.nc, &credentials.cnonce) else {
            return Verdict::Challenge { stale: false };
        };
        let Ok(nc) = u32::from_str_radix(nc_text, 16) else {
            return Verdict::Challenge { stale: false };
        };
        if !qop.eq_ignore_ascii_case("auth") || credentials.uri != request_uri {
            return Verdict::Challenge { stale: false };
        }
        let algorithm = credentials.algorithm;
        let mut ha1 = algorithm.hash(&format!("{username}:{realm}:{password}"));
        if algorithm.is_session() {
            ha1 = algorithm.hash(&format!("{ha1}:{}:{cnonce}", credentials.nonce));
        }
        let ha2 = algorithm.hash(&format!("{method}:{}", credentials.uri));
        let expected = algorithm.hash(&format!("{ha1}:{}:{nc_text}:{cnonce}:{qop}:{ha2}", credentials.nonce));
        let right =
            credentials.username == username && bool::from(expected.as_bytes().ct_eq(credentials.response.as_bytes()));
        let now_secs = self.seconds(now);
        let expired = now_secs.saturating_sub(issued) >= NONCE_LIFETIME.as_secs()
            || self.stale_up_to.is_some_and(|floor| issued <= floor);
        if !right {
            // An expired nonce with a wrong answer is still a wrong answer; but a client that
            // kept an old nonce deserves a fresh one before it is refused.
            return if expired { Verdict::Challenge { stale: false } } else { Verdict::Forbidden };
        }
        if expired {
            return Verdict::Challenge { stale: true };
        }
        match self.seen.get_mut(&credentials.nonce) {
            Some(seen) if nc <= seen.last_nc => return Verdict::Challenge { stale: true },
            Some(seen) => seen.last_nc = nc,
            None => {
                self.make_room(now_secs);
                self.seen.insert(credentials.nonce.clone(), Seen { issued, last_nc: nc });
            }
        }
        Verdict::Authenticated
    }

    /// Nonces tracked now (bounded by [`MAX_TRACKED_NONCES`]).
    pub fn tracked_nonces(&self) -> usize {
        self.seen.len()
    }

    fn make_room(&mut self, now_secs: u64) {
        if self.seen.len() < MAX_TRACKED_NONCES {
            return;
        }
        let lifetime = NONCE_LIFETIME.as_secs();
        self.seen.retain(|_, seen| now_secs.saturating_sub(seen.issued) < lifetime);
        while self.seen.len() >= MAX_TRACKED_NONCES {
            let Some((oldest, issued)) =
                self.seen.iter().min_by_key(|(_, seen)| seen.issued).map(|(nonce, seen)| (nonce.clone(), seen.issued))
            else {
                return;
            };
            self.stale_up_to = Some(self.stale_up_to.map_or(issued, |floor| floor.max(issued)));
            self.seen.retain(|_, seen| seen.issued > issued);
            self.seen.remove(&oldest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Credentials as ClientCredentials;
    use crate::digest::Challenge;

    const REALM: &str = "switchboard.example";
    const URI: &str = "sip:15550001000@192.0.2.1";

    fn server() -> (DigestServer, Instant) {
        let epoch = Instant::now();
        (DigestServer::new([7; 32], epoch), epoch)
    }

    /// Our own digest client answers a challenge (`nc` is always 1 there).
    fn answer(challenge: &str, user: &str, password: &str) -> String {
        let challenge = Challenge::parse(challenge).unwrap();
        let credentials = ClientCredentials { username: user.into(), password: password.into() };
        challenge.answer(&credentials, "INVITE", URI, "0a4f113b")
    }

    fn check(server: &mut DigestServer, now: Instant, authorization: &str) -> Verdict {
        server.check(now, REALM, "INVITE", URI, std::iter::once(authorization), "gw", "pa55")
    }

    #[test]
    fn the_right_answer_to_either_challenge_passes_once() {
        let (mut server, now) = server();
        for pick in [0, 1] {
            let challenges = server.challenges(now, REALM, false);
            assert_eq!(challenges.len(), 2);
            assert!(challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"));
            assert!(challenges.iter().all(|c| c.contains("qop=\"auth\"") && !c.contains("stale")));
            let authorization = answer(&challenges[pick], "gw", "pa55");
            assert_eq!(check(&mut server, now, &authorization), Verdict::Authenticated, "{}", challenges[pick]);
            // The same nonce count again: a replay.
            assert_eq!(check(&mut server, now, &authorization), Verdict::Challenge { stale: true });
        }
        assert_eq!(server.tracked_nonces(), 2, "each challenge has its own nonce");
    }

    #[test]
    fn a_wrong_password_or_user_is_forbidden_and_no_credentials_are_challenged() {
        let (mut server, now) = server();
        let challenge = &server.challenges(now, REALM, false)[1];
        assert_eq!(check(&mut server, now, &answer(challenge, "gw", "guess")), Verdict::Forbidden);
        assert_eq!(check(&mut server, now, &answer(challenge, "admin", "pa55")), Verdict::Forbidden);
        assert_eq!(
            server.check(now, REALM, "INVITE", URI, std::iter::empty(), "gw", "pa55"),
            Verdict::Challenge { stale: false }
        );
        assert_eq!(check(&mut server, now, "Basic Z3c6cGE1NQ=="), Verdict::Challenge { stale: false });
    }

    #[test]
    fn a_nonce_we_did_not_issue_or_for_another_realm_is_challenged_again() {
        let (mut server, now) = server();
        let forged = format!(
            "Digest realm=\"{REALM}\", nonce=\"0.0.00000000000000000000000000000000\", qop=\"auth\", algorithm=MD5"
        );
        assert_eq!(check(&mut server, now, &answer(&forged, "gw", "pa55")), Verdict::Challenge { stale: false });
        let mut other = DigestServer::new([8; 32], now);
        let foreign = &other.challenges(now, REALM, false)[0];
        assert_eq!(check(&mut server, now, &answer(foreign, "gw", "pa55")), Verdict::Challenge { stale: false });
        let elsewhere = &server.challenges(now, "other.example", false)[0].replace("other.example", REALM);
        assert_eq!(check(&mut server, now, &answer(elsewhere, "gw", "pa55")), Verdict::Challenge { stale: false });
    }

    #[test]
    fn an_expired_nonce_is_stale_on_a_virtual_clock() {
        let (mut server, start) = server();
        let challenge = &server.challenges(start, REALM, false)[0];
        let authorization = answer(challenge, "gw", "pa55");
        let almost = start + NONCE_LIFETIME - Duration::from_secs(1);
        assert_eq!(check(&mut server, almost, &authorization), Verdict::Authenticated);
        let later = start + NONCE_LIFETIME;
        let reused = authorization.replace("nc=00000001", "nc=00000002");
        // The response covers nc: a changed nc with the old response is a wrong answer, so the
        // client's real next request is built here the way a client builds it.
        assert_eq!(check(&mut server, later, &reused), Verdict::Challenge { stale: false });
        let fresh = answer(challenge, "gw", "pa55");
        assert_eq!(check(&mut server, later, &fresh), Verdict::Challenge { stale: true });
        let new_challenge = &server.challenges(later, REALM, true)[0];
        assert!(new_challenge.ends_with("stale=true"));
        assert_eq!(check(&mut server, later, &answer(new_challenge, "gw", "pa55")), Verdict::Authenticated);
    }

    #[test]
    fn increasing_nonce_counts_pass_and_a_repeated_one_does_not() {
        let (mut server, now) = server();
        let nonce = server.nonce(now, REALM);
        let respond = |nc: &str| {
            let algorithm = Algorithm::Md5;
            let ha1 = algorithm.hash(&format!("gw:{REALM}:pa55"));
            let ha2 = algorithm.hash(&format!("INVITE:{URI}"));
            let response = algorithm.hash(&format!("{ha1}:{nonce}:{nc}:abc:auth:{ha2}"));
            format!(
                "Digest username=\"gw\", realm=\"{REALM}\", nonce=\"{nonce}\", uri=\"{URI}\", response=\"{response}\", \
                 qop=auth, nc={nc}, cnonce=\"abc\""
            )
        };
        assert_eq!(check(&mut server, now, &respond("00000001")), Verdict::Authenticated);
        assert_eq!(check(&mut server, now, &respond("00000003")), Verdict::Authenticated);
        assert_eq!(check(&mut server, now, &respond("00000002")), Verdict::Challenge { stale: true });
        assert_eq!(check(&mut server, now, &respond("00000004")), Verdict::Authenticated);
    }

    #[test]
    fn the_answer_must_be_for_this_request_uri_and_use_qop() {
        let (mut server, now) = server();
        let challenge = &server.challenges(now, REALM, false)[1];
        let authorization = answer(challenge, "gw", "pa55");
        assert_eq!(
            server.check(
                now,
                REALM,
                "INVITE",
                "sip:900@192.0.2.1",
                std::iter::once(authorization.as_str()),
                "gw",
                "pa55"
            ),
            Verdict::Challenge { stale: false }
        );
        let without_qop = answer(&challenge.replace(", qop=\"auth\"", ""), "gw", "pa55");
        assert_eq!(check(&mut server, now, &without_qop), Verdict::Challenge { stale: false });
    }

    /// RFC 7616 §3.9.1: the example's response, for both algorithms, through the same formula
    /// the check uses (user Mufasa, password "Circle of Life", realm http-auth@example.org).
    #[test]
    fn rfc_7616_example_responses() {
        let (nonce, cnonce) =
            ("7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ");
        let (ha2_input, nc) = ("GET:/dir/index.html", "00000001");
        for (algorithm, expected) in [
            (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
            (Algorithm::Sha256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
        ] {
            let ha1 = algorithm.hash("Mufasa:http-auth@example.org:Circle of Life");
            let ha2 = algorithm.hash(ha2_input);
            assert_eq!(algorithm.hash(&format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}")), expected);
        }
    }

    #[test]
    fn the_nonce_table_is_bounded_and_forgetting_makes_old_nonces_stale() {
        let (mut server, start) = server();
        let mut first = None;
        for i in 0..=MAX_TRACKED_NONCES as u64 {
            let now = start + Duration::from_millis(i * 10);
            let challenge = server.challenges(now, REALM, false)[1].clone();
            let authorization = answer(&challenge, "gw", "pa55");
            assert_eq!(check(&mut server, now, &authorization), Verdict::Authenticated, "nonce {i}");
            first.get_or_insert(authorization);
            assert!(server.tracked_nonces() <= MAX_TRACKED_NONCES);
        }
        // The first nonce was forgotten: its replay is stale, not accepted.
        let now = start + Duration::from_secs(60);
        assert_eq!(check(&mut server, now, first.as_deref().unwrap()), Verdict::Challenge { stale: true });
    }
}
