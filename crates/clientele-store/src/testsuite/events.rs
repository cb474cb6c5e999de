//! `EventStore` behaviours: exactly-once appends, scans, drill-down, retention and the rollup
//! archive.

use clientele_core::event::{Event, Outcome};

use super::{Backend, Fresh};
use crate::{EventQuery, EventStore, StoredRollup};

const DAY: i64 = 86_400_000;

/// An event for tests of any crate.
pub fn event(id: &str, consumer: &str, ts_ms: i64, status: u16) -> Event {
    Event {
        id: id.into(),
        ts_ms,
        consumer: Some(consumer.into()),
        key_id: None,
        api: Some("petstore".into()),
        method: "GET".into(),
        path: "/pets/1".into(),
        route: "/pets/{id}".into(),
        status,
        latency_ms: 12.5,
        upstream_latency_ms: Some(10.0),
        request_bytes: 10,
        response_bytes: 100,
        client_ip: Some("127.0.0.1".into()),
        user_agent: None,
        session_id: None,
        end_user: None,
        trace_id: None,
        outcome: Outcome::Proxied,
        plan: Some("pro".into()),
        team: None,
        use_case: None,
        model: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
        close_code: None,
        call_hash: None,
        tokens_cached: None,
        tokens_cache_write: None,
        tokens_reasoning: None,
        tls_fp: None,
    }
}

fn ids(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.id.as_str()).collect()
}

fn query(consumer: &str, status: Option<(u16, u16)>, limit: usize) -> EventQuery {
    EventQuery {
        consumer: consumer.into(),
        from_ms: 0,
        to_ms: 100 * DAY,
        status,
        limit,
    }
}

/// Four events of two consumers on day 1, and one of day 0.
fn sample() -> Vec<Event> {
    vec![
        event("e1", "acme", DAY + 1_000, 200),
        event("e2", "acme", DAY + 2_000, 404),
        event("e3", "acme", DAY + 3_000, 503),
        event("e4", "globex", DAY + 3_000, 429),
        event("e5", "globex", 500, 200),
    ]
}

async fn scan_all<S: EventStore>(store: &S, from_ms: i64, page: usize) -> Vec<String> {
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (events, next) = store.scan_events(from_ms, cursor, page).await.unwrap();
        assert!(events.len() <= page);
        seen.extend(events.into_iter().map(|e| e.id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    seen
}

pub async fn append_returns_only_new_events<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    let fresh_events = store.append_events(sample()).await.unwrap();
    assert_eq!(ids(&fresh_events), ["e1", "e2", "e3", "e4", "e5"]);
    assert_eq!(store.event_count().await.unwrap(), 5);
    assert!(store.append_events(vec![]).await.unwrap().is_empty());
}

pub async fn day_counts_count_stored_events_per_utc_day<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    assert!(store.day_counts().await.unwrap().is_empty());
    store.append_events(sample()).await.unwrap();
    // Duplicates are not stored, so not counted.
    store.append_events(sample()).await.unwrap();
    assert_eq!(store.day_counts().await.unwrap(), [(0, 1), (DAY, 4)]);
}

pub async fn duplicate_ids_are_ignored<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.append_events(sample()[..4].to_vec()).await.unwrap();
    let mut again = sample();
    // A duplicate is ignored whatever else it carries: the id decides.
    again[0].status = 500;
    let new = store.append_events(again).await.unwrap();
    assert_eq!(ids(&new), ["e5"], "exactly once per id");
    assert_eq!(store.event_count().await.unwrap(), 5);
    let stored = store.recent_events(&query("acme", None, 10)).await.unwrap();
    let e1 = stored.iter().find(|e| e.id == "e1").unwrap();
    assert_eq!(e1.status, 200, "the first copy stays");
}

pub async fn duplicates_within_one_batch_are_stored_once<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let e = event("same", "acme", DAY, 200);
    let new = store.append_events(vec![e.clone(), e]).await.unwrap();
    assert_eq!(ids(&new), ["same"]);
    assert_eq!(store.event_count().await.unwrap(), 1);
}

pub async fn duplicates_of_back_dated_events_are_ignored<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    // Live traffic over many days, then a re-sent backfill of the first day.
    for day in 0..10 {
        let batch = (0..20)
            .map(|i| event(&format!("d{day}-{i}"), "acme", day * DAY + i, 200))
            .collect();
        assert_eq!(store.append_events(batch).await.unwrap().len(), 20);
    }
    let backfill: Vec<Event> = (0..25)
        .map(|i| event(&format!("d0-{i}"), "acme", i, 200))
        .collect();
    let new = store.append_events(backfill).await.unwrap();
    assert_eq!(ids(&new), ["d0-20", "d0-21", "d0-22", "d0-23", "d0-24"]);
    assert_eq!(store.event_count().await.unwrap(), 205);
}

pub async fn duplicates_are_ignored_after_a_reopen<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    fresh.store().append_events(sample()).await.unwrap();
    let store = fresh.reopen();
    let new = store
        .append_events(vec![
            event("e1", "acme", DAY + 1_000, 200),
            event("e6", "acme", DAY + 9_000, 200),
        ])
        .await
        .unwrap();
    assert_eq!(ids(&new), ["e6"]);
}

pub async fn every_field_round_trips<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    let full = Event {
        id: "ev_full".into(),
        ts_ms: DAY + 123,
        consumer: Some("ünïcode consumer ✓".into()),
        key_id: Some("key_1".into()),
        api: Some("shop".into()),
        method: "PATCH".into(),
        path: "/orders/42?x=1".into(),
        route: "/orders/{id}".into(),
        status: 599,
        latency_ms: 0.125,
        upstream_latency_ms: Some(1e-3),
        request_bytes: 1 << 40,
        response_bytes: u64::from(u32::MAX) + 7,
        client_ip: Some("2001:db8::1".into()),
        user_agent: Some("curl/8".into()),
        session_id: Some("sess-1".into()),
        end_user: Some("end user ✓".into()),
        trace_id: Some("0af7651916cd43dd8448eb211c80319c".into()),
        outcome: Outcome::UpstreamTimeout,
        plan: Some("pro".into()),
        team: Some("growth".into()),
        use_case: Some("sync".into()),
        model: Some("gpt-4o".into()),
        tokens_in: Some(1_000_000),
        tokens_out: Some(0),
        cost_usd: Some(0.0123),
        close_code: Some(4001),
        call_hash: Some(0xfedc_ba98_7654_3210),
        tokens_cached: Some(750_000),
        tokens_cache_write: Some(0),
        tokens_reasoning: Some(u64::from(u32::MAX) + 1),
        tls_fp: Some("t13d1516h2_8daaf6152771_e5627efa2ab1".into()),
    };
    let mut bare = event("ev_bare", "acme", DAY + 124, 200);
    bare.api = None;
    bare.upstream_latency_ms = None;
    bare.client_ip = None;
    bare.end_user = None;
    bare.plan = None;
    bare.outcome = Outcome::Ingested;
    let mut anonymous = event("ev_anon", "x", DAY + 125, 401);
    anonymous.consumer = None;
    anonymous.outcome = Outcome::MissingKey;
    let all = vec![full.clone(), bare.clone(), anonymous.clone()];
    store.append_events(all.clone()).await.unwrap();
    let q = |c: &str| EventQuery {
        consumer: c.into(),
        from_ms: 0,
        to_ms: 2 * DAY,
        status: None,
        limit: 5,
    };
    assert_eq!(
        store.recent_events(&q("ünïcode consumer ✓")).await.unwrap(),
        [full]
    );
    assert_eq!(store.recent_events(&q("acme")).await.unwrap(), [bare]);
    let (mut scanned, _) = store.scan_events(0, None, 10).await.unwrap();
    scanned.sort_by_key(|e| e.ts_ms);
    assert_eq!(scanned, all, "a scan returns every field as appended");
}

pub async fn scan_pages_through_events_from_a_time<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.append_events(sample()).await.unwrap();
    assert_eq!(
        scan_all(store, DAY + 1_500, 1).await,
        ["e2", "e3", "e4"],
        "every event at or after the time, once, whatever the page size"
    );
    assert_eq!(scan_all(store, 0, 2).await, ["e1", "e2", "e3", "e4", "e5"]);
    assert_eq!(scan_all(store, 0, 1_000).await.len(), 5);
    assert!(scan_all(store, 5 * DAY, 10).await.is_empty());
}

pub async fn recent_events_are_newest_first_and_limited<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    // Arrival order is not time order: a late, back-dated event still sorts by its time.
    store.append_events(sample()).await.unwrap();
    store
        .append_events(vec![event("late", "acme", DAY + 1_500, 200)])
        .await
        .unwrap();
    let got = store.recent_events(&query("acme", None, 2)).await.unwrap();
    assert_eq!(ids(&got), ["e3", "e2"], "newest first");
    let got = store.recent_events(&query("acme", None, 10)).await.unwrap();
    assert_eq!(ids(&got), ["e3", "e2", "late", "e1"]);
}

pub async fn recent_events_filter_by_status_and_time<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    store.append_events(sample()).await.unwrap();
    let errors = store
        .recent_events(&query("acme", Some((500, 599)), 10))
        .await
        .unwrap();
    assert_eq!(ids(&errors), ["e3"]);
    let window = EventQuery {
        from_ms: DAY + 1_000,
        to_ms: DAY + 3_000,
        ..query("acme", None, 10)
    };
    let got = store.recent_events(&window).await.unwrap();
    assert_eq!(ids(&got), ["e2", "e1"], "from inclusive, to exclusive");
}

pub async fn recent_events_belong_to_one_consumer<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.append_events(sample()).await.unwrap();
    // Many other consumers around the one asked about.
    let crowd: Vec<Event> = (0..3_000)
        .map(|i| event(&format!("c{i}"), &format!("other-{i}"), DAY + i, 200))
        .collect();
    store.append_events(crowd).await.unwrap();
    let got = store
        .recent_events(&query("globex", None, 10))
        .await
        .unwrap();
    assert_eq!(ids(&got), ["e4", "e5"]);
    assert!(
        store
            .recent_events(&query("nobody", None, 10))
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn prune_drops_whole_days_before_the_cut<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.append_events(sample()).await.unwrap();
    store
        .append_events(vec![event("e6", "acme", 2 * DAY + 5, 200)])
        .await
        .unwrap();
    assert_eq!(store.prune_events(0).await.unwrap(), 0);
    assert_eq!(store.prune_events(DAY).await.unwrap(), 1, "day 0: e5");
    assert_eq!(store.event_count().await.unwrap(), 5);
    assert_eq!(store.prune_events(2 * DAY).await.unwrap(), 4, "day 1");
    assert_eq!(scan_all(store, 0, 10).await, ["e6"]);
    assert_eq!(store.prune_events(2 * DAY).await.unwrap(), 0, "idempotent");
    // A pruned day can be written again (a backfill after retention moved).
    let new = store
        .append_events(vec![event("e7", "acme", DAY + 7, 200)])
        .await
        .unwrap();
    assert_eq!(ids(&new), ["e7"]);
}

pub async fn events_survive_a_reopen<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    fresh.store().append_events(sample()).await.unwrap();
    let store = fresh.reopen();
    assert_eq!(store.event_count().await.unwrap(), 5);
    let got = store.recent_events(&query("acme", None, 10)).await.unwrap();
    assert_eq!(ids(&got), ["e3", "e2", "e1"]);
    assert_eq!(scan_all(store, 0, 3).await.len(), 5);
}

fn rollup(tier: u8, bucket_ms: i64, requests: u64) -> StoredRollup {
    StoredRollup {
        tier,
        bucket_ms,
        consumer: "acme".into(),
        api: "shop".into(),
        method: "GET".into(),
        route: "/pets/{id}".into(),
        status_class: 2,
        counts: [requests, requests, 0, 0, 0, 0, 10, 20, 0, 0, 0],
        cost_usd: 0.5,
        sketch: vec![1, 2, 3],
    }
}

pub async fn archived_rollups_replace_and_move_the_watermark<S: Backend + EventStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    assert_eq!(store.archived_rollups().await.unwrap(), (vec![], 0));
    store
        .archive_rollups(vec![rollup(1, 3_600_000, 5), rollup(2, 0, 5)], DAY)
        .await
        .unwrap();
    // Archiving the same key again replaces it.
    store
        .archive_rollups(vec![rollup(1, 3_600_000, 7)], 2 * DAY)
        .await
        .unwrap();
    let (mut rows, until) = store.archived_rollups().await.unwrap();
    rows.sort_by_key(|r| r.tier);
    assert_eq!(until, 2 * DAY);
    assert_eq!(rows, vec![rollup(1, 3_600_000, 7), rollup(2, 0, 5)]);
}

pub async fn archived_rollups_are_pruned_by_tier<S: Backend + EventStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store
        .archive_rollups(vec![rollup(1, 3_600_000, 5), rollup(2, 0, 5)], DAY)
        .await
        .unwrap();
    assert_eq!(store.prune_rollups(1, 7_200_000).await.unwrap(), 1);
    let (rows, _) = store.archived_rollups().await.unwrap();
    assert_eq!(rows, vec![rollup(2, 0, 5)]);
}
