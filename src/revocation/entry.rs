//! Revocation entries and how they are written down (store, Redis, API).

use serde::{Deserialize, Serialize};

/// One revocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Entry {
    /// Every token with this `jti`, until `expires_at` (unix seconds).
    Jti { jti: String, expires_at: u64 },
    /// Every token of `sub` from issuer `iss` issued at or before `not_before`;
    /// the entry lives until no such token can still be valid.
    Subject {
        iss: String,
        sub: String,
        not_before: u64,
        expires_at: u64,
    },
}

/// What identifies an entry: one per `jti`, one per (issuer, subject).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    Jti(String),
    Subject(String, String),
}

impl Entry {
    pub fn key(&self) -> Key {
        match self {
            Entry::Jti { jti, .. } => Key::Jti(jti.clone()),
            Entry::Subject { iss, sub, .. } => Key::Subject(iss.clone(), sub.clone()),
        }
    }

    pub fn expires_at(&self) -> u64 {
        match self {
            Entry::Jti { expires_at, .. } | Entry::Subject { expires_at, .. } => *expires_at,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Entry::Jti { .. } => "jti",
            Entry::Subject { .. } => "sub",
        }
    }

    /// Two writes of the same key keep the stricter: the later cut-off and
    /// the later expiry, so merging replicas can only add protection.
    pub fn merge(&self, other: &Entry) -> Entry {
        match (self, other) {
            (Entry::Jti { jti, expires_at: a }, Entry::Jti { expires_at: b, .. }) => Entry::Jti {
                jti: jti.clone(),
                expires_at: (*a).max(*b),
            },
            (
                Entry::Subject {
                    iss,
                    sub,
                    not_before: n1,
                    expires_at: e1,
                },
                Entry::Subject {
                    not_before: n2,
                    expires_at: e2,
                    ..
                },
            ) => Entry::Subject {
                iss: iss.clone(),
                sub: sub.clone(),
                not_before: (*n1).max(*n2),
                expires_at: (*e1).max(*e2),
            },
            _ => other.clone(),
        }
    }
}

/// A change, as logged and as published between replicas. `at` (unix
/// milliseconds) orders changes to the same key: the later one wins, so a
/// deletion is not undone by a replica that still holds the older entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Op {
    Add {
        entry: Entry,
        #[serde(default)]
        at: u64,
    },
    /// A deletion, remembered (as a tombstone) until `expires_at`, when the
    /// deleted entry would have expired anyway.
    Del {
        key: Key,
        #[serde(default)]
        at: u64,
        #[serde(default)]
        expires_at: u64,
    },
}

impl Op {
    pub fn key(&self) -> Key {
        match self {
            Op::Add { entry, .. } => entry.key(),
            Op::Del { key, .. } => key.clone(),
        }
    }

    pub fn expires_at(&self) -> u64 {
        match self {
            Op::Add { entry, .. } => entry.expires_at(),
            Op::Del { expires_at, .. } => *expires_at,
        }
    }

    pub fn at(&self) -> u64 {
        match self {
            Op::Add { at, .. } | Op::Del { at, .. } => *at,
        }
    }
}
