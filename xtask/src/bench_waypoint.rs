//! `cargo xtask bench --mode waypoint`: the waypoint at fixed request rates.
//!
//! Scene (shared mode): `client` (node 1, enrolled), `waypoint` (node 1), `server` (node 2,
//! enrolled, an HTTP/1.1 + HTTP/2 prior-knowledge server in this process). Two services with
//! the server pod as their only endpoint: `direct` (no waypoint: the L4-only path, client
//! agent -> HBONE -> server agent) and `viawp` (named the waypoint: client agent -> HBONE ->
//! waypoint -> HBONE -> server agent). The waypoint has no rules: the service's default route.
//!
//! Load: open loop at a fixed rate. A pacer thread (1 µs timer slack) emits the scheduled
//! send times; requests go out over a few keep-alive connections made in the client pod's
//! namespace by this process, which sits in the watched cgroup so that `connect()` is
//! redirected by eBPF. HTTP/1.1: a pool of connections, a free one takes the next due
//! request; HTTP/2 (h2c, prior knowledge): every request its own stream, round robin over the
//! connections. Latency runs from the scheduled send time (no coordinated omission): a
//! request that waits for a free connection counts its wait.
//!
//! Reported, as medians over interleaved rounds: achieved rate, p50/p99 on each path and the
//! difference, the waypoint's CPU (utime + stime over the measurement) per 1000 requests/s
//! and its memory (VmRSS, VmHWM).

use super::{AT_REST_AFTER, cpu_seconds, median, percentile, rss_and_anon, rss_mib};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::cluster::{Cluster, NodeAgent};
use mesh_tests::{NetNs, Process};
use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::time::timeout_at;

const DIRECT_VIP: [u8; 4] = [10, 96, 0, 70];
const VIAWP_VIP: [u8; 4] = [10, 96, 0, 71];
const SVC_PORT: u16 = 9080;
const BACKEND_PORT: u16 = 8080;
const RATES: [u64; 2] = [1000, 10000];
/// Seconds of load per measurement.
const SECS: f64 = 4.0;
/// How long requests still in flight at the end of the schedule may take to finish.
const DRAIN: Duration = Duration::from_secs(2);
const H1_CONNS: usize = 16;
const H2_CONNS: usize = 2;
/// Sequential requests per connection before each measurement (not timed).
const WARMUP: usize = 20;

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "HTTP/2",
        }
    }
    fn conns(self) -> usize {
        match self {
            Proto::H1 => H1_CONNS,
            Proto::H2 => H2_CONNS,
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Path {
    /// L4 only: client agent -> HBONE -> server agent.
    Direct,
    /// Client agent -> HBONE -> waypoint -> HBONE -> server agent.
    Waypoint,
}

impl Path {
    fn vip(self) -> SocketAddr {
        match self {
            Path::Direct => SocketAddr::from((DIRECT_VIP, SVC_PORT)),
            Path::Waypoint => SocketAddr::from((VIAWP_VIP, SVC_PORT)),
        }
    }
}

struct Scene {
    c: Cluster,
    waypoint: Process,
    agents: Vec<NodeAgent>,
}

impl Scene {
    fn new(bins: &std::path::Path) -> anyhow::Result<Self> {
        let c = Cluster::new(
            bins,
            &[
                ("client", 0, true),
                ("waypoint", 0, false),
                ("server", 1, true),
            ],
        )?;
        c.write_config_with(&["waypoint"], &services(&c))?;
        let rules = c.dir.join("rules");
        std::fs::create_dir_all(&rules)?;
        let server = c.pod("server");
        start_backend(&server.ns, server.addr(BACKEND_PORT))?;
        let agents = vec![c.start_agent(0)?, c.start_agent(1)?];
        let waypoint = c.start_waypoint(c.pod("waypoint"), &rules)?;
        let comm =
            std::fs::read_to_string(format!("/proc/{}/comm", waypoint.pid())).unwrap_or_default();
        anyhow::ensure!(
            comm.trim() == "waypoint",
            "process {} is {:?}, not the waypoint: its CPU cannot be measured",
            waypoint.pid(),
            comm.trim()
        );
        Ok(Scene {
            c,
            waypoint,
            agents,
        })
    }

    /// Joins (true) or leaves (false) the cgroup the programs watch: only inside it is the
    /// client's `connect()` redirected.
    fn watched(&self, join: bool) -> anyhow::Result<()> {
        let cg = &self.c.cgroup.path;
        let procs = if join {
            cg.join("cgroup.procs")
        } else {
            cg.parent().unwrap_or(cg).join("cgroup.procs")
        };
        std::fs::write(&procs, std::process::id().to_string())
            .map_err(|e| anyhow::anyhow!("moving the bench into {}: {e}", procs.display()))
    }

    fn logs(&self) -> String {
        format!(
            "--- waypoint log (last lines):\n{}",
            tail(&self.waypoint.log(), 30)
        )
    }
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `direct` and `viawp`, in Istio's local format, both with the server pod as endpoint.
fn services(c: &Cluster) -> String {
    let wp = c.pod("waypoint").ip;
    let svc = |name: &str, vip: [u8; 4], waypoint: bool| {
        let vip = std::net::Ipv4Addr::from(vip);
        let mut s = format!(
            "- name: {name}\n  namespace: default\n  hostname: {name}.default.svc.cluster.local\n  vips: [\"/{vip}\"]\n  ports: {{{SVC_PORT}: {BACKEND_PORT}}}\n  endpoints: {{server: {{workloadUid: \"Kubernetes//v1/Pod/default/server\", port: {{{SVC_PORT}: {BACKEND_PORT}}}}}}}\n"
        );
        if waypoint {
            s.push_str(&format!(
                "  waypoint: {{destination: \"/{wp}\", hboneMtlsPort: 15008}}\n"
            ));
        }
        s
    };
    format!(
        "services:\n{}{}",
        svc("direct", DIRECT_VIP, false),
        svc("viawp", VIAWP_VIP, true)
    )
}

/// A keep-alive HTTP/1.1 and HTTP/2 (prior knowledge) server on its own thread and runtime,
/// answering 200 `ok` to everything.
fn start_backend(ns: &NetNs, addr: SocketAddr) -> anyhow::Result<()> {
    let listener = ns.run(|| TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("bench-backend".into())
        .spawn(move || {
            let r: std::io::Result<()> = rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(listener)?;
                loop {
                    let (s, _) = l.accept().await?;
                    let _ = s.set_nodelay(true);
                    tokio::spawn(serve_conn(s));
                }
            });
            if let Err(e) = r {
                eprintln!("bench backend stopped: {e}");
            }
        })?;
    Ok(())
}

async fn serve_conn(s: tokio::net::TcpStream) {
    // HTTP/2 prior knowledge starts with "PRI * HTTP/2.0".
    let mut b = [0u8; 4];
    loop {
        match s.peek(&mut b).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n >= 4 => break,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    let svc = hyper::service::service_fn(|_req: Request<Incoming>| async {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
        r.headers_mut()
            .insert("x-served-by", HeaderValue::from_static("server"));
        Ok::<_, std::convert::Infallible>(r)
    });
    let io = TokioIo::new(s);
    let _ = if &b == b"PRI " {
        hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc)
            .await
    } else {
        hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .await
    };
}

#[derive(Clone)]
enum Sender {
    H1(Arc<tokio::sync::Mutex<hyper::client::conn::http1::SendRequest<Empty<Bytes>>>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

/// Opens `n` connections from the client pod to `dst` (the socket made in the pod's
/// namespace, by this process inside the watched cgroup) and does the handshakes.
async fn connect(
    ns: &NetNs,
    dst: SocketAddr,
    proto: Proto,
    n: usize,
) -> anyhow::Result<Vec<Sender>> {
    let mut out = Vec::new();
    for _ in 0..n {
        let s = ns
            .run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(3)))
            .map_err(|e| anyhow::anyhow!("connecting to {dst} from the client pod: {e}"))?;
        s.set_nodelay(true)?;
        s.set_nonblocking(true)?;
        let io = TokioIo::new(tokio::net::TcpStream::from_std(s)?);
        out.push(match proto {
            Proto::H1 => {
                let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
                tokio::spawn(conn);
                Sender::H1(Arc::new(tokio::sync::Mutex::new(send)))
            }
            Proto::H2 => {
                let (send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
                tokio::spawn(conn);
                Sender::H2(send)
            }
        });
    }
    Ok(out)
}

/// One GET to `dst`; fails unless the server pod answered 200.
async fn request(s: &Sender, dst: SocketAddr) -> anyhow::Result<()> {
    let resp = match s {
        Sender::H1(s) => {
            let req = Request::get("/")
                .header(HOST, dst.to_string())
                .body(Empty::new())?;
            let mut s = s.lock().await;
            s.ready().await?;
            s.send_request(req).await?
        }
        Sender::H2(s) => {
            let req = Request::get(format!("http://{dst}/")).body(Empty::new())?;
            let mut s = s.clone();
            s.ready().await?;
            s.send_request(req).await?
        }
    };
    let status = resp.status();
    let served = resp.headers().get("x-served-by").cloned();
    let body = resp.into_body().collect().await?.to_bytes();
    anyhow::ensure!(
        status == StatusCode::OK && served.as_ref().map(HeaderValue::as_bytes) == Some(b"server"),
        "answer {status} (x-served-by {served:?}): {}",
        String::from_utf8_lossy(&body).trim()
    );
    Ok(())
}

/// Emits the scheduled send times of `n` requests, one every `1/rate` s from `start`.
fn pacer(start: Instant, rate: u64, n: u64, tx: tokio::sync::mpsc::UnboundedSender<Instant>) {
    // SAFETY: prctl on this thread's timer slack, with an integer argument: sleeps end
    // within a microsecond or so of their deadline instead of 50 µs.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
    let period = 1.0 / rate as f64;
    for i in 0..n {
        let t = start + Duration::from_secs_f64(i as f64 * period);
        if let Some(wait) = t.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        if tx.send(t).is_err() {
            return;
        }
    }
}

#[derive(Default)]
struct Tally {
    /// Latencies (µs) from the scheduled send time to the end of the response body.
    lat: Vec<f64>,
    /// Responses complete by the end of the schedule.
    in_window: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, t: Instant, window_end: Instant, r: anyhow::Result<()>) {
        let done = Instant::now();
        match r {
            Ok(()) => {
                self.lat.push((done - t).as_secs_f64() * 1e6);
                if done <= window_end {
                    self.in_window += 1;
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
}

struct Sample {
    achieved: f64,
    p50: f64,
    p99: f64,
    scheduled: u64,
    /// Scheduled but not answered by the deadline (never sent, or still in flight).
    late: u64,
    errors: u64,
    first_error: Option<String>,
    /// CPU seconds per 1000 requests (= vCPU per 1000 requests/s).
    waypoint_cpu_per_k: f64,
    agents_cpu_per_k: f64,
    waypoint_rss: f64,
}

/// One measurement: `rate` requests/s for `SECS` over fresh connections.
fn measure_one(
    rt: &tokio::runtime::Runtime,
    sc: &Scene,
    proto: Proto,
    path: Path,
    rate: u64,
) -> anyhow::Result<Sample> {
    let dst = path.vip();
    let ns = &sc.c.pod("client").ns;
    let wp_pid = sc.waypoint.pid();
    let agent_pids: Vec<u32> = sc.agents.iter().map(|a| a.process.pid()).collect();
    let agents_cpu = || agent_pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    rt.block_on(async {
        let senders = connect(ns, dst, proto, proto.conns()).await?;
        for s in &senders {
            for _ in 0..WARMUP {
                request(s, dst)
                    .await
                    .map_err(|e| anyhow::anyhow!("warm-up request to {dst}: {e:#}"))?;
            }
        }
        let n = (rate as f64 * SECS) as u64;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tally = Arc::new(Mutex::new(Tally::default()));
        let (wp0, ag0) = (cpu_seconds(wp_pid), agents_cpu());
        let start = Instant::now() + Duration::from_millis(5);
        let window_end = start + Duration::from_secs_f64(SECS);
        let deadline = tokio::time::Instant::from_std(window_end + DRAIN);
        let pacer = std::thread::spawn(move || pacer(start, rate, n, tx));
        match proto {
            Proto::H1 => {
                // A pool: whichever connection is free takes the next due request.
                let rx = Arc::new(tokio::sync::Mutex::new(rx));
                let workers: Vec<_> = senders
                    .iter()
                    .cloned()
                    .map(|s| {
                        let (rx, tally) = (rx.clone(), tally.clone());
                        tokio::spawn(async move {
                            while let Ok(Some(t)) =
                                timeout_at(deadline, async { rx.lock().await.recv().await }).await
                            {
                                let r = match timeout_at(deadline, request(&s, dst)).await {
                                    Ok(r) => r,
                                    // Counted as late.
                                    Err(_) => break,
                                };
                                let failed = r.is_err();
                                lock(&tally).record(t, window_end, r);
                                if failed {
                                    // The connection may be unusable: it takes no more.
                                    break;
                                }
                            }
                        })
                    })
                    .collect();
                for w in workers {
                    let _ = w.await;
                }
            }
            Proto::H2 => {
                let inflight = Arc::new(AtomicUsize::new(0));
                let mut i = 0usize;
                while let Ok(Some(t)) = timeout_at(deadline, rx.recv()).await {
                    let s = senders[i % senders.len()].clone();
                    i += 1;
                    let (tally, inflight) = (tally.clone(), inflight.clone());
                    inflight.fetch_add(1, Ordering::Relaxed);
                    tokio::spawn(async move {
                        if let Ok(r) = timeout_at(deadline, request(&s, dst)).await {
                            lock(&tally).record(t, window_end, r);
                        }
                        inflight.fetch_sub(1, Ordering::Relaxed);
                    });
                }
                while inflight.load(Ordering::Relaxed) > 0
                    && tokio::time::Instant::now() < deadline + Duration::from_millis(100)
                {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
        let (wp1, ag1) = (cpu_seconds(wp_pid), agents_cpu());
        let waypoint_rss = rss_mib(wp_pid, "VmRSS:");
        drop(senders);
        let _ = pacer.join();
        let t = std::mem::take(&mut *lock(&tally));
        let answered = t.lat.len() as u64;
        anyhow::ensure!(
            answered > 0,
            "no request answered ({} errors; first: {})",
            t.errors,
            t.first_error.as_deref().unwrap_or("none")
        );
        Ok(Sample {
            achieved: t.in_window as f64 / SECS,
            p50: percentile(&t.lat, 0.5),
            p99: percentile(&t.lat, 0.99),
            scheduled: n,
            late: n.saturating_sub(answered + t.errors),
            errors: t.errors,
            first_error: t.first_error,
            waypoint_cpu_per_k: (wp1 - wp0) / answered as f64 * 1000.0,
            agents_cpu_per_k: (ag1 - ag0) / answered as f64 * 1000.0,
            waypoint_rss,
        })
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Before measuring: each path answers, and only `viawp` passes through the waypoint.
fn check_paths(rt: &tokio::runtime::Runtime, sc: &Scene) -> anyhow::Result<()> {
    let ns = &sc.c.pod("client").ns;
    let wp_ns = &sc.c.pod("waypoint").ns;
    let count = || -> anyhow::Result<f64> {
        let m = Cluster::metrics_in(wp_ns)?;
        Ok(m.lines()
            .filter(|l| l.starts_with("istio_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum())
    };
    for path in [Path::Direct, Path::Waypoint] {
        for proto in [Proto::H1, Proto::H2] {
            let before = count()?;
            rt.block_on(async {
                let s = connect(ns, path.vip(), proto, 1).await?;
                for _ in 0..5 {
                    request(&s[0], path.vip()).await?;
                }
                anyhow::Ok(())
            })
            .map_err(|e| {
                anyhow::anyhow!(
                    "{} to {} ({path:?}) from the client pod: {e:#}\n{}",
                    proto.name(),
                    path.vip(),
                    sc.logs()
                )
            })?;
            let seen = mesh_tests::eventually_opt(Duration::from_secs(3), || {
                let d = count().ok()? - before;
                (path == Path::Direct || d >= 5.0).then_some(d)
            });
            match (path, seen) {
                (Path::Direct, Some(d)) => anyhow::ensure!(
                    d == 0.0,
                    "the L4-only service went through the waypoint ({d} requests)"
                ),
                (Path::Waypoint, None) => anyhow::bail!(
                    "the waypoint did not count the requests to {}: not on the path?\n{}",
                    path.vip(),
                    sc.logs()
                ),
                _ => {}
            }
        }
    }
    Ok(())
}

pub fn run(rounds: usize, bins: &std::path::Path) -> anyhow::Result<()> {
    let sc = Scene::new(bins)?;
    sc.watched(true)?;
    let result = measure(&sc, rounds);
    // Whatever happened, leave the watched cgroup before it is removed.
    let _ = sc.watched(false);
    result
}

fn measure(sc: &Scene, rounds: usize) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    check_paths(&rt, sc)?;
    let wp_pid = sc.waypoint.pid();
    let idle_rss = rss_mib(wp_pid, "VmRSS:");
    let mut m: BTreeMap<(Proto, u64, Path), Vec<Sample>> = BTreeMap::new();
    let started = Instant::now();
    for round in 1..=rounds {
        eprintln!("bench: round {round} of {rounds}");
        for proto in [Proto::H1, Proto::H2] {
            for rate in RATES {
                for path in [Path::Direct, Path::Waypoint] {
                    let s = measure_one(&rt, sc, proto, path, rate).map_err(|e| {
                        anyhow::anyhow!(
                            "{} at {rate}/s ({path:?}): {e:#}\n{}",
                            proto.name(),
                            sc.logs()
                        )
                    })?;
                    eprintln!(
                        "  {:<8} {rate:>5}/s {:<8}: {:>6.0}/s p50 {:>7.0}us p99 {:>7.0}us{}",
                        proto.name(),
                        format!("{path:?}"),
                        s.achieved,
                        s.p50,
                        s.p99,
                        if s.late + s.errors > 0 {
                            format!(" ({} late, {} errors)", s.late, s.errors)
                        } else {
                            String::new()
                        }
                    );
                    m.entry((proto, rate, path)).or_default().push(s);
                }
            }
        }
    }
    let hwm = rss_mib(wp_pid, "VmHWM:");
    let end = rss_and_anon(wp_pid);
    std::thread::sleep(AT_REST_AFTER);
    let rest = rss_and_anon(wp_pid);
    report(&m, rounds, idle_rss, [end, rest], hwm, started.elapsed());
    Ok(())
}

fn report(
    m: &BTreeMap<(Proto, u64, Path), Vec<Sample>>,
    rounds: usize,
    idle_rss: f64,
    [(rss_end, anon_end), (rss_rest, anon_rest)]: [(f64, f64); 2],
    hwm: f64,
    took: Duration,
) {
    let med = |k: &(Proto, u64, Path), f: fn(&Sample) -> f64| {
        median(
            m.get(k)
                .map(|v| v.iter().map(f).collect())
                .unwrap_or_default(),
        )
    };
    println!(
        "\nbench [waypoint]: medians of {rounds} interleaved rounds, {SECS} s of open-loop load each ({:.0} s in all)",
        took.as_secs_f64()
    );
    println!(
        "L4 only:      client pod connect() -> eBPF -> agent (node 1) -> HBONE -> agent (node 2) -> server pod"
    );
    println!(
        "via waypoint: client pod connect() -> eBPF -> agent (node 1) -> HBONE -> waypoint pod (node 1) -> HBONE -> agent (node 2) -> server pod"
    );
    println!(
        "HTTP/1.1 over {H1_CONNS} keep-alive connections (a free one takes the next request); HTTP/2 (h2c, prior knowledge) over {H2_CONNS}, one stream per request."
    );
    println!(
        "latency from the scheduled send time to the end of the response; the waypoint speaks HTTP/1.1 to the server.\n"
    );
    println!(
        "{:<9} {:>6} {:>15} {:>17} {:>17} {:>15} {:>10} {:>10} {:>8}",
        "protocol",
        "rate",
        "achieved L4/wp",
        "L4 p50/p99 us",
        "wp p50/p99 us",
        "added p50/p99",
        "wp vCPU",
        "agents",
        "wp RSS"
    );
    println!(
        "{:<9} {:>6} {:>15} {:>17} {:>17} {:>15} {:>10} {:>10} {:>8}",
        "", "/s", "/s", "", "", "us", "per 1k/s", "per 1k/s", "MiB"
    );
    let mut notes = Vec::new();
    for proto in [Proto::H1, Proto::H2] {
        for rate in RATES {
            let d = (proto, rate, Path::Direct);
            let w = (proto, rate, Path::Waypoint);
            let (dp50, dp99, wp50, wp99) = (
                med(&d, |s| s.p50),
                med(&d, |s| s.p99),
                med(&w, |s| s.p50),
                med(&w, |s| s.p99),
            );
            println!(
                "{:<9} {:>6} {:>15} {:>17} {:>17} {:>15} {:>10.3} {:>10} {:>8.1}",
                proto.name(),
                rate,
                format!(
                    "{:.0}/{:.0}",
                    med(&d, |s| s.achieved),
                    med(&w, |s| s.achieved)
                ),
                format!("{dp50:.0}/{dp99:.0}"),
                format!("{wp50:.0}/{wp99:.0}"),
                format!("{:+.0}/{:+.0}", wp50 - dp50, wp99 - dp99),
                med(&w, |s| s.waypoint_cpu_per_k),
                format!(
                    "{:.3}/{:.3}",
                    med(&d, |s| s.agents_cpu_per_k),
                    med(&w, |s| s.agents_cpu_per_k)
                ),
                med(&w, |s| s.waypoint_rss),
            );
            for k in [d, w] {
                for s in m.get(&k).into_iter().flatten() {
                    if s.late + s.errors > 0 {
                        notes.push(format!(
                            "{} at {}/s {:?}: {} of {} scheduled requests late (unanswered {} s after the schedule ended), {} errors{}",
                            proto.name(),
                            rate,
                            k.2,
                            s.late,
                            s.scheduled,
                            DRAIN.as_secs(),
                            s.errors,
                            s.first_error
                                .as_deref()
                                .map(|e| format!(" (first: {e})"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
        }
    }
    println!(
        "\nwaypoint memory: VmRSS {idle_rss:.1} MiB idle, {rss_end:.1} MiB at the end ({anon_end:.1} MiB of it anonymous, the rest code mapped from the page cache), {rss_rest:.1} MiB {} s later ({anon_rest:.1} anonymous); peak (VmHWM) {hwm:.1} MiB",
        AT_REST_AFTER.as_secs()
    );
    println!(
        "Istio's Envoy waypoint, for reference: about 0.25 vCPU and 60 MB per 1000 requests/s."
    );
    println!(
        "'wp vCPU' is the waypoint's CPU seconds per 1000 requests (= vCPU at 1000 requests/s); 'agents' is both node agents' on the L4/via-waypoint path."
    );
    println!(
        "a rate the 2-vCPU machine cannot sustain shows as an achieved rate below the target, with latency that includes the queueing."
    );
    for n in notes {
        println!("note: {n}");
    }
}
