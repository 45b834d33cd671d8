//! The store's error types. Every variant names what it is about: a path, a digest, a store, an
//! S3 object. Errors are `Clone` (I/O sources are shared), so one failed fetch can be handed to
//! every reader that waited for it, each keeping the variant (the mount maps it to an errno).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::Digest;

/// Errors of the store. Messages are complete sentences fit for a user's terminal.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: Arc<io::Error> },

    #[error("{}: the disk is full ({source}); nothing was committed", path.display())]
    DiskFull { path: PathBuf, source: Arc<io::Error> },

    #[error("{}: cannot store a {kind}; only regular files, directories and symlinks can be stored", path.display())]
    Unsupported { path: PathBuf, kind: &'static str },

    #[error("{}: a tree of more than 4,294,967,295 files or directories cannot be stored in one ingest", path.display())]
    TooManyEntries { path: PathBuf },

    #[error("{}: the file changed while it was being read; nothing was committed", path.display())]
    Changed { path: PathBuf },

    #[error("{}: not a directory", path.display())]
    NotADirectory { path: PathBuf },

    #[error("{}: not readable by everyone, and outside the manifest's directory: a build stores its sources where every user can read them (move it inside, or build with --allow-outside-sources)", path.display())]
    NotPublic { path: PathBuf },

    #[error("{}: not a vorpalfs store (it is not empty and has no {marker} file)", path.display())]
    NotAStore { path: PathBuf, marker: &'static str },

    #[error("{}: store format {found} is not supported by this vorpalfs (it reads format {supported})", path.display())]
    Version { path: PathBuf, found: String, supported: u32 },

    #[error("store {} is in use by another process{holder}", path.display())]
    Locked { path: PathBuf, holder: String },

    /// RocksDB's own message (the only text it gives).
    #[error("index {}: {message}", path.display())]
    Index { path: PathBuf, message: String },

    #[error("{what} {digest} is not in the store")]
    Missing { what: &'static str, digest: Digest },

    #[error("no root, artifact or digest named {0:?} (see `vorpalfs store ls`)")]
    UnknownName(String),

    #[error("nothing of {name} was read through the mount since the daemon started: no profile to push")]
    NoProfile { name: String },

    #[error("{name}: {why}")]
    NotRepacked { name: String, why: String },

    #[error("corrupt {what} {digest}: {detail}")]
    Corrupt { what: &'static str, digest: Digest, detail: String },

    #[error("{path:?}: no such file or directory in tree {root}")]
    NoSuchPath { root: Digest, path: String },

    #[error("{path:?} in tree {root} is a {kind}, not a {wanted}")]
    WrongKind { root: Digest, path: String, kind: &'static str, wanted: &'static str },

    #[error("{}: destination exists and is not an empty directory", path.display())]
    DestinationExists { path: PathBuf },

    #[error("invalid entry name {name:?}: {why}")]
    BadName { name: String, why: &'static str },

    #[error("S3 {url}: {source}")]
    Remote { url: String, source: RemoteError },

    #[error("{url:?}: {why}")]
    BadRemoteUrl { url: String, why: &'static str },

    #[error("no S3 location is configured (--s3 or VORPALFS_S3)")]
    NoRemote,

    #[error("a fetch from S3 was abandoned (the I/O runtime stopped)")]
    Abandoned,

    #[error("S3 {url}: {what} is not a vorpalfs {what} of a version this host reads")]
    BadRemoteObject { url: String, what: &'static str },

    #[error("key {origin}: {why}")]
    BadKey { origin: String, why: String },

    #[error("S3 {url}: {detail} (trusted keys: {keys}); refused")]
    Untrusted { url: String, detail: String, keys: String },

    #[error("S3 {url} names tree {there}, {why}; it was not replaced")]
    Kept { url: String, there: Digest, why: String },

    #[error("cannot start the I/O runtime: {0}")]
    Runtime(Arc<io::Error>),
}

/// Why a request to the object store failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RemoteError {
    /// The SDK's or the network's own words.
    #[error("{0}")]
    Transport(String),
    #[error("HTTP status {status}: {message}")]
    Status { status: u16, message: String },
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("asked for {want} bytes at {offset}, got {got}")]
    ShortRead { offset: u64, want: u64, got: u64 },
    #[error("the object is larger than the {limit} bytes allowed for it")]
    TooLarge { limit: u64 },
    #[error("S3 is treated as down after repeated failures (retrying in a few seconds)")]
    Down,
    #[error("the object is missing")]
    NotFound,
    /// A fault injected by the in-memory object store (tests).
    #[error("injected fault: {0}")]
    Injected(&'static str),
}

impl RemoteError {
    /// Worth trying again: the network, a timeout, throttling or a server error.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Transport(_) | RemoteError::Timeout(_) | RemoteError::Injected(_) => true,
            RemoteError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with the path it concerns, singling out a full disk.
    pub fn io(path: impl AsRef<Path>, source: io::Error) -> Error {
        let path = path.as_ref().to_path_buf();
        if matches!(source.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            Error::DiskFull { path, source: Arc::new(source) }
        } else {
            Error::Io { path, source: Arc::new(source) }
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
