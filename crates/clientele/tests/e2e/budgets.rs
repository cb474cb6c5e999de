//! Budgets of AI traffic (`tokens_per_day`, `budget_usd_per_day`, ...): 30 concurrent requests
//! against a small budget, on one node and on two nodes sharing a real Redis. The budget must
//! hold: a check-then-increment limiter admits all 30 (litellm#34732), a reservation admits
//! while anything is left and settles to the provider's usage, so the spend ends within one
//! request's estimate of the budget.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::limits::Redis;
use crate::support::{Server, config_text, send};

/// What the provider reports per request.
const PROMPT: u64 = 10;
const COMPLETION: u64 = 40;
const TOKENS_PER_DAY: u64 = 500;

/// A provider that answers after `delay`, so a burst is in flight all at once; it counts the
/// requests it served.
async fn start_provider(delay: Duration) -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = Arc::new(AtomicU64::new(0));
    let counter = served.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let counter = counter.clone();
                    async move {
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        if body["model"] == "broken" {
                            // An error without usage: the provider charged nothing.
                            return Ok::<_, Infallible>(
                                Response::builder()
                                    .status(500)
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from_static(
                                        b"{\"error\":{\"message\":\"boom\"}}",
                                    )))
                                    .unwrap(),
                            );
                        }
                        tokio::time::sleep(delay).await;
                        counter.fetch_add(1, Ordering::SeqCst);
                        let answer = json!({
                            "id": "chatcmpl-b", "object": "chat.completion", "created": 1,
                            "model": body["model"],
                            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                         "finish_reason": "stop"}],
                            "usage": {"prompt_tokens": PROMPT, "completion_tokens": COMPLETION,
                                      "total_tokens": PROMPT + COMPLETION},
                        });
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(answer.to_string())))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    (addr, served)
}

fn ai_config(provider: SocketAddr, limits: &str) -> impl Fn(SocketAddr, SocketAddr) -> String {
    let limits = limits.to_string();
    move |gateway, admin| {
        config_text(gateway, admin, provider, &limits).replace(
            "[plans.free]",
            &format!(
                "[[apis]]\nname = \"ai\"\nupstream = \"http://{provider}\"\nprefix = \"/ai\"\n\
                 strip_prefix = true\ntimeout_ms = 5000\n\n\
                 [plans.metered]\nrate_per_second = 1000\nburst = 1000\ntokens_per_day = {TOKENS_PER_DAY}\n\n\
                 [plans.free]"
            ),
        )
    }
}

fn chat_body() -> Bytes {
    Bytes::from(
        json!({"model": "gpt-4o-mini", "max_tokens": COMPLETION,
               "messages": [{"role": "user", "content": "hi"}]})
        .to_string(),
    )
}

/// The tokens the gateway reserves for [`chat_body`]: its size over 4, plus `max_tokens`.
fn estimate() -> u64 {
    (chat_body().len() as u64).div_ceil(4) + COMPLETION
}

/// Sends `n` chat requests at once, spread over `urls`; their statuses, headers and bodies.
async fn burst(urls: &[String], key: &str, n: usize) -> Vec<(u16, http::HeaderMap, Value)> {
    let auth = format!("Bearer {key}");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (url, auth) = (urls[i % urls.len()].clone(), auth.clone());
            tokio::spawn(async move {
                let (status, headers, body) = send(
                    Method::POST,
                    &url,
                    &[
                        ("authorization", &auth),
                        ("content-type", "application/json"),
                    ],
                    Some(chat_body()),
                )
                .await
                .unwrap();
                (
                    status,
                    headers,
                    serde_json::from_slice(&body).unwrap_or(Value::Null),
                )
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Checks a burst's answers against the budget and returns how many were allowed.
fn check_burst(answers: &[(u16, http::HeaderMap, Value)]) -> u64 {
    let ok = answers.iter().filter(|a| a.0 == 200).count() as u64;
    let refused: Vec<_> = answers.iter().filter(|a| a.0 == 429).collect();
    assert_eq!(
        ok + refused.len() as u64,
        answers.len() as u64,
        "{answers:?}"
    );
    assert!(ok >= 1, "nothing was allowed");
    // The budget holds: the allowed requests' real use is at most one estimate past it
    // (a check-then-increment limiter would have let all 30 through: 1,500 tokens).
    assert!(
        ok * (PROMPT + COMPLETION) <= TOKENS_PER_DAY + estimate(),
        "{ok} requests allowed: {} tokens against a budget of {TOKENS_PER_DAY}",
        ok * (PROMPT + COMPLETION)
    );
    for (_, headers, body) in refused {
        assert!(
            body["type"].as_str().unwrap().ends_with("budget-exceeded"),
            "{body}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["budget"], "tokens_per_day", "{body}");
        assert_eq!(body["limit"], TOKENS_PER_DAY, "{body}");
        assert!(body["used"].as_u64().unwrap() >= TOKENS_PER_DAY, "{body}");
        assert!(body["resets_at"].as_str().unwrap().ends_with('Z'), "{body}");
        let policy = headers["ratelimit-policy"].to_str().unwrap();
        assert!(
            policy.starts_with("\"tokens_day\";q=500;w=86400") && policy.contains("qu=\"tokens\""),
            "{policy}"
        );
        assert!(
            headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with("\"tokens_day\";r=0;t="),
            "{headers:?}"
        );
        assert!(headers.contains_key("retry-after"));
    }
    ok
}

/// After a burst has settled: one request at a time until refused. The spend ends at the
/// budget, within one request's real use past it.
async fn fill(url: &str, key: &str, allowed: u64) -> u64 {
    let mut total = allowed;
    loop {
        let answers = burst(&[url.to_string()], key, 1).await;
        match answers[0].0 {
            200 => total += 1,
            429 => break,
            s => panic!("unexpected {s}: {:?}", answers[0]),
        }
        assert!(total < 30, "the budget never refused");
    }
    let spent = total * (PROMPT + COMPLETION);
    assert!(
        (TOKENS_PER_DAY..TOKENS_PER_DAY + PROMPT + COMPLETION).contains(&spent),
        "{total} requests, {spent} tokens, against {TOKENS_PER_DAY}"
    );
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_budget_holds_under_30_concurrent_requests() {
    let (provider, served) = start_provider(Duration::from_millis(400)).await;
    let server = Server::start_with(tempfile::tempdir().unwrap(), ai_config(provider, "")).await;
    let (_, key) = server.consumer_with_key("burner", Some("metered")).await;
    let url = server.gw("/ai/v1/chat/completions");
    // Failed requests give their reservations back: 20 × 60 reserved tokens would spend the
    // budget twice over if they stayed counted.
    let broken = Bytes::from(
        json!({"model": "broken", "max_tokens": COMPLETION, "messages": []}).to_string(),
    );
    for _ in 0..20 {
        let (status, _, _) = send(
            Method::POST,
            &url,
            &[
                ("authorization", &format!("Bearer {key}")),
                ("content-type", "application/json"),
            ],
            Some(broken.clone()),
        )
        .await
        .unwrap();
        assert_eq!(status, 500);
    }
    let answers = burst(std::slice::from_ref(&url), &key, 30).await;
    let ok = check_burst(&answers);
    assert_eq!(
        served.load(Ordering::SeqCst),
        ok,
        "refused requests never reach the provider"
    );
    assert!(
        ok >= TOKENS_PER_DAY / estimate(),
        "{ok}: reservations were not released"
    );
    let total = fill(&url, &key, ok).await;

    // The limits show the budget's use, settled to what the provider reported.
    let (_, lim) = server
        .admin(Method::GET, "/v1/consumers/burner/limits", None)
        .await;
    let b = &lim["budgets"][0];
    assert_eq!(b["budget"], "tokens_per_day", "{lim}");
    assert_eq!(b["limit"], TOKENS_PER_DAY as f64);
    assert_eq!(b["used"], (total * (PROMPT + COMPLETION)) as f64, "{lim}");
    assert_eq!(b["unit"], "tokens");

    // Every refusal is an event, and the allowed ones carry the provider's usage.
    let refused = 30 - ok + 1;
    let events = server
        .wait_events("burner", "", |evs| {
            evs.len() as u64 == 20 + 30 + (total - ok) + 1
        })
        .await;
    let budget_refused = events
        .iter()
        .filter(|e| e["outcome"] == "budget_exceeded")
        .count() as u64;
    assert_eq!(budget_refused, refused);
    let tokens: u64 = events.iter().filter_map(|e| e["tokens_out"].as_u64()).sum();
    assert_eq!(tokens, total * COMPLETION);

    // The budget_exceeded finding follows.
    let (status, report) = server
        .admin(Method::POST, "/v1/findings/evaluate", None)
        .await;
    assert_eq!(status, 200, "{report}");
    let found = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == "budget_exceeded")
        .unwrap_or_else(|| panic!("no budget_exceeded in {report:#}"))
        .clone();
    assert_eq!(found["consumer"], "burner");
    assert_eq!(found["evidence"]["refused"], refused, "{found}");
    assert_eq!(
        found["evidence"]["budgets"]["tokens_per_day"],
        TOKENS_PER_DAY
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dollar_budget_set_on_the_consumer_holds() {
    let (provider, served) = start_provider(Duration::from_millis(300)).await;
    let server = Server::start_with(tempfile::tempdir().unwrap(), ai_config(provider, "")).await;
    let (_, key) = server.consumer_with_key("spender", Some("pro")).await;
    // gpt-4o-mini: $0.15 in, $0.60 out per million; a request costs $0.0000255.
    let (status, body) = server
        .admin(
            Method::PUT,
            "/v1/consumers/spender/limits",
            Some(json!({"budget_usd_per_day": 0.0001})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let url = server.gw("/ai/v1/chat/completions");
    let answers = burst(std::slice::from_ref(&url), &key, 30).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count() as u64;
    let per_request = PROMPT as f64 * 0.15e-6 + COMPLETION as f64 * 0.60e-6;
    let est_usd = (estimate() - COMPLETION) as f64 * 0.15e-6 + COMPLETION as f64 * 0.60e-6;
    assert!(
        ok >= 1 && ok as f64 * per_request <= 0.0001 + est_usd,
        "{ok} allowed"
    );
    assert_eq!(served.load(Ordering::SeqCst), ok);
    let refusal = answers.iter().find(|a| a.0 == 429).expect("a refusal");
    assert_eq!(refusal.2["budget"], "budget_usd_per_day", "{}", refusal.2);
    assert_eq!(refusal.2["limit"], 0.0001, "{}", refusal.2);
    assert_eq!(refusal.2["unit"], "usd");
    // A bad value is refused with the field named.
    refused_naming(
        &server,
        "/v1/consumers/spender/limits",
        json!({"budget_usd_per_day": -1}),
        "budget_usd_per_day",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_hold_one_token_budget() {
    let redis = Redis::start();
    let (provider, served) = start_provider(Duration::from_millis(400)).await;
    let limits = format!(
        "\n[limits]\nredis_url = \"{}\"\nredis_timeout_ms = 200\n",
        redis.url()
    );
    let a = Server::start_with(tempfile::tempdir().unwrap(), ai_config(provider, &limits)).await;
    let data = a.dir.path().join("data");
    let make = ai_config(provider, &limits);
    let b = Server::start_with(tempfile::tempdir().unwrap(), move |gateway, admin| {
        make(gateway, admin).replace(
            "data_dir = \"data\"",
            &format!("data_dir = {data:?}\nevent_dir = \"events-b\""),
        )
    })
    .await;
    let (_, key) = a.consumer_with_key("cluster-burner", Some("metered")).await;
    // The second node learns of the key from the shared store.
    let url_b = b.gw("/ai/v1/chat/completions");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = send(
            Method::GET,
            &b.gw("/ai/v1/models"),
            &[("authorization", &format!("Bearer {key}"))],
            None,
        )
        .await
        .unwrap();
        if status != 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b never knew the key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let urls = [a.gw("/ai/v1/chat/completions"), url_b];
    let answers = burst(&urls, &key, 30).await;
    let ok = check_burst(&answers);
    // The GET above reached the provider too.
    assert_eq!(served.load(Ordering::SeqCst), ok + 1);
    fill(&urls[0], &key, ok).await;
    let (_, status) = a.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_mode"], "redis");
    assert_eq!(status["limiter_redis_errors"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_keeps_the_budget_used() {
    let (provider, _) = start_provider(Duration::from_millis(1)).await;
    let mut server =
        Server::start_with(tempfile::tempdir().unwrap(), ai_config(provider, "")).await;
    let (_, key) = server.consumer_with_key("steady", Some("metered")).await;
    let url = server.gw("/ai/v1/chat/completions");
    for _ in 0..3 {
        assert_eq!(burst(std::slice::from_ref(&url), &key, 1).await[0].0, 200);
    }
    server.wait_events("steady", "", |evs| evs.len() == 3).await;
    assert!(server.terminate().success());
    let dir = std::mem::replace(&mut server.dir, tempfile::tempdir().unwrap());
    let config = dir.path().join("clientele.toml");
    let restarted = Server::spawn(dir, &config, server.gateway, server.admin).await;
    let (_, lim) = restarted
        .admin(Method::GET, "/v1/consumers/steady/limits", None)
        .await;
    assert_eq!(
        lim["budgets"][0]["used"],
        (3 * (PROMPT + COMPLETION)) as f64,
        "the day's use is restored from the stored events: {}",
        lim["budgets"]
    );
}

/// [`ai_config`] with a plan whose only budget is per session.
fn session_config(provider: SocketAddr, limits: &str) -> impl Fn(SocketAddr, SocketAddr) -> String {
    let make = ai_config(provider, limits);
    move |gateway, admin| {
        make(gateway, admin).replace(
            "[plans.free]",
            &format!(
                "[plans.sessions]\nrate_per_second = 1000\nburst = 1000\n\
                 tokens_per_session = {TOKENS_PER_DAY}\n\n[plans.free]"
            ),
        )
    }
}

/// Sends `n` chat requests of session `session` at once, spread over `urls`.
async fn session_burst(
    urls: &[String],
    key: &str,
    session: Option<&str>,
    n: usize,
) -> Vec<(u16, Value)> {
    let auth = format!("Bearer {key}");
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let (url, auth) = (urls[i % urls.len()].clone(), auth.clone());
            let session = session.map(str::to_string);
            tokio::spawn(async move {
                let mut headers = vec![
                    ("authorization", auth.as_str()),
                    ("content-type", "application/json"),
                ];
                if let Some(s) = &session {
                    headers.push(("x-session-id", s.as_str()));
                }
                let (status, h, body) = send(Method::POST, &url, &headers, Some(chat_body()))
                    .await
                    .unwrap();
                let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                if status == 429 {
                    assert_eq!(h["content-type"], "application/problem+json");
                    let policy = h["ratelimit-policy"].to_str().unwrap();
                    assert!(
                        policy.starts_with("\"tokens_session\";q=500;w=86400")
                            && policy.contains("qu=\"tokens\""),
                        "{policy}"
                    );
                    assert!(h.contains_key("retry-after"));
                }
                (status, body)
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// 30 concurrent requests of one session against its 500-token budget, over `urls` (one node
/// or two sharing Redis): the session's spend holds within one estimate, another session and
/// a request without a session are not refused, and a failed request gives its estimate back.
async fn check_session_budget(urls: &[String], key: &str, served: &AtomicU64) {
    let before = served.load(Ordering::SeqCst);
    let answers = session_burst(urls, key, Some("run-1"), 30).await;
    let ok = answers.iter().filter(|a| a.0 == 200).count() as u64;
    assert_eq!(
        ok + answers.iter().filter(|a| a.0 == 429).count() as u64,
        30,
        "{answers:?}"
    );
    assert!(ok >= 1, "nothing was allowed");
    // Without the reservation all 30 would pass: 1,500 tokens against 500.
    assert!(
        ok * (PROMPT + COMPLETION) <= TOKENS_PER_DAY + estimate(),
        "{ok} requests of the session allowed: {} tokens against a session budget of {TOKENS_PER_DAY}",
        ok * (PROMPT + COMPLETION)
    );
    // Refused requests never reached the provider.
    assert_eq!(served.load(Ordering::SeqCst) - before, ok);
    for (status, body) in answers.iter().filter(|a| a.0 == 429) {
        assert!(
            body["type"].as_str().unwrap().ends_with("budget-exceeded"),
            "{status} {body}"
        );
        assert_eq!(body["budget"], "tokens_per_session", "{body}");
        assert_eq!(body["unit"], "tokens", "{body}");
        assert_eq!(body["limit"], TOKENS_PER_DAY, "{body}");
        assert!(body["used"].as_u64().unwrap() >= TOKENS_PER_DAY, "{body}");
        assert!(
            body["detail"].as_str().unwrap().contains("new session"),
            "{body}"
        );
    }
    // The settled session goes on until its real use reaches the budget, then stays refused.
    let mut total = ok;
    loop {
        match session_burst(&urls[..1], key, Some("run-1"), 1).await[0].0 {
            200 => total += 1,
            429 => break,
            s => panic!("unexpected {s}"),
        }
        assert!(total < 30, "the session budget never refused");
    }
    let spent = total * (PROMPT + COMPLETION);
    assert!(
        (TOKENS_PER_DAY..TOKENS_PER_DAY + PROMPT + COMPLETION).contains(&spent),
        "{total} requests, {spent} tokens, against {TOKENS_PER_DAY}"
    );
    // Another session of the same consumer, and a request naming none, pass.
    assert_eq!(session_burst(urls, key, Some("run-2"), 2).await[0].0, 200);
    assert_eq!(session_burst(urls, key, None, 1).await[0].0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_budget_holds_per_session_under_30_concurrent_requests() {
    let (provider, served) = start_provider(Duration::from_millis(400)).await;
    let server =
        Server::start_with(tempfile::tempdir().unwrap(), session_config(provider, "")).await;
    let (_, key) = server
        .consumer_with_key("session-burner", Some("sessions"))
        .await;
    let url = server.gw("/ai/v1/chat/completions");
    check_session_budget(&[url], &key, &served).await;
    // The refusals are events with the budget's outcome, in the refused session.
    let events = server
        .wait_events("session-burner", "", |evs| {
            evs.iter().any(|e| e["outcome"] == "budget_exceeded")
        })
        .await;
    assert!(
        events
            .iter()
            .filter(|e| e["outcome"] == "budget_exceeded")
            .all(|e| e["session_id"] == "run-1"),
        "{events:?}"
    );
    // The consumer's limits list the session budget.
    let (status, limits) = server
        .admin(Method::GET, "/v1/consumers/session-burner/limits", None)
        .await;
    assert_eq!(status, 200, "{limits}");
    assert_eq!(
        limits["session_budgets"],
        json!([{"budget": "tokens_per_session", "unit": "tokens", "limit": 500.0}]),
        "{limits}"
    );
    // A negative session budget is refused naming the field.
    refused_naming(
        &server,
        "/v1/consumers/session-burner/limits",
        json!({"budget_usd_per_session": -1.0}),
        "budget_usd_per_session",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_sharing_redis_hold_one_session_budget() {
    let redis = Redis::start();
    let (provider, served) = start_provider(Duration::from_millis(400)).await;
    let limits = format!(
        "\n[limits]\nredis_url = \"{}\"\nredis_timeout_ms = 200\n",
        redis.url()
    );
    let a = Server::start_with(
        tempfile::tempdir().unwrap(),
        session_config(provider, &limits),
    )
    .await;
    let data = a.dir.path().join("data");
    let make = session_config(provider, &limits);
    let b = Server::start_with(tempfile::tempdir().unwrap(), move |gateway, admin| {
        make(gateway, admin).replace(
            "data_dir = \"data\"",
            &format!("data_dir = {data:?}\nevent_dir = \"events-b\""),
        )
    })
    .await;
    let (_, key) = a
        .consumer_with_key("cluster-session", Some("sessions"))
        .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _, _) = send(
            Method::GET,
            &b.gw("/ai/v1/models"),
            &[("authorization", &format!("Bearer {key}"))],
            None,
        )
        .await
        .unwrap();
        if status != 401 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "node b never knew the key"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let urls = [
        a.gw("/ai/v1/chat/completions"),
        b.gw("/ai/v1/chat/completions"),
    ];
    check_session_budget(&urls, &key, &served).await;
    // The RateLimit fields of an allowed request carry the session budget from Redis too.
    check_session_headers(&urls[1], &key, "run-h").await;
    let (_, status) = a.admin(Method::GET, "/v1/status", None).await;
    assert_eq!(status["limiter_mode"], "redis");
    assert_eq!(status["limiter_redis_errors"], 0);
}

/// A limits update that is refused with 422, its detail naming `field`.
async fn refused_naming(server: &Server, path: &str, limits: Value, field: &str) {
    let (status, body) = server.admin(Method::PUT, path, Some(limits)).await;
    assert_eq!(status, 422, "{body}");
    assert!(body["detail"].as_str().unwrap().contains(field), "{body}");
}

/// An allowed request of a session with a per-session budget reports what is left of it in
/// the IETF RateLimit fields when it is the tightest limit (here against a rate of 1,000/s),
/// and a request naming no session reports the consumer's rate. `session` is new.
async fn check_session_headers(url: &str, key: &str, session: &'static str) {
    let auth = format!("Bearer {key}");
    let call = |session: Option<&'static str>| {
        let (url, auth) = (url.to_string(), auth.clone());
        async move {
            let mut headers = vec![
                ("authorization", auth.as_str()),
                ("content-type", "application/json"),
            ];
            if let Some(s) = session {
                headers.push(("x-session-id", s));
            }
            let (status, h, _) = send(Method::POST, &url, &headers, Some(chat_body()))
                .await
                .unwrap();
            assert_eq!(status, 200);
            let get = |name: &str| h[name].to_str().unwrap().to_string();
            (get("ratelimit-policy"), get("ratelimit"))
        }
    };
    let (policy, current) = call(Some(session)).await;
    assert!(
        policy.starts_with(&format!("\"tokens_session\";q={TOKENS_PER_DAY};w=")),
        "{policy}"
    );
    assert!(policy.contains("qu=\"tokens\""), "{policy}");
    // The request's own estimate is counted before it is forwarded.
    let left = TOKENS_PER_DAY - estimate();
    assert!(
        current.starts_with(&format!("\"tokens_session\";r={left};t=")),
        "{current}"
    );
    let (policy, _) = call(None).await;
    assert!(!policy.contains("tokens_session"), "{policy}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_request_reports_its_session_budget_in_the_ratelimit_fields() {
    let (provider, _) = start_provider(Duration::from_millis(1)).await;
    let server =
        Server::start_with(tempfile::tempdir().unwrap(), session_config(provider, "")).await;
    let (_, key) = server
        .consumer_with_key("session-headers", Some("sessions"))
        .await;
    check_session_headers(&server.gw("/ai/v1/chat/completions"), &key, "run-h").await;
}
