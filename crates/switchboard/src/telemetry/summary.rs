//! The end-of-call summary line: one `info!` per call, answered or not, carrying what its call
//! detail record carries. It is made from the CDR itself (`recording/sidecar.rs` builds both,
//! the line with `log.redact_numbers`, the record with `recording.redact_numbers`), so the two
//! cannot disagree about a call.

use serde_json::Value;
use tracing::info;

/// The message of the line (what to grep for in a text log).
pub const MESSAGE: &str = "call summary";

fn text<'a>(record: &'a Value, key: &str) -> &'a str {
    record[key].as_str().unwrap_or("")
}

/// Logs `record` (a CDR as `CallSummary::cdr` or `Unanswered::cdr` builds it) as the summary line.
pub fn log_call_summary(record: &Value) {
    let tools = &record["tools"];
    let transfers = &record["transfers"];
    info!(
        call_id = text(record, "call_id"),
        sip_call_id = text(record, "sip_call_id"),
        direction = text(record, "direction"),
        from = text(record, "from"),
        to = text(record, "to"),
        agent = text(record, "agent"),
        route = text(record, "route"),
        trunk = record["trunk"].as_str(),
        codec = text(record, "codec"),
        started = text(record, "started"),
        answered = record["answered"].as_str(),
        ended = text(record, "ended"),
        setup_ms = record["setup_ms"].as_u64(),
        duration_ms = record["duration_ms"].as_u64(),
        outcome = text(record, "outcome"),
        reason = text(record, "reason"),
        side = text(record, "side"),
        sip_status = record["sip_status"].as_u64(),
        tool_calls = tools["calls"].as_u64(),
        tools_failed = tools["failed"].as_u64(),
        transfers = transfers["count"].as_u64(),
        transfer_outcome = transfers["last_outcome"].as_str(),
        recording = record["recording"].as_str(),
        media_security = record["media_security"].as_str(),
        "{MESSAGE}"
    );
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime};

    use serde_json::json;

    use super::*;
    use crate::call::end::CallEnd;
    use crate::call::journal::{CallJournal, ToolRecord, ToolStatus, TransferRecord};
    use crate::recording::sidecar::{CallSummary, RecordFacts, RecordingInfo, Unanswered};

    /// A writer the JSON formatter writes the test's lines into.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    /// The JSON log line `log_call_summary` writes for `record`, with `log.format = "json"`.
    fn logged(record: &Value) -> Value {
        let lines = Lines::default();
        let subscriber = tracing_subscriber::fmt().json().with_writer(lines.clone()).finish();
        tracing::subscriber::with_default(subscriber, || log_call_summary(record));
        let text = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        serde_json::from_str(text.trim()).unwrap()
    }

    fn answered_call() -> RecordFacts {
        RecordFacts {
            id: "3f2a".into(),
            sip_call_id: "abc@198.51.100.7".into(),
            direction: "inbound".into(),
            from: "sip:+15550001234@carrier.example".into(),
            to: "+15550009876".into(),
            agent: "sales".into(),
            route: "vip".into(),
            codec: "PCMU".into(),
            started_ms: 1_764_500_000_000,
            answered_ms: 1_764_500_000_420,
            trunk: Some("carrier".into()),
            recording: Some(RecordingInfo {
                wav: "/rec/2025/11/30/3f2a.wav".into(),
                sidecar: "/rec/2025/11/30/3f2a.json".into(),
                sample_rate: 8000,
            }),
            media_security: "AES_CM_128_HMAC_SHA1_80".into(),
        }
    }

    #[test]
    fn the_summary_carries_every_field_of_the_cdr_with_the_same_values() {
        let facts = answered_call();
        let origin = Instant::now();
        let mut journal = CallJournal::new(origin);
        let tool = |status| ToolRecord {
            call_id: "c1".into(),
            name: "lookup".into(),
            started: Duration::from_secs(3),
            duration: Duration::from_millis(80),
            status,
        };
        journal.tool(tool(ToolStatus::Ok));
        journal.tool(tool(ToolStatus::TimedOut));
        journal.transfer(TransferRecord {
            at: Duration::from_secs(9),
            queue: "billing".into(),
            method: "refer".into(),
            target: "sip:billing@pbx".into(),
            reason: "asked".into(),
            outcome: "transferred".into(),
        });
        let ended = crate::recording::sidecar::from_unix_ms(1_764_500_030_420);
        let end = CallEnd::Transferred;
        let summary =
            CallSummary { facts: &facts, ended, end: Some(&end), journal: Some(&journal), redact_numbers: true };
        let cdr = summary.cdr();
        let line = logged(&cdr);
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["fields"]["message"], MESSAGE);
        let fields = &line["fields"];
        for key in [
            "call_id",
            "sip_call_id",
            "direction",
            "from",
            "to",
            "agent",
            "route",
            "trunk",
            "codec",
            "started",
            "answered",
            "ended",
            "setup_ms",
            "duration_ms",
            "outcome",
            "reason",
            "side",
            "sip_status",
            "recording",
        ] {
            assert_eq!(fields[key], cdr[key], "{key}: {line}");
        }
        assert_eq!(fields["tool_calls"], 2);
        assert_eq!(fields["tools_failed"], 1);
        assert_eq!(fields["transfers"], 1);
        assert_eq!(fields["transfer_outcome"], "transferred");
        // Every key of the CDR is in the line (tools and transfers as their counts; the sidecar
        // path is beside the recording's).
        let covered =
            |key: &str| fields.get(key).is_some() || matches!(key, "version" | "tools" | "transfers" | "sidecar");
        let missing: Vec<&String> = cdr.as_object().unwrap().keys().filter(|k| !covered(k)).collect();
        assert!(missing.is_empty(), "CDR fields not in the summary: {missing:?}");
        assert_eq!(
            (
                fields["from"].as_str(),
                fields["to"].as_str(),
                fields["duration_ms"].as_u64(),
                fields["setup_ms"].as_u64()
            ),
            (Some("…1234"), Some("…9876"), Some(30_000), Some(420))
        );
        assert_eq!((fields["reason"].as_str(), fields["side"].as_str()), (Some("transferred"), Some("none")));
    }

    #[test]
    fn numbers_are_shown_in_full_only_when_redaction_is_off() {
        let facts = answered_call();
        let end = CallEnd::CallerHangup;
        let summary = |redact| CallSummary {
            facts: &facts,
            ended: SystemTime::now(),
            end: Some(&end),
            journal: None,
            redact_numbers: redact,
        };
        let redacted = logged(&summary(true).cdr());
        let text = redacted.to_string();
        assert!(!text.contains("5550001234") && !text.contains("5550009876"), "{text}");
        let full = logged(&summary(false).cdr());
        assert_eq!(full["fields"]["from"], "sip:+15550001234@carrier.example");
        assert_eq!(full["fields"]["to"], "+15550009876");
    }

    #[test]
    fn an_unanswered_call_has_its_status_and_no_answer_time() {
        let record = Unanswered {
            id: "77",
            sip_call_id: "x@y",
            direction: "inbound",
            from: "sip:+4930123456@carrier",
            to: "999",
            agent: "",
            started: SystemTime::now(),
            ended: SystemTime::now(),
            outcome: "refused",
            reason: "no_route",
            side: "caller".into(),
            sip_status: Some(404),
            redact_numbers: true,
            trunk: Some("carrier"),
        }
        .cdr();
        assert_eq!(record["trunk"], "carrier");
        let fields = logged(&record)["fields"].clone();
        assert_eq!(fields["trunk"], "carrier");
        assert_eq!(fields["sip_status"], 404);
        assert_eq!(fields["reason"], "no_route");
        assert_eq!(fields["from"], "…3456");
        assert!(fields.get("answered").is_none(), "not answered: no answered field: {fields}");
        assert_eq!(fields["tool_calls"], json!(0));
    }
}
