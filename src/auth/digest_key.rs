//! Hashing for caches whose key is already a hash of a verified token: a
//! SHA-256 digest (signed assertions) or a keyed 64-bit hash (the verified-token
//! cache, which compares the whole token on a hit).
//!
//! The key is already uniformly distributed, so its first eight bytes are a
//! hash. The default SipHash over the 32 bytes was about a quarter of the
//! cost of a first-seen token (moka hashes a key several times per insert).
//! Only caches whose entries are tokens an issuer signed use this: nobody can
//! grind such keys into one bucket. Caches whose entries a client can
//! mint freely (DPoP proof ids) keep the keyed default hasher.

use std::hash::{BuildHasher, Hasher};

#[derive(Clone, Default)]
pub struct DigestKey;

impl BuildHasher for DigestKey {
    type Hasher = DigestKeyHasher;

    fn build_hasher(&self) -> DigestKeyHasher {
        DigestKeyHasher(0)
    }
}

pub struct DigestKeyHasher(u64);

impl Hasher for DigestKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        // The digest arrives in one call; anything shorter is folded in whole.
        match bytes.first_chunk::<8>() {
            Some(word) => self.0 ^= u64::from_le_bytes(*word),
            None => {
                for b in bytes {
                    self.0 = self.0.rotate_left(8) ^ u64::from(*b);
                }
            }
        }
    }

    fn write_usize(&mut self, _len: usize) {
        // The length prefix of a `[u8; 32]` is the same for every key.
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::{Digest, Sha256};

    #[test]
    fn a_digest_hashes_to_its_first_eight_bytes_and_distinct_digests_spread() {
        let d: [u8; 32] = Sha256::digest(b"token").into();
        let h = DigestKey.hash_one(d);
        assert_eq!(
            h,
            u64::from_le_bytes(d[..8].try_into().expect("8 of 32 bytes"))
        );
        let buckets: std::collections::HashSet<u64> = (0..1000u32)
            .map(|i| {
                let d: [u8; 32] = Sha256::digest(i.to_le_bytes()).into();
                DigestKey.hash_one(d) & 0xff
            })
            .collect();
        assert!(
            buckets.len() > 200,
            "low bits should spread: {}",
            buckets.len()
        );
    }
}
