//! Test harness: the real `clientele` binary as a child process, a real upstream on loopback,
//! and a small HTTP client.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// A real upstream API on loopback.
pub struct Upstream {
    pub addr: SocketAddr,
    /// Requests that reached the upstream.
    pub hits: Arc<AtomicU64>,
}

pub async fn start_upstream() -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicU64::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    upstream_handler(req)
                });
                // Above hyper's default of 100, so the gateway's own header limit is what tests
                // of it meet.
                let _ = hyper::server::conn::http1::Builder::new()
                    .max_headers(1024)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, hits }
}

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn upstream_handler(req: Request<Incoming>) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let param = |name: &str| -> u64 {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let json_resp = |status: u16, v: Value| {
        let mut r = Response::new(Full::new(Bytes::from(v.to_string())).boxed());
        *r.status_mut() = StatusCode::from_u16(status).unwrap();
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        r
    };
    match path.as_str() {
        "/upload" => {
            // Count the body as it streams, without keeping it.
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(frame) = body.frame().await {
                match frame {
                    Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
                    Err(_) => return Ok(json_resp(400, json!({"error": "aborted"}))),
                }
            }
            Ok(json_resp(200, json!({"received": n})))
        }
        "/slow" => {
            tokio::time::sleep(Duration::from_millis(param("ms"))).await;
            Ok(json_resp(200, json!({"slept_ms": param("ms")})))
        }
        "/status" => Ok(json_resp(
            param("code") as u16,
            json!({"code": param("code")}),
        )),
        "/download" => {
            let total = param("bytes");
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let chunks = total / chunk.len() as u64;
            let stream = futures_stream(chunks, chunk);
            Ok(Response::new(StreamBody::new(stream).boxed()))
        }
        _ => {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_string(),
                        Value::String(v.to_str().unwrap_or("").to_string()),
                    )
                })
                .collect();
            Ok(json_resp(
                200,
                json!({"method": req.method().as_str(), "path": path, "query": query, "headers": headers}),
            ))
        }
    }
}

/// A stream of `n` copies of `chunk`, fed through a small channel so the body really streams.
fn futures_stream(n: u64, chunk: Bytes) -> ReceiverStream {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        for _ in 0..n {
            if tx.send(Ok(Frame::data(chunk.clone()))).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream(rx)
}

pub struct ReceiverStream(pub tokio::sync::mpsc::Receiver<Result<Frame<Bytes>, Infallible>>);

impl futures_core::Stream for ReceiverStream {
    type Item = Result<Frame<Bytes>, Infallible>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

/// The real binary, serving with a config written for the test.
pub struct Server {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub gateway: SocketAddr,
    pub admin: SocketAddr,
    pub stderr_path: PathBuf,
}

pub use clientele_store::testsuite::free_port;

/// The test config: `/` routed to `upstream`, two plans, and `extra` inserted after the
/// `[gateway]` keys (so it may add gateway keys or whole sections).
pub fn config_text(
    gateway: SocketAddr,
    admin: SocketAddr,
    upstream: SocketAddr,
    extra: &str,
) -> String {
    format!(
        r#"
[gateway]
listen = "{gateway}"
shutdown_grace_secs = 10
{extra}

[admin]
listen = "{admin}"
token = "{ADMIN_TOKEN}"
max_body_bytes = 65536

[storage]
data_dir = "data"

[[apis]]
name = "petstore"
upstream = "http://{upstream}"
prefix = "/"
timeout_ms = 2000

[plans.free]
rate_per_second = 5
burst = 10

[plans.pro]
rate_per_second = 100
burst = 200
"#
    )
}

impl Server {
    /// Starts `clientele serve` with `extra` appended to a config routing `/` to `upstream`.
    pub async fn start(upstream: SocketAddr, extra: &str) -> Server {
        let dir = tempfile::tempdir().unwrap();
        Server::start_in(dir, upstream, extra).await
    }

    pub async fn start_in(dir: tempfile::TempDir, upstream: SocketAddr, extra: &str) -> Server {
        Server::start_with(dir, |gateway, admin| {
            config_text(gateway, admin, upstream, extra)
        })
        .await
    }

    /// Starts the binary in `dir` with the config `make_config(gateway, admin)` on fresh ports.
    /// A port found free can be taken by another test before the server binds it; then the
    /// server exits at once and this tries again on new ports.
    pub async fn start_with(
        dir: tempfile::TempDir,
        make_config: impl Fn(SocketAddr, SocketAddr) -> String,
    ) -> Server {
        let mut dir = dir;
        for _ in 0..5 {
            let gateway: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let config_path = dir.path().join("clientele.toml");
            std::fs::write(&config_path, make_config(gateway, admin)).unwrap();
            match Server::try_spawn(dir, &config_path, gateway, admin).await {
                Ok(server) => return server,
                Err((back, stderr)) if stderr.contains("cannot listen") => dir = back,
                Err((_, stderr)) => panic!("server did not start; stderr:\n{stderr}"),
            }
        }
        panic!("no free ports after 5 attempts");
    }

    pub async fn spawn(
        dir: tempfile::TempDir,
        config_path: &Path,
        gateway: SocketAddr,
        admin: SocketAddr,
    ) -> Server {
        match Server::try_spawn(dir, config_path, gateway, admin).await {
            Ok(server) => server,
            Err((_, stderr)) => panic!("server did not become healthy; stderr:\n{stderr}"),
        }
    }

    /// Starts the binary and waits until it answers; if it exits first (or never answers),
    /// gives the directory back with its stderr.
    pub async fn try_spawn(
        dir: tempfile::TempDir,
        config_path: &Path,
        gateway: SocketAddr,
        admin: SocketAddr,
    ) -> Result<Server, (tempfile::TempDir, String)> {
        let stderr_path = dir.path().join(format!("stderr-{}.log", admin.port()));
        // CLIENTELE_E2E_BIN runs another build (a release binary for the ignored benches).
        let bin = std::env::var("CLIENTELE_E2E_BIN")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_clientele").to_string());
        let child = Command::new(bin)
            .args(["serve", "--config"])
            .arg(config_path)
            .env("CLIENTELE_LOG", "info")
            .env_remove("CLIENTELE_ADMIN_TOKEN")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let mut server = Server {
            child: Some(child),
            dir,
            gateway,
            admin,
            stderr_path,
        };
        if server.wait_healthy().await {
            return Ok(server);
        }
        let stderr = server.stderr();
        if let Some(mut child) = server.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
        Err((dir, stderr))
    }

    /// True once this server (not another process that took the port) answers `/healthz`.
    async fn wait_healthy(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    return false;
                }
            }
            if let Ok((200, _, _)) = send(
                Method::GET,
                &format!("http://{}/healthz", self.admin),
                &[],
                None,
            )
            .await
            {
                // Whoever answered, our process must still be alive to be the one.
                let alive = self
                    .child
                    .as_mut()
                    .is_some_and(|c| c.try_wait().ok().flatten().is_none());
                if alive {
                    return true;
                }
                return false;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn gw(&self, path: &str) -> String {
        format!("http://{}{}", self.gateway, path)
    }

    /// Calls the admin API with the admin token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let (status, _, bytes) = send(
            method,
            &format!("http://{}{}", self.admin, path),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/json"),
            ],
            body.map(|b| Bytes::from(b.to_string())),
        )
        .await
        .unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// Creates a consumer and a key; returns `(key_id, key)`.
    pub async fn consumer_with_key(&self, id: &str, plan: Option<&str>) -> (String, String) {
        let (status, body) = self
            .admin(
                Method::POST,
                "/v1/consumers",
                Some(json!({"id": id, "plan": plan, "team": "t1"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let (status, key) = self
            .admin(
                Method::POST,
                &format!("/v1/consumers/{id}/keys"),
                Some(json!({})),
            )
            .await;
        assert_eq!(status, 201, "{key}");
        (
            key["key_id"].as_str().unwrap().to_string(),
            key["key"].as_str().unwrap().to_string(),
        )
    }

    /// Polls the consumer's events until `pred` holds (the pipeline is asynchronous).
    pub async fn wait_events(
        &self,
        consumer: &str,
        query: &str,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, body) = self
                .admin(
                    Method::GET,
                    &format!("/v1/consumers/{consumer}/events?limit=1000{query}"),
                    None,
                )
                .await;
            let events = body["events"].as_array().cloned().unwrap_or_default();
            if pred(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!("events never matched; last: {events:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().unwrap();
        Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "server did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// One request; returns status, headers and the whole body.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<Bytes>,
) -> Result<(u16, http::HeaderMap, Bytes), String> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(Full::new(body.unwrap_or_default()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(30), client().request(req))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, headers, bytes))
}

pub async fn get_with_key(server: &Server, path: &str, key: &str) -> (u16, http::HeaderMap, Value) {
    let (status, headers, bytes) = send(Method::GET, &server.gw(path), &[("x-api-key", key)], None)
        .await
        .unwrap();
    (
        status,
        headers,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Peak resident memory of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `clientele serve --config config`, which must refuse to start, and returns what it
/// said on stderr.
pub fn serve_refused(config: &std::path::Path) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_clientele"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "serve started with {}",
        config.display()
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Posts events to `POST /v1/events` as NDJSON in batches under the test config's 64 KiB
/// body limit, each of which must be accepted whole (202, nothing rejected).
pub async fn post_events(server: &Server, events: &[Value]) {
    let mut batches: Vec<String> = vec![String::new()];
    for e in events {
        let line = format!("{e}\n");
        if batches
            .last()
            .is_some_and(|b| b.len() + line.len() > 60_000)
        {
            batches.push(String::new());
        }
        if let Some(b) = batches.last_mut() {
            b.push_str(&line);
        }
    }
    for body in batches.into_iter().filter(|b| !b.is_empty()) {
        let (status, _, bytes) = send(
            Method::POST,
            &format!("http://{}/v1/events", server.admin),
            &[
                ("authorization", &format!("Bearer {ADMIN_TOKEN}")),
                ("content-type", "application/x-ndjson"),
            ],
            Some(Bytes::from(body)),
        )
        .await
        .unwrap();
        assert_eq!(status, 202, "{}", String::from_utf8_lossy(&bytes));
        let v: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["rejected"], json!([]), "{v}");
    }
}
