//! What one host keeps on its own disk and in memory.
//!
//! ```text
//! index.rs  the RocksDB index (the only rocksdb importer): typed tables, keys private
//! pack.rs   append-only pack files of compressed chunks, verified on every read
//! cache.rs  decoded chunks in memory (LRU by bytes), decoded trees and file records
//! ```

pub(crate) mod cache;
pub(crate) mod index;
pub(crate) mod pack;
