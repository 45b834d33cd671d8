//! `vorpalfs.toml`: sources and artifacts, parsed and checked.
//!
//! ```toml
//! [[source]]
//! name = "hello"
//! path = "src"                 # relative to the manifest's directory
//! include = ["**/*.c"]         # globs over paths relative to `path` (default: everything)
//! exclude = ["target/**"]
//!
//! [[source]]
//! name = "zlib"
//! url = "https://example.org/zlib-1.3.tar.gz"
//! digest = "<BLAKE3 of the downloaded bytes, as b3sum prints it>"
//!
//! [[artifact]]
//! name = "hello"
//! sources = ["hello"]
//! deps = []                    # artifact names
//! aliases = ["hello:latest"]   # extra names; not hashed
//! timeout = "10m"              # seconds, or a number with s/m/h; not hashed
//! rootfs = "busybox"           # an artifact used as `/` (default: the host's /usr profile)
//! [[artifact.step]]
//! entrypoint = "bash"          # default: bash with args -e -o pipefail
//! args = []                    # the script file is passed after these
//! env = { CFLAGS = "-O2" }
//! script = "cc -o $VORPAL_OUTPUT/bin/hello source/hello/hello.c"
//! ```
//! Every error names the manifest file and, where the manifest gives one, the line and column.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::error::{Error, Result};
use crate::graph::Graph;

/// The file looked for when a directory is given.
pub const FILE_NAME: &str = "vorpalfs.toml";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    source: Vec<RawSource>,
    #[serde(default)]
    artifact: Vec<RawArtifact>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    name: Spanned<String>,
    path: Option<Spanned<String>>,
    url: Option<Spanned<String>>,
    digest: Option<Spanned<String>>,
    #[serde(default)]
    include: Vec<Spanned<String>>,
    #[serde(default)]
    exclude: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawArtifact {
    name: Spanned<String>,
    #[serde(default)]
    sources: Vec<Spanned<String>>,
    #[serde(default)]
    deps: Vec<Spanned<String>>,
    #[serde(default)]
    aliases: Vec<Spanned<String>>,
    #[serde(default)]
    step: Vec<RawStep>,
    timeout: Option<Spanned<RawTimeout>>,
    rootfs: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTimeout {
    Seconds(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStep {
    entrypoint: Option<String>,
    script: Option<String>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

/// Where a source's files come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SourceKind {
    /// A directory (or single file) on this machine, filtered by globs.
    Local { path: PathBuf, include: Vec<String>, exclude: Vec<String> },
    /// A file downloaded over http(s) whose BLAKE3 must match `blake3`.
    Url { url: String, blake3: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    /// Where it is declared, for messages.
    pub at: Location,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub entrypoint: String,
    pub args: Vec<String>,
    pub script: Option<String>,
    pub env: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    /// Indices into [`Manifest::sources`], sorted by source name.
    pub sources: Vec<usize>,
    /// Indices into [`Manifest::artifacts`], in the manifest's order (it sets `PATH`).
    pub deps: Vec<usize>,
    pub aliases: Vec<String>,
    pub steps: Vec<Step>,
    pub timeout: Option<Duration>,
    /// Index of the artifact used as `/`.
    pub rootfs: Option<usize>,
    pub at: Location,
}

/// A place in a manifest file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

/// A checked manifest: every name resolves, there is no cycle.
#[derive(Clone, Debug)]
pub struct Manifest {
    pub path: PathBuf,
    /// The directory local source paths are relative to.
    pub dir: PathBuf,
    pub sources: Vec<Source>,
    pub artifacts: Vec<Artifact>,
    /// What each artifact needs built first (its deps, then its rootfs).
    pub graph: Graph,
}

/// Finds the manifest for a path given on the command line: a file, or a directory holding
/// `vorpalfs.toml`.
pub fn locate(path: &Path) -> Result<PathBuf> {
    if path.is_dir() {
        let f = path.join(FILE_NAME);
        if !f.is_file() {
            return Err(Error::Manifest {
                at: path.display().to_string(),
                msg: format!("no {FILE_NAME} in this directory"),
            });
        }
        return Ok(f);
    }
    if !path.exists() {
        return Err(Error::Manifest { at: path.display().to_string(), msg: "no such file or directory".into() });
    }
    Ok(path.to_path_buf())
}

/// Reads and checks a manifest file.
pub fn load(path: &Path) -> Result<Manifest> {
    use std::io::Read;
    let err = |msg: String| Error::Manifest { at: path.display().to_string(), msg };
    let mut text = String::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_MANIFEST + 1).read_to_string(&mut text))
        .map_err(|e| err(format!("cannot read: {e}")))?;
    if text.len() as u64 > MAX_MANIFEST {
        return Err(err(format!("larger than the {MAX_MANIFEST} bytes a manifest may have")));
    }
    parse(path, &text)
}

/// The largest manifest read.
pub const MAX_MANIFEST: u64 = 4 << 20;

/// Parses and checks manifest text; `path` names it in errors and anchors relative paths.
pub fn parse(path: &Path, text: &str) -> Result<Manifest> {
    // Line starts, found once: every artifact records where it is declared.
    let lines: Vec<usize> = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
    let loc = |offset: usize| location(path, text, &lines, offset);
    let err = |offset: usize, msg: String| Error::Manifest { at: loc(offset).to_string(), msg };
    let raw: RawManifest = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or_else(|| path.display().to_string(), |s| loc(s.start).to_string());
        Error::Manifest { at, msg: e.message().trim().to_string() }
    })?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };

    let mut sources = Vec::new();
    let mut source_ix = HashMap::new();
    for s in raw.source {
        let at = s.name.span().start;
        check_name(s.name.get_ref()).map_err(|m| err(at, m))?;
        if source_ix.insert(s.name.get_ref().clone(), sources.len()).is_some() {
            return Err(err(at, format!("source `{}` is declared twice", s.name.get_ref())));
        }
        let kind = match (s.path, s.url) {
            (Some(p), None) => {
                if let Some(d) = &s.digest {
                    return Err(err(d.span().start, "`digest` is only for `url` sources".into()));
                }
                let full = dir.join(p.get_ref());
                if std::fs::symlink_metadata(&full).is_err() {
                    return Err(err(
                        p.span().start,
                        format!("source `{}`: path {} does not exist", s.name.get_ref(), full.display()),
                    ));
                }
                for g in s.include.iter().chain(&s.exclude) {
                    globset::Glob::new(g.get_ref())
                        .map_err(|e| err(g.span().start, format!("bad glob `{}`: {e}", g.get_ref())))?;
                }
                SourceKind::Local {
                    path: full,
                    include: s.include.into_iter().map(Spanned::into_inner).collect(),
                    exclude: s.exclude.into_iter().map(Spanned::into_inner).collect(),
                }
            }
            (None, Some(u)) => {
                let url = u.get_ref();
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(err(u.span().start, format!("source `{}`: only http(s) URLs", s.name.get_ref())));
                }
                let Some(d) = s.digest else {
                    return Err(err(at, format!("source `{}`: a `url` source needs a `digest`", s.name.get_ref())));
                };
                let hex = d.get_ref().trim_start_matches("blake3:").to_ascii_lowercase();
                if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(err(
                        d.span().start,
                        "`digest` must be 64 hex digits (BLAKE3, as b3sum prints it)".into(),
                    ));
                }
                if !s.include.is_empty() || !s.exclude.is_empty() {
                    return Err(err(at, "`include`/`exclude` are only for `path` sources".into()));
                }
                SourceKind::Url { url: url.clone(), blake3: hex }
            }
            (Some(_), Some(_)) => {
                return Err(err(at, format!("source `{}`: give `path` or `url`, not both", s.name.get_ref())));
            }
            (None, None) => return Err(err(at, format!("source `{}`: needs a `path` or a `url`", s.name.get_ref()))),
        };
        sources.push(Source { name: s.name.into_inner(), kind, at: loc(at) });
    }

    let mut artifact_ix = HashMap::new();
    for (i, a) in raw.artifact.iter().enumerate() {
        let at = a.name.span().start;
        check_name(a.name.get_ref()).map_err(|m| err(at, m))?;
        if artifact_ix.insert(a.name.get_ref().clone(), i).is_some() {
            return Err(err(at, format!("artifact `{}` is declared twice", a.name.get_ref())));
        }
    }
    let mut artifacts = Vec::new();
    for a in raw.artifact {
        let name = a.name.get_ref().clone();
        let mut srcs = Vec::new();
        for s in &a.sources {
            let ix = *source_ix.get(s.get_ref()).ok_or_else(|| {
                err(s.span().start, format!("artifact `{name}` uses unknown source `{}`", s.get_ref()))
            })?;
            srcs.push(ix);
        }
        srcs.sort_by(|&x, &y| sources[x].name.cmp(&sources[y].name));
        srcs.dedup();
        let mut deps = Vec::new();
        for d in &a.deps {
            let ix = *artifact_ix.get(d.get_ref()).ok_or_else(|| {
                err(d.span().start, format!("artifact `{name}` depends on unknown artifact `{}`", d.get_ref()))
            })?;
            if deps.contains(&ix) {
                return Err(err(d.span().start, format!("artifact `{name}` lists dep `{}` twice", d.get_ref())));
            }
            deps.push(ix);
        }
        let rootfs = match &a.rootfs {
            Some(r) => Some(*artifact_ix.get(r.get_ref()).ok_or_else(|| {
                err(r.span().start, format!("artifact `{name}` uses unknown artifact `{}` as rootfs", r.get_ref()))
            })?),
            None => None,
        };
        if a.step.is_empty() {
            return Err(err(a.name.span().start, format!("artifact `{name}` has no [[artifact.step]]")));
        }
        let steps = a
            .step
            .into_iter()
            .map(|s| {
                // Without an entrypoint a script runs under `bash -e -o pipefail`, which the
                // recipe records as such (so it hashes the same as writing it out).
                let (entrypoint, args) = match s.entrypoint {
                    Some(e) => (e, s.args),
                    None => (
                        "bash".to_string(),
                        ["-e", "-o", "pipefail"].iter().map(|a| a.to_string()).chain(s.args).collect(),
                    ),
                };
                Ok(Step { entrypoint, args, script: s.script, env: s.env })
            })
            .collect::<Result<Vec<_>>>()?;
        for s in &steps {
            for k in s.env.keys() {
                if k.is_empty() || k.contains('=') || k.contains('\0') {
                    return Err(err(
                        a.name.span().start,
                        format!("artifact `{name}`: bad environment variable name `{k}`"),
                    ));
                }
            }
        }
        let timeout = match &a.timeout {
            None => None,
            Some(t) => Some(parse_timeout(t.get_ref()).map_err(|m| err(t.span().start, m))?),
        };
        let mut aliases = Vec::new();
        for al in &a.aliases {
            if al.get_ref().is_empty() || al.get_ref().contains('/') {
                return Err(err(al.span().start, format!("bad alias `{}`", al.get_ref())));
            }
            aliases.push(al.get_ref().clone());
        }
        artifacts.push(Artifact {
            name,
            sources: srcs,
            deps,
            aliases,
            steps,
            timeout,
            rootfs,
            at: loc(a.name.span().start),
        });
    }
    let needs = artifacts
        .iter()
        .map(|a| {
            let mut v = a.deps.clone();
            v.extend(a.rootfs.filter(|r| !a.deps.contains(r)));
            v
        })
        .collect();
    let graph = Graph::new(needs).map_err(|cycle| {
        let names: Vec<&str> = cycle.iter().map(|&i| artifacts[i].name.as_str()).collect();
        Error::Manifest {
            at: artifacts[cycle[0]].at.to_string(),
            msg: format!("dependency cycle: {}", names.join(" → ")),
        }
    })?;
    Ok(Manifest { path: path.to_path_buf(), dir, sources, artifacts, graph })
}

impl Manifest {
    /// The artifact called `name` (or aliased so).
    pub fn find(&self, name: &str) -> Option<usize> {
        self.artifacts
            .iter()
            .position(|a| a.name == name)
            .or_else(|| self.artifacts.iter().position(|a| a.aliases.iter().any(|al| al == name)))
    }
}

fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
        && !name.starts_with('.');
    if ok { Ok(()) } else { Err(format!("bad name `{name}`: use letters, digits and . _ - + (not starting with .)")) }
}

fn parse_timeout(t: &RawTimeout) -> std::result::Result<Duration, String> {
    let secs = match t {
        RawTimeout::Seconds(s) => *s,
        RawTimeout::Text(s) => {
            let s = s.trim();
            let (num, mul) = match s.chars().last() {
                Some('s') => (&s[..s.len() - 1], 1),
                Some('m') => (&s[..s.len() - 1], 60),
                Some('h') => (&s[..s.len() - 1], 3600),
                _ => (s, 1),
            };
            num.trim()
                .parse::<u64>()
                .map_err(|_| format!("bad timeout `{s}`: use seconds or a number with s, m or h"))?
                * mul
        }
    };
    if secs == 0 {
        return Err("timeout must be more than 0 seconds".into());
    }
    Ok(Duration::from_secs(secs))
}

/// The line and column (in characters) of byte `offset`, given the byte offsets where lines
/// start.
fn location(file: &Path, text: &str, lines: &[usize], offset: usize) -> Location {
    let offset = offset.min(text.len());
    let line = lines.partition_point(|&start| start <= offset);
    let column = text[lines[line - 1]..offset].chars().count() + 1;
    Location { file: file.to_path_buf(), line, column }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> String {
        parse(Path::new("/m/vorpalfs.toml"), text).unwrap_err().to_string()
    }

    proptest::proptest! {
        // The fuzz target `manifest`'s body, on stable: any text (and any example manifest
        // with a few characters changed) is a manifest or an error, never a panic.
        #[test]
        fn any_text_is_a_manifest_or_an_error(text in "\\PC{0,400}", edits in proptest::collection::vec((0usize..4096, "[\\[\\]=\"a-z0-9\n .{}-]"), 0..6)) {
            let _ = parse(Path::new("/m/vorpalfs.toml"), &text);
            let mut m = include_str!("../../examples/multi/vorpalfs.toml").to_string();
            for (at, s) in edits {
                let mut at = at % (m.len() + 1);
                while !m.is_char_boundary(at) {
                    at -= 1;
                }
                m.insert_str(at, &s);
            }
            let _ = parse(Path::new("/m/vorpalfs.toml"), &m);
        }
    }

    #[test]
    fn syntax_error_names_line_and_column() {
        let e = parse_err("[[artifact]]\nname = \"a\"\nsteps = [\n");
        assert!(e.starts_with("/m/vorpalfs.toml:"), "{e}");
        let e = parse_err("[[artifact]]\nname = = \"a\"\n");
        assert!(e.starts_with("/m/vorpalfs.toml:2:"), "{e}");
    }

    #[test]
    fn unknown_field_is_named() {
        let e = parse_err("[[artifact]]\nname = \"a\"\nscripts = \"x\"\n[[artifact.step]]\nscript = \"true\"\n");
        assert!(e.contains("/m/vorpalfs.toml:3:1") && e.contains("scripts"), "{e}");
    }

    #[test]
    fn unknown_dep_and_cycle() {
        let e = parse_err("[[artifact]]\nname = \"a\"\ndeps = [\"b\"]\n[[artifact.step]]\nscript = \"true\"\n");
        assert!(e.contains(":3:9") && e.contains("unknown artifact `b`"), "{e}");
        let e = parse_err(
            "[[artifact]]\nname = \"a\"\ndeps = [\"b\"]\n[[artifact.step]]\nscript = \"true\"\n\
             [[artifact]]\nname = \"b\"\ndeps = [\"c\"]\n[[artifact.step]]\nscript = \"true\"\n\
             [[artifact]]\nname = \"c\"\ndeps = [\"a\"]\n[[artifact.step]]\nscript = \"true\"\n",
        );
        assert!(e.contains("dependency cycle: a → b → c → a"), "{e}");
    }

    #[test]
    fn missing_source_path_and_url_digest() {
        let e = parse_err("[[source]]\nname = \"s\"\npath = \"nope\"\n");
        assert!(e.contains(":3:8") && e.contains("/m/nope does not exist"), "{e}");
        let e = parse_err("[[source]]\nname = \"s\"\nurl = \"https://x/y\"\n");
        assert!(e.contains("needs a `digest`"), "{e}");
    }

    #[test]
    fn self_cycle() {
        let e = parse_err("[[artifact]]\nname = \"a\"\ndeps = [\"a\"]\n[[artifact.step]]\nscript = \"true\"\n");
        assert!(e.contains("dependency cycle: a → a"), "{e}");
    }

    #[test]
    fn timeouts() {
        assert_eq!(parse_timeout(&RawTimeout::Text("10m".into())), Ok(Duration::from_secs(600)));
        assert_eq!(parse_timeout(&RawTimeout::Seconds(5)), Ok(Duration::from_secs(5)));
        assert!(parse_timeout(&RawTimeout::Text("soon".into())).is_err());
    }
}
