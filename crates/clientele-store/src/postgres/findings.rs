//! [`FindingStore`] on PostgreSQL: the same rules as the embedded store, shared by every node.

use async_trait::async_trait;
use clientele_core::finding::{Finding, FindingKind, Severity};
use tokio_postgres::Row;

use super::{FINDINGS_LOCK, PostgresStore, col};
use crate::findings::{Change, Delivery, DeliveryQuery, FindingQuery, FindingStore, Upserted};
use crate::{Result, StoreError};

const DEFAULT_LIMIT: usize = 1000;

const COLUMNS: &str =
    "id, kind, consumer, api, route, severity, first_seen, last_seen, summary, evidence";

fn finding_from_row(r: &Row) -> Result<Finding> {
    let kind: String = col(r, 1)?;
    let severity: String = col(r, 5)?;
    let bad =
        |what: &str, v: &str| StoreError::Backend(format!("unknown {what} {v:?} in findings"));
    Ok(Finding {
        id: col(r, 0)?,
        kind: FindingKind::parse(&kind).ok_or_else(|| bad("kind", &kind))?,
        consumer: col(r, 2)?,
        api: col(r, 3)?,
        route: col(r, 4)?,
        severity: Severity::parse(&severity).ok_or_else(|| bad("severity", &severity))?,
        first_seen_ms: col(r, 6)?,
        last_seen_ms: col(r, 7)?,
        summary: col(r, 8)?,
        evidence: col(r, 9)?,
    })
}

fn limit_of(limit: usize) -> i64 {
    let limit = if limit == 0 { DEFAULT_LIMIT } else { limit };
    i64::try_from(limit).unwrap_or(i64::MAX)
}

#[async_trait]
impl FindingStore for PostgresStore {
    async fn upsert_findings(
        &self,
        findings: Vec<Finding>,
        reopen_gap_ms: i64,
    ) -> Result<Vec<Upserted>> {
        let gap = reopen_gap_ms.max(0);
        self.call("upsert_findings", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            // Nodes that evaluate at the same time take turns, so a condition stays one row.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&FINDINGS_LOCK])
                .await
                .map_err(|e| self.db_err(e))?;
            let find = tx
                .prepare(&format!(
                    "SELECT {COLUMNS} FROM findings WHERE dedup_key = $1 AND last_seen >= $2 AND first_seen <= $3 ORDER BY last_seen DESC LIMIT 1"
                ))
                .await
                .map_err(|e| self.db_err(e))?;
            let mut out = Vec::with_capacity(findings.len());
            for f in findings {
                crate::findings::check_span(&f)?;
                let key = f.dedup_key();
                let existing = tx
                    .query_opt(
                        &find,
                        &[
                            &key,
                            &(f.first_seen_ms - gap),
                            &(f.last_seen_ms + gap),
                        ],
                    )
                    .await
                    .map_err(|e| self.db_err(e))?;
                match existing.as_ref().map(finding_from_row).transpose()? {
                    None => {
                        tx.execute(
                            "INSERT INTO findings (id, dedup_key, kind, consumer, api, route, severity, first_seen, last_seen, summary, evidence) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                            &[
                                &f.id,
                                &key,
                                &f.kind.as_str(),
                                &f.consumer,
                                &f.api,
                                &f.route,
                                &f.severity.as_str(),
                                &f.first_seen_ms,
                                &f.last_seen_ms,
                                &f.summary,
                                &f.evidence,
                            ],
                        )
                        .await
                        .map_err(|e| self.db_err(e))?;
                        out.push(Upserted {
                            finding: f,
                            change: Change::New,
                        });
                    }
                    Some(old) => {
                        let previous = old.severity;
                        let merged = crate::findings::merge_into(old, f);
                        tx.execute(
                            "UPDATE findings SET severity = $2, first_seen = $3, last_seen = $4, summary = $5, evidence = $6 WHERE id = $1",
                            &[
                                &merged.id,
                                &merged.severity.as_str(),
                                &merged.first_seen_ms,
                                &merged.last_seen_ms,
                                &merged.summary,
                                &merged.evidence,
                            ],
                        )
                        .await
                        .map_err(|e| self.db_err(e))?;
                        out.push(Upserted {
                            finding: merged,
                            change: Change::Updated { previous },
                        });
                    }
                }
            }
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(out)
        })
        .await
    }

    async fn list_findings(&self, query: &FindingQuery) -> Result<Vec<Finding>> {
        self.call("list_findings", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    &format!(
                        "SELECT {COLUMNS} FROM findings
                         WHERE ($1::BIGINT IS NULL OR last_seen >= $1)
                           AND ($2::BIGINT IS NULL OR first_seen <= $2)
                           AND ($3::TEXT IS NULL OR kind = $3)
                           AND ($4::TEXT IS NULL OR consumer = $4)
                           AND ($5::TEXT IS NULL OR api = $5)
                         ORDER BY last_seen DESC, id LIMIT $6"
                    ),
                    &[
                        &query.from_ms,
                        &query.to_ms,
                        &query.kind.map(FindingKind::as_str),
                        &query.consumer,
                        &query.api,
                        &limit_of(query.limit),
                    ],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter().map(finding_from_row).collect()
        })
        .await
    }

    async fn get_finding(&self, id: &str) -> Result<Option<Finding>> {
        self.call("get_finding", async {
            let client = self.client().await?;
            let row = client
                .query_opt(
                    &format!("SELECT {COLUMNS} FROM findings WHERE id = $1"),
                    &[&id],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            row.as_ref().map(finding_from_row).transpose()
        })
        .await
    }

    async fn record_delivery(&self, d: Delivery) -> Result<i64> {
        self.call("record_delivery", async {
            let client = self.client().await?;
            let row = client
                .query_one(
                    "INSERT INTO alert_deliveries (ts, rule, finding_id, kind, consumer, severity, url, attempt, outcome, http_status, error) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
                    &[
                        &d.ts_ms,
                        &d.rule,
                        &d.finding_id,
                        &d.kind,
                        &d.consumer,
                        &d.severity,
                        &d.url,
                        &i64::from(d.attempt),
                        &d.outcome,
                        &d.http_status.map(i32::from),
                        &d.error,
                    ],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            col(&row, 0)
        })
        .await
    }

    async fn list_deliveries(&self, query: &DeliveryQuery) -> Result<Vec<Delivery>> {
        self.call("list_deliveries", async {
            let client = self.client().await?;
            let rows = client
                .query(
                    "SELECT id, ts, rule, finding_id, kind, consumer, severity, url, attempt, outcome, http_status, error
                     FROM alert_deliveries
                     WHERE ($1::TEXT IS NULL OR finding_id = $1) AND ($2::TEXT IS NULL OR rule = $2)
                     ORDER BY id DESC LIMIT $3",
                    &[&query.finding_id, &query.rule, &limit_of(query.limit)],
                )
                .await
                .map_err(|e| self.db_err(e))?;
            rows.iter()
                .map(|r| {
                    Ok(Delivery {
                        id: col(r, 0)?,
                        ts_ms: col(r, 1)?,
                        rule: col(r, 2)?,
                        finding_id: col(r, 3)?,
                        kind: col(r, 4)?,
                        consumer: col(r, 5)?,
                        severity: col(r, 6)?,
                        url: col(r, 7)?,
                        attempt: u32::try_from(col::<i64>(r, 8)?).unwrap_or(u32::MAX),
                        outcome: col(r, 9)?,
                        http_status: col::<Option<i32>>(r, 10)?
                            .and_then(|s| u16::try_from(s).ok()),
                        error: col(r, 11)?,
                    })
                })
                .collect()
        })
        .await
    }

    async fn prune_findings(&self, before_ms: i64) -> Result<u64> {
        self.call("prune_findings", async {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(|e| self.db_err(e))?;
            let f = tx
                .execute("DELETE FROM findings WHERE last_seen < $1", &[&before_ms])
                .await
                .map_err(|e| self.db_err(e))?;
            let d = tx
                .execute("DELETE FROM alert_deliveries WHERE ts < $1", &[&before_ms])
                .await
                .map_err(|e| self.db_err(e))?;
            tx.commit().await.map_err(|e| self.db_err(e))?;
            Ok(f + d)
        })
        .await
    }
}
