//! The pin folder (`EBPF_PIN_DIR`, default [`DEFAULT_PIN_DIR`]): what keeps the redirection
//! working while the agent is down, and what `ztunnel uninstall` removes.
//!
//! # Layout
//! - `maps/<NAME>`: the main object's `ENROLLED`, `ORIG_DST_BY_COOKIE`, `ORIG_DST_BY_TUPLE` and
//!   `CONFIG` ([`PINNED_MAPS`]). A restarted agent loads its object with these maps in place of
//!   new ones (`EbpfLoader::map_pin_path`), so enrolled namespaces stay enrolled and the
//!   original destinations of open connections stay known.
//! - `links/<program>`: the `bpf_link`s of the six cgroup programs. A pinned link keeps its
//!   program attached after the agent exits; a restarted agent swaps its freshly loaded
//!   program into the same link (`BPF_LINK_UPDATE`), so the cgroup never has zero or two
//!   copies of a program.
//! - `cgroup`: a symbolic link to the cgroup folder the links are attached to (bpffs holds no
//!   regular files), for `uninstall`'s report and for people.
//!
//! - `netns/<cookie>`: the `bpf_link` of each enrolled namespace's `mesh_sk_lookup` copy, so
//!   that inbound capture fails closed while no agent runs: the copy's `INBOUND_LISTENER`
//!   loses the listener when the agent's socket closes, and the program then refuses the
//!   connection (RST) instead of letting it reach the pod in plaintext, as Istio's in-pod
//!   rules do. A restarted agent attaches a new copy when it enrolls the namespace again and
//!   then removes the old pin, which detaches the old copy. Unenrolling removes the pin.
//!
//! A running agent holds an exclusive `flock` on the folder: a second agent waits for it, and
//! `uninstall` refuses to run under a live agent.

use std::{
    ffi::CString,
    fs::{self, File},
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::maps::{MapInfo, MapType};
use mesh_common::{
    ENROLLED_MAX_ENTRIES, ORIG_DST_MAX_ENTRIES, OrigDst, TupleKey, config, maps, programs,
};

use super::{
    RedirectError,
    cgroup_link::{CgroupLink, LinkInfo},
};

/// The default pin folder.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/mesh";

/// The sub-folder of the namespaces' sk_lookup links.
const NETNS_DIR: &str = "netns";

/// Where a new pin for `pin` is made before it is renamed over `pin` (bpffs refuses names
/// with a dot). Not a cookie, so [`PinDir::netns_links`] skips it; `uninstall` removes it.
pub(super) fn staging(pin: &Path) -> PathBuf {
    let mut name = pin.as_os_str().to_owned();
    name.push("-new");
    PathBuf::from(name)
}

/// Where the agent mounts a bpf filesystem when none is mounted.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// `BPF_FS_MAGIC`, the `f_type` of a bpf filesystem.
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// How long a starting agent waits for another one to release the folder.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The maps that are pinned, with the layout this agent's object gives them (type, key size,
/// value size, max entries): a pinned map of another layout (left by another version) is
/// replaced rather than reused.
pub(super) const PINNED_MAPS: [(&str, MapType, usize, usize, u32); 4] = [
    (maps::ENROLLED, MapType::Hash, 8, 4, ENROLLED_MAX_ENTRIES),
    (
        maps::ORIG_DST_BY_COOKIE,
        MapType::LruHash,
        8,
        size_of::<OrigDst>(),
        ORIG_DST_MAX_ENTRIES,
    ),
    (
        maps::ORIG_DST_BY_TUPLE,
        MapType::LruHash,
        size_of::<TupleKey>(),
        size_of::<OrigDst>(),
        ORIG_DST_MAX_ENTRIES,
    ),
    (maps::CONFIG, MapType::Array, 4, 4, config::LEN),
];

/// The cgroup programs in the order `uninstall` detaches them: the capture (`connect4/6`)
/// stops first, what serves captured connections last.
const DETACH_ORDER: [&str; 6] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::GETPEERNAME4,
    programs::GETPEERNAME6,
    programs::GETSOCKOPT,
    programs::SOCKOPS,
];

/// The agent's pin folder, locked for as long as this value lives.
#[derive(Debug)]
pub(super) struct PinDir {
    path: PathBuf,
    /// The folder, open and `flock`ed.
    _lock: File,
}

/// How [`PinDir::attach`] put a program in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Attached {
    /// A new link, now pinned.
    New,
    /// The pinned link of an earlier agent, now running the new program (whose id this was).
    Replaced {
        /// The id of the program the link ran before.
        old_prog_id: u32,
    },
}

impl PinDir {
    /// Prepares `path` for an agent: mounts a bpf filesystem at `/sys/fs/bpf` if `path` is
    /// under it and none is mounted (and logs it), creates the folders, and takes the lock
    /// (waiting up to 30 s for another agent to release it).
    ///
    /// # Errors
    /// [`RedirectError::NotBpffs`] when `path` is not on a bpf filesystem and cannot be put on
    /// one, [`RedirectError::PinBusy`] when the lock stays held, [`RedirectError::Pin`] for
    /// the file operations.
    pub(super) fn open(path: &Path) -> Result<Self, RedirectError> {
        ensure_bpffs(path)?;
        for dir in [
            path.to_owned(),
            path.join("maps"),
            path.join("links"),
            path.join(NETNS_DIR),
        ] {
            fs::create_dir_all(&dir).map_err(|err| {
                RedirectError::pin(path, format!("creating {}", dir.display()), err)
            })?;
        }
        let lock = lock(path, LOCK_WAIT)?;
        Ok(Self {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    /// The folder.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Where the map `name` is pinned.
    pub(super) fn map(&self, name: &str) -> PathBuf {
        self.path.join("maps").join(name)
    }

    /// Where the link of the cgroup program `name` is pinned.
    pub(super) fn link(&self, name: &str) -> PathBuf {
        self.path.join("links").join(name)
    }

    /// Where the sk_lookup link of the namespace `cookie` is pinned.
    pub(super) fn netns_link(&self, cookie: u64) -> PathBuf {
        self.path.join(NETNS_DIR).join(cookie.to_string())
    }

    /// The namespaces with a pinned sk_lookup link.
    pub(super) fn netns_links(&self) -> Result<Vec<u64>, RedirectError> {
        Ok(entries(&self.path.join(NETNS_DIR), &self.path)?
            .iter()
            .filter_map(|n| n.to_str()?.parse().ok())
            .collect())
    }

    /// Removes the pinned sk_lookup link of the namespace `cookie`, which detaches it unless
    /// a live agent still holds it; fine if there is none.
    pub(super) fn remove_netns_link(&self, cookie: u64) -> Result<(), RedirectError> {
        remove(&self.path, &self.netns_link(cookie))
    }

    /// The cgroup an earlier agent recorded, if any.
    pub(super) fn recorded_cgroup(&self) -> Option<PathBuf> {
        fs::read_link(self.path.join("cgroup")).ok()
    }

    /// Records `cgroup` as the one the links are attached to.
    pub(super) fn record_cgroup(&self, cgroup: &Path) -> Result<(), RedirectError> {
        let record = self.path.join("cgroup");
        if fs::read_link(&record).is_ok_and(|old| old == cgroup) {
            return Ok(());
        }
        match fs::remove_file(&record) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(RedirectError::pin(
                    &self.path,
                    "removing the old cgroup record",
                    err,
                ));
            }
        }
        std::os::unix::fs::symlink(cgroup, &record).map_err(|err| {
            RedirectError::pin(
                &self.path,
                format!(
                    "recording the cgroup {} (a symbolic link)",
                    cgroup.display()
                ),
                err,
            )
        })
    }

    /// Removes the pins of maps whose layout differs from [`PINNED_MAPS`] (left by another
    /// version of the object), so that the loader makes new ones; logs each.
    pub(super) fn drop_incompatible_maps(&self) -> Result<(), RedirectError> {
        for (name, map_type, key, value, max) in PINNED_MAPS {
            let pin = self.map(name);
            if fs::symlink_metadata(&pin).is_err() {
                continue;
            }
            let problem = match MapInfo::from_pin(&pin) {
                Ok(info) => {
                    let found = (
                        info.map_type().ok(),
                        info.key_size() as usize,
                        info.value_size() as usize,
                        info.max_entries(),
                    );
                    (found != (Some(map_type), key, value, max)).then(|| {
                        format!(
                            "found {found:?}, want {:?}",
                            (Some(map_type), key, value, max)
                        )
                    })
                }
                Err(err) => Some(format!("cannot be opened: {err}")),
            };
            if let Some(problem) = problem {
                tracing::warn!(
                    map = name,
                    pin = %pin.display(),
                    problem,
                    "the pinned map does not match this agent's eBPF object; replacing it (its entries are lost)"
                );
                fs::remove_file(&pin).map_err(|err| {
                    RedirectError::pin(&self.path, format!("removing the pin of map {name}"), err)
                })?;
            }
        }
        Ok(())
    }

    /// Puts the loaded cgroup program `name` (of attach type `attach_type`) in place on the
    /// cgroup whose id is `cgroup_id`: if a pinned link of an earlier agent runs it on that
    /// cgroup, the link is switched to the new program in one step; otherwise (no pin, or one
    /// for another cgroup or already detached) the old link is detached and `attach` makes a
    /// new one, which is pinned.
    pub(super) fn attach(
        &self,
        ebpf: &aya::Ebpf,
        name: &'static str,
        attach_type: u32,
        cgroup_id: u64,
        attach: impl FnOnce() -> Result<CgroupLink, RedirectError>,
    ) -> Result<(CgroupLink, Attached), RedirectError> {
        let pin = self.link(name);
        if fs::symlink_metadata(&pin).is_ok() {
            let old = CgroupLink::open_pinned(&pin).and_then(|link| {
                let info = link.info()?;
                Ok((link, info))
            });
            match old {
                Ok((link, info))
                    if info.is_cgroup
                        && info.cgroup_id == cgroup_id
                        && info.attach_type == attach_type =>
                {
                    link.update(ebpf, name)?;
                    return Ok((
                        link,
                        Attached::Replaced {
                            old_prog_id: info.prog_id,
                        },
                    ));
                }
                Ok((link, info)) => {
                    tracing::warn!(
                        program = name,
                        pin = %pin.display(),
                        ?info,
                        cgroup_id,
                        "the pinned link is not attached to this cgroup; detaching it and attaching anew"
                    );
                    let _ = link.detach();
                }
                Err(err) => tracing::warn!(
                    program = name,
                    pin = %pin.display(),
                    %err,
                    "the pin is not a usable link; replacing it"
                ),
            }
            fs::remove_file(&pin).map_err(|err| {
                RedirectError::link(name, format!("removing the old pin {}", pin.display()), err)
            })?;
        }
        let link = attach()?;
        link.pin(&pin).map_err(|err| {
            RedirectError::link(name, format!("pinning at {}", pin.display()), err)
        })?;
        Ok((link, Attached::New))
    }
}

/// Detaches and removes everything in the pin folder `path` (the cgroup links first, the
/// capture first among them; then maps, the namespaces' sk_lookup links, the cgroup record,
/// anything else, the folder). Returns one line per
/// thing removed; a folder that does not exist gives one line saying so.
///
/// # Errors
/// [`RedirectError::PinBusy`] while an agent holds the folder; [`RedirectError::Pin`] or
/// [`RedirectError::Link`] when something cannot be removed (what was removed before stays
/// removed, and running it again continues).
pub fn uninstall(path: &Path) -> Result<Vec<String>, RedirectError> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(vec![format!(
            "nothing to remove: {} does not exist",
            path.display()
        )]);
    }
    let _lock = lock(path, Duration::ZERO)?;
    let mut report = Vec::new();
    let cgroup = fs::read_link(path.join("cgroup")).ok();
    let cgroup_name = cgroup.as_ref().map_or_else(
        || "an unrecorded cgroup".to_owned(),
        |c| c.display().to_string(),
    );

    let links = path.join("links");
    let mut names = entries(&links, path)?;
    // Known programs in DETACH_ORDER, then anything else by name.
    names.sort_by_key(|n| {
        let known = DETACH_ORDER.iter().position(|p| n.as_os_str() == *p);
        (known.unwrap_or(DETACH_ORDER.len()), n.clone())
    });
    for name in names {
        let pin = links.join(&name);
        let line = match CgroupLink::open_pinned(&pin) {
            Ok(link) => {
                let info = link.info().ok();
                match link.detach() {
                    Ok(()) => format!(
                        "detached {} from {cgroup_name}{}",
                        name.display(),
                        describe(info)
                    ),
                    // Already detached: its cgroup is gone.
                    Err(err) if err.raw_os_error() == Some(libc::ENOLINK) => {
                        format!("{} was already detached{}", name.display(), describe(info))
                    }
                    Err(err) => {
                        return Err(RedirectError::Pin {
                            path: path.to_owned(),
                            action: format!("detaching the link {}", pin.display()),
                            source: err,
                        });
                    }
                }
            }
            Err(err) => format!("{} is not a link ({err})", pin.display()),
        };
        remove(path, &pin)?;
        report.push(format!("{line}; removed {}", pin.display()));
    }
    let maps_dir = path.join("maps");
    for name in entries(&maps_dir, path)? {
        let pin = maps_dir.join(&name);
        remove(path, &pin)?;
        report.push(format!(
            "removed map {} ({})",
            name.display(),
            pin.display()
        ));
    }
    let netns_dir = path.join(NETNS_DIR);
    for name in entries(&netns_dir, path)? {
        let pin = netns_dir.join(&name);
        remove(path, &pin)?;
        report.push(format!(
            "detached mesh_sk_lookup from the network namespace with cookie {}; removed {}",
            name.display(),
            pin.display()
        ));
    }
    if let Some(cgroup) = &cgroup {
        let record = path.join("cgroup");
        remove(path, &record)?;
        report.push(format!(
            "removed the cgroup record {} -> {}",
            record.display(),
            cgroup.display()
        ));
    }
    for name in entries(path, path)? {
        let other = path.join(&name);
        if other == links || other == maps_dir || other == netns_dir {
            continue;
        }
        remove(path, &other)?;
        report.push(format!("removed {}", other.display()));
    }
    for dir in [&links, &maps_dir, &netns_dir] {
        match fs::remove_dir(dir) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(RedirectError::pin(
                    path,
                    format!("removing {}", dir.display()),
                    err,
                ));
            }
        }
    }
    fs::remove_dir(path).map_err(|err| RedirectError::pin(path, "removing the folder", err))?;
    report.push(format!("removed the pin folder {}", path.display()));
    Ok(report)
}

/// ` (link 12, program 34)`, or nothing when the link's information is unknown.
fn describe(info: Option<LinkInfo>) -> String {
    info.map_or_else(String::new, |i| {
        format!(" (link {}, program {})", i.id, i.prog_id)
    })
}

/// The names in the folder `dir` (none if it does not exist); `pins` names the pin folder in
/// errors.
fn entries(dir: &Path, pins: &Path) -> Result<Vec<PathBuf>, RedirectError> {
    let read = match fs::read_dir(dir) {
        Ok(read) => read,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(RedirectError::pin(
                pins,
                format!("listing {}", dir.display()),
                err,
            ));
        }
    };
    let mut names = Vec::new();
    for entry in read {
        let entry = entry
            .map_err(|err| RedirectError::pin(pins, format!("listing {}", dir.display()), err))?;
        names.push(PathBuf::from(entry.file_name()));
    }
    names.sort();
    Ok(names)
}

/// Removes the pin, record or folder at `what`, inside the pin folder `pins`.
fn remove(pins: &Path, what: &Path) -> Result<(), RedirectError> {
    let is_dir = fs::symlink_metadata(what).is_ok_and(|m| m.is_dir());
    let removed = if is_dir {
        fs::remove_dir_all(what)
    } else {
        fs::remove_file(what)
    };
    match removed {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(err) => Err(RedirectError::pin(
            pins,
            format!("removing {}", what.display()),
            err,
        )),
    }
}

/// Opens the folder `path` and takes an exclusive `flock` on it, retrying for up to `wait`.
fn lock(path: &Path, wait: Duration) -> Result<File, RedirectError> {
    let dir = File::open(path).map_err(|err| RedirectError::pin(path, "opening", err))?;
    let start = Instant::now();
    let mut said = false;
    loop {
        // SAFETY: flock on an fd that `dir` keeps open; no memory is involved.
        let rc = unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc == 0 {
            return Ok(dir);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(RedirectError::pin(path, "locking (flock)", err));
        }
        if start.elapsed() >= wait {
            return Err(RedirectError::PinBusy {
                path: path.to_owned(),
                waited: if wait.is_zero() {
                    String::new()
                } else {
                    format!(" (waited {wait:?} for it to exit)")
                },
            });
        }
        if !said {
            tracing::info!(pin_dir = %path.display(), "another agent holds the pin folder; waiting for it to exit");
            said = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Makes sure `path` is (or will be, once created) on a bpf filesystem, mounting one at
/// `/sys/fs/bpf` if `path` is under it and none is mounted there.
fn ensure_bpffs(path: &Path) -> Result<(), RedirectError> {
    let existing = path
        .ancestors()
        .find(|a| !a.as_os_str().is_empty() && a.exists());
    if let Some(existing) = existing
        && is_bpffs(existing).map_err(|err| RedirectError::pin(path, "statfs", err))?
    {
        return Ok(());
    }
    if !path.starts_with(BPFFS_ROOT) {
        return Err(RedirectError::NotBpffs {
            path: path.to_owned(),
        });
    }
    mount_bpffs().map_err(|err| {
        RedirectError::pin(
            path,
            format!("mounting a bpf filesystem at {BPFFS_ROOT}"),
            err,
        )
    })
}

/// Mounts a bpf filesystem at `/sys/fs/bpf` unless one is there. Agents starting together
/// serialise on a `flock` of the folder, so that only one of them mounts (a second mount would
/// hide the first one's pins).
fn mount_bpffs() -> io::Result<()> {
    let root = File::open(BPFFS_ROOT)?;
    // SAFETY: flock on an fd that `root` keeps open; blocks only while another agent mounts.
    if unsafe { libc::flock(root.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if is_bpffs(Path::new(BPFFS_ROOT))? {
        return Ok(());
    }
    let c = |s: &str| CString::new(s).map_err(io::Error::other);
    let (source, target, fstype, options) = (c("bpf")?, c(BPFFS_ROOT)?, c("bpf")?, c("mode=0700")?);
    // SAFETY: all four are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    tracing::info!(
        "mounted a bpf filesystem at {BPFFS_ROOT} (none was mounted there) to pin the eBPF maps and links"
    );
    Ok(())
}

/// Whether `path` is on a bpf filesystem.
fn is_bpffs(path: &Path) -> io::Result<bool> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    // SAFETY: an all-zero `statfs` is a valid value to be overwritten.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid path string and `st` a writable `statfs`.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as u64 == BPF_FS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uninstall_of_a_missing_folder_says_so() {
        let report = uninstall(Path::new("/nonexistent/ztunnel-pins")).unwrap();
        assert_eq!(report.len(), 1, "{report:?}");
        assert!(report[0].contains("nothing to remove"), "{report:?}");
    }

    #[test]
    fn a_folder_outside_bpffs_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = ensure_bpffs(&dir.path().join("pins")).expect_err("a tmp folder is not bpffs");
        assert!(matches!(err, RedirectError::NotBpffs { .. }), "{err:?}");
    }
}
