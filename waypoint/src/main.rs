//! `waypoint`: runs the L7 waypoint proxy (`waypoint run`), or manages waypoints in a cluster
//! the way `istioctl waypoint` does (`generate`, `apply`, `delete`, `list`, `status`).
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::time::Duration;
use waypoint::config::{Config, RunArgs};

#[derive(Parser)]
#[command(
    name = "waypoint",
    version,
    about = "The ambient mesh's L7 waypoint proxy, and the commands that manage waypoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the waypoint proxy: HBONE on 15008, the rules of a config folder.
    Run(RunArgs),
    #[command(flatten)]
    Kube(waypoint_cli::Command),
}

/// How long open tunnels may finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => {
            ztunnel::memory::fix_thresholds();
            let _flush = ztunnel::logging::init(&args.log).context("RUST_LOG")?;
            let cfg = Config::try_from(args)?;
            ztunnel::workers::run(cfg.worker_threads, run(cfg))
        }
        Command::Kube(cmd) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the runtime")?
            .block_on(waypoint_cli::run(cmd)),
    }
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut running = waypoint::Running::start(cfg).await?;
    let stopped = running.until_stopped().await;
    if let Err(e) = &stopped {
        tracing::error!(error = %format!("{e:#}"), "stopping");
    }
    running.drain(DRAIN_TIMEOUT).await;
    stopped
}
