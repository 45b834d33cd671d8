//! [`Store`]: one store directory, its lock, index, packs, caches and (optionally) its S3
//! side; roots, pins and the one name resolver.
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
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, IoContext, Result};
use crate::local::cache::{ChunkCache, Fetched, MetaCache, ReadState};
use crate::local::index::{Batch, Index, Meta};
use crate::local::pack::{self, PackReader};
use crate::model::digest::Digest;
use crate::model::records::FileRecord;
use crate::model::tree::{Entry, EntryKind, Tree};
use crate::remote::{Backend, Policy, Remote};

const MARKER: &str = "VORPALFS_STORE";
/// 2: file digests hash the chunk list, not the content.
const FORMAT: u32 = 2;

/// Tunables of an open store.
#[derive(Clone)]
pub struct Options {
    /// Bytes of decoded chunks kept in memory.
    pub chunk_cache_bytes: usize,
    /// zstd level for new chunks. Level 1 rather than zstd's default 3: on the Rust toolchain
    /// it ingests about 1.3x faster for packs about 7% larger (scripts/bench/ingest.sh).
    pub zstd_level: i32,
    /// The object store shared with other hosts, if any.
    pub remote: Option<Backend>,
    /// Retries and deadlines of remote requests.
    pub policy: Policy,
    /// Disk budget for data fetched from S3 (evicted least recently read first); `None`: no limit.
    pub cache_bytes: Option<u64>,
    /// The runtime remote requests run on; `None`: the store starts its own when it needs one.
    pub runtime: Option<tokio::runtime::Handle>,
    /// The key pushes are signed with, and the keys whose signatures roots from S3 need.
    pub trust: crate::remote::trust::Trust,
    /// A root from S3 with less than this many bytes to fetch is fetched whole, in the
    /// background, when the mount first looks it up (at most half `cache_bytes`); 0: never.
    pub prefetch_below: u64,
    /// Fetch the rest of a root from S3 in the background after its first lookup, two GETs at a
    /// time behind reads and prefetch, within half `cache_bytes` (`--fill`).
    pub fill: bool,
    /// Ingest commits file records and trees in batches of about this many bytes, so that its
    /// memory does not grow with the file count.
    pub commit_bytes: usize,
    /// Ingest seals a pack (and commits its locators) at this many chunks even if not full.
    pub pack_max_chunks: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_cache_bytes: 256 << 20,
            zstd_level: 1,
            remote: None,
            policy: Policy::default(),
            cache_bytes: None,
            runtime: None,
            trust: Default::default(),
            prefetch_below: crate::remote::lazy::SMALL_ROOT,
            fill: false,
            commit_bytes: 8 << 20,
            pack_max_chunks: 1 << 16,
        }
    }
}

/// An open store. Cheap to share across threads (`Arc<Store>`); all methods take `&self`.
pub struct Store {
    dir: PathBuf,
    pub(crate) index: Index,
    pub(crate) packs_dir: PathBuf,
    pub(crate) packs: PackReader,
    next_pack: AtomicU64,
    pub(crate) opts: Options,
    pub(crate) chunks: ChunkCache,
    trees: MetaCache<Tree>,
    files: MetaCache<FileRecord>,
    pub(crate) read: ReadState,
    pub(crate) remote: Option<Remote>,
    pub(crate) fetched: Fetched,
    /// Writers that may reference objects already in the index (ingest, lazy lookup, pull,
    /// `set_root`, pins) hold it shared from their first existence check to their commit; `gc`
    /// holds it exclusively, so it never removes what a writer has decided to reuse.
    pub(crate) gc_lock: RwLock<()>,
    /// Trees kept alive without a root while someone uses them (a build's sources).
    pins: Pins,
    _lock: File,
}

/// In-memory temporary roots: gc treats every pinned tree as reachable.
#[derive(Clone, Default)]
struct Pins(Arc<Mutex<HashMap<Digest, usize>>>);

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

/// A named root: a name pinned to a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub name: String,
    pub digest: Digest,
}

/// What a name stands for, as [`Store::resolve`] found it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The root the name led to, as named in the index and in S3: the name itself, the input
    /// digest of an artifact's newest build (for an artifact name or alias), or a tree digest.
    pub root: String,
    pub tree: Digest,
    /// Found in S3 by this lookup (its metadata was fetched and recorded now).
    pub remote: bool,
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
        // Private: packs hold data of files the mount never shows to others (a 0600 source's),
        // the index names everything, logs may hold secrets a step printed. The store directory
        // itself is only traversable (builds run as other uids under it); its subdirectories
        // are the owner's alone.
        private(dir, 0o711)?;
        let packs_dir = dir.join("packs");
        fs::create_dir_all(&packs_dir).at(&packs_dir)?;
        private(&packs_dir, 0o700)?;
        let index = Index::open(&dir.join("index"))?;
        private(&dir.join("index"), 0o700)?;
        let remote = match &opts.remote {
            Some(b) => Some(Remote::connect(b.clone(), opts.policy.clone(), opts.runtime.clone())?),
            None => None,
        };
        let store = Store {
            dir: dir.to_path_buf(),
            index,
            packs: PackReader::new(packs_dir.clone()),
            packs_dir,
            next_pack: AtomicU64::new(0),
            chunks: ChunkCache::new(opts.chunk_cache_bytes),
            trees: MetaCache::new(16384),
            files: MetaCache::new(16384),
            read: Default::default(),
            remote,
            fetched: Default::default(),
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
        let mut max = self.index.packs()?.iter().map(|(id, _)| *id).max().unwrap_or(0);
        for ent in fs::read_dir(&self.packs_dir).at(&self.packs_dir)? {
            let ent = ent.at(&self.packs_dir)?;
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(pack::pack_id) else {
                continue;
            };
            max = max.max(id);
            if !self.index.has_pack(id)? {
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

    /// The S3 side, if configured.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
    }

    pub fn has_remote(&self) -> bool {
        self.remote.is_some()
    }

    pub(crate) fn remote_or_err(&self) -> Result<&Remote> {
        self.remote.as_ref().ok_or(Error::NoRemote)
    }

    pub(crate) fn commit(&self, b: Batch) -> Result<()> {
        self.index.commit(b)
    }

    // ----- roots and pins -----

    /// All named roots, by name.
    pub fn roots(&self) -> Result<Vec<Root>> {
        Ok(self.index.roots()?.into_iter().map(|(name, digest)| Root { name, digest }).collect())
    }

    /// Points `name` at `digest` (which must be a stored tree).
    pub fn set_root(&self, name: &str, digest: &Digest) -> Result<()> {
        let _writer = self.gc_lock.read().unwrap();
        if !self.index.has_tree(digest)? {
            return Err(Error::Missing { what: "tree", digest: *digest });
        }
        let mut b = Batch::default();
        b.put_root(name, digest, self.index.root(name)?.as_ref());
        self.commit(b)
    }

    /// Adds `put_root` to `batch` for `name`, replacing what it pointed at.
    pub(crate) fn put_root(&self, batch: &mut Batch, name: &str, tree: &Digest) -> Result<()> {
        batch.put_root(name, tree, self.index.root(name)?.as_ref());
        Ok(())
    }

    /// Removes a root name; returns the tree it named. Its data stays until garbage collection.
    pub fn remove_root(&self, name: &str) -> Result<Option<Digest>> {
        let Some(tree) = self.index.root(name)? else { return Ok(None) };
        let mut b = Batch::default();
        b.delete_root(name, &tree);
        self.commit(b)?;
        Ok(Some(tree))
    }

    /// Pins `tree` against garbage collection until the returned guard is dropped. The caller
    /// must know the tree is stored and not collectable meanwhile (it holds `gc_lock` shared).
    pub(crate) fn pin_held(&self, tree: Digest) -> Pin {
        *self.pins.0.lock().unwrap().entry(tree).or_default() += 1;
        Pin { pins: self.pins.clone(), tree }
    }

    /// Pins a stored tree against garbage collection until the guard is dropped; an error if
    /// the tree is not (or no longer) stored.
    pub fn pin(&self, tree: &Digest) -> Result<Pin> {
        let _writer = self.gc_lock.read().unwrap();
        if !self.index.has_tree(tree)? {
            return Err(Error::Missing { what: "tree", digest: *tree });
        }
        Ok(self.pin_held(*tree))
    }

    /// Every pinned tree (for gc).
    pub(crate) fn pinned(&self) -> Vec<Digest> {
        self.pins.0.lock().unwrap().keys().copied().collect()
    }

    // ----- names -----

    /// What `name` stands for: a root's name, an artifact's name or alias (its newest build), or
    /// the digest of a tree some root names; looked up here first, then (with S3) in S3, whose
    /// metadata is then recorded here. The one resolver every command and the mount use.
    pub fn resolve(&self, name: &str) -> Result<Resolved> {
        if let Some(r) = self.resolve_local(name)? {
            return Ok(r);
        }
        if self.remote.is_some()
            && let Some(r) = self.resolve_remote(name)?
        {
            return Ok(r);
        }
        Err(Error::UnknownName(name.to_string()))
    }

    /// [`Store::resolve`] without asking S3.
    pub fn resolve_local(&self, name: &str) -> Result<Option<Resolved>> {
        let found = |root: String, tree| Some(Resolved { root, tree, remote: false });
        if let Some(tree) = self.index.root(name)? {
            return Ok(found(name.to_string(), tree));
        }
        if let Some(input) = self.alias(name)?
            && let Some(tree) = self.index.root(&input.to_hex())?
        {
            return Ok(found(input.to_hex(), tree));
        }
        if let Ok(d) = name.parse::<Digest>()
            && !self.index.roots_of(&d)?.is_empty()
        {
            return Ok(found(name.to_string(), d));
        }
        Ok(None)
    }

    // ----- metadata -----

    pub fn has_tree(&self, d: &Digest) -> Result<bool> {
        self.index.has_tree(d)
    }

    /// Loads (and caches) a tree, verifying that its encoding hashes to its digest.
    pub fn tree(&self, d: &Digest) -> Result<Arc<Tree>> {
        if let Some(t) = self.trees.get(d) {
            return Ok(t);
        }
        let bytes = self.index.tree(d)?.ok_or(Error::Missing { what: "tree", digest: *d })?;
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

    /// Loads (and caches) a file's chunk list, verified against the file's digest.
    pub fn file(&self, d: &Digest) -> Result<Arc<FileRecord>> {
        if let Some(f) = self.files.get(d) {
            return Ok(f);
        }
        let bytes = self.index.file(d)?.ok_or(Error::Missing { what: "file", digest: *d })?;
        let f = Arc::new(FileRecord::decode(&bytes, d)?);
        self.files.insert(*d, f.clone());
        Ok(f)
    }

    /// Forgets decoded trees and file records (gc removed some from the index).
    pub(crate) fn clear_meta_caches(&self) {
        self.trees.clear();
        self.files.clear();
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

    /// The input digest of the newest result built under an artifact name or alias.
    pub fn alias(&self, name: &str) -> Result<Option<Digest>> {
        Ok(self.index.meta(Meta::Alias(name))?.and_then(|v| Digest::from_slice(&v)))
    }
}

/// Sets `path`'s mode when this process owns it (a store made by another user is left as is:
/// opening it then fails or works on that user's terms).
pub(crate) fn private(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = fs::metadata(path).at(path)?;
    // SAFETY: geteuid has no preconditions.
    if meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o7777 != mode {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).at(path)?;
    }
    Ok(())
}

/// Takes the store's exclusive lock, naming the holder's pid when another process has it. The
/// lock file is the owner's alone: another user cannot take a shared lock on it and stop the
/// daemon from starting.
fn lock_store(dir: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join("lock");
    let mut f =
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).at(&path)?;
    private(&path, 0o600)?;
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
    // The pid only helps the message a second process gets: on a full disk it may not fit,
    // which must not keep the store from opening (read-only) for reading.
    if let Err(e) = f.set_len(0).and_then(|()| writeln!(f, "{}", std::process::id())) {
        tracing::debug!(lock = %path.display(), "cannot record our pid: {e}");
    }
    Ok(f)
}
