//! The digest: a summary of the reports (this month's portfolio, the top of the outreach list,
//! the plans that do not fit, the consumers burning their error budget) sent through every
//! `[[alerts]]` webhook in its format (JSON or Slack), every `[digest].interval_secs`.
//!
//! It gathers its inputs from the stores itself, as the API does for the reports, and runs the
//! same report functions on the blocking pool; a failed webhook is retried with the shared
//! retry policy and logged, never blocking anything else.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clientele_analytics::Engine;
use clientele_core::alert::{AlertFormat, AlertTarget};
use clientele_core::config::PlanConfig;
use clientele_core::time::{format_ts, now_ms};
use clientele_http::RetryPolicy;
use clientele_store::{ControlStore, FindingQuery, FindingStore, Release, StoreError};
use serde::Serialize;
use serde_json::{Value, json};

use super::{APDEX_T_MS, outreach, portfolio, pricing, sla};
use crate::alerts::Http;

/// How many outreach items a digest carries.
const OUTREACH_ITEMS: usize = 5;

/// Every release marker, posted or a spec version after the first, oldest first, with its
/// source: `api` or `spec`. `spec_apis` are the APIs with an OpenAPI spec.
pub async fn releases(
    control: &dyn ControlStore,
    spec_apis: &[String],
    api: Option<&str>,
) -> Result<Vec<(Release, &'static str)>, StoreError> {
    let mut out: Vec<(Release, &'static str)> = control
        .releases(api)
        .await?
        .into_iter()
        .map(|r| (r, "api"))
        .collect();
    for name in spec_apis {
        if api.is_some_and(|a| a != name) {
            continue;
        }
        // The first version is the spec as it was when Clientele first loaded it, a baseline
        // rather than a release; every later version (a reload that changed it) is one.
        for v in control.spec_versions(name).await?.into_iter().skip(1) {
            out.push((
                Release {
                    api: v.api,
                    version: format!("spec-{}", &v.hash[..v.hash.len().min(12)]),
                    at_ms: v.loaded_at_ms,
                    recorded_at_ms: v.loaded_at_ms,
                },
                "spec",
            ));
        }
    }
    out.sort_by(|(a, _), (b, _)| a.at_ms.cmp(&b.at_ms).then_with(|| a.api.cmp(&b.api)));
    Ok(out)
}

/// What the digest sends.
#[derive(Debug, Clone, Serialize)]
pub struct Digest {
    pub at: String,
    pub portfolio: portfolio::Portfolio,
    pub outreach: Vec<outreach::OutreachItem>,
    pub pricing: Vec<pricing::PricingItem>,
    /// SLA items with at least one burn-rate window alerting.
    pub sla_alerting: Vec<sla::SlaItem>,
}

/// Builds and sends digests.
pub struct DigestService {
    pub engine: Arc<Engine>,
    pub control: Arc<dyn ControlStore>,
    pub findings: Arc<dyn FindingStore>,
    pub plans: Arc<BTreeMap<String, PlanConfig>>,
    pub spec_apis: Vec<String>,
    pub targets: Vec<AlertTarget>,
    pub http: Http,
}

/// The digest as of `at_ms`, from the stores and the engine (what is sent, and what `GET
/// /v1/reports/digest` previews).
pub async fn build(
    engine: &Arc<Engine>,
    control: &dyn ControlStore,
    findings: &dyn FindingStore,
    plans: &Arc<BTreeMap<String, PlanConfig>>,
    spec_apis: &[String],
    at_ms: i64,
) -> Result<Digest, StoreError> {
    let consumers = control.list_consumers().await?;
    let releases: Vec<Release> = releases(control, spec_apis, None)
        .await?
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    let found = findings
        .list_findings(&FindingQuery {
            from_ms: Some(at_ms - outreach::FINDINGS_WINDOW_MS),
            limit: 10_000,
            ..Default::default()
        })
        .await?;
    let month = portfolio::Month::containing(at_ms)
        .ok_or_else(|| StoreError::Invalid("the clock is outside any month".into()))?;
    let (engine, plans) = (engine.clone(), plans.clone());
    tokio::task::spawn_blocking(move || {
        let by_id: HashMap<&str, &clientele_core::consumer::Consumer> =
            consumers.iter().map(|c| (c.id.as_str(), c)).collect();
        let plan_of = |c: &str| by_id.get(c).and_then(|c| c.plan.clone());
        let display = |c: &str| {
            by_id
                .get(c)
                .and_then(|c| c.name.clone())
                .unwrap_or_else(|| c.to_string())
        };
        let p = portfolio::portfolio(
            &engine, &consumers, &plans, &releases, month, at_ms, APDEX_T_MS,
        );
        let o = outreach::outreach(
            &engine,
            &plan_of,
            &display,
            &plans,
            &found,
            &releases,
            at_ms,
            OUTREACH_ITEMS,
        );
        let pr = pricing::pricing(&engine, &plan_of, &plans, at_ms, 20);
        let s = sla::sla(&engine, &plan_of, at_ms, 1000);
        Digest {
            at: format_ts(at_ms),
            portfolio: p,
            outreach: o.items,
            pricing: pr.items,
            sla_alerting: s
                .items
                .into_iter()
                .filter(|i| i.burn.iter().any(|b| b.alerting))
                .collect(),
        }
    })
    .await
    .map_err(|e| StoreError::Backend(format!("digest task failed: {e}")))
}

impl DigestService {
    /// The digest as of `at_ms`.
    pub async fn build(&self, at_ms: i64) -> Result<Digest, StoreError> {
        build(
            &self.engine,
            &*self.control,
            &*self.findings,
            &self.plans,
            &self.spec_apis,
            at_ms,
        )
        .await
    }

    /// Builds the digest and posts it to every target; returns (rule, outcome) per target.
    pub async fn send(&self, at_ms: i64) -> Result<Vec<(String, String)>, StoreError> {
        let digest = self.build(at_ms).await?;
        let mut outcomes = Vec::new();
        for target in &self.targets {
            let body = Bytes::from(payload(&digest, target).to_string());
            let policy = RetryPolicy::new(
                target.max_attempts,
                Duration::from_millis(500),
                Duration::from_secs(60),
            );
            let mut attempt = 1;
            let outcome = loop {
                let result = crate::alerts::post(&self.http, &target.webhook, body.clone()).await;
                match &result {
                    Ok(p) if (200..300).contains(&p.status) => break "delivered".to_string(),
                    _ => {}
                }
                let failure = match &result {
                    Ok(p) => format!("the webhook answered {}", p.status),
                    Err(e) => e.to_string(),
                };
                match policy.next_delay(attempt, &result) {
                    Some(wait) => {
                        tokio::time::sleep(wait).await;
                        attempt += 1;
                    }
                    None => break format!("failed: {failure}"),
                }
            };
            if outcome != "delivered" {
                tracing::warn!(rule = %target.name, outcome = %outcome, "digest not delivered");
            }
            outcomes.push((target.name.clone(), outcome));
        }
        Ok(outcomes)
    }
}

/// The webhook body of a digest in the target's format.
pub fn payload(d: &Digest, target: &AlertTarget) -> Value {
    match target.format {
        AlertFormat::Json => json!({"rule": target.name, "event": "digest", "digest": d}),
        AlertFormat::Slack => slack(d),
    }
}

fn slack(d: &Digest) -> Value {
    let c = &d.portfolio.consumers;
    let headline = format!(
        "Clientele digest {}: {} active consumers ({} the month before), {} new, {} churned, {} stagnating",
        d.portfolio.month, c.active, c.active_prev, c.new, c.churned, c.stagnating
    );
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*{headline}*")}}),
    ];
    if !d.outreach.is_empty() {
        let lines: Vec<String> = d
            .outreach
            .iter()
            .map(|i| {
                format!(
                    "• *{}* ({}): {}",
                    i.consumer,
                    i.reason.replace('_', " "),
                    i.message
                )
            })
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Whom to contact*\n{}", lines.join("\n"))}}));
    }
    if !d.pricing.is_empty() {
        let lines: Vec<String> = d
            .pricing
            .iter()
            .map(|i| {
                format!(
                    "• *{}*: {} → {} ({})",
                    i.consumer,
                    i.plan.as_deref().unwrap_or("no plan"),
                    i.recommended_plan.as_deref().unwrap_or("-"),
                    i.reason
                )
            })
            .collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Plan fit*\n{}", lines.join("\n"))}}));
    }
    if !d.sla_alerting.is_empty() {
        let names: Vec<&str> = d.sla_alerting.iter().map(|i| i.consumer.as_str()).collect();
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*Burning their error budget*: {}", names.join(", "))}}));
    }
    json!({"text": headline, "blocks": blocks})
}

/// Sends a digest every `interval` until `shutdown`; the first one interval after start.
pub async fn run_periodic(
    service: Arc<DigestService>,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if interval.is_zero() || service.targets.is_empty() {
        return;
    }
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        match service.send(now_ms()).await {
            Ok(outcomes) => tracing::info!(targets = outcomes.len(), "digest sent"),
            Err(e) => tracing::warn!(error = %e, "cannot build the digest"),
        }
    }
}
