//! The vorpalfs content-addressed store.
//!
//! ```text
//!  ┌ Store (store.rs) ─ open, lock, roots, pins, resolve(name): the one name resolver
//!  │   read.rs     file ranges from chunks: memory cache → local packs → S3; single-flight
//!  │   ingest.rs   directories in, in parallel, bounded memory, one atomic commit
//!  │   results.rs  build results, recipes, aliases, fetched sources, the mount's top level
//!  │   ops/        export, verify, stats, gc
//!  ├ remote/      ObjectStore trait (s3.rs, memory.rs) behind Remote (retries, deadlines,
//!  │              counters, fail-fast); format.rs; push, fetch (lazy lookup), lazy (reads:
//!  │              readahead, prefetch, a loader's reads of ELF files: elf.rs), pull, evict,
//!  │              claims
//!  ├ local/       index.rs (RocksDB, typed tables), pack.rs (pack files), cache.rs (LRUs)
//!  └ model/       digest, chunker, tree, records: pure codecs, no I/O
//! ```
//! Dependencies point down: `model` imports nothing of the store; `local` only `model`;
//! `remote` and the store's operations use both. `rocksdb` is imported in `local/index.rs`
//! only, the AWS SDK in `remote/s3.rs` only.
//!
//! Every object is named by a domain-separated BLAKE3 digest of its plaintext. Files are cut into
//! chunks by content (FastCDC), chunks are stored once across all trees, and a directory is a
//! Merkle tree of canonical entries. Writes are staged in packs and become visible in one atomic
//! index commit; reads touch only the chunks that cover the requested range and verify each one
//! before its bytes are returned. One process owns a store at a time (an flock on `<dir>/lock`).

mod error;
#[doc(hidden)]
pub mod fuzzing;
mod ingest;
mod local;
pub mod model;
mod ops;
mod read;
pub mod remote;
mod results;
mod source;
mod store;
#[doc(hidden)]
pub mod testing;

pub use bytes::Bytes;
pub use error::{Error, RemoteError, Result};
pub use ingest::{Filter, IngestReport, Source};
pub use local::index::IndexMemory;
pub use model::chunker::Chunker;
pub use model::digest::{Digest, Hasher, Kind};
pub use model::records::{ChunkRef, Codec, FileRecord};
pub use model::tree::{Entry, EntryKind, Tree};
pub use ops::gc::GcReport;
pub use ops::repair::RepairReport;
pub use ops::stats::Stats;
pub use ops::verify::{Problem, VerifyReport};
pub use read::{CacheStats, FileReader, RootStats};
pub use remote::claims::Claim;
pub use remote::profile::{Profile, ProfileReport, ProfileStats};
pub use remote::pull::PullReport;
pub use remote::push::PushReport;
pub use remote::repack::RepackReport;
pub use remote::{Backend, Faults, MemoryStore, ObjectStore, Policy, Remote, S3Config, Traffic};
pub use source::Creds;
pub use store::{Options, Pin, Resolved, Root, Store};
