//! Budget use after a restart. On one node, budgets are counted in memory (the slot's
//! counters); at start-up they are restored from the engine, which has just been rebuilt
//! from the stored events: each consumer's tokens and priced cost since the start of the UTC
//! day and month. So a restart never hands every consumer a fresh budget. (With Redis the
//! counts live there and nothing needs restoring.)

use std::collections::HashMap;

use clientele_analytics::{DAY_MS, Engine, Query};
use clientele_core::keys::KeyIndex;
use clientele_core::limits::{BUDGET_KINDS, Budgets, Periods};

/// Raises each budgeted consumer's counters to what its stored events used in the current
/// day and month. Returns how many consumers were restored.
pub fn restore(keys: &KeyIndex, engine: &Engine, now_ms: i64) -> usize {
    let slots = keys.slots();
    if !slots.values().any(|s| s.policy.budgets.any()) {
        return 0;
    }
    let periods = Periods::at(now_ms);
    let day_start = now_ms - now_ms.rem_euclid(DAY_MS);
    let month_start = Periods::month_bounds(now_ms).map_or(day_start, |(s, _)| s);
    let totals = |from_ms: i64| -> HashMap<String, (u64, f64)> {
        engine
            .consumer_totals(&Query {
                from_ms,
                to_ms: now_ms + 1,
                api: None,
                consumers: None,
            })
            .into_iter()
            .map(|r| {
                let c = &r.rollup.counters;
                (
                    r.consumer,
                    (c.tokens_in.saturating_add(c.tokens_out), c.cost_usd),
                )
            })
            .collect()
    };
    let (day, month) = (totals(day_start), totals(month_start));
    let mut restored = 0;
    for (consumer, slot) in &slots {
        if !slot.policy.budgets.any() {
            continue;
        }
        restored += 1;
        for (i, kind) in BUDGET_KINDS.into_iter().enumerate() {
            if slot.policy.budgets.0[i].is_none() {
                continue;
            }
            let (used, period) = if kind.is_monthly() {
                (month.get(&**consumer), periods.month)
            } else {
                (day.get(&**consumer), periods.day)
            };
            let Some(&(tokens, cost)) = used else {
                continue;
            };
            let value = if i < 2 {
                Budgets::micro_usd(cost)
            } else {
                tokens
            };
            slot.budget[i].restore(period, value);
        }
    }
    restored
}
