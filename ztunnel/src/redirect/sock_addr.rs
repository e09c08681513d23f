//! The [`CgroupSockAddr`] programs: `mesh_connect4` and `mesh_connect6` (outbound capture:
//! rewrite an enrolled app's `connect()` to the agent's 15001 listener) and `mesh_getpeername4`
//! and `mesh_getpeername6` (the app sees the address it dialled).
//!
//! # Minimum kernel version
//!
//! 5.8, for `cgroup/getpeername4/6`. (`cgroup/connect4/6` alone: 4.17; `bpf_get_netns_cookie`
//! in them and attaching through a `bpf_link`: 5.7.)

use aya::{Ebpf, programs::CgroupSockAddr};

use mesh_common::programs;

use super::{
    RedirectError,
    cgroup_link::{
        BPF_CGROUP_INET4_CONNECT, BPF_CGROUP_INET4_GETPEERNAME, BPF_CGROUP_INET6_CONNECT,
        BPF_CGROUP_INET6_GETPEERNAME,
    },
    program_mut,
};

/// Loads the `CgroupSockAddr` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<CgroupSockAddr>(ebpf, name)?
        .load()
        .map_err(|err| RedirectError::program(name, "loading", err))
}

/// The attach type of the program `name`: `connect4/6` or `getpeername4/6`.
pub(super) fn attach_type(name: &'static str) -> Result<u32, RedirectError> {
    match name {
        programs::CONNECT4 => Ok(BPF_CGROUP_INET4_CONNECT),
        programs::CONNECT6 => Ok(BPF_CGROUP_INET6_CONNECT),
        programs::GETPEERNAME4 => Ok(BPF_CGROUP_INET4_GETPEERNAME),
        programs::GETPEERNAME6 => Ok(BPF_CGROUP_INET6_GETPEERNAME),
        _ => Err(RedirectError::MissingProgram { program: name }),
    }
}
