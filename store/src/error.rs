//! The store's one error type. Every variant names what it is about: a path, a digest, a store.

use std::io;
use std::path::{Path, PathBuf};

use crate::Digest;

/// Errors of the store. Messages are complete sentences fit for a user's terminal.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },

    #[error("{}: the disk is full ({source}); nothing was committed", path.display())]
    DiskFull { path: PathBuf, source: io::Error },

    #[error("{}: cannot store a {kind}; only regular files, directories and symlinks can be stored", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },

    #[error("{}: the file changed while it was being read; nothing was committed", path.display())]
    Changed { path: PathBuf },

    #[error("{}: not a vorpalfs store (it is not empty and has no {marker} file)", path.display())]
    NotAStore { path: PathBuf, marker: &'static str },

    #[error("{}: store format {found} is not supported by this vorpalfs (it reads format {supported})", path.display())]
    Version { path: PathBuf, found: String, supported: u32 },

    #[error("store {} is in use by another process{holder}", path.display())]
    Locked { path: PathBuf, holder: String },

    #[error("index {}: {message}", path.display())]
    Index { path: PathBuf, message: String },

    #[error("{what} {digest} is not in the store")]
    Missing { what: &'static str, digest: Digest },

    #[error("no root or digest named {0:?} (see `vorpalfs store ls`)")]
    UnknownRoot(String),

    #[error("corrupt {what} {digest}: {detail}")]
    Corrupt { what: &'static str, digest: Digest, detail: String },

    #[error("{path:?}: no such file or directory in tree {root}")]
    NoSuchPath { root: Digest, path: String },

    #[error("{path:?} in tree {root} is a {kind}, not a {wanted}")]
    WrongKind { root: Digest, path: String, kind: &'static str, wanted: &'static str },

    #[error("{}: destination exists and is not an empty directory", path.display())]
    DestinationExists { path: PathBuf },

    #[error("S3 {url}: {message}")]
    Remote { url: String, message: String },

    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns, singling out a full disk.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        if source.raw_os_error() == Some(libc::ENOSPC) || source.raw_os_error() == Some(libc::EDQUOT) {
            Error::DiskFull { path, source }
        } else {
            Error::Io { path, source }
        }
    }

    /// True when the error means data is damaged (as opposed to absent or unreachable).
    pub fn is_corruption(&self) -> bool {
        matches!(self, Error::Corrupt { .. })
    }
}

/// `.at(path)` attaches a path to an `io::Result`.
pub trait IoContext<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}
