//! Locating binaries and external tools. A missing tool skips a test loudly locally and fails it
//! under CI (`SWITCHBOARD_E2E_REQUIRED=1`, set by scripts/test.sh when CI=true).

use std::path::PathBuf;
use std::process::Command;

/// Returns true when `tool` is on PATH. When it is not: panics under CI, else prints a loud skip.
pub fn require(tool: &str, test: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if found {
        return true;
    }
    if std::env::var("SWITCHBOARD_E2E_REQUIRED").is_ok_and(|v| v == "1") {
        panic!("{test}: `{tool}` is required under CI but missing (scripts/install-deps.sh installs it)");
    }
    eprintln!("\n!!!!!!!! SKIPPED {test}: `{tool}` not installed (run scripts/install-deps.sh) !!!!!!!!\n");
    false
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn release_binary(env: &str, name: &str) -> PathBuf {
    let path =
        std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| workspace_root().join("target/release").join(name));
    assert!(
        path.exists(),
        "{} not found: build it with `cargo build --release -p switchboard -p switchboard-sim` (scripts/test.sh does)",
        path.display()
    );
    path
}

pub fn gateway_binary() -> PathBuf {
    release_binary("SWITCHBOARD_BIN", "switchboard")
}

pub fn sim_binary() -> PathBuf {
    release_binary("SWITCHBOARD_SIM_BIN", "switchboard-sim")
}

/// A scratch folder for one test under target/e2e, emptied first.
pub fn scratch_dir(test: &str) -> PathBuf {
    let dir = workspace_root().join("target/e2e").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

pub fn scenario(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scenarios").join(name)
}
