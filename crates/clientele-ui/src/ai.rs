//! The AI page: tokens and cost per consumer and per model over the chosen range. Read through
//! the API's own `GET /v1/stats/models` handler, so the page and the API cannot disagree. A
//! model without a price shows as "unpriced", never as $0. The priced-apart parts of the
//! tokens (read from and written to the prompt cache, of `tokens_in`; reasoning, of
//! `tokens_out`) have their own columns, per consumer and per model.

use std::collections::BTreeMap;
use std::fmt::Write;

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use clientele_api::error::{Json, Query};
use clientele_api::handlers::{self, ModelStatsQuery};

use crate::html::{esc, int, url_enc};
use crate::page::{layout, tiles};
use crate::{Ui, UiError, html_response};

/// Sums of one consumer's or one model's rows.
#[derive(Default)]
struct Sum {
    requests: u64,
    tokens_in: u64,
    tokens_out: u64,
    cached: u64,
    cache_write: u64,
    reasoning: u64,
    cost: Option<f64>,
    unpriced: u64,
}

impl Sum {
    fn add(&mut self, m: &handlers::ModelStats) {
        self.requests += m.requests;
        self.tokens_in += m.tokens_in;
        self.tokens_out += m.tokens_out;
        self.cached += m.tokens_cached;
        self.cache_write += m.tokens_cache_write;
        self.reasoning += m.tokens_reasoning;
        self.unpriced += m.unpriced_requests;
        if let Some(c) = m.cost_usd {
            self.cost = Some(self.cost.unwrap_or(0.0) + c);
        }
    }
}

/// Dollars to the cent, or to six places below a cent; "unpriced" when unknown.
pub fn usd(v: Option<f64>) -> String {
    match v {
        None => "unpriced".to_string(),
        Some(c) if c != 0.0 && c.abs() < 0.01 => format!("${c:.6}"),
        Some(c) => format!("${c:.2}"),
    }
}

fn table(title: &str, first: &str, rows: &[(String, Option<String>, Sum)]) -> String {
    let mut out = format!(
        r#"<div class="table-wrap"><table><caption>{}</caption><thead><tr><th scope="col">{}</th><th scope="col" class="num">Requests</th><th scope="col" class="num">Tokens in</th><th scope="col" class="num">of which cache reads</th><th scope="col" class="num">of which cache writes</th><th scope="col" class="num">Tokens out</th><th scope="col" class="num">of which reasoning</th><th scope="col" class="num">Cost</th><th scope="col" class="num">Unpriced requests</th></tr></thead><tbody>"#,
        esc(title),
        esc(first)
    );
    for (name, href, s) in rows {
        let cell = match href {
            Some(h) => format!(r#"<a href="{}">{}</a>"#, esc(h), esc(name)),
            None => format!("<code>{}</code>", esc(name)),
        };
        let _ = write!(
            out,
            r#"<tr><td>{cell}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td><td class="num">{}</td></tr>"#,
            int(s.requests),
            int(s.tokens_in),
            int(s.cached),
            int(s.cache_write),
            int(s.tokens_out),
            int(s.reasoning),
            usd(s.cost),
            int(s.unpriced)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Rows by cost, the unpriced after the priced, then by tokens.
fn sorted(map: BTreeMap<String, Sum>) -> Vec<(String, Sum)> {
    let mut v: Vec<_> = map.into_iter().collect();
    v.sort_by(|a, b| {
        b.1.cost
            .unwrap_or(-1.0)
            .total_cmp(&a.1.cost.unwrap_or(-1.0))
            .then((b.1.tokens_in + b.1.tokens_out).cmp(&(a.1.tokens_in + a.1.tokens_out)))
    });
    v
}

pub async fn page(
    State(ui): State<Ui>,
    headers: HeaderMap,
    uri: Uri,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let ctx = match crate::admin::signed_in(&ui, &headers, &uri, "/ai", raw.as_deref())? {
        Ok(ctx) => ctx,
        Err(to_sign_in) => return Ok(to_sign_in),
    };
    let Json(list) = handlers::stats_models(
        State(ui.app.clone()),
        Query(ModelStatsQuery {
            from: Some(ctx.range.start_rfc3339()),
            to: Some(ctx.range.end_rfc3339()),
            consumer: None,
        }),
    )
    .await?;
    let mut total = Sum::default();
    let mut by_consumer: BTreeMap<String, Sum> = BTreeMap::new();
    let mut by_model: BTreeMap<String, Sum> = BTreeMap::new();
    for m in &list.models {
        total.add(m);
        by_consumer.entry(m.consumer.clone()).or_default().add(m);
        by_model.entry(m.model.clone()).or_default().add(m);
    }
    let mut body = tiles(&[
        ("Tokens in", int(total.tokens_in), "ai_tokens_in"),
        ("Tokens out", int(total.tokens_out), "ai_tokens_out"),
        (
            "Cost (priced models)",
            usd(total.cost.or(Some(0.0))),
            "ai_cost",
        ),
        ("Unpriced requests", int(total.unpriced), "ai_unpriced"),
    ]);
    if list.models.is_empty() {
        body.push_str(r#"<p class="note">No LLM traffic in this range. Token usage is read from the answers of OpenAI- and Anthropic-compatible paths (<code>/v1/chat/completions</code>, <code>/v1/messages</code>, ...), or of an API with <code>llm = "openai"</code>.</p>"#);
    } else {
        let consumers: Vec<_> = sorted(by_consumer)
            .into_iter()
            .map(|(c, s)| {
                let href = ctx.href(&format!("/consumers/{}", url_enc(&c)), &[]);
                (c, Some(href), s)
            })
            .collect();
        let models: Vec<_> = sorted(by_model)
            .into_iter()
            .map(|(m, s)| (m, None, s))
            .collect();
        let _ = write!(
            body,
            r#"<section class="panel"><h2>Cost per consumer</h2>{}</section><section class="panel"><h2>Cost per model</h2>{}</section>"#,
            table(
                "Cost per consumer, the most expensive first",
                "Consumer",
                &consumers
            ),
            table("Cost per model, the most expensive first", "Model", &models)
        );
    }
    Ok(html_response(
        StatusCode::OK,
        layout(&ctx, "AI usage", "/ai", &body),
    ))
}
