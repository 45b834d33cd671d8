//! Settings: configuration files, environment and command-line flags resolved into one value
//! before any work (later wins: system file, user file, environment, flag). Which one set each
//! setting is kept for `vorpalfs config show`.

use std::path::{Path, PathBuf};

use vorpalfs_store::remote::trust::{SecretKey, Trust, parse_trusted_keys};

use clap::ArgMatches;
use clap::parser::ValueSource;

use crate::args::Cli;
use crate::config::{self, Origin};

/// One setting as `config show` prints it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    pub key: &'static str,
    pub value: serde_json::Value,
    pub source: String,
    /// Part of the value is hidden (credentials in a URL).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub redacted: bool,
}

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
    /// The mount answers extended attribute requests (`user.vorpalfs.digest`); off by default.
    pub xattrs: bool,
    /// Where the daemon serves metrics (none: off).
    pub metrics: Option<String>,
    /// Fill roots from S3 in the background.
    pub fill: bool,
    /// The daemon pushes the access profiles of what was read, once a minute and at unmount.
    pub push_profiles: bool,
    /// Whose rights a command reads and writes the client's files with (set by the daemon for
    /// each client; `None`: this process's own).
    pub creds: Option<vorpalfs_store::Creds>,
    /// `build --jobs` and `mount --threads` when the command line does not say.
    pub jobs: Option<usize>,
    pub threads: Option<usize>,
    /// The configuration files read, in order.
    pub config_files: Vec<PathBuf>,
    /// Every setting, its value and where it came from.
    pub shown: Vec<Shown>,
}

/// Resolves one setting: a flag or environment variable clap saw wins, then the last file that
/// sets it, then clap's value (the default).
fn pick<T: Clone>(
    m: &ArgMatches,
    id: &str,
    cli_val: Option<T>,
    files: &[(PathBuf, config::File)],
    from_file: impl Fn(&config::File) -> Option<T>,
) -> (Option<T>, Origin) {
    match m.value_source(id) {
        Some(ValueSource::CommandLine) => (cli_val, Origin::Flag(format!("--{}", id.replace('_', "-")))),
        Some(ValueSource::EnvVariable) => (cli_val, Origin::Env(format!("VORPALFS_{}", id.to_ascii_uppercase()))),
        _ => files
            .iter()
            .rev()
            .find_map(|(p, f)| from_file(f).map(|v| (Some(v), Origin::File(p.clone()))))
            .unwrap_or((cli_val, Origin::Default)),
    }
}

impl Settings {
    pub fn resolve(cli: &Cli, m: &ArgMatches) -> anyhow::Result<Settings> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let files = config::load_all(cli.config.as_deref(), &cwd)?;
        let mut shown = Vec::new();
        let mut show = |key: &'static str, value: serde_json::Value, origin: &Origin, redacted: bool| {
            shown.push(Shown { key, value, source: origin.to_string(), redacted });
        };
        let nonempty = |s: Option<String>| s.filter(|s| !s.trim().is_empty());

        let (store_dir, o) = pick(m, "store_dir", cli.store_dir.clone(), &files, |f| f.store_dir.clone());
        let store_dir = absolute(&cwd, &store_dir.unwrap_or_else(default_store_dir));
        show("store_dir", serde_json::json!(store_dir), &o, false);
        let (mountpoint, o) = pick(m, "mountpoint", Some(cli.mountpoint.clone()), &files, |f| f.mountpoint.clone());
        let mountpoint = absolute(&cwd, &mountpoint.unwrap_or_else(|| cli.mountpoint.clone()));
        show("mountpoint", serde_json::json!(mountpoint), &o, false);
        let (s3, o) = pick(m, "s3", cli.s3.clone(), &files, |f| f.s3.clone());
        let s3 = nonempty(s3);
        let (v, r) = s3.as_deref().map(config::redact_url).map_or((None, false), |(v, r)| (Some(v), r));
        show("s3", serde_json::json!(v), &o, r);
        let (s3_endpoint, o) = pick(m, "s3_endpoint", cli.s3_endpoint.clone(), &files, |f| f.s3_endpoint.clone());
        let s3_endpoint = nonempty(s3_endpoint);
        let (v, r) = s3_endpoint.as_deref().map(config::redact_url).map_or((None, false), |(v, r)| (Some(v), r));
        show("s3_endpoint", serde_json::json!(v), &o, r);
        let mut size = |key: &'static str, cli_val: Option<u64>, get: fn(&config::File) -> Option<config::Size>| {
            let (v, o) = pick(m, key, cli_val, &files, |f| get(f).map(|s| s.0));
            show(key, serde_json::json!(v), &o, false);
            v
        };
        let cache_size = size("cache_size", cli.cache_size, |f| f.cache_size);
        let prefetch_below = size("prefetch_below", cli.prefetch_below, |f| f.prefetch_below);
        let build_space = size("build_space", cli.build_space, |f| f.build_space);
        let max_download = size("max_download", cli.max_download, |f| f.max_download);
        let (build_processes, o) = pick(m, "build_processes", cli.build_processes, &files, |f| f.build_processes);
        show("build_processes", serde_json::json!(build_processes), &o, false);
        let (admin_group, o) = pick(m, "admin_group", cli.admin_group.clone(), &files, |f| f.admin_group.clone());
        let admin_group = nonempty(admin_group);
        show("admin_group", serde_json::json!(admin_group), &o, false);
        let (signing_key, o) = pick(m, "signing_key", cli.signing_key.clone(), &files, |f| f.signing_key.clone());
        let signing_key = signing_key.filter(|p| !p.as_os_str().is_empty()).map(|p| absolute(&cwd, &p));
        show("signing_key", serde_json::json!(signing_key), &o, false);
        let (trusted_keys, o) = pick(m, "trusted_keys", cli.trusted_keys.clone(), &files, |f| {
            f.trusted_keys.as_ref().map(|k| match k {
                config::Keys::One(s) => s.clone(),
                config::Keys::Many(v) => v.join(","),
            })
        });
        let trusted_keys = nonempty(trusted_keys);
        show("trusted_keys", serde_json::json!(trusted_keys), &o, false);
        let (trust_unsigned, o) = pick(m, "trust_unsigned", Some(cli.trust_unsigned), &files, |f| f.trust_unsigned);
        let trust_unsigned = trust_unsigned.unwrap_or(false);
        show("trust_unsigned", serde_json::json!(trust_unsigned), &o, false);
        let (xattrs, o) = pick(m, "xattrs", cli.xattrs, &files, |f| f.xattrs);
        let xattrs = xattrs.unwrap_or(false);
        show("xattrs", serde_json::json!(xattrs), &o, false);
        let (metrics, o) = pick(m, "metrics", cli.metrics.clone(), &files, |f| f.metrics.clone());
        let metrics = nonempty(metrics);
        if let Some(a) = &metrics {
            crate::daemon::metrics::Endpoint::parse(a)?;
        }
        show("metrics", serde_json::json!(metrics), &o, false);
        let (fill, o) = pick(m, "fill", cli.fill, &files, |f| f.fill);
        let fill = fill.unwrap_or(false);
        show("fill", serde_json::json!(fill), &o, false);
        let (push_profiles, o) = pick(m, "push_profiles", cli.push_profiles, &files, |f| f.push_profiles);
        let push_profiles = push_profiles.unwrap_or(false);
        show("push_profiles", serde_json::json!(push_profiles), &o, false);
        // Subcommand flags: `build -j`, `mount --threads` (no environment variable).
        let last = |get: fn(&config::File) -> Option<usize>| {
            files.iter().rev().find_map(|(p, f)| get(f).map(|v| (Some(v), Origin::File(p.clone()))))
        };
        let (jobs, o) = last(|f| f.jobs).unwrap_or((None, Origin::Default));
        show("jobs", serde_json::json!(jobs), &o, false);
        let (threads, o) = last(|f| f.threads).unwrap_or((None, Origin::Default));
        show("threads", serde_json::json!(threads), &o, false);

        Ok(Settings {
            store_dir,
            mountpoint,
            json: cli.json,
            cwd,
            s3,
            s3_endpoint,
            cache_size,
            prefetch_below,
            build_space,
            build_processes,
            max_download,
            admin_group,
            allow_outside_sources: false,
            signing_key,
            trusted_keys,
            trust_unsigned,
            xattrs,
            metrics,
            fill,
            push_profiles,
            creds: None,
            jobs,
            threads,
            config_files: files.into_iter().map(|(p, _)| p).collect(),
            shown,
        })
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
        o.fill = self.fill;
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
