//! Runs every detector on its own, every `[detection].interval_secs`, over the last
//! `[detection].lookback_hours` of event time, so late and back-dated events are judged too.

use std::sync::Arc;
use std::time::Duration;

use clientele_analytics::HOUR_MS;
use clientele_api::findings::FindingsService;
use clientele_store::Change;

pub async fn run_periodic(
    findings: Arc<FindingsService>,
    interval: Duration,
    lookback_hours: u32,
    shutdown: impl std::future::Future<Output = ()>,
) {
    if interval.is_zero() {
        return;
    }
    tokio::pin!(shutdown);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; let start-up (rollup restore, first batches) settle first.
    ticks.tick().await;
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            _ = ticks.tick() => {}
        }
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
