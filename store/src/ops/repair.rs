//! Repair: what `verify` finds damaged is dropped from the index, so that nothing trusts it
//! any more (a re-add of the source or a pull writes it again instead of deduplicating against
//! it), and, with S3 configured, damaged chunks are fetched again from there at once.

use crate::error::Result;
use crate::local::index::Batch;
use crate::model::digest::Digest;
use crate::ops::verify::{Damaged, VerifyReport};
use crate::store::Store;

/// What [`Store::repair`] found and did.
#[derive(Clone, Debug, Default)]
pub struct RepairReport {
    /// What verify found (every use of every damaged object).
    pub verify: VerifyReport,
    /// Damaged chunks fetched again from S3: stored here again, verified.
    pub refetched: Vec<Digest>,
    /// Damaged objects dropped from the index and not restored: a re-add of their source (or
    /// a pull of a root that has them) writes them again.
    pub dropped: Vec<Digest>,
    /// Missing objects (nothing to drop) that S3 did not restore either.
    pub missing: Vec<Digest>,
}

impl Store {
    /// Verifies the store and repairs what it can (see the module doc). Runs against readers,
    /// ingests and pulls: the drops happen under the gc lock, each object checked once more
    /// there, so an ingest never reuses an object while it is being dropped.
    pub fn repair(&self) -> Result<RepairReport> {
        let (verify, damaged) = self.check()?;
        let mut report = RepairReport { verify, ..Default::default() };
        let mut seen = std::collections::HashSet::new();
        let damaged: Vec<Damaged> = damaged.into_iter().filter(|d| seen.insert(d.digest())).collect();
        let mut to_fetch = Vec::new();
        {
            let _gc = self.gc_lock.write().unwrap();
            let mut b = Batch::default();
            for d in &damaged {
                match d {
                    Damaged::Record(digest) => {
                        // A tree or a file record: gone, or its bytes are wrong.
                        let tree = self.index.tree(digest)?;
                        let file = self.index.file(digest)?;
                        if tree.is_none() && file.is_none() {
                            report.missing.push(*digest);
                            continue;
                        }
                        if tree.is_some() && self.checked_tree(digest)?.is_err() {
                            b.delete_tree(digest);
                        }
                        if let Some(bytes) = file
                            && crate::FileRecord::decode(&bytes, digest).is_err()
                        {
                            b.delete_file(digest);
                        }
                        report.dropped.push(*digest);
                    }
                    Damaged::Chunk { file, index } => {
                        let id = file.chunks[*index].id;
                        let here = self.index.locator(&id)?.is_some();
                        if here && self.chunk_from_pack(&id).is_ok() {
                            continue; // Rewritten meanwhile (a fetch or an ingest): fine now.
                        }
                        if here {
                            b.delete_locator(&id);
                        }
                        to_fetch.push((d.clone(), here));
                    }
                }
            }
            self.commit(b)?;
        }
        self.clear_meta_caches();
        for (d, was_here) in to_fetch {
            let Damaged::Chunk { file, index } = &d else { continue };
            let id = file.chunks[*index].id;
            if self.remote.is_some() {
                match self.fetch_blocking(file, *index) {
                    Ok(Some(_)) if self.index.locator(&id)?.is_some() => {
                        tracing::info!(chunk = %id, "fetched again from S3");
                        report.refetched.push(id);
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(chunk = %id, "cannot fetch it again from S3: {e}"),
                }
            }
            if was_here { report.dropped.push(id) } else { report.missing.push(id) }
        }
        Ok(report)
    }
}
