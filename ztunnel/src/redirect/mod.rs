//! Loading and driving the eBPF redirection programs (`ebpf-programs/redirect`).
//!
//! The object `mesh-redirect` is built by `build.rs` and embedded in the binary (or read from
//! [`RedirectConfig::object`]). [`Redirector`] loads it, attaches its cgroup programs, and
//! enrolls pods (network namespaces, known by their [`netns_cookie`]).
//!
//! # Lifecycle
//! With a pin folder ([`RedirectConfig::pin_dir`], see `pins`), the shared maps and the cgroup
//! programs' links are pinned there: they outlive the agent, so enrolled pods stay captured
//! while it restarts, and the next agent takes them over (the same maps, the same links now
//! running its programs) instead of attaching a second copy. [`uninstall`] removes them.
//! Without one, everything is detached when the [`Redirector`] is dropped. The per-namespace
//! sk_lookup copies' links are pinned too, so that inbound to an enrolled pod is refused, not
//! let through, while no agent serves it; the next agent's copy replaces each.
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

mod cgroup_link;
mod config_map;
mod error;
mod logs;
mod netns;
mod object;
mod orig_dst;
mod pins;
mod sk_lookup;
mod sock_addr;
mod sock_ops;
mod sockopt;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::HashMap as BpfHashMap,
    programs::{Program, ProgramError},
};
use mesh_common::{maps, programs};

use cgroup_link::CgroupLink;
use object::Object;
use pins::{Attached, PinDir};

pub use error::RedirectError;
pub use netns::netns_cookie;
pub use orig_dst::OrigDstLookup;
pub use pins::{DEFAULT_PIN_DIR, uninstall};

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
    /// Folder on a bpf filesystem where the shared maps and the cgroup programs' links are
    /// pinned, so that they outlive the redirector (see the module's "Lifecycle"); a bpf
    /// filesystem is mounted at `/sys/fs/bpf` if the folder is under it and none is mounted.
    /// `None`: nothing pinned, everything detached on drop. The agent's default is
    /// [`DEFAULT_PIN_DIR`].
    pub pin_dir: Option<PathBuf>,
    /// An eBPF object file to load instead of the built-in one (`None`, the default).
    pub object: Option<PathBuf>,
}

/// The loaded redirection programs: the cgroup programs attached to [`RedirectConfig::cgroup`],
/// and one sk_lookup copy per enrolled namespace. Dropping it detaches the sk_lookup copies,
/// and the cgroup programs too unless they are pinned.
pub struct Redirector {
    /// The main object; owns the `ENROLLED` map.
    ebpf: Ebpf,
    /// The cgroup programs' links, in attachment order. Unpinned, closing them detaches.
    _links: Vec<CgroupLink>,
    /// Cookies found in a pinned `ENROLLED` at load and not enrolled since (see
    /// [`Redirector::remove_stale`]).
    inherited: HashSet<u64>,
    /// The object, for the per-namespace copies.
    object: Object,
    /// The loader of the per-namespace copies, kept so that the kernel's BTF is parsed once
    /// and not for every pod (`EbpfLoader::new` parses it: tens of milliseconds and 15 MiB).
    /// `None` when the object needs that BTF: each copy then gets a fresh loader, so that
    /// it is not held for the agent's lifetime.
    copy_loader: Option<EbpfLoader<'static>>,
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
    /// The pin folder, locked for as long as the redirector lives. Last, so that the lock is
    /// released only after everything else is dropped.
    pins: Option<PinDir>,
}

/// The kinds of cgroup program, each with its own module.
#[derive(Clone, Copy, Debug)]
enum CgroupKind {
    SockOps,
    Sockopt,
    SockAddr,
}

impl CgroupKind {
    /// Loads the program `name` of this kind into the kernel.
    fn load(self, ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
        match self {
            Self::SockOps => sock_ops::load(ebpf, name),
            Self::Sockopt => sockopt::load(ebpf, name),
            Self::SockAddr => sock_addr::load(ebpf, name),
        }
    }

    /// The attach type (`BPF_CGROUP_*`) of the program `name` of this kind.
    fn attach_type(self, name: &'static str) -> Result<u32, RedirectError> {
        match self {
            Self::SockOps => sock_ops::attach_type(name),
            Self::Sockopt => sockopt::attach_type(name),
            Self::SockAddr => sock_addr::attach_type(name),
        }
    }

    /// Attaches the loaded program `name` of this kind to `cgroup` (open at `path`).
    fn attach(
        self,
        ebpf: &Ebpf,
        name: &'static str,
        cgroup: &File,
        path: &Path,
    ) -> Result<CgroupLink, RedirectError> {
        CgroupLink::attach(ebpf, name, self.attach_type(name)?, cgroup, path)
    }
}

/// The cgroup programs, in attachment order: everything that serves a redirected connection is
/// in place before `mesh_connect4/6` start redirecting.
const CGROUP_PROGRAMS: [(&str, CgroupKind); 6] = [
    (programs::SOCKOPS, CgroupKind::SockOps),
    (programs::GETSOCKOPT, CgroupKind::Sockopt),
    (programs::GETPEERNAME4, CgroupKind::SockAddr),
    (programs::GETPEERNAME6, CgroupKind::SockAddr),
    (programs::CONNECT4, CgroupKind::SockAddr),
    (programs::CONNECT6, CgroupKind::SockAddr),
];

impl Redirector {
    /// Loads the object, writes `CONFIG` (mark, ports 15001/15006, log level), attaches
    /// `mesh_sockops`, `mesh_getsockopt`, `mesh_getpeername4`, `mesh_getpeername6`,
    /// `mesh_connect4` and `mesh_connect6` to `cfg.cgroup`, and starts forwarding the
    /// programs' aya-log records to `tracing`.
    ///
    /// With a pin folder, the maps pinned there by an earlier agent are used instead of new
    /// ones (unless their layout changed), and a program whose link is pinned there for this
    /// cgroup replaces the link's old program in place; other links are made and pinned. The
    /// namespaces the earlier agent left in `ENROLLED` stay until [`Redirector::remove_stale`].
    ///
    /// Must be called from inside a tokio runtime (the log reader is a task).
    ///
    /// # Errors
    /// If the cgroup folder cannot be opened, the object file cannot be read or is not an
    /// eBPF object (the error names the file), the pin folder cannot be prepared, the log
    /// level is above 5, there is no tokio runtime, or the kernel refuses to load (with the
    /// program's name and the verifier log) or attach a program.
    pub fn load(cfg: &RedirectConfig) -> Result<Self, RedirectError> {
        let cgroup_error = |source| RedirectError::Cgroup {
            path: cfg.cgroup.clone(),
            source,
        };
        let cgroup = File::open(&cfg.cgroup).map_err(cgroup_error)?;
        let cgroup_id = cgroup_link::cgroup_id(&cgroup).map_err(cgroup_error)?;
        config_map::check_log_level(cfg.log_level)?;
        let object = match &cfg.object {
            Some(path) => Object::from_file(path)?,
            None => Object::embedded(),
        };
        let pins = cfg.pin_dir.as_deref().map(PinDir::open).transpose()?;
        let mut loader = EbpfLoader::new();
        if let Some(pins) = &pins {
            let same = |old: &PathBuf| {
                old == &cfg.cgroup
                    || matches!(
                        (old.canonicalize(), cfg.cgroup.canonicalize()),
                        (Ok(a), Ok(b)) if a == b
                    )
            };
            if let Some(old) = pins.recorded_cgroup().filter(|old| !same(old)) {
                tracing::warn!(
                    pin_dir = %pins.path().display(),
                    old = %old.display(),
                    new = %cfg.cgroup.display(),
                    "the pinned links belong to another cgroup; moving them"
                );
            }
            pins.drop_incompatible_maps()?;
            for (name, ..) in pins::PINNED_MAPS {
                loader.map_pin_path(name, pins.map(name));
            }
        }
        let mut ebpf = loader
            .load(object.bytes())
            .map_err(|source| RedirectError::Object {
                object: object.to_string(),
                copy: "main".to_owned(),
                source: Box::new(source),
            })?;
        // Its copy of the kernel's BTF goes before the copies' loader parses another.
        drop(loader);
        // Before loading the programs: the reader keeps the ring buffer's fd open.
        let logs = logs::LogReader::start(&mut ebpf, "main")?;
        config_map::write(&mut ebpf, cfg.mark, cfg.log_level)?;
        for (name, kind) in CGROUP_PROGRAMS {
            kind.load(&mut ebpf, name)?;
        }

        let path = cfg.cgroup.as_path();
        let mut links = Vec::with_capacity(CGROUP_PROGRAMS.len());
        let mut replaced = 0;
        for (name, kind) in CGROUP_PROGRAMS {
            let attach = || kind.attach(&ebpf, name, &cgroup, path);
            let link = match &pins {
                None => attach()?,
                Some(pins) => {
                    let (link, how) =
                        pins.attach(&ebpf, name, kind.attach_type(name)?, cgroup_id, attach)?;
                    if let Attached::Replaced { old_prog_id } = how {
                        tracing::debug!(
                            program = name,
                            old_prog_id,
                            "pinned link now runs the new program"
                        );
                        replaced += 1;
                    }
                    link
                }
            };
            links.push(link);
        }
        if let Some(pins) = &pins {
            pins.record_cgroup(path)?;
        }
        let mut redirector = Self {
            ebpf,
            _links: links,
            inherited: HashSet::new(),
            copy_loader: (!object.needs_kernel_btf()).then(|| sk_lookup::copy_loader(false)),
            object,
            namespaces: HashMap::new(),
            cgroup: cfg.cgroup.clone(),
            mark: cfg.mark,
            log_level: cfg.log_level,
            _logs: logs,
            pins,
        };
        if redirector.pins.is_some() {
            redirector.inherited = redirector.enrolled_cookies()?;
        }
        tracing::info!(
            cgroup = %path.display(),
            pin_dir = ?cfg.pin_dir,
            object = %redirector.object,
            links_taken_over = replaced,
            namespaces_inherited = redirector.inherited.len(),
            "eBPF redirection attached"
        );
        crate::memory::release_free_pages();
        Ok(redirector)
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
                let mut fresh;
                let loader = match &mut self.copy_loader {
                    Some(loader) => loader,
                    None => {
                        fresh = sk_lookup::copy_loader(true);
                        &mut fresh
                    }
                };
                let pin = self.pins.as_ref().map(|p| p.netns_link(cookie));
                let namespace = sk_lookup::Namespace::load(
                    loader,
                    cookie,
                    netns,
                    inbound,
                    self.mark,
                    self.log_level,
                    &self.object,
                    pin.as_deref(),
                )?;
                self.namespaces.insert(cookie, namespace);
                if self.copy_loader.is_none() {
                    // The fresh loader parsed the kernel's BTF; give its pages back.
                    crate::memory::release_free_pages();
                }
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
                // A pinned copy stays: without the listener it refuses inbound, as it should
                // for a namespace that may still be captured outbound.
                self.namespaces.remove(&cookie);
            }
            return Err(err);
        }
        self.inherited.remove(&cookie);
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
    /// If the `ENROLLED` map cannot be updated (a pinned copy then stays, refusing inbound), or
    /// the pin cannot be removed.
    pub fn unenroll(&mut self, cookie: u64) -> Result<(), RedirectError> {
        let known = self.namespaces.remove(&cookie).is_some();
        self.inherited.remove(&cookie);
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
        // After ENROLLED, so that a pin that cannot be removed leaves nothing captured.
        self.remove_netns_pin(cookie)?;
        if known {
            tracing::debug!(cookie, "network namespace unenrolled");
        }
        Ok(())
    }

    /// Removes from `ENROLLED` the namespaces that an earlier agent left there (found in the
    /// pinned map at load) and that have not been enrolled again since: their pods are gone,
    /// or no longer served here, and their captured connections would find no listener. Call
    /// it after enrolling the pods this agent serves, and again while [`has_inherited`]
    /// (`keep` names namespaces to leave as they are: pods still served whose enrollment
    /// failed this time). Logs and returns the cookies removed.
    ///
    /// [`has_inherited`]: Redirector::has_inherited
    ///
    /// # Errors
    /// If the `ENROLLED` map cannot be updated; the cookies not yet removed are kept for a
    /// later call.
    pub fn remove_stale(&mut self, keep: &HashSet<u64>) -> Result<Vec<u64>, RedirectError> {
        let mut stale: Vec<u64> = self
            .inherited
            .iter()
            .filter(|c| !keep.contains(c))
            .copied()
            .collect();
        stale.sort_unstable();
        for &cookie in &stale {
            match self.enrolled()?.remove(&cookie) {
                Ok(()) => {}
                Err(err) if error::is_not_found(&err) => {}
                Err(err) => {
                    return Err(RedirectError::map(
                        maps::ENROLLED,
                        format!("removing the stale netns cookie {cookie}"),
                        err,
                    ));
                }
            }
            self.inherited.remove(&cookie);
            tracing::info!(
                cookie,
                "removed a namespace that an earlier agent enrolled and this one does not serve"
            );
        }
        // Their sk_lookup copies too, and those of namespaces that are gone.
        if let Some(pins) = &self.pins {
            for cookie in pins.netns_links()? {
                if !self.namespaces.contains_key(&cookie) && !keep.contains(&cookie) {
                    pins.remove_netns_link(cookie)?;
                }
            }
        }
        Ok(stale)
    }

    /// Whether namespaces an earlier agent enrolled are still waiting for this one to enroll
    /// them or to remove them (see [`Redirector::remove_stale`]).
    pub fn has_inherited(&self) -> bool {
        !self.inherited.is_empty()
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
        Ok(OrigDstLookup::new(map))
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

    /// Removes the pinned sk_lookup link of `cookie`, if any (detaching the copy).
    fn remove_netns_pin(&self, cookie: u64) -> Result<(), RedirectError> {
        match &self.pins {
            Some(pins) => pins.remove_netns_link(cookie),
            None => Ok(()),
        }
    }

    /// The keys of `ENROLLED`.
    fn enrolled_cookies(&mut self) -> Result<HashSet<u64>, RedirectError> {
        self.enrolled()?
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|err| RedirectError::map(maps::ENROLLED, "listing the netns cookies", err))
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
            .field("pin_dir", &self.pins.as_ref().map(PinDir::path))
            .field("object", &self.object)
            .field("enrolled", &enrolled)
            .finish_non_exhaustive()
    }
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
            pin_dir: None,
            object: None,
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

    #[tokio::test]
    async fn a_corrupt_object_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let corrupt = dir.path().join("corrupt-object.o");
        std::fs::write(&corrupt, b"\x7fELF but nothing else").unwrap();
        let err = Redirector::load(&RedirectConfig {
            // Any folder opens; the object is read before anything is attached.
            cgroup: dir.path().to_owned(),
            mark: mesh_common::DEFAULT_PACKET_MARK,
            log_level: 0,
            pin_dir: None,
            object: Some(corrupt.clone()),
        })
        .expect_err("a corrupt object must fail");
        assert!(
            matches!(&err, RedirectError::NotAnObject { path, .. } if *path == corrupt),
            "{err:?}"
        );
        assert!(err.to_string().contains("corrupt-object.o"), "{err}");
    }

    #[test]
    fn embedded_object_is_an_ebpf_elf() {
        let object = object::embedded();
        assert_eq!(&object[..4], b"\x7fELF");
        // EM_BPF (247) in e_machine.
        assert_eq!(u16::from_le_bytes([object[18], object[19]]), 247);
    }
}
