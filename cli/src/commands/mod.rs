//! The commands. Store, sync, build and inspect commands run against an open store through a
//! [`Ctx`], so the same code serves a command run directly and one the daemon runs on a
//! client's behalf; mount, status and run talk to the daemon.

use std::io::Write;

use vorpalfs_store::{Digest, Store};

use crate::settings::Settings;

pub mod build;
pub mod config;
pub mod doctor;
pub mod inspect;
pub mod key;
pub mod mount;
pub mod run;
pub mod status;
pub mod store;
pub mod sync;

/// What a command runs against: the store, the caller's settings and output streams, and a
/// hook telling the mount (if any) that a root appeared or went away.
pub struct Ctx<'a> {
    pub store: &'a Store,
    pub settings: &'a Settings,
    pub out: &'a mut dyn Write,
    pub err: &'a mut dyn Write,
    pub root_changed: &'a dyn Fn(&Digest),
    /// Run by this process (not the daemon on a client's behalf): it may draw on the terminal.
    pub local: bool,
}
