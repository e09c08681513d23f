//! A ready-made scene: pods (each its own namespace, and in dedicated mode its own "node")
//! joined by veth pairs, a CA, the local config file, and agents started as Istio's ztunnel
//! is started (with the same environment variables).

use crate::cleanup::{self, Registration};
use crate::netns::Veth;
use crate::probe;
use crate::{NetNs, Process};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pod: its namespace, addresses and identity.
pub struct Pod {
    pub name: String,
    pub service_account: String,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub ns: NetNs,
}

impl Pod {
    pub fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), port)
    }

    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.ip6), port)
    }

    pub fn identity(&self) -> String {
        format!(
            "spiffe://cluster.local/ns/default/sa/{}",
            self.service_account
        )
    }
}

/// The service the scene defines in front of the server pod (port 80 to 8080).
pub const SERVICE_HOST: &str = "web.default.svc.cluster.local";
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

/// Two pods on one link: `client` at 10.77.0.1 and fd00:77::1, `server` at 10.77.0.2 and
/// fd00:77::2, and a service
/// [`SERVICE_HOST`] at [`SERVICE_VIP`]:80 in front of the server's port 8080.
pub struct Topology {
    pub dir: PathBuf,
    /// The `ztunnel` binary that agents run.
    pub ztunnel: PathBuf,
    pub ca_dir: PathBuf,
    pub client: Pod,
    pub server: Pod,
    pub link: Veth,
    _dir: Registration,
}

impl Topology {
    /// The scene with the binaries next to the running executable (see [`crate::bin_dir`]).
    pub fn new() -> anyhow::Result<Self> {
        Self::with_binaries(&crate::bin_dir())
    }

    /// The scene with the binaries of `bin_dir`.
    pub fn with_binaries(bin_dir: &Path) -> anyhow::Result<Self> {
        crate::require_root();
        let ztunnel = bin_dir.join("ztunnel");
        anyhow::ensure!(
            ztunnel.exists(),
            "{} not found: build it first (`cargo build -p ztunnel`)",
            ztunnel.display()
        );
        let dir = std::env::temp_dir().join(crate::unique("mesh-e2e-"));
        std::fs::create_dir_all(&dir)?;
        let d = dir.clone();
        let dir_guard = cleanup::register(move || {
            let _ = std::fs::remove_dir_all(&d);
        });
        let client = Pod {
            name: "client".into(),
            service_account: "client".into(),
            ip: Ipv4Addr::new(10, 77, 0, 1),
            ip6: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 1),
            ns: NetNs::new("mc")?,
        };
        let server = Pod {
            name: "server".into(),
            service_account: "server".into(),
            ip: Ipv4Addr::new(10, 77, 0, 2),
            ip6: Ipv6Addr::new(0xfd00, 0x77, 0, 0, 0, 0, 0, 2),
            ns: NetNs::new("ms")?,
        };
        let link = Veth::new(&client.ns, client.ip, &server.ns, server.ip)?;
        for (pod, dev) in [(&client, &link.a_name), (&server, &link.b_name)] {
            // `nodad`: usable at once, not after duplicate address detection.
            let addr = format!("{}/64", pod.ip6);
            let ns = pod.ns.name();
            crate::netns::ip(&["-n", ns, "addr", "add", &addr, "dev", dev, "nodad"])?;
        }
        let ca_dir = dir.join("ca");
        run(Command::new(&ztunnel).arg("create-ca").arg(&ca_dir))?;
        let t = Topology {
            dir,
            ztunnel,
            ca_dir,
            client,
            server,
            link,
            _dir: dir_guard,
        };
        t.write_config("")?;
        Ok(t)
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// Writes Istio's local config for both pods (HBONE), with `extra` YAML appended (for
    /// example a `policies:` section). Written atomically, as a config manager would.
    pub fn write_config(&self, extra: &str) -> anyhow::Result<()> {
        let mut y = String::from("workloads:\n");
        for (p, services) in [
            (&self.client, String::from("{}")),
            (
                &self.server,
                format!("{{\"default/{SERVICE_HOST}\": {{80: 8080}}}}"),
            ),
        ] {
            writeln!(
                y,
                "- uid: Kubernetes//v1/Pod/default/{name}\n  name: {name}\n  namespace: default\n  trustDomain: cluster.local\n  serviceAccount: {sa}\n  workloadIps: [\"{ip}\", \"{ip6}\"]\n  protocol: HBONE\n  node: node-{name}\n  services: {services}",
                name = p.name,
                sa = p.service_account,
                ip = p.ip,
                ip6 = p.ip6
            )?;
        }
        writeln!(
            y,
            "services:\n- name: web\n  namespace: default\n  hostname: {SERVICE_HOST}\n  vips: [\"/{SERVICE_VIP}\"]\n  ports: {{80: 8080}}"
        )?;
        y.push_str(extra);
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, y)?;
        std::fs::rename(tmp, self.config_path())?;
        Ok(())
    }

    /// Starts the agent of `pod` in dedicated mode with its CA folder `ca_dir`, and waits
    /// until it is ready.
    pub fn start_agent(&self, pod: &Pod, ca_dir: &Path) -> anyhow::Result<Agent> {
        self.start_agent_with(pod, ca_dir, &[])
    }

    /// [`Self::start_agent`] with more environment variables for the agent.
    pub fn start_agent_with(
        &self,
        pod: &Pod,
        ca_dir: &Path,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let mut cmd = pod.ns.command(&self.ztunnel);
        cmd.envs(env.iter().copied());
        cmd.env("LOCAL_XDS_PATH", self.config_path())
            .env("XDS_ADDRESS", "")
            .env("PROXY_MODE", "dedicated")
            .env(
                "PROXY_WORKLOAD_INFO",
                format!("default/{}/{}", pod.name, pod.service_account),
            )
            .env("NODE_NAME", format!("node-{}", pod.name))
            .env("TRUST_DOMAIN", "cluster.local")
            .env("CLUSTER_ID", "Kubernetes")
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env("LOCAL_CA_DIR", ca_dir)
            .env("RUST_LOG", "info");
        let log = self.dir.join(format!("ztunnel-{}.log", pod.name));
        let process = Process::spawn(cmd, &log)?;
        process.wait_ready(&pod.ns, &format!("agent of {}", pod.name))?;
        Ok(Agent { process })
    }
}

/// A running agent.
pub struct Agent {
    pub process: Process,
}

impl Agent {
    pub fn log(&self) -> String {
        self.process.log()
    }

    /// `/metrics` from inside `pod`'s namespace.
    pub fn metrics(&self, pod: &Pod) -> anyhow::Result<String> {
        let (status, body) = probe::http_get(
            &pod.ns,
            SocketAddr::from(([127, 0, 0, 1], 15020)),
            "/metrics",
        )?;
        anyhow::ensure!(status == 200, "/metrics answered {status}");
        Ok(body)
    }

    /// `/config_dump` from inside `pod`'s namespace.
    pub fn config_dump(&self, pod: &Pod) -> anyhow::Result<String> {
        let (status, body) = probe::http_get(
            &pod.ns,
            SocketAddr::from(([127, 0, 0, 1], 15000)),
            "/config_dump",
        )?;
        anyhow::ensure!(status == 200, "/config_dump answered {status}");
        Ok(body)
    }
}

/// The value of the first series of `name` whose labels contain all of `labels`.
pub fn metric(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
