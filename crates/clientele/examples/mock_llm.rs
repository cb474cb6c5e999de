//! A mock OpenAI-compatible provider for `scripts/bench-ai.sh`: `POST /v1/chat/completions`
//! answers a JSON completion, or with `"stream": true` an SSE stream (a role chunk, five
//! content chunks `--gap-ms` apart, the usage chunk when `stream_options.include_usage` is set,
//! then `[DONE]`). Every answer reports its usage, as the real provider does, so a gateway in
//! front of it has tokens to read and price. It is a benchmark fixture, not a test double: one
//! thread, no allocation beyond the answer, so it stays far cheaper than the gateways it is
//! put behind.
//!
//! `cargo run --release -p clientele --example mock_llm -- --listen 127.0.0.1:9100 --gap-ms 1`

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::time::Sleep;

type Body = BoxBody<Bytes, Infallible>;

const PROMPT_TOKENS: u64 = 42;
const CHUNKS: [&str; 5] = ["one", " two", " three", " four", " five"];

/// The frames of one stream, the first sent at once and each later one after `gap`.
struct Sse {
    frames: Vec<Bytes>,
    next: usize,
    gap: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl futures_core::Stream for Sse {
    type Item = Result<Frame<Bytes>, Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.next == this.frames.len() {
            return Poll::Ready(None);
        }
        if this.next > 0 && !this.gap.is_zero() {
            let gap = this.gap;
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(gap)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            this.sleep = None;
        }
        let frame = this.frames[this.next].clone();
        this.next += 1;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

fn usage() -> Value {
    json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS.len(),
           "total_tokens": PROMPT_TOKENS + CHUNKS.len() as u64,
           "prompt_tokens_details": {"cached_tokens": 0},
           "completion_tokens_details": {"reasoning_tokens": 0}})
}

async fn answer(req: Request<Incoming>, gap: Duration) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let reply = |status: StatusCode, ctype: &'static str, body: Body| {
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(ctype),
        );
        resp
    };
    if !path.ends_with("/chat/completions") {
        let msg = json!({"error": {"message": format!("no route {path}"), "type": "invalid_request_error"}});
        return Ok(reply(
            StatusCode::NOT_FOUND,
            "application/json",
            Full::new(Bytes::from(msg.to_string())).boxed(),
        ));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini").to_string();
    if body["stream"] != json!(true) {
        let answer = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "one two three four five"},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": usage(),
        });
        return Ok(reply(
            StatusCode::OK,
            "application/json",
            Full::new(Bytes::from(answer.to_string())).boxed(),
        ));
    }
    let chunk = |delta: Value, finish: Value| {
        let c = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        Bytes::from(format!("data: {c}\n\n"))
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    for text in CHUNKS {
        frames.push(chunk(json!({"content": text}), Value::Null));
    }
    frames.push(chunk(json!({}), json!("stop")));
    if body["stream_options"]["include_usage"] == json!(true) {
        let c = json!({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
            "created": 1_700_000_000, "model": model, "choices": [], "usage": usage()});
        frames.push(Bytes::from(format!("data: {c}\n\n")));
    }
    frames.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let sse = Sse {
        frames,
        next: 0,
        gap,
        sleep: None,
    };
    Ok(reply(
        StatusCode::OK,
        "text/event-stream",
        StreamBody::new(sse).boxed(),
    ))
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let listen: SocketAddr = arg(&args, "--listen")
        .unwrap_or_else(|| "127.0.0.1:9100".into())
        .parse()?;
    let gap = Duration::from_millis(
        arg(&args, "--gap-ms")
            .map(|g| g.parse())
            .transpose()?
            .unwrap_or(1),
    );
    let listener = TcpListener::bind(listen).await?;
    println!("mock_llm listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, gap));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
