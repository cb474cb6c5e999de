//! Accepting connections: HTTP/1.1 and HTTP/2 (h2c or ALPN over TLS), header limits, and
//! graceful shutdown that lets in-flight requests finish.

use std::convert::Infallible;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use clientele_core::config::GatewayConfig;
use clientele_core::ratelog::Every;

use crate::conn::{
    Busy, BusyBody, BusyGuard, ConnLimits, IdleIo, IdleTimeouts, Refusal, descriptor_budget,
};
use crate::proxy::Gateway;

/// Certificate and key files for TLS termination.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Loads a rustls server config, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| format!("cannot read TLS certificate {}: {e}", files.cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot parse TLS certificate {}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("cannot read TLS private key {}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("TLS certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Connection settings.
#[derive(Debug, Clone)]
pub struct ServeSettings {
    pub max_header_bytes: usize,
    /// Header fields per request at most (HTTP/1.1).
    pub max_headers: usize,
    /// Time allowed for in-flight requests after shutdown begins.
    pub grace: Duration,
    /// Time allowed for a client to send a request head.
    pub header_read_timeout: Duration,
    pub idle: IdleTimeouts,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Descriptors kept back from client connections (see [`descriptor_budget`]).
    pub reserved_fds: usize,
}

impl ServeSettings {
    pub fn from_config(c: &GatewayConfig) -> ServeSettings {
        ServeSettings {
            max_header_bytes: c.max_header_bytes,
            max_headers: c.max_headers,
            grace: Duration::from_secs(c.shutdown_grace_secs),
            header_read_timeout: Duration::from_secs(c.header_read_timeout_secs),
            idle: IdleTimeouts {
                first_byte: Duration::from_secs(c.first_byte_timeout_secs),
                idle: Duration::from_secs(c.idle_timeout_secs),
            },
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
            reserved_fds: c.reserved_fds,
        }
    }

    /// The connection caps, the global one lowered to what the descriptor limit allows.
    fn limits(&self) -> Arc<ConnLimits> {
        let mut max = self.max_connections;
        if let Some(budget) = descriptor_budget(self.reserved_fds) {
            if budget < max {
                tracing::warn!(
                    max_connections = max,
                    allowed = budget,
                    reserved_fds = self.reserved_fds,
                    "the descriptor limit (ulimit -n) leaves room for fewer connections than \
                     gateway.max_connections; raise the limit or lower max_connections"
                );
                max = budget.max(1);
            }
        }
        ConnLimits::new(max, self.max_connections_per_ip.min(max))
    }
}

/// Accept errors (usually EMFILE) wait this long at first, doubling up to `MAX_ACCEPT_BACKOFF`,
/// so a full descriptor table does not spin the accept loop.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(5);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// Serves the gateway on `listener` until `shutdown` resolves, then stops accepting and waits
/// up to `grace` for open connections to finish their in-flight requests.
pub async fn serve(
    gateway: Arc<Gateway>,
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) {
    gateway.set_tls(tls.is_some());
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_headers(settings.max_headers)
        // hyper refuses heads larger than its read buffer with 431.
        .max_buf_size(settings.max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(settings.max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256);

    let graceful = GracefulShutdown::new();
    let limits = settings.limits();
    let accept_errors = Every::new(Duration::from_secs(10));
    let refused = Every::new(Duration::from_secs(10));
    let mut backoff = MIN_ACCEPT_BACKOFF;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => {
                    backoff = MIN_ACCEPT_BACKOFF;
                    pair
                }
                Err(e) => {
                    // Usually out of descriptors: back off instead of spinning, and say so once
                    // per interval rather than once per attempt.
                    clientele_core::warn_every!(accept_errors, error = %e, open = limits.open(), "accept failed; backing off");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let guard = match limits.admit(peer.ip()) {
            Ok(guard) => guard,
            Err(why) => {
                // Closing at once frees the descriptor; the client sees a reset and may retry.
                let cap = match why {
                    Refusal::Total => "max_connections",
                    Refusal::PerIp => "max_connections_per_ip",
                };
                clientele_core::warn_every!(refused, %peer, cap, open = limits.open(), "connection refused: gateway.{cap} reached");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let busy = Arc::new(Busy::default());
        let stream = IdleIo::new(stream, settings.idle, busy.clone(), guard);
        let gw = gateway.clone();
        let service = service_fn(move |req| {
            let gw = gw.clone();
            let busy = BusyGuard::new(&busy);
            async move {
                let response = gw.handle(req, peer).await;
                Ok::<_, Infallible>(response.map(|body| BusyBody::new(body, busy)))
            }
        });
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let result = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(tls_stream)) => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(tls_stream), service)
                                .into_owned();
                            watcher.watch(conn).await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .into_owned();
                    watcher.watch(conn).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(
        in_flight = gateway.in_flight(),
        "gateway draining connections"
    );
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("gateway drained"),
        () = tokio::time::sleep(settings.grace) => {
            tracing::warn!(grace_secs = settings.grace.as_secs(), "gateway shutdown grace period ended with connections still open");
        }
    }
}
