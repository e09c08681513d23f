//! Bodies: one boxed type for everything the waypoint sends, and the response wrapper that
//! counts the bytes sent and writes the request's record when the response is done.

use crate::metrics::RequestRecord;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every body the waypoint sends, upstream or downstream.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A received body as a [`Body`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed_unsync()
}

/// The response body to the client: the record lives (and the clock runs) until the last
/// byte has been handed over or the client went away.
pub struct Metered {
    inner: Body,
    record: Option<RequestRecord>,
}

impl Metered {
    pub fn new(inner: Body, record: RequestRecord) -> Self {
        Self {
            inner,
            record: Some(record),
        }
    }
}

impl HttpBody for Metered {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(r)) = (frame.data_ref(), &this.record) {
                    r.response_bytes
                        .fetch_add(d.len() as u64, Ordering::Relaxed);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(r) = &mut this.record {
                    r.info.flag("UPE");
                }
                this.record = None;
            }
            Poll::Ready(None) => this.record = None,
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
