//! The findings service: runs the detectors (on request, and every minute from the detection
//! loop), stores what they find by dedup key, and hands news to the alert dispatcher and the
//! other finding observers. The API's findings endpoints and the dashboard call it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use clientele_analytics::{Engine, HOUR_MS};
use clientele_core::config::PlanConfig;
use clientele_core::finding::Finding;
use clientele_core::time::format_ts;
use clientele_detect::{EvalContext, Registry};
use clientele_store::{ControlStore, FindingStore, StoreError, Upserted};
use serde::Serialize;
use serde_json::Value;
use tokio::sync::mpsc;
use utoipa::ToSchema;

/// A stored finding touching a new one within this gap is the same condition: detectors judge
/// hourly slots, so one quiet hour does not split a condition in two.
pub const REOPEN_GAP_MS: i64 = 2 * HOUR_MS;

/// Runs the detectors and keeps their findings. One evaluation at a time: a periodic run and an
/// explicit one never interleave their upserts.
pub struct FindingsService {
    registry: Arc<Registry>,
    store: Arc<dyn FindingStore>,
    control: Arc<dyn ControlStore>,
    engine: Arc<Engine>,
    plans: Arc<BTreeMap<String, PlanConfig>>,
    /// News for the alert dispatcher. `try_send`: a slow webhook never holds up detection.
    alerts: Option<mpsc::Sender<Vec<Upserted>>>,
    /// Told of every new or escalated finding (e.g. the OTLP log exporter). Must not block.
    observers: Vec<FindingObserver>,
    /// The behavioural features the governance detector reads.
    governance: Option<Arc<clientele_governance::FeatureStore>>,
    running: tokio::sync::Mutex<()>,
}

/// A callback for new or escalated findings; it must return at once (queue, never wait).
pub type FindingObserver = Box<dyn Fn(&[Finding]) + Send + Sync>;

/// What one evaluation did.
#[derive(Debug, Clone)]
pub struct EvalReport {
    pub at_ms: i64,
    pub lookback_ms: i64,
    pub elapsed_ms: f64,
    pub findings: Vec<Upserted>,
    pub timings: Vec<clientele_detect::Timing>,
}

impl FindingsService {
    pub fn new(
        registry: Registry,
        store: Arc<dyn FindingStore>,
        control: Arc<dyn ControlStore>,
        engine: Arc<Engine>,
        plans: BTreeMap<String, PlanConfig>,
        alerts: Option<mpsc::Sender<Vec<Upserted>>>,
    ) -> FindingsService {
        FindingsService {
            registry: Arc::new(registry),
            store,
            control,
            engine,
            plans: Arc::new(plans),
            alerts,
            observers: Vec::new(),
            governance: None,
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Adds a callback told of every new or escalated finding after it is stored.
    pub fn observe(mut self, observer: FindingObserver) -> FindingsService {
        self.observers.push(observer);
        self
    }

    /// Gives the detectors the governance feature store.
    pub fn governance(
        mut self,
        features: Arc<clientele_governance::FeatureStore>,
    ) -> FindingsService {
        self.governance = Some(features);
        self
    }

    pub fn store(&self) -> &Arc<dyn FindingStore> {
        &self.store
    }

    /// The configured plans, for the reports that judge usage against them.
    pub fn plans(&self) -> &Arc<BTreeMap<String, PlanConfig>> {
        &self.plans
    }

    /// Runs every detector as of `at_ms` over `lookback_ms`, stores the findings, and passes
    /// the news to the alert dispatcher.
    pub async fn evaluate(&self, at_ms: i64, lookback_ms: i64) -> Result<EvalReport, StoreError> {
        let _one_at_a_time = self.running.lock().await;
        let started = Instant::now();
        let consumers = self.control.list_consumers().await?;
        let (registry, engine, plans, governance) = (
            self.registry.clone(),
            self.engine.clone(),
            self.plans.clone(),
            self.governance.clone(),
        );
        // Detectors are CPU work over the engine: off the async workers.
        let (found, timings) = tokio::task::spawn_blocking(move || {
            let mut ctx = EvalContext::new(&engine, at_ms, lookback_ms, &consumers, &plans);
            if let Some(features) = &governance {
                ctx = ctx.with_governance(features);
            }
            registry.evaluate(&ctx)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("detector task failed: {e}")))?;
        let stored = self.store.upsert_findings(found, REOPEN_GAP_MS).await?;
        if !self.observers.is_empty() {
            let news: Vec<Finding> = stored
                .iter()
                .filter(|u| u.is_news())
                .map(|u| u.finding.clone())
                .collect();
            if !news.is_empty() {
                for observe in &self.observers {
                    observe(&news);
                }
            }
        }
        if let Some(tx) = &self.alerts {
            let news: Vec<Upserted> = stored.iter().filter(|u| u.is_news()).cloned().collect();
            let persisting: Vec<Upserted> =
                stored.iter().filter(|u| !u.is_news()).cloned().collect();
            // The dispatcher also sees persisting findings, for re-sending after a cooldown.
            let batch: Vec<Upserted> = news.into_iter().chain(persisting).collect();
            if !batch.is_empty() {
                if let Err(e) = tx.try_send(batch) {
                    tracing::warn!(error = %e, "alert dispatcher is behind; these findings were stored but not alerted");
                }
            }
        }
        Ok(EvalReport {
            at_ms,
            lookback_ms,
            elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
            findings: stored,
            timings,
        })
    }
}

/// A finding as the API and alert payloads show it.
/// Something a detector noticed.
#[derive(Debug, Serialize, ToSchema)]
pub struct FindingOut {
    pub id: String,
    /// One of the contract's kinds, e.g. `error_spike`, `api_errors`.
    pub kind: String,
    /// Null for findings about the API as a whole.
    pub consumer: Option<String>,
    pub api: Option<String>,
    /// `METHOD /template` when the finding is about one operation.
    pub route: Option<String>,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// RFC 3339.
    pub first_seen: String,
    /// RFC 3339.
    pub last_seen: String,
    /// One sentence a product manager can act on.
    pub summary: String,
    /// The numbers behind it: baseline, observed, window.
    #[schema(value_type = Object)]
    pub evidence: Value,
    /// The release of its API the condition began after (within two days), e.g. `v2.3`, when
    /// one was marked (`GET /v1/findings` fills it; absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_release: Option<String>,
}

impl From<Finding> for FindingOut {
    fn from(f: Finding) -> Self {
        FindingOut {
            id: f.id,
            kind: f.kind.as_str().to_string(),
            consumer: f.consumer,
            api: f.api,
            route: f.route,
            severity: f.severity.as_str().to_string(),
            first_seen: format_ts(f.first_seen_ms),
            last_seen: format_ts(f.last_seen_ms),
            summary: f.summary,
            evidence: f.evidence,
            since_release: None,
        }
    }
}
