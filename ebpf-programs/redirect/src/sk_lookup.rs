//! `mesh_sk_lookup`: inbound capture, one attachment (and one object copy) per namespace.

use aya_ebpf::{
    bindings::sk_action::{SK_DROP, SK_PASS},
    macros::sk_lookup,
    programs::SkLookupContext,
};
use mesh_common::{HBONE_PORT, INBOUND_LISTENER_SLOT_V4, INBOUND_LISTENER_SLOT_V6};

use crate::{
    maps::INBOUND_LISTENER,
    util::{
        AF_INET, AF_INET6, IPPROTO_TCP, ctx_load_u32, inbound_port, is_local_v4, is_local_v6, mlog,
        outbound_port,
    },
};

/// `ifindex` of `lo`: the first device of every network namespace.
const LOOPBACK_IFINDEX: u32 = 1;

/// `sk_lookup`. For TCP that arrives from outside the namespace for a port other than the
/// outbound, inbound-plaintext and HBONE ones, it selects the listener in `INBOUND_LISTENER`
/// (slot 0 for IPv4, slot 1 for IPv6); the accepted socket's local address is then the
/// original destination. With no listener in the slot (the agent is down or draining, or the
/// family has none) the connection is refused (`SK_DROP`: an RST to the client), never
/// handed to the pod uncaptured. Everything else passes to the kernel's normal lookup.
///
/// "From outside" is judged from the addresses, not only the interface: a connection a process
/// in the namespace makes to the namespace's own (non-loopback) address is delivered over `lo`,
/// but the kernel reports the interface that owns the address as `ingress_ifindex` (the route's
/// `rt_iif`), so `ingress_ifindex == 1` catches only loopback destinations. Skipped therefore:
/// `ingress_ifindex` 1, a loopback source or destination, and source == destination address
/// (what a local connection to the pod's address gets by default). Not told apart: a local
/// connection from one of the namespace's addresses to ANOTHER of its non-loopback addresses.
#[doc(alias = "BPF_PROG_TYPE_SK_LOOKUP")]
#[sk_lookup]
pub fn mesh_sk_lookup(ctx: SkLookupContext) -> u32 {
    let l = ctx.lookup;
    // SAFETY: every field read is a readable 32-bit field of the `bpf_sk_lookup` context.
    let (protocol, family, ifindex, port) = unsafe {
        (
            ctx_load_u32(&raw const (*l).protocol),
            ctx_load_u32(&raw const (*l).family),
            ctx_load_u32(&raw const (*l).ingress_ifindex),
            ctx_load_u32(&raw const (*l).local_port),
        )
    };
    if protocol != IPPROTO_TCP || ifindex == LOOPBACK_IFINDEX {
        return SK_PASS;
    }
    let port = port as u16;
    if port == outbound_port() || port == inbound_port() || port == HBONE_PORT {
        return SK_PASS;
    }
    let slot = if family == AF_INET {
        // SAFETY: as above.
        let (local, remote) = unsafe {
            (
                ctx_load_u32(&raw const (*l).local_ip4),
                ctx_load_u32(&raw const (*l).remote_ip4),
            )
        };
        if is_local_v4(local) || is_local_v4(remote) || local == remote {
            return SK_PASS;
        }
        INBOUND_LISTENER_SLOT_V4
    } else if family == AF_INET6 {
        // SAFETY: as above.
        let (local, remote) = unsafe {
            (
                [
                    ctx_load_u32(&raw const (*l).local_ip6[0]),
                    ctx_load_u32(&raw const (*l).local_ip6[1]),
                    ctx_load_u32(&raw const (*l).local_ip6[2]),
                    ctx_load_u32(&raw const (*l).local_ip6[3]),
                ],
                [
                    ctx_load_u32(&raw const (*l).remote_ip6[0]),
                    ctx_load_u32(&raw const (*l).remote_ip6[1]),
                    ctx_load_u32(&raw const (*l).remote_ip6[2]),
                    ctx_load_u32(&raw const (*l).remote_ip6[3]),
                ],
            )
        };
        if is_local_v6(&local) || is_local_v6(&remote) || local == remote {
            return SK_PASS;
        }
        INBOUND_LISTENER_SLOT_V6
    } else {
        return SK_PASS;
    };
    match INBOUND_LISTENER.redirect_sk_lookup(&ctx, slot, 0) {
        Ok(()) => {
            mlog!(
                &ctx,
                Debug,
                "sk_lookup: port {} steered to listener slot {}",
                port,
                slot
            );
            SK_PASS
        }
        Err(err) => {
            mlog!(
                &ctx,
                Info,
                "sk_lookup: port {} refused: no listener in slot {} ({})",
                port,
                slot,
                err
            );
            SK_DROP
        }
    }
}
