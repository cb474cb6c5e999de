//! The consumer portal: a consumer signs in with one of its own API keys and sees its own
//! usage, and `GET /portal/api/usage` answers the same to a script holding the key.
//!
//! Isolation: the consumer is taken from the session (bound at sign-in to the key's consumer)
//! or from the presented key, never from the request's path, parameters or other cookies; a
//! parameter naming a consumer is refused. Every request re-checks the key the session was
//! opened with, so revoking or expiring it ends the session at once.

use std::fmt::Write;

use axum::Form;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use clientele_api::ApiError;
use clientele_api::error::{Json, Query};
use clientele_api::handlers::{self, ConsumerDetail, ConsumerStatsQuery, EventOut};
use clientele_api::limits::{self, LimitsQuery};
use clientele_core::keys::Lookup;
use clientele_core::time::now_ms;
use serde::{Deserialize, Serialize};

use crate::admin::{
    consumer_tiles, detail_points, error_class, error_tabs, errors_table, limits_section,
    login_csrf_ok, recent_errors, routes_of_consumer, safe_next, series_charts, sign_in_page,
};
use crate::html::esc;
use crate::page::{Area, Ctx, Params, Range, layout};
use crate::session::{PORTAL_COOKIE, PORTAL_LOGIN_COOKIE, Session, cookie, set_cookie};
use crate::{Ui, UiError, html_response, is_https, redirect};

/// Recent errors shown and returned by the usage API.
const RECENT_ERRORS: usize = 20;

/// Whether the key a portal session was opened with is still good (exists, belongs to the
/// session's consumer, not revoked, not expired). Asks the store, the source of truth, so a
/// revocation made on another node counts too.
async fn key_still_valid(ui: &Ui, s: &Session) -> bool {
    let (Some(consumer), Some(key_id)) = (&s.consumer, &s.key_id) else {
        return false;
    };
    match ui.app.control.list_keys(consumer).await {
        Ok(keys) => keys.iter().any(|k| {
            &k.key_id == key_id
                && &k.consumer == consumer
                && k.revoked_at_ms.is_none()
                && k.expires_at_ms.is_none_or(|t| t > now_ms())
        }),
        // Fail closed: without the store we cannot tell, so the page asks to sign in again.
        Err(e) => {
            tracing::warn!(error = %e, "portal session check failed");
            false
        }
    }
}

/// The signed-in consumer's session; a session whose key is no longer valid is ended.
async fn portal_session(ui: &Ui, headers: &HeaderMap) -> Option<(String, Session, String)> {
    let id = cookie(headers, PORTAL_COOKIE)?;
    let s = ui.portal_sessions.get(id, now_ms())?;
    if !key_still_valid(ui, &s).await {
        ui.portal_sessions.remove(id);
        return None;
    }
    let consumer = s.consumer.clone()?;
    Some((id.to_string(), s, consumer))
}

/// The portal's page shows one consumer: the session's. Parameters other than the time range
/// and the class of errors listed are refused, so no query can point it at anyone else.
fn check_params(p: &Params) -> Result<(), UiError> {
    for (k, _) in &p.0 {
        if !["range", "from", "to", "refresh", "errors"].contains(&k.as_str()) {
            return Err(UiError::bad_request(format!(
                "the portal shows your own usage only; parameter {k:?} is not accepted (use range, from, to, refresh, errors)"
            )));
        }
    }
    Ok(())
}

pub async fn home(
    State(ui): State<Ui>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let Some((_, s, consumer)) = portal_session(&ui, &headers).await else {
        return Ok(redirect("/portal/login", &[]));
    };
    let params = Params::parse(raw.as_deref());
    check_params(&params)?;
    let range = Range::from_params(&params, now_ms())?;
    let ctx = Ctx {
        area: Area::Portal,
        path: "/portal".to_string(),
        params,
        range,
        csrf: s.csrf.clone(),
        who: consumer.clone(),
    };
    let r = &ctx.range;
    let app = ui.app.clone();
    let detail = handlers::consumer_detail(
        &app,
        &consumer,
        ConsumerStatsQuery {
            from: Some(r.start_rfc3339()),
            to: Some(r.end_rfc3339()),
            api: None,
            step: Some(r.chart_step()),
        },
    )
    .await?;
    let mut body = String::from(
        r#"<p class="lead">Your own traffic through this gateway: volume, latency, errors with examples, and how close you are to your limits. Nobody else's data is shown here.</p>"#,
    );
    body.push_str(&consumer_tiles(&detail.totals));
    let (ts, points) = detail_points(&detail);
    let step_ms = clientele_core::time::parse_step(&detail.step).unwrap_or(60_000);
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-traffic"><h2 id="h-traffic">Traffic <span class="sub">per {}</span></h2>{}</section>"#,
        esc(&detail.step),
        series_charts("portal", &ts, step_ms, &points, &[])
    );
    let Json(lim) = limits::get_limits(
        State(app.clone()),
        axum::extract::Path(consumer.clone()),
        Query(LimitsQuery {
            from: Some(r.start_rfc3339()),
            to: Some(r.end_rfc3339()),
            step: Some(r.chart_step()),
            plan: None,
        }),
    )
    .await?;
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-limits"><h2 id="h-limits">Rate limits and quota</h2>{}</section>"#,
        limits_section(&lim, "portal")
    );
    body.push_str(&ai_section(&app, &consumer, r, &lim.budgets).await?);
    let (class, statuses) = error_class(&ctx.params)?;
    let errors = recent_errors(&ui, &consumer, r, statuses, RECENT_ERRORS).await?;
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-errors"><h2 id="h-errors">Recent errors</h2><p>Use the trace id when you ask for help: it finds the request in the provider's logs.</p>{}{}</section>"#,
        error_tabs(&ctx, class),
        errors_table(&errors, true)
    );
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-routes"><h2 id="h-routes">Your routes</h2>{}</section>"#,
        routes_of_consumer(&detail.routes)
    );
    let Json(own_keys) =
        handlers::list_keys(State(app.clone()), axum::extract::Path(consumer.clone())).await?;
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-keys"><h2 id="h-keys">Your keys</h2>{}</section>"#,
        crate::admin::keys_table(&own_keys.keys)
    );
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-api"><h2 id="h-api">The same numbers as JSON</h2><p>For your own scripts and monitoring:</p><pre><code>curl -H "Authorization: Bearer $YOUR_API_KEY" "{origin}/portal/api/usage?from={from}&amp;to={to}"</code></pre></section>"#,
        origin = esc(&origin(&headers)),
        from = esc(&r.start_rfc3339()),
        to = esc(&r.end_rfc3339()),
    );
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Your API usage", "/portal", &body),
    ))
}

/// `http(s)://host` as the browser addressed us, for copy-paste examples.
fn origin(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("127.0.0.1:8081");
    let scheme = if is_https(headers) { "https" } else { "http" };
    format!("{scheme}://{host}")
}

pub async fn login_form(
    State(ui): State<Ui>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    if portal_session(&ui, &headers).await.is_some() {
        return redirect("/portal", &[]);
    }
    let p = Params::parse(raw.as_deref());
    let message = if p.get("signed_out").is_some() {
        Some("You are signed out.")
    } else {
        None
    };
    sign_in_page(
        StatusCode::OK,
        true,
        "/portal",
        &crate::session::login_token(&headers, PORTAL_LOGIN_COOKIE),
        message,
        is_https(&headers),
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    key: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

pub async fn login(
    State(ui): State<Ui>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    if !ui.throttle.allows(peer.ip(), now_ms()) {
        return crate::admin::throttled(true);
    }
    let https = is_https(&headers);
    let next = safe_next(
        form.next.as_deref().filter(|n| n.starts_with("/portal")),
        "/portal",
    );
    let retry = |status, message| {
        sign_in_page(
            status,
            true,
            &next,
            &crate::session::login_token(&headers, PORTAL_LOGIN_COOKIE),
            Some(message),
            https,
        )
    };
    if !login_csrf_ok(&headers, PORTAL_LOGIN_COOKIE, &form.csrf) {
        return retry(
            StatusCode::FORBIDDEN,
            "The sign-in form expired or came from another site. Please sign in again (cookies must be enabled).",
        );
    }
    // The key is used for this lookup only: not logged, not kept, not put in a cookie.
    match ui.app.keys.lookup(form.key.trim(), now_ms()) {
        Lookup::Valid(entry) => {
            let (sid, _) = ui.portal_sessions.create(
                now_ms(),
                Some(entry.consumer.to_string()),
                Some(entry.key_id.to_string()),
            );
            tracing::info!(consumer = %entry.consumer, key_id = %entry.key_id, "portal sign-in");
            redirect(
                &next,
                &[
                    set_cookie(
                        PORTAL_COOKIE,
                        &sid,
                        "/portal",
                        crate::SESSION_TTL_MS / 1000,
                        https,
                    ),
                    set_cookie(PORTAL_LOGIN_COOKIE, "", "/portal/login", 0, https),
                ],
            )
        }
        refused => {
            ui.throttle.failed(peer.ip(), now_ms());
            let message = match refused {
                Lookup::Revoked(_) => "That key has been revoked.",
                Lookup::Expired(_) => "That key has expired.",
                _ => "That key is not known here.",
            };
            retry(StatusCode::UNAUTHORIZED, message)
        }
    }
}

pub async fn logout(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<crate::session::CsrfForm>,
) -> Result<Response, UiError> {
    crate::session::sign_out(
        crate::session::SessionArea {
            table: &ui.portal_sessions,
            cookie: PORTAL_COOKIE,
            cookie_path: "/portal",
            login: "/portal/login",
        },
        &headers,
        &form,
    )
}

/// `GET /portal/api/usage` parameters. There is deliberately no consumer parameter: the key
/// decides whose data this is, and anything else is refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    pub from: Option<String>,
    pub to: Option<String>,
    pub api: Option<String>,
    pub step: Option<String>,
}

/// The consumer's own totals, routes and series (as `GET /v1/stats/consumers/{id}`) and its
/// recent error responses.
#[derive(Debug, Serialize)]
pub struct Usage {
    #[serde(flatten)]
    pub detail: ConsumerDetail,
    pub recent_errors: Vec<EventOut>,
}

fn portal_unauthorized(detail: &str) -> Response {
    let mut resp = ApiError::unauthorized(detail).into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"clientele-portal\""),
    );
    resp
}

pub async fn api_usage(
    State(ui): State<Ui>,
    headers: HeaderMap,
    query: Result<Query<UsageQuery>, ApiError>,
) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let Some(key) = key else {
        return portal_unauthorized("send one of your API keys as Authorization: Bearer <key>");
    };
    let consumer = match ui.app.keys.lookup(key, now_ms()) {
        Lookup::Valid(entry) => entry.consumer.to_string(),
        Lookup::Revoked(_) => return portal_unauthorized("this key has been revoked"),
        Lookup::Expired(_) => return portal_unauthorized("this key has expired"),
        Lookup::Unknown => return portal_unauthorized("this key is not known"),
    };
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    match usage(&ui, &consumer, q).await {
        Ok(u) => {
            let mut resp = Json(u).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(e) => e.into_response(),
    }
}

async fn usage(ui: &Ui, consumer: &str, q: UsageQuery) -> Result<Usage, ApiError> {
    let (from_ms, to_ms) = handlers::window(&q.from, &q.to)?;
    let detail = handlers::consumer_detail(
        &ui.app,
        consumer,
        ConsumerStatsQuery {
            from: q.from,
            to: q.to,
            api: q.api,
            step: q.step,
        },
    )
    .await?;
    let events = ui
        .app
        .events
        .recent_events(&clientele_store::EventQuery {
            consumer: consumer.to_string(),
            from_ms,
            to_ms,
            status: Some((400, 599)),
            limit: RECENT_ERRORS,
        })
        .await?;
    Ok(Usage {
        detail,
        recent_errors: events.into_iter().map(Into::into).collect(),
    })
}

/// One consumer's AI traffic: tokens and cost per model in the range, and its budgets with
/// what is used. Empty when it has neither. The portal shows it for the signed-in consumer,
/// the dashboard on the consumer's page.
pub(crate) async fn ai_section(
    app: &clientele_api::AppState,
    consumer: &str,
    r: &crate::page::Range,
    budgets: &[limits::BudgetUsageOut],
) -> Result<String, UiError> {
    let Json(models) = handlers::stats_models(
        State(app.clone()),
        Query(handlers::ModelStatsQuery {
            from: Some(r.start_rfc3339()),
            to: Some(r.end_rfc3339()),
            consumer: Some(consumer.to_string()),
        }),
    )
    .await?;
    if models.models.is_empty() && budgets.is_empty() {
        return Ok(String::new());
    }
    let mut out = String::from(
        r#"<section aria-labelledby="h-ai"><h2 id="h-ai">AI usage: tokens, cost and budgets</h2>"#,
    );
    if !budgets.is_empty() {
        out.push_str(r#"<div class="table-wrap"><table><caption>Your budgets in the current period</caption><thead><tr><th scope="col">Budget</th><th scope="col" class="num">Limit</th><th scope="col" class="num">Used</th><th scope="col" class="num">Left</th><th scope="col">Resets</th></tr></thead><tbody>"#);
        for b in budgets {
            let show = |v: f64| {
                if b.unit == "usd" {
                    crate::ai::usd(Some(v))
                } else {
                    crate::html::int(v as u64)
                }
            };
            let _ = write!(
                out,
                r#"<tr><td><code>{}</code></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&b.budget),
                show(b.limit),
                show(b.used),
                show(b.remaining),
                esc(&crate::html::when_rfc3339(&b.resets_at))
            );
        }
        out.push_str("</tbody></table></div>");
    }
    if !models.models.is_empty() {
        out.push_str(r#"<div class="table-wrap"><table><caption>Tokens and cost per model in this range</caption><thead><tr><th scope="col">Model</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Tokens in</th><th scope="col" class="num">Tokens out</th><th scope="col" class="num">Cost</th></tr></thead><tbody>"#);
        for m in &models.models {
            let _ = write!(
                out,
                r#"<tr><td><code>{}</code></td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
                esc(&m.model),
                crate::html::int(m.requests),
                crate::html::int(m.tokens_in),
                crate::html::int(m.tokens_out),
                crate::ai::usd(m.cost_usd)
            );
        }
        out.push_str("</tbody></table></div>");
    }
    out.push_str("</section>");
    Ok(out)
}
