//! Tokens and cost per (hour, consumer, model): what `GET /v1/stats/models` reads.
//!
//! Kept beside the engine's tiers rather than in them, because only LLM traffic has a model
//! and adding it to every series key would multiply the tiers for everyone. Like the tiers it
//! is derived from stored events (folded in by the pipeline, rebuilt by replay at start-up).

use std::collections::BTreeMap;
use std::sync::Mutex;

use clientele_core::event::{Event, Outcome};
use clientele_core::time::HOUR_MS;

/// One model's use by one consumer.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelUsage {
    pub requests: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// The parts of `tokens_in` read from and written to the provider's prompt cache, and of
    /// `tokens_out` spent reasoning, as the providers reported them (0 where they did not).
    pub tokens_cached: u64,
    pub tokens_cache_write: u64,
    pub tokens_reasoning: u64,
    /// The summed cost; `None` when no request of the row had a price (the model is unpriced),
    /// so an unpriced model never reads as free.
    pub cost_usd: Option<f64>,
    /// Requests whose cost was unknown.
    pub unpriced_requests: u64,
}

impl ModelUsage {
    pub fn add(&mut self, o: &ModelUsage) {
        self.requests = self.requests.saturating_add(o.requests);
        self.tokens_in = self.tokens_in.saturating_add(o.tokens_in);
        self.tokens_out = self.tokens_out.saturating_add(o.tokens_out);
        self.tokens_cached = self.tokens_cached.saturating_add(o.tokens_cached);
        self.tokens_cache_write = self.tokens_cache_write.saturating_add(o.tokens_cache_write);
        self.tokens_reasoning = self.tokens_reasoning.saturating_add(o.tokens_reasoning);
        self.unpriced_requests = self.unpriced_requests.saturating_add(o.unpriced_requests);
        self.cost_usd = match (self.cost_usd, o.cost_usd) {
            (Some(a), Some(b)) => Some(crate::rollup::finite_sum(a, b)),
            (a, b) => a.or(b),
        };
    }
}

/// Hourly rows; a mutex held only for a map update or a scan (never across an await).
#[derive(Debug, Default)]
pub struct ModelTable {
    rows: Mutex<BTreeMap<(i64, String, String), ModelUsage>>,
    /// Requests refused by a budget, per (hour, consumer): what `budget_exceeded` reads.
    refusals: Mutex<BTreeMap<(i64, String), u64>>,
}

impl ModelTable {
    /// Folds in the events that name a model and a consumer.
    pub fn ingest(&self, events: &[Event]) {
        let mut rows = None;
        let mut refusals = None;
        for e in events {
            if let (Outcome::BudgetExceeded, Some(consumer)) = (e.outcome, &e.consumer) {
                let refusals = refusals
                    .get_or_insert_with(|| self.refusals.lock().unwrap_or_else(|e| e.into_inner()));
                let hour = e.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
                *refusals.entry((hour, consumer.clone())).or_default() += 1;
                continue;
            }
            let (Some(model), Some(consumer)) = (&e.model, &e.consumer) else {
                continue;
            };
            let rows =
                rows.get_or_insert_with(|| self.rows.lock().unwrap_or_else(|e| e.into_inner()));
            let hour = e.ts_ms.div_euclid(HOUR_MS) * HOUR_MS;
            let one = ModelUsage {
                requests: 1,
                tokens_in: e.tokens_in.unwrap_or(0),
                tokens_out: e.tokens_out.unwrap_or(0),
                tokens_cached: e.tokens_cached.unwrap_or(0),
                tokens_cache_write: e.tokens_cache_write.unwrap_or(0),
                tokens_reasoning: e.tokens_reasoning.unwrap_or(0),
                cost_usd: e.cost_usd,
                unpriced_requests: u64::from(e.cost_usd.is_none()),
            };
            rows.entry((hour, consumer.clone(), model.clone()))
                .or_default()
                .add(&one);
        }
    }

    /// Rows of hours starting in `[from, to)`, summed per (model, consumer), most expensive
    /// first (unpriced after priced, then by tokens).
    pub fn query(
        &self,
        from_ms: i64,
        to_ms: i64,
        consumer: Option<&str>,
    ) -> Vec<(String, String, ModelUsage)> {
        let start = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let mut sums: BTreeMap<(String, String), ModelUsage> = BTreeMap::new();
        {
            let rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
            let lo = (start, String::new(), String::new());
            for ((hour, c, m), u) in rows.range(lo..) {
                if *hour >= to_ms {
                    break;
                }
                if consumer.is_some_and(|want| want != c) {
                    continue;
                }
                sums.entry((m.clone(), c.clone())).or_default().add(u);
            }
        }
        let mut out: Vec<_> = sums.into_iter().map(|((m, c), u)| (m, c, u)).collect();
        out.sort_by(|a, b| {
            let cost = |u: &ModelUsage| u.cost_usd.unwrap_or(-1.0);
            cost(&b.2)
                .total_cmp(&cost(&a.2))
                .then((b.2.tokens_in + b.2.tokens_out).cmp(&(a.2.tokens_in + a.2.tokens_out)))
        });
        out
    }

    /// Each consumer's use of every model in hours starting in `[from, to)`, summed: the
    /// cache and reasoning parts the consumer stats show beside the rollups' tokens.
    pub fn per_consumer(&self, from_ms: i64, to_ms: i64) -> BTreeMap<String, ModelUsage> {
        let mut out: BTreeMap<String, ModelUsage> = BTreeMap::new();
        for (_, consumer, u) in self.query(from_ms, to_ms, None) {
            out.entry(consumer).or_default().add(&u);
        }
        out
    }

    /// Budget refusals in hours starting in `[from, to)`: per consumer, the hours (start ms)
    /// and the refusals in each, in time order.
    pub fn budget_refusals(&self, from_ms: i64, to_ms: i64) -> BTreeMap<String, Vec<(i64, u64)>> {
        let start = from_ms.div_euclid(HOUR_MS) * HOUR_MS;
        let mut out: BTreeMap<String, Vec<(i64, u64)>> = BTreeMap::new();
        let refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
        for ((hour, c), n) in refusals.range((start, String::new())..) {
            if *hour >= to_ms {
                break;
            }
            out.entry(c.clone()).or_default().push((*hour, *n));
        }
        out
    }

    /// Rows held (per hour, consumer and model), for `GET /v1/status`.
    pub fn rows_held(&self) -> usize {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Drops hours before `cutoff_ms`.
    pub fn prune(&self, cutoff_ms: i64) {
        {
            let cut = cutoff_ms.div_euclid(HOUR_MS) * HOUR_MS;
            let mut refusals = self.refusals.lock().unwrap_or_else(|e| e.into_inner());
            let keep = refusals.split_off(&(cut, String::new()));
            *refusals = keep;
        }
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        let keep = rows.split_off(&(
            cutoff_ms.div_euclid(HOUR_MS) * HOUR_MS,
            String::new(),
            String::new(),
        ));
        *rows = keep;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(
        ts_ms: i64,
        consumer: &str,
        model: &str,
        tin: u64,
        tout: u64,
        cost: Option<f64>,
    ) -> Event {
        let mut e: Event = serde_json::from_value(serde_json::json!({
            "id": format!("{ts_ms}{consumer}{model}"), "ts_ms": ts_ms, "consumer": consumer,
            "key_id": null, "api": "ai", "method": "POST", "path": "/v1/chat/completions",
            "route": "/v1/chat/completions", "status": 200, "latency_ms": 1.0,
            "upstream_latency_ms": null, "request_bytes": 1, "response_bytes": 1,
            "client_ip": null, "user_agent": null, "session_id": null, "trace_id": null,
            "outcome": "proxied", "plan": null, "team": null, "use_case": null,
            "model": null, "tokens_in": null, "tokens_out": null, "cost_usd": null
        }))
        .unwrap();
        e.model = Some(model.into());
        e.tokens_in = Some(tin);
        e.tokens_out = Some(tout);
        e.cost_usd = cost;
        e
    }

    #[test]
    fn sums_per_model_and_consumer_and_keeps_unpriced_null() {
        let t = ModelTable::default();
        t.ingest(&[
            event(HOUR_MS, "a", "gpt-4o", 10, 5, Some(0.01)),
            event(HOUR_MS + 5, "a", "gpt-4o", 20, 5, Some(0.02)),
            event(2 * HOUR_MS, "b", "local", 7, 3, None),
            event(9 * HOUR_MS, "a", "gpt-4o", 1, 1, Some(1.0)),
        ]);
        let rows = t.query(0, 3 * HOUR_MS, None);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].0.as_str(), rows[0].1.as_str()), ("gpt-4o", "a"));
        assert_eq!(rows[0].2.requests, 2);
        assert_eq!(rows[0].2.tokens_in, 30);
        assert!((rows[0].2.cost_usd.unwrap() - 0.03).abs() < 1e-12);
        assert_eq!(rows[1].2.cost_usd, None, "unpriced is null, not 0");
        assert_eq!(rows[1].2.unpriced_requests, 1);
        assert_eq!(t.query(0, 3 * HOUR_MS, Some("b")).len(), 1);
        let per = t.per_consumer(0, 3 * HOUR_MS);
        assert_eq!((per["a"].requests, per["b"].tokens_out), (2, 3));
        t.prune(5 * HOUR_MS);
        assert_eq!(t.query(0, 10 * HOUR_MS, None).len(), 1);
    }

    #[test]
    fn cache_and_reasoning_parts_are_summed() {
        let t = ModelTable::default();
        let mut a = event(HOUR_MS, "a", "claude-sonnet-4-5", 2_585, 15, Some(0.01));
        a.tokens_cached = Some(2_048);
        a.tokens_cache_write = Some(512);
        let mut b = event(HOUR_MS + 1, "a", "claude-sonnet-4-5", 100, 10, Some(0.01));
        b.tokens_cached = Some(50);
        let mut c = event(HOUR_MS + 2, "a", "o4-mini", 37, 120, Some(0.01));
        c.tokens_reasoning = Some(64);
        t.ingest(&[a, b, c]);
        let rows = t.query(0, 2 * HOUR_MS, None);
        let claude = rows.iter().find(|r| r.0 == "claude-sonnet-4-5").unwrap();
        assert_eq!(
            (
                claude.2.tokens_cached,
                claude.2.tokens_cache_write,
                claude.2.tokens_reasoning
            ),
            (2_098, 512, 0)
        );
        let per = t.per_consumer(0, 2 * HOUR_MS);
        assert_eq!(
            (per["a"].tokens_cached, per["a"].tokens_reasoning),
            (2_098, 64)
        );
    }

    #[test]
    fn budget_refusals_are_counted_per_hour_and_consumer() {
        let t = ModelTable::default();
        let mut refused = event(HOUR_MS + 1, "a", "x", 0, 0, None);
        refused.model = None;
        refused.tokens_in = None;
        refused.tokens_out = None;
        refused.outcome = Outcome::BudgetExceeded;
        let mut later = refused.clone();
        later.ts_ms = 3 * HOUR_MS;
        t.ingest(&[refused.clone(), refused, later]);
        let got = t.budget_refusals(0, 10 * HOUR_MS);
        assert_eq!(got["a"], vec![(HOUR_MS, 2), (3 * HOUR_MS, 1)]);
        // A refusal is not a use of a model.
        assert!(t.query(0, 10 * HOUR_MS, None).is_empty());
        t.prune(2 * HOUR_MS);
        assert_eq!(t.budget_refusals(0, 10 * HOUR_MS)["a"].len(), 1);
    }
}
