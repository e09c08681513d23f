//! HBONE: TCP tunnelled as HTTP/2 CONNECT streams inside mutual TLS, as Istio's ztunnel
//! speaks it. One implementation shared by the node agent and the waypoint.
//!
//! Wire details (kept identical to Istio): TCP to `<pod IP>:15008`, TLS 1.3, ALPN `h2`, no
//! SNI; one `CONNECT` stream per tunnelled connection with `:authority = <dst ip>:<port>` and no
//! `:scheme` or `:path`; 200 then raw bytes in DATA frames; windows of 4 MiB per stream and
//! 16 MiB per connection, 1 MiB frames; PING keep-alive.

pub mod client;
pub mod server;
mod stream;

pub use stream::H2Stream;

use std::time::Duration;

/// Per-stream flow-control window (Istio: 4 MiB).
pub const STREAM_WINDOW: u32 = 4 * 1024 * 1024;
/// Per-connection flow-control window (Istio: 16 MiB).
pub const CONNECTION_WINDOW: u32 = 16 * 1024 * 1024;
/// h2's limit on the overhead of received small DATA frames not yet read (a frame under
/// 256 bytes costs 256 minus its size): half the connection window, what h2 picks by
/// itself for the window it is told at start-up, so about 32 768 tiny frames buffered before
/// a peer that floods them is sent ENHANCE_YOUR_CALM.
pub const DATA_FRAME_BUDGET: usize = CONNECTION_WINDOW as usize / 2;
/// Largest DATA frame we accept (Istio: 1 MiB).
pub const MAX_FRAME: u32 = 1024 * 1024;
/// Bytes a TLS session takes to send before it waits for the socket (rustls's default is 64
/// KiB, checked against the plaintext). One HTTP/2 flush may carry more than that: a full
/// read's DATA frame behind a WINDOW_UPDATE, or several streams' frames; what went over the
/// default was sent as a second, small TLS record in a second `writev` and TCP segment.
pub const TLS_SEND_BUFFER: usize = 256 * 1024;
/// Largest header list we accept.
pub const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Streams per pooled connection before another connection is opened (Istio's default).
pub const MAX_STREAMS_PER_CONN: u32 = 100;
/// Keep-alive: a PING after this long, and the connection is dropped if no PONG comes back
/// within [`KEEPALIVE_TIMEOUT`].
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The `forwarded` header carrying the original client address (RFC 7239).
pub const FORWARDED: &str = "forwarded";
pub const BAGGAGE: &str = "baggage";
/// W3C Trace Context, one trace per tunnelled connection.
pub const TRACEPARENT: &str = "traceparent";

/// Drives keep-alive PINGs on `ping`; returns when the peer stops answering. Without a
/// `PingPong` (already taken) it never returns.
async fn keepalive(ping: Option<h2::PingPong>) -> Result<(), h2::Error> {
    let Some(mut ping) = ping else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(KEEPALIVE_INTERVAL).await;
        match tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                tracing::warn!("HBONE keep-alive: no PONG within {KEEPALIVE_TIMEOUT:?}");
                return Ok(());
            }
        }
    }
}
