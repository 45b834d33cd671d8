//! Whole-tree operations over stored roots: export, verify, stats.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::digest::{Digest, Kind};
use crate::error::{Error, IoContext, Result};
use crate::index::Cf;
use crate::store::Store;
use crate::tree::{EntryKind, Tree};

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

/// Counts and sizes for `store stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
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

fn join(base: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if base.is_empty() { name.into_owned() } else { format!("{base}/{name}") }
}

impl Store {
    /// Materializes tree `root` at `dest` (missing or an empty directory), bit-exact:
    /// contents, exec bits, symlinks, empty files and directories. Files are written in
    /// parallel, streamed chunk by chunk; runs of zero chunks become holes.
    pub fn export(&self, root: &Digest, dest: &Path) -> Result<u64> {
        match fs::read_dir(dest) {
            Ok(mut it) => {
                if it.next().is_some() {
                    return Err(Error::DestinationExists { path: dest.into() });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::create_dir_all(dest).at(dest)?,
            Err(e) => return Err(Error::io(dest, e)),
        }
        let mut files = Vec::new();
        self.export_dirs(root, dest, &mut files)?;
        files
            .par_iter()
            .map(|(path, digest, exec)| self.export_file(digest, path, *exec))
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    fn export_dirs(&self, tree: &Digest, dir: &Path, files: &mut Vec<(PathBuf, Digest, bool)>) -> Result<()> {
        let t = self.tree(tree)?;
        for e in t.entries() {
            let path = dir.join(std::ffi::OsStr::from_bytes(&e.name));
            match &e.kind {
                EntryKind::Dir { digest, .. } => {
                    fs::create_dir(&path).at(&path)?;
                    self.export_dirs(digest, &path, files)?;
                }
                EntryKind::File { digest, executable, .. } => files.push((path, *digest, *executable)),
                EntryKind::Symlink { target } => {
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(target), &path).at(&path)?;
                }
            }
        }
        Ok(())
    }

    fn export_file(&self, digest: &Digest, path: &Path, exec: bool) -> Result<u64> {
        let mode = if exec { 0o755 } else { 0o644 };
        let mut f = OpenOptions::new().write(true).create_new(true).mode(mode).open(path).at(path)?;
        // The record is checked against the file digest as it is loaded, each chunk against its
        // id as it is read: what is written is the file's content.
        let rec = self.file(digest)?;
        let mut hole = false;
        for i in 0..rec.chunks.len() {
            let data = self.file_chunk(&rec.chunks[i..])?;
            if data.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(data.len() as i64)).at(path)?;
                hole = true;
            } else {
                f.write_all(&data).at(path)?;
            }
        }
        if hole {
            f.set_len(rec.size).at(path)?;
        }
        // The umask may have narrowed the mode given at creation.
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)?;
        Ok(rec.size)
    }

    /// Re-hashes every tree, file and chunk reachable from the roots, reading chunks from the
    /// packs (not the memory cache). Damage is reported, not returned as an error, so that one
    /// run lists all of it.
    pub fn verify(&self) -> Result<VerifyReport> {
        let mut report = VerifyReport::default();
        // file digest -> (root, path) of its first use
        let mut files: HashMap<Digest, (String, String)> = HashMap::new();
        let mut seen_trees = HashSet::new();
        for root in self.roots()? {
            report.roots += 1;
            let mut stack = vec![(root.digest, String::new())];
            while let Some((d, path)) = stack.pop() {
                if !seen_trees.insert(d) {
                    continue;
                }
                report.trees += 1;
                let problem =
                    |detail: String| Problem { root: root.name.clone(), path: path.clone(), digest: d, detail };
                let bytes = match self.index.get(Cf::Trees, d.as_bytes())? {
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
            let data = self.chunk_uncached(&c.id).map_err(|e| (c.id, e.to_string()))?;
            if data.len() != c.len as usize {
                return Err((c.id, "chunk length differs from the file record".into()));
            }
        }
        Ok(rec.size)
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
        self.index.scan(Cf::Trees, |_, _| {
            s.trees += 1;
            true
        })?;
        self.index.scan(Cf::Files, |_, _| {
            s.files += 1;
            true
        })?;
        self.scan_chunks(|_, loc| {
            s.chunks += 1;
            s.unique_bytes += u64::from(loc.raw_len);
            s.stored_bytes += u64::from(loc.stored_len);
        })?;
        for (_, info) in self.packs()? {
            s.packs += 1;
            s.pack_bytes += info.size;
        }
        Ok(s)
    }
}

/// Writes a stored file to `path` (used by tests and tools that want one file out).
pub fn export_one(store: &Store, digest: &Digest, path: &Path) -> Result<u64> {
    let mut f = File::create(path).at(path)?;
    store.write_file_to(digest, &mut f, path)
}
