//! The object model as pure codecs: no I/O, no state. Everything stored or sent is one of these,
//! named by a domain-separated BLAKE3 digest (`digest.rs`) of its canonical encoding.
//!
//! ```text
//! digest.rs   Digest, Kind (the domain prefixes), Hasher
//! chunker.rs  content-defined chunk boundaries (FastCDC) over a stream
//! tree.rs     a directory: sorted entries, one canonical encoding
//! records.rs  a file's chunk list (FileRecord), where a chunk's bytes are (Location), codecs
//! ```

pub mod chunker;
pub mod digest;
pub mod records;
pub mod tree;
