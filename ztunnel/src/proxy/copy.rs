//! Copies bytes both ways between two connections, counting them, with half-close carried
//! across (EOF on one side becomes a FIN or END_STREAM on the other) and back-pressure from
//! the slower side.
//!
//! Each direction writes straight from its reader's buffer ([`AsyncBufRead`]): an HBONE
//! stream lends the DATA frames it received (no copy, no buffer of ours), and a socket reads
//! through [`Buffered`], whose buffer starts small and grows only for bulk transfers, so that
//! an idle or chatty connection costs kilobytes, not the 512 KiB two fixed bulk buffers would.

use crate::metrics::ByteCounts;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncBufRead, AsyncRead, AsyncWrite, ReadBuf};

/// A socket's read buffer starts at this size...
const INITIAL_BUFFER: usize = 16 * 1024;
/// ...and doubles each time a read fills it, up to this.
const MAX_BUFFER: usize = 256 * 1024;

/// A connection read through a buffer that grows with the traffic; writes pass through.
pub struct Buffered<T> {
    inner: T,
    buf: Vec<u8>,
    /// The unread bytes are `buf[start..end]`.
    start: usize,
    end: usize,
}

impl<T> Buffered<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            start: 0,
            end: 0,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncBufRead for Buffered<T> {
    fn poll_fill_buf(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<&[u8]>> {
        let this = self.get_mut();
        if this.start == this.end {
            // The last read filled the buffer: the peer is sending in bulk.
            if this.buf.is_empty() || (this.end == this.buf.len() && this.buf.len() < MAX_BUFFER) {
                let size = (this.buf.len() * 2).clamp(INITIAL_BUFFER, MAX_BUFFER);
                this.buf = vec![0; size];
            }
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            this.start = 0;
            this.end = read.filled().len();
        }
        Poll::Ready(Ok(&this.buf[this.start..this.end]))
    }

    fn consume(mut self: Pin<&mut Self>, amt: usize) {
        self.start = (self.start + amt).min(self.end);
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Buffered<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        crate::hbone::poll_read_through_buf(self, cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Buffered<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One direction of the copy.
#[derive(Default)]
struct Direction {
    /// Written since the last flush.
    unflushed: bool,
    /// The reader ended and the writer is being (or has been) shut down.
    eof: bool,
    done: bool,
}

impl Direction {
    /// Copies from `r` to `w` until `r` ends, then shuts `w` down.
    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
        count: &AtomicU64,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncBufRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        while !self.eof {
            let buf = match Pin::new(&mut *r).poll_fill_buf(cx) {
                Poll::Ready(buf) => buf?,
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written.
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            };
            if buf.is_empty() {
                self.eof = true;
                break;
            }
            let n = ready!(Pin::new(&mut *w).poll_write(cx, buf))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            Pin::new(&mut *r).consume(n);
            count.fetch_add(n as u64, Ordering::Relaxed);
            self.unflushed = true;
        }
        if !self.done {
            ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
            self.done = true;
        }
        Poll::Ready(Ok(()))
    }
}

/// Copies `downstream` (the client side) to `upstream` and back until both directions end.
/// Bytes from the client count as request bytes, bytes to it as response bytes.
pub async fn bidirectional<D, U>(
    downstream: &mut D,
    upstream: &mut U,
    counts: &ByteCounts,
) -> io::Result<()>
where
    D: AsyncBufRead + AsyncWrite + Unpin,
    U: AsyncBufRead + AsyncWrite + Unpin,
{
    let (mut to_upstream, mut to_downstream) = (Direction::default(), Direction::default());
    std::future::poll_fn(|cx| {
        let a = to_upstream.poll_copy(cx, downstream, upstream, &counts.request)?;
        let b = to_downstream.poll_copy(cx, upstream, downstream, &counts.response)?;
        ready!(a);
        ready!(b);
        Poll::Ready(Ok(()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_cross_both_ways_with_half_close_and_are_counted() {
        let (mut client, proxy_down) = tokio::io::duplex(4096);
        let (proxy_up, mut server) = tokio::io::duplex(4096);
        let counts = ByteCounts::default();
        let request: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let proxy = async {
            let (mut d, mut u) = (Buffered::new(proxy_down), Buffered::new(proxy_up));
            bidirectional(&mut d, &mut u, &counts).await
        };
        let client_side = async {
            client.write_all(&request).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        };
        let server_side = async {
            let mut got = Vec::new();
            server.read_to_end(&mut got).await.unwrap();
            server.write_all(b"thanks").await.unwrap();
            server.shutdown().await.unwrap();
            got
        };
        let (copied, back, got) = tokio::join!(proxy, client_side, server_side);
        copied.unwrap();
        assert_eq!(got, request);
        assert_eq!(back, b"thanks");
        assert_eq!(counts.request.load(Ordering::Relaxed), request.len() as u64);
        assert_eq!(counts.response.load(Ordering::Relaxed), 6);
    }

    #[tokio::test]
    async fn the_buffer_grows_only_for_bulk() {
        let (mut tx, rx) = tokio::io::duplex(1 << 20);
        let mut reader = Buffered::new(rx);
        tx.write_all(b"ping").await.unwrap();
        let n =
            std::future::poll_fn(|cx| Pin::new(&mut reader).poll_fill_buf(cx).map_ok(|b| b.len()))
                .await
                .unwrap();
        Pin::new(&mut reader).consume(n);
        assert_eq!(reader.buf.len(), INITIAL_BUFFER);
        tx.write_all(&vec![1u8; 1 << 20]).await.unwrap();
        let mut total = 0;
        while total < 1 << 20 {
            let n = std::future::poll_fn(|cx| {
                Pin::new(&mut reader).poll_fill_buf(cx).map_ok(|b| b.len())
            })
            .await
            .unwrap();
            Pin::new(&mut reader).consume(n);
            total += n;
        }
        assert_eq!(reader.buf.len(), MAX_BUFFER);
    }
}
