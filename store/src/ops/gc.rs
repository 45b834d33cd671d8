//! Garbage collection: every tree, file record and chunk locator no root (and no pin) reaches
//! is dropped, and the packs left holding no reachable chunk are deleted.
//!
//! Why nothing is lost while writers run: a writer that may reuse what the index holds
//! (ingest, lazy lookup, pull, `set_root`, `pin`) holds `gc_lock` shared from its first
//! "is this already stored?" to its commit; gc holds it exclusively. So every root gc sees was
//! committed whole, and nothing a writer decided to reuse disappears before the root naming it
//! exists. Lazy fetches do not wait for gc: while it runs they serve what they fetch from
//! memory without keeping it on disk. (A generation scheme would let ingests run during the
//! mark, at the cost of tracking every object an ingest touches; gc is an operator's command
//! and the lock is held for one pass over the index, so the simpler rule was chosen.)

use std::collections::HashSet;

use crate::error::Result;
use crate::local::index::Batch;
use crate::model::digest::Digest;
use crate::model::records::FileRecord;
use crate::model::tree::{EntryKind, Tree};
use crate::store::Store;

/// What a garbage collection freed.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub packs_removed: u64,
    pub bytes_freed: u64,
    pub chunks_dropped: u64,
    pub files_dropped: u64,
    pub trees_dropped: u64,
}

/// Deletes are committed in batches of this many (a store of millions is not one batch).
const BATCH: usize = 100_000;

impl Store {
    /// Removes what no root and no pin reaches. See the module doc for why it is safe to run
    /// while other commands write.
    pub fn gc(&self) -> Result<GcReport> {
        let _gc = self.gc_lock.write().unwrap();
        let (mut trees, mut files, mut chunks) = (HashSet::new(), HashSet::new(), HashSet::new());
        let mut stack: Vec<Digest> = self.roots()?.into_iter().map(|r| r.digest).collect();
        stack.extend(self.pinned());
        while let Some(t) = stack.pop() {
            if !trees.insert(t) {
                continue;
            }
            let Some(bytes) = self.index.tree(&t)? else { continue };
            for e in Tree::decode(&bytes, &t)?.entries() {
                match &e.kind {
                    EntryKind::Dir { digest, .. } => stack.push(*digest),
                    EntryKind::File { digest, .. } => {
                        if files.insert(*digest)
                            && let Some(rec) = self.index.file(digest)?
                        {
                            chunks.extend(FileRecord::decode(&rec, digest)?.chunks.iter().map(|c| c.id));
                        }
                    }
                    EntryKind::Symlink { .. } => {}
                }
            }
        }
        let mut report = GcReport::default();
        let mut dead = Batch::default();
        let mut err = None;
        let mut flush = |dead: &mut Batch| {
            if dead.len() >= BATCH && err.is_none() {
                err = self.commit(std::mem::take(dead)).err();
            }
            err.is_none()
        };
        self.index.for_each_tree(|d, _| {
            if !trees.contains(&d) {
                dead.delete_tree(&d);
                report.trees_dropped += 1;
            }
            flush(&mut dead)
        })?;
        self.index.for_each_file(|d, _| {
            if !files.contains(&d) {
                dead.delete_file(&d);
                report.files_dropped += 1;
            }
            flush(&mut dead)
        })?;
        let mut live_packs = HashSet::new();
        self.index.for_each_chunk(|id, loc| {
            match loc {
                Ok(l) if chunks.contains(&id) => drop(live_packs.insert(l.pack)),
                _ => {
                    dead.delete_locator(&id);
                    report.chunks_dropped += 1;
                }
            }
            flush(&mut dead)
        })?;
        if let Some(e) = err {
            return Err(e);
        }
        self.commit(dead)?;
        self.clear_meta_caches();
        let open = self.open_fetch_pack();
        for (id, info) in self.index.packs()? {
            if live_packs.contains(&id) || Some(id) == open {
                continue;
            }
            let path = crate::local::pack::pack_path(&self.packs_dir, id);
            let len = std::fs::metadata(&path).map_or(info.size, |m| m.len());
            self.remove_pack(id, Batch::default())?;
            report.packs_removed += 1;
            report.bytes_freed += len;
        }
        Ok(report)
    }
}
