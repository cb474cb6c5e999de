//! The rollup archive: restoring the engine at start-up, and archiving hour and day rollups
//! before their raw events leave the retention.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use clientele_analytics::{Counters, DAY_MS, Engine, ExportedRollup, Rollup, Tier};
use clientele_store::{EventStore, StoreError, StoredRollup};

use crate::Pipeline;

/// Raw events read per page while replaying at start-up.
const REPLAY_PAGE: usize = 50_000;

/// Restores the in-memory rollups: archived hour and day rollups first, then every stored raw
/// event after the archive's watermark, replayed through the pipeline's observers. The store is
/// the source of truth and rollups are derived from it, so a restart (or a crash) answers
/// exactly as before. Returns the watermark.
pub async fn restore(pipeline: &Pipeline, engine: &Arc<Engine>) -> Result<i64, StoreError> {
    let started = Instant::now();
    let events = pipeline.store();
    let (archived, until) = events.archived_rollups().await?;
    let restored = archived.len();
    let rows: Vec<ExportedRollup> = archived.into_iter().filter_map(from_stored).collect();
    if rows.len() < restored {
        tracing::warn!(
            skipped = restored - rows.len(),
            "some archived rollups could not be read and were skipped"
        );
    }
    {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.import(rows))
            .await
            .map_err(|e| StoreError::Backend(format!("importing archived rollups: {e}")))?;
    }
    let from = (clientele_core::time::now_ms() - engine.retention().day_ms).max(until);
    let mut cursor = None;
    let mut total = 0usize;
    loop {
        let (page, next) = events.scan_events(from, cursor, REPLAY_PAGE).await?;
        total += page.len();
        pipeline.replay(page).await;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    if total > 0 || restored > 0 {
        tracing::info!(
            events = total,
            archived_rollups = restored,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "restored rollups from the store"
        );
    }
    Ok(until)
}

pub fn to_stored(r: ExportedRollup) -> StoredRollup {
    let c = r.rollup.counters;
    StoredRollup {
        tier: r.tier as u8,
        bucket_ms: r.bucket_ms,
        sketch: r.rollup.sketch_bytes(),
        consumer: r.consumer,
        api: r.api,
        method: r.method,
        route: r.route,
        status_class: r.status_class,
        counts: c.to_array(),
        cost_usd: c.cost_usd,
    }
}

pub fn from_stored(r: StoredRollup) -> Option<ExportedRollup> {
    let counters = Counters::from_array(r.counts, r.cost_usd);
    Some(ExportedRollup {
        tier: Tier::from_index(r.tier)?,
        bucket_ms: r.bucket_ms,
        consumer: r.consumer,
        api: r.api,
        method: r.method,
        route: r.route,
        status_class: r.status_class,
        rollup: Rollup::from_parts(counters, &r.sketch)?,
    })
}

/// Hourly housekeeping: drops expired rollups from memory, archives the hour and day rollups
/// of days about to leave the raw event retention, then deletes those raw events and expired
/// archived rollups. Archiving comes first and moves the watermark in the same transaction, so
/// nothing is lost or counted twice whatever the moment of a crash.
pub async fn archive_and_prune(
    events: Arc<dyn EventStore>,
    engine: Arc<Engine>,
    watermark: Arc<AtomicI64>,
    retention_days: u32,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut archived_until = watermark.load(Ordering::Relaxed);
    loop {
        let now = clientele_core::time::now_ms();
        engine.prune(now);
        let cutoff = (now - i64::from(retention_days) * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
        if cutoff > archived_until {
            let from = archived_until;
            let exporter = engine.clone();
            let rows = tokio::task::spawn_blocking(move || {
                let mut rows = exporter.export(Tier::Hour, from, cutoff);
                rows.extend(exporter.export(Tier::Day, from, cutoff));
                rows.into_iter().map(to_stored).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let n = rows.len();
            match events.archive_rollups(rows, cutoff).await {
                Ok(()) => {
                    archived_until = cutoff;
                    watermark.store(cutoff, Ordering::Relaxed);
                    if n > 0 {
                        tracing::info!(
                            rollups = n,
                            "archived rollups of days leaving the raw event retention"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "archiving rollups failed; raw events are kept until it succeeds")
                }
            }
        }
        match events.prune_events(archived_until).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retention_days, "pruned old raw events"),
            Err(e) => tracing::warn!(error = %e, "pruning raw events failed"),
        }
        let r = engine.retention();
        for (tier, keep_ms) in [(Tier::Hour, r.hour_ms), (Tier::Day, r.day_ms)] {
            if let Err(e) = events.prune_rollups(tier as u8, now - keep_ms).await {
                tracing::warn!(error = %e, "pruning archived rollups failed");
            }
        }
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(Duration::from_secs(3600)) => {}
        }
    }
}
