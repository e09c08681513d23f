//! HTTP connections to endpoints, pooled per endpoint address: HTTP/1.1 connections are
//! reused one request at a time, an HTTP/2 connection carries many. Each connection is one
//! HBONE tunnel to the endpoint's pod (its agent sees the waypoint's identity), or plain TCP to
//! a workload outside the mesh.

use super::Endpoint;
use crate::pipeline::Body;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use ztunnel::hbone::client::{Connect, Dialer, Pool, PoolKey};
use ztunnel::identity::Identity;
use ztunnel::state::Protocol;
use ztunnel::workers::PerWorker;

/// Why an attempt got no response. The variant decides retries and response flags.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (Envoy `UF`, retry-on `connect-failure`).
    #[error("connecting to {addr}: {why}")]
    Connect { addr: SocketAddr, why: String },
    /// The connection failed after the request was sent (Envoy `UC`, retry-on `reset`).
    #[error("{addr} reset the request: {why}")]
    Reset { addr: SocketAddr, why: String },
    /// HTTP/2 REFUSED_STREAM (retry-on `refused-stream`).
    #[error("{addr} refused the stream")]
    Refused { addr: SocketAddr },
}

/// A byte stream to an endpoint.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Io for T {}

/// Where every pod's agent (or waypoint) accepts HBONE.
const HBONE_PORT: u16 = 15008;

/// The most idle HTTP/1.1 connections kept per endpoint.
const MAX_IDLE_PER_ENDPOINT: usize = 64;

/// The waypoint's connections to its endpoints.
pub struct Connections {
    hbone: Pool,
    dialer: Dialer,
    identity: Identity,
    /// Per worker thread: a connection's driver runs on the worker that opened it, so only
    /// that worker's requests use it.
    http1: PerWorker<Mutex<HashMap<SocketAddr, Vec<http1::SendRequest<Body>>>>>,
    http2: PerWorker<Mutex<HashMap<SocketAddr, http2::SendRequest<Body>>>>,
}

impl Connections {
    pub fn new(hbone: Pool, dialer: Dialer, identity: Identity) -> Self {
        Self {
            hbone,
            dialer,
            identity,
            http1: Default::default(),
            http2: Default::default(),
        }
    }

    /// Opens the byte stream to `ep`: an HBONE tunnel for a mesh workload, else TCP.
    pub async fn dial(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
        timeout: Option<std::time::Duration>,
    ) -> Result<Box<dyn Io>, SendError> {
        match timeout {
            Some(t) => tokio::time::timeout(t, self.dial_now(ep, forwarded_for))
                .await
                .unwrap_or_else(|_| {
                    Err(SendError::Connect {
                        addr: ep.addr,
                        why: format!("connect timeout ({t:?})"),
                    })
                }),
            None => self.dial_now(ep, forwarded_for).await,
        }
    }

    async fn dial_now(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
    ) -> Result<Box<dyn Io>, SendError> {
        let addr = ep.addr;
        let connect_err = |why: String| SendError::Connect { addr, why };
        if ep.workload.protocol == Protocol::HBONE {
            let connect = Connect {
                key: PoolKey::new(
                    self.identity.clone(),
                    vec![ep.workload.identity()],
                    SocketAddr::new(addr.ip(), HBONE_PORT),
                ),
                authority: addr,
                forwarded_for,
                // The destination's agent tells the service from the target port.
                forwarded_host: None,
                baggage: None,
                traceparent: None,
            };
            let tunnel = self
                .hbone
                .connect(&connect)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            Ok(Box::new(tunnel))
        } else {
            let tcp = self
                .dialer
                .dial(addr)
                .await
                .map_err(|e| connect_err(e.to_string()))?;
            Ok(Box::new(tcp))
        }
    }

    /// Sends `req` to `ep` over HTTP/2 when `h2`, else HTTP/1.1; the response head, its body
    /// still streaming.
    pub async fn send(
        &self,
        ep: &Endpoint,
        h2: bool,
        req: http::Request<Body>,
        forwarded_for: Option<SocketAddr>,
        connect_timeout: Option<std::time::Duration>,
    ) -> Result<http::Response<Incoming>, SendError> {
        let addr = ep.addr;
        let classify = |e: hyper::Error| classify(addr, e);
        if h2 {
            let mut sender = self
                .http2_sender(ep, forwarded_for, connect_timeout)
                .await?;
            return sender.send_request(req).await.map_err(classify);
        }
        let mut sender = match self.idle_http1(addr) {
            Some(s) => s,
            None => self.new_http1(ep, forwarded_for, connect_timeout).await?,
        };
        let result = sender.send_request(req).await.map_err(classify);
        // Back in the pool at once: it is skipped until the response body has been read.
        if result.is_ok() {
            let mut map = self.http1.here().lock().unwrap_or_else(|p| p.into_inner());
            let list = map.entry(addr).or_default();
            if list.len() < MAX_IDLE_PER_ENDPOINT {
                list.push(sender);
            }
        }
        result
    }

    fn idle_http1(&self, addr: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut map = self.http1.here().lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(&addr)?;
        list.retain(|s| !s.is_closed());
        let i = list.iter().position(|s| s.is_ready())?;
        Some(list.swap_remove(i))
    }

    async fn new_http1(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
        connect_timeout: Option<std::time::Duration>,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.dial(ep, forwarded_for, connect_timeout).await?;
        let addr = ep.addr;
        let (mut sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_failed(addr, e))?;
        drive(addr, "HTTP/1.1", conn);
        sender.ready().await.map_err(|e| classify(addr, e))?;
        Ok(sender)
    }

    async fn http2_sender(
        &self,
        ep: &Endpoint,
        forwarded_for: Option<SocketAddr>,
        connect_timeout: Option<std::time::Duration>,
    ) -> Result<http2::SendRequest<Body>, SendError> {
        {
            let map = self.http2.here().lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = map.get(&ep.addr)
                && !s.is_closed()
            {
                return Ok(s.clone());
            }
        }
        let io = self.dial(ep, forwarded_for, connect_timeout).await?;
        let addr = ep.addr;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| handshake_failed(addr, e))?;
        drive(addr, "HTTP/2", conn);
        let mut map = self.http2.here().lock().unwrap_or_else(|p| p.into_inner());
        map.insert(ep.addr, sender.clone());
        Ok(sender)
    }
}

fn handshake_failed(addr: SocketAddr, e: hyper::Error) -> SendError {
    SendError::Connect {
        addr,
        why: e.to_string(),
    }
}

/// Runs an upstream connection's I/O until it ends.
fn drive<C>(addr: SocketAddr, protocol: &'static str, conn: C)
where
    C: std::future::Future<Output = Result<(), hyper::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(%addr, protocol, error = %e, "upstream connection ended");
        }
    });
}

/// A failed exchange: refused stream (HTTP/2), else a reset.
fn classify(addr: SocketAddr, e: hyper::Error) -> SendError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(h2e) = s.downcast_ref::<h2::Error>()
            && h2e.reason() == Some(h2::Reason::REFUSED_STREAM)
        {
            return SendError::Refused { addr };
        }
        source = s.source();
    }
    SendError::Reset {
        addr,
        why: e.to_string(),
    }
}
