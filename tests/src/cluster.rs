//! A scene for shared mode: two "nodes" (network namespaces joined by a veth, each routing
//! for its pods through a bridge) with an agent each, and "pods" (namespaces on a node's
//! bridge), some enrolled (their `netns` in the config file) and some not. The cgroup
//! programs attach to a child cgroup made here, and pod commands run inside it. Each node's
//! agent pins its maps and links in a folder of its own on the cluster's own bpffs (see
//! [`PinRoot`]).

use crate::cleanup::{self, Registration};
use crate::netns::ip;
use crate::{NetNs, Process, probe};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A child cgroup v2 folder, removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
    _cleanup: Registration,
}

impl Cgroup {
    pub fn new() -> anyhow::Result<Self> {
        let root = PathBuf::from("/sys/fs/cgroup");
        let root = if root.join("cgroup.controllers").exists() {
            root
        } else {
            root.join("unified")
        };
        let path = root.join(crate::unique("mesh-test-"));
        std::fs::create_dir(&path)?;
        let p = path.clone();
        Ok(Cgroup {
            path,
            _cleanup: cleanup::register(move || {
                // Whatever still runs in it goes back to the parent first.
                if let (Ok(procs), Some(parent)) =
                    (std::fs::read_to_string(p.join("cgroup.procs")), p.parent())
                {
                    for pid in procs.lines() {
                        let _ = std::fs::write(parent.join("cgroup.procs"), pid);
                    }
                }
                let _ = std::fs::remove_dir(&p);
            }),
        })
    }
}

/// A bpf filesystem of one cluster's own, mounted at a unique folder, holding each node
/// agent's pin folder (`<root>/<node name>`). Nothing is mounted at or pinned under the host's
/// `/sys/fs/bpf` (mounting a bpffs there would leave the kernel's `progs.debug` and
/// `maps.debug` behind). On drop, whatever the agents left pinned is detached (`ztunnel
/// uninstall`), the filesystem is unmounted and the folder removed, even when a test failed.
pub struct PinRoot {
    pub path: PathBuf,
    _cleanup: Registration,
}

impl PinRoot {
    fn new(ztunnel: &Path, nodes: &[&str]) -> anyhow::Result<Self> {
        let path = std::env::temp_dir().join(crate::unique("mesh-bpffs-"));
        std::fs::create_dir_all(&path)?;
        let (root, bin) = (path.clone(), ztunnel.to_owned());
        let dirs: Vec<PathBuf> = nodes.iter().map(|n| path.join(n)).collect();
        let cleanup = cleanup::register(move || {
            for dir in dirs {
                if dir.exists() {
                    let _ = Command::new(&bin)
                        .arg("uninstall")
                        .arg("--bpf-pin-dir")
                        .arg(&dir)
                        .output();
                }
            }
            // Lazily: an agent still running (holding its pin folder open) must not keep
            // the mount alive in the host's tree; it goes when the last user does.
            let _ = Command::new("umount").arg("-l").arg(&root).output();
            let _ = std::fs::remove_dir_all(&root);
        });
        let out = Command::new("mount")
            .args(["-t", "bpf", "-o", "mode=0700", "bpf"])
            .arg(&path)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "mounting a bpf filesystem at {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(PinRoot {
            path,
            _cleanup: cleanup,
        })
    }
}

/// A program attached to a cgroup, as `bpftool cgroup show` lists it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct AttachedProgram {
    pub id: u32,
    /// bpftool's name for the attach type, e.g. `cgroup_inet4_connect`.
    pub attach_type: String,
    pub name: String,
}

/// Runs `bpftool` with `args`: its stdout, or an error with its stderr.
pub fn bpftool(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("bpftool").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "bpftool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The programs attached to the cgroup folder `cgroup` (`bpftool cgroup show`), sorted.
pub fn cgroup_programs(cgroup: &Path) -> anyhow::Result<Vec<AttachedProgram>> {
    let text = bpftool(&["cgroup", "show", &cgroup.display().to_string()])?;
    let mut programs = Vec::new();
    for line in text.lines() {
        // `ID AttachType AttachFlags Name`; the flags column may be empty.
        let words: Vec<&str> = line.split_whitespace().collect();
        let (Some(id), Some(attach_type), Some(name)) = (
            words.first().and_then(|w| w.parse().ok()),
            words.get(1),
            words.last(),
        ) else {
            continue;
        };
        programs.push(AttachedProgram {
            id,
            attach_type: attach_type.to_string(),
            name: name.to_string(),
        });
    }
    programs.sort();
    Ok(programs)
}

/// How many `sk_lookup` links are attached to the network namespace `ns` (by its inode, from
/// `bpftool link show`).
pub fn sk_lookup_links(ns: &NetNs) -> anyhow::Result<usize> {
    use std::os::unix::fs::MetadataExt as _;
    let ino = std::fs::metadata(ns.path())?.ino();
    let text = bpftool(&["link", "show"])?;
    let needle = format!("netns_ino {ino} ");
    Ok(text
        .lines()
        .filter(|l| (l.to_string() + " ").contains(&needle) && l.contains("sk_lookup"))
        .count())
}

/// The number of entries of the map pinned at `pin` (`bpftool map dump`), and the dump.
pub fn map_entries(pin: &Path) -> anyhow::Result<(usize, String)> {
    let text = bpftool(&["map", "dump", "pinned", &pin.display().to_string()])?;
    let n = text
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Found ")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| {
            anyhow::anyhow!("no element count in the dump of {}:\n{text}", pin.display())
        })?;
    Ok((n, text))
}

pub struct Node {
    pub name: String,
    pub ns: NetNs,
    /// 10.20.<index>.0/24 and fd00:20:<index>::/64 are this node's pod network.
    pub index: u8,
}

pub struct ClusterPod {
    pub name: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub ns: NetNs,
    pub enrolled: bool,
}

impl ClusterPod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip6, port))
    }

    pub fn identity(&self) -> String {
        format!("spiffe://cluster.local/ns/default/sa/{}", self.name)
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub ztunnel: PathBuf,
    pub ca_dir: PathBuf,
    /// Declared before `cgroup`, so that the links are detached before the cgroup goes.
    pub pins: PinRoot,
    pub cgroup: Cgroup,
    pub nodes: Vec<Node>,
    pub pods: Vec<ClusterPod>,
    /// The interface on node 0 towards node 1: every packet between the nodes crosses it.
    pub node_link: String,
    _link: crate::netns::Veth,
    _dir: Registration,
}

impl Cluster {
    /// Two nodes; `pods` lists (name, node index 0 or 1, enrolled).
    pub fn new(bin_dir: &Path, pods: &[(&str, usize, bool)]) -> anyhow::Result<Self> {
        crate::require_root();
        let ztunnel = bin_dir.join("ztunnel");
        anyhow::ensure!(
            ztunnel.exists(),
            "{} not found: build it first",
            ztunnel.display()
        );
        let dir = std::env::temp_dir().join(crate::unique("mesh-cluster-"));
        std::fs::create_dir_all(&dir)?;
        let d = dir.clone();
        let dir_guard = cleanup::register(move || {
            let _ = std::fs::remove_dir_all(&d);
        });
        let mut nodes = Vec::new();
        for i in 0..2u8 {
            let ns = NetNs::new("mn")?;
            ip(&["-n", ns.name(), "link", "add", "br0", "type", "bridge"])?;
            // A fixed address, as CNI bridges have: otherwise the bridge takes the lowest of
            // its ports' addresses, and changes it (leaving the pods' ARP entries for the
            // gateway stale for seconds) when that port's pod goes away.
            ip(&[
                "-n",
                ns.name(),
                "link",
                "set",
                "br0",
                "address",
                &format!("02:00:0a:14:{:02x}:01", i + 1),
            ])?;
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("10.20.{}.1/24", i + 1),
                "dev",
                "br0",
            ])?;
            add_addr6(&ns, &format!("fd00:20:{}::1/64", i + 1), "br0")?;
            ip(&["-n", ns.name(), "link", "set", "br0", "up"])?;
            ns.sysctl(&["net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])?;
            nodes.push(Node {
                name: format!("node-{}", i + 1),
                ns,
                index: i + 1,
            });
        }
        // The link between the nodes, and a route on each to the other's pods.
        let link = crate::netns::Veth::new(
            &nodes[0].ns,
            Ipv4Addr::new(10, 30, 0, 1),
            &nodes[1].ns,
            Ipv4Addr::new(10, 30, 0, 2),
        )?;
        ip(&[
            "-n",
            nodes[0].ns.name(),
            "route",
            "add",
            "10.20.2.0/24",
            "via",
            "10.30.0.2",
        ])?;
        ip(&[
            "-n",
            nodes[1].ns.name(),
            "route",
            "add",
            "10.20.1.0/24",
            "via",
            "10.30.0.1",
        ])?;
        add_addr6(&nodes[0].ns, "fd00:30::1/64", &link.a_name)?;
        add_addr6(&nodes[1].ns, "fd00:30::2/64", &link.b_name)?;
        for (from, to, via) in [
            (0, "fd00:20:2::/64", "fd00:30::2"),
            (1, "fd00:20:1::/64", "fd00:30::1"),
        ] {
            ip(&[
                "-n",
                nodes[from].ns.name(),
                "-6",
                "route",
                "add",
                to,
                "via",
                via,
            ])?;
        }
        let node_link = link.a_name.clone();

        let mut cluster_pods = Vec::new();
        for (k, (name, node, enrolled)) in pods.iter().enumerate() {
            let n = &nodes[*node];
            let ns = NetNs::new("mp")?;
            let ip4 = Ipv4Addr::new(10, 20, n.index, 10 + k as u8);
            let ip6 = Ipv6Addr::new(
                0xfd00,
                0x20,
                u16::from(n.index),
                0,
                0,
                0,
                0,
                0x10 + k as u16,
            );
            let base = crate::unique("p");
            let (inside, outside) = (format!("{base}i"), format!("{base}o"));
            ip(&[
                "link",
                "add",
                &inside,
                "netns",
                ns.name(),
                "type",
                "veth",
                "peer",
                "name",
                &outside,
                "netns",
                n.ns.name(),
            ])?;
            ip(&[
                "-n",
                n.ns.name(),
                "link",
                "set",
                &outside,
                "master",
                "br0",
                "up",
            ])?;
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{ip4}/24"),
                "dev",
                &inside,
            ])?;
            add_addr6(&ns, &format!("{ip6}/64"), &inside)?;
            ip(&["-n", ns.name(), "link", "set", &inside, "up"])?;
            ip(&[
                "-n",
                ns.name(),
                "route",
                "add",
                "default",
                "via",
                &format!("10.20.{}.1", n.index),
            ])?;
            ip(&[
                "-n",
                ns.name(),
                "-6",
                "route",
                "add",
                "default",
                "via",
                &format!("fd00:20:{}::1", n.index),
            ])?;
            cluster_pods.push(ClusterPod {
                name: name.to_string(),
                node: *node,
                ip: ip4,
                ip6,
                ns,
                enrolled: *enrolled,
            });
        }
        let ca_dir = dir.join("ca");
        let out = Command::new(&ztunnel)
            .arg("create-ca")
            .arg(&ca_dir)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "create-ca: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cgroup = Cgroup::new()?;
        let node_names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        let pins = PinRoot::new(&ztunnel, &node_names)?;
        let c = Cluster {
            dir,
            ztunnel,
            ca_dir,
            pins,
            cgroup,
            nodes,
            pods: cluster_pods,
            node_link,
            _link: link,
            _dir: dir_guard,
        };
        c.write_config("")?;
        Ok(c)
    }

    pub fn pod(&self, name: &str) -> &ClusterPod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// Istio's local file: every pod a workload (enrolled ones HBONE with their `netns`),
    /// plus `extra` YAML.
    pub fn write_config(&self, extra: &str) -> anyhow::Result<()> {
        self.write_config_with(&[], extra)
    }

    /// As [`Cluster::write_config`], with the pods named in `waypoints` written as waypoints
    /// are: speaking HBONE themselves, not enrolled.
    pub fn write_config_with(&self, waypoints: &[&str], extra: &str) -> anyhow::Result<()> {
        let mut y = String::from("workloads:\n");
        for p in &self.pods {
            let waypoint = waypoints.contains(&p.name.as_str());
            writeln!(
                y,
                "- uid: Kubernetes//v1/Pod/default/{name}\n  name: {name}\n  namespace: default\n  trustDomain: cluster.local\n  serviceAccount: {name}\n  workloadIps: [\"{ip}\", \"{ip6}\"]\n  protocol: {proto}\n  node: {node}\n  services: {{}}",
                name = p.name,
                ip = p.ip,
                ip6 = p.ip6,
                proto = if p.enrolled || waypoint {
                    "HBONE"
                } else {
                    "TCP"
                },
                node = self.nodes[p.node].name,
            )?;
            if p.enrolled {
                writeln!(y, "  netns: {}", p.ns.path().display())?;
            }
        }
        y.push_str(extra);
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(tmp, self.config_path())?;
        Ok(())
    }

    /// Node `i`'s agent's pin folder (`EBPF_PIN_DIR`).
    pub fn pin_dir(&self, i: usize) -> PathBuf {
        self.pins.path.join(&self.nodes[i].name)
    }

    /// The command that runs node `i`'s agent in shared mode, in the node's namespace.
    pub fn agent_command(&self, i: usize) -> Command {
        let node = &self.nodes[i];
        let mut cmd = node.ns.command_keeping_mounts(&self.ztunnel);
        cmd.env("LOCAL_XDS_PATH", self.config_path())
            .env("XDS_ADDRESS", "")
            .env("PROXY_MODE", "shared")
            .env("NODE_NAME", &node.name)
            .env("LOCAL_CA_DIR", &self.ca_dir)
            .env("EBPF_CGROUP", &self.cgroup.path)
            .env("EBPF_PIN_DIR", self.pin_dir(i))
            .env_remove("EBPF_OBJECT")
            .env("RUST_LOG", "info,mesh_redirect=debug");
        cmd
    }

    /// `ztunnel uninstall` for node `i`'s pin folder: (success, stdout, stderr).
    pub fn uninstall(&self, i: usize) -> anyhow::Result<(bool, String, String)> {
        let out = Command::new(&self.ztunnel)
            .arg("uninstall")
            .arg("--bpf-pin-dir")
            .arg(self.pin_dir(i))
            .output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }

    /// Starts node `i`'s agent in shared mode and waits until it is ready and has enrolled
    /// its pods.
    pub fn start_agent(&self, i: usize) -> anyhow::Result<NodeAgent> {
        let node = &self.nodes[i];
        let cmd = self.agent_command(i);
        let log = self.dir.join(format!("ztunnel-{}.log", node.name));
        let process = Process::spawn(cmd, &log)?;
        let want = self
            .pods
            .iter()
            .filter(|p| p.node == i && p.enrolled)
            .count();
        let ready = crate::eventually_opt(Duration::from_secs(20), || {
            if process.exited().is_some() {
                return Some(false);
            }
            let up = matches!(
                probe::http_get(
                    &node.ns,
                    SocketAddr::from(([127, 0, 0, 1], 15021)),
                    "/healthz/ready"
                ),
                Ok((200, _))
            );
            (up && process.log().matches("pod enrolled").count() >= want).then_some(true)
        });
        anyhow::ensure!(
            ready == Some(true),
            "agent of {} did not become ready:\n{}",
            node.name,
            process.log()
        );
        Ok(NodeAgent { process })
    }

    /// Starts the waypoint proxy in `pod`'s namespace with the rules of `config_dir`, as
    /// the Gateway `waypoint`, and waits until it is ready.
    pub fn start_waypoint(&self, pod: &ClusterPod, config_dir: &Path) -> anyhow::Result<Process> {
        self.start_waypoint_with(pod, config_dir, &[])
    }

    /// [`Self::start_waypoint`] with more environment variables for the waypoint.
    pub fn start_waypoint_with(
        &self,
        pod: &ClusterPod,
        config_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Process> {
        let bin = self.ztunnel.with_file_name("waypoint");
        anyhow::ensure!(bin.exists(), "{} not found: build it first", bin.display());
        let mut cmd = pod.ns.command(&bin);
        cmd.envs(env.iter().copied());
        cmd.arg("run")
            .env("WAYPOINT_CONFIG_DIR", config_dir)
            .env("LOCAL_XDS_PATH", self.config_path())
            .env("LOCAL_CA_DIR", &self.ca_dir)
            .env(
                "PROXY_WORKLOAD_INFO",
                format!("default/{}/{}", pod.name, pod.name),
            )
            .env("WAYPOINT_NAME", "waypoint")
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("waypoint-{}.log", pod.name));
        let process = Process::spawn(cmd, &log)?;
        process.wait_ready(&pod.ns, &format!("waypoint in {}", pod.name))?;
        Ok(process)
    }

    /// `/metrics` of whatever listens on 15020 in `ns` (an agent's node, a waypoint's pod).
    pub fn metrics_in(ns: &NetNs) -> anyhow::Result<String> {
        let (status, body) =
            probe::http_get(ns, SocketAddr::from(([127, 0, 0, 1], 15020)), "/metrics")?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// A command run inside `pod`'s namespace and in the test cgroup, as a pod's process.
    pub fn pod_command(&self, pod: &ClusterPod, program: &str) -> Command {
        let mut c = pod.ns.command(program);
        let procs = self.cgroup.path.join("cgroup.procs");
        // SAFETY: after fork, only a write(2) through std's file API before exec.
        unsafe {
            c.pre_exec(move || std::fs::write(&procs, "0"));
        }
        c
    }

    /// `curl` from `pod` (in the cgroup): (exit code, stdout, stderr).
    pub fn curl(&self, pod: &ClusterPod, args: &[&str]) -> anyhow::Result<(i32, String, String)> {
        let out = self
            .pod_command(pod, "curl")
            .args(["-sS", "--max-time", "5"])
            .args(args)
            .output()?;
        Ok((
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    }
}

/// A node agent process.
pub struct NodeAgent {
    pub process: Process,
}

impl NodeAgent {
    pub fn metrics(&self, node: &Node) -> anyhow::Result<String> {
        let (status, body) = probe::http_get(
            &node.ns,
            SocketAddr::from(([127, 0, 0, 1], 15020)),
            "/metrics",
        )?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }
}

/// Adds an IPv6 address; it works at once, as the test namespaces do no duplicate address
/// detection (see `NetNs::new`).
fn add_addr6(ns: &NetNs, addr: &str, dev: &str) -> anyhow::Result<()> {
    ip(&["-n", ns.name(), "addr", "add", addr, "dev", dev])
}
