//! Whole-store operations over stored roots: export, verify, repair, stats, gc.

pub mod export;
pub mod gc;
pub mod repair;
pub mod stats;
pub mod verify;
