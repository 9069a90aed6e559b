//! The routing table, case by case.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::*;
use crate::render::{fill, unknown_placeholders, written_placeholders};

fn patterns(list: &[&str]) -> Vec<NumberPattern> {
    list.iter().map(|p| NumberPattern::parse(p).unwrap()).collect()
}

/// A route to `action` ("agent:NAME" or "reject:CODE") with the given keys.
struct R<'a> {
    name: &'a str,
    dialled: &'a [&'a str],
    caller: &'a [&'a str],
    source: &'a [&'a str],
    hours: Option<&'a str>,
    zone: &'a str,
    action: &'a str,
}

const R0: R<'static> =
    R { name: "", dialled: &["*"], caller: &[], source: &[], hours: None, zone: "UTC", action: "agent:default" };

fn route(r: R<'_>) -> Route {
    let action = match r.action.split_once(':').unwrap() {
        ("agent", name) => Action::Agent(name.to_string()),
        ("reject", code) => Action::Reject(RejectCode::new(code.parse().unwrap()).unwrap()),
        other => panic!("{other:?}"),
    };
    Route {
        name: r.name.to_string(),
        dialled: patterns(r.dialled),
        caller: patterns(r.caller),
        source: r.source.iter().map(|s| IpNet::parse(s).unwrap()).collect(),
        hours: r.hours.map(|h| Hours::parse(h).unwrap()),
        time_zone: TimeZone::get(r.zone).unwrap(),
        action,
        record: None,
    }
}

/// The table every case below runs against, as an operator would write it.
fn table() -> RouteTable {
    RouteTable::new(vec![
        route(R { name: "blocked", caller: &["+15550666000", "/.*6666$/"], action: "reject:603", ..R0 }),
        route(R { name: "busy-line", dialled: &["15550009999"], action: "reject:486", ..R0 }),
        route(R { name: "vip", dialled: &["1555000100*"], caller: &["+4930*"], action: "agent:vip", ..R0 }),
        route(R {
            name: "after-hours",
            dialled: &["1555000100*"],
            hours: Some("mon-fri 00:00-08:00, mon-fri 18:00-24:00, sat-sun"),
            zone: "Europe/Berlin",
            action: "agent:after-hours",
            ..R0
        }),
        route(R { name: "support", dialled: &["+1555000100*"], action: "agent:support", ..R0 }),
        route(R { name: "sales", dialled: &["15550002000"], action: "agent:sales", ..R0 }),
        route(R { name: "germany", dialled: &["/\\+?49[0-9]{6,12}/"], action: "agent:german", ..R0 }),
        route(R {
            name: "pbx",
            dialled: &["7*"],
            source: &["10.1.0.0/16", "192.0.2.7"],
            action: "agent:internal",
            ..R0
        }),
        route(R {
            name: "night-desk",
            dialled: &["15550003000"],
            hours: Some("fri 22:00-06:00"),
            zone: "America/New_York",
            action: "agent:night",
            ..R0
        }),
        route(R {
            name: "sunday-desk",
            dialled: &["15550004000"],
            hours: Some("08:00-18:00"),
            zone: "Europe/Berlin",
            action: "agent:desk",
            ..R0
        }),
        route(R { name: "forbidden-prefix", dialled: &["1900*"], action: "reject:403", ..R0 }),
        route(R { name: "catch-all", dialled: &["*"], caller: &["/[0-9+]+/"], action: "agent:default", ..R0 }),
    ])
}

fn at(rfc3339: &str) -> Timestamp {
    rfc3339.parse().unwrap()
}

/// A Wednesday, 11:00 in Berlin (10:00 UTC): office hours.
const OFFICE: &str = "2026-12-02T10:00:00Z";

#[test]
fn the_table_decides_each_case() {
    let table = table();
    let pbx: IpAddr = "10.1.2.3".parse().unwrap();
    let internet: IpAddr = "203.0.113.9".parse().unwrap();
    // (what, dialled, caller, source, time, expected "route -> outcome")
    let cases: &[(&str, &str, &str, IpAddr, &str, &str)] = &[
        ("exact", "15550002000", "+15551230000", internet, OFFICE, "sales -> sales"),
        ("exact, + on the dialled side", "+15550002000", "15551230000", internet, OFFICE, "sales -> sales"),
        ("exact, one digit more is not it", "155500020001", "15551230000", internet, OFFICE, "catch-all -> default"),
        ("prefix", "15550001004", "15551230000", internet, OFFICE, "support -> support"),
        ("prefix with +", "+15550001009", "15551230000", internet, OFFICE, "support -> support"),
        ("pattern", "+4930123456", "15551230000", internet, OFFICE, "germany -> german"),
        ("pattern is anchored", "0049301234567", "15551230000", internet, OFFICE, "catch-all -> default"),
        ("caller ID prefix", "15550001004", "+493055555", internet, OFFICE, "vip -> vip"),
        ("caller ID exact rejects", "15550002000", "15550666000", internet, OFFICE, "blocked -> 603"),
        ("caller ID pattern rejects", "15550002000", "+15551116666", internet, OFFICE, "blocked -> 603"),
        ("reject route", "15550009999", "15551230000", internet, OFFICE, "busy-line -> 486"),
        ("reject by prefix", "19005550000", "15551230000", internet, OFFICE, "forbidden-prefix -> 403"),
        ("source CIDR", "7001", "15551230000", pbx, OFFICE, "pbx -> internal"),
        ("source host", "7001", "15551230000", "192.0.2.7".parse().unwrap(), OFFICE, "pbx -> internal"),
        ("source v4-mapped", "7001", "15551230000", "::ffff:10.1.9.9".parse().unwrap(), OFFICE, "pbx -> internal"),
        ("other source falls through", "7001", "15551230000", internet, OFFICE, "catch-all -> default"),
        // Berlin, weekdays before 08:00 and from 18:00, and weekends: after hours.
        ("evening", "15550001004", "15551230000", internet, "2026-12-02T17:30:00Z", "after-hours -> after-hours"),
        ("morning", "15550001004", "15551230000", internet, "2026-12-02T06:59:00Z", "after-hours -> after-hours"),
        ("08:00 local opens", "15550001004", "15551230000", internet, "2026-12-02T07:00:00Z", "support -> support"),
        ("saturday", "15550001004", "15551230000", internet, "2026-12-05T12:00:00Z", "after-hours -> after-hours"),
        // Sunday 2026-03-29: Berlin springs forward at 02:00 (UTC+1 -> UTC+2). 06:30 UTC is 08:30
        // local (open); with the winter offset it would still be 07:30 (closed).
        ("DST day, open", "15550004000", "15551230000", internet, "2026-03-29T06:30:00Z", "sunday-desk -> desk"),
        ("DST day, 07:59", "15550004000", "15551230000", internet, "2026-03-29T05:59:00Z", "catch-all -> default"),
        ("DST Monday", "15550001004", "15551230000", internet, "2026-03-30T06:30:00Z", "support -> support"),
        (
            "DST Monday 07:59",
            "15550001004",
            "15551230000",
            internet,
            "2026-03-30T05:59:00Z",
            "after-hours -> after-hours",
        ),
        // Sunday 2026-10-25: back to UTC+1 at 03:00; 07:00 UTC is 08:00 local again.
        ("DST back, 07:59", "15550004000", "15551230000", internet, "2026-10-25T06:59:00Z", "catch-all -> default"),
        ("DST back, open", "15550004000", "15551230000", internet, "2026-10-25T07:00:00Z", "sunday-desk -> desk"),
        // New York, Friday 22:00 to Saturday 06:00 (EST = UTC-5).
        (
            "over midnight, friday",
            "15550003000",
            "15551230000",
            internet,
            "2026-12-05T03:30:00Z",
            "night-desk -> night",
        ),
        (
            "over midnight, saturday",
            "15550003000",
            "15551230000",
            internet,
            "2026-12-05T10:59:00Z",
            "night-desk -> night",
        ),
        ("over midnight ends", "15550003000", "15551230000", internet, "2026-12-05T11:00:00Z", "catch-all -> default"),
        (
            "thursday night is not it",
            "15550003000",
            "15551230000",
            internet,
            "2026-12-04T03:30:00Z",
            "catch-all -> default",
        ),
        ("catch-all", "4711", "15551230000", internet, OFFICE, "catch-all -> default"),
        ("no match", "4711", "anonymous", internet, OFFICE, "404"),
    ];
    let mut failures = Vec::new();
    for &(what, dialled, caller, source, time, expected) in cases {
        let facts = Facts { dialled, caller, source };
        let got = match table.decide(&facts, at(time)) {
            Decision::Agent { route, agent, .. } => format!("{route} -> {agent}"),
            Decision::Reject { route, code } => format!("{route} -> {}", code.code()),
            Decision::NoMatch => "404".to_string(),
        };
        if got != expected {
            failures.push(format!("{what}: expected {expected}, got {got}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn an_empty_table_matches_nothing() {
    let facts = Facts { dialled: "1", caller: "2", source: "127.0.0.1".parse().unwrap() };
    assert_eq!(RouteTable::default().decide(&facts, at(OFFICE)), Decision::NoMatch);
    let table = RouteTable::new(vec![Route::catch_all("agents.default", "default")]);
    assert!(matches!(table.decide(&facts, at(OFFICE)), Decision::Agent { agent: "default", .. }));
}

#[test]
fn a_route_may_override_recording() {
    let mut recorded = route(R { name: "rec", action: "agent:a", ..R0 });
    recorded.record = Some(true);
    let table = RouteTable::new(vec![recorded]);
    let facts = Facts { dialled: "1", caller: "2", source: "127.0.0.1".parse().unwrap() };
    assert_eq!(table.decide(&facts, at(OFFICE)), Decision::Agent { route: "rec", agent: "a", record: Some(true) });
}

#[test]
fn patterns_are_checked() {
    assert_eq!(NumberPattern::parse("").unwrap_err(), PatternError::Empty);
    assert!(matches!(NumberPattern::parse("1*2"), Err(PatternError::MisplacedStar(_))));
    assert!(matches!(NumberPattern::parse("1**"), Err(PatternError::MisplacedStar(_))));
    assert!(matches!(NumberPattern::parse("/(/"), Err(PatternError::BadRegex { .. })));
    assert!(matches!(NumberPattern::parse("//"), Err(PatternError::Empty)));
    assert!(matches!(NumberPattern::parse("+*"), Ok(NumberPattern::Any)));
    assert!(NumberPattern::parse("*").unwrap().matches(""));
}

#[test]
fn hours_are_checked() {
    for bad in ["", "mon-fri", "mon-fry 08:00-18:00", "mon 8:00-18:00", "mon 08:00-25:00", "mon 08:00", "08:00-08:00"] {
        if bad == "mon-fri" {
            assert!(Hours::parse(bad).is_ok(), "a day range alone is the whole day");
            continue;
        }
        assert!(Hours::parse(bad).is_err(), "{bad:?} was accepted");
    }
    assert!(Hours::parse("mon 08:00-18:00 extra").is_err());
    assert!(Hours::parse("00:00-24:00").is_ok());
    assert!(Hours::parse("mon-fri 08:00-18:00, sat 09:00-13:00").is_ok());
    assert!(Hours::parse("24:00-06:00").is_err(), "24:00 only ends a span");
}

#[test]
fn networks_are_checked() {
    assert!(IpNet::parse("10.0.0.0/33").is_err());
    assert!(IpNet::parse("trunk").is_err());
    let v6 = IpNet::parse("2001:db8::/32").unwrap();
    assert!(v6.contains("2001:db8::1".parse().unwrap()));
    assert!(!v6.contains("2001:db9::1".parse().unwrap()));
    assert!(!v6.contains("10.0.0.1".parse().unwrap()));
    assert!(IpNet::parse("0.0.0.0/0").unwrap().contains("198.51.100.1".parse().unwrap()));
}

#[test]
fn placeholders_are_filled_once_as_plain_text() {
    let headers = vec![("X-Customer-Id".to_string(), "C-42".to_string())];
    let variables = BTreeMap::from([("name".to_string(), "Ada {caller}".to_string())]);
    let values = Values {
        caller: "+15551230000",
        dialled: "15550001000",
        agent: "support",
        call_id: "c-1",
        headers: &headers,
        variables: &variables,
    };
    let text = "Caller {caller} dialled {dialled} ({agent}, {call_id}); customer {header.x-customer-id}, \
                account {header.X-Account}; hello {{name}}, {{missing}}; json {\"a\": 1} { x } {colour} {";
    assert_eq!(
        render(text, &values),
        "Caller +15551230000 dialled 15550001000 (support, c-1); customer C-42, account ; hello Ada {caller}, \
         {{missing}}; json {\"a\": 1} { x } {colour} {"
    );
    assert_eq!(unknown_placeholders(text), vec!["{colour}"]);
    assert!(unknown_placeholders("{header.}").contains(&"{header.}"));
    assert_eq!(render("", &values), "");
    assert_eq!(render("{{{caller}}}", &values), "{{{caller}}}", "not a variable name: left as written");
}

#[test]
fn other_templates_fill_their_own_names_in_one_pass() {
    let value_of = |name: &str| match name {
        "queue" => Some("sales"),
        "reason" => Some("see {queue}"),
        _ => None,
    };
    assert_eq!(fill("{queue}: {reason} {other} {", value_of), "sales: see {queue} {other} {");
    assert_eq!(written_placeholders("{queue} and {{var}}, {\"a\": 1}").collect::<Vec<_>>(), ["{queue}", "{{var}}"]);
}

#[test]
fn decisions_print_for_operators() {
    let code = RejectCode::new(486).unwrap();
    assert_eq!(Decision::Reject { route: "busy", code }.to_string(), "route busy: reject 486 Busy Here");
    assert_eq!(Decision::NoMatch.to_string(), "no route matches: reject 404 Not Found");
    assert!(RejectCode::new(500).is_none());
}
