//! The one retry policy: exponential backoff with jitter, honouring `Retry-After`.

use std::future::Future;
use std::time::Duration;

use crate::client::{Failure, FailureKind, Posted};

/// How often and how patiently a sender tries again. The gateway never retries (a request may
/// not be idempotent and its body is streamed); exporters, webhooks and the CLI do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (1 = never retry).
    pub attempts: u32,
    /// The delay before the first retry; doubled for each one after, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl RetryPolicy {
    pub fn new(attempts: u32, first_delay: Duration, max_delay: Duration) -> RetryPolicy {
        RetryPolicy {
            attempts: attempts.max(1),
            first_delay,
            max_delay,
        }
    }

    /// The wait before attempt `attempt + 1` after `result`, or `None` to stop: on success, on
    /// an answer that sending again will not change (4xx other than 408/429, a certificate
    /// error), when the attempts are used up, or when the server asks for a pause longer than
    /// `max_delay` (retrying sooner would ignore it).
    pub fn next_delay(&self, attempt: u32, result: &Result<Posted, Failure>) -> Option<Duration> {
        if attempt >= self.attempts || !retryable(result) {
            return None;
        }
        let backoff = self.backoff(attempt);
        match result {
            Ok(Posted {
                retry_after: Some(asked),
                ..
            }) if *asked > self.max_delay => None,
            Ok(Posted {
                retry_after: Some(asked),
                ..
            }) => Some(backoff.max(*asked)),
            _ => Some(backoff),
        }
    }

    /// Exponential backoff with "equal jitter": half the step fixed, half random, so senders
    /// that failed together do not all come back at once.
    fn backoff(&self, attempt: u32) -> Duration {
        let step = self
            .first_delay
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(20))
            .min(self.max_delay);
        let half = step.as_millis() as u64 / 2;
        let jitter = clientele_core::event::fast_random_u64() % (half + 1);
        Duration::from_millis(half + jitter)
    }

    /// Runs `attempt(1)`, `attempt(2)`, ... with this policy's waits between them, and returns
    /// the last result.
    pub async fn run<F, Fut>(&self, mut attempt: F) -> Result<Posted, Failure>
    where
        F: FnMut(u32) -> Fut,
        Fut: Future<Output = Result<Posted, Failure>>,
    {
        let mut n = 1;
        loop {
            let result = attempt(n).await;
            match self.next_delay(n, &result) {
                None => return result,
                Some(wait) => tokio::time::sleep(wait).await,
            }
            n += 1;
        }
    }
}

/// Whether sending again may get a different answer.
fn retryable(result: &Result<Posted, Failure>) -> bool {
    match result {
        Ok(p) => matches!(p.status, 408 | 429) || (p.status >= 500 && p.status != 501),
        Err(f) => f.kind != FailureKind::Tls,
    }
}

/// `Retry-After` as delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
pub fn parse_retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let ms = when.timestamp_millis() - clientele_core::time::now_ms();
    Some(Duration::from_millis(ms.max(0) as u64))
}
