//! Findings on the dashboard: the findings page, and the lists on the overview and a
//! consumer's page. Read through the API's own `GET /v1/findings` handler.

use std::collections::BTreeSet;
use std::fmt::Write;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_api::error::{Json, Query};
use clientele_api::findings::{self, FindingOut, FindingsQuery};
use clientele_core::finding::FindingKind;
use serde_json::Value;

use crate::html::{esc, int, url_enc};
use crate::page::{Ctx, Range, layout, tiles};
use crate::{Ui, UiError, html_response};

const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Findings active in the range (seen in it), most recent first, as the API lists them.
pub(crate) async fn load(
    ui: &Ui,
    r: &Range,
    kind: Option<String>,
    consumer: Option<String>,
    api: Option<String>,
    limit: usize,
) -> Result<Vec<FindingOut>, UiError> {
    let Json(list) = findings::list(
        State(ui.app.clone()),
        Query(FindingsQuery {
            from: Some(r.start_rfc3339()),
            to: Some(r.end_rfc3339()),
            kind,
            consumer,
            api,
            limit: Some(limit.to_string()),
        }),
    )
    .await?;
    Ok(list.findings)
}

/// An RFC 3339 time as `2026-11-24 19:28` (UTC, as every page says).
fn short(ts: &str) -> String {
    clientele_core::time::parse_ts(ts)
        .ok()
        .and_then(crate::html::utc)
        .map_or_else(
            || ts.to_string(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
}

/// `error_spike` → `Error spike`.
fn kind_label(kind: &str) -> String {
    let words: Vec<String> = kind
        .split('_')
        .enumerate()
        .map(|(i, w)| match w {
            "api" => "API".to_string(),
            w if i == 0 => {
                let mut w = w.to_string();
                if let Some(first) = w.get_mut(0..1) {
                    first.make_ascii_uppercase();
                }
                w
            }
            w => w.to_string(),
        })
        .collect();
    words.join(" ")
}

/// The evidence as `name: value` lines; nested objects become dotted names, so every number
/// reads on its own line instead of as JSON.
fn evidence(v: &Value) -> String {
    let mut lines = Vec::new();
    flatten("", v, 0, &mut lines);
    let mut out = String::from("<dl class=\"evidence\">");
    for (k, text) in lines {
        let _ = write!(
            out,
            "<div><dt>{}</dt><dd>{}</dd></div>",
            esc(&k),
            esc(&text)
        );
    }
    out.push_str("</dl>");
    out
}

fn flatten(prefix: &str, v: &Value, depth: usize, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) if depth < 3 => {
            for (k, v) in map {
                let name = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&name, v, depth + 1, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        Value::Number(n) => out.push((
            prefix.to_string(),
            match n.as_f64() {
                Some(f) if f.fract() != 0.0 => {
                    let s = format!("{f:.4}");
                    s.trim_end_matches('0').to_string()
                }
                _ => n.to_string(),
            },
        )),
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let parts: Vec<String> = items
                .iter()
                .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
                .collect();
            out.push((prefix.to_string(), parts.join(", ")));
        }
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// A findings table. `link_consumers` makes consumer names links to their pages.
pub(crate) fn table(ctx: &Ctx, caption: &str, rows: &[FindingOut], show_consumer: bool) -> String {
    if rows.is_empty() {
        return "<p class=\"empty\">Nothing noticed in this range.</p>".to_string();
    }
    let mut out = format!(
        r#"<div class="scroll"><table class="data findings"><caption>{}</caption><thead><tr><th scope="col">Severity</th><th scope="col">What</th>"#,
        esc(caption)
    );
    if show_consumer {
        out.push_str(r#"<th scope="col">Consumer</th>"#);
    }
    out.push_str(r#"<th scope="col">Route</th><th scope="col">Summary</th><th scope="col">Last seen</th><th scope="col">Evidence</th></tr></thead><tbody>"#);
    for f in rows {
        let _ = write!(
            out,
            r#"<tr data-finding="{id}"><td><span class="sev sev-{sev}">{sev}</span></td><th scope="row">{kind}</th>"#,
            id = esc(&f.id),
            sev = esc(&f.severity),
            kind = esc(&kind_label(&f.kind)),
        );
        if show_consumer {
            let who = match &f.consumer {
                Some(c) => format!(
                    r#"<a href="{}">{}</a>"#,
                    esc(&ctx.href(&format!("/consumers/{}", url_enc(c)), &[])),
                    esc(c)
                ),
                None => r#"<span class="muted">whole API</span>"#.to_string(),
            };
            let _ = write!(out, "<td>{who}</td>");
        }
        let _ = write!(
            out,
            r#"<td>{route}</td><td class="summary">{summary}{release}</td><td class="when">{last}<br><span class="muted">since {first}</span></td><td><details><summary>Numbers</summary>{ev}</details></td></tr>"#,
            route = f
                .route
                .as_deref()
                .map_or_else(|| "—".to_string(), |r| format!("<code>{}</code>", esc(r))),
            summary = esc(&f.summary),
            release = f
                .since_release
                .as_deref()
                .map_or_else(String::new, |v| format!(
                    r#" <span class="muted">(since release {})</span>"#,
                    esc(v)
                )),
            last = esc(&short(&f.last_seen)),
            first = esc(&short(&f.first_seen)),
            ev = evidence(&f.evidence),
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

pub async fn page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/findings", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(to_sign_in) => return Ok(to_sign_in),
    };
    let p = &ctx.params;
    let severity = p.get("severity");
    if let Some(sev) = severity {
        if !SEVERITIES.contains(&sev) {
            return Err(UiError::bad_request(format!(
                "severity {sev:?} must be critical, warning or info"
            )));
        }
    }
    let all = load(
        &ui,
        &ctx.range,
        p.owned("kind"),
        p.owned("consumer"),
        p.owned("api"),
        1000,
    )
    .await?;
    let count = |sev: &str| all.iter().filter(|f| f.severity == sev).count() as u64;
    let mut body = tiles(&[
        ("Critical", int(count("critical")), "findings_critical"),
        ("Warning", int(count("warning")), "findings_warning"),
        ("Info", int(count("info")), "findings_info"),
    ]);
    let consumers: BTreeSet<String> = ui
        .app
        .control
        .list_consumers()
        .await
        .map_err(clientele_api::ApiError::from)?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let kinds: BTreeSet<String> = FindingKind::ALL
        .iter()
        .map(|k| k.as_str().to_string())
        .collect();
    let severities: BTreeSet<String> = SEVERITIES.iter().map(|s| s.to_string()).collect();
    let selects = format!(
        "{}{}{}",
        crate::admin::filter_select("severity", "Severity", &severities, severity),
        crate::admin::filter_select("kind", "Kind", &kinds, p.get("kind")),
        crate::admin::filter_select("consumer", "Consumer", &consumers, p.get("consumer")),
    );
    body.push_str(&crate::admin::filter_form(
        &ctx,
        &selects,
        &["severity", "kind", "consumer", "api"],
    ));
    // Most severe first, then most recent: what to look at first is at the top.
    let mut rows: Vec<FindingOut> = all
        .into_iter()
        .filter(|f| severity.is_none_or(|s| f.severity == s))
        .collect();
    let rank = |s: &str| {
        SEVERITIES
            .iter()
            .position(|x| *x == s)
            .unwrap_or(SEVERITIES.len())
    };
    rows.sort_by(|a, b| {
        rank(&a.severity)
            .cmp(&rank(&b.severity))
            .then_with(|| b.last_seen.cmp(&a.last_seen))
    });
    let caption = format!(
        "{} finding{} seen in this range, most severe and most recent first",
        rows.len(),
        if rows.len() == 1 { "" } else { "s" }
    );
    body.push_str(&table(&ctx, &caption, &rows, true));
    body.push_str(r#"<p class="note">Detectors run every minute over the rollups; <code>POST /v1/findings/evaluate</code> runs them now.</p>"#);
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "Findings", "/findings", &body),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_evidence_read_as_text() {
        assert_eq!(kind_label("integration_errors"), "Integration errors");
        assert_eq!(kind_label("api_errors"), "API errors");
        let ev = evidence(&serde_json::json!({
            "baseline": 0.0125, "observed": 12, "note": "<b>",
            "limit": {"plan": "free", "burst": 4}, "hours": [1, 2]
        }));
        assert!(ev.contains("<dt>limit.plan</dt><dd>free</dd>"), "{ev}");
        assert!(ev.contains("<dt>hours</dt><dd>1, 2</dd>"), "{ev}");
        assert!(ev.contains("<dt>baseline</dt><dd>0.0125</dd>"), "{ev}");
        assert!(ev.contains("<dd>12</dd>"));
        assert!(ev.contains("&lt;b&gt;"), "escaped");
    }
}
