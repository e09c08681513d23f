//! The [`SockOps`] program `mesh_sockops`: when a redirected connection is established, re-keys
//! its original destination by (netns cookie, the app socket's local address), which is the peer
//! of the socket the agent accepts.
//!
//! # Minimum kernel version
//!
//! 5.15, for `bpf_get_netns_cookie` in `sock_ops` programs (`sock_ops` itself: 4.13; attaching
//! through a `bpf_link`: 5.7). This is the highest minimum of the whole object.

use aya::{Ebpf, programs::SockOps};
use mesh_common::programs;

use super::{RedirectError, cgroup_link::BPF_CGROUP_SOCK_OPS, program_mut};

/// Loads the `SockOps` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<SockOps>(ebpf, name)?
        .load()
        .map_err(|err| RedirectError::program(name, "loading", err))
}

/// The attach type of the program `name` (`BPF_CGROUP_SOCK_OPS`).
pub(super) fn attach_type(name: &'static str) -> Result<u32, RedirectError> {
    match name {
        programs::SOCKOPS => Ok(BPF_CGROUP_SOCK_OPS),
        _ => Err(RedirectError::MissingProgram { program: name }),
    }
}
