//! The [`CgroupSockAddr`] programs: `mesh_connect4` and `mesh_connect6` (outbound capture:
//! rewrite an enrolled app's `connect()` to the agent's 15001 listener) and `mesh_getpeername4`
//! and `mesh_getpeername6` (the app sees the address it dialled).
//!
//! # Minimum kernel version
//!
//! 5.8, for `cgroup/getpeername4/6`. (`cgroup/connect4/6` alone: 4.17; `bpf_get_netns_cookie`
//! in them and attaching through a `bpf_link`: 5.7.)

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockAddr, cgroup_sock_addr::CgroupSockAddrLinkId},
};

use super::{RedirectError, program_mut};

/// Loads the `CgroupSockAddr` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<CgroupSockAddr>(ebpf, name)?
        .load()
        .map_err(|err| RedirectError::program(name, "loading", err))
}

/// Attaches the loaded program `name` to the cgroup `cgroup` (open at `path`). The link is owned
/// by `ebpf`: dropping it detaches the program.
pub(super) fn attach(
    ebpf: &mut Ebpf,
    name: &'static str,
    cgroup: &File,
    path: &Path,
) -> Result<CgroupSockAddrLinkId, RedirectError> {
    program_mut::<CgroupSockAddr>(ebpf, name)?
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|err| {
            RedirectError::program(name, format!("attaching to cgroup {}", path.display()), err)
        })
}
