//! Connection admission and idleness: how many connections the gateway holds, from whom, and
//! for how long a connection may sit without doing anything.
//!
//! A client connection costs a descriptor for as long as it is open. Without limits, 20,000
//! connections that never send a byte exhaust the process's descriptors, and then the admin
//! listener and `/healthz` stop answering too. So: connections are capped globally (and below
//! the descriptor limit less a reserve) and per client address; over the cap a new connection is
//! closed at once. A connection that never sends its first byte, or sits idle between requests,
//! is closed by [`IdleIo`] after its timeout. When the global cap is reached, the oldest
//! connection that has not yet sent a byte is closed to make room, so a flood of silent
//! connections cannot lock real clients out while it waits for its timeout.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The caps on open connections.
#[derive(Debug)]
pub struct ConnLimits {
    max_total: usize,
    max_per_ip: usize,
    total: AtomicUsize,
    /// Held only to bump a count, never across an await.
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    /// Connections in accept order that may not have sent a byte yet: the ones to close first
    /// when the global cap is reached. Entries of connections that spoke or closed are skipped
    /// and pruned lazily.
    silent: Mutex<VecDeque<Weak<Silent>>>,
}

/// The eviction handle of a connection that has not sent a byte.
#[derive(Debug, Default)]
pub struct Silent {
    /// Cleared on the first byte: from then on the connection is never evicted.
    silent: AtomicBool,
    evicted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Silent {
    fn evict(&self) -> bool {
        if !self.silent.load(Ordering::Acquire) || self.evicted.swap(true, Ordering::AcqRel) {
            return false;
        }
        if let Some(w) = self
            .waker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            w.wake();
        }
        true
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

/// An admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct ConnGuard {
    limits: Arc<ConnLimits>,
    ip: IpAddr,
    silent: Arc<Silent>,
}

impl ConnLimits {
    pub fn new(max_total: usize, max_per_ip: usize) -> Arc<ConnLimits> {
        Arc::new(ConnLimits {
            max_total: max_total.max(1),
            max_per_ip: max_per_ip.max(1),
            total: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
            silent: Mutex::new(VecDeque::new()),
        })
    }

    pub fn max_total(&self) -> usize {
        self.max_total
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Takes a place for a connection from `ip`, or says which cap is full. At the global cap,
    /// the oldest connection that has not sent a byte is told to close and the new one takes
    /// its place (it frees its descriptor a moment later: the reserve covers the overlap).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refusal> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= self.max_total && !self.evict_one() {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Total);
        }
        let mut per_ip = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let n = per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            drop(per_ip);
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerIp);
        }
        *n += 1;
        drop(per_ip);
        let silent = Arc::new(Silent {
            silent: AtomicBool::new(true),
            ..Silent::default()
        });
        let mut queue = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= 2 * self.max_total {
            queue.retain(|w| {
                w.upgrade()
                    .is_some_and(|s| s.silent.load(Ordering::Relaxed))
            });
        }
        queue.push_back(Arc::downgrade(&silent));
        drop(queue);
        Ok(ConnGuard {
            limits: self.clone(),
            ip,
            silent,
        })
    }

    /// Closes the oldest connection that has not sent a byte; false when there is none.
    fn evict_one(&self) -> bool {
        let mut queue = self.silent.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(weak) = queue.pop_front() {
            if weak.upgrade().is_some_and(|s| s.evict()) {
                return true;
            }
        }
        false
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut per_ip = self
            .limits
            .per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                // Forget addresses that went away, so the table is bounded by open connections.
                per_ip.remove(&self.ip);
            }
        }
        drop(per_ip);
        self.limits.total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Raises the soft descriptor limit to the hard one (a server should use what it is allowed)
/// and returns how many connections fit with `reserved` descriptors kept back, or `None` when
/// the limit cannot be read (then only `max_connections` applies).
pub fn descriptor_budget(reserved: usize) -> Option<usize> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        if setrlimit(Resource::Nofile, raised).is_ok() {
            limit = raised;
        }
    }
    let soft = usize::try_from(limit.current?).unwrap_or(usize::MAX);
    Some(soft.saturating_sub(reserved))
}

/// Timeouts for [`IdleIo`].
#[derive(Debug, Clone, Copy)]
pub struct IdleTimeouts {
    pub first_byte: Duration,
    pub idle: Duration,
}

/// Requests in flight on one connection: from the head's arrival to the end of the response
/// body. While any is, the connection is not idle however quiet it is (a slow upstream).
#[derive(Debug, Default)]
pub struct Busy(AtomicUsize);

/// Marks one request in flight until dropped (it rides on the response body).
#[derive(Debug)]
pub struct BusyGuard(Arc<Busy>);

impl BusyGuard {
    pub fn new(busy: &Arc<Busy>) -> BusyGuard {
        busy.0.fetch_add(1, Ordering::Relaxed);
        BusyGuard(busy.clone())
    }
}

impl Drop for BusyGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's byte stream that fails with `TimedOut` once it has been idle too long: no
/// first byte within `first_byte`, or no request in flight and no byte either way within
/// `idle`. A write that cannot progress for `idle` also fails (a client that stopped reading).
pub struct IdleIo<S> {
    inner: S,
    timeouts: IdleTimeouts,
    busy: Arc<Busy>,
    /// Armed at the earliest moment the connection could be idle too long; re-armed lazily
    /// when it fires, so bytes moving cost no timer work.
    sleep: Pin<Box<Sleep>>,
    last_activity: Instant,
    received_any: bool,
    _guard: ConnGuard,
}

impl<S> IdleIo<S> {
    pub fn new(inner: S, timeouts: IdleTimeouts, busy: Arc<Busy>, guard: ConnGuard) -> Self {
        let now = Instant::now();
        IdleIo {
            inner,
            timeouts,
            busy,
            sleep: Box::pin(tokio::time::sleep_until(now + timeouts.first_byte)),
            last_activity: now,
            received_any: false,
            _guard: guard,
        }
    }

    /// `Err` once the connection was chosen to make room; else registers to be woken if it is.
    fn check_evicted(&self, cx: &mut Context<'_>) -> io::Result<()> {
        let silent = &self._guard.silent;
        let evicted = || {
            silent.evicted.load(Ordering::Acquire).then(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    "closed to make room: no byte received and the gateway is full",
                )
            })
        };
        if let Some(e) = evicted() {
            return Err(e);
        }
        *silent.waker.lock().unwrap_or_else(PoisonError::into_inner) = Some(cx.waker().clone());
        // Evicted between the check and the registration: the waker may have been missed.
        evicted().map_or(Ok(()), Err)
    }

    /// Polled whenever the stream would wait: `Err` once the connection has been idle too long.
    fn check(&mut self, cx: &mut Context<'_>, writing: bool) -> io::Result<()> {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return Ok(());
            }
            let now = Instant::now();
            let deadline = if !writing && self.busy.0.load(Ordering::Relaxed) > 0 {
                now + self.timeouts.idle
            } else if self.received_any {
                self.last_activity + self.timeouts.idle
            } else {
                self.last_activity + self.timeouts.first_byte
            };
            if deadline <= now {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle for too long",
                ));
            }
            self.sleep.as_mut().reset(deadline);
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for IdleIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    if !self.received_any {
                        self.received_any = true;
                        self._guard.silent.silent.store(false, Ordering::Release);
                    }
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if !self.received_any {
                    self.check_evicted(cx)?;
                }
                self.check(cx, false)?;
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for IdleIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.check(cx, true)?;
                Poll::Pending
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                self.check(cx, true)?;
                Poll::Pending
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body that keeps its request marked in flight until it ends or is dropped.
pub struct BusyBody<B> {
    inner: B,
    _busy: BusyGuard,
}

impl<B> BusyBody<B> {
    pub fn new(inner: B, busy: BusyGuard) -> Self {
        BusyBody { inner, _busy: busy }
    }
}

impl<B: Body<Data = Bytes> + Unpin> Body for BusyBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn caps_are_global_and_per_address_and_freed_on_drop() {
        let limits = ConnLimits::new(3, 2);
        let a: IpAddr = "127.0.0.2".parse().unwrap();
        let b: IpAddr = "127.0.0.3".parse().unwrap();
        let a1 = limits.admit(a).unwrap();
        let a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let b1 = limits.admit(b).unwrap();
        // Full: the oldest silent connection (a1) is evicted to make room.
        let b2 = limits.admit(b).unwrap();
        assert!(a1.silent.evicted.load(Ordering::Relaxed));
        drop(a1);
        // Connections that have spoken are never evicted.
        for g in [&a2, &b1, &b2] {
            g.silent.silent.store(false, Ordering::Relaxed);
        }
        assert_eq!(limits.open(), 3);
        assert_eq!(
            limits.admit("127.0.0.9".parse().unwrap()).unwrap_err(),
            Refusal::Total,
            "full, and nobody silent to evict"
        );
        drop(b1);
        assert_eq!(limits.open(), 2);
        assert!(limits.admit(b).is_ok(), "a freed place is reusable");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_times_out_and_a_busy_one_does_not() {
        use tokio::io::AsyncReadExt;
        let limits = ConnLimits::new(10, 10);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let timeouts = IdleTimeouts {
            first_byte: Duration::from_secs(2),
            idle: Duration::from_secs(5),
        };
        let (_client, server) = tokio::io::duplex(64);
        let busy = Arc::new(Busy::default());
        let mut io = IdleIo::new(server, timeouts, busy, limits.admit(ip).unwrap());
        let mut buf = [0u8; 8];
        let started = Instant::now();
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(2));

        let (_client, server) = tokio::io::duplex(64);
        let busy = Arc::new(Busy::default());
        let guard = BusyGuard::new(&busy);
        let mut io = IdleIo::new(server, timeouts, busy, limits.admit(ip).unwrap());
        let read = tokio::time::timeout(Duration::from_secs(30), io.read(&mut buf)).await;
        assert!(
            read.is_err(),
            "a request in flight keeps the connection open"
        );
        drop(guard);
        let err = io.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
