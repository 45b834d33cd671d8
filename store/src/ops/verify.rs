//! Verify: every tree, file record and chunk reachable from the roots, re-hashed, and the
//! signatures of roots found in S3 checked against the keys trusted now.

use std::collections::{HashMap, HashSet};

use rayon::prelude::*;

use crate::error::Result;
use crate::model::digest::{Digest, Kind};
use crate::model::tree::{EntryKind, Tree};
use crate::store::Store;

/// One problem found by [`Store::verify`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Root name and path inside it where the damaged object is used.
    pub root: String,
    pub path: String,
    /// The damaged (or missing) object.
    pub digest: Digest,
    pub detail: String,
}

/// What [`Store::verify`] checked and found.
#[derive(Clone, Debug, Default)]
pub struct VerifyReport {
    pub roots: u64,
    pub trees: u64,
    pub files: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

fn join(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.is_empty() { name.into_owned() } else { format!("{base}/{name}") }
}

impl Store {
    /// Re-hashes every tree, file and chunk reachable from the roots, reading chunks from the
    /// packs (not the memory cache); a chunk that is not here but has a place in S3 is left to
    /// be checked when it is fetched. Damage is reported, not returned as an error, so that one
    /// run lists all of it.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        // file digest -> (root, path) of its first use
        let mut files: HashMap<Digest, (String, String)> = HashMap::new();
        let mut seen_trees = HashSet::new();
        for root in self.roots()? {
            report.roots += 1;
            // A root found in S3: signed by a key trusted now (keys may have been dropped).
            if self.opts.trust.required()
                && self.root_object(&root.name)?.is_some()
                && self.signer(&root.name)?.is_none()
            {
                report.problems.push(Problem {
                    root: root.name.clone(),
                    path: String::new(),
                    digest: root.digest,
                    detail: format!("came from S3, and no trusted key ({}) signed it", self.opts.trust.key_names()),
                });
            }
            let mut stack = vec![(root.digest, String::new())];
            while let Some((d, path)) = stack.pop() {
                if !seen_trees.insert(d) {
                    continue;
                }
                report.trees += 1;
                let problem =
                    |detail: String| Problem { root: root.name.clone(), path: path.clone(), digest: d, detail };
                let bytes = match self.index.tree(&d)? {
                    Some(b) => b,
                    None => {
                        report.problems.push(problem("tree is missing".into()));
                        continue;
                    }
                };
                if Digest::of(Kind::Tree, &bytes) != d {
                    report.problems.push(problem("tree encoding does not match its digest".into()));
                    continue;
                }
                let tree = match Tree::decode(&bytes, &d) {
                    Ok(t) => t,
                    Err(e) => {
                        report.problems.push(problem(e.to_string()));
                        continue;
                    }
                };
                for e in tree.entries() {
                    let p = join(&path, &e.name);
                    match &e.kind {
                        EntryKind::Dir { digest, .. } => stack.push((*digest, p)),
                        EntryKind::File { digest, .. } => {
                            files.entry(*digest).or_insert((root.name.clone(), p));
                        }
                        EntryKind::Symlink { .. } => {}
                    }
                }
            }
        }
        let results: Vec<(u64, Option<Problem>)> = files
            .par_iter()
            .map(|(digest, (root, path))| match self.verify_file(digest) {
                Ok(size) => (size, None),
                Err((bad, detail)) => {
                    (0, Some(Problem { root: root.clone(), path: path.clone(), digest: bad, detail }))
                }
            })
            .collect();
        report.files = files.len() as u64;
        for (size, p) in results {
            report.bytes += size;
            report.problems.extend(p);
        }
        report.problems.sort_by(|a, b| (&a.root, &a.path).cmp(&(&b.root, &b.path)));
        Ok(report)
    }

    /// Checks one file; on failure returns the damaged object's digest and what is wrong.
    fn verify_file(&self, digest: &Digest) -> std::result::Result<u64, (Digest, String)> {
        let rec = self.file(digest).map_err(|e| (*digest, e.to_string()))?;
        for c in &rec.chunks {
            // Not here but in S3 (a lazily read root): checked when it is fetched.
            let here = self.index.has_chunk(&c.id).map_err(|e| (c.id, e.to_string()))?;
            if !here && self.remote_place(&c.id).is_ok_and(|p| p.is_some()) {
                continue;
            }
            let data = self.chunk_from_pack(&c.id).map_err(|e| (c.id, e.to_string()))?;
            if data.len() != c.len as usize {
                return Err((c.id, "chunk length differs from the file record".into()));
            }
        }
        Ok(rec.size)
    }
}
