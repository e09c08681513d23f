//! Loading and driving the eBPF redirection programs (`ebpf-programs/redirect`).
//!
//! The object `mesh-redirect` is built by `build.rs` and embedded in the binary. [`Redirector`]
//! loads it, attaches its cgroup programs, and enrolls pods (network namespaces, known by their
//! [`netns_cookie`]); everything it attached is detached when it is dropped.
//!
//! # Programs
//! - Outbound capture (attached once, to a cgroup): `mesh_connect4/6` rewrite an enrolled app's
//!   `connect()` to `127.0.0.1:15001`, `mesh_sockops` remembers the original destination for the
//!   agent's accepted socket, `mesh_getsockopt` answers `SO_ORIGINAL_DST` on it and
//!   `mesh_getpeername4/6` show the app the address it dialled. Sockets with the agent's mark
//!   (`SO_MARK`) and connections to the agent's own ports are left alone.
//! - Inbound capture (one copy of the object per enrolled namespace): `mesh_sk_lookup` steers
//!   TCP arriving from outside the namespace to its 15006 listener.
//!
//! # Minimum kernel version
//! 5.15 (`bpf_get_netns_cookie` in `sock_ops`; see each program kind's module). Verified on 6.18.
//!
//! # Diagnostics
//! The programs' aya-log records go to `tracing` (see `logs`), up to the level set with
//! [`RedirectConfig::log_level`] or [`Redirector::set_log_level`]; off by default.

mod config_map;
mod error;
mod logs;
mod netns;
mod sk_lookup;
mod sock_addr;
mod sock_ops;
mod sockopt;

use std::{
    collections::HashMap,
    fmt,
    fs::File,
    net::{IpAddr, SocketAddr, TcpListener},
    path::PathBuf,
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap as BpfHashMap,
    programs::{Program, ProgramError},
};
use mesh_common::{AF_INET, AF_INET6, OrigDst, TupleKey, maps, programs};

pub use error::RedirectError;
pub use netns::netns_cookie;

/// Settings for the redirection programs.
#[derive(Clone, Debug)]
pub struct RedirectConfig {
    /// cgroup v2 folder to attach the cgroup programs to (a real install: the cgroup v2 root;
    /// tests: a child cgroup).
    pub cgroup: PathBuf,
    /// SO_MARK of the agent's own sockets (0x539): never redirected. 0 also means 0x539.
    pub mark: u32,
    /// aya-log level for the programs' diagnostics: 0 = off (default) .. 5 = trace.
    pub log_level: u32,
}

/// The loaded redirection programs: the cgroup programs attached to [`RedirectConfig::cgroup`],
/// and one sk_lookup copy per enrolled namespace. Dropping it detaches everything.
pub struct Redirector {
    /// The main object; owns the cgroup programs' links and the `ENROLLED` map.
    ebpf: Ebpf,
    /// The enrolled namespaces by netns cookie, each with its sk_lookup copy.
    namespaces: HashMap<u64, sk_lookup::Namespace>,
    /// The cgroup the programs are attached to.
    cgroup: PathBuf,
    /// `RedirectConfig::mark`, for the per-namespace copies.
    mark: u32,
    /// The current log level, for the per-namespace copies.
    log_level: u32,
    /// Forwards the main object's aya-log records.
    _logs: logs::LogReader,
}

/// Reads `ORIG_DST_BY_TUPLE`: where an accepted, redirected connection was going, keyed by the
/// pod's namespace and the accepted socket's peer (the app socket's local address). This works
/// whatever cgroup the agent itself is in; `SO_ORIGINAL_DST` (answered by `mesh_getsockopt`)
/// needs the agent's sockets inside the watched cgroup.
#[derive(Clone)]
pub struct OrigDstLookup(Arc<BpfHashMap<aya::maps::MapData, TupleKey, OrigDst>>);

impl OrigDstLookup {
    /// The original destination of the connection from `peer` accepted in the namespace
    /// `netns_cookie`.
    pub fn get(&self, netns_cookie: u64, peer: SocketAddr) -> Option<SocketAddr> {
        let (ip, family) = match peer.ip() {
            IpAddr::V4(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ([u32::from_ne_bytes(v4.octets()), 0, 0, 0], AF_INET),
                None => {
                    let o = v6.octets();
                    let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                    ([w(0), w(4), w(8), w(12)], AF_INET6)
                }
            },
        };
        let key = TupleKey {
            netns_cookie,
            ip,
            port: u32::from(peer.port()),
            family: u32::from(family),
        };
        let d = self.0.get(&key, 0).ok()?;
        let port = u16::from_be(d.port);
        let ip = if d.family == AF_INET6 {
            let mut o = [0u8; 16];
            for (i, w) in d.ip.iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            IpAddr::from(o)
        } else {
            IpAddr::from(d.ip[0].to_ne_bytes())
        };
        Some(SocketAddr::new(ip, port))
    }
}

/// The cgroup programs, in attachment order: everything that serves a redirected connection is
/// in place before `mesh_connect4/6` start redirecting.
const CGROUP_SOCK_ADDR_PROGRAMS: [&str; 4] = [
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::CONNECT4,
    programs::CONNECT6,
];

impl Redirector {
    /// Loads the embedded object, writes `CONFIG` (mark, ports 15001/15006, log level), attaches
    /// `mesh_connect4`, `mesh_connect6`, `mesh_getpeername4`, `mesh_getpeername6`,
    /// `mesh_getsockopt` and `mesh_sockops` to `cfg.cgroup`, and starts forwarding the
    /// programs' aya-log records to `tracing`.
    ///
    /// Must be called from inside a tokio runtime (the log reader is a task).
    ///
    /// # Errors
    /// If the cgroup folder cannot be opened, the log level is above 5, there is no tokio
    /// runtime, or the kernel refuses to load (with the verifier log) or attach a program.
    pub fn load(cfg: &RedirectConfig) -> Result<Self, RedirectError> {
        let cgroup = File::open(&cfg.cgroup).map_err(|source| RedirectError::Cgroup {
            path: cfg.cgroup.clone(),
            source,
        })?;
        config_map::check_log_level(cfg.log_level)?;
        let mut ebpf =
            EbpfLoader::new()
                .load(object())
                .map_err(|source| RedirectError::Object {
                    copy: "main".to_owned(),
                    source: Box::new(source),
                })?;
        // Before loading the programs: the reader keeps the ring buffer's fd open.
        let logs = logs::LogReader::start(&mut ebpf, "main")?;
        config_map::write(&mut ebpf, cfg.mark, cfg.log_level)?;

        for name in CGROUP_SOCK_ADDR_PROGRAMS {
            sock_addr::load(&mut ebpf, name)?;
        }
        sockopt::load(&mut ebpf, programs::GETSOCKOPT)?;
        sock_ops::load(&mut ebpf, programs::SOCKOPS)?;

        let path = cfg.cgroup.as_path();
        sock_ops::attach(&mut ebpf, programs::SOCKOPS, &cgroup, path)?;
        sockopt::attach(&mut ebpf, programs::GETSOCKOPT, &cgroup, path)?;
        for name in CGROUP_SOCK_ADDR_PROGRAMS {
            sock_addr::attach(&mut ebpf, name, &cgroup, path)?;
        }
        tracing::info!(cgroup = %path.display(), "eBPF redirection attached");

        Ok(Self {
            ebpf,
            namespaces: HashMap::new(),
            cgroup: cfg.cgroup.clone(),
            mark: cfg.mark,
            log_level: cfg.log_level,
            _logs: logs,
        })
    }

    /// Enrolls a pod network namespace: loads a copy of the object for it, puts `inbound` (the
    /// pod's 15006 listener, already bound inside the namespace) in its `INBOUND_LISTENER`
    /// slot 0 (and slot 1 too if it is an IPv6 socket), attaches `mesh_sk_lookup` to `netns`
    /// (an open file of `/run/netns/<name>` or `/proc/<pid>/ns/net`), then inserts `cookie`
    /// into `ENROLLED`, which starts the outbound capture.
    ///
    /// Idempotent for the same cookie: enrolling again only replaces the listener.
    /// Must be called from inside a tokio runtime (the copy's log reader is a task).
    ///
    /// # Errors
    /// If the copy cannot be loaded or attached, or a map update fails; nothing stays enrolled
    /// then.
    pub fn enroll(
        &mut self,
        cookie: u64,
        netns: &File,
        inbound: &TcpListener,
    ) -> Result<(), RedirectError> {
        let new = match self.namespaces.get_mut(&cookie) {
            Some(namespace) => {
                namespace.set_listener(inbound)?;
                false
            }
            None => {
                let namespace =
                    sk_lookup::Namespace::load(cookie, netns, inbound, self.mark, self.log_level)?;
                self.namespaces.insert(cookie, namespace);
                true
            }
        };
        let inserted = self.enrolled().and_then(|mut enrolled| {
            enrolled.insert(cookie, 0, 0).map_err(|err| {
                RedirectError::map(
                    maps::ENROLLED,
                    format!("inserting netns cookie {cookie}"),
                    err,
                )
            })
        });
        if let Err(err) = inserted {
            if new {
                self.namespaces.remove(&cookie);
            }
            return Err(err);
        }
        if new {
            tracing::debug!(cookie, "network namespace enrolled");
        }
        Ok(())
    }

    /// Undoes [`Redirector::enroll`]: removes `cookie` from `ENROLLED` (ending the outbound
    /// capture) and drops the namespace's sk_lookup copy (detaching it). Unknown cookies are
    /// fine.
    ///
    /// # Errors
    /// If the `ENROLLED` map cannot be updated; the sk_lookup copy is dropped anyway.
    pub fn unenroll(&mut self, cookie: u64) -> Result<(), RedirectError> {
        let known = self.namespaces.remove(&cookie).is_some();
        let mut enrolled = self.enrolled()?;
        match enrolled.remove(&cookie) {
            Ok(()) => {}
            Err(err) if error::is_not_found(&err) => {}
            Err(err) => {
                return Err(RedirectError::map(
                    maps::ENROLLED,
                    format!("removing netns cookie {cookie}"),
                    err,
                ));
            }
        }
        if known {
            tracing::debug!(cookie, "network namespace unenrolled");
        }
        Ok(())
    }

    /// A shareable reader of the original destinations (see [`OrigDstLookup`]). Call once.
    ///
    /// # Errors
    /// If the map is missing (already taken) or has the wrong layout.
    pub fn orig_dst_lookup(&mut self) -> Result<OrigDstLookup, RedirectError> {
        let map = self
            .ebpf
            .take_map(maps::ORIG_DST_BY_TUPLE)
            .ok_or(RedirectError::MissingMap {
                map: maps::ORIG_DST_BY_TUPLE,
            })?;
        let map = BpfHashMap::try_from(map).map_err(|err| {
            RedirectError::map(
                maps::ORIG_DST_BY_TUPLE,
                "opening as a HashMap<TupleKey, OrigDst>",
                err,
            )
        })?;
        Ok(OrigDstLookup(Arc::new(map)))
    }

    /// Sets the programs' aya-log level at run time (0 off ..= 5 trace), in the main object and
    /// in every enrolled namespace's copy.
    ///
    /// # Errors
    /// If `level` is above 5 or a `CONFIG` map cannot be written.
    pub fn set_log_level(&mut self, level: u32) -> Result<(), RedirectError> {
        config_map::check_log_level(level)?;
        config_map::set_log_level(&mut self.ebpf, level)?;
        // Namespaces enrolled from now on get the new level even if a copy below fails.
        self.log_level = level;
        for namespace in self.namespaces.values_mut() {
            namespace.set_log_level(level)?;
        }
        Ok(())
    }

    /// The `ENROLLED` map of the main object.
    fn enrolled(&mut self) -> Result<BpfHashMap<&mut aya::maps::MapData, u64, u32>, RedirectError> {
        let map = self
            .ebpf
            .map_mut(maps::ENROLLED)
            .ok_or(RedirectError::MissingMap {
                map: maps::ENROLLED,
            })?;
        BpfHashMap::try_from(map).map_err(|err| {
            RedirectError::map(maps::ENROLLED, "opening as a HashMap<u64, u32>", err)
        })
    }
}

impl fmt::Debug for Redirector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut enrolled: Vec<u64> = self.namespaces.keys().copied().collect();
        enrolled.sort_unstable();
        f.debug_struct("Redirector")
            .field("cgroup", &self.cgroup)
            .field("mark", &self.mark)
            .field("log_level", &self.log_level)
            .field("enrolled", &enrolled)
            .finish_non_exhaustive()
    }
}

/// The embedded eBPF object (built by `build.rs`).
fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/mesh-redirect.o"))
}

/// The program `name` of `ebpf` as its kind `T`.
fn program_mut<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, RedirectError>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    let program = ebpf
        .program_mut(name)
        .ok_or(RedirectError::MissingProgram { program: name })?;
    program
        .try_into()
        .map_err(|err| RedirectError::program(name, "checking the program type", err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirector_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Redirector>();
    }

    #[tokio::test]
    async fn missing_cgroup_folder_is_named() {
        let missing = PathBuf::from("/nonexistent/ztunnel-redirect-missing-cgroup");
        let err = Redirector::load(&RedirectConfig {
            cgroup: missing.clone(),
            mark: mesh_common::DEFAULT_PACKET_MARK,
            log_level: 0,
        })
        .expect_err("a missing cgroup folder must fail");
        assert!(
            matches!(&err, RedirectError::Cgroup { path, .. } if *path == missing),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("/nonexistent/ztunnel-redirect-missing-cgroup"),
            "{err}"
        );
    }

    #[test]
    fn log_level_above_trace_is_refused() {
        let err = config_map::check_log_level(6).expect_err("6 is above trace");
        assert!(err.to_string().contains("CONFIG"), "{err}");
        assert!(config_map::check_log_level(5).is_ok());
    }

    #[test]
    fn embedded_object_is_an_ebpf_elf() {
        let object = object();
        assert_eq!(&object[..4], b"\x7fELF");
        // EM_BPF (247) in e_machine.
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
    }
}
