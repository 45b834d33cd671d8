//! The one map from store errors to errno values.

use fuser::Errno;
use vorpalfs_store::Error;

/// What the kernel is told when a store operation fails. Anything that means the bytes cannot
/// be had or trusted is `EIO`: a reader gets an error, never wrong data.
pub fn errno(e: &Error) -> Errno {
    match e {
        Error::NoSuchPath { .. } | Error::UnknownName(_) => Errno::ENOENT,
        Error::WrongKind { .. } => Errno::ENOTDIR,
        Error::DiskFull { .. } => Errno::ENOSPC,
        _ => Errno::EIO,
    }
}
