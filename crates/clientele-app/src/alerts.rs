//! The alert dispatcher: matches stored findings against `[[alerts]]` rules and delivers them to
//! webhooks, off the detection path.
//!
//! Detection hands batches over a bounded channel with `try_send`, so a slow or dead webhook
//! never holds up detection (or the gateway). Per rule and finding: the first sighting is sent,
//! an escalation is sent at once, and a condition that persists is re-sent at most once per
//! cooldown. Each delivery is retried with exponential backoff, and every attempt is written to
//! the delivery log (`GET /v1/alerts/deliveries`), which also seeds the dedup state at start-up
//! so a restart does not re-send everything.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::findings::FindingOut;
use bytes::Bytes;
use clientele_core::alert::{AlertFormat, AlertTarget};
use clientele_core::finding::{Finding, Severity};
use clientele_http::{ClientOptions, Failure, Outbound, Posted, RetryPolicy, Timeouts};
use clientele_store::{ControlStore, Delivery, DeliveryQuery, FindingStore, Upserted};
use http::{Method, Request, header};
use http_body_util::Full;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

/// Batches of findings waiting for the dispatcher; beyond this, detection drops and logs.
const QUEUE: usize = 64;
/// Deliveries in flight at once, across rules.
const CONCURRENCY: usize = 8;
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Backoff before retry n (1-based): about BASE × 2^(n-1) with jitter, capped.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
const BACKOFF_CAP: Duration = Duration::from_secs(60);

pub type Http = Outbound<Full<Bytes>>;

/// The webhook client: the shared outbound client with `[outbound]`'s trust (webhooks may be
/// `https://`, as Slack's are).
pub fn client(tls: &clientele_core::config::OutboundTls) -> Result<Http, String> {
    let timeouts = Timeouts {
        connect: ATTEMPT_TIMEOUT,
        request: ATTEMPT_TIMEOUT,
    };
    Outbound::new(&ClientOptions::new(timeouts).with_tls(tls.clone()))
        .map_err(|e| format!("outbound: {e}"))
}

/// What was last sent for one (rule, finding).
#[derive(Debug, Clone, Copy)]
struct Sent {
    at_ms: i64,
    severity: Severity,
}

/// Starts the dispatcher when any rule is configured. Returns the hand-off for detection.
pub async fn start(
    targets: Vec<AlertTarget>,
    http: Http,
    store: Arc<dyn FindingStore>,
    control: Arc<dyn ControlStore>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> (Option<mpsc::Sender<Vec<Upserted>>>, Option<JoinHandle<()>>) {
    if targets.is_empty() {
        return (None, None);
    }
    let mut sent: HashMap<(String, String), Sent> = HashMap::new();
    // Seed dedup from the log, so a restart does not repeat what was already delivered.
    match store
        .list_deliveries(&DeliveryQuery {
            limit: 10_000,
            ..Default::default()
        })
        .await
    {
        Ok(log) => {
            for d in log.into_iter().rev() {
                if d.attempt == 1 {
                    sent.insert(
                        (d.rule, d.finding_id),
                        Sent {
                            at_ms: d.ts_ms,
                            severity: Severity::parse(&d.severity).unwrap_or(Severity::Info),
                        },
                    );
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the alert delivery log; alerts may repeat")
        }
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let task = tokio::spawn(run(targets, http, store, control, rx, sent, shutdown));
    (Some(tx), Some(task))
}

async fn run(
    targets: Vec<AlertTarget>,
    http: Http,
    store: Arc<dyn FindingStore>,
    control: Arc<dyn ControlStore>,
    mut rx: mpsc::Receiver<Vec<Upserted>>,
    mut sent: HashMap<(String, String), Sent>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    let targets: Vec<Arc<AlertTarget>> = targets.into_iter().map(Arc::new).collect();
    loop {
        let batch = tokio::select! {
            () = &mut shutdown => return,
            b = rx.recv() => match b {
                Some(b) => b,
                None => return,
            },
        };
        // Plans and teams of the consumers concerned, once per batch.
        let consumers = match control.list_consumers().await {
            Ok(list) => list
                .into_iter()
                .map(|c| (c.id, (c.plan, c.team)))
                .collect::<HashMap<_, _>>(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read consumers for alert rules; plan and team filters see none");
                HashMap::new()
            }
        };
        let now = clientele_core::time::now_ms();
        for u in batch {
            let f = &u.finding;
            let (plan, team) = f
                .consumer
                .as_ref()
                .and_then(|c| consumers.get(c))
                .map_or((None, None), |(p, t)| (p.as_deref(), t.as_deref()));
            for target in &targets {
                if !target.matches(f.kind, f.severity, plan, team) {
                    continue;
                }
                let key = (target.name.clone(), f.id.clone());
                let event = match sent.get(&key) {
                    None => "new",
                    Some(prev) if f.severity > prev.severity => "escalated",
                    // Re-sent after the cooldown only while the condition is still being seen.
                    Some(prev)
                        if now - prev.at_ms >= target.cooldown_ms
                            && f.last_seen_ms >= now - crate::findings::REOPEN_GAP_MS =>
                    {
                        "ongoing"
                    }
                    Some(_) => continue,
                };
                sent.insert(
                    key,
                    Sent {
                        at_ms: now,
                        severity: f.severity,
                    },
                );
                let body = payload(target, f, event, plan, team);
                let (http, store, target, slots) =
                    (http.clone(), store.clone(), target.clone(), slots.clone());
                let finding = f.clone();
                tokio::spawn(async move {
                    // Waiting for a slot bounds connections to webhooks; the permit is dropped
                    // when this delivery ends.
                    let Ok(_permit) = slots.acquire_owned().await else {
                        return;
                    };
                    deliver(&http, store.as_ref(), &target, &finding, body).await;
                });
            }
        }
    }
}

/// Tries one delivery up to the rule's attempts with the shared retry policy, logging each.
async fn deliver(
    http: &Http,
    store: &dyn FindingStore,
    target: &AlertTarget,
    f: &Finding,
    body: Bytes,
) {
    let policy = RetryPolicy::new(target.max_attempts, BACKOFF_BASE, BACKOFF_CAP);
    let mut attempt = 1;
    loop {
        let result = post(http, &target.webhook, body.clone()).await;
        let (status, error) = match &result {
            Ok(p) if (200..300).contains(&p.status) => (Some(p.status), None),
            Ok(p) => (
                Some(p.status),
                Some(format!("the webhook answered {}", p.status)),
            ),
            Err(e) => (None, Some(e.to_string())),
        };
        let delivered = error.is_none();
        let wait = if delivered {
            None
        } else {
            policy.next_delay(attempt, &result)
        };
        let outcome = match (delivered, wait) {
            (true, _) => "delivered",
            (false, None) => "failed",
            (false, Some(_)) => "retrying",
        };
        let entry = Delivery {
            id: 0,
            ts_ms: clientele_core::time::now_ms(),
            rule: target.name.clone(),
            finding_id: f.id.clone(),
            kind: f.kind.as_str().to_string(),
            consumer: f.consumer.clone(),
            severity: f.severity.as_str().to_string(),
            url: target.webhook.clone(),
            attempt,
            outcome: outcome.to_string(),
            http_status: status,
            error: error.clone(),
        };
        if let Err(e) = store.record_delivery(entry).await {
            tracing::warn!(error = %e, "cannot write the alert delivery log");
        }
        let Some(wait) = wait else {
            if !delivered {
                tracing::warn!(rule = %target.name, finding = %f.id, error = error.as_deref().unwrap_or(""), attempts = attempt, "alert delivery failed; giving up");
            }
            return;
        };
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

pub(crate) async fn post(http: &Http, url: &str, body: Bytes) -> Result<Posted, Failure> {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::USER_AGENT, "clientele-alerts")
        .body(Full::new(body))
        .map_err(|e| Failure::other(format!("invalid webhook URL: {e}")))?;
    http.send_and_drain(req).await.map_err(|e| Failure {
        reason: format!("cannot reach the webhook: {e}"),
        ..e
    })
}

/// The webhook body for a finding, in the rule's format.
pub fn payload(
    target: &AlertTarget,
    f: &Finding,
    event: &str,
    plan: Option<&str>,
    team: Option<&str>,
) -> Bytes {
    let value = match target.format {
        AlertFormat::Json => json!({
            "rule": target.name,
            "event": event,
            "consumer_plan": plan,
            "consumer_team": team,
            "finding": FindingOut::from(f.clone()),
        }),
        AlertFormat::Slack => slack(f, event),
    };
    Bytes::from(value.to_string())
}

fn slack(f: &Finding, event: &str) -> Value {
    let who = f.consumer.as_deref().unwrap_or("the API");
    let what = f
        .route
        .as_deref()
        .map(|r| format!(" · {r}"))
        .unwrap_or_default();
    let prefix = match event {
        "escalated" => "Escalated: ",
        "ongoing" => "Still ongoing: ",
        _ => "",
    };
    let headline = format!(
        "{prefix}[{}] {} · {who}{what}",
        f.severity.as_str().to_uppercase(),
        f.kind.as_str()
    );
    json!({
        "text": format!("{headline}: {}", f.summary),
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": format!("*{headline}*\n{}", f.summary)}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!(
                "first seen {} · last seen {} · finding `{}`",
                clientele_core::time::format_ts(f.first_seen_ms),
                clientele_core::time::format_ts(f.last_seen_ms),
                f.id
            )}]}
        ]
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clientele_core::alert::AlertFormat;
    use clientele_core::finding::FindingKind;

    fn target(format: AlertFormat) -> AlertTarget {
        AlertTarget {
            name: "oncall".into(),
            kinds: vec![],
            min_severity: Severity::Warning,
            plans: vec![],
            teams: vec![],
            webhook: "http://127.0.0.1:9/hook".into(),
            format,
            cooldown_ms: 3_600_000,
            max_attempts: 3,
        }
    }

    fn finding() -> Finding {
        Finding {
            id: "fnd_1".into(),
            kind: FindingKind::ErrorSpike,
            consumer: Some("acme".into()),
            api: Some("shop".into()),
            route: Some("POST /orders".into()),
            severity: Severity::Critical,
            first_seen_ms: 0,
            last_seen_ms: 60_000,
            summary: "acme's error rate on POST /orders rose from 0.4% to 15% since Thu 00:00 UTC."
                .into(),
            evidence: json!({"observed": {"error_rate": 0.15}}),
        }
    }

    #[test]
    fn json_payload_carries_the_finding_as_the_api_shows_it() {
        let body = payload(
            &target(AlertFormat::Json),
            &finding(),
            "new",
            Some("pro"),
            None,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["rule"], "oncall");
        assert_eq!(v["event"], "new");
        assert_eq!(v["consumer_plan"], "pro");
        assert_eq!(v["finding"]["kind"], "error_spike");
        assert_eq!(v["finding"]["first_seen"], "1970-01-01T00:00:00.000Z");
        assert_eq!(v["finding"]["evidence"]["observed"]["error_rate"], 0.15);
    }

    #[test]
    fn slack_payload_has_text_and_blocks() {
        let body = payload(
            &target(AlertFormat::Slack),
            &finding(),
            "escalated",
            None,
            None,
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        let text = v["text"].as_str().unwrap();
        assert!(
            text.starts_with("Escalated: [CRITICAL] error_spike · acme · POST /orders"),
            "{text}"
        );
        assert_eq!(v["blocks"][0]["type"], "section");
    }
}
