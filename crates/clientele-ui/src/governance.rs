//! The governance page (riskiest consumers, their factors and their governance findings) and
//! the governance section of a consumer's page (its risk and behaviour per day). Numbers come
//! from `clientele_api::governance`, called in-process, so the page and
//! `GET /v1/governance/risk` cannot disagree.
//!
//! Written with maud: every interpolation is escaped unless it is marked `PreEscaped`, and the
//! only `PreEscaped` parts are fragments built by this crate's own escaping helpers.

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_api::findings::FindingOut;
use clientele_api::governance::{ConsumerFeatures, RiskOut, consumer_features, risk_report};
use maud::{Markup, PreEscaped, html};

use crate::html::{int, pct, url_enc};
use crate::page::{Ctx, layout, tiles};
use crate::{Ui, UiError, html_response};

/// Scores at or above this are called high.
const HIGH_RISK: f64 = 50.0;

fn factor_label(name: &str) -> &str {
    match name {
        "volume_variance" => "Volume variance",
        "rate_limited" => "Rate limited",
        "errors" => "Errors",
        "use_case_mismatch" => "Use-case mismatch",
        "governance_findings" => "Governance findings",
        other => other,
    }
}

fn score_class(score: f64) -> &'static str {
    if score >= HIGH_RISK {
        "sev sev-critical"
    } else if score >= 20.0 {
        "sev sev-warning"
    } else {
        "sev sev-info"
    }
}

/// The factors of one score as a list.
fn factors(r: &RiskOut) -> Markup {
    html! {
        @if r.factors.is_empty() {
            span.muted { "nothing stands out" }
        } @else {
            ul.factors {
                @for f in &r.factors {
                    li {
                        strong { (factor_label(&f.name)) " +" (format!("{:.0}", f.value)) }
                        ": " (f.detail)
                    }
                }
            }
        }
    }
}

fn risk_table(ctx: &Ctx, rows: &[RiskOut]) -> Markup {
    html! {
        @if rows.is_empty() {
            p.empty { "No consumer made calls in this range." }
        } @else {
            div.scroll {
                table.data #risk {
                    caption { (rows.len()) " consumers, riskiest first; a score is the sum of its factors (0-100)" }
                    thead { tr {
                        th scope="col" { "Consumer" }
                        th scope="col" { "Plan" }
                        th scope="col" class="num" { "Risk" }
                        th scope="col" { "Factors" }
                    } }
                    tbody {
                        @for r in rows {
                            tr data-consumer=(r.consumer) {
                                th scope="row" {
                                    a href=(ctx.href(&format!("/consumers/{}", url_enc(&r.consumer)), &[])) { (r.consumer) }
                                }
                                td { (r.plan.as_deref().unwrap_or("—")) }
                                td.num { span class=(score_class(r.score)) data-score=(r.score) { (format!("{:.0}", r.score)) } }
                                td { (factors(r)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

pub async fn page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/governance", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(to_sign_in) => return Ok(to_sign_in),
    };
    let plan = ctx.params.owned("plan");
    let (list, findings) =
        risk_report(&ui.app, ctx.range.from_ms, ctx.range.to_ms, plan.as_deref()).await?;
    let blocked = ui.app.governance.blocked();
    let high = list
        .consumers
        .iter()
        .filter(|r| r.score >= HIGH_RISK)
        .count();
    let mut body = tiles(&[
        (
            "Consumers scored",
            int(list.consumers.len() as u64),
            "risk_consumers",
        ),
        ("High risk (50+)", int(high as u64), "risk_high"),
        (
            "Governance findings",
            int(findings.len() as u64),
            "governance_findings",
        ),
        (
            "Blocked by policy now",
            int(blocked.len() as u64),
            "policy_blocked",
        ),
    ]);
    let plans: std::collections::BTreeSet<String> = ui.app.plans.iter().cloned().collect();
    body.push_str(&crate::admin::filter_form(
        &ctx,
        &crate::admin::filter_select("plan", "Plan", &plans, ctx.params.get("plan")),
        &["plan"],
    ));
    let rows: Vec<FindingOut> = findings.into_iter().map(FindingOut::from).collect();
    let found = crate::findings::table(
        &ctx,
        "Key sharing, scraping, reselling and plan-policy findings, most recent first",
        &rows,
        true,
    );
    let markup = html! {
        section aria-labelledby="h-risk" {
            h2 #h-risk { "Riskiest consumers" }
            (risk_table(&ctx, &list.consumers))
        }
        @if !blocked.is_empty() {
            section aria-labelledby="h-blocked" {
                h2 #h-blocked { "Blocked now" }
                ul {
                    @for (consumer, rule) in &blocked {
                        li { a href=(ctx.href(&format!("/consumers/{}", url_enc(consumer)), &[])) { (consumer) } " broke " code { (rule.as_str()) } "; its calls are refused with 403" }
                    }
                }
            }
        }
        section aria-labelledby="h-gov-found" {
            h2 #h-gov-found { "Governance findings" }
            (PreEscaped(found))
        }
        p.note { "Each consumer is judged against its own history and its plan's peers; behaviour it has always had (a nightly sync, a mobile app's many networks) is its baseline, not a finding. " code { "GET /v1/governance/risk" } " answers the same scores." }
    };
    body.push_str(&markup.into_string());
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Governance", "/governance", &body),
    ))
}

/// The governance section of a consumer's page: its risk in the page's range and its
/// behaviour per day.
pub(crate) async fn consumer_section(ui: &Ui, ctx: &Ctx, id: &str) -> Result<String, UiError> {
    let (list, _) = risk_report(&ui.app, ctx.range.from_ms, ctx.range.to_ms, None).await?;
    let risk = list.consumers.into_iter().find(|r| r.consumer == id);
    let features = consumer_features(&ui.app, id);
    let markup = html! {
        section aria-labelledby="h-governance" {
            h2 #h-governance { "Governance" }
            @match &risk {
                Some(r) => {
                    p { "Risk " span class=(score_class(r.score)) data-metric="risk_score" { (format!("{:.0}", r.score)) } " of 100 in this range." }
                    (factors(r))
                }
                None => { p.empty { "No calls in this range, so no risk score." } }
            }
            @if let Some(f) = &features { (features_table(f)) }
        }
    };
    Ok(markup.into_string())
}

fn features_table(f: &ConsumerFeatures) -> Markup {
    let days: Vec<_> = f.days.iter().rev().take(14).collect();
    html! {
        @if let Some(rule) = &f.blocked_by {
            p role="alert" { "Blocked now by its plan's policy: " code { (rule) } }
        }
        div.scroll {
            table.data #features {
                caption { "Behaviour per UTC day, most recent first (distinct counts are HyperLogLog estimates)" }
                thead { tr {
                    th scope="col" { "Day" }
                    th scope="col" class="num" { "Calls" }
                    th scope="col" class="num" { "Networks" }
                    th scope="col" class="num" { "User agents" }
                    th scope="col" class="num" { "TLS clients" }
                    th scope="col" class="num" { "Sessions" }
                    th scope="col" class="num" { "End users" }
                    th scope="col" class="num" { "Item ids" }
                    th scope="col" class="num" { "Sequential" }
                    th scope="col" class="num" { "Id range covered" }
                    th scope="col" class="num" { "404 on items" }
                    th scope="col" class="num" { "Active hours" }
                    th scope="col" class="num" { "Peak calls/s" }
                } }
                tbody {
                    @for d in days {
                        tr {
                            th scope="row" { (d.day) }
                            td.num { (int(d.requests)) }
                            td.num { (int(u64::from(d.networks))) }
                            td.num { (int(u64::from(d.user_agents))) }
                            td.num { (int(u64::from(d.tls_clients))) }
                            td.num { (int(u64::from(d.sessions))) }
                            td.num { (int(u64::from(d.end_users))) }
                            td.num { (int(u64::from(d.distinct_ids))) }
                            td.num { (pct(d.sequential_share)) }
                            td.num { (pct(d.id_range_coverage)) }
                            td.num { (pct(d.not_found_share)) }
                            td.num { (d.active_hours) " of 24" }
                            td.num { (d.max_per_second) }
                        }
                    }
                }
            }
        }
    }
}
