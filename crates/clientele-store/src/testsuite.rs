//! The behaviour every store backend must show. Each backend's tests call these functions on
//! a fresh, empty store, so the embedded store and any scale-out backend give the same answers.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::event::{Event, Outcome};
use clientele_core::keys::{QuotaSeed, QuotaUsage};
use clientele_core::limits::{LimitOverride, RouteLimit};

use clientele_core::finding::{Finding, FindingKind, Severity};

use crate::{
    Change, ControlStore, Delivery, DeliveryQuery, EventQuery, EventStore, FindingQuery,
    FindingStore, StoreError, StoredRollup,
};

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
    }
}

pub async fn control_store_suite(store: &dyn ControlStore) {
    spec_versions_suite(store).await;
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

fn finding(kind: FindingKind, consumer: Option<&str>, first: i64, last: i64) -> Finding {
    Finding {
        id: format!("fnd_{}", clientele_core::event::random_id128()),
        kind,
        consumer: consumer.map(Into::into),
        api: Some("petstore".into()),
        route: Some("POST /orders".into()),
        severity: Severity::Warning,
        first_seen_ms: first,
        last_seen_ms: last,
        summary: format!("{kind} from {first} to {last}"),
        evidence: serde_json::json!({"observed": last}),
    }
}

pub async fn finding_store_suite(store: &dyn FindingStore) {
    const H: i64 = 3_600_000;
    let gap = H;
    // A new condition is added.
    let first = finding(FindingKind::ErrorSpike, Some("acme"), 10 * H, 11 * H);
    let up = store
        .upsert_findings(vec![first.clone()], gap)
        .await
        .unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].change, Change::New);
    assert!(up[0].is_news());
    // The same condition, persisting and worse: updated, not repeated; id and first_seen kept.
    let mut later = finding(FindingKind::ErrorSpike, Some("acme"), 11 * H, 13 * H);
    later.severity = Severity::Critical;
    let up = store
        .upsert_findings(vec![later.clone()], gap)
        .await
        .unwrap();
    assert_eq!(
        up[0].change,
        Change::Updated {
            previous: Severity::Warning
        }
    );
    assert!(up[0].is_news(), "an escalation is news");
    assert_eq!(up[0].finding.id, first.id);
    assert_eq!(up[0].finding.first_seen_ms, 10 * H);
    assert_eq!(up[0].finding.last_seen_ms, 13 * H);
    // Re-evaluating the same data changes nothing but is not news.
    let up = store.upsert_findings(vec![later], gap).await.unwrap();
    assert!(!up[0].is_news());
    // Evaluating older data only widens the span; the latest summary stays.
    let older = finding(FindingKind::ErrorSpike, Some("acme"), 9 * H, 10 * H);
    let up = store.upsert_findings(vec![older], gap).await.unwrap();
    assert_eq!(up[0].finding.first_seen_ms, 9 * H);
    assert_eq!(up[0].finding.last_seen_ms, 13 * H);
    assert_eq!(up[0].finding.severity, Severity::Critical);
    // The same kind for the same consumer a day later is a new finding.
    let recur = finding(FindingKind::ErrorSpike, Some("acme"), 40 * H, 41 * H);
    let up = store
        .upsert_findings(vec![recur.clone()], gap)
        .await
        .unwrap();
    assert_eq!(up[0].change, Change::New);
    // Other keys are other findings.
    let api_wide = finding(FindingKind::ApiErrors, None, 10 * H, 12 * H);
    let other = finding(FindingKind::VolumeDrop, Some("beta"), 12 * H, 14 * H);
    store
        .upsert_findings(vec![api_wide.clone(), other.clone()], gap)
        .await
        .unwrap();

    let all = store.list_findings(&FindingQuery::default()).await.unwrap();
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, recur.id, "most recently seen first");
    let acme = store
        .list_findings(&FindingQuery {
            consumer: Some("acme".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(acme.len(), 2);
    let kind = store
        .list_findings(&FindingQuery {
            kind: Some(FindingKind::ApiErrors),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(kind.len(), 1);
    assert_eq!(kind[0].consumer, None);
    assert_eq!(kind[0].evidence, api_wide.evidence);
    // Time filters select overlapping spans.
    let window = store
        .list_findings(&FindingQuery {
            from_ms: Some(13 * H + 1),
            to_ms: Some(20 * H),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(window.len(), 1);
    assert_eq!(window[0].id, other.id);
    let none = store
        .list_findings(&FindingQuery {
            api: Some("nope".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(none.is_empty());
    let limited = store
        .list_findings(&FindingQuery {
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(limited.len(), 1);
    assert_eq!(
        store.get_finding(&first.id).await.unwrap().unwrap().id,
        first.id
    );
    assert!(store.get_finding("fnd_missing").await.unwrap().is_none());
    // A span that ends before it starts is refused.
    let bad = finding(FindingKind::VolumeSpike, Some("x"), 5, 1);
    assert!(matches!(
        store.upsert_findings(vec![bad], gap).await,
        Err(StoreError::Invalid(_))
    ));

    // The delivery log, newest first.
    for (attempt, outcome) in [(1, "retrying"), (2, "delivered")] {
        store
            .record_delivery(Delivery {
                id: 0,
                ts_ms: 1_000 + attempt as i64,
                rule: "oncall".into(),
                finding_id: first.id.clone(),
                kind: "error_spike".into(),
                consumer: Some("acme".into()),
                severity: "critical".into(),
                url: "http://127.0.0.1:9/hook".into(),
                attempt,
                outcome: outcome.into(),
                http_status: Some(if attempt == 1 { 500 } else { 200 }),
                error: (attempt == 1).then(|| "500 Internal Server Error".into()),
            })
            .await
            .unwrap();
    }
    let log = store
        .list_deliveries(&DeliveryQuery::default())
        .await
        .unwrap();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].outcome, "delivered");
    assert_eq!(log[1].http_status, Some(500));
    assert!(log[0].id > log[1].id);
    let other_rule = store
        .list_deliveries(&DeliveryQuery {
            rule: Some("nobody".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(other_rule.is_empty());

    // Pruning drops what was last seen (or logged) before the cut, nothing else.
    let pruned = store.prune_findings(12 * H + 1).await.unwrap();
    assert_eq!(
        pruned,
        2 + 1,
        "the two deliveries and the api_errors finding"
    );
    let left = store.list_findings(&FindingQuery::default()).await.unwrap();
    assert_eq!(left.len(), 3);
    assert!(left.iter().all(|f| f.last_seen_ms > 12 * H));
}

/// Spec versions: recorded once per (api, hash), listed oldest first, per API.
async fn spec_versions_suite(store: &dyn ControlStore) {
    let v = |api: &str, hash: &str, at: i64| crate::StoredSpecVersion {
        api: api.into(),
        hash: hash.into(),
        loaded_at_ms: at,
        openapi: "3.0.4".into(),
        operations: 19,
    };
    assert!(store.spec_versions("petstore").await.unwrap().is_empty());
    assert!(
        store
            .record_spec_version(v("petstore", "aa", 2_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_spec_version(v("petstore", "bb", 3_000))
            .await
            .unwrap()
    );
    // Loading the same files again keeps the first load time.
    assert!(
        !store
            .record_spec_version(v("petstore", "aa", 9_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_spec_version(v("other", "aa", 1_000))
            .await
            .unwrap()
    );
    let got = store.spec_versions("petstore").await.unwrap();
    assert_eq!(
        got,
        vec![v("petstore", "aa", 2_000), v("petstore", "bb", 3_000)]
    );
    assert_eq!(store.spec_versions("other").await.unwrap().len(), 1);
}
