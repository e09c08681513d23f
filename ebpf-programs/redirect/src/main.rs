//! eBPF programs that redirect an enrolled pod's TCP at the socket layer (DESIGN.md section 3).
//!
//! One object, `mesh-redirect`, holds every program and map; the names are the ABI with the
//! node agent and live in `mesh_common::{programs, maps}`.
//!
//! # Programs
//! - `mesh_connect4` / `mesh_connect6` (`cgroup/connect4`, `cgroup/connect6`): outbound capture.
//!   Save the dialled address by socket cookie and rewrite the destination to
//!   `127.0.0.1:15001` (`[::ffff:127.0.0.1]` for IPv4-mapped, `[::1]` for native IPv6 when
//!   enabled).
//! - `mesh_sockops` (`sockops`): when the redirected connection is established, re-key the saved
//!   address by (netns cookie, the app socket's local address), which is the peer of the socket
//!   the agent accepts.
//! - `mesh_getsockopt` (`cgroup/getsockopt`): answers `SO_ORIGINAL_DST` (`SOL_IP`) and
//!   `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`) on the agent's accepted sockets.
//! - `mesh_getpeername4` / `mesh_getpeername6` (`cgroup/getpeername4/6`): the app sees the
//!   address it dialled.
//! - `mesh_sk_lookup` (`sk_lookup`): inbound capture; attached once per enrolled namespace,
//!   it steers TCP arriving on a non-loopback interface to the listener in `INBOUND_LISTENER`.
//!
//! # Per-namespace sk_lookup
//! `sk_lookup` programs cannot call `bpf_get_netns_cookie` (checked on 6.18), so the program
//! cannot tell namespaces apart and the agent loads one copy of this object per enrolled
//! namespace, using only `mesh_sk_lookup`, `INBOUND_LISTENER` and `CONFIG` from it. `mesh_sk_lookup`
//! touches no other map, so the copy may shrink the others with
//! `EbpfLoader::map_max_entries(name, 1)` (or share them with `map_pin_path`).
//!
//! # Diagnostics
//! aya-log records are emitted only when `CONFIG[LOG_LEVEL]` (written by user space at run time)
//! is at least the record's level; the default, 0, turns them all off at the cost of one array
//! lookup per program run.
#![no_std]
#![no_main]

mod connect;
mod maps;
mod peername;
mod sk_lookup;
mod sockops;
mod sockopt;
mod util;

/// The kernel accepts GPL-only helpers only for a GPL-compatible licence string; this one matches
/// the crate's `GPL-2.0 OR MIT`.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: eBPF code cannot panic at run time: the verifier rejects any path that would reach
    // here, and the release profile aborts on panic.
    unsafe { core::hint::unreachable_unchecked() }
}
