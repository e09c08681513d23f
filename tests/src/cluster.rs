//! A scene for shared mode: two "nodes" (network namespaces joined by a veth, each routing
//! for its pods through a bridge) with an agent each, and "pods" (namespaces on a node's
//! bridge), some enrolled (their `netns` in the config file) and some not. The cgroup
//! programs attach to a child cgroup made here, and pod commands run inside it.

use crate::cleanup::{self, Registration};
use crate::netns::ip;
use crate::{NetNs, Process, probe};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
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

pub struct Node {
    pub name: String,
    pub ns: NetNs,
    /// 10.20.<index>.0/24 is this node's pod network.
    pub index: u8,
}

pub struct ClusterPod {
    pub name: String,
    pub node: usize,
    pub ip: Ipv4Addr,
    pub ns: NetNs,
    pub enrolled: bool,
}

impl ClusterPod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.ip, port))
    }

    pub fn identity(&self) -> String {
        format!("spiffe://cluster.local/ns/default/sa/{}", self.name)
    }
}

pub struct Cluster {
    pub dir: PathBuf,
    pub ztunnel: PathBuf,
    pub ca_dir: PathBuf,
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
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("10.20.{}.1/24", i + 1),
                "dev",
                "br0",
            ])?;
            ip(&["-n", ns.name(), "link", "set", "br0", "up"])?;
            let out = ns
                .command("sysctl")
                .args(["-qw", "net.ipv4.ip_forward=1"])
                .output()?;
            anyhow::ensure!(
                out.status.success(),
                "sysctl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
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
        let node_link = link.a_name.clone();

        let mut cluster_pods = Vec::new();
        for (k, (name, node, enrolled)) in pods.iter().enumerate() {
            let n = &nodes[*node];
            let ns = NetNs::new("mp")?;
            let ip4 = Ipv4Addr::new(10, 20, n.index, 10 + k as u8);
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
            cluster_pods.push(ClusterPod {
                name: name.to_string(),
                node: *node,
                ip: ip4,
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
        let c = Cluster {
            dir,
            ztunnel,
            ca_dir,
            cgroup: Cgroup::new()?,
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
        let mut y = String::from("workloads:\n");
        for p in &self.pods {
            writeln!(
                y,
                "- uid: Kubernetes//v1/Pod/default/{name}\n  name: {name}\n  namespace: default\n  serviceAccount: {name}\n  workloadIps: [\"{ip}\"]\n  protocol: {proto}\n  node: {node}\n  services: {{}}",
                name = p.name,
                ip = p.ip,
                proto = if p.enrolled { "HBONE" } else { "TCP" },
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

    /// Starts node `i`'s agent in shared mode and waits until it is ready and has enrolled
    /// its pods.
    pub fn start_agent(&self, i: usize) -> anyhow::Result<NodeAgent> {
        let node = &self.nodes[i];
        let mut cmd = node.ns.command_keeping_mounts(&self.ztunnel);
        cmd.env("LOCAL_XDS_PATH", self.config_path())
            .env("XDS_ADDRESS", "")
            .env("PROXY_MODE", "shared")
            .env("NODE_NAME", &node.name)
            .env("LOCAL_CA_DIR", &self.ca_dir)
            .env("EBPF_CGROUP", &self.cgroup.path)
            .env("RUST_LOG", "info");
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
