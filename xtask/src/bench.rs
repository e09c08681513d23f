//! Whole-system benchmarks: the same clients against the same server pod, directly and
//! through the two agents (SOCKS5 into the client's agent, HBONE to the server's), in
//! interleaved rounds; medians reported as ratios against direct.

use mesh_tests::Topology;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

const SOCKS: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 15080);
const ECHO_PORT: u16 = 8080;
const SINK_PORT: u16 = 8081;

/// How a bench client reaches the server.
#[derive(Clone, Copy, PartialEq)]
enum Path {
    Direct,
    Mesh,
}

struct Scene {
    t: Topology,
    agents: Vec<mesh_tests::Agent>,
}

impl Scene {
    fn connect(&self, path: Path, port: u16) -> std::io::Result<TcpStream> {
        let dst = self.t.server.addr(port);
        let s = match path {
            Path::Direct => self.t.client.ns.run(|| TcpStream::connect(dst))?,
            Path::Mesh => mesh_tests::probe::socks5(&self.t.client.ns, SOCKS, dst)?,
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

/// vCPU used by both agents while 4 connections carry `rate` requests per second in all.
fn agent_cpu_at(sc: &Scene, rate: u64, secs: f64) -> anyhow::Result<f64> {
    let pids: Vec<u32> = sc.agents.iter().map(|a| a.process.pid()).collect();
    let conns = 4u64;
    let mut streams: Vec<TcpStream> = (0..conns)
        .map(|_| sc.connect(Path::Mesh, ECHO_PORT))
        .collect::<Result<_, _>>()?;
    let before: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
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
    let after: f64 = pids.iter().map(|p| cpu_seconds(*p)).sum();
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

pub fn run(rounds: usize) -> anyhow::Result<()> {
    let bins = crate::build(true)?;
    let t = Topology::with_binaries(&bins)?;
    serve(
        t.server
            .ns
            .run(|| TcpListener::bind(t.server.addr(ECHO_PORT)))?,
        echo,
    );
    serve(
        t.server
            .ns
            .run(|| TcpListener::bind(t.server.addr(SINK_PORT)))?,
        sink,
    );
    let agents = vec![
        t.start_agent(&t.server, &t.ca_dir)?,
        t.start_agent(&t.client, &t.ca_dir)?,
    ];
    let sc = Scene { t, agents };

    let mut m: std::collections::BTreeMap<&str, [Vec<f64>; 2]> = Default::default();
    for round in 1..=rounds {
        eprintln!("bench: round {round} of {rounds}");
        for path in [Path::Direct, Path::Mesh] {
            let i = (path == Path::Mesh) as usize;
            let push = |m: &mut std::collections::BTreeMap<&str, [Vec<f64>; 2]>, k, v| {
                m.entry(k).or_default()[i].push(v)
            };
            push(&mut m, "throughput", throughput(&sc, path, 3.0)?);
            let lat = latencies(&sc, path, 5000)?;
            push(&mut m, "p50", percentile(&lat, 0.5));
            push(&mut m, "p99", percentile(&lat, 0.99));
            push(&mut m, "rps16", requests_per_sec(&sc, path, 16, 2.0)?);
            push(&mut m, "cps", connections_per_sec(&sc, path, 2.0)?);
        }
    }
    let cpu = median(
        (0..rounds)
            .map(|_| agent_cpu_at(&sc, 1000, 3.0))
            .collect::<Result<_, _>>()?,
    );
    let rss: Vec<(f64, f64)> = sc
        .agents
        .iter()
        .map(|a| {
            (
                rss_mib(a.process.pid(), "VmRSS:"),
                rss_mib(a.process.pid(), "VmHWM:"),
            )
        })
        .collect();

    let get = |k: &str| {
        let [d, s] = m.get(k).cloned().unwrap_or_default();
        (median(d), median(s))
    };
    println!(
        "\nbench: medians of {rounds} interleaved rounds; client pod -> server pod over a veth"
    );
    println!(
        "mesh path: client -> SOCKS5 (agent 1) -> HBONE mTLS -> agent 2 -> server; direct = 1.0\n"
    );
    println!(
        "{:<44} {:>12} {:>12} {:>8} {:>10}",
        "metric", "direct", "mesh", "ratio", "istio"
    );
    let (d, s) = get("throughput");
    println!(
        "{:<44} {:>10.0}MB {:>10.0}MB {:>8.2} {:>10}",
        "single-stream throughput (MB/s)",
        d / 1e6,
        s / 1e6,
        s / d,
        "0.32"
    );
    let (d, s) = get("p50");
    println!(
        "{:<44} {:>10.1}us {:>10.1}us {:>+7.1}us {:>10}",
        "request/response latency p50 (added)",
        d,
        s,
        s - d,
        "+33us"
    );
    let (d, s) = get("p99");
    println!(
        "{:<44} {:>10.1}us {:>10.1}us {:>+7.1}us {:>10}",
        "request/response latency p99 (added)",
        d,
        s,
        s - d,
        "-"
    );
    let (d, s) = get("rps16");
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>8.2} {:>10}",
        "requests/s over 16 connections",
        d,
        s,
        s / d,
        "0.21"
    );
    let (d, s) = get("cps");
    println!(
        "{:<44} {:>12.0} {:>12.0} {:>8.2} {:>10}",
        "new connections/s (1 request each)",
        d,
        s,
        s / d,
        "0.26"
    );
    println!(
        "{:<44} {:>12} {:>12.3} {:>8} {:>10}",
        "vCPU of both agents at 1000 requests/s", "-", cpu, "-", "0.075"
    );
    for (name, (now, peak)) in ["server agent", "client agent"].iter().zip(rss) {
        println!(
            "{:<44} {:>12} {:>9.1}MiB {:>8} {:>10}",
            format!("RSS of the {name} (peak {peak:.1} MiB)"),
            "-",
            now,
            "-",
            "14.5MiB"
        );
    }
    println!("\nnote: the mesh path also pays a SOCKS5 handshake per connection (the eBPF capture");
    println!(
        "      of the next issue removes it); 'istio' is Istio's ztunnel on this kind of machine."
    );
    Ok(())
}
