//! Values that the eBPF programs and the node agent must agree on.
//!
//! `no_std` so that the eBPF programs (issue: eBPF redirection) can use it as is.
#![no_std]
#![forbid(unsafe_code)]

/// The mark on the agent's own sockets (`SO_MARK`), so that nothing redirects them again.
/// Istio's value, 1337.
pub const DEFAULT_PACKET_MARK: u32 = 0x539;

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
