//! Sets `SWITCHBOARD_COMMIT` for `switchboard_build_info{commit}`: the environment variable of the
//! same name when the builder sets it (a Docker build from a tarball, a distribution package),
//! else `git rev-parse --short=12 HEAD`, else `unknown` (no git, no repository): a build never
//! fails for want of a commit hash.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git").args(args).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8(output.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

/// Only hex digits reach the label (a stray value cannot break the exposition format).
fn sanitize(commit: &str) -> Option<String> {
    let hex: String = commit.chars().filter(char::is_ascii_hexdigit).take(40).collect();
    (!hex.is_empty()).then_some(hex)
}

fn main() {
    println!("cargo::rerun-if-env-changed=SWITCHBOARD_COMMIT");
    println!("cargo::rerun-if-changed=build.rs");
    // Rebuild the label when HEAD moves: HEAD itself (a checkout) and the branch it points at (a
    // commit). Paths come from git, so worktrees and packed refs are found too.
    for path in [git(&["rev-parse", "--git-path", "HEAD"]), git(&["rev-parse", "--git-path", "packed-refs"])] {
        if let Some(path) = path.filter(|p| std::path::Path::new(p).exists()) {
            println!("cargo::rerun-if-changed={path}");
        }
    }
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"])
        && let Some(path) = git(&["rev-parse", "--git-path", &branch])
        && std::path::Path::new(&path).exists()
    {
        println!("cargo::rerun-if-changed={path}");
    }
    let commit = std::env::var("SWITCHBOARD_COMMIT")
        .ok()
        .and_then(|c| sanitize(&c))
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]).and_then(|c| sanitize(&c)))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=SWITCHBOARD_COMMIT={commit}");
}
