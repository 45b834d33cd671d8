//! Export: a stored tree materialized as ordinary files, bit-exact.
//!
//! The destination is the client's: every directory, file and symlink is created with the
//! client's rights (see `source.rs`), relative to the destination's descriptor, never
//! following a symlink (`O_EXCL | O_NOFOLLOW`, `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and
//! modes are set on the open descriptor (`fchmod`), never by path: a client who swaps a
//! created file for a symlink cannot turn the export into a chmod of another file.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use rayon::prelude::*;

use crate::error::{Error, IoContext, Result};
use crate::model::digest::Digest;
use crate::model::tree::EntryKind;
use crate::source::{self, Creds, as_client};
use crate::store::Store;

impl Store {
    /// Materializes tree `root` at `dest` (missing or an empty directory), bit-exact:
    /// contents, exec bits, symlinks, empty files and directories. Files are written in
    /// parallel, streamed chunk by chunk; runs of zero chunks become holes.
    pub fn export(&self, root: &Digest, dest: &Path) -> Result<u64> {
        self.export_as(root, dest, None)
    }

    /// [`Store::export`] with a client's rights over `dest` (`None`: this process's own).
    pub fn export_as(&self, root: &Digest, dest: &Path, creds: Option<&Creds>) -> Result<u64> {
        let dest_fd = as_client(creds, || -> std::io::Result<OwnedFd> {
            let created = match fs::create_dir(dest) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    fs::create_dir_all(dest)?;
                    true
                }
                Err(e) => return Err(e),
            };
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let fd = nix::fcntl::open(dest, flags, Mode::empty()).map_err(source::io)?;
            if created {
                nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(0o755)).map_err(source::io)?;
            }
            Ok(fd)
        })
        .at(dest)?;
        if !source::entries(&dest_fd).at(dest)?.is_empty() {
            return Err(Error::DestinationExists { path: dest.into() });
        }
        let mut files = Vec::new();
        self.export_dirs(root, dest, &dest_fd, Path::new(""), creds, &mut files)?;
        files
            .par_iter()
            .map(|(rel, digest, exec)| self.export_file(digest, dest, &dest_fd, rel, *exec, creds))
            .try_reduce(|| 0, |a, b| Ok(a + b))
    }

    /// Creates the directories and symlinks of `tree` under `dir` (at `rel` below the
    /// destination) and lists its files.
    fn export_dirs(
        &self,
        tree: &Digest,
        dest: &Path,
        dir: &OwnedFd,
        rel: &Path,
        creds: Option<&Creds>,
        files: &mut Vec<(PathBuf, Digest, bool)>,
    ) -> Result<()> {
        let t = self.tree(tree)?;
        for e in t.entries() {
            let name = OsStr::from_bytes(&e.name);
            let child = rel.join(name);
            let path = || dest.join(&child);
            match &e.kind {
                EntryKind::Dir { digest, .. } => {
                    let sub = as_client(creds, || -> std::io::Result<OwnedFd> {
                        nix::sys::stat::mkdirat(dir.as_fd(), name, Mode::from_bits_truncate(0o755))
                            .map_err(source::io)?;
                        let sub = source::open_dir(dir.as_fd(), name)?;
                        // Whatever the umask, on the descriptor.
                        nix::sys::stat::fchmod(sub.as_fd(), Mode::from_bits_truncate(0o755)).map_err(source::io)?;
                        Ok(sub)
                    })
                    .at(path())?;
                    self.export_dirs(digest, dest, &sub, &child, creds, files)?;
                }
                EntryKind::File { digest, executable, .. } => files.push((child, *digest, *executable)),
                EntryKind::Symlink { target } => {
                    as_client(creds, || nix::unistd::symlinkat(OsStr::from_bytes(target), dir.as_fd(), name))
                        .map_err(source::io)
                        .at(path())?;
                }
            }
        }
        Ok(())
    }

    fn export_file(
        &self,
        digest: &Digest,
        dest: &Path,
        dest_fd: &OwnedFd,
        rel: &Path,
        exec: bool,
        creds: Option<&Creds>,
    ) -> Result<u64> {
        let path = dest.join(rel);
        let mode = if exec { 0o755 } else { 0o644 };
        let mut f = as_client(creds, || create_beneath(dest_fd, rel, mode)).at(&path)?;
        // The record is checked against the file digest as it is loaded, each chunk against its
        // id as it is read: what is written is the file's content.
        let rec = self.file(digest)?;
        let mut hole = false;
        for i in 0..rec.chunks.len() {
            let data = self.chunk(&rec, i)?;
            if data.iter().all(|&b| b == 0) {
                f.seek(SeekFrom::Current(data.len() as i64)).at(&path)?;
                hole = true;
            } else {
                f.write_all(&data).at(&path)?;
            }
        }
        if hole {
            f.set_len(rec.size).at(&path)?;
        }
        // The umask may have narrowed the mode given at creation: set it on the descriptor.
        f.set_permissions(fs::Permissions::from_mode(mode)).at(&path)?;
        Ok(rec.size)
    }
}

/// Creates the new file `rel` beneath `top`: its directory opened without following any
/// symlink, the file itself with `O_CREAT | O_EXCL | O_NOFOLLOW`.
fn create_beneath(top: &OwnedFd, rel: &Path, mode: u32) -> std::io::Result<File> {
    let name = rel.file_name().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    let parent = rel.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = match parent {
        Some(p) => Some(source::open_dir_beneath(top.as_fd(), p)?),
        None => None,
    };
    let at = dir.as_ref().map_or(top.as_fd(), |d| d.as_fd());
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(at, name, flags, Mode::from_bits_truncate(mode)).map(File::from).map_err(source::io)
}
