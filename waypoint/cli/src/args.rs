//! The commands' flags, named as `istioctl waypoint` names them.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Which cluster and namespace a command talks to.
#[derive(Debug, Clone, Default, Args)]
pub struct ClusterArgs {
    /// The namespace. Default: the kubeconfig context's namespace, else `default`.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// The kubeconfig file. Default: `$KUBECONFIG`, else `~/.kube/config`, else the in-cluster
    /// service account.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context. Default: its `current-context`.
    #[arg(long)]
    pub context: Option<String>,
}

/// What a waypoint Gateway is made of.
#[derive(Debug, Clone, Args)]
pub struct WaypointArgs {
    /// The waypoint's name (`none` is reserved by Istio). Default: `waypoint`.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// The traffic the waypoint handles (label `istio.io/waypoint-for`). Default: no label, so
    /// that istiod applies the class default (`service`).
    #[arg(long = "for", value_enum)]
    pub traffic_type: Option<TrafficType>,
    /// The Istio revision to label the waypoint with (`istio.io/rev`). Default: none.
    #[arg(short = 'r', long)]
    pub revision: Option<String>,
}

/// The values of `istio.io/waypoint-for`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TrafficType {
    /// Traffic addressed to services.
    Service,
    /// Traffic addressed to workloads (pod IPs).
    Workload,
    /// Both.
    All,
    /// Neither: the waypoint is deployed but unused.
    None,
}

impl TrafficType {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            TrafficType::Service => "service",
            TrafficType::Workload => "workload",
            TrafficType::All => "all",
            TrafficType::None => "none",
        }
    }
}

/// `waypoint generate`.
#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub waypoint: WaypointArgs,
    /// The namespace to write into the Gateway. Default: none written, as istioctl does.
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
}

/// `waypoint apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub waypoint: WaypointArgs,
    /// Label the namespace `istio.io/use-waypoint=<name>` once the waypoint is applied.
    #[arg(long)]
    pub enroll_namespace: bool,
    /// With --enroll-namespace: replace another waypoint the namespace already uses.
    #[arg(long)]
    pub overwrite: bool,
    /// Wait until the Gateway's `Programmed` condition is `True`.
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// How long --wait waits (Go duration: `90s`, `2m`, `1m30s`). Default: 90s.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub waypoint_timeout: Duration,
    /// How often --wait asks (tests shorten it). Default: 1s, as istioctl.
    #[arg(long, default_value = "1s", value_parser = parse_duration, hide = true)]
    pub poll_interval: Duration,
}

/// `waypoint delete`.
#[derive(Debug, Clone, Args)]
pub struct DeleteArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// The waypoints to delete. Default: the one named by --name.
    #[arg(conflicts_with_all = ["all", "revision"])]
    pub names: Vec<String>,
    /// The waypoint to delete when no names are given. Default: `waypoint`.
    #[arg(long, default_value = "waypoint")]
    pub name: String,
    /// Delete every waypoint (Gateway of class istio-waypoint) in the namespace.
    #[arg(long)]
    pub all: bool,
    /// Delete the namespace's waypoints labeled with this revision (`istio.io/rev`).
    #[arg(short = 'r', long, conflicts_with = "all")]
    pub revision: Option<String>,
}

/// `waypoint list`.
#[derive(Debug, Clone, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// List waypoints in all namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
}

/// `waypoint status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only this waypoint. Default: every waypoint in the namespace, as istioctl.
    #[arg(long)]
    pub name: Option<String>,
    /// Wait until each waypoint is programmed before printing its status.
    #[arg(short = 'w', long)]
    pub wait: bool,
    /// How long --wait waits (Go duration). Default: 90s.
    #[arg(long, default_value = "90s", value_parser = parse_duration)]
    pub waypoint_timeout: Duration,
    /// How often --wait asks. Default: 1s.
    #[arg(long, default_value = "1s", value_parser = parse_duration, hide = true)]
    pub poll_interval: Duration,
}

/// Parses a Go duration (`90s`, `1m30s`, `500ms`, `1h`), as istioctl's duration flags take.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: want e.g. 90s, 2m, 1m30s, 500ms");
    let mut total = Duration::ZERO;
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    if rest == "0" {
        return Ok(total);
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += Duration::try_from_secs_f64(number * seconds).map_err(|_| bad())?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "90", "s", "5d", "1m-3s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} accepted");
        }
    }
}
