//! What the store remembers to go faster: decoded chunks (an LRU bounded by bytes), decoded
//! trees and file records (bounded by count), the reads in flight, and the state of the cache
//! of data fetched from S3 (the open fetch pack, the recency of fetched packs).

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lru::LruCache;

use bytes::Bytes;

use crate::local::pack::PackWriter;
use crate::model::digest::Digest;

/// Decoded, verified chunks, most recently used kept, at most `budget` bytes in all.
pub struct ChunkCache {
    inner: Mutex<Inner>,
    budget: usize,
}

struct Inner {
    lru: LruCache<Digest, Bytes>,
    bytes: usize,
}

impl ChunkCache {
    pub fn new(budget: usize) -> ChunkCache {
        ChunkCache { inner: Mutex::new(Inner { lru: LruCache::unbounded(), bytes: 0 }), budget }
    }

    pub fn get(&self, id: &Digest) -> Option<Bytes> {
        self.inner.lock().unwrap().lru.get(id).cloned()
    }

    /// Inserts a chunk, evicting the least recently used ones beyond the budget.
    /// A chunk larger than the whole budget is not kept.
    pub fn insert(&self, id: Digest, data: Bytes) {
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

impl ChunkCache {
    /// Whether a chunk is held (without touching its recency).
    pub fn contains(&self, id: &Digest) -> bool {
        self.inner.lock().unwrap().lru.contains(id)
    }
}

/// Fetches in flight, readahead windows and counters of the read path.
pub(crate) struct ReadState {
    pub flights: Mutex<HashMap<Digest, crate::remote::lazy::Flight>>,
    /// Per file (by its first chunk): the chunk after the last window fetched, and its size.
    pub windows: Mutex<HashMap<Digest, crate::remote::lazy::FileReads>>,
    /// Neighbour reads in flight: pack, byte range, and a channel that says when they landed.
    pub blind: Mutex<Vec<crate::remote::lazy::BlindRead>>,
    /// Per pack: where the last neighbour read ended, and its size.
    pub tails: Mutex<HashMap<Digest, (u64, u64)>>,
    /// Permits of background GETs (readahead, neighbours, the rest of a large file).
    pub background: Arc<tokio::sync::Semaphore>,
    /// Permits of GETs for the rest of large files.
    pub rest: Arc<tokio::sync::Semaphore>,
    /// Permits of prefetch GETs (profiles, small roots): a class of their own, so that a long
    /// prefetch never holds up the readahead of a program reading now.
    pub prefetch: Arc<tokio::sync::Semaphore>,
    /// Chunks of background pieces still waiting for a permit, and how to send them at once
    /// (a reader now waits for one of them).
    pub queued: Mutex<HashMap<Digest, Arc<tokio::sync::Notify>>>,
    /// Set when the store is closing: background pieces not yet sent are dropped.
    pub stopping: std::sync::atomic::AtomicBool,
    /// What the mount read of each root, for its profile.
    pub recorder: Mutex<crate::remote::profile::Recorder>,
    /// Profiles found in S3 and used; GETs and bytes their prefetch asked for.
    pub profiles_used: AtomicU64,
    pub profile_gets: AtomicU64,
    pub profile_bytes: AtomicU64,
    /// Per root: what S3 sent for it.
    pub roots: Mutex<HashMap<Digest, crate::read::RootStats>>,
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    /// Bytes (uncompressed) fetched from S3 and checked.
    pub fetched_bytes: AtomicU64,
    /// GETs sent to prefetch small roots whole.
    pub prefetched_gets: AtomicU64,
    /// Large files read in many places whose rest was fetched in the background.
    pub whole_files: AtomicU64,
    /// Bytes (as stored) asked for ahead of a loader (see `Store::fetch_for_loader`).
    pub loader_bytes: AtomicU64,
    /// Files (by their first chunk) whose loader reads were fetched.
    pub loaded: Mutex<std::collections::HashSet<Digest>>,
    /// Background work started and not yet landed (see [`crate::Store::settle`]).
    pub pending: Pending,
}

/// A count of background tasks in flight, and a way to wait until there are none.
#[derive(Default)]
pub(crate) struct Pending {
    n: Mutex<usize>,
    idle: std::sync::Condvar,
}

/// Held by one background task, which reaches the store through it; dropping it (however the
/// task ends) counts the task done.
pub(crate) struct Task(Arc<crate::Store>);

impl std::ops::Deref for Task {
    type Target = Arc<crate::Store>;
    fn deref(&self) -> &Arc<crate::Store> {
        &self.0
    }
}

impl Pending {
    pub fn start(store: &Arc<crate::Store>) -> Task {
        *store.read.pending.n.lock().unwrap() += 1;
        Task(store.clone())
    }

    /// Waits until no task is in flight or `timeout` passed; whether none is.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        let n = self.n.lock().unwrap();
        let (n, _) = self.idle.wait_timeout_while(n, timeout, |n| *n > 0).unwrap();
        *n == 0
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        let p = &self.0.read.pending;
        let mut n = p.n.lock().unwrap();
        *n -= 1;
        if *n == 0 {
            p.idle.notify_all();
        }
    }
}

impl Default for ReadState {
    fn default() -> Self {
        ReadState {
            flights: Default::default(),
            windows: Default::default(),
            blind: Default::default(),
            tails: Default::default(),
            background: Arc::new(tokio::sync::Semaphore::new(crate::remote::lazy::BACKGROUND_GETS)),
            rest: Arc::new(tokio::sync::Semaphore::new(crate::remote::lazy::REST_GETS)),
            prefetch: Arc::new(tokio::sync::Semaphore::new(crate::remote::lazy::PREFETCH_GETS)),
            queued: Default::default(),
            stopping: Default::default(),
            recorder: Default::default(),
            profiles_used: AtomicU64::new(0),
            profile_gets: AtomicU64::new(0),
            profile_bytes: AtomicU64::new(0),
            roots: Default::default(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            fetched_bytes: AtomicU64::new(0),
            prefetched_gets: AtomicU64::new(0),
            whole_files: AtomicU64::new(0),
            loader_bytes: AtomicU64::new(0),
            loaded: Default::default(),
            pending: Pending::default(),
        }
    }
}

/// The open fetch pack and the recency of fetched packs.
#[derive(Default)]
pub(crate) struct Fetched {
    pub pack: Mutex<Option<PackWriter>>,
    /// Last read of each fetched pack, in memory only (a read never writes to record it).
    pub recency: Mutex<HashMap<u64, Instant>>,
}

impl Fetched {
    /// A fetched pack was written to now.
    pub fn touch_new(&self, id: u64) {
        self.recency.lock().unwrap().insert(id, Instant::now());
    }

    pub fn open_id(&self) -> Option<u64> {
        self.pack.lock().unwrap().as_ref().map(|w| w.id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stays_within_budget_and_keeps_recent() {
        let c = ChunkCache::new(100);
        let d = |i: u8| Digest([i; 32]);
        c.insert(d(1), Bytes::from(vec![0; 40]));
        c.insert(d(2), Bytes::from(vec![0; 40]));
        assert!(c.get(&d(1)).is_some()); // 1 is now the most recent
        c.insert(d(3), Bytes::from(vec![0; 40]));
        assert!(c.bytes() <= 100);
        assert!(c.get(&d(2)).is_none());
        assert!(c.get(&d(1)).is_some() && c.get(&d(3)).is_some());
        c.insert(d(4), Bytes::from(vec![0; 101]));
        assert!(c.get(&d(4)).is_none());
    }
}
