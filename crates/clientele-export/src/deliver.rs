//! Delivery: a bounded queue per exporter, a worker that batches, and HTTP POST with retries.
//!
//! The producer side ([`Queue::offer`]) never waits: it admits a batch only while the items
//! queued stay within the bound, else it drops them and counts them. The worker is the only
//! thing that waits on the network, so a collector that is down or slow costs its own queue
//! and nothing else.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use clientele_core::exports_config::DeliveryConfig;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;

use crate::QueueStats;

/// The producer's handle.
pub struct Queue<T> {
    tx: mpsc::UnboundedSender<Vec<T>>,
    cap: usize,
    pub stats: Arc<QueueStats>,
}

impl<T> Clone for Queue<T> {
    fn clone(&self) -> Self {
        Queue {
            tx: self.tx.clone(),
            cap: self.cap,
            stats: self.stats.clone(),
        }
    }
}

impl<T: Send + 'static> Queue<T> {
    /// Offers items without waiting; returns how many were dropped.
    pub fn offer(&self, items: Vec<T>) -> usize {
        let n = items.len();
        if n == 0 {
            return 0;
        }
        // The channel itself is unbounded; this counter is the bound, so admission is one
        // atomic add and a full queue never makes the caller wait.
        let before = self.stats.queued.fetch_add(n, Ordering::AcqRel);
        if before + n > self.cap || self.tx.send(items).is_err() {
            self.stats.queued.fetch_sub(n, Ordering::AcqRel);
            self.stats.dropped.fetch_add(n as u64, Ordering::Relaxed);
            return n;
        }
        0
    }
}

/// Starts a worker that gathers up to `batch_max` items (waiting at most `flush_interval_ms`
/// after the first) and hands each batch to `send`, which returns whether it was delivered.
/// The worker ends, after a last flush, when every [`Queue`] handle is dropped.
pub fn spawn_worker<T, F, Fut>(
    d: &DeliveryConfig,
    stats: Arc<QueueStats>,
    send: F,
) -> (Queue<T>, tokio::task::JoinHandle<()>)
where
    T: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<T>>();
    let queue = Queue {
        tx,
        cap: d.queue_items,
        stats: stats.clone(),
    };
    let batch_max = d.batch_max;
    let linger = Duration::from_millis(d.flush_interval_ms);
    let handle = tokio::spawn(async move {
        let mut pending: Vec<T> = Vec::new();
        let mut open = true;
        while open || !pending.is_empty() {
            if pending.is_empty() {
                match rx.recv().await {
                    Some(items) => pending.extend(items),
                    None => break,
                }
            }
            let deadline = tokio::time::Instant::now() + linger;
            while open && pending.len() < batch_max {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(items)) => pending.extend(items),
                    Ok(None) => open = false,
                    Err(_) => break,
                }
            }
            let take = pending.len().min(batch_max);
            let batch: Vec<T> = pending.drain(..take).collect();
            let n = batch.len();
            let ok = send(batch).await;
            stats.queued.fetch_sub(n, Ordering::AcqRel);
            if ok {
                stats.sent.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                stats.failed.fetch_add(n as u64, Ordering::Relaxed);
            }
        }
    });
    (queue, handle)
}

/// A small HTTP/1.1 client for pushing batches.
#[derive(Clone)]
pub struct Poster {
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
    max_retries: u32,
    headers: Arc<Vec<(http::HeaderName, http::HeaderValue)>>,
    /// A down endpoint fails every batch: one warning per interval, with the count.
    failures: Arc<clientele_core::ratelog::Every>,
}

/// First retry delay; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Poster {
    pub fn new(d: &DeliveryConfig, headers: &BTreeMap<String, String>) -> Result<Poster, String> {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_millis(d.timeout_ms)));
        connector.set_nodelay(true);
        let mut parsed = Vec::new();
        for (k, v) in headers {
            let name =
                http::HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k:?}: {e}"))?;
            let value = http::HeaderValue::try_from(v.as_str())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            parsed.push((name, value));
        }
        Ok(Poster {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
            timeout: Duration::from_millis(d.timeout_ms),
            max_retries: d.max_retries,
            headers: Arc::new(parsed),
            failures: Arc::new(clientele_core::ratelog::Every::new(Duration::from_secs(10))),
        })
    }

    async fn post_once(&self, url: &str, content_type: &str, body: Bytes) -> Result<u16, String> {
        let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
        for (k, v) in self.headers.iter() {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_string())?
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        // Drain the body so the connection can be reused; bounded by the same timeout.
        let _ = tokio::time::timeout(
            self.timeout,
            http_body_util::BodyExt::collect(resp.into_body()),
        )
        .await;
        Ok(status)
    }

    /// POSTs `body`, retrying connection errors, timeouts, 429 and 5xx with exponential
    /// backoff and jitter. Returns whether the endpoint accepted it (2xx).
    pub async fn post(
        &self,
        exporter: &str,
        url: &str,
        content_type: &str,
        body: Bytes,
        stats: &QueueStats,
    ) -> bool {
        let mut backoff = FIRST_BACKOFF;
        for attempt in 0..=self.max_retries {
            let reason = match self.post_once(url, content_type, body.clone()).await {
                Ok(s) if (200..300).contains(&s) => return true,
                Ok(s) if s == 429 || s >= 500 => format!("status {s}"),
                Ok(s) => {
                    clientele_core::warn_every!(
                        self.failures,
                        exporter,
                        url,
                        status = s,
                        "export refused; batch dropped"
                    );
                    return false;
                }
                Err(e) => e,
            };
            if attempt == self.max_retries {
                clientele_core::warn_every!(self.failures, exporter, url, error = %reason, attempts = attempt + 1, "export failed; batch dropped");
                return false;
            }
            stats.retries.fetch_add(1, Ordering::Relaxed);
            let jitter =
                clientele_core::event::fast_random_u64() % (backoff.as_millis() as u64 / 4 + 1);
            tokio::time::sleep(backoff + Duration::from_millis(jitter)).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        false
    }
}
