//! Copies bytes both ways between two connections, counting them, with half-close carried
//! across (EOF on one side becomes a FIN or END_STREAM on the other) and back-pressure from
//! the slower side.
//!
//! Bytes are not copied in user space on the way: what is read from a socket is sent on as
//! the DATA frame it was read into, and received DATA frames are written to the socket as they
//! are, several with one `writev`. Each direction reads ahead while its writer is busy, up to
//! [`QUEUE`], so that a bulk stream moves in large writes.

use crate::hbone::H2Stream;
use crate::metrics::{ByteCount, ByteCounts};
use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tokio::io::AsyncWrite;
use tokio::net::TcpStream;

/// Bytes read ahead per direction before the reader waits for the writer.
const QUEUE: usize = 256 * 1024;
/// Chunks read ahead, for the same reason: a peer sending one-byte DATA frames would
/// otherwise queue a chunk (and its bookkeeping) per byte of [`QUEUE`]. A bulk stream's
/// chunks are tens of KiB, so only tiny frames ever meet this limit.
const QUEUE_CHUNKS: usize = 1024;
/// A socket read goes into a buffer of this size; what is left of it serves the next reads.
/// About 64 KiB stays in the core's cache from the read through the encryption to the write:
/// 256 KiB streamed 15-20 % slower here, 128 KiB slower too, 32 KiB slower still (more frames
/// and calls).
/// 9 bytes short of 64 KiB, so that a full chunk's DATA frame, with its 9-byte head, fills
/// four TLS records exactly (at 64 KiB the head's 9 bytes made a fifth record).
const CHUNK: usize = 64 * 1024 - H2_FRAME_HEAD;
/// The HTTP/2 frame header's size.
const H2_FRAME_HEAD: usize = 9;
/// Below this much room the read buffer is replaced by a fresh one.
const MIN_READ: usize = 16 * 1024;
/// Chunks per `writev`.
const MAX_IOV: usize = 64;

/// One side's incoming bytes, in owned chunks.
pub trait Source {
    /// The next chunk, or `None` at EOF. `buf` is this direction's read buffer, for sources
    /// that read into one.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>>;
}

/// One side's outgoing bytes, taking owned chunks.
pub trait Sink {
    /// Sends from the front of `queue`, removing what was sent; returns how many bytes.
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>>;
    /// Half-closes: no more bytes will come.
    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Source for TcpStream {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        if buf.capacity() - buf.len() < MIN_READ {
            *buf = BytesMut::with_capacity(CHUNK);
        }
        let n = ready!(tokio_util::io::poll_read_buf(Pin::new(self), cx, buf))?;
        Poll::Ready(Ok((n > 0).then(|| buf.split().freeze())))
    }
}

impl Sink for TcpStream {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        let mut slices = [IoSlice::new(&[]); MAX_IOV];
        let mut used = 0;
        for (slot, chunk) in slices.iter_mut().zip(queue.iter()) {
            *slot = IoSlice::new(chunk);
            used += 1;
        }
        let n = ready!(Pin::new(&mut *self).poll_write_vectored(cx, &slices[..used]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = queue.front_mut() else {
                break;
            };
            if front.len() > left {
                front.advance(left);
                break;
            }
            left -= front.len();
            queue.pop_front();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

impl Source for H2Stream {
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        _buf: &mut BytesMut,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.poll_frame(cx)
    }
}

impl Sink for H2Stream {
    fn poll_send(
        &mut self,
        cx: &mut Context<'_>,
        queue: &mut VecDeque<Bytes>,
    ) -> Poll<io::Result<usize>> {
        let Some(front) = queue.front_mut() else {
            return Poll::Ready(Ok(0));
        };
        let n = ready!(self.poll_send_chunk(cx, front))?;
        if front.is_empty() {
            queue.pop_front();
        }
        Poll::Ready(Ok(n))
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self).poll_shutdown(cx)
    }
}

/// One direction's state.
struct Direction<'a> {
    queue: VecDeque<Bytes>,
    queued: usize,
    buf: BytesMut,
    read_done: bool,
    done: bool,
    count: &'a ByteCount,
}

impl<'a> Direction<'a> {
    fn new(count: &'a ByteCount) -> Self {
        Self {
            queue: VecDeque::new(),
            queued: 0,
            buf: BytesMut::new(),
            read_done: false,
            done: false,
            count,
        }
    }

    /// Moves bytes from `from` to `to` until EOF has been passed on (`Ready(Ok)`), an error,
    /// or neither side can go on.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &mut impl Source,
        to: &mut impl Sink,
    ) -> Poll<io::Result<()>> {
        while !self.done {
            let mut progressed = false;
            if !self.read_done
                && self.queued < QUEUE
                && self.queue.len() < QUEUE_CHUNKS
                && let Poll::Ready(r) = from.poll_chunk(cx, &mut self.buf)
            {
                match r? {
                    Some(chunk) => {
                        self.count.add(chunk.len() as u64);
                        self.queued += chunk.len();
                        self.queue.push_back(chunk);
                    }
                    None => self.read_done = true,
                }
                progressed = true;
            }
            if !self.queue.is_empty() {
                if let Poll::Ready(r) = to.poll_send(cx, &mut self.queue) {
                    self.queued -= r?;
                    progressed = true;
                }
            } else if self.read_done {
                ready!(to.poll_finish(cx))?;
                self.done = true;
                progressed = true;
            }
            if !progressed {
                return Poll::Pending;
            }
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
    D: Source + Sink,
    U: Source + Sink,
{
    let mut request = Direction::new(&counts.request);
    let mut response = Direction::new(&counts.response);
    std::future::poll_fn(|cx| {
        let up = request.poll(cx, downstream, upstream)?;
        let down = response.poll(cx, upstream, downstream)?;
        if up.is_ready() && down.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
    .await
}
