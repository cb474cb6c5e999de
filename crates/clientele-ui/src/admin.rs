//! The operator dashboard: sign-in with the admin token, overview, consumers, one consumer,
//! routes. Numbers come from the admin API's own handlers, called in-process.

use std::collections::BTreeSet;
use std::fmt::Write;

use axum::Form;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_analytics::{Query as AQuery, Rollup};
use clientele_api::error::{Json, Query};
use clientele_api::handlers::{self, ConsumerStats, ConsumerStatsQuery, WindowQuery};
use clientele_api::limits::{self, ConsumerLimits, LimitsQuery};
use clientele_core::keys::secret_eq;
use clientele_core::time::now_ms;
use serde::Deserialize;

use crate::chart::{Chart, Line, Unit};
use crate::html::{bytes, esc, int, ms, pct, url_enc, when_rfc3339};
use crate::page::{self, Area, Ctx, Params, Range, layout, meter, sort_th, tiles};
use crate::session::{self, ADMIN_COOKIE, ADMIN_LOGIN_COOKIE, Session, cookie, set_cookie};
use crate::{Ui, UiError, html_response, is_https, redirect, same_origin};

type Page = Result<Response, UiError>;

/// The signed-in admin session, or a redirect to the sign-in form that comes back here.
/// `Err` holds where to send the browser instead: the sign-in form, coming back here after.
pub(crate) fn require(ui: &Ui, headers: &HeaderMap, uri: &Uri) -> Result<Session, String> {
    if let Some(id) = cookie(headers, ADMIN_COOKIE) {
        if let Some(s) = ui.admin_sessions.get(id, now_ms()) {
            return Ok(s);
        }
    }
    let next = uri.path_and_query().map_or("/", |p| p.as_str());
    Err(format!("/login?next={}", url_enc(next)))
}

/// The page context of a signed-in admin on `path`, or (`Ok(Err)`) the redirect to the sign-in
/// form that comes back here: the first step of every dashboard page.
pub(crate) fn signed_in(
    ui: &Ui,
    headers: &HeaderMap,
    uri: &Uri,
    path: &str,
    raw: Option<&str>,
) -> Result<Result<Ctx, Response>, UiError> {
    match require(ui, headers, uri) {
        Ok(s) => Ok(Ok(ctx(&s, path, raw)?)),
        Err(to) => Ok(Err(redirect(&to, &[]))),
    }
}

pub(crate) fn ctx(session: &Session, path: &str, raw: Option<&str>) -> Result<Ctx, UiError> {
    let params = Params::parse(raw);
    let range = Range::from_params(&params, now_ms())?;
    Ok(Ctx {
        area: Area::Admin,
        path: path.to_string(),
        params,
        range,
        csrf: session.csrf.clone(),
        who: "operator".to_string(),
    })
}

/// Only a local path is followed after sign-in, never another site.
pub(crate) fn safe_next(next: Option<&str>, default: &str) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_string(),
        _ => default.to_string(),
    }
}

/// The sign-in form of the dashboard or the portal.
pub(crate) fn sign_in_page(
    status: StatusCode,
    portal: bool,
    next: &str,
    token: &str,
    message: Option<&str>,
    https: bool,
) -> Response {
    let (title, action, label, hint, field, autocomplete) = if portal {
        (
            "Developer portal sign-in",
            "/portal/login",
            "API key",
            "Sign in with one of your API keys to see your own usage. The key is checked and forgotten; only your consumer id is remembered for the session.",
            "key",
            "off",
        )
    } else {
        (
            "Dashboard sign-in",
            "/login",
            "Admin token",
            "The admin token is in [admin].token of the config, CLIENTELE_ADMIN_TOKEN, or the data dir's admin-token file.",
            "token",
            "current-password",
        )
    };
    let alert = message.map_or_else(String::new, |m| {
        format!(
            r#"<p class="alert" role="alert" id="signin-error">{}</p>"#,
            esc(m)
        )
    });
    let described = if message.is_some() {
        r#" aria-describedby="signin-hint signin-error" aria-invalid="true""#
    } else {
        r#" aria-describedby="signin-hint""#
    };
    let body = format!(
        r#"<h1>{title}</h1>{alert}<form class="signin" method="post" action="{action}"><input type="hidden" name="csrf" value="{token}"><input type="hidden" name="next" value="{next}"><label for="{field}">{label}</label><input id="{field}" name="{field}" type="password" autocomplete="{autocomplete}" required autofocus spellcheck="false"{described}><p class="hint" id="signin-hint">{hint}</p><button type="submit">Sign in</button></form>"#,
        token = esc(token),
        next = esc(next),
    );
    let cookie_name = if portal {
        session::PORTAL_LOGIN_COOKIE
    } else {
        ADMIN_LOGIN_COOKIE
    };
    let mut resp = html_response(status, page::bare(title, &body));
    if let Ok(v) = set_cookie(cookie_name, token, action, 3600, https).parse() {
        resp.headers_mut().append(axum::http::header::SET_COOKIE, v);
    }
    resp
}

pub async fn login_form(
    State(ui): State<Ui>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    let p = Params::parse(raw.as_deref());
    let next = safe_next(p.get("next"), "/");
    if let Some(id) = cookie(&headers, ADMIN_COOKIE) {
        if ui.admin_sessions.get(id, now_ms()).is_some() {
            return redirect(&next, &[]);
        }
    }
    let message = p.get("signed_out").map(|_| "You are signed out.");
    sign_in_page(
        StatusCode::OK,
        false,
        &next,
        &session::login_token(&headers, ADMIN_LOGIN_COOKIE),
        message,
        is_https(&headers),
    )
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    token: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// Checks a sign-in form's double-submitted token: the hidden field must equal the cookie the
/// form was served with, which another site can neither read nor set.
pub(crate) fn login_csrf_ok(headers: &HeaderMap, cookie_name: &str, given: &str) -> bool {
    same_origin(headers)
        && !given.is_empty()
        && cookie(headers, cookie_name).is_some_and(|c| secret_eq(given, c))
}

/// A 429 page for an address that failed to sign in too often.
pub(crate) fn throttled(portal: bool) -> Response {
    let mut resp = html_response(
        StatusCode::TOO_MANY_REQUESTS,
        page::error_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins",
            &format!(
                "more than {} failed sign-ins from this address in a minute; wait a minute and try again{}",
                session::MAX_FAILURES_PER_MINUTE,
                if portal {
                    ""
                } else {
                    " (the admin API with the token keeps working)"
                }
            ),
        ),
    );
    resp.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        axum::http::HeaderValue::from_static("60"),
    );
    resp
}

pub async fn login(
    State(ui): State<Ui>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let https = is_https(&headers);
    let next = safe_next(form.next.as_deref(), "/");
    if !ui.throttle.allows(peer.ip(), now_ms()) {
        return throttled(false);
    }
    if !login_csrf_ok(&headers, ADMIN_LOGIN_COOKIE, &form.csrf) {
        return sign_in_page(
            StatusCode::FORBIDDEN,
            false,
            &next,
            &session::login_token(&headers, ADMIN_LOGIN_COOKIE),
            Some(
                "The sign-in form expired or came from another site. Please sign in again (cookies must be enabled).",
            ),
            https,
        );
    }
    if !secret_eq(form.token.trim(), &ui.app.admin_token) {
        ui.throttle.failed(peer.ip(), now_ms());
        tracing::warn!(client = %peer.ip(), "dashboard sign-in refused: wrong admin token");
        return sign_in_page(
            StatusCode::UNAUTHORIZED,
            false,
            &next,
            &session::login_token(&headers, ADMIN_LOGIN_COOKIE),
            Some("That admin token is wrong."),
            https,
        );
    }
    let (id, _) = ui.admin_sessions.create(now_ms(), None, None);
    tracing::info!("dashboard sign-in");
    redirect(
        &next,
        &[
            set_cookie(ADMIN_COOKIE, &id, "/", crate::SESSION_TTL_MS / 1000, https),
            set_cookie(ADMIN_LOGIN_COOKIE, "", "/login", 0, https),
        ],
    )
}

pub async fn logout(
    State(ui): State<Ui>,
    headers: HeaderMap,
    Form(form): Form<session::CsrfForm>,
) -> Page {
    session::sign_out(
        session::SessionArea {
            table: &ui.admin_sessions,
            cookie: ADMIN_COOKIE,
            cookie_path: "/",
            login: "/login",
        },
        &headers,
        &form,
    )
}

/// Every release marker (posted or a spec version) as a chart marker.
pub(crate) async fn release_markers(ui: &Ui) -> Result<Vec<(i64, String)>, UiError> {
    Ok(clientele_api::reports::all_releases(&ui.app, None)
        .await?
        .into_iter()
        .map(|r| (r.at_ms, format!("{} {}", r.api, r.version)))
        .collect())
}

/// One step of a traffic series.
pub(crate) struct Point {
    pub requests: u64,
    pub errors: u64,
    pub rate_limited: u64,
    /// p50, p95, p99.
    pub latency: [Option<f64>; 3],
}

/// The number of requests, errors and 429s in a series, and its latency percentiles.
pub(crate) fn series_charts(
    id: &str,
    ts: &[i64],
    step_ms: i64,
    points: &[Point],
    markers: &[(i64, String)],
) -> String {
    let count = |f: fn(&Point) -> u64| -> Vec<Option<f64>> {
        points.iter().map(|p| Some(f(p) as f64)).collect()
    };
    let lat = |i: usize| -> Vec<Option<f64>> { points.iter().map(|p| p.latency[i]).collect() };
    let traffic = Chart {
        id: &format!("{id}-traffic"),
        title: "Requests, errors and rate-limited requests per step",
        unit: Unit::Count,
        ts,
        step_ms,
        lines: vec![
            Line {
                label: "Requests",
                values: count(|p| p.requests),
                class: "c-blue",
            },
            Line {
                label: "Errors (4xx and 5xx)",
                values: count(|p| p.errors),
                class: "c-red",
            },
            Line {
                label: "Rate-limited (429)",
                values: count(|p| p.rate_limited),
                class: "c-amber",
            },
        ],
        reference: None,
        markers,
    };
    let latency = Chart {
        id: &format!("{id}-latency"),
        title: "Latency percentiles",
        unit: Unit::Ms,
        ts,
        step_ms,
        lines: vec![
            Line {
                label: "p50",
                values: lat(0),
                class: "c-blue",
            },
            Line {
                label: "p95",
                values: lat(1),
                class: "c-amber",
            },
            Line {
                label: "p99",
                values: lat(2),
                class: "c-red",
            },
        ],
        reference: None,
        markers,
    };
    format!(
        r#"<div class="charts">{}{}</div>"#,
        traffic.render(),
        latency.render()
    )
}

fn step_ms_of(step: &str) -> i64 {
    clientele_core::time::parse_step(step).unwrap_or(60_000)
}

fn ts_ms(s: &str) -> i64 {
    clientele_core::time::parse_ts(s).unwrap_or_default()
}

pub async fn overview(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Page {
    let s = match require(&ui, &headers, &uri) {
        Ok(s) => s,
        Err(to) => return Ok(redirect(&to, &[])),
    };
    let ctx = ctx(&s, "/", raw.as_deref())?;
    let app = ui.app.clone();
    let r = &ctx.range;
    let Json(list) =
        handlers::stats_consumers(State(app.clone()), Query(window_query(r, None))).await?;
    let (step_name, step_ms) = handlers::pick_step(&Some(r.chart_step()), r.from_ms, r.to_ms)?;
    let q = AQuery {
        from_ms: r.from_ms,
        to_ms: r.to_ms,
        api: None,
        consumers: None,
    };
    let engine = app.engine.clone();
    let (total, series) = tokio::task::spawn_blocking(move || {
        let mut total = Rollup::default();
        for row in engine.consumer_totals(&q) {
            total.merge(&row.rollup);
        }
        (total, engine.total_series(&q, step_ms))
    })
    .await
    .map_err(|e| {
        UiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Query failed",
            e.to_string(),
        )
    })?;
    let k = &total.counters;
    let [p50, p95, p99] = total.quantiles([0.5, 0.95, 0.99]);
    let mut body = tiles(&[
        ("Requests", int(k.requests), "requests"),
        ("Error rate", pct(k.error_rate()), "error_rate"),
        ("p50 latency", ms(p50), "p50"),
        ("p95 latency", ms(p95), "p95"),
        ("p99 latency", ms(p99), "p99"),
        ("Rate-limited (429)", int(k.rate_limited), "rate_limited"),
        (
            "Active consumers",
            int(list.consumers.len() as u64),
            "consumers",
        ),
    ]);
    let ts: Vec<i64> = series.iter().map(|(t, _)| *t).collect();
    let points: Vec<_> = series
        .iter()
        .map(|(_, r)| Point {
            requests: r.counters.requests,
            errors: r.counters.errors(),
            rate_limited: r.counters.rate_limited,
            latency: r.quantiles([0.5, 0.95, 0.99]),
        })
        .collect();
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-traffic"><h2 id="h-traffic">Traffic <span class="sub">per {step_name}</span></h2>{}</section>"#,
        series_charts("all", &ts, step_ms, &points, &release_markers(&ui).await?)
    );
    let recent = crate::findings::load(&ui, r, None, None, None, 1000).await?;
    let total_findings = recent.len();
    let shown: Vec<_> = recent.into_iter().take(6).collect();
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-findings"><h2 id="h-findings">Recent findings</h2>{}<p><a href="{}">All findings ({})</a></p></section>"#,
        crate::findings::table(&ctx, "Most recently seen first", &shown, true),
        esc(&ctx.href("/findings", &[])),
        int(total_findings as u64)
    );
    // Busiest consumers, and the ones with the most errors: the person to call is usually in
    // the second table, not the first.
    let mut busiest: Vec<&ConsumerStats> = list.consumers.iter().collect();
    busiest.truncate(10);
    let mut erring: Vec<&ConsumerStats> = list
        .consumers
        .iter()
        .filter(|c| c.errors_4xx + c.errors_5xx > 0)
        .collect();
    erring.sort_by(|a, b| {
        (b.errors_4xx + b.errors_5xx)
            .cmp(&(a.errors_4xx + a.errors_5xx))
            .then(a.consumer.cmp(&b.consumer))
    });
    erring.truncate(5);
    let _ = write!(
        body,
        r#"<div class="cols"><section aria-labelledby="h-top"><h2 id="h-top">Top consumers</h2>{}<p><a href="{}">All consumers</a></p></section>"#,
        consumer_table(&ctx, "Busiest consumers in the range", &busiest, None),
        esc(&ctx.href("/consumers", &[]))
    );
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-err"><h2 id="h-err">Most errors</h2>{}</section></div>"#,
        if erring.is_empty() {
            "<p class=\"empty\">No consumer had errors in this range.</p>".to_string()
        } else {
            consumer_table(&ctx, "Consumers with the most errors", &erring, None)
        }
    );
    let Json(routes) =
        handlers::stats_routes(State(app.clone()), Query(window_query(r, None))).await?;
    let mut hot: Vec<_> = routes
        .routes
        .iter()
        .filter(|r| r.errors_4xx + r.errors_5xx > 0)
        .collect();
    hot.sort_by_key(|r| std::cmp::Reverse(r.errors_4xx + r.errors_5xx));
    hot.truncate(5);
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-routes"><h2 id="h-routes">Where errors concentrate</h2>{}<p><a href="{}">All routes</a></p></section>"#,
        if hot.is_empty() {
            "<p class=\"empty\">No route had errors in this range.</p>".to_string()
        } else {
            route_table(&ctx, "Routes with the most errors", &hot, None)
        },
        esc(&ctx.href("/routes", &[]))
    );
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Overview", "/", &body),
    ))
}

fn window_query(r: &Range, p: Option<&Params>) -> WindowQuery {
    let get = |k: &str| p.and_then(|p| p.owned(k));
    WindowQuery {
        from: Some(r.start_rfc3339()),
        to: Some(r.end_rfc3339()),
        api: get("api"),
        plan: get("plan"),
        team: get("team"),
        use_case: get("use_case"),
    }
}

/// Sort keys `(key, label, numeric)` of the consumers table.
const CONSUMER_COLUMNS: [(&str, &str, bool); 10] = [
    ("consumer", "Consumer", false),
    ("plan", "Plan", false),
    ("team", "Team", false),
    ("use_case", "Use case", false),
    ("requests", "Requests", true),
    ("error_rate", "Error rate", true),
    ("errors_5xx", "5xx", true),
    ("rate_limited", "429", true),
    ("p50", "p50", true),
    ("p99", "p99", true),
];

/// Columns of the overview's narrower consumer tables.
const COMPACT: [&str; 6] = [
    "consumer",
    "plan",
    "requests",
    "error_rate",
    "rate_limited",
    "p99",
];

/// A consumers table; `sort` makes its headers sort links. Without `sort` it is the compact
/// form the overview shows side by side.
fn consumer_table(
    ctx: &Ctx,
    caption: &str,
    rows: &[&ConsumerStats],
    sort: Option<(&str, bool)>,
) -> String {
    let shown = |key: &str| sort.is_some() || COMPACT.contains(&key);
    let mut out = format!(
        r#"<div class="scroll"><table class="data consumers"><caption>{}</caption><thead><tr>"#,
        esc(caption)
    );
    for (key, label, numeric) in CONSUMER_COLUMNS.into_iter().filter(|c| shown(c.0)) {
        match sort {
            Some((s, desc)) => out.push_str(&sort_th(ctx, label, key, s, desc, numeric)),
            None => {
                let class = if numeric { r#" class="num""# } else { "" };
                let _ = write!(out, r#"<th scope="col"{class}>{label}</th>"#);
            }
        }
    }
    out.push_str("</tr></thead><tbody>");
    for c in rows {
        let cells = [
            ("plan", false, esc(c.plan.as_deref().unwrap_or("—"))),
            ("team", false, esc(c.team.as_deref().unwrap_or("—"))),
            ("use_case", false, esc(c.use_case.as_deref().unwrap_or("—"))),
            ("requests", true, int(c.requests)),
            ("error_rate", true, pct(c.error_rate)),
            ("errors_5xx", true, int(c.errors_5xx)),
            ("rate_limited", true, int(c.rate_limited)),
            ("p50", true, ms(c.p50_ms)),
            ("p99", true, ms(c.p99_ms)),
        ];
        let _ = write!(
            out,
            r#"<tr data-consumer="{id}"><th scope="row"><a href="{href}">{id}</a></th>"#,
            id = esc(&c.consumer),
            href = esc(&ctx.href(&format!("/consumers/{}", url_enc(&c.consumer)), &[])),
        );
        for (key, numeric, text) in cells.into_iter().filter(|c| shown(c.0)) {
            let class = if numeric { r#" class="num""# } else { "" };
            let _ = write!(out, r#"<td{class} data-col="{key}">{text}</td>"#);
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></div>");
    out
}

pub(crate) fn filter_select(
    name: &str,
    label: &str,
    values: &BTreeSet<String>,
    current: Option<&str>,
) -> String {
    let mut out = format!(
        r#"<span class="field"><label for="f-{name}">{label}</label><select id="f-{name}" name="{name}" data-autosubmit><option value="">All</option>"#
    );
    for v in values {
        let sel = if current == Some(v.as_str()) {
            " selected"
        } else {
            ""
        };
        let _ = write!(out, r#"<option value="{0}"{sel}>{0}</option>"#, esc(v));
    }
    out.push_str("</select></span>");
    out
}

/// A GET form of filters that keeps the range and sort.
pub(crate) fn filter_form(ctx: &Ctx, selects: &str, keys: &[&str]) -> String {
    let mut out = format!(
        r#"<form class="filters" method="get" action="{}" aria-label="Filters">"#,
        esc(&ctx.path)
    );
    for (k, v) in &ctx.params.0 {
        if !keys.contains(&k.as_str()) {
            let _ = write!(
                out,
                r#"<input type="hidden" name="{}" value="{}">"#,
                esc(k),
                esc(v)
            );
        }
    }
    let _ = write!(
        out,
        r#"{selects}<button type="submit">Filter</button> <a href="{}">Clear filters</a></form>"#,
        esc(&ctx.href(
            &ctx.path,
            &keys.iter().map(|k| (*k, "")).collect::<Vec<_>>()
        ))
    );
    out
}

pub async fn consumers(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Page {
    let s = match require(&ui, &headers, &uri) {
        Ok(s) => s,
        Err(to) => return Ok(redirect(&to, &[])),
    };
    let ctx = ctx(&s, "/consumers", raw.as_deref())?;
    let keys: Vec<&str> = CONSUMER_COLUMNS.iter().map(|c| c.0).collect();
    let (sort, desc) = page::sort_params(&ctx.params, &keys, "requests")?;
    let app = ui.app.clone();
    let Json(list) = handlers::stats_consumers(
        State(app.clone()),
        Query(window_query(&ctx.range, Some(&ctx.params))),
    )
    .await?;
    let all = app
        .control
        .list_consumers()
        .await
        .map_err(clientele_api::ApiError::from)?;
    let distinct =
        |f: fn(&clientele_core::consumer::Consumer) -> Option<&String>| -> BTreeSet<String> {
            all.iter().filter_map(|c| f(c).cloned()).collect()
        };
    let selects = format!(
        "{}{}{}",
        filter_select(
            "plan",
            "Plan",
            &distinct(|c| c.plan.as_ref()),
            ctx.params.get("plan")
        ),
        filter_select(
            "team",
            "Team",
            &distinct(|c| c.team.as_ref()),
            ctx.params.get("team")
        ),
        filter_select(
            "use_case",
            "Use case",
            &distinct(|c| c.use_case.as_ref()),
            ctx.params.get("use_case")
        ),
    );
    let mut rows: Vec<&ConsumerStats> = list.consumers.iter().collect();
    let text = |o: &Option<String>| o.clone().unwrap_or_default();
    rows.sort_by(|a, b| {
        let ord = match sort.as_str() {
            "consumer" => a.consumer.cmp(&b.consumer),
            "plan" => text(&a.plan).cmp(&text(&b.plan)),
            "team" => text(&a.team).cmp(&text(&b.team)),
            "use_case" => text(&a.use_case).cmp(&text(&b.use_case)),
            "error_rate" => a.error_rate.total_cmp(&b.error_rate),
            "errors_5xx" => a.errors_5xx.cmp(&b.errors_5xx),
            "rate_limited" => a.rate_limited.cmp(&b.rate_limited),
            "p50" => a
                .p50_ms
                .unwrap_or(-1.0)
                .total_cmp(&b.p50_ms.unwrap_or(-1.0)),
            "p99" => a
                .p99_ms
                .unwrap_or(-1.0)
                .total_cmp(&b.p99_ms.unwrap_or(-1.0)),
            _ => a.requests.cmp(&b.requests),
        };
        let ord = if desc { ord.reverse() } else { ord };
        ord.then_with(|| a.consumer.cmp(&b.consumer))
    });
    let mut body = filter_form(&ctx, &selects, &["plan", "team", "use_case"]);
    let label = CONSUMER_COLUMNS
        .iter()
        .find(|c| c.0 == sort)
        .map_or("", |c| c.1);
    let caption = format!(
        "{} consumers with traffic, sorted by {} ({})",
        rows.len(),
        label.to_lowercase(),
        if desc {
            "highest first"
        } else {
            "lowest first"
        }
    );
    if rows.is_empty() {
        body.push_str(r#"<p class="empty">No consumer matching these filters made requests in this range.</p>"#);
    } else {
        body.push_str(&consumer_table(&ctx, &caption, &rows, Some((&sort, desc))));
    }
    // Consumers that exist but were silent: going quiet is news too.
    let active: BTreeSet<&str> = list.consumers.iter().map(|c| c.consumer.as_str()).collect();
    let keep =
        |want: Option<&str>, have: &Option<String>| want.is_none_or(|w| have.as_deref() == Some(w));
    let silent: Vec<&str> = all
        .iter()
        .filter(|c| !active.contains(c.id.as_str()))
        .filter(|c| {
            keep(ctx.params.get("plan"), &c.plan)
                && keep(ctx.params.get("team"), &c.team)
                && keep(ctx.params.get("use_case"), &c.use_case)
        })
        .map(|c| c.id.as_str())
        .collect();
    if !silent.is_empty() {
        let links: Vec<String> = silent
            .iter()
            .map(|id| {
                format!(
                    r#"<a href="{}">{}</a>"#,
                    esc(&ctx.href(&format!("/consumers/{}", url_enc(id)), &[])),
                    esc(id)
                )
            })
            .collect();
        let _ = write!(
            body,
            r#"<p class="note">No requests in this range from {} registered consumer{}: {}.</p>"#,
            silent.len(),
            if silent.len() == 1 { "" } else { "s" },
            links.join(", ")
        );
    }
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Consumers", "/consumers", &body),
    ))
}

/// Rate-limit and quota figures: policy, quota meters and the share-of-rate chart.
pub(crate) fn limits_section(l: &ConsumerLimits, id: &str) -> String {
    let mut out = String::new();
    let Some(eff) = &l.effective else {
        return "<p class=\"empty\">No rate limit or quota applies.</p>".to_string();
    };
    out.push_str(r#"<dl class="facts">"#);
    if let Some(rate) = eff.rate_per_second {
        let _ = write!(
            out,
            "<div><dt>Rate limit</dt><dd>{} requests/s, bursts of {}</dd></div>",
            trim_num(rate),
            eff.burst.unwrap_or_default()
        );
    }
    for r in &eff.routes {
        let _ = write!(
            out,
            "<div><dt>{}</dt><dd>{} requests/s, bursts of {}</dd></div>",
            esc(&r.route),
            trim_num(r.rate_per_second),
            r.burst
        );
    }
    let _ = write!(
        out,
        r#"<div><dt>Rate-limited in range</dt><dd data-metric="limits_rate_limited">{}</dd></div>"#,
        int(l.rate_limited)
    );
    if let Some(peak) = l.peak_share_of_rate {
        let _ = write!(
            out,
            r#"<div><dt>Peak share of rate (busiest moment)</dt><dd data-metric="limits_peak_share">{}</dd></div>"#,
            pct(peak)
        );
    }
    out.push_str("</dl>");
    for (name, q) in [("Daily quota", &l.day), ("Monthly quota", &l.month)] {
        if let Some(q) = q {
            let slug = if name.starts_with("Daily") {
                "day"
            } else {
                "month"
            };
            let _ = write!(
                out,
                r#"<div class="quota"><p><strong>{name}</strong>: <span data-metric="quota_{slug}_used">{used}</span> of {limit} used, <span data-metric="quota_{slug}_remaining">{rem}</span> remaining (resets {reset})</p>{meter}</div>"#,
                used = int(q.used),
                limit = int(q.limit),
                rem = int(q.remaining),
                reset = esc(&when_rfc3339(&q.resets_at)),
                meter = meter(q.share, &format!("{name}: {} used", pct(q.share))),
            );
        }
    }
    if eff.rate_per_second.is_some() && !l.series.is_empty() {
        let ts: Vec<i64> = l.series.iter().map(|p| ts_ms(&p.ts)).collect();
        let chart = Chart {
            id: &format!("{id}-share"),
            title: "Share of the rate limit used per step",
            unit: Unit::Share,
            ts: &ts,
            step_ms: step_ms_of(&l.step),
            lines: vec![
                Line {
                    label: "Share of rate limit (mean of the step)",
                    values: l.series.iter().map(|p| p.share_of_rate).collect(),
                    class: "c-purple",
                },
                // Bursts: a step's mean hides the second in which requests were refused.
                Line {
                    label: "Peak share (busiest minute, 100% when refused)",
                    values: l.series.iter().map(|p| p.peak_share_of_rate).collect(),
                    class: "c-red",
                },
            ],
            reference: Some((1.0, "limit")),
            markers: &[],
        };
        let _ = write!(out, r#"<div class="charts">{}</div>"#, chart.render());
    }
    out
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A consumer's routes table.
pub(crate) fn routes_of_consumer(routes: &[handlers::ConsumerRouteStats]) -> String {
    if routes.is_empty() {
        return "<p class=\"empty\">No requests in this range.</p>".to_string();
    }
    let mut out = String::from(
        r#"<div class="scroll"><table class="data routes"><caption>Routes called, busiest first</caption><thead><tr><th scope="col">Route</th><th scope="col">API</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Error rate</th><th scope="col" class="num">4xx</th><th scope="col" class="num">5xx</th><th scope="col" class="num">p50</th><th scope="col" class="num">p95</th><th scope="col" class="num">p99</th></tr></thead><tbody>"#,
    );
    for r in routes {
        let _ = write!(
            out,
            r#"<tr><th scope="row"><code>{} {}</code></th><td>{}</td><td class="num" data-col="requests">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            esc(&r.method),
            esc(&r.route),
            esc(&r.api),
            int(r.requests),
            pct(r.error_rate),
            int(r.errors_4xx),
            int(r.errors_5xx),
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Recent error responses, newest first.
pub(crate) fn errors_table(events: &[handlers::EventOut], show_client: bool) -> String {
    if events.is_empty() {
        return "<p class=\"empty\">No error responses in this range.</p>".to_string();
    }
    let mut out = String::from(
        r#"<div class="scroll"><table class="data events"><caption>Most recent error responses, newest first</caption><thead><tr><th scope="col">Time (UTC)</th><th scope="col">Request</th><th scope="col" class="num">Status</th><th scope="col">Outcome</th><th scope="col" class="num">Latency</th>"#,
    );
    if show_client {
        out.push_str(r#"<th scope="col">Client</th><th scope="col">Key</th>"#);
    }
    out.push_str(r#"<th scope="col">Trace id</th></tr></thead><tbody>"#);
    for e in events {
        let class = if e.status >= 500 { "s5" } else { "s4" };
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td><code>{} {}</code></td><td class="num"><span class="status-badge {class}">{}</span></td><td>{}</td><td class="num">{}</td>"#,
            esc(&when_rfc3339(&e.ts)),
            esc(&e.method),
            esc(&e.path),
            e.status,
            esc(&e.outcome.replace('_', " ")),
            ms(Some(e.latency_ms)),
        );
        if show_client {
            let _ = write!(
                out,
                "<td>{}</td><td><code>{}</code></td>",
                esc(e.client_ip.as_deref().unwrap_or("—")),
                esc(e.key_id.as_deref().unwrap_or("—"))
            );
        }
        let _ = write!(
            out,
            "<td><code>{}</code></td></tr>",
            esc(e.trace_id.as_deref().unwrap_or("—"))
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Which errors the recent-errors table shows (`errors` parameter), so that a flood of 429s
/// does not hide the 5xx someone is looking for.
const ERROR_CLASSES: [(&str, &str, (u16, u16)); 4] = [
    ("all", "All errors", (400, 599)),
    ("5xx", "5xx", (500, 599)),
    ("4xx", "4xx", (400, 499)),
    ("429", "429 only", (429, 429)),
];

pub(crate) fn error_class(p: &Params) -> Result<(&'static str, (u16, u16)), UiError> {
    let want = p.get("errors").unwrap_or("all");
    ERROR_CLASSES
        .iter()
        .find(|(k, _, _)| *k == want)
        .map(|(k, _, range)| (*k, *range))
        .ok_or_else(|| {
            UiError::bad_request(format!("errors {want:?} must be all, 5xx, 4xx or 429"))
        })
}

/// Links choosing the class of errors listed.
pub(crate) fn error_tabs(ctx: &Ctx, current: &str) -> String {
    let mut out = String::from(r#"<ul class="tabs" aria-label="Which errors">"#);
    for (key, label, _) in ERROR_CLASSES {
        let value = if key == "all" { "" } else { key };
        let current = if key == current {
            r#" aria-current="true""#
        } else {
            ""
        };
        let _ = write!(
            out,
            r##"<li><a href="{}#h-errors"{current}>{label}</a></li>"##,
            esc(&ctx.href(&ctx.path, &[("errors", value)]))
        );
    }
    out.push_str("</ul>");
    out
}

/// The newest error responses of a consumer in the window, with statuses in `status`.
pub(crate) async fn recent_errors(
    ui: &Ui,
    consumer: &str,
    r: &Range,
    status: (u16, u16),
    limit: usize,
) -> Result<Vec<handlers::EventOut>, UiError> {
    let events = ui
        .app
        .events
        .recent_events(&clientele_store::EventQuery {
            consumer: consumer.to_string(),
            from_ms: r.from_ms,
            to_ms: r.to_ms,
            status: Some(status),
            limit,
        })
        .await
        .map_err(clientele_api::ApiError::from)?;
    Ok(events.into_iter().map(Into::into).collect())
}

pub(crate) fn detail_points(d: &handlers::ConsumerDetail) -> (Vec<i64>, Vec<Point>) {
    let ts = d.series.iter().map(|p| ts_ms(&p.ts)).collect();
    let points = d
        .series
        .iter()
        .map(|p| Point {
            requests: p.requests,
            errors: p.errors,
            rate_limited: p.rate_limited,
            latency: [p.p50_ms, p.p95_ms, p.p99_ms],
        })
        .collect();
    (ts, points)
}

/// What kind of client a consumer is, from its sessions' classes: the most common one, with
/// how many of the sessions have it ("agent, 12 of 14 sessions"), or that there were none.
fn client_class(sessions: &[handlers::SessionOut]) -> String {
    let mut counts: Vec<(&str, usize)> = Vec::new();
    for s in sessions {
        match counts.iter_mut().find(|(c, _)| *c == s.class) {
            Some((_, n)) => *n += 1,
            None => counts.push((&s.class, 1)),
        }
    }
    // The most sessions first; a tie goes to the class named first in the API's order.
    let order = |c: &str| {
        ["agent", "service", "interactive"]
            .iter()
            .position(|x| *x == c)
    };
    counts.sort_by(|a, b| b.1.cmp(&a.1).then(order(a.0).cmp(&order(b.0))));
    match counts.first() {
        None => "no sessions in this range".to_string(),
        Some((class, n)) => format!("{class}, {n} of {} sessions", sessions.len()),
    }
}

pub(crate) fn consumer_tiles(t: &ConsumerStats) -> String {
    tiles(&[
        ("Requests", int(t.requests), "requests"),
        ("Error rate", pct(t.error_rate), "error_rate"),
        ("4xx", int(t.errors_4xx), "errors_4xx"),
        ("5xx", int(t.errors_5xx), "errors_5xx"),
        ("Rate-limited (429)", int(t.rate_limited), "rate_limited"),
        ("p50 latency", ms(t.p50_ms), "p50"),
        ("p95 latency", ms(t.p95_ms), "p95"),
        ("p99 latency", ms(t.p99_ms), "p99"),
    ])
}

pub async fn consumer(
    State(ui): State<Ui>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Page {
    let s = match require(&ui, &headers, &uri) {
        Ok(s) => s,
        Err(to) => return Ok(redirect(&to, &[])),
    };
    let ctx = ctx(&s, &format!("/consumers/{}", url_enc(&id)), raw.as_deref())?;
    let app = ui.app.clone();
    let r = &ctx.range;
    let detail = handlers::consumer_detail(
        &app,
        &id,
        ConsumerStatsQuery {
            from: Some(r.start_rfc3339()),
            to: Some(r.end_rfc3339()),
            api: None,
            step: Some(r.chart_step()),
        },
    )
    .await?;
    let info = app
        .control
        .get_consumer(&id)
        .await
        .map_err(clientele_api::ApiError::from)?;
    let mut body = String::new();
    if let Some(c) = &info {
        body.push_str(r#"<dl class="facts">"#);
        for (label, v) in [
            ("Name", c.name.as_deref()),
            ("Plan", c.plan.as_deref()),
            ("Team", c.team.as_deref()),
            ("Use case", c.use_case.as_deref()),
        ] {
            let _ = write!(
                body,
                "<div><dt>{label}</dt><dd>{}</dd></div>",
                esc(v.unwrap_or("—"))
            );
        }
        for (k, v) in &c.metadata {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let _ = write!(body, "<div><dt>{}</dt><dd>{}</dd></div>", esc(k), esc(&v));
        }
        let _ = write!(
            body,
            "<div><dt>Created</dt><dd>{}</dd></div>",
            esc(&crate::html::when(c.created_at_ms))
        );
        let Json(sessions) = handlers::sessions(
            State(app.clone()),
            Query(handlers::SessionsQuery {
                from: Some(r.start_rfc3339()),
                to: Some(r.end_rfc3339()),
                consumer: Some(id.clone()),
                limit: Some(1000),
            }),
        )
        .await?;
        let _ = write!(
            body,
            r#"<div data-testid="client-class"><dt>Client</dt><dd>{}</dd></div></dl>"#,
            esc(&client_class(&sessions.sessions))
        );
    }
    body.push_str(&consumer_tiles(&detail.totals));
    let (ts, points) = detail_points(&detail);
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-traffic"><h2 id="h-traffic">Traffic <span class="sub">per {}</span></h2>{}</section>"#,
        esc(&detail.step),
        series_charts(
            "consumer",
            &ts,
            step_ms_of(&detail.step),
            &points,
            &release_markers(&ui).await?
        )
    );
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-routes"><h2 id="h-routes">Routes</h2>{}</section>"#,
        routes_of_consumer(&detail.routes)
    );
    let (class, statuses) = error_class(&ctx.params)?;
    let errors = recent_errors(&ui, &id, r, statuses, 20).await?;
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-errors"><h2 id="h-errors">Recent errors</h2>{}{}</section>"#,
        error_tabs(&ctx, class),
        errors_table(&errors, true)
    );
    body.push_str(&crate::governance::consumer_section(&ui, &ctx, &id).await?);
    let found = crate::findings::load(&ui, r, None, Some(id.clone()), None, 100).await?;
    let _ = write!(
        body,
        r#"<section aria-labelledby="h-found"><h2 id="h-found">Findings</h2>{}</section>"#,
        crate::findings::table(
            &ctx,
            "What the detectors noticed about this consumer, most recent first",
            &found,
            false
        )
    );
    if info.is_some() {
        let Json(lim) = limits::get_limits(
            State(app.clone()),
            Path(id.clone()),
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
            limits_section(&lim, "consumer")
        );
        body.push_str(&crate::portal::ai_section(&app, &id, r, &lim.budgets).await?);
        let Json(keys) = handlers::list_keys(State(app.clone()), Path(id.clone())).await?;
        let _ = write!(
            body,
            r#"<section aria-labelledby="h-keys"><h2 id="h-keys">Keys</h2>{}</section>"#,
            keys_table(&keys.keys)
        );
    }
    let _ = write!(
        body,
        r#"<p class="note">Request volume {} in, {} out. Raw numbers: <code>GET /v1/stats/consumers/{}</code>.</p>"#,
        bytes(detail.totals.request_bytes),
        bytes(detail.totals.response_bytes),
        esc(&id)
    );
    let title = format!("Consumer {id}");
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, &title, "/consumers", &body),
    ))
}

pub(crate) fn keys_table(keys: &[handlers::KeyOut]) -> String {
    if keys.is_empty() {
        return "<p class=\"empty\">This consumer has no keys.</p>".to_string();
    }
    let mut out = String::from(
        r#"<div class="scroll"><table class="data keys"><caption>API keys (only their prefixes are known)</caption><thead><tr><th scope="col">Key id</th><th scope="col">Prefix</th><th scope="col">Name</th><th scope="col">Status</th><th scope="col">Created</th><th scope="col">Expires</th></tr></thead><tbody>"#,
    );
    for k in keys {
        let _ = write!(
            out,
            r#"<tr><th scope="row"><code>{}</code></th><td><code>{}…</code></td><td>{}</td><td><span class="key-{}">{}</span></td><td>{}</td><td>{}</td></tr>"#,
            esc(&k.key_id),
            esc(&k.prefix),
            esc(k.name.as_deref().unwrap_or("—")),
            esc(&k.status),
            esc(&k.status),
            esc(&when_rfc3339(&k.created_at)),
            esc(&k
                .expires_at
                .as_deref()
                .map_or_else(|| "never".to_string(), when_rfc3339)),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Sort keys `(key, label, numeric)` of the routes table.
const ROUTE_COLUMNS: [(&str, &str, bool); 8] = [
    ("route", "Route", false),
    ("requests", "Requests", true),
    ("consumers", "Consumers", true),
    ("error_rate", "Error rate", true),
    ("errors", "Errors", true),
    ("p50", "p50", true),
    ("p99", "p99", true),
    ("error_share", "Error concentration", false),
];

fn route_table(
    ctx: &Ctx,
    caption: &str,
    rows: &[&handlers::RouteStats],
    sort: Option<(&str, bool)>,
) -> String {
    let mut out = format!(
        r#"<div class="scroll"><table class="data routes"><caption>{}</caption><thead><tr>"#,
        esc(caption)
    );
    for (key, label, numeric) in ROUTE_COLUMNS {
        match sort {
            Some((s, desc)) => out.push_str(&sort_th(ctx, label, key, s, desc, numeric)),
            None => {
                let class = if numeric { r#" class="num""# } else { "" };
                let _ = write!(out, r#"<th scope="col"{class}>{label}</th>"#);
            }
        }
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        let errors = r.errors_4xx + r.errors_5xx;
        let concentration = match &r.top_error_consumer {
            None => r#"<span class="muted">no errors</span>"#.to_string(),
            Some(top) => {
                let verdict = if r.consumers <= 1 {
                    "one caller"
                } else if r.error_share_top_consumer >= 0.8 {
                    "one consumer: likely their integration"
                } else if r.error_share_top_consumer < 0.5 {
                    "spread: likely the API"
                } else {
                    "mixed"
                };
                format!(
                    r#"{meter} <span>{share} from <a href="{href}">{top}</a></span> <span class="verdict">({verdict})</span>"#,
                    meter = meter(
                        r.error_share_top_consumer,
                        &format!("{} of errors from {top}", pct(r.error_share_top_consumer))
                    ),
                    share = pct(r.error_share_top_consumer),
                    href = esc(&ctx.href(&format!("/consumers/{}", url_enc(top)), &[])),
                    top = esc(top),
                )
            }
        };
        let _ = write!(
            out,
            r#"<tr data-route="{method} {route}"><th scope="row"><code>{method} {route}</code> <span class="muted">{api}</span></th><td class="num" data-col="requests">{req}</td><td class="num" data-col="consumers">{cons}</td><td class="num" data-col="error_rate">{er}</td><td class="num" data-col="errors">{errors}</td><td class="num">{p50}</td><td class="num">{p99}</td><td class="concentration" data-col="error_share" data-value="{share_raw}">{concentration}</td></tr>"#,
            method = esc(&r.method),
            route = esc(&r.route),
            api = esc(&r.api),
            req = int(r.requests),
            cons = int(r.consumers as u64),
            er = pct(r.error_rate),
            errors = int(errors),
            p50 = ms(r.p50_ms),
            p99 = ms(r.p99_ms),
            share_raw = r.error_share_top_consumer,
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

pub async fn routes(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Page {
    let s = match require(&ui, &headers, &uri) {
        Ok(s) => s,
        Err(to) => return Ok(redirect(&to, &[])),
    };
    let ctx = ctx(&s, "/routes", raw.as_deref())?;
    let keys: Vec<&str> = ROUTE_COLUMNS.iter().map(|c| c.0).collect();
    let (sort, desc) = page::sort_params(&ctx.params, &keys, "requests")?;
    let app = ui.app.clone();
    let Json(list) = handlers::stats_routes(
        State(app.clone()),
        Query(window_query(&ctx.range, Some(&ctx.params))),
    )
    .await?;
    // The API filter lists the APIs seen in the range without the filter, so it can be undone.
    let Json(unfiltered) =
        handlers::stats_routes(State(app.clone()), Query(window_query(&ctx.range, None))).await?;
    let apis: BTreeSet<String> = unfiltered.routes.iter().map(|r| r.api.clone()).collect();
    let all = app
        .control
        .list_consumers()
        .await
        .map_err(clientele_api::ApiError::from)?;
    let plans: BTreeSet<String> = all.iter().filter_map(|c| c.plan.clone()).collect();
    let selects = format!(
        "{}{}",
        filter_select("api", "API", &apis, ctx.params.get("api")),
        filter_select("plan", "Consumer plan", &plans, ctx.params.get("plan")),
    );
    let mut rows: Vec<&handlers::RouteStats> = list.routes.iter().collect();
    rows.sort_by(|a, b| {
        let ord = match sort.as_str() {
            "route" => (&a.route, &a.method).cmp(&(&b.route, &b.method)),
            "consumers" => a.consumers.cmp(&b.consumers),
            "error_rate" => a.error_rate.total_cmp(&b.error_rate),
            "errors" => (a.errors_4xx + a.errors_5xx).cmp(&(b.errors_4xx + b.errors_5xx)),
            "p50" => a
                .p50_ms
                .unwrap_or(-1.0)
                .total_cmp(&b.p50_ms.unwrap_or(-1.0)),
            "p99" => a
                .p99_ms
                .unwrap_or(-1.0)
                .total_cmp(&b.p99_ms.unwrap_or(-1.0)),
            "error_share" => a
                .error_share_top_consumer
                .total_cmp(&b.error_share_top_consumer),
            _ => a.requests.cmp(&b.requests),
        };
        let ord = if desc { ord.reverse() } else { ord };
        ord.then_with(|| (&a.api, &a.route, &a.method).cmp(&(&b.api, &b.route, &b.method)))
    });
    let mut body = String::from(
        r#"<p class="lead">Error concentration is the share of a route's errors that come from its most erroring consumer. Near 100%, one integration is failing: call that customer. Low, with many consumers, the API itself is failing.</p>"#,
    );
    body.push_str(&filter_form(&ctx, &selects, &["api", "plan"]));
    if rows.is_empty() {
        body.push_str(r#"<p class="empty">No requests matching these filters in this range.</p>"#);
    } else {
        let label = ROUTE_COLUMNS
            .iter()
            .find(|c| c.0 == sort)
            .map_or("", |c| c.1);
        let caption = format!(
            "{} routes, sorted by {} ({})",
            rows.len(),
            label.to_lowercase(),
            if desc {
                "highest first"
            } else {
                "lowest first"
            }
        );
        body.push_str(&route_table(&ctx, &caption, &rows, Some((&sort, desc))));
    }
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Routes", "/routes", &body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_local_paths_are_followed_after_sign_in() {
        assert_eq!(
            safe_next(Some("/consumers?range=7d"), "/"),
            "/consumers?range=7d"
        );
        assert_eq!(safe_next(Some("//evil.example/"), "/"), "/");
        assert_eq!(safe_next(Some("https://evil.example/"), "/"), "/");
        assert_eq!(safe_next(Some("/\\evil.example"), "/"), "/");
        assert_eq!(safe_next(None, "/portal"), "/portal");
    }
}
