//! Rollups on disk: restoring the engine at start-up, and the housekeeping that writes closed
//! buckets, prunes what is past retention and deletes old raw events.
//!
//! With a [`BucketFile`] (the binary always has one, `rollups.db` beside the event log), closed
//! buckets are written as they close and start-up rebuilds only the days not complete on disk
//! ([`restore_persisted`]). Without one, [`restore`] rebuilds everything from raw events after
//! the legacy archive's watermark (the `rollups` table of earlier releases), as before.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use clientele_analytics::{
    BucketStore, Counters, DAY_MS, Engine, ExportedRollup, Part, Persisted, Rollup, Save, Tier,
};
use clientele_store::{BucketFile, BucketRow, BucketSave, EventStore, StoreError, StoredRollup};

use crate::Pipeline;

/// Raw events read per page while replaying at start-up.
const REPLAY_PAGE: usize = 50_000;

/// How often closed buckets are written.
const FLUSH_EVERY: Duration = Duration::from_secs(60);

/// The engine's [`BucketStore`]: the bucket file.
pub struct BucketFileStore(pub Arc<BucketFile>);

impl BucketStore for BucketFileStore {
    fn save(&self, save: Save) -> Result<(), String> {
        let save = BucketSave {
            first_name: save.first_name,
            names: save.names,
            buckets: save
                .buckets
                .into_iter()
                .map(|b| BucketRow {
                    tier: b.tier as u8,
                    start_ms: b.start_ms,
                    consumers: b.consumers,
                    series: b.series,
                })
                .collect(),
            days: save.days,
        };
        self.0.save(&save).map_err(|e| e.to_string())
    }

    fn load(&self, tier: Tier, start_ms: i64, part: Part) -> Result<Option<Vec<u8>>, String> {
        self.0
            .load(tier as u8, start_ms, part == Part::Series)
            .map_err(|e| e.to_string())
    }
}

/// What a persisted restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// Raw events read from the store (every observer but the rollups sees them all).
    pub events_read: usize,
    /// Days rebuilt from raw events: not complete on disk.
    pub days_rebuilt: Vec<i64>,
    /// Days whose rollups were taken from disk as they are.
    pub days_trusted: usize,
    /// Rollups of the legacy archive moved into the bucket file.
    pub migrated_rollups: usize,
    /// The legacy archive's watermark (0 when there was none): ingest refuses events before it.
    pub archived_until: i64,
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Backend(format!("rollup task failed: {e}")))?
}

/// Attaches the bucket file to the engine and restores what memory should hold. A day is
/// trusted when the events folded into its buckets on disk number at least the event log's
/// events of that day; every other day with raw events (today's, one a crash interrupted, one that took
/// late events not yet written) is forgotten on disk and rebuilt from its raw events. Raw events
/// are read from the earliest day some observer needs: the governance features, loaded first
/// by [`crate::governance::restore`], only their days not complete in `rollups.db`; the
/// contract usage table, not persisted, every raw event.
pub async fn restore_persisted(
    pipeline: &Pipeline,
    engine: &Arc<Engine>,
    file: Arc<BucketFile>,
    cache_bytes: usize,
) -> Result<Restored, StoreError> {
    let started = Instant::now();
    let events = pipeline.store();
    let f = file.clone();
    let (names, index, marks) = blocking(move || Ok((f.names()?, f.index()?, f.days()?))).await?;
    let raw: BTreeMap<i64, u64> = events.day_counts().await?.into_iter().collect();
    let mut done = Restored::default();

    // Earlier releases kept hour and day rollups of days past the raw retention in the store's
    // `rollups` table, below a watermark. On the first start with a bucket file they move over.
    let (rows, legacy_until) = events.archived_rollups().await?;
    done.archived_until = legacy_until;
    let mut legacy = Vec::new();
    if index.is_empty() {
        legacy = rows.into_iter().filter_map(from_stored).collect::<Vec<_>>();
        done.migrated_rollups = legacy.len();
    }

    let marks: BTreeMap<i64, u64> = marks.into_iter().collect();
    let mut trusted = BTreeSet::new();
    let mut days = Vec::new();
    let mut forget = Vec::new();
    for (&day, &n) in &raw {
        // More events on disk than in the log happens only when the log's day was pruned and
        // then took back-dated events, which were folded into the buckets on disk.
        if marks.get(&day).is_some_and(|m| *m >= n) {
            trusted.insert(day);
        } else if day + DAY_MS <= legacy_until {
            // Archived before the upgrade: the archive holds the day's events.
            trusted.insert(day);
            days.push((day, n));
        } else {
            forget.push(day);
        }
    }
    // Days on disk whose raw events are gone (past the raw retention) are kept as they are.
    days.extend(
        marks
            .iter()
            .filter(|(d, _)| !forget.contains(d))
            .map(|(d, n)| (*d, *n)),
    );
    done.days_trusted = trusted.len();
    if !forget.is_empty() {
        let f = file.clone();
        let gone = forget.clone();
        blocking(move || {
            for day in gone {
                f.forget(day, day + DAY_MS)?;
            }
            Ok(())
        })
        .await?;
    }
    let buckets: Vec<(Tier, i64)> = index
        .into_iter()
        .filter(|(_, start)| !forget.contains(&(start.div_euclid(DAY_MS) * DAY_MS)))
        .filter_map(|(tier, start)| Some((Tier::from_index(tier)?, start)))
        .collect();
    engine
        .attach(
            Arc::new(BucketFileStore(file)),
            Persisted {
                names,
                buckets,
                days,
                trusted_days: trusted,
            },
            cache_bytes,
        )
        .map_err(StoreError::Backend)?;
    if !legacy.is_empty() {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || engine.import(legacy))
            .await
            .map_err(|e| StoreError::Backend(format!("importing archived rollups: {e}")))?;
    }

    // Raw events are read from the first day the engine rebuilds or some other observer needs
    // (the governance features only after what rollups.db holds; the contract usage table,
    // which is not persisted, everything).
    let engine_from = forget.iter().min().copied().unwrap_or(i64::MAX);
    let needed = pipeline
        .replay_from()
        .map_or(i64::MIN, |f| f.min(engine_from));
    let from = (clientele_core::time::now_ms() - engine.retention().day_ms).max(needed);
    let mut cursor = None;
    loop {
        if from == i64::MAX {
            break;
        }
        let (page, next) = events.scan_events(from, cursor, REPLAY_PAGE).await?;
        done.events_read += page.len();
        pipeline.replay(page).await;
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let flusher = engine.clone();
    let flushed =
        tokio::task::spawn_blocking(move || flusher.flush(clientele_core::time::now_ms()))
            .await
            .map_err(|e| StoreError::Backend(format!("writing rollups: {e}")))?;
    match flushed {
        Ok(_) if done.migrated_rollups > 0 => {
            // Moved: the legacy table is no longer read.
            for tier in [Tier::Hour, Tier::Day] {
                events.prune_rollups(tier as u8, i64::MAX).await?;
            }
        }
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "writing rollups after start-up failed; retried every minute")
        }
    }
    done.days_rebuilt = forget;
    tracing::info!(
        events_read = done.events_read,
        days_rebuilt = done.days_rebuilt.len(),
        days_trusted = done.days_trusted,
        migrated_rollups = done.migrated_rollups,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "restored rollups"
    );
    Ok(done)
}

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

/// Housekeeping with a bucket file: every minute, writes the buckets that closed; every hour,
/// drops rollups past each tier's retention (memory and disk) and raw events past theirs. Raw
/// events are deleted only after a flush succeeded, so the days they leave are on disk.
pub async fn maintain(
    events: Arc<dyn EventStore>,
    engine: Arc<Engine>,
    file: Arc<BucketFile>,
    pruned_until: Arc<AtomicI64>,
    retention_days: u32,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut last_prune: Option<Instant> = None;
    loop {
        let flusher = engine.clone();
        let flushed =
            tokio::task::spawn_blocking(move || flusher.flush(clientele_core::time::now_ms()))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r);
        if let Err(e) = &flushed {
            tracing::warn!(error = %e, "writing closed rollup buckets failed; raw events are kept until it succeeds");
        }
        if flushed.is_ok() && last_prune.is_none_or(|t| t.elapsed() >= Duration::from_secs(3600)) {
            last_prune = Some(Instant::now());
            prune_all(&events, &engine, &file, &pruned_until, retention_days).await;
        }
        tokio::select! {
            () = &mut shutdown => {
                // What closed is written now, so the next start has less to rebuild.
                let flusher = engine.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    flusher.flush(clientele_core::time::now_ms())
                })
                .await;
                return;
            }
            () = tokio::time::sleep(FLUSH_EVERY) => {}
        }
    }
}

async fn prune_all(
    events: &Arc<dyn EventStore>,
    engine: &Arc<Engine>,
    file: &Arc<BucketFile>,
    pruned_until: &AtomicI64,
    retention_days: u32,
) {
    let now = clientele_core::time::now_ms();
    engine.prune(now);
    let r = engine.retention();
    let f = file.clone();
    let pruned = tokio::task::spawn_blocking(move || {
        let mut n = 0;
        for (tier, keep_ms) in [
            (Tier::Minute, r.minute_ms),
            (Tier::Hour, r.hour_ms),
            (Tier::Day, r.day_ms),
        ] {
            let cutoff = (now - keep_ms).div_euclid(tier.size_ms()) * tier.size_ms();
            n += f.prune(tier as u8, cutoff)?;
        }
        Ok::<u64, StoreError>(n)
    })
    .await;
    match pruned {
        Ok(Ok(0)) => {}
        Ok(Ok(n)) => tracing::info!(buckets = n, "pruned expired rollup buckets"),
        Ok(Err(e)) => tracing::warn!(error = %e, "pruning rollup buckets failed"),
        Err(e) => tracing::warn!(error = %e, "pruning rollup buckets failed"),
    }
    let cutoff = (now - i64::from(retention_days) * DAY_MS).div_euclid(DAY_MS) * DAY_MS;
    // Set before deleting: from now on ingest refuses events of the days being deleted, whose
    // rollups on disk would no longer match the log.
    pruned_until.fetch_max(cutoff, Ordering::Relaxed);
    match events.prune_events(cutoff).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, retention_days, "pruned old raw events"),
        Err(e) => tracing::warn!(error = %e, "pruning raw events failed"),
    }
}
