//! LLM traffic: token usage read by the gateway from a mock provider's JSON and SSE answers,
//! the official `openai` SDK streaming through it, the provider's key swapped in for the
//! consumer's, a client that leaves mid-stream still charged, and `GET /v1/stats/models`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::support::{ReceiverStream, Server, client};

type UpBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// What the provider reports: prompt tokens, and the completion's content chunks (one token
/// each).
const PROMPT_TOKENS: u64 = 42;
const CHUNKS: &[&str] = &["one", " two", " three", " four", " five"];

/// The authorization headers the mock provider received (and any `Accept-Encoding`).
type Seen = Arc<Mutex<Vec<String>>>;

/// A golden SSE file served one frame per event, as a provider streams it.
fn golden_stream(golden: &str) -> Response<UpBody> {
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let events: Vec<Bytes> = golden
        .split_inclusive("\n\n")
        .map(|e| Bytes::copy_from_slice(e.as_bytes()))
        .collect();
    tokio::spawn(async move {
        for event in events {
            if tx.send(Ok(Frame::data(event))).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(ReceiverStream(rx)).boxed())
        .unwrap()
}

async fn provider(req: Request<Incoming>, seen: Seen) -> Result<Response<UpBody>, Infallible> {
    let auth = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    seen.lock().unwrap().push(auth);
    // The SDK asks for gzip; the gateway must not pass that on, or it could not read usage.
    if let Some(enc) = req.headers().get("accept-encoding") {
        seen.lock()
            .unwrap()
            .push(format!("accept-encoding: {enc:?}"));
    }
    let anthropic = req.uri().path().ends_with("/v1/messages");
    let responses = req.uri().path().ends_with("/v1/responses");
    let body = req.into_body().collect().await.unwrap().to_bytes();
    if responses {
        // The golden responses-API stream (reasoning tokens), one frame per event.
        let golden =
            include_str!("../../../clientele-gateway/tests/llm/openai_responses_stream.sse");
        return Ok(golden_stream(golden));
    }
    if anthropic {
        // The golden Anthropic stream (with cache tokens), one frame per event.
        let golden =
            include_str!("../../../clientele-gateway/tests/llm/anthropic_messages_stream.sse");
        return Ok(golden_stream(golden));
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = body["model"].as_str().unwrap_or("gpt-4o-mini");
    if model.starts_with("tool-") {
        // The golden streamed tool call, with a new call id every turn; "tool-refine" asks
        // for another city every turn, "tool-fixed" for Paris again.
        let turn = body["messages"].as_array().map_or(0, Vec::len);
        let golden =
            include_str!("../../../clientele-gateway/tests/llm/openai_chat_stream_tool_calls.sse");
        let mut text = golden.replace("call_9pw1qnYScqvGrCH58HWCvFH6", &format!("call_{turn:024}"));
        if model == "tool-refine" {
            text = text.replace("Paris", &format!("Paris-{turn}"));
        }
        return Ok(golden_stream(&text));
    }
    if model == "golden" {
        // The golden chat completion (cached prompt tokens), byte for byte.
        let golden = include_str!("../../../clientele-gateway/tests/llm/openai_chat.json");
        let resp = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(golden.as_bytes())).boxed())
            .unwrap();
        return Ok(resp);
    }
    let answer_model = match model {
        "gpt-4o-mini" => "gpt-4o-mini-2024-07-18",
        other => other,
    };
    if body["stream"] != json!(true) {
        let answer = json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": answer_model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"},
                         "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": 1, "total_tokens": PROMPT_TOKENS + 1},
        });
        let resp = Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(answer.to_string())).boxed())
            .unwrap();
        return Ok(resp);
    }
    let include_usage = body["stream_options"]["include_usage"] == json!(true);
    // "slow" streams pause between chunks, so a client can leave in the middle.
    let pause = Duration::from_millis(if model.contains("slow") { 300 } else { 1 });
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let answer_model = answer_model.to_string();
    tokio::spawn(async move {
        let chunk = |delta: Value, usage: Value| {
            let c = json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
                "model": answer_model, "choices": [{"index": 0, "delta": delta, "finish_reason": null}],
                "usage": usage});
            Ok(Frame::data(Bytes::from(format!("data: {c}\n\n"))))
        };
        let _ = tx
            .send(chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))
            .await;
        for text in CHUNKS {
            tokio::time::sleep(pause).await;
            if tx
                .send(chunk(json!({"content": text}), Value::Null))
                .await
                .is_err()
            {
                return;
            }
        }
        if include_usage {
            let usage = json!({"prompt_tokens": PROMPT_TOKENS, "completion_tokens": CHUNKS.len(),
                "total_tokens": PROMPT_TOKENS + CHUNKS.len() as u64,
                "prompt_tokens_details": {"cached_tokens": 0}});
            let c = json!({"id": "chatcmpl-2", "object": "chat.completion.chunk", "created": 1,
                "model": answer_model, "choices": [], "usage": usage});
            let _ = tx
                .send(Ok(Frame::data(Bytes::from(format!("data: {c}\n\n")))))
                .await;
        }
        let _ = tx
            .send(Ok(Frame::data(Bytes::from_static(b"data: [DONE]\n\n"))))
            .await;
    });
    let resp = Response::builder()
        .header("content-type", "text/event-stream")
        .body(StreamBody::new(ReceiverStream(rx)).boxed())
        .unwrap();
    Ok(resp)
}

async fn start_provider() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| provider(req, s.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

async fn start() -> (Server, Seen) {
    start_extra("").await
}

/// [`start`] with `extra` config sections.
async fn start_extra(extra: &str) -> (Server, Seen) {
    let (server, seen, _) = start_full(extra).await;
    (server, seen)
}

/// [`start_extra`], also returning the mock provider's address.
async fn start_full(extra: &str) -> (Server, Seen, SocketAddr) {
    let (provider, seen) = start_provider().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = extra.to_string();
    let server = Server::start_with(dir, move |gateway, admin| {
        crate::support::config_text(gateway, admin, provider, &extra).replace(
            "[plans.free]",
            &format!(
                "[[apis]]\nname = \"ai\"\nupstream = \"http://{provider}\"\nprefix = \"/ai\"\n\
                 strip_prefix = true\n\
                 upstream_headers = {{ Authorization = \"Bearer sk-provider-secret\" }}\n\n\
                 [[apis]]\nname = \"ai-plain\"\nupstream = \"http://{provider}\"\nprefix = \"/plain\"\n\
                 strip_prefix = true\nllm_include_usage = false\n\n\
                 [[apis]]\nname = \"claude\"\nupstream = \"http://{provider}\"\nprefix = \"/claude\"\n\
                 strip_prefix = true\n\
                 upstream_headers = {{ x-api-key = \"sk-ant-provider-secret\" }}\n\n\
                 [prices.\"my-local-model\"]\ninput = 1.0\noutput = 2.0\n\n[plans.free]"
            ),
        )
    })
    .await;
    (server, seen, provider)
}

/// Posts a streamed chat completion and reads `frames` data frames, then drops the response.
async fn stream_and_leave(server: &Server, key: &str, model: &str, frames: usize) {
    let body = json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "count"}]});
    let req = Request::builder()
        .method(Method::POST)
        .uri(server.gw("/ai/v1/chat/completions"))
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let resp = client().request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut got = 0;
    while got < frames {
        match body.frame().await {
            Some(Ok(f)) if f.is_data() => got += 1,
            Some(Ok(_)) => {}
            other => panic!("stream ended early: {other:?}"),
        }
    }
    drop(body);
}

fn sum(events: &[Value], field: &str) -> u64 {
    events.iter().filter_map(|e| e[field].as_u64()).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_sdk_tokens_per_consumer_equal_the_providers() {
    let (server, seen) = start().await;
    let (_, key) = server.consumer_with_key("agent-a", Some("pro")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/llm_chat.py");
    let python = crate::exports::python();
    let base = server.gw("/ai/v1");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([script, &base, &key])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run scripts/test.sh"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the openai SDK failed (pip install openai, or run scripts/test.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sdk["stream_text"], "one two three four five");
    let streamed_out = CHUNKS.len() as u64;
    assert_eq!(sdk["stream_usage"], json!([PROMPT_TOKENS, streamed_out]));

    let events = server
        .wait_events("agent-a", "", |evs| {
            evs.len() >= 2 && evs.iter().all(|e| e["tokens_in"].is_u64())
        })
        .await;
    assert_eq!(sum(&events, "tokens_in"), 2 * PROMPT_TOKENS);
    assert_eq!(sum(&events, "tokens_out"), streamed_out + 1);
    for e in &events {
        assert_eq!(e["model"], "gpt-4o-mini-2024-07-18", "{e}");
        assert!(e["cost_usd"].as_f64().unwrap() > 0.0, "{e}");
    }
    // gpt-4o-mini: $0.15 in, $0.60 out per million.
    let cost: f64 = events.iter().map(|e| e["cost_usd"].as_f64().unwrap()).sum();
    let want = (2 * PROMPT_TOKENS) as f64 * 0.15e-6 + (streamed_out + 1) as f64 * 0.60e-6;
    assert!((cost - want).abs() < 1e-12, "{cost} vs {want}");

    // The provider saw its own key, never the consumer's.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter().all(|a| a == "Bearer sk-provider-secret"),
        "{seen:?}"
    );

    let (status, models) = server
        .admin(Method::GET, "/v1/stats/models?consumer=agent-a", None)
        .await;
    assert_eq!(status, 200, "{models}");
    let rows = models["models"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{models}");
    assert_eq!(rows[0]["requests"], 2);
    assert_eq!(rows[0]["tokens_in"], 2 * PROMPT_TOKENS);
    assert_eq!(rows[0]["tokens_out"], streamed_out + 1);
    let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    let row = stats["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["consumer"] == "agent-a")
        .unwrap()
        .clone();
    assert_eq!(row["tokens_in"], 2 * PROMPT_TOKENS, "{row}");
    assert_eq!(row["unpriced_requests"], 0, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_mid_stream_is_charged_for_what_was_streamed() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-b", Some("pro")).await;
    // The role chunk and two content chunks, then the client goes away.
    stream_and_leave(&server, &key, "gpt-4o-mini-slow", 3).await;
    let events = server
        .wait_events("agent-b", "", |evs| {
            evs.len() == 1 && evs[0]["tokens_out"].is_u64()
        })
        .await;
    let e = &events[0];
    assert_eq!(e["outcome"], "client_aborted", "{e}");
    // No usage chunk arrived: output is counted from the deltas that passed (1 per chunk),
    // and never zero.
    assert_eq!(e["tokens_out"], 3, "{e}");
    assert_eq!(e["model"], "gpt-4o-mini-slow");
    // Not in the price book: unpriced, null, never $0.
    assert!(e["cost_usd"].is_null(), "{e}");

    let (_, models) = server.admin(Method::GET, "/v1/stats/models", None).await;
    let row = &models["models"][0];
    assert!(row["cost_usd"].is_null(), "{models}");
    assert_eq!(row["unpriced_requests"], 1, "{models}");
    let (_, stats) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    let row = stats["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["consumer"] == "agent-b")
        .unwrap()
        .clone();
    assert_eq!(row["unpriced_requests"], 1, "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_price_prices_a_local_model() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-c", Some("pro")).await;
    let (status, _, _) = crate::support::send(
        Method::POST,
        &server.gw("/ai/v1/chat/completions"),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        Some(Bytes::from(
            json!({"model": "my-local-model", "messages": []}).to_string(),
        )),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    let events = server
        .wait_events("agent-c", "", |evs| evs.len() == 1)
        .await;
    let want = PROMPT_TOKENS as f64 * 1e-6 + 2e-6;
    assert!(
        (events[0]["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{}",
        events[0]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anthropic_sdk_stream_with_cache_tokens_is_priced_per_kind() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-d", Some("pro")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/llm_messages.py");
    let python = crate::exports::python();
    let base = server.gw("/claude");
    let out = tokio::task::spawn_blocking(move || {
        Command::new(&python)
            .args([script, &base, &key])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run scripts/test.sh"))
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "the anthropic SDK failed (pip install anthropic, or run scripts/test.sh):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(sdk["text"], "Hello! How can I help?");
    // What the provider reported: fresh input, cache read, cache write, output.
    assert_eq!(sdk["usage"], json!([25, 2048, 512, 15]));
    let events = server
        .wait_events("agent-d", "", |evs| {
            evs.len() == 1 && evs[0]["tokens_in"].is_u64()
        })
        .await;
    let e = &events[0];
    assert_eq!(e["tokens_in"], 25 + 2048 + 512, "{e}");
    assert_eq!(e["tokens_out"], 15, "{e}");
    assert_eq!(e["model"], "claude-sonnet-4-5-20250929");
    // The parts priced apart are on the event; Anthropic reports no reasoning tokens.
    assert_eq!(e["tokens_cached"], 2048, "{e}");
    assert_eq!(e["tokens_cache_write"], 512, "{e}");
    assert!(e.get("tokens_reasoning").is_none(), "{e}");
    // claude-sonnet-4-5: $3 in, $0.30 cache read, $3.75 cache write, $15 out per million.
    let want = (25.0 * 3.0 + 2048.0 * 0.30 + 512.0 * 3.75 + 15.0 * 15.0) / 1e6;
    assert!(
        (e["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{e}"
    );
    let models = wait_models(&server, "agent-d").await;
    let row = &models[0];
    assert_eq!(
        (
            &row["tokens_in"],
            &row["tokens_cached"],
            &row["tokens_cache_write"],
            &row["tokens_reasoning"]
        ),
        (&json!(2585), &json!(2048), &json!(512), &json!(0)),
        "{row}"
    );
    let (status, stats) = server
        .admin(Method::GET, "/v1/stats/consumers/agent-d", None)
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(
        (&stats["tokens_cached"], &stats["tokens_cache_write"]),
        (&json!(2048), &json!(512)),
        "{stats}"
    );
}

/// `GET /v1/stats/models?consumer=…` once it has a row for the consumer.
async fn wait_models(server: &Server, consumer: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server
            .admin(
                Method::GET,
                &format!("/v1/stats/models?consumer={consumer}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let rows = body["models"].as_array().cloned().unwrap_or_default();
        if !rows.is_empty() {
            return rows;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no model row for {consumer}: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The golden OpenAI frames through the gateway: a chat completion with cached prompt
/// tokens (JSON) and a responses-API stream with reasoning tokens (SSE), each part on the
/// event and priced at its own rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_cached_and_reasoning_tokens_are_kept_and_priced() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-r", Some("pro")).await;
    let post = |path: &str, body: Value| {
        Request::builder()
            .method(Method::POST)
            .uri(server.gw(path))
            .header("authorization", format!("Bearer {key}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .unwrap()
    };
    for req in [
        post(
            "/ai/v1/chat/completions",
            json!({"model": "golden", "messages": [{"role": "user", "content": "describe"}]}),
        ),
        post(
            "/ai/v1/responses",
            json!({"model": "o4-mini", "stream": true, "input": "hi"}),
        ),
    ] {
        let resp = client().request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        resp.into_body().collect().await.unwrap();
    }
    let events = server
        .wait_events("agent-r", "", |evs| {
            evs.len() == 2 && evs.iter().all(|e| e["tokens_in"].is_u64())
        })
        .await;
    let by_model = |m: &str| {
        events
            .iter()
            .find(|e| e["model"] == m)
            .unwrap_or_else(|| panic!("no event of {m}: {events:?}"))
            .clone()
    };
    let chat = by_model("gpt-4o-2024-08-06");
    assert_eq!(
        (
            &chat["tokens_in"],
            &chat["tokens_cached"],
            &chat["tokens_out"],
            &chat["tokens_reasoning"]
        ),
        (&json!(1234), &json!(1024), &json!(56), &json!(0)),
        "{chat}"
    );
    assert!(
        chat.get("tokens_cache_write").is_none(),
        "OpenAI reports none: {chat}"
    );
    // gpt-4o: $2.50 in, $1.25 cached, $10 out per million.
    let want = (210.0 * 2.50 + 1024.0 * 1.25 + 56.0 * 10.0) / 1e6;
    assert!(
        (chat["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{chat}"
    );
    let reasoning = by_model("o4-mini-2025-04-16");
    assert_eq!(
        (
            &reasoning["tokens_in"],
            &reasoning["tokens_out"],
            &reasoning["tokens_reasoning"],
            &reasoning["tokens_cached"]
        ),
        (&json!(37), &json!(120), &json!(64), &json!(0)),
        "{reasoning}"
    );
    // o4-mini: $1.10 in, $4.40 out (reasoning billed as output) per million.
    let want = (37.0 * 1.10 + 120.0 * 4.40) / 1e6;
    assert!(
        (reasoning["cost_usd"].as_f64().unwrap() - want).abs() < 1e-12,
        "{reasoning}"
    );
    let models = wait_models(&server, "agent-r").await;
    let reasoning_sum: u64 = models
        .iter()
        .filter_map(|m| m["tokens_reasoning"].as_u64())
        .sum();
    let cached_sum: u64 = models
        .iter()
        .filter_map(|m| m["tokens_cached"].as_u64())
        .sum();
    assert_eq!((cached_sum, reasoning_sum), (1024, 64), "{models:?}");
    let (status, list) = server.admin(Method::GET, "/v1/stats/consumers", None).await;
    assert_eq!(status, 200, "{list}");
    let mine = list["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["consumer"] == "agent-r")
        .unwrap_or_else(|| panic!("agent-r not listed: {list}"));
    assert_eq!(
        (
            &mine["tokens_cached"],
            &mine["tokens_reasoning"],
            &mine["tokens_cache_write"]
        ),
        (&json!(1024), &json!(64), &json!(0)),
        "{mine}"
    );
    // The dashboard's AI page shows the parts per consumer and per model: requests, tokens
    // in, cache reads, cache writes, tokens out, reasoning.
    let mut browser = crate::ui::admin_browser(&server).await;
    let page = browser.get(&server, "/ai?range=24h").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(page.body.contains("of which cache reads"), "{}", page.body);
    let numbers = |marker: &str| -> Vec<String> {
        let at = page
            .body
            .find(marker)
            .unwrap_or_else(|| panic!("{marker} not on the page: {}", page.body));
        let row = &page.body[at..];
        let row = &row[..row.find("</tr>").unwrap()];
        row.split(r#"<td class="num">"#)
            .skip(1)
            .map(|c| c[..c.find("</td>").unwrap()].to_string())
            .collect()
    };
    let consumer = numbers(">agent-r</a>");
    assert_eq!(consumer[2..4], ["1,024", "0"], "{consumer:?}");
    assert_eq!(consumer[5], "64", "{consumer:?}");
    let chat = numbers("<code>gpt-4o-2024-08-06</code>");
    assert_eq!(
        (&chat[2], &chat[5]),
        (&"1,024".to_string(), &"0".to_string()),
        "{chat:?}"
    );
    let o4 = numbers("<code>o4-mini-2025-04-16</code>");
    assert_eq!(
        (&o4[2], &o4[5]),
        (&"0".to_string(), &"64".to_string()),
        "{o4:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_from_the_header_with_a_loop_and_inferred_ones() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-e", Some("pro")).await;
    let body = Bytes::from(json!({"model": "gpt-4o-mini", "messages": []}).to_string());
    let auth = format!("Bearer {key}");
    // Six identical calls in the client's session "run-1": a loop; one call without a header.
    for session in ["run-1"; 6].iter().map(Some).chain([None]) {
        let mut headers = vec![
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ];
        if let Some(s) = session {
            headers.push(("x-session-id", s));
        }
        let (status, _, _) = crate::support::send(
            Method::POST,
            &server.gw("/ai/v1/chat/completions"),
            &headers,
            Some(body.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    server
        .wait_events("agent-e", "", |evs| evs.len() == 7)
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let sessions = loop {
        let (status, body) = server
            .admin(Method::GET, "/v1/sessions?consumer=agent-e", None)
            .await;
        assert_eq!(status, 200, "{body}");
        let total: u64 = body["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["requests"].as_u64().unwrap())
            .sum();
        if total == 7 || std::time::Instant::now() > deadline {
            break body["sessions"].as_array().unwrap().clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let run = sessions
        .iter()
        .find(|s| s["session_id"] == "run-1")
        .expect("the header's session");
    assert_eq!(run["requests"], 6, "{run}");
    assert_eq!(run["loops"], 1, "{run}");
    assert_eq!(run["tokens_in"], 6 * PROMPT_TOKENS, "{run}");
    // Six LLM calls in a burst: an agent, and a chain of six calls to one endpoint.
    assert_eq!(run["class"], "agent", "{run}");
    assert!(
        run["class_reason"].as_str().unwrap().contains("burst"),
        "{run}"
    );
    assert_eq!(run["longest_chain"]["calls"], 6, "{run}");
    assert!(
        run["longest_chain"]["endpoint"]
            .as_str()
            .unwrap()
            .ends_with("/v1/chat/completions"),
        "{run}"
    );
    let inferred: Vec<_> = sessions.iter().filter(|s| s["inferred"] == true).collect();
    assert_eq!(inferred.len(), 1, "{sessions:?}");
    assert_eq!(inferred[0]["requests"], 1);
    let (status, _) = server
        .admin(Method::GET, "/v1/sessions?limit=0", None)
        .await;
    assert_eq!(status, 400);
}

/// Streams a chat completion without `stream_options` through `prefix`; the data frames the
/// client received.
async fn stream_without_usage_option(server: &Server, key: &str, prefix: &str) -> Vec<String> {
    let body = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "count"}]});
    let (status, _, body) = crate::support::send(
        Method::POST,
        &server.gw(&format!("{prefix}/v1/chat/completions")),
        &[
            ("authorization", &format!("Bearer {key}")),
            ("content-type", "application/json"),
        ],
        Some(Bytes::from(body.to_string())),
    )
    .await
    .unwrap();
    assert_eq!(status, 200);
    String::from_utf8(body.to_vec())
        .unwrap()
        .split("\n\n")
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn include_usage_is_added_to_streams_that_lack_it_unless_turned_off() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-f", Some("pro")).await;
    // On by default: the provider is asked for usage, so the stream ends with the real count.
    let frames = stream_without_usage_option(&server, &key, "/ai").await;
    assert!(
        frames.iter().any(|f| f.contains("\"prompt_tokens\":42")),
        "{frames:?}"
    );
    let events = server
        .wait_events("agent-f", "", |evs| evs.len() == 1)
        .await;
    assert_eq!(events[0]["tokens_in"], PROMPT_TOKENS, "{}", events[0]);
    assert_eq!(events[0]["tokens_out"], CHUNKS.len() as u64);
    assert_eq!(events[0]["outcome"], "proxied");
    // The body grew by the option: counted as the client sent it.
    let sent = json!({"model": "gpt-4o-mini", "stream": true,
        "messages": [{"role": "user", "content": "count"}]})
    .to_string()
    .len() as u64;
    assert_eq!(events[0]["request_bytes"], sent);

    // Turned off for `ai-plain`: the body goes as sent, and the stream can only be estimated
    // (no input count, one output token per delta).
    let frames = stream_without_usage_option(&server, &key, "/plain").await;
    assert!(
        !frames.iter().any(|f| f.contains("prompt_tokens")),
        "{frames:?}"
    );
    let events = server
        .wait_events("agent-f", "", |evs| evs.len() == 2)
        .await;
    let plain = events
        .iter()
        .find(|e| e["api"] == "ai-plain")
        .expect("the ai-plain event");
    assert_eq!(plain["tokens_in"], 0, "{plain}");
    // Every delta counts one, the role chunk's empty one included.
    assert_eq!(plain["tokens_out"], CHUNKS.len() as u64 + 1, "{plain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identical_calls_past_max_identical_calls_are_refused_and_the_loop_is_a_finding() {
    let (server, seen) = start_extra("\n[agents]\nmax_identical_calls = 3\n").await;
    let (_, key) = server.consumer_with_key("agent-g", Some("pro")).await;
    let auth = format!("Bearer {key}");
    let call = |session: &'static str, content: &'static str| {
        let body = Bytes::from(
            json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]})
                .to_string(),
        );
        let (url, auth) = (server.gw("/ai/v1/chat/completions"), auth.clone());
        async move {
            let (status, _, body) = crate::support::send(
                Method::POST,
                &url,
                &[
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                    ("x-session-id", session),
                ],
                Some(body),
            )
            .await
            .unwrap();
            (
                status,
                serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null),
            )
        }
    };
    // Three identical calls pass; the repeats after them are refused, saying why.
    for _ in 0..3 {
        assert_eq!(call("loop-1", "weather in Paris?").await.0, 200);
    }
    for _ in 0..3 {
        let (status, problem) = call("loop-1", "weather in Paris?").await;
        assert_eq!(status, 429, "{problem}");
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("identical-call-repeated"),
            "{problem}"
        );
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("max_identical_calls"),
            "{problem}"
        );
    }
    // A refined query is another call, and another session starts its own count.
    assert_eq!(call("loop-1", "weather in Lyon?").await.0, 200);
    assert_eq!(call("loop-2", "weather in Paris?").await.0, 200);
    assert_eq!(
        seen.lock().unwrap().len(),
        5,
        "refused repeats never reach the provider"
    );

    let events = server
        .wait_events("agent-g", "", |evs| evs.len() == 8)
        .await;
    assert_eq!(
        events
            .iter()
            .filter(|e| e["outcome"] == "loop_refused")
            .count(),
        3
    );
    // The session repeated one call 6 times: an agent_loop finding, naming it.
    let loops = agent_loops(&server).await;
    assert_eq!(loops.len(), 1, "{loops:#?}");
    assert_eq!(loops[0]["consumer"], "agent-g");
    assert_eq!(loops[0]["evidence"]["session_id"], "loop-1");
    assert_eq!(loops[0]["evidence"]["count"], 6);
    assert_eq!(loops[0]["route"], "POST /ai/v1/chat/completions");
}

/// A measure, not a test (`cargo test -p clientele --test e2e bench_streamed -- --ignored
/// --nocapture`): the latency a streamed chat completion gains through the gateway (usage
/// read, include_usage added, a token budget reserved and settled) at 64 concurrent clients,
/// against the same provider called directly. Rounds alternate direct and gateway so drift
/// on the machine spreads over both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_streamed_completion_added_latency() {
    const ROUNDS: usize = 3;
    // BENCH_CONCURRENCY=1 measures the time added to one request without queueing.
    let concurrency: usize = std::env::var("BENCH_CONCURRENCY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64);
    let per_client = (1920 / concurrency).clamp(30, 500);
    let (server, _, provider) = start_full("").await;
    let (status, body) = server
        .admin(
            Method::POST,
            "/v1/consumers",
            Some(json!({"id": "bench", "limits": {"tokens_per_day": 1_000_000_000u64}})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, key) = server
        .admin(
            Method::POST,
            "/v1/consumers/bench/keys",
            Some(json!({"name": "bench"})),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().unwrap().to_string();
    let body = Bytes::from(
        json!({"model": "gpt-4o-mini", "stream": true, "max_tokens": 16,
               "messages": [{"role": "user", "content": "count"}]})
        .to_string(),
    );
    let run = |url: String, auth: Option<String>, body: Bytes| async move {
        let client = client();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url, auth, body) =
                    (client.clone(), url.clone(), auth.clone(), body.clone());
                tokio::spawn(async move {
                    let mut out = Vec::with_capacity(per_client);
                    for _ in 0..per_client {
                        let mut req = Request::builder()
                            .method(Method::POST)
                            .uri(&url)
                            .header("content-type", "application/json");
                        if let Some(a) = &auth {
                            req = req.header("authorization", a);
                        }
                        let t = std::time::Instant::now();
                        let resp = client
                            .request(req.body(Full::new(body.clone())).unwrap())
                            .await
                            .unwrap();
                        assert_eq!(resp.status(), 200);
                        resp.into_body().collect().await.unwrap();
                        out.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    out
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        all
    };
    let q = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
    };
    let (mut direct, mut via) = (Vec::new(), Vec::new());
    // One unrecorded warm-up each: connection pools.
    run(
        format!("http://{provider}/v1/chat/completions"),
        None,
        body.clone(),
    )
    .await;
    run(
        server.gw("/ai/v1/chat/completions"),
        Some(format!("Bearer {key}")),
        body.clone(),
    )
    .await;
    for _ in 0..ROUNDS {
        direct.extend(
            run(
                format!("http://{provider}/v1/chat/completions"),
                None,
                body.clone(),
            )
            .await,
        );
        via.extend(
            run(
                server.gw("/ai/v1/chat/completions"),
                Some(format!("Bearer {key}")),
                body.clone(),
            )
            .await,
        );
    }
    let (d50, d99) = (q(&mut direct, 0.5), q(&mut direct, 0.99));
    let (g50, g99) = (q(&mut via, 0.5), q(&mut via, 0.99));
    println!(
        "streamed completion (5 chunks, 1 ms apart), {concurrency} concurrent, {} requests each:\n\
         direct  p50 {d50:.2} ms  p99 {d99:.2} ms\n\
         gateway p50 {g50:.2} ms  p99 {g99:.2} ms\n\
         added   p50 {:.2} ms  p99 {:.2} ms",
        direct.len(),
        g50 - d50,
        g99 - d99
    );
    // The budget was reserved and settled for every request.
    let (_, lim) = server
        .admin(Method::GET, "/v1/consumers/bench/limits", None)
        .await;
    assert!(lim["budgets"][0]["used"].as_f64().unwrap() > 0.0, "{lim}");
}

/// MCP over HTTP: a JSON-RPC `tools/call` is attributed to its tool (the event's route is the
/// tool's name), so per-tool counts come out of the route stats; other messages keep the path,
/// and a batch naming several tools is one fixed route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mcp_tool_calls_are_attributed_per_tool() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-m", Some("pro")).await;
    let auth = format!("Bearer {key}");
    let call = |id: u32, tool: &str| {
        json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
               "params": {"name": tool, "arguments": {"q": "rust"}}})
    };
    let messages = [
        call(1, "search_docs"),
        call(2, "search_docs"),
        call(3, "fetch_page"),
        json!({"jsonrpc": "2.0", "id": 4, "method": "tools/list"}),
        // JSON-RPC batches (MCP before 2025-06-18): one tool throughout is that tool, several
        // are the fixed mixed-batch route.
        json!([call(5, "fetch_page"), call(6, "fetch_page")]),
        json!([call(7, "search_docs"), call(8, "fetch_page")]),
    ];
    for m in &messages {
        let (status, _, _) = crate::support::send(
            Method::POST,
            &server.gw("/plain/mcp"),
            &[
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ],
            Some(Bytes::from(m.to_string())),
        )
        .await
        .unwrap();
        assert_eq!(status, 200);
    }
    let events = server
        .wait_events("agent-m", "", |evs| evs.len() == 6)
        .await;
    let mut routes: Vec<&str> = events
        .iter()
        .map(|e| e["route"].as_str().unwrap())
        .collect();
    routes.sort_unstable();
    assert_eq!(
        routes,
        vec![
            "/mcp",
            "fetch_page",
            "fetch_page",
            "search_docs",
            "search_docs",
            "tools/call (batch)"
        ],
        "{events:?}"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = server.admin(Method::GET, "/v1/stats/routes", None).await;
        assert_eq!(status, 200, "{body}");
        let search = body["routes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["route"] == "search_docs")
            .cloned();
        if let Some(r) = search.filter(|r| r["requests"] == 2) {
            assert_eq!(r["method"], "POST", "{r}");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no search_docs route: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// An agent that asks the model again and again gets the same tool call back (same name and
/// arguments, new call ids) while its requests differ every turn (the conversation grows):
/// the response's tool calls make the call fingerprint, so the session is an `agent_loop`.
/// A session whose tool arguments change every turn is a chain, not a loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_repeating_a_tool_call_is_a_loop_and_one_refining_it_is_not() {
    let (server, _) = start().await;
    let (_, key) = server.consumer_with_key("agent-t", Some("pro")).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e/llm_tools.py");
    let python = crate::exports::python();
    let base = server.gw("/ai/v1");
    for (session, model) in [("stuck-1", "tool-fixed"), ("refine-1", "tool-refine")] {
        let (python, base, key) = (python.clone(), base.clone(), key.clone());
        let out = tokio::task::spawn_blocking(move || {
            Command::new(&python)
                .args([script, &base, &key, session, model, "6"])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {python}: {e}; run scripts/test.sh"))
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "the openai SDK failed (pip install openai, or run scripts/test.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sdk: Value = serde_json::from_slice(&out.stdout).unwrap();
        let calls = sdk["calls"].as_array().unwrap();
        assert_eq!(calls.len(), 6, "{sdk}");
        assert_eq!(calls[0][0][0], "get_weather", "{sdk}");
        let first = &calls[0][0][1];
        if model == "tool-fixed" {
            assert_eq!(first, r#"{"city":"Paris","unit":"celsius"}"#, "{sdk}");
            assert!(calls.iter().all(|c| c == &calls[0]), "{sdk}");
        } else {
            assert_ne!(calls[0], calls[1], "{sdk}");
        }
    }
    let events = server
        .wait_events("agent-t", "", |evs| {
            evs.len() == 12 && evs.iter().all(|e| e["call_hash"].is_string())
        })
        .await;
    // Every request differed (the conversation grew); the stuck session's answers did not.
    let prints = |session: &str| {
        events
            .iter()
            .filter(|e| e["session_id"] == session)
            .map(|e| e["call_hash"].as_str().unwrap().to_string())
            .collect::<std::collections::HashSet<_>>()
    };
    assert_eq!(prints("stuck-1").len(), 1, "{events:#?}");
    assert_eq!(prints("refine-1").len(), 6, "{events:#?}");

    let loops = agent_loops(&server).await;
    assert_eq!(loops.len(), 1, "{loops:#?}");
    assert_eq!(loops[0]["consumer"], "agent-t");
    assert_eq!(loops[0]["evidence"]["session_id"], "stuck-1");
    assert_eq!(loops[0]["evidence"]["count"], 6);
    let (_, sessions) = server
        .admin(Method::GET, "/v1/sessions?consumer=agent-t", None)
        .await;
    let refine = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["session_id"] == "refine-1")
        .expect("the refining session")
        .clone();
    assert_eq!(refine["loops"], 0, "{refine}");
    assert_eq!(refine["longest_chain"]["calls"], 6, "{refine}");
}

/// The `agent_loop` findings of an evaluation asked for now.
async fn agent_loops(server: &Server) -> Vec<Value> {
    let (status, report) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200, "{report}");
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "agent_loop")
        .cloned()
        .collect()
}
