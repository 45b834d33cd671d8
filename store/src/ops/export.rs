//! Export: a stored tree materialized as ordinary files, bit-exact.

use std::fs::{self, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::model::digest::Digest;
use crate::model::tree::EntryKind;
use crate::store::Store;

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
            let data = self.chunk(&rec, i)?;
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
        // The umask may have narrowed the mode given at creation. On the open file (fchmod),
        // never by path: the path may have been swapped for a symlink meanwhile.
        f.set_permissions(fs::Permissions::from_mode(mode)).at(path)?;
        Ok(rec.size)
    }
}
