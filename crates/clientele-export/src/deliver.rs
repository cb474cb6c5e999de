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
use clientele_http::{
    ClientOptions, Failure, Outbound, Posted, RetryPolicy, Timeouts, TlsSettings,
};
use http_body_util::Full;
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

/// Pushes batches through the shared outbound client (TLS for `https://` endpoints) with the
/// shared retry policy.
#[derive(Clone)]
pub struct Poster {
    client: Outbound<Full<Bytes>>,
    retry: RetryPolicy,
    headers: Arc<Vec<(http::HeaderName, http::HeaderValue)>>,
    /// A down endpoint fails every batch: one warning per interval, with the count.
    failures: Arc<clientele_core::ratelog::Every>,
}

/// First retry delay; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Poster {
    pub fn new(
        d: &DeliveryConfig,
        headers: &BTreeMap<String, String>,
        tls: &TlsSettings,
    ) -> Result<Poster, String> {
        let mut parsed = Vec::new();
        for (k, v) in headers {
            let name =
                http::HeaderName::try_from(k.as_str()).map_err(|e| format!("header {k:?}: {e}"))?;
            let value = http::HeaderValue::try_from(v.as_str())
                .map_err(|e| format!("header {k:?}: {e}"))?;
            parsed.push((name, value));
        }
        let timeout = Duration::from_millis(d.timeout_ms);
        let options = ClientOptions::new(Timeouts {
            connect: timeout,
            request: timeout,
        })
        .with_tls(tls.clone());
        Ok(Poster {
            client: Outbound::new(&options)?,
            retry: RetryPolicy::new(d.max_retries + 1, FIRST_BACKOFF, MAX_BACKOFF),
            headers: Arc::new(parsed),
            failures: Arc::new(clientele_core::ratelog::Every::new(Duration::from_secs(10))),
        })
    }

    async fn post_once(
        &self,
        url: &str,
        content_type: &str,
        body: Bytes,
    ) -> Result<Posted, Failure> {
        let mut req = http::Request::post(url).header(http::header::CONTENT_TYPE, content_type);
        for (k, v) in self.headers.iter() {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Failure::other(e.to_string()))?;
        self.client.send_and_drain(req).await
    }

    /// POSTs `body` with the retry policy (connection errors, timeouts, 408, 429 and 5xx, after
    /// `Retry-After` when given). Returns whether the endpoint accepted it (2xx).
    pub async fn post(
        &self,
        exporter: &str,
        url: &str,
        content_type: &str,
        body: Bytes,
        stats: &QueueStats,
    ) -> bool {
        let result = self
            .retry
            .run(|attempt| {
                if attempt > 1 {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                }
                self.post_once(url, content_type, body.clone())
            })
            .await;
        match result {
            Ok(p) if (200..300).contains(&p.status) => true,
            Ok(p) => {
                clientele_core::warn_every!(
                    self.failures,
                    exporter,
                    url,
                    status = p.status,
                    "export refused; batch dropped"
                );
                false
            }
            Err(e) => {
                clientele_core::warn_every!(self.failures, exporter, url, error = %e, "export failed; batch dropped");
                false
            }
        }
    }
}
