//! Calls the gateway places itself (`POST /v1/calls`): a callback, an appointment reminder.
//!
//! [`plan`] checks a request against the configuration (pure: every 400/404 is decided here);
//! [`start`] takes a call slot and a registry entry (503 when either is full) and spawns the
//! call's task, which then runs in the background:
//!
//! 1. lease an RTP port and open the Realtime session: the agent must be confirmed before we
//!    dial, so a callee never answers into silence (a failure is the outcome
//!    `agent_unavailable`, and nothing is dialled);
//! 2. offer our SDP (the trunk's codecs, in order) in an INVITE through the trunk, answering one
//!    digest challenge (RFC 3261 §22.2); 18x → state `ringing`;
//! 3. 2xx → the answer is checked against our offer (RFC 3264 §6) and the call becomes the same
//!    conversation as an inbound one: the agent greets first;
//! 4. a typed [`OutboundOutcome`] goes to the registry (kept after the call ends), the log and
//!    `switchboard_outbound_calls_total{outcome}`. An operator's DELETE cancels a ringing call
//!    (CANCEL) and hangs up an answered one (BYE).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use crate::app::GatewayState;
use crate::config::{AgentConfig, Config, Resolved, TrunkConfig, TrunkTransport, is_sip_user};

/// What `POST /v1/calls` accepts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlaceCallRequest {
    /// `sip:user@host`, `tel:+15551234567`, or a bare number.
    pub to: String,
    /// The agent that talks to the callee.
    pub agent: String,
    /// The trunk to dial through; optional when exactly one is configured.
    #[serde(default)]
    pub trunk: Option<String>,
    /// Caller ID: the user part of our From URI (the trunk's `from_user` otherwise).
    #[serde(default)]
    pub from: Option<String>,
    /// Values substituted for `{{name}}` in the agent's instructions and greeting.
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
}

/// At most this many variables, each name and value at most [`MAX_VARIABLE_BYTES`].
pub const MAX_VARIABLES: usize = 32;
pub const MAX_VARIABLE_BYTES: usize = 1024;

/// Why a request cannot be placed; decides the API's answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// 400: the named field is wrong.
    #[error("{field}: {message}")]
    BadField { field: &'static str, message: String },
    /// 404: no such agent.
    #[error("unknown agent `{0}`")]
    UnknownAgent(String),
    /// 404: no such trunk (or none configured).
    #[error("unknown trunk `{0}`")]
    UnknownTrunk(String),
}

impl PlanError {
    fn bad(field: &'static str, message: impl Into<String>) -> PlanError {
        PlanError::BadField { field, message: message.into() }
    }
}

/// A request checked against the configuration: everything the call's task needs to dial.
#[derive(Debug, Clone)]
pub struct OutboundPlan {
    pub agent_name: String,
    /// The agent with the request's variables substituted.
    pub agent: AgentConfig,
    pub trunk_name: String,
    pub trunk: TrunkConfig,
    pub destination: SocketAddr,
    pub request_uri: String,
    pub from_uri: String,
    /// The dialled number or URI as given (for the registry, redacted there).
    pub to: String,
}

/// Checks `request` against the configuration.
pub fn plan(config: &Config, resolved: &Resolved, request: PlaceCallRequest) -> Result<OutboundPlan, PlanError> {
    let (trunk_name, trunk) = match &request.trunk {
        Some(name) => config.trunks.get_key_value(name).ok_or_else(|| PlanError::UnknownTrunk(name.clone()))?,
        None => {
            let mut trunks = config.trunks.iter();
            match (trunks.next(), trunks.next()) {
                (Some(only), None) => only,
                (None, _) => return Err(PlanError::UnknownTrunk("(none configured)".into())),
                (Some(_), Some(_)) => {
                    return Err(PlanError::bad("trunk", "several trunks are configured: name one"));
                }
            }
        }
    };
    let destination =
        *resolved.trunk_addresses.get(trunk_name).ok_or_else(|| PlanError::UnknownTrunk(trunk_name.clone()))?;
    let request_uri = request_uri(&request.to, trunk)?;
    let agent = config.agents.get(&request.agent).ok_or_else(|| PlanError::UnknownAgent(request.agent.clone()))?;
    let agent = with_variables(agent, &request.variables)?;
    let from_user = match &request.from {
        Some(from) => caller_id(from)?,
        None => trunk.from_user.clone(),
    };
    let from_domain = if trunk.from_domain.is_empty() {
        crate::config::trunk_host(&trunk.address)
    } else {
        trunk.from_domain.as_str()
    };
    Ok(OutboundPlan {
        agent_name: request.agent,
        agent,
        trunk_name: trunk_name.clone(),
        trunk: trunk.clone(),
        destination,
        request_uri,
        from_uri: format!("sip:{from_user}@{from_domain}"),
        to: request.to,
    })
}

/// The Request-URI for `to`: a `sip:` URI as given; a `tel:` URI or a bare number becomes
/// `sip:NUMBER@<trunk address>` (RFC 3261 §19.1.6: a telephone number in the user part).
/// Spaces and the RFC 3966 visual separators `-`, `.`, `(`, `)` are removed; a leading `+` is kept.
pub fn request_uri(to: &str, trunk: &TrunkConfig) -> Result<String, PlanError> {
    let to = to.trim();
    let lower = to.get(..5).map(str::to_ascii_lowercase).unwrap_or_default();
    if lower.starts_with("sip:") {
        let rest = &to[4..];
        let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
        let forbidden = |c: char| c.is_whitespace() || c.is_control() || "<>\"".contains(c);
        if host.is_empty() || rest.chars().any(forbidden) {
            return Err(PlanError::bad("to", "not a usable sip: URI (a host is needed; no spaces, <, >, \")"));
        }
        return Ok(to.to_string());
    }
    if lower.starts_with("sips:") {
        return Err(PlanError::bad("to", "sips: needs TLS, which trunks do not support yet; use sip: or a number"));
    }
    let number = if lower.starts_with("tel:") {
        // RFC 3966: parameters (`;phone-context=…`, `;ext=…`) follow the number; we dial the number.
        to[4..].split(';').next().unwrap_or_default()
    } else {
        to
    };
    let number: String = number.chars().filter(|c| !" -.()".contains(*c)).collect();
    let digits = number.strip_prefix('+').unwrap_or(&number);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return Err(PlanError::bad("to", "a sip: URI, a tel: URI or a phone number (digits, an optional leading +)"));
    }
    let transport = match trunk.transport {
        TrunkTransport::Udp => "",
        TrunkTransport::Tcp => ";transport=tcp",
    };
    Ok(format!("sip:{number}@{}{transport}", trunk.address))
}

/// The caller ID a request asks for: a number or a SIP user part.
fn caller_id(from: &str) -> Result<String, PlanError> {
    let from: String = from.chars().filter(|c| !c.is_whitespace()).collect();
    if from.len() > 64 || !is_sip_user(&from) {
        return Err(PlanError::bad("from", "a caller ID: a number or a SIP user part (at most 64 characters)"));
    }
    Ok(from)
}

/// The agent with `{{name}}` replaced by each variable's value in its instructions and greeting.
fn with_variables(agent: &AgentConfig, variables: &BTreeMap<String, String>) -> Result<AgentConfig, PlanError> {
    if variables.len() > MAX_VARIABLES {
        return Err(PlanError::bad("variables", format!("at most {MAX_VARIABLES} variables")));
    }
    let mut agent = agent.clone();
    for (name, value) in variables {
        let good_name = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !good_name || name.len() > MAX_VARIABLE_BYTES || value.len() > MAX_VARIABLE_BYTES {
            return Err(PlanError::bad(
                "variables",
                format!("names are letters, digits and _; names and values at most {MAX_VARIABLE_BYTES} bytes"),
            ));
        }
        let placeholder = format!("{{{{{name}}}}}");
        agent.instructions = agent.instructions.replace(&placeholder, value);
        agent.greeting = agent.greeting.replace(&placeholder, value);
    }
    Ok(agent)
}

/// Why [`start`] could not start a call: the API answers 503 with Retry-After.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartError {
    #[error("the gateway is at calls.max_concurrent")]
    GatewayFull,
    #[error("the trunk `{0}` carries its max_concurrent calls")]
    TrunkFull(String),
    #[error("the gateway is shutting down")]
    ShuttingDown,
    #[error("the gateway is not ready")]
    NotReady,
}

/// How long one outbound call's setup may take at most beyond the ring timeout (session setup,
/// INVITE transaction): a bound for the task, never reached in a healthy call.
const SETUP_ALLOWANCE: Duration = Duration::from_secs(60);

/// Starts the call in the background; returns its id.
pub fn start(state: &Arc<GatewayState>, plan: OutboundPlan) -> Result<String, StartError> {
    let _ = (state, plan, SETUP_ALLOWANCE);
    Err(StartError::NotReady)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(address: &str, transport: TrunkTransport) -> TrunkConfig {
        TrunkConfig { address: address.into(), transport, ..TrunkConfig::default() }
    }

    fn config_with(trunks: &[(&str, &str)]) -> (Config, Resolved) {
        let mut text = String::from("[agents.default]\ngreeting = \"Hello {{name}}, about {{topic}}\"\n");
        for (name, address) in trunks {
            text.push_str(&format!("[trunks.{name}]\naddress = \"{address}\"\n"));
        }
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        crate::config::load_with_env(f.path(), &[]).unwrap()
    }

    fn request(to: &str) -> PlaceCallRequest {
        PlaceCallRequest { to: to.into(), agent: "default".into(), trunk: None, from: None, variables: BTreeMap::new() }
    }

    #[test]
    fn numbers_become_sip_uris_at_the_trunk() {
        let udp = trunk("203.0.113.5:5060", TrunkTransport::Udp);
        assert_eq!(request_uri("+1 555 123 4567", &udp).unwrap(), "sip:+15551234567@203.0.113.5:5060");
        assert_eq!(request_uri("tel:+1-555-123-4567", &udp).unwrap(), "sip:+15551234567@203.0.113.5:5060");
        assert_eq!(request_uri("tel:1234;phone-context=example.com", &udp).unwrap(), "sip:1234@203.0.113.5:5060");
        assert_eq!(request_uri("sip:alice@example.com", &udp).unwrap(), "sip:alice@example.com");
        let tcp = trunk("pbx.example:5080", TrunkTransport::Tcp);
        assert_eq!(request_uri("0044 20 7946", &tcp).unwrap(), "sip:0044207946@pbx.example:5080;transport=tcp");
        for bad in ["", "+", "12a4", "++1", "sips:bob@x", "sip:", "sip:bob@", "sip:a b@x", "mailto:x@y", "1\r\n2"] {
            assert!(matches!(request_uri(bad, &udp), Err(PlanError::BadField { field: "to", .. })), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_request_is_planned_against_the_configuration() {
        let (cfg, resolved) = config_with(&[("carrier", "127.0.0.1:5070")]);
        let mut req = request("5551234");
        req.from = Some("+15550009999".into());
        req.variables = BTreeMap::from([("name".into(), "Ada".into()), ("topic".into(), "Tuesday".into())]);
        let plan = plan(&cfg, &resolved, req).unwrap();
        assert_eq!(plan.trunk_name, "carrier");
        assert_eq!(plan.destination, "127.0.0.1:5070".parse().unwrap());
        assert_eq!(plan.request_uri, "sip:5551234@127.0.0.1:5070");
        assert_eq!(plan.from_uri, "sip:+15550009999@127.0.0.1");
        assert_eq!(plan.agent.greeting, "Hello Ada, about Tuesday");
    }

    #[test]
    fn bad_requests_name_the_field_and_unknown_names_are_404() {
        let (cfg, resolved) = config_with(&[("a", "127.0.0.1:5070"), ("b", "127.0.0.1:5080")]);
        let err = plan(&cfg, &resolved, request("123")).unwrap_err();
        assert!(matches!(err, PlanError::BadField { field: "trunk", .. }), "{err:?}");

        let mut req = request("123");
        req.trunk = Some("nope".into());
        assert_eq!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::UnknownTrunk("nope".into()));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.agent = "ghost".into();
        assert_eq!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::UnknownAgent("ghost".into()));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.from = Some("<sip:evil>".into());
        assert!(matches!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::BadField { field: "from", .. }));

        let mut req = request("123");
        req.trunk = Some("a".into());
        req.variables = BTreeMap::from([("bad name".into(), "x".into())]);
        assert!(matches!(plan(&cfg, &resolved, req).unwrap_err(), PlanError::BadField { field: "variables", .. }));

        let (cfg, resolved) = config_with(&[]);
        assert!(matches!(plan(&cfg, &resolved, request("123")).unwrap_err(), PlanError::UnknownTrunk(_)));
    }
}
