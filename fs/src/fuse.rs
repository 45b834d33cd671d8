//! The thin fuser adapter: kernel requests in, store objects out.
//!
//! Metadata requests and reads whose chunks are all in the memory cache are answered on the
//! FUSE thread that received them. A read that needs a chunk from disk (or, later, the network)
//! moves its reply into a tokio task, bounded by a semaphore, so FUSE threads never wait on I/O
//! and a slow fetch does not hold up cached reads. Concurrent readers of one chunk share one
//! fetch (the store's single-flight).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    LockOwner, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen,
    ReplyStatfs, ReplyXattr, Request,
};
use vorpalfs_store::{Digest, EntryKind, Store, Tree};

use crate::errno::errno;
use crate::inodes::{Inodes, Kind, ROOT};

/// Store paths never change: the kernel may cache what it learns for as long as it likes.
const TTL: Duration = Duration::from_secs(365 * 24 * 3600);
/// A digest not (yet) in the store: cached briefly, and invalidated when it is published.
const NEGATIVE_TTL: Duration = Duration::from_secs(10);
/// How long a lookup of a top-level name waits for S3.
const REMOTE_LOOKUP_DEADLINE: Duration = Duration::from_secs(10);
/// Every file shows this mtime (like Nix's and Vorpal's stores): contents are named by digest.
const MTIME: Duration = Duration::from_secs(1);
/// The extended attribute holding an entry's digest.
pub const DIGEST_XATTR: &str = "user.vorpalfs.digest";
/// The longest entry name, as on every Linux filesystem (`statfs` reports it).
const NAME_MAX: usize = 255;

/// Counters for `vorpalfs status` and the metrics.
#[derive(Debug, Default)]
pub struct FsStats {
    pub lookups: AtomicU64,
    pub reads: AtomicU64,
    pub read_bytes: AtomicU64,
    pub reads_deferred: AtomicU64,
    pub read_errors: AtomicU64,
    pub inodes: AtomicU64,
    /// From the request to its reply (a deferred read or S3 lookup: until the task replies).
    pub lookup_latency: Latency,
    pub getattr_latency: Latency,
    pub readdir_latency: Latency,
    pub read_latency: Latency,
}

/// The upper bounds of [`Latency`]'s buckets, in microseconds (the last bucket is unbounded).
pub const LATENCY_BUCKETS_US: [u64; 11] = [10, 50, 100, 500, 1_000, 5_000, 10_000, 50_000, 100_000, 500_000, 1_000_000];

/// A histogram of operation latencies: counts per bucket (not cumulative), their sum and count.
#[derive(Debug, Default)]
pub struct Latency {
    pub buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    pub sum_micros: AtomicU64,
    pub count: AtomicU64,
}

impl Latency {
    pub fn observe(&self, d: Duration) {
        let us = d.as_micros().min(u128::from(u64::MAX)) as u64;
        let i = LATENCY_BUCKETS_US.iter().position(|&b| us <= b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(us, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Observes the time from its creation to its drop.
struct Timed<'a>(&'a Latency, std::time::Instant);

impl Drop for Timed<'_> {
    fn drop(&mut self) {
        self.0.observe(self.1.elapsed());
    }
}

fn timed(l: &Latency) -> Timed<'_> {
    Timed(l, std::time::Instant::now())
}

pub(crate) struct StoreFs {
    store: Arc<Store>,
    inodes: Arc<Mutex<Inodes>>,
    rt: tokio::runtime::Handle,
    slots: Arc<tokio::sync::Semaphore>,
    stats: Arc<FsStats>,
    xattrs: bool,
}

fn attr(ino: u64, kind: &Kind) -> FileAttr {
    let (ftype, perm, size, nlink) = match kind {
        Kind::Root | Kind::Dir { .. } => (FileType::Directory, 0o555, 4096, 2),
        Kind::File { size, executable, .. } => {
            (FileType::RegularFile, if *executable { 0o555 } else { 0o444 }, *size, 1)
        }
        Kind::Symlink { target } => (FileType::Symlink, 0o777, target.len() as u64, 1),
    };
    let t = UNIX_EPOCH + MTIME;
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: t,
        mtime: t,
        ctime: t,
        crtime: t,
        kind: ftype,
        perm,
        nlink,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 128 * 1024,
        flags: 0,
    }
}

fn negative_attr() -> FileAttr {
    let mut a = attr(0, &Kind::Root);
    a.ino = INodeNo(0);
    a
}

/// A top-level name: a digest in hex.
fn top_level_name(name: &[u8]) -> Option<Digest> {
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// What a directory lists (see [`StoreFs::listing`]).
enum Listing {
    /// The mount root: `(root name, its tree)` of every stored root.
    Top(Vec<(Digest, Digest)>),
    Tree(Arc<Tree>),
}

impl Listing {
    fn len(&self) -> u64 {
        match self {
            Listing::Top(v) => v.len() as u64,
            Listing::Tree(t) => t.entries().len() as u64,
        }
    }

    /// The name and type of entry `i` (`i < len`), without touching the store.
    fn name_and_type(&self, i: u64) -> (std::borrow::Cow<'_, [u8]>, FileType) {
        match self {
            Listing::Top(v) => (v[i as usize].0.to_hex().into_bytes().into(), FileType::Directory),
            Listing::Tree(t) => {
                let e = &t.entries()[i as usize];
                let ft = match e.kind {
                    EntryKind::Dir { .. } => FileType::Directory,
                    EntryKind::File { .. } => FileType::RegularFile,
                    EntryKind::Symlink { .. } => FileType::Symlink,
                };
                (e.name.as_slice().into(), ft)
            }
        }
    }

    /// Entry `i` (`i < len`) as an inode kind.
    fn entry(&self, i: u64, store: &Store) -> vorpalfs_store::Result<(Vec<u8>, Kind)> {
        match self {
            Listing::Top(v) => {
                let (name, tree) = &v[i as usize];
                Ok((name.to_hex().into_bytes(), Kind::Dir { digest: *tree, size: store.tree(tree)?.size() }))
            }
            Listing::Tree(t) => {
                let e = &t.entries()[i as usize];
                Ok((e.name.clone(), Kind::from_entry(&e.kind)))
            }
        }
    }
}

impl StoreFs {
    pub(crate) fn new(
        store: Arc<Store>,
        rt: tokio::runtime::Handle,
        opts: &crate::MountOptions,
        stats: Arc<FsStats>,
    ) -> Self {
        StoreFs {
            store,
            inodes: Arc::new(Mutex::new(Inodes::default())),
            rt,
            slots: Arc::new(tokio::sync::Semaphore::new(opts.max_inflight.max(1))),
            stats,
            xattrs: opts.xattrs,
        }
    }

    fn kind(&self, ino: INodeNo) -> Option<Kind> {
        self.inodes.lock().unwrap().get(u64::from(ino)).map(|n| n.kind.clone())
    }

    /// The child `name` of directory `parent`, as a store object; `Ok(None)` if there is none.
    fn child(&self, parent: &Kind, name: &[u8]) -> vorpalfs_store::Result<Option<Kind>> {
        match parent {
            Kind::Root => {
                let Some(digest) = top_level_name(name) else { return Ok(None) };
                let Some(r) = self.store.resolve_local(&digest.to_hex())? else { return Ok(None) };
                Ok(Some(Kind::Dir { digest: r.tree, size: self.store.tree(&r.tree)?.size() }))
            }
            Kind::Dir { digest, .. } => Ok(self.store.tree(digest)?.get(name).map(|e| Kind::from_entry(&e.kind))),
            _ => Ok(None),
        }
    }

    /// The entries of a directory, in order, without `.` and `..`: for a stored directory its
    /// decoded tree itself (shared with the store's cache, never copied), so a listing request
    /// at any offset costs only the entries it returns.
    fn listing(&self, kind: &Kind) -> vorpalfs_store::Result<Listing> {
        match kind {
            Kind::Root => Ok(Listing::Top(self.store.top_level()?)),
            Kind::Dir { digest, .. } => Ok(Listing::Tree(self.store.tree(digest)?)),
            _ => Ok(Listing::Top(Vec::new())),
        }
    }

    /// Hands out the inode for `(parent, name)`, counting one lookup.
    fn remember(&self, parent: u64, name: &[u8], kind: &Kind) -> u64 {
        let mut inodes = self.inodes.lock().unwrap();
        let ino = inodes.remember(parent, name, kind.clone());
        self.stats.inodes.store(inodes.len() as u64, Ordering::Relaxed);
        ino
    }

    /// Looks a top-level name up in S3 on the I/O runtime, with a deadline, and answers there.
    fn lookup_remote(&self, name: &[u8], reply: ReplyEntry, t0: std::time::Instant) {
        let (store, inodes, stats, slots) =
            (self.store.clone(), self.inodes.clone(), self.stats.clone(), self.slots.clone());
        let name = String::from_utf8_lossy(name).into_owned();
        self.rt.spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else { return reply.error(Errno::EIO) };
            let found = tokio::time::timeout(REMOTE_LOOKUP_DEADLINE, store.clone().resolve_remote_async(name.clone()))
                .await
                .unwrap_or_else(|_| {
                    Err(vorpalfs_store::Error::Remote {
                        url: format!("roots/{name}"),
                        source: vorpalfs_store::RemoteError::Timeout(REMOTE_LOOKUP_DEADLINE),
                    })
                });
            let kind = match found.and_then(|r| r.map(|r| Ok((r.tree, store.tree(&r.tree)?.size()))).transpose()) {
                Ok(Some((digest, size))) => Kind::Dir { digest, size },
                Ok(None) => return reply.entry(&NEGATIVE_TTL, &negative_attr(), Generation(0)),
                Err(e) => {
                    // The name is simply not there, and is asked again at the next lookup. An
                    // unreachable S3 was logged by the remote layer (once); a bad object is
                    // worth a line of its own.
                    match e {
                        vorpalfs_store::Error::Remote { .. } => tracing::debug!(name, "lookup in S3 failed: {e}"),
                        _ => tracing::warn!(name, "refused what S3 holds for this name: {e}"),
                    }
                    return reply.error(Errno::ENOENT);
                }
            };
            let mut table = inodes.lock().unwrap();
            let ino = table.remember(ROOT, name.as_bytes(), kind.clone());
            stats.inodes.store(table.len() as u64, Ordering::Relaxed);
            drop(table);
            reply.entry(&TTL, &attr(ino, &kind), Generation(0));
            stats.lookup_latency.observe(t0.elapsed());
        });
    }

    fn fail(&self, ino: u64, what: &str, e: &vorpalfs_store::Error) -> Errno {
        let (artifact, path) = self.inodes.lock().unwrap().describe(ino);
        tracing::error!(artifact = %artifact, path = %path, "{what} failed: {e}");
        errno(e)
    }

    /// [`attr`], with `st_blocks` counting only a file's data, not its holes (all-zero chunks:
    /// see `ChunkRef::is_zero`), so `du` and `cp` see a sparse file as sparse. Only files that
    /// can hold a hole (at least one maximal chunk long) cost a look at their record.
    fn attr_of(&self, ino: u64, kind: &Kind) -> FileAttr {
        let mut a = attr(ino, kind);
        if let Kind::File { digest, size, .. } = kind
            && vorpalfs_store::model::records::can_hold_a_hole(*size)
        {
            match self.store.file(digest) {
                Ok(rec) => a.blocks = rec.allocated().div_ceil(512),
                // The read reports it, naming the file; the size is the honest fallback here.
                Err(e) => tracing::debug!(%digest, "no file record for st_blocks: {e}"),
            }
        }
        a
    }

    fn xattr_value(&self, ino: INodeNo) -> Option<String> {
        match self.kind(ino)? {
            Kind::Dir { digest, .. } | Kind::File { digest, .. } => Some(digest.to_hex()),
            Kind::Root | Kind::Symlink { .. } => None,
        }
    }
}

fn reply_xattr(reply: ReplyXattr, size: u32, value: &[u8]) {
    if size == 0 {
        reply.size(value.len() as u32);
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE);
    } else {
        reply.data(value);
    }
}

impl Filesystem for StoreFs {
    fn init(&mut self, _req: &Request, cfg: &mut KernelConfig) -> std::io::Result<()> {
        for cap in [
            InitFlags::FUSE_DO_READDIRPLUS,
            InitFlags::FUSE_READDIRPLUS_AUTO,
            InitFlags::FUSE_PARALLEL_DIROPS,
            InitFlags::FUSE_CACHE_SYMLINKS,
        ] {
            if cfg.add_capabilities(cap).is_err() {
                tracing::debug!(?cap, "kernel lacks capability");
            }
        }
        // Larger requests mean fewer round trips per chunk (measured in scripts/bench/read.sh).
        if let Err(max) = cfg.set_max_readahead(1 << 20) {
            let _ = cfg.set_max_readahead(max);
        }
        let _ = cfg.set_max_write(1 << 20);
        let _ = cfg.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _span = tracing::trace_span!("fuse.lookup").entered();
        let t0 = std::time::Instant::now();
        self.stats.lookups.fetch_add(1, Ordering::Relaxed);
        // Longer names exist on no Linux filesystem; the kernel passes up to 1024 bytes here.
        if name.len() > NAME_MAX {
            return reply.error(Errno::ENAMETOOLONG);
        }
        let Some(pk) = self.kind(parent) else {
            return reply.error(Errno::ENOENT);
        };
        match self.child(&pk, name.as_bytes()) {
            Ok(Some(kind)) => {
                let ino = self.remember(u64::from(parent), name.as_bytes(), &kind);
                reply.entry(&TTL, &self.attr_of(ino, &kind), Generation(0));
            }
            // Not here: a top-level name may be in S3. Asked on the I/O runtime, never on this
            // thread: a slow or silent S3 must not hold up the mount for everyone.
            Ok(None) if pk == Kind::Root && self.store.has_remote() && top_level_name(name.as_bytes()).is_some() => {
                return self.lookup_remote(name.as_bytes(), reply, t0);
            }
            // A negative entry: only the top level can change (when a root is published).
            Ok(None) => {
                reply.entry(if pk == Kind::Root { &NEGATIVE_TTL } else { &TTL }, &negative_attr(), Generation(0))
            }
            Err(e) => reply.error(self.fail(u64::from(parent), "lookup", &e)),
        }
        self.stats.lookup_latency.observe(t0.elapsed());
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let mut inodes = self.inodes.lock().unwrap();
        inodes.forget(u64::from(ino), nlookup);
        self.stats.inodes.store(inodes.len() as u64, Ordering::Relaxed);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _span = tracing::trace_span!("fuse.getattr").entered();
        let _t = timed(&self.stats.getattr_latency);
        match self.kind(ino) {
            Some(k) => reply.attr(&TTL, &self.attr_of(u64::from(ino), &k)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _span = tracing::trace_span!("fuse.readlink").entered();
        match self.kind(ino) {
            Some(Kind::Symlink { target }) => reply.data(&target),
            Some(_) => reply.error(Errno::EINVAL),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS makes the kernel stop sending OPEN (and RELEASE) altogether and treat every open
        // as FOPEN_KEEP_CACHE: two round trips fewer per file, and cached pages survive reopens.
        // Writable opens never get here (the mount is read-only).
        reply.error(Errno::ENOSYS);
    }

    /// Nothing to flush on a read-only mount; ENOSYS stops the kernel sending it at all.
    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _span = tracing::trace_span!("fuse.read").entered();
        let t0 = std::time::Instant::now();
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let Some((Kind::File { digest, .. }, root)) = self.inodes.lock().unwrap().kind_and_root(u64::from(ino)) else {
            return reply.error(Errno::EBADF);
        };
        let rec = match self.store.file(&digest) {
            Ok(r) => r,
            Err(e) => return reply.error(self.fail(u64::from(ino), "read", &e)),
        };
        // For the root's access profile: in memory, a hash lookup per chunk.
        if let Some(root) = root {
            self.store.touched(&root, &rec, offset, size as usize);
        }
        // From memory or the local packs, on this thread: a local read costs a pread and a
        // decode, less than the two thread hand-offs of the async path (which dominated the
        // daemon's CPU profile of a cold read of the toolchain). Only S3 goes async.
        match self.store.read_here(&rec, offset, size as usize) {
            Ok(Some(bytes)) => {
                self.stats.read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                reply.data(&bytes);
                return self.stats.read_latency.observe(t0.elapsed());
            }
            Ok(None) => {}
            Err(e) => {
                self.stats.read_errors.fetch_add(1, Ordering::Relaxed);
                return reply.error(self.fail(u64::from(ino), "read", &e));
            }
        }
        self.stats.reads_deferred.fetch_add(1, Ordering::Relaxed);
        let (store, slots, stats, inodes) =
            (self.store.clone(), self.slots.clone(), self.stats.clone(), self.inodes.clone());
        let ino = u64::from(ino);
        self.rt.spawn(async move {
            let Ok(_permit) = slots.acquire_owned().await else { return reply.error(Errno::EIO) };
            match store.read_async_in(root, rec, offset, size as usize).await {
                Ok(bytes) => {
                    stats.read_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    reply.data(&bytes)
                }
                Err(e) => {
                    stats.read_errors.fetch_add(1, Ordering::Relaxed);
                    let (artifact, path) = inodes.lock().unwrap().describe(ino);
                    tracing::error!(artifact = %artifact, path = %path, "read failed: {e}");
                    reply.error(errno(&e))
                }
            }
            stats.read_latency.observe(t0.elapsed());
        });
    }

    /// `SEEK_DATA` and `SEEK_HOLE` (the kernel answers the other kinds itself): holes are a
    /// file's all-zero chunks, so `cp` and `tar --sparse` copy a sparse file out as sparse.
    fn lseek(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: i64, whence: i32, reply: fuser::ReplyLseek) {
        let Some(Kind::File { digest, .. }) = self.kind(ino) else {
            return reply.error(Errno::EINVAL);
        };
        let rec = match self.store.file(&digest) {
            Ok(r) => r,
            Err(e) => return reply.error(self.fail(u64::from(ino), "lseek", &e)),
        };
        let Ok(offset) = u64::try_from(offset) else { return reply.error(Errno::ENXIO) };
        let found = match whence {
            libc::SEEK_DATA => rec.seek_data(offset),
            libc::SEEK_HOLE => rec.seek_hole(offset),
            _ => return reply.error(Errno::EINVAL),
        };
        match found {
            Some(o) => reply.offset(o as i64),
            None => reply.error(Errno::ENXIO),
        }
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // As for files: no OPENDIR round trips, and listings cached (FOPEN_CACHE_DIR). The top
        // level's cached listing is invalidated when a root is published or removed.
        reply.error(Errno::ENOSYS);
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let _span = tracing::trace_span!("fuse.readdir").entered();
        let _t = timed(&self.stats.readdir_latency);
        let Some(kind) = self.kind(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let listing = match self.listing(&kind) {
            Ok(l) => l,
            Err(e) => return reply.error(self.fail(u64::from(ino), "readdir", &e)),
        };
        let inodes = self.inodes.lock().unwrap();
        let me = u64::from(ino);
        let parent = inodes.get(me).map_or(ROOT, |n| n.parent);
        // Offset i is the i-th entry of `.`, `..`, then the listing: the request starts there
        // directly, and inode numbers are computed only for the entries it returns.
        for i in offset..listing.len() + 2 {
            let full = match i {
                0 => reply.add(INodeNo(me), 1, FileType::Directory, "."),
                1 => reply.add(INodeNo(parent), 2, FileType::Directory, ".."),
                _ => {
                    let (name, ft) = listing.name_and_type(i - 2);
                    reply.add(INodeNo(inodes.ino_for(me, &name)), i + 1, ft, OsStr::from_bytes(&name))
                }
            };
            if full {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectoryPlus) {
        let _span = tracing::trace_span!("fuse.readdirplus").entered();
        let _t = timed(&self.stats.readdir_latency);
        let Some(kind) = self.kind(ino) else {
            return reply.error(Errno::ENOENT);
        };
        let listing = match self.listing(&kind) {
            Ok(l) => l,
            Err(e) => return reply.error(self.fail(u64::from(ino), "readdirplus", &e)),
        };
        let mut inodes = self.inodes.lock().unwrap();
        let me = u64::from(ino);
        let parent = inodes.get(me).map_or(ROOT, |n| n.parent);
        let parent_kind = inodes.get(parent).map_or(Kind::Root, |n| n.kind.clone());
        for i in offset..listing.len() + 2 {
            let full = match i {
                // The kernel takes no reference for `.` and `..`.
                0 => reply.add(INodeNo(me), 1, ".", &TTL, &attr(me, &kind), Generation(0)),
                1 => reply.add(INodeNo(parent), 2, "..", &TTL, &attr(parent, &parent_kind), Generation(0)),
                _ => {
                    let (name, k) = match listing.entry(i - 2, &self.store) {
                        Ok(e) => e,
                        Err(e) => {
                            drop(inodes);
                            return reply.error(self.fail(me, "readdirplus", &e));
                        }
                    };
                    let child = inodes.ino_for(me, &name);
                    let full = reply.add(
                        INodeNo(child),
                        i + 1,
                        OsStr::from_bytes(&name),
                        &TTL,
                        &self.attr_of(child, &k),
                        Generation(0),
                    );
                    if !full {
                        inodes.remember(me, &name, k);
                    }
                    full
                }
            };
            if full {
                break;
            }
        }
        self.stats.inodes.store(inodes.len() as u64, Ordering::Relaxed);
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let bytes = self.store.pack_bytes().unwrap_or(0);
        reply.statfs(bytes.div_ceil(4096), 0, 0, 0, 0, 4096, NAME_MAX as u32, 4096);
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _span = tracing::trace_span!("fuse.getxattr").entered();
        if !self.xattrs {
            // The kernel remembers ENOSYS and sends no more getxattr requests on this mount.
            return reply.error(Errno::ENOSYS);
        }
        // `ls -l` asks for `security.selinux` and `system.posix_acl_access` of every entry: the
        // name is checked first, so those cost the daemon nothing but the reply.
        if name.as_bytes() != DIGEST_XATTR.as_bytes() {
            return reply.error(Errno::ENODATA);
        }
        match self.xattr_value(ino) {
            Some(v) => reply_xattr(reply, size, v.as_bytes()),
            None => reply.error(Errno::ENODATA),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _span = tracing::trace_span!("fuse.listxattr").entered();
        if !self.xattrs {
            return reply.error(Errno::ENOSYS);
        }
        let list = match self.xattr_value(ino) {
            Some(_) => format!("{DIGEST_XATTR}\0"),
            None => String::new(),
        };
        reply_xattr(reply, size, list.as_bytes());
    }

    /// No ioctls: `ENOTTY`, as for any file that has none (tools probe for some, e.g.
    /// `FS_IOC_GETFLAGS`, on every file; that is not worth a log line).
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn access(&self, _req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        match self.kind(ino) {
            Some(_) if mask.contains(AccessFlags::W_OK) => reply.error(Errno::EROFS),
            Some(_) => reply.ok(),
            None => reply.error(Errno::ENOENT),
        }
    }
}
