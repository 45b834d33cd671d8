//! Build results and what the mount shows at its top level.
//!
//! A build result is a root named by the artifact's *input digest* in hex: `roots[<hex>] = output
//! tree`. It is committed in the same batch as the output's data, with the canonical recipe that
//! produced it and the artifact's name and aliases (each pointing at the newest build of that
//! name). Downloaded sources are remembered by the BLAKE3 of the download.
//!
//! The mount's top level shows one directory per root: a root whose name is a digest in hex is
//! shown under that name (build results, and `store add` without `--name`); a root with any other
//! name is shown under its tree's digest.

use std::path::Path;

use crate::error::{Error, Result};
use crate::ingest::{IngestReport, Source};
use crate::local::index::{Batch, Meta};
use crate::model::digest::Digest;
use crate::store::Store;

impl Store {
    /// The output tree of the build whose input digest is `input`, if this store has it.
    pub fn result(&self, input: &Digest) -> Result<Option<Digest>> {
        self.index.root(&input.to_hex())
    }

    /// Ingests a build's output directory and commits, in one batch with its data, the result
    /// `input → tree`, the recipe that produced it and the names pointing at it.
    pub fn publish_result(
        &self,
        output: &Path,
        input: &Digest,
        recipe: &[u8],
        names: &[String],
    ) -> Result<IngestReport> {
        // The build's own output: read with the daemon's rights (no process of the build
        // is left to change it).
        self.ingest_then(Source::own(output), |store, root, batch| {
            store.put_root(batch, &input.to_hex(), root)?;
            batch.put_meta(Meta::Recipe(input), recipe);
            for n in names {
                batch.put_meta(Meta::Alias(n), input.as_bytes());
            }
            Ok(())
        })
    }

    /// Points names at existing results (cache hits, perhaps under new aliases), in one commit
    /// and only where a name points elsewhere.
    pub fn set_aliases(&self, names: &[(Digest, String)]) -> Result<()> {
        let mut b = Batch::default();
        for (input, n) in names {
            if self.alias(n)?.as_ref() != Some(input) {
                b.put_meta(Meta::Alias(n), input.as_bytes());
            }
        }
        self.commit(b)
    }

    /// The canonical recipe recorded with a result.
    pub fn recipe(&self, input: &Digest) -> Result<Option<Vec<u8>>> {
        self.index.meta(Meta::Recipe(input))
    }

    /// The recipe of `input`, or an error naming the digest.
    pub fn recipe_or_err(&self, input: &Digest) -> Result<Vec<u8>> {
        self.recipe(input)?.ok_or(Error::Missing { what: "recipe", digest: *input })
    }

    /// Every `(name, tree)` the mount shows at its top level, sorted by name, without duplicates.
    pub fn top_level(&self) -> Result<Vec<(Digest, Digest)>> {
        let mut out: Vec<(Digest, Digest)> =
            self.roots()?.into_iter().map(|r| (r.name.parse::<Digest>().unwrap_or(r.digest), r.digest)).collect();
        out.sort();
        out.dedup_by_key(|e| e.0);
        Ok(out)
    }

    /// The tree a downloaded source (named by its BLAKE3) was stored as, if it still is.
    pub fn fetched_source(&self, blake3: &str) -> Result<Option<Digest>> {
        let tree = self.index.meta(Meta::FetchedSource(blake3))?.and_then(|v| Digest::from_slice(&v));
        Ok(match tree {
            Some(t) if self.has_tree(&t)? => Some(t),
            _ => None,
        })
    }

    /// Ingests a downloaded source's directory, remembers it by the download's BLAKE3, and pins
    /// it for as long as the guard lives.
    pub fn add_fetched_source(&self, dir: &Path, blake3: &str) -> Result<(Digest, crate::Pin)> {
        let writer = self.gc_lock.read().unwrap();
        let r = self.ingest_locked(Source::own(dir), |_, root, batch| {
            batch.put_meta(Meta::FetchedSource(blake3), root.as_bytes());
            Ok(())
        })?;
        let pin = self.pin_held(r.root);
        drop(writer);
        Ok((r.root, pin))
    }
}
