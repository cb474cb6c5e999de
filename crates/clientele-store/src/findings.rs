//! Findings and alert deliveries: what the detectors noticed, and what was sent about it.
//!
//! A condition that persists is one finding: [`FindingStore::upsert_findings`] matches a new
//! finding to a stored one with the same `dedup_key` whose time span touches it (within a gap),
//! and moves its `last_seen` instead of adding a row. The first id and `first_seen` stay, so
//! links and alert dedup keep working; severity, summary and evidence follow the latest view.

use async_trait::async_trait;
use clientele_core::finding::{Finding, FindingKind, Severity};

use crate::{Result, StoreError};

/// Which findings to list. Times select findings whose `[first_seen, last_seen]` overlaps
/// `[from_ms, to_ms]`.
#[derive(Debug, Clone, Default)]
pub struct FindingQuery {
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub kind: Option<FindingKind>,
    pub consumer: Option<String>,
    pub api: Option<String>,
    /// At most this many, most recently seen first; 0 means the backend's default (1,000).
    pub limit: usize,
}

/// What an upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    New,
    /// An existing finding was extended; `previous` is its severity before.
    Updated {
        previous: Severity,
    },
}

/// A finding as stored after an upsert (stored id and first_seen), and what changed.
#[derive(Debug, Clone, PartialEq)]
pub struct Upserted {
    pub finding: Finding,
    pub change: Change,
}

impl Upserted {
    /// New, or more severe than before: what alert rules react to.
    pub fn is_news(&self) -> bool {
        match self.change {
            Change::New => true,
            Change::Updated { previous } => self.finding.severity > previous,
        }
    }
}

/// One attempt to deliver an alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Assigned by the store; 0 when recording.
    pub id: i64,
    pub ts_ms: i64,
    /// The alert rule's name.
    pub rule: String,
    pub finding_id: String,
    pub kind: String,
    pub consumer: Option<String>,
    pub severity: String,
    pub url: String,
    /// 1 for the first try.
    pub attempt: u32,
    /// `delivered`, `retrying` or `failed` (no more retries).
    pub outcome: String,
    pub http_status: Option<u16>,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryQuery {
    pub finding_id: Option<String>,
    pub rule: Option<String>,
    /// Newest first; 0 means the backend's default (1,000).
    pub limit: usize,
}

#[async_trait]
pub trait FindingStore: Send + Sync {
    /// Stores findings in one transaction. A finding whose `dedup_key` matches a stored one
    /// whose span is within `reopen_gap_ms` of its own updates that one (first id and
    /// `first_seen` kept, `last_seen` the later of both; severity, summary and evidence from
    /// whichever was seen last); else it is added.
    async fn upsert_findings(
        &self,
        findings: Vec<Finding>,
        reopen_gap_ms: i64,
    ) -> Result<Vec<Upserted>>;
    async fn list_findings(&self, query: &FindingQuery) -> Result<Vec<Finding>>;
    async fn get_finding(&self, id: &str) -> Result<Option<Finding>>;
    /// Appends to the delivery log; returns the entry's id.
    async fn record_delivery(&self, delivery: Delivery) -> Result<i64>;
    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>>;
    /// Deletes findings last seen before `before_ms` and deliveries logged before it; returns
    /// how many rows went.
    async fn prune_findings(&self, before_ms: i64) -> Result<u64>;
}

/// Refuses a finding whose span ends before it starts; every backend checks this first.
pub(crate) fn check_span(f: &Finding) -> Result<()> {
    if f.first_seen_ms > f.last_seen_ms {
        return Err(StoreError::Invalid(format!(
            "finding {} ends before it starts",
            f.dedup_key()
        )));
    }
    Ok(())
}

/// A finding upserted onto the stored one of the same condition: the latest view of the
/// condition wins, and an evaluation over older data only widens the span. Keeps the stored id.
pub(crate) fn merge_into(old: Finding, new: Finding) -> Finding {
    let newer = new.last_seen_ms >= old.last_seen_ms;
    Finding {
        id: old.id.clone(),
        first_seen_ms: old.first_seen_ms.min(new.first_seen_ms),
        last_seen_ms: old.last_seen_ms.max(new.last_seen_ms),
        ..if newer { new } else { old }
    }
}
