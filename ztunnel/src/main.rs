//! `ztunnel`: the node agent. Parses flags (with Istio's environment variables) and runs.
#![forbid(unsafe_code)]

use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use ztunnel::config::{Args, Config};

#[derive(Parser)]
#[command(
    name = "ztunnel",
    version,
    about = "Node agent of the ambient mesh (HBONE, mTLS, L4 policy)"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Args,
}

#[derive(Subcommand)]
enum Command {
    /// Writes a new root CA in Istio's plug-in layout (ca-cert.pem, ca-key.pem,
    /// root-cert.pem, cert-chain.pem), for demos and tests.
    CreateCa {
        /// Folder to write (created if missing).
        dir: PathBuf,
        #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Detaches and removes everything the agent pinned: the cgroup programs' links, the maps,
    /// the pin folder. Run it with the agent stopped; running it again is harmless.
    Uninstall {
        /// The agent's pin folder (default `/sys/fs/bpf/mesh`).
        #[arg(long, env = "EBPF_PIN_DIR", default_value = ztunnel::redirect::DEFAULT_PIN_DIR)]
        bpf_pin_dir: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::CreateCa { dir, trust_domain }) => {
            ztunnel::identity::LocalCa::generate(&dir, &trust_domain)?;
            println!("wrote a root CA for {trust_domain} to {}", dir.display());
            return Ok(());
        }
        Some(Command::Uninstall { bpf_pin_dir }) => {
            let removed = ztunnel::redirect::uninstall(&bpf_pin_dir)
                .with_context(|| format!("uninstalling {}", bpf_pin_dir.display()))?;
            for line in removed {
                println!("{line}");
            }
            return Ok(());
        }
        None => {}
    }
    ztunnel::memory::fix_thresholds();
    let _flush = ztunnel::logging::init(&cli.run.log).context("RUST_LOG")?;
    let cfg = Config::try_from(cli.run)?;
    ztunnel::workers::run(cfg.worker_threads, run(cfg))
}

async fn run(cfg: Config) -> anyhow::Result<()> {
    let drain_timeout = cfg.drain_timeout;
    let mut agent = ztunnel::app::Agent::start(cfg).await?;
    let stopped = agent.until_stopped().await;
    if let Err(e) = &stopped {
        tracing::error!(error = %format!("{e:#}"), "stopping");
    }
    agent.drain(drain_timeout).await;
    stopped
}
