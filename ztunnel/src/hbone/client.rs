//! The HBONE client: a pool of mTLS HTTP/2 connections keyed by (source identity, destination
//! identities, destination address), each carrying many CONNECT streams.

use super::{H2Stream, keepalive};
use crate::identity::{CaError, CertManager, Identity};
use crate::workers::PerWorker;
use bytes::Bytes;
use h2::client::SendRequest;
use http::{Method, Request, StatusCode};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpSocket, TcpStream};

/// Why a tunnel could not be opened. The variant decides what the client sees and what the
/// access log says.
#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    /// The TCP connection to the peer's HBONE port failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The TLS handshake failed (certificate not trusted, wrong identity, ...).
    #[error("TLS handshake with {addr}: {source}")]
    Tls {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// Our own certificate or TLS configuration could not be made.
    #[error("client TLS configuration: {0}")]
    Config(String),
    /// The HTTP/2 layer failed.
    #[error("HTTP/2 with {addr}: {source}")]
    Http2 { addr: SocketAddr, source: h2::Error },
    /// The peer answered the CONNECT with something other than 200.
    #[error("peer {addr} answered CONNECT {authority} with {status}")]
    Status {
        addr: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
    },
    /// The connect timed out.
    #[error("connecting to {addr}: timed out after {after:?}")]
    Timeout { addr: SocketAddr, after: Duration },
}

impl From<CaError> for HboneError {
    fn from(e: CaError) -> Self {
        HboneError::Config(e.to_string())
    }
}

/// What a pooled connection is for. Two requests share a connection only if all three match.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_id: Identity,
    /// Identities the server may present (sorted, so that order does not split the pool).
    pub dst_ids: Vec<Identity>,
    /// The peer's HBONE address (`<pod ip>:15008`).
    pub dst: SocketAddr,
}

impl PoolKey {
    pub fn new(src_id: Identity, mut dst_ids: Vec<Identity>, dst: SocketAddr) -> Self {
        dst_ids.sort();
        dst_ids.dedup();
        Self {
            src_id,
            dst_ids,
            dst,
        }
    }
}

/// One CONNECT to make.
#[derive(Clone, Debug)]
pub struct Connect {
    pub key: PoolKey,
    /// `:authority`: the destination `<ip>:<port>` inside the tunnel.
    pub authority: SocketAddr,
    /// The original client address, sent as `forwarded: for="<addr>"`.
    pub forwarded_for: Option<SocketAddr>,
    /// The service hostname the client dialled, sent as `forwarded: ...;host=<hostname>` (as
    /// Istio's ztunnel does, so that the destination's metrics name the service).
    pub forwarded_host: Option<String>,
    /// Istio's `baggage` header describing the source workload.
    pub baggage: Option<String>,
    /// The connection's trace, sent as `traceparent`.
    pub traceparent: Option<crate::traceparent::TraceParent>,
}

/// How the pool opens its TCP connections.
#[derive(Clone, Debug, Default)]
pub struct Dialer {
    /// `SO_MARK` on every socket, so that redirection never captures the agent itself.
    pub mark: Option<u32>,
    pub connect_timeout: Option<Duration>,
    /// Make sockets inside this pod's network namespace (shared mode), so that connections
    /// leave with the pod's address ([`Dialer::dial_from`]: with the given one).
    pub netns: Option<Arc<crate::netns::PodNetns>>,
}

impl Dialer {
    /// A socket for `addr`'s family, in the pod's namespace if there is one.
    async fn socket(&self, addr: SocketAddr) -> std::io::Result<TcpSocket> {
        match &self.netns {
            Some(ns) => {
                let s = ns.socket(socket2::Domain::for_address(addr)).await?;
                s.set_nonblocking(true)?;
                Ok(TcpSocket::from_std_stream(std::net::TcpStream::from(s)))
            }
            None if addr.is_ipv4() => TcpSocket::new_v4(),
            None => TcpSocket::new_v6(),
        }
    }

    /// Opens a TCP connection to `addr` with the mark set.
    pub async fn dial(&self, addr: SocketAddr) -> Result<TcpStream, std::io::Error> {
        let socket = self.socket(addr).await?;
        if let Some(mark) = self.mark {
            socket2::SockRef::from(&socket).set_mark(mark)?;
        }
        socket.set_nodelay(true)?;
        self.connect(socket, addr).await
    }

    /// Opens a TCP connection to `addr` from `src`, an address that need not be ours (the
    /// original client's), with `mark` set; see [`crate::orig_src`].
    pub async fn dial_from(
        &self,
        addr: SocketAddr,
        src: SocketAddr,
        mark: Option<u32>,
    ) -> Result<TcpStream, std::io::Error> {
        let socket = self.socket(addr).await?;
        let s = socket2::SockRef::from(&socket);
        crate::orig_src::prepare(&s, src, mark)?;
        if self.netns.is_some() {
            // In a pod, `mesh_sk_lookup` leaves alone only what arrives on `lo`; a connection
            // to the pod's own address from a foreign one is otherwise taken for an
            // outsider's and steered back to the agent.
            s.bind_device(Some(b"lo"))?;
        }
        socket.set_nodelay(true)?;
        self.connect(socket, addr).await
    }

    /// Connects `socket` to `addr` within the dialer's connect timeout.
    async fn connect(
        &self,
        socket: TcpSocket,
        addr: SocketAddr,
    ) -> Result<TcpStream, std::io::Error> {
        let connect = socket.connect(addr);
        match self.connect_timeout {
            Some(t) => tokio::time::timeout(t, connect).await.map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out")
            })?,
            None => connect.await,
        }
    }
}

#[derive(Clone)]
struct PooledConn {
    sender: SendRequest<Bytes>,
    streams: Arc<AtomicU32>,
    closed: Arc<AtomicBool>,
}

impl PooledConn {
    /// Claims a stream slot if the connection is open and below its stream limit.
    fn claim(&self) -> Option<StreamSlot> {
        if self.closed.load(Ordering::Relaxed) {
            return None;
        }
        self.streams
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < super::MAX_STREAMS_PER_CONN).then_some(n + 1)
            })
            .ok()
            .map(|_| StreamSlot(self.streams.clone()))
    }
}

/// Counts a stream against its connection for as long as it lives.
struct StreamSlot(Arc<AtomicU32>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The HBONE connection pool.
#[derive(Clone)]
pub struct Pool {
    certs: Arc<CertManager>,
    dialer: Dialer,
    /// Per worker thread: a connection's HTTP/2 driver runs on the worker that opened it, so
    /// only that worker's tunnels use it (no wake-up crosses threads).
    conns: ByKey<Vec<PooledConn>>,
    /// Serialises dialing per key, so that a burst of requests opens one connection, not many.
    dialing: ByKey<Arc<tokio::sync::Mutex<()>>>,
    /// Open connections, of this pool and of its siblings (see [`Pool::sibling`]).
    open: Arc<AtomicUsize>,
}

/// A map by pool key on each worker.
type ByKey<V> = Arc<PerWorker<Mutex<HashMap<PoolKey, V>>>>;

impl Pool {
    pub fn new(certs: Arc<CertManager>, dialer: Dialer) -> Self {
        Self {
            certs,
            dialer,
            conns: Default::default(),
            dialing: Default::default(),
            open: Default::default(),
        }
    }

    /// A pool of its own that dials with `dialer` (a pod's namespace, say) and is counted
    /// with this one in [`Pool::connections`].
    pub fn sibling(&self, dialer: Dialer) -> Self {
        Self {
            open: self.open.clone(),
            ..Self::new(self.certs.clone(), dialer)
        }
    }

    /// Opens a CONNECT stream to `req.authority` over a pooled (or new) connection. A
    /// connection that turns out to be going away (GOAWAY, refused stream) is retired and the
    /// request tried once more on a fresh one.
    pub async fn connect(&self, req: &Connect) -> Result<H2Stream, HboneError> {
        let (conn, slot) = self.get(&req.key).await?;
        match send_connect(&conn, slot, req).await {
            Err(Retry::Yes(e)) => {
                tracing::debug!(error = %e, "HBONE connection going away; retrying on a new one");
                conn.closed.store(true, Ordering::Relaxed);
                let (conn, slot) = self.get(&req.key).await?;
                send_connect(&conn, slot, req)
                    .await
                    .map_err(Retry::into_inner)
            }
            other => other.map_err(Retry::into_inner),
        }
    }

    /// A connection with a claimed stream slot: pooled, or dialled (one dial per key at a
    /// time, so that a burst of requests opens one connection, not many).
    async fn get(&self, key: &PoolKey) -> Result<(PooledConn, StreamSlot), HboneError> {
        if let Some(c) = self.checkout(key) {
            return Ok(c);
        }
        let lock = self.dial_lock(key);
        let result = {
            let _held = lock.lock().await;
            match self.checkout(key) {
                Some(c) => Ok(c),
                None => {
                    let addr = key.dst;
                    match tokio::time::timeout(OPEN_TIMEOUT, self.open(key)).await {
                        Ok(r) => r,
                        Err(_) => Err(HboneError::Timeout {
                            addr,
                            after: OPEN_TIMEOUT,
                        }),
                    }
                }
            }
        };
        // The last one out removes the key's lock, so the map does not grow forever.
        let mut map = self
            .dialing
            .here()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        drop(lock);
        if map.get(key).is_some_and(|l| Arc::strong_count(l) == 1) {
            map.remove(key);
        }
        result
    }

    fn dial_lock(&self, key: &PoolKey) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .dialing
            .here()
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.entry(key.clone()).or_default().clone()
    }

    fn checkout(&self, key: &PoolKey) -> Option<(PooledConn, StreamSlot)> {
        let mut map = self.conns.here().lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        list.retain(|c| !c.closed.load(Ordering::Relaxed));
        if list.is_empty() {
            map.remove(key);
            return None;
        }
        list.iter().find_map(|c| Some((c.clone(), c.claim()?)))
    }

    /// Number of open connections of this pool and its siblings (for tests and the admin
    /// page); a connection leaves the pool as soon as it closes.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// Number of connections held in this pool's own map (not its siblings').
    pub fn pooled(&self) -> usize {
        self.conns
            .all()
            .map(|shard| {
                let map = shard.lock().unwrap_or_else(|p| p.into_inner());
                map.values().map(Vec::len).sum::<usize>()
            })
            .sum()
    }

    async fn open(&self, key: &PoolKey) -> Result<(PooledConn, StreamSlot), HboneError> {
        let addr = key.dst;
        let cert = self.certs.get(&key.src_id)?;
        let tls = crate::tls::client_config(&cert, self.certs.roots(), key.dst_ids.clone())
            .map_err(|e| HboneError::Config(e.to_string()))?;
        let tcp = self
            .dialer
            .dial(addr)
            .await
            .map_err(|source| HboneError::Connect { addr, source })?;
        let server_name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(server_name, tcp)
            .await
            .map_err(|source| HboneError::Tls { addr, source })?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_header_list_size(super::MAX_HEADER_LIST)
            .max_send_buffer_size(super::STREAM_WINDOW as usize)
            .data_frame_budget(super::DATA_FRAME_BUDGET)
            .enable_push(false)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| HboneError::Http2 { addr, source })?;
        let conn = PooledConn {
            sender,
            streams: Arc::new(AtomicU32::new(0)),
            closed: Arc::new(AtomicBool::new(false)),
        };
        let slot = conn
            .claim()
            .ok_or_else(|| HboneError::Config("new connection full".into()))?;
        let closed = conn.closed.clone();
        let streams = conn.streams.clone();
        let ping = connection.ping_pong();
        let (conns, pool_key, open) = (self.conns.clone(), key.clone(), self.open.clone());
        open.fetch_add(1, Ordering::Relaxed);
        // Pooled before its driver runs, which removes it when it ends.
        conns
            .here()
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .push(conn.clone());
        // On this worker, as the connection's tunnels: `conns.here()` is their shard.
        tokio::spawn(async move {
            let result = tokio::select! {
                r = &mut connection => r,
                r = keepalive(ping) => r,
                () = idle(&streams) => {
                    tracing::debug!(%addr, "closing idle HBONE connection");
                    Ok(())
                }
            };
            closed.store(true, Ordering::Relaxed);
            // Out of the pool now, not at the key's next checkout, which may never come (the
            // peer pod is gone).
            open.fetch_sub(1, Ordering::Relaxed);
            {
                let mut map = conns.here().lock().unwrap_or_else(|p| p.into_inner());
                if let Some(list) = map.get_mut(&pool_key) {
                    list.retain(|c| !c.closed.load(Ordering::Relaxed));
                    if list.is_empty() {
                        map.remove(&pool_key);
                    }
                }
            }
            match result {
                Ok(()) => tracing::debug!(%addr, "HBONE connection closed"),
                Err(e) => tracing::debug!(%addr, error = %e, "HBONE connection ended"),
            }
        });
        tracing::debug!(%addr, src = %key.src_id, "opened HBONE connection");
        Ok((conn, slot))
    }
}

/// How long dialling, the TLS handshake and the HTTP/2 handshake may take together.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// A pooled connection with no stream for this long is closed (Istio's
/// `POOL_UNUSED_RELEASE_TIMEOUT`).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);

/// Resolves once `streams` has stayed at zero for [`IDLE_TIMEOUT`].
async fn idle(streams: &AtomicU32) {
    let step = IDLE_TIMEOUT / 10;
    let mut idle_for = Duration::ZERO;
    loop {
        tokio::time::sleep(step).await;
        if streams.load(Ordering::Relaxed) == 0 {
            idle_for += step;
            if idle_for >= IDLE_TIMEOUT {
                return;
            }
        } else {
            idle_for = Duration::ZERO;
        }
    }
}

/// A CONNECT failure, and whether trying a fresh connection may help.
enum Retry {
    Yes(HboneError),
    No(HboneError),
}

impl Retry {
    fn into_inner(self) -> HboneError {
        match self {
            Retry::Yes(e) | Retry::No(e) => e,
        }
    }
}

async fn send_connect(
    conn: &PooledConn,
    slot: StreamSlot,
    req: &Connect,
) -> Result<H2Stream, Retry> {
    let addr = req.key.dst;
    // Errors of a connection that is going away are worth one more try elsewhere.
    let h2err = |source: h2::Error| {
        let retry = source.is_go_away()
            || source.reason() == Some(h2::Reason::REFUSED_STREAM)
            || source.is_io();
        let e = HboneError::Http2 { addr, source };
        if retry { Retry::Yes(e) } else { Retry::No(e) }
    };
    let mut builder = Request::builder()
        .method(Method::CONNECT)
        .uri(req.authority.to_string())
        .version(http::Version::HTTP_2);
    if let Some(f) = forwarded_value(req.forwarded_for, req.forwarded_host.as_deref()) {
        builder = builder.header(super::FORWARDED, f);
    }
    if let Some(b) = &req.baggage {
        builder = builder.header(super::BAGGAGE, b);
    }
    if let Some(t) = &req.traceparent {
        builder = builder.header(super::TRACEPARENT, t.to_string());
    }
    let request = builder
        .body(())
        .map_err(|e| Retry::No(HboneError::Config(format!("CONNECT request: {e}"))))?;
    let mut sender = conn.sender.clone();
    std::future::poll_fn(|cx| sender.poll_ready(cx))
        .await
        .map_err(h2err)?;
    let (response, send) = sender.send_request(request, false).map_err(h2err)?;
    // A peer that takes the stream but never answers must not hold the client forever.
    let response = tokio::time::timeout(OPEN_TIMEOUT, response)
        .await
        .map_err(|_| {
            Retry::No(HboneError::Timeout {
                addr,
                after: OPEN_TIMEOUT,
            })
        })?
        .map_err(h2err)?;
    if response.status() != StatusCode::OK {
        return Err(Retry::No(HboneError::Status {
            addr,
            authority: req.authority,
            status: response.status(),
        }));
    }
    Ok(H2Stream::new(send, response.into_body()).with_slot(slot))
}

/// `for="<addr>";host=<hostname>` (either part alone when the other is unknown), with IPv6
/// addresses bracketed as RFC 7239 asks. A hostname that is not a plain DNS name is left out
/// rather than let break the request.
fn forwarded_value(addr: Option<SocketAddr>, host: Option<&str>) -> Option<String> {
    let host = host.filter(|h| {
        !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    });
    match (addr, host) {
        (Some(a), Some(h)) => Some(format!("for=\"{a}\";host={h}")),
        (Some(a), None) => Some(format!("for=\"{a}\"")),
        (None, Some(h)) => Some(format!("host={h}")),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::forwarded_value;

    #[test]
    fn forwarded_names_the_client_and_the_service_as_istio_sends_them() {
        let v4 = "10.0.0.1:4000".parse().ok();
        let v6 = "[fd00::1]:4000".parse().ok();
        let svc = Some("web.default.svc.cluster.local");
        assert_eq!(
            forwarded_value(v4, svc).as_deref(),
            Some("for=\"10.0.0.1:4000\";host=web.default.svc.cluster.local")
        );
        assert_eq!(
            forwarded_value(v6, None).as_deref(),
            Some("for=\"[fd00::1]:4000\"")
        );
        // A hostname that would not be a valid header value is left out, not sent broken.
        assert_eq!(
            forwarded_value(v4, Some("a\nb")).as_deref(),
            Some("for=\"10.0.0.1:4000\"")
        );
        assert_eq!(forwarded_value(None, None), None);
    }
}
