//! Runs every detector on its own, every `[detection].interval_secs`, over the last
//! `[detection].lookback_hours` of event time, so late and back-dated events are judged too;
//! and deletes findings older than `[analytics].day_retention_days`.

use std::sync::Arc;
use std::time::Duration;

use crate::findings::FindingsService;
use clientele_analytics::HOUR_MS;
use clientele_core::pipeline::PipelineStats;
use clientele_store::{Change, ControlStore};

/// Nodes that share their events (every node sees the whole cluster's traffic) evaluate once
/// per interval for the cluster: the node holding this lease in the shared control store.
pub struct Lease {
    pub control: Arc<dyn ControlStore>,
    /// This node's name.
    pub holder: String,
}

/// The lease's name in the control store.
pub const DETECTION_LEASE: &str = "detection";

/// How often findings past their retention are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Runs the detectors every `interval`. With `pipeline`, a tick while history is being
/// back-filled (`PipelineStats::backfilling`) is skipped: the hours the backfill has not reached
/// yet would be judged empty, and every consumer's traffic would seem to have stopped. An
/// evaluation asked for (`POST /v1/findings/evaluate`) always runs.
pub async fn run_periodic(
    findings: Arc<FindingsService>,
    pipeline: Option<Arc<PipelineStats>>,
    interval: Duration,
    lookback_hours: u32,
    retention_days: u32,
    lease: Option<Lease>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_prune: Option<std::time::Instant> = None;
    if interval.is_zero() {
        // Detection only on request; findings still leave their retention.
        loop {
            prune(&findings, retention_days, &mut last_prune).await;
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(PRUNE_EVERY) => {}
            }
        }
    }
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; let start-up (rollup restore, first batches) settle first.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
        if pipeline
            .as_ref()
            .is_some_and(|p| p.backfilling(clientele_core::time::now_ms()))
        {
            tracing::debug!(
                "history is being back-filled; this evaluation waits for the next interval"
            );
            continue;
        }
        if let Some(lease) = &lease {
            // Held for two intervals and renewed every one: a node that stops is replaced
            // after at most two, and two holders never overlap (the store's clock decides).
            let ttl_ms = i64::try_from(interval.as_millis() * 2).unwrap_or(i64::MAX);
            match lease
                .control
                .try_lease(DETECTION_LEASE, &lease.holder, ttl_ms)
                .await
            {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    // Without the lease another node may be evaluating: skipping never alerts
                    // twice, and findings could not be stored now anyway.
                    tracing::warn!(error = %e, "cannot take the detection lease; skipping this evaluation");
                    continue;
                }
            }
        }
        prune(&findings, retention_days, &mut last_prune).await;
        let now = clientele_core::time::now_ms();
        match findings
            .evaluate(now, i64::from(lookback_hours) * HOUR_MS)
            .await
        {
            Ok(report) => {
                let new = report
                    .findings
                    .iter()
                    .filter(|u| u.change == Change::New)
                    .count();
                if new > 0 {
                    tracing::info!(
                        new,
                        updated = report.findings.len() - new,
                        elapsed_ms = report.elapsed_ms as u64,
                        "detectors found new conditions"
                    );
                }
                if report.elapsed_ms > interval.as_secs_f64() * 1000.0 {
                    tracing::warn!(
                        elapsed_ms = report.elapsed_ms as u64,
                        "an evaluation took longer than [detection].interval_secs"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "periodic evaluation failed; retrying next interval")
            }
        }
    }
}

/// Deletes findings (and alert deliveries) older than the day tier's retention, hourly: past it
/// there are no rollups left to show their evidence against.
async fn prune(
    findings: &FindingsService,
    retention_days: u32,
    last: &mut Option<std::time::Instant>,
) {
    if last.is_some_and(|t| t.elapsed() < PRUNE_EVERY) {
        return;
    }
    *last = Some(std::time::Instant::now());
    let before = clientele_core::time::now_ms() - i64::from(retention_days) * 24 * HOUR_MS;
    match findings.store().prune_findings(before).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deleted = n,
            retention_days,
            "pruned old findings and alert deliveries"
        ),
        Err(e) => tracing::warn!(error = %e, "pruning findings failed"),
    }
}
