//! The encoder-output cache: vision encodings keyed by the content hash of the encoded image,
//! least-recently-used eviction, bounded in bytes. Repeated images skip the ViT and resampler.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// A byte-bounded LRU map.
///
/// # Guarantees
/// - The sum of the sizes of the cached values never exceeds the capacity.
/// - A value larger than the whole capacity is not cached (and evicts nothing).
/// - Inserting an existing key replaces its value and makes it most recent.
#[derive(Debug)]
pub struct EncoderCache<K, V> {
    capacity: usize,
    used: usize,
    tick: u64,
    entries: HashMap<K, (V, usize, u64)>,
    order: BTreeMap<u64, K>,
    hits: u64,
    misses: u64,
}

impl<K: Hash + Eq + Clone, V: Clone> EncoderCache<K, V> {
    /// An empty cache holding at most `capacity_bytes`.
    pub fn new(capacity_bytes: usize) -> Self {
        Self {
            capacity: capacity_bytes,
            used: 0,
            tick: 0,
            entries: HashMap::new(),
            order: BTreeMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// Looks `key` up, counting a hit or a miss; a hit becomes the most recent entry.
    pub fn get(&mut self, key: &K) -> Option<V> {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(key) {
            Some((v, _, t)) => {
                self.order.remove(t);
                *t = tick;
                self.order.insert(tick, key.clone());
                self.hits += 1;
                Some(v.clone())
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    /// Caches `value` of `size` bytes under `key`, evicting least-recently-used entries.
    pub fn insert(&mut self, key: K, value: V, size: usize) {
        if size > self.capacity {
            return;
        }
        self.remove(&key);
        while self.used + size > self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            if let Some((_, s, _)) = self.entries.remove(&oldest) {
                self.used -= s;
            }
        }
        self.tick += 1;
        self.order.insert(self.tick, key.clone());
        self.entries.insert(key, (value, size, self.tick));
        self.used += size;
    }

    /// Drops `key` if cached.
    pub fn remove(&mut self, key: &K) {
        if let Some((_, s, t)) = self.entries.remove(key) {
            self.order.remove(&t);
            self.used -= s;
        }
    }

    /// Bytes held.
    pub fn used_bytes(&self) -> usize {
        self.used
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Nothing cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Lookups that found a value.
    pub fn hits(&self) -> u64 {
        self.hits
    }

    /// Lookups that found nothing.
    pub fn misses(&self) -> u64 {
        self.misses
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used_within_the_byte_bound() {
        let mut c = EncoderCache::new(100);
        c.insert("a", 1, 40);
        c.insert("b", 2, 40);
        assert_eq!(c.get(&"a"), Some(1)); // a is now the most recent
        c.insert("c", 3, 40); // evicts b
        assert_eq!(c.get(&"b"), None);
        assert_eq!((c.get(&"a"), c.get(&"c")), (Some(1), Some(3)));
        assert_eq!(c.used_bytes(), 80);
        assert_eq!((c.hits(), c.misses()), (3, 1));
    }

    #[test]
    fn oversized_values_are_not_cached_and_replacing_keeps_the_bound() {
        let mut c = EncoderCache::new(100);
        c.insert("a", 1, 60);
        c.insert("huge", 9, 101);
        assert_eq!(c.len(), 1, "nothing evicted for a value that cannot fit");
        c.insert("a", 2, 90);
        assert_eq!((c.get(&"a"), c.used_bytes()), (Some(2), 90));
        c.insert("b", 3, 20);
        assert_eq!((c.get(&"a"), c.used_bytes(), c.len()), (None, 20, 1));
    }
}
