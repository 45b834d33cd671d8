//! The RocksDB index: the only module that imports `rocksdb`, and the only one that knows keys.
//!
//! Tables (column families), all with binary keys:
//!
//! | table        | key                          | value                                   |
//! |--------------|------------------------------|-----------------------------------------|
//! | `trees`      | tree digest (32 B)           | canonical tree encoding                 |
//! | `files`      | file digest (32 B)           | [`FileRecord`] encoding                 |
//! | `chunks`     | chunk id (32 B)              | [`Locator`] in a local pack             |
//! | `packs`      | pack id (u64 BE)             | [`PackInfo`]                            |
//! | `roots`      | root name (bytes)            | tree digest (32 B)                      |
//! | `root_trees` | tree digest ‖ root name      | empty: which roots name a tree          |
//! | `meta`       | a [`Meta`] key               | recipes, aliases, fetched sources/packs |
//! | `remote`     | chunk id ‖ pack digest       | [`RemoteLocator`] in S3 ‖ [`Place`]     |
//!
//! A chunk may have several places in S3 (one per remote pack holding it). An index fetched
//! from S3 only adds places, never replaces one; a place is `Verified` once this host uploaded
//! it or checked its bytes (only those are reused by a push), and `Wrong` once it gave wrong
//! bytes or named a pack S3 does not have (kept, so that no index adds it again). Stores
//! written before places were keyed by pack have 32-byte keys: they read as unchecked places.
//!
//! Writes happen only through a [`Batch`] of typed operations, committed at once: a set of
//! objects becomes visible all together or not at all.
//!
//! [`FileRecord`]: crate::FileRecord

use std::path::{Path, PathBuf};

use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch,
    WriteOptions,
};

use crate::error::{Error, Result};
use crate::local::pack::PackInfo;
use crate::model::digest::Digest;
use crate::model::records::{Locator, RemoteLocator};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cf {
    Trees,
    Files,
    Chunks,
    Packs,
    Roots,
    RootTrees,
    Meta,
    Remote,
}

impl Cf {
    const ALL: [Cf; 8] = [Cf::Trees, Cf::Files, Cf::Chunks, Cf::Packs, Cf::Roots, Cf::RootTrees, Cf::Meta, Cf::Remote];

    fn name(self) -> &'static str {
        match self {
            Cf::Trees => "trees",
            Cf::Files => "files",
            Cf::Chunks => "chunks",
            Cf::Packs => "packs",
            Cf::Roots => "roots",
            Cf::RootTrees => "root_trees",
            Cf::Meta => "meta",
            Cf::Remote => "remote",
        }
    }
}

/// The keys of the `meta` table.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Meta<'a> {
    /// The canonical recipe of a build result, by input digest.
    Recipe(&'a Digest),
    /// An artifact name or alias → the input digest of its newest build.
    Alias(&'a str),
    /// A downloaded source (by the BLAKE3 of the download) → the tree it was stored as.
    FetchedSource(&'a str),
    /// A pack holding data fetched from S3 (evictable).
    FetchedPack(u64),
    /// Set once the `root_trees` table has been filled for existing roots.
    RootTreesFilled,
    /// A remote index whose chunk places have been recorded here.
    AppliedIndex(&'a Digest),
    /// The root object a root found in S3 was recorded from (its signatures).
    RootObject(&'a str),
}

impl Meta<'_> {
    fn key(&self) -> Vec<u8> {
        match self {
            Meta::Recipe(d) => [b"recipe:".as_slice(), d.as_bytes()].concat(),
            Meta::Alias(n) => [b"alias:".as_slice(), n.as_bytes()].concat(),
            Meta::FetchedSource(b) => [b"fetched:".as_slice(), b.as_bytes()].concat(),
            Meta::FetchedPack(id) => [b"fetched-pack:".as_slice(), &id.to_be_bytes()].concat(),
            Meta::RootTreesFilled => b"root-trees-filled".to_vec(),
            Meta::AppliedIndex(d) => [b"applied-index:".as_slice(), d.as_bytes()].concat(),
            Meta::RootObject(n) => [b"root-object:".as_slice(), n.as_bytes()].concat(),
        }
    }
}

/// What is known of a place of a chunk in S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Place {
    /// Named by an index from S3; not checked yet.
    Unchecked = 0,
    /// Uploaded by this host, or its bytes were fetched and checked here.
    Verified = 1,
    /// Gave wrong bytes, or names a pack S3 does not have.
    Wrong = 2,
}

impl Place {
    fn from_flag(flag: &[u8]) -> Place {
        match flag {
            [1] => Place::Verified,
            [2] => Place::Wrong,
            _ => Place::Unchecked,
        }
    }
}

/// One place of a chunk in S3.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RemotePlace {
    pub loc: RemoteLocator,
    pub state: Place,
    /// Stored under the chunk id alone (a store from before places were keyed by pack).
    legacy: bool,
}

fn remote_key(id: &Digest, pack: &Digest) -> Vec<u8> {
    [id.as_bytes().as_slice(), pack.as_bytes()].concat()
}

/// The metadata index of one store.
pub(crate) struct Index {
    db: DB,
    path: PathBuf,
    /// The block cache every family's tables share (data, index and filter blocks).
    cache: Cache,
    /// Opened read-only because the disk was too full to open it for writing: everything
    /// stored can be read; every commit fails with [`Error::DiskFull`].
    read_only: bool,
}

/// Bytes of memory the index holds, by kind (see [`Index::memory`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IndexMemory {
    pub memtables: u64,
    pub table_readers: u64,
    pub block_cache: u64,
    pub block_cache_pinned: u64,
}

/// A set of writes committed atomically by [`Index::commit`].
#[derive(Default)]
pub(crate) struct Batch {
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
    bytes: usize,
}

impl Batch {
    fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.bytes += key.len() + value.len();
        self.ops.push((cf, key.to_vec(), Some(value.to_vec())));
    }

    fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.bytes += key.len();
        self.ops.push((cf, key.to_vec(), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// The keys' and values' bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub fn put_tree(&mut self, d: &Digest, encoding: &[u8]) {
        self.put(Cf::Trees, d.as_bytes(), encoding);
    }

    pub fn delete_tree(&mut self, d: &Digest) {
        self.delete(Cf::Trees, d.as_bytes());
    }

    pub fn put_file(&mut self, d: &Digest, encoding: &[u8]) {
        self.put(Cf::Files, d.as_bytes(), encoding);
    }

    pub fn delete_file(&mut self, d: &Digest) {
        self.delete(Cf::Files, d.as_bytes());
    }

    pub fn put_locator(&mut self, id: &Digest, loc: &Locator) {
        self.put(Cf::Chunks, id.as_bytes(), &loc.encode());
    }

    pub fn delete_locator(&mut self, id: &Digest) {
        self.delete(Cf::Chunks, id.as_bytes());
    }

    /// Records a place of chunk `id` in S3 and what is known of it.
    pub fn put_remote(&mut self, id: &Digest, loc: &RemoteLocator, state: Place) {
        let mut v = loc.encode();
        v.push(state as u8);
        self.put(Cf::Remote, &remote_key(id, &loc.pack), &v);
    }

    /// Marks a place of chunk `id` in S3 as wrong.
    pub fn wrong_remote(&mut self, id: &Digest, place: &RemotePlace) {
        if place.legacy {
            self.delete(Cf::Remote, id.as_bytes());
        }
        self.put_remote(id, &place.loc, Place::Wrong);
    }

    pub fn put_pack(&mut self, id: u64, info: &PackInfo) {
        self.put(Cf::Packs, &id.to_be_bytes(), &info.encode());
    }

    /// Names a new pack of data fetched from S3 (open: size and count are set when sealed).
    pub fn put_fetched_pack(&mut self, id: u64) {
        self.put_pack(id, &PackInfo { size: 0, chunks: 0 });
        self.put(Cf::Meta, &Meta::FetchedPack(id).key(), b"");
    }

    pub fn delete_pack(&mut self, id: u64) {
        self.delete(Cf::Packs, &id.to_be_bytes());
        self.delete(Cf::Meta, &Meta::FetchedPack(id).key());
    }

    /// Points root `name` at `tree`; `old` is the tree it pointed at before, if any.
    pub fn put_root(&mut self, name: &str, tree: &Digest, old: Option<&Digest>) {
        if let Some(old) = old {
            self.delete(Cf::RootTrees, &root_tree_key(old, name));
        }
        self.put(Cf::Roots, name.as_bytes(), tree.as_bytes());
        self.put(Cf::RootTrees, &root_tree_key(tree, name), b"");
    }

    pub fn delete_root(&mut self, name: &str, tree: &Digest) {
        self.delete(Cf::Roots, name.as_bytes());
        self.delete(Cf::RootTrees, &root_tree_key(tree, name));
    }

    pub fn put_meta(&mut self, key: Meta<'_>, value: &[u8]) {
        self.put(Cf::Meta, &key.key(), value);
    }
}

fn root_tree_key(tree: &Digest, name: &str) -> Vec<u8> {
    [tree.as_bytes().as_slice(), name.as_bytes()].concat()
}

fn digest_key(k: &[u8]) -> Option<Digest> {
    Digest::from_slice(k)
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        // All families share 64 MiB of memtables (not 64 MiB each), and the log is bounded: past
        // 128 MiB the families holding its oldest records are flushed, so a large ingest does
        // not leave the whole index in one log to replay at the next open.
        opts.set_db_write_buffer_size(64 << 20);
        opts.set_max_total_wal_size(128 << 20);
        // Point lookups of 32-byte digests dominate: bloom filters spare a disk read per miss.
        // Filters and indexes are partitioned into 4 KiB blocks behind a small top level that
        // stays pinned, so a lookup in a table of millions of keys reads (and checksums) a few
        // small cached blocks, not a whole-table filter larger than a cache shard.
        let cache = Cache::new_lru_cache(128 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_index_type(BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        let cfs = || {
            Cf::ALL.iter().map(|cf| {
                let mut o = Options::default();
                o.set_block_based_table_factory(&table);
                ColumnFamilyDescriptor::new(cf.name(), o)
            })
        };
        let index = match DB::open_cf_descriptors(&opts, path, cfs()).map_err(|e| Self::err(path, e)) {
            Ok(db) => Index { db, path: path.to_path_buf(), cache, read_only: false },
            // Opening for writing replays the log into a new table file and preallocates a new
            // log: on a full disk, that fails. Reading needs neither.
            Err(Error::DiskFull { .. }) => {
                let db =
                    DB::open_cf_descriptors_read_only(&opts, path, cfs(), false).map_err(|e| Self::err(path, e))?;
                tracing::warn!(index = %path.display(), "the disk is full: the store is open read-only");
                Index { db, path: path.to_path_buf(), cache, read_only: true }
            }
            Err(e) => return Err(e),
        };
        if !index.read_only {
            index.fill_root_trees()?;
        }
        Ok(index)
    }

    /// Stores made before the `root_trees` table get it filled once.
    fn fill_root_trees(&self) -> Result<()> {
        if self.meta(Meta::RootTreesFilled)?.is_some() {
            return Ok(());
        }
        let mut b = Batch::default();
        for (name, tree) in self.roots()? {
            b.put(Cf::RootTrees, &root_tree_key(&tree, &name), b"");
        }
        b.put_meta(Meta::RootTreesFilled, b"");
        self.commit(b)
    }

    /// What the index holds in memory now: memtables, table readers (index and filter blocks
    /// outside the cache), and the block cache with its pinned part.
    pub fn memory(&self) -> IndexMemory {
        let sum = |name: &str| {
            Cf::ALL.iter().filter_map(|cf| self.db.property_int_value_cf(self.cf(*cf), name).ok().flatten()).sum()
        };
        IndexMemory {
            memtables: sum("rocksdb.cur-size-all-mem-tables"),
            table_readers: sum("rocksdb.estimate-table-readers-mem"),
            block_cache: self.cache.get_usage() as u64,
            block_cache_pinned: self.cache.get_pinned_usage() as u64,
        }
    }

    fn err(path: &Path, e: rocksdb::Error) -> Error {
        let message = e.into_string();
        if message.contains("lock") {
            return Error::Locked { path: path.to_path_buf(), holder: format!(" ({message})") };
        }
        if message.contains("No space left") {
            return Error::DiskFull {
                path: path.to_path_buf(),
                source: std::sync::Arc::new(std::io::Error::other(message)),
            };
        }
        Error::Index { path: path.to_path_buf(), message }
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family is created at open, so a missing handle is a bug, not an input error.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| Self::err(&self.path, e))
    }

    fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        let h = self.cf(cf);
        if !self.db.key_may_exist_cf(h, key) {
            return Ok(false);
        }
        Ok(self.db.get_pinned_cf(h, key).map_err(|e| Self::err(&self.path, e))?.is_some())
    }

    /// Calls `f` on every key/value of a family in key order from `from`; stops early when `f`
    /// returns false.
    fn scan_from(&self, cf: Cf, from: &[u8], mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        let mode = IteratorMode::From(from, rocksdb::Direction::Forward);
        for item in self.db.iterator_cf(self.cf(cf), mode) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    fn scan(&self, cf: Cf, f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        self.scan_from(cf, b"", f)
    }

    // ----- typed reads -----

    pub fn tree(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        self.get(Cf::Trees, d.as_bytes())
    }

    pub fn has_tree(&self, d: &Digest) -> Result<bool> {
        self.contains(Cf::Trees, d.as_bytes())
    }

    pub fn file(&self, d: &Digest) -> Result<Option<Vec<u8>>> {
        self.get(Cf::Files, d.as_bytes())
    }

    pub fn has_file(&self, d: &Digest) -> Result<bool> {
        self.contains(Cf::Files, d.as_bytes())
    }

    pub fn locator(&self, id: &Digest) -> Result<Option<Locator>> {
        self.get(Cf::Chunks, id.as_bytes())?.map(|v| Locator::decode(&v, id)).transpose()
    }

    pub fn has_chunk(&self, id: &Digest) -> Result<bool> {
        self.contains(Cf::Chunks, id.as_bytes())
    }

    /// The known places of chunk `id` in S3: verified ones first, wrong ones last.
    pub fn remote_places(&self, id: &Digest) -> Result<Vec<RemotePlace>> {
        let mut out = Vec::new();
        let mut bad = None;
        self.scan_from(Cf::Remote, id.as_bytes(), |k, v| {
            if !k.starts_with(id.as_bytes()) {
                return false;
            }
            let (loc, flag) = v.split_at(v.len().min(RemoteLocator::LEN));
            match RemoteLocator::decode(loc, id) {
                Ok(loc) => out.push(RemotePlace { loc, state: Place::from_flag(flag), legacy: k.len() == 32 }),
                Err(e) => bad = Some(e),
            }
            true
        })?;
        if let Some(e) = bad {
            return Err(e);
        }
        out.sort_by_key(|p| match p.state {
            Place::Verified => 0,
            Place::Unchecked => 1,
            Place::Wrong => 2,
        });
        Ok(out)
    }

    /// The best known place of chunk `id` in S3 (a verified one if any), never a wrong one.
    pub fn remote_place(&self, id: &Digest) -> Result<Option<RemotePlace>> {
        Ok(self.remote_places(id)?.into_iter().next().filter(|p| p.state != Place::Wrong))
    }

    /// The place of chunk `id` in `pack`, if that is a known place (one point lookup; places
    /// recorded before places were keyed by pack are not seen).
    pub fn remote_place_in(&self, id: &Digest, pack: &Digest) -> Result<Option<RemotePlace>> {
        let Some(v) = self.get(Cf::Remote, &remote_key(id, pack))? else { return Ok(None) };
        let (loc, flag) = v.split_at(v.len().min(RemoteLocator::LEN));
        let loc = RemoteLocator::decode(loc, id)?;
        Ok(Some(RemotePlace { loc, state: Place::from_flag(flag), legacy: false }))
    }

    /// Whether `pack` is a known place of chunk `id`.
    pub fn has_remote_place(&self, id: &Digest, pack: &Digest) -> Result<bool> {
        if self.contains(Cf::Remote, &remote_key(id, pack))? {
            return Ok(true);
        }
        // A place recorded before places were keyed by pack.
        let legacy = self.get(Cf::Remote, id.as_bytes())?;
        Ok(legacy
            .and_then(|v| RemoteLocator::decode(&v[..v.len().min(RemoteLocator::LEN)], id).ok())
            .is_some_and(|l| l.pack == *pack))
    }

    pub fn root(&self, name: &str) -> Result<Option<Digest>> {
        Ok(self.get(Cf::Roots, name.as_bytes())?.and_then(|v| Digest::from_slice(&v)))
    }

    /// Every root as `(name, tree)`, by name.
    pub fn roots(&self) -> Result<Vec<(String, Digest)>> {
        let mut out = Vec::new();
        self.scan(Cf::Roots, |k, v| {
            if let Some(d) = Digest::from_slice(v) {
                out.push((String::from_utf8_lossy(k).into_owned(), d));
            }
            true
        })?;
        Ok(out)
    }

    /// The names of the roots pointing at `tree`.
    pub fn roots_of(&self, tree: &Digest) -> Result<Vec<String>> {
        let mut out = Vec::new();
        self.scan_from(Cf::RootTrees, tree.as_bytes(), |k, _| {
            let Some(name) = k.strip_prefix(tree.as_bytes().as_slice()) else { return false };
            out.push(String::from_utf8_lossy(name).into_owned());
            true
        })?;
        Ok(out)
    }

    pub fn meta(&self, key: Meta<'_>) -> Result<Option<Vec<u8>>> {
        self.get(Cf::Meta, &key.key())
    }

    /// Every sealed (or open fetched) pack and its info, by id.
    pub fn packs(&self) -> Result<Vec<(u64, PackInfo)>> {
        let mut out = Vec::new();
        self.scan(Cf::Packs, |k, v| {
            if let (Ok(k), Some(info)) = (k.try_into(), PackInfo::decode(v)) {
                out.push((u64::from_be_bytes(k), info));
            }
            true
        })?;
        Ok(out)
    }

    pub fn has_pack(&self, id: u64) -> Result<bool> {
        self.contains(Cf::Packs, &id.to_be_bytes())
    }

    /// The packs holding data fetched from S3.
    pub fn fetched_packs(&self) -> Result<Vec<u64>> {
        let prefix = Meta::FetchedPack(0).key();
        let prefix = &prefix[..prefix.len() - 8];
        let mut ids = Vec::new();
        self.scan_from(Cf::Meta, prefix, |k, _| {
            let Some(rest) = k.strip_prefix(prefix) else { return false };
            if let Ok(b) = rest.try_into() {
                ids.push(u64::from_be_bytes(b));
            }
            true
        })?;
        Ok(ids)
    }

    /// Calls `f` for every tree digest and encoding; stops when `f` returns false.
    pub fn for_each_tree(&self, mut f: impl FnMut(Digest, &[u8]) -> bool) -> Result<()> {
        self.scan(Cf::Trees, |k, v| digest_key(k).is_none_or(|d| f(d, v)))
    }

    /// Calls `f` for every file digest and record encoding; stops when `f` returns false.
    pub fn for_each_file(&self, mut f: impl FnMut(Digest, &[u8]) -> bool) -> Result<()> {
        self.scan(Cf::Files, |k, v| digest_key(k).is_none_or(|d| f(d, v)))
    }

    /// Calls `f` for every local chunk and its locator (or the error decoding it); stops when
    /// `f` returns false.
    pub fn for_each_chunk(&self, mut f: impl FnMut(Digest, Result<Locator>) -> bool) -> Result<()> {
        self.scan(Cf::Chunks, |k, v| digest_key(k).is_none_or(|d| f(d, Locator::decode(v, &d))))
    }

    // ----- writes -----

    /// Writes the memtables out to table files (after a large ingest), so that the log does not
    /// keep them and the next open does not replay them. Best-effort: what was committed is
    /// durable in the log either way.
    pub fn flush(&self) {
        if self.read_only {
            return;
        }
        for cf in Cf::ALL {
            if let Err(e) = self.db.flush_cf(self.cf(cf)) {
                tracing::warn!(index = %self.path.display(), error = %e, "flushing the index");
                return;
            }
        }
    }

    /// Applies a batch atomically and durably (the WAL is synced).
    pub fn commit(&self, batch: Batch) -> Result<()> {
        self.commit_with(batch, true)
    }

    /// Applies a batch atomically; with `sync` false it may be lost (whole) in a crash.
    pub fn commit_with(&self, batch: Batch, sync: bool) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        if self.read_only {
            return Err(Error::DiskFull {
                path: self.path.clone(),
                source: std::sync::Arc::new(std::io::Error::other(
                    "the store was opened read-only because its disk was full; free space and reopen it",
                )),
            });
        }
        // In key order per column family (a stable sort: of two writes of one key the later
        // still wins): the memtable's skiplist then inserts each next to the last instead of
        // searching from its top, which a lookup's 100k-record batches measure as the most of it.
        let mut ops = batch.ops;
        ops.sort_by(|a, b| (a.0 as u8, &a.1).cmp(&(b.0 as u8, &b.1)));
        let mut wb = WriteBatch::default();
        for (cf, k, v) in ops {
            match v {
                Some(v) => wb.put_cf(self.cf(cf), k, v),
                None => wb.delete_cf(self.cf(cf), k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(|e| Self::err(&self.path, e))
    }
}
