//! The deprecations page: every deprecated operation, who still calls it, how much and when
//! last, and each caller's migration to the replacement. Read through the API's own
//! `GET /v1/deprecations` handler, so the page and the API cannot disagree.

use std::fmt::Write;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_api::contract::{self, DeprecationQuery};
use clientele_api::error::{Json, Query};
use serde_json::Value;

use crate::html::{esc, int, url_enc};
use crate::page::{layout, tiles};
use crate::{Ui, UiError, html_response};

fn text<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

pub async fn page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/deprecations", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(to_sign_in) => return Ok(to_sign_in),
    };
    let Json(report) = contract::deprecations(
        State(ui.app.clone()),
        Query(DeprecationQuery {
            from: Some(ctx.range.start_rfc3339()),
        }),
    )
    .await?;
    // The sunset proposals from the callers' migration pace (`GET /v1/reports/deprecation`).
    let proposals = clientele_api::reports::deprecation(
        &ui.app,
        &clientele_api::reports::ReportQuery {
            to: Some(ctx.range.to_ms.to_string()),
            ..Default::default()
        },
    )
    .await?;
    let ops: Vec<Value> = report
        .get("deprecations")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let callers: usize = ops
        .iter()
        .map(|o| o["consumers"].as_array().map_or(0, Vec::len))
        .sum();
    let mut body = tiles(&[
        (
            "Deprecated operations",
            int(ops.len() as u64),
            "deprecated_operations",
        ),
        (
            "Consumers still calling",
            int(callers as u64),
            "deprecated_callers",
        ),
    ]);
    if ops.is_empty() {
        body.push_str(r#"<p class="note">No deprecated operations: mark operations <code>deprecated: true</code> in an API's OpenAPI spec, or list them under <code>[[apis]] deprecations</code> with a sunset date.</p>"#);
    }
    for op in &ops {
        let route = text(op, "route");
        let api = text(op, "api");
        let replaced = text(op, "replaced_by");
        let sunset = text(op, "sunset");
        let _ = write!(
            body,
            r#"<section class="panel"><h2><code>{}</code> <span class="muted">{}</span></h2><p>Deprecated in the {} ({}){}{}.</p>"#,
            esc(route),
            esc(api),
            if text(op, "source") == "config" {
                "config"
            } else {
                "spec"
            },
            esc(text(op, "pointer")),
            if replaced.is_empty() {
                String::new()
            } else {
                format!("; replaced by <code>{}</code>", esc(replaced))
            },
            if sunset.is_empty() {
                String::new()
            } else {
                format!("; sunset {}", esc(sunset))
            },
        );
        if let Some(p) = proposals
            .items
            .iter()
            .find(|p| p.api == api && p.route == route)
        {
            let _ = write!(
                body,
                r#"<p class="proposal" data-proposed-sunset="{}"><strong>Proposed sunset: {}</strong> ({}){}.</p>"#,
                esc(p.proposed_sunset.as_deref().unwrap_or("")),
                esc(p
                    .proposed_sunset
                    .as_deref()
                    .map_or("none yet", |s| &s[..s.len().min(10)])),
                esc(&p.reason),
                if p.sunset_at_risk {
                    "; callers will still be on it at the configured sunset"
                } else {
                    ""
                },
            );
        }
        let consumers = op["consumers"].as_array().cloned().unwrap_or_default();
        if consumers.is_empty() {
            body.push_str("<p class=\"note\">No consumer called it in this range.</p></section>");
            continue;
        }
        let _ = write!(
            body,
            r#"<div class="table-wrap"><table><caption>Consumers still calling {}, most calls first</caption><thead><tr><th scope="col">Consumer</th><th scope="col" class="num">Calls</th><th scope="col">Last call</th><th scope="col" class="num">Calls to the replacement</th><th scope="col">Migration</th></tr></thead><tbody>"#,
            esc(route)
        );
        for c in &consumers {
            let id = text(c, "consumer");
            let progress = c.get("migration_progress").and_then(Value::as_f64);
            let migration = match progress {
                Some(p) => {
                    let pct = (p * 100.0).round().clamp(0.0, 100.0);
                    format!(
                        r#"<span class="bar" role="img" aria-label="{pct:.0}% migrated"><span style="width:{pct:.0}%"></span></span> {pct:.0}% on the replacement"#
                    )
                }
                None => "no replacement known".to_string(),
            };
            let _ = write!(
                body,
                r#"<tr><td><a href="{}">{}</a></td><td class="num">{}</td><td>{}</td><td class="num">{}</td><td>{}</td></tr>"#,
                esc(&ctx.href(&format!("/consumers/{}", url_enc(id)), &[])),
                esc(id),
                int(c["calls"].as_u64().unwrap_or(0)),
                esc(text(c, "last_call")),
                int(c["replacement_calls"].as_u64().unwrap_or(0)),
                migration
            );
        }
        body.push_str("</tbody></table></div></section>");
    }
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Deprecations", "/deprecations", &body),
    ))
}
