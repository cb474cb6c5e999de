//! This node's copy of what its gateway needs from PostgreSQL, so that a node restarted while
//! the database is unreachable still serves the keys it knew (Kong's hybrid-mode data planes
//! keep a config cache for the same reason).
//!
//! Two files in the node's data directory, each replaced whole (written beside, then renamed)
//! and readable by the owner only:
//! - `postgres-copy.json`: the key secret, every key entry (hashes only, as in the database)
//!   and the consumers, rewritten after each full key reload whose content changed;
//! - `postgres-quota.json`: this node's quota counts, rewritten with each quota save whether
//!   or not the database took it, so counts made during an outage survive a restart.
//!
//! A copy is only used at start-up, when the database cannot be reached, and only if it was
//! taken from the same `host:port/database`; the first connection afterwards checks that the
//! database holds the same key secret.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use clientele_core::consumer::Consumer;
use clientele_core::keys::{KeyEntry, QuotaSeed, QuotaUsage};
use clientele_core::limits::LimitOverride;
use serde::{Deserialize, Serialize};

/// The version of the files' layout; a file of another is not read.
const FORMAT: u8 = 1;
const KEYS_FILE: &str = "postgres-copy.json";
const QUOTA_FILE: &str = "postgres-quota.json";

/// What a node read from its copy at start-up.
pub(crate) struct Loaded {
    pub(crate) key_secret: [u8; 32],
    pub(crate) saved_at_ms: i64,
    pub(crate) keys: Vec<KeyEntry>,
    pub(crate) consumers: Vec<Consumer>,
}

#[derive(Serialize, Deserialize)]
struct KeysFile {
    format: u8,
    /// `host:port/database` the copy was taken from.
    place: String,
    key_secret: String,
    saved_at_ms: i64,
    keys: Vec<CopiedKey>,
    consumers: Vec<Consumer>,
}

#[derive(Serialize, Deserialize)]
struct CopiedKey {
    key_id: String,
    hash: String,
    consumer: String,
    plan: Option<String>,
    team: Option<String>,
    use_case: Option<String>,
    expires_at_ms: Option<i64>,
    revoked: bool,
    limits: Option<LimitOverride>,
}

#[derive(Serialize, Deserialize)]
struct QuotaFile {
    format: u8,
    place: String,
    /// consumer → (day, used that day, month, used that month).
    usage: BTreeMap<String, (u32, u64, u32, u64)>,
}

/// The copy's two files and what was last written to them.
pub(crate) struct LocalCopy {
    dir: PathBuf,
    place: String,
    /// The quota counts of every consumer this node has saved, merged.
    quota: Mutex<BTreeMap<String, QuotaSeed>>,
    /// Numbers each save, so that a write that lost the race to a later one is skipped.
    next: AtomicU64,
    /// Serialises the writes (which run on the blocking pool, in any order).
    written: Arc<Mutex<Written>>,
}

/// The latest save written to each file, and the keys file's content (unchanged: not
/// rewritten).
#[derive(Default)]
struct Written {
    keys: u64,
    keys_fingerprint: Option<u64>,
    quota: u64,
}

fn unreadable(path: &Path, why: impl std::fmt::Display) -> String {
    format!("{}: {why}", path.display())
}

impl LocalCopy {
    pub(crate) fn new(dir: &Path, place: &str) -> LocalCopy {
        LocalCopy {
            dir: dir.to_path_buf(),
            place: place.to_string(),
            quota: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(1),
            written: Arc::new(Mutex::new(Written::default())),
        }
    }

    pub(crate) fn keys_path(&self) -> PathBuf {
        self.dir.join(KEYS_FILE)
    }

    /// The copy, if there is one of this database: `Ok(None)` when there is none (or it was
    /// taken from another database), an error when it exists but does not read.
    pub(crate) fn load(&self) -> Result<Option<Loaded>, String> {
        let path = self.keys_path();
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(unreadable(&path, e)),
        };
        let file: KeysFile = serde_json::from_slice(&text).map_err(|e| unreadable(&path, e))?;
        if file.format != FORMAT || file.place != self.place {
            return Ok(None);
        }
        let key_secret = parse_hash(&file.key_secret)
            .ok_or_else(|| unreadable(&path, "the key secret is not 64 hex digits"))?;
        let mut keys = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            let hash = parse_hash(&k.hash)
                .ok_or_else(|| unreadable(&path, format!("key {}: a corrupt hash", k.key_id)))?;
            keys.push(KeyEntry {
                key_id: k.key_id.into(),
                hash,
                consumer: k.consumer.into(),
                plan: k.plan.map(Into::into),
                team: k.team.map(Into::into),
                use_case: k.use_case.map(Into::into),
                expires_at_ms: k.expires_at_ms,
                revoked: k.revoked,
                limits: k.limits.map(Arc::new),
                slot: None,
            });
        }
        // The quota file is a separate, smaller write; a missing or damaged one costs only
        // the counts since the database last took them.
        *self.quota.lock().unwrap_or_else(|e| e.into_inner()) = self.load_quota();
        Ok(Some(Loaded {
            key_secret,
            saved_at_ms: file.saved_at_ms,
            keys,
            consumers: file.consumers,
        }))
    }

    fn load_quota(&self) -> BTreeMap<String, QuotaSeed> {
        let path = self.dir.join(QUOTA_FILE);
        let Ok(text) = std::fs::read(&path) else {
            return BTreeMap::new();
        };
        match serde_json::from_slice::<QuotaFile>(&text) {
            Ok(f) if f.format == FORMAT && f.place == self.place => f
                .usage
                .into_iter()
                .map(|(c, (day, day_used, month, month_used))| {
                    (
                        c,
                        QuotaSeed {
                            day,
                            day_used,
                            month,
                            month_used,
                        },
                    )
                })
                .collect(),
            Ok(_) => BTreeMap::new(),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring a damaged quota copy");
                BTreeMap::new()
            }
        }
    }

    /// Replaces the keys file, on the blocking pool (never the caller's thread), unless its
    /// content is what was last written.
    pub(crate) fn save_keys(&self, secret: &[u8; 32], keys: &[KeyEntry], consumers: &[Consumer]) {
        let file = KeysFile {
            format: FORMAT,
            place: self.place.clone(),
            key_secret: hex::encode(secret),
            saved_at_ms: 0,
            keys: keys
                .iter()
                .map(|k| CopiedKey {
                    key_id: k.key_id.to_string(),
                    hash: hex::encode(k.hash),
                    consumer: k.consumer.to_string(),
                    plan: k.plan.as_deref().map(str::to_string),
                    team: k.team.as_deref().map(str::to_string),
                    use_case: k.use_case.as_deref().map(str::to_string),
                    expires_at_ms: k.expires_at_ms,
                    revoked: k.revoked,
                    limits: k.limits.as_deref().cloned(),
                })
                .collect(),
            consumers: consumers.to_vec(),
        };
        // The content's fingerprint, taken before the time is stamped in.
        let Ok(unstamped) = serde_json::to_vec(&file) else {
            return;
        };
        let fingerprint = fingerprint(&unstamped);
        let file = KeysFile {
            saved_at_ms: clientele_core::time::now_ms(),
            ..file
        };
        let path = self.keys_path();
        let written = self.written.clone();
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        spawn_write(move || {
            let mut last = written.lock().unwrap_or_else(|e| e.into_inner());
            if last.keys > seq || last.keys_fingerprint == Some(fingerprint) {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            replace(&path, &bytes)?;
            last.keys = seq;
            last.keys_fingerprint = Some(fingerprint);
            Ok(())
        });
    }

    /// Merges `usage` into the counts kept and replaces the quota file with them.
    pub(crate) fn save_quota(&self, usage: &[QuotaUsage]) {
        let (seq, file) = {
            let mut quota = self.quota.lock().unwrap_or_else(|e| e.into_inner());
            for u in usage {
                quota.insert(u.consumer.clone(), u.seed);
            }
            // Numbered under the lock that took the snapshot: a higher number is newer.
            let seq = self.next.fetch_add(1, Ordering::Relaxed);
            let file = QuotaFile {
                format: FORMAT,
                place: self.place.clone(),
                usage: quota
                    .iter()
                    .map(|(c, s)| (c.clone(), (s.day, s.day_used, s.month, s.month_used)))
                    .collect(),
            };
            (seq, file)
        };
        let path = self.dir.join(QUOTA_FILE);
        let written = self.written.clone();
        spawn_write(move || {
            let mut last = written.lock().unwrap_or_else(|e| e.into_inner());
            if last.quota > seq {
                return Ok(());
            }
            let bytes = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
            replace(&path, &bytes)?;
            last.quota = seq;
            Ok(())
        });
    }

    /// `from_db` with the counts of this copy merged in: per consumer, the later period and,
    /// within one, the higher count (counts made here while the database was away).
    pub(crate) fn merge_quota(&self, from_db: Vec<QuotaUsage>) -> Vec<QuotaUsage> {
        let mut all: BTreeMap<String, QuotaSeed> =
            self.quota.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for u in from_db {
            let seed = match all.remove(&u.consumer) {
                Some(mine) => newer(mine, u.seed),
                None => u.seed,
            };
            all.insert(u.consumer, seed);
        }
        all.into_iter()
            .map(|(consumer, seed)| QuotaUsage { consumer, seed })
            .collect()
    }

    /// The quota counts of this copy alone, for a start without the database.
    pub(crate) fn quota(&self) -> Vec<QuotaUsage> {
        self.merge_quota(Vec::new())
    }
}

/// Field by field: the later day (month) and, for the same one, the higher count.
fn newer(a: QuotaSeed, b: QuotaSeed) -> QuotaSeed {
    let (day, day_used) = match a.day.cmp(&b.day) {
        std::cmp::Ordering::Greater => (a.day, a.day_used),
        std::cmp::Ordering::Less => (b.day, b.day_used),
        std::cmp::Ordering::Equal => (a.day, a.day_used.max(b.day_used)),
    };
    let (month, month_used) = match a.month.cmp(&b.month) {
        std::cmp::Ordering::Greater => (a.month, a.month_used),
        std::cmp::Ordering::Less => (b.month, b.month_used),
        std::cmp::Ordering::Equal => (a.month, a.month_used.max(b.month_used)),
    };
    QuotaSeed {
        day,
        day_used,
        month,
        month_used,
    }
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// FNV-1a: enough to tell one content from the next, not a digest.
fn fingerprint(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Runs a file write on the blocking pool; a failure is logged, never raised: the copy is a
/// fallback, and the database stays the truth.
fn spawn_write(write: impl FnOnce() -> std::io::Result<()> + Send + 'static) {
    let run = move || {
        if let Err(e) = write() {
            tracing::warn!(error = %e, "cannot write this node's copy of the control plane");
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(h) => {
            h.spawn_blocking(run);
        }
        Err(_) => run(),
    }
}

/// Writes `bytes` beside `path`, owner-only (the file holds the key secret), syncs it, and
/// renames it over `path`, so a reader sees the old file or the new one, never a part.
fn replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut f = options.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn entry(id: &str, consumer: &str) -> KeyEntry {
        KeyEntry {
            key_id: id.into(),
            hash: [7; 32],
            consumer: consumer.into(),
            plan: Some("pro".into()),
            team: None,
            use_case: None,
            expires_at_ms: Some(5),
            revoked: false,
            limits: None,
            slot: None,
        }
    }

    #[test]
    fn a_copy_reads_back_only_for_its_own_database_and_quotas_merge() {
        let dir = std::env::temp_dir().join(format!(
            "clientele-pg-copy-{}",
            clientele_core::event::random_id128()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = LocalCopy::new(&dir, "db:5432/a");
        assert!(copy.load().unwrap().is_none(), "no copy yet");
        copy.save_keys(&[3; 32], &[entry("k1", "acme"), entry("k2", "globex")], &[]);
        copy.save_quota(&[QuotaUsage {
            consumer: "acme".into(),
            seed: QuotaSeed {
                day: 10,
                day_used: 40,
                month: 2,
                month_used: 400,
            },
        }]);
        let again = LocalCopy::new(&dir, "db:5432/a");
        let loaded = again.load().unwrap().unwrap();
        assert_eq!(loaded.key_secret, [3; 32]);
        assert_eq!(
            loaded.keys,
            vec![entry("k1", "acme"), entry("k2", "globex")]
        );
        assert!(loaded.saved_at_ms > 0);
        // The database's count of an older day loses; of the same month, the higher wins.
        let merged = again.merge_quota(vec![QuotaUsage {
            consumer: "acme".into(),
            seed: QuotaSeed {
                day: 9,
                day_used: 90,
                month: 2,
                month_used: 500,
            },
        }]);
        assert_eq!(
            merged[0].seed,
            QuotaSeed {
                day: 10,
                day_used: 40,
                month: 2,
                month_used: 500
            }
        );
        // Owner-only: the file holds the key secret.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(again.keys_path())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // Another database's node does not take it.
        assert!(LocalCopy::new(&dir, "db:5432/b").load().unwrap().is_none());
        // A damaged copy is an error that names the file, not a silent empty index.
        std::fs::write(again.keys_path(), b"{\"format\":1,").unwrap();
        let err = again.load().err().unwrap();
        assert!(err.contains("postgres-copy.json"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
