//! `mesh_getsockopt`: answers `SO_ORIGINAL_DST` on the agent's accepted sockets.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{bpf_sock, bpf_sockopt},
    helpers::bpf_get_netns_cookie,
    macros::cgroup_sockopt,
    programs::SockoptContext,
};
use mesh_common::{OrigDst, SO_ORIGINAL_DST, TupleKey};

use crate::{
    maps::{ENROLLED, ORIG_DST_BY_TUPLE},
    util::{AF_INET, AF_INET6, V4_MAPPED_WORD2, ctx_load_u32, ctx_store_u32, is_v4_mapped, mlog},
};

/// `SOL_IP`.
const SOL_IP: i32 = 0;
/// `SOL_IPV6`.
const SOL_IPV6: i32 = 41;
/// `sizeof(struct sockaddr_in)`.
const SOCKADDR_IN_LEN: usize = 16;
/// `sizeof(struct sockaddr_in6)`.
const SOCKADDR_IN6_LEN: usize = 28;
/// What a sockopt program sees of `optval` at most.
const PAGE_SIZE: u32 = 4096;

/// `cgroup/getsockopt`. Always returns 1 (the call proceeds).
///
/// For `getsockopt(SOL_IP, SO_ORIGINAL_DST)` (or `SOL_IPV6, IP6T_SO_ORIGINAL_DST`) on a socket
/// of an enrolled namespace whose peer is in `ORIG_DST_BY_TUPLE`, replaces the kernel's answer
/// (ENOPROTOOPT/ENOENT without conntrack) by the original destination: a `sockaddr_in`
/// (16 bytes) for `SOL_IP`, a `sockaddr_in6` (28 bytes, IPv4 as `::ffff:a.b.c.d`) for
/// `SOL_IPV6`; `optlen` and `retval = 0` to match. Anything else is left as the kernel answered.
#[doc(alias = "BPF_CGROUP_GETSOCKOPT")]
#[doc(alias = "SO_ORIGINAL_DST")]
#[cgroup_sockopt(getsockopt)]
pub fn mesh_getsockopt(ctx: SockoptContext) -> i32 {
    // SAFETY: `ctx.sockopt` is the program's context.
    unsafe { getsockopt(&ctx) };
    1
}

/// # Safety
/// `ctx.sockopt` must be the program's context.
#[inline(always)]
unsafe fn getsockopt(ctx: &SockoptContext) {
    let so: *mut bpf_sockopt = ctx.sockopt;
    // SAFETY: level, optname and optlen are readable 32-bit context fields.
    let (level, optname, optlen) = unsafe {
        (
            ctx_load_u32((&raw const (*so).level).cast()) as i32,
            ctx_load_u32((&raw const (*so).optname).cast()) as i32,
            ctx_load_u32((&raw const (*so).optlen).cast()),
        )
    };
    if optlen > PAGE_SIZE {
        // Past a page the program sees only part of the kernel's answer; optlen 0 passes the
        // whole of it through (kernels before 6.5 fail the call with EFAULT otherwise).
        // SAFETY: optlen is a writable 32-bit context field.
        unsafe { ctx_store_u32((&raw mut (*so).optlen).cast(), 0) };
        return;
    }
    if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
        return;
    }
    // SAFETY: the helper takes the program's context.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if ENROLLED.get_ptr(netns_cookie).is_none() {
        return;
    }
    // SAFETY: `sk` is a readable pointer field; the verifier types it PTR_TO_SOCKET (non-null
    // for sockopt programs; checked anyway).
    let sk: *mut bpf_sock =
        unsafe { core::ptr::read_volatile(&raw const (*so).__bindgen_anon_1.sk) };
    if sk.is_null() {
        return;
    }
    // The accepted socket's peer is the app socket's local address.
    // SAFETY: family, dst_ip4/6 and dst_port are readable fields of a full `bpf_sock`.
    let key = unsafe {
        let family = ctx_load_u32(&raw const (*sk).family);
        let port = u32::from(u16::from_be(core::ptr::read_volatile(
            &raw const (*sk).dst_port,
        )));
        if family == AF_INET {
            TupleKey {
                netns_cookie,
                ip: [ctx_load_u32(&raw const (*sk).dst_ip4), 0, 0, 0],
                port,
                family: AF_INET,
            }
        } else if family == AF_INET6 {
            let ip = [
                ctx_load_u32(&raw const (*sk).dst_ip6[0]),
                ctx_load_u32(&raw const (*sk).dst_ip6[1]),
                ctx_load_u32(&raw const (*sk).dst_ip6[2]),
                ctx_load_u32(&raw const (*sk).dst_ip6[3]),
            ];
            if is_v4_mapped(&ip) {
                TupleKey {
                    netns_cookie,
                    ip: [ip[3], 0, 0, 0],
                    port,
                    family: AF_INET,
                }
            } else {
                TupleKey {
                    netns_cookie,
                    ip,
                    port,
                    family: AF_INET6,
                }
            }
        } else {
            return;
        }
    };
    let Some(orig) = ORIG_DST_BY_TUPLE.get_ptr(key) else {
        mlog!(
            ctx,
            Debug,
            "getsockopt: no orig dst for peer port {}",
            key.port
        );
        return;
    };
    // SAFETY: a non-null value pointer from a lookup in this map; copied out at once.
    let orig: OrigDst = unsafe { *orig };
    let written = if level == SOL_IP {
        if u32::from(orig.family) != AF_INET {
            return;
        }
        // SAFETY: `so` is the context.
        unsafe { write_sockaddr_in(so, &orig) }
    } else {
        // SAFETY: as above.
        unsafe { write_sockaddr_in6(so, &orig) }
    };
    if written {
        mlog!(
            ctx,
            Debug,
            "getsockopt: answered SO_ORIGINAL_DST for peer port {}",
            key.port
        );
    }
}

/// Returns the `optval` buffer as `N` writable bytes, or `None` if the buffer the kernel gave
/// is shorter (the bounds check the verifier wants before any access).
///
/// # Safety
/// `so` must be the program's context.
#[inline(always)]
unsafe fn optval<const N: usize>(so: *mut bpf_sockopt) -> Option<*mut u8> {
    // SAFETY: optval and optval_end are readable pointer fields of the context.
    unsafe {
        let start = core::ptr::read_volatile(&raw const (*so).__bindgen_anon_2.optval) as *mut u8;
        let end = core::ptr::read_volatile(&raw const (*so).__bindgen_anon_3.optval_end) as *mut u8;
        if start.is_null() || start.wrapping_add(N) > end {
            return None;
        }
        Some(start)
    }
}

/// Sets `optlen` to `len` and `retval` to 0.
///
/// # Safety
/// `so` must be the program's context.
#[inline(always)]
unsafe fn finish(so: *mut bpf_sockopt, len: usize) {
    // SAFETY: optlen and retval are writable 32-bit context fields.
    unsafe {
        ctx_store_u32((&raw mut (*so).optlen).cast(), len as u32);
        ctx_store_u32((&raw mut (*so).retval).cast(), 0);
    }
}

/// # Safety
/// `so` must be the program's context.
#[inline(always)]
unsafe fn write_sockaddr_in(so: *mut bpf_sockopt, orig: &OrigDst) -> bool {
    // SAFETY: `so` is the context.
    let Some(p) = (unsafe { optval::<SOCKADDR_IN_LEN>(so) }) else {
        return false;
    };
    // struct sockaddr_in { u16 family; be16 port; be32 addr; u8 zero[8]; }
    let mut sa = [0u8; SOCKADDR_IN_LEN];
    sa[0..2].copy_from_slice(&(AF_INET as u16).to_ne_bytes());
    sa[2..4].copy_from_slice(&orig.port.to_ne_bytes());
    sa[4..8].copy_from_slice(&orig.ip[0].to_ne_bytes());
    // SAFETY: `p` has SOCKADDR_IN_LEN bytes (checked against optval_end).
    unsafe {
        core::ptr::write_unaligned(p.cast::<[u8; SOCKADDR_IN_LEN]>(), sa);
        finish(so, SOCKADDR_IN_LEN);
    }
    true
}

/// # Safety
/// `so` must be the program's context.
#[inline(always)]
unsafe fn write_sockaddr_in6(so: *mut bpf_sockopt, orig: &OrigDst) -> bool {
    // SAFETY: `so` is the context.
    let Some(p) = (unsafe { optval::<SOCKADDR_IN6_LEN>(so) }) else {
        return false;
    };
    let ip = if u32::from(orig.family) == AF_INET {
        [0, 0, V4_MAPPED_WORD2, orig.ip[0]]
    } else {
        orig.ip
    };
    // struct sockaddr_in6 { u16 family; be16 port; be32 flowinfo; u8 addr[16]; u32 scope_id; }
    let mut sa = [0u8; SOCKADDR_IN6_LEN];
    sa[0..2].copy_from_slice(&(AF_INET6 as u16).to_ne_bytes());
    sa[2..4].copy_from_slice(&orig.port.to_ne_bytes());
    sa[8..12].copy_from_slice(&ip[0].to_ne_bytes());
    sa[12..16].copy_from_slice(&ip[1].to_ne_bytes());
    sa[16..20].copy_from_slice(&ip[2].to_ne_bytes());
    sa[20..24].copy_from_slice(&ip[3].to_ne_bytes());
    // SAFETY: `p` has SOCKADDR_IN6_LEN bytes (checked against optval_end).
    unsafe {
        core::ptr::write_unaligned(p.cast::<[u8; SOCKADDR_IN6_LEN]>(), sa);
        finish(so, SOCKADDR_IN6_LEN);
    }
    true
}
