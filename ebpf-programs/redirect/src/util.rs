//! Small helpers shared by the programs: configuration, logging gate, address tests, and
//! context stores the verifier accepts.

use mesh_common::{
    ADMIN_PORT, DEFAULT_PACKET_MARK, HBONE_PORT, INBOUND_PLAINTEXT_PORT, METRICS_PORT,
    OUTBOUND_PORT, READINESS_PORT, SOCKS5_PORT, config,
};

use crate::maps::CONFIG;

/// `SOCK_STREAM`.
pub(crate) const SOCK_STREAM: u32 = 1;
/// `IPPROTO_TCP`.
pub(crate) const IPPROTO_TCP: u32 = 6;
/// `AF_INET` as the context fields hold it.
pub(crate) const AF_INET: u32 = mesh_common::AF_INET as u32;
/// `AF_INET6` as the context fields hold it.
pub(crate) const AF_INET6: u32 = mesh_common::AF_INET6 as u32;

/// 127.0.0.1 as a network-order address read into a little-endian u32.
pub(crate) const LOOPBACK_V4_BE: u32 = u32::from_ne_bytes([127, 0, 0, 1]);
/// The third word of an IPv4-mapped IPv6 address (`::ffff:0:0/96`), network order.
pub(crate) const V4_MAPPED_WORD2: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);
/// The last word of `::1`, network order.
pub(crate) const LOOPBACK_V6_WORD3: u32 = u32::from_ne_bytes([0, 0, 0, 1]);

/// Reads a `CONFIG` slot; 0 (the array's initial value) or a missing slot means `default`.
#[inline(always)]
pub(crate) fn config_or(slot: u32, default: u32) -> u32 {
    match CONFIG.get(slot) {
        Some(&v) if v != 0 => v,
        _ => default,
    }
}

/// The agent's socket mark.
#[inline(always)]
pub(crate) fn agent_mark() -> u32 {
    config_or(config::MARK, DEFAULT_PACKET_MARK)
}

/// The outbound capture port, host order.
#[inline(always)]
pub(crate) fn outbound_port() -> u16 {
    config_or(config::OUTBOUND_PORT, u32::from(OUTBOUND_PORT)) as u16
}

/// The inbound plaintext port, host order.
#[inline(always)]
pub(crate) fn inbound_port() -> u16 {
    config_or(
        config::INBOUND_PLAINTEXT_PORT,
        u32::from(INBOUND_PLAINTEXT_PORT),
    ) as u16
}

/// `CONFIG[FLAGS]`.
#[inline(always)]
pub(crate) fn flags() -> u32 {
    config_or(config::FLAGS, 0)
}

/// The run-time aya-log level: 0 off, 1 error … 5 trace.
#[inline(always)]
pub(crate) fn log_level() -> u32 {
    config_or(config::LOG_LEVEL, 0)
}

/// Logs with aya-log only when `CONFIG[LOG_LEVEL]` lets the record's level through, so that a
/// disabled record costs one array lookup and a branch.
macro_rules! mlog {
    ($ctx:expr, $lvl:ident, $($arg:tt)+) => {
        if $crate::util::log_level() >= ::aya_log_ebpf::macro_support::Level::$lvl as u32 {
            ::aya_log_ebpf::log!($ctx, ::aya_log_ebpf::macro_support::Level::$lvl, $($arg)+);
        }
    };
}
pub(crate) use mlog;

/// Whether a destination port (host order) belongs to the agent and must never be redirected.
#[inline(always)]
pub(crate) fn is_mesh_port(port: u16) -> bool {
    port == outbound_port()
        || port == inbound_port()
        || port == HBONE_PORT
        || port == SOCKS5_PORT
        || port == ADMIN_PORT
        || port == METRICS_PORT
        || port == READINESS_PORT
}

/// 127.0.0.0/8 or 0.0.0.0 (which `connect()` treats as this host), network order.
#[inline(always)]
pub(crate) fn is_local_v4(ip_be: u32) -> bool {
    let first_octet = ip_be.to_ne_bytes()[0];
    first_octet == 127 || ip_be == 0
}

/// `::1` or `::`, network-order words.
#[inline(always)]
pub(crate) fn is_local_v6(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == 0 && (ip[3] == LOOPBACK_V6_WORD3 || ip[3] == 0)
}

/// Link-local `fe80::/10`, network-order words.
#[inline(always)]
pub(crate) fn is_link_local_v6(ip: &[u32; 4]) -> bool {
    let first = ip[0].to_ne_bytes();
    first[0] == 0xfe && first[1] & 0xc0 == 0x80
}

/// `::ffff:a.b.c.d`, network-order words.
#[inline(always)]
pub(crate) fn is_v4_mapped(ip: &[u32; 4]) -> bool {
    ip[0] == 0 && ip[1] == 0 && ip[2] == V4_MAPPED_WORD2
}

/// Stores `value` into a context field through a register. The verifier rejects stores of an
/// immediate into the context (`*(u32 *)(r1 + off) = imm`), which LLVM emits for constants;
/// `black_box` makes the value opaque so it is materialised in a register first, and the
/// volatile write keeps the store 32 bits wide.
///
/// # Safety
/// `field` must point at a writable 32-bit field of the program's context.
#[inline(always)]
pub(crate) unsafe fn ctx_store_u32(field: *mut u32, value: u32) {
    let value = core::hint::black_box(value);
    // SAFETY: the caller guarantees `field` is a writable context field.
    unsafe { core::ptr::write_volatile(field, value) }
}

/// Reads a 32-bit context field with exactly one 32-bit load (the verifier checks load sizes).
///
/// # Safety
/// `field` must point at a readable 32-bit field of the program's context (or of a
/// `bpf_sock` the verifier knows to be valid).
#[inline(always)]
pub(crate) unsafe fn ctx_load_u32(field: *const u32) -> u32 {
    // SAFETY: the caller guarantees `field` is readable.
    unsafe { core::ptr::read_volatile(field) }
}
