//! Mounting and unmounting, including replacing a stale mount left by a killed daemon.

use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fuser::{Config, INodeNo, MountOption, SessionACL};
use vorpalfs_store::{Digest, Store};

use crate::fuse::{FsStats, StoreFs};

/// Errors of mounting.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("mountpoint {}: {source}", path.display())]
    Mountpoint { path: PathBuf, source: std::io::Error },
    #[error("mountpoint {} is already in use by another mount (unmount it or choose another)", path.display())]
    InUse { path: PathBuf },
    #[error("cannot mount at {}: {source} (is /dev/fuse available and are you root?)", path.display())]
    Mount { path: PathBuf, source: std::io::Error },
}

/// Tunables of a mount.
#[derive(Clone, Debug)]
pub struct MountOptions {
    /// FUSE worker threads, each with its own cloned `/dev/fuse` descriptor.
    pub threads: usize,
    /// Reads waiting on chunk fetches at once.
    pub max_inflight: usize,
    /// Answer extended attribute requests (`user.vorpalfs.digest`). `false` (the default)
    /// answers the first with `ENOSYS`, after which the kernel asks no more: no per-inode
    /// `getxattr` round trips for `security.*` and ACLs on `ls -l` or `exec`.
    pub xattrs: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        MountOptions { threads: (2 * cores).clamp(4, 16), max_inflight: 64, xattrs: false }
    }
}

/// A live mount; unmounted by [`Mounted::unmount`] or on drop.
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    handle: MountHandle,
}

/// What other threads may hold of a mount: its counters, and the means to tell the kernel
/// that the top level changed.
#[derive(Clone)]
pub struct MountHandle {
    notifier: Arc<fuser::Notifier>,
    mountpoint: PathBuf,
    pub stats: Arc<FsStats>,
}

/// Whether `path` is a mount point, per `/proc/self/mountinfo`.
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(info) = std::fs::read("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.as_os_str().as_bytes();
    info.split(|&b| b == b'\n').any(|line| line.split(|&b| b == b' ').nth(4).is_some_and(|mp| unescape(mp) == want))
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() && field[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((field[i + 1] - b'0') * 64 + (field[i + 2] - b'0') * 8 + (field[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    out
}

/// Detaches whatever is mounted at `path`.
pub fn detach(path: &Path) -> std::io::Result<()> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path; umount2 reads it and nothing else.
    if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Creates `path` and its missing parents with mode 0755, whatever the umask: every user reads
/// the store through them.
fn create_public_dirs(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut missing = Vec::new();
    let mut p = Some(path);
    while let Some(dir) = p {
        if dir.exists() {
            break;
        }
        missing.push(dir);
        p = dir.parent();
    }
    for dir in missing.into_iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Makes `path` ready to mount on: creates it, or replaces a stale FUSE mount (whose daemon
/// died: `ENOTCONN`), and refuses a live mount.
fn prepare(path: &Path) -> Result<(), FsError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            if is_mountpoint(path) {
                return Err(FsError::InUse { path: path.into() });
            }
            Ok(())
        }
        Ok(_) => Err(FsError::Mountpoint {
            path: path.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        }),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(mountpoint = %path.display(), "replacing a stale mount left by a daemon that died");
            detach(path).map_err(|source| FsError::Mountpoint { path: path.into(), source })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            create_public_dirs(path).map_err(|source| FsError::Mountpoint { path: path.into(), source })
        }
        Err(source) => Err(FsError::Mountpoint { path: path.into(), source }),
    }
}

/// Mounts `store` read-only at `mountpoint`. Slow reads run on `rt`.
pub fn mount(
    store: Arc<Store>,
    mountpoint: &Path,
    rt: tokio::runtime::Handle,
    opts: &MountOptions,
) -> Result<Mounted, FsError> {
    prepare(mountpoint)?;
    let stats = Arc::new(FsStats::default());
    let fs = StoreFs::new(store, rt, opts, stats.clone());
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("vorpalfs".into()),
        // fuser's own mount(2) drops `Subtype` (it keeps it for fusermount), so the subtype
        // goes to the kernel as a plain option: mountinfo then says `fuse.vorpalfs`, and
        // `findmnt -t fuse.vorpalfs` finds the mount. fusermount takes it the same way.
        MountOption::CUSTOM("subtype=vorpalfs".into()),
        MountOption::RO,
        MountOption::NoAtime,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::Exec,
        MountOption::DefaultPermissions,
    ];
    // Sandboxed build steps and other users read the store too.
    cfg.acl = SessionACL::All;
    cfg.n_threads = Some(opts.threads);
    cfg.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &cfg)
        .map_err(|source| FsError::Mount { path: mountpoint.into(), source })?;
    let notifier = Arc::new(session.notifier());
    let session = session.spawn().map_err(|source| FsError::Mount { path: mountpoint.into(), source })?;
    tracing::info!(mountpoint = %mountpoint.display(), threads = opts.threads, "mounted");
    Ok(Mounted { session: Some(session), handle: MountHandle { notifier, mountpoint: mountpoint.into(), stats } })
}

impl Mounted {
    pub fn handle(&self) -> MountHandle {
        self.handle.clone()
    }

    /// Unmounts and waits for the FUSE threads to finish.
    pub fn unmount(mut self) -> std::io::Result<()> {
        match self.session.take() {
            Some(s) => s.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl MountHandle {
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Tells the kernel that the top-level entry for `digest` changed (appeared or went away),
    /// dropping whatever it cached for the name.
    pub fn published(&self, digest: &Digest) {
        let name = digest.to_hex();
        if let Err(e) = self.notifier.inval_entry(INodeNo(crate::inodes::ROOT), OsStr::new(&name)) {
            // ENOENT: the kernel had nothing cached for the name, which is fine.
            tracing::trace!(%digest, "inval_entry: {e}");
        }
        // The top level's listing is cached too (see `opendir`).
        if let Err(e) = self.notifier.inval_inode(INodeNo(crate::inodes::ROOT), 0, 0) {
            tracing::trace!(%digest, "inval_inode: {e}");
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = s.umount_and_join();
        }
    }
}
