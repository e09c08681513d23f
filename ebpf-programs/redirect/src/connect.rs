//! `mesh_connect4` / `mesh_connect6`: outbound capture at `connect()`.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{ORIG_SRC_MARK, OrigDst, config};

use crate::{
    maps::{ENROLLED, ORIG_DST_BY_COOKIE},
    util::{
        IPPROTO_TCP, LOOPBACK_V4_BE, LOOPBACK_V6_WORD3, SOCK_STREAM, V4_MAPPED_WORD2, agent_mark,
        ctx_load_u32, ctx_store_u32, flags, is_link_local_v6, is_local_v4, is_local_v6,
        is_mesh_port, is_v4_mapped, mlog, outbound_port,
    },
};

/// Return value of cgroup `sock_addr` programs that lets the call proceed.
const ALLOW: i32 = 1;

/// `cgroup/connect4`. Always allows the call; for a captured connection it first rewrites the
/// destination to `127.0.0.1:OUTBOUND_PORT`.
#[doc(alias = "BPF_CGROUP_INET4_CONNECT")]
#[cgroup_sock_addr(connect4)]
pub fn mesh_connect4(ctx: SockAddrContext) -> i32 {
    // SAFETY: `ctx.sock_addr` is the program's context as given by the kernel.
    unsafe { connect4(&ctx) };
    ALLOW
}

/// `cgroup/connect6`. IPv4-mapped destinations are captured to `[::ffff:127.0.0.1]`; native
/// IPv6 ones to `[::1]` only when `CONFIG[FLAGS]` has `FLAG_REDIRECT_IPV6`, else untouched.
#[doc(alias = "BPF_CGROUP_INET6_CONNECT")]
#[cgroup_sock_addr(connect6)]
pub fn mesh_connect6(ctx: SockAddrContext) -> i32 {
    // SAFETY: as above.
    unsafe { connect6(&ctx) };
    ALLOW
}

/// The checks shared by both families: an enrolled netns, a TCP socket, not one of the
/// agent's (by either of its marks). Returns the destination port (host order) if the connection may be
/// captured, judged on everything but the address.
///
/// # Safety
/// `sa` must be the program's `bpf_sock_addr` context.
#[inline(always)]
unsafe fn capturable(ctx: &SockAddrContext, sa: *mut bpf_sock_addr) -> Option<u16> {
    // SAFETY (all loads below): `sa` is the context; `sk` is a PTR_TO_SOCKET the verifier
    // guarantees non-null for sock_addr programs; each field is read at its own width.
    unsafe {
        if ctx_load_u32(&raw const (*sa).type_) != SOCK_STREAM
            || ctx_load_u32(&raw const (*sa).protocol) != IPPROTO_TCP
        {
            return None;
        }
        let netns = bpf_get_netns_cookie(ctx.as_ptr());
        ENROLLED.get_ptr(netns)?;
        let sk: *mut bpf_sock = core::ptr::read_volatile(&raw const (*sa).__bindgen_anon_1.sk);
        if sk.is_null() {
            return None;
        }
        let mark = ctx_load_u32(&raw const (*sk).mark);
        if mark == agent_mark() || mark == ORIG_SRC_MARK {
            return None;
        }
        let port = u16::from_be(ctx_load_u32(&raw const (*sa).user_port) as u16);
        if is_mesh_port(port) {
            return None;
        }
        Some(port)
    }
}

/// Saves `orig` for this socket. Returns false (and changes nothing) when the map is full and
/// the entry could not be written, so that an unrecoverable redirect is never made.
#[inline(always)]
fn save(ctx: &SockAddrContext, orig: &OrigDst) -> bool {
    // SAFETY: the helper takes the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    match ORIG_DST_BY_COOKIE.insert(cookie, orig, 0) {
        Ok(()) => true,
        Err(err) => {
            mlog!(
                ctx,
                Error,
                "connect: saving orig dst for cookie {} failed: {}",
                cookie,
                err
            );
            false
        }
    }
}

/// # Safety
/// `ctx.sock_addr` must be the program's context.
#[inline(always)]
unsafe fn connect4(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context.
    let Some(port) = (unsafe { capturable(ctx, sa) }) else {
        return;
    };
    // SAFETY: user_ip4 is readable in connect4.
    let ip = unsafe { ctx_load_u32(&raw const (*sa).user_ip4) };
    if is_local_v4(ip) {
        return;
    }
    let orig = OrigDst {
        ip: [ip, 0, 0, 0],
        port: port.to_be(),
        family: mesh_common::AF_INET,
        _pad: 0,
    };
    if !save(ctx, &orig) {
        return;
    }
    // SAFETY: user_ip4 and user_port are writable in connect4.
    unsafe {
        ctx_store_u32(&raw mut (*sa).user_ip4, LOOPBACK_V4_BE);
        ctx_store_u32(&raw mut (*sa).user_port, u32::from(outbound_port().to_be()));
    }
    mlog!(
        ctx,
        Debug,
        "connect4: {:i}:{} -> 127.0.0.1:{}",
        ip.to_ne_bytes(),
        port,
        outbound_port()
    );
}

/// # Safety
/// `ctx.sock_addr` must be the program's context.
#[inline(always)]
unsafe fn connect6(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: `sa` is the context.
    let Some(port) = (unsafe { capturable(ctx, sa) }) else {
        return;
    };
    // SAFETY: user_ip6 is readable in connect6, word by word.
    let ip = unsafe {
        [
            ctx_load_u32(&raw const (*sa).user_ip6[0]),
            ctx_load_u32(&raw const (*sa).user_ip6[1]),
            ctx_load_u32(&raw const (*sa).user_ip6[2]),
            ctx_load_u32(&raw const (*sa).user_ip6[3]),
        ]
    };
    let (orig, new_ip) = if is_v4_mapped(&ip) {
        if is_local_v4(ip[3]) {
            return;
        }
        let orig = OrigDst {
            ip: [ip[3], 0, 0, 0],
            port: port.to_be(),
            family: mesh_common::AF_INET,
            _pad: 0,
        };
        (orig, [0, 0, V4_MAPPED_WORD2, LOOPBACK_V4_BE])
    } else {
        // A link-local destination needs its interface, which the agent is not told: such
        // connections stay on the pod's link.
        if is_local_v6(&ip) || is_link_local_v6(&ip) || flags() & config::FLAG_REDIRECT_IPV6 == 0 {
            return;
        }
        let orig = OrigDst {
            ip,
            port: port.to_be(),
            family: mesh_common::AF_INET6,
            _pad: 0,
        };
        (orig, [0, 0, 0, LOOPBACK_V6_WORD3])
    };
    if !save(ctx, &orig) {
        return;
    }
    // SAFETY: user_ip6 (word by word) and user_port are writable in connect6.
    unsafe {
        ctx_store_u32(&raw mut (*sa).user_ip6[0], new_ip[0]);
        ctx_store_u32(&raw mut (*sa).user_ip6[1], new_ip[1]);
        ctx_store_u32(&raw mut (*sa).user_ip6[2], new_ip[2]);
        ctx_store_u32(&raw mut (*sa).user_ip6[3], new_ip[3]);
        ctx_store_u32(&raw mut (*sa).user_port, u32::from(outbound_port().to_be()));
    }
    let family = orig.family;
    mlog!(
        ctx,
        Debug,
        "connect6: family {} port {} -> port {}",
        family,
        port,
        outbound_port()
    );
}
