//! `ingest(dir)`: a directory into the store, as a pipeline with bounded memory.
//!
//! ```text
//! walk (metadata only) ──► readers (2): read, chunk, hash ──► compressors (all cores): zstd
//!                                    │ chunk lists                     │
//!                                    ▼                                 ▼
//!                              file records                 writer: append to packs
//!                                    └──────────► one RocksDB batch ◄──┘ (after packs are fsynced)
//! ```
//! The queues between stages hold a few chunks each, so memory is
//! O((readers + cores) × max chunk) whatever the file sizes. Chunks already in the index, or
//! already queued by this ingest, are not stored again. Nothing becomes visible until the final
//! batch commits; an error or a kill before that leaves only an unnamed pack, removed at the
//! next open.

use std::collections::HashSet;
use std::fs::{self, File};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use crossbeam_channel::bounded;

use crate::chunker::chunk_stream;
use crate::digest::{Digest, Hasher, Kind};
use crate::error::{Error, IoContext, Result};
use crate::index::{Batch, Cf};
use crate::pack::{PACK_TARGET_SIZE, PackWriter, encode_chunk};
use crate::records::{ChunkRef, Codec, FileRecord};
use crate::store::Store;
use crate::tree::{Entry, EntryKind, Tree};

/// Files at least this large are read first.
const BIG_FILE: u64 = 8 << 20;

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

enum Node {
    Dir(Vec<(Vec<u8>, Node)>),
    File { job: usize, executable: bool },
    Symlink(Vec<u8>),
}

struct FileJob {
    path: PathBuf,
    size: u64,
}

struct FileOut {
    digest: Digest,
    record: FileRecord,
}

struct NewChunk {
    id: Digest,
    data: Vec<u8>,
}

struct Encoded {
    id: Digest,
    raw_len: u32,
    codec: Codec,
    bytes: Vec<u8>,
}

fn special_kind(ft: &fs::FileType) -> &'static str {
    if ft.is_socket() {
        "socket"
    } else if ft.is_fifo() {
        "FIFO"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_char_device() {
        "character device"
    } else {
        "special file"
    }
}

/// Which entries of a tree an ingest keeps: called with each path relative to the top and
/// whether it is a directory (a directory it refuses is not walked).
pub type Filter<'a> = &'a (dyn Fn(&Path, bool) -> bool + Sync);

fn walk(
    top: &Path,
    path: &Path,
    keep: Option<Filter<'_>>,
    jobs: &mut Vec<FileJob>,
    report: &mut IngestReport,
) -> Result<Node> {
    let mut children = Vec::new();
    for ent in fs::read_dir(path).at(path)? {
        let ent = ent.at(path)?;
        let p = ent.path();
        let meta = fs::symlink_metadata(&p).at(&p)?;
        let ft = meta.file_type();
        if let Some(keep) = keep
            && !keep(p.strip_prefix(top).unwrap_or(&p), ft.is_dir())
        {
            continue;
        }
        let node = if ft.is_dir() {
            let node = walk(top, &p, keep, jobs, report)?;
            // With a filter, a directory left empty by it is dropped.
            if keep.is_some() && matches!(&node, Node::Dir(c) if c.is_empty()) {
                continue;
            }
            report.dirs += 1;
            node
        } else if ft.is_file() {
            report.files += 1;
            jobs.push(FileJob { path: p, size: meta.len() });
            Node::File { job: jobs.len() - 1, executable: meta.mode() & 0o111 != 0 }
        } else if ft.is_symlink() {
            report.symlinks += 1;
            Node::Symlink(fs::read_link(&p).at(&p)?.as_os_str().as_bytes().to_vec())
        } else {
            return Err(Error::Unsupported { path: p, kind: special_kind(&ft) });
        };
        children.push((ent.file_name().as_bytes().to_vec(), node));
    }
    Ok(Node::Dir(children))
}

/// Shared state of one run of the pipeline.
struct Run<'a> {
    store: &'a Store,
    jobs: &'a [FileJob],
    /// The order files are read in (see `ingest_then`).
    order: Vec<usize>,
    next_job: AtomicUsize,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    queued: Mutex<HashSet<Digest>>,
    outputs: Mutex<Vec<Option<FileOut>>>,
}

impl Run<'_> {
    fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::SeqCst);
        let mut slot = self.error.lock().unwrap();
        if slot.is_none() {
            *slot = Some(e);
        }
    }

    /// Reader stage: takes files off the job list until it is empty or the run failed.
    fn read_files(&self, tx: &crossbeam_channel::Sender<NewChunk>) {
        while !self.failed.load(Ordering::SeqCst) {
            let Some(&i) = self.order.get(self.next_job.fetch_add(1, Ordering::SeqCst)) else {
                return;
            };
            let job = &self.jobs[i];
            match self.read_file(&job.path, tx) {
                Ok(out) => self.outputs.lock().unwrap()[i] = Some(out),
                Err(e) => return self.fail(e),
            }
        }
    }

    fn read_file(&self, path: &Path, tx: &crossbeam_channel::Sender<NewChunk>) -> Result<FileOut> {
        let f = File::open(path).at(path)?;
        let before = f.metadata().at(path)?;
        let mut h = Hasher::new(Kind::File);
        let mut chunks = Vec::new();
        let mut offset = 0u64;
        let read = chunk_stream(&f, before.len(), |data| {
            if self.failed.load(Ordering::SeqCst) {
                return Err(std::io::Error::other("ingest cancelled"));
            }
            h.update(&data);
            let id = Digest::of(Kind::Chunk, &data);
            let len = data.len() as u32;
            chunks.push(ChunkRef { offset, len, id });
            offset += u64::from(len);
            let is_new = self.queued.lock().unwrap().insert(id);
            if is_new && !self.store.index.contains(Cf::Chunks, id.as_bytes()).map_err(std::io::Error::other)? {
                tx.send(NewChunk { id, data }).map_err(|_| std::io::Error::other("ingest cancelled"))?;
            }
            Ok(())
        })
        .at(path)?;
        let after = f.metadata().at(path)?;
        if read != before.len()
            || after.len() != before.len()
            || after.mtime() != before.mtime()
            || after.mtime_nsec() != before.mtime_nsec()
            || after.ctime() != before.ctime()
            || after.ctime_nsec() != before.ctime_nsec()
        {
            return Err(Error::Changed { path: path.into() });
        }
        Ok(FileOut { digest: h.finalize(), record: FileRecord { size: read, chunks } })
    }
}

impl Store {
    /// Ingests the directory `src` and records its root tree under `name` (by default its own
    /// digest in hex), in the same atomic commit as the data. Returns what was stored.
    pub fn ingest(&self, src: &Path, name: Option<&str>) -> Result<IngestReport> {
        self.ingest_then(src, |root, batch| {
            let hex = root.to_hex();
            batch.put(Cf::Roots, name.unwrap_or(&hex).as_bytes(), root.as_bytes());
        })
    }

    /// Ingests `src`; `finish` adds its own records (a root, a build result) to the final batch,
    /// so they commit atomically with the data they name.
    pub fn ingest_then(&self, src: &Path, finish: impl FnOnce(&Digest, &mut Batch)) -> Result<IngestReport> {
        self.ingest_filtered(src, None, finish)
    }

    /// [`Store::ingest_then`] keeping only the entries `keep` accepts (directories it leaves
    /// empty are dropped too).
    pub fn ingest_filtered(
        &self,
        src: &Path,
        keep: Option<Filter<'_>>,
        finish: impl FnOnce(&Digest, &mut Batch),
    ) -> Result<IngestReport> {
        let meta = fs::symlink_metadata(src).at(src)?;
        if !meta.is_dir() {
            return Err(Error::Io {
                path: src.into(),
                source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
            });
        }
        let t0 = std::time::Instant::now();
        let mut report = IngestReport::default();
        let mut jobs = Vec::new();
        let root_node = walk(src, src, keep, &mut jobs, &mut report)?;
        tracing::debug!(files = jobs.len(), elapsed = ?t0.elapsed(), "walked");
        // Large files first, so that none is left for one reader at the end while the other
        // cores idle; the rest in walk order, so that a directory's small files sit together in
        // the packs (a cold read of a tree then reads packs nearly sequentially).
        let mut order: Vec<usize> = (0..jobs.len()).collect();
        order.sort_by_key(|&i| {
            if jobs[i].size >= BIG_FILE { std::cmp::Reverse(jobs[i].size) } else { std::cmp::Reverse(0) }
        });
        let run = Run {
            store: self,
            jobs: &jobs,
            order,
            next_job: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
            queued: Mutex::new(HashSet::new()),
            outputs: Mutex::new((0..jobs.len()).map(|_| None).collect()),
        };
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let readers = 2.min(jobs.len()).max(1);
        let (chunk_tx, chunk_rx) = bounded::<NewChunk>(2 * cores);
        let (enc_tx, enc_rx) = bounded::<Encoded>(2 * cores);
        let mut batch = Batch::default();

        let written = std::thread::scope(|s| {
            for _ in 0..readers {
                let tx = chunk_tx.clone();
                let run = &run;
                s.spawn(move || run.read_files(&tx));
            }
            drop(chunk_tx);
            for _ in 0..cores {
                let rx = chunk_rx.clone();
                let tx = enc_tx.clone();
                let level = self.opts.zstd_level;
                s.spawn(move || {
                    let mut z = zstd::bulk::Compressor::new(level).expect("zstd context");
                    for c in rx {
                        let (codec, bytes) = encode_chunk(&mut z, &c.data);
                        let e = Encoded { id: c.id, raw_len: c.data.len() as u32, codec, bytes };
                        if tx.send(e).is_err() {
                            return;
                        }
                    }
                });
            }
            drop(chunk_rx);
            drop(enc_tx);
            self.write_packs(enc_rx, &mut batch, &mut report)
        });
        tracing::debug!(elapsed = ?t0.elapsed(), "data written");
        // A writer error (a full disk, say) is the cause; the readers' errors are then only
        // "cancelled", so it is reported first.
        let written = written?;
        if let Some(e) = run.error.into_inner().unwrap() {
            self.discard_packs(&written);
            return Err(e);
        }

        let outputs: Vec<FileOut> =
            run.outputs.into_inner().unwrap().into_iter().map(|o| o.expect("every file read")).collect();
        let mut seen_files = HashSet::new();
        for out in &outputs {
            report.bytes += out.record.size;
            if seen_files.insert(out.digest) && !self.index.contains(Cf::Files, out.digest.as_bytes())? {
                batch.put(Cf::Files, out.digest.as_bytes(), &out.record.encode());
            }
        }
        let (root, _) = match self.build_trees(root_node, &outputs, &mut batch) {
            Ok(r) => r,
            Err(e) => {
                self.discard_packs(&written);
                return Err(e);
            }
        };
        finish(&root, &mut batch);
        tracing::debug!(ops = batch.len(), elapsed = ?t0.elapsed(), "committing");
        if let Err(e) = self.commit(batch) {
            self.discard_packs(&written);
            return Err(e);
        }
        report.root = root;
        tracing::debug!(?report, elapsed = ?t0.elapsed(), "ingest committed");
        Ok(report)
    }

    /// Writer stage: appends encoded chunks to packs, sealing each past the target size.
    /// Returns the ids of the packs written (sealed, not yet in the index).
    fn write_packs(
        &self,
        rx: crossbeam_channel::Receiver<Encoded>,
        batch: &mut Batch,
        report: &mut IngestReport,
    ) -> Result<Vec<u64>> {
        let mut written = Vec::new();
        let mut cur: Option<PackWriter> = None;
        let result = (|| {
            for e in rx.iter() {
                let w = match &mut cur {
                    Some(w) => w,
                    None => {
                        let id = self.alloc_pack_id();
                        written.push(id);
                        cur.insert(PackWriter::create(&self.packs_dir, id)?)
                    }
                };
                let loc = w.append(&e.id, e.raw_len, e.codec, &e.bytes)?;
                batch.put(Cf::Chunks, e.id.as_bytes(), &loc.encode());
                report.new_chunks += 1;
                report.new_bytes += u64::from(e.raw_len);
                report.stored_bytes += e.bytes.len() as u64;
                if w.len() >= PACK_TARGET_SIZE {
                    let (id, info) = cur.take().unwrap().seal()?;
                    batch.put(Cf::Packs, &id.to_be_bytes(), &info.encode());
                }
            }
            if let Some(w) = cur.take() {
                let (id, info) = w.seal()?;
                batch.put(Cf::Packs, &id.to_be_bytes(), &info.encode());
            }
            Ok(())
        })();
        // Dropping the receiver on error makes the upstream stages stop at their next send.
        match result {
            Ok(()) => Ok(written),
            Err(e) => {
                if let Some(w) = cur.take() {
                    w.discard();
                }
                self.discard_packs(&written);
                Err(e)
            }
        }
    }

    fn discard_packs(&self, written: &[u64]) {
        for id in written {
            let _ = fs::remove_file(crate::pack::pack_path(&self.packs_dir, *id));
        }
    }

    /// Builds the trees bottom-up, adding the new ones to the batch.
    fn build_trees(&self, node: Node, outputs: &[FileOut], batch: &mut Batch) -> Result<(Digest, u64)> {
        let Node::Dir(children) = node else { unreachable!("trees are built from directories") };
        let mut entries = Vec::with_capacity(children.len());
        for (name, child) in children {
            let kind = match child {
                Node::Dir(_) => {
                    let (digest, size) = self.build_trees(child, outputs, batch)?;
                    EntryKind::Dir { digest, size }
                }
                Node::File { job, executable } => {
                    let out = &outputs[job];
                    EntryKind::File { digest: out.digest, size: out.record.size, executable }
                }
                Node::Symlink(target) => EntryKind::Symlink { target },
            };
            entries.push(Entry { name, kind });
        }
        let tree = Tree::new(entries)?;
        let digest = tree.digest();
        if !self.has_tree(&digest)? {
            batch.put(Cf::Trees, digest.as_bytes(), &tree.encode());
        }
        Ok((digest, tree.size()))
    }
}
