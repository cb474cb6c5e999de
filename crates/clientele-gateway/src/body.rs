//! Body wrappers that count bytes as they stream, so the gateway never buffers a body to
//! measure it.
//!
//! [`RequestBody`] counts (and limits) what the client sends upstream. [`ResponseBody`] counts
//! what goes back and emits the request's event exactly once: when the last byte has been
//! handed to the connection, or when the body is dropped early (the client went away).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use clientele_core::event::{Event, Outcome};
use clientele_core::pipeline::EventSink;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The request body grew past the configured limit while streaming.
#[derive(Debug)]
pub struct BodyTooLarge(pub u64);

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request body exceeds the limit of {} bytes", self.0)
    }
}

impl std::error::Error for BodyTooLarge {}

/// Counts the bytes of a client's request body on their way upstream.
pub struct RequestBody {
    inner: Incoming,
    counted: Arc<AtomicU64>,
    /// 0 = no limit.
    limit: u64,
    /// Set when the limit was hit, so the event can say why the exchange failed.
    too_large: Arc<AtomicBool>,
}

impl RequestBody {
    pub fn new(
        inner: Incoming,
        counted: Arc<AtomicU64>,
        limit: u64,
        too_large: Arc<AtomicBool>,
    ) -> Self {
        RequestBody {
            inner,
            counted,
            limit,
            too_large,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let total = self.counted.fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if self.limit > 0 && total > self.limit {
                        self.too_large.store(true, Ordering::Relaxed);
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

enum Source {
    /// An answer made by the gateway itself (problem+json).
    Local(Option<Bytes>),
    Upstream(Incoming),
}

/// The response body the client receives, counting bytes and emitting the event at the end.
pub struct ResponseBody {
    source: Source,
    finish: Option<Finish>,
}

/// What is needed to complete and emit the event once the body is done.
struct Finish {
    event: Event,
    started: Instant,
    request_bytes: Arc<AtomicU64>,
    sink: EventSink,
}

impl ResponseBody {
    pub fn local(bytes: Bytes) -> ResponseBody {
        ResponseBody {
            source: Source::Local(Some(bytes)),
            finish: None,
        }
    }

    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream(body),
            finish: None,
        }
    }

    /// Arms the body to emit `event` when it completes. `event.response_bytes` is filled in
    /// as bytes pass; `latency_ms` and `request_bytes` at the end.
    pub fn emit_on_finish(
        mut self,
        event: Event,
        started: Instant,
        request_bytes: Arc<AtomicU64>,
        sink: EventSink,
    ) -> Self {
        self.finish = Some(Finish {
            event,
            started,
            request_bytes,
            sink,
        });
        self
    }

    fn complete(&mut self, outcome: Option<Outcome>) {
        if let Some(mut f) = self.finish.take() {
            f.event.latency_ms = f.started.elapsed().as_secs_f64() * 1000.0;
            f.event.request_bytes = f.request_bytes.load(Ordering::Relaxed);
            if let Some(outcome) = outcome {
                f.event.outcome = outcome;
            }
            f.sink.offer(f.event);
        }
    }

    fn count(&mut self, n: usize) {
        if let Some(f) = self.finish.as_mut() {
            f.event.response_bytes += n as u64;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = match &mut this.source {
            Source::Local(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(body) => match Pin::new(body).poll_frame(cx) {
                Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e) as BoxError))),
                Poll::Ready(Some(Ok(f))) => Poll::Ready(Some(Ok(f))),
                Poll::Ready(None) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            },
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.count(data.len());
                }
                if this.source_done() {
                    this.complete(None);
                }
            }
            Poll::Ready(Some(Err(_))) => this.complete(Some(Outcome::UpstreamAborted)),
            Poll::Ready(None) => this.complete(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.source_done()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Local(Some(b)) => SizeHint::with_exact(b.len() as u64),
            Source::Local(None) => SizeHint::with_exact(0),
            Source::Upstream(body) => body.size_hint(),
        }
    }
}

impl ResponseBody {
    fn source_done(&self) -> bool {
        match &self.source {
            Source::Local(b) => b.is_none(),
            Source::Upstream(body) => body.is_end_stream(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // Hyper may finish a response without polling a body that says it is empty; that is a
        // complete exchange. Anything else dropped before its end means the client left.
        let outcome = if self.source_done() {
            None
        } else {
            Some(Outcome::ClientAborted)
        };
        self.complete(outcome);
    }
}
