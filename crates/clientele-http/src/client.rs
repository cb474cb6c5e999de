//! The pooled client and why a request failed.

use std::error::Error as StdError;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::{Client, ResponseFuture};
use hyper_util::rt::TokioExecutor;

use crate::retry::parse_retry_after;
use crate::tls::{TlsSettings, client_config};

/// Plain TCP for `http://`, rustls for `https://`.
pub type Connector = HttpsConnector<HttpConnector>;

/// The one set of timeouts: to open a connection (TCP and TLS), and for the answer's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

/// How a client is built. One per distinct endpoint configuration.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub tls: TlsSettings,
    pub timeouts: Timeouts,
    /// Idle pooled connections are closed after this.
    pub pool_idle: Duration,
    pub pool_max_idle_per_host: usize,
    /// Offer only HTTP/1.1 by ALPN: for `Upgrade` requests (WebSocket), which HTTP/2 has not.
    pub http1_only: bool,
}

impl ClientOptions {
    /// Defaults for low-volume senders (webhooks, exporters, the CLI): small pool, 30 s idle.
    pub fn new(timeouts: Timeouts) -> ClientOptions {
        ClientOptions {
            tls: TlsSettings::default(),
            timeouts,
            pool_idle: Duration::from_secs(30),
            pool_max_idle_per_host: 8,
            http1_only: false,
        }
    }

    pub fn with_tls(mut self, tls: TlsSettings) -> ClientOptions {
        self.tls = tls;
        self
    }
}

/// A pooled HTTP/1.1 and HTTP/2 client over TCP or TLS; cheap to clone (the pool is shared).
pub struct Outbound<B> {
    client: Client<Connector, B>,
    timeouts: Timeouts,
}

impl<B> Clone for Outbound<B> {
    fn clone(&self) -> Self {
        Outbound {
            client: self.client.clone(),
            timeouts: self.timeouts,
        }
    }
}

impl<B> Outbound<B>
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    /// Errors (unreadable CA bundle or client certificate) name the file and the reason.
    pub fn new(options: &ClientOptions) -> Result<Outbound<B>, String> {
        let tls = client_config(&options.tls)?;
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(options.timeouts.connect));
        tcp.set_keepalive(Some(Duration::from_secs(60)));
        let builder = HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = if options.http1_only {
            builder.enable_http1().wrap_connector(tcp)
        } else {
            builder.enable_all_versions().wrap_connector(tcp)
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(options.pool_idle)
            .pool_max_idle_per_host(options.pool_max_idle_per_host)
            .build(connector);
        Ok(Outbound {
            client,
            timeouts: options.timeouts,
        })
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// Sends `req` without a deadline of its own: the gateway races its own, to tell a timeout
    /// from a failure and record the latency either way.
    pub fn request(&self, req: Request<B>) -> ResponseFuture {
        self.client.request(req)
    }

    /// Sends `req` and waits at most `timeouts.request` for the answer's head.
    pub async fn send(&self, req: Request<B>) -> Result<Response<Incoming>, Failure> {
        match tokio::time::timeout(self.timeouts.request, self.client.request(req)).await {
            Err(_) => Err(Failure::timeout(self.timeouts.request)),
            Ok(Err(e)) => Err(Failure::from_client(&e)),
            Ok(Ok(resp)) => Ok(resp),
        }
    }
}

/// The answer to a small request whose body does not matter (exports, webhooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Posted {
    pub status: u16,
    /// `Retry-After`, when the answer had one.
    pub retry_after: Option<Duration>,
}

impl Outbound<Full<Bytes>> {
    /// Sends `req`, then reads and drops the answer's body (so the connection goes back to the
    /// pool), both within `timeouts.request`.
    pub async fn send_and_drain(&self, req: Request<Full<Bytes>>) -> Result<Posted, Failure> {
        let resp = self.send(req).await?;
        let posted = Posted {
            status: resp.status().as_u16(),
            retry_after: parse_retry_after(resp.headers()),
        };
        let _ = tokio::time::timeout(self.timeouts.request, resp.into_body().collect()).await;
        Ok(posted)
    }

    /// Sends `req` and collects the answer's body, within `timeouts.request` each.
    pub async fn fetch(
        &self,
        req: Request<Full<Bytes>>,
    ) -> Result<(http::response::Parts, Bytes), Failure> {
        let resp = self.send(req).await?;
        let (parts, body) = resp.into_parts();
        match tokio::time::timeout(self.timeouts.request, body.collect()).await {
            Err(_) => Err(Failure::timeout(self.timeouts.request)),
            Ok(Err(e)) => Err(Failure::other(format!("the answer broke off: {e}"))),
            Ok(Ok(collected)) => Ok((parts, collected.to_bytes())),
        }
    }
}

/// What kind of failure, for callers that answer differently (502 against 504) or retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// No connection: refused, unreachable, DNS, or the connect timeout.
    Connect,
    /// The TLS handshake failed: a certificate not trusted, expired, for another name...
    Tls,
    /// No answer within the request timeout.
    Timeout,
    /// The connection broke, or the request could not be sent.
    Other,
}

/// Why a request got no answer, in words a log line or a problem+json `detail` can carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl Failure {
    pub fn timeout(after: Duration) -> Failure {
        Failure {
            kind: FailureKind::Timeout,
            reason: format!("no answer within {} ms", after.as_millis()),
        }
    }

    pub fn other(reason: String) -> Failure {
        Failure {
            kind: FailureKind::Other,
            reason,
        }
    }

    /// Classifies a client error by walking its causes; a rustls error (often wrapped in an
    /// `io::Error`, whose `source` skips it) makes it a TLS failure with rustls' reason.
    pub fn from_client(err: &hyper_util::client::legacy::Error) -> Failure {
        let mut reasons: Vec<String> = Vec::new();
        let mut tls: Option<String> = None;
        let mut cur: Option<&(dyn StdError + 'static)> = err.source();
        while let Some(e) = cur {
            if let Some(t) = rustls_error(e) {
                tls = Some(t.to_string());
                break;
            }
            let text = e.to_string();
            if !reasons.iter().any(|r| r.contains(&text)) {
                reasons.push(text);
            }
            cur = e.source();
        }
        if let Some(reason) = tls {
            return Failure {
                kind: FailureKind::Tls,
                reason: format!("TLS handshake failed: {reason}"),
            };
        }
        let text = if reasons.is_empty() {
            err.to_string()
        } else {
            reasons.join(": ")
        };
        if err.is_connect() {
            Failure {
                kind: FailureKind::Connect,
                reason: format!("cannot connect: {text}"),
            }
        } else {
            Failure::other(text)
        }
    }
}

/// The rustls error in `e`, looking inside `io::Error`s (nested ones too: the connector wraps
/// tokio-rustls' error again), whose `source` skips the error they carry.
fn rustls_error<'a>(mut e: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(t) = e.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let inner: &(dyn StdError + 'static) = e.downcast_ref::<std::io::Error>()?.get_ref()?;
        e = inner;
    }
}
