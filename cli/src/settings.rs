//! Settings: command-line flags and environment resolved into one value before any work.

use std::path::PathBuf;

use crate::Cli;

/// Everything a command needs to know about where and how to work.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: PathBuf,
    pub json: bool,
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Settings {
        Settings {
            store_dir: cli.store_dir.clone().unwrap_or_else(default_store_dir),
            json: cli.json,
        }
    }
}

/// `/var/lib/vorpalfs` for root; otherwise `$XDG_DATA_HOME/vorpalfs` (or `~/.local/share/vorpalfs`).
fn default_store_dir() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/vorpalfs");
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    data.join("vorpalfs")
}
