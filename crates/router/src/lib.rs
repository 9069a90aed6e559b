//! Which agent answers a call.
//!
//! The decision is a pure function of the call's [`Facts`] (dialled number, caller ID, source
//! address) and the [`RouteTable`], with the current time passed in: no I/O, no clock, so the
//! table is unit-tested case by case and `switchboard route` gives the answer the gateway gives.
//!
//! A route matches when every key it sets matches (a key left out matches anything); the first
//! route that matches decides: an agent, or a reject code. No route matching is [`Decision::NoMatch`]
//! (the gateway answers 404).
//!
//! [`render`] fills placeholders (`{caller}`, `{dialled}`, `{header.X-Name}`, `{{variable}}`) in
//! an agent's instructions and greeting.

pub mod hours;
pub mod net;
pub mod pattern;
pub mod render;

use std::fmt;
use std::net::IpAddr;

pub use hours::{Hours, HoursError};
pub use jiff::Timestamp;
pub use jiff::tz::TimeZone;
pub use net::{IpNet, IpNetError};
pub use pattern::{NumberPattern, PatternError};
pub use render::{Placeholder, Values, render};

/// What the router knows about a call when it decides.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The dialled number: the Request-URI's user part, else the To URI's.
    pub dialled: &'a str,
    /// The caller ID: P-Asserted-Identity's user part when the INVITE has one, else From's.
    pub caller: &'a str,
    /// Where the INVITE came from.
    pub source: IpAddr,
}

/// A SIP final response code a reject route may answer with (RFC 3261 §21): 403 Forbidden,
/// 404 Not Found, 480 Temporarily Unavailable, 486 Busy Here, 603 Decline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RejectCode(u16);

impl RejectCode {
    pub const ALLOWED: [u16; 5] = [403, 404, 480, 486, 603];

    /// `None` for a code outside [`RejectCode::ALLOWED`].
    pub fn new(code: u16) -> Option<RejectCode> {
        RejectCode::ALLOWED.contains(&code).then_some(RejectCode(code))
    }

    pub fn code(self) -> u16 {
        self.0
    }

    /// The RFC 3261 §21 reason phrase.
    pub fn reason(self) -> &'static str {
        match self.0 {
            403 => "Forbidden",
            404 => "Not Found",
            480 => "Temporarily Unavailable",
            486 => "Busy Here",
            _ => "Decline",
        }
    }
}

/// What a matching route does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// The named agent answers.
    Agent(String),
    /// The call is refused with this code.
    Reject(RejectCode),
}

/// One entry of the table. Every match list left empty matches anything.
#[derive(Debug, Clone)]
pub struct Route {
    /// For logs, CDRs and `switchboard route`: the configured `name`, else `#<index>`.
    pub name: String,
    /// The dialled number matches one of these.
    pub dialled: Vec<NumberPattern>,
    /// The caller ID matches one of these (empty: any caller).
    pub caller: Vec<NumberPattern>,
    /// The source address is in one of these (empty: any source).
    pub source: Vec<IpNet>,
    /// When the route applies, read in `time_zone` (none: always).
    pub hours: Option<Hours>,
    pub time_zone: TimeZone,
    pub action: Action,
    /// Overrides the agent's `record` when set.
    pub record: Option<bool>,
}

impl Route {
    /// A route that sends every call (any number, caller, source, time) to `agent`.
    pub fn catch_all(name: impl Into<String>, agent: impl Into<String>) -> Route {
        Route {
            name: name.into(),
            dialled: vec![NumberPattern::Any],
            caller: Vec::new(),
            source: Vec::new(),
            hours: None,
            time_zone: TimeZone::UTC,
            action: Action::Agent(agent.into()),
            record: None,
        }
    }

    /// Whether the call matches every key this route sets.
    pub fn matches(&self, facts: &Facts<'_>, now: Timestamp) -> bool {
        let any = |patterns: &[NumberPattern], number: &str| patterns.iter().any(|p| p.matches(number));
        any(&self.dialled, facts.dialled)
            && (self.caller.is_empty() || any(&self.caller, facts.caller))
            && (self.source.is_empty() || self.source.iter().any(|net| net.contains(facts.source)))
            && self.hours.as_ref().is_none_or(|hours| hours.contains(&now.to_zoned(self.time_zone.clone())))
    }
}

/// The routes in order; the first match wins.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
}

/// The router's answer for one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// `agent` answers; `record` is the route's override of the agent's `record`.
    Agent { route: &'a str, agent: &'a str, record: Option<bool> },
    /// The call is refused with `code`.
    Reject { route: &'a str, code: RejectCode },
    /// No route matches: 404 Not Found.
    NoMatch,
}

impl Decision<'_> {
    /// Metric label: `agent`, `reject` or `no_match`.
    pub fn outcome_label(&self) -> &'static str {
        match self {
            Decision::Agent { .. } => "agent",
            Decision::Reject { .. } => "reject",
            Decision::NoMatch => "no_match",
        }
    }

    /// The deciding route's name; empty for no match.
    pub fn route(&self) -> &str {
        match self {
            Decision::Agent { route, .. } | Decision::Reject { route, .. } => route,
            Decision::NoMatch => "",
        }
    }
}

impl fmt::Display for Decision<'_> {
    /// What `switchboard route` prints.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Agent { route, agent, record } => {
                write!(f, "route {route}: agent {agent}")?;
                match record {
                    Some(true) => write!(f, " (recorded: route override)"),
                    Some(false) => write!(f, " (not recorded: route override)"),
                    None => Ok(()),
                }
            }
            Decision::Reject { route, code } => write!(f, "route {route}: reject {} {}", code.code(), code.reason()),
            Decision::NoMatch => write!(f, "no route matches: reject 404 Not Found"),
        }
    }
}

impl RouteTable {
    pub fn new(routes: Vec<Route>) -> RouteTable {
        RouteTable { routes }
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The first route matching the call decides.
    pub fn decide(&self, facts: &Facts<'_>, now: Timestamp) -> Decision<'_> {
        let Some(route) = self.routes.iter().find(|route| route.matches(facts, now)) else {
            return Decision::NoMatch;
        };
        match &route.action {
            Action::Agent(agent) => Decision::Agent { route: &route.name, agent, record: route.record },
            Action::Reject(code) => Decision::Reject { route: &route.name, code: *code },
        }
    }
}

#[cfg(test)]
mod tests;
