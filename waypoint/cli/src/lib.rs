//! The `waypoint` CLI's Kubernetes commands, as `istioctl waypoint` has them.
//!
//! A waypoint is a Gateway API `Gateway` of class `istio-waypoint` with one HBONE listener on
//! 15008. These commands write, apply, delete, list and inspect such Gateways, and enroll a
//! namespace with the label `istio.io/use-waypoint`.
//!
//! # Commands
//! - `generate`: print the Gateway as YAML, byte for byte what istioctl prints; no cluster.
//! - `apply`: server-side apply (field manager `waypoint`), optionally `--enroll-namespace`,
//!   `--overwrite` (replace another waypoint the namespace already uses) and `--wait`.
//! - `delete [NAME...] | --all`: delete waypoints; a missing one is an error naming it.
//! - `list [-A]`: a table of waypoints and whether they are programmed.
//! - `status`: the waypoints' status conditions.
//!
//! # Testing
//! [`execute`] takes the output writer and reaches the cluster through the kubeconfig named by
//! [`ClusterArgs`], so tests point one at a local server that replays recorded responses. The
//! commands themselves ([`apply`], [`delete`], [`list`], [`status`]) take a [`Session`], whose
//! `kube::Client` may as well be built on a `tower_test` mock.

#![forbid(unsafe_code)]

mod apply;
mod args;
mod client;
mod delete;
mod error;
mod gateway;
mod generate;
mod list;
mod status;
mod table;

use std::io::Write;

pub use apply::{FIELD_MANAGER, apply};
pub use args::{
    ApplyArgs, ClusterArgs, DeleteArgs, GenerateArgs, ListArgs, StatusArgs, TrafficType,
    WaypointArgs,
};
pub use client::{Session, connect};
pub use delete::delete;
pub use error::Error;
pub use gateway::{GATEWAY_CLASS, Waypoint};
pub use generate::generate;
pub use list::list;
pub use status::status;

/// The `waypoint` subcommands that talk to Kubernetes (or, for `generate`, print what would be
/// sent).
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print a waypoint Gateway as YAML (no cluster needed).
    Generate(GenerateArgs),
    /// Apply a waypoint Gateway to the cluster (server-side apply).
    Apply(ApplyArgs),
    /// Delete waypoints by name, or all of them in the namespace with --all.
    Delete(DeleteArgs),
    /// List waypoints in the namespace, or in all namespaces with -A.
    List(ListArgs),
    /// Show the status conditions of the namespace's waypoints.
    Status(StatusArgs),
}

/// Runs `cmd`, printing to stdout.
///
/// # Errors
/// Whatever [`execute`] returns, with its causes attached.
pub async fn run(cmd: Command) -> anyhow::Result<()> {
    let mut out = std::io::stdout();
    execute(cmd, &mut out).await?;
    out.flush()?;
    Ok(())
}

/// Runs `cmd`, printing to `out`; the kubeconfig named by the command's flags picks the cluster.
///
/// # Errors
/// [`Error`] names the cause: no kubeconfig, cluster unreachable, Gateway API CRDs missing,
/// namespace or waypoint not found, forbidden, a timeout waiting for readiness.
pub async fn execute(cmd: Command, out: &mut (dyn Write + Send)) -> Result<(), Error> {
    match cmd {
        Command::Generate(args) => {
            let yaml = generate(&Waypoint::from_args(&args.waypoint, args.namespace)?)?;
            out.write_all(yaml.as_bytes()).map_err(Error::Output)
        }
        Command::Apply(args) => {
            let session = connect(&args.cluster).await?;
            apply::apply(&session, &args, out).await
        }
        Command::Delete(args) => {
            let session = connect(&args.cluster).await?;
            delete::delete(&session, &args, out).await
        }
        Command::List(args) => {
            let session = connect(&args.cluster).await?;
            list::list(&session, &args, out).await
        }
        Command::Status(args) => {
            let session = connect(&args.cluster).await?;
            status::status(&session, &args, out).await
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Command,
    }

    /// clap's own checks of every subcommand's flags (duplicate shorts, bad defaults).
    #[test]
    fn flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[tokio::test]
    async fn generate_prints_yaml_without_a_cluster() {
        let cli = Cli::try_parse_from(["waypoint", "generate", "-n", "bookinfo", "--for", "all"]);
        let mut out = Vec::new();
        let result = match cli {
            Ok(cli) => execute(cli.cmd, &mut out).await,
            Err(e) => panic!("{e}"),
        };
        assert!(result.is_ok(), "{result:?}");
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("  namespace: bookinfo\n"), "{text}");
        assert!(text.contains("    istio.io/waypoint-for: all\n"), "{text}");
    }
}
