//! `FindingStore` behaviours: findings upserted by dedup key, filters, the delivery log.

use clientele_core::finding::{Finding, FindingKind, Severity};

use super::{Backend, Fresh};
use crate::{Change, Delivery, DeliveryQuery, FindingQuery, FindingStore, StoreError};

const H: i64 = 3_600_000;
/// Spans closer than this are one condition.
const GAP: i64 = H;

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

fn delivery(finding_id: &str, attempt: u32, outcome: &str) -> Delivery {
    Delivery {
        id: 0,
        ts_ms: 1_000 + i64::from(attempt),
        rule: "oncall".into(),
        finding_id: finding_id.into(),
        kind: "error_spike".into(),
        consumer: Some("acme".into()),
        severity: "critical".into(),
        url: "http://127.0.0.1:9/hook".into(),
        attempt,
        outcome: outcome.into(),
        http_status: Some(if attempt == 1 { 500 } else { 200 }),
        error: (attempt == 1).then(|| "500 Internal Server Error".into()),
    }
}

/// Four findings: acme's error spike (10h-13h) and its recurrence (40h-41h), an API-wide one
/// (10h-12h) and beta's volume drop (12h-14h). Returns (first, recurrence, api-wide, beta's).
async fn four_findings<S: FindingStore>(store: &S) -> [Finding; 4] {
    let first = finding(FindingKind::ErrorSpike, Some("acme"), 10 * H, 13 * H);
    let recur = finding(FindingKind::ErrorSpike, Some("acme"), 40 * H, 41 * H);
    let api_wide = finding(FindingKind::ApiErrors, None, 10 * H, 12 * H);
    let other = finding(FindingKind::VolumeDrop, Some("beta"), 12 * H, 14 * H);
    let all = vec![
        first.clone(),
        recur.clone(),
        api_wide.clone(),
        other.clone(),
    ];
    store.upsert_findings(all, GAP).await.unwrap();
    [first, recur, api_wide, other]
}

pub async fn a_persisting_condition_is_one_finding<S: Backend + FindingStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let first = finding(FindingKind::ErrorSpike, Some("acme"), 10 * H, 11 * H);
    let up = store
        .upsert_findings(vec![first.clone()], GAP)
        .await
        .unwrap();
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].change, Change::New);
    assert!(up[0].is_news());
    // The same condition, persisting and worse: updated, not repeated; id and first_seen kept.
    let mut later = finding(FindingKind::ErrorSpike, Some("acme"), 11 * H, 13 * H);
    later.severity = Severity::Critical;
    let up = store
        .upsert_findings(vec![later.clone()], GAP)
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
    let up = store.upsert_findings(vec![later], GAP).await.unwrap();
    assert!(!up[0].is_news());
    // Evaluating older data only widens the span; the latest severity stays.
    let older = finding(FindingKind::ErrorSpike, Some("acme"), 9 * H, 10 * H);
    let up = store.upsert_findings(vec![older], GAP).await.unwrap();
    assert_eq!(up[0].finding.first_seen_ms, 9 * H);
    assert_eq!(up[0].finding.last_seen_ms, 13 * H);
    assert_eq!(up[0].finding.severity, Severity::Critical);
    assert_eq!(
        store
            .list_findings(&FindingQuery::default())
            .await
            .unwrap()
            .len(),
        1
    );
}

pub async fn the_same_condition_a_day_later_is_a_new_finding<S: Backend + FindingStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let first = finding(FindingKind::ErrorSpike, Some("acme"), 10 * H, 11 * H);
    store.upsert_findings(vec![first], GAP).await.unwrap();
    let recur = finding(FindingKind::ErrorSpike, Some("acme"), 40 * H, 41 * H);
    let up = store.upsert_findings(vec![recur], GAP).await.unwrap();
    assert_eq!(up[0].change, Change::New);
}

pub async fn findings_filter_by_consumer_kind_api_time_and_limit<S: Backend + FindingStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    let [first, recur, api_wide, other] = four_findings(store).await;
    let list = |q: FindingQuery| async move { store.list_findings(&q).await.unwrap() };
    let all = list(FindingQuery::default()).await;
    assert_eq!(all.len(), 4);
    assert_eq!(all[0].id, recur.id, "most recently seen first");
    let acme = list(FindingQuery {
        consumer: Some("acme".into()),
        ..Default::default()
    })
    .await;
    assert_eq!(acme.len(), 2);
    let kind = list(FindingQuery {
        kind: Some(FindingKind::ApiErrors),
        ..Default::default()
    })
    .await;
    assert_eq!(kind.len(), 1);
    assert_eq!(kind[0].consumer, None);
    assert_eq!(kind[0].evidence, api_wide.evidence);
    // Time filters select overlapping spans.
    let window = list(FindingQuery {
        from_ms: Some(13 * H + 1),
        to_ms: Some(20 * H),
        ..Default::default()
    })
    .await;
    assert_eq!(window.len(), 1);
    assert_eq!(window[0].id, other.id);
    let none = list(FindingQuery {
        api: Some("nope".into()),
        ..Default::default()
    })
    .await;
    assert!(none.is_empty());
    let limited = list(FindingQuery {
        limit: 1,
        ..Default::default()
    })
    .await;
    assert_eq!(limited.len(), 1);
    assert_eq!(
        store.get_finding(&first.id).await.unwrap().unwrap().id,
        first.id
    );
    assert!(store.get_finding("fnd_missing").await.unwrap().is_none());
}

pub async fn a_span_that_ends_before_it_starts_is_refused<S: Backend + FindingStore>(
    fresh: &mut Fresh<S>,
) {
    let bad = finding(FindingKind::VolumeSpike, Some("x"), 5, 1);
    assert!(matches!(
        fresh.store().upsert_findings(vec![bad], GAP).await,
        Err(StoreError::Invalid(_))
    ));
}

pub async fn deliveries_are_listed_newest_first<S: Backend + FindingStore>(fresh: &mut Fresh<S>) {
    let store = fresh.store();
    store
        .record_delivery(delivery("fnd_1", 1, "retrying"))
        .await
        .unwrap();
    store
        .record_delivery(delivery("fnd_1", 2, "delivered"))
        .await
        .unwrap();
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
}

pub async fn pruning_drops_findings_and_deliveries_before_the_cut<S: Backend + FindingStore>(
    fresh: &mut Fresh<S>,
) {
    let store = fresh.store();
    four_findings(store).await;
    for (attempt, outcome) in [(1, "retrying"), (2, "delivered")] {
        store
            .record_delivery(delivery("fnd_1", attempt, outcome))
            .await
            .unwrap();
    }
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
