//! `[recording]` and `[cdr]`: where recordings, sidecars and call detail records go, and how
//! CDRs reach a webhook (docs/configuration.md, "Recording and call records").

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Config, ConfigProblem, Secret};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct RecordingConfig {
    /// Root of the recordings: `<dir>/<YYYY>/<MM>/<DD>/<call id>.{wav,json}`. Required when an
    /// agent records; created (and checked writable) at start-up.
    pub dir: String,
    /// Phone numbers in sidecars and CDRs shown as the logs show them (`…1234`).
    pub redact_numbers: bool,
    /// The WAV header's sizes are rewritten this often (ms): a killed gateway leaves a file that
    /// plays up to the last update (and start-up recovery fixes the rest).
    pub header_interval_ms: u64,
    /// Audio is written to disk in batches this long (ms).
    pub flush_interval_ms: u64,
    /// Recorder audio chunks waiting for the writer thread at most (all calls together); beyond
    /// it chunks are dropped and counted, the call never waits.
    pub max_queued_chunks: usize,
    /// Transcript turns kept in a sidecar at most (later ones are counted, not kept)...
    pub max_transcript_turns: usize,
    /// ...and characters of transcript in all.
    pub max_transcript_chars: usize,
}

impl Default for RecordingConfig {
    fn default() -> Self {
        RecordingConfig {
            dir: String::new(),
            redact_numbers: false,
            header_interval_ms: 1000,
            flush_interval_ms: 200,
            max_queued_chunks: 16_384,
            max_transcript_turns: 500,
            max_transcript_chars: 100_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct CdrConfig {
    /// JSON Lines file every call's record is appended to. Empty: no CDR file.
    pub path: String,
    /// Every CDR is also POSTed here (signed like tool webhooks when `secret` is set). Empty: none.
    pub webhook_url: String,
    /// HMAC-SHA256 key for `X-Switchboard-Signature`; empty: unsigned.
    pub secret: Secret,
    /// The name of an environment variable holding the secret (instead of `secret`).
    pub secret_env: String,
    /// Where open-call markers (crash recovery) and CDRs waiting for the webhook are kept.
    /// Empty: `<path>.spool`, or `<recording.dir>/.spool` when `path` is empty.
    pub spool_dir: String,
    /// One webhook POST may take this long.
    pub webhook_timeout_ms: u64,
    /// Retry backoff for a failed POST: doubles from the first to the longest delay.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// CDRs waiting for the webhook at most; beyond it new ones are not queued for the webhook
    /// (they are still in the file) and are counted.
    pub spool_max_files: usize,
}

impl Default for CdrConfig {
    fn default() -> Self {
        CdrConfig {
            path: String::new(),
            webhook_url: String::new(),
            secret: Secret::default(),
            secret_env: String::new(),
            spool_dir: String::new(),
            webhook_timeout_ms: 5000,
            retry_initial_ms: 1000,
            retry_max_ms: 300_000,
            spool_max_files: 10_000,
        }
    }
}

impl CdrConfig {
    /// Whether call records are kept at all (a file, a webhook or both).
    pub fn enabled(&self) -> bool {
        !self.path.is_empty() || !self.webhook_url.is_empty()
    }
}

/// Where open-call markers and the webhook spool live, if anywhere: `cdr.spool_dir`, else next to
/// the CDR file, else under the recordings.
pub fn spool_dir(cdr: &CdrConfig, recording: &RecordingConfig) -> Option<PathBuf> {
    if !cdr.spool_dir.is_empty() {
        return Some(PathBuf::from(&cdr.spool_dir));
    }
    if !cdr.path.is_empty() {
        return Some(PathBuf::from(format!("{}.spool", cdr.path)));
    }
    (!recording.dir.is_empty()).then(|| Path::new(&recording.dir).join(".spool"))
}

/// The `[recording]` / `[cdr]` checks of [`super::validate`].
pub fn validate(cfg: &Config, problems: &mut Vec<ConfigProblem>) {
    let mut bad = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });
    let recording = &cfg.recording;
    if recording.dir.is_empty() {
        for (name, agent) in &cfg.agents {
            if agent.record {
                bad(&format!("agents.{name}.record"), "recording needs recording.dir to be set".into());
            }
        }
    }
    if !(100..=60_000).contains(&recording.header_interval_ms) {
        bad("recording.header_interval_ms", "must be between 100 and 60000".into());
    }
    if !(20..=10_000).contains(&recording.flush_interval_ms) {
        bad("recording.flush_interval_ms", "must be between 20 and 10000".into());
    }
    if recording.max_queued_chunks == 0 {
        bad("recording.max_queued_chunks", "must be at least 1".into());
    }
    let cdr = &cfg.cdr;
    if !cdr.webhook_url.is_empty() {
        if !(cdr.webhook_url.starts_with("http://") || cdr.webhook_url.starts_with("https://")) {
            bad("cdr.webhook_url", format!("`{}` must be an http:// or https:// URL", cdr.webhook_url));
        }
        if spool_dir(cdr, recording).is_none() {
            bad("cdr.spool_dir", "a webhook needs a spool (cdr.spool_dir, cdr.path or recording.dir)".into());
        }
    }
    if !(100..=120_000).contains(&cdr.webhook_timeout_ms) {
        bad("cdr.webhook_timeout_ms", "must be between 100 and 120000".into());
    }
    if cdr.retry_initial_ms == 0 || cdr.retry_max_ms < cdr.retry_initial_ms {
        bad("cdr.retry_max_ms", "retry_initial_ms must be at least 1 and at most retry_max_ms".into());
    }
    if cdr.spool_max_files == 0 {
        bad("cdr.spool_max_files", "must be at least 1".into());
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::load_with_env;

    fn problems(toml: &str) -> Vec<String> {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(format!("[sip]\nudp = \"127.0.0.1:0\"\n[media]\nbind = \"127.0.0.1\"\n{toml}").as_bytes())
            .unwrap();
        match load_with_env(file.path(), &[("CDR_KEY".into(), "k3y".into())]) {
            Ok(_) => Vec::new(),
            Err(errors) => errors.0.iter().map(ToString::to_string).collect(),
        }
    }

    #[test]
    fn recording_needs_a_directory_and_webhooks_a_proper_url() {
        let found = problems("[agents.sales]\nnumbers = [\"100\"]\nrecord = true\n");
        assert_eq!(found, vec!["agents.sales.record: recording needs recording.dir to be set".to_string()]);
        assert!(
            problems("[recording]\ndir = \"/tmp/rec\"\n[agents.sales]\nnumbers = [\"100\"]\nrecord = true\n")
                .is_empty()
        );
        let found = problems("[cdr]\nwebhook_url = \"ftp://x\"\n");
        assert!(found.iter().any(|p| p.starts_with("cdr.webhook_url:")), "{found:?}");
        assert!(found.iter().any(|p| p.starts_with("cdr.spool_dir:")), "a webhook needs a spool: {found:?}");
        assert!(problems("[cdr]\npath = \"/tmp/cdr.jsonl\"\nwebhook_url = \"http://127.0.0.1:9/cdr\"\n").is_empty());
        let found = problems("[recording]\nheader_interval_ms = 5\n");
        assert!(found.iter().any(|p| p.starts_with("recording.header_interval_ms:")), "{found:?}");
    }

    #[test]
    fn the_webhook_secret_may_come_from_the_environment() {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(b"[sip]\nudp = \"127.0.0.1:0\"\n[media]\nbind = \"127.0.0.1\"\n[cdr]\npath = \"/tmp/c.jsonl\"\nsecret_env = \"CDR_KEY\"\n")
            .unwrap();
        let (cfg, _) = load_with_env(file.path(), &[("CDR_KEY".into(), "k3y".into())]).unwrap();
        assert_eq!(cfg.cdr.secret.expose(), "k3y");
        assert_eq!(format!("{:?}", cfg.cdr.secret), "[redacted]");
    }
}
