//! The HBONE server: accepts mTLS connections and hands each CONNECT stream to a handler.

use super::H2Stream;
use crate::identity::Identity;
use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpStream;

/// A CONNECT (or anything else) that arrived on an HBONE connection, not yet answered.
pub struct IncomingStream {
    pub request: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    /// The client's identity, from its certificate.
    pub peer_identity: Identity,
    /// The outer connection's addresses.
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
}

impl IncomingStream {
    pub fn is_connect(&self) -> bool {
        self.request.method() == Method::CONNECT
    }

    /// The `<ip>:<port>` of the CONNECT authority, if it is one.
    pub fn authority(&self) -> Option<SocketAddr> {
        self.request.uri().authority()?.as_str().parse().ok()
    }

    /// The `<ip>:<port>` this CONNECT asks for, or why the request is not one (answered 400).
    pub fn connect_target(&self) -> Result<SocketAddr, String> {
        if !self.is_connect() {
            return Err(format!("method {} is not CONNECT", self.request.method()));
        }
        self.authority()
            .ok_or_else(|| "authority is not <ip>:<port>".to_owned())
    }

    /// The original client address from `forwarded: for="..."`, if sent.
    pub fn forwarded_for(&self) -> Option<SocketAddr> {
        forwarded_for(self.forwarded()?)
    }

    /// The service hostname the client says it dialled, from `forwarded: host=...`.
    pub fn forwarded_host(&self) -> Option<&str> {
        forwarded_param(self.forwarded()?, "host")
    }

    /// The client's trace from `traceparent`, if it sent a valid one.
    pub fn traceparent(&self) -> Option<crate::traceparent::TraceParent> {
        let value = self
            .request
            .headers()
            .get(super::TRACEPARENT)?
            .to_str()
            .ok()?;
        crate::traceparent::TraceParent::parse(value)
    }

    fn forwarded(&self) -> Option<&str> {
        self.request.headers().get(super::FORWARDED)?.to_str().ok()
    }

    /// Answers with an error status and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        let response = Response::builder().status(status).body(());
        if let Ok(response) = response
            && let Err(e) = self.respond.send_response(response, true)
        {
            tracing::debug!(error = %e, "could not send HBONE rejection");
        }
    }

    /// Answers 200 and returns the tunnel.
    pub fn accept(mut self) -> Result<H2Stream, h2::Error> {
        let response = Response::builder()
            .status(StatusCode::OK)
            .body(())
            .unwrap_or_default();
        let send = self.respond.send_response(response, false)?;
        Ok(H2Stream::new(send, self.request.into_body()))
    }
}

/// The first `for=` of a `forwarded` value: `"ip:port"` as we and Istio's ztunnel send it,
/// or a bare address (`for=10.0.0.1`, `for="[::1]"`) as older Istio versions send it, with
/// port 0 then.
fn forwarded_for(value: &str) -> Option<SocketAddr> {
    forwarded_param(value, "for").and_then(|p| {
        p.parse().ok().or_else(|| {
            let ip = p.trim_start_matches('[').trim_end_matches(']');
            ip.parse().ok().map(|ip| SocketAddr::new(ip, 0))
        })
    })
}

/// The first `name=value` of a `forwarded` header (RFC 7239), unquoted.
fn forwarded_param<'a>(value: &'a str, name: &str) -> Option<&'a str> {
    value
        .split([';', ','])
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim_matches('"'))
        .filter(|v| !v.is_empty())
}

/// Why an HBONE connection ended before or during serving.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS handshake from {peer}: {source}")]
    Tls {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("client {peer} presented no SPIFFE identity")]
    NoIdentity { peer: SocketAddr },
    #[error("HTTP/2 from {peer}: {source}")]
    Http2 { peer: SocketAddr, source: h2::Error },
    #[error("handshake from {peer} did not finish within {HANDSHAKE_TIMEOUT:?}")]
    Timeout { peer: SocketAddr },
}

/// TLS and HTTP/2 handshakes together must finish within this.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Streams per connection (Istio's server value).
const MAX_CONCURRENT_STREAMS: u32 = 200;
/// Istio's server accepts header lists up to 64 KiB.
const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves one accepted TCP connection: TLS with `tls`, then HTTP/2, handing every stream to
/// `handler` on its own task. Returns when the connection ends or `drain` fires (after a
/// graceful GOAWAY).
pub async fn serve<H, F>(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    trust_domain: &str,
    mut drain: tokio::sync::watch::Receiver<bool>,
    handler: H,
) -> Result<(), ServeError>
where
    H: Fn(IncomingStream) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let peer = tcp
        .peer_addr()
        .map(crate::sys::canonical)
        .map_err(|source| ServeError::Tls {
            peer: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
    let local = tcp
        .local_addr()
        .map(crate::sys::canonical)
        .map_err(|source| ServeError::Tls { peer, source })?;
    let _ = tcp.set_nodelay(true);
    let handshake = async {
        let mut tls = tokio_rustls::TlsAcceptor::from(tls)
            .accept(tcp)
            .await
            .map_err(|source| ServeError::Tls { peer, source })?;
        tls.get_mut()
            .1
            .set_buffer_limit(Some(super::TLS_SEND_BUFFER));
        let identity = crate::tls::peer_identity(tls.get_ref().1.peer_certificates(), trust_domain)
            .ok_or(ServeError::NoIdentity { peer })?;
        let conn = h2::server::Builder::new()
            .initial_window_size(super::STREAM_WINDOW)
            .initial_connection_window_size(super::CONNECTION_WINDOW)
            .max_frame_size(super::MAX_FRAME)
            .max_header_list_size(SERVER_MAX_HEADER_LIST)
            .max_send_buffer_size(super::STREAM_WINDOW as usize)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .data_frame_budget(super::DATA_FRAME_BUDGET)
            .handshake::<_, Bytes>(tls)
            .await
            .map_err(|source| ServeError::Http2 { peer, source })?;
        Ok::<_, ServeError>((identity, conn))
    };
    let (identity, mut conn) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| ServeError::Timeout { peer })??;
    let h2err = |source| ServeError::Http2 { peer, source };
    let keepalive = super::keepalive(conn.ping_pong());
    tokio::pin!(keepalive);
    let mut draining = *drain.borrow();
    if draining {
        conn.graceful_shutdown();
    }
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            _ = drain.changed(), if !draining => {
                draining = true;
                conn.graceful_shutdown();
                continue;
            }
            _ = &mut keepalive => {
                tracing::debug!(%peer, "HBONE peer stopped answering PINGs");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
        };
        match next {
            None => return Ok(()),
            Some(Err(e)) if e.is_go_away() || e.is_remote() => {
                tracing::debug!(%peer, error = %e, "HBONE connection closed by peer");
                return Ok(());
            }
            Some(Err(e)) => return Err(h2err(e)),
            Some(Ok((request, respond))) => {
                let stream = IncomingStream {
                    request,
                    respond,
                    peer_identity: identity.clone(),
                    peer_addr: peer,
                    local_addr: local,
                };
                tokio::spawn(handler(stream));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_host_is_read_from_either_place() {
        assert_eq!(
            forwarded_param("for=\"10.0.0.1:4000\";host=web.default.svc", "host"),
            Some("web.default.svc")
        );
        assert_eq!(
            forwarded_param("host=\"a.b\";for=1.2.3.4", "host"),
            Some("a.b")
        );
        assert_eq!(forwarded_param("for=\"10.0.0.1:4000\"", "host"), None);
        assert_eq!(forwarded_param("host=", "host"), None);
    }

    #[test]
    fn forwarded_for_reads_the_forms_istio_sends() {
        let addr = |s: &str| s.parse::<SocketAddr>().ok();
        for (value, want) in [
            ("for=\"10.0.0.1:4000\"", addr("10.0.0.1:4000")),
            ("for=\"[fd00::1]:4000\"", addr("[fd00::1]:4000")),
            ("for=10.0.0.1", addr("10.0.0.1:0")),
            ("for=\"[fd00::1]\"", addr("[fd00::1]:0")),
            ("proto=https;for=10.0.0.1;host=a", addr("10.0.0.1:0")),
            ("for=unknown", None),
            ("by=10.0.0.1", None),
        ] {
            assert_eq!(forwarded_for(value), want, "{value}");
        }
    }
}
