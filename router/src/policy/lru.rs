//! A bounded least-recently-used map with O(1) amortised operations: a `HashMap` from key to
//! (value, last-use tick) and a `VecDeque` of (key, tick) touches in time order. A touch pushes a
//! new record and leaves the old one stale (its tick no longer matches the map's); eviction pops
//! from the front, skipping stale records; the queue is compacted when stale records outnumber the
//! live ones, so it never holds more than about twice the entries.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;

/// A map that holds at most `capacity` entries and forgets the least recently used first.
///
/// # Guarantees
/// - `len() <= capacity()` after every call.
/// - `get` and `insert` make the key the most recent; `peek` does not.
/// - A capacity of 0 holds nothing.
#[derive(Debug, Clone)]
pub struct Lru<K, V> {
    capacity: usize,
    tick: u64,
    map: HashMap<K, (V, u64)>,
    order: VecDeque<(K, u64)>,
}

impl<K: Clone + Eq + Hash, V> Lru<K, V> {
    /// An empty map holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            tick: 0,
            map: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The bound on entries.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Nothing held.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn touch(&mut self, key: &K) -> u64 {
        self.tick += 1;
        self.order.push_back((key.clone(), self.tick));
        self.tick
    }

    fn compact_if_needed(&mut self) {
        if self.order.len() > 2 * self.map.len() + 16 {
            let map = &self.map;
            self.order
                .retain(|(k, t)| map.get(k).is_some_and(|(_, live)| live == t));
        }
    }

    /// The value of `key`, made the most recent entry.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        if !self.map.contains_key(key) {
            return None;
        }
        let tick = self.touch(key);
        self.compact_if_needed();
        let entry = self.map.get_mut(key)?;
        entry.1 = tick;
        Some(&entry.0)
    }

    /// The value of `key`, recency unchanged.
    pub fn peek(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    /// Sets `key` to `value` as the most recent entry, evicting the least recently used beyond
    /// the capacity. Returns the evicted entries' count.
    pub fn insert(&mut self, key: K, value: V) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let tick = self.touch(&key);
        self.map.insert(key, (value, tick));
        let mut evicted = 0;
        while self.map.len() > self.capacity {
            let Some((k, t)) = self.order.pop_front() else {
                break;
            };
            if self.map.get(&k).is_some_and(|(_, live)| *live == t) {
                self.map.remove(&k);
                evicted += 1;
            }
        }
        self.compact_if_needed();
        evicted
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: &K) -> Option<V> {
        let v = self.map.remove(key).map(|(v, _)| v);
        self.compact_if_needed();
        v
    }

    /// Keeps only the entries for which `keep` holds.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.map.retain(|k, (v, _)| keep(k, v));
        self.compact_if_needed();
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn capacity_bound_evicts_the_least_recently_used() {
        let mut l = Lru::new(2);
        l.insert("a", 1);
        l.insert("b", 2);
        assert_eq!(l.get(&"a"), Some(&1)); // a is now the most recent
        assert_eq!(l.insert("c", 3), 1);
        assert_eq!(l.peek(&"b"), None, "b was the least recently used");
        assert_eq!(
            (l.peek(&"a"), l.peek(&"c"), l.len()),
            (Some(&1), Some(&3), 2)
        );
    }

    #[test]
    fn peek_does_not_refresh_and_reinsert_does() {
        let mut l = Lru::new(2);
        l.insert("a", 1);
        l.insert("b", 2);
        assert_eq!(l.peek(&"a"), Some(&1));
        l.insert("c", 3); // a was still the oldest
        assert_eq!(l.peek(&"a"), None);
        l.insert("b", 20); // b becomes the most recent
        l.insert("d", 4); // evicts c
        assert_eq!((l.peek(&"b"), l.peek(&"c")), (Some(&20), None));
    }

    #[test]
    fn many_touches_keep_the_bound_and_the_order_queue_compact() {
        let mut l = Lru::new(100);
        for i in 0..10_000u32 {
            l.insert(i % 150, i);
            let _ = l.get(&(i % 7));
            assert!(l.len() <= 100);
            assert!(
                l.order.len() <= 2 * l.len() + 17,
                "order {} len {}",
                l.order.len(),
                l.len()
            );
        }
        // Keys 0..7 are touched on every iteration: never evicted.
        assert!((0..7).all(|k| l.peek(&k).is_some()));
    }

    #[test]
    fn zero_capacity_holds_nothing_and_remove_retain_drop_entries() {
        let mut z = Lru::new(0);
        z.insert(1, 1);
        assert!(z.is_empty());
        let mut l = Lru::new(10);
        for i in 0..10 {
            l.insert(i, i % 2);
        }
        assert_eq!(l.remove(&3), Some(1));
        l.retain(|_, v| *v == 0);
        assert_eq!(l.len(), 5);
        // Stale order records of removed keys never evict a live key.
        for i in 10..15 {
            l.insert(i, 0);
        }
        assert_eq!(l.len(), 10);
        assert!([0, 2, 4, 6, 8].iter().all(|k| l.peek(k).is_some()));
        l.insert(15, 0);
        assert!(
            l.peek(&0).is_none() && l.peek(&2).is_some(),
            "0 was the oldest live key"
        );
    }
}
