//! The report pages: portfolio health (`/portfolio`), and the outreach, pricing, SLA and agents
//! reports (`/reports/*`). Each calls the same typed function as its API endpoint
//! (`clientele_api::reports`), in-process, so a page and `GET /v1/portfolio` or
//! `GET /v1/reports/*` cannot disagree. The reports' windows end at the end of the page's time
//! range; the portfolio is a calendar month picked on the page.
//!
//! Written with maud: every interpolation is escaped.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_api::reports::{self as api, Portfolio, PortfolioQuery, ReportQuery};

use maud::{Markup, html};

use crate::html::{int, ms, pct, url_enc, when_rfc3339};
use crate::page::{Ctx, layout, tiles};
use crate::{Ui, UiError, html_response};

fn consumer_link(ctx: &Ctx, id: &str) -> Markup {
    html! { a href=(ctx.href(&format!("/consumers/{}", url_enc(id)), &[])) { (id) } }
}

fn share(v: Option<f64>) -> String {
    v.map(pct).unwrap_or_else(|| "-".to_string())
}

fn report_query(ctx: &Ctx) -> ReportQuery {
    ReportQuery {
        to: Some(ctx.range.to_ms.to_string()),
        limit: None,
        format: None,
    }
}

pub async fn portfolio(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/portfolio", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(redirect) => return Ok(redirect),
    };
    let p = api::portfolio(
        &ui.app,
        &PortfolioQuery {
            month: ctx.params.owned("month"),
            ..Default::default()
        },
    )
    .await?;
    let c = &p.consumers;
    let mut body = tiles(&[
        ("Active consumers", int(c.active as u64), "active"),
        (
            "Active the month before",
            int(c.active_prev as u64),
            "active_prev",
        ),
        ("New", int(c.new as u64), "new"),
        ("Churned", int(c.churned as u64), "churned"),
        ("Reactivated", int(c.reactivated as u64), "reactivated"),
        ("Stagnating", int(c.stagnating as u64), "stagnating"),
    ]);
    body.push_str(&portfolio_markup(&ctx, &p).into_string());
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, &format!("Portfolio {}", p.month), "/portfolio", &body),
    ))
}

fn portfolio_markup(ctx: &Ctx, p: &Portfolio) -> Markup {
    let lists = [
        ("New", &p.lists.new),
        ("Churned", &p.lists.churned),
        ("Reactivated", &p.lists.reactivated),
        ("Stagnating", &p.lists.stagnating),
    ];
    html! {
        form.filters method="get" action="/portfolio" {
            label for="month" { "Month" }
            input #month type="month" name="month" value=(p.month);
            button type="submit" { "Show" }
        }
        section aria-labelledby="h-who" {
            h2 #h-who { "Who" }
            ul #consumer-lists {
                @for (label, names) in lists {
                    li data-list=(label.to_lowercase()) {
                        strong { (label) ": " }
                        @if names.is_empty() { span.muted { "none" } }
                        @for (i, n) in names.iter().enumerate() {
                            @if i > 0 { ", " }
                            (consumer_link(ctx, n))
                        }
                    }
                }
            }
        }
        section aria-labelledby="h-apis" {
            h2 #h-apis { "Per API" }
            @if p.apis.is_empty() {
                p.empty { "No traffic in this month or the one before." }
            } @else {
                div.scroll {
                    table.data #apis {
                        caption { "Each API this month, the month before in brackets; satisfaction is Apdex with T = " (p.satisfaction_threshold_ms) " ms" }
                        thead { tr {
                            th scope="col" { "API" }
                            th scope="col" class="num" { "Active consumers" }
                            th scope="col" class="num" { "Requests" }
                            th scope="col" class="num" { "Error rate" }
                            th scope="col" class="num" { "p95" }
                            th scope="col" class="num" { "Satisfaction" }
                        } }
                        tbody {
                            @for a in &p.apis {
                                tr data-api=(a.api) {
                                    th scope="row" { (a.api) }
                                    td.num data-metric="active_consumers" { (a.active_consumers) " (" (a.active_consumers_prev) ")" }
                                    td.num { (int(a.requests)) " (" (int(a.requests_prev)) ")" }
                                    td.num { (pct(a.error_rate)) " (" (pct(a.error_rate_prev)) ")" }
                                    td.num { (ms(a.p95_ms)) " (" (ms(a.p95_ms_prev)) ")" }
                                    td.num data-metric="satisfaction" { (share(a.satisfaction)) " (" (share(a.satisfaction_prev)) ")" }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(t) = &p.top_plan {
            section aria-labelledby="h-top" {
                h2 #h-top { "The " (t.plan) " plan" }
                p #top-plan data-experience=(t.experience) {
                    "Its " (t.consumers) " consumers' experience is " strong { (t.experience) } " against the month before: satisfaction "
                    (share(t.satisfaction)) " (was " (share(t.satisfaction_prev)) "), error rate " (pct(t.error_rate)) " (was " (pct(t.error_rate_prev)) "), p95 " (ms(t.p95_ms)) " (was " (ms(t.p95_ms_prev)) ")."
                }
            }
        }
        @if !p.releases.is_empty() {
            section aria-labelledby="h-releases" {
                h2 #h-releases { "Releases this month" }
                ul { @for r in &p.releases { li { (r.at) ": " (r.api) " " strong { (r.version) } } } }
            }
        }
        section aria-labelledby="h-defs" {
            h2 #h-defs { "Definitions" }
            dl.definitions {
                @for (k, v) in &p.definitions { dt { (k) } dd { (v) } }
            }
        }
        p.note { code { "GET /v1/portfolio?month=" (p.month) } " answers the same numbers; add " code { "&format=csv" } " for CSV, or run " code { "clientele report portfolio" } "." }
    }
}

pub async fn outreach(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx =
        match crate::admin::signed_in(&ui, &headers, &uri, "/reports/outreach", raw.as_deref())? {
            Ok(ctx) => ctx,
            Err(redirect) => return Ok(redirect),
        };
    let r = api::outreach(&ui.app, &report_query(&ctx)).await?;
    let markup = html! {
        @if r.items.is_empty() {
            p.empty { "Nobody to contact: no error spikes, integration errors, schema violations, retry storms, deprecated calls or drops of paying consumers in the two weeks before the end of this range." }
        } @else {
            ol #outreach.cards {
                @for i in &r.items {
                    li data-consumer=(i.consumer) {
                        h2 { (consumer_link(&ctx, &i.consumer)) " " span.muted { (i.plan.as_deref().unwrap_or("no plan")) } }
                        p { strong { (i.reason.replace('_', " ")) } " since " (when_rfc3339(&i.since))
                            @if let Some(rel) = &i.release { ", after release " strong { (rel.version) } " of " (rel.api) } }
                        @if let Some(s) = i.evidence.get("summary").and_then(|v| v.as_str()) { p.muted { (s) } }
                        blockquote { (i.message) }
                    }
                }
            }
        }
        p.note { "Ranked by reason, severity, plan and whether it followed a release. " code { "GET /v1/reports/outreach" } " answers the same list." }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Outreach", "/reports/outreach", &markup.into_string()),
    ))
}

pub async fn pricing(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx =
        match crate::admin::signed_in(&ui, &headers, &uri, "/reports/pricing", raw.as_deref())? {
            Ok(ctx) => ctx,
            Err(redirect) => return Ok(redirect),
        };
    let r = api::pricing(&ui.app, &report_query(&ctx)).await?;
    let markup = html! {
        @if r.items.is_empty() {
            p.empty { "Every consumer fits its plan over the 28 days before the end of this range." }
        } @else {
            div.scroll {
                table.data #pricing {
                    caption { "Consumers whose plan does not fit their usage, " (r.from) " to " (r.to) }
                    thead { tr {
                        th scope="col" { "Consumer" }
                        th scope="col" { "Plan" }
                        th scope="col" { "Recommended" }
                        th scope="col" { "Why" }
                    } }
                    tbody {
                        @for i in &r.items {
                            tr data-consumer=(i.consumer) {
                                th scope="row" { (consumer_link(&ctx, &i.consumer)) }
                                td { (i.plan.as_deref().unwrap_or("-")) }
                                td data-metric="recommended_plan" { (i.recommended_plan.as_deref().unwrap_or("-")) }
                                td { (i.reason) }
                            }
                        }
                    }
                }
            }
        }
        p.note { "Usage against the plan's quota and rate, and the plan's other consumers. " code { "GET /v1/reports/pricing" } " answers the same list with its evidence." }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(
            &ctx,
            "Pricing fit",
            "/reports/pricing",
            &markup.into_string(),
        ),
    ))
}

pub async fn sla(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/reports/sla", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(redirect) => return Ok(redirect),
    };
    let r = api::sla(&ui.app, &report_query(&ctx)).await?;
    let markup = html! {
        @if r.items.is_empty() {
            p.empty { "No traffic in the 28 days before the end of this range." }
        } @else {
            div.scroll {
                table.data #sla {
                    caption { "Observed over 28 days (" (r.from) " to " (r.to) ") and a proposed SLO each consumer would have met; burn rates over 1 h, 6 h and 3 d against 14.4, 6 and 1" }
                    thead { tr {
                        th scope="col" { "Consumer" }
                        th scope="col" class="num" { "p50" }
                        th scope="col" class="num" { "p95" }
                        th scope="col" class="num" { "p99" }
                        th scope="col" class="num" { "Availability" }
                        th scope="col" { "Proposed SLO" }
                        th scope="col" { "Burn (1 h, 6 h, 3 d)" }
                    } }
                    tbody {
                        @for i in &r.items {
                            tr data-consumer=(i.consumer) {
                                th scope="row" { (consumer_link(&ctx, &i.consumer)) }
                                td.num { (ms(i.p50_ms)) }
                                td.num { (ms(i.p95_ms)) }
                                td.num { (ms(i.p99_ms)) }
                                td.num data-metric="availability" { (format!("{:.3}%", i.availability * 100.0)) }
                                td { "p95 ≤ " (ms(i.proposed.latency_p95_ms)) ", " (format!("{}%", i.proposed.availability * 100.0)) }
                                td {
                                    @for (n, b) in i.burn.iter().enumerate() {
                                        @if n > 0 { ", " }
                                        @if b.alerting { strong.sev.sev-critical { (b.burn_rate) " (alert)" } } @else { (b.burn_rate) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.note { "Availability counts the API's failures (5xx). A proposal is never tighter than what the consumer gets today. " code { "GET /v1/reports/sla" } " answers the same table." }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "SLA", "/reports/sla", &markup.into_string()),
    ))
}

pub async fn agents(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/reports/agents", raw.as_deref())?
    {
        Ok(ctx) => ctx,
        Err(redirect) => return Ok(redirect),
    };
    let r = api::agents(&ui.app, &report_query(&ctx)).await?;
    let markup = html! {
        @if r.items.is_empty() {
            p.empty { "No session repeated the same call five times or more in the 7 days before the end of this range. Sessions come from the client's session header." }
        } @else {
            @for i in &r.items {
                section.panel data-consumer=(i.consumer) aria-label=(format!("{} sessions", i.consumer)) {
                    h2 { (consumer_link(&ctx, &i.consumer)) }
                    p { (i.looping_sessions) " of " (i.sessions) " sessions repeat calls; "
                        strong data-metric="saved_round_trips" { (int(i.saved_round_trips)) } " round trips could be saved." }
                    div.scroll {
                        table.data {
                            caption { "The calls " (i.consumer) "'s sessions hammer" }
                            thead { tr {
                                th scope="col" { "Call" }
                                th scope="col" class="num" { "Sessions" }
                                th scope="col" class="num" { "Calls" }
                                th scope="col" class="num" { "Saved" }
                                th scope="col" { "What would help" }
                            } }
                            tbody {
                                @for c in &i.calls {
                                    tr {
                                        th scope="row" { code { (c.call) } }
                                        td.num { (c.sessions) }
                                        td.num { (int(c.calls)) }
                                        td.num { (int(c.saved_round_trips)) }
                                        td { (c.suggestion) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        p.note { code { "GET /v1/reports/agents" } " answers the same list." }
    };
    Ok(html_response(
        StatusCode::OK,
        layout(
            &ctx,
            "Agent sessions",
            "/reports/agents",
            &markup.into_string(),
        ),
    ))
}
