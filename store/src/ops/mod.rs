//! Whole-store operations over stored roots: export, verify, stats, gc.

pub mod export;
pub mod gc;
pub mod stats;
pub mod verify;
