//! The daemon: owns the store, serves the mount, and runs other commands on clients' behalf.
//!
//! ```text
//! server.rs    the daemon process: mount, control socket, one thread per client
//! client.rs    the other side: send a request, handle the answer's frames; start and stop
//! protocol.rs  typed requests and replies in length-prefixed frames
//! ```

pub mod client;
pub mod metrics;
pub mod protocol;
pub mod server;
