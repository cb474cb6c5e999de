//! The request lifecycle: identify, route, forward, capture.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clientele_core::config::OutboundTls;
use clientele_core::config::{ApiConfig, LlmMode, Upstream, parse_upstream};
use clientele_core::event::{Event, Outcome, random_id128};
use clientele_core::keys::{KeyEntry, KeyIndex, Lookup};
use clientele_core::limits::{BudgetCharge, Decision, LimitKind, LimitStatus};
use clientele_core::pipeline::EventSink;
use clientele_core::problem::{self, Problem};
use clientele_core::route::infer_template;
use clientele_http::{ClientOptions, Failure, FailureKind, Outbound, Timeouts};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use hyper::body::Incoming;
use ipnet::IpNet;

use crate::body::{
    BodyFault, BodyTooLarge, ClientBodyError, Fault, RequestBody, ResponseBody, Tee,
};
use crate::headers::{self as h, KeySource, PresentedKey, TraceContext};
use crate::limiter::{Limiter, Verdict};
use crate::llm::{Flavor, flavor_of_path};
use crate::llm_request::PEEK_MAX;

/// Gateway settings that are not per API.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    pub trusted_proxies: Vec<IpNet>,
    pub session_header: String,
    /// Request header naming the end user behind a call, recorded on the event.
    pub end_user_header: String,
    /// 0 = no limit.
    pub max_request_body_bytes: u64,
    /// Remove the credential that carried the Clientele key before forwarding, so upstreams
    /// never see consumers' keys.
    pub hide_credentials: bool,
    /// `[outbound]`: trust for `https://` upstreams without settings of their own.
    pub outbound_tls: OutboundTls,
    /// What LLM tokens cost: the shipped book with the config's `[prices]`.
    pub prices: Arc<clientele_core::prices::PriceBook>,
    /// `[agents] max_identical_calls`: refuse a session's repeats past it.
    pub max_identical_calls: Option<u32>,
}

/// One API behind the gateway.
struct Api {
    name: Arc<str>,
    prefix: String,
    strip_prefix: bool,
    upstream: Upstream,
    timeout: Duration,
    /// Pooled connections to the upstream, over TLS for `https://`.
    client: Outbound<RequestBody>,
    /// The same, HTTP/1.1 only, for `Upgrade` requests (HTTP/2 has no upgrade).
    upgrades: Outbound<RequestBody>,
    /// The API's OpenAPI contract, when it has one: routes become the spec's templates.
    contract: Option<Arc<clientele_contract::ApiContract>>,
    /// Sampling for schema validation, as thresholds on a uniform u64 draw.
    request_sample: u64,
    response_sample: u64,
    /// Per-operation thresholds by `"METHOD /template"`; empty for most APIs, so the common
    /// case costs no lookup.
    op_samples: std::collections::HashMap<String, (u64, u64)>,
    max_body_bytes: usize,
    /// `llm`: `None` reads usage on the well-known paths only.
    llm: Option<LlmMode>,
    /// The provider's credentials, set on every request upstream (config values, expanded).
    upstream_headers: Vec<(HeaderName, HeaderValue)>,
    /// `llm_include_usage`: add `stream_options.include_usage` to OpenAI streamed requests.
    include_usage: bool,
}

/// `rate` (0..=1) as a threshold on a uniform u64: sampled when `draw < threshold`.
fn threshold(rate: f64) -> u64 {
    if rate >= 1.0 {
        u64::MAX
    } else {
        (rate.max(0.0) * u64::MAX as f64) as u64
    }
}

/// The data plane. Shared by every connection through an `Arc`.
pub struct Gateway {
    /// Sorted by prefix length, longest first, so the first match wins.
    apis: Vec<Api>,
    keys: Arc<KeyIndex>,
    limiter: Arc<Limiter>,
    sink: EventSink,
    options: GatewayOptions,
    session_header: Option<HeaderName>,
    end_user_header: Option<HeaderName>,
    /// Whether connections arrive over TLS, for `X-Forwarded-Proto`.
    tls: AtomicBool,
    in_flight: AtomicU64,
    /// The validator's queue, when some API has a spec.
    samples: Option<clientele_contract::SampleSender>,
    /// Counts sessions' identical calls when `max_identical_calls` is set.
    calls: Option<crate::agents::CallGuard>,
}

/// Context gathered before the request is forwarded, used to fill the event.
struct Seen {
    started: Instant,
    event: Event,
}

impl Gateway {
    pub fn new(
        apis: &[ApiConfig],
        options: GatewayOptions,
        keys: Arc<KeyIndex>,
        limiter: Arc<Limiter>,
        sink: EventSink,
    ) -> Result<Gateway, String> {
        let mut built = Vec::with_capacity(apis.len());
        for api in apis {
            let upstream = parse_upstream(&api.upstream)
                .map_err(|e| format!("api {}: upstream {e}", api.name))?;
            let mut upstream_headers = Vec::with_capacity(api.upstream_headers.len());
            for (name, value) in &api.upstream_headers {
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|e| format!("api {}: upstream_headers {name}: {e}", api.name))?;
                let mut value = HeaderValue::from_str(value)
                    .map_err(|e| format!("api {}: upstream_headers {name}: {e}", api.name))?;
                value.set_sensitive(true);
                upstream_headers.push((name, value));
            }
            let mut client_options = ClientOptions {
                tls: api.tls(&options.outbound_tls),
                timeouts: Timeouts {
                    connect: Duration::from_millis(api.connect_timeout_ms),
                    request: Duration::from_millis(api.timeout_ms),
                },
                pool_idle: Duration::from_secs(90),
                pool_max_idle_per_host: 1024,
                http1_only: false,
            };
            let client =
                Outbound::new(&client_options).map_err(|e| format!("api {}: {e}", api.name))?;
            client_options.http1_only = true;
            let upgrades =
                Outbound::new(&client_options).map_err(|e| format!("api {}: {e}", api.name))?;
            built.push(Api {
                name: api.name.as_str().into(),
                prefix: api.prefix.clone(),
                strip_prefix: api.strip_prefix,
                upstream,
                timeout: Duration::from_millis(api.timeout_ms),
                client,
                upgrades,
                contract: None,
                request_sample: threshold(api.request_sample_rate),
                response_sample: threshold(api.response_sample_rate),
                op_samples: api
                    .sample_rates
                    .iter()
                    .map(|(op, r)| {
                        (
                            op.clone(),
                            (
                                threshold(r.request.unwrap_or(api.request_sample_rate)),
                                threshold(r.response.unwrap_or(api.response_sample_rate)),
                            ),
                        )
                    })
                    .collect(),
                max_body_bytes: usize::try_from(api.max_body_bytes).unwrap_or(usize::MAX),
                llm: api.llm,
                upstream_headers,
                include_usage: api.llm_include_usage,
            });
        }
        built.sort_by_key(|api| std::cmp::Reverse(api.prefix.len()));
        let session_header = HeaderName::from_bytes(options.session_header.as_bytes()).ok();
        let calls = options
            .max_identical_calls
            .map(crate::agents::CallGuard::new);
        let end_user_header = HeaderName::from_bytes(options.end_user_header.as_bytes()).ok();
        Ok(Gateway {
            apis: built,
            keys,
            limiter,
            sink,
            options,
            session_header,
            end_user_header,
            tls: AtomicBool::new(false),
            in_flight: AtomicU64::new(0),
            samples: None,
            calls,
        })
    }

    /// Gives each API with a spec its contract, so events carry the spec's route templates,
    /// and the validator's queue that sampled exchanges go to.
    pub fn set_contracts(
        &mut self,
        contracts: &clientele_contract::Contracts,
        samples: Option<clientele_contract::SampleSender>,
    ) {
        for api in &mut self.apis {
            api.contract = contracts.api(&api.name).cloned();
        }
        self.samples = samples;
    }

    fn draw(&self) -> u64 {
        clientele_core::event::fast_random_u64()
    }

    /// Decides whether this exchange is sampled for schema validation and prepares the copies.
    /// Costs two thread-local random draws when sampling is off for the request.
    fn sampling(
        &self,
        api: &Api,
        parts: &http::request::Parts,
        relative: &str,
        event: &Event,
    ) -> Option<(
        crate::body::PendingSample,
        Option<Arc<std::sync::Mutex<Tee>>>,
    )> {
        let sender = self.samples.as_ref()?;
        api.contract.as_ref()?;
        let consumer = event.consumer.clone()?;
        let op = format!("{} {}", event.method, event.route);
        let (req_t, resp_t) = if api.op_samples.is_empty() {
            (api.request_sample, api.response_sample)
        } else {
            api.op_samples
                .get(&op)
                .copied()
                .unwrap_or((api.request_sample, api.response_sample))
        };
        // The first exchanges of each consumer and operation every hour are checked in full,
        // then the rate applies: a quiet consumer is never invisible to schema checks.
        let first = (req_t > 0 || resp_t > 0) && sender.first_of_hour(&consumer, &op, event.ts_ms);
        let request = req_t > 0 && (first || self.draw() < req_t);
        let response = resp_t > 0 && (first || self.draw() < resp_t);
        if !request && !response {
            return None;
        }
        let json = |v: Option<&HeaderValue>| {
            v.and_then(|v| v.to_str().ok()).is_none_or(|t| {
                t.split(';')
                    .next()
                    .is_some_and(|t| t.trim().ends_with("json"))
            })
        };
        let req_tee = (request && json(parts.headers.get(header::CONTENT_TYPE)))
            .then(|| Arc::new(std::sync::Mutex::new(Tee::new(api.max_body_bytes))));
        let path = match parts.uri.query() {
            Some(q) => format!("{relative}?{q}"),
            None => relative.to_string(),
        };
        Some((
            crate::body::PendingSample {
                sample: clientele_contract::Sample {
                    api: api.name.to_string(),
                    consumer,
                    method: parts.method.as_str().to_string(),
                    path,
                    ts_ms: event.ts_ms,
                    check_parameters: request,
                    request_body: Default::default(),
                    status: 0,
                    response_body: Default::default(),
                },
                request: req_tee.clone(),
                response: response.then(|| Tee::new(api.max_body_bytes)),
                sender: sender.clone(),
            },
            req_tee,
        ))
    }

    pub(crate) fn set_tls(&self, tls: bool) {
        self.tls.store(tls, Ordering::Relaxed);
    }

    /// Requests currently being handled (headers received, response not yet started).
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    fn route(&self, path: &str) -> Option<&Api> {
        self.apis
            .iter()
            .find(|api| prefix_matches(&api.prefix, path))
    }

    /// Phase 0 ([`crate::path`]): refuses malformed heads, normalises the path and routes it.
    /// A path whose `..` segments leave the prefix of the API it addressed is refused, so
    /// `/pub/../secret` cannot reach what `/pub` does not expose.
    fn check_and_route(
        &self,
        parts: &http::request::Parts,
    ) -> Result<(String, Option<&Api>), crate::path::Refused> {
        let normal = crate::path::check_request(parts)?;
        let api = self.route(&normal.path);
        if let Some(addressed) = normal.before_dot_dot.as_deref().and_then(|p| self.route(p)) {
            if !prefix_matches(&addressed.prefix, &normal.path) {
                return Err(crate::path::Refused {
                    status: StatusCode::BAD_REQUEST,
                    slug: "bad-path",
                    title: "Invalid request path",
                    detail: format!(
                        "the path's '..' segments climb above the prefix {} of the {} API",
                        addressed.prefix, addressed.name
                    ),
                });
            }
        }
        Ok((normal.path.into_owned(), api))
    }

    /// Handles one request from start to response head. The body streams afterwards; the
    /// event is emitted by the response body when it completes.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        let response = self.handle_inner(req, peer).await;
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        response
    }

    async fn handle_inner(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Response<ResponseBody> {
        let started = Instant::now();
        let (mut parts, body) = req.into_parts();
        let trace = h::parse_traceparent(&parts.headers).unwrap_or_else(|| TraceContext {
            trace_id: random_id128(),
            flags: "01".to_string(),
        });
        let client_ip = h::client_ip(peer.ip(), &parts.headers, &self.options.trusted_proxies);
        let header_str = |name: &HeaderName| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| truncate(s, 512))
        };
        let ts_ms = clientele_core::time::now_ms();
        let mut seen = Seen {
            started,
            event: Event {
                id: clientele_core::event::event_id(ts_ms),
                ts_ms,
                consumer: None,
                key_id: None,
                api: None,
                method: parts.method.as_str().to_string(),
                path: truncate(parts.uri.path(), 2048),
                route: String::new(),
                status: 0,
                latency_ms: 0.0,
                upstream_latency_ms: None,
                request_bytes: 0,
                response_bytes: 0,
                client_ip: Some(client_ip.to_string()),
                user_agent: header_str(&header::USER_AGENT),
                session_id: self.session_header.as_ref().and_then(header_str),
                end_user: self.end_user_header.as_ref().and_then(header_str),
                trace_id: Some(trace.trace_id.clone()),
                outcome: Outcome::Proxied,
                plan: None,
                team: None,
                use_case: None,
                model: None,
                tokens_in: None,
                tokens_out: None,
                cost_usd: None,
                close_code: None,
                call_hash: None,
                tokens_cached: None,
                tokens_cache_write: None,
                tokens_reasoning: None,
                // The connection's, set once at its TLS handshake (`server::handshake`).
                tls_fp: parts
                    .extensions
                    .get::<crate::server::TlsFingerprint>()
                    .map(|f| f.0.to_string()),
            },
        };

        // Phase 0: is the request well-formed? From here on, only the normalised path is used.
        let (path, api) = match self.check_and_route(&parts) {
            Ok(checked) => checked,
            Err(r) => {
                return self.refuse(
                    seen,
                    r.status,
                    Outcome::BadRequest,
                    r.slug,
                    r.title,
                    r.detail,
                );
            }
        };
        seen.event.path = truncate(&path, 2048);

        // Phase 1: who is calling?
        if let Some(api) = api {
            seen.event.api = Some(api.name.to_string());
            let relative = api_relative_path(api, &path);
            // With a spec, the route is the operation's template: one trie walk, nothing more
            // (validation happens off the hot path, in the pipeline).
            seen.event.route = api
                .contract
                .as_ref()
                .and_then(|c| c.route_template(parts.method.as_str(), relative))
                .unwrap_or_else(|| infer_template(relative));
        } else {
            seen.event.route = infer_template(&path);
        }
        let (key, source) = match h::presented_key(&parts.headers) {
            PresentedKey::Key(key, source) => (key, source),
            PresentedKey::Missing => {
                return self.refuse(
                    seen,
                    StatusCode::UNAUTHORIZED,
                    Outcome::MissingKey,
                    "missing-api-key",
                    "Missing API key",
                    "send your API key in the X-API-Key header or as Authorization: Bearer <key>",
                );
            }
            PresentedKey::Malformed(_) => {
                return self.refuse(
                    seen,
                    StatusCode::UNAUTHORIZED,
                    Outcome::UnknownKey,
                    "invalid-api-key",
                    "Invalid API key",
                    "the API key is not well-formed; send it exactly as it was issued",
                );
            }
        };
        let entry = match self.keys.lookup(key, seen.event.ts_ms) {
            Lookup::Valid(entry) => entry,
            Lookup::Unknown => {
                return self.refuse(
                    seen,
                    StatusCode::UNAUTHORIZED,
                    Outcome::UnknownKey,
                    "invalid-api-key",
                    "Invalid API key",
                    "the API key is not recognised; check that you copied it completely",
                );
            }
            Lookup::Revoked(entry) => {
                attribute(&mut seen.event, &entry);
                return self.refuse(seen, StatusCode::UNAUTHORIZED, Outcome::RevokedKey, "revoked-api-key", "Revoked API key",
                    "this API key has been revoked; create a new key or ask the API's owner for one");
            }
            Lookup::Expired(entry) => {
                attribute(&mut seen.event, &entry);
                return self.refuse(
                    seen,
                    StatusCode::UNAUTHORIZED,
                    Outcome::ExpiredKey,
                    "expired-api-key",
                    "Expired API key",
                    "this API key has expired; create a new key or ask the API's owner for one",
                );
            }
        };
        attribute(&mut seen.event, &entry);

        // Phase 2: where does it go?
        let Some(api) = api else {
            return self.refuse(
                seen,
                StatusCode::NOT_FOUND,
                Outcome::NoRoute,
                "no-route",
                "No API at this path",
                format!(
                    "no API is configured for the path {}; check the URL",
                    truncate(&path, 200)
                ),
            );
        };

        // Phase 3: is the consumer within its plan's policy and its limits? Refused requests
        // never reach the upstream, and are recorded like any other. The policy verdict was
        // judged off the hot path; here it is one atomic load.
        if let Some(rule) = entry.slot.as_ref().and_then(|s| s.policy_block()) {
            return self.refuse_policy(seen, rule);
        }
        let relative = api_relative_path(api, &path);
        let llm = match api.llm {
            Some(LlmMode::Off) => None,
            Some(LlmMode::Openai) => Some(Flavor::OpenAi),
            Some(LlmMode::Anthropic) => Some(Flavor::Anthropic),
            None => flavor_of_path(relative),
        };
        let limit = self.options.max_request_body_bytes;
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        // Budgets of the consumer, or of its session when the client names one.
        let budgets = entry.slot.as_ref().is_some_and(|s| {
            s.policy.budgets.any()
                || (s.policy.session_budgets.any() && seen.event.session_id.is_some())
        });
        // A small JSON body of an LLM request is read first when a budget needs its
        // `max_tokens` or a stream needs `include_usage` (bounded by PEEK_MAX; see
        // `llm_request`). Everything else streams.
        let mut body = Some(body);
        let mut read = None;
        let mut facts = None;
        let inject =
            api.include_usage && llm == Some(Flavor::OpenAi) && relative.ends_with("/completions");
        // With `max_identical_calls`, a session's call needs its fingerprint before it is
        // forwarded: its small body is read first too.
        let guard = self
            .calls
            .as_ref()
            .and_then(|g| seen.event.session_id.clone().map(|s| (g, s)));
        let json_post =
            parts.method == http::Method::POST && is_json(parts.headers.get(header::CONTENT_TYPE));
        let for_llm = llm.is_some() && (budgets || inject) && json_post;
        // An MCP server's JSON-RPC `tools/call` is attributed to its tool: the small body is
        // read first for the tool's name (see `mcp_tool`).
        let for_mcp = json_post && is_mcp_path(relative);
        let mut read_print = None;
        if (for_llm || for_mcp || guard.is_some())
            && declared.is_some_and(|n| n > 0 && n <= PEEK_MAX && (limit == 0 || n <= limit))
            && let Some(incoming) = body.take()
        {
            match tokio::time::timeout(api.timeout, crate::body::read_small(incoming, PEEK_MAX))
                .await
            {
                Ok(Ok(bytes)) => {
                    read_print = Some(crate::body::BodyPrint::of(&bytes));
                    if for_llm {
                        facts = crate::llm_request::read_facts(&bytes);
                    }
                    if for_mcp && let Some(tool) = mcp_tool(&bytes) {
                        seen.event.route = tool;
                    }
                    let rewritten = facts
                        .as_ref()
                        .filter(|_| inject)
                        .and_then(|f| crate::llm_request::with_include_usage(&bytes, f));
                    if let Some(new) = &rewritten {
                        parts
                            .headers
                            .insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
                    }
                    read = Some((rewritten.unwrap_or_else(|| bytes.clone()), bytes.len()));
                }
                Ok(Err(fault)) => {
                    return self.refuse_body(seen, Arc::new(AtomicU64::new(0)), fault, limit);
                }
                Err(_) => {
                    return self.refuse(
                        seen,
                        StatusCode::REQUEST_TIMEOUT,
                        Outcome::BadRequest,
                        "request-timeout",
                        "Request body too slow",
                        format!(
                            "the request body did not arrive within {} ms",
                            api.timeout.as_millis()
                        ),
                    );
                }
            }
        }
        let print_known = read_print.is_some()
            || (declared.unwrap_or(0) == 0
                && !parts.headers.contains_key(header::TRANSFER_ENCODING));
        let print = Arc::new(read_print.unwrap_or_default());
        let head_print =
            crate::body::head_print(parts.method.as_str(), relative, parts.uri.query());
        if let Some((guard, session)) = &guard
            && print_known
        {
            let call = crate::body::call_hash(head_print, print.get());
            if let Some(n) = guard.repeat(&entry.consumer, session, call, seen.event.ts_ms) {
                let detail = format!(
                    "this session ({session}) has made this identical call (same method, path, query and body) {n} times; the gateway refuses repeats past {} ([agents] max_identical_calls). Change the request, or start a new session if the repeat is intended",
                    guard.max()
                );
                seen.event.call_hash = Some(call);
                return self.refuse(
                    seen,
                    StatusCode::TOO_MANY_REQUESTS,
                    Outcome::LoopRefused,
                    "identical-call-repeated",
                    "Identical call repeated",
                    detail,
                );
            }
        }
        let charge = if budgets && llm.is_some() {
            crate::llm_request::estimate(facts.as_ref(), declared, &self.options.prices)
        } else {
            BudgetCharge::default()
        };
        let mut limit_status = None;
        let mut reservation = crate::limiter::Reservation::default();
        if let Some(slot) = &entry.slot {
            let (verdict, held) = self
                .limiter
                .check(
                    &entry.consumer,
                    seen.event.session_id.as_deref(),
                    slot,
                    &seen.event.method,
                    &seen.event.route,
                    seen.event.ts_ms,
                    charge,
                )
                .await;
            reservation = held;
            match verdict {
                Verdict::Decided(Decision::Unlimited) => {}
                Verdict::Decided(Decision::Allowed { status }) => limit_status = Some(status),
                Verdict::Decided(Decision::Refused {
                    status,
                    retry_after_ms,
                }) => return self.refuse_limited(seen, status, retry_after_ms),
                Verdict::Unavailable => {
                    let mut resp = self.refuse(
                        seen,
                        StatusCode::SERVICE_UNAVAILABLE,
                        Outcome::LimiterUnavailable,
                        "limiter-unavailable",
                        "Rate limiter unavailable",
                        "the gateway cannot check your rate limit right now; retry in a second",
                    );
                    resp.headers_mut()
                        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                    return resp;
                }
            }
        }

        // Phase 4: is the body acceptable?
        if limit > 0 && declared.is_some_and(|n| n > limit) {
            return self.refuse(
                seen,
                StatusCode::PAYLOAD_TOO_LARGE,
                Outcome::BodyTooLarge,
                "body-too-large",
                "Request body too large",
                format!("the request body is larger than the gateway's limit of {limit} bytes"),
            );
        }

        // Phase 5: forward.
        let upstream_uri = match self.upstream_uri(api, &path, parts.uri.query()) {
            Some(uri) => uri,
            None => {
                return self.refuse(
                    seen,
                    StatusCode::BAD_REQUEST,
                    Outcome::NoRoute,
                    "bad-path",
                    "Invalid request path",
                    "the request path cannot be forwarded; percent-encode special characters",
                );
            }
        };
        parts.uri = upstream_uri;
        parts.version = http::Version::HTTP_11;
        let span_id = clientele_core::event::span_id_of(&seen.event.id);
        // An `Upgrade` (WebSocket) keeps its two hop-by-hop headers and the client's side of
        // the switch, and goes over HTTP/1.1.
        let upgrade = crate::upgrade::requested(&parts.headers);
        let client_side = upgrade
            .as_ref()
            .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
        self.rewrite_request_headers(
            &mut parts.headers,
            &entry,
            source,
            peer.ip(),
            (&trace, &span_id),
        );
        if let Some(protocol) = upgrade {
            crate::upgrade::restore(&mut parts.headers, protocol);
        }
        if !api.upstream_headers.is_empty() {
            // The provider gets its own key, never the consumer's Clientele key.
            match source {
                KeySource::XApiKey => parts.headers.remove(&h::X_API_KEY),
                KeySource::ApiKey => parts.headers.remove(&h::APIKEY),
                KeySource::Bearer => parts.headers.remove(header::AUTHORIZATION),
            };
            for (name, value) in &api.upstream_headers {
                parts.headers.insert(name.clone(), value.clone());
            }
        }

        if llm.is_some() {
            // Usage is read from the bytes as they pass: ask the provider for an uncompressed
            // answer (the client still gets the same answer, only the upstream leg is larger).
            parts.headers.remove(header::ACCEPT_ENCODING);
        }
        let mut pending = self.sampling(api, &parts, relative, &seen.event);
        let counted = Arc::new(AtomicU64::new(0));
        let fault = Arc::new(BodyFault::default());
        let mut body = match (body, read) {
            (Some(incoming), _) => {
                RequestBody::new(incoming, counted.clone(), limit, fault.clone())
                    .with_print(print.clone())
            }
            (None, Some((bytes, sent))) => {
                counted.store(sent as u64, Ordering::Relaxed);
                RequestBody::read(bytes, counted.clone(), fault.clone())
            }
            // The body is taken only where it is read.
            (None, None) => RequestBody::read(Bytes::new(), counted.clone(), fault.clone()),
        };
        if let Some(tee) = pending.as_mut().and_then(|(_, tee)| tee.take()) {
            body = body.with_tee(tee);
        }
        let upstream_req = Request::from_parts(parts, body);
        let sent = Instant::now();
        let client = if client_side.is_some() {
            &api.upgrades
        } else {
            &api.client
        };
        let result = tokio::time::timeout(api.timeout, client.request(upstream_req)).await;
        let upstream_ms = sent.elapsed().as_secs_f64() * 1000.0;
        let fault = fault.get().or_else(|| match &result {
            Ok(Err(err)) if source_is(err, |e| e.is::<BodyTooLarge>()) => Some(Fault::TooLarge),
            Ok(Err(err)) if source_is(err, |e| e.is::<ClientBodyError>()) => Some(Fault::Broken),
            _ => None,
        });
        if let Some(fault) = fault {
            seen.event.upstream_latency_ms = Some(upstream_ms);
            seen.event.request_bytes = counted.load(Ordering::Relaxed);
            return self.refuse_body(seen, counted, fault, limit);
        }
        let mut response = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(err)) => {
                seen.event.upstream_latency_ms = Some(upstream_ms);
                seen.event.request_bytes = counted.load(Ordering::Relaxed);
                return self.upstream_failed(seen, counted, api, &Failure::from_client(&err));
            }
            Err(_) => {
                seen.event.upstream_latency_ms = Some(upstream_ms);
                return self.refuse_counted(
                    seen,
                    counted,
                    StatusCode::GATEWAY_TIMEOUT,
                    Outcome::UpstreamTimeout,
                    "upstream-timeout",
                    "Upstream timed out",
                    format!(
                        "the {} API did not answer within {} ms",
                        api.name,
                        api.timeout.as_millis()
                    ),
                );
            }
        };

        seen.event.upstream_latency_ms = Some(upstream_ms);
        seen.event.status = response.status().as_u16();
        if let (StatusCode::SWITCHING_PROTOCOLS, Some(client_side)) =
            (response.status(), client_side)
        {
            let websocket = response
                .headers()
                .get(http::header::UPGRADE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
            let upstream_side = hyper::upgrade::on(&mut response);
            crate::upgrade::tunnel(
                client_side,
                upstream_side,
                seen.event,
                seen.started,
                self.sink.clone(),
                websocket,
            );
            let (parts, _) = response.into_parts();
            return Response::from_parts(parts, ResponseBody::local(Bytes::new()));
        }
        h::strip_hop_by_hop(response.headers_mut());
        if let Some(status) = &limit_status {
            insert_limit_headers(response.headers_mut(), status);
        }
        let (resp_parts, resp_body) = response.into_parts();
        let mut body = ResponseBody::upstream(resp_body)
            .emit_on_finish(seen.event, seen.started, counted, self.sink.clone())
            .with_budget(reservation)
            .with_call(head_print, print);
        if let Some(flavor) = llm {
            let media = resp_parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .and_then(|t| t.split(';').next())
                .map(str::trim);
            let sse = media.is_some_and(|t| t.eq_ignore_ascii_case("text/event-stream"));
            // An upstream that compresses anyway is not read: its bytes are not JSON.
            let plain = resp_parts
                .headers
                .get(header::CONTENT_ENCODING)
                .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
            if plain && (sse || media.is_some_and(|t| t.ends_with("json"))) {
                body = body.with_usage(
                    crate::llm::UsageScanner::new(flavor, sse),
                    self.options.prices.clone(),
                );
            }
        }
        if let Some((mut p, _)) = pending {
            p.sample.status = resp_parts.status.as_u16();
            let json = resp_parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|t| {
                    t.split(';')
                        .next()
                        .is_some_and(|t| t.trim().ends_with("json"))
                });
            if !json {
                p.response = None;
            }
            body = body.with_sample(p);
        }
        Response::from_parts(resp_parts, body)
    }

    fn upstream_uri(&self, api: &Api, path: &str, query: Option<&str>) -> Option<Uri> {
        let rel = api_relative_path(api, path);
        let mut pq = String::with_capacity(
            api.upstream.base_path.len() + rel.len() + query.map_or(0, |q| q.len() + 1),
        );
        pq.push_str(&api.upstream.base_path);
        if !rel.starts_with('/') {
            pq.push('/');
        }
        pq.push_str(rel);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::builder()
            .scheme(if api.upstream.tls { "https" } else { "http" })
            .authority(api.upstream.authority.as_str())
            .path_and_query(pq)
            .build()
            .ok()
    }

    /// 502 for an upstream that gave no answer. A TLS failure (a certificate not trusted,
    /// expired, or for another name) is an operator's problem: it is logged at warn with the
    /// upstream and rustls' reason, and the client is told which API and why.
    fn upstream_failed(
        &self,
        seen: Seen,
        counted: Arc<AtomicU64>,
        api: &Api,
        failure: &Failure,
    ) -> Response<ResponseBody> {
        let (slug, title, detail) = if failure.kind == FailureKind::Tls {
            tracing::warn!(api = %api.name, upstream = %api.upstream.authority, reason = %failure.reason, "upstream TLS handshake failed; check its certificate or the api's ca_file");
            (
                "upstream-tls",
                "Upstream certificate refused",
                format!(
                    "the {} API's upstream ({}) could not be trusted: {}",
                    api.name, api.upstream.authority, failure.reason
                ),
            )
        } else {
            tracing::debug!(api = %api.name, error = %failure, "upstream request failed");
            (
                "upstream-unreachable",
                "Upstream unreachable",
                format!("the {} API could not be reached; try again later", api.name),
            )
        };
        self.refuse_counted(
            seen,
            counted,
            StatusCode::BAD_GATEWAY,
            Outcome::UpstreamUnreachable,
            slug,
            title,
            detail,
        )
    }

    fn rewrite_request_headers(
        &self,
        headers: &mut http::HeaderMap,
        entry: &KeyEntry,
        source: KeySource,
        peer: std::net::IpAddr,
        (trace, span_id): (&TraceContext, &str),
    ) {
        h::strip_hop_by_hop(headers);
        // The upstream trusts these to say who is calling: a client's own copies must never
        // reach it.
        headers.remove(&h::X_CONSUMER_ID);
        headers.remove(&h::X_CONSUMER_PLAN);
        // The Host is the upstream's; hyper's client sets it from the URI.
        headers.remove(header::HOST);
        if self.options.hide_credentials {
            match source {
                KeySource::XApiKey => headers.remove(&h::X_API_KEY),
                KeySource::ApiKey => headers.remove(&h::APIKEY),
                KeySource::Bearer => headers.remove(header::AUTHORIZATION),
            };
        }
        if let Ok(v) = HeaderValue::from_str(&entry.consumer) {
            headers.insert(h::X_CONSUMER_ID.clone(), v);
        }
        if let Some(plan) = entry
            .plan
            .as_deref()
            .and_then(|p| HeaderValue::from_str(p).ok())
        {
            headers.insert(h::X_CONSUMER_PLAN.clone(), plan);
        }
        // Keep the chain only when it came from a proxy we trust; otherwise it is whatever the
        // client chose to write, and the upstream would be misled by it.
        let peer_trusted = self
            .options
            .trusted_proxies
            .iter()
            .any(|n| n.contains(&peer));
        let xff = match headers
            .get(&h::X_FORWARDED_FOR)
            .and_then(|v| v.to_str().ok())
        {
            Some(prev) if peer_trusted && !prev.is_empty() => format!("{prev}, {peer}"),
            _ => peer.to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&xff) {
            headers.insert(h::X_FORWARDED_FOR.clone(), v);
        }
        let proto = if self.tls.load(Ordering::Relaxed) {
            "https"
        } else {
            "http"
        };
        headers.insert(
            h::X_FORWARDED_PROTO.clone(),
            HeaderValue::from_static(proto),
        );
        if let Some(tp) = h::child_traceparent(trace, span_id) {
            headers.insert(h::TRACEPARENT.clone(), tp);
        }
    }

    /// Answers 429 for a refused request, with `Retry-After` and the RateLimit fields.
    fn refuse_limited(
        &self,
        seen: Seen,
        status: LimitStatus,
        retry_after_ms: u64,
    ) -> Response<ResponseBody> {
        let retry_secs = retry_after_ms.div_ceil(1000).max(1);
        if status.kind.is_budget() {
            return self.refuse_budget(seen, status, retry_secs);
        }
        let (outcome, slug, title, detail) = match status.kind {
            LimitKind::Rate => (
                Outcome::RateLimited,
                "rate-limited",
                "Rate limit exceeded",
                format!(
                    "you may send bursts of up to {} requests, refilled over {} s; retry after {retry_secs} s and back off exponentially on repeated 429s",
                    status.limit, status.window_secs
                ),
            ),
            LimitKind::Route => (
                Outcome::RateLimited,
                "rate-limited",
                "Rate limit exceeded for this route",
                format!(
                    "this route allows bursts of up to {} requests, refilled over {} s; retry after {retry_secs} s",
                    status.limit, status.window_secs
                ),
            ),
            _ => (
                Outcome::QuotaExceeded,
                "quota-exceeded",
                "Quota exceeded",
                format!(
                    "your {} quota of {} requests is used up; it resets in {retry_secs} s (UTC {}); ask the API's owner for a higher plan",
                    if status.kind == LimitKind::DailyQuota {
                        "daily"
                    } else {
                        "monthly"
                    },
                    status.limit,
                    if status.kind == LimitKind::DailyQuota {
                        "midnight"
                    } else {
                        "start of next month"
                    },
                ),
            ),
        };
        let mut resp = self.refuse(
            seen,
            StatusCode::TOO_MANY_REQUESTS,
            outcome,
            slug,
            title,
            detail,
        );
        let headers = resp.headers_mut();
        insert_limit_headers(headers, &status);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs));
        resp
    }

    /// 429 for a spent budget: the problem names the budget (by its config key), its limit,
    /// what is used and when it resets, and the RateLimit fields carry what is left.
    fn refuse_budget(
        &self,
        mut seen: Seen,
        status: LimitStatus,
        retry_secs: u64,
    ) -> Response<ResponseBody> {
        let key = status.kind.budget_key().unwrap_or("tokens_per_month");
        let usd = status.kind.is_usd();
        let amount = |n: u64| {
            if usd {
                serde_json::json!(n as f64 / 1e6)
            } else {
                serde_json::json!(n)
            }
        };
        let shown = |n: u64| {
            if usd {
                format!("${:.6}", n as f64 / 1e6)
            } else {
                format!("{n} tokens")
            }
        };
        let period = if status.kind.is_monthly() {
            "monthly"
        } else {
            "daily"
        };
        let resets_at =
            clientele_core::time::format_ts(seen.event.ts_ms + (status.reset_secs as i64) * 1000);
        let detail = if status.kind.is_session() {
            format!(
                "this session's budget ({key}) of {} is spent: {} used; it is forgotten after {} h without a request in the session (by {resets_at} if none comes); start a new session (a new {} value) or ask the API's owner for a larger budget",
                shown(status.limit),
                shown(status.limit.saturating_sub(status.remaining)),
                status.reset_secs / 3600,
                self.options.session_header,
            )
        } else {
            format!(
                "your {period} budget ({key}) of {} is spent: {} used; it resets at {resets_at} (UTC {}); ask the API's owner for a larger budget",
                shown(status.limit),
                shown(status.limit.saturating_sub(status.remaining)),
                if status.kind.is_monthly() {
                    "start of next month"
                } else {
                    "midnight"
                },
            )
        };
        seen.event.status = StatusCode::TOO_MANY_REQUESTS.as_u16();
        seen.event.outcome = Outcome::BudgetExceeded;
        let mut problem = Problem::new(429, "budget-exceeded", "Budget exceeded", detail);
        problem.instance = seen
            .event
            .trace_id
            .as_ref()
            .map(|t| format!("urn:clientele:trace:{t}"));
        let mut json = serde_json::to_value(&problem).unwrap_or_default();
        if let Some(o) = json.as_object_mut() {
            o.insert("budget".into(), serde_json::json!(key));
            o.insert(
                "unit".into(),
                serde_json::json!(if usd { "usd" } else { "tokens" }),
            );
            o.insert("limit".into(), amount(status.limit));
            o.insert(
                "used".into(),
                amount(status.limit.saturating_sub(status.remaining)),
            );
            o.insert("resets_at".into(), serde_json::json!(resets_at));
        }
        let body = ResponseBody::local(Bytes::from(serde_json::to_vec(&json).unwrap_or_default()))
            .emit_on_finish(
                seen.event,
                seen.started,
                Arc::new(AtomicU64::new(0)),
                self.sink.clone(),
            );
        let mut resp = Response::new(body);
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        insert_limit_headers(headers, &status);
        headers.insert(header::RETRY_AFTER, HeaderValue::from(retry_secs));
        resp
    }

    /// 403 for a consumer blocked by its plan's policy, naming the rule it broke.
    fn refuse_policy(
        &self,
        seen: Seen,
        rule: clientele_core::policy::PolicyRule,
    ) -> Response<ResponseBody> {
        let detail = format!(
            "this consumer broke the rule {} of its plan's policy, whose action is block; ask the API's owner to review the policy_violation finding",
            rule.as_str()
        );
        self.refuse(
            seen,
            StatusCode::FORBIDDEN,
            Outcome::PolicyBlocked,
            "policy-violation",
            "Blocked by plan policy",
            detail,
        )
    }

    /// Answers with a problem+json made by the gateway, emitting the event when sent.
    fn refuse(
        &self,
        seen: Seen,
        status: StatusCode,
        outcome: Outcome,
        slug: &str,
        title: &str,
        detail: impl Into<String>,
    ) -> Response<ResponseBody> {
        self.refuse_counted(
            seen,
            Arc::new(AtomicU64::new(0)),
            status,
            outcome,
            slug,
            title,
            detail,
        )
    }

    /// The client's body failed on its way upstream: its error, answered and recorded as such,
    /// whatever the upstream made of the part it received.
    fn refuse_body(
        &self,
        seen: Seen,
        counted: Arc<AtomicU64>,
        fault: Fault,
        limit: u64,
    ) -> Response<ResponseBody> {
        match fault {
            Fault::TooLarge => self.refuse_counted(
                seen,
                counted,
                StatusCode::PAYLOAD_TOO_LARGE,
                Outcome::BodyTooLarge,
                "body-too-large",
                "Request body too large",
                format!("the request body is larger than the gateway's limit of {limit} bytes"),
            ),
            // A broken chunk size, a short body: the client's error, not the upstream's.
            Fault::Broken => self.refuse_counted(
                seen,
                counted,
                StatusCode::BAD_REQUEST,
                Outcome::BadRequest,
                "bad-request-body",
                "Malformed request body",
                "the request body could not be read: check its chunked encoding or Content-Length",
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn refuse_counted(
        &self,
        mut seen: Seen,
        request_bytes: Arc<AtomicU64>,
        status: StatusCode,
        outcome: Outcome,
        slug: &str,
        title: &str,
        detail: impl Into<String>,
    ) -> Response<ResponseBody> {
        seen.event.status = status.as_u16();
        seen.event.outcome = outcome;
        let mut problem = Problem::new(status.as_u16(), slug, title, detail);
        problem.instance = seen
            .event
            .trace_id
            .as_ref()
            .map(|t| format!("urn:clientele:trace:{t}"));
        let body = ResponseBody::local(Bytes::from(problem.to_json())).emit_on_finish(
            seen.event,
            seen.started,
            request_bytes,
            self.sink.clone(),
        );
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(problem::CONTENT_TYPE),
        );
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"clientele\""),
            );
        }
        resp
    }
}

/// The IETF RateLimit fields (draft-ietf-httpapi-ratelimit-headers) for the most constraining
/// limit, in the structured form (`RateLimit-Policy`, `RateLimit`) and the older separate
/// fields that many client libraries still read.
fn insert_limit_headers(headers: &mut http::HeaderMap, s: &LimitStatus) {
    let name = s.kind.as_str();
    let policy = if s.kind.is_budget() {
        format!(
            "\"{name}\";q={};w={};qu=\"{}\"",
            s.limit,
            s.window_secs,
            s.kind.unit()
        )
    } else {
        format!("\"{name}\";q={};w={}", s.limit, s.window_secs)
    };
    let current = format!("\"{name}\";r={};t={}", s.remaining, s.reset_secs);
    if let Ok(v) = HeaderValue::from_str(&policy) {
        headers.insert(h::RATELIMIT_POLICY.clone(), v);
    }
    if let Ok(v) = HeaderValue::from_str(&current) {
        headers.insert(h::RATELIMIT.clone(), v);
    }
    headers.insert(h::RATELIMIT_LIMIT.clone(), HeaderValue::from(s.limit));
    headers.insert(
        h::RATELIMIT_REMAINING.clone(),
        HeaderValue::from(s.remaining),
    );
    headers.insert(h::RATELIMIT_RESET.clone(), HeaderValue::from(s.reset_secs));
}

/// Whether a path is an MCP server's endpoint (the Streamable HTTP transport's `/mcp`, or
/// `/mcp/` under a prefix).
fn is_mcp_path(path: &str) -> bool {
    path.trim_end_matches('/').ends_with("/mcp")
}

/// The route a JSON-RPC batch of `tools/call` naming more than one tool is attributed to: one
/// HTTP exchange cannot be split into per-tool latency, and a route per combination of tools
/// would grow without bound.
const MCP_MIXED_BATCH: &str = "tools/call (batch)";

/// The tool an MCP JSON-RPC request calls (`{"method": "tools/call", "params": {"name": …}}`),
/// as the event's route; `None` for any other message. The name is kept to 128 printable
/// characters.
///
/// A batch (a JSON array of messages, which MCP allowed before its 2025-06-18 revision) is
/// attributed to its tool when every `tools/call` in it names the same one, and to
/// [`MCP_MIXED_BATCH`] when they name several; a batch with no `tools/call` keeps the path.
fn mcp_tool(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Call<'a> {
        #[serde(borrow)]
        method: Option<std::borrow::Cow<'a, str>>,
        params: Option<Params>,
    }
    #[derive(serde::Deserialize)]
    struct Params {
        name: Option<String>,
    }
    fn tool(call: Call<'_>) -> Option<String> {
        if call.method.as_deref() != Some("tools/call") {
            return None;
        }
        let name: String = call
            .params?
            .name?
            .chars()
            .filter(|c| !c.is_control())
            .take(128)
            .collect();
        (!name.is_empty()).then_some(name)
    }
    // A batch is an array, a single message an object: the first byte says which, so the body
    // is parsed once as what it is (an untagged enum would buffer it and try both).
    if body.trim_ascii_start().first() != Some(&b'[') {
        return tool(serde_json::from_slice(body).ok()?);
    }
    let calls: Vec<Call> = serde_json::from_slice(body).ok()?;
    let mut tools = calls.into_iter().filter_map(tool);
    let first = tools.next()?;
    Some(if tools.all(|t| t == first) {
        first
    } else {
        MCP_MIXED_BATCH.to_string()
    })
}

/// Whether a Content-Type is JSON (`application/json`, `…+json`).
fn is_json(v: Option<&HeaderValue>) -> bool {
    v.and_then(|v| v.to_str().ok()).is_some_and(|t| {
        t.split(';')
            .next()
            .is_some_and(|t| t.trim().to_ascii_lowercase().ends_with("json"))
    })
}

fn attribute(event: &mut Event, entry: &KeyEntry) {
    event.consumer = Some(entry.consumer.to_string());
    event.key_id = Some(entry.key_id.to_string());
    event.plan = entry.plan.as_deref().map(str::to_string);
    event.team = entry.team.as_deref().map(str::to_string);
    event.use_case = entry.use_case.as_deref().map(str::to_string);
}

/// `prefix` matches `path` on whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    let prefix = prefix.trim_end_matches('/');
    path == prefix || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}

/// The path as the API sees it: without the gateway prefix when `strip_prefix` is set.
fn api_relative_path<'a>(api: &Api, path: &'a str) -> &'a str {
    if api.strip_prefix && api.prefix != "/" {
        let rest = &path[api.prefix.trim_end_matches('/').len().min(path.len())..];
        if rest.is_empty() { "/" } else { rest }
    } else {
        path
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Whether any error in `err`'s source chain satisfies `pred`.
fn source_is(
    err: &(dyn std::error::Error + 'static),
    pred: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if pred(e) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mcp_tool_calls_name_their_tool() {
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"search_docs","arguments":{"q":"rust"}}}"#;
        assert_eq!(mcp_tool(call).as_deref(), Some("search_docs"));
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert_eq!(mcp_tool(list), None);
        assert_eq!(mcp_tool(br#"{"method":"tools/call","params":{}}"#), None);
        assert_eq!(mcp_tool(b"not json"), None);
        let long = format!(
            r#"{{"method":"tools/call","params":{{"name":"{}\n"}}}}"#,
            "x".repeat(500)
        );
        assert_eq!(mcp_tool(long.as_bytes()).unwrap(), "x".repeat(128));
        assert!(is_mcp_path("/mcp") && is_mcp_path("/tools/mcp/") && !is_mcp_path("/mcpx"));
    }

    #[test]
    fn mcp_batches_name_their_one_tool_or_say_they_are_mixed() {
        let same = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"search"}},
                        {"jsonrpc":"2.0","method":"notifications/progress"},
                        {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"search"}}]"#;
        assert_eq!(mcp_tool(same).as_deref(), Some("search"));
        let mixed = br#"[{"method":"tools/call","params":{"name":"search"}},
                         {"method":"tools/call","params":{"name":"fetch"}}]"#;
        assert_eq!(mcp_tool(mixed).as_deref(), Some(MCP_MIXED_BATCH));
        let none = br#"[{"method":"tools/list"},{"method":"ping"}]"#;
        assert_eq!(mcp_tool(none), None);
        assert_eq!(mcp_tool(b"[]"), None);
        // A batch member that is not a message object makes the body no MCP message at all.
        assert_eq!(
            mcp_tool(br#"[{"method":"tools/call","params":{"name":"a"}}, 5]"#),
            None
        );
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/api", "/api"));
        assert!(prefix_matches("/api/", "/api/x"));
        assert!(prefix_matches("/api", "/api/x"));
        assert!(!prefix_matches("/api", "/apix"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
