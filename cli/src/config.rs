//! The configuration files: `/etc/vorpalfs/config.toml` (the system's; `VORPALFS_SYSTEM_CONFIG`
//! names another), then the user's `$XDG_CONFIG_HOME/vorpalfs/config.toml` (`~/.config/...`), or
//! instead of the user's the file `--config FILE` / `VORPALFS_CONFIG` names. Later files win;
//! environment and flags win over both (see [`crate::settings`]).
//!
//! Unknown keys and values of the wrong type are errors naming the file and line. Relative
//! paths in a file are taken relative to the file's directory.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Default => write!(f, "default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) => write!(f, "env {v}"),
            Origin::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// A byte count: an integer, or a string like "20G".
#[derive(Clone, Copy, Debug)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Size, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        let raw = Raw::deserialize(d).map_err(|_: D::Error| {
            <D::Error as serde::de::Error>::custom("expected a size: an integer or a string like \"20G\"")
        })?;
        match raw {
            Raw::N(n) => Ok(Size(n)),
            Raw::S(s) => crate::args::parse_size(&s).map(Size).map_err(serde::de::Error::custom),
        }
    }
}

/// Trusted keys: one string (as the flag takes) or a list of entries.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum Keys {
    One(String),
    Many(Vec<String>),
}

/// One configuration file's keys (all optional).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub store_dir: Option<PathBuf>,
    pub mountpoint: Option<PathBuf>,
    pub s3: Option<String>,
    pub s3_endpoint: Option<String>,
    pub cache_size: Option<Size>,
    pub prefetch_below: Option<Size>,
    pub build_space: Option<Size>,
    pub build_processes: Option<u64>,
    pub max_download: Option<Size>,
    pub admin_group: Option<String>,
    pub signing_key: Option<PathBuf>,
    pub trusted_keys: Option<Keys>,
    pub trust_unsigned: Option<bool>,
    /// `true`: serve extended attributes on the mount (`--xattrs`).
    pub xattrs: Option<bool>,
    /// Where the daemon serves metrics (`--metrics`).
    pub metrics: Option<String>,
    /// `true`: fill roots from S3 in the background (`--fill`).
    pub fill: Option<bool>,
    /// `true`: the daemon pushes access profiles on its own (`--push-profiles`).
    pub push_profiles: Option<bool>,
    /// `mount --threads`
    pub threads: Option<usize>,
    /// `build --jobs`
    pub jobs: Option<usize>,
}

impl File {
    /// Parses a file's text; errors name `path` and the line.
    pub fn parse(path: &Path, text: &str) -> Result<File> {
        let mut f: File = toml::from_str(text).map_err(|e| {
            let at = match e.span() {
                Some(s) => {
                    let before = &text[..s.start.min(text.len())];
                    let line = before.matches('\n').count() + 1;
                    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("{}:{line}:{col}", path.display())
                }
                None => path.display().to_string(),
            };
            anyhow::anyhow!("{at}: {}", e.message().trim())
        })?;
        // Relative paths are the file's directory's.
        let dir = path.parent().unwrap_or(Path::new("/"));
        for p in [&mut f.store_dir, &mut f.mountpoint, &mut f.signing_key].into_iter().flatten() {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
        if let Some(k) = &mut f.trusted_keys {
            let entries = match k {
                Keys::One(s) => s.split([',', ' ', '\n', '\t']).map(str::to_string).collect(),
                Keys::Many(v) => v.clone(),
            };
            let fixed: Vec<String> = entries
                .iter()
                .map(|e| e.trim())
                .filter(|e| !e.is_empty())
                .map(|e| if e.starts_with('.') { dir.join(e).display().to_string() } else { e.to_string() })
                .collect();
            *k = Keys::One(fixed.join(","));
        }
        Ok(f)
    }

    pub fn load(path: &Path) -> Result<File> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        File::parse(path, &text)
    }
}

/// The system file: `VORPALFS_SYSTEM_CONFIG`, else `/etc/vorpalfs/config.toml`.
pub fn system_path() -> PathBuf {
    std::env::var_os("VORPALFS_SYSTEM_CONFIG")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/etc/vorpalfs/config.toml"))
}

/// The user's file: `$XDG_CONFIG_HOME/vorpalfs/config.toml`, else `~/.config/vorpalfs/config.toml`.
pub fn user_path() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("vorpalfs/config.toml"))
}

/// The files read, in order (later wins), each parsed. `explicit` (`--config`/`VORPALFS_CONFIG`)
/// replaces the user's file and must exist; the default files may be missing.
pub fn load_all(explicit: Option<&Path>, cwd: &Path) -> Result<Vec<(PathBuf, File)>> {
    let mut out = Vec::new();
    let sys = system_path();
    if sys.exists() {
        out.push((sys.clone(), File::load(&sys)?));
    }
    match explicit {
        Some(p) => {
            let p = if p.is_relative() { cwd.join(p) } else { p.to_path_buf() };
            if !p.is_file() {
                bail!("config file {} does not exist", p.display());
            }
            out.push((p.clone(), File::load(&p)?));
        }
        None => {
            if let Some(u) = user_path().filter(|u| u.exists() && *u != sys) {
                out.push((u.clone(), File::load(&u)?));
            }
        }
    }
    Ok(out)
}

/// Hides the `user:password@` of a URL; says whether it did.
pub fn redact_url(url: &str) -> (String, bool) {
    if let Some((scheme, rest)) = url.split_once("://") {
        let host_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..host_end].rfind('@') {
            return (format!("{scheme}://<redacted>@{}", &rest[at + 1..]), true);
        }
    }
    (url.to_string(), false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_paths_and_errors() {
        let f = File::parse(Path::new("/etc/v/c.toml"), "cache_size = \"2G\"\nbuild_space = 1024\nstore_dir = \"s\"\n")
            .unwrap();
        assert_eq!(f.cache_size.unwrap().0, 2 << 30);
        assert_eq!(f.build_space.unwrap().0, 1024);
        assert_eq!(f.store_dir.unwrap(), Path::new("/etc/v/s"));
        let e = File::parse(Path::new("/x.toml"), "s3 = \"s3://b\"\n\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("/x.toml:3:"), "{e}");
        let e = File::parse(Path::new("/x.toml"), "jobs = \"many\"\n").unwrap_err().to_string();
        assert!(e.starts_with("/x.toml:1:"), "{e}");
        assert_eq!(redact_url("http://u:p@h:9/x").0, "http://<redacted>@h:9/x");
    }
}
