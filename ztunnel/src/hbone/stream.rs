//! An HTTP/2 stream as a byte stream: `AsyncRead` over DATA frames received (releasing flow
//! control as the bytes are consumed) and `AsyncWrite` into DATA frames, waiting for send
//! capacity so that a slow reader slows the writer (back-pressure). Dropped after its
//! END_STREAM, it closes as a TCP socket does: the peer's END_STREAM is still waited for.

use bytes::{Buf, Bytes};
use h2::{RecvStream, SendStream};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a stream dropped after its END_STREAM waits for the peer's.
const LINGER: Duration = Duration::from_secs(5);

/// One tunnelled connection: the two halves of a CONNECT stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    /// `None` only once dropped (see [`Drop`]).
    recv: Option<RecvStream>,
    /// Received bytes not yet read by the caller.
    pending: Bytes,
    /// END_STREAM has been sent (and the stream not reset since): dropped, it lingers.
    finished: bool,
    /// Held for as long as the stream lives (a pooled connection's stream count).
    _slot: Option<Box<dyn Send + Sync>>,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        Self {
            send,
            recv: Some(recv),
            pending: Bytes::new(),
            finished: false,
            _slot: None,
        }
    }

    fn recv(&mut self) -> &mut RecvStream {
        self.recv
            .as_mut()
            .expect("the receive half lives until the stream is dropped")
    }

    /// Keeps `slot` alive until the stream is dropped.
    pub(crate) fn with_slot(mut self, slot: impl Send + Sync + 'static) -> Self {
        self._slot = Some(Box::new(slot));
        self
    }

    /// Ends the stream abruptly (RST_STREAM), as when the tunnelled connection was reset.
    pub fn reset(&mut self) {
        self.send.send_reset(h2::Reason::CANCEL);
        // Nothing to linger for once reset (see `Drop`).
        self.finished = false;
    }

    /// The next received DATA frame's bytes as they are (no copy), or `None` at END_STREAM.
    /// Their flow-control window goes back to the peer at once: the caller bounds what it
    /// holds.
    pub fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Bytes>>> {
        if !self.pending.is_empty() {
            return Poll::Ready(Ok(Some(std::mem::take(&mut self.pending))));
        }
        loop {
            match ready!(self.recv().poll_data(cx)) {
                Some(Ok(data)) if data.is_empty() => continue,
                Some(Ok(data)) => {
                    let _ = self.recv().flow_control().release_capacity(data.len());
                    return Poll::Ready(Ok(Some(data)));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Ok(None)),
            }
        }
    }

    /// Sends as much of `chunk` as the peer's window allows, as DATA (no copy); returns how
    /// many bytes, which are removed from `chunk`.
    pub fn poll_send_chunk(
        &mut self,
        cx: &mut Context<'_>,
        chunk: &mut Bytes,
    ) -> Poll<io::Result<usize>> {
        if chunk.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, chunk.len()))?;
        self.send
            .send_data(chunk.split_to(n), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    /// Waits until the peer's window lets up to `want` bytes go; returns how many (at least 1).
    fn poll_send_capacity(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        self.send.reserve_capacity(want);
        loop {
            match ready!(self.send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => return Poll::Ready(Ok(cap.min(want))),
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "HBONE stream closed",
                    )));
                }
            }
        }
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("h2 I/O error"));
    }
    let kind = match e.reason() {
        Some(h2::Reason::NO_ERROR) | Some(h2::Reason::CANCEL) => io::ErrorKind::ConnectionReset,
        _ => io::ErrorKind::ConnectionAborted,
    };
    io::Error::new(kind, e)
}

impl AsyncRead for H2Stream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while this.pending.is_empty() {
            match ready!(this.recv().poll_data(cx)) {
                Some(Ok(data)) => this.pending = data,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Ok(())),
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        // Give the peer back the window for what the caller has taken.
        let _ = this.recv().flow_control().release_capacity(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let n = ready!(self.poll_send_capacity(cx, buf.len()))?;
        self.send
            .send_data(Bytes::copy_from_slice(&buf[..n]), false)
            .map_err(h2_to_io)?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Half-close: an empty DATA frame with END_STREAM.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Already reset by the peer: there is nothing left to close.
        if self.send.poll_reset(cx).is_ready() {
            return Poll::Ready(Ok(()));
        }
        match self.send.send_data(Bytes::new(), true) {
            Ok(()) => {
                self.finished = true;
                Poll::Ready(Ok(()))
            }
            // Already closed by a reset: nothing more to say.
            Err(e) if e.is_reset() => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(h2_to_io(e))),
        }
    }
}

impl Drop for H2Stream {
    /// h2 resets (CANCEL) a stream whose handles are all gone before both sides have ended
    /// it. After our END_STREAM that reset races the peer: one that has not yet read our
    /// END_STREAM gets an error instead of EOF (a waypoint that closes an upstream connection
    /// once it has the whole response made the destination agent log a failed connection).
    /// So, as a TCP `close()` after `shutdown()`, the receive half waits a while for the peer's
    /// END_STREAM; data arriving instead still gets the reset, as TCP answers it with RST.
    fn drop(&mut self) {
        let Some(mut recv) = self.recv.take() else {
            return;
        };
        if !self.finished || recv.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // The stream still counts against its connection's limit until it closes.
            let slot = self._slot.take();
            rt.spawn(async move {
                let _ = tokio::time::timeout(LINGER, recv.data()).await;
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both ends of one CONNECT stream over an in-memory HTTP/2 connection.
    async fn pair() -> (H2Stream, H2Stream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let server = tokio::spawn(async move {
            let mut conn = h2::server::handshake(b).await.unwrap();
            let (req, mut respond) = conn.accept().await.unwrap().unwrap();
            let send = respond
                .send_response(http::Response::new(()), false)
                .unwrap();
            tokio::spawn(async move { while conn.accept().await.is_some() {} });
            H2Stream::new(send, req.into_body())
        });
        let (client, conn) = h2::client::handshake(a).await.unwrap();
        tokio::spawn(conn);
        let req = http::Request::builder()
            .method(http::Method::CONNECT)
            .uri("10.0.0.1:80")
            .body(())
            .unwrap();
        let (resp, send) = client
            .ready()
            .await
            .unwrap()
            .send_request(req, false)
            .unwrap();
        let server = server.await.unwrap();
        (H2Stream::new(send, resp.await.unwrap().into_body()), server)
    }

    #[tokio::test]
    async fn a_stream_dropped_after_its_end_stream_lets_the_peer_read_to_eof() {
        let (mut client, mut server) = pair().await;
        client.write_all(b"request").await.unwrap();
        client.shutdown().await.unwrap();
        // Gone before the peer has read anything, as hyper drops a connection once it has
        // the whole response.
        drop(client);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"request");
        server.shutdown().await.unwrap();
    }

    #[tokio::test]
    async fn data_for_a_dropped_stream_is_refused_with_a_reset() {
        let (mut client, mut server) = pair().await;
        client.shutdown().await.unwrap();
        drop(client);
        let refused = tokio::time::timeout(Duration::from_secs(2), async {
            loop {
                if server.write_all(b"late").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        refused.await.expect("the late bytes were never refused");
    }
}
