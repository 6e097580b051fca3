//! The authoritative list: live entries and tombstones, and the one rule that
//! merges changes from the API, the store, and other replicas.

use std::collections::BTreeMap;

use super::entry::{Entry, Key, Op};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Live { entry: Entry, at: u64 },
    Deleted { at: u64, expires_at: u64 },
}

impl Record {
    fn expires_at(&self) -> u64 {
        match self {
            Record::Live { entry, .. } => entry.expires_at(),
            Record::Deleted { expires_at, .. } => *expires_at,
        }
    }

    pub fn to_op(&self, key: &Key) -> Op {
        match self {
            Record::Live { entry, at } => Op::Add {
                entry: entry.clone(),
                at: *at,
            },
            Record::Deleted { at, expires_at } => Op::Del {
                key: key.clone(),
                at: *at,
                expires_at: *expires_at,
            },
        }
    }
}

#[derive(Debug, Default)]
pub struct State {
    pub records: BTreeMap<Key, Record>,
    pub live_jti: usize,
    pub live_sub: usize,
}

impl State {
    fn count(&mut self, key: &Key, delta: isize) {
        let c = match key {
            Key::Jti(_) => &mut self.live_jti,
            Key::Subject(..) => &mut self.live_sub,
        };
        *c = c.saturating_add_signed(delta);
    }

    fn is_live(&self, key: &Key) -> bool {
        matches!(self.records.get(key), Some(Record::Live { .. }))
    }

    /// Applies one change; returns what actually changed (to log, index and
    /// share), or `None` when the state already says as much or more.
    ///
    /// The later `at` wins between an entry and a deletion; two entries for
    /// the same key merge into the stricter one.
    pub fn apply(&mut self, op: &Op) -> Option<Op> {
        let key = op.key();
        let was_live = self.is_live(&key);
        let next = match (op, self.records.get(&key)) {
            (Op::Add { at, .. }, Some(Record::Deleted { at: t, .. })) if t >= at => return None,
            (Op::Add { entry, at }, Some(Record::Live { entry: old, at: a })) => {
                let merged = old.merge(entry);
                let at = (*a).max(*at);
                if merged == *old && at == *a {
                    return None;
                }
                Record::Live { entry: merged, at }
            }
            (Op::Add { entry, at }, _) => Record::Live {
                entry: entry.clone(),
                at: *at,
            },
            (Op::Del { at, .. }, Some(Record::Live { at: a, .. })) if a > at => return None,
            (Op::Del { at, expires_at, .. }, Some(old)) => {
                let (old_at, old_exp) = match old {
                    Record::Live { at, entry } => (*at, entry.expires_at()),
                    Record::Deleted { at, expires_at } => (*at, *expires_at),
                };
                let next = Record::Deleted {
                    at: (*at).max(old_at),
                    expires_at: (*expires_at).max(old_exp),
                };
                if next == *old {
                    return None;
                }
                next
            }
            (Op::Del { at, expires_at, .. }, None) => Record::Deleted {
                at: *at,
                expires_at: *expires_at,
            },
        };
        let out = next.to_op(&key);
        let now_live = matches!(next, Record::Live { .. });
        self.records.insert(key.clone(), next);
        match (was_live, now_live) {
            (false, true) => self.count(&key, 1),
            (true, false) => self.count(&key, -1),
            _ => {}
        }
        Some(out)
    }

    /// Drops entries and tombstones past their expiry; returns how many.
    pub fn expire(&mut self, now: u64) -> usize {
        let before = self.records.len();
        let mut dropped_jti = 0;
        let mut dropped_sub = 0;
        self.records.retain(|k, r| {
            let keep = r.expires_at() > now;
            if !keep && matches!(r, Record::Live { .. }) {
                match k {
                    Key::Jti(_) => dropped_jti += 1,
                    Key::Subject(..) => dropped_sub += 1,
                }
            }
            keep
        });
        self.live_jti -= dropped_jti;
        self.live_sub -= dropped_sub;
        before - self.records.len()
    }

    /// Counts live entries again (after an undo).
    pub fn recount(&mut self) {
        let (mut j, mut s) = (0, 0);
        for (k, r) in &self.records {
            if matches!(r, Record::Live { .. }) {
                match k {
                    Key::Jti(_) => j += 1,
                    Key::Subject(..) => s += 1,
                }
            }
        }
        self.live_jti = j;
        self.live_sub = s;
    }

    pub fn live(&self) -> impl Iterator<Item = &Entry> {
        self.records.values().filter_map(|r| match r {
            Record::Live { entry, .. } => Some(entry),
            Record::Deleted { .. } => None,
        })
    }

    pub fn ops(&self) -> Vec<Op> {
        self.records.iter().map(|(k, r)| r.to_op(k)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(j: &str, exp: u64, at: u64) -> Op {
        Op::Add {
            entry: Entry::Jti {
                jti: j.into(),
                expires_at: exp,
            },
            at,
        }
    }

    fn del(j: &str, at: u64) -> Op {
        Op::Del {
            key: Key::Jti(j.into()),
            at,
            expires_at: 0,
        }
    }

    #[test]
    fn a_later_deletion_beats_an_older_entry_from_a_stale_replica() {
        let mut s = State::default();
        assert!(s.apply(&add("a", 100, 1)).is_some());
        assert!(s.apply(&del("a", 2)).is_some());
        assert_eq!(s.live_jti, 0);
        // The stale replica's copy arrives again: it is older than the deletion.
        assert!(s.apply(&add("a", 100, 1)).is_none());
        assert_eq!(s.live().count(), 0);
        // A revocation made after the deletion wins.
        assert!(s.apply(&add("a", 100, 3)).is_some());
        assert_eq!(s.live_jti, 1);
    }

    #[test]
    fn a_stale_deletion_does_not_remove_a_newer_entry() {
        let mut s = State::default();
        s.apply(&add("a", 100, 5));
        assert!(s.apply(&del("a", 4)).is_none());
        assert_eq!(s.live_jti, 1);
    }

    #[test]
    fn tombstones_outlive_the_entry_they_removed_then_expire() {
        let mut s = State::default();
        s.apply(&add("a", 100, 1));
        s.apply(&del("a", 2));
        assert_eq!(s.expire(99), 0);
        assert_eq!(s.expire(100), 1);
        assert!(s.records.is_empty());
    }

    #[test]
    fn same_key_entries_merge_into_the_stricter() {
        let mut s = State::default();
        s.apply(&add("a", 100, 1));
        assert!(s.apply(&add("a", 50, 2)).is_some());
        assert_eq!(s.live().next().unwrap().expires_at(), 100);
        assert!(s.apply(&add("a", 50, 1)).is_none());
    }
}
