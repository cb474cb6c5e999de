//! Clientele's one outbound HTTP client, for upstreams, webhooks, OTLP collectors, log sinks and
//! the CLI's admin calls.
//!
//! - [`Outbound`]: hyper-util's pooled client over rustls (ring) with the system's roots (which
//!   honour `SSL_CERT_FILE`/`SSL_CERT_DIR`) or a configured CA bundle, SNI, an optional client
//!   certificate for mTLS, HTTP/2 when the server offers it by ALPN, and one set of [`Timeouts`].
//! - [`RetryPolicy`]: the one retry policy (exponential backoff with jitter, honouring
//!   `Retry-After`) for everything that may send again; the gateway never retries a request.
//! - [`Failure`]: why a request did not get an answer, with certificate errors spelled out, so
//!   callers can name the endpoint and the reason.
//!
//! It depends on the core only for its random numbers; it knows nothing of events or stores, so
//! the gateway can use it without depending on the store or the API.

mod client;
mod retry;
mod tls;

pub use client::{ClientOptions, Connector, Failure, FailureKind, Outbound, Posted, Timeouts};
pub use retry::{RetryPolicy, parse_retry_after};
pub use tls::{TlsSettings, client_config};

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;
