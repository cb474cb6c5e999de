//! `Upgrade` requests (WebSocket and others): the handshake is forwarded like any request;
//! on `101 Switching Protocols` both connections are spliced with hyper's upgrade API, and one
//! event is emitted when the tunnel closes, with its duration and the bytes each way.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use clientele_core::event::{Event, Outcome};
use clientele_core::pipeline::EventSink;
use http::HeaderMap;
use http::header::{self, HeaderValue};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The protocol asked for, when the request asks to upgrade (`Connection: upgrade` and an
/// `Upgrade` header, as RFC 9110 §7.8 requires both).
pub(crate) fn requested(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !asks {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Puts back the two hop-by-hop headers an upgrade needs, after the others were stripped.
pub(crate) fn restore(headers: &mut HeaderMap, protocol: HeaderValue) {
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, protocol);
}

/// Splices the client and the upstream once both have switched, off the request path, and
/// emits `event` when either side closes.
pub(crate) fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    mut event: Event,
    started: Instant,
    sink: EventSink,
) {
    tokio::spawn(async move {
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = Counted {
                    io: TokioIo::new(client),
                    read: up.clone(),
                };
                let mut upstream = Counted {
                    io: TokioIo::new(upstream),
                    read: down.clone(),
                };
                if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    // A peer that vanishes without a close is common (a closed laptop lid).
                    tracing::debug!(error = %e, "upgraded connection ended with an error");
                    event.outcome = Outcome::ClientAborted;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "upgrade did not complete");
                event.outcome = Outcome::ClientAborted;
            }
        }
        event.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        event.request_bytes += up.load(Ordering::Relaxed);
        event.response_bytes += down.load(Ordering::Relaxed);
        sink.offer(event);
    });
}

/// An upgraded connection that counts the bytes read from it.
struct Counted<T> {
    io: T,
    read: Arc<AtomicU64>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
