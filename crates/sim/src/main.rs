//! `switchboard-sim`: runs the Realtime API simulator on a local port.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use switchboard_sim::{Behaviour, BurstPattern, SimConfig, Simulator, Tone};

/// Serve a simulated OpenAI Realtime API (GA) on ws://LISTEN/v1/realtime.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// What a VAD-triggered response says: echo, tone:HZ:MS or monologue:MS.
    #[arg(long, default_value = "echo")]
    behaviour: Behaviour,
    /// Tone answering a client response.create (the greeting), HZ:MS.
    #[arg(long, default_value = "440:1000")]
    greeting_tone: Tone,
    /// Output audio speed, times real time (0 = as fast as possible).
    #[arg(long, default_value_t = 4.0)]
    speed: f64,
    /// Smallest output audio chunk, ms.
    #[arg(long, default_value_t = 40)]
    min_chunk_ms: u32,
    /// Largest output audio chunk, ms.
    #[arg(long, default_value_t = 240)]
    max_chunk_ms: u32,
    /// Required Bearer key; without it any non-empty key is accepted.
    #[arg(long, env = "SIM_API_KEY")]
    api_key: Option<String>,
    /// Session lifetime in seconds before session_expired.
    #[arg(long, default_value_t = 3600)]
    max_session_secs: u64,
    /// Seed for chunk sizes and ids.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Events kept per session log.
    #[arg(long, default_value_t = 100_000)]
    log_limit: usize,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let cfg = SimConfig {
        api_key: args.api_key,
        behaviour: args.behaviour,
        greeting: args.greeting_tone,
        burst: BurstPattern { min_chunk_ms: args.min_chunk_ms, max_chunk_ms: args.max_chunk_ms, speed: args.speed },
        max_session: Duration::from_secs(args.max_session_secs),
        seed: args.seed,
        log_limit: args.log_limit,
    };
    let sim = Simulator::start(cfg, args.listen).await?;
    println!("{}", sim.url());
    tokio::signal::ctrl_c().await?;
    sim.shutdown().await;
    Ok(())
}
