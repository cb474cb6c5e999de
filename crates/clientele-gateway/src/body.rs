//! Body wrappers that count bytes as they stream, so the gateway never buffers a body to
//! measure it.
//!
//! [`RequestBody`] counts (and limits) what the client sends upstream. [`ResponseBody`] counts
//! what goes back and emits the request's event exactly once: when the last byte has been
//! handed to the connection, or when the body is dropped early (the client went away).

use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use clientele_contract::{BodySample, Sample, SampleSender};
use clientele_core::event::{Event, Outcome};
use clientele_core::pipeline::EventSink;
use clientele_core::prices::{PriceBook, Tokens};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::llm::UsageScanner;

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

/// The client's request body could not be read (a malformed chunked encoding, a body shorter
/// than its Content-Length): the client's error, not the upstream's.
#[derive(Debug)]
pub struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the client's request body is malformed: {}", self.0)
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Why a client's request body failed on its way upstream, when it did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// It grew past the configured limit.
    TooLarge,
    /// It could not be read (see [`ClientBodyError`]).
    Broken,
}

/// The body's [`Fault`], shared between [`RequestBody`] and the request's lifecycle. The
/// lifecycle reads it whatever the upstream client returned: an upstream that reads a short
/// body may answer before the failure reaches the client's error, and the failure is still the
/// client's.
#[derive(Debug, Default)]
pub struct BodyFault(AtomicU8);

impl BodyFault {
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    fn set(&self, fault: Fault) {
        let v = match fault {
            Fault::TooLarge => Self::TOO_LARGE,
            Fault::Broken => Self::BROKEN,
        };
        // The first fault is the cause; a later one is its consequence.
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::Relaxed, Ordering::Relaxed);
    }

    pub fn get(&self) -> Option<Fault> {
        match self.0.load(Ordering::Relaxed) {
            Self::TOO_LARGE => Some(Fault::TooLarge),
            Self::BROKEN => Some(Fault::Broken),
            _ => None,
        }
    }
}

/// A copy of a sampled body, kept as the frames that carried it (reference-counted `Bytes`
/// clones, no byte copy) up to a limit. Past the limit it gives up and keeps nothing.
#[derive(Debug, Default)]
pub struct Tee {
    chunks: Vec<Bytes>,
    len: usize,
    max: usize,
    overflow: bool,
}

impl Tee {
    pub fn new(max: usize) -> Tee {
        Tee {
            max,
            ..Tee::default()
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.overflow {
            return;
        }
        self.len += data.len();
        if self.len > self.max {
            self.overflow = true;
            self.chunks = Vec::new();
        } else if !data.is_empty() {
            self.chunks.push(data.clone());
        }
    }

    fn take(&mut self) -> BodySample {
        if self.overflow {
            BodySample::TooLarge
        } else {
            BodySample::Json(std::mem::take(&mut self.chunks))
        }
    }
}

/// A sampled exchange waiting for its response to finish before it goes to the validator.
pub struct PendingSample {
    pub sample: Sample,
    /// The request body's copy, filled by [`RequestBody`] as it streams upstream.
    pub request: Option<Arc<Mutex<Tee>>>,
    /// The response body's copy, filled as it streams to the client.
    pub response: Option<Tee>,
    pub sender: SampleSender,
}

/// Where a request body's bytes come from.
enum Inner {
    Stream(Incoming),
    /// Read before forwarding (a small LLM request, see [`crate::llm_request`]), perhaps
    /// rewritten; sent as one frame.
    Read(Option<Bytes>),
}

/// Bytes of a request body that go into its call fingerprint.
pub const PRINT_MAX: usize = 64 * 1024;

/// The body's half of the call fingerprint (`Event::call_hash`): the CRC-32 of its first
/// [`PRINT_MAX`] bytes, set by [`RequestBody`] once they have passed (or the body ended).
#[derive(Debug, Default)]
pub struct BodyPrint(AtomicU64);

impl BodyPrint {
    const DONE: u64 = 1 << 32;

    pub fn of(bytes: &[u8]) -> BodyPrint {
        let print = BodyPrint::default();
        print.set(crc32fast::hash(&bytes[..bytes.len().min(PRINT_MAX)]));
        print
    }

    fn set(&self, crc: u32) {
        self.0.store(Self::DONE | u64::from(crc), Ordering::Relaxed);
    }

    /// The CRC, or 0 when no byte passed (an empty body's CRC is 0 too).
    pub fn get(&self) -> u32 {
        (self.0.load(Ordering::Relaxed) & u64::from(u32::MAX)) as u32
    }
}

/// Hashes the body as it streams, up to [`PRINT_MAX`] bytes.
struct Printer {
    hasher: crc32fast::Hasher,
    taken: usize,
    out: Arc<BodyPrint>,
}

impl Printer {
    fn feed(&mut self, data: &[u8]) {
        if self.taken >= PRINT_MAX {
            return;
        }
        let n = data.len().min(PRINT_MAX - self.taken);
        self.hasher.update(&data[..n]);
        self.taken += n;
        if self.taken >= PRINT_MAX {
            self.out.set(self.hasher.clone().finalize());
        }
    }

    fn end(&self) {
        if self.taken < PRINT_MAX {
            self.out.set(self.hasher.clone().finalize());
        }
    }
}

/// Counts the bytes of a client's request body on their way upstream.
pub struct RequestBody {
    inner: Inner,
    counted: Arc<AtomicU64>,
    /// 0 = no limit.
    limit: u64,
    /// Set when the limit was hit or the body broke, so the event can say why the exchange
    /// failed.
    fault: Arc<BodyFault>,
    /// Set when the request is sampled for schema validation.
    tee: Option<Arc<Mutex<Tee>>>,
    /// Set when the call is fingerprinted (boxed: the hasher's state is not small).
    printer: Option<Box<Printer>>,
}

impl RequestBody {
    pub fn new(
        inner: Incoming,
        counted: Arc<AtomicU64>,
        limit: u64,
        fault: Arc<BodyFault>,
    ) -> Self {
        RequestBody {
            inner: Inner::Stream(inner),
            counted,
            limit,
            fault,
            tee: None,
            printer: None,
        }
    }

    /// A body already read (and checked against the limit by its reader); `counted` holds
    /// the bytes the client sent, which a rewrite may have changed.
    pub fn read(bytes: Bytes, counted: Arc<AtomicU64>, fault: Arc<BodyFault>) -> Self {
        RequestBody {
            inner: Inner::Read(Some(bytes)),
            counted,
            limit: 0,
            fault,
            tee: None,
            printer: None,
        }
    }

    /// Hashes the body's first [`PRINT_MAX`] bytes into `out` as it streams.
    pub fn with_print(mut self, out: Arc<BodyPrint>) -> Self {
        self.printer = Some(Box::new(Printer {
            hasher: crc32fast::Hasher::new(),
            taken: 0,
            out,
        }));
        self
    }

    /// Copies the body (up to the tee's limit) as it streams, for validation.
    pub fn with_tee(mut self, tee: Arc<Mutex<Tee>>) -> Self {
        self.tee = Some(tee);
        self
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = match &mut self.inner {
            Inner::Stream(body) => Pin::new(body).poll_frame(cx),
            Inner::Read(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                // A body read before forwarding was counted as the client sent it.
                let streamed = matches!(self.inner, Inner::Stream(_));
                if let Some(data) = frame.data_ref() {
                    if streamed {
                        let total = self.counted.fetch_add(data.len() as u64, Ordering::Relaxed)
                            + data.len() as u64;
                        if self.limit > 0 && total > self.limit {
                            self.fault.set(Fault::TooLarge);
                            return Poll::Ready(Some(Err(Box::new(BodyTooLarge(self.limit)))));
                        }
                    }
                    if let Some(tee) = &self.tee {
                        tee.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(data);
                    }
                    if let Some(p) = self.printer.as_mut() {
                        p.feed(data);
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                self.fault.set(Fault::Broken);
                Poll::Ready(Some(Err(Box::new(ClientBodyError(e)))))
            }
            Poll::Ready(None) => {
                if let Some(p) = &self.printer {
                    p.end();
                }
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Stream(body) => body.is_end_stream(),
            Inner::Read(bytes) => bytes.as_ref().is_none_or(Bytes::is_empty),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Stream(body) => body.size_hint(),
            Inner::Read(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}

// The fingerprint is defined in the core, where ingest computes it too.
pub use clientele_core::event::{call_hash, head_print};

/// Reads a request body of at most `max` bytes whole (the caller has checked its declared
/// length): the bytes, or the body's fault.
pub async fn read_small(mut body: Incoming, max: u64) -> Result<Bytes, Fault> {
    use http_body_util::BodyExt;
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| Fault::Broken)?;
        if let Some(data) = frame.data_ref() {
            if (out.len() + data.len()) as u64 > max {
                return Err(Fault::TooLarge);
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.freeze())
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
    sample: Option<PendingSample>,
    /// Reads LLM token usage from the frames as they pass (boxed: most responses have none).
    usage: Option<Box<Meter>>,
    /// The request's budget reservation, settled to the usage read when the body ends.
    budget: Option<crate::limiter::Reservation>,
    /// The call fingerprint's halves: the head's CRC and the request body's print.
    call: Option<(u32, Arc<BodyPrint>)>,
}

struct Meter {
    scanner: UsageScanner,
    prices: Arc<PriceBook>,
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
            sample: None,
            usage: None,
            budget: None,
            call: None,
        }
    }

    pub fn upstream(body: Incoming) -> ResponseBody {
        ResponseBody {
            source: Source::Upstream(body),
            finish: None,
            sample: None,
            usage: None,
            budget: None,
            call: None,
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

    /// Reads token usage from the body as it streams; the event gets the tokens, the model and
    /// their cost when the body ends, or when the client leaves (what had passed by then).
    pub fn with_usage(mut self, scanner: UsageScanner, prices: Arc<PriceBook>) -> Self {
        self.usage = Some(Box::new(Meter { scanner, prices }));
        self
    }

    /// Settles `reservation` to the tokens and cost read from this body when it ends (the
    /// part read so far when the client leaves); nothing read gives it all back.
    pub fn with_budget(mut self, reservation: crate::limiter::Reservation) -> Self {
        if reservation.is_held() {
            self.budget = Some(reservation);
        }
        self
    }

    /// Puts the call fingerprint on the event: `head` (the CRC of method, path and query) and
    /// the request body's print as it stands when the response ends, or the print of the
    /// tool calls the LLM answer asked for (see [`crate::llm`]).
    pub fn with_call(mut self, head: u32, print: Arc<BodyPrint>) -> Self {
        self.call = Some((head, print));
        self
    }

    /// Sends `sample` to the validator when the body completes (not when the client leaves).
    pub fn with_sample(mut self, sample: PendingSample) -> Self {
        self.sample = Some(sample);
        self
    }

    fn complete(&mut self, outcome: Option<Outcome>) {
        if let Some(mut p) = self.sample.take()
            && outcome.is_none()
        {
            if let Some(tee) = p.request.take() {
                p.sample.request_body = tee.lock().unwrap_or_else(PoisonError::into_inner).take();
            }
            if let Some(mut tee) = p.response.take() {
                p.sample.response_body = tee.take();
            }
            p.sender.offer(p.sample);
        }
        if let Some(mut f) = self.finish.take() {
            f.event.latency_ms = f.started.elapsed().as_secs_f64() * 1000.0;
            f.event.request_bytes = f.request_bytes.load(Ordering::Relaxed);
            if let Some(outcome) = outcome {
                f.event.outcome = outcome;
            }
            let tools = self.usage.as_ref().and_then(|m| m.scanner.tool_print());
            if let Some(meter) = self.usage.take() {
                meter.settle(&mut f.event);
            }
            if let Some((head, print)) = self.call.take() {
                // An LLM answer that asks for tool calls is fingerprinted by them (route,
                // tool names and arguments) rather than by its request, which carries the
                // whole conversation and so differs every turn: an agent calling the same
                // tool with the same arguments again is then a repeat for `agent_loop`.
                f.event.call_hash = Some(call_hash(head, tools.unwrap_or_else(|| print.get())));
            }
            if let Some(budget) = self.budget.take() {
                budget.settle(crate::llm_request::actual(
                    f.event.tokens_in,
                    f.event.tokens_out,
                    f.event.cost_usd,
                ));
            }
            f.sink.offer(f.event);
        }
    }

    fn count(&mut self, data: &Bytes) {
        if let Some(f) = self.finish.as_mut() {
            f.event.response_bytes += data.len() as u64;
        }
        if let Some(meter) = self.usage.as_mut() {
            meter.scanner.feed(data);
        }
        if let Some(tee) = self.sample.as_mut().and_then(|p| p.response.as_mut()) {
            tee.push(data);
        }
    }
}

impl Meter {
    /// Puts the usage read so far on the event. A model without a price leaves `cost_usd`
    /// `None` (unpriced), never 0.
    fn settle(&self, event: &mut Event) {
        let Some(usage) = self.scanner.usage() else {
            return;
        };
        event.tokens_in = Some(usage.input);
        event.tokens_out = Some(usage.output);
        event.tokens_cached = usage.cache_read;
        event.tokens_cache_write = usage.cache_write;
        event.tokens_reasoning = usage.reasoning;
        if let Some(model) = self.scanner.model() {
            let tokens = Tokens {
                input: usage.input,
                output: usage.output,
                cache_read: usage.cache_read.unwrap_or(0),
                cache_write: usage.cache_write.unwrap_or(0),
                reasoning: usage.reasoning.unwrap_or(0),
            };
            event.cost_usd = self.prices.cost_usd(model, &tokens);
            event.model = Some(model.to_string());
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
                    this.count(data);
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
