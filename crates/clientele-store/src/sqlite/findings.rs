//! [`FindingStore`] for the embedded store.

use async_trait::async_trait;
use clientele_core::finding::{Finding, FindingKind, Severity};
use rusqlite::{OptionalExtension, params};

use super::SqliteStore;
use crate::Result;
use crate::findings::{Change, Delivery, DeliveryQuery, FindingQuery, FindingStore, Upserted};

/// Created at open, beside the main schema; `IF NOT EXISTS` makes it safe on older stores.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS findings (
    id TEXT PRIMARY KEY,
    dedup_key TEXT NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT,
    api TEXT,
    route TEXT,
    severity TEXT NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    summary TEXT NOT NULL,
    evidence TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS findings_dedup ON findings(dedup_key, last_seen);
CREATE INDEX IF NOT EXISTS findings_last_seen ON findings(last_seen);
CREATE TABLE IF NOT EXISTS alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    rule TEXT NOT NULL,
    finding_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    consumer TEXT,
    severity TEXT NOT NULL,
    url TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    error TEXT
);
CREATE INDEX IF NOT EXISTS alert_deliveries_finding ON alert_deliveries(finding_id);
"#;

const DEFAULT_LIMIT: usize = 1000;

fn finding_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Finding> {
    let kind: String = r.get(1)?;
    let severity: String = r.get(5)?;
    let evidence: String = r.get(9)?;
    let bad = |what: &str, v: &str| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("unknown {what} {v:?} in findings").into(),
        )
    };
    Ok(Finding {
        id: r.get(0)?,
        kind: FindingKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        consumer: r.get(2)?,
        api: r.get(3)?,
        route: r.get(4)?,
        severity: Severity::parse(&severity).ok_or_else(|| bad("severity", &severity))?,
        first_seen_ms: r.get(6)?,
        last_seen_ms: r.get(7)?,
        summary: r.get(8)?,
        evidence: serde_json::from_str(&evidence).unwrap_or(serde_json::Value::Null),
    })
}

const COLUMNS: &str =
    "id, kind, consumer, api, route, severity, first_seen, last_seen, summary, evidence";

#[async_trait]
impl FindingStore for SqliteStore {
    async fn upsert_findings(
        &self,
        findings: Vec<Finding>,
        reopen_gap_ms: i64,
    ) -> Result<Vec<Upserted>> {
        let gap = reopen_gap_ms.max(0);
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let mut out = Vec::with_capacity(findings.len());
            {
                let mut find = tx.prepare_cached(&format!(
                    "SELECT {COLUMNS} FROM findings WHERE dedup_key = ?1 AND last_seen >= ?2 AND first_seen <= ?3 ORDER BY last_seen DESC LIMIT 1"
                ))?;
                let mut insert = tx.prepare_cached(
                    "INSERT INTO findings (id, dedup_key, kind, consumer, api, route, severity, first_seen, last_seen, summary, evidence) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                )?;
                let mut update = tx.prepare_cached(
                    "UPDATE findings SET severity = ?2, first_seen = ?3, last_seen = ?4, summary = ?5, evidence = ?6 WHERE id = ?1",
                )?;
                for f in findings {
                    crate::findings::check_span(&f)?;
                    let key = f.dedup_key();
                    let existing = find
                        .query_row(
                            params![key, f.first_seen_ms - gap, f.last_seen_ms + gap],
                            finding_from_row,
                        )
                        .optional()?;
                    match existing {
                        None => {
                            insert.execute(params![
                                f.id,
                                key,
                                f.kind.as_str(),
                                f.consumer,
                                f.api,
                                f.route,
                                f.severity.as_str(),
                                f.first_seen_ms,
                                f.last_seen_ms,
                                f.summary,
                                f.evidence.to_string(),
                            ])?;
                            out.push(Upserted {
                                finding: f,
                                change: Change::New,
                            });
                        }
                        Some(old) => {
                            let previous = old.severity;
                            let merged = crate::findings::merge_into(old, f);
                            update.execute(params![
                                merged.id,
                                merged.severity.as_str(),
                                merged.first_seen_ms,
                                merged.last_seen_ms,
                                merged.summary,
                                merged.evidence.to_string(),
                            ])?;
                            out.push(Upserted {
                                finding: merged,
                                change: Change::Updated { previous },
                            });
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(out)
        })
        .await
    }

    async fn list_findings(&self, query: &FindingQuery) -> Result<Vec<Finding>> {
        let q = query.clone();
        self.read(move |conn| {
            let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {COLUMNS} FROM findings
                 WHERE (?1 IS NULL OR last_seen >= ?1) AND (?2 IS NULL OR first_seen <= ?2)
                   AND (?3 IS NULL OR kind = ?3) AND (?4 IS NULL OR consumer = ?4)
                   AND (?5 IS NULL OR api = ?5)
                 ORDER BY last_seen DESC, id LIMIT ?6"
            ))?;
            let rows = stmt.query_map(
                params![
                    q.from_ms,
                    q.to_ms,
                    q.kind.map(FindingKind::as_str),
                    q.consumer,
                    q.api,
                    limit as i64
                ],
                finding_from_row,
            )?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn get_finding(&self, id: &str) -> Result<Option<Finding>> {
        let id = id.to_string();
        self.read(move |conn| {
            Ok(conn
                .query_row(
                    &format!("SELECT {COLUMNS} FROM findings WHERE id = ?1"),
                    [id],
                    finding_from_row,
                )
                .optional()?)
        })
        .await
    }

    async fn record_delivery(&self, d: Delivery) -> Result<i64> {
        self.write(move |conn| {
            conn.execute(
                "INSERT INTO alert_deliveries (ts, rule, finding_id, kind, consumer, severity, url, attempt, outcome, http_status, error) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    d.ts_ms,
                    d.rule,
                    d.finding_id,
                    d.kind,
                    d.consumer,
                    d.severity,
                    d.url,
                    d.attempt,
                    d.outcome,
                    d.http_status,
                    d.error
                ],
            )?;
            Ok(conn.last_insert_rowid())
        })
        .await
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        let q = query.clone();
        self.read(move |conn| {
            let limit = if q.limit == 0 { DEFAULT_LIMIT } else { q.limit };
            let mut stmt = conn.prepare_cached(
                "SELECT id, ts, rule, finding_id, kind, consumer, severity, url, attempt, outcome, http_status, error
                 FROM alert_deliveries
                 WHERE (?1 IS NULL OR finding_id = ?1) AND (?2 IS NULL OR rule = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![q.finding_id, q.rule, limit as i64], |r| {
                Ok(Delivery {
                    id: r.get(0)?,
                    ts_ms: r.get(1)?,
                    rule: r.get(2)?,
                    finding_id: r.get(3)?,
                    kind: r.get(4)?,
                    consumer: r.get(5)?,
                    severity: r.get(6)?,
                    url: r.get(7)?,
                    attempt: r.get(8)?,
                    outcome: r.get(9)?,
                    http_status: r.get(10)?,
                    error: r.get(11)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn prune_findings(&self, before_ms: i64) -> Result<u64> {
        self.write(move |conn| {
            let tx = conn.transaction()?;
            let f = tx.execute("DELETE FROM findings WHERE last_seen < ?1", [before_ms])?;
            let d = tx.execute("DELETE FROM alert_deliveries WHERE ts < ?1", [before_ms])?;
            tx.commit()?;
            Ok((f + d) as u64)
        })
        .await
    }
}
