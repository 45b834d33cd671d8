//! The read-only FUSE view of the vorpalfs store: `/vorpal/store/<digest>/…`.
//!
//! ```text
//! mount.rs   mount / unmount / stale-mount replacement, kernel options
//! fuse.rs    the thin fuser adapter: requests → store lookups and reads; slow reads → tokio
//! inodes.rs  inode numbers ↔ store objects (hashed from parent + name, dropped on forget)
//! errno.rs   the one map from store errors to errno
//! ```
//!
//! Store paths are immutable, so the kernel is told to cache entries, attributes, symlinks,
//! directory listings and file pages for as long as it likes; only the top level changes, when
//! a root is published, and that is handled by short negative entries plus `inval_entry`.
//! The mount is read-only: every write syscall fails with `EROFS` in the kernel. A chunk that
//! cannot be read or verified gives `EIO` and a log line naming the artifact, path and chunk.

mod errno;
mod fuse;
mod inodes;
mod mount;

pub use fuse::{DIGEST_XATTR, FsStats, LATENCY_BUCKETS_US, Latency};
pub use mount::{FsError, MountHandle, MountOptions, Mounted, detach, is_mountpoint, mount};
