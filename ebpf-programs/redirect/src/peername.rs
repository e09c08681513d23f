//! `mesh_getpeername4` / `mesh_getpeername6`: the app sees the address it dialled, not
//! `127.0.0.1:15001`.

use aya_ebpf::{
    EbpfContext as _, helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::OrigDst;

use crate::{
    maps::ORIG_DST_BY_COOKIE,
    util::{AF_INET, V4_MAPPED_WORD2, ctx_store_u32, mlog},
};

/// Return value of cgroup `sock_addr` programs that lets the call proceed.
const ALLOW: i32 = 1;

/// Looks up the socket's original destination.
#[inline(always)]
fn orig_dst(ctx: &SockAddrContext) -> Option<OrigDst> {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let p = ORIG_DST_BY_COOKIE.get_ptr(cookie)?;
    // SAFETY: a non-null value pointer from a lookup in this map; copied out at once.
    Some(unsafe { *p })
}

/// `cgroup/getpeername4`: for a captured socket, reports the original IPv4 destination.
#[doc(alias = "BPF_CGROUP_INET4_GETPEERNAME")]
#[cgroup_sock_addr(getpeername4)]
pub fn mesh_getpeername4(ctx: SockAddrContext) -> i32 {
    let Some(orig) = orig_dst(&ctx) else {
        return ALLOW;
    };
    if u32::from(orig.family) != AF_INET {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: user_ip4 and user_port are writable in getpeername4.
    unsafe {
        ctx_store_u32(&raw mut (*sa).user_ip4, orig.ip[0]);
        ctx_store_u32(&raw mut (*sa).user_port, u32::from(orig.port));
    }
    mlog!(
        &ctx,
        Trace,
        "getpeername4: {:i}:{}",
        orig.ip[0].to_ne_bytes(),
        u16::from_be(orig.port)
    );
    ALLOW
}

/// `cgroup/getpeername6`: for a captured socket, reports the original destination (an IPv4 one
/// as `::ffff:a.b.c.d`).
#[doc(alias = "BPF_CGROUP_INET6_GETPEERNAME")]
#[cgroup_sock_addr(getpeername6)]
pub fn mesh_getpeername6(ctx: SockAddrContext) -> i32 {
    let Some(orig) = orig_dst(&ctx) else {
        return ALLOW;
    };
    let ip = if u32::from(orig.family) == AF_INET {
        [0, 0, V4_MAPPED_WORD2, orig.ip[0]]
    } else {
        orig.ip
    };
    let sa = ctx.sock_addr;
    // SAFETY: user_ip6 (word by word) and user_port are writable in getpeername6.
    unsafe {
        ctx_store_u32(&raw mut (*sa).user_ip6[0], ip[0]);
        ctx_store_u32(&raw mut (*sa).user_ip6[1], ip[1]);
        ctx_store_u32(&raw mut (*sa).user_ip6[2], ip[2]);
        ctx_store_u32(&raw mut (*sa).user_ip6[3], ip[3]);
        ctx_store_u32(&raw mut (*sa).user_port, u32::from(orig.port));
    }
    mlog!(
        &ctx,
        Trace,
        "getpeername6: port {}",
        u16::from_be(orig.port)
    );
    ALLOW
}
