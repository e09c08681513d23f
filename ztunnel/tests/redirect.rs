//! The eBPF redirection for real, without the rest of the agent (root required; skipped
//! otherwise).
//!
//! Topology, all of it removed on drop even when an assertion fails:
//! - a child cgroup `ztunnel-redirect-test-<pid>` of the cgroup v2 root, holding this process,
//!   with the cgroup programs attached to it;
//! - namespace A (the enrolled "pod", 10.98.0.1/24) and namespace B (a peer, 10.98.0.2/24), joined
//!   by a veth pair. Nothing is added to the host namespace, and no traffic leaves it.

use std::{
    fs::{self, File},
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use ztunnel::redirect::{RedirectConfig, Redirector, netns_cookie};

/// The agent's socket mark.
const MARK: u32 = 0x539;
/// How long a connection that should happen may take.
const PATIENCE: Duration = Duration::from_secs(3);
/// How long to wait for a connection that should not happen.
const QUIET: Duration = Duration::from_millis(300);

#[test]
fn redirects_an_enrolled_namespace() -> Result<()> {
    if !is_root() {
        eprintln!("skipped: loading eBPF programs and making namespaces needs root");
        return Ok(());
    }
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            "info,ztunnel=debug,mesh_redirect=debug",
        ))
        .try_init();

    // Guards first, so that they are dropped last (after the redirector).
    let pid = std::process::id();
    let cgroup = CgroupGuard::create(pid)?;
    let a = NetnsGuard::add(format!("ztr-a-{pid}"))?;
    let b = NetnsGuard::add(format!("ztr-b-{pid}"))?;
    sh(&[
        "ip", "link", "add", "ztr-va", "netns", &a.name, "type", "veth", "peer", "name", "ztr-vb",
        "netns", &b.name,
    ])?;
    a.ip(&["addr", "add", "10.98.0.1/24", "dev", "ztr-va"])?;
    a.ip(&["link", "set", "ztr-va", "up"])?;
    b.ip(&["addr", "add", "10.98.0.2/24", "dev", "ztr-vb"])?;
    b.ip(&["link", "set", "ztr-vb", "up"])?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let _in_runtime = runtime.enter();
    let mut redirector = Redirector::load(&RedirectConfig {
        cgroup: cgroup.path.clone(),
        mark: MARK,
        log_level: 0,
        pin_dir: None,
        object: None,
    })?;

    let netns_a = File::open(a.path())?;
    let cookie_a = netns_cookie(&netns_a)?;
    let cookie_b = netns_cookie(&File::open(b.path())?)?;
    let cookie_host = netns_cookie(&File::open("/proc/self/ns/net")?)?;
    ensure!(
        cookie_a != cookie_b && cookie_a != cookie_host && cookie_b != cookie_host,
        "netns cookies not distinct: A {cookie_a}, B {cookie_b}, host {cookie_host}"
    );

    let (outbound, inbound) = in_netns(&a, || {
        Ok((
            TcpListener::bind("127.0.0.1:15001")?,
            TcpListener::bind("0.0.0.0:15006")?,
        ))
    })?;
    let real_b = in_netns(&b, || Ok(TcpListener::bind("10.98.0.2:9090")?))?;

    redirector.enroll(cookie_a, &netns_a, &inbound)?;
    redirector.enroll(cookie_a, &netns_a, &inbound)?; // idempotent

    // Outbound: a plain connect from A is captured by 15001, which learns the destination.
    let dst: SocketAddr = "10.98.0.2:8080".parse()?;
    let mut client = in_netns(&a, move || Ok(TcpStream::connect_timeout(&dst, PATIENCE)?))?;
    let (mut accepted, peer) = accept_within(&outbound, PATIENCE)?
        .context("the 15001 listener did not accept the captured connection")?;
    ensure!(peer == client.local_addr()?, "accepted peer {peer}");
    let original = so_original_dst(&accepted).context("SO_ORIGINAL_DST on the accepted socket")?;
    ensure!(
        SocketAddr::V4(original) == dst,
        "SO_ORIGINAL_DST {original}"
    );
    ensure!(
        client.peer_addr()? == dst,
        "getpeername {}",
        client.peer_addr()?
    );
    echo(&mut client, &mut accepted)?;
    drop((client, accepted));

    // From here on the programs log (to tracing, through the log crate).
    redirector.set_log_level(4)?;
    ensure!(redirector.set_log_level(6).is_err(), "log level 6 accepted");

    // The agent's own (marked) sockets are not captured.
    let real_dst: SocketAddr = "10.98.0.2:9090".parse()?;
    let mut marked = in_netns(&a, move || marked_connect(real_dst))?;
    let (mut real_accepted, _) = accept_within(&real_b, PATIENCE)?
        .context("the real listener in B did not accept the marked connection")?;
    ensure!(
        accept_within(&outbound, QUIET)?.is_none(),
        "the marked connection reached 15001"
    );
    ensure!(marked.peer_addr()? == real_dst);
    echo(&mut marked, &mut real_accepted)?;
    drop((marked, real_accepted));

    // Inbound: B -> A:8080 (nothing listens there) is steered to A's 15006 listener.
    let a_dst: SocketAddr = "10.98.0.1:8080".parse()?;
    let mut from_b = in_netns(&b, move || {
        Ok(TcpStream::connect_timeout(&a_dst, PATIENCE)?)
    })?;
    let (mut steered, peer) = accept_within(&inbound, PATIENCE)?
        .context("the 15006 listener did not accept the inbound connection")?;
    ensure!(
        steered.local_addr()? == a_dst,
        "local address {}",
        steered.local_addr()?
    );
    ensure!(peer == from_b.local_addr()?, "inbound peer {peer}");
    echo(&mut from_b, &mut steered)?;
    drop((from_b, steered));

    // Unenrolled: nothing is captured any more, in either direction.
    redirector.unenroll(cookie_a)?;
    redirector.unenroll(cookie_a)?;
    redirector.unenroll(cookie_b)?; // never enrolled
    let mut plain = in_netns(&a, move || {
        Ok(TcpStream::connect_timeout(&real_dst, PATIENCE)?)
    })?;
    let (mut real_accepted, _) = accept_within(&real_b, PATIENCE)?
        .context("after unenroll, the connection did not reach the real listener")?;
    ensure!(
        accept_within(&outbound, QUIET)?.is_none(),
        "captured after unenroll"
    );
    echo(&mut plain, &mut real_accepted)?;
    drop((plain, real_accepted));
    let refused = in_netns(&b, move || Ok(TcpStream::connect_timeout(&a_dst, PATIENCE)))?;
    ensure!(
        refused.is_err(),
        "after unenroll, B -> A:8080 still connected"
    );
    ensure!(
        accept_within(&inbound, QUIET)?.is_none(),
        "steered after unenroll"
    );

    drop(redirector);
    Ok(())
}

// -------------------------------------------------------------------------------------------
// Clean-up guards

/// A child cgroup holding this process; on drop the process goes back to its cgroup and the
/// child is removed.
struct CgroupGuard {
    path: PathBuf,
    home: PathBuf,
    moved: bool,
}

impl CgroupGuard {
    fn create(pid: u32) -> Result<Self> {
        let root = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
            Path::new("/sys/fs/cgroup")
        } else {
            Path::new("/sys/fs/cgroup/unified")
        };
        let own = fs::read_to_string("/proc/self/cgroup")?
            .lines()
            .find_map(|line| line.strip_prefix("0::").map(str::to_owned))
            .context("no cgroup v2 line in /proc/self/cgroup")?;
        let home = root.join(own.trim_start_matches('/'));
        let path = root.join(format!("ztunnel-redirect-test-{pid}"));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let mut guard = Self {
            path,
            home,
            moved: false,
        };
        fs::write(guard.path.join("cgroup.procs"), pid.to_string())
            .with_context(|| format!("moving into {}", guard.path.display()))?;
        guard.moved = true;
        Ok(guard)
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if self.moved {
            let procs = self.home.join("cgroup.procs");
            if let Err(err) = fs::write(&procs, std::process::id().to_string()) {
                eprintln!("clean-up: moving back to {}: {err}", self.home.display());
            }
        }
        if let Err(err) = fs::remove_dir(&self.path) {
            eprintln!("clean-up: rmdir {}: {err}", self.path.display());
        }
    }
}

/// A network namespace with `lo` up, deleted on drop (with the veth end in it).
struct NetnsGuard {
    name: String,
}

impl NetnsGuard {
    fn add(name: String) -> Result<Self> {
        sh(&["ip", "netns", "add", &name])?;
        let guard = Self { name };
        guard.ip(&["link", "set", "lo", "up"])?;
        Ok(guard)
    }

    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `ip -n <name> <args>`.
    fn ip(&self, args: &[&str]) -> Result<()> {
        let mut all = vec!["ip", "-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh(&all)
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        if let Err(err) = sh(&["ip", "netns", "del", &self.name]) {
            eprintln!("clean-up: {err:#}");
        }
    }
}

// -------------------------------------------------------------------------------------------
// Helpers

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn sh(args: &[&str]) -> Result<()> {
    let status = Command::new(args[0])
        .args(&args[1..])
        .status()
        .with_context(|| format!("running {args:?}"))?;
    ensure!(status.success(), "{args:?} failed: {status}");
    Ok(())
}

/// Runs `f` on a thread inside the namespace; the sockets it makes stay in that namespace.
fn in_netns<T: Send + 'static>(
    ns: &NetnsGuard,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let path = ns.path();
    std::thread::spawn(move || -> Result<T> {
        let netns = File::open(&path).with_context(|| path.display().to_string())?;
        // SAFETY: setns on an fd that `netns` keeps open; it changes only this thread, which
        // ends after `f`.
        let rc = unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) };
        ensure!(
            rc == 0,
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        f()
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the namespace thread panicked"))?
}

/// A connection from a socket with the agent's mark.
fn marked_connect(dst: SocketAddr) -> Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(dst),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_mark(MARK)?;
    socket.connect_timeout(&dst.into(), PATIENCE)?;
    Ok(socket.into())
}

/// Accepts one connection within `wait`, or `None`.
fn accept_within(
    listener: &TcpListener,
    wait: Duration,
) -> Result<Option<(TcpStream, SocketAddr)>> {
    listener.set_nonblocking(true)?;
    let until = Instant::now() + wait;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => {
                stream.set_nonblocking(false)?;
                return Ok(Some((stream, peer)));
            }
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > until {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, as the agent asks it.
fn so_original_dst(socket: &TcpStream) -> Result<SocketAddrV4> {
    // SAFETY: an all-zero sockaddr_in is a valid value.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` is writable for `len` bytes; the fd is open for the call.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_IP,
            80, // SO_ORIGINAL_DST
            (&raw mut addr).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        bail!("getsockopt: {}", std::io::Error::last_os_error());
    }
    ensure!(
        i32::from(addr.sin_family) == libc::AF_INET,
        "family {}",
        addr.sin_family
    );
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    ))
}

/// Data flows both ways.
fn echo(client: &mut TcpStream, server: &mut TcpStream) -> Result<()> {
    client.set_read_timeout(Some(PATIENCE))?;
    server.set_read_timeout(Some(PATIENCE))?;
    let mut buf = [0u8; 4];
    client.write_all(b"ping")?;
    server.read_exact(&mut buf)?;
    ensure!(&buf == b"ping");
    server.write_all(b"pong")?;
    client.read_exact(&mut buf)?;
    ensure!(&buf == b"pong");
    Ok(())
}
