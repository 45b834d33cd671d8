//! Shared harness of the end-to-end tests: find the built `vorpalfs` binary, run it against a
//! scratch store, mount it, start an S3 server, build test trees.
//!
//! The tests drive the real binary as a user would (exit codes, stdout, stderr) on real
//! directories, a real RocksDB, real FUSE mounts and a real S3-compatible server.
//!
//! ```text
//! env.rs        Env: a scratch store and the binary run against it; the tool check
//! mount.rs      Mount: a daemon serving an Env's store, stopped at drop
//! s3_server.rs  S3Server: moto_server on a free port behind a cuttable proxy
//! wan.rs        a WAN link (latency, rate per connection, counters) in front of a server
//! files.rs      test trees and comparisons (bytes, listings, sha256)
//! ```

mod env;
mod files;
mod mount;
pub mod s3_server;
pub mod wan;

pub use env::{Env, Run, USER, require_tools, vorpalfs_bin};
pub use files::{assert_same_tree, chmod, listing, random_bytes, sh, sha256_all, write};
pub use mount::Mount;
