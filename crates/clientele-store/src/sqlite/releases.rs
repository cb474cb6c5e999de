//! Release markers for the embedded store: one row per (api, version).

use rusqlite::{Connection, params};

use super::is_unique_violation;
use crate::{Release, Result, StoreError};

/// Created at open, beside the main schema. `IF NOT EXISTS` makes it the migration: a store
/// from before release markers gains the empty table and nothing else changes, so the schema
/// version stays.
pub(super) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS releases (
    api TEXT NOT NULL,
    version TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    recorded_at_ms INTEGER NOT NULL,
    PRIMARY KEY (api, version)
);
CREATE INDEX IF NOT EXISTS releases_at ON releases(at_ms);
"#;

pub(super) fn insert(conn: &mut Connection, r: Release) -> Result<Release> {
    match conn.execute(
        "INSERT INTO releases (api, version, at_ms, recorded_at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![r.api, r.version, r.at_ms, r.recorded_at_ms],
    ) {
        Ok(_) => Ok(r),
        Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
            "release {} of api {} is already recorded",
            r.version, r.api
        ))),
        Err(e) => Err(e.into()),
    }
}

pub(super) fn list(conn: &Connection, api: Option<&str>) -> Result<Vec<Release>> {
    let mut stmt = conn.prepare(
        "SELECT api, version, at_ms, recorded_at_ms FROM releases
         WHERE ?1 IS NULL OR api = ?1 ORDER BY at_ms, api, version",
    )?;
    let rows = stmt.query_map([api], |r| {
        Ok(Release {
            api: r.get(0)?,
            version: r.get(1)?,
            at_ms: r.get(2)?,
            recorded_at_ms: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}
