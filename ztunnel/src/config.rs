//! Settings: command-line flags, each with Istio's environment variable as fallback, turned
//! into a plain [`Config`] that the rest of the agent takes. Tests build `Config` directly.

use clap::builder::BoolishValueParser;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Flags of `ztunnel run` (the default command).
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Istio's local configuration file (`workloads`, `services`, `policies`); re-read when
    /// it changes.
    #[arg(long, env = "LOCAL_XDS_PATH")]
    pub local_xds_path: Option<PathBuf>,
    /// xDS server address; empty means none (only the local file).
    #[arg(long, env = "XDS_ADDRESS", default_value = "")]
    pub xds_address: String,
    /// `dedicated`: serve one workload from inside its network namespace; `shared`: serve every
    /// enrolled pod of the node (needs eBPF redirection).
    #[arg(long, env = "PROXY_MODE", default_value = "shared")]
    pub proxy_mode: String,
    /// The workload served in dedicated mode, as `namespace/name/service-account`.
    #[arg(long, env = "PROXY_WORKLOAD_INFO")]
    pub proxy_workload_info: Option<String>,
    /// This node's name; workloads whose `node` matches are local.
    #[arg(long, env = "NODE_NAME", default_value = "")]
    pub node_name: String,
    /// Trust domain of identities (default `cluster.local`).
    #[arg(long, env = "TRUST_DOMAIN", default_value = "cluster.local")]
    pub trust_domain: String,
    /// Cluster name in metrics and defaults (default `Kubernetes`).
    #[arg(long, env = "CLUSTER_ID", default_value = "Kubernetes")]
    pub cluster_id: String,
    /// This node's network (default: the unnamed network).
    #[arg(long, env = "NETWORK", default_value = "")]
    pub network: String,
    /// `SO_MARK` on the agent's sockets (default 1337 = 0x539).
    #[arg(long, env = "PACKET_MARK", default_value_t = mesh_common::DEFAULT_PACKET_MARK)]
    pub packet_mark: u32,
    /// Data-plane worker threads, each with its own HBONE pool: a count, or as Istio also
    /// takes it a share of the CPUs such as `50%` (default 2, but at most half the CPUs);
    /// configuration, admin and accepting run on one more, the control thread.
    #[arg(long, env = "ZTUNNEL_WORKER_THREADS")]
    pub worker_threads: Option<String>,
    /// SOCKS5 listener on 127.0.0.1:15080 (default off).
    #[arg(long, env = "UNSTABLE_ENABLE_SOCKS5", value_parser = BoolishValueParser::new(), default_value = "false")]
    pub enable_socks5: bool,
    /// Connect to local workloads from the original client's address. Default: on in shared
    /// mode (the agent sets up each pod's namespace for it), off in dedicated mode (where the
    /// node's routing must bring the replies back, as for Istio's TPROXY).
    #[arg(long, env = "ENABLE_ORIG_SRC", value_parser = BoolishValueParser::new())]
    pub enable_orig_src: Option<bool>,
    /// Folder in Istio's plug-in CA layout: ca-cert.pem, ca-key.pem, root-cert.pem,
    /// cert-chain.pem.
    #[arg(long, env = "LOCAL_CA_DIR")]
    pub local_ca_dir: Option<PathBuf>,
    /// Lifetime of workload certificates, e.g. `24h`, `30m`, `90s` (default 24h).
    #[arg(long, env = "SECRET_TTL", default_value = "24h")]
    pub secret_ttl: String,
    /// How long to let open connections finish after SIGTERM (default 5s).
    #[arg(long, env = "DRAIN_TIMEOUT", default_value = "5s")]
    pub drain_timeout: String,
    /// cgroup v2 folder the redirection programs attach to (shared mode; default: the cgroup
    /// v2 root, `/sys/fs/cgroup` or, on hybrid hosts, `/sys/fs/cgroup/unified`).
    #[arg(long = "cgroup", env = "EBPF_CGROUP")]
    pub cgroup: Option<PathBuf>,
    /// Diagnostics of the eBPF programs: 0 off (default) to 5 trace.
    #[arg(long, env = "EBPF_LOG_LEVEL", default_value_t = 0)]
    pub ebpf_log_level: u32,
    /// Folder on a bpf filesystem where the redirection's maps and links are pinned, so that
    /// they outlive an agent restart; bpffs is mounted at /sys/fs/bpf if the folder is under it
    /// and none is mounted. Empty: nothing pinned, everything detached when the agent exits
    /// (default `/sys/fs/bpf/mesh`).
    #[arg(long, env = "EBPF_PIN_DIR", default_value = crate::redirect::DEFAULT_PIN_DIR)]
    pub bpf_pin_dir: String,
    /// eBPF object file to load instead of the one built into the binary (default: the
    /// built-in one).
    #[arg(long, env = "EBPF_OBJECT")]
    pub ebpf_object: Option<PathBuf>,
    /// Log filter (tracing's env-filter syntax; default `info`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProxyMode {
    Dedicated,
    Shared,
}

/// The workload a dedicated-mode agent serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkloadInfo {
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// Where each listener binds.
#[derive(Clone, Debug)]
pub struct Listeners {
    pub outbound: SocketAddr,
    pub inbound_plaintext: SocketAddr,
    pub hbone: SocketAddr,
    pub socks5: Option<SocketAddr>,
    pub admin: SocketAddr,
    pub metrics: SocketAddr,
    pub readiness: SocketAddr,
}

impl Listeners {
    /// Istio's ports: data, metrics and readiness ports on every address (`[::]`, which takes
    /// IPv4 too, as Istio's ztunnel binds), admin and SOCKS5 on loopback.
    pub fn standard(socks5: bool) -> Self {
        let any = |p| SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), p);
        let lo = |p| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p);
        Self {
            outbound: any(mesh_common::OUTBOUND_PORT),
            inbound_plaintext: any(mesh_common::INBOUND_PLAINTEXT_PORT),
            hbone: any(mesh_common::HBONE_PORT),
            socks5: socks5.then(|| lo(mesh_common::SOCKS5_PORT)),
            admin: lo(mesh_common::ADMIN_PORT),
            metrics: any(mesh_common::METRICS_PORT),
            readiness: any(mesh_common::READINESS_PORT),
        }
    }
}

/// Everything the agent needs to run, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub local_xds_path: PathBuf,
    pub proxy_mode: ProxyMode,
    pub workload_info: Option<WorkloadInfo>,
    pub node_name: String,
    pub trust_domain: String,
    pub cluster_id: String,
    pub network: String,
    pub packet_mark: Option<u32>,
    pub worker_threads: usize,
    pub enable_orig_src: bool,
    pub local_ca_dir: PathBuf,
    pub secret_ttl: Duration,
    pub drain_timeout: Duration,
    pub listeners: Listeners,
    /// Port of the HBONE listener on peers.
    pub hbone_port: u16,
    /// How often the local file is checked for changes.
    pub reload_interval: Duration,
    /// Shared mode: where the redirection programs attach.
    pub cgroup: PathBuf,
    pub ebpf_log_level: u32,
    /// Shared mode: where the redirection's maps and links are pinned; `None`: not pinned.
    pub bpf_pin_dir: Option<PathBuf>,
    /// Shared mode: an eBPF object file to load instead of the built-in one.
    pub ebpf_object: Option<PathBuf>,
}

/// The cgroup v2 root: `/sys/fs/cgroup` on unified hosts, `/sys/fs/cgroup/unified` on hybrid.
pub fn cgroup_v2_root() -> PathBuf {
    let unified = PathBuf::from("/sys/fs/cgroup");
    if unified.join("cgroup.controllers").exists() {
        unified
    } else {
        unified.join("unified")
    }
}

/// A setting that cannot be used; names the setting and what was expected.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {problem}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub problem: String,
}

fn err(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting,
        problem: problem.into(),
    }
}

/// Workload certificates live from a minute to a year.
const SECRET_TTLS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(60)..=Duration::from_secs(365 * 24 * 3600);

/// `SECRET_TTL`, for the agent and the waypoint alike; the error says what is expected.
///
/// # Errors
/// If `v` is not a duration from 60s to 8760h.
pub fn parse_secret_ttl(v: &str) -> Result<Duration, String> {
    parse_duration(v)
        .filter(|d| SECRET_TTLS.contains(d))
        .ok_or_else(|| format!("`{v}`: expected a duration from 60s to 8760h (a year), like 24h"))
}

/// `n` threads, or `p%` of the CPUs this process may use (rounded up, at least one).
fn worker_count(v: &str) -> Option<usize> {
    let n = match v.trim().strip_suffix('%') {
        Some(p) => {
            let p: usize = p.trim().parse().ok().filter(|p| (1..=100).contains(p))?;
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cpus * p).div_ceil(100)
        }
        None => v.trim().parse().ok()?,
    };
    (n >= 1).then_some(n)
}

/// Parses `24h`, `30m`, `90s`, `500ms` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map_or((s, ""), |i| s.split_at(i));
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        _ => return None,
    })
}

impl TryFrom<Args> for Config {
    type Error = ConfigError;

    fn try_from(a: Args) -> Result<Self, ConfigError> {
        if !a.xds_address.is_empty() {
            return Err(err(
                "XDS_ADDRESS",
                format!(
                    "`{}`: an xDS control plane is not supported yet; leave it empty and use LOCAL_XDS_PATH",
                    a.xds_address
                ),
            ));
        }
        let local_xds_path = a.local_xds_path.ok_or_else(|| {
            err(
                "LOCAL_XDS_PATH",
                "required (there is no control plane): the path of Istio's local YAML file",
            )
        })?;
        let proxy_mode = match a.proxy_mode.as_str() {
            "dedicated" => ProxyMode::Dedicated,
            "shared" => {
                if a.node_name.is_empty() {
                    return Err(err(
                        "NODE_NAME",
                        "required in shared mode: the node whose workloads this agent serves",
                    ));
                }
                ProxyMode::Shared
            }
            other => {
                return Err(err(
                    "PROXY_MODE",
                    format!("`{other}`: expected `dedicated` or `shared`"),
                ));
            }
        };
        let workload_info = match (&a.proxy_workload_info, proxy_mode) {
            (Some(s), _) => {
                let parts: Vec<&str> = s.split('/').collect();
                match parts.as_slice() {
                    [ns, name, sa] if !ns.is_empty() && !name.is_empty() && !sa.is_empty() => {
                        Some(WorkloadInfo {
                            namespace: ns.to_string(),
                            name: name.to_string(),
                            service_account: sa.to_string(),
                        })
                    }
                    _ => {
                        return Err(err(
                            "PROXY_WORKLOAD_INFO",
                            format!("`{s}`: expected `namespace/name/service-account`"),
                        ));
                    }
                }
            }
            (None, ProxyMode::Dedicated) => {
                return Err(err(
                    "PROXY_WORKLOAD_INFO",
                    "required in dedicated mode: `namespace/name/service-account`",
                ));
            }
            (None, ProxyMode::Shared) => None,
        };
        let local_ca_dir = a.local_ca_dir.ok_or_else(|| {
            err(
                "LOCAL_CA_DIR",
                "required: a folder with ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem",
            )
        })?;
        let secret_ttl = parse_secret_ttl(&a.secret_ttl).map_err(|e| err("SECRET_TTL", e))?;
        let drain_timeout = parse_duration(&a.drain_timeout).ok_or_else(|| {
            err(
                "DRAIN_TIMEOUT",
                format!("`{}`: expected a duration like 5s", a.drain_timeout),
            )
        })?;
        let worker_threads = match &a.worker_threads {
            None => crate::workers::default_count(),
            Some(v) => worker_count(v).ok_or_else(|| {
                err(
                    "ZTUNNEL_WORKER_THREADS",
                    format!(
                        "`{v}`: expected a count of at least 1 or a share of the CPUs like 50%"
                    ),
                )
            })?,
        };
        if a.packet_mark == 0 && proxy_mode == ProxyMode::Shared {
            return Err(err(
                "PACKET_MARK",
                "0 (no mark) in shared mode: the redirection tells the agent's own sockets by their mark, and would send them back to the agent",
            ));
        }
        if a.packet_mark == mesh_common::ORIG_SRC_MARK {
            return Err(err(
                "PACKET_MARK",
                format!(
                    "{:#x}: that mark routes replies to the clients' addresses back to the agent; choose another",
                    mesh_common::ORIG_SRC_MARK
                ),
            ));
        }
        if a.trust_domain.is_empty() || a.trust_domain.contains('/') {
            return Err(err(
                "TRUST_DOMAIN",
                format!("`{}`: expected a domain like cluster.local", a.trust_domain),
            ));
        }
        Ok(Config {
            local_xds_path,
            proxy_mode,
            workload_info,
            node_name: a.node_name,
            trust_domain: a.trust_domain,
            cluster_id: a.cluster_id,
            network: a.network,
            packet_mark: (a.packet_mark != 0).then_some(a.packet_mark),
            worker_threads,
            enable_orig_src: a.enable_orig_src.unwrap_or(proxy_mode == ProxyMode::Shared),
            local_ca_dir,
            secret_ttl,
            drain_timeout,
            listeners: Listeners::standard(a.enable_socks5),
            hbone_port: mesh_common::HBONE_PORT,
            reload_interval: Duration::from_millis(500),
            cgroup: a.cgroup.unwrap_or_else(cgroup_v2_root),
            ebpf_log_level: a.ebpf_log_level,
            bpf_pin_dir: (!a.bpf_pin_dir.is_empty()).then(|| PathBuf::from(a.bpf_pin_dir)),
            ebpf_object: a.ebpf_object,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn config(flags: &[&str]) -> Result<Config, ConfigError> {
        let mut argv = vec!["ztunnel"];
        // A later flag replaces an earlier one of the same name.
        for f in flags {
            let name = f.split('=').next().unwrap_or_default();
            argv.retain(|a| a.split('=').next() != Some(name));
            argv.push(f);
        }
        Config::try_from(Cli::try_parse_from(argv).unwrap().args)
    }

    const OK: &[&str] = &[
        "--local-xds-path=/x.yaml",
        "--local-ca-dir=/ca",
        "--proxy-mode=dedicated",
        "--proxy-workload-info=ns/name/sa",
    ];

    #[test]
    fn dedicated_mode_parses() {
        let c = config(OK).unwrap();
        assert_eq!(c.proxy_mode, ProxyMode::Dedicated);
        assert_eq!(c.workload_info.unwrap().service_account, "sa");
        assert_eq!(c.secret_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(c.packet_mark, Some(1337));
        assert!(!c.enable_orig_src);
    }

    #[test]
    fn clients_addresses_are_kept_by_default_in_shared_mode_only() {
        let shared = ["--proxy-mode=shared", "--node-name=n1"];
        let mut flags = OK.to_vec();
        flags.extend(shared);
        assert!(config(&flags).unwrap().enable_orig_src);
        flags.push("--enable-orig-src=false");
        assert!(!config(&flags).unwrap().enable_orig_src);
        let mut flags = OK.to_vec();
        flags.push("--enable-orig-src=true");
        assert!(config(&flags).unwrap().enable_orig_src);
    }

    #[test]
    fn worker_threads_are_a_count_or_a_share_of_the_cpus() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        for (v, want) in [("3", 3), ("100%", cpus), ("1%", 1)] {
            let mut flags = OK.to_vec();
            let flag = format!("--worker-threads={v}");
            flags.push(&flag);
            assert_eq!(config(&flags).unwrap().worker_threads, want, "{v}");
        }
        for bad in ["0", "0%", "150%", "two"] {
            let mut flags = OK.to_vec();
            let flag = format!("--worker-threads={bad}");
            flags.push(&flag);
            let e = config(&flags).unwrap_err().to_string();
            assert!(
                e.starts_with("ZTUNNEL_WORKER_THREADS") && e.contains(bad),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_values_name_the_setting() {
        let mut flags = OK.to_vec();
        flags.push("--proxy-workload-info=ns/name");
        let e = config(&flags).unwrap_err().to_string();
        assert!(
            e.starts_with("PROXY_WORKLOAD_INFO") && e.contains("ns/name"),
            "{e}"
        );

        let mut flags = OK.to_vec();
        flags.push("--secret-ttl=soon");
        let e = config(&flags).unwrap_err().to_string();
        assert!(e.starts_with("SECRET_TTL") && e.contains("soon"), "{e}");
        flags.push("--secret-ttl=100000000000000000h");
        assert!(
            config(&flags)
                .unwrap_err()
                .to_string()
                .starts_with("SECRET_TTL")
        );

        let mut flags = OK.to_vec();
        flags.extend(["--proxy-mode=shared", "--node-name=n1", "--packet-mark=0"]);
        let e = config(&flags).unwrap_err().to_string();
        assert!(
            e.starts_with("PACKET_MARK") && e.contains("shared mode"),
            "{e}"
        );

        let mut flags = OK.to_vec();
        flags.push("--packet-mark=273");
        let e = config(&flags).unwrap_err().to_string();
        assert!(e.starts_with("PACKET_MARK") && e.contains("0x111"), "{e}");

        let mut flags = OK.to_vec();
        flags.push("--xds-address=istiod:15012");
        assert!(
            config(&flags)
                .unwrap_err()
                .to_string()
                .starts_with("XDS_ADDRESS")
        );
    }

    #[test]
    fn pin_dir_defaults_and_can_be_turned_off() {
        let c = config(OK).unwrap();
        assert_eq!(c.bpf_pin_dir, Some(PathBuf::from("/sys/fs/bpf/mesh")));
        assert_eq!(c.ebpf_object, None);
        let mut flags = OK.to_vec();
        flags.push("--bpf-pin-dir=");
        assert_eq!(config(&flags).unwrap().bpf_pin_dir, None);
        flags.push("--bpf-pin-dir=/sys/fs/bpf/other");
        flags.push("--ebpf-object=/x.o");
        let c = config(&flags).unwrap();
        assert_eq!(c.bpf_pin_dir, Some(PathBuf::from("/sys/fs/bpf/other")));
        assert_eq!(c.ebpf_object, Some(PathBuf::from("/x.o")));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("x"), None);
    }
}
