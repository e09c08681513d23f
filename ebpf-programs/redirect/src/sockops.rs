//! `mesh_sockops`: re-keys a captured connection's original destination by the app socket's
//! local address once the connection is established.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG,
        BPF_TCP_CLOSE,
    },
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::TupleKey;

use crate::{
    maps::{ORIG_DST_BY_COOKIE, ORIG_DST_BY_TUPLE},
    util::{
        AF_INET, AF_INET6, LOOPBACK_V4_BE, LOOPBACK_V6_WORD3, V4_MAPPED_WORD2, ctx_load_u32,
        is_v4_mapped, mlog, outbound_port,
    },
};

/// `sockops`. Always returns 1; never changes the connection.
///
/// - `ACTIVE_ESTABLISHED_CB` for a socket with an `ORIG_DST_BY_COOKIE` entry that connected to
///   the outbound listener: writes `ORIG_DST_BY_TUPLE[{netns cookie, local ip, local port}]`
///   and turns on `STATE_CB` for it (connected elsewhere: the entry is stale and dropped).
/// - `STATE_CB` to `TCP_CLOSE`: drops the socket's `ORIG_DST_BY_COOKIE` entry (the tuple entry
///   stays until the agent takes it, so an agent that accepts after the client already closed
///   still finds it, or until the LRU evicts it).
#[doc(alias = "BPF_PROG_TYPE_SOCK_OPS")]
#[sock_ops]
pub fn mesh_sockops(ctx: SockOpsContext) -> u32 {
    match ctx.op() {
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => on_established(&ctx),
        BPF_SOCK_OPS_STATE_CB if ctx.arg(1) == BPF_TCP_CLOSE => {
            // SAFETY: the helper takes the program's context.
            let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
            let _ = ORIG_DST_BY_COOKIE.remove(cookie);
        }
        _ => {}
    }
    1
}

#[inline(always)]
fn on_established(ctx: &SockOpsContext) {
    // SAFETY: the helpers take the program's context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(orig) = ORIG_DST_BY_COOKIE.get_ptr(cookie) else {
        return;
    };
    // SAFETY: a non-null value pointer from a lookup in this map; copied out at once.
    let orig = unsafe { *orig };
    // Only a connection the connect hook sent to the outbound listener is re-keyed: an entry
    // left by an earlier connect of this socket that failed must not name where a later,
    // uncaptured connect went. `remote_port` holds the network-order port in its upper half.
    // Each field is loaded once, unconditionally, with its own 32-bit load: the verifier
    // refuses a load through a context pointer that LLVM shares between branches.
    let ops = ctx.ops;
    // SAFETY: readable 32-bit fields of the `bpf_sock_ops` context.
    let (remote_port, remote_ip4, remote_ip6) = unsafe {
        (
            ctx_load_u32(&raw const (*ops).remote_port),
            ctx_load_u32(&raw const (*ops).remote_ip4),
            [
                ctx_load_u32(&raw const (*ops).remote_ip6[0]),
                ctx_load_u32(&raw const (*ops).remote_ip6[1]),
                ctx_load_u32(&raw const (*ops).remote_ip6[2]),
                ctx_load_u32(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let remote_port = u16::from_be((remote_port >> 16) as u16);
    let family = ctx.family();
    // The listener is 127.0.0.1 (also as `::ffff:127.0.0.1`) or `::1`.
    let to_listener = remote_port == outbound_port()
        && ((family == AF_INET && remote_ip4 == LOOPBACK_V4_BE)
            || (family == AF_INET6
                && remote_ip6[0] == 0
                && remote_ip6[1] == 0
                && ((remote_ip6[2] == V4_MAPPED_WORD2 && remote_ip6[3] == LOOPBACK_V4_BE)
                    || (remote_ip6[2] == 0 && remote_ip6[3] == LOOPBACK_V6_WORD3))));
    if !to_listener {
        let _ = ORIG_DST_BY_COOKIE.remove(cookie);
        return;
    }
    // SAFETY: as above.
    let netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    let (family, ip) = if family == AF_INET {
        (AF_INET, [ctx.local_ip4(), 0, 0, 0])
    } else if family == AF_INET6 {
        let ip6 = ctx.local_ip6();
        if is_v4_mapped(&ip6) {
            // The agent's IPv4 listener sees an IPv4 peer.
            (AF_INET, [ip6[3], 0, 0, 0])
        } else {
            (AF_INET6, ip6)
        }
    } else {
        return;
    };
    let key = TupleKey {
        netns_cookie,
        ip,
        port: ctx.local_port(),
        family,
    };
    if let Err(err) = ORIG_DST_BY_TUPLE.insert(key, orig, 0) {
        mlog!(
            ctx,
            Error,
            "sockops: saving tuple for cookie {} failed: {}",
            cookie,
            err
        );
        return;
    }
    if let Err(err) = ctx.set_cb_flags((ctx.cb_flags() | BPF_SOCK_OPS_STATE_CB_FLAG) as i32) {
        mlog!(ctx, Warn, "sockops: enabling STATE_CB failed: {}", err);
    }
    mlog!(
        ctx,
        Debug,
        "sockops: cookie {} local port {} keyed",
        cookie,
        ctx.local_port()
    );
}
