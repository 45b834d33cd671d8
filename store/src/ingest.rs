//! `ingest(dir)`: a directory into the store, in parallel with bounded memory.
//!
//! ```text
//! walk (metadata only) ──► workers (one per core), each on whole files:
//!                            read ─► chunk ─► hash ─► zstd ─► append to the worker's own pack
//!                                          │ chunk lists              │ locators
//!                                          └──► one RocksDB batch ◄───┘ (after the packs are fsynced)
//! ```
//! A worker takes the next file and does everything for it on one core, so chunks stay in that
//! core's cache and no thread waits on another. Once the files run out, idle workers receive
//! chunks from those still reading (the last large file is then compressed by every core).
//! Memory is O(cores × max chunk) whatever the file sizes. Chunks already in the index, or
//! already taken by this ingest, are not stored again.
//!
//! Commits are bounded, so memory is too, whatever the file count: each pack's locators commit
//! once the pack is sealed (fsynced); file records go to a per-worker spill file on disk while
//! the data is written, and commit in batches once every pack is committed; trees commit
//! bottom-up in batches; the last commit names the root. Every commit keeps the index's rule
//! that an object in it has its whole closure in it (a tree's subtrees and files, a file's
//! chunks), which `set_root`, `pin` and pulls rely on, and nothing is reachable before the root
//! exists. An error or a kill leaves unsealed packs (removed at the next open) and committed,
//! complete, unreachable objects (removed by the next gc; `gc_lock` keeps gc out while the
//! ingest runs, so it never takes what the ingest reuses).
//!
//! This replaced two readers feeding compressors feeding one pack writer over channels: on the
//! Rust toolchain (1.3 GB, 52k files, 2 cores) ingest went from 3.4 s to 2.9 s, from fewer
//! hand-offs and wake-ups and chunks compressed while still in cache (`scripts/bench/ingest.sh`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::io::{BufReader, BufWriter, Read, Seek, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::error::{Error, IoContext, Result};
use crate::local::index::Batch;
use crate::local::pack::{PACK_TARGET_SIZE, PackWriter, encode_chunk};
use crate::model::chunker::Chunker;
use crate::model::digest::{Digest, Kind};
use crate::model::records::{ChunkRef, FileRecord, Locator};
use crate::model::tree::{Entry, EntryKind, Tree};
use crate::source::{self, Creds, as_client};
use crate::store::{Pin, Store};

/// Files at least this large are read first.
const BIG_FILE: u64 = 8 << 20;

/// After an ingest of at least this many index operations, the memtables are flushed.
const FLUSH_AFTER_OPS: usize = 100_000;

/// What an ingest did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IngestReport {
    pub root: Digest,
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Total size of the files ingested.
    pub bytes: u64,
    /// Chunks (and their uncompressed bytes) that were new to the store.
    pub new_chunks: u64,
    pub new_bytes: u64,
    /// Bytes written to packs for them.
    pub stored_bytes: u64,
}

/// The walk's skeleton of the tree, kept until the trees are built: the one part of an ingest
/// that grows with the file count, so a file costs as few bytes as it can (one job: its name, its
/// directory's index; a directory's path is kept once).
enum Node {
    /// A directory's files are a run of jobs; its subdirectories and symlinks are entries.
    Dir {
        files: std::ops::Range<u32>,
        entries: Vec<(Vec<u8>, Node)>,
    },
    Symlink(Vec<u8>),
}

struct FileJob {
    /// The directory it is in (an index into the walk's `dirs`) and its name there.
    dir: u32,
    executable: bool,
    name: Box<[u8]>,
    size: u64,
    /// Device and inode the walk saw: the file read must be this one.
    dev: u64,
    ino: u64,
}

struct FileOut {
    digest: Digest,
    record: FileRecord,
}

/// What the tree needs of a file once its record is spilled: its digest and size.
type FileSum = (Digest, u64);

/// A chunk handed by a worker still reading to an idle one.
struct NewChunk {
    id: Digest,
    data: Vec<u8>,
}

fn special_kind(mode: libc::mode_t) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFSOCK => "socket",
        libc::S_IFIFO => "FIFO",
        libc::S_IFBLK => "block device",
        libc::S_IFCHR => "character device",
        _ => "special file",
    }
}

/// An error opening (or reading the link of) what the walk saw: a symlink where a directory or
/// file was (`ELOOP`, `ENOTDIR`), or something else where a symlink was (`EINVAL`), is the
/// tree changing under the ingest.
fn changed(e: std::io::Error, path: PathBuf) -> Error {
    match e.raw_os_error() {
        // A symlink where a directory was seen, a directory where a symlink was (EINVAL from
        // readlinkat): replaced since the lstat.
        Some(libc::ELOOP) | Some(libc::ENOTDIR) | Some(libc::EINVAL) => Error::Changed { path },
        _ => Error::io(path, e),
    }
}

/// Which entries of a tree an ingest keeps: called with each path relative to the top and
/// whether it is a directory (a directory it refuses is not walked).
pub type Filter<'a> = &'a (dyn Fn(&Path, bool) -> bool + Sync);

/// A directory to ingest: where it is, what of it to keep, and whose rights it is read with
/// (see `source.rs`; `None`: this process's own).
#[derive(Clone, Copy)]
pub struct Source<'a> {
    pub path: &'a Path,
    pub keep: Option<Filter<'a>>,
    pub creds: Option<&'a Creds>,
    /// Refuse anything not readable by everyone (a source outside the manifest's directory:
    /// the mount shows what is stored to every user, so only what is already public may go
    /// in without the user's explicit consent).
    pub public_only: bool,
}

impl<'a> Source<'a> {
    /// All of `path`, read with this process's rights.
    pub fn own(path: &'a Path) -> Source<'a> {
        Source { path, keep: None, creds: None, public_only: false }
    }
}

/// The walk: metadata only, directory by directory from file descriptors.
struct Walker<'a> {
    top: &'a Path,
    keep: Option<Filter<'a>>,
    creds: Option<&'a Creds>,
    public_only: bool,
    jobs: Vec<FileJob>,
    /// Every directory's path relative to the top, in walk order.
    dirs: Vec<PathBuf>,
    report: IngestReport,
}

impl Walker<'_> {
    /// Walks one directory: its files first (so that they are one run of jobs), then its
    /// subdirectories, each opened again by name and checked to be the one looked at.
    fn dir(&mut self, fd: &OwnedFd, rel: &Path) -> Result<Node> {
        let creds = self.creds;
        let too_many = |path: PathBuf| Error::TooManyEntries { path };
        let dir_index = u32::try_from(self.dirs.len()).map_err(|_| too_many(self.top.join(rel)))?;
        self.dirs.push(rel.to_path_buf());
        let names = as_client(creds, || source::entries(fd)).at(self.top.join(rel))?;
        let first_job = u32::try_from(self.jobs.len()).map_err(|_| too_many(self.top.join(rel)))?;
        let mut entries = Vec::new();
        let mut subdirs = Vec::new();
        for name in names {
            let os = OsStr::from_bytes(&name);
            let child = rel.join(os);
            let path = || self.top.join(&child);
            let st = as_client(creds, || source::stat_at(fd.as_fd(), os)).at(path())?;
            let fmt = st.st_mode & libc::S_IFMT;
            if let Some(keep) = self.keep
                && !keep(&child, fmt == libc::S_IFDIR)
            {
                continue;
            }
            let public = match fmt {
                libc::S_IFDIR => st.st_mode & 0o005 == 0o005,
                libc::S_IFLNK => true,
                _ => st.st_mode & 0o004 != 0,
            };
            if self.public_only && !public {
                return Err(Error::NotPublic { path: path() });
            }
            match fmt {
                libc::S_IFDIR => subdirs.push((name, (st.st_dev, st.st_ino))),
                libc::S_IFREG => {
                    self.report.files += 1;
                    if self.jobs.len() >= u32::MAX as usize {
                        return Err(too_many(path()));
                    }
                    self.jobs.push(FileJob {
                        dir: dir_index,
                        executable: st.st_mode & 0o111 != 0,
                        name: name.into_boxed_slice(),
                        size: st.st_size as u64,
                        dev: st.st_dev,
                        ino: st.st_ino,
                    });
                }
                libc::S_IFLNK => {
                    self.report.symlinks += 1;
                    let target =
                        as_client(creds, || source::readlink_at(fd.as_fd(), os)).map_err(|e| changed(e, path()))?;
                    entries.push((name, Node::Symlink(target)));
                }
                _ => return Err(Error::Unsupported { path: path(), kind: special_kind(st.st_mode) }),
            }
        }
        let files = first_job..self.jobs.len() as u32;
        for (name, seen) in subdirs {
            let os = OsStr::from_bytes(&name);
            let child = rel.join(os);
            let path = || self.top.join(&child);
            let sub = as_client(creds, || source::open_dir(fd.as_fd(), os)).map_err(|e| changed(e, path()))?;
            // The directory opened must be the one looked at (not swapped since).
            if source::identity(&sub).at(path())? != seen {
                return Err(Error::Changed { path: path() });
            }
            let node = self.dir(&sub, &child)?;
            // With a filter, a directory left empty by it is dropped.
            if self.keep.is_some()
                && matches!(&node, Node::Dir { files, entries } if files.is_empty() && entries.is_empty())
            {
                continue;
            }
            self.report.dirs += 1;
            entries.push((name, node));
        }
        Ok(Node::Dir { files, entries })
    }
}

/// Shared state of one run of the pipeline.
struct Run<'a> {
    store: &'a Store,
    top: &'a Path,
    top_fd: &'a OwnedFd,
    creds: Option<&'a Creds>,
    jobs: &'a [FileJob],
    /// The order files are read in (see `ingest_filtered`).
    order: Vec<u32>,
    next_job: AtomicUsize,
    /// Workers with no file left, waiting for chunks to compress.
    idle: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    /// Chunks taken by this ingest whose locators are not committed yet.
    queued: Mutex<HashSet<Digest>>,
    /// Each job's digest and size, as its file is read.
    outputs: Mutex<Vec<FileSum>>,
    /// The walk's directories (a job's path is its directory's joined with its name).
    dirs: &'a [PathBuf],
    /// The packs created and not yet committed: removed if the ingest fails. (A committed pack
    /// is never removed here: its locators are in the index, and other writers may reuse them.)
    packs: Mutex<Vec<u64>>,
}

/// What one worker stored.
#[derive(Default)]
struct Stored {
    /// Locators of the chunks in the open pack (committed with it when it is sealed).
    chunks: Vec<(Digest, Locator)>,
    /// The file records read, spilled to disk: digest, length (u64 LE), encoding, one after
    /// another. Written and read back by this ingest only.
    spill: Option<BufWriter<fs::File>>,
    new_chunks: u64,
    new_bytes: u64,
    stored_bytes: u64,
}

struct Worker<'r, 'a> {
    run: &'r Run<'a>,
    chunker: Chunker,
    z: zstd::bulk::Compressor<'static>,
    pack: Option<PackWriter>,
    out: Stored,
}

/// Commits a batch whenever it grows past `Options::commit_bytes`.
struct Committer<'s> {
    store: &'s Store,
    batch: Batch,
    /// Operations committed so far (to decide whether to flush the memtables afterwards).
    ops: usize,
}

impl Committer<'_> {
    fn maybe_commit(&mut self) -> Result<()> {
        if self.batch.bytes() >= self.store.opts.commit_bytes {
            self.ops += self.batch.len();
            self.store.commit(std::mem::take(&mut self.batch))?;
        }
        Ok(())
    }
}

impl Run<'_> {
    /// Records the first error; the others (workers cancelled because of it) are dropped.
    fn fail(&self, e: Error) {
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::SeqCst);
    }

    /// One worker: whole files while there are any, then chunks handed over by the others.
    fn work(&self, tx: Sender<NewChunk>, rx: Receiver<NewChunk>) -> Stored {
        let mut w = Worker {
            run: self,
            chunker: Chunker::new(),
            z: zstd::bulk::Compressor::new(self.store.opts.zstd_level).expect("zstd context"),
            pack: None,
            out: Stored::default(),
        };
        while !self.failed.load(Ordering::SeqCst) {
            let Some(&i) = self.order.get(self.next_job.fetch_add(1, Ordering::SeqCst)) else {
                break;
            };
            match w.read_file(&self.jobs[i as usize], &tx).and_then(|out| w.spill(out)) {
                Ok(sum) => self.outputs.lock().unwrap()[i as usize] = sum,
                Err(e) => self.fail(e),
            }
        }
        self.idle.fetch_add(1, Ordering::SeqCst);
        drop(tx);
        // Ends once every worker has stopped reading and the queue is empty.
        for c in rx {
            if !self.failed.load(Ordering::SeqCst)
                && let Err(e) = w.store(c.id, &c.data)
            {
                self.fail(e);
            }
        }
        if !self.failed.load(Ordering::SeqCst)
            && let Err(e) = w.seal()
        {
            self.fail(e);
        }
        w.out
    }
}

impl Worker<'_, '_> {
    fn read_file(&mut self, job: &FileJob, tx: &Sender<NewChunk>) -> Result<FileOut> {
        let run = self.run;
        let rel = run.dirs[job.dir as usize].join(OsStr::from_bytes(&job.name));
        let path = &run.top.join(&rel);
        let _span = tracing::trace_span!("file", path = %path.display()).entered();
        let f = as_client(run.creds, || source::open_beneath(run.top_fd.as_fd(), &rel))
            .map_err(|e| changed(e, path.clone()))?;
        // The file opened must be the one the walk saw (not swapped since).
        if source::identity(&f).at(path)? != (job.dev, job.ino) {
            return Err(Error::Changed { path: path.clone() });
        }
        let before = f.metadata().at(path)?;
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        // An error storing a chunk (a full disk, say) is the store's, not the file's.
        let mut store_error = None;
        let mut chunker = std::mem::take(&mut self.chunker);
        let read = chunker.chunks(&f, before.len(), |data| {
            if run.failed.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("ingest cancelled"));
            }
            let id = Digest::of(Kind::Chunk, data);
            let len = data.len() as u32;
            chunks.push(ChunkRef { offset, len, id });
            offset += u64::from(len);
            if !run.queued.lock().unwrap().insert(id) {
                return Ok(());
            }
            if run.store.index.has_chunk(&id).map_err(std::io::Error::other)? {
                // Stored already: forget it, so that `queued` holds only chunks of open packs.
                run.queued.lock().unwrap().remove(&id);
                return Ok(());
            }
            // Only at the end, when a worker has no file left, is a chunk copied and handed over.
            if run.idle.load(Ordering::Relaxed) > 0
                && !tx.is_full()
                && tx.try_send(NewChunk { id, data: data.to_vec() }).is_ok()
            {
                return Ok(());
            }
            self.store(id, data).map_err(|e| {
                store_error = Some(e);
                std::io::Error::other("ingest cancelled")
            })
        });
        self.chunker = chunker;
        if let Some(e) = store_error {
            return Err(e);
        }
        let read = read.at(path)?;
        let after = f.metadata().at(path)?;
        if read != before.len()
            || after.len() != before.len()
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec()
        {
            return Err(Error::Changed { path: path.clone() });
        }
        let record = FileRecord { size: read, chunks };
        Ok(FileOut { digest: record.digest(), record })
    }

    /// Writes a file's record to this worker's spill file; returns what the tree needs.
    fn spill(&mut self, out: FileOut) -> Result<FileSum> {
        let dir = &self.run.store.packs_dir;
        let w = match &mut self.out.spill {
            Some(w) => w,
            None => self.out.spill.insert(BufWriter::new(tempfile::tempfile_in(dir).at(dir)?)),
        };
        let enc = out.record.encode();
        let len = enc.len() as u64;
        w.write_all(out.digest.as_bytes())
            .and_then(|()| w.write_all(&len.to_le_bytes()))
            .and_then(|()| w.write_all(&enc))
            .map_err(|e| Error::io(dir.join("(file records spilled by an ingest)"), e))?;
        Ok((out.digest, out.record.size))
    }

    /// Seals the open pack, if any, and commits it with its chunks' locators.
    fn seal(&mut self) -> Result<()> {
        let Some(pack) = self.pack.take() else { return Ok(()) };
        let (id, info) = pack.seal()?;
        let mut batch = Batch::default();
        batch.put_pack(id, &info);
        for (chunk, loc) in &self.out.chunks {
            batch.put_locator(chunk, loc);
        }
        self.run.store.commit(batch)?;
        // Committed: the index now answers for these chunks, and the pack is the store's.
        self.run.packs.lock().unwrap().retain(|p| *p != id);
        let mut queued = self.run.queued.lock().unwrap();
        for (chunk, _) in self.out.chunks.drain(..) {
            queued.remove(&chunk);
        }
        Ok(())
    }

    /// Compresses a chunk and appends it to this worker's pack, sealing the pack when full.
    fn store(&mut self, id: Digest, data: &[u8]) -> Result<()> {
        let (codec, bytes) =
            tracing::trace_span!("compress", len = data.len()).in_scope(|| encode_chunk(&mut self.z, data));
        let pack = match &mut self.pack {
            Some(p) => p,
            None => {
                let pack_id = self.run.store.alloc_pack_id();
                self.run.packs.lock().unwrap().push(pack_id);
                self.pack.insert(PackWriter::create(&self.run.store.packs_dir, pack_id)?)
            }
        };
        let loc = pack.append(&id, data.len() as u32, codec, &bytes)?;
        self.out.chunks.push((id, loc));
        self.out.new_chunks += 1;
        self.out.new_bytes += data.len() as u64;
        self.out.stored_bytes += bytes.len() as u64;
        if pack.len() >= PACK_TARGET_SIZE || self.out.chunks.len() >= self.run.store.opts.pack_max_chunks {
            self.seal()?;
        }
        Ok(())
    }
}

impl Store {
    /// Ingests the directory `src` and records its root tree under `name` (by default its own
    /// digest in hex), in the same atomic commit as the data. Returns what was stored.
    pub fn ingest(&self, src: &Path, name: Option<&str>) -> Result<IngestReport> {
        self.ingest_source(Source::own(src), name)
    }

    /// [`Store::ingest`] of a [`Source`] (filtered, read with a client's rights).
    pub fn ingest_source(&self, src: Source<'_>, name: Option<&str>) -> Result<IngestReport> {
        self.ingest_then(src, |store, root, batch| {
            let hex = root.to_hex();
            store.put_root(batch, name.unwrap_or(&hex), root)
        })
    }

    /// Ingests `src` without naming it, and pins the tree against garbage collection for as
    /// long as the returned guard lives (a build's sources: used by the build, named by no
    /// root).
    pub fn ingest_pinned(&self, src: Source<'_>) -> Result<(IngestReport, Pin)> {
        let writer = self.gc_lock.read().unwrap();
        let r = self.ingest_locked(src, |_, _, _| Ok(()))?;
        let pin = self.pin_held(r.root);
        drop(writer);
        Ok((r, pin))
    }

    /// Ingests `src`; `finish` adds its own records (a root, a build result) to the final
    /// batch, so they commit atomically with the data they name.
    pub(crate) fn ingest_then(
        &self,
        src: Source<'_>,
        finish: impl FnOnce(&Store, &Digest, &mut Batch) -> Result<()>,
    ) -> Result<IngestReport> {
        // Held from the first "is this chunk already stored?" to the commit: gc waits, so
        // nothing the ingest reuses is removed before the root referencing it exists.
        let _writer = self.gc_lock.read().unwrap();
        self.ingest_locked(src, finish)
    }

    pub(crate) fn ingest_locked(
        &self,
        src: Source<'_>,
        finish: impl FnOnce(&Store, &Digest, &mut Batch) -> Result<()>,
    ) -> Result<IngestReport> {
        let (path, creds) = (src.path, src.creds);
        // The top may be a symlink to a directory (followed with the client's rights);
        // nothing below it is followed.
        let flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC;
        let top_fd = match as_client(creds, || nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())) {
            Ok(fd) => fd,
            Err(nix::errno::Errno::ENOTDIR) => return Err(Error::NotADirectory { path: path.into() }),
            Err(e) => return Err(Error::io(path, source::io(e))),
        };
        let _span = tracing::info_span!("ingest", src = %path.display()).entered();
        let t0 = std::time::Instant::now();
        let mut walker = Walker {
            top: path,
            keep: src.keep,
            creds,
            public_only: src.public_only,
            jobs: Vec::new(),
            dirs: Vec::new(),
            report: IngestReport::default(),
        };
        let root_node = tracing::info_span!("walk").in_scope(|| walker.dir(&top_fd, Path::new("")))?;
        let Walker { jobs, dirs, mut report, .. } = walker;
        tracing::debug!(files = jobs.len(), elapsed = ?t0.elapsed(), "walked");
        // Large files first, so that none is left for one worker at the end while the other
        // cores idle; the rest in walk order, so that a directory's small files sit together in
        // the packs (a cold read of a tree then reads packs nearly sequentially).
        let mut order: Vec<u32> = (0..jobs.len() as u32).collect();
        order.sort_by_key(|&i| {
            let size = jobs[i as usize].size;
            if size >= BIG_FILE { std::cmp::Reverse(size) } else { std::cmp::Reverse(0) }
        });
        let run = Run {
            store: self,
            top: path,
            top_fd: &top_fd,
            creds,
            jobs: &jobs,
            order,
            next_job: AtomicUsize::new(0),
            idle: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            queued: Mutex::new(HashSet::new()),
            outputs: Mutex::new(vec![(Digest([0; 32]), 0); jobs.len()]),
            dirs: &dirs,
            packs: Mutex::new(Vec::new()),
        };
        let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (tx, rx) = bounded::<NewChunk>(workers);
        let stored: Vec<Stored> = std::thread::scope(|s| {
            let parent = tracing::Span::current();
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    let (tx, rx, run, parent) = (tx.clone(), rx.clone(), &run, parent.clone());
                    s.spawn(move || tracing::info_span!(parent: &parent, "data").in_scope(|| run.work(tx, rx)))
                })
                .collect();
            drop((tx, rx));
            handles.into_iter().map(|h| h.join().expect("ingest worker panicked")).collect()
        });
        tracing::debug!(elapsed = ?t0.elapsed(), "data written");
        let unsealed = run.packs.into_inner().unwrap();
        if let Some(e) = run.error.into_inner().unwrap() {
            self.discard_packs(&unsealed);
            return Err(e);
        }
        // Every pack is sealed and committed now, so every file record's chunks are in the index.
        debug_assert!(unsealed.is_empty());
        let mut c = Committer { store: self, batch: Batch::default(), ops: 0 };
        for st in stored {
            report.new_chunks += st.new_chunks;
            report.new_bytes += st.new_bytes;
            report.stored_bytes += st.stored_bytes;
            if let Some(spill) = st.spill {
                tracing::info_span!("files").in_scope(|| self.commit_spilled(spill, &mut c))?;
            }
        }
        // Every job was read (a failure ended the ingest above), so every output is set.
        let outputs = run.outputs.into_inner().unwrap();
        report.bytes = outputs.iter().map(|o| o.1).sum();
        drop(dirs);
        let trees = tracing::info_span!("trees");
        let (root, _) = trees.in_scope(|| self.build_trees(root_node, &jobs, &outputs, &mut c))?;
        drop((outputs, jobs));
        finish(self, &root, &mut c.batch)?;
        tracing::debug!(ops = c.ops + c.batch.len(), elapsed = ?t0.elapsed(), "committing the root");
        let ops = c.ops + c.batch.len();
        tracing::info_span!("commit").in_scope(|| self.commit(c.batch))?;
        if ops >= FLUSH_AFTER_OPS {
            // A large ingest leaves its records in the memtables and the log: write them out,
            // so that the next open does not replay them and the log does not sit on disk.
            self.index.flush();
        }
        report.root = root;
        tracing::debug!(?report, elapsed = ?t0.elapsed(), "ingest committed");
        Ok(report)
    }

    /// Commits the file records of one worker's spill file (those not in the index yet).
    fn commit_spilled(&self, spill: BufWriter<fs::File>, c: &mut Committer<'_>) -> Result<()> {
        let what = || self.packs_dir.join("(file records spilled by an ingest)");
        let mut f = spill.into_inner().map_err(|e| Error::io(what(), e.into_error()))?;
        f.rewind().map_err(|e| Error::io(what(), e))?;
        let mut r = BufReader::new(f);
        let mut head = [0u8; 40];
        let mut enc = Vec::new();
        loop {
            match r.read_exact(&mut head) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(Error::io(what(), e)),
            }
            let digest = Digest::from_slice(&head[..32]).expect("32 bytes");
            let len = u64::from_le_bytes(head[32..].try_into().unwrap()) as usize;
            enc.resize(len, 0);
            r.read_exact(&mut enc).map_err(|e| Error::io(what(), e))?;
            if !self.index.has_file(&digest)? {
                c.batch.put_file(&digest, &enc);
                c.maybe_commit()?;
            }
        }
    }

    fn discard_packs(&self, written: &[u64]) {
        for id in written {
            let _ = fs::remove_file(crate::local::pack::pack_path(&self.packs_dir, *id));
        }
    }

    /// Builds the trees bottom-up, adding the new ones to the batch.
    fn build_trees(
        &self,
        node: Node,
        jobs: &[FileJob],
        outputs: &[FileSum],
        c: &mut Committer<'_>,
    ) -> Result<(Digest, u64)> {
        let Node::Dir { files, entries: children } = node else { unreachable!("trees are built from directories") };
        let mut entries = Vec::with_capacity(files.len() + children.len());
        for job in files {
            let (digest, size) = outputs[job as usize];
            let j = &jobs[job as usize];
            entries.push(Entry {
                name: j.name.to_vec(),
                kind: EntryKind::File { digest, size, executable: j.executable },
            });
        }
        for (name, child) in children {
            let kind = match child {
                Node::Dir { .. } => {
                    let (digest, size) = self.build_trees(child, jobs, outputs, c)?;
                    EntryKind::Dir { digest, size }
                }
                Node::Symlink(target) => EntryKind::Symlink { target },
            };
            entries.push(Entry { name, kind });
        }
        let tree = Tree::new(entries)?;
        let digest = tree.digest();
        if !self.has_tree(&digest)? {
            // Its subtrees were put before it (bottom-up), so a commit here keeps the closure.
            c.batch.put_tree(&digest, &tree.encode());
            c.maybe_commit()?;
        }
        Ok((digest, tree.size()))
    }
}
