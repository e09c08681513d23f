//! The [`CgroupSockopt`] program `mesh_getsockopt`: answers `getsockopt(SOL_IP,
//! SO_ORIGINAL_DST)` (and `IP6T_SO_ORIGINAL_DST`) on the sockets the agent accepts on 15001,
//! from the address the app dialled.
//!
//! # Minimum kernel version
//!
//! 5.3 for `cgroup/getsockopt` itself; `bpf_get_netns_cookie` in it came later (before 5.15,
//! which `mesh_sockops` needs anyway). Attaching through a `bpf_link`: 5.7.

use aya::{Ebpf, programs::CgroupSockopt};
use mesh_common::programs;

use super::{RedirectError, cgroup_link::BPF_CGROUP_GETSOCKOPT, program_mut};

/// Loads the `CgroupSockopt` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<CgroupSockopt>(ebpf, name)?
        .load()
        .map_err(|err| RedirectError::program(name, "loading", err))
}

/// The attach type of the program `name` (`BPF_CGROUP_GETSOCKOPT`).
pub(super) fn attach_type(name: &'static str) -> Result<u32, RedirectError> {
    match name {
        programs::GETSOCKOPT => Ok(BPF_CGROUP_GETSOCKOPT),
        _ => Err(RedirectError::MissingProgram { program: name }),
    }
}
