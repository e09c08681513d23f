//! [`CgroupLink`]: a cgroup program's attachment as a `bpf_link` that can be pinned, opened
//! again from its pin, pointed at a new program, and detached.
//!
//! aya 0.14 attaches cgroup programs through links, but cannot hand out the link of a
//! `CgroupSockopt` as an [`aya::programs::links::FdLink`] (so it cannot be pinned) and has no
//! public `BPF_LINK_UPDATE`. These few `bpf(2)` commands are made here directly, the same way
//! for all six cgroup programs.
//!
//! # Minimum kernel version
//!
//! 5.7 (`BPF_LINK_CREATE` and `BPF_LINK_UPDATE` for cgroups); `BPF_LINK_DETACH`: 5.9.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::Ebpf;

use super::RedirectError;

/// `BPF_CGROUP_SOCK_OPS` (`enum bpf_attach_type`).
pub(super) const BPF_CGROUP_SOCK_OPS: u32 = 3;
/// `BPF_CGROUP_INET4_CONNECT`.
pub(super) const BPF_CGROUP_INET4_CONNECT: u32 = 10;
/// `BPF_CGROUP_INET6_CONNECT`.
pub(super) const BPF_CGROUP_INET6_CONNECT: u32 = 11;
/// `BPF_CGROUP_GETSOCKOPT`.
pub(super) const BPF_CGROUP_GETSOCKOPT: u32 = 21;
/// `BPF_CGROUP_INET4_GETPEERNAME`.
pub(super) const BPF_CGROUP_INET4_GETPEERNAME: u32 = 29;
/// `BPF_CGROUP_INET6_GETPEERNAME`.
pub(super) const BPF_CGROUP_INET6_GETPEERNAME: u32 = 30;

/// `BPF_LINK_TYPE_CGROUP` (`enum bpf_link_type`).
const BPF_LINK_TYPE_CGROUP: u32 = 3;

/// `enum bpf_cmd` values used here.
const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_LINK_UPDATE: libc::c_long = 29;
const BPF_LINK_DETACH: libc::c_long = 34;

/// An attachment of a program to a cgroup. Dropping it closes the link's fd: the program stays
/// attached only if the link is pinned (or another fd refers to it).
#[derive(Debug)]
pub(super) struct CgroupLink {
    fd: OwnedFd,
}

/// What the kernel says about a link (`struct bpf_link_info`, the cgroup part).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct LinkInfo {
    /// The link's id (as `bpftool link show` lists it).
    pub id: u32,
    /// The id of the program the link runs.
    pub prog_id: u32,
    /// Whether it is a cgroup link at all.
    pub is_cgroup: bool,
    /// The cgroup's id (its inode number on cgroup v2); 0 once the cgroup is gone.
    pub cgroup_id: u64,
    /// The attach type (`BPF_CGROUP_*`).
    pub attach_type: u32,
}

impl CgroupLink {
    /// Attaches the loaded program `name` of `ebpf` to `cgroup` as `attach_type`
    /// (`BPF_LINK_CREATE`). `path` names the cgroup in the error.
    pub(super) fn attach(
        ebpf: &Ebpf,
        name: &'static str,
        attach_type: u32,
        cgroup: &File,
        path: &Path,
    ) -> Result<Self, RedirectError> {
        let prog = program_fd(ebpf, name)?;
        let attr = LinkCreateAttr {
            prog_fd: prog.as_raw_fd() as u32,
            target_fd: cgroup.as_raw_fd() as u32,
            attach_type,
            flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_LINK_CREATE; both fds are open.
        let fd = unsafe { sys_bpf(BPF_LINK_CREATE, &attr) }.map_err(|err| {
            RedirectError::link(name, format!("attaching to cgroup {}", path.display()), err)
        })?;
        // SAFETY: BPF_LINK_CREATE returned a new fd that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Opens the link pinned at `path` (`BPF_OBJ_GET`).
    pub(super) fn open_pinned(path: &Path) -> io::Result<Self> {
        let path = c_path(path)?;
        let attr = ObjAttr {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_OBJ_GET; `path` outlives the call.
        let fd = unsafe { sys_bpf(BPF_OBJ_GET, &attr) }?;
        // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Pins the link at `path` (`BPF_OBJ_PIN`): it then stays attached after its fd is closed,
    /// until the pin is removed.
    pub(super) fn pin(&self, path: &Path) -> io::Result<()> {
        let c = c_path(path)?;
        let attr = ObjAttr {
            pathname: c.as_ptr() as u64,
            bpf_fd: self.fd.as_raw_fd() as u32,
            file_flags: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_OBJ_PIN; `c` outlives the call.
        unsafe { sys_bpf(BPF_OBJ_PIN, &attr) }.map(drop)
    }

    /// Makes the link run the loaded program `name` of `ebpf` instead of its current one, in
    /// one step (`BPF_LINK_UPDATE`): no moment without a program, none with two.
    pub(super) fn update(&self, ebpf: &Ebpf, name: &'static str) -> Result<(), RedirectError> {
        let prog = program_fd(ebpf, name)?;
        let attr = LinkUpdateAttr {
            link_fd: self.fd.as_raw_fd() as u32,
            new_prog_fd: prog.as_raw_fd() as u32,
            flags: 0,
            old_prog_fd: 0,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_LINK_UPDATE; both fds are open.
        unsafe { sys_bpf(BPF_LINK_UPDATE, &attr) }
            .map(drop)
            .map_err(|err| RedirectError::link(name, "replacing the pinned link's program", err))
    }

    /// Detaches the link from its cgroup now, whoever else holds it (`BPF_LINK_DETACH`).
    pub(super) fn detach(&self) -> io::Result<()> {
        let attr = LinkDetachAttr {
            link_fd: self.fd.as_raw_fd() as u32,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_LINK_DETACH; the fd is open.
        unsafe { sys_bpf(BPF_LINK_DETACH, &attr) }.map(drop)
    }

    /// The kernel's information about the link (`BPF_OBJ_GET_INFO_BY_FD`).
    pub(super) fn info(&self) -> io::Result<LinkInfo> {
        let mut info = RawLinkInfo::default();
        let attr = InfoAttr {
            bpf_fd: self.fd.as_raw_fd() as u32,
            info_len: std::mem::size_of::<RawLinkInfo>() as u32,
            info: (&raw mut info) as u64,
        };
        // SAFETY: `attr` is a valid `bpf_attr` prefix for BPF_OBJ_GET_INFO_BY_FD; the kernel
        // writes at most `info_len` bytes to `info`, which lives across the call.
        unsafe { sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &attr) }?;
        let is_cgroup = info.link_type == BPF_LINK_TYPE_CGROUP;
        Ok(LinkInfo {
            id: info.id,
            prog_id: info.prog_id,
            is_cgroup,
            cgroup_id: if is_cgroup { info.cgroup_id } else { 0 },
            attach_type: if is_cgroup { info.attach_type } else { 0 },
        })
    }
}

impl AsFd for CgroupLink {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The id of a cgroup v2 folder, as `bpf_link_info` reports it: its inode number.
pub(super) fn cgroup_id(cgroup: &File) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt as _;
    Ok(cgroup.metadata()?.ino())
}

/// The fd of the loaded program `name`.
fn program_fd<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<BorrowedFd<'a>, RedirectError> {
    let program = ebpf
        .program(name)
        .ok_or(RedirectError::MissingProgram { program: name })?;
    let fd = program
        .fd()
        .map_err(|err| RedirectError::program(name, "getting the loaded program's fd", err))?;
    Ok(fd.as_fd())
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
}

/// `bpf(cmd, attr, sizeof(*attr))`. The kernel zero-fills the rest of its `union bpf_attr`.
///
/// # Safety
/// `attr` must be a valid prefix of `union bpf_attr` for `cmd`: every pointer in it valid for
/// what the command does with it, every fd in it open.
unsafe fn sys_bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<i32> {
    // SAFETY: the caller guarantees `attr`; its size is passed along, so the kernel reads no
    // further.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            std::mem::size_of::<T>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as i32)
}

/// The `link_create` part of `union bpf_attr` that cgroup links use.
#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

/// The `link_update` part of `union bpf_attr`.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// The `link_detach` part of `union bpf_attr`.
#[repr(C)]
struct LinkDetachAttr {
    link_fd: u32,
}

/// The `BPF_OBJ_PIN` / `BPF_OBJ_GET` part of `union bpf_attr`.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// The `info` part of `union bpf_attr`.
#[repr(C)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info` up to its `cgroup` member.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    link_type: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    attach_type: u32,
    _pad2: u32,
}

const _: () = assert!(std::mem::size_of::<RawLinkInfo>() == 32);
