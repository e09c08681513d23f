//! Copies bytes both ways between two connections, counting them, with half-close carried
//! across (EOF on one side becomes a FIN or END_STREAM on the other) and back-pressure from
//! the slower side.

use crate::metrics::ByteCounts;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Size of each direction's buffer.
const BUFFER: usize = 256 * 1024;

/// Counts the bytes read through it.
struct Counted<'a, T> {
    inner: &'a mut T,
    count: &'a AtomicU64,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut *self.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
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
    D: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let mut d = Counted {
        inner: downstream,
        count: &counts.request,
    };
    let mut u = Counted {
        inner: upstream,
        count: &counts.response,
    };
    tokio::io::copy_bidirectional_with_sizes(&mut d, &mut u, BUFFER, BUFFER)
        .await
        .map(|_| ())
}
