//! The RocksDB index: the only module that imports `rocksdb`.
//!
//! Column families, all with binary keys:
//! - `trees`:  tree digest (32 B)  → canonical tree encoding
//! - `files`:  file digest (32 B)  → [`FileRecord`](crate::records::FileRecord)
//! - `chunks`: chunk id (32 B)     → [`Locator`](crate::records::Locator)
//! - `packs`:  pack id (u64 BE)    → [`PackInfo`](crate::records::PackInfo)
//! - `roots`:  root name (bytes)   → tree digest (32 B)
//! - `meta`:   small named values
//! - `remote`: chunk id (32 B)     → where the chunk is in S3 (see `sync.rs`)
//!
//! Writes happen only through [`Batch`], committed with a synced WAL write, so a set of objects
//! becomes visible all at once or not at all.

use std::path::{Path, PathBuf};

use rocksdb::{BlockBasedOptions, Cache, ColumnFamilyDescriptor, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::error::{Error, Result};

/// The column families of the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    Trees,
    Files,
    Chunks,
    Packs,
    Roots,
    Meta,
    Remote,
}

impl Cf {
    const ALL: [Cf; 7] = [Cf::Trees, Cf::Files, Cf::Chunks, Cf::Packs, Cf::Roots, Cf::Meta, Cf::Remote];

    fn name(self) -> &'static str {
        match self {
            Cf::Trees => "trees",
            Cf::Files => "files",
            Cf::Chunks => "chunks",
            Cf::Packs => "packs",
            Cf::Roots => "roots",
            Cf::Meta => "meta",
            Cf::Remote => "remote",
        }
    }
}

/// The metadata index of one store.
pub struct Index {
    db: DB,
    path: PathBuf,
}

/// A set of writes committed atomically by [`Index::commit`].
#[derive(Default)]
pub struct Batch {
    ops: Vec<(Cf, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.ops.push((cf, key.to_vec(), Some(value.to_vec())));
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.ops.push((cf, key.to_vec(), None));
    }

    pub fn len(&self) -> usize {
        self.ops.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

impl Index {
    /// Opens (creating if needed) the index at `path`.
    pub fn open(path: &Path) -> Result<Index> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_keep_log_file_num(3);
        // Point lookups of 32-byte digests dominate: bloom filters spare a disk read per miss.
        let cache = Cache::new_lru_cache(64 << 20);
        let mut table = BlockBasedOptions::default();
        table.set_bloom_filter(10.0, false);
        table.set_block_cache(&cache);
        table.set_cache_index_and_filter_blocks(true);
        let cfs = Cf::ALL.iter().map(|cf| {
            let mut o = Options::default();
            o.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(cf.name(), o)
        });
        let db = DB::open_cf_descriptors(&opts, path, cfs).map_err(|e| Self::err(path, e))?;
        Ok(Index { db, path: path.to_path_buf() })
    }

    fn err(path: &Path, e: rocksdb::Error) -> Error {
        let message = e.into_string();
        if message.contains("lock") {
            return Error::Locked { path: path.to_path_buf(), holder: format!(" ({message})") };
        }
        Error::Index { path: path.to_path_buf(), message }
    }

    fn cf(&self, cf: Cf) -> &rocksdb::ColumnFamily {
        // Every family is created at open, so a missing handle is a bug, not an input error.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(cf), key).map_err(|e| Self::err(&self.path, e))
    }

    pub fn contains(&self, cf: Cf, key: &[u8]) -> Result<bool> {
        let h = self.cf(cf);
        if !self.db.key_may_exist_cf(h, key) {
            return Ok(false);
        }
        Ok(self.db.get_pinned_cf(h, key).map_err(|e| Self::err(&self.path, e))?.is_some())
    }

    /// Calls `f` on every key/value of a family in key order; stops early when `f` returns false.
    pub fn scan(&self, cf: Cf, mut f: impl FnMut(&[u8], &[u8]) -> bool) -> Result<()> {
        for item in self.db.iterator_cf(self.cf(cf), IteratorMode::Start) {
            let (k, v) = item.map_err(|e| Self::err(&self.path, e))?;
            if !f(&k, &v) {
                break;
            }
        }
        Ok(())
    }

    /// Applies a batch atomically and durably (synced WAL).
    /// Applies a batch atomically and durably (the WAL is synced).
    pub fn commit(&self, batch: Batch) -> Result<()> {
        self.commit_with(batch, true)
    }

    /// Applies a batch atomically; with `sync` false it may be lost (whole) in a crash.
    pub fn commit_with(&self, batch: Batch, sync: bool) -> Result<()> {
        let mut wb = WriteBatch::default();
        for (cf, k, v) in batch.ops {
            match v {
                Some(v) => wb.put_cf(self.cf(cf), k, v),
                None => wb.delete_cf(self.cf(cf), k),
            }
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo).map_err(|e| Self::err(&self.path, e))
    }

    /// Approximate number of keys in a family (RocksDB's estimate; exact for small stores).
    pub fn estimate_keys(&self, cf: Cf) -> Result<u64> {
        Ok(self
            .db
            .property_int_value_cf(self.cf(cf), "rocksdb.estimate-num-keys")
            .map_err(|e| Self::err(&self.path, e))?
            .unwrap_or(0))
    }
}
