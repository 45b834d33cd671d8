//! Sources into the store: a local path (a directory filtered by globs, or one file), or a URL
//! downloaded once and remembered by its BLAKE3. Each comes back pinned: a source is named by
//! no root, and gc must leave it until the build that uses it is over.
//!
//! Local sources are read with the client's rights. One inside the manifest's directory is
//! taken as is; one outside it (an absolute path, `..`, a symlink leading out) only if
//! everything in it is readable by everyone, unless the client allows it explicitly: what is
//! stored is readable by every user through the mount, and a manifest nobody reviewed must not
//! be able to publish its builder's private files.

use std::fs;
use std::path::Path;

use vorpalfs_store::{Creds, Digest, Pin, Source, Store};

use crate::error::{Error, IoContext, Result, SourceError};
use crate::manifest::{Manifest, SourceKind};

/// How sources may be read.
#[derive(Clone, Copy, Default)]
pub struct Access<'a> {
    /// The client's rights (`None`: this process's own).
    pub creds: Option<&'a Creds>,
    /// Take local sources outside the manifest's directory even if not readable by everyone.
    pub allow_outside: bool,
    /// The most bytes a `url` source may have.
    pub download_limit: u64,
}

/// Puts source `s` of `m` into the store and returns its tree, pinned. `scratch` is a
/// directory for downloads.
pub fn source_tree(store: &Store, m: &Manifest, s: usize, scratch: &Path, access: Access<'_>) -> Result<(Digest, Pin)> {
    let src = &m.sources[s];
    let err = |source: SourceError| Error::Source { name: src.name.clone(), source };
    match &src.kind {
        SourceKind::Local { path, include, exclude } => {
            let build = |pats: &[String]| -> Result<Option<globset::GlobSet>> {
                if pats.is_empty() {
                    return Ok(None);
                }
                let mut b = globset::GlobSetBuilder::new();
                for p in pats {
                    let g = globset::Glob::new(p)
                        .map_err(|source| err(SourceError::Glob { pattern: p.clone(), source }))?;
                    b.add(g);
                }
                Ok(Some(b.build().map_err(|source| err(SourceError::Glob { pattern: pats.join(" "), source }))?))
            };
            let (inc, exc) = (build(include)?, build(exclude)?);
            let path_err = |path: &Path| {
                let path = path.to_path_buf();
                move |source| err(SourceError::Path { path, source })
            };
            // A directory (or a symlink to one) is the tree; a single file becomes a tree
            // holding just that file. Resolved with the client's rights.
            let creds = access.creds;
            let canon = |p: &Path| crate::builder::as_client(creds, || fs::canonicalize(p)).map_err(path_err(p));
            let meta = crate::builder::as_client(creds, || fs::metadata(path)).map_err(path_err(path))?;
            let (dir, only) = if meta.is_dir() {
                (canon(path)?, None)
            } else {
                let parent = path.parent().unwrap_or(Path::new("/"));
                (canon(parent)?, path.file_name().map(|f| f.to_os_string()))
            };
            let inside = dir.starts_with(canon(&m.dir)?);
            let keep = |rel: &Path, is_dir: bool| {
                if let Some(only) = &only {
                    return rel.as_os_str() == only.as_os_str();
                }
                if exc.as_ref().is_some_and(|g| g.is_match(rel)) {
                    return false;
                }
                is_dir || inc.as_ref().is_none_or(|g| g.is_match(rel))
            };
            let filtered = only.is_some() || inc.is_some() || exc.is_some();
            let public_only = !inside && !access.allow_outside;
            if public_only {
                // The directory itself must be open to everyone too.
                use std::os::unix::fs::PermissionsExt;
                let mode = crate::builder::as_client(creds, || fs::metadata(&dir))
                    .map_err(path_err(&dir))?
                    .permissions()
                    .mode();
                if mode & 0o005 != 0o005 {
                    return Err(err(SourceError::Store(vorpalfs_store::Error::NotPublic { path: dir })));
                }
            }
            let src = Source { path: &dir, keep: if filtered { Some(&keep) } else { None }, creds, public_only };
            let (report, pin) = store.ingest_pinned(src).map_err(|e| err(SourceError::Store(e)))?;
            Ok((report.root, pin))
        }
        SourceKind::Url { url, blake3 } => {
            if let Some(tree) = store.fetched_source(blake3)?
                && let Ok(pin) = store.pin(&tree)
            {
                return Ok((tree, pin));
            }
            let dir = scratch.join(format!("fetch-{}-{}", &blake3[..12], std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).at(&dir)?;
            let result = crate::fetch::download(url, blake3, &dir, access.download_limit)
                .map_err(|e| err(SourceError::Download(e)))
                .and_then(|()| store.add_fetched_source(&dir, blake3).map_err(|e| err(SourceError::Store(e))));
            let _ = fs::remove_dir_all(&dir);
            result
        }
    }
}
