//! The byte budget of data fetched from S3.
//!
//! Fetched chunks go into "fetched" packs (at most 16 MiB, or an eighth of the budget): the
//! unit of eviction. Their last read time is kept in memory only (a read never writes to the
//! index to record recency). When a fetched pack fills, and every few seconds in the daemon,
//! the least recently read are deleted with their locators until the rest, plus room for the
//! open pack, fit the budget. Their chunks stay known in S3 and are fetched again if read.
//! Data ingested or built here is never in a fetched pack, so never evicted.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::local::index::Batch;
use crate::local::pack;
use crate::model::chunker::MAX_SIZE;
use crate::store::Store;

/// Fetched packs are cut at this size (or an eighth of the cache budget, at least 1 MiB).
const FETCH_PACK_SIZE: u64 = 16 << 20;

impl Store {
    /// Notes a read of a local pack (for eviction order); memory only.
    pub(crate) fn touch_pack(&self, id: u64) {
        if self.remote.is_some() && self.opts.cache_bytes.is_some() {
            let mut r = self.fetched.recency.lock().unwrap();
            if let Some(t) = r.get_mut(&id) {
                *t = Instant::now();
            }
        }
    }

    /// Fetched packs with their sizes on disk.
    fn fetched_packs(&self) -> Result<Vec<(u64, u64)>> {
        Ok(self
            .index
            .fetched_packs()?
            .into_iter()
            .map(|id| (id, std::fs::metadata(pack::pack_path(&self.packs_dir, id)).map_or(0, |m| m.len())))
            .collect())
    }

    /// Bytes of fetched (evictable) data on disk.
    pub fn cache_bytes(&self) -> Result<u64> {
        Ok(self.fetched_packs()?.iter().map(|p| p.1).sum())
    }

    pub(crate) fn fetch_pack_size(&self) -> u64 {
        self.opts.cache_bytes.map_or(FETCH_PACK_SIZE, |b| (b / 8).clamp(1 << 20, FETCH_PACK_SIZE))
    }

    /// Evicts the least recently read fetched packs until they fit the cache budget, with room
    /// left for the open fetch pack to fill. Returns the bytes freed.
    pub fn evict(&self) -> Result<u64> {
        let Some(budget) = self.opts.cache_bytes else { return Ok(0) };
        let budget = budget.saturating_sub(self.fetch_pack_size() + MAX_SIZE as u64);
        let open = self.fetched.open_id();
        let mut packs = self.fetched_packs()?;
        let mut total: u64 = packs.iter().map(|p| p.1).sum();
        if total <= budget {
            return Ok(0);
        }
        let recency = self.fetched.recency.lock().unwrap().clone();
        packs.sort_by_key(|(id, _)| recency.get(id).copied());
        let mut freed = 0;
        for (id, len) in packs {
            if total <= budget {
                break;
            }
            if Some(id) == open {
                continue;
            }
            self.drop_pack(id)?;
            total -= len;
            freed += len;
            tracing::debug!(pack = id, bytes = len, "evicted");
        }
        Ok(freed)
    }

    /// Removes a pack and the locators pointing into it (found from the pack's own record
    /// headers, not by scanning the index).
    fn drop_pack(&self, id: u64) -> Result<()> {
        let path = pack::pack_path(&self.packs_dir, id);
        let ids = match pack::chunk_ids(&path) {
            Ok(ids) => ids,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let mut del = Batch::default();
        for c in ids {
            if self.index.locator(&c)?.is_some_and(|l| l.pack == id) {
                del.delete_locator(&c);
            }
        }
        self.remove_pack(id, del)
    }

    /// Forgets a pack in the index (in one commit with `batch`) and deletes its file.
    pub(crate) fn remove_pack(&self, id: u64, mut batch: Batch) -> Result<()> {
        batch.delete_pack(id);
        self.commit(batch)?;
        self.packs.forget(id);
        self.fetched.recency.lock().unwrap().remove(&id);
        let path = pack::pack_path(&self.packs_dir, id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(&path, e)),
            _ => Ok(()),
        }
    }

    /// The open fetch pack's id (gc leaves it alone).
    pub(crate) fn open_fetch_pack(&self) -> Option<u64> {
        self.fetched.open_id()
    }
}
