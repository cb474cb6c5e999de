//! The writer task: drains the gateway's [`EventSink`](clientele_core::pipeline::EventSink) into
//! the [`Pipeline`] in large batches.

use std::time::Duration;

use clientele_core::pipeline::EventReceiver;

use crate::Pipeline;

/// Largest number of events written in one transaction.
pub const WRITE_BATCH: usize = 8192;
/// How long the writer waits for a batch to fill after its first event. Bounds how stale the
/// statistics are (well inside the 2 s promise) and how many events the queue must hold.
pub const WRITE_LINGER: Duration = Duration::from_millis(50);

/// Runs until every sink is dropped, then returns once the last batch is stored.
pub async fn run(mut rx: EventReceiver, pipeline: Pipeline) {
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    // A full disk fails every batch: one line per interval with the count, not 20 a second.
    let store_failures = clientele_core::ratelog::Every::new(Duration::from_secs(10));
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Let a batch gather before committing: one transaction (and one thread hand-off) per
        // few milliseconds of traffic instead of per event. Measured on the gateway benchmark,
        // committing each trickle of events cost more CPU than proxying them.
        tokio::time::sleep(WRITE_LINGER).await;
        while batch.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let n = batch.len();
        let full = std::mem::replace(&mut batch, Vec::with_capacity(WRITE_BATCH));
        if let Err(e) = pipeline.submit(full).await {
            clientele_core::error_every!(
                store_failures,
                error = %e,
                events = n,
                "could not store events; they are dropped and counted"
            );
        }
        // Stored, or counted as failed: the hand-off ring may reuse their room. A crash before
        // this line replays the batch at the next start (the store ignores what it has).
        rx.commit();
    }
}
