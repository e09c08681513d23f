//! The [`SockOps`] program `mesh_sockops`: when a redirected connection is established, re-keys
//! its original destination by (netns cookie, the app socket's local address), which is the peer
//! of the socket the agent accepts.
//!
//! # Minimum kernel version
//!
//! 5.15, for `bpf_get_netns_cookie` in `sock_ops` programs (`sock_ops` itself: 4.13; attaching
//! through a `bpf_link`: 5.7). This is the highest minimum of the whole object.

use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{CgroupAttachMode, SockOps, sock_ops::SockOpsLinkId},
};

use super::{RedirectError, program_mut};

/// Loads the `SockOps` program `name` into the kernel.
pub(super) fn load(ebpf: &mut Ebpf, name: &'static str) -> Result<(), RedirectError> {
    program_mut::<SockOps>(ebpf, name)?
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
) -> Result<SockOpsLinkId, RedirectError> {
    program_mut::<SockOps>(ebpf, name)?
        .attach(cgroup, CgroupAttachMode::Single)
        .map_err(|err| {
            RedirectError::program(name, format!("attaching to cgroup {}", path.display()), err)
        })
}
