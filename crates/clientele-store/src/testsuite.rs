//! The behaviour every store backend must show. Each backend's tests call these functions on
//! a fresh, empty store, so the embedded store and any scale-out backend give the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::event::{Event, Outcome};
use clientele_core::keys::{QuotaSeed, QuotaUsage};
use clientele_core::limits::{LimitOverride, RouteLimit};

use crate::{ControlStore, EventQuery, EventStore, StoreError, StoredRollup};

fn consumer(id: &str, plan: Option<&str>) -> Consumer {
    Consumer {
        id: id.into(),
        name: Some(format!("{id} inc")),
        plan: plan.map(Into::into),
        team: Some("growth".into()),
        use_case: None,
        metadata: serde_json::Map::from_iter([("crm".to_string(), serde_json::json!("42"))]),
        created_at_ms: 1_000,
        limits: None,
    }
}

fn key(key_id: &str, consumer: &str, hash: &str) -> ApiKey {
    ApiKey {
        key_id: key_id.into(),
        consumer: consumer.into(),
        name: None,
        prefix: "ck_abcdefgh".into(),
        hash: hash.into(),
        created_at_ms: 2_000,
        expires_at_ms: None,
        revoked_at_ms: None,
        imported: false,
    }
}

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
        trace_id: None,
        outcome: Outcome::Proxied,
        plan: Some("pro".into()),
        team: None,
        use_case: None,
        model: None,
        tokens_in: None,
        tokens_out: None,
        cost_usd: None,
    }
}

pub async fn control_store_suite(store: &dyn ControlStore) {
    let v0 = store.control_version().await.unwrap();
    let acme = store
        .create_consumer(consumer("acme", Some("pro")))
        .await
        .unwrap();
    assert_eq!(
        store.get_consumer("acme").await.unwrap(),
        Some(acme.clone())
    );
    assert!(matches!(
        store.create_consumer(consumer("acme", None)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.control_version().await.unwrap() > v0);

    let mut changed = acme.clone();
    changed.plan = Some("free".into());
    store.update_consumer(changed.clone()).await.unwrap();
    assert_eq!(store.get_consumer("acme").await.unwrap(), Some(changed));
    assert!(matches!(
        store.update_consumer(consumer("ghost", None)).await,
        Err(StoreError::NotFound(_))
    ));

    let hash = "a".repeat(64);
    store.create_key(key("key_1", "acme", &hash)).await.unwrap();
    assert!(matches!(
        store.create_key(key("key_2", "acme", &hash)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store
            .create_key(key("key_3", "ghost", &"b".repeat(64)))
            .await,
        Err(StoreError::NotFound(_))
    ));
    let entries = store.key_entries().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].hash, [0xaa; 32]);
    assert_eq!(entries[0].plan.as_deref(), Some("free"));
    assert!(!entries[0].revoked);

    let revoked = store.revoke_key("key_1", 5_000).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
    // Revoking again keeps the first time.
    assert_eq!(
        store
            .revoke_key("key_1", 6_000)
            .await
            .unwrap()
            .revoked_at_ms,
        Some(5_000)
    );
    assert!(store.key_entries().await.unwrap()[0].revoked);
    assert!(matches!(
        store.revoke_key("nope", 1).await,
        Err(StoreError::NotFound(_))
    ));

    store
        .create_consumer(consumer("globex", None))
        .await
        .unwrap();
    store
        .create_key(key("key_4", "globex", &"c".repeat(64)))
        .await
        .unwrap();
    store.delete_consumer("globex", 7_000).await.unwrap();
    assert_eq!(store.get_consumer("globex").await.unwrap(), None);
    let keys = store.list_keys("globex").await.unwrap();
    assert_eq!(
        keys[0].revoked_at_ms,
        Some(7_000),
        "deleting a consumer revokes its keys"
    );
    assert!(matches!(
        store.delete_consumer("globex", 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_consumers().await.unwrap().len(), 1);

    // Per-consumer limits are stored with the consumer and reach the gateway's key entries.
    let mut limited = consumer("initech", Some("free"));
    limited.limits = Some(LimitOverride {
        quota_per_day: Some(20),
        routes: [(
            "GET /search".to_string(),
            RouteLimit {
                rate_per_second: 1.0,
                burst: 2,
            },
        )]
        .into(),
        ..Default::default()
    });
    store.create_consumer(limited.clone()).await.unwrap();
    assert_eq!(
        store.get_consumer("initech").await.unwrap(),
        Some(limited.clone())
    );
    store
        .create_key(key("key_5", "initech", &"d".repeat(64)))
        .await
        .unwrap();
    let entries = store.key_entries().await.unwrap();
    let e = entries.iter().find(|e| &*e.key_id == "key_5").unwrap();
    assert_eq!(e.limits.as_deref(), limited.limits.as_ref());
    limited.limits = None;
    store.update_consumer(limited.clone()).await.unwrap();
    assert_eq!(
        store.get_consumer("initech").await.unwrap().unwrap().limits,
        None
    );

    // Quota usage replaces what was stored for the consumer.
    let usage = |day_used| QuotaUsage {
        consumer: "initech".into(),
        seed: QuotaSeed {
            day: 20_000,
            day_used,
            month: 600,
            month_used: day_used + 100,
        },
    };
    store.save_quota_usage(vec![usage(5)]).await.unwrap();
    store.save_quota_usage(vec![usage(7)]).await.unwrap();
    assert_eq!(store.load_quota_usage().await.unwrap(), vec![usage(7)]);
}

pub async fn event_store_suite(store: &dyn EventStore) {
    let events = vec![
        event("e1", "acme", 1_000, 200),
        event("e2", "acme", 2_000, 404),
        event("e3", "acme", 3_000, 503),
        event("e4", "globex", 3_000, 429),
    ];
    assert_eq!(store.append_events(events.clone()).await.unwrap().len(), 4);
    // The same ids again are ignored: exactly once per event.
    let mut again = events.clone();
    again.push(event("e5", "globex", 500, 200));
    let fresh = store.append_events(again).await.unwrap();
    assert_eq!(
        fresh.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e5"]
    );
    assert_eq!(store.prune_events(501).await.unwrap(), 1);

    // Scanning pages through everything from a time, in time order.
    let mut seen = Vec::new();
    let mut cursor = None;
    loop {
        let (page, next) = store.scan_events(1_500, cursor, 1).await.unwrap();
        seen.extend(page.into_iter().map(|e| e.id));
        match next {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    seen.sort();
    assert_eq!(seen, ["e2", "e3", "e4"]);
    assert_eq!(store.event_count().await.unwrap(), 4);

    let errors = store
        .recent_events(&EventQuery {
            consumer: "acme".into(),
            from_ms: 0,
            to_ms: 10_000,
            status: Some((500, 599)),
            limit: 10,
        })
        .await
        .unwrap();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].id, "e3");
    let all = store
        .recent_events(&EventQuery {
            consumer: "acme".into(),
            from_ms: 0,
            to_ms: 10_000,
            status: None,
            limit: 2,
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["e3", "e2"],
        "newest first"
    );

    assert_eq!(store.prune_events(2_000).await.unwrap(), 1);
    assert_eq!(store.event_count().await.unwrap(), 3);

    // The rollup archive.
    assert_eq!(store.archived_rollups().await.unwrap(), (vec![], 0));
    let row = |tier: u8, bucket_ms: i64, requests: u64| StoredRollup {
        tier,
        bucket_ms,
        consumer: "acme".into(),
        api: "shop".into(),
        method: "GET".into(),
        route: "/pets/{id}".into(),
        status_class: 2,
        counts: [requests, requests, 0, 0, 0, 0, 10, 20, 0, 0],
        cost_usd: 0.5,
        sketch: vec![1, 2, 3],
    };
    store
        .archive_rollups(vec![row(1, 3_600_000, 5), row(2, 0, 5)], 86_400_000)
        .await
        .unwrap();
    // Archiving the same key again replaces it.
    store
        .archive_rollups(vec![row(1, 3_600_000, 7)], 2 * 86_400_000)
        .await
        .unwrap();
    let (mut rows, until) = store.archived_rollups().await.unwrap();
    rows.sort_by_key(|r| r.tier);
    assert_eq!(until, 2 * 86_400_000);
    assert_eq!(rows, vec![row(1, 3_600_000, 7), row(2, 0, 5)]);
    assert_eq!(store.prune_rollups(1, 7_200_000).await.unwrap(), 1);
    assert_eq!(store.archived_rollups().await.unwrap().0.len(), 1);
}
