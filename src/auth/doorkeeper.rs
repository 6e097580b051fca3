//! Admission to the verified-token cache on a token's second verification.
//!
//! A token seen once and never again (a load of one-shot tokens, or a large
//! population each calling once) gains nothing from the cache, yet admitting
//! it cost more than the RSA-2048 signature check itself: moka's write
//! path, its expiry wheel, the memory of the entry, and an ever larger table
//! that every later lookup misses in. A token used again pays for one extra
//! verification, then is cached as before.
//!
//! The memory is one word per slot; a slot holds a tag of the last token
//! hash that landed in it. A collision only forgets a first sighting (the token is
//! admitted a verification later); it never admits anything the verifier did
//! not accept, because only verified tokens are offered.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct Doorkeeper {
    slots: Box<[AtomicU64]>,
    mask: usize,
}

impl Doorkeeper {
    /// Sized to the cache it guards, within 1,024 and 1,048,576 slots (8 KB
    /// to 8 MB, touched only as first sightings arrive).
    pub fn for_cache(entries: u64) -> Self {
        let n = usize::try_from(entries)
            .unwrap_or(usize::MAX)
            .clamp(1 << 10, 1 << 20)
            .next_power_of_two();
        Doorkeeper {
            slots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            mask: n - 1,
        }
    }

    /// True on the second sighting of the token whose keyed hash is `hash`
    /// (which clears the slot), false on the first (which remembers it).
    pub fn seen_before(&self, hash: u64) -> bool {
        // The cache's shards and buckets use the low bits; slots the high ones.
        // A tag is never 0, the empty slot.
        let (index, tag) = ((hash >> 32) as usize, hash | 1);
        let slot = &self.slots[index & self.mask];
        if slot.load(Ordering::Relaxed) == tag {
            slot.store(0, Ordering::Relaxed);
            true
        } else {
            slot.store(tag, Ordering::Relaxed);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn digest(i: u32) -> u64 {
        foldhash::quality::FixedState::with_seed(7).hash_one(i)
    }

    #[test]
    fn the_second_sighting_is_admitted_and_the_first_is_not() {
        let d = Doorkeeper::for_cache(100);
        assert!(!d.seen_before(digest(1)));
        assert!(!d.seen_before(digest(2)));
        assert!(d.seen_before(digest(1)));
        assert!(d.seen_before(digest(2)));
        // Admission clears the slot: a token evicted from the cache later
        // starts over.
        assert!(!d.seen_before(digest(1)));
    }

    #[test]
    fn sized_to_the_cache_within_bounds() {
        assert_eq!(Doorkeeper::for_cache(0).slots.len(), 1 << 10);
        assert_eq!(Doorkeeper::for_cache(100_000).slots.len(), 1 << 17);
        assert_eq!(Doorkeeper::for_cache(u64::MAX).slots.len(), 1 << 20);
    }

    #[test]
    fn a_full_table_forgets_some_first_sightings_but_admits_most() {
        let d = Doorkeeper::for_cache(1 << 14);
        for i in 0..(1 << 13) {
            d.seen_before(digest(i));
        }
        let admitted = (0..(1 << 13)).filter(|i| d.seen_before(digest(*i))).count();
        // Half full: about e^-0.5 of the slots kept their first tag.
        assert!(admitted > (1 << 13) / 2, "{admitted}");
    }
}
