//! `Upgrade` requests (WebSocket and others): the handshake is forwarded like any request;
//! on `101 Switching Protocols` both connections are spliced with hyper's upgrade API, and one
//! event is emitted when the tunnel closes, with its duration, the bytes each way and, for
//! WebSocket, the close code of the first Close frame either side sent. The frames are not
//! buffered or changed: a small scanner reads each frame header as it passes and skips the
//! payloads, except the two code bytes of a Close frame.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
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
    websocket: bool,
) {
    tokio::spawn(async move {
        let (up, down) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        // 0 until a Close frame is seen; then its code.
        let close = Arc::new(AtomicU32::new(0));
        let scan = || websocket.then(|| FrameScan::new(close.clone()));
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let mut client = Counted {
                    io: TokioIo::new(client),
                    read: up.clone(),
                    scan: scan(),
                };
                let mut upstream = Counted {
                    io: TokioIo::new(upstream),
                    read: down.clone(),
                    scan: scan(),
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
        event.close_code = match close.load(Ordering::Relaxed) {
            0 => None,
            code => u16::try_from(code).ok(),
        };
        sink.offer(event);
    });
}

/// An upgraded connection that counts the bytes read from it (and, for WebSocket, watches its
/// frames for a Close).
struct Counted<T> {
    io: T,
    read: Arc<AtomicU64>,
    scan: Option<FrameScan>,
}

/// Follows WebSocket frame boundaries in one direction (RFC 6455 §5.2) to find the first Close
/// frame (opcode 8) and its status code. Work is per frame header, not per payload byte.
struct FrameScan {
    state: Scan,
    close: Arc<AtomicU32>,
}

enum Scan {
    /// Reading a frame header: the bytes so far (at most 14).
    Head(Vec<u8>),
    /// Skipping this many payload bytes.
    Skip(u64),
    /// A Close frame's payload: the mask, the code bytes read so far, the payload left.
    Close {
        mask: Option<[u8; 4]>,
        code: Vec<u8>,
        left: u64,
    },
    /// A Close was seen (or the stream is not WebSocket after all): nothing more to do.
    Done,
}

impl FrameScan {
    fn new(close: Arc<AtomicU32>) -> FrameScan {
        FrameScan {
            state: Scan::Head(Vec::with_capacity(14)),
            close,
        }
    }

    fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                Scan::Done => return,
                Scan::Skip(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = Scan::Head(Vec::with_capacity(14));
                    }
                }
                Scan::Head(head) => {
                    head.push(data[0]);
                    data = &data[1..];
                    if let Some(next) = header(head) {
                        self.state = next;
                        if let Scan::Close { left: 0, .. } = self.state {
                            // A Close without a payload: 1005, "no status received".
                            self.record(1005);
                        }
                    }
                }
                Scan::Close { mask, code, left } => {
                    let i = code.len();
                    let b = data[0] ^ mask.map_or(0, |m| m[i % 4]);
                    code.push(b);
                    data = &data[1..];
                    *left -= 1;
                    if code.len() == 2 || *left == 0 {
                        let value = if code.len() == 2 {
                            u32::from(u16::from_be_bytes([code[0], code[1]]))
                        } else {
                            1005
                        };
                        self.record(value);
                    }
                }
            }
        }
    }

    fn record(&mut self, code: u32) {
        // The first Close of either direction is the one that closed the connection.
        let _ = self
            .close
            .compare_exchange(0, code, Ordering::Relaxed, Ordering::Relaxed);
        self.state = Scan::Done;
    }
}

/// The state after a complete frame header, or `None` while more header bytes are needed.
fn header(head: &[u8]) -> Option<Scan> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let (len_bytes, short) = match head[1] & 0x7f {
        126 => (2, None),
        127 => (8, None),
        n => (0, Some(u64::from(n))),
    };
    let need = 2 + len_bytes + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    let len = short.unwrap_or_else(|| {
        head[2..2 + len_bytes]
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    });
    let mask = masked.then(|| {
        let at = 2 + len_bytes;
        [head[at], head[at + 1], head[at + 2], head[at + 3]]
    });
    Some(if head[0] & 0x0f == 8 {
        Scan::Close {
            mask,
            code: Vec::with_capacity(2),
            left: len,
        }
    } else if len == 0 {
        Scan::Head(Vec::with_capacity(14))
    } else {
        Scan::Skip(len)
    })
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
        if n > 0
            && let Some(scan) = self.scan.as_mut()
        {
            scan.feed(&buf.filled()[before..]);
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn close_of(frames: &[&[u8]]) -> u32 {
        let close = Arc::new(AtomicU32::new(0));
        let mut scan = FrameScan::new(close.clone());
        for f in frames {
            scan.feed(f);
        }
        close.load(Ordering::Relaxed)
    }

    #[test]
    fn finds_the_close_code_past_data_frames_split_anywhere() {
        // An unmasked text frame "hi", a 126-length binary frame, then Close 1001 "bye".
        let mut stream = vec![0x81, 0x02, b'h', b'i', 0x82, 126, 0x01, 0x00];
        stream.extend(std::iter::repeat_n(7u8, 256));
        stream.extend([0x88, 0x05, 0x03, 0xe9, b'b', b'y', b'e']);
        assert_eq!(close_of(&[&stream]), 1001);
        let pieces: Vec<&[u8]> = stream.chunks(3).collect();
        assert_eq!(close_of(&pieces), 1001);
    }

    #[test]
    fn unmasks_a_clients_close_and_reads_an_empty_one_as_1005() {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let code = 4000u16.to_be_bytes();
        let frame = [
            0x88,
            0x82,
            mask[0],
            mask[1],
            mask[2],
            mask[3],
            code[0] ^ mask[0],
            code[1] ^ mask[1],
        ];
        assert_eq!(close_of(&[&frame]), 4000);
        assert_eq!(close_of(&[&[0x88, 0x00]]), 1005);
        assert_eq!(close_of(&[&[0x81, 0x01, b'x']]), 0, "no Close yet");
    }
}
