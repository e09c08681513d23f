//! Values that the eBPF programs and the node agent must agree on.
//!
//! `no_std` so that the eBPF programs (`ebpf-programs/redirect`) can use it as is.
//!
//! # Sections
//! - Ports and the packet mark (plain constants).
//! - Map names ([`maps`]): the exact names under which the eBPF object declares its maps.
//! - Program names ([`programs`]): the exact names of the programs in the object.
//! - Map key/value types ([`OrigDst`], [`TupleKey`]) and the [`config`] array layout.
//!
//! With the `user` feature the map types also implement `aya::Pod`, so that the agent can read
//! and write the maps with `aya::maps::HashMap<_, TupleKey, OrigDst>` and friends.
#![no_std]
// `unsafe` is needed for exactly one thing: `unsafe impl aya::Pod` under the `user` feature.
// Without that feature (the eBPF side) the crate stays `forbid`; with it, `deny` lets the one
// `pod` module below opt out with an `expect`.
#![cfg_attr(not(feature = "user"), forbid(unsafe_code))]
#![cfg_attr(feature = "user", deny(unsafe_code))]

/// The mark on the agent's own sockets (`SO_MARK`), so that nothing redirects them again.
/// Istio's value, 1337.
pub const DEFAULT_PACKET_MARK: u32 = 0x539;

/// The mark on the agent's connections to a pod's app from the client's address (shared mode):
/// the app's accepted socket takes it from the SYN (`tcp_fwmark_accept`), and a rule in the
/// pod's namespace routes what carries it back to the agent ([`ORIG_SRC_ROUTE_TABLE`]). Never
/// redirected, like the agent's own mark. Istio's in-pod value, 0x111.
pub const ORIG_SRC_MARK: u32 = 0x111;
/// The routing table, in each enrolled pod's namespace, that delivers [`ORIG_SRC_MARK`]ed
/// packets locally. Istio's in-pod table, 133.
pub const ORIG_SRC_ROUTE_TABLE: u32 = 133;

/// Outbound capture listener: connections an enrolled app makes arrive here.
pub const OUTBOUND_PORT: u16 = 15001;
/// Inbound plaintext listener: connections from clients outside the mesh.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// Inbound HBONE (mTLS + HTTP/2 CONNECT) listener.
pub const HBONE_PORT: u16 = 15008;
/// SOCKS5 listener (on 127.0.0.1 only), when enabled.
pub const SOCKS5_PORT: u16 = 15080;
/// Admin endpoint (`/config_dump`).
pub const ADMIN_PORT: u16 = 15000;
/// Prometheus metrics (`/metrics`).
pub const METRICS_PORT: u16 = 15020;
/// Readiness (`/healthz/ready`).
pub const READINESS_PORT: u16 = 15021;

/// `AF_INET`, as stored in [`OrigDst::family`] and [`TupleKey::family`].
pub const AF_INET: u16 = 2;
/// `AF_INET6`, as stored in [`OrigDst::family`] and [`TupleKey::family`].
pub const AF_INET6: u16 = 10;

/// `SO_ORIGINAL_DST` (`SOL_IP`) and `IP6T_SO_ORIGINAL_DST` (`SOL_IPV6`): both are 80.
#[doc(alias = "IP6T_SO_ORIGINAL_DST")]
pub const SO_ORIGINAL_DST: i32 = 80;

/// `SO_NETNS_COOKIE` (`SOL_SOCKET`): user space reads a namespace's cookie with it, on a socket
/// opened in that namespace; the eBPF side gets the same value from `bpf_get_netns_cookie`.
pub const SO_NETNS_COOKIE: i32 = 71;

/// Names of the maps in the eBPF objects, for `Ebpf::map_mut(NAME)`.
pub mod maps {
    /// `HashMap<u64, u32>`: netns cookie → flags (reserved, write 0). A namespace is enrolled
    /// (its outbound TCP captured) while its cookie is a key here.
    pub const ENROLLED: &str = "ENROLLED";
    /// `LruHashMap<u64, OrigDst>`: socket cookie of an app's redirected socket → the address it
    /// dialled. Written by `mesh_connect4/6`, read by `mesh_sockops` and `mesh_getpeername4/6`.
    pub const ORIG_DST_BY_COOKIE: &str = "ORIG_DST_BY_COOKIE";
    /// `LruHashMap<TupleKey, OrigDst>`: (netns cookie, app socket's local address) → the
    /// address it dialled. Written by `mesh_sockops`, read by `mesh_getsockopt`, and taken
    /// (read and deleted) by the agent when it accepts the connection.
    pub const ORIG_DST_BY_TUPLE: &str = "ORIG_DST_BY_TUPLE";
    /// `Array<u32>` of [`crate::config`] slots.
    pub const CONFIG: &str = "CONFIG";
    /// `SockMap` (u32 index → listening socket), read only by `mesh_sk_lookup`: slot
    /// [`crate::INBOUND_LISTENER_SLOT_V4`] holds the namespace's 15006 listener for IPv4
    /// traffic, [`crate::INBOUND_LISTENER_SLOT_V6`] for IPv6 (the same dual-stack socket may go
    /// in both). Since one copy of the object is loaded per namespace for `mesh_sk_lookup`, each
    /// namespace has its own.
    pub const INBOUND_LISTENER: &str = "INBOUND_LISTENER";
    /// The aya-log ring buffer (declared by `aya-log-ebpf`), read by `aya_log::EbpfLogger`.
    pub const AYA_LOGS: &str = "AYA_LOGS";
}

/// Names of the programs, for `Ebpf::program_mut(NAME)`.
pub mod programs {
    /// `cgroup/connect4` (`CgroupSockAddr`).
    pub const CONNECT4: &str = "mesh_connect4";
    /// `cgroup/connect6` (`CgroupSockAddr`).
    pub const CONNECT6: &str = "mesh_connect6";
    /// `sockops` (`SockOps`).
    pub const SOCKOPS: &str = "mesh_sockops";
    /// `cgroup/getsockopt` (`CgroupSockopt`).
    pub const GETSOCKOPT: &str = "mesh_getsockopt";
    /// `cgroup/getpeername4` (`CgroupSockAddr`).
    pub const GETPEERNAME4: &str = "mesh_getpeername4";
    /// `cgroup/getpeername6` (`CgroupSockAddr`).
    pub const GETPEERNAME6: &str = "mesh_getpeername6";
    /// `sk_lookup` (`SkLookup`), attached once per enrolled namespace; uses only the
    /// `INBOUND_LISTENER` and `CONFIG` maps, so a per-namespace copy of the object can shrink
    /// the others (`EbpfLoader::map_max_entries`).
    pub const SK_LOOKUP: &str = "mesh_sk_lookup";
}

/// Slots of the `CONFIG` `Array<u32>`. A slot left at 0 means "use
/// the default" (the array starts zeroed), so the programs work before user space writes it.
pub mod config {
    /// The agent's socket mark; 0 means [`crate::DEFAULT_PACKET_MARK`].
    pub const MARK: u32 = 0;
    /// Outbound capture port, host order; 0 means [`crate::OUTBOUND_PORT`].
    pub const OUTBOUND_PORT: u32 = 1;
    /// Inbound plaintext port, host order; 0 means [`crate::INBOUND_PLAINTEXT_PORT`].
    pub const INBOUND_PLAINTEXT_PORT: u32 = 2;
    /// aya-log level: 0 off (default), 1 error, 2 warn, 3 info, 4 debug, 5 trace.
    pub const LOG_LEVEL: u32 = 3;
    /// Bit flags, see [`FLAG_REDIRECT_IPV6`].
    pub const FLAGS: u32 = 4;
    /// Number of slots (the array's `max_entries`).
    pub const LEN: u32 = 8;

    /// In [`FLAGS`]: also redirect native IPv6 connects, to `[::1]:OUTBOUND_PORT` (the agent
    /// must then listen there too). Off: native IPv6 passes through; IPv4-mapped IPv6
    /// destinations are always redirected to `[::ffff:127.0.0.1]:OUTBOUND_PORT`.
    pub const FLAG_REDIRECT_IPV6: u32 = 1;
}

/// Index of the 15006 listener for IPv4 traffic in `INBOUND_LISTENER`.
pub const INBOUND_LISTENER_SLOT_V4: u32 = 0;
/// Index of the 15006 listener for IPv6 traffic in `INBOUND_LISTENER`.
pub const INBOUND_LISTENER_SLOT_V6: u32 = 1;
/// Capacity of `INBOUND_LISTENER`.
pub const INBOUND_LISTENER_SLOTS: u32 = 2;

/// Capacity of `ENROLLED`.
pub const ENROLLED_MAX_ENTRIES: u32 = 4096;
/// Capacity of each of the LRU original-destination maps.
pub const ORIG_DST_MAX_ENTRIES: u32 = 65536;

/// An original destination: the address an app passed to `connect()`.
///
/// Value of `ORIG_DST_BY_COOKIE` and `ORIG_DST_BY_TUPLE`. 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct OrigDst {
    /// Address in network byte order; IPv4 in `ip[0]` (the other words 0).
    pub ip: [u32; 4],
    /// Port in network byte order.
    pub port: u16,
    /// [`AF_INET`] or [`AF_INET6`]. An IPv4-mapped IPv6 destination is stored as `AF_INET`.
    pub family: u16,
    /// Always 0.
    pub _pad: u32,
}

/// (netns cookie, the app socket's local address): key of `ORIG_DST_BY_TUPLE`.
///
/// The agent's accepted socket has this address as its PEER, so the agent (or
/// `mesh_getsockopt`) looks up `{netns cookie, peer ip, peer port}`. 32 bytes, no padding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TupleKey {
    /// `bpf_get_netns_cookie` / `SO_NETNS_COOKIE` of the namespace.
    pub netns_cookie: u64,
    /// Address in network byte order; IPv4 in `ip[0]` (the other words 0). An IPv4-mapped
    /// IPv6 local address is stored as IPv4, since the agent's listener sees an IPv4 peer.
    pub ip: [u32; 4],
    /// Port in HOST byte order.
    pub port: u32,
    /// [`AF_INET`] or [`AF_INET6`] (widened to u32).
    pub family: u32,
}

// Layouts are ABI with the kernel-side programs: check them at compile time.
const _: () = assert!(core::mem::size_of::<OrigDst>() == 24);
const _: () = assert!(core::mem::size_of::<TupleKey>() == 32);

#[cfg(feature = "user")]
#[expect(unsafe_code, reason = "aya::Pod is an unsafe trait")]
mod pod {
    // SAFETY: both types are #[repr(C)], Copy, made only of integers, and have no implicit
    // padding (explicit `_pad` in OrigDst; TupleKey's fields tile 32 bytes exactly, checked by
    // the size assertions above), so every byte pattern is a valid value and no byte is
    // uninitialised when the kernel copies them.
    unsafe impl aya::Pod for super::OrigDst {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TupleKey {}
}
