//! The [`CgroupSockopt`] program `mesh_getsockopt`: answers `getsockopt(SOL_IP,
//! SO_ORIGINAL_DST)` (and `IP6T_SO_ORIGINAL_DST`) on the sockets the agent accepts on 15001,
//! from the address the app dialled.
//!
//! # Minimum kernel version
//!
//! 5.3 for `cgroup/getsockopt` itself; `bpf_get_netns_cookie` in it came later (before 5.15,
//! which `mesh_sockops` needs anyway). Attaching through a `bpf_link`: 5.7.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, CgroupSockopt, cgroup_sockopt::CgroupSockoptLinkId},
};

use super::{RedirectError, program_mut};

/// Loads the `CgroupSockopt` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<CgroupSockopt>(ebpf, name)?
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
) -> Result<CgroupSockoptLinkId, RedirectError> {
    program_mut::<CgroupSockopt>(ebpf, name)?
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|err| {
            RedirectError::program(name, format!("attaching to cgroup {}", path.display()), err)
        })
}
