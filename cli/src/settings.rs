//! Settings: command-line flags and environment resolved into one value before any work.

use std::path::{Path, PathBuf};

use crate::args::Cli;

/// Everything a command needs to know about where and how to work.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: PathBuf,
    pub mountpoint: PathBuf,
    pub json: bool,
    /// The directory relative paths are taken from: the caller's, also when the command runs
    /// inside the daemon on the caller's behalf.
    pub cwd: PathBuf,
    /// `s3://bucket/prefix` shared with other hosts.
    pub s3: Option<String>,
    pub s3_endpoint: Option<String>,
    /// Disk budget for data fetched from S3, in bytes.
    pub cache_size: Option<u64>,
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
            s3: cli.s3.clone().filter(|s| !s.is_empty()),
            s3_endpoint: cli.s3_endpoint.clone().filter(|s| !s.is_empty()),
            cache_size: cli.cache_size,
        }
    }

    /// How to open the store: the S3 location and cache budget.
    pub fn store_options(&self) -> vorpalfs_store::Result<vorpalfs_store::Options> {
        let mut o = vorpalfs_store::Options::default();
        if let Some(url) = &self.s3 {
            let cfg = vorpalfs_store::S3Config::parse(url, self.s3_endpoint.clone())?;
            o.remote = Some(vorpalfs_store::Backend::S3(cfg));
        }
        o.cache_bytes = self.cache_size;
        Ok(o)
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

/// The builder's places for a store served at `mountpoint`.
pub fn builder_config(store_dir: &Path, mountpoint: &Path) -> vorpalfs_builder::Config {
    vorpalfs_builder::Config {
        mountpoint: mountpoint.to_path_buf(),
        work_dir: store_dir.join("builds"),
        log_dir: store_dir.join("logs"),
        // Not current_exe(): that path is gone if the binary was replaced while we run.
        helper: PathBuf::from("/proc/self/exe"),
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
