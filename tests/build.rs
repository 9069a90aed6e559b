//! Finds the external tools the end-to-end tests drive (SIPp, baresip, tshark, ...) and sets a
//! `has_<tool>` cfg for each one on PATH. A test that needs a missing tool is compiled with
//! `#[ignore = "..."]`, so libtest reports it as *ignored*, never as passed. Under CI
//! (`SWITCHBOARD_E2E_REQUIRED=1`, set by scripts/test.sh when CI=true) a missing tool fails the
//! build instead: CI never runs with end-to-end tests silently left out.

use std::path::{Path, PathBuf};

/// Tool name on PATH, and the cfg it sets.
const TOOLS: &[(&str, &str)] = &[
    ("sipp", "has_sipp"),
    ("baresip", "has_baresip"),
    ("tshark", "has_tshark"),
    ("espeak-ng", "has_espeak_ng"),
    ("sox", "has_sox"),
    ("python3", "has_python3"),
    ("unshare", "has_unshare"),
    ("ip", "has_ip"),
    ("promtool", "has_promtool"),
];

fn find(tool: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    dirs.iter().map(|dir| dir.join(tool)).find(|path| is_executable(path))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn main() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let required = std::env::var("SWITCHBOARD_E2E_REQUIRED").is_ok_and(|v| v == "1");
    println!("cargo::rerun-if-env-changed=PATH");
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_E2E_REQUIRED");
    println!("cargo::rerun-if-changed=build.rs");
    let mut missing = Vec::new();
    for (tool, cfg) in TOOLS {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        match find(tool, &dirs) {
            Some(found) => {
                println!("cargo::rustc-cfg={cfg}");
                println!("cargo::rerun-if-changed={}", found.display());
            }
            None => missing.push(*tool),
        }
    }
    if !missing.is_empty() {
        // Re-detect once a tool appears (installing one changes its directory).
        for dir in dirs.iter().filter(|d| d.is_dir()) {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
        if required {
            panic!("end-to-end tools missing under CI: {} (scripts/install-deps.sh installs them)", missing.join(", "));
        }
        println!(
            "cargo::warning=end-to-end tests needing {} are IGNORED: not installed (run scripts/install-deps.sh)",
            missing.join(", ")
        );
    }
}
