//! The hash of the maps looked up for every request: the metric shards
//! ([`super::HttpShard`], [`super::AuthzShard`]), where SipHash over a
//! label set (a dozen small writes) cost more than the rest of the
//! counting, and the engine's per-worker tables (balancer replicas by
//! authority, pooled connections by endpoint).
//!
//! Keyed per map from std's random keys, so label sets cannot be chosen to
//! collide without knowing the key; one widening multiply per word (the
//! folded multiply of foldhash and wyhash), which spreads every input bit
//! over the result. Label sets are also capped per family (`MAX_SERIES`).

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

/// Odd constants (the fractional part of the golden ratio, and of pi).
const K0: u64 = 0x9e37_79b9_7f4a_7c15;
const K1: u64 = 0x243f_6a88_85a3_08d3;

/// Builds [`KeyedHasher`]s with this map's random key.
#[derive(Clone, Copy, Debug)]
pub struct KeyedState {
    key: u64,
}

impl Default for KeyedState {
    fn default() -> Self {
        // std's per-process random keys (advanced per instance), through
        // SipHash once per map.
        let key = RandomState::new().hash_one(K1);
        Self { key: key | 1 }
    }
}

impl BuildHasher for KeyedState {
    type Hasher = KeyedHasher;

    fn build_hasher(&self) -> KeyedHasher {
        KeyedHasher {
            h: self.key,
            key: self.key ^ K0,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct KeyedHasher {
    h: u64,
    key: u64,
}

/// The 128-bit product's halves folded together.
#[inline]
fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

impl Hasher for KeyedHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.write_u64(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length in the top byte: "ab" and "ab\0" differ.
            self.write_u64(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, x: u8) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u16(&mut self, x: u16) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(u64::from(x));
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.h = fold(self.h ^ x, self.key);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold(self.h, K0 ^ self.key.rotate_left(32))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::hash::BuildHasher;

    use super::KeyedState;

    #[test]
    fn distinct_inputs_hash_apart() {
        let s = KeyedState::default();
        let mut seen = HashSet::new();
        for i in 0u32..10_000 {
            assert!(seen.insert(s.hash_one(i)), "collision at {i}");
        }
        // (A map's keys are of one type: strings apart from strings.)
        let mut strings = HashSet::new();
        for w in [
            "",
            "a",
            "ab",
            "ab\0",
            "abcdefgh",
            "abcdefgh\0",
            "127.0.0.1:80",
        ] {
            assert!(strings.insert(s.hash_one(w)), "{w:?}");
        }
        // Low bits (the table's index) spread too.
        let buckets: HashSet<u64> = (0u16..256).map(|i| s.hash_one(i) & 1023).collect();
        assert!(buckets.len() > 200, "{}", buckets.len());
    }

    #[test]
    fn keys_differ_per_map() {
        let (a, b) = (KeyedState::default(), KeyedState::default());
        assert_ne!(a.hash_one("x"), b.hash_one("x"));
    }
}
