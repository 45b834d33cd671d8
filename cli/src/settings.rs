//! Settings: command-line flags and environment resolved into one value before any work.

use std::path::{Path, PathBuf};

use crate::Cli;

/// Everything a command needs to know about where and how to work.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub json: bool,
    /// The directory relative paths are taken from: the caller's, also when the command runs
    /// inside the daemon on the caller's behalf.
    pub cwd: PathBuf,
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Settings {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let store_dir = cli.store_dir.clone().unwrap_or_else(default_store_dir);
        Settings {
            store_dir: absolute(&cwd, &store_dir),
            mountpoint: absolute(&cwd, &cli.mountpoint),
            json: cli.json,
            cwd,
        }
    }

    /// `path` taken relative to the caller's directory.
    pub fn abs(&self, path: &Path) -> PathBuf {
        absolute(&self.cwd, path)
    }

    /// The daemon's control socket.
    pub fn socket(&self) -> PathBuf {
        self.store_dir.join("daemon.sock")
    }

    /// Where a background daemon writes its log.
    pub fn daemon_log(&self) -> PathBuf {
        self.store_dir.join("daemon.log")
    }
}

fn absolute(cwd: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) }
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
