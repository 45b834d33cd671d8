//! An in-memory LRU of decoded chunks bounded by bytes, not entries.

use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};

use lru::LruCache;

use crate::digest::Digest;

/// Decoded, verified chunks, most recently used kept, at most `budget` bytes in all.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    lru: LruCache<Digest, Arc<Vec<u8>>>,
    bytes: usize,
}

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0 }), budget }
    }

    pub fn get(&self, id: &Digest) -> Option<Arc<Vec<u8>>> {
        self.inner.lock().unwrap().lru.get(id).cloned()
    }

    /// Inserts a chunk, evicting the least recently used ones beyond the budget.
    /// A chunk larger than the whole budget is not kept.
    pub fn insert(&self, id: Digest, data: Arc<Vec<u8>>) {
        if data.len() > self.budget {
            return;
        }
        let mut inner = self.inner.lock().unwrap();
        inner.bytes += data.len();
        if let Some(old) = inner.lru.put(id, data) {
            inner.bytes -= old.len();
        }
        while inner.bytes > self.budget {
            match inner.lru.pop_lru() {
                Some((_, v)) => inner.bytes -= v.len(),
                None => break,
            }
        }
    }

    /// Bytes held now.
    pub fn bytes(&self) -> usize {
        self.inner.lock().unwrap().bytes
    }
}

/// A small count-bounded LRU for decoded metadata (trees, file records).
pub struct MetaCache<V> {
    inner: Mutex<LruCache<Digest, Arc<V>>>,
}

impl<V> MetaCache<V> {
    pub fn new(entries: usize) -> MetaCache<V> {
        MetaCache { inner: Mutex::new(LruCache::new(NonZeroUsize::new(entries.max(1)).unwrap())) }
    }

    pub fn get(&self, d: &Digest) -> Option<Arc<V>> {
        self.inner.lock().unwrap().get(d).cloned()
    }

    pub fn insert(&self, d: Digest, v: Arc<V>) {
        self.inner.lock().unwrap().put(d, v);
    }

    pub fn clear(&self) {
        self.inner.lock().unwrap().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent() {
        let c = ChunkCache::new(100);
        let d = |i: u8| Digest([i; 32]);
        c.insert(d(1), Arc::new(vec![0; 40]));
        c.insert(d(2), Arc::new(vec![0; 40]));
        assert!(c.get(&d(1)).is_some()); // 1 is now the most recent
        c.insert(d(3), Arc::new(vec![0; 40]));
        assert!(c.bytes() <= 100);
        assert!(c.get(&d(2)).is_none());
        assert!(c.get(&d(1)).is_some() && c.get(&d(3)).is_some());
        c.insert(d(4), Arc::new(vec![0; 101]));
        assert!(c.get(&d(4)).is_none());
    }
}
