//! The vorpalfs builder: a declarative manifest (`vorpalfs.toml`) of sources and artifacts, the
//! build graph, a scheduler running independent artifacts in parallel, a Linux namespace
//! sandbox per artifact, and an atomic publish of each output into the store.
//!
//! ```text
//! manifest.rs  vorpalfs.toml → checked Manifest (errors name file:line:column), with its Graph
//! graph.rs     edges, cycle detection, topological order, longest-remaining-path priority
//! recipe.rs    canonical recipes and input digests (the build key and store path)
//! sources.rs   local paths and URLs into the store, pinned while the build uses them
//! plan.rs      recipes and digests of what a build needs; the cache walk (what runs)
//! builder.rs   Builder: plan → schedule; build-once across builds and hosts (claims)
//! schedule.rs  ready queue, parallelism, keep-going, cancellation, over a Runner
//! execute.rs   one artifact: workspace, sandbox spec, run, publish, push
//! process.rs   the helper process: spawn, stream the log, timeout, cancel → End
//! sandbox/     the spec and status shared with the helper; the helper itself
//! report.rs    Event, Outcome, Report: what the caller is told
//! fetch.rs     url sources, verified by BLAKE3
//! ```
//! The builder depends on the store, never on the filesystem crate: it reads deps through the
//! mount's paths like any other program, and tells its caller when a result is published.

mod builder;
pub mod error;
mod execute;
pub mod fetch;
pub mod graph;
pub mod manifest;
pub mod plan;
pub mod process;
pub mod recipe;
pub mod report;
pub mod sandbox;
pub mod schedule;
pub mod sources;
pub mod users;

pub use builder::{Builder, Options};
pub use error::{Error, Result};
pub use execute::{Config, env_name};
pub use manifest::Manifest;
pub use recipe::Recipe;
pub use report::{Action, Event, Outcome, Planned, Report, Status};
pub use sandbox::Limits;
