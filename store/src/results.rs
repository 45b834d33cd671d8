//! Build results and what the mount shows at its top level.
//!
//! A build result is a root named by the artifact's *input digest* in hex: `roots[<hex>] = output
//! tree`. It is committed in the same batch as the output's data, with the canonical recipe that
//! produced it (`meta["recipe:" + input]`) and the artifact's name and aliases
//! (`meta["alias:" + name] = input`, pointing at the newest build of that name).
//!
//! The mount's top level shows one directory per root: a root whose name is a digest in hex is
//! shown under that name (build results, and `store add` without `--name`); a root with any other
//! name is shown under its tree's digest.

use std::path::Path;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::index::{Batch, Cf};
use crate::ingest::IngestReport;
use crate::store::Store;

const RECIPE: &[u8] = b"recipe:";
const ALIAS: &[u8] = b"alias:";
const FETCHED: &[u8] = b"fetched:";

fn key(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    [prefix, rest].concat()
}

impl Store {
    /// The output tree of the build whose input digest is `input`, if this store has it.
    pub fn result(&self, input: &Digest) -> Result<Option<Digest>> {
        Ok(self.index.get(Cf::Roots, input.to_hex().as_bytes())?.and_then(|v| Digest::from_slice(&v)))
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
        self.ingest_then(output, |root, batch| {
            batch.put(Cf::Roots, input.to_hex().as_bytes(), root.as_bytes());
            batch.put(Cf::Meta, &key(RECIPE, input.as_bytes()), recipe);
            for n in names {
                batch.put(Cf::Meta, &key(ALIAS, n.as_bytes()), input.as_bytes());
            }
        })
    }

    /// Points names at existing results (cache hits, perhaps under new aliases), in one commit
    /// and only where a name points elsewhere.
    pub fn set_aliases(&self, names: &[(Digest, String)]) -> Result<()> {
        let mut b = Batch::default();
        for (input, n) in names {
            if self.alias(n)?.as_ref() != Some(input) {
                b.put(Cf::Meta, &key(ALIAS, n.as_bytes()), input.as_bytes());
            }
        }
        if b.is_empty() {
            return Ok(());
        }
        self.commit(b)
    }

    /// The canonical recipe recorded with a result.
    pub fn recipe(&self, input: &Digest) -> Result<Option<Vec<u8>>> {
        self.index.get(Cf::Meta, &key(RECIPE, input.as_bytes()))
    }

    /// The input digest of the newest result built under an artifact name or alias.
    pub fn alias(&self, name: &str) -> Result<Option<Digest>> {
        Ok(self.index.get(Cf::Meta, &key(ALIAS, name.as_bytes()))?.and_then(|v| Digest::from_slice(&v)))
    }

    /// The tree shown at the mount's top level under `name` (a digest in hex), if any.
    pub fn top_level(&self, name: &Digest) -> Result<Option<Digest>> {
        if let Some(tree) = self.result(name)? {
            return Ok(Some(tree));
        }
        if self.roots()?.iter().any(|r| r.digest == *name) {
            return Ok(Some(*name));
        }
        self.remote_result(name)
    }

    /// The output of the result `input`: here, or (with S3) published by another host, whose
    /// metadata comes now and data when read. While S3 is unreachable a result only there is
    /// "not there" (and the error is logged).
    pub fn find_result(&self, input: &Digest) -> Result<Option<Digest>> {
        match self.result(input)? {
            Some(t) => Ok(Some(t)),
            None => self.remote_result(input),
        }
    }

    fn remote_result(&self, input: &Digest) -> Result<Option<Digest>> {
        if self.has_remote() {
            match self.find_root(&input.to_hex()) {
                Ok(found) => return Ok(found),
                Err(e) => tracing::warn!(%input, "cannot look the name up in S3: {e}"),
            }
        }
        Ok(None)
    }

    /// Every `(name, tree)` the mount shows at its top level, sorted by name, without duplicates.
    pub fn top_level_entries(&self) -> Result<Vec<(Digest, Digest)>> {
        let mut out: Vec<(Digest, Digest)> =
            self.roots()?.into_iter().map(|r| (r.name.parse::<Digest>().unwrap_or(r.digest), r.digest)).collect();
        out.sort();
        out.dedup_by_key(|e| e.0);
        Ok(out)
    }

    /// The recipe of `input`, or an error naming the digest.
    pub fn recipe_or_err(&self, input: &Digest) -> Result<Vec<u8>> {
        self.recipe(input)?.ok_or(Error::Missing { what: "recipe", digest: *input })
    }

    /// The tree a downloaded source (named by its BLAKE3) was stored as, if it was.
    pub fn fetched_source(&self, blake3: &str) -> Result<Option<Digest>> {
        let tree = self.index.get(Cf::Meta, &key(FETCHED, blake3.as_bytes()))?.and_then(|v| Digest::from_slice(&v));
        Ok(match tree {
            Some(t) if self.has_tree(&t)? => Some(t),
            _ => None,
        })
    }

    /// Ingests a downloaded source's directory and remembers it by the download's BLAKE3.
    pub fn add_fetched_source(&self, dir: &Path, blake3: &str) -> Result<Digest> {
        let r = self
            .ingest_then(dir, |root, batch| batch.put(Cf::Meta, &key(FETCHED, blake3.as_bytes()), root.as_bytes()))?;
        Ok(r.root)
    }
}
