//! `switchboard run --config FILE` runs the gateway; `switchboard check --config FILE` validates;
//! `switchboard route --config FILE --to NUMBER` shows which route and agent a call would get.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use switchboard::{app, config, telemetry};

#[derive(Parser)]
#[command(name = "switchboard", version, about = "SIP telephony gateway to the OpenAI Realtime API")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Run {
        #[arg(long, short, default_value = "config/switchboard.toml")]
        config: PathBuf,
    },
    /// Validate the configuration without binding anything; lists every problem with its key.
    Check {
        #[arg(long, short, default_value = "config/switchboard.toml")]
        config: PathBuf,
    },
    /// Print which route and agent (or reject code) a call would get, deciding as the gateway
    /// does with the configuration loaded as `run` loads it.
    Route {
        #[arg(long, short, default_value = "config/switchboard.toml")]
        config: PathBuf,
        /// The dialled number (the INVITE's Request-URI user).
        #[arg(long)]
        to: String,
        /// The caller ID (P-Asserted-Identity's or From's user); none when left out.
        #[arg(long, default_value = "")]
        from: String,
        /// The INVITE's source address; left out, only routes without `source` (or with
        /// 0.0.0.0/0) can match.
        #[arg(long)]
        source: Option<std::net::IpAddr>,
        /// When the call arrives, RFC 3339 (e.g. 2026-12-02T09:30:00+01:00); default: now.
        #[arg(long)]
        at: Option<String>,
    },
    /// GET the admin `/healthz` (or another URL) and exit 0 on 200, 1 otherwise: the container
    /// image's HEALTHCHECK, which has no curl.
    Healthcheck {
        /// `http://HOST:PORT/PATH` of the running gateway's admin listener.
        #[arg(long, default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
    /// Place scripted test calls to an agent and report, turn by turn, what it said and how
    /// fast (docs/test-call.md). Exit 0: every expectation held; 1: one failed; 2: usage error.
    TestCall {
        #[arg(long, short, default_value = "config/switchboard.toml")]
        config: PathBuf,
        /// The scenario file (config/scenarios/example.toml shows every key).
        #[arg(long, short)]
        scenario: PathBuf,
        /// A sip: URI to call instead of the scenario's target or trunk.
        #[arg(long)]
        target: Option<String>,
        /// Where report.json, junit.xml and one stereo WAV per call are written.
        #[arg(long)]
        report_dir: Option<PathBuf>,
        /// Calls to place (overrides the scenario's `calls`).
        #[arg(long)]
        calls: Option<u32>,
        /// Calls at once (overrides the scenario's `concurrency`).
        #[arg(long)]
        concurrency: Option<u32>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok((cfg, resolved)) => {
                let offline = if cfg.realtime.api_key.is_empty() { " (no API key: offline agent)" } else { "" };
                println!(
                    "{}: OK, {} agent(s), {} route(s), {} trunk(s){offline}",
                    config.display(),
                    cfg.agents.len(),
                    resolved.routes.routes().len(),
                    cfg.trunks.len()
                );
                ExitCode::SUCCESS
            }
            Err(errors) => {
                for problem in &errors.0 {
                    eprintln!("{}: {problem}", config.display());
                }
                eprintln!("{}: {} problem(s)", config.display(), errors.0.len());
                ExitCode::from(2)
            }
        },
        Command::Run { config } => run(config),
        Command::Route { config, to, from, source, at } => route(&config, &to, &from, source, at.as_deref()),
        Command::Healthcheck { url } => healthcheck(&url),
        Command::TestCall { config, scenario, target, report_dir, calls, concurrency } => {
            ExitCode::from(switchboard::testcall::main(switchboard::testcall::Options {
                config,
                scenario,
                target,
                report_dir,
                calls,
                concurrency,
            }))
        }
    }
}

/// One plain HTTP/1.0 GET with a 3 s bound on every step (a health check that hangs is a failed
/// one); 200 is healthy. Only `http://`: the admin listener speaks no TLS.
fn healthcheck(url: &str) -> ExitCode {
    use std::io::{Read, Write};
    use std::net::{TcpStream, ToSocketAddrs};
    const LIMIT: Duration = Duration::from_secs(3);
    let Some(rest) = url.strip_prefix("http://") else {
        eprintln!("healthcheck: {url}: only http://HOST:PORT/PATH URLs are supported");
        return ExitCode::from(2);
    };
    let (authority, path) = rest.find('/').map_or((rest, "/"), |slash| rest.split_at(slash));
    let result = (|| -> std::io::Result<String> {
        let addr = authority
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "no address"))?;
        let mut stream = TcpStream::connect_timeout(&addr, LIMIT)?;
        stream.set_read_timeout(Some(LIMIT))?;
        stream.set_write_timeout(Some(LIMIT))?;
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n")?;
        let mut response = Vec::new();
        // A health answer is a status line and a short body: read at most 64 KiB.
        stream.take(65536).read_to_end(&mut response)?;
        Ok(String::from_utf8_lossy(&response).into_owned())
    })();
    match result {
        Ok(response) => {
            let status_line = response.lines().next().unwrap_or_default();
            let body = response.split_once("\r\n\r\n").map(|(_, body)| body.trim()).unwrap_or_default();
            if status_line.split_whitespace().nth(1) == Some("200") {
                println!("healthy: {body}");
                ExitCode::SUCCESS
            } else {
                println!("unhealthy: {status_line}: {body}");
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            println!("unhealthy: {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn route(path: &std::path::Path, to: &str, from: &str, source: Option<std::net::IpAddr>, at: Option<&str>) -> ExitCode {
    let (_, resolved) = match config::load(path) {
        Ok(pair) => pair,
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("{}: {problem}", path.display());
            }
            eprintln!("{}: {} problem(s)", path.display(), errors.0.len());
            return ExitCode::from(2);
        }
    };
    let now = match at.map(str::parse::<switchboard_router::Timestamp>) {
        None => switchboard_router::Timestamp::now(),
        Some(Ok(at)) => at,
        Some(Err(e)) => {
            eprintln!("--at: not an RFC 3339 time with an offset (2026-12-02T09:30:00+01:00): {e}");
            return ExitCode::from(2);
        }
    };
    let source = source.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let facts = switchboard_router::Facts { dialled: to, caller: from, source };
    println!("{}", resolved.routes.decide(&facts, now));
    ExitCode::SUCCESS
}

fn run(path: PathBuf) -> ExitCode {
    // Fail fast, before binding any port.
    let (cfg, resolved) = match config::load(&path) {
        Ok(pair) => pair,
        Err(errors) => {
            for problem in &errors.0 {
                eprintln!("{}: {problem}", path.display());
            }
            return ExitCode::from(2);
        }
    };
    telemetry::init_logging(&cfg.log);
    // tokio-tungstenite's rustls needs a process-wide crypto provider before the first wss:// connect.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = match telemetry::init_metrics() {
        Ok(handle) => Some(handle),
        Err(e) => {
            tracing::error!(error = %e, "metrics recorder not installed");
            None
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        // Handlers first: a SIGHUP or SIGTERM that arrives while the gateway starts is kept
        // for when it has started, instead of killing the process (the signals' default action).
        let hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        let mut stop = StopSignals::install();
        let gateway = match app::start(cfg, resolved, metrics).await {
            Ok(gw) => gw,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                return ExitCode::FAILURE;
            }
        };
        if std::env::var_os(TEST_HOOKS_ENV).is_some_and(|v| v == "1") {
            install_test_hooks(&gateway);
        }
        gateway.set_config_path(std::fs::canonicalize(&path).unwrap_or(path));
        reload_on_sighup(&gateway, hangup);
        // SIGTERM (or Ctrl-C) drains; a second one, during the drain, hangs up at once.
        let failure = tokio::select! {
            () = stop.next() => tokio::select! {
                _ = gateway.drain(stop.next()) => None,
                failure = gateway.failed() => Some(failure),
            },
            failure = gateway.failed() => Some(failure),
        };
        match failure {
            None => {
                gateway.shutdown(Duration::from_secs(10)).await;
                tracing::info!("stopped");
                ExitCode::SUCCESS
            }
            Some(failure) => {
                // A dead task is a dead process: hang up what can still be hung up, then exit
                // non-zero so systemd (Restart=on-failure) or Kubernetes restarts the gateway.
                gateway.shutdown(Duration::from_secs(5)).await;
                tracing::error!(%failure, "exiting after a fatal failure");
                ExitCode::from(EXIT_TASK_FAILED)
            }
        }
    })
}

/// Exit status after a task the gateway cannot live without has ended (EX_SOFTWARE, sysexits.h).
const EXIT_TASK_FAILED: u8 = 70;

/// When set to `1`, SIGUSR1 makes the SIP driver task panic: end-to-end tests use it to prove
/// that a dead task fails readiness and ends the process. Never set it in production.
const TEST_HOOKS_ENV: &str = "SWITCHBOARD_TEST_HOOKS";

fn install_test_hooks(gateway: &app::RunningGateway) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("test hooks requested but SIGUSR1 cannot be handled");
        return;
    };
    tracing::warn!("{TEST_HOOKS_ENV}=1: SIGUSR1 panics the SIP driver (a test hook)");
    let kill_driver = gateway.driver_killer_for_test();
    tokio::spawn(async move {
        if usr1.recv().await.is_some() {
            kill_driver();
        }
    });
}

/// SIGHUP re-reads the configuration file (`reload.rs`: a bad file is refused and logged, the
/// running configuration kept); one reload at a time.
fn reload_on_sighup(gateway: &app::RunningGateway, hangup: std::io::Result<tokio::signal::unix::Signal>) {
    let Ok(mut hangup) = hangup else {
        tracing::warn!("SIGHUP cannot be handled: reload through POST /v1/reload only");
        return;
    };
    let trigger = gateway.reload_trigger();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // The outcome is logged and counted by the reload itself.
            let _ = trigger.reload().await;
        }
    });
}

/// SIGTERM and SIGINT, each delivery seen once (a second one interrupts the drain).
struct StopSignals {
    terminate: Option<tokio::signal::unix::Signal>,
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl StopSignals {
    fn install() -> StopSignals {
        use tokio::signal::unix::{SignalKind, signal};
        StopSignals { terminate: signal(SignalKind::terminate()).ok(), interrupt: signal(SignalKind::interrupt()).ok() }
    }

    /// The next SIGTERM or SIGINT (never, for a signal that could not be handled).
    async fn next(&mut self) {
        async fn delivery(signal: &mut Option<tokio::signal::unix::Signal>) {
            let received = match signal {
                Some(signal) => signal.recv().await.is_some(),
                None => false,
            };
            // Not installed, or the stream ended (cannot happen while the runtime lives).
            if !received {
                std::future::pending::<()>().await;
            }
        }
        tokio::select! {
            () = delivery(&mut self.terminate) => tracing::info!("SIGTERM received"),
            () = delivery(&mut self.interrupt) => tracing::info!("SIGINT received"),
        }
    }
}
