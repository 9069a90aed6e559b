//! `agents_dir`: one agent per `*.toml` file, beside the inline `[agents.NAME]` tables.
//!
//! A file holds the keys of `[agents.NAME]` at its top level (nested tables included: the whole
//! file is deserialized into [`AgentConfig`]), plus an optional `name` (the file stem
//! otherwise). Its problems are reported under the file's path instead of `agents.NAME`.
//! `SWITCHBOARD__AGENTS__...` environment overrides do not reach file agents (one for a file
//! agent's name defines an inline agent of that name, which is then reported as a duplicate).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{AgentConfig, Config, ConfigProblem};

/// At most this many agent files, each at most [`MAX_AGENT_FILE_BYTES`].
pub const MAX_AGENT_FILES: usize = 1000;
pub const MAX_AGENT_FILE_BYTES: u64 = 1024 * 1024;

/// Where each agent loaded from a file came from, to name the file in its problems.
#[derive(Debug, Default)]
pub(super) struct AgentFiles(BTreeMap<String, PathBuf>);

/// Loads every `*.toml` of `agents_dir` (relative to the directory of `config_path`) into
/// `cfg.agents`. `inline_given` says whether the file had `[agents]` tables: when it had none,
/// the built-in `default` agent gives way to the files' agents.
pub(super) fn load_agent_files(
    cfg: &mut Config,
    config_path: &Path,
    inline_given: bool,
    problems: &mut Vec<ConfigProblem>,
) -> AgentFiles {
    let mut files = AgentFiles::default();
    if cfg.agents_dir.is_empty() {
        return files;
    }
    let mut bad = |key: String, message: String| problems.push(ConfigProblem { key, message });
    let dir = config_path.parent().unwrap_or(Path::new(".")).join(&cfg.agents_dir);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) => {
            bad("agents_dir".into(), format!("cannot read `{}`: {e}", dir.display()));
            return files;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "toml") && path.is_file())
        .collect();
    paths.sort();
    if paths.len() > MAX_AGENT_FILES {
        bad("agents_dir".into(), format!("{} agent files; at most {MAX_AGENT_FILES}", paths.len()));
        return files;
    }
    if !inline_given && !paths.is_empty() {
        cfg.agents.clear();
    }
    for path in paths {
        let shown = path.display().to_string();
        let Some((name, agent)) = load_one(&path, &mut bad) else { continue };
        if let Some(other) = files.0.get(&name) {
            bad(shown, format!("agent `{name}` is also defined in {}", other.display()));
        } else if cfg.agents.contains_key(&name) {
            bad(shown, format!("agent `{name}` is also defined inline ([agents.{name}] in {})", config_path.display()));
        } else {
            cfg.agents.insert(name.clone(), agent);
            files.0.insert(name, path);
        }
    }
    files
}

/// One file: its agent's name and config, or `None` after reporting why not.
fn load_one(path: &Path, bad: &mut impl FnMut(String, String)) -> Option<(String, AgentConfig)> {
    let shown = path.display().to_string();
    match std::fs::metadata(path) {
        Ok(meta) if meta.len() > MAX_AGENT_FILE_BYTES => {
            bad(shown, format!("larger than {MAX_AGENT_FILE_BYTES} bytes"));
            return None;
        }
        Ok(_) => {}
        Err(e) => {
            bad(shown, format!("cannot read: {e}"));
            return None;
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| bad(shown.clone(), format!("cannot read: {e}"))).ok()?;
    let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| bad(shown.clone(), e.to_string())).ok()?;
    let name = match table.remove("name") {
        None => path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default(),
        Some(toml::Value::String(name)) => name,
        Some(_) => {
            bad(format!("{shown}: name"), "must be a string".into());
            return None;
        }
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        bad(format!("{shown}: name"), format!("`{name}`: an agent name is letters, digits, - and _"));
        return None;
    }
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let deserializer = serde_ignored::Deserializer::new(toml::Value::Table(table), &mut record_unknown);
    let parsed: Result<AgentConfig, _> = serde_path_to_error::deserialize(deserializer);
    for key in unknown {
        bad(format!("{shown}: {key}"), "unknown key".into());
    }
    match parsed {
        Ok(agent) => Some((name, agent)),
        Err(e) => {
            bad(format!("{shown}: {}", e.path()), e.inner().to_string());
            None
        }
    }
}

impl AgentFiles {
    /// Renames `agents.NAME.KEY` problems of file agents to `FILE: KEY`.
    pub(super) fn name_files_in(&self, problems: &mut [ConfigProblem]) {
        for problem in problems {
            for (name, path) in &self.0 {
                let prefix = format!("agents.{name}");
                let Some(rest) = problem.key.strip_prefix(&prefix) else { continue };
                if rest.is_empty() {
                    problem.key = path.display().to_string();
                } else if let Some(field) = rest.strip_prefix('.') {
                    problem.key = format!("{}: {field}", path.display());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use crate::config::load_with_env;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap();
        }
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn agents_come_from_files_named_by_stem_or_name() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "agents/support.toml", "instructions = \"Support for {caller}\"\nvoice = \"cedar\"\n");
        write(dir.path(), "agents/x.toml", "name = \"after-hours\"\ngreeting = \"We are closed.\"\nrecord = true\n");
        write(dir.path(), "agents/notes.txt", "not an agent");
        let config = write(
            dir.path(),
            "switchboard.toml",
            &format!(
                "agents_dir = \"agents\"\n[[routes]]\ndialled = \"1\"\nagent = \"support\"\n\
                 [[routes]]\ndialled = \"*\"\nagent = \"after-hours\"\n[recording]\ndir = \"{}\"\n",
                dir.path().join("rec").display()
            ),
        );
        let (cfg, _) = load_with_env(&config, &[]).unwrap();
        let names: Vec<&str> = cfg.agents.keys().map(String::as_str).collect();
        assert_eq!(names, ["after-hours", "support"], "the built-in default gives way to the files");
        assert_eq!(cfg.agents["support"].voice, "cedar");
        assert!(cfg.agents["after-hours"].record);
    }

    #[test]
    fn a_name_defined_twice_names_both_places() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "agents/sales.toml", "voice = \"cedar\"\n");
        write(dir.path(), "agents/other.toml", "name = \"sales\"\n");
        write(dir.path(), "agents/support.toml", "");
        let config =
            write(dir.path(), "switchboard.toml", "agents_dir = \"agents\"\n[agents.support]\n[agents.default]\n");
        let err = load_with_env(&config, &[]).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("support.toml") && text.contains("[agents.support]"), "{text}");
        assert!(text.contains("other.toml") && text.contains("sales.toml"), "{text}");
    }

    #[test]
    fn problems_in_a_file_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "agents/bad.toml", "voice = \"robot\"\ncolour = \"blue\"\ninstructions = \"{nope}\"\n");
        write(dir.path(), "agents/broken.toml", "voice = \n");
        write(dir.path(), "agents/typed.toml", "record = \"yes\"\n");
        let config = write(dir.path(), "switchboard.toml", "agents_dir = \"agents\"\n");
        let err = load_with_env(&config, &[]).unwrap_err();
        let keys: Vec<&str> = err.0.iter().map(|p| p.key.as_str()).collect();
        let bad = dir.path().join("agents/bad.toml").display().to_string();
        for expected in [format!("{bad}: voice"), format!("{bad}: colour"), format!("{bad}: instructions")] {
            assert!(keys.contains(&expected.as_str()), "missing {expected} in {keys:?}");
        }
        assert!(keys.iter().any(|k| k.ends_with("broken.toml")), "{keys:?}");
        assert!(keys.iter().any(|k| k.ends_with("typed.toml: record")), "{keys:?}");
    }

    #[test]
    fn a_missing_directory_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let config = write(dir.path(), "switchboard.toml", "agents_dir = \"nowhere\"\n");
        let err = load_with_env(&config, &[]).unwrap_err();
        assert_eq!(err.0[0].key, "agents_dir");
    }
}
