//! Test support (feature `testing`): a certificate authority made with the `openssl` command,
//! and an HTTPS server on loopback. Used by this crate's tests and the end-to-end tests.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;

/// A CA and the certificates it issued, as PEM files in a folder that lives as long as this.
pub struct TestCa {
    pub dir: PathBuf,
    pub ca_cert: PathBuf,
    ca_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed for the TLS tests (scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// A new CA in `dir` (which must exist and be empty of these names).
    pub fn new(dir: &Path) -> TestCa {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=Clientele Test CA",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        );
        TestCa {
            dir: dir.to_path_buf(),
            ca_cert: dir.join("ca.pem"),
            ca_key: dir.join("ca.key"),
        }
    }

    /// Issues `name.pem`/`name.key` for the `san` (e.g. `DNS:localhost`), valid from
    /// `not_before` to `not_after` (`YYYYMMDDHHMMSSZ`), or for a day from now when `None`.
    /// `client` makes it a client certificate (extendedKeyUsage clientAuth).
    pub fn issue(
        &self,
        name: &str,
        san: &str,
        validity: Option<(&str, &str)>,
        client: bool,
    ) -> (PathBuf, PathBuf) {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            &self.dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &key,
                "-out",
                &csr,
            ],
        );
        let usage = if client { "clientAuth" } else { "serverAuth" };
        let ext = format!("{name}.ext");
        std::fs::write(
            self.dir.join(&ext),
            format!(
                "[v3]\nsubjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
            ),
        )
        .unwrap();
        let ca_cert = self.ca_cert.to_str().unwrap().to_string();
        let ca_key = self.ca_key.to_str().unwrap().to_string();
        match validity {
            None => openssl(
                &self.dir,
                &[
                    "x509",
                    "-req",
                    "-in",
                    &csr,
                    "-CA",
                    &ca_cert,
                    "-CAkey",
                    &ca_key,
                    "-CAcreateserial",
                    "-days",
                    "1",
                    "-extfile",
                    &ext,
                    "-extensions",
                    "v3",
                    "-out",
                    &pem,
                ],
            ),
            // `openssl x509` (3.0) cannot back-date; `openssl ca` can, with a minimal set-up.
            Some((from, to)) => {
                std::fs::write(self.dir.join("index.txt"), "").unwrap();
                std::fs::write(self.dir.join("serial"), "1000\n").unwrap();
                std::fs::write(
                    self.dir.join("ca.cnf"),
                    "[ca]\ndefault_ca = test\n[test]\ndatabase = index.txt\nnew_certs_dir = .\nserial = serial\n\
                     default_md = sha256\npolicy = any\nunique_subject = no\n[any]\ncommonName = supplied\n",
                )
                .unwrap();
                openssl(
                    &self.dir,
                    &[
                        "ca",
                        "-batch",
                        "-config",
                        "ca.cnf",
                        "-cert",
                        &ca_cert,
                        "-keyfile",
                        &ca_key,
                        "-in",
                        &csr,
                        "-out",
                        &pem,
                        "-startdate",
                        from,
                        "-enddate",
                        to,
                        "-extfile",
                        &ext,
                        "-extensions",
                        "v3",
                        "-notext",
                    ],
                );
            }
        }
        (self.dir.join(pem), self.dir.join(key))
    }
}

/// What the HTTPS server saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// Whether the client presented a certificate.
    pub client_cert: bool,
}

/// An HTTPS server on loopback: answers every request with `status` and a JSON body naming
/// the request, over HTTP/1.1 or HTTP/2 (by ALPN), and keeps what it saw.
pub struct TlsServer {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TLS handshakes completed: fewer than requests when connections are pooled.
    pub connections: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    /// Serves with `cert`/`key`; with `client_ca`, a client certificate from that CA is
    /// required.
    pub async fn start(
        cert: &Path,
        key: &Path,
        client_ca: Option<&Path>,
        status: u16,
    ) -> TlsServer {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca).unwrap() {
                    roots.add(c.unwrap()).unwrap();
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let connections = Arc::new(AtomicU64::new(0));
        let handshakes = connections.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, log, handshakes) =
                    (acceptor.clone(), log.clone(), handshakes.clone());
                tokio::spawn(async move {
                    // A refused handshake is what some tests want; nothing to do then.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    handshakes.fetch_add(1, Ordering::SeqCst);
                    let client_cert = tls.get_ref().1.peer_certificates().is_some();
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let log = log.clone();
                        async move { Ok::<_, Infallible>(answer(req, status, client_cert, &log).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        TlsServer {
            addr,
            seen,
            connections,
            task,
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(
    req: Request<Incoming>,
    status: u16,
    client_cert: bool,
    log: &Mutex<Vec<Seen>>,
) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    let text = format!(
        "{{\"method\":\"{}\",\"path\":\"{path}\",\"version\":\"{:?}\",\"tls\":true}}",
        parts.method, parts.version
    );
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        path,
        version: parts.version,
        headers: parts.headers,
        body,
        client_cert,
    });
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(text)))
        .unwrap()
}
