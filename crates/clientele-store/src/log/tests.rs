#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use super::*;
use crate::testsuite::{Backend, Fresh, event};

impl Backend for EventLog {
    fn open_in(dir: &Path) -> Self {
        let archive = SqliteStore::open(dir).unwrap();
        EventLog::open(&dir.join("events"), archive).unwrap()
    }
}

crate::event_store_suite!(event_log, EventLog);

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("events"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

fn day_events(day: i64, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| event(&format!("d{day}-{i}"), "acme", day * DAY_MS + i as i64, 200))
        .collect()
}

#[tokio::test]
async fn a_damaged_segment_is_reported_with_its_file_and_offset_and_skipped() {
    let mut fresh = Fresh::<EventLog>::new();
    fresh
        .store()
        .append_events(day_events(3, 10))
        .await
        .unwrap();
    let file = segments(fresh.dir()).pop().unwrap();
    // Flip a byte inside the sixth frame.
    let mut bytes = std::fs::read(&file).unwrap();
    let frame = (bytes.len() - HEADER_LEN as usize) / 10;
    let sixth = HEADER_LEN as usize + 5 * frame;
    bytes[sixth + frame / 2] ^= 0x40;
    std::fs::write(&file, &bytes).unwrap();

    let store = fresh.reopen();
    assert_eq!(
        store.damaged(),
        [SegmentDamage {
            file: file.clone(),
            offset: sixth as u64,
            reason: "checksum mismatch".into(),
        }]
    );
    assert_eq!(
        store.event_count().await.unwrap(),
        5,
        "the frames before it"
    );
    let (kept, _) = store.scan_events(0, None, 100).await.unwrap();
    assert_eq!(kept.len(), 5);
    // New events go to a new segment; the damaged file is never written again.
    let new = store.append_events(day_events(3, 12)).await.unwrap();
    assert_eq!(new.len(), 7, "the five lost ids and two new ones");
    assert_eq!(std::fs::read(&file).unwrap(), bytes);
    assert_eq!(segments(fresh.dir()).len(), 2);
    let store = fresh.reopen();
    assert_eq!(store.damaged().len(), 1, "reported again, at every start");
    assert_eq!(store.event_count().await.unwrap(), 12);
}

#[tokio::test]
async fn a_segment_cut_inside_a_frame_keeps_its_whole_frames() {
    let mut fresh = Fresh::<EventLog>::new();
    fresh.store().append_events(day_events(1, 4)).await.unwrap();
    let file = segments(fresh.dir()).pop().unwrap();
    let len = std::fs::metadata(&file).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let store = fresh.reopen();
    assert_eq!(store.damaged().len(), 1);
    assert_eq!(store.damaged()[0].reason, "the segment ends inside a frame");
    assert_eq!(store.event_count().await.unwrap(), 3);
}

#[tokio::test]
async fn id_sets_stay_bounded_and_duplicates_of_any_day_are_still_ignored() {
    let mut fresh = Fresh::<EventLog>::new();
    let store = fresh.store();
    for day in 0..10 {
        store.append_events(day_events(day, 50)).await.unwrap();
        assert!(store.loaded_id_days().len() <= ID_DAYS);
    }
    assert_eq!(store.loaded_id_days(), [7, 8, 9]);
    // Day 2's ids are no longer in memory, yet its duplicates are found.
    let again = store.append_events(day_events(2, 51)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(store.loaded_id_days().contains(&2));
    assert!(store.loaded_id_days().len() <= ID_DAYS);
    // After a restart only the newest days are loaded, and the check stays exact.
    let store = fresh.reopen();
    assert_eq!(store.loaded_id_days(), [7, 8, 9]);
    assert!(
        store
            .append_events(day_events(0, 50))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(store.event_count().await.unwrap(), 501);
}

#[tokio::test]
async fn retention_deletes_the_files_of_whole_days() {
    let fresh = Fresh::<EventLog>::new();
    let store = fresh.store();
    for day in 0..3 {
        store.append_events(day_events(day, 5)).await.unwrap();
    }
    assert_eq!(segments(fresh.dir()).len(), 3);
    assert_eq!(store.prune_events(2 * DAY_MS + 5).await.unwrap(), 10);
    let left = segments(fresh.dir());
    assert_eq!(left.len(), 1);
    assert!(left[0].ends_with("2_0.seg"));
}

#[tokio::test]
async fn drill_down_reads_few_blocks_of_a_busy_day() {
    let fresh = Fresh::<EventLog>::new();
    let store = fresh.store();
    // 40,000 events of 2,000 consumers over one day, one of them erroring at the end.
    let mut batch = Vec::new();
    for i in 0..40_000i64 {
        let mut e = event(
            &format!("b{i}"),
            &format!("c{}", i % 2_000),
            DAY_MS + i,
            200,
        );
        if i % 2_000 == 7 && i > 30_000 {
            e.status = 503;
        }
        batch.push(e);
    }
    store.append_events(batch).await.unwrap();
    let q = EventQuery {
        consumer: "c7".into(),
        from_ms: 0,
        to_ms: 3 * DAY_MS,
        status: Some((500, 599)),
        limit: 3,
    };
    let got = store.recent_events(&q).await.unwrap();
    let ts: Vec<i64> = got.iter().map(|e| e.ts_ms - DAY_MS).collect();
    assert_eq!(ts, [38_007, 36_007, 34_007]);
    let st = store.inner.lock();
    let probe = ConsumerProbe::new("c7");
    let candidates: usize = st.days[&1].segments[0]
        .blocks
        .iter()
        .filter(|b| b.may_hold(&probe, 0, 3 * DAY_MS, classes_of(Some((500, 599)))))
        .count();
    let blocks = st.days[&1].segments[0].blocks.len();
    assert!(candidates * 10 < blocks, "{candidates} of {blocks} blocks");
}

/// The gateway's events (time ids) keep only the last minutes' fingerprints in memory, yet a
/// duplicate of any of them is found: from memory, from the blocks on disk, after a restart,
/// and for an event from a fast clock stored ahead of the restart's minute.
#[tokio::test]
async fn time_ids_hold_minutes_of_fingerprints_and_every_duplicate_is_still_found() {
    use clientele_core::event::event_id;
    let mut fresh = Fresh::<EventLog>::new();
    let base = 1_800_000_000_000 - 1_800_000_000_000 % MINUTE_MS;
    let per_minute = 300;
    let minutes = 20;
    let mut all = Vec::new();
    {
        let store = fresh.store();
        for m in 0..minutes {
            let batch: Vec<Event> = (0..per_minute)
                .map(|i| {
                    let ts = base + m * MINUTE_MS + i * 150;
                    event(&event_id(ts), "acme", ts, 200)
                })
                .collect();
            let now = base + m * MINUTE_MS + 59_000;
            let new = store.inner.append_at(batch.clone(), now).unwrap();
            assert_eq!(new.len(), batch.len());
            all.extend(batch);
            assert!(
                store.fingerprints_in_memory()
                    <= (RECENT_MINUTES as usize + 1) * per_minute as usize,
                "minute {m}: {}",
                store.fingerprints_in_memory()
            );
        }
        let end = base + minutes * MINUTE_MS;
        // Every one again, recent or long gone from memory: all duplicates.
        let again = store.inner.append_at(all.clone(), end).unwrap();
        assert!(again.is_empty(), "{} duplicates stored", again.len());
        // And shuffled into one batch with a new event: only the new one.
        let mut mixed: Vec<Event> = all.iter().rev().step_by(7).cloned().collect();
        let ts = end + 1_000;
        let new_one = event(&event_id(ts), "acme", ts, 200);
        mixed.push(new_one.clone());
        assert_eq!(store.inner.append_at(mixed, end + 2_000).unwrap().len(), 1);
        all.push(new_one);
        // An event from a clock 30 minutes fast.
        let ahead = end + 30 * MINUTE_MS;
        let fast = event(&event_id(ahead), "acme", ahead, 200);
        assert_eq!(
            store
                .inner
                .append_at(vec![fast.clone()], end + 3_000)
                .unwrap()
                .len(),
            1
        );
        all.push(fast);
    }
    // After a restart (the ring replays what it held): nothing is stored twice.
    let store = fresh.reopen();
    let replayed = store.append_events(all.clone()).await.unwrap();
    assert!(
        replayed.is_empty(),
        "{} stored twice after a restart: {:?}",
        replayed.len(),
        replayed
            .iter()
            .map(|e| (&e.id, e.ts_ms))
            .collect::<Vec<_>>()
    );
    assert_eq!(store.event_count().await.unwrap(), all.len() as u64);
    assert_eq!(
        store.fingerprints_in_memory(),
        0,
        "no time id is kept for old minutes"
    );
}
