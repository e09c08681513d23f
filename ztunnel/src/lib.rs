//! The node agent of an eBPF-accelerated ambient mesh: carries workloads' TCP over HBONE
//! (HTTP/2 CONNECT inside mutual TLS 1.3 with SPIFFE identities), wire-compatible with Istio's
//! ztunnel, under Istio's L4 authorization, with Istio's metrics.
//!
//! # Modules
//! - [`config`]: flags and Istio's environment variables, validated into a [`config::Config`].
//! - [`identity`]: SPIFFE identities, the local CA, the certificate cache.
//! - [`tls`], [`hbone`]: the protocol, shared with the waypoint.
//! - [`state`], [`discovery`]: what the agent knows and where it learns it.
//! - [`rbac`]: L4 authorization.
//! - [`proxy`]: the listeners and the data path.
//! - [`metrics`], [`admin`]: telemetry and the HTTP endpoints; [`traceparent`]: the trace id
//!   that ties a connection's two access-log lines together.
//! - [`app`]: wiring and drain; [`workers`]: the threads; [`logging`]: log output;
//!   [`memory`]: the allocator's settings.

pub mod admin;
pub mod app;
pub mod config;
pub mod discovery;
pub mod hbone;
pub mod identity;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod netns;
pub mod orig_src;
pub mod proxy;
pub mod rbac;
pub mod redirect;
pub mod state;
mod sys;
pub mod tls;
pub mod traceparent;
pub mod workers;
