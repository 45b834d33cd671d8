//! Settings: command-line flags and environment resolved into one value before any work.

use std::path::{Path, PathBuf};

use vorpalfs_store::remote::trust::{SecretKey, Trust, parse_trusted_keys};

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
    /// Roots from S3 smaller than this are fetched whole on first lookup (`None`: the default).
    pub prefetch_below: Option<u64>,
    /// A running artifact's workspace size and process limit (`None`: the builder's defaults).
    pub build_space: Option<u64>,
    pub build_processes: Option<u64>,
    /// The most bytes a `url` source may download (`None`: the builder's default).
    pub max_download: Option<u64>,
    /// Members of this group may run the daemon's administrative commands (push, gc, rm,
    /// umount) besides root.
    pub admin_group: Option<String>,
    /// Build: accept local sources outside the manifest's directory that are not readable by
    /// everyone.
    pub allow_outside_sources: bool,
    /// The signing key file, the trusted keys setting, and whether unsigned roots are taken.
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Option<String>,
    pub trust_unsigned: bool,
    /// Whose rights a command reads and writes the client's files with (set by the daemon for
    /// each client; `None`: this process's own).
    pub creds: Option<vorpalfs_store::Creds>,
}

impl Settings {
    pub fn resolve(cli: &Cli) -> Settings {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let store_dir = cli.store_dir.clone().unwrap_or_else(default_store_dir);
        let signing_key = cli.signing_key.as_ref().map(|p| absolute(&cwd, p));
        Settings {
            store_dir: absolute(&cwd, &store_dir),
            mountpoint: absolute(&cwd, &cli.mountpoint),
            json: cli.json,
            cwd,
            s3: cli.s3.clone().filter(|s| !s.is_empty()),
            s3_endpoint: cli.s3_endpoint.clone().filter(|s| !s.is_empty()),
            cache_size: cli.cache_size,
            prefetch_below: cli.prefetch_below,
            build_space: cli.build_space,
            build_processes: cli.build_processes,
            max_download: cli.max_download,
            admin_group: cli.admin_group.clone().filter(|s| !s.is_empty()),
            allow_outside_sources: false,
            signing_key,
            trusted_keys: cli.trusted_keys.clone().filter(|s| !s.trim().is_empty()),
            trust_unsigned: cli.trust_unsigned,
            creds: None,
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
        if let Some(p) = self.prefetch_below {
            o.prefetch_below = p;
        }
        o.trust = self.trust()?;
        Ok(o)
    }

    /// The signing key and the trusted keys, read and checked.
    pub fn trust(&self) -> vorpalfs_store::Result<Trust> {
        Ok(Trust {
            signer: self.signing_key.as_deref().map(SecretKey::load).transpose()?.map(std::sync::Arc::new),
            trusted: self.trusted_keys.as_deref().map(parse_trusted_keys).transpose()?.unwrap_or_default(),
            trust_unsigned: self.trust_unsigned,
        })
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

impl Settings {
    /// The builder's places and limits for this store served at `mountpoint`.
    pub fn builder_config(&self, mountpoint: &Path) -> vorpalfs_builder::Config {
        let mut c = vorpalfs_builder::Config::new(&self.store_dir, mountpoint);
        if let Some(b) = self.build_space {
            c.build_space = b;
        }
        if let Some(p) = self.build_processes {
            c.limits.processes = p;
        }
        if let Some(m) = self.max_download {
            c.download_limit = m;
        }
        c
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
