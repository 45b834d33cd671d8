//! The read-only FUSE view of the vorpalfs store (`/vorpal/store/<digest>/…`).
//!
//! Not built yet: this crate will hold the inode layer over store trees, the thin fuser adapter
//! and the one errno map (see the FUSE mount issue). It exists now so that the workspace has its
//! final shape and dependencies point one way: `store` ← `fs` ← `cli`.
