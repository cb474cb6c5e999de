//! `key_sharing`, `scraping`, `reselling` and `policy_violation`: the governance detector.
//!
//! It reads the behavioural features of `clientele-governance` (not the rollups: distinct
//! networks, end users and id walks are not in them) and hands the block verdicts of
//! `action = "block"` policies to the feature store's hook, which sets them on the consumers'
//! limit slots for the gateway to read.

use clientele_analytics::HOUR_MS;
use clientele_core::finding::Finding;

use crate::{Detector, EvalContext};

/// Judges every consumer-day of the window; see `clientele_governance::judge`.
#[derive(Debug, Default, Clone, Copy)]
pub struct GovernanceDetector;

impl Detector for GovernanceDetector {
    fn name(&self) -> &'static str {
        "governance"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let Some(features) = ctx.governance else {
            return Vec::new();
        };
        let judged = clientele_governance::judge::evaluate(
            features,
            ctx.now_ms,
            ctx.lookback_ms,
            ctx.consumers,
            ctx.plans,
        );
        // Blocks are about now: an evaluation as of another time (a replayed backfill) finds
        // what happened then, but must not block or unblock anyone today.
        if (ctx.now_ms - clientele_core::time::now_ms()).abs() <= HOUR_MS {
            features.apply_blocks(&judged.blocks);
        }
        judged
            .findings
            .into_iter()
            .map(|mut f| {
                f.id = crate::new_finding_id();
                f
            })
            .collect()
    }
}
