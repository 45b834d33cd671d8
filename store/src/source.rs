//! Reading a source tree safely: with the client's rights, by file descriptor, never following
//! a symlink the walk did not see as one.
//!
//! A root daemon ingests directories that clients name (`store add`, a build's local sources).
//! Opened by path with the daemon's rights, a client who owns the directory could swap a
//! subdirectory for a symlink to a root-only one between the walk and the read, and have root
//! store the secret for everyone to read. So:
//!
//! - every open, stat and readlink of the source runs with the client's filesystem identity
//!   ([`Creds`]: `setfsuid`/`setfsgid`/`setgroups` on the calling thread only, switched back
//!   after), so the daemon reads exactly what the client could;
//! - the walk goes directory by directory from file descriptors (`openat` with `O_NOFOLLOW`),
//!   so its path length is unbounded and no symlink is ever followed below the top;
//! - a file is opened beneath the top directory's descriptor with `RESOLVE_BENEATH |
//!   RESOLVE_NO_SYMLINKS`, and must be the very file the walk saw (same device and inode), or
//!   the ingest fails as "changed".

use std::ffi::{CStr, OsStr};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};

/// Whose rights a client-named path is read or written with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Creds {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

impl Creds {
    /// Runs `f` with this thread's filesystem identity switched to these credentials (when
    /// this process is root; otherwise it already has no more than its own rights).
    pub fn with<T>(&self, f: impl FnOnce() -> T) -> T {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return f();
        }
        let _back = Switched::to(self);
        f()
    }
}

/// This thread's filesystem identity while switched; restored (to root) when dropped.
struct Switched {
    groups: Vec<libc::gid_t>,
}

impl Switched {
    fn to(c: &Creds) -> Switched {
        // SAFETY: plain syscalls on this thread's credentials. setgroups is called through
        // syscall(2), not glibc, which would change every thread of the process.
        unsafe {
            let n = libc::getgroups(0, std::ptr::null_mut());
            let mut groups = vec![0 as libc::gid_t; n.max(0) as usize];
            libc::getgroups(n, groups.as_mut_ptr());
            libc::syscall(libc::SYS_setgroups, c.groups.len(), c.groups.as_ptr());
            libc::setfsgid(c.gid);
            libc::setfsuid(c.uid);
            Switched { groups }
        }
    }
}

impl Drop for Switched {
    fn drop(&mut self) {
        // SAFETY: as above; root again, first the uid (which restores the capabilities).
        unsafe {
            libc::setfsuid(0);
            libc::setfsgid(0);
            libc::syscall(libc::SYS_setgroups, self.groups.len(), self.groups.as_ptr());
        }
    }
}

/// Runs `f` as `creds` if any, else with this process's own rights.
pub(crate) fn as_client<T>(creds: Option<&Creds>, f: impl FnOnce() -> T) -> T {
    match creds {
        Some(c) => c.with(f),
        None => f(),
    }
}

pub(crate) fn io(e: Errno) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// Opens directory `name` of `dir` (a directory, never a symlink to one).
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    nix::fcntl::openat(dir, name, flags, Mode::empty()).map_err(io)
}

/// `lstat` of `name` in `dir`.
pub(crate) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<FileStat> {
    nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).map_err(io)
}

pub(crate) fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> std::io::Result<Vec<u8>> {
    nix::fcntl::readlinkat(dir, name).map(|t| t.as_bytes().to_vec()).map_err(io)
}

/// The entries of an open directory: `(name)`, without `.` and `..`.
pub(crate) fn entries(dir: &OwnedFd) -> std::io::Result<Vec<Vec<u8>>> {
    // The Dir takes a descriptor of its own (its position is its own too).
    let d = nix::dir::Dir::from_fd(dir.try_clone()?).map_err(io)?;
    let mut out = Vec::new();
    for e in d {
        let e = e.map_err(io)?;
        let name: &CStr = e.file_name();
        let b = name.to_bytes();
        if b != b"." && b != b".." {
            out.push(b.to_vec());
        }
    }
    Ok(out)
}

/// Opens the regular file at `rel` beneath `top` for reading, following no symlink anywhere on
/// the way (see [`open_at_beneath`]).
pub(crate) fn open_beneath(top: BorrowedFd<'_>, rel: &Path) -> std::io::Result<File> {
    open_at_beneath(top, rel, OFlag::O_RDONLY).map(File::from)
}

/// Opens the directory at `rel` beneath `top`, following no symlink anywhere on the way.
pub(crate) fn open_dir_beneath(top: BorrowedFd<'_>, rel: &Path) -> std::io::Result<OwnedFd> {
    open_at_beneath(top, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
}

/// Opens `rel` beneath `top` with `flags`, following no symlink anywhere on the way
/// (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`). A path too long for one call (trees may be deeper
/// than PATH_MAX), or a system without `openat2` (kernels before 5.6, valgrind before 3.22), is
/// walked directory by directory with `O_NOFOLLOW` at each step, which refuses the same symlinks.
fn open_at_beneath(top: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> std::io::Result<OwnedFd> {
    let flags = flags | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW;
    let how = OpenHow::new().flags(flags).resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
    match nix::fcntl::openat2(top, rel, how) {
        Ok(fd) => Ok(fd),
        Err(Errno::ENAMETOOLONG | Errno::ENOSYS) => {
            let mut parts: Vec<&OsStr> = rel
                .components()
                .map(|c| match c {
                    Component::Normal(n) => Ok(n),
                    _ => Err(std::io::Error::from_raw_os_error(libc::EXDEV)),
                })
                .collect::<std::io::Result<_>>()?;
            let name = parts.pop().ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?;
            let mut dir: Option<OwnedFd> = None;
            for p in parts {
                let next = open_dir(dir.as_ref().map_or(top, |d| d.as_fd()), p)?;
                dir = Some(next);
            }
            let at = dir.as_ref().map_or(top, |d| d.as_fd());
            nix::fcntl::openat(at, name, flags, Mode::empty()).map_err(io)
        }
        Err(e) => Err(io(e)),
    }
}

/// Device and inode of an open file.
pub(crate) fn identity(f: &impl AsRawFd) -> std::io::Result<(u64, u64)> {
    // SAFETY: fstat on a descriptor we hold, into a zeroed struct we own.
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(f.as_raw_fd(), &mut st) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        st
    };
    Ok((st.st_dev, st.st_ino))
}
