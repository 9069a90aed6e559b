//! The artefacts in `deploy/` checked by the tools that consume them: the systemd unit by
//! `systemd-analyze verify`, the alert rules by `promtool check rules` and `promtool test rules`,
//! the dashboard's queries by promtool too, the Kamailio configuration by `kamailio -c`, the
//! Kubernetes manifests and the Dockerfile's environment by the gateway's own `check`; every
//! metric the dashboard and the alerts use must be documented in docs/metrics.md. The container
//! image's health check (`switchboard healthcheck`) runs against a live gateway.
//! The Docker image itself is not built here (no Docker daemon in CI): docs/deployment.md says how.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use switchboard_e2e::Ports;
use switchboard_e2e::procs::{Gateway, run_bounded};
use switchboard_e2e::tools;

/// Kamailio's programs (`kamailio`, `kamcmd`), where tests/build.rs found them (often /usr/sbin,
/// not on a non-root PATH).
fn kamailio_tool(name: &str) -> PathBuf {
    option_env!("E2E_KAMAILIO_DIR").map_or_else(|| PathBuf::from(name), |dir| PathBuf::from(dir).join(name))
}

fn repo_file(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn run(name: &str, cmd: &mut Command) -> Output {
    run_bounded(name, cmd, Duration::from_secs(60))
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

/// `key = N` in the `[section]` of a TOML text (the files here keep one key per line).
fn toml_integer(toml: &str, section: &str, key: &str) -> Option<u64> {
    let header = format!("[{section}]");
    let mut lines = toml.lines().map(str::trim).skip_while(|line| *line != header).skip(1);
    lines.by_ref().take_while(|line| !line.starts_with('[')).find_map(|line| {
        let (k, v) = line.split_once('=')?;
        if k.trim() == key { v.split('#').next()?.trim().parse().ok() } else { None }
    })
}

/// The `calls.drain_secs` default, as config/switchboard.toml documents it.
fn default_drain_secs() -> u64 {
    toml_integer(&read("config/switchboard.toml"), "calls", "drain_secs")
        .expect("config/switchboard.toml documents calls.drain_secs")
}

#[test]
#[cfg_attr(not(has_systemd_analyze), ignore = "needs systemd-analyze (scripts/install-deps.sh)")]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = tools::scratch_dir("deploy_systemd");
    let unit = read("deploy/systemd/switchboard.service");
    // verify wants every Exec*= binary to exist: point the unit at the binary just built. The
    // shipped unit keeps /usr/local/bin, where docs/deployment.md installs it.
    assert!(unit.contains("ExecStart=/usr/local/bin/switchboard run --config /etc/switchboard/switchboard.toml"));
    let path = dir.join("switchboard.service");
    let binary = tools::gateway_binary().canonicalize().expect("gateway binary path");
    std::fs::write(&path, unit.replace("/usr/local/bin/switchboard", &binary.display().to_string()))
        .expect("write unit");
    let out = run("systemd-analyze", Command::new("systemd-analyze").args(["verify", "--man=no"]).arg(&path));
    let output = text(&out);
    assert!(out.status.success(), "systemd-analyze verify failed:\n{output}");
    // verify exits 0 on unknown keys and bad values, with a warning naming the file.
    let about_our_unit: Vec<&str> = output.lines().filter(|line| line.contains("switchboard.service")).collect();
    assert!(about_our_unit.is_empty(), "systemd-analyze warnings about the unit:\n{}", about_our_unit.join("\n"));

    // The hardening holds: systemd's own exposure rating at most 2.0 of 10 (1.7 as shipped; an
    // unhardened unit rates 9.6). --threshold is in tenths.
    let security = run(
        "systemd-analyze",
        Command::new("systemd-analyze").args(["security", "--offline=true", "--threshold=20"]).arg(&path),
    );
    assert!(security.status.success(), "exposure above 2.0:\n{}", text(&security));

    // The stop timeout covers the drain, or systemd SIGKILLs calls that were finishing.
    let timeout: u64 = unit
        .lines()
        .find_map(|line| line.strip_prefix("TimeoutStopSec="))
        .and_then(|v| v.trim().parse().ok())
        .expect("TimeoutStopSec in seconds");
    let drain = default_drain_secs();
    assert!(timeout > drain + 10, "TimeoutStopSec={timeout} must exceed calls.drain_secs={drain} plus the hang-up");
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool (scripts/install-deps.sh)")]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    let check = run(
        "promtool",
        Command::new("promtool").args(["check", "rules"]).arg(repo_file("deploy/prometheus/alerts.yml")),
    );
    assert!(check.status.success(), "promtool check rules:\n{}", text(&check));
    let tests = run(
        "promtool",
        Command::new("promtool").args(["test", "rules"]).arg(repo_file("deploy/prometheus/alerts_test.yml")),
    );
    assert!(tests.status.success(), "promtool test rules:\n{}", text(&tests));
    assert!(text(&tests).contains("SUCCESS"));
}

/// Every PromQL query of the dashboard (Grafana's `$instance` and `$__rate_interval` filled
/// in), as recording rules that promtool parses.
#[test]
#[cfg_attr(not(has_promtool), ignore = "needs promtool (scripts/install-deps.sh)")]
fn dashboard_queries_are_valid_promql() {
    let dir = tools::scratch_dir("deploy_dashboard_promql");
    let queries = dashboard_queries();
    assert!(queries.len() >= 20, "the dashboard has {} queries", queries.len());
    let rules: Vec<serde_json::Value> = queries
        .iter()
        .enumerate()
        .map(|(i, expr)| {
            let expr = expr.replace("$__rate_interval", "5m").replace("$instance", ".*");
            serde_json::json!({ "record": format!("dashboard:query_{i}"), "expr": expr })
        })
        .collect();
    // JSON is YAML: promtool reads it as a rule file.
    let file = serde_json::json!({ "groups": [{ "name": "dashboard", "rules": rules }] });
    let path = dir.join("dashboard_rules.yml");
    std::fs::write(&path, file.to_string()).expect("write rules");
    let check = run("promtool", Command::new("promtool").args(["check", "rules"]).arg(&path));
    assert!(check.status.success(), "a dashboard query is not valid PromQL:\n{}", text(&check));
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&read("deploy/grafana/switchboard.json")).expect("deploy/grafana/switchboard.json is JSON")
}

/// The PromQL of every panel.
fn dashboard_queries() -> Vec<String> {
    let dashboard = dashboard();
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|target| target["expr"].as_str().map(str::to_string))
        .collect()
}

/// The template variables' queries (Grafana's `label_values(...)`, not PromQL).
fn dashboard_variable_queries() -> Vec<String> {
    let dashboard = dashboard();
    let variables = dashboard["templating"]["list"].as_array().expect("templating");
    variables.iter().filter_map(|v| v["definition"].as_str().map(str::to_string)).collect()
}

/// Metric names (`switchboard_*`, `process_*`) in a text.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes = text.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut i = 0;
    while i < bytes.len() {
        let at_boundary = i == 0 || !is_ident(bytes[i - 1]);
        let rest = &bytes[i..];
        if at_boundary && (rest.starts_with(b"switchboard_") || rest.starts_with(b"process_")) {
            let len = rest.iter().take_while(|&&b| is_ident(b)).count();
            names.insert(String::from_utf8_lossy(&rest[..len]).into_owned());
            i += len;
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn dashboard_and_alerts_use_only_documented_metrics() {
    let documented = metric_names(&read("docs/metrics.md"));
    let used: BTreeSet<String> = metric_names(&read("deploy/prometheus/alerts.yml"))
        .into_iter()
        .chain(dashboard_queries().iter().chain(&dashboard_variable_queries()).flat_map(|q| metric_names(q)))
        .collect();
    assert!(used.len() >= 25, "only {} metrics used: {used:?}", used.len());
    let undocumented: Vec<&String> = used
        .iter()
        .filter(|name| {
            // A histogram's series carry _bucket/_sum/_count; docs/metrics.md names the histogram.
            let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            !documented.contains(name.as_str()) && !documented.contains(base)
        })
        .collect();
    assert!(undocumented.is_empty(), "used by deploy/ but not in docs/metrics.md: {undocumented:?}");
}

#[test]
#[cfg_attr(not(has_kamailio), ignore = "needs kamailio (scripts/install-deps.sh)")]
fn kamailio_config_passes_kamailio_check() {
    let dir = tools::scratch_dir("deploy_kamailio_check");
    let cfg = repo_file("deploy/kamailio/kamailio.cfg");
    let list = repo_file("deploy/kamailio/dispatcher.list");
    // As shipped (defaults), and with the defines the scale-out test runs it with.
    let shipped = run(
        "kamailio",
        Command::new(kamailio_tool("kamailio"))
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .args(["-A", &format!("DISPATCHER_LIST=\"{}\"", list.display())]),
    );
    assert!(shipped.status.success(), "kamailio -c (defaults):\n{}", text(&shipped));
    assert!(text(&shipped).contains("config file ok"));
    let port = Ports::for_slot(104).peer_sip;
    let tested = run(
        "kamailio",
        Command::new(kamailio_tool("kamailio"))
            .arg("-c")
            .arg("-f")
            .arg(&cfg)
            .args(["-A", &format!("LISTEN_UDP=udp:127.0.0.1:{port}")])
            .args(["-A", &format!("LISTEN_TCP=tcp:127.0.0.1:{port}")])
            .args(["-A", &format!("DISPATCHER_LIST=\"{}\"", list.display())])
            .args(["-A", &format!("CTL_SOCKET=\"unix:{}\"", dir.join("ctl").display())])
            .args(["-A", "DS_PING_INTERVAL=1", "-A", "FR_TIMER_MS=900", "-A", "CHILDREN=2"]),
    );
    let output = text(&tested);
    assert!(tested.status.success(), "kamailio -c (test defines):\n{output}");
    assert!(output.contains(&format!("udp: 127.0.0.1 [127.0.0.1]:{port}")), "the defines reach listen=:\n{output}");
}

/// Every document of every YAML file in deploy/kubernetes, as JSON (python3's yaml module).
fn kubernetes_documents() -> Vec<serde_json::Value> {
    let script = "import glob, json, sys, yaml\n\
                  docs = []\n\
                  for path in sorted(glob.glob(sys.argv[1] + '/*.yaml')):\n    \
                      docs += [d for d in yaml.safe_load_all(open(path)) if d is not None]\n\
                  print(json.dumps(docs))\n";
    let out = run("python3", Command::new("python3").arg("-c").arg(script).arg(repo_file("deploy/kubernetes")));
    assert!(out.status.success(), "deploy/kubernetes does not parse as YAML (python3-yaml needed):\n{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("JSON from python3")
}

fn kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> &'a serde_json::Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in deploy/kubernetes"))
}

#[test]
#[cfg_attr(not(has_python3), ignore = "needs python3 (scripts/install-deps.sh)")]
fn kubernetes_manifests_parse_and_the_grace_period_covers_the_drain() {
    let dir = tools::scratch_dir("deploy_kubernetes");
    let docs = kubernetes_documents();
    let kinds: BTreeSet<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, BTreeSet::from(["ConfigMap", "Deployment", "Service"]));

    let pod = &kind(&docs, "Deployment")["spec"]["template"]["spec"];
    let grace = pod["terminationGracePeriodSeconds"].as_u64().expect("terminationGracePeriodSeconds");
    let toml =
        kind(&docs, "ConfigMap")["data"]["switchboard.toml"].as_str().expect("switchboard.toml in the ConfigMap");
    let drain = toml_integer(toml, "calls", "drain_secs").expect("the ConfigMap sets calls.drain_secs");
    assert!(
        grace > drain + 10,
        "terminationGracePeriodSeconds {grace} must exceed calls.drain_secs {drain} + the hang-up"
    );

    let container = &pod["containers"][0];
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);

    // The ConfigMap is a configuration the gateway accepts, with the environment the Deployment
    // gives it (secrets and the node's address stand in).
    let path = dir.join("switchboard.toml");
    std::fs::write(&path, toml).expect("write config");
    let mut check = Command::new(tools::gateway_binary());
    check.arg("check").arg("--config").arg(&path).env_remove("OPENAI_API_KEY");
    for var in container["env"].as_array().expect("env") {
        let name = var["name"].as_str().expect("env name");
        let value = var["value"].as_str().map_or("stand-in", |v| if v.starts_with("$(") { "192.0.2.10" } else { v });
        check.env(name, value);
    }
    let out = run("switchboard check", &mut check);
    assert!(out.status.success(), "the ConfigMap's switchboard.toml fails `switchboard check`:\n{}", text(&out));
}

/// The Dockerfile's ENV lines applied to the configuration the image ships: `switchboard check`
/// accepts them (an unknown key or a bad value would stop the container at start).
#[test]
fn dockerfile_environment_is_a_valid_configuration() {
    let dockerfile = read("deploy/docker/Dockerfile");
    let env_block: Vec<(String, String)> = dockerfile
        .lines()
        .skip_while(|line| !line.starts_with("ENV "))
        .take_while(|line| !line.trim().is_empty())
        .map(|line| line.trim_start_matches("ENV ").trim().trim_end_matches('\\').trim())
        .filter_map(|pair| pair.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect();
    assert!(env_block.iter().any(|(k, _)| k == "SWITCHBOARD__ADMIN__LISTEN"), "ENV block: {env_block:?}");
    assert!(dockerfile.contains("COPY config/switchboard.toml /etc/switchboard/switchboard.toml"));
    let mut check = Command::new(tools::gateway_binary());
    check.arg("check").arg("--config").arg(repo_file("config/switchboard.toml")).env_remove("OPENAI_API_KEY");
    for (key, value) in &env_block {
        check.env(key, value);
    }
    // The operator provides the token the image's admin.token_env names.
    check.env("SWITCHBOARD_ADMIN_TOKEN", "stand-in");
    let out = run("switchboard check", &mut check);
    assert!(out.status.success(), "the image's environment makes a bad configuration:\n{}", text(&out));
    // Without the token, the non-loopback admin listener is refused: the image cannot start open.
    let mut check = Command::new(tools::gateway_binary());
    check.arg("check").arg("--config").arg(repo_file("config/switchboard.toml")).env_remove("SWITCHBOARD_ADMIN_TOKEN");
    for (key, value) in &env_block {
        check.env(key, value);
    }
    assert!(!run("switchboard check", &mut check).status.success());
}

fn healthcheck(url: &str) -> Output {
    run("switchboard healthcheck", Command::new(tools::gateway_binary()).args(["healthcheck", "--url", url]))
}

#[test]
fn healthcheck_subcommand_reports_the_gateways_health() {
    let dir = tools::scratch_dir("deploy_healthcheck");
    let gateway = Gateway::start(Ports::for_slot(103), "", "", &dir);
    let admin = gateway.ports.admin;
    let healthy = healthcheck(&format!("http://127.0.0.1:{admin}/healthz"));
    assert_eq!(healthy.status.code(), Some(0), "{}", text(&healthy));
    assert!(text(&healthy).starts_with("healthy"));
    // A 404 is not healthy.
    let missing = healthcheck(&format!("http://127.0.0.1:{admin}/no-such-page"));
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    // Nothing listening (slot 104's admin port is never opened): unhealthy, not a hang.
    let closed = healthcheck(&format!("http://127.0.0.1:{}/healthz", Ports::for_slot(104).admin));
    assert_eq!(closed.status.code(), Some(1), "{}", text(&closed));
    // Not an http:// URL: a usage error.
    assert_eq!(healthcheck("https://127.0.0.1/healthz").status.code(), Some(2));
    drop(gateway);
}
