//! `agent_loop`: a session that repeats the identical call (same method, path, query and body,
//! by the gateway's fingerprint `Event::call_hash`; for an LLM answer asking for tool calls,
//! the same route, tool names and arguments) at least [`LOOP_REPEATS`] times, read
//! from the engine's sessions within the lookback. One finding per consumer and repeated
//! call; the session and the count are in the evidence. Two different prompts to
//! `POST /v1/chat/completions`, or a search refining its query, are different calls.

use clientele_analytics::sessions::LOOP_REPEATS;
use clientele_core::finding::{Finding, FindingKind, Severity};
use serde_json::json;

use crate::{Detector, EvalContext, new_finding_id};

/// Sessions looked at per evaluation, the latest first.
const MAX_SESSIONS: usize = 10_000;

#[derive(Debug, Clone, Default)]
pub struct AgentLoopDetector;

impl Detector for AgentLoopDetector {
    fn name(&self) -> &'static str {
        "agent_loop"
    }

    fn evaluate(&self, ctx: &EvalContext<'_>) -> Vec<Finding> {
        let from = ctx.now_ms - ctx.lookback_ms;
        let mut out = Vec::new();
        for s in ctx
            .engine
            .sessions
            .query(from, ctx.now_ms + 1, None, MAX_SESSIONS)
        {
            for (call, count) in &s.repeated {
                let severity = if *count >= 4 * LOOP_REPEATS {
                    Severity::Critical
                } else {
                    Severity::Warning
                };
                out.push(Finding {
                    id: new_finding_id(),
                    kind: FindingKind::AgentLoop,
                    consumer: Some(s.consumer.clone()),
                    api: None,
                    route: Some(call.clone()),
                    severity,
                    first_seen_ms: s.started_ms,
                    last_seen_ms: s.ended_ms,
                    summary: format!(
                        "{} repeated the identical call {call} {count} times in session {}: \
                         an agent stuck in a loop spends tokens for nothing",
                        s.consumer, s.session_id
                    ),
                    evidence: json!({
                        "session_id": s.session_id,
                        "call": call,
                        "count": count,
                        "threshold": LOOP_REPEATS,
                        "session_requests": s.requests,
                        "session_tokens_in": s.tokens_in,
                        "session_tokens_out": s.tokens_out,
                        "session_cost_usd": s.cost_usd,
                    }),
                });
            }
        }
        out
    }
}
