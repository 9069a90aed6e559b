//! `[sip]` session timer keys (RFC 4028): checked here, turned into the SIP endpoint's
//! [`SessionTimerConfig`].

use switchboard_sip::core::session_timer::SessionTimerConfig;

use super::{Config, ConfigProblem, SipConfig};

/// RFC 4028 §4: Min-SE is at least 90 s on the wire; lower values are for tests only.
const LOWEST_MIN_SE: u32 = 1;

pub fn validate(cfg: &Config, problems: &mut Vec<ConfigProblem>) {
    let sip = &cfg.sip;
    let mut bad = |key: &str, message: String| problems.push(ConfigProblem { key: key.into(), message });
    if sip.session_min_se_secs < LOWEST_MIN_SE {
        bad("sip.session_min_se_secs", "must be at least 1 (RFC 4028 asks for 90)".into());
    }
    if sip.session_expires_secs != 0 && sip.session_expires_secs < sip.session_min_se_secs {
        bad("sip.session_expires_secs", "must be 0 (off) or at least sip.session_min_se_secs".into());
    }
}

/// The endpoint's session timer settings.
pub fn session_timer(sip: &SipConfig) -> SessionTimerConfig {
    SessionTimerConfig { expires_secs: sip.session_expires_secs, min_se_secs: sip.session_min_se_secs }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_timer_keys_are_checked() {
        let mut cfg = Config::default();
        let mut problems = Vec::new();
        validate(&cfg, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(session_timer(&cfg.sip), SessionTimerConfig { expires_secs: 1800, min_se_secs: 90 });
        cfg.sip.session_min_se_secs = 0;
        validate(&cfg, &mut problems);
        cfg.sip.session_min_se_secs = 90;
        cfg.sip.session_expires_secs = 60;
        validate(&cfg, &mut problems);
        let keys: Vec<&str> = problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["sip.session_min_se_secs", "sip.session_expires_secs"]);
        cfg.sip.session_min_se_secs = 90;
        cfg.sip.session_expires_secs = 0;
        problems.clear();
        validate(&cfg, &mut problems);
        assert!(problems.is_empty(), "0 turns session timers off: {problems:?}");
    }
}
