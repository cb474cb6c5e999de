//! API keys: generation, hashing at rest, and the in-memory index the gateway reads.
//!
//! Keys are high-entropy random strings, so a keyed hash (HMAC-SHA256 under a per-store secret)
//! is enough to store them: there is nothing to brute-force, and a stolen database alone does
//! not let anyone test guesses without the secret. The plaintext exists only in the answer that
//! creates the key.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::PlanConfig;
use crate::limits::{LimitOverride, LimitPolicy, LimitSlot, Periods};

/// Generated keys look like `ck_` + 40 base62 characters (about 238 bits).
pub const KEY_PREFIX: &str = "ck_";
const KEY_RANDOM_LEN: usize = 40;
/// How many leading characters of a key are kept visible.
pub const VISIBLE_PREFIX_LEN: usize = 11;
/// Imported keys shorter than this are refused: they would be guessable.
pub const MIN_IMPORTED_KEY_LEN: usize = 16;
pub const MAX_KEY_LEN: usize = 256;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Fills `buf` from the operating system's random source.
pub fn fill_random(buf: &mut [u8]) {
    // The OS random source failing means the machine cannot make secrets at all; continuing
    // with predictable keys would be worse than stopping.
    #[allow(clippy::expect_used)]
    getrandom::fill(buf).expect("the operating system's random source failed");
}

/// A random base62 string of `len` characters, without modulo bias.
pub fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        fill_random(&mut buf);
        for &b in &buf {
            // 248 = 62 * 4: values at or above it would favour the first characters.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// A new key and its id.
pub fn generate_key() -> String {
    format!("{KEY_PREFIX}{}", random_base62(KEY_RANDOM_LEN))
}

pub fn generate_key_id() -> String {
    format!("key_{}", random_base62(16))
}

/// The visible part of a key: enough to recognise it, never enough to use it.
pub fn visible_prefix(key: &str) -> String {
    let n = if key.starts_with(KEY_PREFIX) {
        VISIBLE_PREFIX_LEN
    } else {
        // Imported keys have no known shape; show a little less of them.
        6.min(key.len() / 3)
    };
    key.chars().take(n).collect()
}

/// Checks a key presented by a client or given for import: printable ASCII without spaces.
pub fn key_syntax_ok(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY_LEN && key.bytes().all(|b| b.is_ascii_graphic())
}

/// Hashes keys under the store's secret.
#[derive(Clone)]
pub struct KeyHasher {
    secret: [u8; 32],
}

impl std::fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KeyHasher(..)")
    }
}

impl KeyHasher {
    pub fn new(secret: [u8; 32]) -> KeyHasher {
        KeyHasher { secret }
    }

    pub fn hash(&self, key: &str) -> [u8; 32] {
        // HMAC accepts keys of any length, so construction cannot fail.
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.secret)
            .unwrap_or_else(|_| unreachable!("hmac takes keys of any length"));
        mac.update(key.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Compares two secrets in constant time. Both sides are hashed first so that neither the
/// content nor the length of the expected value leaks through timing.
pub fn secret_eq(given: &str, expected: &str) -> bool {
    let a = Sha256::digest(given.as_bytes());
    let b = Sha256::digest(expected.as_bytes());
    a.ct_eq(&b).into()
}

/// What the gateway needs to know about the consumer behind a key.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key_id: Arc<str>,
    pub hash: [u8; 32],
    pub consumer: Arc<str>,
    pub plan: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub use_case: Option<Arc<str>>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
    /// Limits set on the consumer itself, on top of its plan's.
    pub limits: Option<Arc<LimitOverride>>,
    /// The consumer's limit state, shared by all its keys; attached by [`KeyIndex`] when the
    /// entry is loaded. `None` = unlimited.
    pub slot: Option<Arc<LimitSlot>>,
}

/// Entries are equal when what was loaded is equal; the attached limit state is the index's
/// business and takes no part.
impl PartialEq for KeyEntry {
    fn eq(&self, o: &Self) -> bool {
        self.key_id == o.key_id
            && self.hash == o.hash
            && self.consumer == o.consumer
            && self.plan == o.plan
            && self.team == o.team
            && self.use_case == o.use_case
            && self.expires_at_ms == o.expires_at_ms
            && self.revoked == o.revoked
            && self.limits == o.limits
    }
}

/// The result of looking a presented key up.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Valid(Arc<KeyEntry>),
    Revoked(Arc<KeyEntry>),
    Expired(Arc<KeyEntry>),
    Unknown,
}

/// Every known key by hash, shared between the gateway (reader) and the control plane (writer).
///
/// Readers take the lock only to clone an `Arc` out; writers swap whole maps. No lock is held
/// across an await, and a lookup costs one HMAC plus one hash-map probe.
///
/// The index also owns each consumer's [`LimitSlot`]: a reload keeps a consumer's slot (and so
/// its rate and quota state) when its policy is unchanged, and carries its quota usage over
/// when the policy changed.
#[derive(Debug)]
pub struct KeyIndex {
    hasher: KeyHasher,
    map: RwLock<Arc<HashMap<[u8; 32], Arc<KeyEntry>>>>,
    plans: BTreeMap<String, PlanConfig>,
    /// Quota usage restored from storage for consumers that have no slot yet, by consumer:
    /// (day period, used, month period, used). Taken when the consumer's slot is made.
    seeds: Mutex<HashMap<String, QuotaSeed>>,
    /// Which consumers [`KeyIndex::replace_consumer`] replaced, in order, for a full reload
    /// that read the store before them (see [`KeyIndex::replace_all_since`]). Always the
    /// innermost lock: taken alone or inside `map`'s, never the other way.
    replaced: Mutex<Replaced>,
}

/// At most this many replacements are remembered between two full reloads; a full reload
/// older than what is remembered is not applied (the next one is).
const REPLACED_KEPT: usize = 100_000;

#[derive(Debug, Default)]
struct Replaced {
    /// Replacements so far.
    generation: u64,
    /// The newest replacement no longer in `log` (dropped past the cap, or covered by a full
    /// reload that landed).
    forgotten: u64,
    /// `(generation, consumer)` of the replacements after `forgotten`, oldest first.
    log: std::collections::VecDeque<(u64, Arc<str>)>,
}

impl Replaced {
    /// The consumers replaced after `since`; `None` when some of them are forgotten.
    fn since(&self, since: u64) -> Option<std::collections::HashSet<Arc<str>>> {
        (since >= self.forgotten).then(|| {
            self.log
                .iter()
                .filter(|(g, _)| *g > since)
                .map(|(_, c)| c.clone())
                .collect()
        })
    }

    /// Forgets the replacements up to `generation`.
    fn forget(&mut self, generation: u64) {
        while self.log.front().is_some_and(|(g, _)| *g <= generation) {
            self.log.pop_front();
        }
        self.forgotten = self.forgotten.max(generation);
    }
}

/// Persisted quota usage of one consumer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QuotaSeed {
    pub day: u32,
    pub day_used: u64,
    pub month: u32,
    pub month_used: u64,
}

/// One consumer's quota usage, as persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub consumer: String,
    pub seed: QuotaSeed,
}

impl KeyIndex {
    pub fn new(hasher: KeyHasher) -> KeyIndex {
        KeyIndex::with_plans(hasher, BTreeMap::new())
    }

    /// An index whose consumers are held to `plans`.
    pub fn with_plans(hasher: KeyHasher, plans: BTreeMap<String, PlanConfig>) -> KeyIndex {
        KeyIndex {
            hasher,
            map: RwLock::new(Arc::new(HashMap::new())),
            plans,
            seeds: Mutex::new(HashMap::new()),
            replaced: Mutex::new(Replaced::default()),
        }
    }

    /// How many times [`KeyIndex::replace_consumer`] has run: take it before reading the store
    /// for [`KeyIndex::replace_all_since`].
    pub fn generation(&self) -> u64 {
        self.replaced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .generation
    }

    /// Restores persisted quota usage (at start-up, before traffic).
    pub fn restore_usage(&self, usage: Vec<QuotaUsage>) {
        let slots = self.slots();
        let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        for u in usage {
            match slots.get(u.consumer.as_str()) {
                Some(slot) => apply_seed(slot, &u.seed),
                None => {
                    seeds.insert(u.consumer, u.seed);
                }
            }
        }
    }

    /// The quota usage of every consumer whose counts changed since the last call, for
    /// persisting it. Walks the index without building anything but the answer, so it stays
    /// cheap to call every second with a million consumers.
    pub fn changed_usage(&self, now_ms: i64) -> Vec<QuotaUsage> {
        let p = Periods::at(now_ms);
        let map = self.map.read().unwrap_or_else(|e| e.into_inner()).clone();
        let mut out = Vec::new();
        for e in map.values() {
            let Some(s) = &e.slot else { continue };
            // All keys of a consumer share the slot: the first one seen clears the flag.
            if s.take_dirty() {
                out.push(QuotaUsage {
                    consumer: e.consumer.to_string(),
                    seed: QuotaSeed {
                        day: p.day,
                        day_used: s.day.used(p.day),
                        month: p.month,
                        month_used: s.month.used(p.month),
                    },
                });
            }
        }
        out
    }

    /// Each consumer's slot, once.
    pub fn slots(&self) -> HashMap<Arc<str>, Arc<LimitSlot>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner()).clone();
        map.values()
            .filter_map(|e| e.slot.clone().map(|s| (e.consumer.clone(), s)))
            .collect()
    }

    /// The config's plans, by name.
    pub fn plans(&self) -> &BTreeMap<String, PlanConfig> {
        &self.plans
    }

    pub fn hasher(&self) -> &KeyHasher {
        &self.hasher
    }

    pub fn lookup(&self, key: &str, now_ms: i64) -> Lookup {
        let hash = self.hasher.hash(key);
        let entry = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            map.get(&hash).cloned()
        };
        let Some(entry) = entry else {
            return Lookup::Unknown;
        };
        // The map probe compared hashes with ordinary equality; confirm in constant time so that
        // no comparison involving key material is data-dependent.
        if !bool::from(entry.hash.ct_eq(&hash)) {
            return Lookup::Unknown;
        }
        if entry.revoked {
            Lookup::Revoked(entry)
        } else if entry.expires_at_ms.is_some_and(|t| t <= now_ms) {
            Lookup::Expired(entry)
        } else {
            Lookup::Valid(entry)
        }
    }

    /// Replaces every entry at once, as after a reload from the store (at start-up, before
    /// any other writer).
    pub fn replace_all(&self, entries: Vec<KeyEntry>) {
        let since = self.generation();
        self.replace_all_since(entries, since);
    }

    /// Replaces every entry with `entries`, which were read from the store after
    /// [`KeyIndex::generation`] answered `since`. A consumer replaced since then keeps its
    /// current entries: its own reload read the store after its change, perhaps after this
    /// read, so without this a periodic full reload landing last would hide a key made a
    /// moment before, until the next reload. Returns false (nothing changed) when more
    /// replacements happened meanwhile than are remembered; the caller reloads again.
    ///
    /// The new map is built outside the write lock, so the gateway's lookups wait only for the
    /// swap; a replacement racing the build makes it patch again (a few times at most).
    pub fn replace_all_since(&self, entries: Vec<KeyEntry>, since: u64) -> bool {
        self.warn_undefined_plans(&entries);
        let old = self.slots();
        let mut fresh: HashMap<Arc<str>, Option<Arc<LimitSlot>>> = HashMap::new();
        let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
        let mut map: HashMap<_, _> = entries
            .into_iter()
            .map(|mut e| {
                let slot = fresh
                    .entry(e.consumer.clone())
                    .or_insert_with(|| self.slot_for(&e, old.get(&e.consumer), &mut seeds));
                e.slot = slot.clone();
                (e.hash, Arc::new(e))
            })
            .collect();
        drop(seeds);
        // Patch outside the lock while replacements keep racing the build (a few rounds at
        // most), then make what is left of the patch, usually nothing, under it.
        let mut patched = since;
        for _ in 0..3 {
            let (snapshot, touched, generation) = {
                let current = self.map.read().unwrap_or_else(|e| e.into_inner());
                let replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
                let Some(touched) = replaced.since(patched) else {
                    return false;
                };
                (current.clone(), touched, replaced.generation)
            };
            if touched.is_empty() {
                break;
            }
            keep_current(&mut map, &snapshot, &touched);
            patched = generation;
        }
        let mut current = self.map.write().unwrap_or_else(|e| e.into_inner());
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        let Some(touched) = replaced.since(patched) else {
            return false;
        };
        if !touched.is_empty() {
            keep_current(&mut map, &current, &touched);
        }
        *current = Arc::new(map);
        let generation = replaced.generation;
        replaced.forget(generation);
        true
    }

    /// Replaces one consumer's entries, as after a change made through the admin API to that
    /// consumer or one of its keys. `entries` are all its keys as the store holds them now.
    ///
    /// Costs the consumer's keys, not the index's size: creating ten thousand consumers one
    /// request at a time must not reload every key each time. This relies on the store never
    /// removing a key (revoking and deleting a consumer mark its keys revoked), so the new
    /// entries cover every hash the index holds for the consumer, and its current slot is found
    /// through them.
    pub fn replace_consumer(&self, consumer: &str, mut entries: Vec<KeyEntry>) {
        entries.retain(|e| e.consumer.as_ref() == consumer);
        let Some(first) = entries.first() else {
            return;
        };
        let owner = first.consumer.clone();
        self.warn_undefined_plans(&entries);
        let old = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            entries
                .iter()
                .find_map(|e| map.get(&e.hash).filter(|o| o.consumer == e.consumer))
                .and_then(|o| o.slot.clone())
        };
        let slot = {
            let mut seeds = self.seeds.lock().unwrap_or_else(|e| e.into_inner());
            self.slot_for(first, old.as_ref(), &mut seeds)
        };
        let entries = entries.into_iter().map(|mut e| {
            e.slot = slot.clone();
            (e.hash, Arc::new(e))
        });
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // In place unless a reader still walks the previous map (`slots`, `changed_usage`),
        // in which case that reader keeps its copy and this one is cloned once.
        Arc::make_mut(&mut map).extend(entries);
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        replaced.generation += 1;
        let generation = replaced.generation;
        replaced.log.push_back((generation, owner));
        if replaced.log.len() > REPLACED_KEPT {
            let oldest = replaced.log.front().map_or(0, |(g, _)| *g);
            replaced.forget(oldest);
        }
    }

    /// The limit slot of the consumer behind `e` after a reload: its previous slot when its
    /// policy is unchanged, a successor carrying its quota usage over when the policy changed,
    /// or a new slot seeded with the usage persisted before a restart. `None` = unlimited.
    fn slot_for(
        &self,
        e: &KeyEntry,
        old: Option<&Arc<LimitSlot>>,
        seeds: &mut HashMap<String, QuotaSeed>,
    ) -> Option<Arc<LimitSlot>> {
        let policy = LimitPolicy::resolve(
            e.plan.as_deref().and_then(|p| self.plans.get(p)),
            e.limits.as_deref(),
        )?;
        Some(match old {
            Some(prev) if prev.policy == policy => prev.clone(),
            Some(prev) => Arc::new(prev.successor(policy)),
            None => {
                let slot = LimitSlot::new(policy);
                if let Some(seed) = seeds.remove(e.consumer.as_ref()) {
                    apply_seed(&slot, &seed);
                }
                Arc::new(slot)
            }
        })
    }

    /// Plans a consumer is on but the config does not define (consumers created by ingest
    /// carry whatever plan their events named): such consumers are unlimited, which an
    /// operator should hear about rather than discover.
    fn warn_undefined_plans(&self, entries: &[KeyEntry]) {
        let undefined: std::collections::BTreeSet<&str> = entries
            .iter()
            .filter(|e| !e.revoked)
            .filter_map(|e| e.plan.as_deref())
            .filter(|p| !self.plans.is_empty() && !self.plans.contains_key(*p))
            .collect();
        if !undefined.is_empty() {
            tracing::warn!(
                plans = ?undefined,
                "some consumers are on plans the config does not define, so no limits apply to them; add [plans.NAME] sections or move them to a defined plan"
            );
        }
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn apply_seed(slot: &LimitSlot, seed: &QuotaSeed) {
    slot.day.restore(seed.day, seed.day_used);
    slot.month.restore(seed.month, seed.month_used);
}

/// In `map`, the entries of the `touched` consumers become those `current` holds.
fn keep_current(
    map: &mut HashMap<[u8; 32], Arc<KeyEntry>>,
    current: &HashMap<[u8; 32], Arc<KeyEntry>>,
    touched: &std::collections::HashSet<Arc<str>>,
) {
    map.retain(|_, e| !touched.contains(&e.consumer));
    map.extend(
        current
            .iter()
            .filter(|(_, e)| touched.contains(&e.consumer))
            .map(|(h, e)| (*h, e.clone())),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Decision;

    fn entry(hasher: &KeyHasher, key: &str) -> KeyEntry {
        KeyEntry {
            key_id: "key_1".into(),
            hash: hasher.hash(key),
            consumer: "acme".into(),
            plan: None,
            team: None,
            use_case: None,
            expires_at_ms: None,
            revoked: false,
            limits: None,
            slot: None,
        }
    }

    #[test]
    fn generated_keys_are_distinct_and_well_formed() {
        let a = generate_key();
        let b = generate_key();
        assert_ne!(a, b);
        assert!(a.starts_with("ck_") && a.len() == 43 && key_syntax_ok(&a));
        assert_eq!(visible_prefix(&a).len(), VISIBLE_PREFIX_LEN);
    }

    #[test]
    fn hash_depends_on_secret() {
        let k = generate_key();
        assert_ne!(
            KeyHasher::new([1; 32]).hash(&k),
            KeyHasher::new([2; 32]).hash(&k)
        );
    }

    #[test]
    fn lookup_states() {
        let h = KeyHasher::new([7; 32]);
        let idx = KeyIndex::new(h.clone());
        idx.replace_all(vec![entry(&h, "good-key-123456789")]);
        assert!(matches!(
            idx.lookup("good-key-123456789", 0),
            Lookup::Valid(_)
        ));
        assert_eq!(idx.lookup("other-key-123456789", 0), Lookup::Unknown);
        let mut e = entry(&h, "good-key-123456789");
        e.expires_at_ms = Some(10);
        idx.replace_all(vec![e.clone()]);
        assert!(matches!(
            idx.lookup("good-key-123456789", 10),
            Lookup::Expired(_)
        ));
        e.revoked = true;
        idx.replace_all(vec![e]);
        assert!(matches!(
            idx.lookup("good-key-123456789", 0),
            Lookup::Revoked(_)
        ));
    }

    /// One consumer's keys reloaded: the others are untouched, the consumer's quota state
    /// survives while its policy holds and carries over when its plan changes.
    #[test]
    fn replacing_one_consumer_keeps_the_rest_and_its_quota_state() {
        let h = KeyHasher::new([7; 32]);
        let plan = |day: u64| -> PlanConfig {
            toml::from_str(&format!(
                "rate_per_second = 1000\nburst = 1000\nquota_per_day = {day}"
            ))
            .unwrap()
        };
        let plans = BTreeMap::from([("pro".to_string(), plan(10)), ("max".to_string(), plan(20))]);
        let idx = KeyIndex::with_plans(h.clone(), plans);
        let keyed = |key: &str, consumer: &str, plan: &str| KeyEntry {
            key_id: key.into(),
            consumer: consumer.into(),
            plan: Some(plan.into()),
            ..entry(&h, key)
        };
        idx.replace_all(vec![
            keyed("acme-key-1234567890", "acme", "pro"),
            keyed("globex-key-123456789", "globex", "pro"),
        ]);
        let valid = |key: &str| match idx.lookup(key, 0) {
            Lookup::Valid(e) => e,
            other => panic!("{key}: {other:?}"),
        };
        let acme_slot = valid("acme-key-1234567890").slot.clone().unwrap();
        let globex_slot = valid("globex-key-123456789").slot.clone().unwrap();
        for _ in 0..3 {
            assert!(matches!(
                acme_slot.check("GET", "/", 0),
                Decision::Allowed { .. }
            ));
        }

        // A second key for acme: both keys share acme's slot, globex's entry is the same one.
        let globex_before = valid("globex-key-123456789");
        idx.replace_consumer(
            "acme",
            vec![
                keyed("acme-key-1234567890", "acme", "pro"),
                keyed("acme-key-2-234567890", "acme", "pro"),
            ],
        );
        assert_eq!(idx.len(), 3);
        let second = valid("acme-key-2-234567890");
        assert!(Arc::ptr_eq(second.slot.as_ref().unwrap(), &acme_slot));
        assert!(Arc::ptr_eq(&valid("globex-key-123456789"), &globex_before));
        assert!(Arc::ptr_eq(
            globex_before.slot.as_ref().unwrap(),
            &globex_slot
        ));

        // acme moves to a bigger plan: a new slot that still counts the 3 requests made.
        let mut revoked = keyed("acme-key-2-234567890", "acme", "max");
        revoked.revoked = true;
        idx.replace_consumer(
            "acme",
            vec![keyed("acme-key-1234567890", "acme", "max"), revoked],
        );
        let moved = valid("acme-key-1234567890").slot.clone().unwrap();
        assert!(!Arc::ptr_eq(&moved, &acme_slot));
        assert_eq!(moved.policy.quota_per_day, Some(20));
        assert_eq!(moved.day.used(0), 3);
        assert!(matches!(
            idx.lookup("acme-key-2-234567890", 0),
            Lookup::Revoked(_)
        ));
        // Entries of another consumer in the list are not this call's to change.
        idx.replace_consumer("acme", vec![keyed("globex-key-123456789", "globex", "max")]);
        assert!(Arc::ptr_eq(&valid("globex-key-123456789"), &globex_before));
        // The same index a full reload of the store's entries gives.
        let full = KeyIndex::with_plans(h.clone(), idx.plans().clone());
        let mut revoked = keyed("acme-key-2-234567890", "acme", "max");
        revoked.revoked = true;
        full.replace_all(vec![
            keyed("acme-key-1234567890", "acme", "max"),
            revoked,
            keyed("globex-key-123456789", "globex", "pro"),
        ]);
        for key in [
            "acme-key-1234567890",
            "acme-key-2-234567890",
            "globex-key-123456789",
        ] {
            assert_eq!(full.lookup(key, 0), idx.lookup(key, 0), "{key}");
        }
    }

    #[test]
    fn a_full_reload_read_before_a_change_does_not_undo_it() {
        let h = KeyHasher::new([7; 32]);
        let idx = KeyIndex::new(h.clone());
        let keyed = |key: &str, consumer: &str| KeyEntry {
            key_id: key.into(),
            consumer: consumer.into(),
            ..entry(&h, key)
        };
        idx.replace_all(vec![
            keyed("acme-key-1234567890", "acme"),
            keyed("globex-key-123456789", "globex"),
        ]);
        // The periodic reload reads the store (generation taken first) ...
        let since = idx.generation();
        let read_before = vec![
            keyed("acme-key-1234567890", "acme"),
            keyed("globex-key-123456789", "globex"),
            // ... which also holds another node's new key.
            keyed("initech-key-12345678", "initech"),
        ];
        // ... then the admin API makes a key for acme and reloads acme at once ...
        idx.replace_consumer(
            "acme",
            vec![
                keyed("acme-key-1234567890", "acme"),
                keyed("acme-key-2-234567890", "acme"),
            ],
        );
        // ... and the older read lands last: acme's new key stays, the rest is applied.
        assert!(idx.replace_all_since(read_before, since));
        for key in [
            "acme-key-1234567890",
            "acme-key-2-234567890",
            "globex-key-123456789",
            "initech-key-12345678",
        ] {
            assert!(matches!(idx.lookup(key, 0), Lookup::Valid(_)), "{key}");
        }
        // Once landed, what it covered is forgotten: a reload read afterwards is the truth,
        // so a key it no longer holds is gone.
        assert!(idx.replaced.lock().unwrap().log.is_empty());
        let since = idx.generation();
        assert!(idx.replace_all_since(vec![keyed("globex-key-123456789", "globex")], since));
        assert!(matches!(
            idx.lookup("acme-key-2-234567890", 0),
            Lookup::Unknown
        ));
        // A reload older than the replacements remembered is refused, not applied blind.
        for i in 0..=REPLACED_KEPT {
            let key = format!("bulk-key-{i:012}");
            idx.replace_consumer("bulk", vec![keyed(&key, "bulk")]);
        }
        assert!(!idx.replace_all_since(Vec::new(), since));
        assert!(matches!(
            idx.lookup("globex-key-123456789", 0),
            Lookup::Valid(_)
        ));
    }

    #[test]
    fn secret_eq_is_exact() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
    }
}
