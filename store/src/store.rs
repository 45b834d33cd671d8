//! [`Store`]: one store directory, its lock, index, packs and caches.
//!
//! ```text
//! <dir>/VORPALFS_STORE   marker + format version
//! <dir>/lock             flock held by the one process that owns the store
//! <dir>/index/           RocksDB (metadata only)
//! <dir>/packs/           append-only pack files of compressed chunks
//! ```

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};

use crate::cache::{ChunkCache, MetaCache};
use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::index::{Batch, Cf, Index};
use crate::pack::{self, PackReader};
use crate::records::{FileRecord, Locator, PackInfo};
use crate::tree::{Entry, EntryKind, Tree};

const MARKER: &str = "VORPALFS_STORE";
/// 2: file digests hash the chunk list, not the content.
const FORMAT: u32 = 2;

/// Tunables of an open store.
#[derive(Clone, Debug)]
pub struct Options {
    /// Bytes of decoded chunks kept in memory.
    pub chunk_cache_bytes: usize,
    /// zstd level for new chunks. Level 1 rather than zstd's default 3: on the Rust toolchain
    /// it ingests about 1.3x faster for packs about 7% larger (scripts/bench/ingest.sh).
    pub zstd_level: i32,
    /// The S3 location shared with other hosts, if any.
    pub remote: Option<crate::remote::RemoteConfig>,
    /// Disk budget for data fetched from S3 (evicted least recently read first); `None`: no limit.
    pub cache_bytes: Option<u64>,
}

impl Default for Options {
    fn default() -> Self {
        Options { chunk_cache_bytes: 256 << 20, zstd_level: 1, remote: None, cache_bytes: None }
    }
}

/// An open store. Cheap to share across threads (`Arc<Store>`); all methods take `&self`.
pub struct Store {
    dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) packs_dir: PathBuf,
    pub(crate) packs: PackReader,
    pub(crate) next_pack: AtomicU64,
    pub(crate) opts: Options,
    chunks: ChunkCache,
    trees: MetaCache<Tree>,
    files: MetaCache<FileRecord>,
    inflight: Mutex<HashMap<Digest, Arc<OnceLock<SharedResult>>>>,
    counters: Counters,
    pub(crate) remote: Option<crate::remote::Remote>,
    pub(crate) sync: crate::sync::SyncState,
    /// Writers that may reference objects already in the index (ingest, lazy lookup, pull,
    /// `set_root`) hold it shared from their first existence check to their commit; `gc` holds
    /// it exclusively, so it never removes what a writer has decided to reuse.
    pub(crate) gc_lock: RwLock<()>,
    /// Trees kept alive without a root while someone uses them (a build's sources).
    pins: Pins,
    _lock: File,
}

/// In-memory temporary roots: gc treats every pinned tree as reachable.
#[derive(Clone, Default)]
pub(crate) struct Pins(Arc<Mutex<HashMap<Digest, usize>>>);

/// Keeps a tree (and everything below it) from garbage collection until dropped.
pub struct Pin {
    pins: Pins,
    tree: Digest,
}

impl Pin {
    pub fn tree(&self) -> &Digest {
        &self.tree
    }
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut m = self.pins.0.lock().unwrap();
        if let Some(n) = m.get_mut(&self.tree) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.tree);
            }
        }
    }
}

type SharedResult = std::result::Result<Arc<Vec<u8>>, Arc<Error>>;

#[derive(Default)]
struct Counters {
    chunk_hits: AtomicU64,
    chunk_misses: AtomicU64,
}

/// Memory-cache counters of an open store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    pub chunk_cache_bytes: u64,
    pub chunk_cache_budget: u64,
    pub chunk_hits: u64,
    pub chunk_misses: u64,
}

/// A named root: a name pinned to a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub name: String,
    pub digest: Digest,
}

impl Store {
    /// Opens the store at `dir`, creating it when `dir` is missing or empty.
    pub fn open(dir: &Path) -> Result<Store> {
        Self::open_with(dir, Options::default())
    }

    pub fn open_with(dir: &Path, opts: Options) -> Result<Store> {
        fs::create_dir_all(dir).at(dir)?;
        let marker = dir.join(MARKER);
        match fs::read_to_string(&marker) {
            Ok(text) => {
                let found = text.trim().strip_prefix("vorpalfs store format ").unwrap_or(text.trim());
                if found != FORMAT.to_string() {
                    return Err(Error::Version { path: dir.into(), found: found.into(), supported: FORMAT });
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if fs::read_dir(dir).at(dir)?.next().is_some() {
                    return Err(Error::NotAStore { path: dir.into(), marker: MARKER });
                }
                let tmp = dir.join(".VORPALFS_STORE.tmp");
                fs::write(&tmp, format!("vorpalfs store format {FORMAT}\n")).at(&tmp)?;
                fs::rename(&tmp, &marker).at(&marker)?;
            }
            Err(e) => return Err(Error::io(&marker, e)),
        }
        let lock = lock_store(dir)?;
        let packs_dir = dir.join("packs");
        fs::create_dir_all(&packs_dir).at(&packs_dir)?;
        let index = Index::open(&dir.join("index"))?;
        let store = Store {
            dir: dir.to_path_buf(),
            index,
            packs: PackReader::new(packs_dir.clone()),
            packs_dir,
            next_pack: AtomicU64::new(0),
            chunks: ChunkCache::new(opts.chunk_cache_bytes),
            trees: MetaCache::new(16384),
            files: MetaCache::new(16384),
            inflight: Mutex::new(HashMap::new()),
            counters: Counters::default(),
            remote: match &opts.remote {
                Some(cfg) => Some(crate::remote::Remote::connect(cfg.clone())?),
                None => None,
            },
            sync: Default::default(),
            gc_lock: RwLock::new(()),
            pins: Pins::default(),
            opts,
            _lock: lock,
        };
        store.recover_packs()?;
        Ok(store)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes pack files the index does not name (left by an interrupted ingest) and sets the
    /// next pack id past every id in use.
    fn recover_packs(&self) -> Result<()> {
        let mut max = 0u64;
        self.index.scan(Cf::Packs, |k, _| {
            max = max.max(u64::from_be_bytes(k.try_into().unwrap_or_default()));
            true
        })?;
        for ent in fs::read_dir(&self.packs_dir).at(&self.packs_dir)? {
            let ent = ent.at(&self.packs_dir)?;
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(pack::pack_id) else {
                continue;
            };
            max = max.max(id);
            if !self.index.contains(Cf::Packs, &id.to_be_bytes())? {
                tracing::info!(pack = %name.to_string_lossy(), "removing a pack left by an interrupted ingest");
                fs::remove_file(ent.path()).at(ent.path())?;
            }
        }
        self.next_pack.store(max + 1, Ordering::SeqCst);
        Ok(())
    }

    pub(crate) fn alloc_pack_id(&self) -> u64 {
        self.next_pack.fetch_add(1, Ordering::SeqCst)
    }

    // ----- roots -----

    /// All named roots, by name.
    pub fn roots(&self) -> Result<Vec<Root>> {
        let mut out = Vec::new();
        self.index.scan(Cf::Roots, |k, v| {
            if let Some(digest) = Digest::from_slice(v) {
                out.push(Root { name: String::from_utf8_lossy(k).into_owned(), digest });
            }
            true
        })?;
        Ok(out)
    }

    /// Points `name` at `digest` (which must be a stored tree).
    pub fn set_root(&self, name: &str, digest: &Digest) -> Result<()> {
        let _writer = self.gc_lock.read().unwrap();
        self.tree(digest)?;
        let mut b = Batch::default();
        b.put(Cf::Roots, name.as_bytes(), digest.as_bytes());
        self.index.commit(b)
    }

    /// Removes a root name; returns whether it existed. Its data stays until garbage collection.
    pub fn remove_root(&self, name: &str) -> Result<bool> {
        if self.index.get(Cf::Roots, name.as_bytes())?.is_none() {
            return Ok(false);
        }
        let mut b = Batch::default();
        b.delete(Cf::Roots, name.as_bytes());
        self.index.commit(b)?;
        Ok(true)
    }

    /// Whether some root points at `digest` (what the mount shows at its top level).
    pub fn has_root(&self, digest: &Digest) -> Result<bool> {
        // Roots added without a name are keyed by their digest: the common case is one lookup.
        if self.index.get(Cf::Roots, digest.to_hex().as_bytes())?.as_deref() == Some(digest.as_bytes()) {
            return Ok(true);
        }
        Ok(self.roots()?.iter().any(|r| r.digest == *digest))
    }

    /// Resolves a root name or a tree digest (hex) to a stored tree digest.
    pub fn resolve(&self, name_or_digest: &str) -> Result<Digest> {
        if let Some(v) = self.index.get(Cf::Roots, name_or_digest.as_bytes())?
            && let Some(d) = Digest::from_slice(&v)
        {
            return Ok(d);
        }
        if let Ok(d) = name_or_digest.parse::<Digest>()
            && self.has_tree(&d)?
        {
            return Ok(d);
        }
        // An artifact's name or alias: the output of its newest build.
        if let Some(input) = self.alias(name_or_digest)?
            && let Some(tree) = self.result(&input)?
        {
            return Ok(tree);
        }
        Err(Error::UnknownRoot(name_or_digest.to_string()))
    }

    /// Pins `tree` against garbage collection until the returned guard is dropped. The caller
    /// must know the tree is stored and not collectable meanwhile (hold `gc_lock` shared, or
    /// another pin or a root on it).
    pub(crate) fn pin_held(&self, tree: Digest) -> Pin {
        *self.pins.0.lock().unwrap().entry(tree).or_default() += 1;
        Pin { pins: self.pins.clone(), tree }
    }

    /// Pins a stored tree against garbage collection until the guard is dropped; an error if
    /// the tree is not (or no longer) stored.
    pub fn pin(&self, tree: &Digest) -> Result<Pin> {
        let _writer = self.gc_lock.read().unwrap();
        self.tree(tree)?;
        Ok(self.pin_held(*tree))
    }

    /// Forgets decoded trees and file records (gc removed some from the index).
    pub(crate) fn clear_meta_caches(&self) {
        self.trees.clear();
        self.files.clear();
    }

    /// Every pinned tree (for gc).
    pub(crate) fn pinned(&self) -> Vec<Digest> {
        self.pins.0.lock().unwrap().keys().copied().collect()
    }

    // ----- metadata -----

    pub fn has_tree(&self, d: &Digest) -> Result<bool> {
        self.index.contains(Cf::Trees, d.as_bytes())
    }

    /// Loads (and caches) a tree, verifying that its encoding hashes to its digest.
    pub fn tree(&self, d: &Digest) -> Result<Arc<Tree>> {
        if let Some(t) = self.trees.get(d) {
            return Ok(t);
        }
        let bytes = self.index.get(Cf::Trees, d.as_bytes())?.ok_or(Error::Missing { what: "tree", digest: *d })?;
        if Digest::of(crate::Kind::Tree, &bytes) != *d {
            return Err(Error::Corrupt {
                what: "tree",
                digest: *d,
                detail: "encoding does not match its digest".into(),
            });
        }
        let t = Arc::new(Tree::decode(&bytes, d)?);
        self.trees.insert(*d, t.clone());
        Ok(t)
    }

    /// Loads (and caches) a file's chunk list.
    pub fn file(&self, d: &Digest) -> Result<Arc<FileRecord>> {
        if let Some(f) = self.files.get(d) {
            return Ok(f);
        }
        let bytes = self.index.get(Cf::Files, d.as_bytes())?.ok_or(Error::Missing { what: "file", digest: *d })?;
        let f = Arc::new(FileRecord::decode(&bytes, d)?);
        self.files.insert(*d, f.clone());
        Ok(f)
    }

    /// Follows a `/`-separated path from a root tree; "" is the root itself.
    /// Symlinks are not followed.
    pub fn lookup(&self, root: &Digest, path: &str) -> Result<Entry> {
        let mut cur = Entry { name: Vec::new(), kind: EntryKind::Dir { digest: *root, size: 0 } };
        let mut walked = String::new();
        for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
            let dir = match &cur.kind {
                EntryKind::Dir { digest, .. } => *digest,
                _ => {
                    return Err(Error::WrongKind {
                        root: *root,
                        path: walked,
                        kind: cur.kind_name(),
                        wanted: "directory",
                    });
                }
            };
            if !walked.is_empty() {
                walked.push('/');
            }
            walked.push_str(part);
            cur = self
                .tree(&dir)?
                .get(part.as_bytes())
                .cloned()
                .ok_or_else(|| Error::NoSuchPath { root: *root, path: walked.clone() })?;
        }
        Ok(cur)
    }

    // ----- chunks and reads -----

    pub(crate) fn locator(&self, id: &Digest) -> Result<Locator> {
        let v = self.index.get(Cf::Chunks, id.as_bytes())?.ok_or(Error::Missing { what: "chunk", digest: *id })?;
        Locator::decode(&v, id)
    }

    /// Returns a chunk's verified bytes, from the memory cache or the packs (or S3). Concurrent
    /// callers wanting the same uncached chunk share one fetch.
    pub fn chunk(&self, id: &Digest) -> Result<Arc<Vec<u8>>> {
        self.chunk_ahead(id, &[])
    }

    /// [`Store::chunk`], where `ahead` are the chunks that follow in the file being read: if this
    /// one comes from S3, those stored right after it in the same remote pack come in the same
    /// ranged GET (readahead; see `fetch_remote`).
    pub fn chunk_ahead(&self, id: &Digest, ahead: &[crate::ChunkRef]) -> Result<Arc<Vec<u8>>> {
        if let Some(c) = self.chunk_cached(id) {
            return Ok(c);
        }
        self.counters.chunk_misses.fetch_add(1, Ordering::Relaxed);
        let cell = self.inflight.lock().unwrap().entry(*id).or_default().clone();
        let mut fetched_here = false;
        let result = cell
            .get_or_init(|| {
                fetched_here = true;
                let r = self.locator(id).and_then(|loc| {
                    self.touch_pack(loc.pack);
                    self.packs.read_chunk(id, &loc)
                });
                // Not here (or damaged here) but in S3: fetch it, verified.
                let r = match r {
                    Err(e) if self.remote.is_some() => match self.fetch_remote(id, ahead) {
                        Ok(Some(data)) => Ok(data),
                        Ok(None) => Err(e),
                        Err(remote_err) => Err(remote_err),
                    },
                    r => r,
                };
                r.map(|data| {
                    let data = Arc::new(data);
                    self.chunks.insert(*id, data.clone());
                    data
                })
                .map_err(Arc::new)
            })
            .clone();
        if fetched_here {
            self.inflight.lock().unwrap().remove(id);
        }
        // The error is shared between the waiters; each gets its own copy of the message.
        result.map_err(|e| match &*e {
            Error::Corrupt { what, digest, detail } => Error::Corrupt { what, digest: *digest, detail: detail.clone() },
            Error::Missing { what, digest } => Error::Missing { what, digest: *digest },
            Error::Remote { url, message } => Error::Remote { url: url.clone(), message: message.clone() },
            other => Error::Invalid(other.to_string()),
        })
    }

    /// Puts verified bytes of a chunk in the memory cache.
    pub(crate) fn cache_chunk(&self, id: Digest, data: Vec<u8>) {
        self.chunks.insert(id, Arc::new(data));
    }

    /// A chunk's bytes if they are in the memory cache (never blocks on I/O).
    pub fn chunk_cached(&self, id: &Digest) -> Option<Arc<Vec<u8>>> {
        let c = self.chunks.get(id);
        if c.is_some() {
            self.counters.chunk_hits.fetch_add(1, Ordering::Relaxed);
        }
        c
    }

    /// Cache counters and sizes, for `vorpalfs status`.
    pub fn cache_stats(&self) -> CacheStats {
        CacheStats {
            chunk_cache_bytes: self.chunks.bytes() as u64,
            chunk_cache_budget: self.opts.chunk_cache_bytes as u64,
            chunk_hits: self.counters.chunk_hits.load(Ordering::Relaxed),
            chunk_misses: self.counters.chunk_misses.load(Ordering::Relaxed),
        }
    }

    /// Reads a chunk from its pack, bypassing the memory cache (for `verify`).
    pub fn chunk_uncached(&self, id: &Digest) -> Result<Vec<u8>> {
        self.packs.read_chunk(id, &self.locator(id)?)
    }

    /// Fills `buf` from `file` at `offset`, touching only the chunks that cover the range.
    /// Returns the bytes read (short only at end of file).
    pub fn read_at(&self, file: &FileRecord, offset: u64, buf: &mut [u8]) -> Result<usize> {
        if offset >= file.size || buf.is_empty() {
            return Ok(0);
        }
        let want = buf.len().min((file.size - offset) as usize);
        let mut done = 0usize;
        let mut i = file.chunk_at(offset);
        while done < want {
            let c = &file.chunks[i];
            let data = self.file_chunk(&file.chunks[i..])?;
            let start = (offset + done as u64 - c.offset) as usize;
            let n = (data.len() - start).min(want - done);
            buf[done..done + n].copy_from_slice(&data[start..start + n]);
            done += n;
            i += 1;
        }
        Ok(done)
    }

    /// Streams a whole file into `out`, chunk by chunk (each verified).
    pub fn write_file_to(&self, digest: &Digest, out: &mut impl Write, out_path: &Path) -> Result<u64> {
        let f = self.file(digest)?;
        for i in 0..f.chunks.len() {
            out.write_all(&self.file_chunk(&f.chunks[i..])?).at(out_path)?;
        }
        Ok(f.size)
    }

    /// The first of `chunks` (a file's chunks from the one wanted on), verified, and checked to be
    /// as long as the file record says. The rest are the readahead candidates.
    pub(crate) fn file_chunk(&self, chunks: &[crate::ChunkRef]) -> Result<Arc<Vec<u8>>> {
        let c = &chunks[0];
        let data = self.chunk_ahead(&c.id, &chunks[1..])?;
        if data.len() != c.len as usize {
            return Err(Error::Corrupt {
                what: "chunk",
                digest: c.id,
                detail: format!("has {} bytes, the file record says {}", data.len(), c.len),
            });
        }
        Ok(data)
    }

    /// A `Read` over a stored file (for `cat` and tests).
    pub fn reader(&self, digest: &Digest) -> Result<FileReader<'_>> {
        Ok(FileReader { store: self, file: self.file(digest)?, pos: 0 })
    }

    // ----- bookkeeping -----

    pub(crate) fn commit(&self, b: Batch) -> Result<()> {
        self.index.commit(b)
    }

    /// Every sealed pack and its size.
    pub fn packs(&self) -> Result<Vec<(u64, PackInfo)>> {
        let mut out = Vec::new();
        self.index.scan(Cf::Packs, |k, v| {
            if let (Ok(k), Some(info)) = (k.try_into(), PackInfo::decode(v)) {
                out.push((u64::from_be_bytes(k), info));
            }
            true
        })?;
        Ok(out)
    }

    /// Calls `f` for every chunk locator in the index.
    pub fn scan_chunks(&self, mut f: impl FnMut(Digest, Locator)) -> Result<()> {
        let mut err = None;
        self.index.scan(Cf::Chunks, |k, v| {
            let id = Digest::from_slice(k).unwrap_or(Digest([0; 32]));
            match Locator::decode(v, &id) {
                Ok(l) => {
                    f(id, l);
                    true
                }
                Err(e) => {
                    err = Some(e);
                    false
                }
            }
        })?;
        err.map_or(Ok(()), Err)
    }
}

/// Sequential reader over a stored file.
pub struct FileReader<'a> {
    store: &'a Store,
    file: Arc<FileRecord>,
    pos: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.store.read_at(&self.file, self.pos, buf).map_err(std::io::Error::other)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Takes the store's exclusive lock, naming the holder's pid when another process has it.
fn lock_store(dir: &Path) -> Result<File> {
    let path = dir.join("lock");
    let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).at(&path)?;
    // SAFETY: flock on a descriptor we own; no memory is shared with the kernel.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let mut pid = String::new();
            let _ = f.read_to_string(&mut pid);
            let holder = match pid.trim() {
                "" => String::new(),
                p => format!(" (pid {p}); stop it or point --store-dir elsewhere"),
            };
            return Err(Error::Locked { path: dir.into(), holder });
        }
        return Err(Error::io(&path, e));
    }
    f.set_len(0).at(&path)?;
    writeln!(f, "{}", std::process::id()).at(&path)?;
    Ok(f)
}
