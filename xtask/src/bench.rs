//! Whole-system benchmarks in interleaved rounds, medians reported as ratios against direct
//! TCP measured in the same run:
//! - `dedicated`: client pod -> SOCKS5 into its agent -> HBONE -> the server pod's agent;
//!   direct is the same client to the same server without the agents.
//! - `shared`: two nodes with an agent each; the client pod's plain `connect()` is redirected
//!   by eBPF (the bench process joins the watched cgroup for the mesh rounds and leaves it for
//!   the direct ones); direct goes to an unenrolled twin of the server pod on the same node,
//!   since the server pod's inbound is captured whenever it is enrolled.
//!
//! A third path, `relays`, is two plain TCP relays on the hops the agents take (in the
//! client's namespace on loopback, and beside the server), with no TLS and no HTTP/2: the
//! floor that any path through two user-space proxies pays on this machine.

#[path = "bench_waypoint.rs"]
mod waypoint;

use mesh_tests::cluster::{Cluster, NodeAgent};
use mesh_tests::{NetNs, Topology};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The proxies hand free pages back every 10 s (`ztunnel::memory::TRIM_EVERY`): what they
/// keep once the load is over shows this long after it.
pub const AT_REST_AFTER: Duration = Duration::from_secs(11);

const SOCKS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15080);
const ECHO_PORT: u16 = 8080;
const SINK_PORT: u16 = 8081;
/// The relays listen on the server's port plus this.
const RELAY_OFFSET: u16 = 10000;

/// How a bench client reaches the server.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Relays,
    Mesh,
}

const PATHS: [Path; 3] = [Path::Direct, Path::Relays, Path::Mesh];

enum Scene {
    Dedicated {
        t: Topology,
        agents: Vec<mesh_tests::Agent>,
    },
    Shared {
        c: Cluster,
        agents: Vec<NodeAgent>,
    },
}

impl Scene {
    fn client(&self) -> &NetNs {
        match self {
            Scene::Dedicated { t, .. } => &t.client.ns,
            Scene::Shared { c, .. } => &c.pod("client").ns,
        }
    }

    fn server(&self, path: Path, port: u16) -> SocketAddr {
        match (self, path) {
            (_, Path::Relays) => (std::net::Ipv4Addr::LOCALHOST, port + RELAY_OFFSET).into(),
            (Scene::Dedicated { t, .. }, _) => t.server.addr(port),
            (Scene::Shared { c, .. }, Path::Mesh) => c.pod("server").addr(port),
            (Scene::Shared { c, .. }, Path::Direct) => c.pod("twin").addr(port),
        }
    }

    /// Where the second relay runs: beside the server that the direct path reaches.
    fn far_side(&self) -> (&NetNs, std::net::IpAddr) {
        match self {
            Scene::Dedicated { t, .. } => (&t.server.ns, t.server.addr(0).ip()),
            Scene::Shared { c, .. } => (&c.pod("twin").ns, c.pod("twin").addr(0).ip()),
        }
    }

    fn agent_pids(&self) -> Vec<u32> {
        match self {
            Scene::Dedicated { agents, .. } => agents.iter().map(|a| a.process.pid()).collect(),
            Scene::Shared { agents, .. } => agents.iter().map(|a| a.process.pid()).collect(),
        }
    }

    /// Shared mode: joins (mesh) or leaves (direct) the cgroup the programs watch.
    fn select(&self, path: Path) -> anyhow::Result<()> {
        if let Scene::Shared { c, .. } = self {
            let cg = &c.cgroup.path;
            let procs: PathBuf = match path {
                Path::Mesh => cg.join("cgroup.procs"),
                Path::Direct | Path::Relays => cg.parent().unwrap_or(cg).join("cgroup.procs"),
            };
            std::fs::write(procs, std::process::id().to_string())?;
        }
        Ok(())
    }

    fn connect(&self, path: Path, port: u16) -> std::io::Result<TcpStream> {
        let dst = self.server(path, port);
        let s = match (self, path) {
            (Scene::Dedicated { .. }, Path::Mesh) => {
                mesh_tests::probe::socks5(self.client(), SOCKS, dst)?
            }
            _ => self.client().run(|| TcpStream::connect(dst))?,
        };
        s.set_nodelay(true)?;
        Ok(s)
    }
}

fn serve(listener: TcpListener, handler: fn(TcpStream)) {
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            std::thread::spawn(move || handler(s));
        }
    });
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let mut buf = [0u8; 65536];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Reads to EOF, then answers with the byte count.
fn sink(mut s: TcpStream) {
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    let _ = s.write_all(&total.to_be_bytes());
}

/// CPU of the relay threads: those running, and those that have ended.
struct RelayCpu {
    live: Vec<libc::pid_t>,
    ended_ns: u64,
}

static RELAY_CPU: Mutex<RelayCpu> = Mutex::new(RelayCpu {
    live: Vec::new(),
    ended_ns: 0,
});

/// A plain TCP relay: accepts on `listen` inside `ns` and connects, from `ns` too, to `to`;
/// a thread per direction, as simple as a proxy gets.
fn start_relay(ns: &NetNs, listen: SocketAddr, to: SocketAddr) -> anyhow::Result<()> {
    let listener = ns.run(|| TcpListener::bind(listen))?;
    let ns_file = std::fs::File::open(ns.path())?;
    std::thread::spawn(move || {
        // This thread (and the ones it starts) stays in `ns`, so that its connects leave from there.
        // SAFETY: setns on this thread only, with a valid namespace fd.
        if unsafe { libc::setns(ns_file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            eprintln!("bench: relay: setns: {}", std::io::Error::last_os_error());
            return;
        }
        for down in listener.incoming().flatten() {
            let Ok(up) = TcpStream::connect(to) else {
                continue;
            };
            let (Ok(down2), Ok(up2)) = (down.try_clone(), up.try_clone()) else {
                continue;
            };
            let _ = (down.set_nodelay(true), up.set_nodelay(true));
            std::thread::spawn(move || pipe(down, up));
            std::thread::spawn(move || pipe(up2, down2));
        }
    });
    Ok(())
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    if let Ok(mut cpu) = RELAY_CPU.lock() {
        cpu.live.push(tid);
    }
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf) {
        if n == 0 || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if let Ok(mut cpu) = RELAY_CPU.lock() {
        cpu.live.retain(|t| *t != tid);
        cpu.ended_ns += ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64;
    }
}

/// CPU seconds the relay threads have used so far.
fn relay_cpu_seconds() -> f64 {
    let Ok(cpu) = RELAY_CPU.lock() else {
        return 0.0;
    };
    let live: u64 = cpu
        .live
        .iter()
        .filter_map(|tid| {
            // The first field is the time on CPU, in nanoseconds.
            let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
            s.split_whitespace().next()?.parse::<u64>().ok()
        })
        .sum();
    (live + cpu.ended_ns) as f64 / 1e9
}

/// CPU seconds used so far by what carries `path`: the agents or the relays.
fn path_cpu_seconds(sc: &Scene, path: Path) -> f64 {
    match path {
        Path::Relays => relay_cpu_seconds(),
        _ => sc.agent_pids().iter().map(|p| cpu_seconds(*p)).sum(),
    }
}

/// Bytes per second of one stream for `secs`.
fn throughput(sc: &Scene, path: Path, secs: f64) -> anyhow::Result<f64> {
    let mut s = sc.connect(path, SINK_PORT)?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        s.write_all(&chunk)?;
        sent += chunk.len() as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    let mut n = [0u8; 8];
    s.read_exact(&mut n)?;
    anyhow::ensure!(
        u64::from_be_bytes(n) == sent,
        "sink saw a different byte count"
    );
    Ok(sent as f64 / start.elapsed().as_secs_f64())
}

/// Round-trip times (µs) of 64-byte request/response on one connection.
fn latencies(sc: &Scene, path: Path, n: usize) -> anyhow::Result<Vec<f64>> {
    let mut s = sc.connect(path, ECHO_PORT)?;
    let msg = [7u8; 64];
    let mut back = [0u8; 64];
    let mut out = Vec::with_capacity(n);
    for i in 0..n + 200 {
        let t = Instant::now();
        s.write_all(&msg)?;
        s.read_exact(&mut back)?;
        if i >= 200 {
            out.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    Ok(out)
}

/// Requests per second over `conns` connections, each ping-ponging as fast as it can.
fn requests_per_sec(sc: &Scene, path: Path, conns: usize, secs: f64) -> anyhow::Result<f64> {
    let streams: Vec<TcpStream> = (0..conns)
        .map(|_| sc.connect(path, ECHO_PORT))
        .collect::<Result<_, _>>()?;
    let done = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let (done, count) = (done.clone(), count.clone());
            std::thread::spawn(move || {
                let mut b = [0u8; 64];
                while !done.load(Ordering::Relaxed) {
                    if s.write_all(&b).is_err() || s.read_exact(&mut b).is_err() {
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    done.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// New connections per second, each carrying one 1-byte request and response.
fn connections_per_sec(sc: &Scene, path: Path, secs: f64) -> anyhow::Result<f64> {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        let mut s = sc.connect(path, ECHO_PORT)?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// CPU seconds (user + system) used so far by `pid`.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses): utime is the 14th field.
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks / hz
}

fn rss_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Resident memory and its anonymous part (heap, stacks), in MiB.
fn rss_and_anon(pid: u32) -> (f64, f64) {
    (rss_mib(pid, "VmRSS:"), rss_mib(pid, "RssAnon:"))
}

/// vCPU used by what carries `path` (both agents, or both relays) while 4 connections carry
/// `rate` requests per second in all.
fn cpu_at(sc: &Scene, path: Path, rate: u64, secs: f64) -> anyhow::Result<f64> {
    sc.select(path)?;
    let conns = 4u64;
    let mut streams: Vec<TcpStream> = (0..conns)
        .map(|_| sc.connect(path, ECHO_PORT))
        .collect::<Result<_, _>>()?;
    let before = path_cpu_seconds(sc, path);
    let start = Instant::now();
    let interval = Duration::from_secs_f64(conns as f64 / rate as f64);
    let mut next = Instant::now();
    let mut b = [0u8; 64];
    while start.elapsed().as_secs_f64() < secs {
        for s in &mut streams {
            s.write_all(&b)?;
        }
        for s in &mut streams {
            s.read_exact(&mut b)?;
        }
        next += interval;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    let after = path_cpu_seconds(sc, path);
    Ok((after - before) / start.elapsed().as_secs_f64())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v.get(((v.len() as f64 - 1.0) * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

/// Microseconds a `connect()` (+ close) takes from an unenrolled pod to a listener on its own
/// (non-loopback) address, with the hooks watching (the bench process in the cgroup) minus
/// without: what the connect hook costs a connection it does not redirect. Medians of
/// alternating batches.
fn connect_hook_cost(c: &Cluster, scene: &Scene, batches: usize, n: usize) -> anyhow::Result<f64> {
    let other = c.pod("other");
    let dst = other.addr(9999);
    let listener = other.ns.run(|| TcpListener::bind(dst))?;
    std::thread::spawn(move || {
        // Accept and drop: the cost measured is the client's connect().
        for s in listener.incoming() {
            drop(s);
        }
    });
    let mut per: [Vec<f64>; 2] = Default::default();
    for _ in 0..batches {
        for (i, path) in [Path::Direct, Path::Mesh].into_iter().enumerate() {
            scene.select(path)?;
            let start = Instant::now();
            other.ns.run(|| -> std::io::Result<()> {
                for _ in 0..n {
                    drop(TcpStream::connect(dst)?);
                }
                Ok(())
            })?;
            per[i].push(start.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
    }
    scene.select(Path::Direct)?;
    let [without, with] = per;
    Ok(median(with) - median(without))
}

fn start_servers(ns: &NetNs, ip: std::net::IpAddr) -> anyhow::Result<()> {
    serve(ns.run(|| TcpListener::bind((ip, ECHO_PORT)))?, echo);
    serve(ns.run(|| TcpListener::bind((ip, SINK_PORT)))?, sink);
    Ok(())
}

/// The relays path: loopback in the client's namespace, then beside the far server.
fn start_relays(sc: &Scene) -> anyhow::Result<()> {
    let (far, ip) = sc.far_side();
    for port in [ECHO_PORT, SINK_PORT] {
        let hop = SocketAddr::new(ip, port + RELAY_OFFSET);
        start_relay(far, hop, SocketAddr::new(ip, port))?;
        start_relay(sc.client(), sc.server(Path::Relays, port), hop)?;
    }
    Ok(())
}

fn scene(mode: &str, bins: &std::path::Path) -> anyhow::Result<Scene> {
    Ok(match mode {
        "dedicated" => {
            let t = Topology::with_binaries(bins)?;
            start_servers(&t.server.ns, t.server.addr(0).ip())?;
            let agents = vec![
                t.start_agent(&t.server, &t.ca_dir)?,
                t.start_agent(&t.client, &t.ca_dir)?,
            ];
            Scene::Dedicated { t, agents }
        }
        _ => {
            let c = Cluster::new(
                bins,
                &[
                    ("client", 0, true),
                    ("other", 0, false),
                    ("server", 1, true),
                    ("twin", 1, false),
                ],
            )?;
            for name in ["server", "twin"] {
                let pod = c.pod(name);
                start_servers(&pod.ns, pod.addr(0).ip())?;
            }
            let agents = vec![c.start_agent(0)?, c.start_agent(1)?];
            Scene::Shared { c, agents }
        }
    })
}

/// What `--only` may name: one measurement alone, repeated `rounds` times (to profile it).
pub const METRICS: [&str; 5] = ["throughput", "latency", "rps16", "cps", "cpu1000"];

pub fn run(rounds: usize, modes: &[&str], only: Option<&str>) -> anyhow::Result<()> {
    // A given build (for comparing two), or this checkout's release build.
    let bins = match std::env::var_os("MESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => crate::build(true)?,
    };
    for mode in modes {
        if *mode == "waypoint" {
            waypoint::run(rounds, &bins)?;
            continue;
        }
        let sc = scene(mode, &bins)?;
        start_relays(&sc)?;
        let result = measure(&sc, mode, rounds, only);
        // Whatever happened, leave the watched cgroup before it is removed.
        let _ = sc.select(Path::Direct);
        result?;
    }
    Ok(())
}

type Samples = std::collections::BTreeMap<&'static str, [Vec<f64>; 3]>;

fn measure(sc: &Scene, mode: &str, rounds: usize, only: Option<&str>) -> anyhow::Result<()> {
    let want = |k: &str| only.is_none_or(|o| o == k);
    let mut m = Samples::new();
    for round in 1..=rounds {
        eprintln!("bench: round {round} of {rounds}");
        for (i, path) in PATHS.into_iter().enumerate() {
            sc.select(path)?;
            let mut push = |k, v| m.entry(k).or_default()[i].push(v);
            if want("throughput") {
                let cpu_before = path_cpu_seconds(sc, path);
                let bytes_per_sec = throughput(sc, path, 3.0)?;
                let cpu = path_cpu_seconds(sc, path) - cpu_before;
                push("throughput", bytes_per_sec);
                if path != Path::Direct {
                    push("cpu_per_gb", cpu / (bytes_per_sec * 3.0 / 1e9));
                }
            }
            if want("latency") {
                let lat = latencies(sc, path, 5000)?;
                push("p50", percentile(&lat, 0.5));
                push("p99", percentile(&lat, 0.99));
            }
            if want("rps16") {
                push("rps16", requests_per_sec(sc, path, 16, 2.0)?);
            }
            // A relay starts two threads per connection: no floor for connection rates.
            if path != Path::Relays && want("cps") {
                push("cps", connections_per_sec(sc, path, 2.0)?);
            }
        }
    }
    let cpu_rounds = if want("cpu1000") { rounds } else { 0 };
    for _ in 0..cpu_rounds {
        for (i, path) in PATHS.into_iter().enumerate().skip(1) {
            let v = cpu_at(sc, path, 1000, 3.0)?;
            m.entry("cpu1000").or_default()[i].push(v);
        }
    }
    let rss: Vec<(f64, f64)> = sc
        .agent_pids()
        .into_iter()
        .map(|pid| (rss_mib(pid, "VmRSS:"), rss_mib(pid, "VmHWM:")))
        .collect();
    // With `--only`, the one measurement alone: no hook cost, no memory figures.
    let hook = match sc {
        Scene::Shared { c, .. } if only.is_none() => Some(connect_hook_cost(c, sc, 7, 300)?),
        _ => None,
    };
    let at_rest: Vec<(f64, f64)> = if only.is_none() {
        std::thread::sleep(AT_REST_AFTER);
        sc.agent_pids().into_iter().map(rss_and_anon).collect()
    } else {
        Vec::new()
    };

    println!("\nbench [{mode}]: medians of {rounds} interleaved rounds; direct = 1.0");
    match sc {
        Scene::Dedicated { .. } => println!(
            "mesh path: client pod -> SOCKS5 (agent 1) -> HBONE mTLS -> agent 2 -> server pod"
        ),
        Scene::Shared { .. } => println!(
            "mesh path: client pod connect() -> eBPF -> agent (node 1) -> HBONE mTLS between nodes -> agent (node 2) -> server pod;\ndirect: the same client to an unenrolled pod beside the server"
        ),
    }
    println!(
        "relays: two plain TCP relays on the agents' hops, no TLS, no HTTP/2 (the floor for two proxies)\n"
    );
    println!(
        "{:<42} {:>10} {:>16} {:>16} {:>9}",
        "metric", "direct", "relays", "mesh", "istio"
    );
    let row = |name: &str, k: &str, unit: Unit, istio: &str| {
        // A measurement `--only` left out has no row.
        let Some(samples) = m.get(k) else {
            return;
        };
        let [d, r, s] = samples.clone().map(median);
        let cell = |v: f64| match unit {
            Unit::MBps => format!("{:.0}MB ({:.2})", v / 1e6, v / d),
            Unit::Rate => format!("{v:.0} ({:.2})", v / d),
            Unit::Micros => format!("{v:.1}us ({:+.0})", v - d),
            Unit::Plain => format!("{v:.3}"),
        };
        let direct = match unit {
            Unit::MBps => format!("{:.0}MB", d / 1e6),
            Unit::Rate => format!("{d:.0}"),
            Unit::Micros => format!("{d:.1}us"),
            Unit::Plain => "-".into(),
        };
        let show = |v: f64| if v.is_nan() { "-".into() } else { cell(v) };
        println!(
            "{name:<42} {direct:>10} {:>16} {:>16} {istio:>9}",
            show(r),
            show(s)
        );
    };
    row(
        "single-stream throughput (ratio)",
        "throughput",
        Unit::MBps,
        "0.32",
    );
    row(
        "request/response latency p50 (added)",
        "p50",
        Unit::Micros,
        "+33us",
    );
    row(
        "request/response latency p99 (added)",
        "p99",
        Unit::Micros,
        "-",
    );
    row(
        "requests/s over 16 connections (ratio)",
        "rps16",
        Unit::Rate,
        "0.21",
    );
    row(
        "new connections/s, 1 request each (ratio)",
        "cps",
        Unit::Rate,
        "0.26",
    );
    row(
        "vCPU of both proxies at 1000 requests/s",
        "cpu1000",
        Unit::Plain,
        "0.075",
    );
    row(
        "CPU seconds of both proxies per GB",
        "cpu_per_gb",
        Unit::Plain,
        "-",
    );
    for (i, ((now, peak), (rest, anon))) in rss.into_iter().zip(at_rest).enumerate() {
        println!(
            "{:<42} {:>10} {:>16} {:>13.1}MiB {:>9}",
            format!("RSS of agent {} (peak {peak:.1} MiB)", i + 1),
            "-",
            "-",
            now,
            "14.5MiB"
        );
        println!(
            "{:<42} {:>10} {:>16} {:>13.1}MiB {:>9}",
            format!("  the same, {} s after the load", AT_REST_AFTER.as_secs()),
            "-",
            "-",
            rest,
            "-"
        );
        println!(
            "{:<42} {:>10} {:>16} {:>13.1}MiB {:>9}",
            "  of that, anonymous (heap, stacks)", "-", "-", anon, "-"
        );
    }
    if let Some(h) = hook {
        println!(
            "{:<42} {:>10} {:>16} {:>14.1}us {:>9}",
            "connect() cost of the hook, not redirected", "-", "-", h, "-"
        );
    }
    println!(
        "\nin brackets: the ratio to direct, or the microseconds added to it. 'istio' is Istio's ztunnel\non this kind of machine (two agents, medians of three rounds). RSS beyond the anonymous part is\nthe binary's code and the libraries, mapped from the page cache (clean, shared)."
    );
    if let Scene::Dedicated { .. } = sc {
        println!("the dedicated mesh path also pays a SOCKS5 handshake per connection.");
    }
    Ok(())
}

/// How a bench row shows its figures.
#[derive(Clone, Copy)]
enum Unit {
    MBps,
    Rate,
    Micros,
    Plain,
}
