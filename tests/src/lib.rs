//! End-to-end harness: "nodes" and "pods" as network namespaces joined by veth pairs, the real
//! binaries started inside them, and the probes a user would use (SOCKS5 clients, HTTP GETs,
//! tcpdump). Everything made here is removed by a guard on drop, and also by
//! [`cleanup::run_all`] when a Ctrl-C handler calls it; names are unique per process and call,
//! so tests run in parallel.
//!
//! Network safety: addresses exist only inside the namespaces made here; the host's own
//! namespace gets no address and no route, and probes run inside the namespaces (a thread
//! that `setns`es), never from the host.

#![allow(clippy::unwrap_used, reason = "a harness fails loudly on purpose")]

pub mod backend;
pub mod cleanup;
pub mod cluster;
pub mod netns;
pub mod probe;
pub mod process;
pub mod topology;

pub use netns::NetNs;
pub use process::Process;
pub use topology::{Agent, Pod, Topology};

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Where the project's binaries are: `MESH_BIN_DIR`, else the profile folder that holds the
/// running test executable (`target/<profile>`).
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("MESH_BIN_DIR") {
        return d.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("exe folder").to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Polls `f` until it returns `Some` or `timeout` passes.
pub fn eventually_opt<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if start.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A name unique to this process and call, at most `prefix.len() + 9` characters.
pub fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}{:05}{n:03}", std::process::id() % 100_000)
}

/// Fails unless we can make namespaces (root and `ip`).
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "end-to-end tests make network namespaces: run them as root"
    );
}
