//! `ControlStore` behaviours: consumers, keys, limits, quota usage, spec versions.

use clientele_core::consumer::{ApiKey, Consumer};
use clientele_core::keys::{QuotaSeed, QuotaUsage};
use clientele_core::limits::{LimitOverride, RouteLimit};

use super::{Backend, Fresh};
use crate::{ControlStore, Release, StoreError, StoredSpecVersion};

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

fn spec(api: &str, hash: &str, at: i64) -> StoredSpecVersion {
    StoredSpecVersion {
        api: api.into(),
        hash: hash.into(),
        loaded_at_ms: at,
        openapi: "3.0.4".into(),
        operations: 19,
    }
}

pub async fn spec_versions_are_recorded_once_per_hash<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    assert!(store.spec_versions("petstore").await.unwrap().is_empty());
    assert!(
        store
            .record_spec_version(spec("petstore", "aa", 2_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_spec_version(spec("petstore", "bb", 3_000))
            .await
            .unwrap()
    );
    // Loading the same files again keeps the first load time.
    assert!(
        !store
            .record_spec_version(spec("petstore", "aa", 9_000))
            .await
            .unwrap()
    );
    assert!(
        store
            .record_spec_version(spec("other", "aa", 1_000))
            .await
            .unwrap()
    );
    assert_eq!(
        store.spec_versions("petstore").await.unwrap(),
        vec![spec("petstore", "aa", 2_000), spec("petstore", "bb", 3_000)],
        "oldest first, one API only"
    );
    assert_eq!(store.spec_versions("other").await.unwrap().len(), 1);
}

pub async fn consumers_are_created_once_and_bump_the_control_version<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let v0 = store.control_version().await.unwrap();
    let acme = store
        .create_consumer(consumer("acme", Some("pro")))
        .await
        .unwrap();
    assert_eq!(store.get_consumer("acme").await.unwrap(), Some(acme));
    assert!(matches!(
        store.create_consumer(consumer("acme", None)).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(store.control_version().await.unwrap() > v0);
    assert_eq!(store.get_consumer("ghost").await.unwrap(), None);
}

pub async fn updating_a_consumer_replaces_its_fields<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let acme = store
        .create_consumer(consumer("acme", Some("pro")))
        .await
        .unwrap();
    let mut changed = acme;
    changed.plan = Some("free".into());
    store.update_consumer(changed.clone()).await.unwrap();
    assert_eq!(store.get_consumer("acme").await.unwrap(), Some(changed));
    assert!(matches!(
        store.update_consumer(consumer("ghost", None)).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn a_key_needs_a_consumer_and_a_unique_hash<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    store.create_consumer(consumer("acme", None)).await.unwrap();
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
    assert_eq!(store.list_keys("acme").await.unwrap().len(), 1);
}

pub async fn key_entries_carry_the_consumers_plan<S: Backend + ControlStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store
        .create_consumer(consumer("acme", Some("pro")))
        .await
        .unwrap();
    store
        .create_key(key("key_1", "acme", &"a".repeat(64)))
        .await
        .unwrap();
    let mut changed = consumer("acme", Some("free"));
    changed.team = None;
    store.update_consumer(changed).await.unwrap();
    let entries = store.key_entries().await.unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].hash, [0xaa; 32]);
    assert_eq!(entries[0].plan.as_deref(), Some("free"));
    assert!(!entries[0].revoked);
}

pub async fn consumer_key_entries_are_that_consumers_keys_only<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    store
        .create_consumer(consumer("acme", Some("pro")))
        .await
        .unwrap();
    store
        .create_consumer(consumer("globex", Some("free")))
        .await
        .unwrap();
    for (id, owner, fill) in [
        ("key_1", "acme", "a"),
        ("key_2", "globex", "b"),
        ("key_3", "acme", "c"),
    ] {
        store
            .create_key(key(id, owner, &fill.repeat(64)))
            .await
            .unwrap();
    }
    store.revoke_key("key_3", 2_000).await.unwrap();
    let mut acme = store.consumer_key_entries("acme").await.unwrap();
    acme.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let all = store.key_entries().await.unwrap();
    let mut expected: Vec<_> = all.into_iter().filter(|e| &*e.consumer == "acme").collect();
    expected.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    // The same entries the full reload gives, revoked ones included.
    assert_eq!(acme, expected);
    assert_eq!(acme.len(), 2);
    assert!(acme[1].revoked && !acme[0].revoked);
    assert_eq!(acme[0].plan.as_deref(), Some("pro"));
    // A deleted consumer's keys stay, revoked, so the gateway can say why it refuses them.
    store.delete_consumer("globex", 3_000).await.unwrap();
    let globex = store.consumer_key_entries("globex").await.unwrap();
    assert_eq!(globex.len(), 1);
    assert!(globex[0].revoked);
    assert!(
        store
            .consumer_key_entries("nobody")
            .await
            .unwrap()
            .is_empty()
    );
}

pub async fn revoking_a_key_keeps_the_first_time<S: Backend + ControlStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.create_consumer(consumer("acme", None)).await.unwrap();
    store
        .create_key(key("key_1", "acme", &"a".repeat(64)))
        .await
        .unwrap();
    let revoked = store.revoke_key("key_1", 5_000).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
    let again = store.revoke_key("key_1", 6_000).await.unwrap();
    assert_eq!(again.revoked_at_ms, Some(5_000));
    assert!(store.key_entries().await.unwrap()[0].revoked);
    assert!(matches!(
        store.revoke_key("nope", 1).await,
        Err(StoreError::NotFound(_))
    ));
}

pub async fn deleting_a_consumer_revokes_its_keys<S: Backend + ControlStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store.create_consumer(consumer("acme", None)).await.unwrap();
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
    assert_eq!(keys[0].revoked_at_ms, Some(7_000));
    assert!(matches!(
        store.delete_consumer("globex", 1).await,
        Err(StoreError::NotFound(_))
    ));
    assert_eq!(store.list_consumers().await.unwrap().len(), 1);
}

pub async fn per_consumer_limits_reach_the_key_entries<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
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
    store.update_consumer(limited).await.unwrap();
    let stored = store.get_consumer("initech").await.unwrap().unwrap();
    assert_eq!(stored.limits, None);
}

pub async fn quota_usage_replaces_what_was_stored<S: Backend + ControlStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
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

pub async fn the_key_secret_and_consumers_survive_a_reopen<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let secret = fresh.store().key_secret();
    fresh
        .store()
        .create_consumer(consumer("acme", None))
        .await
        .unwrap();
    let store = fresh.reopen();
    assert_eq!(store.key_secret(), secret);
    assert!(store.get_consumer("acme").await.unwrap().is_some());
}

pub async fn releases_are_recorded_once_and_listed_in_time_order<S: Backend + ControlStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let rel = |api: &str, version: &str, at_ms: i64| Release {
        api: api.into(),
        version: version.into(),
        at_ms,
        recorded_at_ms: 9_000,
    };
    assert!(store.releases(None).await.unwrap().is_empty());
    store
        .record_release(rel("shop", "v2.3", 5_000))
        .await
        .unwrap();
    store
        .record_release(rel("shop", "v2.2", 1_000))
        .await
        .unwrap();
    store
        .record_release(rel("kennel", "1.0", 3_000))
        .await
        .unwrap();
    assert!(matches!(
        store.record_release(rel("shop", "v2.3", 7_000)).await,
        Err(StoreError::Conflict(_))
    ));
    let shop = store.releases(Some("shop")).await.unwrap();
    assert_eq!(
        shop,
        vec![rel("shop", "v2.2", 1_000), rel("shop", "v2.3", 5_000)]
    );
    let all = store.releases(None).await.unwrap();
    assert_eq!(
        all.iter().map(|r| r.version.as_str()).collect::<Vec<_>>(),
        ["v2.2", "1.0", "v2.3"]
    );
    let store = fresh.reopen();
    assert_eq!(store.releases(None).await.unwrap().len(), 3);
}
