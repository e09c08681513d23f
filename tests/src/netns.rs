//! Network namespaces and veth links, removed on drop.

use crate::cleanup::{self, Registration};
use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `ip` with `args`, failing with its output.
pub fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(())
}

/// A named network namespace (`ip netns add`) with `lo` up.
pub struct NetNs {
    name: String,
    _cleanup: Registration,
}

impl NetNs {
    pub fn new(prefix: &str) -> anyhow::Result<Self> {
        let name = crate::unique(prefix);
        ip(&["netns", "add", &name])?;
        let n = name.clone();
        let ns = NetNs {
            name: name.clone(),
            _cleanup: cleanup::register(move || {
                let _ = ip(&["netns", "del", &n]);
            }),
        };
        ip(&["-n", &name, "link", "set", "lo", "up"])?;
        // No IPv6 duplicate address detection for the interfaces made here (every address in
        // a test is unique): their link-local addresses stayed tentative for about 2 s, and
        // the first IPv6 connection across the nodes waited that long for its neighbours.
        if Path::new("/proc/sys/net/ipv6").exists() {
            ns.sysctl(&[
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ])?;
        }
        Ok(ns)
    }

    /// Sets kernel parameters (`name=value`) inside this namespace.
    pub fn sysctl(&self, settings: &[&str]) -> anyhow::Result<()> {
        let out = self.command("sysctl").arg("-qw").args(settings).output()?;
        anyhow::ensure!(
            out.status.success(),
            "sysctl {} in {}: {}",
            settings.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Runs `f` on a thread inside this namespace. Sockets made there stay in it, so a
    /// listener or stream created by `f` may be used from anywhere afterwards.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = self.path();
        std::thread::scope(|s| {
            s.spawn(|| {
                let file = File::open(&path).expect("open netns");
                // SAFETY: setns on this thread only, with a valid namespace fd.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    rc,
                    0,
                    "setns {}: {}",
                    path.display(),
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .expect("thread in netns panicked")
        })
    }

    /// A command whose process joins only this network namespace (`setns` before exec),
    /// keeping the host's mounts: unlike `ip netns exec`, which remounts `/sys` and so hides
    /// the cgroup tree.
    pub fn command_keeping_mounts(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        use std::os::unix::process::CommandExt;
        let mut c = Command::new(program);
        let path = self.path();
        // SAFETY: after fork, only open(2) and setns(2) before exec.
        unsafe {
            c.pre_exec(move || {
                let ns = File::open(&path)?;
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    /// A command run inside this namespace (`ip netns exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

/// A veth pair joining two namespaces, each end with an address of `/24`.
pub struct Veth {
    pub a_name: String,
    pub b_name: String,
    _cleanup: Registration,
}

impl Veth {
    pub fn new(a: &NetNs, a_ip: Ipv4Addr, b: &NetNs, b_ip: Ipv4Addr) -> anyhow::Result<Self> {
        let base = crate::unique("v");
        let (an, bn) = (format!("{base}a"), format!("{base}b"));
        ip(&[
            "link",
            "add",
            &an,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            &bn,
            "netns",
            b.name(),
        ])?;
        let (ns, n) = (a.name().to_owned(), an.clone());
        let veth = Veth {
            a_name: an.clone(),
            b_name: bn.clone(),
            // Deleting one end deletes both (and namespaces going away delete them too).
            _cleanup: cleanup::register(move || {
                let _ = ip(&["-n", &ns, "link", "del", &n]);
            }),
        };
        for (ns, dev, addr) in [(a, &an, a_ip), (b, &bn, b_ip)] {
            ip(&[
                "-n",
                ns.name(),
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                dev,
            ])?;
            ip(&["-n", ns.name(), "link", "set", dev, "up"])?;
        }
        Ok(veth)
    }
}
