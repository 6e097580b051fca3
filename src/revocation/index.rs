//! The in-memory index the request path reads: no lock, no I/O, no string
//! comparison. Keys are 64-bit hashes of the `jti` or of (issuer, subject),
//! so an entry costs a few dozen bytes. A hash collision could only make a
//! token look revoked, never let a revoked one through.
//!
//! Readers load an `Arc` snapshot; writers build a new one and swap it. To keep
//! writes cheap with a million entries, a snapshot is a large shared `base`
//! plus a small `delta` that is folded into the base every few thousand writes.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwap;

use super::entry::{Entry, Key};

/// The keys are already hashes: the table does not hash them again.
#[derive(Default)]
pub struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Table<V> = HashMap<u64, V, BuildHasherDefault<PassThrough>>;

/// Expiry (unix seconds) of a jti entry, or 0 for "removed" in a delta.
type JtiValue = u32;
/// (not_before, expires_at), or expires_at 0 for "removed" in a delta.
type SubValue = (u32, u32);

#[derive(Default, Clone)]
pub struct Tables {
    jti: Table<JtiValue>,
    sub: Table<SubValue>,
}

impl Tables {
    fn len(&self) -> usize {
        self.jti.len() + self.sub.len()
    }
}

#[derive(Default)]
pub struct Snapshot {
    base: Arc<Tables>,
    delta: Tables,
}

impl Snapshot {
    /// Whether any jti entry exists; without one, a request need not hash its `jti`.
    #[inline]
    pub fn has_jti(&self) -> bool {
        !self.delta.jti.is_empty() || !self.base.jti.is_empty()
    }

    /// Whether any subject entry exists.
    #[inline]
    pub fn has_sub(&self) -> bool {
        !self.delta.sub.is_empty() || !self.base.sub.is_empty()
    }

    #[inline]
    pub fn jti_revoked(&self, jti: u64, now: u64) -> bool {
        let exp = self
            .delta
            .jti
            .get(&jti)
            .or_else(|| self.base.jti.get(&jti))
            .copied()
            .unwrap_or(0);
        u64::from(exp) > now
    }

    #[inline]
    pub fn subject_revoked(&self, subject: u64, iat: u64, now: u64) -> bool {
        match self
            .delta
            .sub
            .get(&subject)
            .or_else(|| self.base.sub.get(&subject))
        {
            Some(&(not_before, exp)) => u64::from(exp) > now && iat <= u64::from(not_before),
            None => false,
        }
    }
}

/// The hash used for index keys: keyed per process, so nobody can aim at a
/// particular slot from outside.
fn hasher() -> &'static std::collections::hash_map::RandomState {
    static H: OnceLock<std::collections::hash_map::RandomState> = OnceLock::new();
    H.get_or_init(std::collections::hash_map::RandomState::new)
}

pub fn jti_hash(jti: &str) -> u64 {
    let mut h = hasher().build_hasher();
    h.write_u8(b'j');
    h.write(jti.as_bytes());
    h.finish()
}

pub fn subject_hash(iss: &str, sub: &str) -> u64 {
    let mut h = hasher().build_hasher();
    h.write_u8(b's');
    h.write(iss.as_bytes());
    h.write_u8(0);
    h.write(sub.as_bytes());
    h.finish()
}

fn secs(n: u64) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

const FOLD_AT: usize = 4096;

pub struct Index {
    snap: ArcSwap<Snapshot>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            snap: ArcSwap::from_pointee(Snapshot::default()),
        }
    }
}

impl Index {
    /// The current snapshot, for several lookups against one state.
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snap.load()
    }

    /// Is a token with this `jti` hash revoked at `now`?
    pub fn jti_revoked(&self, jti: u64, now: u64) -> bool {
        self.snap.load().jti_revoked(jti, now)
    }

    /// Is a token of this subject, issued at `iat`, revoked at `now`?
    pub fn subject_revoked(&self, subject: u64, iat: u64, now: u64) -> bool {
        self.snap.load().subject_revoked(subject, iat, now)
    }

    /// Applies changes. Callers serialise writes (the store's lock).
    pub fn apply(&self, adds: &[Entry], dels: &[Key]) {
        let cur = self.snap.load();
        let mut delta = cur.delta.clone();
        for e in adds {
            match e {
                Entry::Jti { jti, expires_at } => {
                    delta.jti.insert(jti_hash(jti), secs(*expires_at).max(1));
                }
                Entry::Subject {
                    iss,
                    sub,
                    not_before,
                    expires_at,
                } => {
                    delta.sub.insert(
                        subject_hash(iss, sub),
                        (secs(*not_before), secs(*expires_at).max(1)),
                    );
                }
            }
        }
        for k in dels {
            match k {
                Key::Jti(j) => {
                    delta.jti.insert(jti_hash(j), 0);
                }
                Key::Subject(i, s) => {
                    delta.sub.insert(subject_hash(i, s), (0, 0));
                }
            }
        }
        let next = if delta.len() >= FOLD_AT {
            Snapshot {
                base: Arc::new(fold(&cur.base, &delta)),
                delta: Tables::default(),
            }
        } else {
            Snapshot {
                base: cur.base.clone(),
                delta,
            }
        };
        self.snap.store(Arc::new(next));
    }

    /// Replaces everything (start, expiry sweep).
    pub fn rebuild<'a>(&self, entries: impl Iterator<Item = &'a Entry>) {
        let mut t = Tables::default();
        for e in entries {
            match e {
                Entry::Jti { jti, expires_at } => {
                    t.jti.insert(jti_hash(jti), secs(*expires_at).max(1));
                }
                Entry::Subject {
                    iss,
                    sub,
                    not_before,
                    expires_at,
                } => {
                    t.sub.insert(
                        subject_hash(iss, sub),
                        (secs(*not_before), secs(*expires_at).max(1)),
                    );
                }
            }
        }
        t.jti.shrink_to_fit();
        t.sub.shrink_to_fit();
        self.snap.store(Arc::new(Snapshot {
            base: Arc::new(t),
            delta: Tables::default(),
        }));
    }

    /// Heap bytes of the index's tables (buckets of key and value, plus one
    /// control byte each), for the benchmark's bytes-per-entry figure.
    pub fn heap_bytes(&self) -> usize {
        fn table<V>(t: &Table<V>) -> usize {
            if t.capacity() == 0 {
                return 0;
            }
            // The standard table keeps at most 7/8 of its buckets full, in powers of two.
            let buckets = (t.capacity() * 8 / 7).next_power_of_two();
            buckets * (std::mem::size_of::<(u64, V)>() + 1) + 16
        }
        let s = self.snap.load();
        table(&s.base.jti) + table(&s.base.sub) + table(&s.delta.jti) + table(&s.delta.sub)
    }
}

fn fold(base: &Tables, delta: &Tables) -> Tables {
    let mut t = base.clone();
    for (k, v) in &delta.jti {
        if *v == 0 {
            t.jti.remove(k);
        } else {
            t.jti.insert(*k, *v);
        }
    }
    for (k, v) in &delta.sub {
        if v.1 == 0 {
            t.sub.remove(k);
        } else {
            t.sub.insert(*k, *v);
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jti_entries_match_until_they_expire() {
        let idx = Index::default();
        idx.apply(
            &[Entry::Jti {
                jti: "a".into(),
                expires_at: 100,
            }],
            &[],
        );
        assert!(idx.jti_revoked(jti_hash("a"), 50));
        assert!(!idx.jti_revoked(jti_hash("a"), 100));
        assert!(!idx.jti_revoked(jti_hash("b"), 50));
        idx.apply(&[], &[Key::Jti("a".into())]);
        assert!(!idx.jti_revoked(jti_hash("a"), 50));
    }

    #[test]
    fn subject_cutoff_covers_tokens_issued_at_or_before_it() {
        let idx = Index::default();
        idx.apply(
            &[Entry::Subject {
                iss: "i".into(),
                sub: "s".into(),
                not_before: 1000,
                expires_at: 5000,
            }],
            &[],
        );
        let h = subject_hash("i", "s");
        assert!(idx.subject_revoked(h, 1000, 2000));
        assert!(idx.subject_revoked(h, 999, 2000));
        assert!(!idx.subject_revoked(h, 1001, 2000));
        assert!(!idx.subject_revoked(subject_hash("i", "t"), 900, 2000));
    }

    #[test]
    fn folding_keeps_every_entry_and_removal() {
        let idx = Index::default();
        for i in 0..(FOLD_AT * 2 + 10) {
            idx.apply(
                &[Entry::Jti {
                    jti: format!("j{i}"),
                    expires_at: 100,
                }],
                &[],
            );
        }
        idx.apply(&[], &[Key::Jti("j5".into())]);
        assert!(idx.jti_revoked(jti_hash("j0"), 1));
        assert!(idx.jti_revoked(jti_hash(&format!("j{}", FOLD_AT * 2 + 9)), 1));
        assert!(!idx.jti_revoked(jti_hash("j5"), 1));
    }
}
