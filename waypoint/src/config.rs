//! Settings of `waypoint run`: flags with environment fallbacks (Istio's names where the
//! agent has them), validated into a plain [`Config`].

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;
use waypoint_rules::ObjectRef;
use ztunnel::config::{ConfigError, WorkloadInfo, parse_secret_ttl};

/// Flags of `waypoint run`.
#[derive(Clone, Debug, clap::Args)]
pub struct RunArgs {
    /// Folder of Kubernetes YAML (HTTPRoute, VirtualService, DestinationRule,
    /// AuthorizationPolicy); re-read when it changes.
    #[arg(long, env = "WAYPOINT_CONFIG_DIR")]
    pub config_dir: PathBuf,
    /// Istio's local configuration file (workloads and services), as the node agents read it.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: PathBuf,
    /// Folder in Istio's plug-in CA layout (ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem).
    #[arg(long, env = "LOCAL_CA_DIR")]
    pub local_ca_dir: PathBuf,
    /// This waypoint's workload, `namespace/name/service-account`: its identity.
    #[arg(long, env = "PROXY_WORKLOAD_INFO")]
    pub workload_info: String,
    /// The waypoint's Gateway name (in the workload's namespace; default `waypoint`).
    #[arg(long, env = "WAYPOINT_NAME", default_value = "waypoint")]
    pub gateway: String,
    /// Trust domain of identities (default `cluster.local`).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Cluster name in metrics (default `Kubernetes`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// This waypoint's network (default: the unnamed network).
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// Data-plane worker threads, each with its own upstream pools (default 2, but at most
    /// half the CPUs), besides the control thread.
    #[arg(long, env = "WAYPOINT_WORKER_THREADS", default_value_t = ztunnel::workers::default_count())]
    pub worker_threads: usize,
    /// Lifetime of the waypoint's certificate (default 24h, renewed at half-life).
    #[arg(long, env = "SECRET_TTL", default_value = "24h")]
    pub secret_ttl: String,
    /// Log filter (tracing's env-filter syntax; default `info`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

/// Where each listener binds.
#[derive(Clone, Debug)]
pub struct Listeners {
    pub hbone: SocketAddr,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

impl Default for Listeners {
    /// Istio's ports: HBONE 15008, admin 15000 on loopback, metrics 15020, readiness 15021;
    /// `[::]` is dual-stack (see [`ztunnel::proxy::bind`]).
    fn default() -> Self {
        let any = |p| SocketAddr::from((Ipv6Addr::UNSPECIFIED, p));
        Self {
            hbone: any(15008),
            admin: SocketAddr::from((Ipv4Addr::LOCALHOST, 15000)),
            metrics: any(15020),
            readiness: any(15021),
        }
    }
}

/// Everything the waypoint needs, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub config_dir: PathBuf,
    pub local_xds_path: PathBuf,
    pub local_ca_dir: PathBuf,
    pub workload: WorkloadInfo,
    /// The waypoint's Gateway.
    pub gateway: ObjectRef,
    pub trust_domain: String,
    pub cluster_id: String,
    pub network: String,
    pub worker_threads: usize,
    pub secret_ttl: Duration,
    pub listeners: Listeners,
    /// How often the rules folder and the local file are checked for changes.
    pub reload_interval: Duration,
}

impl TryFrom<RunArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: RunArgs) -> Result<Self, ConfigError> {
        let bad = |setting, problem: String| ConfigError { setting, problem };
        let parts: Vec<&str> = a.workload_info.split('/').collect();
        let [ns, name, sa] = parts.as_slice() else {
            return Err(bad(
                "PROXY_WORKLOAD_INFO",
                format!(
                    "`{}`: expected namespace/name/service-account",
                    a.workload_info
                ),
            ));
        };
        if [ns, name, sa].iter().any(|p| p.is_empty()) {
            return Err(bad(
                "PROXY_WORKLOAD_INFO",
                format!("`{}`: a part is empty", a.workload_info),
            ));
        }
        if !a.config_dir.is_dir() {
            return Err(bad(
                "WAYPOINT_CONFIG_DIR",
                format!("{}: not a folder", a.config_dir.display()),
            ));
        }
        if a.worker_threads == 0 {
            return Err(bad("WAYPOINT_WORKER_THREADS", "must be at least 1".into()));
        }
        let secret_ttl = parse_secret_ttl(&a.secret_ttl).map_err(|e| bad("SECRET_TTL", e))?;
        Ok(Config {
            gateway: ObjectRef::new(ns, &a.gateway),
            workload: WorkloadInfo {
                namespace: ns.to_string(),
                name: name.to_string(),
                service_account: sa.to_string(),
            },
            config_dir: a.config_dir,
            local_xds_path: a.local_xds_path,
            local_ca_dir: a.local_ca_dir,
            trust_domain: a.trust_domain,
            cluster_id: a.cluster_id,
            network: a.network,
            worker_threads: a.worker_threads,
            secret_ttl,
            listeners: Listeners::default(),
            reload_interval: Duration::from_millis(500),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dir: &std::path::Path, secret_ttl: &str) -> RunArgs {
        RunArgs {
            config_dir: dir.to_owned(),
            local_xds_path: dir.join("local.yaml"),
            local_ca_dir: dir.to_owned(),
            workload_info: "app/waypoint/waypoint".into(),
            gateway: "waypoint".into(),
            trust_domain: "cluster.local".into(),
            cluster_id: "Kubernetes".into(),
            network: String::new(),
            worker_threads: 1,
            secret_ttl: secret_ttl.into(),
            log: "info".into(),
        }
    }

    #[test]
    fn secret_ttl_must_be_from_a_minute_to_a_year() {
        let dir = tempfile::tempdir().expect("tempdir");
        for (ttl, want) in [("60s", 60), ("24h", 86_400), ("8760h", 31_536_000)] {
            let c = Config::try_from(args(dir.path(), ttl)).expect(ttl);
            assert_eq!(c.secret_ttl, Duration::from_secs(want), "{ttl}");
        }
        for ttl in ["59s", "0", "8761h", "100000000000000000h", "soon"] {
            let e = Config::try_from(args(dir.path(), ttl))
                .expect_err(ttl)
                .to_string();
            assert!(e.starts_with("SECRET_TTL") && e.contains(ttl), "{e}");
        }
    }
}
