//! `switchboard run --config FILE` runs the gateway; `switchboard check --config FILE` validates.

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok((cfg, _)) => {
                let offline = if cfg.realtime.api_key.is_empty() { " (no API key: offline agent)" } else { "" };
                println!("{}: OK, {} agent(s){offline}", config.display(), cfg.agents.len());
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
    }
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
        let gateway = match app::start(cfg, resolved, metrics).await {
            Ok(gw) => gw,
            Err(e) => {
                tracing::error!(error = %e, "start-up failed");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        gateway.shutdown(Duration::from_secs(10)).await;
        tracing::info!("stopped");
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("signal received");
}
