//! The reports of a test-call run: a table per call on stdout, `report.json`, `junit.xml` (one
//! test suite per call, one test case per turn) and, per call, a stereo WAV (caller left, agent
//! right, 8 kHz, aligned on the call's RTP clock).

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use super::load::Summary;

/// One expectation's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpectationReport {
    pub expectation: String,
    pub passed: bool,
    pub detail: String,
}

/// One turn, times in ms on the call's RTP clock (0 = our first RTP frame after the answer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TurnReport {
    pub turn: usize,
    pub action: String,
    pub reached: bool,
    pub caller_start_ms: Option<u64>,
    pub caller_end_ms: Option<u64>,
    pub agent_first_audio_ms: Option<u64>,
    pub agent_end_ms: Option<u64>,
    /// End of the caller's speech to the agent's first audio.
    pub latency_ms: Option<u64>,
    pub barged_in: bool,
    pub transcript: Option<String>,
    pub expectations: Vec<ExpectationReport>,
    pub passed: bool,
}

/// Why a call failed before its turns could be judged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallFailureReport {
    /// `busy`, `rejected`, `unreachable`, `timeout`, `auth_failed`, `media`.
    pub kind: String,
    pub detail: String,
}

/// One call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallReport {
    /// 1-based.
    pub call: usize,
    pub sip_call_id: String,
    pub connected: bool,
    pub failure: Option<CallFailureReport>,
    pub codec: String,
    /// `caller`, `agent`, `timeout`, or empty when it never connected.
    pub ended_by: String,
    /// The stereo recording, relative to the report directory.
    pub wav: Option<String>,
    pub notes: Vec<String>,
    pub turns: Vec<TurnReport>,
    pub passed: bool,
}

/// The whole run: `report.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RunReport {
    pub scenario: String,
    pub target: String,
    pub passed: bool,
    pub summary: Summary,
    pub calls: Vec<CallReport>,
}

fn ms(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

/// The human-readable table of one call.
pub fn call_table(call: &CallReport) -> String {
    let mut out = String::new();
    let status = if call.passed { "PASS" } else { "FAIL" };
    let how = match &call.failure {
        Some(f) if !call.connected => format!("not connected: {}", f.detail),
        Some(f) => format!("{} ({}), ended by {}", f.detail, call.codec, call.ended_by),
        None => format!("{}, ended by {}", call.codec, call.ended_by),
    };
    let _ = writeln!(out, "call {}: {status}  {how}", call.call);
    for note in &call.notes {
        let _ = writeln!(out, "  note: {note}");
    }
    if !call.connected {
        return out;
    }
    let _ = writeln!(
        out,
        "  {:>4}  {:<28} {:>9} {:>9} {:>11} {:>9} {:>10}  transcript / verdicts",
        "turn", "action", "caller", "speech", "agent", "agent", "latency"
    );
    let _ = writeln!(
        out,
        "  {:>4}  {:<28} {:>9} {:>9} {:>11} {:>9} {:>10}",
        "", "", "start ms", "end ms", "first ms", "end ms", "ms"
    );
    for turn in &call.turns {
        let mut action: String = turn.action.chars().take(28).collect();
        if turn.action.chars().count() > 28 {
            action.pop();
            action.push('…');
        }
        let transcript = turn.transcript.as_deref().map_or_else(|| "-".to_string(), |t| format!("\"{t}\""));
        let _ = writeln!(
            out,
            "  {:>4}  {:<28} {:>9} {:>9} {:>11} {:>9} {:>10}  {transcript}{}",
            turn.turn,
            action,
            ms(turn.caller_start_ms),
            ms(turn.caller_end_ms),
            ms(turn.agent_first_audio_ms),
            ms(turn.agent_end_ms),
            ms(turn.latency_ms),
            if turn.barged_in { " (barged in)" } else { "" },
        );
        for e in &turn.expectations {
            let verdict = if e.passed { "pass" } else { "FAIL" };
            let _ = writeln!(out, "  {:>4}  {verdict} {}: {}", "", e.expectation, e.detail);
        }
    }
    out
}

/// The run's closing lines: totals, failures by kind, latency percentiles.
pub fn summary_text(report: &RunReport) -> String {
    let s = &report.summary;
    let mut out = format!(
        "{}: {} of {} call(s) passed{}\n",
        report.scenario,
        s.passed,
        s.calls,
        if report.passed { "" } else { " — FAILED" }
    );
    if !s.failures_by_kind.is_empty() {
        let kinds: Vec<String> = s.failures_by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let _ = writeln!(out, "failures by kind: {}", kinds.join(", "));
    }
    match &s.latency_ms {
        Some(p) => {
            let _ = writeln!(
                out,
                "latency over {} answered turn(s): p50 {} ms, p95 {} ms, p99 {} ms, max {} ms",
                p.count, p.p50, p.p95, p.p99, p.max
            );
        }
        None => out.push_str("latency: no answered turn\n"),
    }
    out
}

/// XML text and attribute escaping (the five predefined entities; control characters other
/// than tab/newline, which XML 1.0 cannot carry, become spaces).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' => out.push(c),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// JUnit XML: one `<testsuite>` per call, one `<testcase>` per turn (a failed one carries a
/// `<failure message="turn N (ACTION): EXPECTATION: DETAIL">`); a call that did not connect is
/// one failed `connect` test case.
pub fn junit(report: &RunReport) -> String {
    let mut suites = String::new();
    let (mut total_tests, mut total_failures) = (0usize, 0usize);
    for call in &report.calls {
        let suite_name = format!("{} call {}", report.scenario, call.call);
        let mut cases = String::new();
        let (mut tests, mut failures) = (0usize, 0usize);
        let classname = xml_escape(&suite_name);
        if !call.connected {
            tests += 1;
            failures += 1;
            let detail = call.failure.as_ref().map_or("did not connect".to_string(), |f| f.detail.clone());
            let kind = call.failure.as_ref().map_or("", |f| f.kind.as_str());
            let _ = write!(
                cases,
                "    <testcase classname=\"{classname}\" name=\"connect\">\n      <failure message=\"call {}: {}\" type=\"{}\"/>\n    </testcase>\n",
                call.call,
                xml_escape(&detail),
                xml_escape(kind)
            );
        }
        for turn in call.turns.iter().filter(|_| call.connected) {
            tests += 1;
            let name = format!("turn {}: {}", turn.turn, turn.action);
            let time = match (turn.caller_start_ms, turn.agent_end_ms.or(turn.agent_first_audio_ms)) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / 1000.0,
                _ => 0.0,
            };
            let _ = write!(
                cases,
                "    <testcase classname=\"{classname}\" name=\"{}\" time=\"{time:.3}\"",
                xml_escape(&name)
            );
            let failed: Vec<&ExpectationReport> = turn.expectations.iter().filter(|e| !e.passed).collect();
            if failed.is_empty() {
                cases.push_str("/>\n");
                continue;
            }
            failures += 1;
            let message: Vec<String> = failed
                .iter()
                .map(|e| format!("turn {} ({}): {}: {}", turn.turn, turn.action, e.expectation, e.detail))
                .collect();
            let body =
                format!("latency_ms={} transcript={}", ms(turn.latency_ms), turn.transcript.as_deref().unwrap_or("-"));
            let _ = write!(
                cases,
                ">\n      <failure message=\"{}\" type=\"{}\">{}</failure>\n    </testcase>\n",
                xml_escape(&message.join("; ")),
                xml_escape(&failed.iter().map(|e| e.expectation.as_str()).collect::<Vec<_>>().join(",")),
                xml_escape(&body)
            );
        }
        if call.connected && call.failure.is_some() {
            // Connected, but the call did not finish its turns (timeout).
            tests += 1;
            failures += 1;
            let detail = call.failure.as_ref().map_or(String::new(), |f| f.detail.clone());
            let _ = write!(
                cases,
                "    <testcase classname=\"{classname}\" name=\"call\">\n      <failure message=\"call {}: {}\" type=\"call\"/>\n    </testcase>\n",
                call.call,
                xml_escape(&detail)
            );
        }
        total_tests += tests;
        total_failures += failures;
        let _ = write!(
            suites,
            "  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"0\">\n{cases}  </testsuite>\n",
            xml_escape(&suite_name)
        );
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"{}\" tests=\"{total_tests}\" failures=\"{total_failures}\">\n{suites}</testsuites>\n",
        xml_escape(&report.scenario)
    )
}

/// A 16-bit PCM stereo WAV: caller left, agent right, padded to the longer one.
pub fn stereo_wav(rate: u32, left: &[i16], right: &[i16]) -> Vec<u8> {
    let frames = left.len().max(right.len());
    let data_len = u32::try_from(frames * 4).unwrap_or(u32::MAX);
    let mut out = Vec::with_capacity(44 + frames * 4);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36u32.saturating_add(data_len)).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&2u16.to_le_bytes()); // channels
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 4).to_le_bytes()); // byte rate
    out.extend_from_slice(&4u16.to_le_bytes()); // block align
    out.extend_from_slice(&16u16.to_le_bytes()); // bits
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        out.extend_from_slice(&left.get(i).copied().unwrap_or(0).to_le_bytes());
        out.extend_from_slice(&right.get(i).copied().unwrap_or(0).to_le_bytes());
    }
    out
}

/// Writes `report.json` and `junit.xml` into `dir`.
pub fn write_files(dir: &Path, report: &RunReport) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(report).map_err(std::io::Error::other)?;
    std::fs::write(dir.join("report.json"), json + "\n")?;
    std::fs::write(dir.join("junit.xml"), junit(report))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testcall::load::Percentiles;

    fn sample() -> RunReport {
        let ok_turn = TurnReport {
            turn: 0,
            action: "say \"hello\"".into(),
            reached: true,
            caller_start_ms: Some(0),
            caller_end_ms: Some(900),
            agent_first_audio_ms: Some(1500),
            agent_end_ms: Some(2400),
            latency_ms: Some(600),
            barged_in: false,
            transcript: Some("hi <there> & you".into()),
            expectations: vec![ExpectationReport {
                expectation: "expect_within_ms".into(),
                passed: true,
                detail: "answered in 600 ms".into(),
            }],
            passed: true,
        };
        let bad_turn = TurnReport {
            turn: 1,
            action: "say \"refund\"".into(),
            expectations: vec![ExpectationReport {
                expectation: "expect_says".into(),
                passed: false,
                detail: "transcript lacks refund".into(),
            }],
            passed: false,
            ..ok_turn.clone()
        };
        let connected = CallReport {
            call: 1,
            sip_call_id: "abc".into(),
            connected: true,
            failure: None,
            codec: "PCMU".into(),
            ended_by: "caller".into(),
            wav: Some("call-1.wav".into()),
            notes: vec![],
            turns: vec![ok_turn, bad_turn],
            passed: false,
        };
        let busy = CallReport {
            call: 2,
            sip_call_id: "def".into(),
            connected: false,
            failure: Some(CallFailureReport { kind: "busy".into(), detail: "busy (486)".into() }),
            codec: String::new(),
            ended_by: String::new(),
            wav: None,
            notes: vec![],
            turns: vec![],
            passed: false,
        };
        RunReport {
            scenario: "demo".into(),
            target: "sip:agent@127.0.0.1".into(),
            passed: false,
            summary: Summary {
                calls: 2,
                passed: 0,
                failed: 2,
                failures_by_kind: [("busy".to_string(), 1), ("expectation".to_string(), 1)].into_iter().collect(),
                latency_ms: Some(Percentiles { count: 2, p50: 600, p95: 600, p99: 600, max: 600 }),
            },
            calls: vec![connected, busy],
        }
    }

    /// The attribute `name` of the first element `tag` in `xml` after `from`.
    fn attribute<'a>(xml: &'a str, tag: &str, name: &str, from: usize) -> Option<(&'a str, usize)> {
        let start = from + xml[from..].find(&format!("<{tag} "))?;
        let end = start + xml[start..].find('>')?;
        let element = &xml[start..end];
        let key = format!(" {name}=\"");
        let value_start = element.find(&key)? + key.len();
        let value_end = value_start + element[value_start..].find('"')?;
        Some((&element[value_start..value_end], end))
    }

    #[test]
    fn junit_has_a_suite_per_call_a_case_per_turn_and_failures_naming_the_turn() {
        let xml = junit(&sample());
        assert!(xml.starts_with("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites "));
        assert_eq!(attribute(&xml, "testsuites", "tests", 0).unwrap().0, "3");
        assert_eq!(attribute(&xml, "testsuites", "failures", 0).unwrap().0, "2");
        let (name, after) = attribute(&xml, "testsuite", "name", 0).unwrap();
        assert_eq!(name, "demo call 1");
        assert_eq!(attribute(&xml, "testsuite", "tests", 0).unwrap().0, "2");
        assert_eq!(attribute(&xml, "testcase", "name", after).unwrap().0, "turn 0: say &quot;hello&quot;");
        let (message, _) = attribute(&xml, "failure", "message", 0).unwrap();
        assert_eq!(message, "turn 1 (say &quot;refund&quot;): expect_says: transcript lacks refund");
        assert!(xml.contains("transcript=hi &lt;there&gt; &amp; you</failure>"));
        let (message, _) = attribute(&xml, "failure", "message", xml.find("demo call 2").unwrap()).unwrap();
        assert_eq!(message, "call 2: busy (486)");
        // Balanced elements.
        for tag in ["testsuites", "testsuite"] {
            assert_eq!(xml.matches(&format!("<{tag} ")).count(), xml.matches(&format!("</{tag}>")).count(), "{tag}");
        }
        assert_eq!(xml.matches("<testcase ").count(), 3);
    }

    #[test]
    fn json_has_latency_per_turn_and_the_summary() {
        let json: serde_json::Value = serde_json::to_value(sample()).unwrap();
        assert_eq!(json["calls"][0]["turns"][0]["latency_ms"], 600);
        assert_eq!(json["calls"][0]["turns"][1]["expectations"][0]["passed"], false);
        assert_eq!(json["calls"][1]["failure"]["kind"], "busy");
        assert_eq!(json["summary"]["latency_ms"]["p95"], 600);
        assert_eq!(json["summary"]["failures_by_kind"]["busy"], 1);
        assert_eq!(json["passed"], false);
    }

    #[test]
    fn the_table_shows_each_turn_and_its_verdicts() {
        let report = sample();
        let table = call_table(&report.calls[0]);
        assert!(table.starts_with("call 1: FAIL  PCMU, ended by caller\n"), "{table}");
        assert!(table.contains("FAIL expect_says: transcript lacks refund"), "{table}");
        assert!(table.contains("600"), "{table}");
        assert!(call_table(&report.calls[1]).contains("not connected: busy (486)"));
        let summary = summary_text(&report);
        assert!(summary.contains("0 of 2 call(s) passed — FAILED"), "{summary}");
        assert!(summary.contains("failures by kind: busy 1, expectation 1"), "{summary}");
        assert!(summary.contains("p50 600 ms, p95 600 ms, p99 600 ms"), "{summary}");
    }

    #[test]
    fn the_wav_is_stereo_with_each_side_in_its_channel() {
        let bytes = stereo_wav(8000, &[1, 2, 3], &[-1]);
        assert_eq!(&bytes[0..4], b"RIFF");
        assert_eq!(u16::from_le_bytes([bytes[22], bytes[23]]), 2);
        assert_eq!(u32::from_le_bytes([bytes[24], bytes[25], bytes[26], bytes[27]]), 8000);
        assert_eq!(u32::from_le_bytes([bytes[40], bytes[41], bytes[42], bytes[43]]), 12);
        let samples: Vec<i16> = bytes[44..].chunks(2).map(|c| i16::from_le_bytes([c[0], c[1]])).collect();
        assert_eq!(samples, vec![1, -1, 2, 0, 3, 0]);
    }
}
