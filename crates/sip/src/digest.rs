//! Digest authentication as a client (RFC 3261 §22.2, RFC 7616, RFC 2617 compatibility).
//!
//! A 401 carries `WWW-Authenticate`, a 407 `Proxy-Authenticate`; we answer with
//! `Authorization` / `Proxy-Authorization` on a new request. SHA-256 is chosen when the server
//! offers it (RFC 7616 §3.7: the client uses the first algorithm it supports among those
//! offered, and we prefer the stronger one), MD5 otherwise. With `qop=auth` offered the
//! response carries a client nonce and nonce count (RFC 7616 §3.4.1); without qop the RFC 2069
//! form is used (RFC 2617 §3.2.2.1). `auth-int` alone is not supported (the challenge is
//! refused; RFC 3261 §22.4 makes it optional for SIP).

use md5::Md5;
use sha2::{Digest, Sha256};

use crate::client::Credentials;

/// Digest algorithms we can answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    pub(crate) fn parse(token: &str) -> Option<Algorithm> {
        match token.trim().to_ascii_uppercase().as_str() {
            "MD5" => Some(Algorithm::Md5),
            "MD5-SESS" => Some(Algorithm::Md5Sess),
            "SHA-256" => Some(Algorithm::Sha256),
            "SHA-256-SESS" => Some(Algorithm::Sha256Sess),
            _ => None,
        }
    }

    /// The token in the `algorithm=` parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }

    pub(crate) fn is_sha256(self) -> bool {
        matches!(self, Algorithm::Sha256 | Algorithm::Sha256Sess)
    }

    pub(crate) fn is_session(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }

    pub(crate) fn hash(self, data: &str) -> String {
        if self.is_sha256() { hex(&Sha256::digest(data.as_bytes())) } else { hex(&Md5::digest(data.as_bytes())) }
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// One parsed `Digest` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `qop="auth"` was offered (with or without `auth-int`).
    pub qop_auth: bool,
    /// RFC 7616 §3.3: the nonce expired but our credentials were right; retry with the new one.
    pub stale: bool,
}

/// Why a challenge cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    #[error("no Digest challenge")]
    NotDigest,
    #[error("challenge without {0}")]
    Missing(&'static str),
    #[error("unsupported algorithm {0}")]
    UnsupportedAlgorithm(String),
    #[error("only qop=auth-int offered")]
    UnsupportedQop,
}

/// Splits `a=b, c="d, e"` into pairs, honouring quoted strings (RFC 7235 auth-param).
pub(crate) fn auth_params(text: &str) -> Vec<(String, String)> {
    let mut params = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let Some((name, after)) = rest.split_once('=') else {
            break;
        };
        let name = name.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut escaped = false;
            let mut end = quoted.len();
            for (index, c) in quoted.char_indices() {
                if escaped {
                    value.push(c);
                    escaped = false;
                } else if c == '\\' {
                    escaped = true;
                } else if c == '"' {
                    end = index + 1;
                    break;
                } else {
                    value.push(c);
                }
            }
            (value, quoted.get(end..).unwrap_or_default())
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after.get(..end).unwrap_or_default().trim().to_string(), after.get(end..).unwrap_or_default())
        };
        params.push((name, value));
        rest = remaining.trim_start().trim_start_matches(',').trim_start();
    }
    params
}

impl Challenge {
    /// Parses one `WWW-Authenticate` / `Proxy-Authenticate` value.
    pub fn parse(value: &str) -> Result<Challenge, ChallengeError> {
        let value = value.trim();
        let (scheme, rest) = value.split_once(char::is_whitespace).ok_or(ChallengeError::NotDigest)?;
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(ChallengeError::NotDigest);
        }
        let params = auth_params(rest);
        let get = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or(ChallengeError::Missing("realm"))?;
        let nonce = get("nonce").ok_or(ChallengeError::Missing("nonce"))?;
        // RFC 2617 §3.2.1: no algorithm means MD5.
        let algorithm = match get("algorithm") {
            Some(token) => Algorithm::parse(&token).ok_or(ChallengeError::UnsupportedAlgorithm(token))?,
            None => Algorithm::Md5,
        };
        let (qop_auth, qop_offered) = match get("qop") {
            Some(qop) => (qop.split(',').any(|q| q.trim().eq_ignore_ascii_case("auth")), true),
            None => (false, false),
        };
        if qop_offered && !qop_auth {
            return Err(ChallengeError::UnsupportedQop);
        }
        Ok(Challenge {
            realm,
            nonce,
            opaque: get("opaque"),
            algorithm,
            qop_auth,
            stale: get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true")),
        })
    }

    /// Picks the challenge to answer among the header values: SHA-256 first, then MD5
    /// (RFC 7616 §3.7), skipping those we cannot answer.
    pub fn choose<'a>(values: impl Iterator<Item = &'a str>) -> Result<Challenge, ChallengeError> {
        let mut best: Option<Challenge> = None;
        let mut first_error = ChallengeError::NotDigest;
        for value in values {
            match Challenge::parse(value) {
                Ok(challenge) => {
                    let better =
                        best.as_ref().is_none_or(|b| challenge.algorithm.is_sha256() && !b.algorithm.is_sha256());
                    if better {
                        best = Some(challenge);
                    }
                }
                Err(error) => {
                    if first_error == ChallengeError::NotDigest {
                        first_error = error;
                    }
                }
            }
        }
        best.ok_or(first_error)
    }

    /// The `Authorization` / `Proxy-Authorization` value for `method uri` (RFC 7616 §3.4).
    /// `cnonce` is the client nonce (random, used only with qop); the nonce count is always
    /// 1 because each challenge is answered once.
    pub fn answer(&self, credentials: &Credentials, method: &str, uri: &str, cnonce: &str) -> String {
        let nc = "00000001";
        let algorithm = self.algorithm;
        let mut ha1 = algorithm.hash(&format!("{}:{}:{}", credentials.username, self.realm, credentials.password));
        if algorithm.is_session() {
            ha1 = algorithm.hash(&format!("{ha1}:{}:{cnonce}", self.nonce));
        }
        let ha2 = algorithm.hash(&format!("{method}:{uri}"));
        let response = if self.qop_auth {
            algorithm.hash(&format!("{ha1}:{}:{nc}:{cnonce}:auth:{ha2}", self.nonce))
        } else {
            // RFC 2069 form (RFC 2617 §3.2.2.1 without qop).
            algorithm.hash(&format!("{ha1}:{}:{ha2}", self.nonce))
        };
        let mut value = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{}\", uri=\"{uri}\", response=\"{response}\", algorithm={}",
            quote(&credentials.username),
            quote(&self.realm),
            quote(&self.nonce),
            algorithm.as_str()
        );
        if self.qop_auth {
            value.push_str(&format!(", qop=auth, nc={nc}, cnonce=\"{cnonce}\""));
        }
        if let Some(opaque) = &self.opaque {
            value.push_str(&format!(", opaque=\"{}\"", quote(opaque)));
        }
        value
    }
}

/// Escapes `"` and `\` inside a quoted-string (RFC 3261 §25.1).
fn quote(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mufasa() -> Credentials {
        Credentials { username: "Mufasa".to_string(), password: "Circle of Life".to_string() }
    }

    const CNONCE: &str = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ";

    fn response_of(header: &str) -> String {
        auth_params(header.trim_start_matches("Digest "))
            .into_iter()
            .find(|(n, _)| n == "response")
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// RFC 7616 §3.9.1: the server offers SHA-256 and MD5; both responses match the RFC.
    #[test]
    fn rfc7616_mufasa_vectors() {
        let sha = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let md5 = r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=MD5, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#;
        let challenge = Challenge::choose([md5, sha].into_iter()).unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Sha256, "SHA-256 preferred when offered");
        let header = challenge.answer(&mufasa(), "GET", "/dir/index.html", CNONCE);
        assert_eq!(response_of(&header), "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1");
        assert!(header.contains("qop=auth, nc=00000001"));
        assert!(header.contains(r#"opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#));

        let challenge = Challenge::parse(md5).unwrap();
        let header = challenge.answer(&mufasa(), "GET", "/dir/index.html", CNONCE);
        assert_eq!(response_of(&header), "8ca523f5e9506fed4657c9700eebdbec");
        assert!(header.contains("algorithm=MD5"));
    }

    /// RFC 2617 §3.5 (qop=auth, MD5 by default) for compatibility.
    #[test]
    fn rfc2617_example() {
        let challenge = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert_eq!(challenge.algorithm, Algorithm::Md5);
        let credentials = Credentials { username: "Mufasa".to_string(), password: "Circle Of Life".to_string() };
        let header = challenge.answer(&credentials, "GET", "/dir/index.html", "0a4f113b");
        assert_eq!(response_of(&header), "6629fae49393a05397450978507c4ef1");
    }

    /// Without qop, the RFC 2069 form: H(HA1:nonce:HA2), no cnonce or nc.
    #[test]
    fn no_qop_uses_the_rfc2069_form() {
        let challenge = Challenge::parse(r#"Digest realm="sip.example", nonce="abc""#).unwrap();
        let header = challenge.answer(&mufasa(), "INVITE", "sip:bob@sip.example", "ignored");
        let ha1 = Algorithm::Md5.hash("Mufasa:sip.example:Circle of Life");
        let ha2 = Algorithm::Md5.hash("INVITE:sip:bob@sip.example");
        assert_eq!(response_of(&header), Algorithm::Md5.hash(&format!("{ha1}:abc:{ha2}")));
        assert!(!header.contains("cnonce") && !header.contains("nc="));
    }

    #[test]
    fn stale_and_refusals() {
        let stale = Challenge::parse(r#"Digest realm="r", nonce="n", stale=TRUE"#).unwrap();
        assert!(stale.stale);
        assert_eq!(Challenge::parse(r#"Basic realm="r""#), Err(ChallengeError::NotDigest));
        assert_eq!(Challenge::parse(r#"Digest nonce="n""#), Err(ChallengeError::Missing("realm")));
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#),
            Err(ChallengeError::UnsupportedAlgorithm("SHA-512-256".to_string()))
        );
        assert_eq!(
            Challenge::parse(r#"Digest realm="r", nonce="n", qop="auth-int""#),
            Err(ChallengeError::UnsupportedQop)
        );
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", mufasa());
        assert!(shown.contains("Mufasa") && !shown.contains("Circle"));
    }
}
