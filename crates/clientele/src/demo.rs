//! `clientele demo`: the first-run experience.
//!
//! Starts a sample upstream (a small pet-shop API), the gateway and admin API in front of it,
//! creates consumers with keys through the admin API, and sends synthetic traffic that contains
//! the cases aggregate dashboards hide: an integration whose orders fail, a runaway loop on
//! `/search`, a key shared across many machines, and a bursty AI agent. Before live traffic it
//! backfills two weeks of their history (`demo_history`), so every finding kind shows at once,
//! each on the consumer that earned it. Every few seconds it prints the per-consumer table and
//! the findings, read from the same API a user would query.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use clientele_http::Outbound;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::client::AdminClient;
use crate::server;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Gateway address; falls back to a free port when taken.
    #[arg(long, default_value = "127.0.0.1:8080")]
    gateway_listen: SocketAddr,
    /// Admin API address; falls back to a free port when taken.
    #[arg(long, default_value = "127.0.0.1:8081")]
    admin_listen: SocketAddr,
    /// Where to keep data. Default: a fresh folder under the system temp dir.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Stop after this many seconds (default: run until Ctrl-C).
    #[arg(long, value_name = "SECS")]
    duration: Option<u64>,
    /// Seconds between per-consumer tables.
    #[arg(long, default_value_t = 10)]
    report_every: u64,
}

/// A consumer the demo creates, and how it behaves.
struct Persona {
    id: &'static str,
    name: &'static str,
    plan: &'static str,
    team: &'static str,
    use_case: &'static str,
    behaviour: Behaviour,
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// Steady browsing and ordering.
    Steady { per_sec: f64 },
    /// Orders with a payload the API rejects: the integration bug.
    BrokenOrders { per_sec: f64 },
    /// A loop hammering /search.
    RunawaySearch { per_sec: f64 },
    /// One key used from many addresses and agents.
    SharedKey { per_sec: f64 },
    /// Silence, then dozens of calls in seconds.
    Agent,
    /// Governance: one key used by several applications on many networks.
    SharedAcrossApps { per_sec: f64 },
    /// Governance: walks /pets/{id} in sequence, far past the ids that exist.
    Scraper { per_sec: f64 },
    /// Governance: serves its own customers through its key (many end users).
    Reseller { per_sec: f64 },
}

const PERSONAS: &[Persona] = &[
    Persona {
        id: "acme",
        name: "Acme Corp",
        plan: "enterprise",
        team: "retail",
        use_case: "storefront",
        behaviour: Behaviour::Steady {
            per_sec: 60.0 * 0.7 / 3600.0,
        },
    },
    Persona {
        id: "globex",
        name: "Globex",
        plan: "pro",
        team: "logistics",
        use_case: "inventory-sync",
        behaviour: Behaviour::Steady {
            per_sec: 40.0 * 0.15 * 0.7 / 3600.0,
        },
    },
    Persona {
        id: "initech",
        name: "Initech",
        plan: "pro",
        team: "partners",
        use_case: "order-import",
        behaviour: Behaviour::BrokenOrders {
            per_sec: 30.0 * 0.7 / 3600.0,
        },
    },
    Persona {
        id: "umbrella",
        name: "Umbrella",
        plan: "free",
        team: "self-serve",
        use_case: "price-watch",
        behaviour: Behaviour::RunawaySearch { per_sec: 25.0 },
    },
    Persona {
        id: "hooli",
        name: "Hooli",
        plan: "free",
        team: "self-serve",
        use_case: "mobile-app",
        behaviour: Behaviour::SharedKey {
            per_sec: 30.0 * 0.7 / 3600.0,
        },
    },
    Persona {
        id: "smith-agent",
        name: "Smith (AI agent)",
        plan: "pro",
        team: "ai",
        use_case: "shopping-assistant",
        behaviour: Behaviour::Agent,
    },
    Persona {
        id: "stark",
        name: "Stark Industries",
        plan: "starter",
        team: "retail",
        use_case: "b2b-portal",
        behaviour: Behaviour::Steady {
            per_sec: 36.0 * 0.7 / 3600.0,
        },
    },
    // Governance cases: they show on the Governance page within a minute.
    Persona {
        id: "wayne",
        name: "Wayne Enterprises",
        plan: "trial",
        team: "self-serve",
        use_case: "internal dashboard",
        behaviour: Behaviour::SharedAcrossApps { per_sec: 2.0 },
    },
    Persona {
        id: "cyberdyne",
        name: "Cyberdyne",
        plan: "pro",
        team: "partners",
        use_case: "web app",
        behaviour: Behaviour::Scraper { per_sec: 10.0 },
    },
    Persona {
        id: "tyrell",
        name: "Tyrell Corp",
        plan: "free",
        team: "self-serve",
        use_case: "internal dashboard",
        behaviour: Behaviour::Reseller { per_sec: 4.0 },
    },
];

pub async fn run(args: DemoArgs) -> Result<()> {
    let data_dir = args.data_dir.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!(
            "clientele-demo-{}",
            clientele_core::keys::random_base62(8)
        ))
    });
    let upstream = start_upstream().await?;
    let gateway_listen = free_or_fallback(args.gateway_listen).await;
    let admin_listen = free_or_fallback(args.admin_listen).await;
    let token = format!("demo_{}", clientele_core::keys::random_base62(24));
    let config_text = format!(
        r#"
[gateway]
listen = "{gateway_listen}"
# The demo sends X-Forwarded-For from loopback to play clients on many addresses.
trusted_proxies = ["127.0.0.0/8"]

[admin]
listen = "{admin_listen}"
token = "{token}"

[storage]
data_dir = "{data}"

[[apis]]
name = "petstore"
upstream = "http://{upstream}"
prefix = "/"

[plans.free]
rate_per_second = 5
burst = 10
quota_per_day = 10000

[plans.free.policy]
max_end_users = 50
resale = "forbidden"

# A trial key is for one application: a key used from many networks is refused (403).
[plans.trial]
rate_per_second = 20
burst = 40

[plans.trial.policy]
max_networks_per_day = 3
action = "block"

[plans.pro]
rate_per_second = 100
burst = 200

[plans.enterprise]
rate_per_second = 1000
burst = 2000

[plans.starter]
rate_per_second = 10
burst = 20
quota_per_day = 700

# The demo has minutes, not weeks: detectors run every 10 s so findings show up quickly.
[detection]
interval_secs = 10
"#,
        data = data_dir
            .display()
            .to_string()
            .replace('\\', "\\\\")
            .replace('"', "\\\""),
    );
    let config = clientele_core::config::Config::parse(&config_text, "demo config", &data_dir)?;
    let running = server::start(config).await?;
    let admin_url = format!("http://{}", running.admin_addr);
    let gateway_url = format!("http://{}", running.gateway_addr);
    let admin = AdminClient::new(&admin_url, &running.admin_token)?;

    let mut keys = Vec::new();
    for p in PERSONAS {
        let body = json!({"id": p.id, "name": p.name, "plan": p.plan, "team": p.team, "use_case": p.use_case,
            "metadata": {"source": "demo"}});
        match admin.call(Method::POST, "/v1/consumers", Some(&body)).await {
            Ok(_) => {}
            // A reused --data-dir already has them.
            Err(e) if e.to_string().starts_with("409") => {}
            Err(e) => return Err(e),
        }
        let key = admin
            .call(
                Method::POST,
                &format!("/v1/consumers/{}/keys", p.id),
                Some(&json!({"name": "demo"})),
            )
            .await?;
        let key = key
            .get("key")
            .and_then(Value::as_str)
            .context("key missing from answer")?
            .to_string();
        keys.push((p, key));
    }

    // Two weeks of history first, then one evaluation over the last day, so the findings are
    // there before the first table.
    let started = std::time::Instant::now();
    let events = crate::demo_history::backfill(&admin, clientele_core::time::now_ms()).await?;
    let evaluated = admin
        .call(Method::POST, "/v1/findings/evaluate?lookback=1d", None)
        .await?;
    let conditions = evaluated
        .get("findings")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    println!(
        "backfilled {events} events of two weeks' history in {:.1} s; the detectors found {conditions} conditions",
        started.elapsed().as_secs_f64()
    );

    println!();
    println!("Clientele demo is running.");
    println!("  gateway     {gateway_url}   (sample pet-shop API behind it)");
    println!("  dashboard   {admin_url}/   (sign in with the admin token below)");
    println!(
        "  portal      {admin_url}/portal   (a consumer's own view; sign in with {}'s key {})",
        keys[0].0.id, keys[0].1
    );
    println!("  admin API   {admin_url}");
    println!("  admin token {}", running.admin_token);
    println!("  data        {}", running.data_dir.display());
    println!();
    println!("Try:");
    println!(
        "  curl -s -H 'Authorization: Bearer {}' '{admin_url}/v1/stats/consumers'",
        running.admin_token
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {}' '{admin_url}/v1/consumers/initech/events?status=4xx&limit=5'",
        running.admin_token
    );
    println!(
        "  curl -s -H 'Authorization: Bearer {}' '{admin_url}/v1/consumers/umbrella/limits'   # the runaway loop vs its free plan",
        running.admin_token
    );
    println!(
        "  CLIENTELE_ADMIN_URL={admin_url} CLIENTELE_ADMIN_TOKEN={} clientele consumers list",
        running.admin_token
    );
    println!(
        "  curl -s -H 'X-API-Key: {}' {gateway_url}/pets/1",
        keys[0].1
    );
    println!();
    println!(
        "Synthetic traffic from {} consumers; a per-consumer table follows every {} s. Ctrl-C stops.",
        keys.len(),
        args.report_every
    );

    let http = crate::client::http(Duration::from_secs(30))?;
    let traffic: Vec<_> = keys
        .into_iter()
        .map(|(p, key)| tokio::spawn(drive(p.behaviour, key, gateway_url.clone(), http.clone())))
        .collect();
    let reporter = tokio::spawn(report(admin, args.report_every.max(1)));

    match args.duration {
        Some(secs) => {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(secs)) => {}
                () = server::termination() => {}
            }
        }
        None => server::termination().await,
    }
    for t in traffic {
        t.abort();
    }
    reporter.abort();
    running.stop().await;
    println!("demo stopped; data kept in {}", data_dir.display());
    Ok(())
}

async fn free_or_fallback(addr: SocketAddr) -> SocketAddr {
    match std::net::TcpListener::bind(addr) {
        Ok(l) => l.local_addr().unwrap_or(addr),
        Err(_) => {
            let fallback = SocketAddr::new(addr.ip(), 0);
            match std::net::TcpListener::bind(fallback).and_then(|l| l.local_addr()) {
                Ok(a) => {
                    eprintln!("note: {addr} is taken; using {a}");
                    a
                }
                Err(_) => addr,
            }
        }
    }
}

/// A cheap pseudo-random source; the demo needs variety, not security.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut seed = [0u8; 8];
        clientele_core::keys::fill_random(&mut seed);
        Rng(u64::from_le_bytes(seed) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, p: f64) -> bool {
        (self.next() % 10_000) as f64 / 10_000.0 < p
    }
}

async fn drive(behaviour: Behaviour, key: String, gateway: String, http: Outbound<Full<Bytes>>) {
    let mut rng = Rng::new();
    let send =
        |method: Method, path: String, body: Option<Value>, extra: Vec<(&'static str, String)>| {
            let mut req = Request::builder()
                .method(method)
                .uri(format!("{gateway}{path}"))
                .header("x-api-key", key.as_str())
                .header(header::CONTENT_TYPE, "application/json");
            for (k, v) in extra {
                req = req.header(k, v);
            }
            let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
            let req = req.body(Full::new(body));
            let http = http.clone();
            async move {
                if let Ok(req) = req {
                    if let Ok(resp) = http.request(req).await {
                        let _ = resp.into_body().collect().await;
                    }
                }
            }
        };
    let pace = |per_sec: f64| Duration::from_secs_f64(1.0 / per_sec);
    // The scraper's position in the id space.
    let mut walked: u64 = 0;
    loop {
        match behaviour {
            Behaviour::Steady { per_sec } => {
                let pet = rng.below(50) + 1;
                match rng.below(10) {
                    0..=5 => send(Method::GET, format!("/pets/{pet}"), None, vec![]).await,
                    6..=7 => send(Method::GET, "/pets?limit=20".into(), None, vec![]).await,
                    8 => {
                        send(
                            Method::GET,
                            format!("/search?q=toy{}", rng.below(9)),
                            None,
                            vec![],
                        )
                        .await
                    }
                    _ => {
                        send(
                            Method::POST,
                            "/orders".into(),
                            Some(json!({"pet_id": pet, "qty": 1 + rng.below(3)})),
                            vec![],
                        )
                        .await
                    }
                }
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::BrokenOrders { per_sec } => {
                let pet = rng.below(50) + 1;
                if rng.chance(0.6) {
                    // Since "their last release" the quantity is sent as a string.
                    send(
                        Method::POST,
                        "/orders".into(),
                        Some(json!({"pet_id": pet, "qty": "two"})),
                        vec![],
                    )
                    .await;
                } else {
                    send(Method::GET, format!("/pets/{pet}"), None, vec![]).await;
                }
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::RunawaySearch { per_sec } => {
                // A loop that does not wait for answers: fire and move on.
                tokio::spawn(send(
                    Method::GET,
                    "/search?q=cheap+cat".into(),
                    None,
                    vec![],
                ));
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::SharedKey { per_sec } => {
                let ip = format!("198.51.100.{}", 1 + rng.below(60));
                let ua = [
                    "HooliApp/3.1 iOS",
                    "HooliApp/3.1 Android",
                    "python-requests/2.31",
                    "curl/8.5",
                ][rng.below(4) as usize];
                send(
                    Method::GET,
                    format!("/pets/{}", rng.below(50) + 1),
                    None,
                    vec![("x-forwarded-for", ip), ("user-agent", ua.into())],
                )
                .await;
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::Agent => {
                let session = format!("sess-{}", rng.next() % 1_000_000);
                let calls = 20 + rng.below(30);
                for i in 0..calls {
                    let path = if i % 3 == 0 {
                        "/v1/chat/completions".to_string()
                    } else {
                        format!("/pets/{}", rng.below(50) + 1)
                    };
                    let method = if i % 3 == 0 {
                        Method::POST
                    } else {
                        Method::GET
                    };
                    let body = (i % 3 == 0).then(|| json!({"model": "gpt-demo", "messages": [{"role": "user", "content": "find me a calm cat"}]}));
                    send(method, path, body, vec![("x-session-id", session.clone())]).await;
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(100))).await;
                }
                // An hour's worth of bursts is one to three, as in its history.
                tokio::time::sleep(Duration::from_secs(20 * 60 + rng.below(40 * 60))).await;
            }
            Behaviour::SharedAcrossApps { per_sec } => {
                // Each application runs on its own network (a /24 of its own).
                let app = rng.below(12);
                let ip = format!("203.0.{}.{}", 10 + app, 1 + rng.below(200));
                let ua = format!("wayne-app-{}/1.0", app % 5);
                let path = format!("/pets/{}", rng.below(45) + 1);
                send(
                    Method::GET,
                    path,
                    None,
                    vec![("x-forwarded-for", ip), ("user-agent", ua)],
                )
                .await;
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::Scraper { per_sec } => {
                // Every id in turn, at a machine's fixed pace: most of them do not exist.
                walked += 1;
                let id = walked;
                send(
                    Method::GET,
                    format!("/pets/{id}"),
                    None,
                    vec![("user-agent", "crawler/0.1".into())],
                )
                .await;
                tokio::time::sleep(pace(per_sec)).await;
            }
            Behaviour::Reseller { per_sec } => {
                let customer = format!("tyrell-customer-{}", rng.below(400));
                let path = format!("/pets/{}", rng.below(45) + 1);
                send(Method::GET, path, None, vec![("x-end-user-id", customer)]).await;
                tokio::time::sleep(pace(per_sec)).await;
            }
        }
    }
}

async fn report(admin: AdminClient, every: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs(every)).await;
        let Ok(stats) = admin.call(Method::GET, "/v1/stats/consumers", None).await else {
            continue;
        };
        let rows: Vec<Vec<String>> = stats
            .get("consumers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let n = |f: &str| c.get(f).and_then(Value::as_u64).unwrap_or(0).to_string();
                let s = |f: &str| c.get(f).and_then(Value::as_str).unwrap_or("-").to_string();
                let rate = c.get("error_rate").and_then(Value::as_f64).unwrap_or(0.0);
                let p99 = c
                    .get("p99_ms")
                    .and_then(Value::as_f64)
                    .map_or_else(|| "-".to_string(), |v| format!("{v:.1}"));
                vec![
                    s("consumer"),
                    s("plan"),
                    n("requests"),
                    n("errors_4xx"),
                    n("errors_5xx"),
                    format!("{:.1}%", rate * 100.0),
                    n("rate_limited"),
                    p99,
                ]
            })
            .collect();
        println!();
        crate::cli::print_table(
            &[
                "CONSUMER",
                "PLAN",
                "REQUESTS",
                "4XX",
                "5XX",
                "ERROR RATE",
                "429",
                "P99 MS",
            ],
            &rows,
        );
        // What the detectors noticed: kind, consumer and one sentence each.
        if let Ok(found) = admin.call(Method::GET, "/v1/findings?limit=30", None).await {
            let found = found
                .get("findings")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if !found.is_empty() {
                println!("\nFINDINGS");
                for f in found {
                    let sev = f.get("severity").and_then(Value::as_str).unwrap_or("");
                    let summary = f.get("summary").and_then(Value::as_str).unwrap_or("");
                    let kind = f.get("kind").and_then(Value::as_str).unwrap_or("");
                    let who = f.get("consumer").and_then(Value::as_str).unwrap_or("API");
                    println!("  [{sev}] {kind} ({who}): {summary}");
                }
            }
        }
    }
}

/// The sample upstream: a small pet-shop API with realistic latency.
async fn start_upstream() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot start the sample upstream")?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let counter = counter.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let counter = counter.clone();
                    async move { Ok::<_, Infallible>(sample_api(req, &counter).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn sample_api(
    req: Request<Incoming>,
    counter: &std::sync::atomic::AtomicU64,
) -> Response<Full<Bytes>> {
    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (status, latency_ms, payload) = match (method.as_str(), segs.as_slice()) {
        ("GET", ["pets"]) => (
            200,
            15 + n % 20,
            json!({"pets": (1..=20).map(|i| json!({"id": i, "name": format!("pet-{i}")})).collect::<Vec<_>>()}),
        ),
        ("GET", ["pets", id]) => match id.parse::<u64>() {
            Ok(i) if i <= 45 => (
                200,
                5 + n % 10,
                json!({"id": i, "name": format!("pet-{i}"), "status": "available"}),
            ),
            Ok(_) => (404, 3, json!({"error": "pet not found"})),
            Err(_) => (400, 2, json!({"error": "pet id must be a number"})),
        },
        ("GET", ["search"]) => (200, 40 + n % 60, json!({"results": []})),
        ("POST", ["orders"]) => match serde_json::from_slice::<Value>(&body) {
            Ok(v) if v.get("qty").and_then(Value::as_u64).is_some() => {
                (201, 20 + n % 30, json!({"order_id": n, "status": "placed"}))
            }
            Ok(_) => (422, 8, json!({"error": "qty must be an integer"})),
            Err(_) => (400, 2, json!({"error": "body must be JSON"})),
        },
        ("POST", ["v1", "chat", "completions"]) => (
            200,
            200 + n % 400,
            json!({"choices": [{"message": {"content": "Try pet 7."}}], "usage": {"prompt_tokens": 120, "completion_tokens": 40}}),
        ),
        _ => (404, 1, json!({"error": "not found"})),
    };
    // One request in 200 is slow, as in any real backend.
    let latency = if n % 200 == 0 {
        latency_ms * 10
    } else {
        latency_ms
    };
    tokio::time::sleep(Duration::from_millis(latency)).await;
    let mut resp = Response::new(Full::new(Bytes::from(payload.to_string())));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}
