//! Configuration reload (SIGHUP, `POST /v1/reload`): the file `run` was started with is read
//! and checked again exactly as `switchboard check` does ([`config::load`]); a file with
//! problems is refused (each problem logged, the running configuration kept); a good one becomes
//! the [`Settings`] new calls take. A call takes one snapshot when it starts and keeps it to its
//! end, so calls in progress are untouched.
//!
//! What is bound or sized at start cannot change without a restart: those keys
//! ([`RESTART_SECTIONS`], [`RESTART_KEYS`]) keep their running values, and each one changed is
//! named in a warning and in the answer. docs/operations.md ("Reload") has the table.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;
use tracing::{info, warn};

use crate::app::GatewayState;
use crate::config::{self, CallsConfig, Config, ConfigProblem, LogConfig, RealtimeConfig, Resolved, SipConfig};
use crate::telemetry;

/// The part of the configuration a call uses, as one snapshot.
#[derive(Debug)]
pub struct Settings {
    pub config: Config,
    pub resolved: Resolved,
}

/// The current [`Settings`], swapped whole by a reload; readers take an `Arc` and never wait
/// on a reload (the lock is held only to clone or replace the pointer).
#[derive(Debug)]
pub struct SettingsCell(RwLock<Arc<Settings>>);

impl SettingsCell {
    pub fn new(settings: Settings) -> SettingsCell {
        SettingsCell(RwLock::new(Arc::new(settings)))
    }

    /// The settings in effect now: a call takes this once, when it starts.
    pub fn current(&self) -> Arc<Settings> {
        Arc::clone(&self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()))
    }

    fn replace(&self, settings: Settings) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(settings);
    }
}

/// Where the configuration is re-read from, and the lock that lets one reload run at a time.
#[derive(Debug, Default)]
pub struct Reloader {
    path: OnceLock<PathBuf>,
    one_at_a_time: tokio::sync::Mutex<()>,
}

impl Reloader {
    /// The file `run` was started with (set once, by `main`).
    pub fn set_path(&self, path: PathBuf) {
        let _ = self.path.set(path);
    }
}

/// Sections read once at start (listeners bound, threads and tables sized, the recorder and
/// logger started).
pub const RESTART_SECTIONS: &[&str] = &["sip", "calls", "log", "recording", "cdr"];
/// Single keys of otherwise reloadable sections that are fixed at start: the RTP pool, the admin
/// listener, the Realtime endpoint (and with the key, the offline agent's choice).
pub const RESTART_KEYS: &[&str] = &[
    "media.address",
    "media.bind",
    "media.rtp_ports",
    "admin.listen",
    "realtime.url",
    "realtime.api_key",
    "realtime.model",
];
/// Keys of restart-only sections that a reload applies all the same: per-source admission, and
/// the TLS listener's certificate files (a renewed certificate is rotated in, `config/tls.rs`).
pub const RELOADABLE_KEYS: &[&str] = &[
    "sip.invite_rate_per_source",
    "sip.trusted_proxies",
    "calls.max_per_source",
    "log.level",
    "log.redact_numbers",
    "sip.tls_cert",
    "sip.tls_key",
];

/// Why a reload was not applied.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The operator's file: every problem found, as `switchboard check` lists them.
    #[error("the configuration has {} problem(s); the running configuration is kept", .0.len())]
    Invalid(Vec<ConfigProblem>),
    /// The gateway was started without a file to re-read (embedded use, tests).
    #[error("the gateway was not started from a configuration file")]
    NoFile,
    /// Ours: the loading task died.
    #[error("the configuration could not be loaded: {0}")]
    Internal(String),
}

/// A key changed in the file that keeps its running value until a restart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NeedsRestart {
    pub key: String,
    /// The value kept (masked as `GET /v1/config` masks it).
    pub running: String,
}

/// What an applied reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadReport {
    pub agents: usize,
    pub routes: usize,
    pub trunks: usize,
    /// Keys (up to three levels deep) whose new values new calls will use.
    pub changed: Vec<String>,
    /// Keys changed in the file that need a restart.
    pub needs_restart: Vec<NeedsRestart>,
}

/// Re-reads and applies the configuration file; one reload at a time (a second waits).
pub async fn reload(state: &GatewayState) -> Result<ReloadReport, ReloadError> {
    let _one = state.reloader.one_at_a_time.lock().await;
    let path = state.reloader.path.get().cloned().ok_or(ReloadError::NoFile)?;
    // File reads, agents_dir and trunk name resolution: off the async workers.
    let loaded = tokio::task::spawn_blocking(move || config::load(&path))
        .await
        .map_err(|e| ReloadError::Internal(e.to_string()))?;
    let result = match loaded {
        Ok((config, resolved)) => {
            let running = state.settings.current();
            let problems = check_against_running(&running, &config);
            if problems.is_empty() {
                if config::rotate_tls_certificate(&running.resolved, &resolved) {
                    info!("config reload: sip.tls_cert holds a renewed certificate: new TLS connections get it");
                }
                let (settings, report) = merge(&running, Settings { config, resolved });
                state.calls.set_capacity(crate::app::registry_capacity(&settings.config));
                state.reconfigure_admission(&settings);
                telemetry::set_redact_numbers(settings.config.log.redact_numbers);
                if let Err(e) = telemetry::set_log_level(&settings.config.log.level) {
                    // Checked above: only a subscriber gone away can fail here.
                    warn!(error = %e, "log.level not applied");
                }
                state.settings.replace(settings);
                Ok(report)
            } else {
                Err(ReloadError::Invalid(problems))
            }
        }
        Err(errors) => Err(ReloadError::Invalid(errors.0)),
    };
    match &result {
        Ok(report) => {
            for key in &report.needs_restart {
                warn!(
                    key = key.key,
                    running = key.running,
                    "config reload: {} changed: needs a restart; keeping {}",
                    key.key,
                    key.running
                );
            }
            info!(
                agents = report.agents,
                routes = report.routes,
                trunks = report.trunks,
                changed = report.changed.len(),
                needs_restart = report.needs_restart.len(),
                "configuration reloaded: new calls use it, calls in progress keep theirs"
            );
            metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "outcome" => "applied").increment(1);
            record_loaded();
        }
        Err(ReloadError::Invalid(problems)) => {
            for problem in problems {
                warn!(key = problem.key, problem = problem.message, "config reload refused: {problem}");
            }
            warn!(problems = problems.len(), "config reload refused: the running configuration is kept");
            metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "outcome" => "refused").increment(1);
        }
        Err(e) => {
            warn!(error = %e, "config reload refused");
            metrics::counter!(telemetry::CONFIG_RELOADS_TOTAL, "outcome" => "refused").increment(1);
        }
    }
    result
}

/// What only a reload checks: the file may not drop the API token while the admin listener
/// that keeps running is reachable off loopback (the file may have moved `admin.listen` to
/// loopback, which only applies at the next start), and a changed `log.level` must parse (at
/// start an unparsable directive is only skipped).
pub fn check_against_running(running: &Settings, loaded: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    if loaded.log.level != running.config.log.level
        && let Err(e) = tracing_subscriber::EnvFilter::try_new(&loaded.log.level)
    {
        problems.push(ConfigProblem { key: "log.level".into(), message: format!("not a log filter directive: {e}") });
    }
    let exposed = running.resolved.admin_listen.filter(|addr| !addr.ip().is_loopback());
    if let Some(listen) = exposed
        && loaded.admin.token.is_empty()
    {
        problems.push(ConfigProblem {
            key: "admin.token".into(),
            message: format!(
                "the running admin listener {listen} is not a loopback address: the calls API keeps needing a token"
            ),
        });
    }
    problems
}

/// Sets `switchboard_config_last_reload_success_timestamp_seconds` to now.
pub fn record_loaded() {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    metrics::gauge!(telemetry::CONFIG_RELOAD_SUCCESS_TIMESTAMP).set(now);
}

/// The settings new calls get: `loaded` with every restart-only key put back to its running
/// value, and what changed.
pub fn merge(running: &Settings, loaded: Settings) -> (Settings, ReloadReport) {
    let Settings { config: mut new, resolved: mut new_resolved } = loaded;
    let old = &running.config;
    let (old_view, new_view) =
        (flatten(&config::view::effective_json(old)), flatten(&config::view::effective_json(&new)));
    let restart_only = |key: &str| {
        let within = |prefix: &str| key == prefix || key.starts_with(&format!("{prefix}."));
        !RELOADABLE_KEYS.iter().any(|k| within(k))
            && RESTART_SECTIONS.iter().any(|s| key == *s || key.starts_with(&format!("{s}.")))
            || RESTART_KEYS.iter().any(|k| key == *k || key.starts_with(&format!("{k}.")))
    };
    let mut needs_restart = Vec::new();
    let mut changed = Vec::new();
    let keys: std::collections::BTreeSet<&String> = old_view.keys().chain(new_view.keys()).collect();
    for key in keys {
        let (before, after) = (old_view.get(key), new_view.get(key));
        if before == after {
            continue;
        }
        if restart_only(key) {
            let running = before.map_or_else(|| "(unset)".to_owned(), shown);
            needs_restart.push(NeedsRestart { key: key.clone(), running });
        } else {
            let short: Vec<&str> = key.split('.').take(3).collect();
            changed.push(short.join("."));
        }
    }
    // Secrets are masked in the views: compare them as they are.
    if old.realtime.api_key != new.realtime.api_key {
        needs_restart.push(NeedsRestart { key: "realtime.api_key".into(), running: config::MASKED.into() });
    }
    if old.cdr.secret != new.cdr.secret {
        needs_restart.push(NeedsRestart { key: "cdr.secret".into(), running: config::MASKED.into() });
    }
    if old.admin.token != new.admin.token {
        changed.push("admin.token".into());
    }
    needs_restart.sort_by(|a, b| a.key.cmp(&b.key));
    needs_restart.dedup_by(|a, b| a.key == b.key);
    changed.sort();
    changed.dedup();

    new.sip = SipConfig {
        invite_rate_per_source: new.sip.invite_rate_per_source,
        trusted_proxies: new.sip.trusted_proxies.clone(),
        tls_cert: new.sip.tls_cert.clone(),
        tls_key: new.sip.tls_key.clone(),
        ..old.sip.clone()
    };
    // The endpoint and the key (the offline agent is chosen by it) are fixed at start.
    new.realtime = RealtimeConfig {
        url: old.realtime.url.clone(),
        api_key: old.realtime.api_key.clone(),
        model: old.realtime.model.clone(),
        ..new.realtime.clone()
    };
    new.calls = CallsConfig { max_per_source: new.calls.max_per_source, ..old.calls.clone() };
    new.log = LogConfig { level: new.log.level.clone(), redact_numbers: new.log.redact_numbers, ..old.log.clone() };
    new.recording = old.recording.clone();
    new.cdr = old.cdr.clone();
    new.media.address = old.media.address.clone();
    new.media.bind = old.media.bind.clone();
    new.media.rtp_ports = old.media.rtp_ports.clone();
    new.admin.listen = old.admin.listen.clone();
    let was = &running.resolved;
    new_resolved.sip_udp = was.sip_udp;
    new_resolved.sip_tcp = was.sip_tcp;
    new_resolved.sip_tls = was.sip_tls.clone();
    new_resolved.advertised_host = was.advertised_host;
    new_resolved.media_address = was.media_address;
    new_resolved.media_bind = was.media_bind;
    new_resolved.rtp_ports = was.rtp_ports.clone();
    new_resolved.admin_listen = was.admin_listen;

    let report = ReloadReport {
        agents: new.agents.len(),
        routes: new_resolved.routes.routes().len(),
        trunks: new.trunks.len(),
        changed,
        needs_restart,
    };
    (Settings { config: new, resolved: new_resolved }, report)
}

/// A JSON value as a log shows it (`0.0.0.0:5060`, not `"0.0.0.0:5060"`).
fn shown(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// Every leaf of `value` by its dotted key (`sip.udp`, `agents.default.voice`); an array is
/// one leaf.
fn flatten(value: &Value) -> BTreeMap<String, Value> {
    fn walk(prefix: &str, value: &Value, out: &mut BTreeMap<String, Value>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (key, child) in map {
                    let path = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    walk(&path, child, out);
                }
            }
            leaf => {
                out.insert(prefix.to_owned(), leaf.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", value, &mut out);
    out
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn load(text: &str) -> Settings {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let (config, resolved) = config::load_with_env(file.path(), &[]).unwrap();
        Settings { config, resolved }
    }

    const BASE: &str = "[sip]\nudp = \"127.0.0.1:5060\"\ntcp = \"\"\n[media]\nbind = \"127.0.0.1\"\n\
                        [agents.default]\ninstructions = \"first\"\n";

    #[test]
    fn agents_change_and_listeners_keep_their_running_values() {
        let running = load(BASE);
        let edited = BASE.replace("first", "second").replace("127.0.0.1:5060", "127.0.0.1:5070")
            + "[agents.sales]\ninstructions = \"sell\"\nnumbers = [\"200\"]\n[calls]\nmax_concurrent = 7\n";
        let (settings, report) = merge(&running, load(&edited));
        assert_eq!(settings.config.agents["default"].instructions, "second");
        assert_eq!(settings.config.agents["sales"].instructions, "sell");
        assert_eq!(report.agents, 2);
        assert!(report.changed.contains(&"agents.default.instructions".to_string()), "{report:?}");
        assert!(report.changed.iter().any(|k| k.starts_with("agents.sales")), "{report:?}");
        // Bound at start: kept, and named.
        assert_eq!(settings.config.sip.udp, "127.0.0.1:5060");
        assert_eq!(settings.resolved.sip_udp, running.resolved.sip_udp);
        assert_eq!(settings.config.calls.max_concurrent, running.config.calls.max_concurrent);
        let keys: Vec<&str> = report.needs_restart.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["calls.max_concurrent", "sip.udp"]);
        assert_eq!(report.needs_restart[1].running, "127.0.0.1:5060");
    }

    #[test]
    fn per_source_admission_limits_are_reloaded() {
        let running = load(BASE);
        let edited = BASE
            .replace("tcp = \"\"", "tcp = \"\"\ninvite_rate_per_source = 7\ntrusted_proxies = [\"10.0.0.0/8\"]")
            + "[calls]\nmax_per_source = 3\n";
        let (settings, report) = merge(&running, load(&edited));
        assert_eq!(settings.config.calls.max_per_source, 3);
        assert_eq!(settings.config.sip.invite_rate_per_source, 7);
        assert_eq!(settings.resolved.trusted_proxies.len(), 1);
        assert!(report.needs_restart.is_empty(), "{report:?}");
        assert!(report.changed.contains(&"calls.max_per_source".to_string()), "{report:?}");
    }

    #[test]
    fn the_token_cannot_be_dropped_while_the_running_listener_is_exposed() {
        let exposed = "[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"t0ken\"\n";
        let running = load(&(BASE.to_owned() + exposed));
        // Valid on its own (loopback needs no token), but admin.listen applies only at a restart.
        let loaded = load(BASE);
        let problems = check_against_running(&running, &loaded.config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "admin.token");
        assert!(check_against_running(&running, &running.config).is_empty());
        assert!(check_against_running(&load(BASE), &loaded.config).is_empty(), "loopback: no token needed");
    }

    #[test]
    fn the_log_level_is_reloaded_and_checked() {
        let running = load(BASE);
        let edited =
            BASE.to_owned() + "[log]\nlevel = \"warn,switchboard=debug\"\nredact_numbers = false\nformat = \"json\"\n";
        let loaded = load(&edited);
        assert!(check_against_running(&running, &loaded.config).is_empty());
        let (settings, report) = merge(&running, loaded);
        assert_eq!(settings.config.log.level, "warn,switchboard=debug");
        assert!(!settings.config.log.redact_numbers);
        assert_eq!(settings.config.log.format, running.config.log.format, "the format needs a restart");
        let keys: Vec<&str> = report.needs_restart.iter().map(|k| k.key.as_str()).collect();
        assert_eq!(keys, ["log.format"]);

        let broken = load(&(BASE.to_owned() + "[log]\nlevel = \"switchboard=loud\"\n"));
        let problems = check_against_running(&running, &broken.config);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(problems[0].key, "log.level");
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        let (_, report) = merge(&load(BASE), load(BASE));
        assert!(report.changed.is_empty() && report.needs_restart.is_empty(), "{report:?}");
    }

    #[test]
    fn a_changed_api_key_is_named_but_never_shown() {
        let running = load(BASE);
        let mut loaded = load(BASE);
        loaded.config.realtime.api_key = "sk-new-secret".into();
        let (settings, report) = merge(&running, loaded);
        assert_eq!(settings.config.realtime.api_key, running.config.realtime.api_key);
        // The running value is empty (the offline agent): shown as empty, the new one nowhere.
        assert_eq!(report.needs_restart, [NeedsRestart { key: "realtime.api_key".into(), running: String::new() }]);
        assert!(!serde_json::to_string(&report).unwrap().contains("sk-new-secret"));

        let mut running = load(BASE);
        running.config.realtime.api_key = "sk-old-secret".into();
        let mut loaded = load(BASE);
        loaded.config.realtime.api_key = "sk-new-secret".into();
        let (_, report) = merge(&running, loaded);
        assert_eq!(
            report.needs_restart,
            [NeedsRestart { key: "realtime.api_key".into(), running: config::MASKED.into() }]
        );
        let shown = serde_json::to_string(&report).unwrap();
        assert!(!shown.contains("sk-new-secret") && !shown.contains("sk-old-secret"), "{shown}");
    }

    #[tokio::test]
    async fn a_snapshot_taken_before_a_swap_keeps_its_values() {
        let cell = SettingsCell::new(load(BASE));
        let before = cell.current();
        cell.replace(load(&BASE.replace("first", "second")));
        assert_eq!(before.config.agents["default"].instructions, "first");
        assert_eq!(cell.current().config.agents["default"].instructions, "second");
    }
}
