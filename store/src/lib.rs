//! The vorpalfs content-addressed store.
//!
//! ```text
//!  Store (store.rs) ── roots, lookup, read_at, caches; ingest.rs, ops.rs (export/verify/stats)
//!    │
//!    ├── sync.rs, remote.rs    S3: push, lazy fetch, pull, eviction, gc (remote.rs: the SDK)
//!    ├── results.rs            build results (input digest → output tree), recipes, aliases
//!    ├── Index (index.rs)      RocksDB, metadata only: trees, file chunk lists, locators, packs, roots
//!    ├── packs (pack.rs)       append-only files of zstd chunks, verified on every read
//!    └── ChunkCache (cache.rs) decoded chunks in memory, LRU by bytes
//!  model: Digest (digest.rs), Tree (tree.rs), FileRecord/Locator (records.rs), chunker.rs
//! ```
//!
//! Every object is named by a domain-separated BLAKE3 digest of its plaintext. Files are cut into
//! chunks by content (FastCDC), chunks are stored once across all trees, and a directory is a
//! Merkle tree of canonical entries. Writes are staged in packs and become visible in one atomic
//! index commit; reads touch only the chunks that cover the requested range and verify each one
//! before its bytes are returned. One process owns a store at a time (an flock on `<dir>/lock`).

pub mod cache;
pub mod chunker;
pub mod digest;
pub mod error;
pub mod index;
pub mod ingest;
pub mod ops;
pub mod pack;
pub mod records;
pub mod remote;
pub mod results;
pub mod store;
pub mod sync;
pub mod tree;

pub use digest::{Digest, Hasher, Kind};
pub use error::{Error, Result};
pub use ingest::{Filter, IngestReport};
pub use ops::{Problem, Stats, VerifyReport};
pub use records::{ChunkRef, FileRecord};
pub use remote::RemoteConfig;
pub use store::{CacheStats, Options, Pin, Root, Store};
pub use sync::{GcReport, PullReport, PushReport};
pub use tree::{Entry, EntryKind, Tree};
