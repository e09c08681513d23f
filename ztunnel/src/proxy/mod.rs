//! The data path: listeners that take connections however they were captured (original
//! destination, SOCKS5, HBONE) and carry them to their destination, under policy, with one
//! metrics-and-log record per connection.

pub mod copy;
pub mod inbound;
pub mod inbound_passthrough;
pub mod outbound;
pub mod pods;
pub mod socks5;

use crate::config::{Config, ProxyMode};
use crate::hbone::client::{Dialer, Pool};
use crate::identity::{CertManager, Identity};
use crate::metrics::Metrics;
use crate::state::{Picker, State, StateHandle, Workload};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// What every listener shares. In shared mode each enrolled pod gets its own copy
/// ([`ProxyInputs::for_pod`]) whose sockets are made inside the pod's network namespace.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub state: Arc<StateHandle>,
    pub certs: Arc<CertManager>,
    pub pool: Pool,
    pub dialer: Dialer,
    pub metrics: Arc<Metrics>,
    pub picker: Picker,
    /// The pod (workload uid) these inputs serve, in shared mode.
    pub pod: Option<String>,
    /// Shared mode: the pod's netns cookie and the eBPF record of original destinations.
    pub orig_dst: Option<(u64, crate::redirect::OrigDstLookup)>,
    /// Shared mode: how the pod's namespace was set up to keep clients' addresses, if it was.
    pub orig_src: Option<crate::orig_src::Installed>,
}

impl ProxyInputs {
    pub fn new(
        cfg: Arc<Config>,
        state: Arc<StateHandle>,
        certs: Arc<CertManager>,
        metrics: Arc<Metrics>,
    ) -> Arc<Self> {
        let dialer = Dialer {
            mark: cfg.packet_mark,
            connect_timeout: Some(Duration::from_secs(10)),
            netns: None,
        };
        Arc::new(Self {
            pool: Pool::new(certs.clone(), dialer.clone()),
            cfg,
            state,
            certs,
            dialer,
            metrics,
            picker: Picker::default(),
            pod: None,
            orig_dst: None,
            orig_src: None,
        })
    }

    /// Inputs for one enrolled pod: same state, certificates and metrics, but its own pool
    /// whose connections are made from inside the pod's namespace.
    pub fn for_pod(
        &self,
        uid: &str,
        netns: Arc<crate::netns::PodNetns>,
        orig_dst: (u64, crate::redirect::OrigDstLookup),
        orig_src: Option<crate::orig_src::Installed>,
    ) -> Arc<Self> {
        let dialer = Dialer {
            netns: Some(netns),
            ..self.dialer.clone()
        };
        Arc::new(Self {
            pool: self.pool.sibling(dialer.clone()),
            cfg: self.cfg.clone(),
            state: self.state.clone(),
            certs: self.certs.clone(),
            dialer,
            metrics: self.metrics.clone(),
            picker: Picker::default(),
            pod: Some(uid.to_owned()),
            orig_dst: Some(orig_dst),
            orig_src,
        })
    }

    /// Whether these inputs serve `w`: the pod (shared mode), the dedicated workload (matched
    /// on namespace, name and service account, as Istio's ztunnel finds it), or any workload
    /// of this node.
    pub fn is_local(&self, w: &Workload) -> bool {
        if let Some(uid) = &self.pod {
            return &w.uid == uid;
        }
        match (&self.cfg.proxy_mode, &self.cfg.workload_info) {
            (ProxyMode::Dedicated, Some(info)) => {
                w.namespace == info.namespace
                    && w.name == info.name
                    && w.service_account == info.service_account
            }
            _ => !self.cfg.node_name.is_empty() && w.node == self.cfg.node_name,
        }
    }

    /// The workload whose outbound connections these inputs carry, and its identity: the pod
    /// in shared mode; in dedicated mode the `PROXY_WORKLOAD_INFO` workload (even if the file
    /// does not list it).
    pub fn source(&self, state: &State) -> Option<(Option<Arc<Workload>>, Identity)> {
        if let Some(uid) = &self.pod {
            let w = state.workload_by_uid(uid)?.clone();
            let id = w.identity();
            return Some((Some(w), id));
        }
        let info = self.cfg.workload_info.as_ref()?;
        let w = state.workloads().find(|w| self.is_local(w)).cloned();
        let trust_domain = w
            .as_ref()
            .map_or(self.cfg.trust_domain.as_str(), |w| w.trust_domain.as_str());
        let id = Identity::new(trust_domain, &info.namespace, &info.service_account);
        Some((w, id))
    }

    /// The identities whose certificates this agent presents.
    pub fn local_identities(&self, state: &State) -> Vec<Identity> {
        let mut ids: Vec<Identity> = state
            .workloads()
            .filter(|w| self.is_local(w))
            .map(|w| w.identity())
            .collect();
        if let Some((_, id)) = self.source(state) {
            ids.push(id);
        }
        ids.sort();
        ids.dedup();
        ids
    }
}

/// A listener bind that names the address in its error.
#[derive(Debug, thiserror::Error)]
#[error("binding the {name} listener on {addr}: {source}")]
pub struct BindError {
    pub name: &'static str,
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Binds a listener. `[::]` is dual-stack (IPv4 clients arrive as `::ffff:a.b.c.d`, which
/// [`accept_loop`] and [`ProxyInputs::original_dst`] turn back into IPv4); in a namespace
/// without IPv6 it falls back to `0.0.0.0`.
pub async fn bind(name: &'static str, addr: SocketAddr) -> Result<TcpListener, BindError> {
    let wildcard6 = addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    match listen(addr) {
        Err(e) if wildcard6 && no_ipv6(&e) => {
            let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
            tracing::warn!(listener = name, error = %e, "no IPv6 here: listening on {v4} only");
            listen(v4).map_err(|source| BindError {
                name,
                addr: v4,
                source,
            })
        }
        r => r.map_err(|source| BindError { name, addr, source }),
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::from_std(crate::sys::listen(addr, None)?)
}

/// Whether a bind failed because this namespace or kernel has no IPv6.
fn no_ipv6(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL)
    )
}

impl ProxyInputs {
    /// The destination the client dialled: the eBPF record (shared mode), else
    /// `SO_ORIGINAL_DST` when the connection was redirected, else the address it reached us on.
    pub fn original_dst(&self, stream: &TcpStream) -> Option<SocketAddr> {
        if let Some((cookie, lookup)) = &self.orig_dst
            && let Some(dst) = stream
                .peer_addr()
                .ok()
                .and_then(|p| lookup.take(*cookie, p))
        {
            return Some(crate::sys::canonical(dst));
        }
        crate::sys::original_dst(stream)
            .or_else(|| stream.local_addr().ok())
            .map(crate::sys::canonical)
    }
}

/// Ports of the agent's own listeners: never a destination, or traffic would loop.
pub fn is_own_port(port: u16) -> bool {
    [
        mesh_common::OUTBOUND_PORT,
        mesh_common::INBOUND_PLAINTEXT_PORT,
        mesh_common::HBONE_PORT,
        mesh_common::SOCKS5_PORT,
    ]
    .contains(&port)
}

/// Closes `stream` with a TCP reset, so that the client sees the failure as such.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Accepts connections on `listener` until `drain` fires, handing each to `handle`.
pub async fn accept_loop<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    mut drain: tokio::sync::watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr, tokio::sync::watch::Receiver<bool>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let handle = std::sync::Arc::new(handle);
    loop {
        tokio::select! {
            _ = drain.changed() => {
                tracing::info!(listener = name, "draining: no longer accepting");
                return;
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let peer = crate::sys::canonical(peer);
                    let _ = stream.set_nodelay(true);
                    // The task holds a drain receiver until it ends: drain waits for all.
                    let held = drain.clone();
                    let handle = handle.clone();
                    crate::workers::hand_off(stream, move |stream| async move {
                        handle(stream, peer, held.clone()).await;
                        drop(held);
                    });
                }
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
}
