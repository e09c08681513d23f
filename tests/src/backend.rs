//! A plain HTTP/1.1 backend with keep-alive, for the waypoint's tests: it names itself in
//! every answer and misbehaves on request, by path:
//! - `/delay/<ms>`: answers after that long;
//! - `/status/<code>`: answers with that status;
//! - `/fail-once/<key>`: 503 the first time a key is asked for, 200 after;
//! - anything else: 200.
//!
//! Every answer carries `x-served-by: <name>` and a body
//! `<name> <method> <path>\n` followed by the request's headers, one per line.

use crate::NetNs;
use crate::cleanup::{self, Registration};
use std::collections::HashSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    shared: Arc<Shared>,
    _stop: Registration,
}

#[derive(Default)]
struct Shared {
    failed_once: Mutex<HashSet<String>>,
    requests: AtomicU64,
}

impl Backend {
    pub fn start(ns: &NetNs, addr: SocketAddr, name: &str) -> io::Result<Self> {
        let listener = ns.run(|| TcpListener::bind(addr))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared::default());
        let (s, sh, n) = (stop.clone(), shared.clone(), name.to_owned());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (sh, n) = (sh.clone(), n.clone());
                        std::thread::spawn(move || serve(stream, &n, &sh));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(_) => return,
                }
            }
        });
        Ok(Backend {
            addr,
            name: name.to_owned(),
            shared,
            _stop: cleanup::register(move || stop.store(true, Ordering::Relaxed)),
        })
    }

    /// Requests answered so far.
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
}

fn serve(stream: TcpStream, name: &str, shared: &Shared) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut w) = stream.try_clone() else {
        return;
    };
    let mut r = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut words = line.split_whitespace();
        let method = words.next().unwrap_or("").to_owned();
        let path = words.next().unwrap_or("/").to_owned();
        let mut headers = Vec::new();
        let mut length = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end().to_owned();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
            headers.push(h);
        }
        let mut body = vec![0u8; length];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        shared.requests.fetch_add(1, Ordering::Relaxed);
        let mut status = 200u16;
        let bare = path.split('?').next().unwrap_or("/");
        if let Some(ms) = bare.strip_prefix("/delay/") {
            std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
        } else if let Some(code) = bare.strip_prefix("/status/") {
            status = code.parse().unwrap_or(500);
        } else if let Some(key) = bare.strip_prefix("/fail-once/") {
            let mut seen = shared.failed_once.lock().unwrap();
            if seen.insert(key.to_owned()) {
                status = 503;
            }
        }
        let mut text = format!("{name} {method} {path}\n");
        for h in &headers {
            text.push_str(h);
            text.push('\n');
        }
        let reply = format!(
            "HTTP/1.1 {status} X\r\nx-served-by: {name}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n{}\r\n{text}",
            text.len(),
            if close { "connection: close\r\n" } else { "" }
        );
        if w.write_all(reply.as_bytes()).is_err() || close {
            return;
        }
    }
}
