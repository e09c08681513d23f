//! The waypoint's HBONE side: mTLS connections on 15008 from node agents, one CONNECT per
//! tunnelled connection, addressed to a service VIP (or a workload). Each tunnel is sniffed:
//! HTTP/1.1 and HTTP/2 go through the L7 pipeline, anything else is carried as TCP to an
//! endpoint.

use crate::Waypoint;
use crate::pipeline::{self, Metered};
use ::http::StatusCode;
use bytes::{Bytes, BytesMut};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use waypoint_rules::{ObjectRef, Peer};
use ztunnel::hbone::H2Stream;
use ztunnel::hbone::server::IncomingStream;
use ztunnel::identity::Identity;
use ztunnel::state::{Service, Workload};

/// What every request of one tunnel shares.
pub struct Tunnel {
    /// The service (or, for a workload-addressed tunnel, the workload) rules are looked up by.
    pub target: ObjectRef,
    pub service: Option<Arc<Service>>,
    /// The CONNECT authority: the service VIP (or workload address) and port dialled.
    pub authority: SocketAddr,
    /// The service port the client dialled.
    pub port: u16,
    pub peer_identity: Identity,
    /// The peer's principal in Istio's policy form (`<td>/ns/<ns>/sa/<sa>`).
    pub principal: String,
    /// The original client, from `forwarded` (else the tunnel's peer).
    pub client_addr: SocketAddr,
    pub client_workload: Option<Arc<Workload>>,
    /// The client spoke HTTP/2 (and so does the waypoint to the backend).
    pub h2: bool,
}

impl Tunnel {
    /// Who sent the tunnel's requests, as authorization sees it.
    pub fn peer(&self) -> Peer<'_> {
        Peer {
            principal: Some(&self.principal),
            namespace: Some(&self.peer_identity.namespace),
            ip: self.client_addr.ip(),
        }
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// A client that says nothing for this long is carried as TCP (server-first protocols).
const SNIFF_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, PartialEq, Eq)]
enum Sniffed {
    Http1,
    Http2,
    Tcp,
}

/// Decides from the first bytes; `None`: not enough yet.
fn sniff(buf: &[u8]) -> Option<Sniffed> {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Sniffed::Http2);
    }
    // HTTP/1.x: a method token (upper-case letters) then a space.
    for (i, b) in buf.iter().enumerate() {
        match b {
            b'A'..=b'Z' if i < 16 => continue,
            b' ' if i > 0 => return Some(Sniffed::Http1),
            _ => return Some(Sniffed::Tcp),
        }
    }
    (buf.len() >= 16).then_some(Sniffed::Tcp)
}

/// A tunnel with the bytes read while sniffing put back in front.
struct Rewind {
    prefix: Bytes,
    inner: H2Stream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Rewind {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn reject(incoming: IncomingStream, status: StatusCode, why: &str) {
    tracing::event!(
        target: "access",
        tracing::Level::WARN,
        src.addr = %incoming.peer_addr,
        src.identity = %incoming.peer_identity,
        authority = %incoming.request.uri(),
        error = %format!("{}: {why}", status.as_u16()),
        "tunnel refused"
    );
    incoming.reject(status);
}

/// Serves one CONNECT stream.
pub async fn handle_stream(wp: Arc<Waypoint>, incoming: IncomingStream) {
    let authority = match incoming.connect_target() {
        Ok(a) => a,
        Err(why) => return reject(incoming, StatusCode::BAD_REQUEST, &why),
    };
    let state = wp.state.snapshot();
    let network = &wp.cfg.network;
    let (target, service) = if let Some(svc) = state.service_by_vip(network, authority.ip()) {
        (ObjectRef::new(&svc.namespace, &svc.name), Some(svc.clone()))
    } else if let Some(w) = state.workload_by_ip(network, authority.ip()) {
        (ObjectRef::new(&w.namespace, &w.name), None)
    } else {
        return reject(
            incoming,
            StatusCode::BAD_REQUEST,
            &format!("{} is neither a service nor a workload", authority.ip()),
        );
    };
    let client_addr = incoming.forwarded_for().unwrap_or(incoming.peer_addr);
    let client_workload = state.workload_by_ip(network, client_addr.ip()).cloned();
    let peer_identity = incoming.peer_identity.clone();
    let tunnel_stream = match incoming.accept() {
        Ok(t) => t,
        Err(e) => {
            tracing::debug!(error = %e, "answering CONNECT");
            return;
        }
    };
    let (kind, prefix, stream) = match read_prefix(tunnel_stream).await {
        Some(x) => x,
        None => return,
    };
    let tunnel = Arc::new(Tunnel {
        target,
        service,
        authority,
        port: authority.port(),
        principal: peer_identity
            .to_string()
            .trim_start_matches("spiffe://")
            .to_owned(),
        peer_identity,
        client_addr,
        client_workload,
        h2: kind == Sniffed::Http2,
    });
    let io = Rewind {
        prefix,
        inner: stream,
    };
    match kind {
        Sniffed::Http1 | Sniffed::Http2 => serve_http(wp, tunnel, io).await,
        Sniffed::Tcp => crate::tcp::passthrough(wp, tunnel, authority, io).await,
    }
}

/// Reads until the protocol is known (or the client stays silent: TCP).
async fn read_prefix(mut stream: H2Stream) -> Option<(Sniffed, Bytes, H2Stream)> {
    let mut buf = BytesMut::with_capacity(64);
    let deadline = tokio::time::Instant::now() + SNIFF_TIMEOUT;
    loop {
        if let Some(kind) = sniff(&buf) {
            return Some((kind, buf.freeze(), stream));
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(&mut buf)).await {
            Ok(Ok(0)) => {
                return (!buf.is_empty()).then(|| (Sniffed::Tcp, buf.freeze(), stream));
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "tunnel closed while sniffing");
                return None;
            }
            Err(_) => return Some((Sniffed::Tcp, buf.freeze(), stream)),
        }
    }
}

async fn serve_http(wp: Arc<Waypoint>, tunnel: Arc<Tunnel>, io: Rewind) {
    let h2 = tunnel.h2;
    let svc = hyper::service::service_fn(move |req| {
        let (wp, tunnel) = (wp.clone(), tunnel.clone());
        async move {
            Ok::<::http::Response<Metered>, std::convert::Infallible>(
                pipeline::handle(wp, tunnel, req).await,
            )
        }
    });
    let io = TokioIo::new(io);
    let result = if h2 {
        http2_server().serve_connection(io, svc).await
    } else {
        http1_server(HEADER_READ_TIMEOUT)
            .serve_connection(io, svc)
            .await
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "HTTP in tunnel ended");
    }
}

/// How long a client has to send a request head (hyper's default). Hyper starts it whenever
/// it waits for a head, so it is also how long an idle keep-alive connection is kept.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// HTTP/2 keep-alive: a ping after this long without a frame from the client; a client that
/// does not answer it within [`H2_PING_TIMEOUT`] is gone and its connection is closed.
const H2_PING_INTERVAL: Duration = Duration::from_secs(60);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// The HTTP/1 server, with a timer: without one hyper enforces no header read timeout, and
/// a client sending its head slowly would hold the connection for ever.
fn http1_server(header_read_timeout: Duration) -> hyper::server::conn::http1::Builder {
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    b
}

/// The HTTP/2 server, with a timer for its keep-alive pings. Hyper has no idle timeout for
/// an HTTP/2 connection, only these pings, which close it once the client is gone.
fn http2_server() -> hyper::server::conn::http2::Builder<TokioExecutor> {
    let mut b = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn a_client_too_slow_to_send_its_head_is_disconnected() {
        let (mut client, server) = tokio::io::duplex(1024);
        client
            .write_all(b"GET / HTTP/1.1\r\nHost: a\r\n")
            .await
            .expect("write");
        let svc = hyper::service::service_fn(|_req| async {
            Ok::<_, std::convert::Infallible>(::http::Response::new(String::new()))
        });
        let served =
            http1_server(Duration::from_millis(50)).serve_connection(TokioIo::new(server), svc);
        // Without a working timeout, the connection would wait for the rest of the head.
        let result = tokio::time::timeout(Duration::from_secs(10), served)
            .await
            .expect("the header read timeout closes the connection");
        let err = result.expect_err("the head never completed");
        assert!(err.is_timeout(), "{err}");
    }

    #[test]
    fn sniffing_tells_http1_http2_and_tcp_apart() {
        assert_eq!(sniff(b"GET / HTTP/1.1\r\n"), Some(Sniffed::Http1));
        assert_eq!(sniff(b"POST"), None);
        assert_eq!(sniff(H2_PREFACE), Some(Sniffed::Http2));
        assert_eq!(sniff(&H2_PREFACE[..10]), None);
        assert_eq!(sniff(b"\x16\x03\x01"), Some(Sniffed::Tcp));
        assert_eq!(sniff(b"hello world"), Some(Sniffed::Tcp));
    }
}
