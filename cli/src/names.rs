//! Words on the command line of `build`, `run` and `inspect`: a manifest path or an artifact
//! name (or alias) of `./vorpalfs.toml` (or of `--file`), resolved against the caller's
//! directory; unknown names get the nearest known ones suggested.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use vorpalfs_builder::Manifest;
use vorpalfs_builder::manifest::{FILE_NAME, load, locate};

/// What a build is asked for: the manifest file and the artifacts (empty: all).
#[derive(Debug)]
pub struct Targets {
    pub manifest: PathBuf,
    pub artifacts: Vec<String>,
}

/// Every name and alias a manifest declares.
pub fn names_of(m: &Manifest) -> Vec<String> {
    m.artifacts.iter().flat_map(|a| std::iter::once(a.name.clone()).chain(a.aliases.iter().cloned())).collect()
}

/// A word that can only be a path: `.`, `..`, or anything with a `/` (no name has one).
fn path_like(w: &str) -> bool {
    w == "." || w == ".." || w.contains('/')
}

/// Resolves `build`'s words. Without `file`, the first word is the manifest if it is a path
/// (an existing bare word that `./vorpalfs.toml` also declares is ambiguous: an error); every
/// other word is an artifact of the manifest.
pub fn resolve(cwd: &Path, file: Option<&Path>, words: &[String]) -> Result<Targets> {
    let abs = |p: &Path| if p.is_absolute() { p.to_path_buf() } else { cwd.join(p) };
    let default = cwd.join(FILE_NAME);
    let (manifest, rest) = match (file, words.first()) {
        (Some(f), _) => (locate(&abs(f))?, words),
        (None, Some(w)) if path_like(w) => (locate(&abs(Path::new(w)))?, &words[1..]),
        (None, Some(w)) if cwd.join(w).exists() => {
            if default.is_file() && names_of(&load(&default)?).contains(w) {
                bail!(
                    "`{w}` is ambiguous: both the path {} and an artifact of {}; write ./{w} for the path, \
                     or -f {FILE_NAME} {w} for the artifact",
                    cwd.join(w).display(),
                    default.display()
                );
            }
            (locate(&cwd.join(w))?, &words[1..])
        }
        (None, _) => {
            if !default.is_file() && !words.is_empty() {
                bail!(
                    "`{}` is neither a path nor an artifact: there is no {FILE_NAME} in {} (use -f FILE)",
                    words[0],
                    cwd.display()
                );
            }
            (locate(cwd)?, words)
        }
    };
    if !rest.is_empty() {
        let m = load(&manifest)?;
        let names = names_of(&m);
        for w in rest {
            if m.find(w).is_none() {
                bail!("{}", unknown(w, &manifest, &names));
            }
        }
    }
    Ok(Targets { manifest, artifacts: rest.to_vec() })
}

/// "no artifact `w` in FILE; nearest: …".
pub fn unknown(w: &str, manifest: &Path, names: &[String]) -> String {
    let near = nearest(w, names);
    let hint = if near.is_empty() {
        format!("it declares: {}", if names.is_empty() { "nothing".into() } else { names.join(", ") })
    } else {
        format!("nearest names: {}", near.join(", "))
    };
    format!("no artifact `{w}` in {}; {hint}", manifest.display())
}

/// Up to three names within a small edit distance of `w`, nearest first.
pub fn nearest(w: &str, names: &[String]) -> Vec<String> {
    let limit = (w.chars().count() / 3).max(2);
    let mut d: Vec<(usize, &String)> = names
        .iter()
        .map(|n| (distance(w, n), n))
        .filter(|(d, n)| *d <= limit || n.starts_with(w) || w.starts_with(n.as_str()))
        .collect();
    d.sort();
    d.dedup_by(|a, b| a.1 == b.1);
    d.into_iter().take(3).map(|(_, n)| n.clone()).collect()
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for j in 0..b.len() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != b[j])).min(row[j] + 1).min(row[j + 1] + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// The names `./vorpalfs.toml` declares, if there is one that loads (for suggestions).
pub fn names_here(cwd: &Path) -> Vec<String> {
    let f = cwd.join(FILE_NAME);
    if !f.is_file() {
        return Vec::new();
    }
    load(&f).map(|m| names_of(&m)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_names() {
        let names: Vec<String> = ["zstd", "zlib", "hello", "greeters"].iter().map(|s| s.to_string()).collect();
        assert_eq!(nearest("zstf", &names), vec!["zstd"]);
        assert_eq!(nearest("helo", &names)[0], "hello");
        assert!(nearest("qqqqqqqq", &names).is_empty());
        assert_eq!(distance("kitten", "sitting"), 3);
    }
}
