//! The rollup bucket file: closed rollup buckets of the analytics engine, persisted as they close
//! so that memory holds only the open ones and start-up does not replay history.
//!
//! One SQLite database, `rollups.db`, beside the event log it is derived from (each process has
//! its own `event_dir`, so it has its own rollups too). Buckets are opaque blobs encoded by
//! `clientele-analytics`, one row per (tier, bucket start), with the consumer totals and the
//! series in two columns so that a scan of consumers reads only the smaller one. Beside them:
//! the names the blobs refer to by number, and per UTC day the number of events folded into the
//! day's persisted buckets once the day is complete, which start-up compares with the event
//! log's own count to decide which days to rebuild from raw events. And the governance
//! feature store's state (`clientele_governance::persist`, opaque blobs too): one row per
//! consumer and one for the store-wide state, which holds its own per-day event counts.
//!
//! Calls are synchronous: the engine calls them from the blocking pool (the pipeline's
//! observers, the housekeeping task) or from queries that run there.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use crate::{Result, StoreError};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS buckets (
    tier INTEGER NOT NULL,
    start INTEGER NOT NULL,
    consumers BLOB NOT NULL,
    series BLOB NOT NULL,
    PRIMARY KEY (tier, start)
);
CREATE TABLE IF NOT EXISTS names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS days (
    day INTEGER PRIMARY KEY,
    events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS features (
    consumer TEXT PRIMARY KEY,
    state BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS features_meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    state BLOB NOT NULL
);
"#;

/// One persisted bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRow {
    /// 0 = minute, 1 = hour, 2 = day.
    pub tier: u8,
    pub start_ms: i64,
    pub consumers: Vec<u8>,
    pub series: Vec<u8>,
}

/// What one save writes, in one transaction.
#[derive(Debug, Clone, Default)]
pub struct BucketSave {
    /// Names with ids `first_name..`, appended to the name table.
    pub first_name: u32,
    pub names: Vec<String>,
    /// Buckets replacing rows with the same (tier, start).
    pub buckets: Vec<BucketRow>,
    /// (UTC day start, events folded) of days now complete on disk.
    pub days: Vec<(i64, u64)>,
}

/// `rollups.db`. Synchronous; cheap to share behind an `Arc`.
pub struct BucketFile {
    writer: Mutex<Connection>,
    reader: Mutex<Connection>,
}

impl std::fmt::Debug for BucketFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketFile").finish_non_exhaustive()
    }
}

impl BucketFile {
    /// Opens (creating if needed) `rollups.db` in `dir`.
    pub fn open(dir: &Path) -> Result<BucketFile> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Backend(format!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("rollups.db");
        let open_err = |e: rusqlite::Error| {
            StoreError::Backend(format!("cannot open {}: {e}", path.display()))
        };
        let writer = Connection::open(&path).map_err(open_err)?;
        // WAL + NORMAL: a commit survives a crash of the process; a power loss can drop the last
        // commits, and then the days they completed are rebuilt from raw events at start-up.
        writer
            .execute_batch(
                "PRAGMA journal_mode = WAL;
                 PRAGMA synchronous = NORMAL;
                 PRAGMA busy_timeout = 5000;",
            )
            .map_err(open_err)?;
        writer.execute_batch(SCHEMA).map_err(open_err)?;
        let reader = Connection::open(&path).map_err(open_err)?;
        reader
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(open_err)?;
        Ok(BucketFile {
            writer: Mutex::new(writer),
            reader: Mutex::new(reader),
        })
    }

    /// Writes names, buckets and completed days in one transaction.
    pub fn save(&self, save: &BucketSave) -> Result<()> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        {
            let mut name =
                tx.prepare_cached("INSERT OR REPLACE INTO names (id, name) VALUES (?1, ?2)")?;
            for (i, n) in save.names.iter().enumerate() {
                name.execute(params![i64::from(save.first_name) + i as i64, n])?;
            }
            let mut bucket = tx.prepare_cached(
                "INSERT OR REPLACE INTO buckets (tier, start, consumers, series) VALUES (?1, ?2, ?3, ?4)",
            )?;
            for b in &save.buckets {
                bucket.execute(params![b.tier, b.start_ms, b.consumers, b.series])?;
            }
            let mut day =
                tx.prepare_cached("INSERT OR REPLACE INTO days (day, events) VALUES (?1, ?2)")?;
            for (d, n) in &save.days {
                day.execute(params![d, crate::sqlite::sql_u64(*n)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// One part of one bucket: the consumer totals, or (`series`) the series rollups.
    pub fn load(&self, tier: u8, start_ms: i64, series: bool) -> Result<Option<Vec<u8>>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let sql = if series {
            "SELECT series FROM buckets WHERE tier = ?1 AND start = ?2"
        } else {
            "SELECT consumers FROM buckets WHERE tier = ?1 AND start = ?2"
        };
        let mut stmt = conn.prepare_cached(sql)?;
        Ok(stmt
            .query_row(params![tier, start_ms], |r| r.get::<_, Vec<u8>>(0))
            .optional()?)
    }

    /// Every persisted (tier, start).
    pub fn index(&self) -> Result<Vec<(u8, i64)>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt =
            conn.prepare_cached("SELECT tier, start FROM buckets ORDER BY tier, start")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, u8>(0)?, r.get::<_, i64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
    }

    /// The name table, in id order. A gap (never written) reads as an empty name.
    pub fn names(&self) -> Result<Vec<String>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT id, name FROM names ORDER BY id")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, name) = row?;
            let Ok(id) = usize::try_from(id) else {
                continue;
            };
            if id >= out.len() {
                out.resize(id + 1, String::new());
            }
            out[id] = name;
        }
        Ok(out)
    }

    /// (UTC day start, events folded) of every completed day.
    pub fn days(&self) -> Result<Vec<(i64, u64)>> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let mut stmt = conn.prepare_cached("SELECT day, events FROM days ORDER BY day")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (d, n) = row?;
            out.push((d, u64::try_from(n).unwrap_or(0)));
        }
        Ok(out)
    }

    /// Writes the governance features of the consumers given (replacing their rows) and the
    /// store-wide state, in one transaction. The consumers come in batches, each taken from
    /// `batches` only once the previous one is written, so a save holds one batch at a time.
    pub fn save_features(
        &self,
        batches: impl IntoIterator<Item = Vec<(String, Vec<u8>)>>,
        meta: &[u8],
    ) -> Result<()> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        {
            let mut row = tx.prepare_cached(
                "INSERT OR REPLACE INTO features (consumer, state) VALUES (?1, ?2)",
            )?;
            for batch in batches {
                for (consumer, state) in &batch {
                    row.execute(params![consumer, state])?;
                }
            }
            tx.execute(
                "INSERT OR REPLACE INTO features_meta (id, state) VALUES (0, ?1)",
                params![meta],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Every consumer's saved governance features and the store-wide state (`None` before
    /// the first save).
    #[allow(clippy::type_complexity)]
    pub fn load_features(&self) -> Result<(Vec<(String, Vec<u8>)>, Option<Vec<u8>>)> {
        let conn = self.reader.lock().unwrap_or_else(|e| e.into_inner());
        let meta = conn
            .query_row("SELECT state FROM features_meta WHERE id = 0", [], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .optional()?;
        let mut stmt = conn.prepare_cached("SELECT consumer, state FROM features")?;
        let rows = stmt.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?;
        Ok((rows.collect::<rusqlite::Result<Vec<_>>>()?, meta))
    }

    /// Deletes the buckets starting in `[from_ms, to_ms)` and the completed-day marks of days
    /// starting there: the day is rebuilt from raw events.
    pub fn forget(&self, from_ms: i64, to_ms: i64) -> Result<()> {
        let mut conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let tx = conn.transaction()?;
        tx.execute(
            "DELETE FROM buckets WHERE start >= ?1 AND start < ?2",
            params![from_ms, to_ms],
        )?;
        tx.execute(
            "DELETE FROM days WHERE day >= ?1 AND day < ?2",
            params![from_ms, to_ms],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Deletes buckets of `tier` starting before `before_ms` (and, for the day tier, the day
    /// marks); returns how many buckets.
    pub fn prune(&self, tier: u8, before_ms: i64) -> Result<u64> {
        let conn = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let n = conn.execute(
            "DELETE FROM buckets WHERE tier = ?1 AND start < ?2",
            params![tier, before_ms],
        )?;
        if tier == 2 {
            conn.execute("DELETE FROM days WHERE day < ?1", [before_ms])?;
        }
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_loads_forgets_and_prunes() {
        let dir = std::env::temp_dir().join(format!("clientele-buckets-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = BucketFile::open(&dir).unwrap();
        let row = |tier, start_ms| BucketRow {
            tier,
            start_ms,
            consumers: vec![tier, 1],
            series: vec![tier, 2, 3],
        };
        file.save(&BucketSave {
            first_name: 0,
            names: vec!["acme".into(), "GET".into()],
            buckets: vec![row(0, 60_000), row(1, 3_600_000), row(2, 86_400_000)],
            days: vec![(86_400_000, 7)],
        })
        .unwrap();
        file.save(&BucketSave {
            first_name: 2,
            names: vec!["/x".into()],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(file.names().unwrap(), ["acme", "GET", "/x"]);
        assert_eq!(file.load(1, 3_600_000, true).unwrap(), Some(vec![1, 2, 3]));
        assert_eq!(file.load(1, 3_600_000, false).unwrap(), Some(vec![1, 1]));
        assert_eq!(file.load(1, 0, false).unwrap(), None);
        assert_eq!(file.days().unwrap(), [(86_400_000, 7)]);
        file.forget(86_400_000, 2 * 86_400_000).unwrap();
        assert_eq!(file.index().unwrap(), [(0, 60_000), (1, 3_600_000)]);
        assert!(file.days().unwrap().is_empty());
        assert_eq!(file.prune(0, 120_000).unwrap(), 1);
        assert_eq!(file.index().unwrap(), [(1, 3_600_000)]);
        drop(file);
        // Reopened, it reads the same.
        let file = BucketFile::open(&dir).unwrap();
        assert_eq!(file.index().unwrap(), [(1, 3_600_000)]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn features_replace_their_rows_and_the_meta() {
        let dir = std::env::temp_dir().join(format!("clientele-features-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let file = BucketFile::open(&dir).unwrap();
        assert_eq!(file.load_features().unwrap(), (Vec::new(), None));
        file.save_features(
            [vec![("a".into(), vec![1])], vec![("b".into(), vec![2])]],
            &[9],
        )
        .unwrap();
        file.save_features([vec![("a".into(), vec![3])]], &[10])
            .unwrap();
        drop(file);
        let file = BucketFile::open(&dir).unwrap();
        let (mut rows, meta) = file.load_features().unwrap();
        rows.sort();
        assert_eq!(
            rows,
            [("a".to_string(), vec![3]), ("b".to_string(), vec![2])]
        );
        assert_eq!(meta, Some(vec![10]));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
