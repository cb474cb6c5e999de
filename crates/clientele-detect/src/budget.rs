//! `budget_exceeded`: a consumer whose AI budget (US dollars or tokens per day or month) refused
//! its requests within the lookback. The gateway refuses at once (429 `budget-exceeded`); this
//! finding tells the API's owner, with the refusals per hour, the consumer's budgets and what it
//! spent in the window, so a budget that is too small or an agent that burns it can be seen.
//!
//! Read from the engine's model table (refusals per hour and consumer, folded in from stored
//! events), never from raw events.

use clientele_core::finding::{Finding, FindingKind, Severity};
use clientele_core::limits::LimitPolicy;
use serde_json::json;

use crate::text::{count, when};
use crate::{Detector, EvalContext, new_finding_id};

#[derive(Debug, Clone, Default)]
pub struct BudgetDetector;

impl Detector for BudgetDetector {
    fn name(&self) -> &'static str {
        "budget_exceeded"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let from = ctx.now_ms - ctx.lookback_ms;
        let refusals = ctx.engine.models.budget_refusals(from, ctx.now_ms + 1);
        let mut out = Vec::new();
        for (consumer, hours) in refusals {
            let refused: u64 = hours.iter().map(|(_, n)| n).sum();
            let (Some(first), Some(last)) = (hours.first(), hours.last()) else {
                continue;
            };
            let first_seen = first.0;
            let last_seen = (last.0 + clientele_core::time::HOUR_MS).min(ctx.now_ms);
            let budgets = ctx
                .consumer(&consumer)
                .and_then(|c| LimitPolicy::for_consumer(c, ctx.plans))
                .map(|p| p.budgets.0);
            let usd = |v: Option<u64>| v.map(|m| m as f64 / 1e6);
            let budgets_json = budgets.map(|b| {
                json!({"budget_usd_per_day": usd(b[0]), "budget_usd_per_month": usd(b[1]),
                       "tokens_per_day": b[2], "tokens_per_month": b[3]})
            });
            let (tokens, cost) = ctx
                .engine
                .models
                .query(first_seen, ctx.now_ms + 1, Some(&consumer))
                .iter()
                .fold((0u64, None::<f64>), |(t, c), (_, _, u)| {
                    let c = match (c, u.cost_usd) {
                        (Some(a), Some(b)) => Some(a + b),
                        (a, b) => a.or(b),
                    };
                    (t + u.tokens_in + u.tokens_out, c)
                });
            out.push(Finding {
                id: new_finding_id(),
                kind: FindingKind::BudgetExceeded,
                consumer: Some(consumer.clone()),
                api: None,
                route: None,
                severity: Severity::Warning,
                first_seen_ms: first_seen,
                last_seen_ms: last_seen,
                summary: format!(
                    "{consumer} spent its AI budget: {} requests were refused (429 budget-exceeded) since {}; raise the budget if the use is expected, or look for an agent repeating calls",
                    count(refused as f64),
                    when(first_seen)
                ),
                evidence: json!({
                    "refused": refused,
                    "hours": hours.iter().map(|(h, n)| json!({"hour": crate::text::ts(*h), "refused": n})).collect::<Vec<_>>(),
                    "budgets": budgets_json,
                    "tokens_since_first_refusal_hour": tokens,
                    "cost_usd_since_first_refusal_hour": cost,
                }),
            });
        }
        out
    }
}
