//! The governance features on disk: loaded from `rollups.db` at start-up so that the replay
//! brings only the days not complete there, saved every 10 minutes and once more at a
//! graceful stop (see `clientele_governance::persist`).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clientele_governance::FeatureStore;
use clientele_governance::persist::Loaded;
use clientele_store::{BucketFile, EventStore, StoreError};

/// How often the changed consumers are written. Start-up trusts whole days, so what a crash
/// costs is today's replay whatever the interval; saves between only matter for the days
/// that closed since the last one (yesterday, in the first minutes after midnight UTC).
const SAVE_EVERY: Duration = Duration::from_secs(600);

/// Loads the saved features before the start-up replay ([`crate::rollups::restore_persisted`]),
/// which then brings only the days they do not hold. A saved state that does not read is
/// logged and ignored: everything is rebuilt from raw events, as without one.
pub async fn restore(
    features: &Arc<FeatureStore>,
    file: Arc<BucketFile>,
    events: &Arc<dyn EventStore>,
) -> Result<Loaded, StoreError> {
    let started = Instant::now();
    let log_days: BTreeMap<i64, u64> = events.day_counts().await?.into_iter().collect();
    let features = features.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (consumers, meta) = file.load_features()?;
        Ok::<_, StoreError>(features.load(consumers, meta.as_deref(), &log_days))
    })
    .await
    .map_err(|e| StoreError::Backend(format!("loading governance features: {e}")))??;
    match loaded {
        Ok(loaded) => {
            tracing::info!(
                consumers = loaded.consumers,
                replay_from = loaded.replay_from.map(clientele_core::time::format_ts),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "loaded governance features"
            );
            Ok(loaded)
        }
        Err(e) => {
            tracing::warn!(error = %e, "the saved governance features do not read; rebuilding them from raw events");
            Ok(Loaded::default())
        }
    }
}

/// Writes the consumers changed since the last save. Blocking: call it on the blocking pool.
/// A failed write loses nothing: the next save again holds every change since the last one
/// written.
pub fn save(features: &FeatureStore, file: &BucketFile) -> Result<usize, StoreError> {
    let plan = features.begin_save();
    file.save_features(plan.batches(features), &plan.meta)?;
    features.saved(plan.change);
    Ok(plan.consumers())
}

/// Saves every [`SAVE_EVERY`] until `shutdown`. The last save of a graceful stop is the
/// caller's, after the pipeline drained ([`save`]).
pub async fn maintain(
    features: Arc<FeatureStore>,
    file: Arc<BucketFile>,
    shutdown: impl Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => return,
            () = tokio::time::sleep(SAVE_EVERY) => {}
        }
        let (f, b) = (features.clone(), file.clone());
        match tokio::task::spawn_blocking(move || save(&f, &b)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "saving governance features failed; retried at the next save")
            }
            Err(e) => tracing::warn!(error = %e, "saving governance features failed"),
        }
    }
}
