//! Locating binaries and scratch folders. External tools are found at build time (`build.rs`):
//! a test needing a missing tool carries `#[cfg_attr(not(has_<tool>), ignore = "...")]` and shows
//! as ignored, and under CI (`SWITCHBOARD_E2E_REQUIRED=1`) a missing tool fails the build.

use std::path::PathBuf;

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
