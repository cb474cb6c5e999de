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
use tokio_rustls::{LazyConfigAcceptor, TlsAcceptor};

use clientele_core::config::GatewayConfig;
use clientele_core::ratelog::Every;

use crate::conn::{
    Busy, BusyBody, BusyGuard, ConnLimits, IdleIo, IdleTimeouts, Refusal, descriptor_budget,
};
use crate::proxy::Gateway;
use crate::tls_fp::HelloSummary;

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

/// The time a client has for the whole TLS handshake, ClientHello included.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS client fingerprint of a connection ([`crate::tls_fp`]), in each of its requests'
/// extensions.
#[derive(Debug, Clone)]
pub struct TlsFingerprint(pub Arc<str>);

/// The TLS handshake, in two steps so that the ClientHello can be read: the fingerprint is
/// computed once here, from the parsed hello (whose size rustls bounds), before the handshake
/// goes on. `None` when the handshake fails or times out (logged at debug level).
async fn handshake<IO>(
    acceptor: &TlsAcceptor,
    stream: IO,
    peer: std::net::SocketAddr,
) -> Option<(tokio_rustls::server::TlsStream<IO>, TlsFingerprint)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // One deadline for both halves of the handshake.
    let deadline = tokio::time::Instant::now() + HANDSHAKE_TIMEOUT;
    let lazy = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
    let start = match tokio::time::timeout_at(deadline, lazy).await {
        Ok(Ok(start)) => start,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed (ClientHello)");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out (ClientHello)");
            return None;
        }
    };
    let hello = HelloSummary::read(&start.client_hello());
    match tokio::time::timeout_at(deadline, start.into_stream(acceptor.config().clone())).await {
        Ok(Ok(tls_stream)) => {
            let version = tls_stream.get_ref().1.protocol_version();
            let fp = TlsFingerprint(Arc::from(hello.fingerprint(version)));
            Some((tls_stream, fp))
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            None
        }
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
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            // The connection's TLS fingerprint goes on every request it carries (and so on
            // every event), through the request's extensions.
            let service = |fp: Option<TlsFingerprint>| {
                service_fn(move |mut req| {
                    let gw = gw.clone();
                    let busy = BusyGuard::new(&busy);
                    if let Some(fp) = &fp {
                        req.extensions_mut().insert(fp.clone());
                    }
                    async move {
                        let response = gw.handle(req, peer).await;
                        Ok::<_, Infallible>(response.map(|body| BusyBody::new(body, busy)))
                    }
                })
            };
            let result = match tls {
                Some(acceptor) => {
                    let Some((tls_stream, fp)) = handshake(&acceptor, stream, peer).await else {
                        return;
                    };
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(tls_stream), service(Some(fp)))
                        .into_owned();
                    watcher.watch(conn).await
                }
                None => {
                    let conn = builder
                        .serve_connection_with_upgrades(TokioIo::new(stream), service(None))
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

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_core::config::OutboundTls;
    use clientele_core::event::Event;
    use clientele_core::keys::{KeyHasher, KeyIndex};
    use clientele_core::pipeline::{EventReceiver, EventSink, PipelineStats};
    use clientele_http::testing::TestCa;
    use rustls::crypto::ring::{cipher_suite, default_provider};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use crate::conn::IdleTimeouts;
    use crate::limiter::Limiter;
    use crate::proxy::GatewayOptions;

    fn settings() -> ServeSettings {
        ServeSettings {
            max_header_bytes: 16 * 1024,
            max_headers: 100,
            grace: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(5),
            idle: IdleTimeouts {
                first_byte: Duration::from_secs(5),
                idle: Duration::from_secs(5),
            },
            max_connections: 100,
            max_connections_per_ip: 100,
            reserved_fds: 0,
        }
    }

    /// A gateway with no API on a loopback TLS listener: every request is refused, and each
    /// refusal is one event.
    async fn tls_gateway(
        dir: &std::path::Path,
    ) -> (
        std::net::SocketAddr,
        EventReceiver,
        TestCa,
        tokio::sync::oneshot::Sender<()>,
    ) {
        let ca = TestCa::new(dir);
        let (cert, key) = ca.issue("gateway", "DNS:localhost", None, false);
        let acceptor = load_tls(&TlsFiles { cert, key }).unwrap();
        let (sink, rx) = EventSink::bounded(64, Arc::new(PipelineStats::default()));
        let options = GatewayOptions {
            trusted_proxies: Vec::new(),
            session_header: "x-session-id".into(),
            end_user_header: "x-end-user-id".into(),
            max_request_body_bytes: 0,
            hide_credentials: true,
            outbound_tls: OutboundTls::default(),
            prices: Arc::new(clientele_core::prices::PriceBook::shipped()),
            max_identical_calls: None,
        };
        let keys = Arc::new(KeyIndex::new(KeyHasher::new([7; 32])));
        let gateway =
            Arc::new(Gateway::new(&[], options, keys, Arc::new(Limiter::local()), sink).unwrap());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(
            gateway,
            listener,
            Some(acceptor),
            settings(),
            async {
                let _ = stopped.await;
            },
        ));
        (addr, rx, ca, stop)
    }

    fn client(
        ca: &TestCa,
        versions: &[&'static rustls::SupportedProtocolVersion],
        suites: Option<Vec<rustls::SupportedCipherSuite>>,
        alpn: &[&[u8]],
    ) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca.ca_cert).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut provider = default_provider();
        if let Some(suites) = suites {
            provider.cipher_suites = suites;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }

    /// Two requests on one connection through `connector`: the events' fingerprints.
    async fn fingerprints_of(
        connector: &tokio_rustls::TlsConnector,
        addr: std::net::SocketAddr,
        rx: &mut EventReceiver,
    ) -> Vec<Option<String>> {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = connector.connect(name, tcp).await.unwrap();
        tls.write_all(b"GET /one HTTP/1.1\r\nHost: localhost\r\n\r\nGET /two HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tls.read_to_end(&mut answer).await;
        assert!(
            answer.starts_with(b"HTTP/1.1 "),
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let mut events: Vec<Event> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while events.len() < 2 && tokio::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok(e) => events.push(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
        assert_eq!(events.len(), 2, "one event per request");
        events.into_iter().map(|e| e.tls_fp).collect()
    }

    #[tokio::test]
    async fn a_real_handshake_fingerprints_the_client_on_every_event_of_its_connection() {
        let dir = tempfile::tempdir().unwrap();
        let (addr, mut rx, ca, _stop) = tls_gateway(dir.path()).await;
        let modern = client(
            &ca,
            &[&rustls::version::TLS13, &rustls::version::TLS12],
            None,
            &[b"http/1.1"],
        );
        let old = client(
            &ca,
            &[&rustls::version::TLS12],
            Some(vec![
                cipher_suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
                cipher_suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
            ]),
            &[],
        );
        let a = fingerprints_of(&modern, addr, &mut rx).await;
        let a_again = fingerprints_of(&modern, addr, &mut rx).await;
        let b = fingerprints_of(&old, addr, &mut rx).await;
        let fp_a = a[0]
            .clone()
            .expect("a TLS connection's events carry its fingerprint");
        let fp_b = b[0]
            .clone()
            .expect("a TLS connection's events carry its fingerprint");
        // Every event of a connection, and every connection of one client, carry one.
        assert_eq!(a[1].as_ref(), Some(&fp_a));
        assert_eq!(a_again, a);
        assert_eq!(b[1].as_ref(), Some(&fp_b));
        assert_ne!(fp_a, fp_b);
        eprintln!("TLS 1.3 + ALPN http/1.1: {fp_a}\nTLS 1.2, two suites, no ALPN: {fp_b}");
        // The readable part: TLS 1.3 with SNI, HTTP/1.1 by ALPN; TLS 1.2 without ALPN.
        assert!(fp_a.starts_with("t13d") && fp_a[6..8] == *"h1", "{fp_a}");
        assert!(fp_b.starts_with("t12d") && fp_b[6..8] == *"00", "{fp_b}");
        assert_eq!(fp_a.len(), 34, "{fp_a}");
    }
}
