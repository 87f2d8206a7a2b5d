//! The response body type: a whole buffer, or frames fed one by one from a
//! task so that each SSE event leaves as its own write (a proxy in front sees
//! separate chunks), and an `Err` frame aborts the connection mid-body.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

pub type FrameResult = Result<Frame<Bytes>, io::Error>;

pub enum MockBody {
    /// Sent with a content-length; `None` once taken.
    Full(Option<Bytes>),
    /// Sent chunked; ends when the sender is dropped.
    Channel(mpsc::Receiver<FrameResult>),
}

impl MockBody {
    pub fn full(bytes: Bytes) -> Self {
        Self::Full(Some(bytes))
    }
}

impl Body for MockBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|bytes| Ok(Frame::data(bytes)))),
            Self::Channel(receiver) => receiver.poll_recv(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Self::Channel(_) => SizeHint::default(),
        }
    }
}
