//! The vorpalfs builder: a declarative manifest (`vorpalfs.toml`) of sources and artifacts, the
//! build graph, a scheduler running independent artifacts in parallel, a Linux namespace
//! sandbox per artifact, and an atomic publish of each output into the store.
//!
//! ```text
//! manifest.rs  vorpalfs.toml → checked Manifest (errors name file:line:column)
//! graph.rs     edges, cycle detection, topological order, longest-remaining-path priority
//! recipe.rs    canonical recipes and input digests (the build key and store path)
//! build.rs     Builder: sources → store, plan, cache check, scheduler, run, publish
//! sandbox.rs   the namespace sandbox, run by a re-exec'd single-threaded helper
//! fetch.rs     url sources, verified by BLAKE3
//! ```
//! The builder depends on the store, never on the filesystem crate: it reads deps through the
//! mount's paths like any other program, and tells its caller when a result is published.

pub mod build;
pub mod error;
pub mod fetch;
pub mod graph;
pub mod manifest;
pub mod recipe;
pub mod sandbox;

pub use build::{Builder, Config, Event, Options, Outcome, Planned, Report};
pub use error::{Error, Result};
pub use manifest::Manifest;
pub use recipe::Recipe;
