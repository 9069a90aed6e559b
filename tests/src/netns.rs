//! Running one test inside a network namespace that has only loopback.
//!
//! Tests that feed the gateway hostile, mutated or third-party SIP (RFC 4475 torture messages,
//! mutated messages) run there: whatever address a message names (an SDP `c=` line, a Via, a
//! Contact), nothing the gateway sends can leave the namespace, and the namespace's ports cannot
//! collide with anything else running on the machine.
//!
//! The test binary cannot move itself into a new namespace (that needs `unsafe` code, forbidden in
//! this crate), so the test re-runs itself: the outer run starts
//! `unshare --net -- sh -c 'ip link set lo up && exec <this test binary> <test> --exact'` and
//! asserts that it passed; the inner run (marked by an environment variable) runs the body.

use std::process::Command;
use std::time::Duration;

use crate::procs::run_bounded;

/// Set in the environment of the run inside the namespace.
const INSIDE: &str = "SWITCHBOARD_E2E_IN_LOOPBACK_NETNS";

/// Returns `true` when the caller is inside the namespace and must run the test body; otherwise
/// re-runs the test `test_name` (its libtest name, the function name for an integration test)
/// inside a new network namespace, bounded by `limit`, prints its output, asserts it passed and
/// returns `false`.
///
/// ```text
/// #[test]
/// fn hostile_input() {
///     if !netns::enter_loopback_namespace("hostile_input", Duration::from_secs(120)) {
///         return; // the run inside the namespace passed
///     }
///     // ... the body, inside the namespace ...
/// }
/// ```
pub fn enter_loopback_namespace(test_name: &str, limit: Duration) -> bool {
    enter_loopback_namespace_with_env(test_name, limit, &[])
}

/// [`enter_loopback_namespace`], with extra environment variables for the run inside (e.g. the
/// seed the outer run chose, so both print the same one).
pub fn enter_loopback_namespace_with_env(test_name: &str, limit: Duration, env: &[(&str, &str)]) -> bool {
    if std::env::var_os(INSIDE).is_some() {
        let interfaces = interfaces();
        assert_eq!(interfaces, ["lo"], "the namespace must have loopback only");
        return true;
    }
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut unshare = Command::new("unshare");
    if !is_root() {
        // A user namespace lets an ordinary user own the network namespace.
        unshare.arg("--map-root-user");
    }
    unshare
        .args(["--net", "--", "sh", "-c", "PATH=\"$PATH:/usr/sbin:/sbin\"; ip link set lo up && exec \"$0\" \"$@\""])
        .arg(exe)
        .args([test_name, "--exact", "--nocapture", "--include-ignored", "--test-threads=1"])
        .env(INSIDE, "1")
        .envs(env.iter().copied());
    let out = run_bounded("unshare", &mut unshare, limit);
    // Captured by libtest and shown when the test fails. Each line is indented, so the inner
    // run's own "test result:" line is not read as a summary of this binary.
    println!("--- the run inside the network namespace ---");
    for line in String::from_utf8_lossy(&out.stdout).lines().chain(String::from_utf8_lossy(&out.stderr).lines()) {
        println!("  | {line}");
    }
    assert!(
        out.status.success(),
        "{test_name} failed inside its network namespace ({}); its output is above",
        out.status
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{test_name}: the run inside the namespace did not run exactly this test"
    );
    false
}

/// Network interfaces of the current namespace (from /proc/self/net/dev, which is per namespace).
pub fn interfaces() -> Vec<String> {
    let dev = std::fs::read_to_string("/proc/self/net/dev").expect("read /proc/self/net/dev");
    dev.lines().skip(2).filter_map(|line| line.split(':').next()).map(|name| name.trim().to_string()).collect()
}

fn is_root() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|uids| uids.split_whitespace().nth(1))
        .is_some_and(|effective| effective == "0")
}
