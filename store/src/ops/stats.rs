//! Stats: object counts and byte totals.

use std::collections::HashSet;

use crate::error::Result;
use crate::model::digest::Digest;
use crate::store::Store;

/// Counts and sizes for `store stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    pub roots: u64,
    pub trees: u64,
    pub files: u64,
    pub chunks: u64,
    pub packs: u64,
    /// Size of the distinct root trees, as they would be exported.
    pub logical_bytes: u64,
    /// Uncompressed bytes of distinct chunks.
    pub unique_bytes: u64,
    /// Compressed bytes of those chunks in packs.
    pub stored_bytes: u64,
    /// Size of pack files on disk (including chunks no longer referenced).
    pub pack_bytes: u64,
}

impl Store {
    /// Bytes of pack files (for the mount's `statfs`).
    pub fn pack_bytes(&self) -> Result<u64> {
        Ok(self.index.packs()?.iter().map(|(_, i)| i.size).sum())
    }

    /// Object counts and byte totals.
    pub fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        let roots = self.roots()?;
        s.roots = roots.len() as u64;
        let distinct: HashSet<Digest> = roots.iter().map(|r| r.digest).collect();
        for d in distinct {
            s.logical_bytes += self.tree(&d)?.size();
        }
        self.index.for_each_tree(|_, _| {
            s.trees += 1;
            true
        })?;
        self.index.for_each_file(|_, _| {
            s.files += 1;
            true
        })?;
        let mut bad = None;
        self.index.for_each_chunk(|_, loc| match loc {
            Ok(loc) => {
                s.chunks += 1;
                s.unique_bytes += u64::from(loc.raw_len);
                s.stored_bytes += u64::from(loc.stored_len);
                true
            }
            Err(e) => {
                bad = Some(e);
                false
            }
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        for (_, info) in self.index.packs()? {
            s.packs += 1;
            s.pack_bytes += info.size;
        }
        Ok(s)
    }
}
