//! Verify: every tree, file record and chunk reachable from the roots, re-hashed, and the
//! signatures of roots found in S3 checked against the keys trusted now.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use crate::error::Result;
use crate::model::digest::{Digest, Kind};
use crate::model::records::FileRecord;
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

/// The damaged objects pass 1 and 2 of [`Store::verify`] found: trees by digest, and files by
/// digest with the object that is damaged in them (the record or one of its chunks).
struct Damage<'a> {
    trees: &'a HashMap<Digest, String>,
    files: &'a HashMap<Digest, (Digest, String)>,
}

fn join(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.is_empty() { name.into_owned() } else { format!("{base}/{name}") }
}

impl Store {
    /// Re-hashes every tree, file and chunk reachable from the roots, reading chunks from the
    /// packs (not the memory cache); a chunk that is not here but has a place in S3 is left to
    /// be checked when it is fetched. Damage is reported, not returned as an error, so that one
    /// run lists all of it: one [`Problem`] for every root and path that uses a damaged object.
    pub fn verify(&self) -> Result<VerifyReport> {
        Ok(self.check()?.0)
    }

    /// [`Store::verify`], and the damaged objects themselves (for `repair`).
    pub(crate) fn check(&self) -> Result<(VerifyReport, Vec<Damaged>)> {
        let mut report = VerifyReport::default();
        let roots = self.roots()?;
        // Pass 1: every tree once, checked; the file digests they name.
        let mut files: HashSet<Digest> = HashSet::new();
        let mut bad_trees: HashMap<Digest, String> = HashMap::new();
        let mut seen_trees = HashSet::new();
        for root in &roots {
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
            let mut stack = vec![root.digest];
            while let Some(d) = stack.pop() {
                if !seen_trees.insert(d) {
                    continue;
                }
                report.trees += 1;
                match self.checked_tree(&d)? {
                    Ok(tree) => {
                        for e in tree.entries() {
                            match &e.kind {
                                EntryKind::Dir { digest, .. } => stack.push(*digest),
                                EntryKind::File { digest, .. } => {
                                    files.insert(*digest);
                                }
                                EntryKind::Symlink { .. } => {}
                            }
                        }
                    }
                    Err(detail) => {
                        bad_trees.insert(d, detail);
                    }
                }
            }
        }
        drop(seen_trees);
        // Pass 2: every file once, in parallel.
        let results: Vec<(u64, Option<FileDamage>)> = files
            .par_iter()
            .map(|digest| match self.verify_file(digest) {
                Ok(size) => (size, None),
                Err((bad, detail)) => (0, Some((*digest, bad, detail))),
            })
            .collect();
        report.files = files.len() as u64;
        drop(files);
        let mut damaged: Vec<Damaged> = bad_trees.keys().map(|d| Damaged::Record(*d)).collect();
        let mut bad_files: HashMap<Digest, (Digest, String)> = HashMap::new();
        for (size, p) in results {
            report.bytes += size;
            if let Some((file, bad, detail)) = p {
                bad_files.insert(file, (bad.digest(), detail));
                damaged.push(bad);
            }
        }
        // Pass 3, only when something is damaged: every root and path that uses it.
        if !bad_trees.is_empty() || !bad_files.is_empty() {
            let damage = Damage { trees: &bad_trees, files: &bad_files };
            let mut clean = HashSet::new();
            for root in &roots {
                self.find_uses(&root.name, root.digest, &damage, &mut clean, &mut report.problems)?;
            }
        }
        report.problems.sort_by(|a, b| (&a.root, &a.path).cmp(&(&b.root, &b.path)));
        Ok((report, damaged))
    }

    /// A tree's bytes from the index, checked: `Ok(Err(what is wrong))` if damaged.
    pub(crate) fn checked_tree(&self, d: &Digest) -> Result<std::result::Result<Tree, String>> {
        let Some(bytes) = self.index.tree(d)? else { return Ok(Err("tree is missing".into())) };
        if Digest::of(Kind::Tree, &bytes) != *d {
            return Ok(Err("tree encoding does not match its digest".into()));
        }
        Ok(Tree::decode(&bytes, d).map_err(|e| e.to_string()))
    }

    /// Walks `root` depth-first (no recursion: trees may nest deeper than a thread's stack),
    /// reporting each use of a damaged object; a subtree found clean is not entered again.
    fn find_uses(
        &self,
        root: &str,
        top: Digest,
        damage: &Damage<'_>,
        clean: &mut HashSet<Digest>,
        problems: &mut Vec<Problem>,
    ) -> Result<()> {
        struct Frame {
            digest: Digest,
            tree: Tree,
            path: String,
            next: usize,
            found: bool,
        }
        let problem = |path: String, digest: Digest, detail: &str| Problem {
            root: root.to_string(),
            path,
            digest,
            detail: detail.to_string(),
        };
        if let Some(detail) = damage.trees.get(&top) {
            problems.push(problem(String::new(), top, detail));
            return Ok(());
        }
        if clean.contains(&top) {
            return Ok(());
        }
        let Ok(tree) = self.checked_tree(&top)? else { return Ok(()) };
        let mut stack = vec![Frame { digest: top, tree, path: String::new(), next: 0, found: false }];
        while let Some(f) = stack.last_mut() {
            let Some(e) = f.tree.entries().get(f.next) else {
                let done = stack.pop().expect("a frame is on the stack");
                if done.found {
                    if let Some(parent) = stack.last_mut() {
                        parent.found = true;
                    }
                } else {
                    clean.insert(done.digest);
                }
                continue;
            };
            f.next += 1;
            let p = join(&f.path, &e.name);
            match &e.kind {
                EntryKind::Dir { digest, .. } if clean.contains(digest) => {}
                EntryKind::Dir { digest, .. } => {
                    if let Some(detail) = damage.trees.get(digest) {
                        problems.push(problem(p, *digest, detail));
                        f.found = true;
                    } else if let Ok(tree) = self.checked_tree(digest)? {
                        let digest = *digest;
                        stack.push(Frame { digest, tree, path: p, next: 0, found: false });
                    }
                }
                EntryKind::File { digest, .. } => {
                    if let Some((bad, detail)) = damage.files.get(digest) {
                        problems.push(problem(p, *bad, detail));
                        f.found = true;
                    }
                }
                EntryKind::Symlink { .. } => {}
            }
        }
        Ok(())
    }

    /// Checks one file; on failure returns the damaged object and what is wrong.
    fn verify_file(&self, digest: &Digest) -> std::result::Result<u64, (Damaged, String)> {
        let rec = self.file(digest).map_err(|e| (Damaged::Record(*digest), e.to_string()))?;
        for (i, c) in rec.chunks.iter().enumerate() {
            let bad = || Damaged::Chunk { file: rec.clone(), index: i };
            // Not here but in S3 (a lazily read root): checked when it is fetched.
            let here = self.index.has_chunk(&c.id).map_err(|e| (bad(), e.to_string()))?;
            if !here && self.remote_place(&c.id).is_ok_and(|p| p.is_some()) {
                continue;
            }
            let data = self.chunk_from_pack(&c.id).map_err(|e| (bad(), e.to_string()))?;
            if data.len() != c.len as usize {
                return Err((bad(), "chunk length differs from the file record".into()));
            }
        }
        Ok(rec.size)
    }
}

/// A damaged file: its digest, the damaged object in it, and what is wrong.
type FileDamage = (Digest, Damaged, String);

/// A damaged or missing object found by [`Store::check`].
#[derive(Clone, Debug)]
pub(crate) enum Damaged {
    /// A tree or a file record (by its digest).
    Record(Digest),
    /// Chunk `index` of a file.
    Chunk { file: Arc<FileRecord>, index: usize },
}

impl Damaged {
    pub(crate) fn digest(&self) -> Digest {
        match self {
            Damaged::Record(d) => *d,
            Damaged::Chunk { file, index } => file.chunks[*index].id,
        }
    }
}
