//! What a user would point at the mesh: a SOCKS5 client, HTTP GETs, an echo server, tcpdump.
//! All run inside a namespace.

use crate::cleanup::{self, Registration};
use crate::{NetNs, Process};
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Opens a SOCKS5 CONNECT to `dst` through `proxy`, from inside `ns`. Returns the stream once
/// the proxy has answered success.
pub fn socks5(ns: &NetNs, proxy: SocketAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let mut s = ns.run(|| TcpStream::connect(proxy))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(&[5, 1, 0])?;
    let mut b = [0u8; 2];
    s.read_exact(&mut b)?;
    if b != [5, 0] {
        return Err(io::Error::other(format!("SOCKS5 method reply {b:?}")));
    }
    let mut req = vec![5, 1, 0];
    match dst.ip() {
        IpAddr::V4(ip) => {
            req.push(1);
            req.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            req.push(4);
            req.extend_from_slice(&ip.octets());
        }
    }
    req.extend_from_slice(&dst.port().to_be_bytes());
    s.write_all(&req)?;
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply)?;
    if reply[1] != 0 {
        return Err(io::Error::other(format!("SOCKS5 reply code {}", reply[1])));
    }
    Ok(s)
}

/// Writes `payload` (then half-closes) while reading everything that comes back.
pub fn round_trip(s: TcpStream, payload: &[u8]) -> io::Result<Vec<u8>> {
    let mut w = s.try_clone()?;
    let mut r = s;
    std::thread::scope(|sc| {
        let writer = sc.spawn(move || -> io::Result<()> {
            w.write_all(payload)?;
            w.shutdown(std::net::Shutdown::Write)
        });
        let mut back = Vec::with_capacity(payload.len());
        let read = r.read_to_end(&mut back);
        writer
            .join()
            .map_err(|_| io::Error::other("writer panicked"))??;
        read.map(|_| back)
    })
}

/// `GET path` on `addr` from inside `ns`: (status, body).
pub fn http_get(ns: &NetNs, addr: SocketAddr, path: &str) -> io::Result<(u16, String)> {
    let mut s = ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(2)))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP response: {out:.80}")))?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// Accepts on `addr` inside `ns` until the returned registration is dropped, handing each
/// connection (with the listener's and the peer's address) to `handler` on its own thread.
fn serve(
    ns: &NetNs,
    addr: SocketAddr,
    handler: fn(TcpStream, SocketAddr, SocketAddr),
) -> io::Result<Registration> {
    let listener = ns.run(|| TcpListener::bind(addr))?;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((stream, peer)) => {
                    std::thread::spawn(move || handler(stream, addr, peer));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return,
            }
        }
    });
    Ok(cleanup::register(move || {
        stop.store(true, Ordering::Relaxed)
    }))
}

/// A TCP echo server inside a namespace, stopped on drop.
pub struct EchoServer {
    pub addr: SocketAddr,
    _stop: Registration,
}

impl EchoServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> io::Result<Self> {
        Ok(EchoServer {
            addr,
            _stop: serve(ns, addr, |stream, _, _| echo(stream))?,
        })
    }
}

fn echo(stream: TcpStream) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = stream;
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if w.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = w.shutdown(std::net::Shutdown::Write);
}

/// A plain HTTP/1.1 server inside a namespace: answers every request with a greeting that
/// names its address and the path asked for. Stopped on drop.
pub struct HttpServer {
    pub addr: SocketAddr,
    _stop: Registration,
}

impl HttpServer {
    pub fn start(ns: &NetNs, addr: SocketAddr) -> io::Result<Self> {
        Ok(HttpServer {
            addr,
            _stop: serve(ns, addr, answer)?,
        })
    }
}

fn answer(mut s: TcpStream, addr: SocketAddr, peer: SocketAddr) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).unwrap_or(0);
    let line = String::from_utf8_lossy(&buf[..n]);
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let body = format!("hello from {addr}: you asked for {path}, from {peer}\n");
    let _ = write!(
        s,
        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// tcpdump on an interface of a namespace, writing a pcap file.
pub struct Capture {
    process: Process,
    file: PathBuf,
}

impl Capture {
    /// Starts capturing TCP on `iface` and waits until tcpdump is listening.
    pub fn start(ns: &NetNs, iface: &str, dir: &Path) -> anyhow::Result<Self> {
        let file = dir.join(format!("{iface}.pcap"));
        let mut cmd = ns.command("tcpdump");
        cmd.args([
            "-i",
            iface,
            "-nn",
            "-U",
            "--immediate-mode",
            "-s",
            "0",
            "-w",
        ])
        .arg(&file)
        .arg("tcp");
        let process = Process::spawn(cmd, &dir.join(format!("{iface}.tcpdump.log")))?;
        crate::eventually(Duration::from_secs(10), "tcpdump to listen", || {
            assert!(
                process.exited().is_none(),
                "tcpdump exited: {}",
                process.log()
            );
            process.log().contains("listening on").then_some(())
        });
        Ok(Capture { process, file })
    }

    /// Stops the capture and returns (one summary line per packet, the raw pcap bytes).
    pub fn finish(self) -> anyhow::Result<(Vec<String>, Vec<u8>)> {
        // Let the last packets reach the file, then stop tcpdump cleanly.
        std::thread::sleep(Duration::from_millis(300));
        self.process.signal(libc::SIGINT);
        self.process.wait(Duration::from_secs(5));
        let out = std::process::Command::new("tcpdump")
            .args(["-nn", "-q", "-r"])
            .arg(&self.file)
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "tcpdump -r {}: {}",
            self.file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        Ok((lines, std::fs::read(&self.file)?))
    }
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
