//! API keys: generation, hashing at rest, and the in-memory index the gateway reads.
//!
//! Keys are high-entropy random strings, so a keyed hash (HMAC-SHA256 under a per-store secret)
//! is enough to store them: there is nothing to brute-force, and a stolen database alone does
//! not let anyone test guesses without the secret. The plaintext exists only in the answer that
//! creates the key.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

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
#[derive(Debug, Clone, PartialEq)]
pub struct KeyEntry {
    pub key_id: Arc<str>,
    pub hash: [u8; 32],
    pub consumer: Arc<str>,
    pub plan: Option<Arc<str>>,
    pub team: Option<Arc<str>>,
    pub use_case: Option<Arc<str>>,
    pub expires_at_ms: Option<i64>,
    pub revoked: bool,
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
#[derive(Debug)]
pub struct KeyIndex {
    hasher: KeyHasher,
    map: RwLock<Arc<HashMap<[u8; 32], Arc<KeyEntry>>>>,
}

impl KeyIndex {
    pub fn new(hasher: KeyHasher) -> KeyIndex {
        KeyIndex {
            hasher,
            map: RwLock::new(Arc::new(HashMap::new())),
        }
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

    /// Replaces every entry at once, as after a reload from the store.
    pub fn replace_all(&self, entries: Vec<KeyEntry>) {
        let map: HashMap<_, _> = entries.into_iter().map(|e| (e.hash, Arc::new(e))).collect();
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
    }

    pub fn len(&self) -> usize {
        self.map.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn secret_eq_is_exact() {
        assert!(secret_eq("abc", "abc"));
        assert!(!secret_eq("abc", "abd"));
        assert!(!secret_eq("abc", "abcd"));
    }
}
